"""``orthodiffusion evaluate-segmentation``: Dice/HD95 tables of segmentation runs and the plane-fusion comparison
(:mod:`OrthoDiffusionLib.training.evaluation.segmentation`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..training.evaluation import segmentation as evaluation
from .common import add_command, add_device_argument


def _run(args: argparse.Namespace) -> int:
    result = evaluation.evaluate_segmentation(args.runs, args.out, names=args.names, split=args.split,
                                              fuse=args.fuse, device=args.device,
                                              replicates=args.replicates)
    print((args.out / "table.md").read_text(), end="")
    if result["replicates"]:
        print((args.out / "replicates.md").read_text(), end="")
    if result["fusion"] is not None:
        print((args.out / "fusion.md").read_text(), end="")
    return 0


def register(subparsers) -> None:
    """Add ``orthodiffusion evaluate-segmentation``."""
    p = add_command(subparsers, "evaluate-segmentation", _run,
                    help="Dice/HD95 table of segmentation runs (+ plane fusion)",
                    description=evaluation.__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", type=Path, required=True, help="run folders (train-segmentation / baseline)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--names", nargs="+", default=None,
                   help="column names, one per run, or one per arm with --replicates (default: from run.json)")
    p.add_argument("--replicates", type=int, default=1, metavar="N",
                   help="the runs are N training runs per arm, given arm by arm, the i-th run of every arm from "
                        "the same seed: adds replicates.md, run-level tests of the arms (default 1)")
    p.add_argument("--split", choices=("val", "test"), default="test")
    p.add_argument("--fuse", nargs=2, type=Path, default=None, metavar=("SAGITTAL_RUN", "CORONAL_RUN"),
                   help="runs to fuse (default: the one sagittal and one coronal run given, if any)")
    add_device_argument(p, default="cpu", what=" (fusion inference)")
