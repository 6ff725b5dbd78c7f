"""``orthodiffusion evaluate``: diagnosis metrics tables and figures from prediction CSVs and a manifest
(:mod:`OrthoDiffusionLib.training.evaluation.diagnosis`, whose docstring is the command's description)."""
from __future__ import annotations

import argparse

from ..labels import anatomies
from ..training.evaluation import diagnosis as evaluation
from .common import add_command


def _run(args: argparse.Namespace) -> int:
    summary = evaluation.evaluate_predictions(
        args.predictions, args.manifest, args.out, anatomy=args.anatomy, split=args.split or None,
        val_predictions=args.val_predictions, val_split=args.val_split, baselines=args.baseline or (),
        threshold_method=args.threshold_method, n_boot=args.bootstrap, n_perm=args.permutations, seed=args.seed,
        figures=not args.no_figures,
        labels=[k.strip() for k in args.labels.split(",") if k.strip()] if args.labels else None)
    lo, hi = summary["macro_auroc_ci"]
    print(f"{summary['patients']} patients, macro AUROC {summary['macro_auroc']:.4f} (95% CI {lo:.4f}-{hi:.4f})")
    for c in summary["comparisons"]:
        print(f"vs {c['baseline']}: {c['macro_auroc_baseline']:.4f}, difference {c['difference']:+.4f}, "
              f"p = {c['p_value']:.4g}")
    for r in summary["replicates"]:
        print(f"over {r['n']} runs vs {r['other']}: {r['mean_first']:.4f} against {r['mean_other']:.4f}, "
              f"difference {r['difference']:+.4f} (sd {r['sd_difference']:.4f}), better in {r['first_better']} "
              f"of {r['n']}, p = {r['p_t_test']:.4g} (t-test), {r['p_sign_flip']:.4g} (sign flip)")
    print(f"tables and figures in {args.out}")
    return 0


def register(subparsers) -> None:
    """Add ``evaluate`` to the ``orthodiffusion`` command."""
    p = add_command(subparsers, "evaluate", _run, help="diagnosis metrics (AUROC/AP with CIs, CP/CR/CF1/OP/OR/OF1, "
                                                       "subgroups, permutation tests) from prediction CSVs",
                    description=evaluation.__doc__, raw=True)
    p.add_argument("--predictions", required=True, nargs="+",
                   help="predictions CSV of the evaluated split; several: replicate runs (seed order)")
    p.add_argument("--manifest", required=True, help="training-data manifest CSV (labels, split, center, ...)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--anatomy", default="knee", choices=anatomies())
    p.add_argument("--labels", metavar="KEY[,KEY...]", default=None,
                   help="label columns to evaluate, for a model trained on its own label set (default: the "
                        "anatomy's labels)")
    p.add_argument("--split", default="test", help="manifest split to evaluate ('' = all rows)")
    p.add_argument("--val-predictions", help="validation predictions CSV (for per-label thresholds)")
    p.add_argument("--val-split", default="val")
    p.add_argument("--baseline", action="append", nargs="+",
                   help="baseline predictions CSV (repeatable); with replicate runs, one file per run")
    p.add_argument("--threshold-method", default="youden", choices=("youden", "f1"))
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates (default 1000)")
    p.add_argument("--permutations", type=int, default=1000, help="permutations per test (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-figures", action="store_true", help="skip roc.png (no matplotlib needed)")
