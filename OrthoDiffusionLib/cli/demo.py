"""``orthodiffusion demo``: simulate a knee exam with a stated abnormality and run the built-in demo model on it.

    orthodiffusion demo [--out DIR] [--abnormality KEY] [--seed N] [--matrix N] [--model BUNDLE] [--device ...]
                        [--precision ...] [--progress ...]

Prints the result table and writes the result folder (default ``./orthodiffusion-demo``, which a later demo
replaces); the other options are those of ``orthodiffusion predict`` (:func:`.predict.add_run_arguments`).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import InputError, OrthoDiffusionError
from ..inference.result_folder import REPORT_FILE
from ..output_folder import claim_output_folder, sigterm_raises
from .predict import add_run_arguments, format_result_table, run_and_write
from .common import add_command

_DEMO_OUT = "orthodiffusion-demo"


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..inference.demo import DEFAULT_ABNORMALITY
    from ..simulate import LABEL_KEYS

    out = Path(args.out)
    abnormality = args.abnormality or DEFAULT_ABNORMALITY
    if abnormality != "none" and abnormality not in LABEL_KEYS:
        raise InputError(f"unknown abnormality {abnormality!r}; choose one of none, {', '.join(LABEL_KEYS)}")
    # the default folder is replaced by a new demo run, but only when it holds nothing but an earlier result
    args.overwrite = args.overwrite or args.out == _DEMO_OUT
    with sigterm_raises(), claim_output_folder(out, overwrite=args.overwrite, inputs=(args.model,)) as claim:
        return _run_demo(args, out, abnormality, claim)


def _run_demo(args: argparse.Namespace, out: Path, abnormality: str, claim) -> int:
    from ..inference.demo import exam_from_simulation
    from ..inference.predictor import Predictor
    from ..simulate import simulate_exam

    start = time.perf_counter()
    try:
        predictor = Predictor(args.model, device=args.device, seed=args.seed, precision=args.precision)
    except OrthoDiffusionError as e:
        if args.model is not None:
            raise
        raise type(e)(f"the demo needs the shipped demo model, which is not available here ({e.problem}); "
                      "pass --model BUNDLE to use another model", e.path) from None
    print(f"model: {predictor.bundle.name} ({predictor.bundle.sha256[:12]}, loaded in {predictor.load_seconds:.1f} s, "
          f"device {predictor.device})")
    t = time.perf_counter()
    truth = {} if abnormality == "none" else {abnormality: True}
    sim = simulate_exam(args.seed, truth, anatomy="procedural", matrix=args.matrix)
    exam = exam_from_simulation(sim)
    print(f"simulated a procedural knee exam (seed {args.seed}, abnormality: {abnormality}) in "
          f"{time.perf_counter() - t:.1f} s")
    data = run_and_write(predictor, exam, args, claim=claim)
    print(format_result_table(data))
    print(f"total {time.perf_counter() - start:.1f} s; outputs in {out}")
    print(f"report: {(out / REPORT_FILE).resolve()}")
    return 0


def register(subparsers) -> None:
    """Add ``orthodiffusion demo``."""
    d = add_command(subparsers, "demo", _cmd_demo, help="simulate a knee exam and run the built-in demo model on it",
                    description=__doc__, raw=True)
    d.add_argument("--out", default=_DEMO_OUT, help=f"output folder (default ./{_DEMO_OUT})")
    d.add_argument("--abnormality", default=None,
                   help="abnormality to simulate (default joint_effusion; 'none' for a normal knee)")
    d.add_argument("--seed", type=int, default=1, help="simulation and noise seed (default 1)")
    d.add_argument("--matrix", type=int, default=128,
                   help="in-plane matrix of the simulated series (default 128, as the demo model's training cohort)")
    add_run_arguments(d)
