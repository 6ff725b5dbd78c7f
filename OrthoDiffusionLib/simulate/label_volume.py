"""A tissue label volume on an oriented voxel grid, with LPS <-> index mapping and nearest-neighbour sampling."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Tuple

import numpy as np

from .tissues import Tissue


def apply_affine(points: np.ndarray, matrix: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """``points @ matrix.T + offset`` for (N, 3) points in their own dtype (broadcast form: numpy's matmul is slow
    for an (N, 3) x (3, 3) product)."""
    m = np.asarray(matrix, dtype=points.dtype)
    out = points[:, 0:1] * m[:, 0] + np.asarray(offset, dtype=points.dtype)
    out += points[:, 1:2] * m[:, 1]
    out += points[:, 2:3] * m[:, 2]
    return out


@dataclass
class LabelVolume:
    """Tissue ids on an oriented grid.

    Attributes:
        labels: (K, J, I) uint8 :class:`Tissue` ids (numpy order: slice, row, column, as SimpleITK returns them).
        origin: (3,) LPS mm of voxel (i=0, j=0, k=0).
        spacing: (3,) mm along i, j, k.
        direction: (3, 3) columns = LPS unit vectors of the i, j, k index axes.
    """

    labels: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray

    @property
    def size_ijk(self) -> np.ndarray:
        """(3,) int: number of voxels along i, j, k."""
        return np.array(self.labels.shape[::-1], dtype=np.int64)

    @property
    def index_to_lps(self) -> np.ndarray:
        """(3, 3) matrix M with ``lps = origin + M @ ijk``."""
        return self.direction @ np.diag(self.spacing)

    def lps_of_index(self, ijk: np.ndarray) -> np.ndarray:
        """(N, 3) LPS mm of (N, 3) (i, j, k) indices (float allowed)."""
        return self.origin + np.asarray(ijk, dtype=np.float64) @ self.index_to_lps.T

    def index_of_lps(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) continuous (i, j, k) indices of (N, 3) LPS points."""
        inv = np.linalg.inv(self.index_to_lps)
        return (np.asarray(points, dtype=np.float64) - self.origin) @ inv.T

    def sample(self, points: np.ndarray) -> np.ndarray:
        """Nearest-neighbour tissue ids at (N, 3) LPS points; AIR outside the grid. Returns (N,) uint8."""
        pts = np.asarray(points)
        dtype = np.float32 if pts.dtype == np.float32 else np.float64
        inv = np.linalg.inv(self.index_to_lps)
        ijk = apply_affine(pts.astype(dtype, copy=False), inv, -(inv @ self.origin))
        return self.sample_index(ijk)

    def sample_index(self, ijk: np.ndarray) -> np.ndarray:
        """Nearest-neighbour tissue ids at (N, 3) continuous indices; AIR outside the grid. Returns (N,) uint8."""
        ni, nj, nk = (int(v) for v in self.size_ijk)
        itype = np.int32 if self.labels.size < 2 ** 31 - 1 else np.int64
        idx = np.rint(ijk).astype(itype)
        inside = ((idx[:, 0] >= 0) & (idx[:, 0] < ni) & (idx[:, 1] >= 0) & (idx[:, 1] < nj)
                  & (idx[:, 2] >= 0) & (idx[:, 2] < nk))
        flat = (idx[:, 2] * nj + idx[:, 1]) * ni + idx[:, 0]
        flat[~inside] = 0
        out = self.labels.reshape(-1)[flat]
        out[~inside] = 0
        return out

    def points_of(self, tissues: Iterable[int], max_points: int = 200_000) -> np.ndarray:
        """LPS centres (N, 3) of the voxels whose label is in ``tissues`` (evenly subsampled to <= max_points)."""
        values = np.asarray(list(tissues), dtype=np.int64)
        flat = self.labels.reshape(-1)
        if len(values) == 1:
            mask = flat == values[0]
        else:
            wanted = np.zeros(256, dtype=bool)
            wanted[values] = True
            mask = wanted[flat]
        idx = np.flatnonzero(mask)
        if len(idx) > max_points:
            idx = idx[:: int(np.ceil(len(idx) / max_points))]
        return self.lps_of_index(self.unravel(idx))

    def unravel(self, flat_index: np.ndarray) -> np.ndarray:
        """(N, 3) (i, j, k) indices of flat indices into ``labels``."""
        k, j, i = np.unravel_index(flat_index, self.labels.shape)
        return np.stack([i, j, k], axis=1)

    def voxel_volume(self) -> float:
        """Volume of one voxel in mm^3."""
        return float(np.prod(self.spacing))

    def count(self, tissue: int) -> int:
        """Number of voxels labelled ``tissue``."""
        return int(np.count_nonzero(self.labels == tissue))

    def corners(self) -> np.ndarray:
        """(8, 3) LPS centres of the corner voxels."""
        n = self.size_ijk - 1
        c = np.array([[a, b, d] for a in (0, n[0]) for b in (0, n[1]) for d in (0, n[2])], dtype=np.float64)
        return self.lps_of_index(c)

    def bounding_box(self, exclude: Tuple[int, ...] = (int(Tissue.AIR),)) -> Tuple[np.ndarray, np.ndarray]:
        """(lo, hi) LPS box of all voxels whose label is not in ``exclude`` (voxel half-size included)."""
        mask = ~np.isin(self.labels, np.asarray(exclude, dtype=np.uint8))
        lo_i, hi_i = [], []
        for axis in (2, 1, 0):  # i, j, k
            other = tuple(a for a in range(3) if a != axis)
            nz = np.flatnonzero(mask.any(axis=other))
            lo_i.append(nz[0] - 0.5)
            hi_i.append(nz[-1] + 0.5)
        box = np.array([[a, b, c] for a in (lo_i[0], hi_i[0]) for b in (lo_i[1], hi_i[1]) for c in (lo_i[2], hi_i[2])])
        pts = self.lps_of_index(box)
        return pts.min(axis=0), pts.max(axis=0)
