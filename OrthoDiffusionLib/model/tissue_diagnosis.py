"""Tissue-pooled diagnosis: probabilities from what a plane's segmentation network sees, pooled within each tissue.

A segmentation network trained with context tissues (``train-segmentation --set context_tissues=true``: the 11 knee
structures plus fluid, collateral ligaments, oedema, ...) delineates exactly what the abnormalities change: more
fluid, less ligament, more oedema, a displaced patella. Per plane, the features of one input volume are

* ``log1p`` of each class's soft volume (sum of its softmax probability over the voxels): (C,);
* the patella's soft centre minus the femur's, in voxels along (slices, rows, columns): (3,);
* the head's last features (the input of its 1 x 1 x 1 ``classifier``, K channels) averaged within each class,
  weighted by the class probability: (C x K,), class-major.

:class:`TissueDiagnosisHead` standardises the features of the planes (concatenated in its plane order; a missing
plane is filled with the training mean, i.e. zeros after standardisation), applies one logistic model per label and
Platt scaling fitted on the validation split. Its plane weights are each plane's share of the absolute contribution
``|sum_f w_kf z_f|`` to a label's logit, so they say which plane drove the prediction.

Training (``orthodiffusion train-tissue-diagnosis``) and inference (the predictor) compute the features with
:func:`tissue_features`, so both see the same numbers.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from .. import labels as label_tables
from ..labels import PLANES

__all__ = ["TISSUE_POOLED", "head_features_and_logits", "tissue_features", "feature_width", "TissueDiagnosisHead"]

#: ``diagnosis.kind`` of a bundle (and ``fused_by`` of its predictions).
TISSUE_POOLED = "tissue-pooled"


def feature_width(num_classes: int, channels: int) -> int:
    """F = C + 3 + C x K of one plane (C classes, K head channels)."""
    return num_classes + 3 + num_classes * channels


def head_features_and_logits(head: nn.Module, taps: Mapping[str, torch.Tensor], output_size: Sequence[int]
                             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(features (B, K, D', H', W'), logits (B, C, D, H, W)) of a segmentation head on its taps: the input of its
    ``classifier`` (caught by a forward hook) and its output logits at ``output_size``."""
    grabbed: Dict[str, torch.Tensor] = {}
    hook = head.classifier.register_forward_hook(lambda m, i, o: grabbed.__setitem__("f", i[0]))
    try:
        logits = head(taps, output_size=tuple(int(s) for s in output_size))
    finally:
        hook.remove()
    return grabbed["f"], logits


def tissue_features(logits: torch.Tensor, head_features: torch.Tensor) -> torch.Tensor:
    """(B, C + 3 + C x K) float32 features (module docstring) from logits (B, C, D, H, W) and the head's last
    features (B, K, D', H', W') (resampled trilinearly onto (D, H, W) when the sizes differ). Classes are those of a
    full-table head: class ``v`` of a structure is its label-table value (patella, femur)."""
    p = torch.softmax(logits.float(), 1)                                      # (B, C, D, H, W)
    f = head_features.float()
    if f.shape[2:] != p.shape[2:]:
        f = nn.functional.interpolate(f, size=p.shape[2:], mode="trilinear", align_corners=False)
    volume = p.sum((2, 3, 4))                                                 # (B, C)
    pooled = torch.einsum("bcdhw,bkdhw->bck", p, f) / (volume[..., None] + 1.0)  # (B, C, K)
    axes = torch.meshgrid(*[torch.arange(n, dtype=torch.float32, device=p.device) for n in p.shape[2:]],
                          indexing="ij")
    centres = torch.stack([(p * a).sum((2, 3, 4)) for a in axes], -1) / (volume[..., None] + 1e-3)  # (B, C, 3)
    value = {k: s.value for k, s in label_tables.structure_by_key().items()}
    offset = centres[:, value["patella"]] - centres[:, value["femur"]]        # (B, 3)
    return torch.cat([torch.log1p(volume), offset, pooled.flatten(1)], 1)


class TissueDiagnosisHead(nn.Module):
    """Per-label logistic models on the standardised tissue-pooled features of the planes, with Platt scaling.

    Args:
        planes: the planes, in the order their features are concatenated.
        features: ``{plane: F_p}``.
        num_labels: L.

    Buffers: ``mean``, ``scale`` (F,), ``weight`` (L, F), ``bias`` (L,), ``platt_scale``, ``platt_shift`` (L,),
    where F = sum of F_p.
    """

    kind = TISSUE_POOLED

    def __init__(self, planes: Sequence[str], features: Mapping[str, int], num_labels: int):
        super().__init__()
        self.planes = tuple(p for p in PLANES if p in planes)
        if not self.planes or set(self.planes) != set(planes):
            raise ValueError(f"planes must be a non-empty subset of {PLANES}, got {list(planes)}")
        self.widths = {p: int(features[p]) for p in self.planes}
        width, labels = sum(self.widths.values()), int(num_labels)
        for name, shape in (("mean", (width,)), ("scale", (width,)), ("weight", (labels, width)),
                            ("bias", (labels,)), ("platt_scale", (labels,)), ("platt_shift", (labels,))):
            self.register_buffer(name, torch.zeros(shape))

    def config(self) -> Dict[str, object]:
        """Keyword arguments that rebuild this head."""
        return {"planes": list(self.planes), "features": dict(self.widths), "num_labels": int(self.bias.numel())}

    def standardised(self, features: Mapping[str, Optional[torch.Tensor]], batch: int) -> torch.Tensor:
        """(B, F) standardised features; a plane missing from ``features`` (or ``None``) is all zeros (the
        training mean)."""
        blocks: List[torch.Tensor] = []
        start = 0
        for plane in self.planes:
            stop = start + self.widths[plane]
            f = features.get(plane)
            if f is None:
                blocks.append(torch.zeros(batch, stop - start, device=self.mean.device))
            else:
                if f.shape != (batch, stop - start):
                    raise ValueError(f"{plane} features of shape {tuple(f.shape)}, expected {(batch, stop - start)}")
                blocks.append((f.float() - self.mean[start:stop]) / self.scale[start:stop])
            start = stop
        return torch.cat(blocks, 1)

    def forward(self, features: Mapping[str, Optional[torch.Tensor]]
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (B, L) before Platt scaling, calibrated probabilities (B, L), plane weights (B, L, 3) in
        ``PLANES`` order, summing to 1 over the planes that were given) of ``{plane: (B, F_p) or None}``."""
        batch = next(f.shape[0] for f in features.values() if f is not None)
        z = self.standardised(features, batch)                               # (B, F)
        logits = z @ self.weight.T + self.bias                                # (B, L)
        calibrated = torch.sigmoid(self.platt_scale * logits + self.platt_shift)
        shares = torch.zeros(batch, logits.shape[1], len(PLANES), device=z.device)
        start = 0
        for plane in self.planes:
            stop = start + self.widths[plane]
            if features.get(plane) is not None:
                shares[..., PLANES.index(plane)] = (z[:, start:stop] @ self.weight[:, start:stop].T).abs()
            start = stop
        total = shares.sum(-1, keepdim=True)
        given = torch.tensor([features.get(p) is not None for p in PLANES], device=z.device, dtype=torch.float32)
        shares = torch.where(total > 0, shares / total.clamp_min(1e-12), given / given.sum())
        return logits, calibrated, shares
