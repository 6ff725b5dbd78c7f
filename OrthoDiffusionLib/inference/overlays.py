"""Segmentation overlay pictures as PNG bytes, with numpy + zlib only (no matplotlib at inference).

``overlay_rgb`` blends a label slice over a grey image slice (filled at ``alpha`` plus a solid 1-pixel outline in
each structure's colour); ``encode_png`` writes an RGB (H, W, 3) uint8 array as a PNG file's bytes;
``mid_slice_overlay`` does both for the middle slice of a series shown in its plane's canonical (radiological)
orientation, and returns the pixel aspect so pictures can be displayed undistorted.
"""
from __future__ import annotations

import struct
import zlib
from typing import Mapping, Optional, Tuple

import numpy as np
import SimpleITK as sitk

__all__ = ["encode_png", "overlay_rgb", "mid_slice_overlay"]


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 image (8-bit truecolour, no interlace, filter 0 on every row)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8, got shape {rgb.shape}")
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def _window(image: np.ndarray) -> np.ndarray:
    """Grey levels 0..255 from the 1st..99.5th percentile of the slice."""
    lo, hi = np.percentile(image, [1.0, 99.5]) if image.size else (0.0, 1.0)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip((image - lo) * scale, 0, 255)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def overlay_rgb(image: np.ndarray, labels: Optional[np.ndarray], colors: Mapping[int, Tuple[int, int, int]],
                alpha: float = 0.35) -> np.ndarray:
    """(H, W) image + (H, W) integer labels -> (H, W, 3) uint8: grey image, structures filled at ``alpha`` and
    outlined in their ``colors[value]``; values without a colour are not drawn."""
    grey = _window(np.asarray(image, dtype=np.float64))
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if labels is not None:
        labels = np.asarray(labels)
        for value, color in colors.items():
            mask = labels == value
            if not mask.any():
                continue
            c = np.asarray(color, dtype=np.float64)
            rgb[mask] = (1 - alpha) * rgb[mask] + alpha * c
            rgb[_outline(mask)] = c
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def mid_slice_overlay(image: sitk.Image, labelmap: Optional[sitk.Image], plane: str,
                      colors: Mapping[int, Tuple[int, int, int]]) -> Tuple[bytes, float]:
    """PNG bytes of the middle slice of ``image`` (reoriented to ``plane``'s canonical orientation, see
    :mod:`OrthoDiffusionLib.inference.preprocess`) with ``labelmap`` (same geometry) overlaid, and the displayed
    width / height ratio in millimetres."""
    from .preprocess import reorient

    img = reorient(image, plane)
    arr = sitk.GetArrayViewFromImage(img)
    k = arr.shape[0] // 2
    lab = None
    if labelmap is not None:
        lab = sitk.GetArrayFromImage(reorient(labelmap, plane))[k]
    rgb = overlay_rgb(arr[k], lab, colors)
    sx, sy = img.GetSpacing()[:2]
    h, w = arr.shape[1:]
    return encode_png(rgb), float(w * sx) / float(h * sy)


def slices_montage(image: sitk.Image, labelmap: Optional[sitk.Image], plane: str,
                   colors: Mapping[int, Tuple[int, int, int]], count: int = 6, max_px: int = 320) -> np.ndarray:
    """(2H, count x W, 3) uint8: ``count`` slices spread over the middle 70 % of ``image`` (in ``plane``'s canonical
    orientation), each shown twice, above without and below with ``labelmap`` overlaid, so the labels can be
    compared with the anatomy across the whole series. Slices larger than ``max_px`` are shown at every k-th
    pixel."""
    from .preprocess import reorient

    arr = sitk.GetArrayFromImage(reorient(image, plane))
    lab = sitk.GetArrayFromImage(reorient(labelmap, plane)) if labelmap is not None else None
    step = max(1, int(np.ceil(max(arr.shape[1:]) / max_px)))
    arr = arr[:, ::step, ::step]
    lab = lab[:, ::step, ::step] if lab is not None else None
    picks = np.linspace(0.15 * (arr.shape[0] - 1), 0.85 * (arr.shape[0] - 1), count).round().astype(int)
    tiles = [np.concatenate([overlay_rgb(arr[k], None, colors), overlay_rgb(arr[k], None if lab is None else lab[k],
                                                                             colors)], axis=0) for k in picks]
    return np.concatenate(tiles, axis=1)
