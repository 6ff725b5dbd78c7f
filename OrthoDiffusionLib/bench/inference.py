"""``orthodiffusion bench inference | batch | scaling``: inference speed and memory of a full exam.

All three use a random-weight FT-Opt-shaped model built in memory (:func:`bench_model.synthetic_bundle`; width 64,
16 x 256 x 256 = the paper's network and input by default) and simulated procedural exams (copies of one: the
networks do the same work on a copy). An exam = diagnosis on three planes (FT-Opt taps) + segmentation of the
sagittal and coronal planes, resampled back onto the original series geometry.

* ``inference``: ours (:class:`~OrthoDiffusionLib.predictor.Predictor`, one encoder pass per (plane, timestep)
  serving every head, in each ``--precisions``) against the authors-style reference
  (:func:`reference_inference.reference_predict`: fp32, one full U-Net call per (plane, block), no reuse) IN THE SAME
  PROCESS, one exam at a time: median seconds after warm-up, peak RSS (and peak CUDA memory), the ratio
  ours/reference, and the agreement of the two (max |probability difference|, fraction of equal label-map voxels).
  Structure measures (volumes, cartilage thickness) depend on the label maps: on a random-weight model they are
  pathological, so both sides run without them and one row times them on the simulated ground-truth label maps
  (what a trained model gives); ``full_exam_s`` = ours + that row.
* ``batch``: per-exam time and exams/s of ``predict_many`` for N exams in one batch (model loaded once).
* ``scaling``: per-exam time and peak memory of ours against the preprocessing grid (in-plane size x slices).

Peak memory: :class:`~OrthoDiffusionLib.peak_memory.PeakMemory` (RSS high-water mark of the process, reset per row;
it includes the weights resident at the time, reported as ``rss_before_mib``).
"""
from __future__ import annotations

import argparse
import platform
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

__all__ = ["bench_inference", "bench_batch", "bench_scaling", "cpu_name", "register_inference_benches"]

_REFERENCE = "reference (authors-style fp32, full U-Net per (plane, block), no reuse)"


def cpu_name() -> str:
    """The CPU model name (``lscpu``'s ``Model name``, from /proc/cpuinfo) and the usable core count."""
    import os

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


def _device_facts(device) -> Dict[str, object]:
    import torch

    facts: Dict[str, object] = {"torch": torch.__version__}
    if device.type == "cuda":
        facts["device"] = torch.cuda.get_device_name(device)
    else:
        facts["device"] = cpu_name()
        facts["threads"] = torch.get_num_threads()
    return facts


def _measure(fn: Callable[[], object], repeats: int, warmup: int, device) -> Dict[str, object]:
    """Median/min seconds of ``fn`` (after ``warmup`` runs) and the peak memory over all runs."""
    from .timing import device_sync, time_callable
    from .peak_memory import PeakMemory, current_rss_mib

    sync = device_sync(device)
    before = current_rss_mib()
    with PeakMemory(device) as pm:
        t = time_callable(fn, repeats=repeats, warmup=warmup, sync=sync)
    row: Dict[str, object] = {"median_s": t["median_s"], "min_s": t["min_s"], "max_s": t["max_s"],
                              "rss_before_mib": before, "peak_rss_mib": pm.rss_mib}
    if pm.cuda_mib is not None:
        row["peak_cuda_mib"] = pm.cuda_mib
    return row


def _setup(threads: Optional[int], device: str):
    import torch

    from ..inference.predictor import resolve_device

    if threads:
        torch.set_num_threads(int(threads))
    return resolve_device(device)


# ------------------------------------------------------------------------------------------------- inference
def bench_inference(width: int = 64, size: int = 256, slices: int = 16, matrix: int = 256, repeats: int = 3,
                    warmup: int = 1, device: str = "cpu", precisions: Sequence[str] = ("fp32",),
                    threads: Optional[int] = None, channels_last: bool = False,
                    reference: bool = True) -> Dict[str, object]:
    """Ours vs the authors-style reference on one exam, in this process (see the module docstring).

    Returns {"rows": [...], "agreement": {...}, "ratio_<precision>_over_reference": ..., "full_exam_s": ..., ...}.
    """
    import torch

    from ..model.backbone import DiffusionUNet
    from .model import simulated_exams, synthetic_bundle
    from ..inference.predictor import Predictor
    from .reference_inference import labelmap_agreement, reference_predict

    dev = _setup(threads, device)
    exam = simulated_exams(1, matrix=matrix)[0]
    rows: List[Dict[str, object]] = []
    ours_out: Dict[str, object] = {}
    for precision in precisions:
        predictor = Predictor(synthetic_bundle(width, size, slices, full_backbones=False), device=str(dev),
                              precision=precision, channels_last=channels_last)

        last: Dict[str, object] = {}

        def ours(p=predictor, last=last) -> object:
            last["result"] = p.predict(exam, measures=False)
            return last["result"]

        row = {"implementation": f"ours ({precision}{', channels-last' if channels_last else ''})",
               "backbone_passes": len(predictor._passes(*predictor._plan(exam, True, True, False)[:2])),
               **_measure(ours, repeats, warmup, dev)}
        result = last["result"]
        row["stage_s"] = {k: round(v, 3) for k, v in result.timings.items() if k not in ("load_model", "total")}
        rows.append(row)
        ours_out[precision] = result
        del predictor
    out: Dict[str, object] = {"rows": rows}
    if reference:
        predictor = Predictor(synthetic_bundle(width, size, slices, full_backbones=True), device=str(dev))
        full = {key: net for key, net in predictor.backbones.items()}

        last_ref: Dict[str, object] = {}

        def ref() -> object:
            last_ref["out"] = reference_predict(predictor, full, exam, measures=False)
            return last_ref["out"]

        n_ref = len(predictor.diag_meta["planes"]) + len(predictor.seg_meta)
        rows.insert(0, {"implementation": _REFERENCE, "backbone_passes": f"{n_ref} (full U-Net)",
                        **_measure(ref, repeats, warmup, dev)})
        ref_out = last_ref["out"]
        agreement = {}
        for precision, res in ours_out.items():
            probs = np.array([lb["calibrated_probability"] for lb in res.labels])
            agreement[precision] = {
                "max_abs_probability_difference": float(np.abs(probs - ref_out["probabilities"]).max()),
                "labelmap_agreement": {p: labelmap_agreement(res.segmentations[p], ref_out["segmentations"][p])
                                       for p in ref_out["segmentations"]}}
            out[f"ratio_{precision}_over_reference"] = (next(r for r in rows if r["implementation"].startswith(
                f"ours ({precision}"))["median_s"] / rows[0]["median_s"])
        out["agreement"] = agreement
    # structure measures on the simulated ground truth (what a trained model gives)
    from ..segmentation.measures import measure_structures
    from ..simulate import simulate_exam

    truth = {s.plane: s.labelmap for s in simulate_exam(0, matrix=matrix).series if s.plane in ("sagittal", "coronal")}

    def measures() -> object:
        return [measure_structures(img, plane=p) for p, img in truth.items()]

    mrow = {"implementation": "structure measures on the simulated ground-truth label maps (sagittal + coronal)",
            **_measure(measures, max(1, repeats), 0, torch.device("cpu"))}
    rows.append(mrow)
    first = next(r for r in rows if str(r["implementation"]).startswith("ours"))
    out["full_exam_s"] = first["median_s"] + mrow["median_s"]
    out.update({"input": [1, 1, slices, size, size], "width": width, "exam_matrix": matrix,
                "params_per_backbone": sum(p.numel() for p in DiffusionUNet(model_channels=width).parameters()),
                "repeats": repeats, "warmup": warmup, **_device_facts(dev)})
    return out


# ----------------------------------------------------------------------------------------------------- batch
def bench_batch(counts: Optional[Sequence[int]] = None, width: int = 64, size: int = 256, slices: int = 16,
                matrix: int = 256, repeats: int = 2, warmup: int = 1, device: str = "cpu", precision: str = "fp32",
                threads: Optional[int] = None, channels_last: bool = False, model: Optional[str] = None,
                study: Optional[str] = None, segmentation: bool = True, measures: bool = False) -> Dict[str, object]:
    """Per-exam seconds and exams/s of ``predict_many`` with N exams in one batch, model loaded once. Default N:
    1, 4, 16 on CUDA; 1, 8, 32 on the CPU.

    ``model``: a bundle file or registered name (``bench predict``); None = the random-weight full-size FT-Opt
    layout of :func:`bench_model.synthetic_bundle` (``width``/``size``/``slices``). ``study``: copies of this study
    instead of simulated exams of in-plane ``matrix``. ``segmentation=False``: diagnosis only. ``measures``: also
    the structure measures (off by default: a random network's speckled label maps make them pathological).
    """
    from .model import simulated_exams, synthetic_bundle
    from ..inference.predictor import Predictor

    dev = _setup(threads, device)
    if counts is None:
        counts = (1, 4, 16) if dev.type == "cuda" else (1, 8, 32)
    counts = sorted({int(c) for c in counts})
    if counts[0] < 1:
        raise ValueError(f"batch sizes must be >= 1, got {counts}")
    bundle = model if model is not None else synthetic_bundle(width, size, slices, full_backbones=False)
    predictor = Predictor(bundle, device=str(dev), precision=precision, channels_last=channels_last)
    if study is not None:
        from ..io import load_study

        exams = [load_study(study)] * counts[-1]
    else:
        exams = simulated_exams(counts[-1], matrix=matrix)
    rows = []
    for n in counts:
        def run(n=n) -> object:
            return predictor.predict_many(exams[:n], batch_size=n, measures=measures,
                                         segmentation=segmentation)

        m = _measure(run, repeats, warmup, dev)
        rows.append({"exams": n, "per_exam_s": m["median_s"] / n, "exams_per_s": n / m["median_s"],
                     "batch_s": m["median_s"], "min_batch_s": m["min_s"], "max_batch_s": m["max_s"],
                     "peak_rss_mib": m["peak_rss_mib"],
                     **({"peak_cuda_mib": m["peak_cuda_mib"]} if "peak_cuda_mib" in m else {})})
    facts: Dict[str, object] = {"model": predictor.bundle.name, "load_model_s": predictor.load_seconds,
                                "exams_source": study or f"simulated procedural, matrix {matrix}",
                                "segmentation": segmentation, "measures": measures}
    if model is not None:
        facts["model_sha256"] = predictor.bundle.sha256
    else:
        facts.update({"input": [1, 1, slices, size, size], "width": width})
    return {"rows": rows, f"ratio_per_exam_N{counts[0]}_over_N{counts[-1]}": rows[0]["per_exam_s"] /
            rows[-1]["per_exam_s"], "precision": precision, "channels_last": channels_last,
            "repeats": repeats, "warmup": warmup, **facts, **_device_facts(dev)}


# --------------------------------------------------------------------------------------------------- scaling
def bench_scaling(sizes: Sequence[int] = (128, 256, 512), slices: Sequence[int] = (16, 32), width: int = 64,
                  matrix: int = 256, repeats: int = 1, warmup: int = 1, device: str = "cpu",
                  precision: str = "fp32", threads: Optional[int] = None) -> Dict[str, object]:
    """Per-exam seconds and peak memory of ours (one exam, no structure measures) for every preprocessing grid
    ``slices x size x size``; ``per_voxel_ratio`` = time relative to the first grid per voxel (1 = linear)."""
    from .model import simulated_exams, synthetic_bundle
    from ..inference.predictor import Predictor

    dev = _setup(threads, device)
    exam = simulated_exams(1, matrix=matrix)[0]
    rows: List[Dict[str, object]] = []
    for d in slices:
        for s in sizes:
            predictor = Predictor(synthetic_bundle(width, int(s), int(d), full_backbones=False), device=str(dev),
                                  precision=precision)

            def run(p=predictor) -> object:
                return p.predict(exam, measures=False)

            m = _measure(run, repeats, warmup, dev)
            rows.append({"slices": d, "size": s, "median_s": m["median_s"], "peak_rss_mib": m["peak_rss_mib"],
                         "rss_before_mib": m["rss_before_mib"],
                         **({"peak_cuda_mib": m["peak_cuda_mib"]} if "peak_cuda_mib" in m else {})})
            del predictor
    base = rows[0]["median_s"] / (rows[0]["slices"] * rows[0]["size"] ** 2)
    for r in rows:
        r["per_voxel_ratio"] = r["median_s"] / (r["slices"] * r["size"] ** 2) / base
    return {"rows": rows, "precision": precision, "width": width, "repeats": repeats, "warmup": warmup,
            **_device_facts(dev)}


# --------------------------------------------------------------------------------------------------- CLI
def _common(p: argparse.ArgumentParser, repeats: int) -> None:
    p.add_argument("--width", type=int, default=64, help="backbone model_channels (default 64 = the paper)")
    p.add_argument("--matrix", type=int, default=256, help="in-plane matrix of the simulated exam (default 256)")
    p.add_argument("--repeats", type=int, default=repeats, help=f"timed runs (default {repeats})")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")


def _grid(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, default=256, help="preprocessing in-plane size (default 256)")
    p.add_argument("--slices", type=int, default=16, help="preprocessing slices (default 16)")


def _print(title: str, result: Dict[str, object], columns: Sequence[str], as_json: bool, start: float) -> int:
    from .timing import print_results

    result["wall_s"] = time.perf_counter() - start
    rows = result.pop("rows")
    print_results(title, rows, columns, result, as_json)
    return 0


def _run_inference(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    result = bench_inference(args.width, args.size, args.slices, args.matrix, args.repeats, args.warmup,
                             args.device, [s.strip() for s in args.precisions.split(",") if s.strip()],
                             args.threads, args.channels_last, not args.no_reference)
    return _print("Inference per exam: ours vs the authors-style reference (same process)", result,
                  ["implementation", "backbone_passes", "median_s", "min_s", "max_s", "peak_rss_mib",
                   "rss_before_mib", "peak_cuda_mib", "stage_s"], args.json, start)


def _run_batch(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    result = bench_batch(args.exams, args.width, args.size, args.slices, args.matrix, args.repeats, args.warmup,
                         args.device, args.precision, args.threads, args.channels_last)
    return _print("Batched inference (model loaded once, no structure measures)", result,
                  ["exams", "per_exam_s", "exams_per_s", "batch_s", "peak_rss_mib", "peak_cuda_mib"], args.json,
                  start)


def _run_scaling(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    result = bench_scaling(args.sizes, args.slices, args.width, args.matrix, args.repeats, args.warmup, args.device,
                           args.precision, args.threads)
    return _print("Scaling of one exam with the preprocessing grid (ours, no structure measures)", result,
                  ["slices", "size", "median_s", "per_voxel_ratio", "peak_rss_mib", "rss_before_mib",
                   "peak_cuda_mib"], args.json, start)


def register_inference_benches(sub: argparse._SubParsersAction) -> None:
    """The ``inference``, ``batch`` and ``scaling`` subjects (in :data:`bench.SUBJECT_REGISTRARS`)."""
    p = sub.add_parser("inference", help="per-exam inference: ours vs the authors-style reference",
                       description="Full-exam inference (3-plane diagnosis with FT-Opt taps + sagittal/coronal "
                                   "segmentation) of a random-weight full-size model: ours vs the authors-style "
                                   "reference in the same process; median time, peak memory, ratio, agreement.")
    _common(p, 3)
    _grid(p)
    p.add_argument("--precisions", default="fp32", help="comma-separated ours precisions: fp32, bf16 (default fp32)")
    p.add_argument("--channels-last", action="store_true", help="ours with channels-last backbones")
    p.add_argument("--no-reference", action="store_true", help="skip the reference")
    p.set_defaults(func=_run_inference)

    p = sub.add_parser("batch", help="exams per second for N exams per batch",
                       description="Per-exam time and exams/s of predict_many with N exams in one batch "
                                   "(model loaded once). Default N: 1 4 16 on CUDA, 1 8 32 on the CPU.")
    _common(p, 2)
    _grid(p)
    p.add_argument("--exams", type=int, nargs="+", default=None, metavar="N", help="batch sizes")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--channels-last", action="store_true", help="channels-last backbones")
    p.set_defaults(func=_run_batch)

    p = sub.add_parser("scaling", help="time and memory against the input size",
                       description="Per-exam time and peak memory of ours for each preprocessing grid "
                                   "(--sizes x --slices).")
    _common(p, 1)
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512], help="in-plane sizes")
    p.add_argument("--slices", type=int, nargs="+", default=[16, 32], help="slice counts")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.set_defaults(func=_run_scaling)
