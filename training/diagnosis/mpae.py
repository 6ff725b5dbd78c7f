"""MPAE training pieces that need no backbone: out-of-fold per-plane logits and gate training on logits.

Paper protocol (Appendix C/D): per-plane multi-label heads are trained with patient-level 5-fold CV so every
training exam gets *out-of-fold* per-plane logits ``z^(o)`` (a head never scores exams it was trained on); the gate
is then trained on those logits (Adam lr 1e-3, weight decay 1e-4, 10 epochs) with the per-plane heads frozen.

* :func:`out_of_fold_predictions` runs any ``fit_predict(train_rows, held_out_rows)`` over patient folds and
  assembles the ``(N, K)`` out-of-fold outputs.
* :func:`train_mpae_gate` trains only ``MPAEFusion.gate`` on ``plane -> (N, K)`` logits.
* :func:`mean_plane_weights` gives the rows of the Sankey view (mean plane weight per label).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from OrthoDiffusionLib.model.fusion import MPAEFusion
from OrthoDiffusionLib.progress import ProgressFn

from .losses import weighted_bce
from .multiscan import patient_folds

__all__ = ["out_of_fold_predictions", "train_mpae_gate", "mean_plane_weights"]


def out_of_fold_predictions(patient_ids: Sequence, fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray],
                            n_folds: int = 5, seed: int = 0,
                            progress: Optional[ProgressFn] = None) -> np.ndarray:
    """``(N, K)`` outputs where row ``i`` comes from the fold that held ``i``'s patient out.

    ``fit_predict(train_rows, held_out_rows)`` trains on ``train_rows`` and returns ``(len(held_out_rows), K)``.
    ``progress("folds", fraction done)`` after each fold.
    """
    folds = patient_folds(patient_ids, n_folds, seed)
    out: Optional[np.ndarray] = None
    for f, (train, held) in enumerate(folds):
        pred = np.asarray(fit_predict(train, held), dtype=np.float64)
        if pred.ndim != 2 or pred.shape[0] != len(held):
            raise ValueError(f"fit_predict returned shape {pred.shape} for {len(held)} held-out rows")
        if out is None:
            out = np.full((len(patient_ids), pred.shape[1]), np.nan)
        out[held] = pred
        if progress is not None:
            progress("folds", (f + 1) / n_folds)
    assert out is not None
    return out


def train_mpae_gate(mpae: MPAEFusion, plane_logits: Mapping[str, torch.Tensor], labels: torch.Tensor,
                    sample_weight: Optional[torch.Tensor] = None, epochs: int = 10, lr: float = 1e-3,
                    weight_decay: float = 1e-4, batch_size: int = 64, seed: int = 0,
                    progress: Optional[ProgressFn] = None) -> List[float]:
    """Train the gate of ``mpae`` on fixed per-plane logits (``plane -> (N, K)``, e.g. out-of-fold) with weighted
    BCE on the fused logits; the per-plane heads are not touched. Returns the mean training loss per epoch;
    ``progress("gate epochs", fraction done)`` after each epoch."""
    planes = [p for p in mpae.planes if plane_logits.get(p) is not None]
    z = {p: torch.as_tensor(plane_logits[p], dtype=torch.float32).detach() for p in planes}
    y = torch.as_tensor(labels, dtype=torch.float32)
    n = y.shape[0]
    w = torch.ones(n) if sample_weight is None else torch.as_tensor(sample_weight, dtype=torch.float32)
    opt = torch.optim.Adam(mpae.gate.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    was_training = mpae.training
    mpae.train()
    history = []
    for epoch in range(epochs):
        order = torch.randperm(n, generator=g)
        total, seen = 0.0, 0.0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            fused = mpae.fuse_logits({p: z[p][idx] for p in planes}).logits
            loss = weighted_bce(fused, y[idx], w[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * float(w[idx].sum())
            seen += float(w[idx].sum())
        history.append(total / max(seen, 1e-12))
        if progress is not None:
            progress("gate epochs", (epoch + 1) / epochs)
    mpae.train(was_training)
    return history


def mean_plane_weights(weights, label_names: Sequence[str], planes: Sequence[str] = ("sagittal", "coronal", "axial")
                       ) -> List[Dict]:
    """Sankey rows: ``[{"label": name, "sagittal": w, "coronal": w, "axial": w}]`` = mean over samples of
    ``(N, K, 3)`` plane weights (or one patient's ``(K, 3)``)."""
    w = weights.detach().cpu().numpy() if torch.is_tensor(weights) else np.asarray(weights)
    if w.ndim == 3:
        w = w.mean(axis=0)
    if w.shape != (len(label_names), len(planes)):
        raise ValueError(f"weights of shape {w.shape} do not match {len(label_names)} labels x {len(planes)} planes")
    return [{"label": name, **{p: float(w[k, j]) for j, p in enumerate(planes)}} for k, name in enumerate(label_names)]
