"""``orthodiffusion train-tissue-diagnosis``: the eight knee labels from tissue-pooled features of context-tissue
segmentation runs (:mod:`OrthoDiffusionLib.training.diagnosis.tissue_pooled`)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Tuple

from ..labels import PLANES
from .common import add_command, add_device_argument


def _plane_run(text: str) -> Tuple[str, Path]:
    plane, sep, folder = text.partition("=")
    if not sep or plane not in PLANES or not folder:
        raise argparse.ArgumentTypeError(f"expected PLANE=FOLDER with PLANE one of {', '.join(PLANES)}, got {text!r}")
    return plane, Path(folder)


def _run(args: argparse.Namespace) -> int:
    from ..training.diagnosis.tissue_pooled import train_tissue_diagnosis
    from .predict import progress_printer

    from ..errors import InputError

    runs = dict(args.run)
    if len(runs) != len(args.run):
        raise InputError("--run: each plane may be given once")
    progress, close = progress_printer(args.progress, "train-tissue-diagnosis")
    try:
        run = train_tissue_diagnosis(args.manifest, runs, args.out, cache_dir=args.cache_dir, device=args.device,
                                     progress=progress)
    finally:
        close()
    for split in ("val", "test"):
        m = run["metrics"].get(split)
        if m:
            per = ", ".join(f"{k} {v:.3f}" for k, v in m["auroc"].items() if v is not None)
            print(f"{split}: macro AUROC {m['macro_auroc']:.3f} ({m['patients']} patients); {per}")
    print(f"run written to {args.out}")
    return 0


def register(subparsers) -> None:
    """Add ``orthodiffusion train-tissue-diagnosis``."""
    p = add_command(subparsers, "train-tissue-diagnosis", _run,
                    help="fit the tissue-pooled diagnosis on context-tissue segmentation runs",
                    description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", type=Path, required=True, help="training manifest (CSV with train/val/test splits)")
    p.add_argument("--run", type=_plane_run, action="append", required=True, metavar="PLANE=FOLDER",
                   help="a train-segmentation run of PLANE trained with context_tissues; repeat per plane")
    p.add_argument("--out", type=Path, required=True, help="run folder (new, or an earlier run of this command)")
    p.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default OUT/features)")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    add_device_argument(p, default="cpu")
