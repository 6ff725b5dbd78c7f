"""Proton-density-like MR contrast: tissue labels -> image intensities, noise, bias field, vendor scaling.

Pipeline for one series (all numpy):
  sub-sample tissues (nz, ny, nx, S) -> per-tissue PD intensity (bone: dark cortex within ``cortex_mm`` of the bone
  surface, fatty marrow inside; computed by in-plane erosion, so it works for any anatomy source) -> mean over the
  S sub-samples (partial volume of thick slices) -> in-plane point-spread blur -> smooth multiplicative bias field
  and a faint fine texture ->
  Rician noise with field-strength- and voxel-size-dependent SNR -> vendor-like scaling of the center
  (gain, offset, gamma, integer range) -> int16.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from .tissues import BONES, Tissue

#: Relative PD intensity per tissue (fat ~0.85, fluid ~0.92; dark fibrous tissue and cortex near 0).
PD_INTENSITY: Dict[int, float] = {
    Tissue.AIR: 0.0, Tissue.FEMUR: 0.76, Tissue.TIBIA: 0.76, Tissue.PATELLA: 0.74, Tissue.FIBULA: 0.72,
    Tissue.FEMORAL_CARTILAGE: 0.52, Tissue.MEDIAL_TIBIAL_CARTILAGE: 0.50, Tissue.LATERAL_TIBIAL_CARTILAGE: 0.50,
    Tissue.PATELLAR_CARTILAGE: 0.54, Tissue.MEDIAL_MENISCUS: 0.05, Tissue.LATERAL_MENISCUS: 0.05,
    Tissue.ACL: 0.20, Tissue.PCL: 0.07, Tissue.MCL: 0.08, Tissue.LCL: 0.08, Tissue.TENDON: 0.05,
    Tissue.FLUID: 0.95, Tissue.FAT: 0.85, Tissue.MUSCLE: 0.32, Tissue.SKIN: 0.45, Tissue.VESSEL: 0.12,
    Tissue.CAPSULE: 0.16, Tissue.EDEMA: 0.90, Tissue.SOFT_TISSUE: 0.36,
}
CORTEX_INTENSITY = 0.04


@dataclass(frozen=True)
class Center:
    """Vendor-like intensity scaling of one imaging center: stored = offset + gain * x**gamma, clipped, int16."""

    name: str
    manufacturer: str
    model: str
    gain: float
    offset: float
    gamma: float
    max_value: int


#: Built-in centers (manufacturer shares follow the paper's Supplementary Table 3: GE, United Imaging, Siemens).
CENTERS: Dict[str, Center] = {
    "center_a": Center("center_a", "GE MEDICAL SYSTEMS", "SIGNA Architect", 2600.0, 0.0, 1.0, 4095),
    "center_b": Center("center_b", "UIH", "uMR 780", 900.0, 30.0, 1.15, 32767),
    "center_c": Center("center_c", "SIEMENS", "MAGNETOM Skyra", 1400.0, 0.0, 0.9, 4095),
    "center_d": Center("center_d", "Philips Medical Systems", "Ingenia", 1800.0, 10.0, 0.95, 4095),
}
#: Default center mix (by series), near the paper's manufacturer shares.
DEFAULT_CENTER_WEIGHTS: Dict[str, float] = {"center_a": 0.64, "center_b": 0.31, "center_c": 0.05}


def snr_for(field_strength: float, voxel_mm3: float) -> float:
    """Fat-signal SNR of a PD series: 30 at 3 T / 17 at 1.5 T for a 0.5x0.5x3.5 mm voxel, growing with voxel volume
    (sub-linearly, capped at 4x; larger voxels average more spins)."""
    base = 30.0 if field_strength >= 2.0 else 17.0
    ratio = min(4.0, (voxel_mm3 / (0.5 * 0.5 * 3.5)) ** 0.6)
    return base * ratio


def _cortex_mask(t: np.ndarray, r: int) -> np.ndarray:
    """(..., ny, nx) bool: bone pixels within ``r`` pixels (4-neighbour steps, in-plane) of a pixel of another
    tissue, i.e. the cortical rim. ``t``: tissue ids."""
    bone = np.isin(t, np.asarray(BONES, dtype=t.dtype))
    inner = bone.copy()
    # first step: neighbour must be the same bone
    inner[..., 1:, :] &= t[..., 1:, :] == t[..., :-1, :]
    inner[..., :-1, :] &= t[..., :-1, :] == t[..., 1:, :]
    inner[..., :, 1:] &= t[..., :, 1:] == t[..., :, :-1]
    inner[..., :, :-1] &= t[..., :, :-1] == t[..., :, 1:]
    for _ in range(r - 1):
        m = inner
        e = m.copy()
        e[..., 1:, :] &= m[..., :-1, :]
        e[..., :-1, :] &= m[..., 1:, :]
        e[..., :, 1:] &= m[..., :, :-1]
        e[..., :, :-1] &= m[..., :, 1:]
        inner = e
    return bone & ~inner


def _blur_inplane(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Separable Gaussian blur (3 or 5 taps) in the last two axes, edge-replicated; (..., ny, nx) float32."""
    if sigma_px <= 0.05:
        return img
    r = 1 if sigma_px < 0.6 else 2
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma_px) ** 2)
    k = (k / k.sum()).astype(np.float32)
    for axis in (-1, -2):
        pad = [(0, 0)] * img.ndim
        pad[axis] = (r, r)
        p = np.pad(img, pad, mode="edge")
        n = img.shape[axis]
        sl = [slice(None)] * img.ndim
        sl[axis] = slice(0, n)
        acc = k[0] * p[tuple(sl)]
        for i in range(1, len(k)):
            sl[axis] = slice(i, i + n)
            acc += k[i] * p[tuple(sl)]
        img = acc
    return img


def tissue_intensity(tissue_sub: np.ndarray, pixel_mm: float, cortex_mm: float = 1.4,
                     table: Optional[Dict[int, float]] = None) -> np.ndarray:
    """Noise-free PD intensity of each sub-sample.

    Args:
        tissue_sub: (nz, ny, nx, S) uint8 tissue ids (S sub-samples per voxel).
        pixel_mm: in-plane pixel size of the sub-sample grid (for the cortex thickness).
    Returns:
        (nz, ny, nx, S) float32.
    """
    table = table or PD_INTENSITY
    lut = np.zeros(256, dtype=np.float32)
    for k, v in table.items():
        lut[int(k)] = v
    val = lut[tissue_sub]
    r = max(1, int(round(cortex_mm / pixel_mm)))
    t = np.moveaxis(tissue_sub, -1, 0)  # (S, nz, ny, nx)
    val[np.moveaxis(_cortex_mask(t, r), 0, -1)] = CORTEX_INTENSITY
    return val


def bias_field(points_mm: np.ndarray, rng: np.random.Generator, amplitude: float = 0.12,
               wavelength_mm: Tuple[float, float] = (180.0, 400.0), n_waves: int = 3) -> np.ndarray:
    """Smooth multiplicative field exp(sum of ``n_waves`` random cosines) at (..., 3) physical points. With long
    wavelengths it is the coil bias field; with short ones (10-30 mm, small amplitude) a tissue texture."""
    f = np.zeros(points_mm.shape[:-1], dtype=np.float32)
    for _ in range(n_waves):
        k = rng.normal(size=3)
        k /= np.linalg.norm(k)
        wavelength = rng.uniform(*wavelength_mm)
        phase = rng.uniform(0, 2 * np.pi)
        f += np.float32(amplitude * rng.uniform(0.5, 1.0)) * np.cos(
            (points_mm @ (k * 2 * np.pi / wavelength).astype(points_mm.dtype)).astype(np.float32) + np.float32(phase))
    return np.exp(f)


def render_intensity(tissue_sub: np.ndarray, voxel_centers: np.ndarray, pixel_mm: float, slice_mm: float,
                     field_strength: float, center: Center, rng: np.random.Generator,
                     psf_sigma_px: float = 0.45, bias_amplitude: float = 0.12) -> Tuple[np.ndarray, float]:
    """Full contrast model for one series.

    Args:
        tissue_sub: (nz, ny, nx, S) tissue ids of the sub-samples.
        voxel_centers: (nz, ny, nx, 3) LPS mm of the voxel centres (for the bias field).
    Returns:
        (image (nz, ny, nx) int16 stored values, noise sigma in stored units).
    """
    val = tissue_intensity(tissue_sub, pixel_mm).mean(axis=-1)
    val = _blur_inplane(val, psf_sigma_px)
    val *= bias_field(voxel_centers, rng, bias_amplitude)
    val *= bias_field(voxel_centers, rng, 0.012, (8.0, 30.0), 5)  # fine tissue inhomogeneity
    sigma = 0.85 / snr_for(field_strength, pixel_mm * pixel_mm * slice_mm)
    n1 = rng.normal(0.0, sigma, size=val.shape).astype(np.float32)
    n2 = rng.normal(0.0, sigma, size=val.shape).astype(np.float32)
    mag = np.sqrt((val + n1) ** 2 + n2 ** 2)
    stored = center.offset + center.gain * np.power(mag, center.gamma)
    stored = np.clip(np.rint(stored), 0, center.max_value).astype(np.int16)
    return stored, float(center.gain * sigma)
