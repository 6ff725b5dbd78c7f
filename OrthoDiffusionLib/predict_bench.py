"""``orthodiffusion bench predict``: time per exam of batch prediction with a model loaded once.

    orthodiffusion bench predict --model BUNDLE [--exams 1 8] [--device cpu] [--repeats 3] [--matrix 128]
                                 [--study DIR] [--no-segmentation] [--json]

The exams are simulated procedural knee exams (distinct seeds; ``--matrix`` in-plane size) or copies of one
``--study``. For every N in ``--exams`` the first N exams are predicted with :meth:`Predictor.predict_many`
(``batch_size = N``) after one untimed warm-up; the median over ``--repeats`` of (total time / N) is reported, with
the ratio of the per-exam time of the smallest N to that of the largest.
"""
from __future__ import annotations

import argparse
import time
from typing import Dict, List, Optional, Sequence

__all__ = ["bench_predict", "register_predict_bench"]


def _exams(n: int, matrix: int, study: Optional[str]) -> List[object]:
    if study is not None:
        from .io import load_study

        exam = load_study(study)
        return [exam] * n
    from .demo import exam_from_simulation
    from .simulate import simulate_exam

    return [exam_from_simulation(simulate_exam(seed, matrix=matrix)) for seed in range(n)]


def bench_predict(model: str, counts: Sequence[int] = (1, 8), device: str = "cpu", repeats: int = 3,
                  matrix: int = 128, study: Optional[str] = None, segmentation: bool = True,
                  threads: Optional[int] = None) -> Dict[str, object]:
    """Per-exam seconds of ``predict_many`` for each N in ``counts`` (model loaded once). Returns rows and the
    ratio (per-exam time at min N) / (per-exam time at max N)."""
    import torch

    from .bench import time_callable
    from .predictor import Predictor

    if threads:
        torch.set_num_threads(threads)
    counts = sorted({int(c) for c in counts})
    if counts[0] < 1:
        raise ValueError("--exams must be >= 1")
    predictor = Predictor(model, device=device)
    exams = _exams(counts[-1], matrix, study)
    sync = torch.cuda.synchronize if predictor.device.type == "cuda" else None
    rows = []
    for n in counts:
        def run(n=n) -> object:
            return predictor.predict_many(exams[:n], segmentation=segmentation, batch_size=n)

        t = time_callable(run, repeats=repeats, warmup=1, sync=sync)
        rows.append({"exams": n, "per_exam_s": t["median_s"] / n, "batch_s": t["median_s"],
                     "min_batch_s": t["min_s"], "max_batch_s": t["max_s"]})
    first, last = rows[0]["per_exam_s"], rows[-1]["per_exam_s"]
    return {"rows": rows, f"ratio_per_exam_N{counts[0]}_over_N{counts[-1]}": first / last,
            "model": predictor.bundle.name, "model_sha256": predictor.bundle.sha256,
            "load_model_s": predictor.load_seconds, "device": str(predictor.device),
            "threads": torch.get_num_threads(), "segmentation": segmentation,
            "exams_source": study or f"simulated procedural, matrix {matrix}", "repeats": repeats,
            "torch": torch.__version__}


def _run(args: argparse.Namespace) -> int:
    from .bench import print_results

    start = time.perf_counter()
    result = bench_predict(args.model, args.exams, args.device, args.repeats, args.matrix, args.study,
                           not args.no_segmentation, args.threads)
    result["wall_s"] = time.perf_counter() - start
    rows = result.pop("rows")
    print_results("Batch prediction: seconds per exam (model loaded once)", rows,
                  ["exams", "per_exam_s", "batch_s", "min_batch_s", "max_batch_s"], result, args.json)
    return 0


def register_predict_bench(sub: argparse._SubParsersAction) -> None:
    """The ``predict`` bench subject (appended to :data:`OrthoDiffusionLib.bench.SUBJECT_REGISTRARS`)."""
    p = sub.add_parser("predict", help="per-exam time of batch prediction (N=1 vs N=8)",
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
