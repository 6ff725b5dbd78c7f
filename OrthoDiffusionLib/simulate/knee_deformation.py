"""Random smooth, invertible transforms of a knee: anisotropic scale + rotation about the knee centre, optional
left-right mirror, and a smooth random displacement field.

The transform is defined by its *backward* map (patient point -> atlas point), which is what sampling needs::

    atlas(p) = c + L^-1 (p - c - u(p))          L = M R F diag(s) F^T  (mirror M, rotation R, knee frame F)

``u`` is a cubic B-spline displacement on a coarse control grid (``control_spacing`` mm), evaluated on a dense grid
(``dense_spacing`` mm) and interpolated trilinearly. Its gradient is capped (``max_gradient``) so ``I - grad u`` is
never singular: the map is smooth and fold-free. The forward map (atlas -> patient, for landmarks) is solved by
fixed-point iteration ``p = c + L (x - c) + u(p)``, which contracts because ``|grad u| < 1``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .label_volume import apply_affine


def _bspline_matrix(n_out: int, n_ctrl: int, step: float) -> np.ndarray:
    """(n_out, n_ctrl) cubic B-spline weights: dense sample ``x = i * step`` (in control-spacing units, offset 1)."""
    x = np.arange(n_out) * step + 1.0
    m = np.zeros((n_out, n_ctrl))
    base = np.floor(x).astype(int)
    for off in range(-1, 3):
        idx = base + off
        t = np.abs(x - idx)
        w = np.where(t < 1, (4 - 6 * t ** 2 + 3 * t ** 3) / 6, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))
        ok = (idx >= 0) & (idx < n_ctrl)
        m[np.arange(n_out)[ok], idx[ok]] += w[ok]
    return m


def rotation_matrix(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """(3, 3) rotation by ``angle_rad`` about unit ``axis`` (Rodrigues)."""
    k = np.asarray(axis, float) / max(float(np.linalg.norm(axis)), 1e-12)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * kx + (1 - np.cos(angle_rad)) * kx @ kx


class KneeTransform:
    """Backward/forward maps between patient space (output) and atlas space.

    Args:
        center: (3,) LPS knee centre (fixed point of scale/rotation/mirror).
        linear: (3, 3) forward linear part L (atlas -> patient), may include a reflection.
        lo, hi: (3,) LPS box (patient space) over which the displacement field is defined; outside it u = 0 smoothly
            clamped to the border values.
        displacement: None, or (nx, ny, nz, 3) float32 dense displacement (mm) on the grid ``lo + spacing * index``.
        dense_spacing: mm between dense displacement samples.
    """

    def __init__(self, center: np.ndarray, linear: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                 displacement: Optional[np.ndarray] = None, dense_spacing: float = 4.0):
        self.center = np.asarray(center, float)
        self.linear = np.asarray(linear, float)
        self.inverse_linear = np.linalg.inv(self.linear)
        self.lo = np.asarray(lo, float)
        self.hi = np.asarray(hi, float)
        self.dense_spacing = float(dense_spacing)
        self.displacement = displacement

    # ----------------------------------------------------------------------------------------- construction
    @classmethod
    def random(cls, rng: np.random.Generator, center: np.ndarray, frame_axes: np.ndarray, lo: np.ndarray,
               hi: np.ndarray, *, mirror: bool, deformation_mm: float, control_spacing: float,
               scale_range: Tuple[float, float], anisotropy: float, rotation_deg: float,
               max_gradient: float = 0.3, dense_spacing: float = 4.0) -> "KneeTransform":
        """A random transform.

        Args:
            frame_axes: (3, 3) columns = the atlas knee's lateral, anterior, superior unit vectors.
            deformation_mm: RMS of the smooth displacement (0: none).
            scale_range: global scale factor range; each knee axis gets an extra factor in 1 +- ``anisotropy``,
                the product clipped to ``scale_range``.
            rotation_deg: maximum rotation angle (random axis) about the knee centre.
            max_gradient: cap on the displacement gradient (spectral-norm bound) -> fold-free.
        """
        g = rng.uniform(*scale_range)
        s = np.clip(g * rng.uniform(1 - anisotropy, 1 + anisotropy, size=3), *sorted(scale_range))
        axis = rng.normal(size=3)
        angle = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg)) if rotation_deg > 0 else 0.0
        r = rotation_matrix(axis, angle)
        f = np.asarray(frame_axes, float)
        m = np.diag([-1.0, 1.0, 1.0]) if mirror else np.eye(3)
        linear = m @ r @ f @ np.diag(s) @ f.T
        disp = None
        # The displacement grid lives in patient space: map the atlas box forward (linear part only) plus margin.
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        fwd = center + (corners - center) @ linear.T
        plo, phi = fwd.min(axis=0) - 10.0, fwd.max(axis=0) + 10.0
        if deformation_mm > 0:
            n_dense = np.ceil((phi - plo) / dense_spacing).astype(int) + 1
            n_ctrl = np.ceil((phi - plo) / control_spacing).astype(int) + 3
            ctrl = rng.normal(size=(*n_ctrl, 3))
            mats = [_bspline_matrix(nd, nc, dense_spacing / control_spacing) for nd, nc in zip(n_dense, n_ctrl)]
            dense = np.einsum("ai,bj,ck,ijkd->abcd", mats[0], mats[1], mats[2], ctrl, optimize=True)
            rms = float(np.sqrt(np.mean(np.sum(dense ** 2, axis=-1)) / 3.0))
            dense *= deformation_mm / max(rms, 1e-9)
            grad = max_gradient_norm(dense, dense_spacing)
            if grad > max_gradient:
                dense *= max_gradient / grad
            disp = dense.astype(np.float32)
        return cls(center, linear, plo, phi, disp, dense_spacing)

    # ------------------------------------------------------------------------------------------------ maps
    def displacement_at(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) displacement u (mm) at (N, 3) patient points (trilinear; clamped at the grid border).

        Uses ``torch.nn.functional.grid_sample`` (trilinear, ``align_corners=True``): exactly trilinear
        interpolation of the dense samples, several times faster than numpy gathers.
        """
        if self.displacement is None:
            return np.zeros_like(points)
        import torch

        if getattr(self, "_field_t", None) is None:
            # (1, 3, nx, ny, nz): grid_sample's (D, H, W) = our (x, y, z) dense axes
            self._field_t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(self.displacement, -1, 0)))[None]
        n = np.array(self.displacement.shape[:3], dtype=np.float64)
        scale = (2.0 / (self.dense_spacing * (n - 1))).astype(np.float32)
        offset = (-1.0 - self.lo * 2.0 / (self.dense_spacing * (n - 1))).astype(np.float32)
        g = np.asarray(points, dtype=np.float32) * scale + offset  # normalised [-1, 1] per our axis
        grid = torch.from_numpy(np.ascontiguousarray(g[:, ::-1]))  # grid_sample wants (W, H, D) = (z, y, x)
        with torch.no_grad():
            out = torch.nn.functional.grid_sample(self._field_t, grid.view(1, -1, 1, 1, 3), mode="bilinear",
                                                  padding_mode="border", align_corners=True)
        return out.view(3, -1).T.numpy().astype(np.asarray(points).dtype, copy=False)

    def backward(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) atlas LPS points for (N, 3) patient LPS points."""
        pts = np.asarray(points)
        rel = pts - self.center.astype(pts.dtype)
        if self.displacement is not None:
            rel -= self.displacement_at(pts)
        return apply_affine(rel, self.inverse_linear, self.center)

    def forward(self, points: np.ndarray, iterations: int = 30) -> np.ndarray:
        """(N, 3) patient LPS points for (N, 3) atlas LPS points (inverse of :meth:`backward`)."""
        x = np.atleast_2d(np.asarray(points, float))
        p = self.center + (x - self.center) @ self.linear.T
        if self.displacement is None:
            return p
        base = p.copy()
        for _ in range(iterations):
            p_new = base + self.displacement_at(p)
            if np.max(np.abs(p_new - p)) < 1e-6:
                p = p_new
                break
            p = p_new
        return p

    def forward_jacobian(self, point: np.ndarray, h: float = 0.5) -> np.ndarray:
        """(3, 3) derivative of the forward map at atlas point ``point`` (central differences)."""
        x = np.asarray(point, float)
        cols = [(self.forward(x + h * e) - self.forward(x - h * e))[0] / (2 * h) for e in np.eye(3)]
        return np.stack(cols, axis=1)

    def backward_jacobian_det(self, points: np.ndarray, h: float = 0.5) -> np.ndarray:
        """(N,) determinant of the backward map's derivative at (N, 3) patient points (central differences)."""
        pts = np.asarray(points, float)
        cols = [(self.backward(pts + h * e) - self.backward(pts - h * e)) / (2 * h) for e in np.eye(3)]
        return np.linalg.det(np.stack(cols, axis=2))


def max_gradient_norm(field: np.ndarray, spacing: float) -> float:
    """Upper bound of the spectral norm of the gradient of a (nx, ny, nz, 3) field (Frobenius norm, max over grid)."""
    grads = np.stack(np.gradient(field, spacing, axis=(0, 1, 2)), axis=-1)  # (..., 3 comps, 3 dirs)
    return float(np.sqrt((grads ** 2).sum(axis=(-1, -2))).max())
