"""Quantitative measures of a knee labelmap: structure volumes (mL) and mean cartilage thickness (mm).

Inputs are SimpleITK label images (any geometry; only the spacing matters, directions are orthonormal). Core
dependencies only (numpy + SimpleITK).

Cartilage thickness (structures of kind ``"cartilage"`` in the label table: femoral, medial/lateral tibial and
patellar cartilage) is measured along surface normals, with sub-voxel precision:

1. The structure's surface voxels are its voxels with a background 6-neighbour (both the bone-facing and the
   articular side).
2. The inward normal at a surface voxel is the normalised gradient (in mm) of the signed Euclidean distance map of
   the mask (``sitk.SignedMaurerDistanceMap`` with the image spacing, positive inside).
3. From the voxel centre a ray is cast along the normal (backwards one voxel, forwards across the structure), the
   binary mask is sampled by trilinear interpolation every ``step_fraction`` x the smallest spacing, and the two
   0.5-level crossings (entry and exit, refined linearly between samples) are found. Their distance is the local
   thickness.
4. Rays that run along the structure instead of across it (at plate rims: no exit, or a length above
   2 x (largest inscribed-ball radius on the ray + largest voxel size)) are rejected; the radius is the distance
   to the nearest background voxel centre (``SignedMaurerDistanceMap`` of the background), interpolated.
5. The mean thickness is the mean over the accepted rays (every surface voxel counts once).

On a slab of thickness T every accepted ray has length T; on a spherical shell of thickness T the rays from both
surfaces run radially and have length T, so the method is exact up to voxelisation (tested within 5% with
anisotropic spacing).
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from OrthoDiffusionLib import labels
from OrthoDiffusionLib.segmentation.metrics import surface_voxels

_RAY_CHUNK = 4096
NORMAL_SIGMA_VOXELS = 1.0
RIM_TOLERANCE = 0.25
#: Rays cast for a mean thickness: from at most this many surface voxels, drawn with a fixed seed. The mean's
#: sampling error, sd / sqrt(n), is then a few hundredths of a millimetre for cartilage (local sd 1-2 mm), far below
#: a voxel; a 0.3 mm 3D series has several hundred thousand surface voxels per plate.
MAX_RAYS = 5000


@dataclass(frozen=True)
class StructureMeasure:
    """One row of the measures table; ``mean_thickness_mm`` is NaN for non-cartilage or empty structures."""
    value: int
    key: str
    name: str
    volume_ml: float
    mean_thickness_mm: float

    def as_dict(self) -> Dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class ThicknessResult:
    """Mean and sd of the accepted local thicknesses (mm) and the number of accepted / cast rays."""
    mean_mm: float
    sd_mm: float
    n_rays: int
    n_surface: int


def array_spacing(image: sitk.Image) -> Tuple[float, ...]:
    """Spacing in numpy axis order (z, y, x) of ``sitk.GetArrayFromImage(image)``."""
    return tuple(float(s) for s in image.GetSpacing()[::-1])


def structure_volume_ml(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Volume of a boolean mask in millilitres (voxel count x voxel volume in mm^3 / 1000)."""
    return float(np.count_nonzero(mask)) * float(np.prod([float(s) for s in spacing])) / 1000.0


def _trilinear(vols: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Trilinear samples of ``vols`` (D, H, W, C) at index coordinates ``pts`` (..., 3), clamped to the array.

    Returns (..., C) float32. All C channels share one set of corner indices and weights (one gather per corner).
    """
    d, h, w, c = vols.shape
    shape = np.asarray((d, h, w))
    p = np.clip(pts, 0.0, shape - 1.0)
    i0 = np.minimum(p.astype(np.int64), shape - 2)                          # p >= 0: truncation is floor
    f = (p - i0).astype(np.float32)
    base = i0[..., 0] * (h * w) + i0[..., 1] * w + i0[..., 2]
    flat = vols.reshape(-1, c)
    wz = (1.0 - f[..., 0], f[..., 0])
    wy = (1.0 - f[..., 1], f[..., 1])
    wx = (1.0 - f[..., 2], f[..., 2])
    out = np.zeros(pts.shape[:-1] + (c,), dtype=np.float32)
    for dz in (0, 1):
        for dy in (0, 1):
            wzy = wz[dz] * wy[dy]
            row = base + (dz * h * w + dy * w)
            for dx in (0, 1):
                out += (wzy * wx[dx])[..., None] * flat[row + dx]
    return out


def _first_below(m: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Index of the first sample < 0.5 along axis 1 of (N, S) and whether one exists."""
    below = m < 0.5
    return below.argmax(axis=1), below.any(axis=1)


def _crossing(m: np.ndarray, j: np.ndarray, step: float) -> np.ndarray:
    """Sub-sample distance of the 0.5 crossing between samples j-1 (>= 0.5) and j (< 0.5), in mm from sample 0."""
    rows = np.arange(m.shape[0])
    a = m[rows, j - 1]
    b = m[rows, j]
    frac = np.where(a - b > 0, (a - 0.5) / np.maximum(a - b, 1e-12), 0.0)
    return (j - 1 + frac) * step


def local_thickness(mask: np.ndarray, spacing: Sequence[float], step_fraction: float = 0.2,
                    max_rays: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Local thickness (mm) along the inward normal at every surface voxel of a 3-D boolean ``mask`` (D, H, W).

    ``spacing`` is (z, y, x) in mm. Returns ``(voxels, thickness)``: int (N, 3) indices of the surface voxels and
    float (N,) thicknesses, NaN where the ray was rejected (see the module docstring). Empty mask -> N = 0.
    ``max_rays``: cast rays from at most this many surface voxels (a seeded random subset, in index order).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"thickness needs a 3-D mask, got shape {mask.shape}")
    spacing_arr = np.asarray([float(s) for s in spacing], dtype=np.float64)
    if spacing_arr.shape != (3,) or np.any(spacing_arr <= 0):
        raise ValueError(f"spacing must be 3 positive values, got {tuple(spacing)}")
    if not mask.any():
        return np.zeros((0, 3), dtype=np.int64), np.zeros(0)
    pad = 3
    coords = np.argwhere(mask)
    lo, hi = coords.min(0), coords.max(0) + 1
    crop = np.pad(mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], pad, constant_values=False)

    img = sitk.GetImageFromArray(crop.astype(np.uint8))
    img.SetSpacing(tuple(spacing_arr[::-1]))
    # inward normals: gradient of the mask smoothed with a Gaussian of one voxel (per axis)
    smooth = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(
        sitk.Cast(img, sitk.sitkFloat64), [float(v) * NORMAL_SIGMA_VOXELS for v in spacing_arr[::-1]]))
    grad = np.stack(np.gradient(smooth, *spacing_arr), axis=-1)            # (D, H, W, 3) per mm
    # distance (mm) from each voxel centre inside to the nearest background voxel centre: the radius of the largest
    # inscribed ball there, up to half a voxel
    radius = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
        img == 0, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)).astype(np.float64)
    radius = np.where(crop, radius, 0.0)

    surf = np.argwhere(surface_voxels(crop))                               # (N, 3)
    g = grad[surf[:, 0], surf[:, 1], surf[:, 2]]
    norm = np.linalg.norm(g, axis=1)
    ok = norm > 1e-9
    surf, g = surf[ok], g[ok] / norm[ok, None]
    if max_rays is not None and len(surf) > max_rays:
        keep = np.sort(np.random.default_rng(0).choice(len(surf), size=int(max_rays), replace=False))
        surf, g = surf[keep], g[keep]
    h_max = float(spacing_arr.max())
    step = float(step_fraction) * float(spacing_arr.min())
    back = h_max                                                            # the surface is < 1 voxel behind
    reach = 2.0 * (float(radius.max()) + h_max) + h_max
    s = np.arange(-math.ceil(back / step), math.ceil(reach / step) + 1) * step  # (S,) mm along the ray
    i0 = int(np.argmin(np.abs(s)))
    # the mask and the inscribed radius, sampled together along every ray
    both = np.stack([crop.astype(np.float32), radius.astype(np.float32)], axis=-1)  # (D, H, W, 2)

    lengths: List[np.ndarray] = []
    for start in range(0, len(surf), _RAY_CHUNK):
        p0 = surf[start:start + _RAY_CHUNK].astype(np.float64)
        d_idx = g[start:start + _RAY_CHUNK] / spacing_arr                   # index units per mm
        pts = p0[:, None, :] + s[None, :, None] * d_idx[:, None, :]         # (n, S, 3)
        sampled = _trilinear(both, pts)                                     # (n, S, 2)
        m = sampled[..., 0]
        fwd = m[:, i0:]
        j_out, has_out = _first_below(fwd)
        bwd = m[:, :i0 + 1][:, ::-1]
        j_in, has_in = _first_below(bwd)
        valid = has_out & has_in & (j_out > 0) & (j_in > 0)
        j_out = np.where(valid, j_out, 1)
        j_in = np.where(valid, j_in, 1)
        length = _crossing(fwd, j_out, step) + _crossing(bwd, j_in, step)
        # largest inscribed radius on the ray (inside samples only) for the rim-ray rejection
        ph = sampled[..., 1]
        idx = np.arange(len(s))[None, :]
        inside = (idx >= i0 - j_in[:, None]) & (idx <= i0 + j_out[:, None])
        r_ray = np.where(inside, ph, -np.inf).max(axis=1)
        valid &= length <= 2.0 * r_ray + RIM_TOLERANCE * h_max
        lengths.append(np.where(valid, length, np.nan))
    return surf + (lo - pad), np.concatenate(lengths)


def mean_thickness(mask: np.ndarray, spacing: Sequence[float], step_fraction: float = 0.2) -> ThicknessResult:
    """Mean local thickness (mm) of a 3-D boolean ``mask`` (D, H, W) with ``spacing`` (z, y, x) in mm.

    See the module docstring for the method; rays from at most :data:`MAX_RAYS` surface voxels. Returns NaN (and
    zero counts) for an empty mask.
    """
    _, t_all = local_thickness(mask, spacing, step_fraction, MAX_RAYS)
    t = t_all[np.isfinite(t_all)]
    if t.size == 0:
        return ThicknessResult(float("nan"), float("nan"), 0, int(t_all.size))
    return ThicknessResult(float(t.mean()), float(t.std()), int(t.size), int(t_all.size))


def measure_structures(labelmap: sitk.Image, plane: Optional[str] = None,
                       structures: Optional[Sequence[labels.Structure]] = None,
                       step_fraction: float = 0.2) -> List[StructureMeasure]:
    """Volume (mL) of every structure of the label table (of ``plane``, or ``structures``) and the mean thickness
    (mm) of the cartilage structures (kind ``"cartilage"``), one row per structure in label-table order."""
    if labelmap.GetDimension() != 3 or labelmap.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("measures need a scalar 3-D labelmap")
    arr = sitk.GetArrayViewFromImage(labelmap)
    spacing = array_spacing(labelmap)
    rows = []
    for s in (labels.knee_structures(plane) if structures is None else structures):
        mask = arr == s.value
        thick = float("nan")
        if s.kind == "cartilage":
            thick = mean_thickness(mask, spacing, step_fraction).mean_mm
        rows.append(StructureMeasure(s.value, s.key, s.name, structure_volume_ml(mask, spacing), thick))
    return rows


def format_measures(rows: Sequence[StructureMeasure]) -> str:
    """Plain-text table: structure, volume (mL), mean thickness (mm; '-' where not measured)."""
    lines = [f"{'Structure':<30} {'Volume (mL)':>11} {'Mean thickness (mm)':>20}"]
    for r in rows:
        thick = "-" if math.isnan(r.mean_thickness_mm) else f"{r.mean_thickness_mm:.2f}"
        lines.append(f"{r.name:<30} {r.volume_ml:>11.2f} {thick:>20}")
    return "\n".join(lines)


def write_measures(rows: Sequence[StructureMeasure], path: Path) -> Path:
    """Write the rows as CSV (``.csv``) or JSON (``.json``: a list of objects, NaN as null), atomically."""
    from OrthoDiffusionLib.segmentation.io import atomic_write

    path = Path(path)
    if path.suffix.lower() == ".json":
        data = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.as_dict().items()}
                for r in rows]
        text = json.dumps(data, indent=2) + "\n"
    elif path.suffix.lower() == ".csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["value", "key", "name", "volume_ml", "mean_thickness_mm"])
        for r in rows:
            writer.writerow([r.value, r.key, r.name, f"{r.volume_ml:.4f}",
                             "" if math.isnan(r.mean_thickness_mm) else f"{r.mean_thickness_mm:.4f}"])
        text = buf.getvalue()
    else:
        raise ValueError(f"measures table must be .csv or .json, got {path.name}")

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, path.suffix, write)
