"""Timing helpers shared by the benchmark subjects (``orthodiffusion bench``: :mod:`OrthoDiffusionLib.cli.bench`).

:func:`time_callable` runs a piece of work after a warm-up and returns the median (and spread) of ``repeats`` timed
calls; :func:`device_sync` makes the clock wait for an asynchronous device; :func:`print_results` prints a result as
a Markdown table (or JSON). The benchmarks never run in the test suite.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

from ..device import resolve_device

__all__ = ["device_sync", "time_callable", "print_results", "cpu_name", "device_facts", "setup_device"]


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


def cpu_name() -> str:
    """The CPU model name (``lscpu``'s ``Model name``, from /proc/cpuinfo) and the usable core count."""
    name = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name} ({cores} cores)"


def device_facts(device) -> Dict[str, object]:
    """What a benchmark result records about where it ran: torch version, device name (and CPU threads)."""
    import torch

    facts: Dict[str, object] = {"torch": torch.__version__}
    if device.type == "cuda":
        facts["device"] = torch.cuda.get_device_name(device)
    else:
        facts["device"] = cpu_name()
        facts["threads"] = torch.get_num_threads()
    return facts


def setup_device(threads: Optional[int], device: str):
    """Set the torch CPU threads (when given) and return the resolved ``torch.device``."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    return resolve_device(device)
