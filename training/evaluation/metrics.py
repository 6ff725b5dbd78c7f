"""Multi-label classification metrics (numpy only at runtime).

Conventions: ``y_true`` and ``y_prob`` are ``(N, K)`` arrays (N exams or patients, K labels; a 1-D array is one
label); labels are 0/1. A sample is predicted positive when ``prob >= threshold``.

* AUROC / AP per label, computed as scikit-learn does: AUROC is the area under the ROC curve through all distinct
  score thresholds (ties count half, i.e. the Mann-Whitney U statistic with mid-ranks); AP is
  ``sum_n (R_n - R_{n-1}) P_n`` over distinct thresholds in decreasing order (no interpolation). A label with only
  one class gives NaN (excluded from macro averages).
* CP/CR/CF1 and OP/OR/OF1 as in the multi-label literature (e.g. ML-GCN): with per-label counts TP_k, FP_k, FN_k,
  ``CP = mean_k TP_k / (TP_k + FP_k)``, ``CR = mean_k TP_k / (TP_k + FN_k)``, ``CF1 = 2 CP CR / (CP + CR)``;
  ``OP = sum TP / sum (TP + FP)``, ``OR = sum TP / sum (TP + FN)``, ``OF1 = 2 OP OR / (OP + OR)``. A ratio with a
  zero denominator counts as 0 (a label never predicted positive has precision 0).
* Thresholds: 0.5, or per label chosen on validation by :func:`choose_thresholds`: ``"youden"`` maximises
  ``TPR - FPR`` (Youden's J), ``"f1"`` maximises the label's F1; candidates are the distinct validation scores,
  ties broken towards the higher threshold; a label with one class in validation keeps 0.5.
* Bootstrap CIs resample *patients* with replacement (all rows of a drawn patient come along) and report the
  2.5th/97.5th percentiles (percentile method) of the replicates where the metric is defined.
* The paired permutation test swaps the two models' predictions per patient with probability 1/2 and compares
  ``|metric(A) - metric(B)|`` with the observed one (two-sided, ``p = (1 + #{|d*| >= |d|}) / (1 + n)``).
* The replicate test compares two *training recipes*, not two models: each was trained N times, the i-th run of
  both with the same seed (same patients, order, augmentation). It works on the N per-run scores: a paired t-test
  and the exact sign-flip test over all 2^N sign patterns of the per-seed differences (two-sided). Unlike the
  paired permutation test of one pair of runs, its p-value includes the spread between training runs.
"""
from __future__ import annotations

import csv
import math
import os
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "roc_curve",
    "roc_auc",
    "average_precision",
    "per_label_auroc",
    "per_label_ap",
    "macro_auroc",
    "multilabel_counts",
    "multilabel_prf",
    "choose_thresholds",
    "bootstrap_ci",
    "paired_permutation_test",
    "replicate_test",
    "per_label_rows",
    "multilabel_rows",
    "subgroup_rows",
    "write_csv",
    "markdown_table",
    "write_markdown",
]


def _as_2d(y_true, y_prob) -> Tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_prob, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if p.ndim == 1:
        p = p[:, None]
    if y.shape != p.shape:
        raise ValueError(f"y_true {y.shape} and y_prob {p.shape} differ in shape")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("y_true must hold only 0 and 1")
    return y, p


def _distinct_threshold_counts(y: np.ndarray, s: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (TP, FP) at each distinct score, scores in decreasing order: ``(tps, fps, thresholds)``."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_group = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tps = np.cumsum(y)[last_of_group]
    fps = (last_of_group + 1) - tps
    return tps, fps, s[last_of_group]


def roc_curve(y_true, y_score) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` for one label, starting at (0, 0) with threshold ``+inf``."""
    y, s = np.asarray(y_true, dtype=np.float64).ravel(), np.asarray(y_score, dtype=np.float64).ravel()
    tps, fps, thr = _distinct_threshold_counts(y, s)
    tps, fps, thr = np.r_[0.0, tps], np.r_[0.0, fps], np.r_[np.inf, thr]
    with np.errstate(invalid="ignore", divide="ignore"):
        return fps / fps[-1], tps / tps[-1], thr


def roc_auc(y_true, y_score) -> float:
    """AUROC of one label (NaN when only one class is present)."""
    fpr, tpr, _ = roc_curve(y_true, y_score)
    if not (np.isfinite(fpr[-1]) and np.isfinite(tpr[-1])):
        return float("nan")
    return float(np.trapezoid(tpr, fpr) if hasattr(np, "trapezoid") else np.trapz(tpr, fpr))


def average_precision(y_true, y_score) -> float:
    """AP of one label, step-wise as scikit-learn (NaN when there is no positive)."""
    y, s = np.asarray(y_true, dtype=np.float64).ravel(), np.asarray(y_score, dtype=np.float64).ravel()
    if y.sum() == 0:
        return float("nan")
    tps, fps, _ = _distinct_threshold_counts(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def per_label_auroc(y_true, y_prob) -> np.ndarray:
    """``(K,)`` AUROC per label."""
    y, p = _as_2d(y_true, y_prob)
    return np.array([roc_auc(y[:, k], p[:, k]) for k in range(y.shape[1])])


def per_label_ap(y_true, y_prob) -> np.ndarray:
    """``(K,)`` AP per label."""
    y, p = _as_2d(y_true, y_prob)
    return np.array([average_precision(y[:, k], p[:, k]) for k in range(y.shape[1])])


def macro_auroc(y_true, y_prob) -> float:
    """Mean AUROC over the labels where it is defined (NaN if none)."""
    a = per_label_auroc(y_true, y_prob)
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def _thresholds_array(thresholds, k: int) -> np.ndarray:
    t = np.asarray(thresholds, dtype=np.float64)
    return np.full(k, float(t)) if t.ndim == 0 else t.reshape(k)


def multilabel_counts(y_true, y_prob, thresholds=0.5) -> Dict[str, np.ndarray]:
    """Per-label ``tp``, ``fp``, ``fn``, ``tn`` ``(K,)`` at ``thresholds`` (scalar or ``(K,)``)."""
    y, p = _as_2d(y_true, y_prob)
    pred = p >= _thresholds_array(thresholds, y.shape[1])[None, :]
    pos = y == 1
    return {"tp": (pred & pos).sum(0), "fp": (pred & ~pos).sum(0), "fn": (~pred & pos).sum(0),
            "tn": (~pred & ~pos).sum(0)}


def _ratio(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def _f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def multilabel_prf(y_true, y_prob, thresholds=0.5) -> Dict[str, float]:
    """``{"CP", "CR", "CF1", "OP", "OR", "OF1"}`` (fractions in [0, 1]) at ``thresholds``."""
    c = multilabel_counts(y_true, y_prob, thresholds)
    cp = float(_ratio(c["tp"], c["tp"] + c["fp"]).mean())
    cr = float(_ratio(c["tp"], c["tp"] + c["fn"]).mean())
    tp, fp, fn = c["tp"].sum(), c["fp"].sum(), c["fn"].sum()
    op, orr = float(_ratio(tp, tp + fp)), float(_ratio(tp, tp + fn))
    return {"CP": cp, "CR": cr, "CF1": _f1(cp, cr), "OP": op, "OR": orr, "OF1": _f1(op, orr)}


def choose_thresholds(y_true, y_prob, method: str = "youden") -> np.ndarray:
    """Per-label thresholds ``(K,)`` chosen on validation (``"youden"`` or ``"f1"``; see module doc)."""
    if method not in ("youden", "f1"):
        raise ValueError(f"unknown threshold method {method!r}; use 'youden' or 'f1'")
    y, p = _as_2d(y_true, y_prob)
    out = np.full(y.shape[1], 0.5)
    for k in range(y.shape[1]):
        n_pos = y[:, k].sum()
        n_neg = y.shape[0] - n_pos
        if n_pos == 0 or n_neg == 0:
            continue
        tps, fps, thr = _distinct_threshold_counts(y[:, k], p[:, k])
        if method == "youden":
            score = tps / n_pos - fps / n_neg
        else:
            score = 2 * tps / (tps + fps + n_pos)  # F1 = 2TP / (2TP + FP + FN)
        out[k] = thr[int(np.argmax(score))]  # first max = highest threshold
    return out


def _patient_groups(n: int, patient_ids: Optional[Sequence]) -> List[np.ndarray]:
    if patient_ids is None:
        return [np.array([i]) for i in range(n)]
    ids = np.asarray(patient_ids)
    if ids.shape[0] != n:
        raise ValueError(f"{ids.shape[0]} patient ids for {n} rows")
    _, inverse = np.unique(ids, return_inverse=True)
    order = np.argsort(inverse, kind="mergesort")
    splits = np.nonzero(np.diff(inverse[order]))[0] + 1
    return np.split(order, splits)


def bootstrap_ci(metric: Callable[[np.ndarray, np.ndarray], Any], y_true, y_prob,
                 patient_ids: Optional[Sequence] = None, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> Dict[str, Any]:
    """Patient-level bootstrap of ``metric(y_true, y_prob)`` (a float or an array, e.g. per-label AUROC).

    Returns ``{"value", "lower", "upper", "n_valid"}`` (arrays shaped like the metric; ``n_valid`` counts the
    replicates where the metric was finite).
    """
    y, p = _as_2d(y_true, y_prob)
    groups = _patient_groups(y.shape[0], patient_ids)
    rng = np.random.default_rng(seed)
    value = np.asarray(metric(y, p), dtype=np.float64)
    reps = np.empty((n_boot,) + value.shape)
    for b in range(n_boot):
        pick = rng.integers(0, len(groups), size=len(groups))
        idx = np.concatenate([groups[i] for i in pick])
        with np.errstate(invalid="ignore", divide="ignore"):
            reps[b] = metric(y[idx], p[idx])
    finite = np.isfinite(reps)
    with warnings.catch_warnings():  # all-NaN slices (a label never defined) give NaN bounds
        warnings.simplefilter("ignore", RuntimeWarning)
        lower = np.nanpercentile(reps, 100 * alpha / 2, axis=0)
        upper = np.nanpercentile(reps, 100 * (1 - alpha / 2), axis=0)

    def out(a):
        return float(a) if np.ndim(a) == 0 else a

    return {"value": out(value), "lower": out(lower), "upper": out(upper), "n_valid": out(finite.sum(axis=0))}


def paired_permutation_test(y_true, prob_a, prob_b, patient_ids: Optional[Sequence] = None,
                            metric: Callable[[np.ndarray, np.ndarray], float] = macro_auroc, n_perm: int = 1000,
                            seed: int = 0) -> Dict[str, float]:
    """Two-sided paired permutation test of ``metric(A) - metric(B)`` on the same rows/patients.

    Returns ``{"metric_a", "metric_b", "difference", "p_value", "n_perm"}``.
    """
    y, pa = _as_2d(y_true, prob_a)
    _, pb = _as_2d(y_true, prob_b)
    groups = _patient_groups(y.shape[0], patient_ids)
    row_group = np.empty(y.shape[0], dtype=np.int64)
    for g, rows in enumerate(groups):
        row_group[rows] = g
    ma, mb = metric(y, pa), metric(y, pb)
    observed = ma - mb
    rng = np.random.default_rng(seed)
    exceed = 0
    tol = 1e-12 * max(1.0, abs(observed))
    for _ in range(n_perm):
        swap = rng.random(len(groups)) < 0.5
        rows = swap[row_group][:, None]
        a, b = np.where(rows, pb, pa), np.where(rows, pa, pb)
        if abs(metric(y, a) - metric(y, b)) >= abs(observed) - tol:
            exceed += 1
    return {"metric_a": float(ma), "metric_b": float(mb), "difference": float(observed),
            "p_value": (1 + exceed) / (1 + n_perm), "n_perm": n_perm}


def replicate_test(first: Sequence[float], other: Sequence[float]) -> Dict[str, float]:
    """Run-level comparison of two recipes from N paired replicates (the i-th score of each from the same seed).

    Returns ``{"n", "mean_first", "mean_other", "difference", "sd_difference", "first_better", "p_t_test",
    "p_sign_flip"}``: the mean per-seed difference (first - other), its sample sd, the seeds where first scored
    higher, the two-sided paired t-test p (NaN with fewer than 2 seeds or no spread) and the exact two-sided
    sign-flip p (smallest possible value ``2 / 2^N``).
    """
    a, b = np.asarray(first, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"replicate_test needs two equal-length lists of scores, got {a.shape} and {b.shape}")
    if a.size > 20:
        raise ValueError(f"{a.size} replicates: the exact sign-flip test enumerates 2^N patterns (N <= 20)")
    d = a - b
    signs = 1 - 2 * ((np.arange(2 ** d.size)[:, None] >> np.arange(d.size)) & 1)  # (2^N, N) of +-1
    flipped = np.abs((signs * d).mean(axis=1))
    p_flip = float(np.mean(flipped >= abs(d.mean()) - 1e-12 * max(1.0, abs(d.mean()))))
    sd = float(d.std(ddof=1)) if d.size > 1 else math.nan
    p_t = math.nan
    if d.size > 1 and sd > 0:
        from scipy import stats

        p_t = float(stats.ttest_rel(a, b).pvalue)
    return {"n": int(d.size), "mean_first": float(a.mean()), "mean_other": float(b.mean()),
            "difference": float(d.mean()), "sd_difference": sd, "first_better": int((d > 0).sum()),
            "p_t_test": p_t, "p_sign_flip": p_flip}


def per_label_rows(y_true, y_prob, label_names: Sequence[str], patient_ids: Optional[Sequence] = None,
                   n_boot: int = 1000, seed: int = 0) -> List[Dict[str, Any]]:
    """One row per label plus a ``macro`` row: ``label, n_pos, n_neg, auroc, auroc_lo, auroc_hi, ap, ap_lo, ap_hi``
    (bootstrap 95% CIs; the macro row has macro AUROC and mean AP)."""
    y, p = _as_2d(y_true, y_prob)
    if len(label_names) != y.shape[1]:
        raise ValueError(f"{len(label_names)} label names for {y.shape[1]} labels")
    auc = bootstrap_ci(per_label_auroc, y, p, patient_ids, n_boot, seed)
    ap = bootstrap_ci(per_label_ap, y, p, patient_ids, n_boot, seed)
    rows = []
    for k, name in enumerate(label_names):
        rows.append({"label": name, "n_pos": int(y[:, k].sum()), "n_neg": int((1 - y[:, k]).sum()),
                     "auroc": float(auc["value"][k]), "auroc_lo": float(auc["lower"][k]),
                     "auroc_hi": float(auc["upper"][k]), "ap": float(ap["value"][k]),
                     "ap_lo": float(ap["lower"][k]), "ap_hi": float(ap["upper"][k])})

    def mean_ap(yy, pp):
        a = per_label_ap(yy, pp)
        return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")

    mauc = bootstrap_ci(macro_auroc, y, p, patient_ids, n_boot, seed)
    map_ = bootstrap_ci(mean_ap, y, p, patient_ids, n_boot, seed)
    rows.append({"label": "macro", "n_pos": int(y.sum()), "n_neg": int((1 - y).sum()),
                 "auroc": mauc["value"], "auroc_lo": mauc["lower"], "auroc_hi": mauc["upper"],
                 "ap": map_["value"], "ap_lo": map_["lower"], "ap_hi": map_["upper"]})
    return rows


def multilabel_rows(y_true, y_prob, thresholds: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """One row per named threshold setting (e.g. ``{"0.5": 0.5, "youden (val)": t_val}``):
    ``threshold, CP, CR, CF1, OP, OR, OF1``."""
    return [{"threshold": name, **multilabel_prf(y_true, y_prob, t)} for name, t in thresholds.items()]


def subgroup_rows(y_true, y_prob, groups: Mapping[str, Sequence], label_names: Sequence[str],
                  thresholds=0.5) -> List[Dict[str, Any]]:
    """Metrics per subgroup: for each grouping (e.g. ``{"center": centers, "field_strength": teslas}``, one value
    per row) and each of its values (sorted), a row ``subgroup, value, n, macro_auroc, auroc_<label>..., CP, CR,
    CF1, OP, OR, OF1``."""
    y, p = _as_2d(y_true, y_prob)
    t = _thresholds_array(thresholds, y.shape[1])
    rows = []
    for by, values in groups.items():
        values = np.asarray(values, dtype=object)
        if values.shape[0] != y.shape[0]:
            raise ValueError(f"grouping {by!r} has {values.shape[0]} values for {y.shape[0]} rows")
        for v in sorted(set(values.tolist()), key=str):
            m = values == v
            aucs = per_label_auroc(y[m], p[m])
            row: Dict[str, Any] = {"subgroup": by, "value": v, "n": int(m.sum()),
                                   "macro_auroc": float(np.nanmean(aucs)) if np.isfinite(aucs).any() else math.nan}
            row.update({f"auroc_{name}": float(a) for name, a in zip(label_names, aucs)})
            row.update(multilabel_prf(y[m], p[m], t))
            rows.append(row)
    return rows


def _columns(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    cols: List[str] = []
    for r in rows:
        for c in r:
            if c not in cols:
                cols.append(c)
    return cols


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Rows (dicts; columns = union of keys in first-seen order) to a CSV file (parent folders created)."""
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    cols = _columns(rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})


def _cell(v: Any, digits: int) -> str:
    if isinstance(v, (float, np.floating)):
        return "–" if not np.isfinite(v) else f"{float(v):.{digits}f}"
    return str(v).replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, Any]], digits: int = 3,
                   columns: Optional[Sequence[str]] = None) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (floats with ``digits`` decimals, NaN as an en dash)."""
    cols = list(columns) if columns is not None else _columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c, ""), digits) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, digits: int = 3,
                   title: Optional[str] = None) -> None:
    """:func:`markdown_table` to a file, optionally under a ``## title`` heading."""
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    text = (f"## {title}\n\n" if title else "") + markdown_table(rows, digits)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
