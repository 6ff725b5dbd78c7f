"""The diagnosis head: everything between the backbone taps and the calibrated probabilities.

``DiagnosisHead`` holds, per plane, the pooling trained in Stage I, the Stage II fusion, optionally the MPAE module
that supplies per-label plane weights (trained alongside, so every prediction carries them even when another
fusion supplies the probabilities), and per-label temperatures (identity until fitted).

Input: taps ``{plane: (B, C, D', H', W')}`` (absent planes missing or ``None``). Output:
:class:`DiagnosisOutput` with ``logits``/``probabilities`` ``(B, K)`` and ``plane_weights`` ``(B, K, 3)`` (or
``None`` without MPAE) in ``PLANES`` order. When the main fusion needs all three planes and one is absent, the
head falls back to MPAE (which renormalises over the present planes) if it has one, and says so in ``fused_by``;
otherwise it raises :class:`~OrthoDiffusionLib.errors.MissingPlaneError`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
from torch import nn

from .calibration import TemperatureScaler
from ..errors import MissingPlaneError
from .fusion import MPAEFusion, PlaneFusion, build_fusion, present_planes
from ..labels import PLANES
from .pooling import DEFAULT_POOLING, build_pooling

__all__ = ["DiagnosisOutput", "DiagnosisHead"]


@dataclass
class DiagnosisOutput:
    """``logits``, ``probabilities``: ``(B, K)`` (calibrated); ``plane_weights``: ``(B, K, 3)`` or ``None``;
    ``fused_by``: the fusion that produced the logits; ``planes``: the planes that were present."""

    logits: torch.Tensor
    probabilities: torch.Tensor
    plane_weights: Optional[torch.Tensor]
    fused_by: str
    planes: tuple


class DiagnosisHead(nn.Module):
    """Per-plane pooling + fusion (+ MPAE plane weights) + temperature scaling.

    Args:
        num_labels: K.
        channels: tap channels C (256 for ``mid_*``).
        pooling: ``gap``, ``glp`` or ``sap`` (default).
        fusion: ``concat`` (default), ``linear_add``, ``linear_concat``, ``cross_attention`` or ``mpae``.
        with_mpae: keep an MPAE module for plane weights (shared with ``fusion`` when that is ``mpae``).
        pooling_options, fusion_options, mpae_options: keyword arguments of the respective constructors.
    """

    def __init__(self, num_labels: int, channels: int = 256, pooling: str = DEFAULT_POOLING, fusion: str = "concat",
                 with_mpae: bool = True, planes: Sequence[str] = PLANES,
                 pooling_options: Optional[Mapping[str, Any]] = None,
                 fusion_options: Optional[Mapping[str, Any]] = None,
                 mpae_options: Optional[Mapping[str, Any]] = None):
        super().__init__()
        self.planes = tuple(planes)
        self.settings = {"num_labels": int(num_labels), "channels": int(channels), "pooling": pooling,
                         "fusion": fusion, "with_mpae": bool(with_mpae), "planes": list(self.planes),
                         "pooling_options": dict(pooling_options or {}), "fusion_options": dict(fusion_options or {}),
                         "mpae_options": dict(mpae_options or {})}
        self.pools = nn.ModuleDict({p: build_pooling(pooling, channels, **(pooling_options or {}))
                                    for p in self.planes})
        width = self.pools[self.planes[0]].out_features
        self.fusion: PlaneFusion = build_fusion(fusion, width, num_labels, self.planes, **(fusion_options or {}))
        if isinstance(self.fusion, MPAEFusion):
            self.mpae: Optional[MPAEFusion] = None  # the fusion itself gives the weights
        elif with_mpae:
            self.mpae = MPAEFusion(width, num_labels, self.planes, **(mpae_options or {}))
        else:
            self.mpae = None
        self.calibration = TemperatureScaler(num_labels)

    @property
    def weights_module(self) -> Optional[MPAEFusion]:
        """The MPAE module whose gate gives the plane weights (``None`` without one)."""
        return self.fusion if isinstance(self.fusion, MPAEFusion) else self.mpae

    def config(self) -> Dict[str, Any]:
        """Constructor arguments (JSON-friendly), for model bundles: ``DiagnosisHead(**head.config())``."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.settings.items()}

    def pooled(self, taps: Mapping[str, Optional[torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """Pooled features ``{plane: (B, F)}`` of the present planes."""
        return {p: self.pools[p](taps[p]) for p in present_planes(taps, self.planes)}

    def forward(self, taps: Mapping[str, Optional[torch.Tensor]]) -> DiagnosisOutput:
        return self.fuse(self.pooled(taps))

    def fuse(self, feats: Mapping[str, torch.Tensor]) -> DiagnosisOutput:
        """Everything after pooling: pooled features ``{plane: (B, F)}`` of the present planes -> output."""
        feats = {p: feats[p] for p in self.planes if feats.get(p) is not None}
        have = tuple(feats)
        if not have:
            raise MissingPlaneError("no plane given to the diagnosis head")
        gate = self.weights_module
        weights = None
        if gate is not None:
            mpae_out = gate(feats)
            weights = mpae_out.plane_weights
        if isinstance(self.fusion, MPAEFusion):
            logits, fused_by = mpae_out.logits, "mpae"
        elif len(have) < len(self.planes) and self.fusion.requires_all_planes:
            if gate is None:
                missing = [p for p in self.planes if p not in have]
                raise MissingPlaneError(f"{self.fusion.name} fusion needs all planes and no MPAE fallback is "
                                        f"available; missing: {', '.join(missing)}")
            logits, fused_by = mpae_out.logits, "mpae"
        else:
            logits, fused_by = self.fusion(feats).logits, self.fusion.name
        logits = self.calibration(logits)
        return DiagnosisOutput(logits, torch.sigmoid(logits), weights, fused_by, have)
