"""``orthodiffusion inspect PATH [--json]``: list the series found under a path and the plane assignment.

Prints plane, obliquity, size, spacing, TE/TR, description and weighting guesses per series, then what
:func:`load_study` would choose per plane and why. Never prints patient identifiers or UIDs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List

from ..errors import MissingPathError
from ..io.reader import read_series
from ..io.study import assign_planes, describe_series, find_candidates, load_study


def inspect_path(path: str) -> Dict[str, Any]:
    """JSON-friendly report: ``series`` (one entry per series/echo), ``assignment`` (plane -> chosen source or None),
    ``choices`` (the reasons) and ``ignored``."""
    if not os.path.exists(path):
        raise MissingPathError("no such file or folder", path)
    series: List[Dict[str, Any]] = []
    if os.path.isdir(path):
        candidates, ignored = find_candidates(path)
        exam = assign_planes(path, candidates, ignored)
        for c in sorted(candidates, key=lambda c: (c.plane, c.label)):
            series.append({
                "label": c.label, "source": c.source, "plane": c.plane, "obliquity_deg": round(c.obliquity, 2),
                "size": [c.meta.get("columns"), c.meta.get("rows"), c.n_slices],
                "spacing": [round(float(v), 4) for v in c.spacing],
                "echo_time": c.meta.get("echo_time"), "repetition_time": c.meta.get("repetition_time"),
                "series_description": c.meta.get("series_description"), "weighting": c.meta.get("weighting"),
                "fat_sat": c.meta.get("fat_sat"), "format": c.meta.get("format"),
            })
    else:
        s = read_series(path)
        summary = s.summary()
        series.append({"label": describe_series(s.meta, s.shape[0], s.spacing), **{k: summary[k] for k in (
            "source", "plane", "obliquity_deg", "size", "spacing", "echo_time", "repetition_time",
            "series_description", "weighting", "fat_sat", "format")}})
        exam = load_study(path)
    return {
        "path": os.fspath(path),
        "series": series,
        "assignment": {p: (exam.get(p).source if exam.get(p) is not None else None) for p in ("sagittal", "coronal",
                                                                                               "axial")},
        "choices": exam.choices,
    }


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
    report = inspect_path(args.path)
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=str)
        print()
    else:
        _print_text(report)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="list the series in a study folder/file and the plane assignment",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="study folder, DICOM folder/file, or NIfTI/NRRD/MetaImage file")
    p.add_argument("--json", action="store_true", help="print a JSON report instead of text")
    p.set_defaults(func=_run)
