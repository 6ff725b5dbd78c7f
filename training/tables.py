"""The CSV tables training and evaluation read (manifests, prediction files): reading one, checking its columns and
parsing its numbers, with errors that name the file, the line and the column."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from OrthoDiffusionLib.errors import CorruptFileError, InputError, MissingPathError

__all__ = ["read_csv", "require_columns", "parse_float"]


def read_csv(path: Path) -> Tuple[List[str], List[Dict[str, str]]]:
    """``(header, rows)`` of a CSV file (UTF-8, a BOM allowed); MissingPathError / CorruptFileError naming it."""
    if not path.is_file():
        raise MissingPathError("file not found", path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except (UnicodeDecodeError, csv.Error) as e:
        raise CorruptFileError(f"not a readable CSV file ({e})", path) from None
    if not header:
        raise CorruptFileError("empty CSV file (no header)", path)
    return header, rows


def require_columns(header: Sequence[str], columns: Sequence[str], path: Path) -> None:
    """:class:`InputError` naming the ``columns`` missing from ``header``."""
    missing = [c for c in columns if c not in header]
    if missing:
        raise InputError(f"missing column(s): {', '.join(missing)}", path)


def parse_float(text: str, path: Path, line: int, column: str) -> float:
    """The finite number in one cell; :class:`InputError` naming the file, line and column otherwise."""
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise InputError(f"line {line}: {column}={text!r} is not a number", path) from None
    if not math.isfinite(v):
        raise InputError(f"line {line}: {column}={text!r} is not finite", path)
    return v
