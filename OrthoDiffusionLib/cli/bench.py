"""``orthodiffusion bench predict``: time per exam of batch prediction with a real model bundle loaded once.

    orthodiffusion bench predict --model BUNDLE [--exams 1 8] [--device cpu] [--repeats 3] [--matrix 128]
                                 [--study DIR] [--no-segmentation] [--json]

The exams are simulated procedural knee exams (``--matrix`` in-plane size) or copies of one ``--study``. For every
N in ``--exams`` the first N exams are predicted with :meth:`Predictor.predict_many` (``batch_size = N``, structure
measures included) after one untimed warm-up; the median over ``--repeats`` of (total time / N) is reported, with
the ratio of the per-exam time of the smallest N to that of the largest. The measurement is
:func:`OrthoDiffusionLib.inference_bench.bench_batch` with ``model=BUNDLE`` (``bench batch`` runs the same code on
the random-weight full-size layout).
"""
from __future__ import annotations

import argparse
import time

__all__ = ["register_predict_bench"]


def _run(args: argparse.Namespace) -> int:
    from ..bench.inference import _print, bench_batch

    start = time.perf_counter()
    result = bench_batch(args.exams, matrix=args.matrix, repeats=args.repeats, warmup=1, device=args.device,
                         threads=args.threads, model=args.model, study=args.study,
                         segmentation=not args.no_segmentation, measures=True)
    return _print("Batch prediction: seconds per exam (model loaded once)", result,
                  ["exams", "per_exam_s", "exams_per_s", "batch_s", "min_batch_s", "max_batch_s", "peak_rss_mib",
                   "peak_cuda_mib"], args.json, start)


def register_predict_bench(sub: argparse._SubParsersAction) -> None:
    """The ``predict`` bench subject (appended to :data:`OrthoDiffusionLib.bench.SUBJECT_REGISTRARS`)."""
    p = sub.add_parser("predict", help="per-exam time of batch prediction with a bundle (N=1 vs N=8)",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model bundle file or registered name")
    p.add_argument("--exams", type=int, nargs="+", default=[1, 8], metavar="N", help="batch sizes (default 1 8)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per N (default 3)")
    p.add_argument("--matrix", type=int, default=128, help="in-plane matrix of the simulated exams (default 128)")
    p.add_argument("--study", default=None, help="use copies of this study instead of simulated exams")
    p.add_argument("--no-segmentation", action="store_true", help="diagnosis only")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    p.set_defaults(func=_run)
