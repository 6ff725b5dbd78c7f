"""Predictive uncertainty from repeated noise draws (beyond the paper).

Diffusion features depend on the random noise used to form ``x_t``. Predicting the same exam with ``S`` independent
noise draws gives ``S`` probability vectors; their mean is the prediction and their spread (standard deviation over
draws, ``ddof = 1``; 0 for a single draw) the uncertainty.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from ..inference.result_folder import DEFAULT_NOISE_DRAWS
from ..progress import ProgressFn

__all__ = ["DEFAULT_NOISE_DRAWS", "NoiseDrawSummary", "aggregate_noise_draws", "predict_with_noise_draws",
           "spread_percent"]


@dataclass
class NoiseDrawSummary:
    """``mean``, ``std``: ``(B, K)``; ``draws``: ``(S, B, K)`` (numpy, float64)."""

    mean: np.ndarray
    std: np.ndarray
    draws: np.ndarray

    @property
    def num_draws(self) -> int:
        return int(self.draws.shape[0])


def spread_percent(sd: float, digits: int) -> str:
    """A spread (probability sd over noise draws) in percent with ``digits`` decimals; a spread that would round to
    zero reads ``< 0.1%`` (for one decimal), since a measured spread is never exactly nothing."""
    value = 100.0 * float(sd)
    smallest = 10.0 ** -digits
    if value < smallest / 2:
        return f"< {smallest:.{digits}f}%"
    return f"{value:.{digits}f}%"


def aggregate_noise_draws(probabilities) -> NoiseDrawSummary:
    """Summarise ``(S, B, K)`` (or ``(S, K)``) probabilities over the draw axis 0."""
    draws = probabilities.detach().cpu().numpy() if torch.is_tensor(probabilities) else np.asarray(probabilities)
    draws = draws.astype(np.float64)
    if draws.ndim < 2 or draws.shape[0] < 1:
        raise ValueError(f"expected (S, B, K) probabilities with S >= 1, got shape {draws.shape}")
    std = draws.std(axis=0, ddof=1) if draws.shape[0] > 1 else np.zeros(draws.shape[1:])
    return NoiseDrawSummary(mean=draws.mean(axis=0), std=std, draws=draws)


def predict_with_noise_draws(predict: Callable[[torch.Generator], torch.Tensor], num_draws: int, seed: int = 0,
                             progress: Optional[ProgressFn] = None,
                             device: torch.device | str = "cpu") -> NoiseDrawSummary:
    """Call ``predict(generator)`` once per draw (a ``device`` generator seeded ``seed + s``; ``predict`` must draw
    its noise from it and return probabilities ``(B, K)``) and summarise. ``progress("noise draws", fraction done)`` is
    called after each draw."""
    if num_draws < 1:
        raise ValueError("num_draws must be >= 1")
    outs = []
    for s in range(num_draws):
        g = torch.Generator(device=device).manual_seed(int(seed) + s)
        with torch.no_grad():
            outs.append(torch.as_tensor(predict(g)).detach().cpu().double())
        if progress is not None:
            progress("noise draws", (s + 1) / num_draws)
    return aggregate_noise_draws(torch.stack(outs))
