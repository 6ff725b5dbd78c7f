"""Training curves: the metrics CSV of a run folder drawn as a PNG (matplotlib, Agg backend, no display needed).

Every trainer writes a CSV log with one row per epoch (pretraining: per ``--log-every`` steps, and its validation
loss in ``val_log.csv``) and, when it finishes or stops, ``curves.png`` next to it:

* the x axis is the first column that exists of ``step`` / ``epoch``; for the diagnosis trainers, whose log has a
  ``stage`` column, the epochs of successive stages are laid end to end and each stage gets its own colour;
* the left panel holds the losses (columns ``loss``, ``train_loss``, ``ce``, ``dice_loss``, ``val_loss``), the right
  panel the validation metrics (other ``val_*`` columns: macro AUROC, mean Dice, ...). Empty or NaN cells are
  skipped, so a metric logged only every few epochs still draws.

:func:`plot_run_curves` never raises for a missing matplotlib or an unreadable log: training results matter more
than their picture; it returns None then (and says why in a warning).
"""
from __future__ import annotations

import csv
import math
import os
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

__all__ = ["read_log", "plot_run_curves", "CURVES_NAME"]

PathLike = Union[str, os.PathLike]
CURVES_NAME = "curves.png"
LOSS_COLUMNS = ("loss", "train_loss", "ce", "dice_loss", "val_loss")
NOT_PLOTTED = ("lr", "seconds", "steps_per_s", "samples_per_s", "epoch", "step", "stage")


def _number(text: Optional[str]) -> float:
    try:
        v = float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan
    return v


def read_log(path: PathLike) -> Tuple[List[str], List[Dict[str, str]]]:
    """(columns, rows) of a CSV log; ([], []) when it does not exist."""
    path = Path(path)
    if not path.is_file():
        return [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _series(columns: Sequence[str], rows: Sequence[Dict[str, str]], offset_by_stage: bool
            ) -> Tuple[str, List[float], List[str]]:
    """(x label, x values, stage per row)."""
    xname = next((c for c in ("step", "epoch") if c in columns), None)
    stages = [r.get("stage", "") or "" for r in rows] if "stage" in columns else [""] * len(rows)
    if xname is None:
        return "row", [float(i + 1) for i in range(len(rows))], stages
    xs, offset, last_stage, last_x = [], 0.0, None, 0.0
    for r, stage in zip(rows, stages):
        x = _number(r.get(xname))
        if offset_by_stage and stage != last_stage and last_stage is not None:
            offset = last_x
        last_stage = stage
        xs.append(x + offset)
        last_x = x + offset
    label = f"{xname} (stages end to end)" if offset_by_stage and len(set(stages)) > 1 else xname
    return label, xs, stages


def plot_run_curves(log_csv: PathLike, out_png: Optional[PathLike] = None, title: Optional[str] = None,
                    extra_csv: Optional[PathLike] = None) -> Optional[Path]:
    """Draw ``log_csv`` (and ``extra_csv``, e.g. pretraining's ``val_log.csv``, on the same x column) as
    ``out_png`` (default: ``curves.png`` beside the log). Returns the PNG path, or None when there was nothing to
    draw or drawing failed (a warning says why)."""
    log_csv = Path(log_csv)
    out = Path(out_png) if out_png is not None else log_csv.with_name(CURVES_NAME)
    try:
        columns, rows = read_log(log_csv)
        if not rows:
            return None
        xlabel, xs, stages = _series(columns, rows, offset_by_stage=True)
        extra_cols, extra_rows = read_log(extra_csv) if extra_csv is not None else ([], [])
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        metrics = [c for c in columns if c.startswith("val_") and c not in LOSS_COLUMNS]
        metrics += [c for c in extra_cols if c.startswith("val_") and c not in LOSS_COLUMNS and c not in metrics]
        panels = 2 if metrics else 1
        fig, axes = plt.subplots(1, panels, figsize=(6.0 * panels, 3.8), squeeze=False)
        loss_ax = axes[0][0]
        stage_names = list(dict.fromkeys(stages))
        for column in [c for c in columns if c in LOSS_COLUMNS]:
            for stage in stage_names:
                pts = [(x, _number(r.get(column))) for x, r, s in zip(xs, rows, stages) if s == stage]
                pts = [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
                if pts:
                    name = f"{stage} {column}".strip() if len(stage_names) > 1 else column
                    loss_ax.plot(*zip(*pts), marker="o" if len(pts) < 30 else None, ms=3, label=name)
        if extra_rows:
            _, exs, _ = _series(extra_cols, extra_rows, offset_by_stage=False)
            for column in [c for c in extra_cols if c in LOSS_COLUMNS]:
                pts = [(x, _number(r.get(column))) for x, r in zip(exs, extra_rows)]
                pts = [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
                if pts:
                    loss_ax.plot(*zip(*pts), marker="s", ms=4, label=column)
        loss_ax.set_xlabel(xlabel)
        loss_ax.set_ylabel("loss")
        loss_ax.set_title("training loss" + (" and validation loss" if extra_rows else ""))
        loss_ax.grid(alpha=0.3)
        if loss_ax.lines:
            loss_ax.legend(fontsize=7)
        if metrics:
            ax = axes[0][1]
            for column in metrics:
                for stage in stage_names:
                    pts = [(x, _number(r.get(column))) for x, r, s in zip(xs, rows, stages) if s == stage]
                    pts = [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
                    if pts:
                        name = f"{stage} {column}".strip() if len(stage_names) > 1 else column
                        ax.plot(*zip(*pts), marker="o", ms=3, label=name)
            ax.set_xlabel(xlabel)
            ax.set_title("validation")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "no finite validation values", ha="center", va="center", transform=ax.transAxes)
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp.png")
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        os.replace(tmp, out)
        return out
    except Exception as e:  # noqa: BLE001 - a picture must never fail a finished training run
        warnings.warn(f"training curves not drawn ({type(e).__name__}: {e})", RuntimeWarning, stacklevel=2)
        return None
