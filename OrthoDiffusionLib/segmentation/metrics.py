"""Segmentation metrics per knee structure: Dice and the 95% Hausdorff distance (mm), and mean +- sd tables.

Core dependencies only (numpy + SimpleITK). Arrays are numpy label maps of shape (D, H, W) with ``spacing`` given in the same axis order
(for a SimpleITK image ``img``: ``arr = GetArrayFromImage(img)``, ``spacing = img.GetSpacing()[::-1]``).

Conventions for empty structures (documented, used by the tables):

* Dice: ground truth and prediction both empty -> NaN (structure absent, left out of means); exactly one empty -> 0.
* HD95: ground truth or prediction empty -> NaN (no surface to measure from), left out of means. The number of
  cases a mean is taken over is reported next to it.

HD95 is surface based: a structure's surface is its voxels with a background 6-neighbour (the mask minus its
erosion by the 3D cross; voxels on the array border count as surface). For every surface voxel of one mask the
Euclidean distance (in mm, spacing-aware) to the nearest surface voxel of the other is computed with an exact EDT
(``sitk.SignedMaurerDistanceMap``);
HD95 = max(95th percentile of prediction->truth, 95th percentile of truth->prediction) (symmetric, linear
percentile interpolation). This is the definition of ``monai.metrics.compute_hausdorff_distance(percentile=95)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from OrthoDiffusionLib import labels


def dice_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice 2|P n G| / (|P| + |G|) of two boolean masks; NaN when both are empty."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {gt.shape}")
    denom = int(pred.sum()) + int(gt.sum())
    if denom == 0:
        return float("nan")
    return 2.0 * float(np.logical_and(pred, gt).sum()) / denom


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boolean: voxels of ``mask`` with at least one background face neighbour (outside the array = background),
    i.e. the mask minus its erosion by the cross-shaped structuring element."""
    mask = np.asarray(mask, dtype=bool)
    p = np.pad(mask, 1, constant_values=False)
    inner = np.ones_like(mask)
    core = [slice(1, -1)] * mask.ndim
    for ax in range(mask.ndim):
        for shift in (-1, 1):
            sl = list(core)
            sl[ax] = slice(1 + shift, p.shape[ax] - 1 + shift)
            inner &= p[tuple(sl)]
    return mask & ~inner


def _distance_to(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Exact Euclidean distance (mm) from every voxel centre to the nearest voxel centre of the 3-D ``mask``."""
    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.SetSpacing(tuple(float(s) for s in spacing)[::-1])
    d = sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return np.abs(sitk.GetArrayFromImage(d)).astype(np.float64) * ~mask


def _crop_box(a: np.ndarray, b: np.ndarray) -> Tuple[slice, ...]:
    """Bounding box of a | b, padded by one voxel (distances do not depend on the empty space around)."""
    coords = np.argwhere(a | b)
    lo = np.maximum(coords.min(0) - 1, 0)
    hi = np.minimum(coords.max(0) + 2, a.shape)
    return tuple(slice(int(l), int(h)) for l, h in zip(lo, hi))


def surface_distances(from_mask: np.ndarray, to_mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distances (mm) from every surface voxel of ``from_mask`` to the nearest surface voxel of ``to_mask``.

    Both masks must be non-empty. Returns a 1-D float64 array (one entry per surface voxel of ``from_mask``).
    """
    a = np.asarray(from_mask, dtype=bool)
    b = np.asarray(to_mask, dtype=bool)
    if not a.any() or not b.any():
        raise ValueError("surface distances need two non-empty masks")
    # Border voxels are surface voxels, so cropping must not create new borders: crop only with one voxel of margin
    # where the mask does not touch the array edge (the margin keeps erosion identical).
    box = _crop_box(a, b)
    touches = [s.start == 0 or s.stop == n for s, n in zip(box, a.shape)]
    if any(touches):
        box = tuple(slice(0, n) if t else s for s, n, t in zip(box, a.shape, touches))
    a, b = a[box], b[box]
    sa, sb = surface_voxels(a), surface_voxels(b)
    return _distance_to(sb, spacing)[sa]


def hausdorff95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """Symmetric 95% Hausdorff distance (mm) between two boolean masks; NaN if either is empty."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {gt.shape}")
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match {pred.ndim}-D masks")
    if not pred.any() or not gt.any():
        return float("nan")
    d_pg = surface_distances(pred, gt, spacing)
    d_gp = surface_distances(gt, pred, spacing)
    return float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))


def _structures(structures: Optional[Sequence[labels.Structure]], plane: Optional[str]) -> List[labels.Structure]:
    return list(labels.knee_structures(plane) if structures is None else structures)


def dice_per_structure(pred: np.ndarray, gt: np.ndarray, plane: Optional[str] = None,
                       structures: Optional[Sequence[labels.Structure]] = None) -> Dict[str, float]:
    """Dice per structure key (label values from the label table of ``plane``, or ``structures``)."""
    return {s.key: dice_score(pred == s.value, gt == s.value) for s in _structures(structures, plane)}


def hd95_per_structure(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], plane: Optional[str] = None,
                       structures: Optional[Sequence[labels.Structure]] = None) -> Dict[str, float]:
    """HD95 in mm per structure key; ``spacing`` in the array's axis order."""
    return {s.key: hausdorff95(pred == s.value, gt == s.value, spacing) for s in _structures(structures, plane)}


def evaluate_case(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], plane: Optional[str] = None,
                  structures: Optional[Sequence[labels.Structure]] = None) -> Dict[str, Dict[str, float]]:
    """``{"dice": {key: value}, "hd95": {key: mm}}`` for one case."""
    return {"dice": dice_per_structure(pred, gt, plane, structures),
            "hd95": hd95_per_structure(pred, gt, spacing, plane, structures)}


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (ddof=1; 0 for one case) over the non-NaN cases, and their count."""
    mean: float
    sd: float
    n: int

    def format(self, scale: float = 1.0, digits: int = 1) -> str:
        if self.n == 0:
            return "n/a"
        return f"{self.mean * scale:.{digits}f} ± {self.sd * scale:.{digits}f}"


def summarize(values: Iterable[float]) -> Summary:
    """Summary of a list of per-case values, NaNs left out."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(float(x))], dtype=np.float64)
    if v.size == 0:
        return Summary(float("nan"), float("nan"), 0)
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return Summary(float(v.mean()), sd, int(v.size))


def summarize_cases(cases: Sequence[Mapping[str, float]]) -> Dict[str, Summary]:
    """Per-key summary of per-case dicts (key -> value), plus ``"mean"``: the per-case mean over keys."""
    keys: List[str] = []
    for c in cases:
        keys.extend(k for k in c if k not in keys)
    out = {k: summarize(c.get(k, float("nan")) for c in cases) for k in keys}
    per_case_means = []
    for c in cases:
        vals = [float(c[k]) for k in keys if k in c and not math.isnan(float(c[k]))]
        per_case_means.append(float(np.mean(vals)) if vals else float("nan"))
    out["mean"] = summarize(per_case_means)
    return out


def format_table(columns: Mapping[str, Mapping[str, Summary]], plane: Optional[str] = None,
                 structures: Optional[Sequence[labels.Structure]] = None, scale: float = 1.0,
                 digits: int = 1, title: str = "Structure") -> str:
    """Markdown table: one row per structure (+ a final ``Mean`` row), one column per method, cells
    ``mean ± sd`` (times ``scale``, e.g. 100 for Dice in %), like Table 2 of the paper."""
    structs = _structures(structures, plane)
    names = list(columns)
    lines = ["| " + " | ".join([title, *names]) + " |", "|" + "---|" * (len(names) + 1)]
    for s in structs:
        cells = [columns[m][s.key].format(scale, digits) if s.key in columns[m] else "n/a" for m in names]
        lines.append("| " + " | ".join([s.name, *cells]) + " |")
    cells = [columns[m]["mean"].format(scale, digits) if "mean" in columns[m] else "n/a" for m in names]
    lines.append("| " + " | ".join(["Mean", *cells]) + " |")
    return "\n".join(lines)
