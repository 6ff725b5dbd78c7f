"""Check a model bundle the way a user meets it: every exam of a cohort through the same prediction flow as
``orthodiffusion predict``, scored against the cohort's ground truth.

For each patient of a cohort manifest (e.g. a fresh ``orthodiffusion simulate cohort`` with a seed never used for
training), the first series of each plane is loaded with :func:`~OrthoDiffusionLib.inference.predictor.load_exam`
and predicted by :class:`~OrthoDiffusionLib.inference.predictor.Predictor` (diagnosis with ``noise_draws`` draws,
whole-series segmentation of every plane the bundle segments). The calibrated probabilities are scored with
:func:`.diagnosis.evaluate_predictions` (AUROC with bootstrap CIs); each segmented plane's labelmap, on the series'
own geometry, is compared with the manifest's ``seg_path`` labelmap (Dice per structure).

Outputs in ``out``: ``predictions.csv`` (``patient_id`` + one calibrated probability per label), ``dice.csv``
(``patient_id, plane, <structure>...``), ``diagnosis/`` (the tables of ``orthodiffusion evaluate``) and
``summary.json`` (macro and per-label AUROC, mean Dice per plane and structure, the bundle's sha256).
"""
from __future__ import annotations

import csv
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import SimpleITK as sitk

from OrthoDiffusionLib.atomic import atomic_path
from OrthoDiffusionLib.errors import InputError
from OrthoDiffusionLib.labels import PLANES
from OrthoDiffusionLib.model.uncertainty import DEFAULT_NOISE_DRAWS
from OrthoDiffusionLib.progress import ProgressFn
from OrthoDiffusionLib.segmentation.metrics import dice_per_structure, summarize

__all__ = ["cohort_exams", "check_model"]

PathLike = Union[str, os.PathLike]


def cohort_exams(manifest: PathLike, split: str = "") -> "OrderedDict[str, Dict[str, Dict[str, str]]]":
    """``{patient_id: {plane: {"series": path, "seg": path or ""}}}``, the first series of each plane of every
    patient in ``split`` ('' = all), paths resolved against the manifest's folder."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise InputError("cohort manifest not found", manifest)
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "series_path" not in rows[0] or "patient_id" not in rows[0]:
        raise InputError("not a cohort manifest (needs patient_id, plane, series_path columns)", manifest)
    exams: "OrderedDict[str, Dict[str, Dict[str, str]]]" = OrderedDict()
    for r in rows:
        if split and r.get("split", "") != split:
            continue
        planes = exams.setdefault(r["patient_id"], {})
        if r["plane"] in PLANES and r["plane"] not in planes:
            seg = r.get("seg_path", "")
            planes[r["plane"]] = {"series": os.fspath(manifest.parent / r["series_path"]),
                                  "seg": os.fspath(manifest.parent / seg) if seg else ""}
    if not exams:
        raise InputError(f"no patient in split {split!r}", manifest)
    return exams


def _plane_dice(prediction: sitk.Image, seg_path: str, plane: str) -> Dict[str, float]:
    """Dice per structure of a predicted labelmap against the ground truth on the same series grid."""
    truth = sitk.ReadImage(seg_path)
    pred = sitk.GetArrayFromImage(prediction)
    gt = sitk.GetArrayFromImage(truth)
    if pred.shape != gt.shape:
        raise InputError(f"the ground-truth labelmap has shape {gt.shape}, the prediction {pred.shape}", seg_path)
    return dice_per_structure(pred, gt, plane)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)


def check_model(model: str, manifest: PathLike, out: PathLike, *, split: str = "", noise_draws: int = DEFAULT_NOISE_DRAWS,
                device: str = "cpu", precision: str = "fp32", segmentation: bool = True,
                progress: Optional[ProgressFn] = None) -> Dict[str, object]:
    """Predict every exam of the cohort with ``model`` (bundle path or registered name) and score it.

    Returns the summary (also ``out/summary.json``): ``n_patients``, ``macro_auroc``, ``auroc`` {label: value},
    ``dice`` {plane: {structure: mean}}, ``mean_dice`` {plane: mean over structures}, ``model`` (name, sha256).
    """
    from OrthoDiffusionLib.inference.predictor import Predictor, load_exam

    from .diagnosis import evaluate_predictions

    exams = cohort_exams(manifest, split)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(model, device=device, precision=precision)
    keys: List[str] = []
    prob_rows: List[List[object]] = []
    dice_rows: Dict[str, List[Dict[str, float]]] = {}
    for i, (patient, planes) in enumerate(exams.items()):
        exam = load_exam(**{p: planes[p]["series"] for p in planes}, anatomy=predictor.anatomy)
        result = predictor.predict(exam, noise_draws=noise_draws, segmentation=segmentation, measures=False)
        keys = [lab["key"] for lab in result.labels]
        prob_rows.append([patient, *(f"{lab['calibrated_probability']:.6f}" for lab in result.labels)])
        for plane, labelmap in result.segmentations.items():
            if planes.get(plane, {}).get("seg"):
                dice_rows.setdefault(plane, []).append({"patient_id": patient,
                                                        **_plane_dice(labelmap, planes[plane]["seg"], plane)})
        if progress is not None:
            progress("exams", (i + 1) / len(exams))
    summary: Dict[str, object] = {"n_patients": len(exams), "split": split, "noise_draws": noise_draws,
                                  "model": {k: predictor.bundle.summary().get(k) for k in ("name", "sha256")}}
    if keys:
        _write_csv(out / "predictions.csv", ["patient_id", *keys], prob_rows)
        diag = evaluate_predictions(out / "predictions.csv", manifest, out / "diagnosis", split=split or None,
                                    n_boot=200, n_perm=0, figures=True)
        summary.update({"macro_auroc": diag["macro_auroc"], "macro_auroc_ci": diag["macro_auroc_ci"],
                        "auroc": dict(zip(keys, diag["per_label_auroc"].values()))})
    summary.update(_dice_summary(dice_rows, out))
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _dice_summary(dice_rows: Dict[str, List[Dict[str, float]]], out: Path) -> Dict[str, object]:
    """Write ``dice.csv``; return ``dice`` {plane: {structure: mean}} and ``mean_dice`` {plane: mean}."""
    table, rows = {}, []
    for plane, cases in dice_rows.items():
        structures = [k for k in cases[0] if k != "patient_id"]
        table[plane] = {s: summarize(c[s] for c in cases).mean for s in structures}
        rows += [[c["patient_id"], plane, *(f"{c[s]:.4f}" for s in structures)] for c in cases]
    if rows:
        first = next(iter(dice_rows.values()))[0]
        _write_csv(out / "dice.csv", ["patient_id", "plane", *[k for k in first if k != "patient_id"]], rows)
    return {"dice": table, "mean_dice": {p: summarize(v.values()).mean for p, v in table.items()}}
