"""A large pool of simulated exams on the model's physical grid, for pretraining and domain-randomised training.

Each exam is simulated with :func:`.cohort.simulate_exam` (anatomy from the procedural knee or deformed real label
maps, lesions, 2D acquisition), then every series is reoriented to its plane's canonical orientation and resampled
onto the model grid (:func:`OrthoDiffusionLib.preprocess.resample_to_model_grid`: ``slice_mm`` between slices over
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
import os
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_path
from ..inference.preprocess import reorient, resample_to_model_grid
from .cohort import LABEL_KEYS, PLANES, simulate_exam

__all__ = ["POOL_COLUMNS", "DEFAULT_POOL_GRID", "pool_exam_arrays", "write_pool", "read_pool", "pool_files"]

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
               progress: Optional[Callable[[int, int], None]] = None) -> Path:
    """Simulate ``n_exams`` exams into ``out_dir`` (skipping exams already there); returns ``pool.csv``.

    Args:
        prevalence: probability of each abnormality, drawn independently per exam.
        anatomy_mix: {anatomy name: weight} (see :func:`.cohort.make_anatomy`); default all procedural.
        grid: ``slice_mm``, ``inplane_mm``, ``size`` of the model grid.
        workers: processes.
        progress: called with (done, total) after each exam.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = _exam_plan(int(n_exams), seed, prevalence, anatomy_mix or {"procedural": 1.0})
    jobs = [(os.fspath(out), item, dict(grid), atlas_path) for item in plan]
    rows: List[Dict[str, object]] = []
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as ex:
            for row in ex.map(_write_one, jobs, chunksize=4):
                rows.append(row)
                if progress:
                    progress(len(rows), len(jobs))
    else:
        for job in jobs:
            rows.append(_write_one(job))
            if progress:
                progress(len(rows), len(jobs))
    manifest = out / "pool.csv"
    with atomic_path(manifest) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=POOL_COLUMNS)
            w.writeheader()
            w.writerows(rows)
    return manifest


def read_pool(manifest: Union[str, os.PathLike]) -> List[Dict[str, object]]:
    """Rows of a ``pool.csv`` with ``path`` (absolute file path) and integer labels."""
    manifest = Path(manifest)
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["path"] = os.fspath(manifest.parent / str(r["file"]))
        for k in LABEL_KEYS:
            r[k] = int(r[k])
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
