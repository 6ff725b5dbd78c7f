"""``orthodiffusion bench SUBJECT``: performance measurements (never part of the test suite).

Each subject is one subparser registered by a function in :data:`SUBJECT_REGISTRARS` (``registrar(subparsers)`` adds
a parser with ``set_defaults(func=...)``); to add a subject, write its registrar and run function and append the
registrar. Subjects share :func:`time_callable` (warm-up, then ``repeats`` timed calls; median reported) and
:func:`print_results` (a Markdown table, or JSON with ``--json``).

Subjects:
    backbone   full forward of the diffusion U-Net vs ``encode`` up to the middle block (feature extraction).
    predict    per-exam time of batch prediction with the model loaded once (N=1 vs N=8; predict_bench.py).
    simulate   seconds per simulated 3-plane exam on one core; with ``--against DIR`` also the ratio against another
               source tree (e.g. the previous implementation: ``git worktree add /tmp/ref <rev>``).
    inference  full-exam inference, ours vs the authors-style reference in the same process (inference_bench.py).
    batch      per-exam time / exams per second for N exams per batch (inference_bench.py).
    scaling    per-exam time and peak memory against the preprocessing grid (inference_bench.py).
    train      pretraining and fine-tuning step time / memory, fp32 eager reference vs ours (training/train_bench.py).
    flops      FLOPs of an encoder pass and a training step, achieved rate vs the device's peak (flops_bench.py).

GPU rows of all of them: ``benchmarks/gpu_session.sh OUT_DIR`` (one call on a machine with CUDA).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

__all__ = ["SUBJECT_REGISTRARS", "time_callable", "print_results", "bench_backbone", "bench_simulate", "register"]


def device_sync(device) -> Callable[[], None]:
    """A function that waits for the work queued on ``device`` (a ``torch.device``): ``torch.cuda.synchronize``
    on CUDA, nothing elsewhere. Every bench reads its clock after calling it."""
    if device.type != "cuda":
        return lambda: None
    import torch

    return lambda: torch.cuda.synchronize(device)


def time_callable(fn: Callable[[], object], repeats: int = 5, warmup: int = 1,
                  sync: Optional[Callable[[], None]] = None) -> Dict[str, float]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed. Returns seconds: median, min, max, mean.

    ``sync`` (e.g. :func:`device_sync`) is called before each clock read so asynchronous devices are timed
    fully."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times: List[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "mean_s": statistics.fmean(times), "repeats": repeats}


def print_results(title: str, rows: Sequence[Dict[str, object]], columns: Sequence[str],
                  extra: Dict[str, object], as_json: bool) -> None:
    """Print ``rows`` as a Markdown table under ``title`` followed by ``extra`` facts, or everything as JSON."""
    if as_json:
        print(json.dumps({"title": title, "rows": list(rows), **extra}, indent=2, default=str))
        return
    print(f"### {title}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    print()
    for key, value in extra.items():
        print(f"- {key}: {_fmt(value)}")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# -------------------------------------------------------------------------------------------------- backbone
def bench_backbone(size: int = 256, slices: int = 16, batch: int = 1, repeats: int = 5, warmup: int = 1,
                   device: str = "cpu", precision: str = "fp32", width: int = 64,
                   taps: Sequence[str] = ("mid_0", "mid_1", "mid_2"), threads: Optional[int] = None) -> Dict:
    """Time ``model(x_t, t)`` against ``model.encode(x_t, t, taps)`` on a (batch, 1, slices, size, size) input.

    Returns {"rows": [...], "ratio": forward median / encode median, "device": ..., "params": ..., "tap_shapes": ...}.
    """
    import torch

    from ..model.backbone import DiffusionUNet

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from ..errors import OrthoDiffusionError

        raise OrthoDiffusionError("--device cuda asked for, but no CUDA device is available")
    model = DiffusionUNet(model_channels=width).to(dev).eval()
    x = torch.randn(batch, 1, slices, size, size, device=dev)
    t = torch.full((batch,), 150, device=dev, dtype=torch.long)
    sync = device_sync(dev)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def forward() -> object:
        with torch.no_grad(), autocast:
            return model(x, t)

    def encode() -> object:
        with torch.no_grad(), autocast:
            return model.encode(x, t, taps)

    with torch.no_grad(), autocast:
        tap_shapes = {k: list(v.shape) for k, v in model.encode(x, t, taps).items()}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    f = time_callable(forward, repeats, warmup, sync)
    e = time_callable(encode, repeats, warmup, sync)
    rows = [
        {"pass": "forward (full U-Net)", "median_ms": f["median_s"] * 1e3, "min_ms": f["min_s"] * 1e3,
         "max_ms": f["max_s"] * 1e3},
        {"pass": f"encode ({', '.join(taps)})", "median_ms": e["median_s"] * 1e3, "min_ms": e["min_s"] * 1e3,
         "max_ms": e["max_s"] * 1e3},
    ]
    result = {
        "rows": rows,
        "ratio_forward_over_encode": f["median_s"] / e["median_s"],
        "input": [batch, 1, slices, size, size],
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "precision": precision,
        "params": sum(p.numel() for p in model.parameters()),
        "tap_shapes": tap_shapes,
        "repeats": repeats,
        "warmup": warmup,
        "torch": torch.__version__,
    }
    if dev.type == "cuda":
        result["peak_memory_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return result


def _register_backbone(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backbone", help="full forward vs encode to the middle block",
                       description="Time the diffusion U-Net's full forward against encode() up to the middle "
                                   "block (median after warm-up) and print the speed-up.")
    p.add_argument("--size", type=int, default=256, help="H = W of the input (default 256)")
    p.add_argument("--slices", type=int, default=16, help="D of the input (default 16)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per pass (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--width", type=int, default=64, help="model_channels (default 64 = the paper)")
    p.add_argument("--taps", default="mid_0,mid_1,mid_2", help="comma-separated taps for encode")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    p.set_defaults(func=_run_backbone)


def _run_backbone(args: argparse.Namespace) -> int:
    result = bench_backbone(size=args.size, slices=args.slices, batch=args.batch, repeats=args.repeats,
                            warmup=args.warmup, device=args.device, precision=args.precision, width=args.width,
                            taps=tuple(s.strip() for s in args.taps.split(",") if s.strip()), threads=args.threads)
    rows = result.pop("rows")
    print_results("Diffusion backbone: forward vs encode", rows, ["pass", "median_ms", "min_ms", "max_ms"],
                  result, args.json)
    return 0


# -------------------------------------------------------------------------------------------------- simulate
# Runs in a fresh interpreter pinned to one CPU with single-threaded math libraries; only uses simulate_exam's
# long-standing arguments, so it also times older source trees. Prints one JSON line.
_SIMULATE_TIMER = r"""
import json, os, sys, time
cfg = json.loads(sys.argv[1])
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from OrthoDiffusionLib.simulate.cohort import simulate_exam
import OrthoDiffusionLib
def one(seed, labels):
    simulate_exam(seed, labels, anatomy=cfg["anatomy"], matrix=cfg["matrix"], atlas_path=cfg["atlas_path"])
for seed, labels in cfg["warmup"]:
    one(seed, labels)
wall, cpu = [], []
for seed, labels in cfg["exams"]:
    w, c = time.perf_counter(), time.process_time()
    one(seed, labels)
    wall.append(time.perf_counter() - w)
    cpu.append(time.process_time() - c)
print(json.dumps({"wall_s": wall, "cpu_s": cpu, "package": os.path.dirname(OrthoDiffusionLib.__file__)}))
"""
_ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")}


def _time_simulate_tree(tree: Optional[Path], cfg: Dict[str, object]) -> Dict[str, object]:
    """Run :data:`_SIMULATE_TIMER` with ``tree`` (a folder holding ``OrthoDiffusionLib/``) first on the path, or the
    installed package when None."""
    from ..errors import OrthoDiffusionError

    env = {**os.environ, **_ONE_THREAD}
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-c", _SIMULATE_TIMER, json.dumps(cfg)], env=env, capture_output=True,
                          text=True, cwd=str(tree) if tree is not None else None)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise OrthoDiffusionError(f"the simulate timer failed: {tail[0]}", tree)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_simulate(exams: int = 5, seed: int = 0, matrix: int = 256, anatomy: str = "procedural",
                   atlas_path: Optional[str] = None, warmup: int = 1, against: Optional[str] = None) -> Dict:
    """Seconds per simulated exam (3 planes) on one core, for this package and optionally another source tree.

    Exams use seeds ``seed .. seed + exams - 1`` with labels drawn at the default prevalences (as in a cohort);
    ``warmup`` untimed exams (other seeds) come first. Each implementation runs in its own interpreter pinned to one
    CPU with single-threaded math libraries. Wall time suffers from other processes on a shared machine; CPU time
    (``process_time``) much less, so both are reported.

    Returns {"rows": [...], "ratio_cpu"/"ratio_wall": against median / this median (when ``against``), ...}.
    """
    import numpy as np

    from ..errors import MissingPathError
    from ..simulate.cohort import sample_labels

    if exams < 1:
        raise ValueError(f"exams must be >= 1, got {exams}")
    tree = None
    if against is not None:
        tree = Path(against).resolve()
        if not (tree / "OrthoDiffusionLib" / "simulate" / "cohort.py").is_file():
            raise MissingPathError("not a source tree with OrthoDiffusionLib/simulate/cohort.py", tree)
    labels = sample_labels(exams + warmup, np.random.default_rng(np.random.SeedSequence([int(seed), 2718])))
    cfg = {"anatomy": anatomy, "matrix": int(matrix), "atlas_path": atlas_path,
           "exams": [[seed + i, labels[i]] for i in range(exams)],
           "warmup": [[seed + exams + i, labels[exams + i]] for i in range(warmup)]}
    runs = {"this": _time_simulate_tree(None, cfg)}
    if tree is not None:
        runs["against"] = _time_simulate_tree(tree, cfg)
    rows = []
    for name, r in runs.items():
        rows.append({"implementation": name, "package": r["package"],
                     "median_cpu_s": statistics.median(r["cpu_s"]), "median_wall_s": statistics.median(r["wall_s"]),
                     "min_cpu_s": min(r["cpu_s"]), "max_cpu_s": max(r["cpu_s"])})
    result: Dict[str, object] = {"rows": rows, "exams": exams, "warmup": warmup, "matrix": matrix,
                                 "anatomy": anatomy, "seeds": f"{seed}..{seed + exams - 1}"}
    if tree is not None:
        result["ratio_cpu"] = rows[1]["median_cpu_s"] / rows[0]["median_cpu_s"]
        result["ratio_wall"] = rows[1]["median_wall_s"] / rows[0]["median_wall_s"]
    return result


def _register_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="seconds per simulated exam on one core",
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
    p.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    p.set_defaults(func=_run_simulate)


def _run_simulate(args: argparse.Namespace) -> int:
    result = bench_simulate(exams=args.exams, seed=args.seed, matrix=args.matrix, anatomy=args.anatomy,
                            atlas_path=args.atlas_path, warmup=args.warmup, against=args.against)
    rows = result.pop("rows")
    print_results("Simulator: seconds per 3-plane exam (one core)", rows,
                  ["implementation", "median_cpu_s", "median_wall_s", "min_cpu_s", "max_cpu_s", "package"],
                  result, args.json)
    return 0


# name -> registrar; append new subjects here
from .flops import register_flops_bench  # noqa: E402  (these import torch lazily)
from .inference import register_inference_benches  # noqa: E402
from ..cli.bench import register_predict_bench  # noqa: E402


def _register_train(sub: argparse._SubParsersAction) -> None:
    from .train import register_train_bench  # the training package is installed with the library

    register_train_bench(sub)


SUBJECT_REGISTRARS: List[Callable[[argparse._SubParsersAction], None]] = [
    _register_backbone, register_predict_bench, _register_simulate, register_inference_benches, _register_train,
    register_flops_bench]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` with one subparser per subject."""
    p = subparsers.add_parser("bench", help="performance measurements",
                              description="Performance measurements; one subcommand per subject.")
    sub = p.add_subparsers(dest="subject", metavar="SUBJECT")
    for registrar in SUBJECT_REGISTRARS:
        registrar(sub)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])
