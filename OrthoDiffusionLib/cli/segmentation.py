"""``orthodiffusion train-segmentation`` and ``train-seg-baseline``: train one plane's segmentation model from a
manifest (:mod:`OrthoDiffusionLib.training.segmentation.train`); ``keep-segmentation-run``: a float16 copy of a
finished run, small enough to commit (:mod:`OrthoDiffusionLib.training.segmentation.keep`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from ..errors import InputError
from ..labels import PLANES
from ..training.named_options import size_overrides
from ..training.segmentation import train as segmentation_training
from .common import add_command, add_device_argument
from .training_options import add_size_arguments


def _common_arguments(p) -> None:
    p.add_argument("--manifest", type=Path, required=True, help="manifest CSV with seg_path (rows of --plane)")
    p.add_argument("--plane", choices=PLANES, required=True)
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--config", default="seg-ft", help="seg-ft (paper), seg-demo (small CPU demo) or a JSON path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry (dotted key, JSON value), e.g. --set epochs=5")
    p.add_argument("--train-patients", type=int, default=None,
                   help="train on a nested seeded subset of N training patients (label efficiency)")
    p.add_argument("--resume", action="store_true", help="continue the run folder from its newest checkpoint")
    add_device_argument(p)
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="folder for preprocessed cases (default RUN/cache; runs on the same data can share one)")


def register(subparsers) -> None:
    """Add ``train-segmentation`` and ``train-seg-baseline``."""
    p = add_command(subparsers, "train-segmentation", _run_train,
                    help="fine-tune a backbone + segmentation head on one plane",
                    description=segmentation_training.__doc__.split("\n\n")[1])
    _common_arguments(p)
    start = p.add_mutually_exclusive_group(required=True)
    start.add_argument("--backbone", type=Path, help="backbone .safetensors (save_backbone format)")
    start.add_argument("--init-from", type=Path, default=None, metavar="RUN",
                       help="start from a finished train-segmentation run's backbone and head (same plane and head; "
                            "e.g. more epochs on a new schedule)")
    p.add_argument("--head", choices=("bottleneck", "skip"), default=None, help="override the config's head")
    p.add_argument("--random-init", action="store_true",
                   help="train the network of --backbone from random initialisation (its architecture, not its "
                        "weights): the no-pretraining ablation of a label-efficiency study")
    add_size_arguments(p)
    b = add_command(subparsers, "train-seg-baseline", _run_baseline,
                    help="train a MONAI 3D U-Net / UNETR segmentation baseline",
                    description="Train a from-scratch segmentation baseline on the same cases and "
                                "splits as train-segmentation (sizes/epochs from the config's 'baseline').")
    _common_arguments(b)
    b.add_argument("--model", choices=sorted(segmentation_training.BASELINE_ALIASES), required=True)
    add_size_arguments(b, from_backbone=False)
    k = add_command(subparsers, "keep-segmentation-run", _run_keep,
                    help="copy a finished train-segmentation run with float16 weights (small enough to commit)",
                    description="Write a finished train-segmentation run to a new folder with its backbone and head "
                                "as float16 (run.json and log.csv copied). The copy is itself a run folder: "
                                "--init-from continues from it, export and train-tissue-diagnosis read it.")
    k.add_argument("--run", type=Path, required=True, help="finished train-segmentation run folder")
    k.add_argument("--out", type=Path, required=True, help="new folder for the copy")


def _report(record: Dict[str, Any], out: Path) -> None:
    test = (record["metrics"] or {}).get("test") or (record["metrics"] or {}).get("val")
    if test:
        d = test["dice"]["mean"]
        print(f"mean Dice {d['mean']:.3f} ± {d['sd']:.3f} over {test['n_cases']} cases -> {out}")
    else:
        print(f"trained -> {out}")


def _run_keep(args) -> int:
    from ..training.segmentation.keep import keep_segmentation_run

    print(f"kept -> {keep_segmentation_run(args.run, args.out)}")
    return 0


def _run_train(args) -> int:
    if args.random_init and args.backbone is None:
        raise InputError("--random-init takes the architecture of --backbone; it cannot be used with --init-from")
    start = args.backbone if args.backbone is not None else args.init_from / "backbone.safetensors"
    sizes, note = size_overrides(args.size, args.slices, args.overrides, [start])
    if note:
        print(f"train-segmentation: {note}")
    record = segmentation_training.train_segmentation(
        args.manifest, args.plane, args.backbone, args.out, config=args.config, overrides=sizes + args.overrides,
        head=args.head, train_patients=args.train_patients, resume=args.resume, device=args.device,
        show_progress=True, cache_dir=args.cache_dir, init_from=args.init_from, random_init=args.random_init)
    _report(record, args.out)
    return 0


def _run_baseline(args) -> int:
    sizes, _ = size_overrides(args.size, args.slices, args.overrides)
    record = segmentation_training.train_seg_baseline(
        args.manifest, args.plane, args.model, args.out, config=args.config, overrides=sizes + args.overrides,
        train_patients=args.train_patients, resume=args.resume, device=args.device, show_progress=True,
        cache_dir=args.cache_dir)
    _report(record, args.out)
    return 0
