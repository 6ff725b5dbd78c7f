"""Segmentation baselines trained from scratch on the same data: MONAI 3D U-Net and UNETR.

Both map a preprocessed volume (B, 1, D, H, W) (default 16 x 256 x 256) to logits (B, num_classes, D, H, W).

* ``"unet3d"``: ``monai.networks.nets.UNet`` with channels (64, 64, 128, 128, 256) (four down-samplings),
  two residual units per level, instance norm. The 16-slice depth would shrink to 1 after four isotropic stride-2
  steps, so strides are anisotropic (:func:`unet_strides`): each axis is halved at most until it reaches 2 voxels,
  and the halvings of an axis are put on the deepest levels, i.e. the low-resolution slice axis keeps its full
  resolution in the first level: for 16 x 256 x 256 the strides are (1,2,2), (2,2,2), (2,2,2), (2,2,2) and the
  bottleneck is 2 x 16 x 16.
* ``"unetr"``: ``monai.networks.nets.UNETR`` with hidden size 768, 12 heads, MLP 3072, feature size 16,
  patch 16 (fixed by MONAI), instance norm; ``img_size`` must be divisible by 16 on every axis
  (16 x 256 x 256 -> 1 x 16 x 16 = 256 tokens).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from torch import nn

UNET_CHANNELS: Tuple[int, ...] = (64, 64, 128, 128, 256)
UNETR_PATCH = 16
SEG_BASELINES = ("unet3d", "unetr")


def unet_strides(img_size: Sequence[int], levels: int = 4, min_size: int = 2) -> Tuple[Tuple[int, int, int], ...]:
    """Per-level (D, H, W) strides for ``levels`` down-samplings of a volume of ``img_size``.

    Axis a is halved n_a = min(levels, floor(log2(size_a / min_size))) times, on the last n_a levels; every size
    must be divisible by 2 ** n_a.
    """
    sizes = [int(s) for s in img_size]
    if len(sizes) != 3:
        raise ValueError(f"img_size needs 3 values (D, H, W), got {tuple(img_size)}")
    halvings = []
    for s in sizes:
        n = 0
        while n < levels and s // (2 ** (n + 1)) >= min_size and s % (2 ** (n + 1)) == 0:
            n += 1
        halvings.append(n)
    return tuple(tuple(2 if level >= levels - n else 1 for n in halvings)  # type: ignore[misc]
                 for level in range(levels))


def build_seg_baseline(name: str, num_classes: int = 12, img_size: Sequence[int] = (16, 256, 256),
                       in_channels: int = 1, channels: Optional[Sequence[int]] = None, hidden_size: int = 768,
                       num_heads: int = 12, mlp_dim: int = 3072, feature_size: int = 16) -> nn.Module:
    """A segmentation baseline by name (``"unet3d"`` or ``"unetr"``) for volumes of ``img_size`` (D, H, W).

    The defaults are the paper's sizes; ``channels`` (U-Net widths, one per level) and ``hidden_size``,
    ``num_heads``, ``mlp_dim``, ``feature_size`` (UNETR) scale a network down, e.g. for CPU-only runs (say so
    wherever results are reported)."""
    from monai.networks.nets import UNETR, UNet

    size = tuple(int(s) for s in img_size)
    if name == "unet3d":
        widths = tuple(int(c) for c in (UNET_CHANNELS if channels is None else channels))
        return UNet(spatial_dims=3, in_channels=in_channels, out_channels=num_classes, channels=widths,
                    strides=unet_strides(size, levels=len(widths) - 1), num_res_units=2, norm="INSTANCE")
    if name == "unetr":
        bad = [s for s in size if s % UNETR_PATCH]
        if len(size) != 3 or bad:
            raise ValueError(f"UNETR needs a 3-D img_size divisible by {UNETR_PATCH}, got {size}")
        return UNETR(in_channels=in_channels, out_channels=num_classes, img_size=size, feature_size=feature_size,
                     hidden_size=hidden_size, mlp_dim=mlp_dim, num_heads=num_heads, norm_name="instance",
                     res_block=True)
    raise ValueError(f"unknown segmentation baseline {name!r}; known: {', '.join(SEG_BASELINES)}")
