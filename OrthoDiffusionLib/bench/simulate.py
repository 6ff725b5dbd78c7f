"""``orthodiffusion bench simulate``: seconds per simulated 3-plane exam on one core, for this package and optionally
another source tree (e.g. the previous implementation: ``git worktree add /tmp/ref <rev>``)."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

__all__ = ["bench_simulate"]

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
