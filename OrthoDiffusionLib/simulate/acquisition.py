"""2D multi-slice acquisition: series geometry and rendering of an anatomy source onto it.

A series is a stack of ``n_slices`` thick slices (ITK axis 2 = slice axis) with in-plane pixels ``fov/matrix``.
Base orientations (ITK direction columns, LPS) follow clinical DICOM conventions:
sagittal rows->posterior, columns->inferior; coronal rows->left, columns->inferior; axial rows->left,
columns->posterior; the slice axis is their cross product. A small oblique rotation (a few degrees) is applied.
Rendering evaluates ``tissue_at`` on ``slice_subsamples x inplane_subsamples**2`` points per voxel (spread over the
slice thickness and the pixel), so thick slices get partial-volume averaging, then applies :mod:`.contrast`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from . import contrast as C
from .tissues import AnatomySource, segmentation_from_tissue

PLANE_DIRECTIONS: Dict[str, Tuple[Tuple[float, float, float], Tuple[float, float, float]]] = {
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
}
SERIES_DESCRIPTIONS = {"sagittal": "PD SAG", "coronal": "PD COR", "axial": "PD AX"}
_TILE = 16


@dataclass
class SeriesSpec:
    """Acquisition parameters of one 2D multi-slice series."""

    plane: str
    matrix: Tuple[int, int] = (256, 256)  # (rows, columns)
    n_slices: int = 24
    fov_mm: float = 150.0
    slice_thickness: float = 3.5
    slice_gap: float = 0.35
    oblique_deg: Tuple[float, float, float] = (0.0, 0.0, 0.0)  # rotation about x, y, z (LPS)
    center_offset_mm: Tuple[float, float, float] = (0.0, 0.0, 0.0)  # in the knee's (lat, ant, sup) axes
    slice_subsamples: int = 3
    inplane_subsamples: int = 0  # 0 = automatic: 1 for pixels <= 0.8 mm, else 2
    field_strength: float = 3.0
    repetition_time: float = 2450.0
    echo_time: float = 34.0
    extra: Dict[str, object] = field(default_factory=dict)

    @property
    def pixel_mm(self) -> float:
        return self.fov_mm / max(self.matrix)


@dataclass
class Geometry:
    size: Tuple[int, int, int]  # ITK order (columns, rows, slices)
    spacing: Tuple[float, float, float]
    origin: np.ndarray  # (3,)
    direction: np.ndarray  # (3,3), columns = ITK axes in LPS

    def apply(self, img: sitk.Image) -> sitk.Image:
        img.SetSpacing(tuple(float(s) for s in self.spacing))
        img.SetOrigin(tuple(float(v) for v in self.origin))
        img.SetDirection(tuple(float(v) for v in self.direction.ravel()))
        return img


@dataclass
class RenderedSeries:
    """One rendered series: image (int16 stored values), tissue ids and the 11-structure labelmap on one grid."""

    spec: SeriesSpec
    image: sitk.Image
    tissue: sitk.Image
    labelmap: sitk.Image
    noise_sigma: float


def _rot(deg: Tuple[float, float, float]) -> np.ndarray:
    rx, ry, rz = np.deg2rad(deg)
    Rx = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    Ry = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    Rz = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def series_geometry(spec: SeriesSpec, anatomy: AnatomySource) -> Geometry:
    """Geometry of a series centred on the knee (``knee_center`` + 12 mm superior + ``center_offset_mm``)."""
    if spec.plane not in PLANE_DIRECTIONS:
        raise ValueError(f"unknown plane {spec.plane!r}")
    row, col = (np.asarray(v, dtype=np.float64) for v in PLANE_DIRECTIONS[spec.plane])
    D = np.stack([row, col, np.cross(row, col)], axis=1)
    D = _rot(spec.oblique_deg) @ D
    lm = anatomy.landmarks
    off = spec.center_offset_mm
    center = (lm["knee_center"] + 12.0 * lm["axis_superior"] + off[0] * lm["axis_lateral"]
              + off[1] * lm["axis_anterior"] + off[2] * lm["axis_superior"])
    rows, cols = spec.matrix
    px = spec.pixel_mm
    dz = spec.slice_thickness + spec.slice_gap
    spacing = (px, px, dz)
    size = (cols, rows, spec.n_slices)
    half = np.array([(cols - 1) * px / 2, (rows - 1) * px / 2, (spec.n_slices - 1) * dz / 2])
    origin = center - D @ half
    return Geometry(size, spacing, origin, D)


def _subsample_offsets(spec: SeriesSpec) -> np.ndarray:
    """(S, 3) offsets in mm along the (i, j, k) axes of the sub-samples of one voxel."""
    q = spec.inplane_subsamples or (1 if spec.pixel_mm <= 0.8 else 2)
    s = max(1, spec.slice_subsamples)
    ip = ((np.arange(q) + 0.5) / q - 0.5) * spec.pixel_mm
    sl = ((np.arange(s) + 0.5) / s - 0.5) * spec.slice_thickness
    # centre sub-sample first along the slice so index 0 (with odd s) is at the voxel centre when q == 1
    order = np.argsort(np.abs(sl), kind="stable")
    sl = sl[order]
    oi, oj, ok = np.meshgrid(ip, ip, sl, indexing="ij")
    off = np.stack([oi, oj, ok], axis=-1).reshape(-1, 3)
    # sort so the sub-sample nearest the voxel centre comes first
    return off[np.argsort(np.linalg.norm(off, axis=1), kind="stable")]


def _voxel_points(geo: Geometry, off: np.ndarray, k: np.ndarray, j: np.ndarray, i: np.ndarray,
                  s: np.ndarray) -> np.ndarray:
    """(M, 3) float32 LPS points of sub-sample ``s`` of voxels (k, j, i): integer arrays that broadcast together
    (M = their broadcast size, flattened in C order; ``i``/``j`` up to two past the grid). Each coordinate is a sum of
    four small per-axis tables (column, row, slice, sub-sample offset incl. origin) taken at the indices; float32
    keeps ~0.1 um precision at knee coordinates. The result is a transposed view whose columns are contiguous."""
    px, _, dz = geo.spacing
    D = geo.direction
    cols, rows, nz = geo.size
    base = geo.origin + np.asarray(off, dtype=np.float64) @ D.T  # (S, 3) LPS of sub-sample s of voxel (0, 0, 0)
    shape = np.broadcast_shapes(np.shape(k), np.shape(j), np.shape(i), np.shape(s))
    rows_lps = np.empty((3,) + shape, dtype=np.float32)  # one contiguous block per LPS coordinate
    for r in range(3):
        c = rows_lps[r]
        c[...] = (np.arange(cols + 2) * (px * D[r, 0])).astype(np.float32)[i]
        c += (np.arange(rows + 2) * (px * D[r, 1])).astype(np.float32)[j]
        c += (np.arange(nz) * (dz * D[r, 2])).astype(np.float32)[k]
        c += base[:, r].astype(np.float32)[s]
    return rows_lps.reshape(3, -1).T


def _tile_key(k: np.ndarray, j: np.ndarray, i: np.ndarray, s: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(M,) key of the (slice, 16x16 tile) of each point (index arrays broadcast like :func:`_voxel_points`); a
    stable sort by it makes consecutive points spatially compact. 16-bit when it fits (radix sort, linear time)."""
    nty, ntx = rows // _TILE + 1, cols // _TILE + 1
    n_keys = (int(np.max(k, initial=0)) + 1) * nty * ntx
    key = (np.asarray(k, dtype=np.int32) * nty + np.asarray(j) // _TILE) * ntx + np.asarray(i) // _TILE
    key = key.astype(np.int16 if n_keys <= np.iinfo(np.int16).max else np.int32)
    shape = np.broadcast_shapes(np.shape(k), np.shape(j), np.shape(i), np.shape(s))
    return np.broadcast_to(key, shape).ravel()


def _sample(anatomy: AnatomySource, geo: Geometry, off: np.ndarray, k, j, i, s, batch: int = 1 << 20) -> np.ndarray:
    """(M,) tissue ids at :func:`_voxel_points` (k, j, i, s), evaluated in tile order in batches of ``batch``."""
    order = np.argsort(_tile_key(k, j, i, s, geo.size[1] + 2, geo.size[0] + 2), kind="stable")
    lps = _voxel_points(geo, off, k, j, i, s).T  # (3, M) contiguous rows
    out = np.empty(len(order), dtype=np.uint8)
    for b0 in range(0, len(order), batch):
        o = order[b0:b0 + batch]
        out[o] = anatomy.tissue_at(lps[:, o].T)
    return out


def sample_tissue(anatomy: AnatomySource, spec: SeriesSpec, geo: Geometry, coarse_to_fine: bool = True) -> np.ndarray:
    """Tissue ids of every sub-sample of every voxel: (nz, rows, cols, S) uint8.

    With ``coarse_to_fine`` the sub-samples are first evaluated on every second row and column; a fine sample whose
    (up to four) surrounding coarse samples agree takes that label, the others are evaluated exactly. Exact for any
    structure thicker than two pixels (all knee structures at clinical resolutions), about 3x faster.
    """
    cols, rows, nz = geo.size
    off = _subsample_offsets(spec)
    S = len(off)
    k, s = np.arange(nz)[:, None, None, None], np.arange(S)
    if not coarse_to_fine:
        j, i = np.arange(rows)[:, None, None], np.arange(cols)[:, None]
        return _sample(anatomy, geo, off, k, j, i, s).reshape(nz, rows, cols, S)
    mr, mc = rows // 2 + 1, cols // 2 + 1
    jc, ic = 2 * np.arange(mr)[:, None, None], 2 * np.arange(mc)[:, None]
    coarse = _sample(anatomy, geo, off, k, jc, ic, s).reshape(nz, mr, mc, S)
    # fine sample (j, i) lies between coarse rows j // 2, (j + 1) // 2 and columns i // 2, (i + 1) // 2
    fine = np.repeat(np.repeat(coarse, 2, axis=1)[:, :rows], 2, axis=2)[:, :, :cols]
    eq_i = coarse[:, :, :-1] == coarse[:, :, 1:]  # coarse columns c and c + 1 agree
    eq_j = coarse[:, :-1] == coarse[:, 1:]  # coarse rows r and r + 1 agree
    hr, hc = rows // 2, cols // 2
    differ = np.zeros(fine.shape, dtype=bool)  # even row and even column: a coarse sample itself
    differ[:, 0::2, 1::2] = ~eq_i[:, :(rows + 1) // 2, :hc]
    differ[:, 1::2, 0::2] = ~eq_j[:, :hr, :(cols + 1) // 2]
    differ[:, 1::2, 1::2] = ~(eq_i[:, :hr, :hc] & eq_i[:, 1:hr + 1, :hc] & eq_j[:, :hr, :hc])
    k, j, i, s = np.nonzero(differ)
    if len(k):
        fine[k, j, i, s] = _sample(anatomy, geo, off, k, j, i, s)
    return fine


def render_series(anatomy: AnatomySource, spec: SeriesSpec, center: C.Center, rng: np.random.Generator,
                  coarse_to_fine: bool = True) -> RenderedSeries:
    """Render one series from an anatomy source.

    The tissue label of a voxel is the label at the sub-sample nearest its centre; the labelmap is the segmentation
    (values 1..11) of those labels. Image: (slices, rows, cols) int16 via :func:`.contrast.render_intensity`.
    """
    geo = series_geometry(spec, anatomy)
    cols, rows, nz = geo.size
    px = geo.spacing[0]
    tissue = sample_tissue(anatomy, spec, geo, coarse_to_fine)
    centers = C.GridPositions(np.asarray(geo.origin, dtype=np.float64), geo.direction @ np.diag(geo.spacing),
                              (nz, rows, cols))
    img, sigma = C.render_intensity(tissue, centers, px, spec.slice_thickness, spec.field_strength, center, rng)
    center_tissue = tissue[..., 0]
    image = geo.apply(sitk.GetImageFromArray(img))
    tis = geo.apply(sitk.GetImageFromArray(center_tissue))
    seg = geo.apply(sitk.GetImageFromArray(segmentation_from_tissue(center_tissue)))
    return RenderedSeries(spec, image, tis, seg, sigma)
