"""Vectorised signed-distance primitives (numpy, float32) used by the procedural knee.

Every function takes ``p``: (N, 3) float32 points in the knee's canonical frame (x lateral, y anterior, z superior,
millimetres) and returns (N,) float32 signed distances (negative inside). Some are exact SDFs, some (ellipsoid,
smooth union, anisotropically scaled capsules) are close approximations; the knee only needs inside/outside and
roughly uniform offset shells (cartilage 2-3 mm), for which these are accurate enough.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

F32 = np.float32


def _vec(v: Sequence[float]) -> np.ndarray:
    return np.asarray(v, dtype=F32)


def sphere(p: np.ndarray, c: Sequence[float], r: float) -> np.ndarray:
    return np.linalg.norm(p - _vec(c), axis=1) - F32(r)


def capsule(p: np.ndarray, a: Sequence[float], b: Sequence[float], r: float,
            scale: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Capsule (segment a-b, radius r). ``scale`` divides coordinates first (flattened bands: scale=(1, 4, 1) makes
    the band 4x wider along y); the result is then approximately in millimetres of the thin direction."""
    s = _vec(scale)
    a_, b_ = _vec(a) / s, _vec(b) / s
    q = p / s - a_
    ab = b_ - a_
    t = np.clip(q @ ab / F32(ab @ ab), 0.0, 1.0).astype(F32)
    return np.linalg.norm(q - t[:, None] * ab, axis=1) - F32(r)


def polyline(p: np.ndarray, pts: Sequence[Sequence[float]], r: float,
             scale: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Union of capsules along a polyline (a curved band)."""
    d = capsule(p, pts[0], pts[1], r, scale)
    for a, b in zip(pts[1:-1], pts[2:]):
        d = np.minimum(d, capsule(p, a, b, r, scale))
    return d


def round_box(p: np.ndarray, c: Sequence[float], half: Sequence[float], r: float) -> np.ndarray:
    """Box with centre c, half sizes ``half`` (outer extent), edges rounded with radius r (exact)."""
    q = np.abs(p - _vec(c)) - (_vec(half) - F32(r))
    outside = np.linalg.norm(np.maximum(q, 0.0), axis=1)
    inside = np.minimum(q.max(axis=1), 0.0)
    return (outside + inside - F32(r)).astype(F32)


def round_cylinder_x(p: np.ndarray, c: Sequence[float], radius: float, half_len: float, rr: float) -> np.ndarray:
    """Cylinder with axis along x (circle of ``radius`` in the y-z plane), length 2*half_len, rounded rims (exact)."""
    q = p - _vec(c)
    dx = np.linalg.norm(q[:, 1:], axis=1) - F32(radius - rr)
    dy = np.abs(q[:, 0]) - F32(half_len - rr)
    outside = np.sqrt(np.maximum(dx, 0.0) ** 2 + np.maximum(dy, 0.0) ** 2)
    return (np.minimum(np.maximum(dx, dy), 0.0) + outside - F32(rr)).astype(F32)


def ellipsoid(p: np.ndarray, c: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """Ellipsoid (bound-corrected approximation of the distance)."""
    rad = _vec(radii)
    q = p - _vec(c)
    k0 = np.linalg.norm(q / rad, axis=1)
    k1 = np.linalg.norm(q / (rad * rad), axis=1)
    return np.where(k1 > 1e-6, k0 * (k0 - 1.0) / np.maximum(k1, 1e-6), -rad.min()).astype(F32)


def round_cone_z(p: np.ndarray, c0: Sequence[float], r0: float, z1: float, r1: float,
                 y_scale: float = 1.0) -> np.ndarray:
    """Rounded cone with axis along z from sphere (c0, r0) to sphere (c0 at height z1, r1); y optionally scaled."""
    c = _vec(c0)
    q = p - c
    h = F32(abs(z1 - c[2]))
    sign = F32(1.0 if z1 >= c[2] else -1.0)
    qr = np.sqrt(q[:, 0] ** 2 + (q[:, 1] / F32(y_scale)) ** 2)
    qz = q[:, 2] * sign
    b = F32((r0 - r1) / h)
    a = F32(np.sqrt(1.0 - b * b))
    k = -b * qr + a * qz
    d_mid = a * qr + b * qz - F32(r0)
    d0 = np.sqrt(qr ** 2 + qz ** 2) - F32(r0)
    d1 = np.sqrt(qr ** 2 + (qz - h) ** 2) - F32(r1)
    return np.where(k < 0, d0, np.where(k > a * h, d1, d_mid)).astype(F32)


def smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth union (polynomial smooth minimum, blend width k mm)."""
    h = np.clip(0.5 + 0.5 * (b - a) / F32(k), 0.0, 1.0)
    return (b * (1 - h) + a * h - F32(k) * h * (1 - h)).astype(F32)


def smax(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth intersection."""
    return -smin(-a, -b, k)
