"""``orthodiffusion pretrain``: command line of :mod:`OrthoDiffusionLib.training.pretrain.ddpm` (see its docstring).

Pretrain one plane's diffusion backbone on unlabeled MRI (the authors' recipe by default).
Multi-GPU / multi-node: torchrun --nproc_per_node=N [--nnodes=M ...] -m OrthoDiffusionLib pretrain ...
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import OrthoDiffusionError
from ..labels import PLANES, SHARED_PLANE
from ..training.pretrain.ddpm import PretrainConfig, pretrain
from .common import add_command, add_device_argument, add_precision_argument, int_list


def register(subparsers) -> None:
    """Add ``orthodiffusion pretrain``."""
    p = add_command(subparsers, "pretrain", _run_cli,
                    help="pretrain one plane's diffusion backbone (DDPM) on unlabeled MRI",
                    description=__doc__.split("\n\n", 1)[1], raw=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", type=Path, help="manifest CSV (rows of --plane with split=train)")
    src.add_argument("--data", type=Path, help="folder of series (every series of --plane under it)")
    src.add_argument("--pool", type=Path,
                     help="a simulated pool (orthodiffusion simulate pool), its pool.csv or its folder: random "
                          "16-slice windows of every series, some of them domain-randomised; labels are not read")
    p.add_argument("--plane", choices=PLANES + (SHARED_PLANE,), required=True,
                   help="the plane whose series train the backbone; shared: one backbone on all planes' series")
    p.add_argument("--out", type=Path, required=True, help="run folder (RUN_DIR)")
    p.add_argument("--steps", type=int, default=21500)
    p.add_argument("--batch-size", type=int, default=10, help="per process (default 10)")
    p.add_argument("--lr-per-sample", type=float, default=1e-5, help="lr = this x batch x world size")
    p.add_argument("--ema-decay", type=float, default=0.995)
    p.add_argument("--ema-every", type=int, default=10)
    p.add_argument("--ema-start", type=int, default=2000)
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--keep-checkpoints", type=int, default=3)
    p.add_argument("--sample-every", type=int, default=0, help="write a DDIM sample every N steps (0: never)")
    p.add_argument("--sample-steps", type=int, default=25, help="DDIM steps of those samples")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--width", type=int, default=64, help="base width (multiple of 32)")
    p.add_argument("--channel-mult", type=int_list, default="1,1,2,2,4")
    p.add_argument("--attention-resolutions", type=int_list, default="16")
    p.add_argument("--patch-size", type=int, default=1,
                   help="in-plane space-to-depth factor of the network (1 = the authors' layout; 4 for CPU scale)")
    p.add_argument("--norm-groups", type=int, default=32, help="GroupNorm groups (default 32)")
    p.add_argument("--pool-exams", default=None, metavar="START:STOP",
                   help="with --pool: the exams (in file order) to train on, e.g. 0:2000 (default: all)")
    p.add_argument("--p-randomized", type=float, default=0.5,
                   help="with --pool: fraction of windows drawn with a randomised contrast (default 0.5)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--crop", type=int, default=0,
                   help="with --pool: train on random CROP x CROP in-plane crops at the pool's pixel size "
                        "(e.g. 64: a quarter of the cost of 128 x 128 windows; 0, the default: whole windows)")
    p.add_argument("--slices", type=int, default=16)
    add_precision_argument(p)
    p.add_argument("--seed", type=int, default=0)
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
        grad_checkpoint=args.grad_checkpoint, num_workers=args.num_workers, device=args.device, resume=args.resume)
    if args.time_limit is not None and args.time_limit <= 0:
        raise OrthoDiffusionError(f"--time-limit must be > 0 minutes, got {args.time_limit}")
    time_limit = None if args.time_limit is None else args.time_limit * 60.0
    dataset = _pool_dataset(args, cfg) if args.pool is not None else None
    summary = pretrain(cfg, dataset, manifest=args.manifest, data=args.data, show_progress=True,
                       time_limit=time_limit, init_from=args.init_from)
    if int(os.environ.get("RANK", "0")) == 0:
        stopped = " (stopped by --time-limit)" if summary.get("stopped_by_time_limit") else ""
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
    return PoolWindows(args.pool, slices=cfg.slices, exams=exams, planes=planes, p_randomized=args.p_randomized,
                       seed=cfg.seed, crop=cfg.crop)
