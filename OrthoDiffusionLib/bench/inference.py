"""``orthodiffusion bench inference | batch | scaling``: inference speed and memory of a full exam.

All three use a random-weight FT-Opt-shaped model built in memory (:func:`.model.synthetic_bundle`; width 64,
16 x 256 x 256 = the paper's network and input by default) and simulated procedural exams (copies of one: the
networks do the same work on a copy). An exam = diagnosis on three planes (FT-Opt taps) + segmentation of the
sagittal and coronal planes, resampled back onto the original series geometry.

* ``inference``: ours (:class:`~OrthoDiffusionLib.inference.predictor.Predictor`, one encoder pass per (plane, timestep)
  serving every head, in each ``--precisions``) against the authors-style reference
  (:func:`.reference_inference.reference_predict`: fp32, one full U-Net call per (plane, block), no reuse) IN THE SAME
  PROCESS, one exam at a time: median seconds after warm-up, peak RSS (and peak CUDA memory), the ratio
  ours/reference, and the agreement of the two (max |probability difference|, fraction of equal label-map voxels).
  Structure measures (volumes, cartilage thickness) depend on the label maps: on a random-weight model they are
  pathological, so both sides run without them and one row times them on the simulated ground-truth label maps
  (what a trained model gives); ``full_exam_s`` = ours + that row.
* ``batch``: per-exam time and exams/s of ``predict_many`` for N exams in one batch (model loaded once).
* ``scaling``: per-exam time and peak memory of ours against the preprocessing grid (in-plane size x slices).

Peak memory: :class:`~OrthoDiffusionLib.bench.peak_memory.PeakMemory` (RSS high-water mark of the process, reset per row;
it includes the weights resident at the time, reported as ``rss_before_mib``).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..labels import PLANES
from .timing import device_facts, device_sync, setup_device, time_callable

__all__ = ["bench_inference", "bench_batch", "bench_scaling"]

_REFERENCE = "reference (authors-style fp32, full U-Net per (plane, block), no reuse)"


def _measure(fn: Callable[[], object], repeats: int, warmup: int, device) -> Dict[str, object]:
    """Median/min seconds of ``fn`` (after ``warmup`` runs) and the peak memory over all runs."""
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

    dev = setup_device(threads, device)
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
               "backbone_passes": len(predictor._passes(*predictor._plan(exam, True, PLANES, False)[:2])),
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
                "repeats": repeats, "warmup": warmup, **device_facts(dev)})
    return out


# ----------------------------------------------------------------------------------------------------- batch
def bench_batch(counts: Optional[Sequence[int]] = None, width: int = 64, size: int = 256, slices: int = 16,
                matrix: int = 256, repeats: int = 2, warmup: int = 1, device: str = "cpu", precision: str = "fp32",
                threads: Optional[int] = None, channels_last: bool = False, model: Optional[str] = None,
                study: Optional[str] = None, segmentation: bool = True, measures: bool = False) -> Dict[str, object]:
    """Per-exam seconds and exams/s of ``predict_many`` with N exams in one batch, model loaded once. Default N:
    1, 4, 16 on CUDA; 1, 8, 32 on the CPU.

    ``model``: a bundle file or registered name (``bench predict``); None = the random-weight full-size FT-Opt
    layout of :func:`.model.synthetic_bundle` (``width``/``size``/``slices``). ``study``: copies of this study
    instead of simulated exams of in-plane ``matrix``. ``segmentation=False``: diagnosis only. ``measures``: also
    the structure measures (off by default: a random network's speckled label maps make them pathological).
    """
    from .model import simulated_exams, synthetic_bundle
    from ..inference.predictor import Predictor

    dev = setup_device(threads, device)
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
            "repeats": repeats, "warmup": warmup, **facts, **device_facts(dev)}


# --------------------------------------------------------------------------------------------------- scaling
def bench_scaling(sizes: Sequence[int] = (128, 256, 512), slices: Sequence[int] = (16, 32), width: int = 64,
                  matrix: int = 256, repeats: int = 1, warmup: int = 1, device: str = "cpu",
                  precision: str = "fp32", threads: Optional[int] = None) -> Dict[str, object]:
    """Per-exam seconds and peak memory of ours (one exam, no structure measures) for every preprocessing grid
    ``slices x size x size``; ``per_voxel_ratio`` = time relative to the first grid per voxel (1 = linear)."""
    from .model import simulated_exams, synthetic_bundle
    from ..inference.predictor import Predictor

    dev = setup_device(threads, device)
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
            **device_facts(dev)}
