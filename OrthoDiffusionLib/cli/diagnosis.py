"""The diagnosis training subcommands: ``train-diagnosis``, ``train-baseline`` and ``search-timesteps``.

Their descriptions are the docstrings of the training modules they run (:mod:`OrthoDiffusionLib.training.diagnosis`).
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Dict

from ..labels import PLANES
from ..training.diagnosis import search_timesteps as search_module
from ..training.diagnosis import train as train_module
from ..training.diagnosis import train_baseline as baseline_module
from ..training.diagnosis.search import BLOCKS, TIMESTEPS
from ..training.named_options import diagnosis_overrides, resolved_size
from ..training.progress_bars import run_with_bars
from ..training.run_files import print_run_summary
from .common import add_command, add_device_argument, command_line, int_list, plane_list, with_stage_bars
from .training_options import add_label_arguments, add_protocol_argument, add_size_arguments


def _backbone_arguments(p: argparse.ArgumentParser, every_plane_help: str) -> None:
    p.add_argument("--backbone", help=every_plane_help)
    for plane in PLANES:
        p.add_argument(f"--backbone-{plane}", help=f"backbone for the {plane} plane (overrides --backbone)")


def _plane_backbones(args: argparse.Namespace) -> Dict[str, Any]:
    return {p: getattr(args, f"backbone_{p}") for p in PLANES}


def _subset_arguments(p: argparse.ArgumentParser) -> None:
    subset = p.add_mutually_exclusive_group()
    subset.add_argument("--train-patients", type=int, help="train on a seeded subset of N training patients")
    subset.add_argument("--train-fraction", type=float, help="train on a seeded fraction of the training patients")


def _train(train: Callable[..., Dict[str, Any]], args: argparse.Namespace, *positional: Any, **options: Any) -> int:
    """Run ``train(args.manifest, *positional, args.out, ...)`` with the options every diagnosis trainer takes and
    progress bars (stage, epoch, running loss, validation metric), then print the run's validation/test summary."""
    info = run_with_bars(train, args.manifest, *positional, args.out, resume=args.resume, device=args.device,
                         seed=args.seed, train_patients=args.train_patients, train_fraction=args.train_fraction,
                         cache_dir=args.cache_dir, command=command_line(), **options)
    print_run_summary(info["metrics"], args.out)
    return 0


# ----------------------------------------------------------------------------------------------- train-diagnosis
def _resolved(command: str, args: argparse.Namespace, backbones=(), size_from_backbone: bool = True):
    """The configuration with the named options (``--protocol``, ``--labels``..., ``--size``/``--slices``) and
    ``--set`` applied; prints where the input size came from and what will be trained."""
    base = train_module.load_config(args.config)
    overrides, notes = diagnosis_overrides(
        base["protocol"], list(args.set or ()), protocol=getattr(args, "protocol", None), labels=args.labels,
        labels_from=args.manifest if args.labels_from_manifest else None, size=args.size, slices=args.slices,
        backbones=backbones if size_from_backbone else ())
    cfg = train_module.resolve_config(args.config, overrides)
    for note in notes:
        print(f"{command}: {note}")
    print(f"{command}: {cfg.get('name', args.config)}, protocol {cfg['protocol']}, input {resolved_size(cfg)}, "
          f"{cfg['num_labels']} label(s): {', '.join(cfg['labels'])}")
    return cfg


def _run_train(args: argparse.Namespace) -> int:
    backbones = [b for b in [args.backbone, *_plane_backbones(args).values()] if b]
    cfg = _resolved("train-diagnosis", args, backbones)
    return _train(train_module.train_diagnosis, args, cfg, backbone=args.backbone,
                  plane_backbones=_plane_backbones(args))


def add_train_diagnosis(subparsers) -> None:
    p = add_command(subparsers, "train-diagnosis", _run_train,
                    help="two-stage diagnosis training (linear probing or fine-tuning) "
                         "on a manifest, with exact resume", description=train_module.__doc__, raw=True)
    p.add_argument("--manifest", required=True, help="training-data manifest CSV")
    p.add_argument("--config", required=True, help="configuration name (e.g. knee-ft-opt, FT-Opt) or JSON file")
    _backbone_arguments(p, "backbone file (save_backbone format) for every plane")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a configuration value, e.g. stage1.epochs=2 (value parsed as JSON; repeatable)")
    add_protocol_argument(p)
    add_size_arguments(p)
    add_label_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    add_device_argument(p)
    _subset_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", help="folder for preprocessed volumes and cached taps (default RUN/cache)")


# ------------------------------------------------------------------------------------------------ train-baseline
def _run_baseline(args: argparse.Namespace) -> int:
    cfg = _resolved("train-baseline", args, size_from_backbone=False)
    kwargs: Dict[str, Any] = {}
    if args.unet_channels:
        kwargs["channels"] = list(args.unet_channels)
    if args.resnet_widen is not None:
        kwargs["widen_factor"] = args.resnet_widen
    return _train(baseline_module.train_baseline, args, args.model, cfg, encoder_kwargs=kwargs, planes=args.planes)


def add_train_baseline(subparsers) -> None:
    p = add_command(subparsers, "train-baseline", _run_baseline,
                    help="train a from-scratch baseline (3D U-Net encoder or 3D "
                         "ResNet-18) on a manifest, writing predictions CSVs", description=baseline_module.__doc__,
                    raw=True)
    p.add_argument("--manifest", required=True, help="training-data manifest CSV")
    p.add_argument("--model", required=True, choices=baseline_module.BASELINES)
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--config", default="knee-ft-opt",
                   help="diagnosis configuration giving the anatomy and the baselines' epochs/lr (default knee-ft-opt)")
    p.add_argument("--size", type=int, help="in-plane size (use the compared diagnosis run's)")
    p.add_argument("--slices", type=int, help="slices (use the compared diagnosis run's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a configuration value, e.g. "
                                                                        "baselines.epochs.unet3d=2 (repeatable)")
    p.add_argument("--unet-channels", type=int_list, help="U-Net encoder channels, e.g. 16,16,32,32,64 "
                                                          "(default: the paper's 64,64,128,128,256)")
    p.add_argument("--resnet-widen", type=float, help="ResNet-18 widen factor (default 1)")
    p.add_argument("--planes", type=plane_list, default=PLANES, metavar="PLANE,...",
                   help="planes with an encoder, e.g. sagittal to compare with a one-plane run "
                        "(default sagittal,coronal,axial)")
    add_label_arguments(p)
    _subset_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    add_device_argument(p)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--cache-dir", help="folder for preprocessed volumes (default RUN/cache)")


# ---------------------------------------------------------------------------------------------- search-timesteps
def _run_search(args: argparse.Namespace) -> int:
    cfg = train_module.resolve_config(args.config, args.set or ())
    chosen = with_stage_bars(
        search_module.search_timesteps, args.manifest, cfg, args.out, backbone=args.backbone,
        plane_backbones=_plane_backbones(args), timesteps=args.timesteps or TIMESTEPS,
        blocks=args.blocks.split(",") if args.blocks else BLOCKS, top_k=args.top_k, device=args.device,
        seed=args.seed, cache_dir=args.cache_dir, figure=not args.no_figures)
    planes = ", ".join(f"{p} t={v['timestep']} {v['block']}" for p, v in chosen["planes"].items())
    print(f"chosen: {planes} (validation macro AUROC {chosen['score']:.4f}); tables and config.json in {args.out}")
    return 0


def add_search_timesteps(subparsers) -> None:
    p = add_command(subparsers, "search-timesteps", _run_search,
                    help="timestep-block search with linear-probing features, scored "
                         "by validation macro AUROC", description=search_module.__doc__, raw=True)
    p.add_argument("--manifest", required=True, help="training-data manifest CSV")
    _backbone_arguments(p, "backbone file for every plane")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", default="knee-lp-opt", help="configuration giving pooling, preprocessing and the "
                                                           "probe/fusion settings (default knee-lp-opt)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a configuration value (repeatable)")
    p.add_argument("--timesteps", type=int_list, help="comma-separated grid timesteps (default the paper's 8)")
    p.add_argument("--blocks", help="comma-separated blocks (default mid_0,mid_1,mid_2)")
    p.add_argument("--top-k", type=int, default=4, help="candidates kept per plane (default 4)")
    add_device_argument(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", help="folder for preprocessed volumes and cached taps (default OUT/cache)")
    p.add_argument("--no-figures", action="store_true", help="skip per_plane.png")


def register(subparsers) -> None:
    """Add the three subcommands to the ``orthodiffusion`` command."""
    for add in (add_train_diagnosis, add_train_baseline, add_search_timesteps):
        add(subparsers)
