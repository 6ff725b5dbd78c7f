"""``orthodiffusion pretrain``: command line of :mod:`OrthoDiffusionLib.training.pretrain.ddpm` (see its docstring).

Pretrain one plane's diffusion backbone on unlabeled MRI (the authors' recipe by default).
Multi-GPU / multi-node: torchrun --nproc_per_node=N [--nnodes=M ...] -m OrthoDiffusionLib pretrain ...
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import OrthoDiffusionError
from ..labels import PLANES, SHARED_PLANE
from ..training.pretrain.data import parse_splits
from ..training.pretrain.ddpm import PretrainConfig, pretrain
from .common import add_command, add_device_argument, add_precision_argument, int_list


DESCRIPTION = ("Pretrain one plane's diffusion backbone on unlabeled MRI. The defaults are the authors' recipe for a GPU "
               "(21,500 steps at batch 10 on 16 x 256 x 256 volumes with the paper's network); on a CPU use a "
               "CPU-sized network and input (docs/pretraining.md, e.g. --width 16 --channel-mult 1,2,4,8 "
               "--attention-resolutions 8 --patch-size 4 --norm-groups 8 --size 128). Before the first step it prints "
               "what it trains on (series, patients, splits, planes) and the plan. Ctrl-C stops after the current "
               "step with a checkpoint and the backbone file, like --time-limit; --resume continues. Multi-GPU / "
               "multi-node: torchrun --nproc_per_node=N -m OrthoDiffusionLib pretrain ...")

def register(subparsers) -> None:
    """Add ``orthodiffusion pretrain``."""
    p = add_command(subparsers, "pretrain", _run_cli,
                    help="pretrain one plane's diffusion backbone (DDPM) on unlabeled MRI", description=DESCRIPTION)
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter  # --help shows every default
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", type=Path, help="manifest CSV: the image rows of --plane in --splits")
    src.add_argument("--data", type=Path, help="folder of series: every image series of --plane under it (label maps "
                                               "and duplicate copies left out; a folder has no splits, so all are "
                                               "used)")
    src.add_argument("--pool", type=Path,
                     help="a simulated pool (orthodiffusion simulate pool), its pool.csv or its folder: random "
                          "16-slice windows of every series, some of them domain-randomised; labels are not read")
    p.add_argument("--plane", choices=PLANES + (SHARED_PLANE,), required=True,
                   help="the plane whose series train the backbone; shared: one backbone on all planes' series")
    p.add_argument("--out", type=Path, required=True, help="run folder (RUN_DIR)")
    p.add_argument("--splits", default="train", help="with --manifest: the splits to train on, e.g. train,val")
    p.add_argument("--steps", type=int, default=21500, help="optimizer steps in all")
    p.add_argument("--batch-size", type=int, default=10, help="volumes per step, per process")
    p.add_argument("--lr-per-sample", type=float, default=1e-5, help="lr = this x batch x world size")
    p.add_argument("--ema-decay", type=float, default=0.995, help="decay of the weights' moving average")
    p.add_argument("--ema-every", type=int, default=10, help="update the moving average every N steps")
    p.add_argument("--ema-start", type=int, default=2000, help="before this step the average is a copy of the model")
    p.add_argument("--ckpt-every", type=int, default=500, help="write a checkpoint every N steps")
    p.add_argument("--keep-checkpoints", type=int, default=3, help="checkpoints kept (the newest)")
    p.add_argument("--val-every", type=int, default=500,
                   help="with --manifest: denoising loss on the val series every N steps, into val_log.csv "
                        "(0: never)")
    p.add_argument("--val-series", type=int, default=16, help="at most this many val series for that loss")
    p.add_argument("--sample-every", type=int, default=0, help="write a DDIM sample every N steps (0: never)")
    p.add_argument("--sample-steps", type=int, default=25, help="DDIM steps of those samples")
    p.add_argument("--log-every", type=int, default=10, help="a log.csv row (mean loss) every N steps")
    p.add_argument("--width", type=int, default=64, help="base width (a multiple of --norm-groups)")
    p.add_argument("--channel-mult", type=int_list, default="1,1,2,2,4", help="width multiplier of each level")
    p.add_argument("--attention-resolutions", type=int_list, default="16",
                   help="downsample factors with self-attention")
    p.add_argument("--patch-size", type=int, default=1,
                   help="in-plane space-to-depth factor of the network (1 = the authors' layout; 4 for CPU scale)")
    p.add_argument("--norm-groups", type=int, default=32, help="GroupNorm groups")
    p.add_argument("--pool-exams", default=None, metavar="START:STOP",
                   help="with --pool: the exams (in file order) to train on, e.g. 0:2000 (default: all)")
    p.add_argument("--p-randomized", type=float, default=0.5,
                   help="with --pool: fraction of windows drawn with a randomised contrast")
    p.add_argument("--size", type=int, default=256,
                   help="in-plane input size; recorded in the backbone file, so the trainers use it too")
    p.add_argument("--crop", type=int, default=0,
                   help="with --pool: train on random CROP x CROP in-plane crops at the pool's pixel size "
                        "(e.g. 64: a quarter of the cost of 128 x 128 windows; 0: whole windows)")
    p.add_argument("--slices", type=int, default=16, help="slices per input volume (recorded like --size)")
    p.add_argument("--slice-mm", type=float, default=None,
                   help="with --inplane-mm: resample every series to this model grid (mm between slices) before the "
                        "central slices are taken, as the knee-cpu-ft / seg-cpu configurations do (4.0); recorded "
                        "like --size (default: none, each series resized as the paper does)")
    p.add_argument("--inplane-mm", type=float, default=None, help="the model grid's pixel size in mm (1.2 for "
                                                                  "knee-cpu-ft / seg-cpu; default: none)")
    add_precision_argument(p, help="bf16 autocast: faster on GPUs and CPUs with native bf16; far slower on CPUs "
                                   "without it")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, data order and noise")
    p.add_argument("--grad-checkpoint", action="store_true", help="gradient checkpointing (less memory)")
    p.add_argument("--num-workers", type=int, default=0, help="data loading workers per process")
    add_device_argument(p)
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR's newest checkpoint")
    p.add_argument("--init-from", type=Path, default=None, metavar="BACKBONE",
                   help="start a new run folder from a backbone file of an earlier run of the same configuration "
                        "(e.g. its float16 copy), at the step recorded in it, with a fresh optimizer")
    p.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                   help="stop cleanly after this many minutes of training: a checkpoint and the backbone file are "
                        "written from the steps done (--resume continues towards --steps)")


def _run_cli(args) -> int:
    cfg = PretrainConfig(
        plane=args.plane, out=str(args.out), steps=args.steps, batch_size=args.batch_size,
        lr_per_sample=args.lr_per_sample, ema_decay=args.ema_decay, ema_every=args.ema_every,
        ema_start=args.ema_start, ckpt_every=args.ckpt_every, keep_checkpoints=args.keep_checkpoints,
        sample_every=args.sample_every, sample_steps=args.sample_steps, log_every=args.log_every, width=args.width,
        channel_mult=args.channel_mult, attention_resolutions=args.attention_resolutions,
        size=args.size, slices=args.slices, precision=args.precision, seed=args.seed, patch_size=args.patch_size,
        norm_groups=args.norm_groups, crop=args.crop,
        grad_checkpoint=args.grad_checkpoint, num_workers=args.num_workers, device=args.device, resume=args.resume,
        splits=parse_splits(args.splits), val_every=args.val_every, val_series=args.val_series,
        slice_mm=args.slice_mm, inplane_mm=args.inplane_mm)
    if args.time_limit is not None and args.time_limit <= 0:
        raise OrthoDiffusionError(f"--time-limit must be > 0 minutes, got {args.time_limit}")
    time_limit = None if args.time_limit is None else args.time_limit * 60.0
    dataset = _pool_dataset(args, cfg) if args.pool is not None else None
    summary = pretrain(cfg, dataset, manifest=args.manifest, data=args.data, show_progress=True,
                       time_limit=time_limit, init_from=args.init_from)
    if int(os.environ.get("RANK", "0")) == 0:
        stopped = " (stopped by --time-limit)" if summary.get("stopped_by_time_limit") else ""
        if summary.get("stopped_by_interrupt"):
            stopped = " (stopped by Ctrl-C; the checkpoint and backbone are written, --resume continues)"
        print(f"pretrain {cfg.plane}: step {summary['step']} loss {summary['loss']:.4f}{stopped} -> {args.out}")
    return 0


def _pool_dataset(args, cfg):
    from ..training.pretrain.ddpm import PoolWindows

    exams = None
    if args.pool_exams:
        try:
            start, stop = (int(v) for v in args.pool_exams.split(":"))
        except ValueError:
            raise OrthoDiffusionError(f"--pool-exams takes START:STOP, got {args.pool_exams!r}") from None
        exams = range(start, stop)
    planes = PLANES if cfg.plane == SHARED_PLANE else (cfg.plane,)
    dataset = PoolWindows(args.pool, slices=cfg.slices, exams=exams, planes=planes, p_randomized=args.p_randomized,
                          seed=cfg.seed, crop=cfg.crop)
    crop = f"{cfg.crop} x {cfg.crop} in-plane crops of " if cfg.crop else ""
    dataset.summary = (f"{len(dataset.series)} series ({len(dataset.series) // len(planes)} exams x {len(planes)} "
                       f"plane(s)) of the simulated pool {args.pool}: {crop}random {cfg.slices}-slice windows, "
                       f"{args.p_randomized:.0%} of them in a randomised contrast")
    return dataset
