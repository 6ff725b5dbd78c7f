"""Progress reports: the one callback type of every long-running call, and its line form between processes.

A long-running call takes ``progress(stage, fraction)``: ``stage`` says what runs now (e.g. ``"coronal: backbone
t=50"``, ``"epoch 3/10"``), ``fraction`` (0..1) how much of the whole call is done. A command that reports to another
process (the 3D Slicer module runs ``orthodiffusion predict --progress json``) prints each report as one line
``ORTHODIFFUSION-PROGRESS {"stage": ..., "fraction": ...}`` (:func:`progress_line`), which the other side reads back
with :func:`parse_progress_line`.
"""
from __future__ import annotations

import json
from typing import Callable, Optional, Tuple

__all__ = ["ProgressFn", "PROGRESS_PREFIX", "progress_line", "parse_progress_line"]

#: ``progress(stage, fraction)``: see the module docstring.
ProgressFn = Callable[[str, float], None]

PROGRESS_PREFIX = "ORTHODIFFUSION-PROGRESS"


def progress_line(stage: str, fraction: float) -> str:
    """The one-line text form of a progress report."""
    return f"{PROGRESS_PREFIX} {json.dumps({'stage': stage, 'fraction': round(float(fraction), 4)})}"


def parse_progress_line(line: str) -> Optional[Tuple[str, float]]:
    """``(stage, fraction)`` of a :func:`progress_line`, else None (fraction clipped to 0..1)."""
    text = line.strip()
    if not text.startswith(PROGRESS_PREFIX):
        return None
    try:
        event = json.loads(text[len(PROGRESS_PREFIX):])
        return str(event["stage"]), min(1.0, max(0.0, float(event["fraction"])))
    except (ValueError, KeyError, TypeError):
        return None
