"""``orthodiffusion train-baseline``: the paper's from-scratch classification baselines on the same manifest.

``unet3d`` (MONAI U-Net encoder, bottleneck GAP + linear) or ``resnet18`` (MONAI 3D ResNet-18), one encoder per plane
(all three by default; ``--planes`` restricts them, e.g. to the one plane a compared run sees), features concatenated
into one linear head (:mod:`.baselines`), trained on every cross-plane combination of
the training patients with weight 1/n (:mod:`.multiscan`); Adam at the configuration's ``baselines.lr``
(1e-4) for the paper's epochs of the anatomy (``baselines.epochs``), constant learning rate, batch
``baselines.batch_size``. Preprocessing as the compared diagnosis run (``--size``/``--slices``). Training patients
lacking a plane are skipped; at evaluation a missing plane is fed as a zero volume (the baselines have no fallback),
and the number of such rows is recorded.

Run folder: ``run.json`` (format ``orthodiffusion.baseline-run``; metrics as ``train-diagnosis``), ``model.safetensors``,
``predictions_{val,test}.csv`` (the format ``orthodiffusion evaluate`` reads, so ``--baseline`` gives paired
permutation tests), ``log.csv``; ``checkpoint.safetensors`` while training (``--resume`` continues exactly).
"""
from __future__ import annotations

import csv
import io
import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from OrthoDiffusionLib.device import resolve_device
from OrthoDiffusionLib.errors import InputError
from OrthoDiffusionLib.labels import PLANES, planes_in_order
from OrthoDiffusionLib.progress import ProgressFn

from .baselines import BASELINES, build_classification_baseline
from .checkpoint import EpochLoop, RunState, derived_seed
from .data import DiagnosisManifest, read_diagnosis_manifest
from .losses import weighted_bce
from .multiscan import CombinationSet
from OrthoDiffusionLib.inference.preprocess import model_grid

from ..curves import plot_run_curves
from ..pretrain.ddpm import SeriesVolumes
from ..run_files import save_tensors, utc_now, write_log_csv, write_text
from .train import patient_metrics

__all__ = ["BASELINE_RUN_FORMAT", "predictions_csv", "train_baseline"]

BASELINE_RUN_FORMAT = "orthodiffusion.baseline-run"


def predictions_csv(patient_ids: Sequence[str], keys: Sequence[str], probabilities: np.ndarray) -> str:
    """The text of a ``predictions_<split>.csv`` (the format ``orthodiffusion evaluate`` reads): ``patient_id`` and
    one probability column per label key, a row per patient of ``probabilities`` (N, L)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["patient_id", *keys])
    for pid, row in zip(patient_ids, probabilities):
        w.writerow([pid, *[f"{v:.6f}" for v in row]])
    return buf.getvalue()


class _Inputs:
    """The baseline's inputs: one volume per plane of each cross-plane combination, a zero volume for a missing
    plane (the baselines have no fallback)."""

    def __init__(self, volumes: SeriesVolumes, planes: Sequence[str], slices: int, size: int, device: torch.device):
        self.volumes, self.planes, self.slices, self.size, self.device = volumes, tuple(planes), slices, size, device

    def batch(self, combos: CombinationSet, idx: Sequence[int]) -> Dict[str, torch.Tensor]:
        """``{plane: (len(idx), 1, slices, size, size)}`` on the device, a key per plane of the model."""
        out: Dict[str, torch.Tensor] = {}
        for p in self.planes:
            vols = [self.volumes[combos.combinations[i].series[p]["index"]] if p in combos.combinations[i].series
                    else torch.zeros(1, self.slices, self.size, self.size) for i in idx]
            out[p] = torch.stack(vols).to(self.device)
        return out

    def predict(self, model: torch.nn.Module, combos: CombinationSet, batch: int, num_labels: int) -> np.ndarray:
        """``(len(combos), K)`` probabilities (the model is left in training mode)."""
        model.eval()
        probs = []
        with torch.no_grad():
            for start in range(0, len(combos), batch):
                idx = list(range(start, min(start + batch, len(combos))))
                probs.append(torch.sigmoid(model(self.batch(combos, idx))).cpu().numpy())
        model.train()
        return np.concatenate(probs) if probs else np.zeros((0, num_labels))


def _test_and_write_predictions(run: Path, data: DiagnosisManifest, predict: Callable[[CombinationSet], np.ndarray],
                                keys: Sequence[str], planes: Sequence[str]) -> Tuple[Dict[str, Any], int]:
    """Patient-level metrics of the validation and test splits (``None`` for an empty split), writing
    ``predictions_<split>.csv``; and how many of their rows had a missing plane filled with zeros."""
    metrics: Dict[str, Any] = {}
    zero_filled = 0
    for split in ("val", "test"):
        combos = data.combinations(split, require_all_planes=False, planes=planes)
        if not len(combos):
            metrics[split] = None
            continue
        zero_filled += sum(len(c.series) < len(planes) for c in combos.combinations)
        probs = predict(combos)
        metrics[split] = patient_metrics(combos.patient_ids(), probs, data)
        write_text(run / f"predictions_{split}.csv", predictions_csv(combos.patient_ids(), keys, probs))
    return metrics, zero_filled


def _checked_planes(planes: Sequence[str]) -> Tuple[str, ...]:
    """``planes`` in ``PLANES`` order; an error for an unknown plane or none."""
    if not planes:
        raise InputError(f"a baseline needs at least one plane out of {', '.join(PLANES)}")
    try:
        return planes_in_order(planes, "baseline plane")
    except ValueError as error:
        raise InputError(str(error)) from None


def train_baseline(manifest: str | os.PathLike, model_name: str, config: Mapping[str, Any], out: str | os.PathLike,
                   *, encoder_kwargs: Optional[Mapping[str, Any]] = None, planes: Sequence[str] = PLANES,
                   resume: bool = False, device: str = "cpu",
                   seed: int = 0, train_patients: Optional[int] = None, train_fraction: Optional[float] = None,
                   cache_dir: Optional[str | os.PathLike] = None, command: str = "",
                   progress: Optional[ProgressFn] = None,
                   cancel: Optional[threading.Event] = None,
                   step_log: Optional[Callable[[str, int, float], None]] = None,
                   epoch_log: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Train baseline ``model_name`` (``unet3d``/``resnet18``) into ``out`` (module doc); returns ``run.json``.

    ``config``: a resolved diagnosis configuration (anatomy, labels, ``preprocessing``, ``baselines``).
    ``encoder_kwargs``: e.g. ``{"channels": [16, 16, 32, 32, 64]}`` (U-Net) or ``{"widen_factor": 0.25}`` (ResNet)
    for small demos; default: the paper's networks. ``planes``: the planes with an encoder (default all three).
    """
    cfg = json.loads(json.dumps(dict(config)))
    name = str(model_name).lower()
    if name not in BASELINES:
        raise InputError(f"unknown baseline {model_name!r}; choose one of {', '.join(BASELINES)}")
    bl = cfg["baselines"]
    epochs, lr, batch = int(bl["epochs"][name]), float(bl["lr"]), int(bl.get("batch_size", 10))
    kwargs = dict(encoder_kwargs or {})
    planes = _checked_planes(planes)
    run = Path(out)
    data = read_diagnosis_manifest(manifest, cfg["labels"]).restrict_train(train_patients, train_fraction, seed=seed)
    settings = {"model": name, "encoder": kwargs, "planes": list(planes), "config": cfg,
                "manifest_sha256": data.sha256, "seed": int(seed),
                "train_patients": data.patients("train")}
    state = RunState.open(run, settings, resume, kind="baseline")
    dev = resolve_device(device)
    slices, size = int(cfg["preprocessing"]["slices"]), int(cfg["preprocessing"]["size"])
    cache = Path(cache_dir) if cache_dir is not None else run / "cache"
    volumes = SeriesVolumes([r.path for r in data.rows], slices=slices, size=size, cache_dir=cache / "volumes",
                            grid=model_grid(cfg["preprocessing"]))
    torch.manual_seed(derived_seed(seed, "init", name))
    model = state.add_part("model", build_classification_baseline(name, cfg["num_labels"], planes, **kwargs).to(dev))
    inputs = _Inputs(volumes, planes, slices, size, dev)

    def predict(combos: CombinationSet) -> np.ndarray:
        return inputs.predict(model, combos, batch, cfg["num_labels"])

    train = data.combinations("train", require_all_planes=True, planes=planes)
    if not len(train):
        raise InputError(f"no training patient has a series of every plane the baseline reads "
                         f"({', '.join(planes)})", data.path)
    y = torch.as_tensor(data.labels_of(train.patient_ids())).to(dev)
    w = torch.as_tensor(train.weights(), dtype=torch.float32).to(dev)
    val = data.combinations("val", require_all_planes=False, planes=planes)

    def step(idx: torch.Tensor, epoch: int, b: int) -> torch.Tensor:
        model.train()
        return weighted_bce(model(inputs.batch(train, idx.tolist())), y[idx], w[idx])

    def evaluate() -> Dict[str, float]:
        return {"val_macro_auroc": patient_metrics(val.patient_ids(), predict(val), data)["macro_auroc"]}

    def log(row: Dict[str, Any]) -> None:
        write_log_csv(run / "log.csv", state.extra["log"])
        if epoch_log is not None:
            epoch_log(row)

    EpochLoop(state, log, progress, cancel, step_log).run(name, [{"params": model.parameters(), "lr": lr}],
                                                          len(train), batch, epochs, step, evaluate,
                                                          schedule="constant")
    metrics, zero_filled = _test_and_write_predictions(run, data, predict, cfg["labels"], planes)
    save_tensors(run / "model.safetensors", model.state_dict())
    info = {"format": BASELINE_RUN_FORMAT, "version": 1, "model": name, "encoder": kwargs, "planes": list(planes),
            "anatomy": cfg["anatomy"],
            "labels": cfg["labels"], "preprocessing": {"slices": slices, "size": size},
            "weights": "model.safetensors", "training": {"epochs": epochs, "lr": lr, "batch_size": batch,
                                                          "schedule": "constant", "seed": int(seed),
                                                          "train_patients": len(data.patients("train")),
                                                          "stage_train_combinations": len(train),
                                                          "skipped_patients_missing_plane": len(train.skipped),
                                                          "eval_rows_zero_filled_plane": zero_filled},
            "metrics": metrics, "config": cfg,
            "provenance": {"command": command, "manifest": str(Path(manifest).resolve()),
                           "manifest_sha256": data.sha256, "started": state.extra["started"], "finished": utc_now()}}
    write_text(run / "run.json", json.dumps(info, indent=2, default=float) + "\n")
    state.path.unlink(missing_ok=True)
    plot_run_curves(run / "log.csv", title=f"train-baseline {name} {run.name}")
    return info
