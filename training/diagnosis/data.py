"""Diagnosis training data: the manifest, its preprocessed volumes and the backbone taps of its series.

The training-data manifest (docs/train-your-own.md) is a CSV with one row per series: ``patient_id``, ``plane``,
``series_path`` (relative paths are relative to the CSV), ``split`` (``train``/``val``/``test``), one 0/1 column per label key of the
anatomy, and optionally the EHR columns (``age, sex, height, weight, patient_type, injury_event``), ``center`` and
``field_strength``. :func:`read_diagnosis_manifest` checks all of it up front and raises ONE
:class:`~OrthoDiffusionLib.errors.InputError` naming the CSV, the line and the problem.

Taps: a series' clean volume ``x0`` ``(1, slices, size, size)`` is noised at the plane's timestep with the one noise
draw fixed by ``(noise_seed, series_id)`` (:func:`.feature_cache.series_noise`) and the backbone's encoder
runs to the tap block (:func:`fixed_noise_taps`). Linear probing caches these taps on disk; fine-tuning draws fresh
noise every step instead, and uses the fixed draw again for evaluation, so predictions are reproducible.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from OrthoDiffusionLib.model.backbone import DiffusionUNet
from OrthoDiffusionLib.errors import InputError
from OrthoDiffusionLib.labels import PLANES
from OrthoDiffusionLib.model.schedule import CosineSchedule
from OrthoDiffusionLib.simulate.cohort import SIMULATED_COHORT_TITLE

from ..tables import parse_float, read_csv, require_columns
from .feature_cache import series_noise
from .multiscan import CombinationSet, enumerate_combinations, nested_patient_subsets

__all__ = ["EHR_COLUMNS", "SPLITS", "SeriesRow", "DiagnosisManifest", "read_diagnosis_manifest",
           "fixed_noise_taps", "fixed_noise_tap_set", "series_weights", "is_simulated_cohort"]

EHR_COLUMNS = ("age", "sex", "height", "weight", "patient_type", "injury_event")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SeriesRow:
    """One manifest row: ``index`` (its position in ``DiagnosisManifest.rows``), absolute ``path``, ``labels``
    ``(K,)`` 0/1."""

    index: int
    patient_id: str
    plane: str
    path: str
    split: str
    labels: tuple
    tissue_path: str = ""  # simulated cohorts: the series' tissue-id map (auxiliary dense supervision)

    def series_id(self, slices: int, size: int) -> str:
        """Identity of the preprocessed volume (path + preprocessing): the feature-cache and noise key."""
        return f"{self.path}|{int(slices)}|{int(size)}"

    def as_mapping(self) -> Dict[str, object]:
        return {"patient_id": self.patient_id, "plane": self.plane, "series_path": self.path, "index": self.index}


@dataclass
class DiagnosisManifest:
    """A checked manifest. ``ehr`` maps patient -> record (only when the CSV has EHR columns)."""

    path: Path
    sha256: str
    label_keys: List[str]
    rows: List[SeriesRow]
    ehr: Optional[Dict[str, Dict[str, object]]] = None
    excluded_train_patients: int = 0
    _labels: Dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._labels = {r.patient_id: np.asarray(r.labels, dtype=np.float32) for r in self.rows}

    def patients(self, split: str) -> List[str]:
        """Patients of ``split`` in order of first appearance."""
        return list(dict.fromkeys(r.patient_id for r in self.rows if r.split == split))

    def labels_of(self, patient_ids: Sequence[str]) -> np.ndarray:
        """``(N, K)`` float32 labels of the given patients (repeats allowed)."""
        return np.stack([self._labels[p] for p in patient_ids]) if len(patient_ids) else \
            np.zeros((0, len(self.label_keys)), np.float32)

    def series(self, split: Optional[str] = None, plane: Optional[str] = None) -> List[SeriesRow]:
        return [r for r in self.rows if (split is None or r.split == split) and (plane is None or r.plane == plane)]

    def combinations(self, split: str, require_all_planes: bool,
                     planes: Sequence[str] = PLANES) -> CombinationSet:
        """Cross-plane combinations of ``split`` over ``planes`` (see :func:`.multiscan.enumerate_combinations`;
        series of other planes are ignored); each combination's ``series`` maps plane -> ``SeriesRow.as_mapping()``
        (with the row ``index``)."""
        return enumerate_combinations([r.as_mapping() for r in self.series(split)], planes, require_all_planes)

    def restrict_train(self, n_patients: Optional[int] = None, fraction: Optional[float] = None,
                       seed: int = 0) -> "DiagnosisManifest":
        """The manifest with only a seeded subset of the training patients (nested: a smaller subset is contained
        in a larger one for the same seed). ``fraction`` in (0, 1] rounds to at least one patient."""
        train = self.patients("train")
        if n_patients is None and fraction is None:
            return self
        if fraction is not None:
            if not 0 < fraction <= 1:
                raise InputError(f"--train-fraction must lie in (0, 1], got {fraction}")
            n_patients = max(1, int(round(fraction * len(train))))
        if not 1 <= int(n_patients) <= len(train):
            raise InputError(f"--train-patients must lie in [1, {len(train)}] (training patients), got {n_patients}",
                             self.path)
        keep = set(nested_patient_subsets(train, [int(n_patients)], seed=seed)[int(n_patients)])
        kept = [r for r in self.rows if r.split != "train" or r.patient_id in keep]
        rows = [dataclasses.replace(r, index=i) for i, r in enumerate(kept)]  # index = position in ``rows``
        return DiagnosisManifest(self.path, self.sha256, self.label_keys, rows, self.ehr,
                                 excluded_train_patients=len(train) - len(keep))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_diagnosis_manifest(path: str | os.PathLike, label_keys: Sequence[str], check_files: bool = True
                            ) -> DiagnosisManifest:
    """Read and check a training-data manifest (module doc). Needs at least one training and one validation
    patient. Raises :class:`InputError` (or ``MissingPathError``/``CorruptFileError``) naming the CSV."""
    path = Path(path)
    header, records = read_csv(path)
    require_columns(header, ["patient_id", "plane", "series_path", "split"], path)
    absent = [k for k in label_keys if k not in header]
    if absent:
        raise InputError(f"missing label column(s): {', '.join(absent)} (to train the labels this manifest has, give "
                         "--labels KEY,... or --labels-from-manifest, or a configuration with its own 'labels')", path)
    rows: List[SeriesRow] = []
    split_of: Dict[str, str] = {}
    labels_of: Dict[str, tuple] = {}
    for i, rec in enumerate(records):
        line = i + 2
        pid = (rec["patient_id"] or "").strip()
        plane = (rec["plane"] or "").strip().lower()
        split = (rec["split"] or "").strip().lower()
        series = (rec["series_path"] or "").strip()
        if not pid:
            raise InputError(f"line {line}: empty patient_id", path)
        if plane not in PLANES:
            raise InputError(f"line {line}: plane {rec['plane']!r} is not one of {', '.join(PLANES)}", path)
        if split not in SPLITS:
            raise InputError(f"line {line}: split {rec['split']!r} is not one of {', '.join(SPLITS)}", path)
        if not series:
            raise InputError(f"line {line}: empty series_path", path)
        y = tuple(parse_float(rec[k], path, line, k) for k in label_keys)
        if any(v not in (0.0, 1.0) for v in y):
            raise InputError(f"line {line}: label values must be 0 or 1", path)
        if labels_of.setdefault(pid, y) != y:
            raise InputError(f"line {line}: patient {pid} has labels that differ between its rows", path)
        if split_of.setdefault(pid, split) != split:
            raise InputError(f"line {line}: patient {pid} appears in splits {split_of[pid]} and {split}", path)
        full = Path(series) if Path(series).is_absolute() else path.parent / series
        if check_files and not full.exists():
            raise InputError(f"line {line}: series_path {series!r} does not exist", path)
        tissue = (rec.get("tissue_path") or "").strip()
        tissue_full = "" if not tissue else os.path.abspath(Path(tissue) if Path(tissue).is_absolute()
                                                           else path.parent / tissue)
        rows.append(SeriesRow(i, pid, plane, os.path.abspath(full), split, y, tissue_full))
    if not rows:
        raise InputError("the manifest has no rows", path)
    for needed in ("train", "val"):
        if needed not in split_of.values():
            raise InputError(f"no patient in split {needed!r} (training needs train and val patients)", path)
    ehr = None
    if any(c in header for c in EHR_COLUMNS):
        ehr = {}
        for rec in records:
            pid = rec["patient_id"].strip()
            ehr.setdefault(pid, {c: (rec.get(c) or "").strip() or None for c in EHR_COLUMNS})
    return DiagnosisManifest(path, _sha256(path), list(label_keys), rows, ehr)


def is_simulated_cohort(manifest: str | os.PathLike) -> Optional[bool]:
    """``True`` when the manifest sits in a cohort written by ``orthodiffusion simulate cohort`` or ``simulate
    pool-cohort`` (its README.md starts with their title), else ``None`` (unknown: the data may or may not be
    real)."""
    readme = Path(manifest).parent / "README.md"
    try:
        first = readme.read_text(encoding="utf-8").splitlines()[0].strip() if readme.is_file() else ""
    except (OSError, UnicodeDecodeError, IndexError):
        return None
    return True if first == SIMULATED_COHORT_TITLE else None


def series_weights(rows: Sequence[SeriesRow]) -> np.ndarray:
    """``(N,)`` weights ``1 / (series of that patient in ``rows``)``: every patient weighs 1 in a per-plane set."""
    counts: Dict[str, int] = {}
    for r in rows:
        counts[r.patient_id] = counts.get(r.patient_id, 0) + 1
    return np.array([1.0 / counts[r.patient_id] for r in rows], dtype=np.float32)


def fixed_noise_tap_set(backbone: DiffusionUNet, schedule: CosineSchedule, x0: torch.Tensor, timestep: int,
                        blocks: Sequence[str], noise_seed: int, series_ids: Sequence[str]) -> Dict[str, torch.Tensor]:
    """Taps ``{block: (B, C, D', H', W')}`` of clean volumes ``x0`` ``(B, 1, D, H, W)`` noised at ``timestep`` with
    each series' fixed noise draw (``series_noise((1, D, H, W), noise_seed, series_id)``); one encoder pass, no
    gradients."""
    if x0.shape[0] != len(series_ids):
        raise ValueError(f"{x0.shape[0]} volumes for {len(series_ids)} series ids")
    noise = torch.stack([series_noise(tuple(x0.shape[1:]), noise_seed, sid) for sid in series_ids]).to(x0)
    t = schedule.as_timesteps(int(timestep), x0.shape[0], x0.device)
    with torch.no_grad():
        return backbone.encode(schedule.q_sample(x0, t, noise), t, tuple(blocks))


def fixed_noise_taps(backbone: DiffusionUNet, schedule: CosineSchedule, x0: torch.Tensor, timestep: int, block: str,
                     noise_seed: int, series_ids: Sequence[str]) -> torch.Tensor:
    """The ``block`` tap of :func:`fixed_noise_tap_set`: ``(B, C, D', H', W')``."""
    return fixed_noise_tap_set(backbone, schedule, x0, timestep, (block,), noise_seed, series_ids)[block]
