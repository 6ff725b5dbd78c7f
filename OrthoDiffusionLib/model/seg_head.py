"""Segmentation heads on diffusion-backbone taps.

Both heads take the dict of tap tensors that ``DiffusionUNet.encode(x_t, t, taps=head.required_taps)`` returns and
produce per-class logits at the input resolution.

Tap geometry of the default network (``model_channels`` w = 64) for an input of shape (B, 1, 16, 256, 256); the
channel counts scale with w / 64, the spatial sizes with the input size:

====================  =========  ===================
tap                   channels   (D, H, W)
====================  =========  ===================
in_0, in_1            w          (16, 256, 256)
in_2, in_3            w          (8, 128, 128)
in_4                  w          (4, 64, 64)
in_5                  2w         (4, 64, 64)
in_6, in_7            2w         (2, 32, 32)
in_8                  2w         (1, 16, 16)
in_9                  4w         (1, 16, 16)
mid_0, mid_1, mid_2   4w         (1, 16, 16)
====================  =========  ===================

``BottleneckSegHead`` is the paper's head (bottleneck only). ``SkipSegHead`` additionally concatenates encoder
taps after each upsampling stage (a U-Net style decoder on the frozen/fine-tuned encoder) for sharper boundaries.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import INPUT_TAP

#: Decoder widths of the paper's head: 256 -> 128 -> 64 -> 32 -> 16.
DEFAULT_DECODER_CHANNELS: Tuple[int, int, int, int] = (128, 64, 32, 16)
#: Default skip taps of ``SkipSegHead``: (tap name, decoder stage it joins). Stage 0 is the bottleneck resolution
#: (before the first upsampling), stage k the output of the k-th transposed convolution (stage 4 = full size).
DEFAULT_SKIP_TAPS: Tuple[Tuple[str, int], ...] = (("in_8", 0), ("in_6", 1), ("in_4", 2), ("in_2", 3))
GROUPS = 8


def encoder_tap_channels(model_channels: int = 64) -> Dict[str, int]:
    """Channel count of every encoder / middle tap of a ``DiffusionUNet`` of width ``model_channels``."""
    w = int(model_channels)
    ch = {f"in_{i}": w for i in range(5)}
    ch.update({f"in_{i}": 2 * w for i in range(5, 9)})
    ch["in_9"] = 4 * w
    ch.update({f"mid_{i}": 4 * w for i in range(3)})
    return ch


def _groups(channels: int) -> int:
    if channels % GROUPS != 0:
        raise ValueError(f"GroupNorm({GROUPS}) needs a channel count divisible by {GROUPS}, got {channels}")
    return GROUPS


class ResidualConvBlock3d(nn.Module):
    """x + Conv3d(SiLU(GN(Conv3d(SiLU(GN(x)))))) with 3x3x3 convolutions; shape (B, C, D, H, W) preserved."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(channels), channels)
        self.conv1 = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(channels), channels)
        self.conv2 = nn.Conv3d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return x + h


#: Upsampling factors (D, H, W) of each decoder stage of the paper's head: x2 on every axis, four times.
DEFAULT_STRIDES: Tuple[Tuple[int, int, int], ...] = ((2, 2, 2),) * 4


class _UpStage(nn.Module):
    """ConvTranspose3d + SiLU that multiplies each axis by its stride (1 or 2): kernel 4 / padding 1 on a
    doubled axis, kernel 3 / padding 1 on a kept one. (B, Cin, D, H, W) -> (B, Cout, sD*D, sH*H, sW*W)."""

    def __init__(self, cin: int, cout: int, stride: Sequence[int] = (2, 2, 2)):
        super().__init__()
        stride = tuple(int(v) for v in stride)
        if any(v not in (1, 2) for v in stride) or len(stride) != 3:
            raise ValueError(f"upsampling strides must be 1 or 2 per axis, got {stride}")
        kernel = tuple(4 if v == 2 else 3 for v in stride)
        self.up = nn.ConvTranspose3d(cin, cout, kernel_size=kernel, stride=stride, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.up(x))


def _resize_to(logits: torch.Tensor, output_size: Optional[Sequence[int]]) -> torch.Tensor:
    if output_size is None or tuple(logits.shape[-3:]) == tuple(output_size):
        return logits
    return F.interpolate(logits, size=tuple(int(s) for s in output_size), mode="trilinear", align_corners=False)


class BottleneckSegHead(nn.Module):
    """The paper's segmentation head, from the bottleneck tap only.

    Four ConvTranspose3d (kernel 4, stride 2, padding 1, each followed by SiLU) take the bottleneck
    ``in_channels`` -> 128 -> 64 -> 32 -> 16 channels while doubling D, H and W (16x in total: depth 1 -> 16,
    H, W 16 -> 256 for the default input); a residual conv block (GroupNorm(8), SiLU, 3x3x3 conv, twice) follows
    each of the first two upsamplings; a 1x1x1 convolution gives ``num_classes`` logits (background included).

    Input: ``taps[bottleneck_tap]`` of shape (B, in_channels, D/16, H/16, W/16).
    Output: logits (B, num_classes, D, H, W); pass ``output_size`` to resample (trilinear) onto another size.
    """

    def __init__(self, num_classes: int = 12, in_channels: int = 256, bottleneck_tap: str = "mid_2",
                 decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
                 strides: Sequence[Sequence[int]] = DEFAULT_STRIDES):
        super().__init__()
        self.num_classes = int(num_classes)
        self.bottleneck_tap = bottleneck_tap
        self.required_taps: Tuple[str, ...] = (bottleneck_tap,)
        self.ups, self.blocks, chans = _decoder(in_channels, decoder_channels, strides)
        self.classifier = nn.Conv3d(chans[-1], self.num_classes, kernel_size=1)

    def forward(self, taps: Mapping[str, torch.Tensor],
                output_size: Optional[Sequence[int]] = None) -> torch.Tensor:
        x = _require(taps, self.bottleneck_tap)
        for k, up in enumerate(self.ups):
            x = up(x)
            if k < len(self.blocks):
                x = self.blocks[k](x)
        return _resize_to(self.classifier(x), output_size)


class SkipSegHead(nn.Module):
    """Bottleneck head with U-Net style skip connections from encoder taps.

    Same decoder as :class:`BottleneckSegHead`; at each decoder stage listed in ``skip_taps`` the named encoder tap
    is concatenated along channels and fused back to the stage width by Conv3d(3x3x3) + GroupNorm(8) + SiLU.
    Stage 0 is the bottleneck resolution (before the first upsampling), stage k the output of the k-th
    upsampling. Default taps (:data:`DEFAULT_SKIP_TAPS`): ``in_8`` at stage 0 (1x16x16), ``in_6`` at stage 1
    (2x32x32), ``in_4`` at stage 2 (4x64x64) and ``in_2`` at stage 3 (8x128x128) for a 16x256x256 input; the
    full-resolution taps ``in_0``/``in_1`` (stage 4) can be added but cost much activation memory.

    ``image_stages`` (e.g. (4, 5) for the CPU-scale backbone, whose shallowest tap is already 4x coarser in-plane
    than the input) also join the network input there: a small full-resolution stem (Conv3d 3x3x3 then 1x3x3, each
    with GroupNorm + SiLU, ``image_channels`` wide) reads the input tap :data:`INPUT_TAP` (B, 1, D, H, W), is
    average-pooled to the stage's size, and is added through Conv3d(1x3x3) + GroupNorm + SiLU on [stage, image
    features] and a zero-initialised Conv3d(1x1x1). Thin
    structures (2-3 mm cartilage plates, ligaments) thus get boundaries from the image itself, and a head grown
    this way from a trained one starts out giving exactly that head's logits.

    ``required_taps`` = (bottleneck_tap, *skip tap names[, INPUT_TAP]). Input tensors of shape (B, C_tap, *stage
    size); output logits (B, num_classes, D, H, W).
    """

    def __init__(self, num_classes: int = 12, in_channels: int = 256, bottleneck_tap: str = "mid_2",
                 skip_taps: Sequence[Tuple[str, int]] = DEFAULT_SKIP_TAPS,
                 tap_channels: Optional[Mapping[str, int]] = None,
                 decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
                 strides: Sequence[Sequence[int]] = DEFAULT_STRIDES,
                 image_stages: Sequence[int] = (), image_channels: int = 16):
        super().__init__()
        tap_channels = dict(encoder_tap_channels(in_channels // 4) if tap_channels is None else tap_channels)
        self.num_classes = int(num_classes)
        self.bottleneck_tap = bottleneck_tap
        self.skip_taps: Tuple[Tuple[str, int], ...] = tuple((str(n), int(s)) for n, s in skip_taps)
        stages = [s for _, s in self.skip_taps]
        if len(set(stages)) != len(stages) or any(not 0 <= s <= len(strides) for s in stages):
            raise ValueError(f"skip_taps need distinct stages in 0..{len(strides)}, got {self.skip_taps}")
        missing = [n for n, _ in self.skip_taps if n not in tap_channels]
        if missing:
            raise ValueError(f"no channel count for skip taps {missing}")
        self.required_taps: Tuple[str, ...] = (bottleneck_tap, *[n for n, _ in self.skip_taps])
        self.ups, self.blocks, chans = _decoder(in_channels, decoder_channels, strides)
        self._stage_tap: Dict[int, str] = {s: n for n, s in self.skip_taps}
        self.fuse = nn.ModuleDict()
        for name, stage in self.skip_taps:
            c = chans[stage]
            self.fuse[str(stage)] = nn.Sequential(
                nn.Conv3d(c + int(tap_channels[name]), c, kernel_size=3, padding=1),
                nn.GroupNorm(_groups(c), c), nn.SiLU())
        self.image_stages: Tuple[int, ...] = tuple(int(v) for v in image_stages)
        if self.image_stages:
            if any(not 0 <= v <= len(strides) for v in self.image_stages) or \
                    len(set(self.image_stages)) != len(self.image_stages):
                raise ValueError(f"image_stages need distinct stages in 0..{len(strides)}, got {self.image_stages}")
            ci = int(image_channels)
            self.image_stem = nn.Sequential(
                nn.Conv3d(1, ci, kernel_size=3, padding=1), nn.GroupNorm(_groups(ci), ci), nn.SiLU(),
                nn.Conv3d(ci, ci, kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.GroupNorm(_groups(ci), ci), nn.SiLU())
            self.image_fuse = nn.ModuleDict()
            for stage in self.image_stages:  # in-plane kernels: the detail is in-plane, and full size is costly
                c = chans[stage]
                last = nn.Conv3d(c, c, kernel_size=1)
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)
                self.image_fuse[str(stage)] = nn.Sequential(
                    nn.Conv3d(c + ci, c, kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.GroupNorm(_groups(c), c),
                    nn.SiLU(), last)
            self.required_taps = (*self.required_taps, INPUT_TAP)
        self.classifier = nn.Conv3d(chans[-1], self.num_classes, kernel_size=1)

    def _add_image(self, x: torch.Tensor, stage: int, image: Optional[torch.Tensor]) -> torch.Tensor:
        """x + fuse([x, image features pooled to x's size]) at an image stage; x unchanged elsewhere."""
        if image is None or stage not in self.image_stages:
            return x
        feats = image if tuple(image.shape[-3:]) == tuple(x.shape[-3:]) else \
            F.adaptive_avg_pool3d(image, tuple(x.shape[-3:]))
        return x + self.image_fuse[str(stage)](torch.cat([x, feats.to(x.dtype)], dim=1))

    def _merge(self, x: torch.Tensor, stage: int, taps: Mapping[str, torch.Tensor]) -> torch.Tensor:
        name = self._stage_tap.get(stage)
        if name is None:
            return x
        skip = _require(taps, name)
        if tuple(skip.shape[-3:]) != tuple(x.shape[-3:]):
            raise ValueError(f"tap {name!r} has spatial size {tuple(skip.shape[-3:])}, decoder stage {stage} "
                             f"expects {tuple(x.shape[-3:])}")
        return self.fuse[str(stage)](torch.cat([x, skip.to(x.dtype)], dim=1))

    def forward(self, taps: Mapping[str, torch.Tensor],
                output_size: Optional[Sequence[int]] = None) -> torch.Tensor:
        image = self.image_stem(_require(taps, INPUT_TAP)[:, :1]) if self.image_stages else None
        x = self._add_image(self._merge(_require(taps, self.bottleneck_tap), 0, taps), 0, image)
        for k, up in enumerate(self.ups):
            x = up(x)
            if k < len(self.blocks):
                x = self.blocks[k](x)
            x = self._add_image(self._merge(x, k + 1, taps), k + 1, image)
        return _resize_to(self.classifier(x), output_size)


def _decoder(in_channels: int, decoder_channels: Sequence[int], strides: Sequence[Sequence[int]]
             ) -> Tuple[nn.ModuleList, nn.ModuleList, Sequence[int]]:
    """Upsampling stages (one per stride) and the residual blocks after the first two; returns (ups, blocks,
    channel widths from the bottleneck to the last stage)."""
    if len(decoder_channels) != len(strides):
        raise ValueError(f"decoder_channels needs {len(strides)} widths (one per upsampling stage), "
                         f"got {tuple(decoder_channels)}")
    chans = [int(in_channels), *[int(c) for c in decoder_channels]]
    ups = nn.ModuleList(_UpStage(chans[k], chans[k + 1], strides[k]) for k in range(len(strides)))
    blocks = nn.ModuleList([ResidualConvBlock3d(c) for c in chans[1:3]])
    return ups, blocks, chans


def _require(taps: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in taps:
        raise KeyError(f"segmentation head needs tap {name!r}; got {sorted(taps)}")
    return taps[name]


SEG_HEADS = ("bottleneck", "skip")


def build_seg_head(name: str, num_classes: int = 12, model_channels: int = 64, bottleneck_tap: str = "mid_2",
                   tap_channels: Optional[Mapping[str, int]] = None,
                   skip_taps: Sequence[Tuple[str, int]] = DEFAULT_SKIP_TAPS,
                   decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
                   strides: Sequence[Sequence[int]] = DEFAULT_STRIDES, image_stages: Sequence[int] = (),
                   image_channels: int = 16) -> nn.Module:
    """Segmentation head by name (``"bottleneck"`` or ``"skip"``).

    Channel counts come from ``tap_channels`` (tap name -> channels) or, if omitted, from
    :func:`encoder_tap_channels` of a backbone of width ``model_channels``.
    """
    channels = dict(encoder_tap_channels(model_channels) if tap_channels is None else tap_channels)
    if bottleneck_tap not in channels:
        raise ValueError(f"no channel count for bottleneck tap {bottleneck_tap!r}")
    if name == "bottleneck":
        if image_stages:
            raise ValueError("image_stages need the skip head")
        return BottleneckSegHead(num_classes, channels[bottleneck_tap], bottleneck_tap, decoder_channels, strides)
    if name == "skip":
        return SkipSegHead(num_classes, channels[bottleneck_tap], bottleneck_tap, skip_taps, channels,
                           decoder_channels, strides, image_stages, image_channels)
    raise ValueError(f"unknown segmentation head {name!r}; known: {', '.join(SEG_HEADS)}")
