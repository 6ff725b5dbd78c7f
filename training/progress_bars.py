"""Terminal progress of the epoch-based trainers (``train-diagnosis``, ``train-baseline``): one tqdm bar per stage in
percent, with the epoch, the running training loss of the epoch and, after each epoch, its validation metric.

Use: ``run_with_bars(train_diagnosis, ...)``, or ``bars = StageBars()``, then pass ``bars.progress`` as the
trainer's ``progress(stage, fraction)``, ``bars.step`` as its ``step_log(stage, epoch, loss)`` and ``bars.epoch`` as
its ``epoch_log(row)``; ``bars.close()`` at the end.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional

__all__ = ["StageBars", "run_with_bars"]

_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}"


class StageBars:
    """tqdm bars (module doc); no bar is drawn when tqdm is missing."""

    def __init__(self, leave: bool = True):
        self.leave = leave
        self._bars: Dict[str, Any] = {}
        self._post: Dict[str, Dict[str, str]] = {}

    def _bar(self, stage: str):
        bar = self._bars.get(stage)
        if bar is None:
            try:
                from tqdm import tqdm
            except ImportError:  # pragma: no cover - tqdm is a training dependency
                return None
            for other in self._bars.values():
                other.close()
            self._bars.clear()
            bar = self._bars[stage] = tqdm(total=1.0, desc=stage, bar_format=_FORMAT, leave=self.leave,
                                           dynamic_ncols=True)
            self._post[stage] = {}
        return bar

    def progress(self, stage: str, fraction: float) -> None:
        bar = self._bar(stage)
        if bar is not None:
            bar.update(max(0.0, min(1.0, float(fraction))) - bar.n)

    def step(self, stage: str, epoch: int, loss: float) -> None:
        """The running mean training loss of ``epoch`` (1-based) so far."""
        self._show(stage, {"epoch": str(epoch), "loss": f"{loss:.4f}"})

    def epoch(self, row: Mapping[str, Any]) -> None:
        """An epoch's log row: its validation metrics join the bar's postfix."""
        stage = str(row.get("stage", ""))
        shown = {}
        for k, v in row.items():
            if k.startswith("val_") and isinstance(v, (int, float)) and v is not None and math.isfinite(v):
                shown[k] = f"{v:.4f}"
        if shown:
            self._show(stage, shown)

    def _show(self, stage: str, values: Mapping[str, str]) -> None:
        bar: Optional[Any] = self._bars.get(stage)
        if bar is None:
            return
        self._post[stage].update(values)
        bar.set_postfix(self._post[stage], refresh=True)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


def run_with_bars(train, *args, **kwargs):
    """``train(*args, **kwargs, progress=..., step_log=..., epoch_log=...)`` with :class:`StageBars` drawn, closed
    however it ends; returns what ``train`` returns."""
    bars = StageBars()
    try:
        return train(*args, progress=bars.progress, step_log=bars.step, epoch_log=bars.epoch, **kwargs)
    finally:
        bars.close()
