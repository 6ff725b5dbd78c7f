"""Segmentation loss of the paper: 0.2 x cross-entropy + soft Dice over the foreground classes.

* Unlabeled voxels carry ``ignore_index`` in the target; they contribute to neither term (no gradient).
* A class mask restricts the classes a plane can have: classes absent from a plane's label table
  (``labels.knee_structures(plane)``, e.g. patella and patellar cartilage on coronal) get their logits masked out of
  the softmax (so the head can never predict them and is never penalised for them), are left out of the Dice mean,
  and target voxels carrying such a class are treated as background (``excluded_as="background"``, the label table's
  meaning: the structure is not segmented on that plane) or ignored (``excluded_as="ignore"``).
* Context tissues (``context_tissues`` in a segmentation config): classes 12-23 are the simulator's other tissues
  (fibula, collateral ligaments, tendons, fluid, fat, muscle, skin, vessels, capsule, edema, soft tissue), learnt from
  a simulated cohort's tissue maps beside the 11 structures. They are allowed on every plane and are background in
  the structure labelmaps; their probabilities feed the tissue-pooled diagnosis.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from OrthoDiffusionLib import labels

DEFAULT_IGNORE_INDEX = 255
CE_WEIGHT = 0.2


def num_seg_classes(context_tissues: bool = False) -> int:
    """Background + every knee structure of the label table (12), + the context tissues (24) if asked."""
    return 1 + max(s.value for s in labels.knee_structures()) + (len(context_tissue_names()) if context_tissues else 0)


def context_tissue_names() -> list:
    """Names of the context tissue classes, in class order after the structures (the simulator's tissue ids
    12-23, lower case: ``fibula`` ... ``soft_tissue``)."""
    from OrthoDiffusionLib.simulate.tissues import Tissue

    n_structures = max(s.value for s in labels.knee_structures())
    return [t.name.lower() for t in Tissue if t.value > n_structures]


def class_mask_for_plane(plane: Optional[str], num_classes: Optional[int] = None) -> torch.Tensor:
    """Bool (num_classes,) mask: background and the structures the label table segments on ``plane``.

    ``plane=None`` allows every class; context tissue classes (beyond the label table) are allowed on every plane.
    """
    n = num_seg_classes() if num_classes is None else int(num_classes)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[0] = True
    mask[num_seg_classes():] = True
    for s in labels.knee_structures(plane):
        if s.value >= n:
            raise ValueError(f"structure {s.key} has label value {s.value} >= num_classes {n}")
        mask[s.value] = True
    return mask


def mask_logits(logits: torch.Tensor, class_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Logits (B, C, ...) with the classes outside ``class_mask`` (C,) set to a very negative value."""
    if class_mask is None or bool(class_mask.all()):
        return logits
    keep = class_mask.to(logits.device).view(1, -1, *([1] * (logits.dim() - 2)))
    return logits.masked_fill(~keep, torch.finfo(logits.dtype).min / 4)


class SegmentationLoss(nn.Module):
    """``ce_weight`` x CE + (1 - mean soft Dice over the allowed foreground classes).

    Args:
        num_classes: C, background (0) included.
        class_mask: bool (C,) of allowed classes, or None for all; see :func:`class_mask_for_plane`.
        ignore_index: target value of unlabeled voxels.
        excluded_as: what a target voxel of a masked-out class becomes: ``"background"`` or ``"ignore"``.
        batch_dice: Dice sums over the whole batch (True) or per sample then averaged (False).
        smooth: additive smoothing of the Dice ratio.
        ce_class_balance: weight each voxel's cross-entropy by 1 / sqrt(its class's voxel count in the batch),
            normalised so the weights average 1 over the labelled voxels (the CE keeps its scale). Without it a
            structure of a few dozen voxels (the ACL at 64 x 64) contributes almost nothing to the CE, and once the
            softmax gives it ~0 everywhere the Dice term's gradient vanishes too: the class can collapse for good.
            Off by default (the paper's loss).

    ``forward(logits (B, C, D, H, W) float, target (B, D, H, W) int) -> scalar``; ``terms(...)`` returns the
    parts as a dict (``loss``, ``ce``, ``dice_loss``).
    """

    def __init__(self, num_classes: int, class_mask: Optional[torch.Tensor] = None,
                 ignore_index: int = DEFAULT_IGNORE_INDEX, ce_weight: float = CE_WEIGHT,
                 excluded_as: str = "background", batch_dice: bool = True, smooth: float = 1e-5,
                 ce_class_balance: bool = False):
        super().__init__()
        if excluded_as not in ("background", "ignore"):
            raise ValueError(f"excluded_as must be 'background' or 'ignore', got {excluded_as!r}")
        mask = torch.ones(num_classes, dtype=torch.bool) if class_mask is None else class_mask.to(torch.bool)
        if mask.numel() != num_classes or not bool(mask[0]):
            raise ValueError("class_mask needs one entry per class and must allow background (0)")
        self.num_classes = int(num_classes)
        self.register_buffer("class_mask", mask.clone(), persistent=False)
        self.ignore_index = int(ignore_index)
        self.ce_weight = float(ce_weight)
        self.excluded_as = excluded_as
        self.batch_dice = bool(batch_dice)
        self.smooth = float(smooth)
        self.ce_class_balance = bool(ce_class_balance)

    @classmethod
    def for_plane(cls, plane: Optional[str], num_classes: Optional[int] = None, **kwargs) -> "SegmentationLoss":
        """Loss whose class mask is the label table of ``plane``."""
        mask = class_mask_for_plane(plane, num_classes)
        return cls(int(mask.numel()), mask, **kwargs)

    def prepare_target(self, target: torch.Tensor) -> torch.Tensor:
        """Target (B, ...) int64 with masked-out classes mapped to background or ``ignore_index``."""
        target = target.long()
        bad = (target != self.ignore_index) & ((target < 0) | (target >= self.num_classes))
        if bool(bad.any()):
            raise ValueError(f"target holds values outside 0..{self.num_classes - 1} and ignore index "
                             f"{self.ignore_index}: {sorted(torch.unique(target[bad]).tolist())[:10]}")
        if bool(self.class_mask.all()):
            return target
        excluded = (~self.class_mask).nonzero().flatten().to(target.device)
        hit = torch.isin(target, excluded)
        fill = 0 if self.excluded_as == "background" else self.ignore_index
        return target.masked_fill(hit, fill)

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        if logits.shape[1] != self.num_classes or logits.shape[0] != target.shape[0] \
                or logits.shape[2:] != target.shape[1:]:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match "
                             f"({self.num_classes} classes)")
        target = self.prepare_target(target)
        logits = mask_logits(logits.float(), self.class_mask)
        valid = target != self.ignore_index                                   # (B, ...)
        n_valid = valid.sum()
        if int(n_valid) == 0:
            zero = logits.sum() * 0.0
            return {"loss": zero, "ce": zero, "dice_loss": zero}
        weight = self._balance_weights(target[valid]) if self.ce_class_balance else None
        ce = F.cross_entropy(logits, target, weight=weight, ignore_index=self.ignore_index,
                             reduction="sum") / n_valid
        probs = torch.softmax(logits, dim=1)
        validf = valid.unsqueeze(1).to(probs.dtype)                           # (B, 1, ...)
        onehot = F.one_hot(target.masked_fill(~valid, 0), self.num_classes)  # (B, ..., C)
        onehot = onehot.movedim(-1, 1).to(probs.dtype) * validf
        probs = probs * validf
        dims = (0, *range(2, probs.dim())) if self.batch_dice else tuple(range(2, probs.dim()))
        inter = (probs * onehot).sum(dims)
        denom = probs.sum(dims) + onehot.sum(dims)
        dice = (2.0 * inter + self.smooth) / (denom + self.smooth)            # (C,) or (B, C)
        fg = self.class_mask.clone()
        fg[0] = False
        dice_loss = 1.0 - dice[..., fg.to(dice.device)].mean()
        return {"loss": self.ce_weight * ce + dice_loss, "ce": ce, "dice_loss": dice_loss}

    def _balance_weights(self, labels: torch.Tensor) -> torch.Tensor:
        """(C,) CE class weights from the labelled voxels' classes ``labels`` (N,): 1/sqrt(count) for the classes
        present (0 for absent ones), scaled so that mean(weight[labels]) == 1."""
        counts = torch.bincount(labels, minlength=self.num_classes).to(torch.float32)
        weight = torch.where(counts > 0, counts.clamp(min=1.0).rsqrt(), torch.zeros_like(counts))
        return weight / weight[labels].mean()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.terms(logits, target)["loss"]

