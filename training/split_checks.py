"""Warnings for a validation split too small to fit what is fitted on it.

``train-diagnosis`` fits one temperature per label on the validation predictions, and ``evaluate`` chooses per-label
decision thresholds on them. With a handful of positive (or negative) validation patients per label these are
noise: the run still finishes, but says so (one line on stderr, and in ``run.json``).
"""
from __future__ import annotations

import sys
from typing import List, Optional, Sequence

import numpy as np

__all__ = ["MIN_PER_CLASS", "small_split_message", "warn_if_small"]

#: Fewer validation positives or negatives than this for a label draws the warning.
MIN_PER_CLASS = 10


def small_split_message(y: np.ndarray, keys: Sequence[str], purpose: str, split: str = "validation",
                        minimum: int = MIN_PER_CLASS) -> Optional[str]:
    """One line when any label of ``y`` ``(patients, K)`` 0/1 has fewer than ``minimum`` positives or negatives,
    else None."""
    y = np.asarray(y, dtype=np.float64).reshape(-1, len(keys))
    pos = y.sum(axis=0)
    neg = y.shape[0] - pos
    short = [(k, int(p), int(n)) for k, p, n in zip(keys, pos, neg) if p < minimum or n < minimum]
    if not short:
        return None
    shown = ", ".join(f"{k} {p}+/{n}-" for k, p, n in short[:4])
    more = f" and {len(short) - 4} more" if len(short) > 4 else ""
    return (f"the {split} split has {y.shape[0]} patient(s); {len(short)} of {len(keys)} label(s) have fewer than "
            f"{minimum} positives or negatives ({shown}{more}): {purpose} will be unreliable; give the {split} "
            f"split more patients")


def warn_if_small(y: np.ndarray, keys: Sequence[str], purpose: str, split: str = "validation",
                  minimum: int = MIN_PER_CLASS, who: str = "warning") -> List[str]:
    """:func:`small_split_message` printed as one line on stderr (``"<who>: warning: ..."``); returns [message] or
    [] (the trainers also keep it in ``run.json``)."""
    message = small_split_message(y, keys, purpose, split, minimum)
    if message is None:
        return []
    line = f"{who}: warning: {message}"
    try:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)
    except ImportError:  # pragma: no cover - tqdm is a training dependency
        print(line, file=sys.stderr)
    return [message]
