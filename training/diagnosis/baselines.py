"""Classification baselines trained from scratch (paper Appendix D, "Training baseline models"), built from MONAI.

* ``unet3d``: the encoder (down path + bottom) of MONAI's ``UNet`` with channels (64, 64, 128, 128, 256), strides
  (2, 2, 2, 2) and two-subunit residual units (instance norm, PReLU) -- for a 16 x 256 x 256 volume the bottleneck
  is 256 x 1 x 16 x 16 like the diffusion U-Net's ``mid_0`` -- then global average pooling and a linear head.
* ``resnet18``: ``monai.networks.nets.resnet18(spatial_dims=3, n_input_channels=1)``; its 512-d pooled features feed
  a linear head (with ``planes=None`` MONAI's own ``fc`` with ``num_classes=K`` is used directly).

With ``planes`` (default: all three) there is one encoder per plane and their features are concatenated (simple-
concat fusion) into one ``Linear -> K``; ``forward`` takes ``{plane: (B, 1, D, H, W)}``. With ``planes=None`` the
model takes a single volume ``(B, 1, D, H, W)``. Outputs are logits ``(B, K)``.

Paper schedules (lr 1e-4): knee U-Net 10 epochs, ResNet-18 8; ankle 12 / 10; shoulder 8 / 6 (see
``BASELINE_EPOCHS``; the training configs carry them too).
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import torch
from torch import nn

from OrthoDiffusionLib.errors import MissingPlaneError
from OrthoDiffusionLib.labels import PLANES

__all__ = [
    "UNetEncoder",
    "ResNet18Encoder",
    "MultiPlaneBaseline",
    "SingleVolumeBaseline",
    "BASELINES",
    "BASELINE_EPOCHS",
    "BASELINE_LR",
    "build_classification_baseline",
]

BASELINE_LR = 1e-4
BASELINE_EPOCHS: Dict[str, Dict[str, int]] = {
    "knee": {"unet3d": 10, "resnet18": 8},
    "ankle": {"unet3d": 12, "resnet18": 10},
    "shoulder": {"unet3d": 8, "resnet18": 6},
}


class UNetEncoder(nn.Module):
    """MONAI-UNet-style encoder + global average pooling: ``(B, 1, D, H, W) -> (B, channels[-1])``.

    Down path ``ResidualUnit(c_in, c_i, stride s_i)`` for ``i < len(channels) - 1`` and the bottom unit
    ``ResidualUnit(c_{-2}, c_{-1}, stride 1)``, exactly as ``monai.networks.nets.UNet(num_res_units=2)`` builds its
    encoder. :meth:`bottleneck` returns the feature map before pooling.
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (64, 64, 128, 128, 256),
                 strides: Sequence[int] = (2, 2, 2, 2), num_res_units: int = 2):
        super().__init__()
        from monai.networks.blocks import ResidualUnit

        if len(strides) != len(channels) - 1:
            raise ValueError("need len(strides) == len(channels) - 1")
        layers = []
        c_in = in_channels
        for c, s in zip(channels[:-1], strides):
            layers.append(ResidualUnit(3, c_in, c, strides=s, subunits=num_res_units, norm="INSTANCE", act="PRELU"))
            c_in = c
        layers.append(ResidualUnit(3, c_in, channels[-1], strides=1, subunits=num_res_units, norm="INSTANCE",
                                   act="PRELU"))
        self.layers = nn.Sequential(*layers)
        self.out_features = int(channels[-1])

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(x).flatten(2).mean(dim=2)


class ResNet18Encoder(nn.Module):
    """MONAI 3D ResNet-18 without its classifier: ``(B, 1, D, H, W) -> (B, 512 * widen_factor)``."""

    def __init__(self, in_channels: int = 1, widen_factor: float = 1.0):
        super().__init__()
        from monai.networks.nets import resnet18

        self.net = resnet18(spatial_dims=3, n_input_channels=in_channels, feed_forward=False,
                            widen_factor=widen_factor)
        self.out_features = int(512 * widen_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _encoder(name: str, **kwargs) -> nn.Module:
    if name == "unet3d":
        return UNetEncoder(**kwargs)
    return ResNet18Encoder(**kwargs)


class MultiPlaneBaseline(nn.Module):
    """One encoder per plane, features concatenated -> ``Linear(sum F, K)``. ``forward({plane: volume}) -> logits``;
    all planes are required (``MissingPlaneError`` otherwise)."""

    def __init__(self, name: str, num_labels: int, planes: Sequence[str] = PLANES, **encoder_kwargs):
        super().__init__()
        self.planes = tuple(planes)
        self.encoders = nn.ModuleDict({p: _encoder(name, **encoder_kwargs) for p in self.planes})
        width = sum(e.out_features for e in self.encoders.values())
        self.head = nn.Linear(width, num_labels)

    def forward(self, volumes: Mapping[str, Optional[torch.Tensor]]) -> torch.Tensor:
        missing = [p for p in self.planes if volumes.get(p) is None]
        if missing:
            raise MissingPlaneError(f"baseline needs all of {', '.join(self.planes)}; missing: {', '.join(missing)}")
        return self.head(torch.cat([self.encoders[p](volumes[p]) for p in self.planes], dim=1))


class SingleVolumeBaseline(nn.Module):
    """One encoder on one volume -> ``Linear(F, K)``: ``(B, 1, D, H, W) -> (B, K)``."""

    def __init__(self, name: str, num_labels: int, **encoder_kwargs):
        super().__init__()
        self.encoder = _encoder(name, **encoder_kwargs)
        self.head = nn.Linear(self.encoder.out_features, num_labels)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(volume))


BASELINES = ("unet3d", "resnet18")
_ALIASES = {"unet": "unet3d", "3d_unet": "unet3d", "3d-unet": "unet3d", "unet_3d": "unet3d",
            "resnet": "resnet18", "resnet_18": "resnet18", "resnet-18": "resnet18", "3d_resnet18": "resnet18"}


def build_classification_baseline(name: str, num_labels: int, planes: Optional[Sequence[str]] = PLANES,
                                  **encoder_kwargs) -> nn.Module:
    """``unet3d`` or ``resnet18`` (aliases accepted) for ``num_labels`` labels; per-plane concat model when
    ``planes`` is a sequence, single-volume model when ``None``. ``encoder_kwargs``: ``channels``, ``strides``,
    ``num_res_units`` (U-Net) or ``widen_factor`` (ResNet; e.g. 0.25 for tiny tests)."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    if planes is None:
        return SingleVolumeBaseline(key, num_labels, **encoder_kwargs)
    return MultiPlaneBaseline(key, num_labels, planes, **encoder_kwargs)
