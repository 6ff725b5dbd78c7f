"""Small helpers shared by the training commands' run folders: atomic text/tensor files, the log CSV, timestamps,
and the ``--device`` choice."""
from __future__ import annotations

import csv
import datetime as _dt
import io
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from OrthoDiffusionLib.atomic import atomic_path

__all__ = ["write_text", "write_log_csv", "save_tensors", "utc_now"]


def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_log_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows (dicts, columns in order of first appearance) as a CSV, atomically."""
    columns: list = []
    for r in rows:
        columns.extend(c for c in r if c not in columns)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def save_tensors(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    """A state dict as a safetensors file (CPU, contiguous), atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(tmp))


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def print_run_summary(metrics: Mapping[str, Any], run_dir: Any) -> None:
    """Print the validation/test macro AUROC of a finished diagnosis-style run and where its folder is."""
    for split in ("val", "test"):
        m = metrics.get(split)
        if m is not None and m["macro_auroc"] is not None:
            print(f"{split}: {m['patients']} patients, macro AUROC {m['macro_auroc']:.4f}")
    print(f"run folder: {run_dir}")
