"""Tissue-pooled diagnosis: the eight labels from what a tissue segmentation network sees in each plane.

A segmentation run trained with ``context_tissues`` (the diffusion-pretrained backbone with the skip head, 24
classes: background, the 11 structures and 12 context tissues such as joint fluid, the collateral ligaments and
edema) is run on the diagnosis input of each plane (the 16 central slices on the model grid, at the evaluation noise
seed). Its class probabilities ``p`` (C, D, H, W) and the head's last feature map ``f`` (K, D, H, W) (the input of
its 1 x 1 x 1 classifier) give, per plane, the feature vector::

    log(1 + sum_v p_c(v))                                   soft volume of each class            (C,)
    centre(patella) - centre(femur)                         soft centres, in voxels (D, H, W)    (3,)
    sum_v p_c(v) f(v) / (1 + sum_v p_c(v))                  class-pooled features                (C x K,)

The planes' vectors are concatenated (a patient with several series of a plane: their mean; a missing plane: the
training mean), standardised with the training patients' statistics, and one L2-regularised logistic regression per
label (balanced class weights) is fitted on the training patients (those the segmentation runs were trained on:
all, or their nested ``--train-patients`` subset); its regularisation is chosen on the validation
patients from :data:`C_GRID`, and Platt scaling fitted on them calibrates its probabilities. This replaces the paper's global pooling of one tap by pooling within the tissues the
network has learnt to delineate: an effusion is more fluid, a torn ligament less ligament and more edema, a
dislocated patella a displaced centre.

Run folder (``orthodiffusion train-tissue-diagnosis``): ``run.json`` (written last; labels, planes and their
segmentation runs with sha256, feature layout, chosen C per label, metrics), ``tissue_head.safetensors`` (``mean``
(F,), ``scale`` (F,), ``weight`` (L, F), ``bias``, ``platt_scale``, ``platt_shift`` (L,)), ``predictions_{val,test}.csv`` (format of
``orthodiffusion evaluate``), ``features/`` (the per-series features, a cache keyed by series path and the run's weights).
"""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from OrthoDiffusionLib import labels as label_tables
from OrthoDiffusionLib.atomic import atomic_path
from OrthoDiffusionLib.bundle.export import TISSUE_DIAGNOSIS_RUN_FORMAT, segmentation_run_digest
from OrthoDiffusionLib.device import resolve_device
from OrthoDiffusionLib.errors import InputError
from OrthoDiffusionLib.model.tissue_diagnosis import head_features_and_logits, tissue_features
from OrthoDiffusionLib.progress import ProgressFn

from ..pretrain.ddpm import SeriesVolumes
from ..run_files import save_tensors, utc_now, write_text
from ..segmentation.train import load_segmentation_run, read_segmentation_run
from .data import is_simulated_cohort, read_diagnosis_manifest
from .train import patient_metrics
from .train_baseline import predictions_csv

__all__ = ["C_GRID", "TISSUE_RUN_FORMAT", "tissue_pooled_features", "fit_label_models", "train_tissue_diagnosis"]

PathLike = Union[str, os.PathLike]
TISSUE_RUN_FORMAT = TISSUE_DIAGNOSIS_RUN_FORMAT
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)
FEATURE_SEED = 1234
#: Regularisation of the Platt scaling (scikit-learn's C): a validation split on which a label separates perfectly
#: would otherwise drive its slope without bound (probabilities of exactly 0 or 1 on new exams).
PLATT_C = 1.0
#: Tensors of ``tissue_head.safetensors`` (the buffers of :class:`~OrthoDiffusionLib.model.tissue_diagnosis.TissueDiagnosisHead`).
HEAD_TENSORS = ("mean", "scale", "weight", "bias", "platt_scale", "platt_shift")


def tissue_pooled_features(model: torch.nn.Module, volume: torch.Tensor, seed: int = FEATURE_SEED) -> np.ndarray:
    """Feature vector (C + 3 + C x K,) float32 of one preprocessed volume (1, 1, D, H, W)
    (:func:`OrthoDiffusionLib.model.tissue_diagnosis.tissue_features`; the predictor computes the same).

    ``model``: a :class:`~.segmentation.model.DiffusionSegmenter` whose head ends in a 1 x 1 x 1 ``classifier``.
    """
    from OrthoDiffusionLib.model.features import extract_taps

    with torch.no_grad():
        taps = extract_taps(model.backbone, model.schedule, volume, model.timestep, model.head.required_taps,
                            generator=torch.Generator().manual_seed(int(seed)))
        head_features, logits = head_features_and_logits(model.head, taps, volume.shape[-3:])
        return tissue_features(logits, head_features)[0].numpy().astype(np.float32).copy()


def _feature_cache(cache: Path, series: str, run_sha: str) -> Path:
    key = hashlib.sha256(f"{os.path.abspath(series)}|{run_sha}|{FEATURE_SEED}".encode()).hexdigest()[:24]
    return cache / f"{key}.npy"


def _series_features(model: torch.nn.Module, run: Mapping[str, Any], run_sha: str, paths: Sequence[str],
                     cache: Path, progress: Optional[ProgressFn], cancel: Optional[threading.Event],
                     stage: str) -> np.ndarray:
    """(len(paths), F) features of ``paths``, preprocessed as the run's segmentation inputs (cached by series path
    and ``run_sha``, the digest of the run's head and backbone)."""
    pre = run["preprocessing"]
    grid = {k: float(pre[k]) for k in ("slice_mm", "inplane_mm") if k in pre}
    volumes = SeriesVolumes(paths, int(pre["slices"]), int(pre["size"]), cache_dir=cache / "volumes", grid=grid)
    device = next(model.parameters()).device
    out = []
    for i, path in enumerate(paths):
        if cancel is not None and cancel.is_set():
            from OrthoDiffusionLib.errors import CancelledError

            raise CancelledError("train-tissue-diagnosis cancelled")
        file = _feature_cache(cache, path, run_sha)
        if file.is_file():
            out.append(np.load(file, allow_pickle=False))
        else:
            out.append(tissue_pooled_features(model, volumes[i][None].to(device)))
            with atomic_path(file, suffix=".npy") as tmp:
                np.save(tmp, out[-1], allow_pickle=False)
        if progress is not None:
            progress(stage, (i + 1) / len(paths))
    return np.stack(out)


def _patient_matrix(series: Mapping[str, Sequence[Any]], features: Mapping[str, np.ndarray],
                    patients: Sequence[str]) -> np.ndarray:
    """(len(patients), sum of the planes' F): per plane (in ``series`` order), the features ``features[plane]`` of
    the rows ``series[plane]`` averaged per patient; NaN where a patient lacks the plane (filled with the training
    mean by :func:`_standardise`)."""
    blocks = []
    for plane, rows in series.items():
        feats = features[plane]
        width = feats.shape[1]
        by_patient: Dict[str, List[np.ndarray]] = {}
        for r, f in zip(rows, feats):
            by_patient.setdefault(r.patient_id, []).append(f)
        blocks.append(np.stack([np.mean(by_patient[p], 0) if p in by_patient else np.full(width, np.nan)
                                for p in patients]))
    return np.concatenate(blocks, 1).astype(np.float64)


def _standardise(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    z = (x - mean) / scale
    return np.where(np.isnan(z), 0.0, z)


def fit_label_models(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                     c_grid: Sequence[float] = C_GRID) -> Dict[str, np.ndarray]:
    """Per label, an L2 logistic regression (balanced class weights) on standardised features, its C chosen by
    validation AUROC. Inputs (N, F) features (NaN = missing plane) and (N, L) 0/1 labels. Returns ``mean``,
    ``scale`` (F,), ``weight`` (L, F), ``bias``, ``platt_scale``, ``platt_shift`` (Platt scaling on the validation
    logits), ``c`` and ``val_auroc`` (L,)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    mean = np.nanmean(x_train, 0)
    scale = np.nanstd(x_train, 0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    zt, zv = _standardise(x_train, mean, scale), _standardise(x_val, mean, scale)
    weight, bias, chosen, val_auc, platt = [], [], [], [], []
    for k in range(y_train.shape[1]):
        scorable = len(set(y_val[:, k])) > 1  # otherwise the first C is kept and the AUROC is NaN
        best = None
        for c in c_grid:
            m = LogisticRegression(C=c, max_iter=5000, class_weight="balanced").fit(zt, y_train[:, k])
            auc = roc_auc_score(y_val[:, k], m.decision_function(zv)) if scorable else float("nan")
            if best is None or auc > best[0]:
                best = (auc, c, m)
        weight.append(best[2].coef_[0])
        bias.append(best[2].intercept_[0])
        chosen.append(best[1])
        val_auc.append(best[0])
        platt.append(_platt(best[2].decision_function(zv), y_val[:, k]))
    return {"mean": mean, "scale": scale, "weight": np.stack(weight), "bias": np.asarray(bias),
            "platt_scale": np.asarray([a for a, _ in platt]), "platt_shift": np.asarray([b for _, b in platt]),
            "c": np.asarray(chosen), "val_auroc": np.asarray(val_auc)}


def _platt(logits: np.ndarray, y: np.ndarray) -> Tuple[float, float]:
    """(a, b) with sigmoid(a z + b) calibrated on the validation logits ``z`` (N,) and 0/1 labels ``y`` (Platt
    scaling, regularised by :data:`PLATT_C`; the balanced class weights of the label models put their logits at a
    50 % prior). Identity when the validation split has one class only."""
    from sklearn.linear_model import LogisticRegression

    if len(set(y)) < 2:
        return 1.0, 0.0
    m = LogisticRegression(C=PLATT_C, max_iter=5000).fit(logits[:, None], y)
    return float(m.coef_[0, 0]), float(m.intercept_[0])


def predict_probabilities(model: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """(N, L) calibrated probabilities of the fitted label models on (N, F) features (NaN = missing plane)."""
    z = _standardise(x, model["mean"], model["scale"]) @ model["weight"].T + model["bias"]
    return 1.0 / (1.0 + np.exp(-(model["platt_scale"] * z + model["platt_shift"])))


_OWN_FILES = {"run.json", "tissue_head.safetensors", "predictions_val.csv", "predictions_test.csv", "features"}


def _check_run_folder(out: Path) -> None:
    """InputError unless ``out`` is new, empty or an earlier run of this command (whose files it replaces; its
    feature cache is reused)."""
    import json

    if not out.exists():
        return
    if not out.is_dir():
        raise InputError("the output is a file, not a folder", out)
    entries = {p.name for p in out.iterdir()}
    run = out / "run.json"
    own = run.is_file() and json.loads(run.read_text(encoding="utf-8")).get("format") == TISSUE_RUN_FORMAT
    if entries - _OWN_FILES or (entries - {"features"} and not own):
        raise InputError("the output folder holds files this command did not write; choose a new folder", out)


def _training_patients(train: Sequence[str], read: Mapping[str, Tuple[Path, Dict[str, Any], str]]) -> List[str]:
    """The training patients the diagnosis learns from: all of ``train``, or, when the segmentation runs were
    trained on a nested subset (``--train-patients N``, label-efficiency runs), the same subset: the labels of
    the patients the networks saw and no others."""
    from ..segmentation.data import nested_patient_subset

    subsets = {(run["config"].get("train_patients"), int(run["config"].get("seed", 0))) for _, run, _ in read.values()}
    if len(subsets) > 1:
        raise InputError("the segmentation runs were trained on different training subsets "
                         f"(train_patients, seed: {sorted(subsets, key=str)}); give runs of one subset")
    n, seed = subsets.pop()
    return list(train) if n is None else nested_patient_subset(train, int(n), seed)


def _read_runs(runs: Mapping[str, PathLike]) -> Dict[str, Tuple[Path, Dict[str, Any], str]]:
    out = {}
    for plane, folder in runs.items():
        folder = Path(folder)
        run = read_segmentation_run(folder)
        if run.get("plane") != plane:
            raise InputError(f"this is a {run.get('plane')} segmentation run, given for {plane}", folder)
        if not run.get("context_tissues"):
            raise InputError("the segmentation run was not trained with context_tissues (its head segments the "
                             "structures only); train one with --set context_tissues=true", folder)
        out[plane] = (folder, run, segmentation_run_digest(folder, run))
    return out


def train_tissue_diagnosis(manifest: PathLike, runs: Mapping[str, PathLike], out: PathLike, *,
                           cache_dir: Optional[PathLike] = None, device: str = "cpu",
                           progress: Optional[ProgressFn] = None, cancel: Optional[threading.Event] = None,
                           command: Optional[str] = None) -> Dict[str, Any]:
    """Fit the tissue-pooled diagnosis (module docstring) on ``manifest`` with one ``context_tissues`` segmentation
    run per plane (``{plane: run folder}``); writes and returns the run (``run.json``)."""
    if not runs:
        raise InputError("give at least one segmentation run (--run PLANE=FOLDER)")
    keys = [lab.key for lab in label_tables.diagnosis_labels("knee")]
    data = read_diagnosis_manifest(manifest, keys)
    out = Path(out)
    _check_run_folder(out)
    cache = Path(cache_dir) if cache_dir is not None else out / "features"
    read = _read_runs(runs)
    planes = [p for p in label_tables.PLANES if p in read]
    splits = {s: data.patients(s) for s in ("train", "val", "test")}
    splits["train"] = _training_patients(splits["train"], read)
    wanted = {p for pids in splits.values() for p in pids}
    series = {plane: [r for r in data.series(plane=plane) if r.patient_id in wanted] for plane in planes}
    features = {}
    for plane, rows in series.items():
        folder, run, sha = read[plane]
        model, _ = load_segmentation_run(folder, resolve_device(device))
        features[plane] = _series_features(model, run, sha, [r.path for r in rows], cache, progress, cancel,
                                           f"features {plane}")
    x = {s: _patient_matrix(series, features, pids) for s, pids in splits.items()}
    y = {s: data.labels_of(pids).astype(int) for s, pids in splits.items()}
    fitted = fit_label_models(x["train"], y["train"], x["val"], y["val"])
    return _write_run(out, data, keys, planes, read, features, fitted, x, y, splits, command)


def _write_run(out: Path, data: Any, keys: Sequence[str], planes: Sequence[str],
               read: Mapping[str, Tuple[Path, Dict[str, Any], str]], features: Mapping[str, np.ndarray],
               fitted: Mapping[str, np.ndarray], x: Mapping[str, np.ndarray], y: Mapping[str, np.ndarray],
               splits: Mapping[str, Sequence[str]], command: Optional[str]) -> Dict[str, Any]:
    import json
    import shlex
    import sys

    out.mkdir(parents=True, exist_ok=True)
    save_tensors(out / "tissue_head.safetensors",
                 {k: torch.from_numpy(np.asarray(fitted[k], dtype=np.float32)) for k in HEAD_TENSORS})
    metrics = {}
    for split in ("val", "test"):
        if not splits[split]:
            metrics[split] = None
            continue
        probs = predict_probabilities(fitted, x[split])
        write_text(out / f"predictions_{split}.csv", predictions_csv(splits[split], keys, probs))
        metrics[split] = patient_metrics(list(splits[split]), probs, data)
    width = {p: int(features[p].shape[1]) for p in planes}
    record = {
        "format": TISSUE_RUN_FORMAT, "version": 1, "anatomy": "knee", "labels": list(keys),
        "head_weights": "tissue_head.safetensors", "planes": {
            p: {"segmentation_run": os.fspath(read[p][0].resolve()), "weights_sha256": read[p][2],
                "features": width[p], "classes": int(read[p][1]["num_classes"])} for p in planes},
        "feature_layout": "per plane: log1p soft volume (C), patella minus femur soft centre (3, voxels D/H/W), "
                          "class-pooled head features (C x K); planes concatenated in the order of 'planes'",
        "feature_seed": FEATURE_SEED, "c": [float(c) for c in fitted["c"]],
        "val_auroc_per_label": {k: float(v) for k, v in zip(keys, fitted["val_auroc"])},
        "metrics": metrics,
        "data": {s: len(v) for s, v in splits.items()},
        "provenance": {"command": command or "orthodiffusion " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                       "manifest": os.fspath(Path(data.path).resolve()), "manifest_sha256": data.sha256,
                       "synthetic_data_only": is_simulated_cohort(data.path),
                       "finished": utc_now()},
    }
    write_text(out / "run.json", json.dumps(record, indent=2) + "\n")
    return record
