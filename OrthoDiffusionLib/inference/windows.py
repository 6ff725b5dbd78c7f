"""Whole-series segmentation: overlapping windows of the model's slab depth along the slice axis, blended.

The segmentation network sees slabs of ``window`` slices (16 for the paper's network). A series on the model grid
usually has more slices (a thin-slice 3D series resampled to 4 mm, or a 2D series of 20-30 slices), so the whole
series is covered by overlapping slabs whose class probabilities are blended with Gaussian weights along the slice
axis (MONAI's ``sliding_window_inference``, mode "gaussian"); a series with fewer slices is padded with its lowest
intensity (as the training crops pad a short series). Each slab is
min-max normalised to [-1, 1] on its own before it is noised and encoded, exactly as a training slab is.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["SlabFn", "normalize_slabs", "segment_series_in_windows"]

#: (B, 1, window, H, W) slabs in [-1, 1] -> (B, C, window, H, W) class probabilities.
SlabFn = Callable[[torch.Tensor], torch.Tensor]


def normalize_slabs(x: torch.Tensor) -> torch.Tensor:
    """Min-max each slab of (B, 1, D, H, W) to [-1, 1] (a constant slab becomes -1)."""
    flat = x.reshape(x.shape[0], -1)
    lo = flat.min(dim=1).values.reshape(-1, 1, 1, 1, 1)
    hi = flat.max(dim=1).values.reshape(-1, 1, 1, 1, 1)
    return (x - lo) / (hi - lo).clamp_min(1e-6) * 2.0 - 1.0


def segment_series_in_windows(volume: torch.Tensor, probabilities_of: SlabFn, window: int = 16,
                              overlap: float = 0.5, batch_size: int = 4) -> torch.Tensor:
    """Class probabilities of a whole series from overlapping slabs.

    Args:
        volume: (D, H, W) float, the series on the model grid (any intensity range; each slab is normalised).
        probabilities_of: the network on a batch of normalised slabs (see :data:`SlabFn`).
        window: slab depth (slices).
        overlap: fraction of a slab shared with the next one (0.5: every slice is seen by about two slabs).
        batch_size: slabs per network call.

    Returns:
        (C, D, H, W) float32 probabilities (each voxel's class probabilities sum to 1).
    """
    from monai.inferers import sliding_window_inference

    if volume.dim() != 3:
        raise ValueError(f"expected a (D, H, W) volume, got shape {tuple(volume.shape)}")
    d, h, w = volume.shape
    x = volume.float()[None, None]

    def predictor(slabs: torch.Tensor) -> torch.Tensor:
        return probabilities_of(normalize_slabs(slabs)).float()

    out = sliding_window_inference(x, roi_size=(window, h, w), sw_batch_size=batch_size, predictor=predictor,
                                   overlap=(overlap, 0.0, 0.0), mode="gaussian", padding_mode="constant",
                                   cval=float(x.min()))
    out = out[0]
    return out / out.sum(dim=0, keepdim=True).clamp_min(1e-6)
