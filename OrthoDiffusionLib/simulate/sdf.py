"""Vectorised signed-distance primitives (numpy, float32) used by the procedural knee.

Every function takes ``p``: (3, N) float32 points in the knee's canonical frame (x lateral, y anterior, z superior,
millimetres), stored as coordinate rows (``p[0]`` = all x, ...): element-wise arithmetic on contiguous rows is many
times faster than reductions over the short last axis of an (N, 3) array. Each returns (N,) float32 signed
distances (negative inside). Some are exact SDFs, some (ellipsoid, smooth union, anisotropically scaled capsules)
are close approximations; the knee only needs inside/outside and roughly uniform offset shells (cartilage 2-3 mm),
for which these are accurate enough.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

F32 = np.float32


def _vec(v: Sequence[float]) -> np.ndarray:
    return np.asarray(v, dtype=F32)


def length3(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(N,) Euclidean length of the vectors with components x, y, z (each (N,))."""
    return np.sqrt(x * x + y * y + z * z)


def sphere(p: np.ndarray, c: Sequence[float], r: float) -> np.ndarray:
    c = _vec(c)
    return length3(p[0] - c[0], p[1] - c[1], p[2] - c[2]) - F32(r)


def capsule(p: np.ndarray, a: Sequence[float], b: Sequence[float], r: float,
            scale: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Capsule (segment a-b, radius r). ``scale`` divides coordinates first (flattened bands: scale=(1, 4, 1) makes
    the band 4x wider along y); the result is then approximately in millimetres of the thin direction."""
    s = _vec(scale)
    a_, b_ = _vec(a) / s, _vec(b) / s
    ab = b_ - a_
    inv_ab2 = F32(1.0) / F32(ab @ ab)
    q = [p[i] / s[i] - a_[i] if s[i] != 1 else p[i] - a_[i] for i in range(3)]
    t = (q[0] * ab[0] + q[1] * ab[1] + q[2] * ab[2]) * inv_ab2
    np.clip(t, F32(0.0), F32(1.0), out=t)
    return length3(q[0] - t * ab[0], q[1] - t * ab[1], q[2] - t * ab[2]) - F32(r)


def polyline(p: np.ndarray, pts: Sequence[Sequence[float]], r: float,
             scale: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Union of capsules along a polyline (a curved band)."""
    d = capsule(p, pts[0], pts[1], r, scale)
    for a, b in zip(pts[1:-1], pts[2:]):
        np.minimum(d, capsule(p, a, b, r, scale), out=d)
    return d


def round_box(p: np.ndarray, c: Sequence[float], half: Sequence[float], r: float) -> np.ndarray:
    """Box with centre c, half sizes ``half`` (outer extent), edges rounded with radius r (exact)."""
    c, h = _vec(c), _vec(half) - F32(r)
    q = [np.abs(p[i] - c[i]) - h[i] for i in range(3)]
    zero = F32(0.0)
    outside = length3(np.maximum(q[0], zero), np.maximum(q[1], zero), np.maximum(q[2], zero))
    inside = np.minimum(np.maximum(np.maximum(q[0], q[1]), q[2]), zero)
    return outside + inside - F32(r)


def round_cylinder_x(p: np.ndarray, c: Sequence[float], radius: float, half_len: float, rr: float) -> np.ndarray:
    """Cylinder with axis along x (circle of ``radius`` in the y-z plane), length 2*half_len, rounded rims (exact)."""
    c = _vec(c)
    qy, qz = p[1] - c[1], p[2] - c[2]
    dx = np.sqrt(qy * qy + qz * qz) - F32(radius - rr)
    dy = np.abs(p[0] - c[0]) - F32(half_len - rr)
    zero = F32(0.0)
    ox, oy = np.maximum(dx, zero), np.maximum(dy, zero)
    return np.minimum(np.maximum(dx, dy), zero) + np.sqrt(ox * ox + oy * oy) - F32(rr)


def ellipsoid(p: np.ndarray, c: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """Ellipsoid (bound-corrected approximation of the distance)."""
    rad, c = _vec(radii), _vec(c)
    q = [p[i] - c[i] for i in range(3)]
    k0 = length3(q[0] / rad[0], q[1] / rad[1], q[2] / rad[2])
    r2 = rad * rad
    k1 = length3(q[0] / r2[0], q[1] / r2[1], q[2] / r2[2])
    return np.where(k1 > 1e-6, k0 * (k0 - F32(1.0)) / np.maximum(k1, F32(1e-6)), -rad.min()).astype(F32, copy=False)


def round_cone_z(p: np.ndarray, c0: Sequence[float], r0: float, z1: float, r1: float,
                 y_scale: float = 1.0) -> np.ndarray:
    """Rounded cone with axis along z from sphere (c0, r0) to sphere (c0 at height z1, r1); y optionally scaled."""
    c = _vec(c0)
    h = F32(abs(z1 - c[2]))
    sign = F32(1.0 if z1 >= c[2] else -1.0)
    qx, qy = p[0] - c[0], (p[1] - c[1]) / F32(y_scale)
    qr = np.sqrt(qx * qx + qy * qy)
    qz = (p[2] - c[2]) * sign
    b = F32((r0 - r1) / h)
    a = F32(np.sqrt(1.0 - b * b))
    k = -b * qr + a * qz
    d_mid = a * qr + b * qz - F32(r0)
    d0 = np.sqrt(qr ** 2 + qz ** 2) - F32(r0)
    d1 = np.sqrt(qr ** 2 + (qz - h) ** 2) - F32(r1)
    return np.where(k < 0, d0, np.where(k > a * h, d1, d_mid)).astype(F32, copy=False)


def smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth union (polynomial smooth minimum, blend width k mm)."""
    h = np.clip(F32(0.5) + F32(0.5 / k) * (b - a), F32(0.0), F32(1.0))
    return b * (F32(1) - h) + a * h - F32(k) * h * (F32(1) - h)


def smax(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth intersection."""
    return -smin(-a, -b, k)
