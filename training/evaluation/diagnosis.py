"""``orthodiffusion evaluate``: metrics tables and figures from prediction files and a manifest.

Inputs (CSV):

* predictions: one row per prediction, ``patient_id`` and one probability column per label key of the anatomy
  (e.g. ``acl_injury``); several rows of a patient (multi-scan combinations) are averaged. Extra columns (such as
  MPAE ``<label>__<plane>`` weights) are ignored.
* the training-data manifest (docs/train-your-own.md): one row per series with ``patient_id``, ``split``, one 0/1
  column per label and optionally ``center`` and ``field_strength`` (used for subgroup tables). A patient's label
  values must agree across its rows.

Outputs in ``--out``: ``per_label.csv/.md`` (AUROC, AP with patient-level bootstrap 95% CIs), ``multilabel.csv/.md``
(CP/CR/CF1/OP/OR/OF1 at 0.5 and, with validation predictions, at per-label thresholds chosen on validation),
``subgroups.csv/.md`` (by center and field strength, when present), ``comparison.csv/.md`` (paired permutation test
against each ``--baseline``), ``roc.png``, ``summary.json``.

Replicates (training recipes run N times, the i-th run of each from the same seed): give ``--predictions`` N files
and every ``--baseline`` N files, in seed order. The tables above then describe the first run of each, and
``replicates.csv/.md`` compare the recipes across runs: each run's macro AUROC, the paired permutation p of every
pair of i-th runs, and the run-level tests (paired t-test, exact sign flip over the 2^N sign patterns) of the
per-seed differences, whose p-values include the spread between training runs.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from OrthoDiffusionLib.errors import InputError
from OrthoDiffusionLib.labels import diagnosis_labels

from ..tables import parse_float, read_csv, require_columns
from . import metrics as M

__all__ = ["PatientTable", "read_manifest_labels", "read_predictions", "baseline_names", "evaluate_predictions",
           "replicate_comparisons"]

PathOrRuns = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


@dataclass
class PatientTable:
    """Per-patient arrays: ``patient_ids`` (P,), ``values`` (P, K), ``attributes`` name -> (P,) strings."""

    patient_ids: List[str]
    values: np.ndarray
    attributes: Dict[str, List[str]]

    def select(self, ids: Sequence[str]) -> "PatientTable":
        pos = {p: i for i, p in enumerate(self.patient_ids)}
        idx = [pos[p] for p in ids]
        return PatientTable(list(ids), self.values[idx], {k: [v[i] for i in idx] for k, v in self.attributes.items()})


def read_manifest_labels(path: str | os.PathLike, label_keys: Sequence[str], split: Optional[str] = None
                         ) -> PatientTable:
    """Per-patient 0/1 labels (and ``center``/``field_strength`` if present) from a manifest, optionally one split."""
    path = Path(path)
    header, rows = read_csv(path)
    require_columns(header, ["patient_id", *label_keys] + (["split"] if split else []), path)
    attrs = [a for a in ("center", "field_strength") if a in header]
    labels: Dict[str, Tuple[Tuple[float, ...], Dict[str, str]]] = {}
    for line, r in enumerate(rows, start=2):
        if split and r["split"].strip() != split:
            continue
        pid = r["patient_id"].strip()
        y = tuple(parse_float(r[k], path, line, k) for k in label_keys)
        if any(v not in (0.0, 1.0) for v in y):
            raise InputError(f"line {line}: label values must be 0 or 1", path)
        if pid in labels and labels[pid][0] != y:
            raise InputError(f"line {line}: patient {pid} has labels that differ between its rows", path)
        labels.setdefault(pid, (y, {a: r[a].strip() for a in attrs}))
    if not labels:
        raise InputError(f"no patients{' in split ' + repr(split) if split else ''}", path)
    ids = list(labels)
    return PatientTable(ids, np.array([labels[p][0] for p in ids]), {a: [labels[p][1][a] for p in ids] for a in attrs})


def read_predictions(path: str | os.PathLike, label_keys: Sequence[str]) -> PatientTable:
    """Per-patient mean probabilities ``(P, K)`` from a predictions CSV (see module doc)."""
    from ..diagnosis.multiscan import aggregate_by_patient

    path = Path(path)
    header, rows = read_csv(path)
    require_columns(header, ["patient_id", *label_keys], path)
    if not rows:
        raise InputError("no predictions", path)
    probs = np.empty((len(rows), len(label_keys)))
    for i, r in enumerate(rows):
        for k, key in enumerate(label_keys):
            v = parse_float(r[key], path, i + 2, key)
            if not 0.0 <= v <= 1.0:
                raise InputError(f"line {i + 2}: {key}={v} is not a probability in [0, 1]", path)
            probs[i, k] = v
    ids, mean = aggregate_by_patient([r["patient_id"].strip() for r in rows], probs)
    return PatientTable(ids, mean, {})


def _aligned(pred: PatientTable, truth: PatientTable, pred_path: Path) -> Tuple[np.ndarray, PatientTable]:
    missing = [p for p in truth.patient_ids if p not in set(pred.patient_ids)]
    if missing:
        raise InputError(f"no prediction for {len(missing)} patient(s) of the evaluated split, e.g. {missing[0]}",
                         pred_path)
    return pred.select(truth.patient_ids).values, truth


def baseline_names(paths: Sequence[str | os.PathLike], evaluated: Optional[str | os.PathLike] = None) -> List[str]:
    """A name per baseline file for the comparison table: its stem (``predictions_test``), or ``folder/stem`` when
    stems repeat (the same file name in several run folders, or the evaluated file's name)."""
    stems = [Path(b).stem for b in paths]
    taken = stems + ([Path(evaluated).stem] if evaluated is not None else [])
    return [_folder_stem(b) if taken.count(s) > 1 else s for b, s in zip(paths, stems)]


def _folder_stem(path: str | os.PathLike) -> str:
    """``run_folder/stem`` of a predictions file: the name that tells same-named files of several runs apart."""
    return f"{Path(path).parent.name}/{Path(path).stem}"


def evaluate_predictions(predictions: PathOrRuns, manifest: str | os.PathLike, out_dir: str | os.PathLike,
                         anatomy: str = "knee", split: Optional[str] = "test",
                         val_predictions: Optional[str | os.PathLike] = None, val_split: str = "val",
                         baselines: Sequence[PathOrRuns] = (), threshold_method: str = "youden",
                         n_boot: int = 1000, n_perm: int = 1000, seed: int = 0, figures: bool = True,
                         labels: Optional[Sequence[str]] = None) -> Dict:
    """Write the evaluation tables/figures (module doc) and return the summary dict (also ``summary.json``).

    ``predictions`` and each baseline: one CSV, or the CSVs of N replicate runs (same N for all; the tables then
    describe the first run, ``replicates.*`` all of them). ``labels``: the label keys to evaluate (a model trained
    on its own label set); default: the anatomy's."""
    table = {d.key: d.name for d in diagnosis_labels(anatomy)}
    keys = list(labels) if labels else list(table)
    names = [table.get(k, k.replace("_", " ")) for k in keys]
    truth = read_manifest_labels(manifest, keys, split)
    runs = _replicate_runs(predictions, baselines)
    pred_path = runs[0][0]
    p, truth = _aligned(read_predictions(pred_path, keys), truth, pred_path)
    y = truth.values
    # read and check every input before writing anything (no partial outputs on bad input)
    val = None
    if val_predictions is not None:
        vtruth = read_manifest_labels(manifest, keys, val_split)
        vp, vtruth = _aligned(read_predictions(val_predictions, keys), vtruth, Path(val_predictions))
        val = (vtruth.values, vp)
    run_probs = [[p] + [_aligned(read_predictions(f, keys), truth, f)[0] for f in runs[0][1:]]]
    run_probs += [[_aligned(read_predictions(f, keys), truth, f)[0] for f in files] for files in runs[1:]]
    baseline_labels = baseline_names([b[0] for b in runs[1:]], pred_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    per_label = M.per_label_rows(y, p, names, n_boot=n_boot, seed=seed)
    M.write_csv(per_label, out / "per_label.csv")
    M.write_markdown(per_label, out / "per_label.md", title=f"Per-label AUROC and AP ({split or 'all'} split, "
                                                            f"95% patient-bootstrap CI)")

    thresholds: Dict[str, object] = {"0.5": 0.5}
    warnings_list: List[str] = []
    if val is not None:
        from ..split_checks import warn_if_small

        warnings_list = warn_if_small(val[0], keys, f"the per-label thresholds chosen on it ({threshold_method})",
                                      split=val_split, who="evaluate")
        thresholds[f"{threshold_method} (val)"] = M.choose_thresholds(val[0], val[1], threshold_method)
    ml = M.multilabel_rows(y, p, thresholds)
    M.write_csv(ml, out / "multilabel.csv")
    M.write_markdown(ml, out / "multilabel.md", title="Multi-label metrics")

    groups = {a: v for a, v in truth.attributes.items() if any(v)}
    if groups:
        sub = M.subgroup_rows(y, p, groups, keys)
        M.write_csv(sub, out / "subgroups.csv")
        M.write_markdown(sub, out / "subgroups.md", title="Subgroups")

    # pair_tests[b][i]: the evaluated model's i-th run against baseline b's i-th run
    pair_tests = [[M.paired_permutation_test(y, pa, pb, n_perm=n_perm, seed=seed) for pa, pb in zip(run_probs[0], arm)]
                  for arm in run_probs[1:]]
    comparisons = [{"baseline": name, "macro_auroc_model": tests[0]["metric_a"],
                    "macro_auroc_baseline": tests[0]["metric_b"], "difference": tests[0]["difference"],
                    "p_value": tests[0]["p_value"], "n_perm": n_perm}
                   for name, tests in zip(baseline_labels, pair_tests)]
    if comparisons:
        M.write_csv(comparisons, out / "comparison.csv")
        M.write_markdown(comparisons, out / "comparison.md", title="Paired permutation test (macro AUROC)")

    replicate_rows: List[Dict] = []
    if len(runs[0]) > 1 and pair_tests:
        replicate_rows = replicate_comparisons(_folder_stem(pred_path), baseline_labels, pair_tests)
        M.write_csv(replicate_rows, out / "replicates.csv")
        M.write_markdown(replicate_rows, out / "replicates.md",
                         title=f"Replicates: the evaluated recipe against each baseline over {len(runs[0])} runs "
                               "(macro AUROC per run; run-level paired t-test and exact sign-flip test)")

    if figures:
        from .plots import plot_roc_curves

        plot_roc_curves(y, p, names, out / "roc.png")

    summary = {"anatomy": anatomy, "split": split, "patients": len(truth.patient_ids),
               "macro_auroc": per_label[-1]["auroc"],
               "macro_auroc_ci": [per_label[-1]["auroc_lo"], per_label[-1]["auroc_hi"]],
               "per_label_auroc": {r["label"]: r["auroc"] for r in per_label[:-1]},
               "multilabel": {r["threshold"]: {k: v for k, v in r.items() if k != "threshold"} for r in ml},
               "comparisons": comparisons, "replicates": replicate_rows, "labels": keys, "warnings": warnings_list}
    if val is not None:
        summary["thresholds"] = dict(zip(keys, map(float, thresholds[f"{threshold_method} (val)"])))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n", encoding="utf-8")
    return summary


def replicate_comparisons(evaluated: str, baselines: Sequence[str], pair_tests: Sequence[Sequence[Dict]]
                          ) -> List[Dict]:
    """The evaluated recipe against each baseline over paired replicate runs.

    ``pair_tests[b][i]``: :func:`~.metrics.paired_permutation_test` of the evaluated model's i-th run against
    baseline ``b``'s i-th run (the i-th runs of all from the same seed). One row per baseline: each run's macro
    AUROC, the paired permutation p of the i-th runs, and :func:`~.metrics.replicate_test` of the per-run macro
    AUROCs.
    """
    rows = []
    for name, tests in zip(baselines, pair_tests):
        row: Dict = {"first": evaluated, "other": name}
        for i, t in enumerate(tests):
            row.update({f"first_run{i + 1}": t["metric_a"], f"other_run{i + 1}": t["metric_b"],
                        f"p_run{i + 1}": t["p_value"]})
        rows.append({**row, **M.replicate_test([t["metric_a"] for t in tests], [t["metric_b"] for t in tests])})
    return rows


def _replicate_runs(predictions: PathOrRuns, baselines: Sequence[PathOrRuns]) -> List[List[Path]]:
    """[[evaluated run files], [baseline 1 run files], ...], every list as long as the first."""
    def files(x: PathOrRuns) -> List[Path]:
        return [Path(x)] if isinstance(x, (str, os.PathLike)) else [Path(f) for f in x]

    runs = [files(predictions)] + [files(b) for b in baselines]
    n = len(runs[0])
    if n == 0:
        raise InputError("no predictions file given")
    for r in runs[1:]:
        if len(r) != n:
            raise InputError(f"{len(r)} baseline predictions files where the evaluated model has {n} replicate "
                             "runs: give every --baseline one file per run, in the same seed order", r[0])
    return runs
