"""Per-plane classifier heads and the paper's five cross-plane fusions.

Every fusion takes the per-plane pooled features as a mapping ``plane -> (B, F)`` (planes named as in
:data:`OrthoDiffusionLib.labels.PLANES`: ``sagittal``, ``coronal``, ``axial``; ``F = 512`` for SAP/GLP on
256-channel taps) and returns a :class:`FusionOutput` with ``logits`` ``(B, K)`` and ``plane_weights``
``(B, K, 3)`` (MPAE only; ``None`` for the others). Plane order in ``plane_weights`` is always ``PLANES``.

=================  ===========================================================  ==========================
name               what it does                                                 missing planes
=================  ===========================================================  ==========================
``concat``         ``[F_sag || F_cor || F_ax]`` (3F) -> Linear -> K (default)    needs all three
``linear_add``     per plane Linear(F, 512), sum (512) -> Linear -> K             sum over present planes,
                                                                                rescaled by 3 / n_present
``linear_concat``  per plane Linear(F, 512), concat (1536) -> Linear -> K        needs all three
``cross_attention`` per plane Linear(F, 512); 4-head attention sag<-cor,         needs all three
                   cor<-ax, ax<-sag; residual + LayerNorm; concat -> Linear -> K
``mpae``           per-plane Linear(F, K) heads give z^(o); per label k a gate   softmax renormalised over
                   MLP (shared over labels) maps (z_k^sag, z_k^cor, z_k^ax) to   the present planes; absent
                   softmax weights alpha_k; fused z_k = sum_o alpha_k^o z_k^o     planes get weight 0
=================  ===========================================================  ==========================

A fusion that needs all three planes raises :class:`~OrthoDiffusionLib.errors.MissingPlaneError` when one is absent
(a plane is absent when its key is missing or maps to ``None``).

MPAE gate: ``gate_hidden=32, gate_dropout=0.0`` is the authors' code (the default), ``gate_hidden=16,
gate_dropout=0.1`` the paper's text. In the paper's protocol the per-plane heads are trained first (logits
out-of-fold by patient-level 5-fold CV) and the gate is then trained on those logits: use
:meth:`MPAEFusion.fuse_logits` for that stage. :func:`plane_weights_for` lets every prediction carry MPAE plane
weights even when another fusion (e.g. concat) supplies the probabilities.
"""
from __future__ import annotations

from typing import Dict, Mapping, NamedTuple, Optional, Sequence, Tuple, Type

import torch
from torch import nn

from ..errors import MissingPlaneError
from ..labels import PLANES

__all__ = [
    "FusionOutput",
    "PlaneClassifier",
    "PlaneFusion",
    "SimpleConcatFusion",
    "LinearAddFusion",
    "LinearConcatFusion",
    "CrossAttentionFusion",
    "MPAEFusion",
    "FUSIONS",
    "DEFAULT_FUSION",
    "build_fusion",
    "plane_weights_for",
    "present_planes",
]

DEFAULT_FUSION = "concat"
PlaneFeatures = Mapping[str, Optional[torch.Tensor]]


class FusionOutput(NamedTuple):
    """``logits``: ``(B, K)``; ``plane_weights``: ``(B, K, 3)`` in ``PLANES`` order (MPAE) or ``None``."""

    logits: torch.Tensor
    plane_weights: Optional[torch.Tensor] = None


def present_planes(features: PlaneFeatures, planes: Sequence[str] = PLANES) -> Tuple[str, ...]:
    """The planes of ``planes`` whose feature is given (key present, value not ``None``), in ``planes`` order."""
    unknown = [p for p in features if p not in planes]
    if unknown:
        raise ValueError(f"unknown plane(s) {unknown}; expected a subset of {list(planes)}")
    return tuple(p for p in planes if features.get(p) is not None)


def _require_all(features: PlaneFeatures, planes: Sequence[str], fusion: str) -> None:
    have = present_planes(features, planes)
    missing = [p for p in planes if p not in have]
    if missing:
        raise MissingPlaneError(f"{fusion} fusion needs all of {', '.join(planes)}; missing: {', '.join(missing)}")


class PlaneClassifier(nn.Module):
    """Stage I per-plane multi-label head: pooled features ``(B, F)`` -> logits ``(B, K)`` (one Linear)."""

    def __init__(self, in_features: int, num_labels: int):
        super().__init__()
        self.in_features, self.num_labels = int(in_features), int(num_labels)
        self.linear = nn.Linear(self.in_features, self.num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)


class PlaneFusion(nn.Module):
    """Base of the fusions: ``forward({plane: (B, F)}) -> FusionOutput``. ``requires_all_planes`` says whether the
    fusion raises ``MissingPlaneError`` for an absent plane."""

    requires_all_planes: bool = True
    name: str = ""

    def __init__(self, in_features: int, num_labels: int, planes: Sequence[str] = PLANES):
        super().__init__()
        self.in_features, self.num_labels, self.planes = int(in_features), int(num_labels), tuple(planes)


class SimpleConcatFusion(PlaneFusion):
    """``[F_sag || F_cor || F_ax]`` ``(B, 3F)`` -> ``Linear(3F, K)``. Needs all three planes."""

    name = "concat"

    def __init__(self, in_features: int, num_labels: int, planes: Sequence[str] = PLANES):
        super().__init__(in_features, num_labels, planes)
        self.fused_features = len(self.planes) * self.in_features
        self.head = nn.Linear(self.fused_features, self.num_labels)

    def fuse(self, features: PlaneFeatures) -> torch.Tensor:
        """The fused representation ``(B, 3F)`` (what the MRI head of EHR late fusion consumes)."""
        _require_all(features, self.planes, self.name)
        return torch.cat([features[p] for p in self.planes], dim=1)

    def forward(self, features: PlaneFeatures) -> FusionOutput:
        return FusionOutput(self.head(self.fuse(features)))


class LinearAddFusion(PlaneFusion):
    """Per plane ``Linear(F, E)`` (E = 512), sum -> ``Linear(E, K)``.

    Tolerates missing planes: the sum runs over the present planes and is rescaled by ``n_planes / n_present`` so its
    scale matches training with all planes (a heuristic; accuracy with missing planes is not what was trained).
    """

    name = "linear_add"
    requires_all_planes = False

    def __init__(self, in_features: int, num_labels: int, planes: Sequence[str] = PLANES, embed_dim: int = 512):
        super().__init__(in_features, num_labels, planes)
        self.project = nn.ModuleDict({p: nn.Linear(self.in_features, embed_dim) for p in self.planes})
        self.head = nn.Linear(embed_dim, self.num_labels)

    def forward(self, features: PlaneFeatures) -> FusionOutput:
        have = present_planes(features, self.planes)
        if not have:
            raise MissingPlaneError("linear_add fusion got no plane at all")
        total = sum(self.project[p](features[p]) for p in have)
        return FusionOutput(self.head(total * (len(self.planes) / len(have))))


class LinearConcatFusion(PlaneFusion):
    """Per plane ``Linear(F, E)`` (E = 512), concat ``(B, 3E)`` -> ``Linear(3E, K)``. Needs all three planes."""

    name = "linear_concat"

    def __init__(self, in_features: int, num_labels: int, planes: Sequence[str] = PLANES, embed_dim: int = 512):
        super().__init__(in_features, num_labels, planes)
        self.project = nn.ModuleDict({p: nn.Linear(self.in_features, embed_dim) for p in self.planes})
        self.head = nn.Linear(len(self.planes) * embed_dim, self.num_labels)

    def forward(self, features: PlaneFeatures) -> FusionOutput:
        _require_all(features, self.planes, self.name)
        return FusionOutput(self.head(torch.cat([self.project[p](features[p]) for p in self.planes], dim=1)))


class CrossAttentionFusion(PlaneFusion):
    """Cross-plane attention fusion. Needs all three planes.

    ``H^o = W^o F^o`` (E = 512); for each plane ``o`` attending to ``src(o)`` (sag<-cor, cor<-ax, ax<-sag, i.e. each
    plane attends to the next one in ``planes``): ``H~^o = MHA_o(H^o, H^src, H^src)`` (``heads`` heads, one token
    each), ``H'^o = LayerNorm_o(H^o + H~^o)``; ``[H'^sag || H'^cor || H'^ax]`` ``(B, 3E)`` -> ``Linear(3E, K)``.
    """

    name = "cross_attention"

    def __init__(self, in_features: int, num_labels: int, planes: Sequence[str] = PLANES, embed_dim: int = 512,
                 heads: int = 4):
        super().__init__(in_features, num_labels, planes)
        self.project = nn.ModuleDict({p: nn.Linear(self.in_features, embed_dim) for p in self.planes})
        self.attention = nn.ModuleDict({p: nn.MultiheadAttention(embed_dim, heads, batch_first=True)
                                        for p in self.planes})
        self.norm = nn.ModuleDict({p: nn.LayerNorm(embed_dim) for p in self.planes})
        self.head = nn.Linear(len(self.planes) * embed_dim, self.num_labels)

    def source_of(self, plane: str) -> str:
        """The plane that ``plane`` attends to (sagittal <- coronal, coronal <- axial, axial <- sagittal)."""
        i = self.planes.index(plane)
        return self.planes[(i + 1) % len(self.planes)]

    def refine(self, features: PlaneFeatures) -> Dict[str, torch.Tensor]:
        """The refined embeddings ``H'^o`` ``plane -> (B, E)``."""
        _require_all(features, self.planes, self.name)
        h = {p: self.project[p](features[p]).unsqueeze(1) for p in self.planes}  # (B, 1, E)
        refined = {}
        for p in self.planes:
            src = h[self.source_of(p)]
            attended, _ = self.attention[p](h[p], src, src, need_weights=False)
            refined[p] = self.norm[p](h[p] + attended).squeeze(1)
        return refined

    def forward(self, features: PlaneFeatures) -> FusionOutput:
        refined = self.refine(features)
        return FusionOutput(self.head(torch.cat([refined[p] for p in self.planes], dim=1)))


class MPAEFusion(PlaneFusion):
    """Multi-plane adaptive expert (interpretable, label-level fusion).

    ``z^(o) = head_o(F^o)`` ``(B, K)``; for label ``k``: ``s_k = gate(z_k^sag, z_k^cor, z_k^ax)`` (the gate MLP
    ``Linear(3, hidden) - ReLU - [Dropout] - Linear(hidden, 3)`` is shared over labels), ``alpha_k = softmax(s_k)``
    over the present planes, fused ``z_k = sum_o alpha_k^o z_k^o``. Absent planes enter the gate as 0 and get weight 0.
    """

    name = "mpae"
    requires_all_planes = False

    def __init__(self, in_features: int, num_labels: int, planes: Sequence[str] = PLANES, gate_hidden: int = 32,
                 gate_dropout: float = 0.0):
        super().__init__(in_features, num_labels, planes)
        n = len(self.planes)
        self.heads = nn.ModuleDict({p: PlaneClassifier(self.in_features, self.num_labels) for p in self.planes})
        layers: list[nn.Module] = [nn.Linear(n, gate_hidden), nn.ReLU()]
        if gate_dropout > 0:
            layers.append(nn.Dropout(gate_dropout))
        layers.append(nn.Linear(gate_hidden, n))
        self.gate = nn.Sequential(*layers)

    def plane_logits(self, features: PlaneFeatures) -> Dict[str, torch.Tensor]:
        """Per-plane head logits ``plane -> (B, K)`` for the present planes."""
        return {p: self.heads[p](features[p]) for p in present_planes(features, self.planes)}

    def fuse_logits(self, plane_logits: PlaneFeatures,
                    available: Optional[torch.Tensor] = None) -> FusionOutput:
        """Gate already-computed per-plane logits ``plane -> (B, K)`` (e.g. out-of-fold ones).

        ``available``: optional ``(B, n_planes)`` bool mask for per-sample missing planes (on top of planes absent
        from the mapping). Returns fused logits ``(B, K)`` and weights ``(B, K, n_planes)`` summing to 1 over the
        present planes. Raises ``MissingPlaneError`` if a sample has no plane at all.
        """
        have = present_planes(plane_logits, self.planes)
        if not have:
            raise MissingPlaneError("mpae fusion got no plane at all")
        ref = plane_logits[have[0]]
        b, k = ref.shape
        z = torch.stack([plane_logits[p] if p in have else ref.new_zeros(b, k) for p in self.planes], dim=-1)
        mask = torch.tensor([p in have for p in self.planes], device=ref.device).expand(b, len(self.planes))
        if available is not None:
            mask = mask & available.to(device=ref.device, dtype=torch.bool)
        if not bool(mask.any(dim=1).all()):
            raise MissingPlaneError("mpae fusion: a sample has no available plane")
        mask = mask.unsqueeze(1)  # (B, 1, n)
        z = z * mask  # absent planes enter the gate as 0
        scores = self.gate(z).masked_fill(~mask, float("-inf"))  # (B, K, n)
        weights = torch.softmax(scores, dim=-1)
        return FusionOutput((weights * z).sum(dim=-1), weights)

    def forward(self, features: PlaneFeatures, available: Optional[torch.Tensor] = None) -> FusionOutput:
        return self.fuse_logits(self.plane_logits(features), available)


FUSIONS: Dict[str, Type[PlaneFusion]] = {
    "concat": SimpleConcatFusion,
    "linear_add": LinearAddFusion,
    "linear_concat": LinearConcatFusion,
    "cross_attention": CrossAttentionFusion,
    "mpae": MPAEFusion,
}
_ALIASES = {"simple_concat": "concat", "simpleconcat": "concat", "linearadd": "linear_add",
            "linearconcat": "linear_concat", "crossattention": "cross_attention", "cross_attn": "cross_attention"}


def build_fusion(name: str, in_features: int, num_labels: int, planes: Sequence[str] = PLANES,
                 **kwargs) -> PlaneFusion:
    """Fusion module by name (``concat`` (default), ``linear_add``, ``linear_concat``, ``cross_attention``, ``mpae``;
    case-insensitive, ``-`` or ``_``). ``kwargs`` go to the class (``embed_dim``, ``heads``, ``gate_hidden``,
    ``gate_dropout``)."""
    key = str(name).strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; known: {', '.join(FUSIONS)}")
    return FUSIONS[key](in_features, num_labels, planes, **kwargs)


@torch.no_grad()
def plane_weights_for(mpae: MPAEFusion, features: Optional[PlaneFeatures] = None, *,
                      plane_logits: Optional[PlaneFeatures] = None,
                      available: Optional[torch.Tensor] = None) -> torch.Tensor:
    """MPAE plane weights ``(B, K, 3)`` (``PLANES`` order, rows sum to 1) for a batch, without gradients.

    Give either the pooled per-plane ``features`` (``plane -> (B, F)``) or the per-plane ``plane_logits``
    (``plane -> (B, K)``). Used so that a prediction whose probabilities come from another fusion still carries the
    per-label plane weights for the Sankey view. The module's train/eval mode is left unchanged; call ``eval()``
    first for deterministic weights when the gate has dropout.
    """
    if (features is None) == (plane_logits is None):
        raise ValueError("give exactly one of features or plane_logits")
    if plane_logits is None:
        plane_logits = mpae.plane_logits(features)
    return mpae.fuse_logits(plane_logits, available).plane_weights
