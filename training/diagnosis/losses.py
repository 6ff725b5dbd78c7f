"""Multi-label losses with per-sample weights (multi-scan 1/n) and class-imbalance options."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["weighted_bce", "positive_class_weights"]


def positive_class_weights(labels: torch.Tensor, max_weight: float = 20.0,
                           sample_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``pos_weight`` ``(K,)`` = (weighted) negatives / positives per label, clipped to ``[1/max_weight, max_weight]``
    (a label without positives gets ``max_weight``). ``labels``: ``(N, K)`` 0/1."""
    y = labels.to(torch.float64)
    w = torch.ones(y.shape[0], dtype=torch.float64) if sample_weight is None else sample_weight.to(torch.float64)
    pos = (w[:, None] * y).sum(0)
    neg = (w[:, None] * (1 - y)).sum(0)
    ratio = torch.where(pos > 0, neg / pos.clamp_min(1e-12), torch.full_like(pos, max_weight))
    return ratio.clamp(1.0 / max_weight, max_weight).to(torch.float32)


def weighted_bce(logits: torch.Tensor, targets: torch.Tensor, sample_weight: Optional[torch.Tensor] = None,
                 pos_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Binary cross-entropy over ``(B, K)`` logits, mean over labels, then the ``sample_weight``-weighted mean over
    the batch (``sum_i w_i l_i / sum_i w_i``; plain mean without weights). ``pos_weight`` ``(K,)`` up-weights
    positives (class-imbalance option)."""
    per = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none",
                                             pos_weight=None if pos_weight is None else pos_weight.to(logits))
    per_sample = per.mean(dim=1)
    if sample_weight is None:
        return per_sample.mean()
    w = sample_weight.to(per_sample)
    return (w * per_sample).sum() / w.sum().clamp_min(1e-12)
