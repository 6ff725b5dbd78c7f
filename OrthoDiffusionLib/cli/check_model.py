"""``orthodiffusion check-model``: a bundle through the prediction flow of ``predict`` on every exam of a cohort,
scored against the cohort's ground truth (:mod:`OrthoDiffusionLib.training.evaluation.model_check`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..model.uncertainty import DEFAULT_NOISE_DRAWS
from ..training.evaluation import model_check
from .common import add_command, add_device_argument, add_precision_argument, positive_int


def _run(args: argparse.Namespace) -> int:
    from .predict import progress_printer

    progress, close = progress_printer(args.progress, "check-model")
    try:
        s = model_check.check_model(args.model, args.manifest, args.out, split=args.split,
                                    noise_draws=args.noise_draws, device=args.device, precision=args.precision,
                                    segmentation=not args.no_segmentation, progress=progress)
    finally:
        close()
    print(f"{s['model']['name']}: {s['n_patients']} patients")
    if "macro_auroc" in s:
        lo, hi = s["macro_auroc_ci"]
        print(f"macro AUROC {s['macro_auroc']:.3f} (95% CI {lo:.3f}-{hi:.3f}); "
              + ", ".join(f"{k} {v:.3f}" for k, v in s["auroc"].items()))
    for plane, value in s["mean_dice"].items():
        print(f"{plane} mean Dice {value:.3f}: " + ", ".join(f"{k} {v:.3f}" for k, v in s["dice"][plane].items()))
    print(f"tables in {args.out}")
    return 0


def register(subparsers) -> None:
    """Add ``orthodiffusion check-model``."""
    p = add_command(subparsers, "check-model", _run,
                    help="score a model bundle on a simulated cohort through the predict flow (AUROC, Dice)",
                    description=model_check.__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model bundle file or registered name")
    p.add_argument("--manifest", type=Path, required=True, help="cohort manifest.csv (orthodiffusion simulate cohort)")
    p.add_argument("--out", type=Path, required=True, help="output folder for the tables")
    p.add_argument("--split", default="", help="only this manifest split (default: every patient)")
    p.add_argument("--noise-draws", type=positive_int, default=DEFAULT_NOISE_DRAWS,
                   help=f"noise draws per exam (default {DEFAULT_NOISE_DRAWS}, as predict)")
    p.add_argument("--no-segmentation", action="store_true", help="diagnosis only")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    add_device_argument(p, default="cpu")
    add_precision_argument(p)
