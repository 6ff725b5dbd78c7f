"""``orthodiffusion check-anatomy``: a bundle's segmentation of real knee series (and their reformats) checked
against anatomy, with overlay pictures (:mod:`OrthoDiffusionLib.training.evaluation.anatomy_check`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..labels import PLANES
from ..training.evaluation import anatomy_check
from .common import add_command, add_device_argument, plane_list, positive_int


def _run(args: argparse.Namespace) -> int:
    from .predict import progress_printer

    cases = anatomy_check.series_to_check(args.series, args.reformat or (), echo=args.echo)
    progress, close = progress_printer(args.progress, "check-anatomy")
    try:
        results = anatomy_check.check_anatomy(args.model, cases, args.out, device=args.device, progress=progress)
    finally:
        close()
    failed = 0
    for name, r in results.items():
        if not r["checks"]:
            print(f"{name} ({r['plane']}): not segmented by this model")
            continue
        bad = [c for c in r["checks"] if not c.passed]
        failed += bool(bad)
        print(f"{name} ({r['plane']}): {'all checks pass' if not bad else f'{len(bad)} check(s) fail'}")
        for c in r["checks"]:
            print(f"  {'PASS' if c.passed else 'FAIL'}  {c.name}: {c.detail}")
    print(f"pictures and tables in {args.out}")
    return 1 if failed and args.strict else 0


def register(subparsers) -> None:
    """Add ``orthodiffusion check-anatomy``."""
    p = add_command(subparsers, "check-anatomy", _run,
                    help="segment real knee series and check the labels against anatomy (pictures, table)",
                    description=anatomy_check.__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model bundle file or registered name")
    p.add_argument("--series", type=Path, action="append", required=True,
                   help="a real knee series (DICOM folder or file, NIfTI, NRRD, ...); repeatable")
    p.add_argument("--reformat", type=plane_list, default=None, metavar="PLANE,...",
                   help=f"also check each series reformatted onto these planes ({', '.join(PLANES)}): for "
                        "thin-slice 3D series")
    p.add_argument("--echo", type=positive_int, default=None, help="in a multi-echo series: read echo N")
    p.add_argument("--out", type=Path, required=True, help="output folder (pictures, checks.csv, measures.csv)")
    p.add_argument("--strict", action="store_true", help="exit 1 when any check fails")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    add_device_argument(p, default="cpu")
