"""The diagnosis training subcommands: ``train-diagnosis``, ``train-baseline`` and ``search-timesteps``."""
from __future__ import annotations

from ..training.diagnosis import search_timesteps, train as train_diagnosis, train_baseline


def register(subparsers) -> None:
    """Add the three subcommands to the ``orthodiffusion`` command."""
    for module in (train_diagnosis, train_baseline, search_timesteps):
        module.register(subparsers)
