"""``orthodiffusion bench SUBJECT``: performance measurements (never part of the test suite).

Subjects (:data:`SUBJECTS`; the measurements live in :mod:`OrthoDiffusionLib.bench`):
    backbone   full forward of the diffusion U-Net vs ``encode`` up to the middle block (feature extraction).
    predict    per-exam time of batch prediction with a real bundle loaded once (N=1 vs N=8).
    whole-series  a whole exam from one 3D series and its reformats with whole-series segmentation (a bundle, and
               the authors' full-size layout: whole series vs 16 central slices).
    simulate   seconds per simulated 3-plane exam on one core; with ``--against DIR`` also the ratio against another
               source tree (e.g. the previous implementation: ``git worktree add /tmp/ref <rev>``).
    inference  full-exam inference, ours vs the authors-style reference in the same process.
    batch      per-exam time / exams per second for N exams per batch.
    scaling    per-exam time and peak memory against the preprocessing grid.
    train      pretraining and fine-tuning step time / memory, fp32 eager reference vs ours.
    flops      FLOPs of an encoder pass and a training step, achieved rate vs the device's peak.

Each subject is a function here that adds its parser (with ``set_defaults(func=...)``); to add one, write the
measurement in :mod:`OrthoDiffusionLib.bench`, its parser function here, and list it in :data:`SUBJECTS`. Every
subject prints a Markdown table, or JSON with ``--json``. GPU rows of all of them:
``benchmarks/gpu_session.sh OUT_DIR`` (one call on a machine with CUDA).
"""
from __future__ import annotations

import argparse
import time
from typing import Callable, Dict, List, Sequence

from ..bench import flops as flops_bench
from ..bench import train as train_bench
from ..bench.timing import print_results
from .common import add_command, add_device_argument, add_json_argument, add_precision_argument


def _table(title: str, result: Dict[str, object], columns: Sequence[str], args: argparse.Namespace,
           start: float) -> int:
    """Print ``result`` (its ``rows`` as the table, the rest as facts, plus the wall time since ``start``)."""
    result["wall_s"] = time.perf_counter() - start
    rows = result.pop("rows")
    print_results(title, rows, columns, result, args.json)
    return 0


def _common(p: argparse.ArgumentParser, repeats: int, grid: bool = True) -> None:
    """Options of the inference subjects (inference, batch, scaling); ``grid``: also ``--size`` and ``--slices``."""
    p.add_argument("--width", type=int, default=64, help="backbone model_channels (default 64 = the paper)")
    p.add_argument("--matrix", type=int, default=256, help="in-plane matrix of the simulated exam (default 256)")
    p.add_argument("--repeats", type=int, default=repeats, help=f"timed runs (default {repeats})")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    add_device_argument(p, default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_json_argument(p)
    if grid:
        p.add_argument("--size", type=int, default=256, help="preprocessing in-plane size (default 256)")
        p.add_argument("--slices", type=int, default=16, help="preprocessing slices (default 16)")


# ------------------------------------------------------------------------------------------------------ backbone
def _run_backbone(args: argparse.Namespace) -> int:
    from ..bench.backbone import bench_backbone

    result = bench_backbone(size=args.size, slices=args.slices, batch=args.batch, repeats=args.repeats,
                            warmup=args.warmup, device=args.device, precision=args.precision, width=args.width,
                            taps=tuple(s.strip() for s in args.taps.split(",") if s.strip()), threads=args.threads)
    rows = result.pop("rows")
    print_results("Diffusion backbone: forward vs encode", rows, ["pass", "median_ms", "min_ms", "max_ms"],
                  result, args.json)
    return 0


def add_backbone(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "backbone", _run_backbone, help="full forward vs encode to the middle block",
                    description="Time the diffusion U-Net's full forward against encode() up to the middle "
                                "block (median after warm-up) and print the speed-up.")
    p.add_argument("--size", type=int, default=256, help="H = W of the input (default 256)")
    p.add_argument("--slices", type=int, default=16, help="D of the input (default 16)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per pass (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    add_device_argument(p, default="cpu")
    add_precision_argument(p)
    p.add_argument("--width", type=int, default=64, help="model_channels (default 64 = the paper)")
    p.add_argument("--taps", default="mid_0,mid_1,mid_2", help="comma-separated taps for encode")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_json_argument(p)


# ------------------------------------------------------------------------------------------------------- predict
_PREDICT_DOC = """    orthodiffusion bench predict --model BUNDLE [--exams 1 8] [--device cpu] [--repeats 3]
                                 [--matrix 128] [--study DIR] [--no-segmentation] [--json]

The exams are simulated procedural knee exams (``--matrix`` in-plane size) or copies of one ``--study``. For every
N in ``--exams`` the first N exams are predicted with :meth:`Predictor.predict_many` (``batch_size = N``, structure
measures included) after one untimed warm-up; the median over ``--repeats`` of (total time / N) is reported, with
the ratio of the per-exam time of the smallest N to that of the largest. The measurement is
:func:`OrthoDiffusionLib.bench.inference.bench_batch` with ``model=BUNDLE`` (``bench batch`` runs the same code on
the random-weight full-size layout)."""


def _run_predict(args: argparse.Namespace) -> int:
    from ..bench.inference import bench_batch

    start = time.perf_counter()
    result = bench_batch(args.exams, matrix=args.matrix, repeats=args.repeats, warmup=1, device=args.device,
                         threads=args.threads, model=args.model, study=args.study,
                         segmentation=not args.no_segmentation, measures=True)
    return _table("Batch prediction: seconds per exam (model loaded once)", result,
                  ["exams", "per_exam_s", "exams_per_s", "batch_s", "min_batch_s", "max_batch_s", "peak_rss_mib",
                   "peak_cuda_mib"], args, start)


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "predict", _run_predict, help="per-exam time of batch prediction with a bundle (N=1 vs N=8)",
                    description=_PREDICT_DOC, raw=True)
    p.add_argument("--model", required=True, help="model bundle file or registered name")
    p.add_argument("--exams", type=int, nargs="+", default=[1, 8], metavar="N", help="batch sizes (default 1 8)")
    add_device_argument(p, default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per N (default 3)")
    p.add_argument("--matrix", type=int, default=128, help="in-plane matrix of the simulated exams (default 128)")
    p.add_argument("--study", default=None, help="use copies of this study instead of simulated exams")
    p.add_argument("--no-segmentation", action="store_true", help="diagnosis only")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_json_argument(p)


# -------------------------------------------------------------------------------------------------- whole-series
def _run_whole_series(args: argparse.Namespace) -> int:
    from ..bench.whole_series import bench_whole_series

    start = time.perf_counter()
    result = bench_whole_series(args.series, args.model, repeats=args.repeats, device=args.device,
                                threads=args.threads, authors_layout=not args.no_authors_layout)
    return _table("Whole exam from one 3D series (+ reformats), whole-series segmentation: seconds", result,
                  ["run", "median_s", "min_s", "max_s", "stage_s"], args, start)


def add_whole_series(sub: argparse._SubParsersAction) -> None:
    from ..bench import whole_series

    p = add_command(sub, "whole-series", _run_whole_series,
                    help="a whole exam from one 3D series and its reformats, whole-series segmentation",
                    description=whole_series.__doc__, raw=True)
    p.add_argument("--series", required=True, help="a thin-slice 3D knee series (DICOM folder, NIfTI, ...)")
    p.add_argument("--model", default=None, help="model bundle file or registered name (default: the default model)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs (default 2)")
    p.add_argument("--no-authors-layout", action="store_true", help="skip the full-size authors' layout rows")
    add_device_argument(p, default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_json_argument(p)


# ------------------------------------------------------------------------------------------------------ simulate
def _run_simulate(args: argparse.Namespace) -> int:
    from ..bench.simulate import bench_simulate

    result = bench_simulate(exams=args.exams, seed=args.seed, matrix=args.matrix, anatomy=args.anatomy,
                            atlas_path=args.atlas_path, warmup=args.warmup, against=args.against)
    rows = result.pop("rows")
    print_results("Simulator: seconds per 3-plane exam (one core)", rows,
                  ["implementation", "median_cpu_s", "median_wall_s", "min_cpu_s", "max_cpu_s", "package"],
                  result, args.json)
    return 0


def add_simulate(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "simulate", _run_simulate, help="seconds per simulated exam on one core",
                    description="Time simulated 3-plane exams (orthodiffusion simulate exam without writing "
                                "files) on one core: median CPU and wall seconds per exam. With --against DIR, "
                                "the same exams are timed with the OrthoDiffusionLib in DIR and the ratio "
                                "(DIR / this) is printed.")
    p.add_argument("--exams", type=int, default=5, help="timed exams (default 5)")
    p.add_argument("--seed", type=int, default=0, help="first exam seed (default 0)")
    p.add_argument("--matrix", type=int, default=256, help="in-plane matrix (default 256)")
    p.add_argument("--anatomy", default="procedural", choices=["procedural", "atlas", "atlas_spl", "atlas_oai"])
    p.add_argument("--atlas-path", default=None)
    p.add_argument("--warmup", type=int, default=1, help="untimed exams first (default 1)")
    p.add_argument("--against", default=None, metavar="DIR",
                   help="another source tree (folder holding OrthoDiffusionLib/) to compare with")
    add_json_argument(p)


# ------------------------------------------------------------------------------------- inference, batch, scaling
def _run_inference(args: argparse.Namespace) -> int:
    from ..bench.inference import bench_inference

    start = time.perf_counter()
    result = bench_inference(args.width, args.size, args.slices, args.matrix, args.repeats, args.warmup,
                             args.device, [s.strip() for s in args.precisions.split(",") if s.strip()],
                             args.threads, args.channels_last, not args.no_reference)
    return _table("Inference per exam: ours vs the authors-style reference (same process)", result,
                  ["implementation", "backbone_passes", "median_s", "min_s", "max_s", "peak_rss_mib",
                   "rss_before_mib", "peak_cuda_mib", "stage_s"], args, start)


def _run_batch(args: argparse.Namespace) -> int:
    from ..bench.inference import bench_batch

    start = time.perf_counter()
    result = bench_batch(args.exams, args.width, args.size, args.slices, args.matrix, args.repeats, args.warmup,
                         args.device, args.precision, args.threads, args.channels_last)
    return _table("Batched inference (model loaded once, no structure measures)", result,
                  ["exams", "per_exam_s", "exams_per_s", "batch_s", "peak_rss_mib", "peak_cuda_mib"], args, start)


def _run_scaling(args: argparse.Namespace) -> int:
    from ..bench.inference import bench_scaling

    start = time.perf_counter()
    result = bench_scaling(args.sizes, args.slices, args.width, args.matrix, args.repeats, args.warmup, args.device,
                           args.precision, args.threads)
    return _table("Scaling of one exam with the preprocessing grid (ours, no structure measures)", result,
                  ["slices", "size", "median_s", "per_voxel_ratio", "peak_rss_mib", "rss_before_mib",
                   "peak_cuda_mib"], args, start)


def add_inference(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "inference", _run_inference, help="per-exam inference: ours vs the authors-style reference",
                    description="Full-exam inference (3-plane diagnosis with FT-Opt taps + sagittal/coronal "
                                "segmentation) of a random-weight full-size model: ours vs the authors-style "
                                "reference in the same process; median time, peak memory, ratio, agreement.")
    _common(p, 3)
    p.add_argument("--precisions", default="fp32", help="comma-separated ours precisions: fp32, bf16 (default fp32)")
    p.add_argument("--channels-last", action="store_true", help="ours with channels-last backbones")
    p.add_argument("--no-reference", action="store_true", help="skip the reference")


def add_batch(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "batch", _run_batch, help="exams per second for N exams per batch",
                    description="Per-exam time and exams/s of predict_many with N exams in one batch "
                                "(model loaded once). Default N: 1 4 16 on CUDA, 1 8 32 on the CPU.")
    _common(p, 2)
    p.add_argument("--exams", type=int, nargs="+", default=None, metavar="N", help="batch sizes")
    add_precision_argument(p)
    p.add_argument("--channels-last", action="store_true", help="channels-last backbones")


def add_scaling(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "scaling", _run_scaling, help="time and memory against the input size",
                    description="Per-exam time and peak memory of ours for each preprocessing grid "
                                "(--sizes x --slices).")
    _common(p, 1, grid=False)
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512], help="in-plane sizes")
    p.add_argument("--slices", type=int, nargs="+", default=[16, 32], help="slice counts")
    add_precision_argument(p)


# --------------------------------------------------------------------------------------------------------- train
def _run_train(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    result = train_bench.bench_train(tuple(k.strip() for k in args.steps_of.split(",") if k.strip()), args.width,
                                     args.size, args.slices, args.batch, args.steps, args.warmup, args.device,
                                     args.compile, args.threads, network=args.network,
                                     ours_precision=args.ours_precision)
    return _table("Training steps: fp32 eager reference vs ours", result,
                  ["step", "config", "median_step_s", "steps_per_s", "peak_cuda_mib", "peak_rss_mib",
                   "nonfinite_steps", "losses"], args, start)


def add_train(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "train", _run_train,
                    help="training step time: fp32 eager reference vs ours (bf16, channels-last)",
                    description=train_bench.__doc__.split("\n\n", 1)[1], raw=True)
    p.add_argument("--steps-of", default="pretrain,finetune", help="pretrain, finetune or both (default)")
    p.add_argument("--network", choices=("authors", "cpu"), default="authors",
                   help="authors: their layout at --width; cpu: the CPU-scale network (space-to-depth x4, width 16, "
                        "1,2,4,8; use --size 128 --batch 8)")
    p.add_argument("--ours-precision", choices=("bf16", "fp32"), default="bf16",
                   help="precision of the 'ours' configuration (fp32 on CPUs without native bfloat16, where bf16 "
                        "autocast is many times slower)")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--slices", type=int, default=16)
    p.add_argument("--batch", type=int, default=10, help="batch size (default 10, the paper's)")
    p.add_argument("--steps", type=int, default=6, help="steps per configuration, warm-up included (default 6)")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps (default 2)")
    add_device_argument(p, default="cpu")
    p.add_argument("--compile", action="store_true", help="ours with torch.compile")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_json_argument(p)


# --------------------------------------------------------------------------------------------------------- flops
def _run_flops(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    result = flops_bench.bench_flops(args.width, args.size, args.slices, args.train_batch, args.train_size,
                                     args.repeats, args.device, args.precision, args.threads, not args.no_exam,
                                     not args.no_train)
    return _table("FLOPs and achieved fraction of peak", result,
                  ["work", "gflop", "median_s", "achieved_tflops", "fraction_of_peak", "over_flop_bound"], args, start)


def add_flops(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "flops", _run_flops, help="FLOPs per encoder pass / exam / train step and fraction of peak",
                    description=flops_bench.__doc__.split("\n\n", 1)[1], raw=True)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--slices", type=int, default=16)
    p.add_argument("--train-batch", type=int, default=10, help="pretraining batch (default 10, the paper's)")
    p.add_argument("--train-size", type=int, default=None, help="in-plane size of the training step (default --size)")
    p.add_argument("--repeats", type=int, default=3)
    add_device_argument(p, default="cpu")
    add_precision_argument(p)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-exam", action="store_true", help="skip the full-exam row")
    p.add_argument("--no-train", action="store_true", help="skip the training-step row")
    add_json_argument(p)


#: The subjects, in the order of ``orthodiffusion bench --help``.
SUBJECTS: List[Callable[[argparse._SubParsersAction], None]] = [
    add_backbone, add_predict, add_whole_series, add_simulate, add_inference, add_batch, add_scaling, add_train,
    add_flops]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``orthodiffusion bench`` with one subcommand per subject."""
    p = subparsers.add_parser("bench", help="performance measurements",
                              description="Performance measurements; one subcommand per subject.")
    sub = p.add_subparsers(dest="subject", metavar="SUBJECT")
    for add in SUBJECTS:
        add(sub)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])
