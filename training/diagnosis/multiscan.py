"""Multi-scan patients: cross-plane combinations, their training weights, patient-level aggregation, patient folds.

A patient may have several series per plane. Fusion needs one series per plane, so every cross-plane combination
is a fused sample (a patient with 2 sagittal, 1 coronal and 3 axial series gives 2 x 1 x 3 = 6); each gets training
weight ``1 / (number of combinations of that patient)`` so every patient weighs 1 in total (paper, Appendix D). At
evaluation the probabilities of a patient's combinations are averaged (:func:`aggregate_by_patient`).

Manifest rows are mappings with at least ``patient_id``, ``plane`` (``sagittal``/``coronal``/``axial``, any case)
and ``series_path``; other keys are carried along untouched.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from OrthoDiffusionLib.labels import PLANES

__all__ = [
    "PlaneCombination",
    "CombinationSet",
    "enumerate_combinations",
    "aggregate_by_patient",
    "patient_folds",
    "nested_patient_subsets",
]


@dataclass(frozen=True)
class PlaneCombination:
    """One fused sample: ``series`` maps plane -> manifest row (absent planes missing); ``weight`` = 1 / n_comb."""

    patient_id: str
    series: Mapping[str, Mapping[str, Any]]
    weight: float

    def paths(self) -> Dict[str, str]:
        """``plane -> series_path``."""
        return {p: str(r["series_path"]) for p, r in self.series.items()}


@dataclass
class CombinationSet:
    """``combinations`` in patient order of first appearance (planes in ``PLANES`` order, series in manifest
    order); ``skipped`` maps a patient excluded for a missing plane to the missing planes."""

    combinations: List[PlaneCombination]
    skipped: Dict[str, Tuple[str, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.combinations)

    def patient_ids(self) -> List[str]:
        return [c.patient_id for c in self.combinations]

    def weights(self) -> np.ndarray:
        return np.array([c.weight for c in self.combinations], dtype=np.float64)


def enumerate_combinations(rows: Sequence[Mapping[str, Any]], planes: Sequence[str] = PLANES,
                           require_all_planes: bool = True) -> CombinationSet:
    """All cross-plane series combinations per patient.

    With ``require_all_planes`` (the paper), a patient lacking a plane is skipped and listed in ``skipped``;
    otherwise the product runs over the planes the patient has. Rows whose plane is not in ``planes`` are ignored.
    Raises ``ValueError`` for a row without ``patient_id``, ``plane`` or ``series_path``.
    """
    by_patient: Dict[str, Dict[str, List[Mapping[str, Any]]]] = {}
    for i, r in enumerate(rows):
        for key in ("patient_id", "plane", "series_path"):
            if r.get(key) in (None, ""):
                raise ValueError(f"manifest row {i} has no {key}")
        plane = str(r["plane"]).strip().lower()
        pid = str(r["patient_id"])
        series = by_patient.setdefault(pid, {})
        if plane in planes:
            series.setdefault(plane, []).append(r)
    combos: List[PlaneCombination] = []
    skipped: Dict[str, Tuple[str, ...]] = {}
    for pid, series in by_patient.items():
        missing = tuple(p for p in planes if p not in series)
        have = [p for p in planes if p in series]
        if (missing and require_all_planes) or not have:
            skipped[pid] = missing
            continue
        product = list(itertools.product(*[series[p] for p in have]))
        w = 1.0 / len(product)
        combos.extend(PlaneCombination(pid, dict(zip(have, choice)), w) for choice in product)
    return CombinationSet(combos, skipped)


def aggregate_by_patient(patient_ids: Sequence[Any], probabilities) -> Tuple[List[Any], np.ndarray]:
    """Mean probability over each patient's rows: ``(N,)`` ids + ``(N, K)`` probabilities ->
    (unique ids in order of first appearance, ``(P, K)``)."""
    p = np.asarray(probabilities, dtype=np.float64)
    ids = list(patient_ids)
    if len(ids) != p.shape[0]:
        raise ValueError(f"{len(ids)} patient ids for {p.shape[0]} rows")
    order: Dict[Any, int] = {}
    index = np.array([order.setdefault(pid, len(order)) for pid in ids], dtype=np.int64)
    sums = np.zeros((len(order),) + p.shape[1:])
    np.add.at(sums, index, p)
    counts = np.bincount(index, minlength=len(order)).reshape((-1,) + (1,) * (p.ndim - 1))
    return list(order), sums / counts


def patient_folds(patient_ids: Sequence[Any], n_folds: int = 5, seed: int = 0) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Patient-level K-fold split of rows: ``[(train_rows, held_out_rows), ...]`` (row indices; every row is held
    out exactly once and a patient's rows never straddle train and held-out). Used for MPAE's out-of-fold per-plane
    logits (5 folds)."""
    ids = np.asarray(list(patient_ids), dtype=object)
    unique = list(dict.fromkeys(ids.tolist()))
    if n_folds < 2 or n_folds > len(unique):
        raise ValueError(f"n_folds must be in [2, {len(unique)}] (number of patients), got {n_folds}")
    perm = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {unique[j]: f for f, chunk in enumerate(np.array_split(perm, n_folds)) for j in chunk}
    row_fold = np.array([fold_of[i] for i in ids.tolist()])
    return [(np.nonzero(row_fold != f)[0], np.nonzero(row_fold == f)[0]) for f in range(n_folds)]


def nested_patient_subsets(patient_ids: Sequence[Any], sizes: Sequence[int], seed: int = 0) -> Dict[int, List[Any]]:
    """Nested patient subsets for label-efficiency runs: ``{size: [patient ids]}`` where every smaller subset is
    contained in every larger one (prefixes of one seeded permutation of the unique patients). A size larger than
    the number of patients raises ``ValueError``; use the patient count itself for "all"."""
    unique = list(dict.fromkeys(patient_ids))
    bad = [n for n in sizes if not 1 <= int(n) <= len(unique)]
    if bad:
        raise ValueError(f"subset sizes {bad} outside [1, {len(unique)}] (number of patients)")
    perm = np.random.default_rng(seed).permutation(len(unique))
    ordered = [unique[i] for i in perm]
    return {int(n): ordered[: int(n)] for n in sorted(sizes)}
