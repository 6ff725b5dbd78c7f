"""A large pool of simulated exams on the model's physical grid, for pretraining and domain-randomised training.

Each exam is simulated with :func:`.cohort.simulate_exam` (anatomy from the procedural knee or deformed real label
maps, lesions, 2D acquisition), then every series is reoriented to its plane's canonical orientation and resampled
onto the model grid (:func:`OrthoDiffusionLib.inference.preprocess.resample_to_model_grid`: ``slice_mm`` between slices over
the whole series, ``size x size`` pixels of ``inplane_mm``). Stored per exam, one ``.npz`` (no pickles)::

    {plane}_image   float16 (D, size, size)  the simulated PD image, divided by its 99.5th percentile
    {plane}_tissue  uint8   (D, size, size)  tissue ids (:class:`.tissues.Tissue`) on the same grid

and one ``pool.csv`` row (file, seed, anatomy, side, the 8 diagnosis labels). The tissue maps let a trainer draw a
new contrast at every step (:mod:`.randomize`); the labels are there for supervised training and are never read by
pretraining. Files are written atomically, so an interrupted run is continued by running it again (exams already
written are skipped).
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_path
from ..io.orientation import CANONICAL_ORIENTATION
from ..progress import ProgressFn
from ..inference.preprocess import reorient, resample_to_model_grid
from .cohort import LABEL_KEYS, PLANES, simulate_exam

__all__ = ["POOL_COLUMNS", "DEFAULT_POOL_GRID", "pool_exam_arrays", "write_pool", "read_pool", "pool_files",
           "write_pool_cohort"]

POOL_COLUMNS = ("file", "seed", "anatomy", "side", *LABEL_KEYS)
#: The CPU-scale model grid: 4 mm between slices, 128 x 128 pixels of 1.2 mm (a 154 mm field of view).
DEFAULT_POOL_GRID: Dict[str, float] = {"slice_mm": 4.0, "inplane_mm": 1.2, "size": 128}


def pool_exam_arrays(seed: int, labels: Mapping[str, bool], anatomy: str = "procedural",
                     grid: Mapping[str, float] = DEFAULT_POOL_GRID, atlas_path: Optional[str] = None,
                     planes: Sequence[str] = PLANES) -> Dict[str, np.ndarray]:
    """Simulate one exam and return its arrays on the model grid (keys as in the module docstring)."""
    exam = simulate_exam(seed, labels, anatomy=anatomy, atlas_path=atlas_path, planes=planes)
    out: Dict[str, np.ndarray] = {}
    for s in exam.series:
        image = reorient(s.image, s.plane)
        tissue = reorient(s.tissue, s.plane)
        img = resample_to_model_grid(image, grid["slice_mm"], grid["inplane_mm"], int(grid["size"]), "linear")
        tis = resample_to_model_grid(tissue, grid["slice_mm"], grid["inplane_mm"], int(grid["size"]), "nearest")
        arr = sitk.GetArrayFromImage(img).astype(np.float32)
        scale = float(np.percentile(arr, 99.5)) or 1.0
        out[f"{s.plane}_image"] = (arr / scale).astype(np.float16)
        out[f"{s.plane}_tissue"] = sitk.GetArrayFromImage(tis).astype(np.uint8)
    return out


def _exam_plan(n: int, seed: int, prevalence: float, anatomy_mix: Mapping[str, float]) -> List[Dict[str, object]]:
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 4049]))
    names = list(anatomy_mix)
    weights = np.array([anatomy_mix[a] for a in names], dtype=np.float64)
    plan = []
    for i in range(n):
        labels = {k: bool(rng.random() < prevalence) for k in LABEL_KEYS}
        anatomy = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        exam_seed = int(np.random.SeedSequence([int(seed), 31337, i]).generate_state(1)[0] % (2**31 - 1))
        plan.append({"file": f"E{i:05d}.npz", "seed": exam_seed, "anatomy": anatomy, "labels": labels})
    return plan


def _write_one(args) -> Dict[str, object]:
    out_dir, item, grid, atlas_path = args
    path = Path(out_dir) / str(item["file"])
    if not path.is_file():
        arrays = pool_exam_arrays(int(item["seed"]), item["labels"], str(item["anatomy"]), grid, atlas_path)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)
    row: Dict[str, object] = {"file": item["file"], "seed": item["seed"], "anatomy": item["anatomy"], "side": ""}
    row.update({k: int(item["labels"][k]) for k in LABEL_KEYS})
    return row


def write_pool(out_dir: Union[str, os.PathLike], n_exams: int, seed: int = 0, prevalence: float = 0.35,
               anatomy_mix: Optional[Mapping[str, float]] = None, grid: Mapping[str, float] = DEFAULT_POOL_GRID,
               atlas_path: Optional[str] = None, workers: int = 1,
               progress: Optional[ProgressFn] = None) -> Path:
    """Simulate ``n_exams`` exams into ``out_dir`` (skipping exams already there); returns ``pool.csv``.

    Args:
        prevalence: probability of each abnormality, drawn independently per exam.
        anatomy_mix: {anatomy name: weight} (see :func:`.cohort.make_anatomy`); default all procedural.
        grid: ``slice_mm``, ``inplane_mm``, ``size`` of the model grid.
        workers: processes.
        progress: ``progress("exams", fraction written)`` after each exam.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"n_exams": int(n_exams), "seed": int(seed), "prevalence": float(prevalence),
                "anatomy_mix": dict(anatomy_mix or {"procedural": 1.0}), "grid": dict(grid)}
    with atomic_path(out / "pool.json") as tmp:
        tmp.write_text(json.dumps(settings, indent=2) + "\n")
    plan = _exam_plan(int(n_exams), seed, prevalence, settings["anatomy_mix"])
    jobs = [(os.fspath(out), item, dict(grid), atlas_path) for item in plan]
    rows: List[Dict[str, object]] = []
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as ex:
            for row in ex.map(_write_one, jobs, chunksize=4):
                rows.append(row)
                if progress:
                    progress("exams", len(rows) / len(jobs))
    else:
        for job in jobs:
            rows.append(_write_one(job))
            if progress:
                progress("exams", len(rows) / len(jobs))
    manifest = out / "pool.csv"
    with atomic_path(manifest) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=POOL_COLUMNS)
            w.writeheader()
            w.writerows(rows)
    return manifest


def read_pool(manifest: Union[str, os.PathLike]) -> List[Dict[str, object]]:
    """Rows of a ``pool.csv`` with ``path`` (absolute file path) and integer labels. Given a pool folder without
    ``pool.csv`` (a pool still being written), the rows of the exam files already there, from its ``pool.json``."""
    manifest = Path(manifest)
    if manifest.is_dir() and not (manifest / "pool.csv").is_file():
        return _rows_of_partial_pool(manifest)
    if manifest.is_dir():
        manifest = manifest / "pool.csv"
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["path"] = os.fspath(manifest.parent / str(r["file"]))
        r["seed"] = int(r["seed"])
        for k in LABEL_KEYS:
            r[k] = int(r[k])
    return rows


def _rows_of_partial_pool(folder: Path) -> List[Dict[str, object]]:
    settings = json.loads((folder / "pool.json").read_text())
    plan = _exam_plan(int(settings["n_exams"]), int(settings["seed"]), float(settings["prevalence"]),
                      settings["anatomy_mix"])
    rows = []
    for item in plan:
        path = folder / str(item["file"])
        if path.is_file():
            row: Dict[str, object] = {"file": item["file"], "seed": item["seed"], "anatomy": item["anatomy"],
                                      "side": "", "path": os.fspath(path)}
            row.update({k: int(item["labels"][k]) for k in LABEL_KEYS})
            rows.append(row)
    return rows


def pool_files(pool: Union[str, os.PathLike]) -> List[str]:
    """Exam files of a pool: the rows of its ``pool.csv``, or, given its folder, the ``E*.npz`` files in it (sorted;
    complete files only, since each is written atomically)."""
    pool = Path(pool)
    if pool.is_dir():
        return sorted(os.fspath(p) for p in pool.glob("E*.npz"))
    if not pool.is_file():
        from ..errors import MissingPathError

        raise MissingPathError("pool not found", pool)
    return [str(r["path"]) for r in read_pool(pool)]


def _grid_image(array: np.ndarray, plane: str, grid: Mapping[str, float]) -> sitk.Image:
    """A (D, H, W) array as an image on the canonical model grid of ``plane``, centred at the origin."""
    img = sitk.GetImageFromArray(array)
    spacing = np.array([grid["inplane_mm"], grid["inplane_mm"], grid["slice_mm"]], dtype=np.float64)
    code = CANONICAL_ORIENTATION[plane]
    direction = np.array(sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation(code))
    size = np.array(img.GetSize(), dtype=np.float64)
    img.SetSpacing(tuple(spacing))
    img.SetDirection(tuple(direction))
    img.SetOrigin(tuple(-(direction.reshape(3, 3) @ (spacing * (size - 1) / 2.0))))
    return img


def write_pool_cohort(pool: Union[str, os.PathLike], out_dir: Union[str, os.PathLike],
                      splits: Sequence[int] = (2000, 200, 200), grid: Mapping[str, float] = DEFAULT_POOL_GRID,
                      progress: Optional[ProgressFn] = None) -> Path:
    """Write a pool's exams as a training cohort (a manifest CSV any trainer reads); returns the manifest path.

    The first ``splits[0]`` exams (in ``pool.csv`` order) are ``train``, the next ``splits[1]`` ``val`` and the next
    ``splits[2]`` ``test``. Per exam and plane: ``P{n}/{plane}.nii.gz`` (the simulated image, int16 x 1000, on the
    model grid with its plane's canonical orientation), ``P{n}/{plane}_seg.nii.gz`` (11-structure labelmap) and
    ``P{n}/{plane}_tissue.nii.gz`` (tissue ids, for domain randomisation); the manifest adds a ``tissue_path``
    column to the usual ones.
    """
    from .cohort import MANIFEST_COLUMNS
    from .tissues import segmentation_from_tissue

    rows = read_pool(pool)
    names = ["train"] * int(splits[0]) + ["val"] * int(splits[1]) + ["test"] * int(splits[2])
    if len(rows) < len(names):
        raise ValueError(f"the pool holds {len(rows)} exams, the splits ask for {len(names)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest_rows: List[Dict[str, object]] = []
    for n, (row, split) in enumerate(zip(rows, names)):
        pid = f"P{n:05d}"
        with np.load(str(row["path"]), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        for plane in PLANES:
            if f"{plane}_image" not in arrays:
                continue
            tissue = arrays[f"{plane}_tissue"]
            files = {"series_path": f"{pid}/{plane}.nii.gz", "seg_path": f"{pid}/{plane}_seg.nii.gz",
                     "tissue_path": f"{pid}/{plane}_tissue.nii.gz"}
            images = {"series_path": np.round(arrays[f"{plane}_image"].astype(np.float32) * 1000).astype(np.int16),
                      "seg_path": segmentation_from_tissue(tissue), "tissue_path": tissue}
            for key, rel in files.items():
                target = out / rel
                if not target.is_file():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_path(target, suffix=".nii.gz") as tmp:
                        sitk.WriteImage(_grid_image(images[key], plane, grid), str(tmp), True)
            entry: Dict[str, object] = {c: "" for c in MANIFEST_COLUMNS}
            entry.update({"patient_id": pid, "plane": plane, "split": split, **files})
            entry.update({k: int(row[k]) for k in LABEL_KEYS})
            manifest_rows.append(entry)
        if progress:
            progress("exams", (n + 1) / len(names))
    _write_pool_cohort_readme(out, pool, names, manifest_rows)
    manifest = out / "manifest.csv"
    with atomic_path(manifest) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[*MANIFEST_COLUMNS, "tissue_path"])
            w.writeheader()
            w.writerows(manifest_rows)
    return manifest


def _write_pool_cohort_readme(out: Path, pool: Union[str, os.PathLike], splits: Sequence[str],
                              rows: Sequence[Mapping[str, object]]) -> None:
    """README.md of a pool cohort: the simulated-cohort title (so trainers record that their runs saw simulated data
    only), where it came from and what it holds."""
    from .cohort import SIMULATED_COHORT_TITLE

    counts = {s: splits.count(s) for s in ("train", "val", "test")}
    patients = {r["patient_id"]: r for r in rows}
    positives = {k: sum(int(r[k]) for r in patients.values()) for k in LABEL_KEYS}
    text = [SIMULATED_COHORT_TITLE, "",
            f"Made by `orthodiffusion simulate pool-cohort` from the pool `{os.fspath(pool)}`: its exams as a labelled "
            "cohort on the model grid.", "", f"Patients per split: {json.dumps(counts)}; series: {len(rows)}", "",
            f"Positive patients per label: {json.dumps(positives)}", "",
            "Manifest: `manifest.csv`, one row per series, paths relative to this folder: `series_path` (image), "
            "`seg_path` (11-structure labelmap), `tissue_path` (the simulator's tissue ids).", ""]
    (out / "README.md").write_text("\n".join(text), encoding="utf-8")
