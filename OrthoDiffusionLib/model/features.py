"""Feature extraction from the diffusion backbone: noise a clean volume to ``x_t`` and read encoder/middle taps.

As the authors do, a volume is noised at a chosen timestep with ONE random draw and the encoder + middle block are run
(never the decoder). One encoder pass serves all taps of a timestep. The caller controls the randomness with a
``torch.Generator`` (default: one fresh draw from torch's global RNG, as the authors); ``draws=K`` averages the taps
over K independent draws (a lower-variance feature). During fine-tuning (``grad=True``) a fresh draw every step acts as
augmentation.

Shapes: x0 (B, 1, D, H, W) in [-1, 1]; a ``mid_*`` tap of the default network is (B, 256, D/16, H/16, W/16).
"""
from __future__ import annotations

import contextlib
from typing import Dict, Optional, Sequence, Tuple, Union

import torch

from .backbone import DiffusionUNet
from .schedule import CosineSchedule

__all__ = ["extract_taps", "extract_tap_grid"]


def extract_taps(
    model: DiffusionUNet,
    schedule: CosineSchedule,
    x0: torch.Tensor,
    t: Union[int, torch.Tensor],
    taps: Sequence[str] = ("mid_0",),
    generator: Optional[torch.Generator] = None,
    draws: int = 1,
    grad: bool = False,
) -> Dict[str, torch.Tensor]:
    """Taps of ``model`` for ``x0`` noised at timestep ``t``.

    Args:
        model: the backbone (its ``encode`` runs only as deep as the deepest tap).
        schedule: gives ``q_sample``.
        x0: (B, 1, D, H, W) clean volumes (on the model's device).
        t: a timestep for all samples, or (B,) timesteps.
        taps: tap names (``model.tap_names()``), e.g. ``("mid_0", "mid_2")``.
        generator: source of the noise (its device may differ from x0's; noise is drawn there then moved).
        draws: number of independent noise draws whose taps are averaged (one encoder pass per draw).
        grad: keep the autograd graph (fine-tuning); default runs under ``torch.no_grad()``.

    Returns:
        {name: (B, C_name, D', H', W')} in the order of ``taps``.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    if isinstance(taps, str):
        taps = (taps,)
    t_batch = schedule.as_timesteps(t, x0.shape[0], x0.device)
    context = contextlib.nullcontext() if grad else torch.no_grad()
    total: Dict[str, torch.Tensor] = {}
    with context:
        for _ in range(draws):
            noise = schedule.randn_like(x0, generator)
            out = model.encode(schedule.q_sample(x0, t_batch, noise), t_batch, taps)
            for name, value in out.items():
                total[name] = value if name not in total else total[name] + value
        if draws > 1:
            total = {name: value / draws for name, value in total.items()}
    return total


def extract_tap_grid(
    model: DiffusionUNet,
    schedule: CosineSchedule,
    x0: torch.Tensor,
    timesteps: Sequence[int],
    taps: Sequence[str] = ("mid_0", "mid_1", "mid_2"),
    generator: Optional[torch.Generator] = None,
    draws: int = 1,
) -> Dict[Tuple[int, str], torch.Tensor]:
    """Taps for several timesteps (e.g. the 8 of the (timestep, block) search): one pass per timestep and draw.

    Returns {(t, name): (B, C_name, D', H', W')} with timesteps in the given order. Noise for each timestep is drawn
    in order from ``generator``; no gradients.
    """
    grid: Dict[Tuple[int, str], torch.Tensor] = {}
    for t in timesteps:
        for name, value in extract_taps(model, schedule, x0, int(t), taps, generator=generator, draws=draws).items():
            grid[(int(t), name)] = value
    return grid
