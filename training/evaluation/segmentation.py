"""``orthodiffusion evaluate-segmentation``: Table 2-like comparison of segmentation runs, and plane fusion.

Inputs: finished run folders of ``train-segmentation`` and ``train-seg-baseline`` (their ``run.json`` metrics and
``metrics_<split>.csv`` per-case scores). Outputs in ``--out``:

* ``table.csv``: plane, method, run, metric (dice | hd95), structure (key | mean), mean, sd, n;
* ``table.md``: per plane a Dice (%) and an HD95 (mm) table, one column per run, mean ± sd (like the paper's
  Table 2), computed from the per-case CSVs (cases where a structure is absent are left out, see :mod:`OrthoDiffusionLib.segmentation.metrics`);
* ``paired.csv`` / ``paired.md``: per plane, the first run of that plane against each other run on the cases both
  scored: the mean over cases of the per-case mean Dice of each, their difference, on how many cases the first is
  better, and a two-sided paired permutation test (the two runs' scores swapped per patient, 10,000 draws);
* with ``replicates=N`` (the runs given arm by arm, N per arm, the i-th run of every arm trained with the same
  seed): ``paired.*`` compares the first arm's i-th run with every other arm's i-th run, and ``replicates.csv`` /
  ``replicates.md`` compare the arms across their runs (each run scored by its mean over the common cases of the
  per-case mean Dice): mean and sd over the runs, the per-seed differences and the run-level tests of
  :func:`~OrthoDiffusionLib.training.evaluation.metrics.replicate_test`, whose p-values include the spread
  between training runs that the per-pair permutation test leaves out;
* with one sagittal and one coronal run of the same manifest (or ``--fuse SAG_RUN COR_RUN``): ``fusion.csv`` /
  ``fusion.md`` and ``fusion_example_<patient>.nii.gz``. For every test patient with a labelled sagittal and a
  labelled coronal series, both runs predict class probabilities on their preprocessed grids; the fused labelmap
  (:func:`OrthoDiffusionLib.segmentation.io.fuse_plane_segmentations`: probabilities resampled linearly and averaged,
  each run's vote for a structure weighted by its validation Dice as in ``predict``, over
  the planes that cover a voxel and segment the class) is compared with each plane alone, on each plane's own
  preprocessed grid against that plane's ground truth, inside the region that both series cover (outside it the
  fused map is the single covering plane's prediction, so only the overlap can differ). The example file is the
  fused labelmap of the first test patient on a common isotropic grid (``common_reference_grid``).
"""
from __future__ import annotations

import csv
import math
import os
import threading
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from OrthoDiffusionLib import labels
from OrthoDiffusionLib.atomic import atomic_path
from OrthoDiffusionLib.device import resolve_device
from OrthoDiffusionLib.errors import CancelledError, InputError, MissingPathError
from OrthoDiffusionLib.progress import ProgressFn
from OrthoDiffusionLib.segmentation.metrics import Summary, evaluate_case, format_table, summarize_cases


PathLike = Union[str, os.PathLike]
METHOD_NAMES = {"bottleneck": "OrthoDiffusion FT", "skip": "OrthoDiffusion FT (skip head)", "unet3d": "3D U-Net",
                "unetr": "UNETR"}


def method_name(run: Mapping[str, Any]) -> str:
    """Column name of a run: the method, plus the training-patient count of a label-efficiency subset."""
    key = run["head"]["name"] if "head" in run else run["model"]["name"]
    name = METHOD_NAMES.get(key, key)
    if run["config"].get("train_patients") is not None:
        name += f" ({run['data']['train_patients']} pts)"
    return name


def read_case_scores(run_dir: Path, run: Mapping[str, Any], split: str) -> List[Dict[str, Dict[str, float]]]:
    """Per-case {"dice": {key: v}, "hd95": {key: mm}} from ``metrics_<split>.csv`` of a run (NaN for blanks)."""
    path = run_dir / f"metrics_{split}.csv"
    if not path.is_file():
        raise MissingPathError(f"the run has no {split} metrics", path)
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out.append({m: {k: float(row[f"{m}_{k}"]) if row.get(f"{m}_{k}") else math.nan
                            for k in run["structures"]} for m in ("dice", "hd95")})
    return out


def comparison_tables(runs: Sequence[Tuple[str, Path, Mapping[str, Any]]], split: str = "test"
                      ) -> Tuple[List[Dict[str, Any]], str]:
    """(CSV rows, Markdown) of per-structure Dice and HD95 (mean ± sd) for ``(name, folder, run.json)`` runs."""
    rows: List[Dict[str, Any]] = []
    md: List[str] = [f"Split: {split}. Dice in %, HD95 in mm; mean ± sd over cases (preprocessed grid)."]
    for plane in labels.PLANES:
        chosen = [(n, d, r) for n, d, r in runs if r["plane"] == plane]
        if not chosen:
            continue
        for metric, scale, digits, unit in (("dice", 100.0, 1, "Dice (%)"), ("hd95", 1.0, 2, "HD95 (mm)")):
            columns: Dict[str, Dict[str, Summary]] = {}
            for name, folder, run in chosen:
                summary = summarize_cases([c[metric] for c in read_case_scores(folder, run, split)])
                columns[name] = summary
                for key, s in summary.items():
                    rows.append({"plane": plane, "method": name, "run": os.fspath(folder), "metric": metric,
                                 "structure": key, "mean": s.mean, "sd": s.sd, "n": s.n})
            md += ["", f"### {plane.capitalize()}: {unit}", "",
                   format_table(columns, plane=plane, scale=scale, digits=digits)]
    return rows, "\n".join(md) + "\n"


def paired_comparisons(runs: Sequence[Tuple[str, Path, Mapping[str, Any]]], split: str = "test",
                       n_perm: int = 10000, seed: int = 0) -> Tuple[List[Dict[str, Any]], str]:
    """(CSV rows, Markdown): per plane, the first run against each other run on their common cases, by per-case
    mean Dice over the structures (see the module docstring)."""
    from .metrics import paired_permutation_test

    rows: List[Dict[str, Any]] = []
    md: List[str] = [f"Split: {split}. Per-case mean Dice (%) over the structures; paired permutation test "
                     f"({n_perm} draws, two-sided) of the difference of the means."]
    for plane in labels.PLANES:
        chosen = [(n, d, r) for n, d, r in runs if r["plane"] == plane]
        if len(chosen) < 2:
            continue
        ref_name, ref = chosen[0][0], _case_mean_dice(chosen[0][1], chosen[0][2], split)
        md += ["", f"### {plane.capitalize()}: {ref_name} against", "",
               "| run | cases | mean Dice, first | mean Dice, this | difference | first better on | p |",
               "|---|---|---|---|---|---|---|"]
        for name, folder, run in chosen[1:]:
            other = _case_mean_dice(folder, run, split)
            cases = sorted(set(ref) & set(other))
            if not cases:
                raise InputError(f"no {split} case in common with {chosen[0][1]}", folder)
            a = np.array([ref[c] for c in cases])[:, None]
            b = np.array([other[c] for c in cases])[:, None]
            test = paired_permutation_test(np.zeros_like(a), a, b, metric=lambda _y, p: float(np.mean(p)),
                                           n_perm=n_perm, seed=seed)
            row = {"plane": plane, "first": ref_name, "other": name, "cases": len(cases),
                   "mean_dice_first": test["metric_a"], "mean_dice_other": test["metric_b"],
                   "difference": test["difference"], "first_better": int((a > b).sum()), "p_value": test["p_value"]}
            rows.append(row)
            md.append(f"| {name} | {len(cases)} | {100 * row['mean_dice_first']:.1f} | "
                      f"{100 * row['mean_dice_other']:.1f} | {100 * row['difference']:+.1f} | "
                      f"{row['first_better']} of {len(cases)} | {row['p_value']:.4f} |")
    return rows, "\n".join(md) + "\n"


def replicate_comparisons(arms: Sequence[Tuple[str, Sequence[Tuple[Path, Mapping[str, Any]]]]], split: str = "test"
                          ) -> Tuple[List[Dict[str, Any]], str]:
    """(CSV rows, Markdown): the first arm against each other arm over paired replicates.

    ``arms``: ``(name, [(run folder, run.json), ...])``, the same number of runs per arm, the i-th of each arm
    trained with the same seed. Every run is scored by the mean, over the cases all runs share, of its per-case
    mean Dice; rows hold the per-run scores and the :func:`replicate_test` figures.
    """
    from .metrics import replicate_test

    per_run = [[_case_mean_dice(d, r, split) for d, r in runs] for _, runs in arms]
    cases = sorted(set.intersection(*[set(s) for arm in per_run for s in arm]))
    if not cases:
        raise InputError(f"the replicate runs share no {split} case", arms[0][1][0][0])
    scores = [[float(np.mean([s[c] for c in cases])) for s in arm] for arm in per_run]
    n = len(scores[0])
    md = [f"Split: {split}. {len(arms)} arms x {n} runs (the i-th run of every arm from the same seed); a run's "
          f"score is its mean Dice (%) over the {len(cases)} cases all runs share. Run-level tests of the "
          "per-seed differences: paired t-test and exact sign-flip test, two-sided.", "",
          "| arm | " + " | ".join(f"run {i + 1}" for i in range(n)) + " | mean | sd |",
          "|---|" + "---|" * (n + 2)]
    for (name, _), arm in zip(arms, scores):
        sd = f"{100 * np.std(arm, ddof=1):.1f}" if n > 1 else "-"
        md.append(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in arm) + f" | {100 * np.mean(arm):.1f} | {sd} |")
    md += ["", f"{arms[0][0]} against each other arm:", "",
           "| arm | difference (mean, sd) | first better in | p, t-test | p, sign flip |", "|---|---|---|---|---|"]
    rows: List[Dict[str, Any]] = []
    for (name, _), arm in zip(arms[1:], scores[1:]):
        test = replicate_test(scores[0], arm)
        rows.append({"first": arms[0][0], "other": name, "cases": len(cases),
                     **{f"first_run{i + 1}": v for i, v in enumerate(scores[0])},
                     **{f"other_run{i + 1}": v for i, v in enumerate(arm)}, **test})
        sd = "-" if math.isnan(test["sd_difference"]) else f"{100 * test['sd_difference']:.1f}"
        p_t = "-" if math.isnan(test["p_t_test"]) else f"{test['p_t_test']:.4f}"
        md.append(f"| {name} | {100 * test['difference']:+.1f} ({sd}) | {test['first_better']} of {n} | {p_t} | "
                  f"{test['p_sign_flip']:.4f} |")
    return rows, "\n".join(md) + "\n"


def _case_mean_dice(run_dir: Path, run: Mapping[str, Any], split: str) -> Dict[str, float]:
    """{case_id: mean Dice over the structures present} from ``metrics_<split>.csv``."""
    path = run_dir / f"metrics_{split}.csv"
    if not path.is_file():
        raise MissingPathError(f"the run has no {split} metrics", path)
    with open(path, newline="", encoding="utf-8") as f:
        scores = {row["case_id"]: [float(row[f"dice_{k}"]) for k in run["structures"] if row.get(f"dice_{k}")]
                  for row in csv.DictReader(f)}
    return {c: float(np.mean(v)) for c, v in scores.items() if v}


# ------------------------------------------------------------------------------------------------------ fusion
def _paired_cases(sag_run: Mapping[str, Any], cor_run: Mapping[str, Any], split: str):
    from ..segmentation.data import read_seg_cases, split_cases

    manifest = sag_run["provenance"]["manifest"]
    if cor_run["provenance"]["manifest"] != manifest:
        raise InputError("the sagittal and coronal runs were trained on different manifests; fusion needs the same "
                         "patients", cor_run["provenance"]["manifest"])
    by_plane = {p: {} for p in ("sagittal", "coronal")}
    for plane in by_plane:
        for c in split_cases(read_seg_cases(manifest, plane), split):
            by_plane[plane].setdefault(c.patient_id, c)  # first labelled series of the plane
    common = sorted(set(by_plane["sagittal"]) & set(by_plane["coronal"]))
    if not common:
        raise InputError(f"no {split} patient has both a labelled sagittal and coronal series", manifest)
    return [(by_plane["sagittal"][p], by_plane["coronal"][p]) for p in common]


def _plane_prediction(model, run: Mapping[str, Any], case, generator, device) -> Tuple[Any, List[Any], Any]:
    """(preprocessed reference grid, per-class probability images on it, ground-truth labels image on it)."""
    import SimpleITK as sitk
    import torch

    from OrthoDiffusionLib.io import read_series
    from OrthoDiffusionLib.inference.preprocess import model_grid, preprocess_series
    from OrthoDiffusionLib.segmentation.io import read_labelmap

    from ..segmentation.model import predict_probabilities

    pre = run["preprocessing"]
    pp = preprocess_series(read_series(case.series_path), slices=pre["slices"], size=pre["size"], **model_grid(pre))
    x = torch.from_numpy(pp.volume)[None, None].to(device)
    draws = int(run["config"]["eval"].get("noise_draws", 1))
    probs = predict_probabilities(model, x, run["plane"], generator=generator, draws=draws)[0].cpu().numpy()
    images = [pp.as_image(p.astype(np.float32)) for p in probs]
    gt = sitk.Resample(sitk.Cast(read_labelmap(case.seg_path), sitk.sitkUInt8), pp.reference, sitk.Transform(),
                       sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return pp.reference, images, gt


def _coverage(reference, other) -> np.ndarray:
    """Bool (z, y, x) on ``reference``: voxels inside the extent of the ``other`` grid."""
    import SimpleITK as sitk

    ones = sitk.Image(other.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(other)
    return sitk.GetArrayFromImage(sitk.Resample(ones, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                                sitk.sitkUInt8)) > 0


def fusion_comparison(sag_dir: Path, cor_dir: Path, out_dir: Path, split: str = "test", device: str = "cpu",
                      example_spacing_mm: Optional[float] = None, progress: Optional[ProgressFn] = None,
                      cancel: Optional[threading.Event] = None) -> Tuple[List[Dict[str, Any]], str]:
    """Fused sagittal+coronal labelmaps vs each plane alone (see the module docstring). Returns (CSV rows, Markdown)
    and writes the example fused labelmap into ``out_dir``."""
    import SimpleITK as sitk
    import torch

    from OrthoDiffusionLib.segmentation.io import (common_reference_grid, fuse_plane_segmentations, fusion_weights,
                                                   validation_dice, write_labelmap_nifti)

    from ..segmentation.train import load_segmentation_run

    dev = resolve_device(device)
    models = {}
    for plane, folder in (("sagittal", sag_dir), ("coronal", cor_dir)):
        model, run = load_segmentation_run(folder, dev)
        if run["plane"] != plane:
            raise InputError(f"expected a {plane} run, this one is {run['plane']}", folder)
        models[plane] = (model, run)
    pairs = _paired_cases(models["sagittal"][1], models["coronal"][1], split)
    weights = fusion_weights({plane: validation_dice(run) for plane, (_, run) in models.items()},
                             int(models["sagittal"][1]["num_classes"]))
    generator = torch.Generator().manual_seed(int(models["sagittal"][1]["config"]["eval"].get("seed", 1234)))
    scores: Dict[Tuple[str, str], List[Dict[str, Dict[str, float]]]] = {}
    for i, (sag_case, cor_case) in enumerate(pairs):
        if cancel is not None and cancel.is_set():
            raise CancelledError("evaluation cancelled")
        pred = {}
        for plane, case in (("sagittal", sag_case), ("coronal", cor_case)):
            model, run = models[plane]
            pred[plane] = _plane_prediction(model, run, case, generator, dev)
        maps = {plane: pred[plane][1] for plane in pred}
        for grid_plane, (reference, _, gt) in pred.items():
            other = "coronal" if grid_plane == "sagittal" else "sagittal"
            inside = _coverage(reference, pred[other][0])
            truth = np.where(inside, sitk.GetArrayFromImage(gt), 0)
            spacing = np.asarray(reference.GetSpacing())[::-1]
            for method, fused_maps in (("sagittal only", {"sagittal": maps["sagittal"]}),
                                       ("coronal only", {"coronal": maps["coronal"]}), ("fused", maps)):
                labelmap = sitk.GetArrayFromImage(fuse_plane_segmentations(fused_maps, reference, weights))
                case_scores = evaluate_case(np.where(inside, labelmap, 0), truth, spacing, plane=grid_plane)
                scores.setdefault((grid_plane, method), []).append(case_scores)
        if i == 0:
            grid = common_reference_grid([pred["sagittal"][0], pred["coronal"][0]], example_spacing_mm)
            write_labelmap_nifti(fuse_plane_segmentations(maps, grid, weights),
                                 out_dir / f"fusion_example_{sag_case.patient_id}.nii.gz")
        if progress is not None:
            progress("fusion", (i + 1) / len(pairs))
    rows: List[Dict[str, Any]] = []
    md = [f"Fusion on the {split} split: {len(pairs)} patients with a labelled sagittal and coronal series; each "
          "plane's grid and ground truth, inside the region both series cover. Dice in %, HD95 in mm."]
    for grid_plane in ("sagittal", "coronal"):
        for metric, scale, digits in (("dice", 100.0, 1), ("hd95", 1.0, 2)):
            columns = {}
            for method in ("sagittal only", "coronal only", "fused"):
                summary = summarize_cases([c[metric] for c in scores[(grid_plane, method)]])
                columns[method] = summary
                for key, s in summary.items():
                    rows.append({"grid": grid_plane, "method": method, "metric": metric, "structure": key,
                                 "mean": s.mean, "sd": s.sd, "n": s.n})
            md += ["", f"### {grid_plane.capitalize()} grid: {'Dice (%)' if metric == 'dice' else 'HD95 (mm)'}", "",
                   format_table(columns, plane=grid_plane, scale=scale, digits=digits)]
    return rows, "\n".join(md) + "\n"


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) and not math.isnan(v) else
                                ("" if isinstance(v, float) else v)) for k, v in r.items()})


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path, suffix=path.suffix) as tmp:
        tmp.write_text(text, encoding="utf-8")


def evaluate_segmentation(run_dirs: Sequence[PathLike], out: PathLike, *, names: Optional[Sequence[str]] = None,
                          split: str = "test", fuse: Optional[Sequence[PathLike]] = None, device: str = "cpu",
                          replicates: int = 1, progress: Optional[ProgressFn] = None,
                          cancel: Optional[threading.Event] = None) -> Dict[str, Any]:
    """Write the comparison tables (and the fusion comparison, see the module docstring) into ``out``.

    ``replicates``: N runs per arm, given arm by arm; ``names`` then names the arms. Returns {"table": CSV rows,
    "fusion": CSV rows or None, "paired": CSV rows (empty without two runs of a plane), "replicates": CSV rows
    (empty unless replicates > 1)}. Nothing is written unless every run reads.
    """
    folders = [Path(d) for d in run_dirs]
    if fuse and replicates > 1:
        raise InputError("--fuse compares one sagittal and one coronal run; it cannot be combined with --replicates")
    from ..segmentation.train import read_segmentation_run

    runs = [read_segmentation_run(d) for d in folders]
    columns = list(zip(_column_names(folders, runs, names, replicates), folders, runs))
    rows, md = comparison_tables(columns, split)
    replicate_rows: List[Dict[str, Any]] = []
    if replicates > 1:
        n_arms = len(folders) // replicates
        arm_names = list(names) if names is not None else [
            f"{method_name(runs[k * replicates])} [{folders[k * replicates].name}]" for k in range(n_arms)]
        paired_rows, paired_md = _paired_by_replicate(columns, n_arms, replicates, split)
        replicate_rows, replicate_md = replicate_comparisons(
            [(arm_names[k], [(d, r) for _, d, r in columns[k * replicates:(k + 1) * replicates]])
             for k in range(n_arms)], split)
    else:
        paired_rows, paired_md = paired_comparisons(columns, split)
    pair = _fusion_pair(folders, runs, fuse)  # None with replicates: their runs are of one plane and --fuse is refused
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    fusion_rows = None
    if pair is not None:
        fusion_rows, fusion_md = fusion_comparison(pair[0], pair[1], out_dir, split, device, progress=progress,
                                                   cancel=cancel)
        _write_csv(out_dir / "fusion.csv", fusion_rows)
        _write_text(out_dir / "fusion.md", fusion_md)
    _write_csv(out_dir / "table.csv", rows)
    _write_text(out_dir / "table.md", md)
    if paired_rows:
        _write_csv(out_dir / "paired.csv", paired_rows)
        _write_text(out_dir / "paired.md", paired_md)
    if replicate_rows:
        _write_csv(out_dir / "replicates.csv", replicate_rows)
        _write_text(out_dir / "replicates.md", replicate_md)
    return {"table": rows, "fusion": fusion_rows, "paired": paired_rows, "replicates": replicate_rows}


def _column_names(folders: Sequence[Path], runs: Sequence[Mapping[str, Any]], names: Optional[Sequence[str]],
                  replicates: int) -> List[str]:
    """One table column name per run; with replicates the arm's name, told apart by the run's folder."""
    if replicates < 1 or len(folders) % replicates:
        raise InputError(f"--replicates {replicates} does not divide the {len(folders)} runs into arms of "
                         f"{replicates} runs each")
    if replicates > 1 and len({r["plane"] for r in runs}) > 1:
        raise InputError("replicate arms must all be runs of one plane")
    n_arms = len(folders) // replicates
    if names is not None and len(names) != n_arms:
        what = "arms" if replicates > 1 else "runs"
        raise InputError(f"--names gives {len(names)} names for {n_arms} {what}")
    labels_ = ([n for n in names for _ in range(replicates)] if names is not None
               else [method_name(r) for r in runs])
    seen: Dict[str, int] = {}
    for i, n in enumerate(labels_):  # two runs of the same method and size: keep both columns apart
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1 or replicates > 1:
            labels_[i] = f"{n} [{folders[i].name}]"
    return labels_


def _paired_by_replicate(columns, n_arms: int, replicates: int, split: str) -> Tuple[List[Dict[str, Any]], str]:
    """paired_comparisons of the i-th run of every arm, for each i; rows carry ``replicate`` (1-based)."""
    rows: List[Dict[str, Any]] = []
    md: List[str] = []
    for i in range(replicates):
        r, m = paired_comparisons([columns[k * replicates + i] for k in range(n_arms)], split)
        rows += [{"replicate": i + 1, **row} for row in r]
        md += [f"## Run {i + 1} of each arm", "", m]
    return rows, "\n".join(md)


def _fusion_pair(folders: Sequence[Path], runs: Sequence[Mapping[str, Any]], fuse: Optional[Sequence[PathLike]]
                 ) -> Optional[Tuple[Path, Path]]:
    if fuse:
        if len(fuse) != 2:
            raise InputError("--fuse needs two run folders: SAGITTAL_RUN CORONAL_RUN")
        return Path(fuse[0]), Path(fuse[1])
    sag = [(f, r) for f, r in zip(folders, runs) if r["plane"] == "sagittal"]
    cor = [(f, r) for f, r in zip(folders, runs) if r["plane"] == "coronal"]
    if len(sag) == 1 and len(cor) == 1 and \
            sag[0][1]["provenance"]["manifest"] == cor[0][1]["provenance"]["manifest"]:
        return sag[0][0], cor[0][0]
    return None
