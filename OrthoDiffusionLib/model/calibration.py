"""Probability calibration: per-label temperature scaling, expected calibration error, reliability-diagram data.

Temperature scaling divides each label's logit by a positive temperature ``T_k`` fitted on validation logits by
minimising the binary cross-entropy (NLL) of ``sigmoid(z_k / T_k)``. It never changes the ranking of a label's
scores, so AUROC/AP are unchanged; it only makes probabilities honest. ``T_k > 1`` softens over-confident logits.

Fitting optimises ``log T`` with L-BFGS (strong-Wolfe line search) on all labels at once (the loss is a sum of
independent per-label terms), then keeps, per label, whichever of the L-BFGS result and the best point of a
log-spaced grid ``T in [0.05, 20]`` has the lower NLL -- so a bad L-BFGS run can never make calibration worse than
the grid. Labels with a single class in the validation set keep ``T = 1``.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TemperatureScaler",
    "fit_temperatures",
    "binary_nll",
    "expected_calibration_error",
    "reliability_diagram",
]

_T_MIN, _T_MAX = 0.05, 20.0


def _as_tensor(a, dtype=torch.float64) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a.detach().cpu(), dtype=dtype)


def binary_nll(logits, labels, temperatures=None) -> np.ndarray:
    """Mean BCE per label ``(K,)`` of ``sigmoid(logits / T)`` for ``(N, K)`` logits and 0/1 labels."""
    z, y = _as_tensor(logits), _as_tensor(labels)
    if z.dim() == 1:
        z, y = z[:, None], y[:, None]
    t = torch.ones(z.shape[1], dtype=z.dtype) if temperatures is None else _as_tensor(temperatures).reshape(-1)
    return F.binary_cross_entropy_with_logits(z / t, y, reduction="none").mean(dim=0).numpy()


def fit_temperatures(logits, labels, max_iter: int = 100) -> np.ndarray:
    """Per-label temperatures ``(K,)`` minimising validation NLL. ``logits``, ``labels``: ``(N, K)`` (or ``(N,)``)."""
    z, y = _as_tensor(logits), _as_tensor(labels)
    if z.dim() == 1:
        z, y = z[:, None], y[:, None]
    if z.shape != y.shape:
        raise ValueError(f"logits {tuple(z.shape)} and labels {tuple(y.shape)} differ in shape")
    k = z.shape[1]
    informative = (y.min(dim=0).values < y.max(dim=0).values).numpy()

    log_t = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z / log_t.exp(), y, reduction="none").mean(dim=0).sum()
        loss.backward()
        return loss

    opt.step(closure)
    t_lbfgs = log_t.detach().exp().clamp(_T_MIN, _T_MAX).numpy()

    grid = np.exp(np.linspace(np.log(_T_MIN), np.log(_T_MAX), 200))
    grid_nll = np.stack([binary_nll(z, y, np.full(k, g)) for g in grid])  # (G, K)
    t_grid = grid[grid_nll.argmin(axis=0)]
    better = binary_nll(z, y, t_lbfgs) <= binary_nll(z, y, t_grid)
    temps = np.where(better & np.isfinite(t_lbfgs), t_lbfgs, t_grid)
    return np.where(informative, temps, 1.0)


class TemperatureScaler(nn.Module):
    """Per-label temperatures as a buffer ``temperature`` ``(K,)``; ``forward(logits (..., K)) -> logits / T``."""

    def __init__(self, num_labels: int):
        super().__init__()
        self.register_buffer("temperature", torch.ones(num_labels))

    def fit(self, logits, labels) -> "TemperatureScaler":
        """Fit on validation ``(N, K)`` logits and labels (see :func:`fit_temperatures`)."""
        t = fit_temperatures(logits, labels)
        self.temperature.copy_(torch.as_tensor(t, dtype=self.temperature.dtype))
        return self

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature.to(logits.dtype)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated ``sigmoid(logits / T)``."""
        return torch.sigmoid(self(logits))

    def to_dict(self) -> Dict[str, list]:
        return {"temperature": [float(t) for t in self.temperature]}

    @classmethod
    def from_dict(cls, data: Dict[str, list]) -> "TemperatureScaler":
        temps = list(data["temperature"])
        if not temps or any(not (float(t) > 0) for t in temps):
            raise ValueError(f"temperatures must be positive, got {temps}")
        out = cls(len(temps))
        out.temperature.copy_(torch.tensor(temps, dtype=torch.float32))
        return out


def _bins(probs: np.ndarray, n_bins: int) -> np.ndarray:
    # bin i holds (edge_i, edge_{i+1}]; 0 goes to the first bin
    return np.clip(np.ceil(probs * n_bins).astype(int) - 1, 0, n_bins - 1)


def reliability_diagram(probs, labels, n_bins: int = 10) -> Dict[str, np.ndarray]:
    """Reliability-diagram data for binary predictions (all labels pooled if 2-D).

    Equal-width bins on [0, 1]. Returns ``edges`` ``(n_bins + 1,)``, and per bin ``confidence`` (mean predicted
    probability), ``frequency`` (observed fraction of positives), ``count``; empty bins have NaN confidence/frequency.
    """
    p = np.asarray(probs, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if p.shape != y.shape:
        raise ValueError(f"probs {np.shape(probs)} and labels {np.shape(labels)} differ in shape")
    idx = _bins(p, n_bins)
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(idx, weights=p, minlength=n_bins) / count
        freq = np.bincount(idx, weights=y, minlength=n_bins) / count
    return {"edges": np.linspace(0.0, 1.0, n_bins + 1), "confidence": conf, "frequency": freq, "count": count}


def expected_calibration_error(probs, labels, n_bins: int = 10, per_label: bool = False):
    """ECE = ``sum_b (n_b / N) |frequency_b - confidence_b|`` over equal-width bins.

    ``probs``, ``labels``: ``(N,)`` or ``(N, K)``. With ``per_label`` and 2-D input, returns ``(K,)``; otherwise one
    float over all (sample, label) pairs pooled.
    """
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if per_label:
        if p.ndim != 2:
            raise ValueError("per_label needs (N, K) arrays")
        return np.array([expected_calibration_error(p[:, k], y[:, k], n_bins) for k in range(p.shape[1])])
    d = reliability_diagram(p, y, n_bins)
    n = d["count"].sum()
    if n == 0:
        return float("nan")
    keep = d["count"] > 0
    return float(np.sum(d["count"][keep] / n * np.abs(d["frequency"][keep] - d["confidence"][keep])))
