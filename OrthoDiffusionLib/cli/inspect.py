"""``orthodiffusion inspect PATH [--json] [--series-uid UID ...] [--echo N]``: list the series found under a path and
the plane assignment.

Prints plane, obliquity, size, spacing, TE/TR, description and weighting guesses per series, then what
:func:`load_study` would choose per plane and why. Never prints patient identifiers or UIDs.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict

from ..io.study import inspect_path
from .common import add_command, positive_int


def _print_text(report: Dict[str, Any], out=sys.stdout) -> None:
    print(f"{len(report['series'])} series under {report['path']}", file=out)
    for s in report["series"]:
        size = "x".join(str(v) for v in s["size"])
        spacing = "x".join(f"{v:.3g}" for v in s["spacing"])
        te = s["echo_time"] if s["echo_time"] is not None else "-"
        tr = s["repetition_time"] if s["repetition_time"] is not None else "-"
        print(f"  {s['plane']:<8} {s['obliquity_deg']:5.1f} deg  {size:<12} {spacing:<16} mm  TE {te} / TR {tr} ms  "
              f"{s['weighting']}{' FS' if s['fat_sat'] else ''}  {s['label']}  [{s['source']}]", file=out)
    print("Plane assignment (load_study):", file=out)
    for line in report["choices"]:
        print(f"  {line}", file=out)


def _run(args: argparse.Namespace) -> int:
    report = inspect_path(args.path, args.series_uid, args.echo)
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=str)
        print()
    else:
        _print_text(report)
    return 0


def register(subparsers) -> None:
    """Add ``orthodiffusion inspect``."""
    p = add_command(subparsers, "inspect", _run, help="list the series in a study folder/file and the plane assignment",
                    description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="study folder, DICOM folder/file, or NIfTI/NRRD/MetaImage file")
    p.add_argument("--json", action="store_true", help="print a JSON report instead of text")
    p.add_argument("--series-uid", action="append", default=None, metavar="UID",
                   help="only the series with this SeriesInstanceUID (or SeriesNumber); may be repeated")
    p.add_argument("--echo", type=positive_int, default=None, metavar="N",
                   help="of a multi-echo series, only echo N (1 = first echo)")
