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
from typing import Dict, Optional, Tuple, Union

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


_BONE_LUT = np.zeros(256, dtype=bool)
_BONE_LUT[np.asarray(BONES, dtype=np.int64)] = True


def _cortex_mask(t: np.ndarray, r: int) -> np.ndarray:
    """(..., ny, nx) bool: bone pixels within ``r`` pixels (4-neighbour steps, in-plane) of a pixel of another
    tissue, i.e. the cortical rim. ``t``: tissue ids (contiguous is fastest)."""
    bone = _BONE_LUT[t]
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
    t = np.ascontiguousarray(np.moveaxis(tissue_sub, -1, 0))  # (S, nz, ny, nx): in-plane steps on contiguous rows
    val = lut[t]
    r = max(1, int(round(cortex_mm / pixel_mm)))
    np.putmask(val, _cortex_mask(t, r), np.float32(CORTEX_INTENSITY))
    return np.moveaxis(val, 0, -1)


@dataclass(frozen=True)
class GridPositions:
    """LPS positions of the voxel centres of a regular grid, without storing them:
    ``p[k, j, i] = origin + i * axes[:, 0] + j * axes[:, 1] + k * axes[:, 2]``.

    Attributes:
        origin: (3,) LPS mm of voxel (k=0, j=0, i=0).
        axes: (3, 3) columns = LPS mm per step along i (column), j (row), k (slice).
        shape: (nz, ny, nx).
    """

    origin: np.ndarray
    axes: np.ndarray
    shape: Tuple[int, int, int]

    def dot(self, w: np.ndarray) -> np.ndarray:
        """(nz, ny, nx) float32 ``p . w`` for a (3,) vector ``w``, summed from three 1-D ramps."""
        nz, ny, nx = self.shape
        step = np.asarray(w, dtype=np.float64) @ np.asarray(self.axes, dtype=np.float64)  # per i, j, k step
        out = np.empty(self.shape, dtype=np.float32)
        out[...] = (float(np.dot(self.origin, w)) + step[2] * np.arange(nz)).astype(np.float32)[:, None, None]
        out += (step[1] * np.arange(ny)).astype(np.float32)[:, None]
        out += (step[0] * np.arange(nx)).astype(np.float32)
        return out


Positions = Union[np.ndarray, GridPositions]


def _dot(points_mm: Positions, w: np.ndarray) -> np.ndarray:
    if isinstance(points_mm, GridPositions):
        return points_mm.dot(w)
    return (points_mm @ w.astype(points_mm.dtype)).astype(np.float32)


def bias_field(points_mm: Positions, rng: np.random.Generator, amplitude: float = 0.12,
               wavelength_mm: Tuple[float, float] = (180.0, 400.0), n_waves: int = 3) -> np.ndarray:
    """Smooth multiplicative field exp(sum of ``n_waves`` random cosines) at (..., 3) physical points (or at the
    voxel centres of a :class:`GridPositions`). With long wavelengths it is the coil bias field; with short ones
    (10-30 mm, small amplitude) a tissue texture. Returns float32 of the points' leading shape."""
    f = None
    for _ in range(n_waves):
        k = rng.normal(size=3)
        k /= np.linalg.norm(k)
        wavelength = rng.uniform(*wavelength_mm)
        phase = rng.uniform(0, 2 * np.pi)
        arg = _dot(points_mm, k * 2 * np.pi / wavelength)
        arg += np.float32(phase)
        np.cos(arg, out=arg)
        arg *= np.float32(amplitude * rng.uniform(0.5, 1.0))
        f = arg if f is None else np.add(f, arg, out=f)
    return np.exp(f, out=f)


def render_intensity(tissue_sub: np.ndarray, voxel_centers: Positions, pixel_mm: float, slice_mm: float,
                     field_strength: float, center: Center, rng: np.random.Generator,
                     psf_sigma_px: float = 0.45, bias_amplitude: float = 0.12) -> Tuple[np.ndarray, float]:
    """Full contrast model for one series.

    Args:
        tissue_sub: (nz, ny, nx, S) tissue ids of the sub-samples.
        voxel_centers: (nz, ny, nx, 3) LPS mm of the voxel centres, or their :class:`GridPositions` (for the bias
            field).
    Returns:
        (image (nz, ny, nx) int16 stored values, noise sigma in stored units).
    """
    sub = np.moveaxis(tissue_intensity(tissue_sub, pixel_mm), -1, 0)  # (S, nz, ny, nx), contiguous
    val = sub[0].copy()
    for s in range(1, len(sub)):  # mean over the sub-samples (partial volume)
        val += sub[s]
    val *= np.float32(1.0 / len(sub))
    val = _blur_inplane(val, psf_sigma_px)
    val *= bias_field(voxel_centers, rng, bias_amplitude)
    val *= bias_field(voxel_centers, rng, 0.012, (8.0, 30.0), 5)  # fine tissue inhomogeneity
    sigma = 0.85 / snr_for(field_strength, pixel_mm * pixel_mm * slice_mm)
    # Rician magnitude: |val + n1 + i n2| with n1, n2 ~ N(0, sigma)
    n1 = rng.standard_normal(val.shape, dtype=np.float32)
    n1 *= np.float32(sigma)
    val += n1
    val *= val
    n2 = rng.standard_normal(val.shape, dtype=np.float32)
    n2 *= np.float32(sigma)
    n2 *= n2
    val += n2
    mag = np.sqrt(val, out=val)
    if center.gamma != 1.0:
        np.power(mag, np.float32(center.gamma), out=mag)
    mag *= np.float32(center.gain)
    mag += np.float32(center.offset)
    np.rint(mag, out=mag)
    np.clip(mag, 0, center.max_value, out=mag)
    return mag.astype(np.int16), float(center.gain * sigma)
