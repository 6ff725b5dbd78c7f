"""``orthodiffusion bench SUBJECT``: performance measurements (never part of the test suite).

Each subject is one subparser registered by a function in :data:`SUBJECT_REGISTRARS` (``registrar(subparsers)`` adds
a parser with ``set_defaults(func=...)``); to add a subject, write its registrar and run function and append the
registrar. Subjects share :func:`time_callable` (warm-up, then ``repeats`` timed calls; median reported) and
:func:`print_results` (a Markdown table, or JSON with ``--json``).

Subjects:
    backbone   full forward of the diffusion U-Net vs ``encode`` up to the middle block (feature extraction).
    predict    per-exam time of batch prediction with the model loaded once (N=1 vs N=8; predict_bench.py).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

__all__ = ["SUBJECT_REGISTRARS", "time_callable", "print_results", "bench_backbone", "register"]


def time_callable(fn: Callable[[], object], repeats: int = 5, warmup: int = 1,
                  sync: Optional[Callable[[], None]] = None) -> Dict[str, float]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed. Returns seconds: median, min, max, mean.

    ``sync`` (e.g. ``torch.cuda.synchronize``) is called before each clock read so asynchronous devices are timed
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

    from .backbone import DiffusionUNet

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from .errors import OrthoDiffusionError

        raise OrthoDiffusionError("--device cuda asked for, but no CUDA device is available")
    model = DiffusionUNet(model_channels=width).to(dev).eval()
    x = torch.randn(batch, 1, slices, size, size, device=dev)
    t = torch.full((batch,), 150, device=dev, dtype=torch.long)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
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


# name -> registrar; append new subjects here (issue 10: inference, training)
from .predict_bench import register_predict_bench  # noqa: E402  (cheap: imports torch lazily)

SUBJECT_REGISTRARS: List[Callable[[argparse._SubParsersAction], None]] = [_register_backbone, register_predict_bench]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` with one subparser per subject."""
    p = subparsers.add_parser("bench", help="performance measurements",
                              description="Performance measurements; one subcommand per subject.")
    sub = p.add_subparsers(dest="subject", metavar="SUBJECT")
    for registrar in SUBJECT_REGISTRARS:
        registrar(sub)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])
