"""Simulated exams and cohorts: anatomy + lesions + acquisition + contrast + EHR -> files and a manifest CSV.

Cohort folder layout (all paths in the manifest are relative to the folder holding ``manifest.csv``)::

    manifest.csv                      one row per series (columns: MANIFEST_COLUMNS)
    labels.csv                        one row per patient: labels, EHR, center, field strength (no split)
    README.md                         settings and seed
    P00001/sagittal_1/IM0001.dcm ...  DICOM series (when write_dicom)
    P00001/P00001_sagittal_1.nii.gz   the same image as NIfTI (when write_nifti)
    P00001/P00001_sagittal_1_seg.nii.gz   11-structure labelmap on the same grid

``series_path`` is the DICOM folder when DICOM is written, else the NIfTI file. Determinism: every random draw comes
from ``numpy.random.SeedSequence`` children of the cohort seed and the patient index, UIDs are derived from the seed,
and no timestamps are written, so the same settings give byte-identical files (also with several workers).
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .. import labels as label_tables
from ..errors import InputError
from ..progress import ProgressFn
from . import contrast as C
from .acquisition import SERIES_DESCRIPTIONS, RenderedSeries, SeriesSpec, render_series
from .ehr import EHR_FIELDS, sample_ehr
from .lesions import apply_abnormalities
from .procedural import ProceduralKnee
from .tissues import AnatomySource

PLANES: Tuple[str, ...] = ("sagittal", "coronal", "axial")
LABEL_KEYS: Tuple[str, ...] = tuple(d.key for d in label_tables.diagnosis_labels("knee"))
#: Default prevalences: the paper's training set (Supplementary Table 3; 8,760 scans).
DEFAULT_PREVALENCES: Dict[str, float] = {
    "acl_injury": 5000 / 8760, "pcl_injury": 783 / 8760, "medial_meniscus_tear": 4822 / 8760,
    "lateral_meniscus_tear": 4310 / 8760, "mcl_injury": 1354 / 8760, "lcl_injury": 1161 / 8760,
    "patellar_dislocation": 382 / 8760, "joint_effusion": 4010 / 8760,
}
MANIFEST_COLUMNS: Tuple[str, ...] = ("patient_id", "plane", "series_path", "split", *LABEL_KEYS, "seg_path",
                                     *EHR_FIELDS, "center", "field_strength")
#: Slice coverage (mm) per plane used to choose the number of slices when not given.
COVERAGE_MM = {"sagittal": 92.0, "coronal": 88.0, "axial": 92.0}
ANATOMIES = ("procedural", "atlas", "atlas_spl", "atlas_oai")


@dataclass
class SimulatedSeries:
    plane: str
    image: sitk.Image  # int16 stored values, (cols, rows, slices), slice axis = ITK axis 2
    labelmap: sitk.Image  # uint8 0..11, same geometry
    tissue: sitk.Image  # uint8 Tissue ids, same geometry
    meta: Dict[str, object]


@dataclass
class SimulatedExam:
    patient_id: str
    seed: int
    labels: Dict[str, bool]
    ehr: Dict[str, object]
    side: str
    anatomy: str
    center: str
    field_strength: float
    series: List[SimulatedSeries] = field(default_factory=list)

    def series_for(self, plane: str) -> List[SimulatedSeries]:
        return [s for s in self.series if s.plane == plane]

#: First line of the README.md of every cohort the simulator writes (trainers read it to record that a run saw
#: simulated data only).
SIMULATED_COHORT_TITLE = "# Simulated knee MRI cohort (OrthoDiffusion)"


def make_anatomy(kind: str, side: str, rng: np.random.Generator, atlas_path: Optional[str] = None) -> AnatomySource:
    """Anatomy source by name: ``procedural`` (built in) or ``atlas``/``atlas_spl``/``atlas_oai`` (needs the label
    maps; ``atlas_path`` or the shared data folder)."""
    if kind == "procedural":
        return ProceduralKnee(side=side, rng=rng)
    if kind in ("atlas", "atlas_spl", "atlas_oai"):
        try:
            from .atlas import AtlasAnatomy  # second source (needs real label maps)
        except ImportError as e:
            raise InputError(f"the atlas anatomy source is not available ({e})", atlas_path or "atlas") from None

        seed = int(rng.integers(0, 2**31 - 1))
        if kind == "atlas_oai":
            return AtlasAnatomy.from_oai(atlas_path, seed=seed, side=side)
        return AtlasAnatomy.from_spl(atlas_path, seed=seed, side=side)
    raise ValueError(f"unknown anatomy {kind!r}; choose one of {', '.join(ANATOMIES)}")


def _sample_spec(plane: str, rng: np.random.Generator, matrix: Tuple[int, int], field_strength: float,
                 n_slices: Optional[int], inplane_subsamples: int = 0) -> SeriesSpec:
    thickness = float(rng.choice([3.0, 3.5, 4.0], p=[0.05, 0.86, 0.09]))
    gap = round(0.1 * thickness, 2)
    n = n_slices or int(round(COVERAGE_MM[plane] / (thickness + gap)))
    tr = float(np.clip(rng.normal(2455, 350), 1472, 4080))
    te = float(np.clip(rng.normal(34.3, 7.0), 18.0, 70.0))
    return SeriesSpec(plane=plane, matrix=tuple(matrix), n_slices=n, fov_mm=float(rng.uniform(140, 170)),
                      slice_thickness=thickness, slice_gap=gap,
                      oblique_deg=tuple(float(v) for v in rng.uniform(-3.0, 3.0, size=3)),
                      center_offset_mm=tuple(float(v) for v in rng.normal(0.0, 3.0, size=3)),
                      field_strength=field_strength, repetition_time=round(tr, 1), echo_time=round(te, 1),
                      inplane_subsamples=inplane_subsamples)


def simulate_exam(seed: int, abnormalities: Optional[Mapping[str, bool]] = None, anatomy: str = "procedural",
                  center: Optional[str] = None, field_strength: Optional[float] = None,
                  matrix: Union[int, Tuple[int, int]] = (256, 256), planes: Sequence[str] = PLANES,
                  n_slices: Optional[int] = None, series_per_plane: Optional[Mapping[str, int]] = None,
                  atlas_path: Optional[str] = None, side: Optional[str] = None, ehr_missing_rate: float = 0.05,
                  patient_id: Optional[str] = None, coarse_to_fine: bool = True,
                  inplane_subsamples: int = 0) -> SimulatedExam:
    """Simulate one multi-plane knee exam.

    Args:
        seed: exam seed (anatomy, lesion shapes, acquisition, noise and EHR all derive from it; the anatomy and
            acquisition do not depend on ``abnormalities``, so the same seed with and without a lesion differs only
            by the lesion).
        abnormalities: {label key: bool}; missing keys are False.
        anatomy: see :func:`make_anatomy`.
        center: a key of :data:`.contrast.CENTERS`; None = drawn from the default center mix.
        field_strength: 1.5 or 3.0; None = 3 T with probability 0.75.
        matrix: in-plane matrix (rows, cols) or one int.
        planes: planes to render.
        n_slices: slices per series (None = cover ~90 mm: 23-24 slices of 3.5 mm).
        series_per_plane: {plane: count} to render several series of a plane (other acquisition parameters).
        coarse_to_fine: see :func:`.acquisition.sample_tissue`.
        inplane_subsamples: sub-samples per pixel side (0 = automatic: 1 for pixels <= 0.8 mm, else 2).
    """
    labels = {k: bool((abnormalities or {}).get(k, False)) for k in LABEL_KEYS}
    unknown = set(abnormalities or {}) - set(LABEL_KEYS)
    if unknown:
        raise KeyError(f"unknown knee abnormality {sorted(unknown)}; known: {', '.join(LABEL_KEYS)}")
    if isinstance(matrix, int):
        matrix = (matrix, matrix)
    ss = np.random.SeedSequence([int(seed), 7919])
    r_setup, r_anat, r_les, r_ehr, r_acq = (np.random.default_rng(s) for s in ss.spawn(5))
    side = side or ("right" if r_setup.random() < 0.6 else "left")
    cw = C.DEFAULT_CENTER_WEIGHTS
    c_draw = str(r_setup.choice(list(cw), p=np.array(list(cw.values())) / sum(cw.values())))
    fs_draw = 3.0 if r_setup.random() < 0.75 else 1.5
    center = center or c_draw
    if center not in C.CENTERS:
        raise ValueError(f"unknown center {center!r}; choose one of {', '.join(C.CENTERS)}")
    field_strength = float(field_strength or fs_draw)
    source = make_anatomy(anatomy, side, r_anat, atlas_path)
    lesioned = apply_abnormalities(source, labels, r_les)
    ehr = sample_ehr(labels, r_ehr, ehr_missing_rate)
    exam = SimulatedExam(patient_id or f"SIM{int(seed):08d}", int(seed), labels, ehr, side, anatomy, center,
                         field_strength)
    cen = C.CENTERS[center]
    for plane in planes:
        count = int((series_per_plane or {}).get(plane, 1))
        for n in range(count):
            r_series = np.random.default_rng(np.random.SeedSequence([int(seed), 104729, PLANES.index(plane), n]))
            spec = _sample_spec(plane, r_series, matrix, field_strength, n_slices, inplane_subsamples)
            rs: RenderedSeries = render_series(lesioned, spec, cen, r_series, coarse_to_fine=coarse_to_fine)
            meta = {
                "plane": plane, "series_index": n + 1, "series_description": SERIES_DESCRIPTIONS[plane],
                "echo_time": spec.echo_time, "repetition_time": spec.repetition_time,
                "magnetic_field_strength": field_strength, "manufacturer": cen.manufacturer,
                "manufacturer_model": cen.model, "slice_thickness": spec.slice_thickness,
                "slice_gap": spec.slice_gap, "fov_mm": round(spec.fov_mm, 2), "matrix": list(spec.matrix),
                "n_slices": spec.n_slices, "protocol_name": f"KNEE {SERIES_DESCRIPTIONS[plane]}",
                "scanning_sequence": "SE", "sequence_variant": "SK", "mr_acquisition_type": "2D",
                "echo_train_length": 8, "center": center, "noise_sigma": round(rs.noise_sigma, 3),
            }
            exam.series.append(SimulatedSeries(plane, rs.image, rs.labelmap, rs.tissue, meta))
    return exam


def sample_labels(n: int, rng: np.random.Generator, prevalences: Optional[Mapping[str, float]] = None
                  ) -> List[Dict[str, bool]]:
    """Independent Bernoulli labels per patient (n dicts)."""
    prev = dict(DEFAULT_PREVALENCES)
    prev.update(prevalences or {})
    u = rng.random((n, len(LABEL_KEYS)))
    p = np.array([prev[k] for k in LABEL_KEYS])
    return [{k: bool(v) for k, v in zip(LABEL_KEYS, row)} for row in (u < p)]


def assign_splits(n: int, rng: np.random.Generator, splits: Sequence[float] = (0.7, 0.1, 0.2)) -> List[str]:
    """Patient-level split names ("train", "val", "test") with exact rounded counts, randomly permuted."""
    s = np.asarray(splits, dtype=np.float64)
    if len(s) != 3 or (s < 0).any() or s.sum() <= 0:
        raise ValueError(f"splits must be three non-negative fractions, got {splits}")
    s = s / s.sum()
    n_train = int(round(s[0] * n))
    n_val = int(round(s[1] * n))
    n_val = min(n_val, n - n_train)
    names = ["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val)
    perm = rng.permutation(n)
    return [names[i] for i in np.argsort(perm, kind="stable")]


@dataclass
class CohortPlan:
    """Per-patient settings of a cohort, drawn up front (so workers and restarts give the same files)."""

    patient_ids: List[str]
    seeds: List[int]
    labels: List[Dict[str, bool]]
    splits: List[str]
    anatomies: List[str]
    series_per_plane: List[Dict[str, int]]


def plan_cohort(n_patients: int, seed: int, prevalences: Optional[Mapping[str, float]] = None,
                splits: Sequence[float] = (0.7, 0.1, 0.2), anatomy_mix: Optional[Mapping[str, float]] = None,
                multi_series_fraction: float = 0.1, planes: Sequence[str] = PLANES) -> CohortPlan:
    """Labels, splits, anatomy sources and series counts of every patient (no rendering)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 31337]))
    labels = sample_labels(n_patients, rng, prevalences)
    split_names = assign_splits(n_patients, rng, splits)
    mix = dict(anatomy_mix or {"procedural": 1.0})
    kinds = list(mix)
    pk = np.array([mix[k] for k in kinds], dtype=np.float64)
    for k in kinds:
        if k not in ANATOMIES:
            raise ValueError(f"unknown anatomy {k!r} in anatomy_mix; choose from {', '.join(ANATOMIES)}")
    anatomies = [kinds[i] for i in rng.choice(len(kinds), size=n_patients, p=pk / pk.sum())]
    spp = []
    for _ in range(n_patients):
        d = {p: 1 for p in planes}
        if rng.random() < multi_series_fraction:
            d[str(rng.choice(list(planes)))] = 2
        spp.append(d)
    seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence([int(seed), 4242]).spawn(n_patients)]
    ids = [f"P{i + 1:05d}" for i in range(n_patients)]
    return CohortPlan(ids, seeds, labels, split_names, anatomies, spp)


def write_image(img: sitk.Image, path: Path) -> None:
    """Write NIfTI deterministically (gzip without timestamp comes from ITK's zlib writer)."""
    sitk.WriteImage(img, str(path), useCompression=True)


def _write_patient(args) -> List[Dict[str, object]]:
    (out_dir, pid, pseed, labels, split, anatomy, spp, settings) = args
    exam = simulate_exam(pseed, labels, anatomy=anatomy, center=None if not settings["centers"] else
                         _pick_center(pseed, settings["centers"]), field_strength=None, matrix=settings["matrix"],
                         planes=settings["planes"], n_slices=settings["n_slices"], series_per_plane=spp,
                         atlas_path=settings["atlas_path"], ehr_missing_rate=settings["ehr_missing_rate"],
                         patient_id=pid)
    pdir = Path(out_dir) / pid
    pdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for number, s in enumerate(exam.series, start=1):
        stem = f"{s.plane}_{s.meta['series_index']}"
        series_path = seg_path = ""
        if settings["write_dicom"]:
            from ..io import write_dicom_series

            write_dicom_series(s.image, pdir / stem, meta=s.meta, series_description=str(s.meta["series_description"]),
                               series_number=number, study_description="OrthoDiffusion simulated knee",
                               uid_seed=f"orthodiffusion-sim:{pseed}:{pid}:{stem}",
                               study_uid_seed=f"orthodiffusion-sim:{pseed}:{pid}")
            series_path = f"{pid}/{stem}"
        if settings["write_nifti"]:
            write_image(s.image, pdir / f"{pid}_{stem}.nii.gz")
            if not series_path:
                series_path = f"{pid}/{pid}_{stem}.nii.gz"
        write_image(s.labelmap, pdir / f"{pid}_{stem}_seg.nii.gz")
        seg_path = f"{pid}/{pid}_{stem}_seg.nii.gz"
        row: Dict[str, object] = {"patient_id": pid, "plane": s.plane, "series_path": series_path, "split": split}
        row.update({k: int(exam.labels[k]) for k in LABEL_KEYS})
        row["seg_path"] = seg_path
        row.update({k: ("" if exam.ehr[k] is None else exam.ehr[k]) for k in EHR_FIELDS})
        row["center"] = exam.center
        row["field_strength"] = exam.field_strength
        rows.append(row)
    return rows


def _pick_center(pseed: int, centers: Mapping[str, float]) -> str:
    rng = np.random.default_rng(np.random.SeedSequence([int(pseed), 99]))
    names = list(centers)
    w = np.array([centers[c] for c in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def _write_label_sheet(path: Path, rows: Sequence[Mapping[str, object]]) -> None:
    """``labels.csv``: one row per patient of the manifest rows (labels, EHR, center, field strength)."""
    columns = ["patient_id", *LABEL_KEYS, *EHR_FIELDS, "center", "field_strength"]
    seen: Dict[str, Mapping[str, object]] = {}
    for r in rows:
        seen.setdefault(str(r["patient_id"]), r)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(columns)
        for pid, r in seen.items():
            w.writerow([r.get(c, "") for c in columns])


def write_cohort(out_dir: Union[str, os.PathLike], n_patients: int, seed: int = 0,
                 prevalences: Optional[Mapping[str, float]] = None, splits: Sequence[float] = (0.7, 0.1, 0.2),
                 anatomy_mix: Optional[Mapping[str, float]] = None, centers: Optional[Mapping[str, float]] = None,
                 write_dicom: bool = True, write_nifti: bool = True, multi_series_fraction: float = 0.1,
                 matrix: Union[int, Tuple[int, int]] = (256, 256), planes: Sequence[str] = PLANES,
                 n_slices: Optional[int] = None, ehr_missing_rate: float = 0.05, atlas_path: Optional[str] = None,
                 progress: Optional[ProgressFn] = None, workers: int = 1) -> Path:
    """Simulate and write a cohort; returns the manifest path.

    Args:
        out_dir: output folder (created; existing files with the same names are overwritten).
        n_patients: number of patients (one exam each).
        seed: cohort seed.
        prevalences: {label key: prevalence} overriding :data:`DEFAULT_PREVALENCES`.
        splits: train/val/test fractions (patient level).
        anatomy_mix: {anatomy: weight}, default all procedural.
        centers: {center: weight}; default :data:`.contrast.DEFAULT_CENTER_WEIGHTS`.
        multi_series_fraction: fraction of patients with a second series of one plane.
        progress: ``progress("patients", fraction written)`` after each patient.
        workers: processes (results do not depend on it).
    """
    if not (write_dicom or write_nifti):
        raise ValueError("write_dicom and write_nifti are both False: nothing to write")
    if isinstance(matrix, int):
        matrix = (matrix, matrix)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_cohort(n_patients, seed, prevalences, splits, anatomy_mix, multi_series_fraction, planes)
    settings = {"matrix": tuple(matrix), "planes": tuple(planes), "n_slices": n_slices, "write_dicom": write_dicom,
                "write_nifti": write_nifti, "atlas_path": atlas_path, "ehr_missing_rate": ehr_missing_rate,
                "centers": dict(centers) if centers else None}
    jobs = [(str(out), plan.patient_ids[i], plan.seeds[i], plan.labels[i], plan.splits[i], plan.anatomies[i],
             plan.series_per_plane[i], settings) for i in range(n_patients)]
    rows: List[Dict[str, object]] = []
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            for i, r in enumerate(pool.imap(_write_patient, jobs)):
                rows.extend(r)
                if progress:
                    progress("patients", (i + 1) / n_patients)
    else:
        for i, job in enumerate(jobs):
            rows.extend(_write_patient(job))
            if progress:
                progress("patients", (i + 1) / n_patients)
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    _write_label_sheet(out / "labels.csv", rows)
    prev = dict(DEFAULT_PREVALENCES)
    prev.update(prevalences or {})
    info = {"n_patients": n_patients, "seed": seed, "prevalences": prev, "splits": list(splits),
            "anatomy_mix": dict(anatomy_mix or {"procedural": 1.0}),
            "centers": dict(centers or C.DEFAULT_CENTER_WEIGHTS), "matrix": list(matrix), "planes": list(planes),
            "n_slices": n_slices, "multi_series_fraction": multi_series_fraction,
            "ehr_missing_rate": ehr_missing_rate, "write_dicom": write_dicom, "write_nifti": write_nifti}
    counts = {k: sum(int(lab[k]) for lab in plan.labels) for k in LABEL_KEYS}
    split_counts = {s: plan.splits.count(s) for s in ("train", "val", "test")}
    text = [SIMULATED_COHORT_TITLE, "",
            "Made by `orthodiffusion simulate cohort` (OrthoDiffusionLib.simulate.write_cohort). Same settings and "
            "seed give byte-identical files.", "",
            f"Patients: {n_patients}; series: {len(rows)}; splits (patients): {json.dumps(split_counts)}", "",
            f"Positive patients per label: {json.dumps(counts)}", "",
            "Manifest: `manifest.csv`, one row per series; paths relative to this folder; `series_path` is the "
            "DICOM folder (or the NIfTI when no DICOM is written); `seg_path` is the 11-structure labelmap "
            "(0 background, 1 femur ... 11 PCL) on the series' own grid.", "",
            "Label sheet: `labels.csv`, one row per patient (patient_id, the 8 labels, EHR, center, field strength; no "
            "split), the spreadsheet a hospital would have: `orthodiffusion make-manifest --images . --labels "
            "labels.csv --out my_manifest.csv` rebuilds a manifest from the folders.", "",
            "Settings:", "", "```json", json.dumps(info, indent=2, sort_keys=True), "```", ""]
    (out / "README.md").write_text("\n".join(text), encoding="utf-8")
    return manifest


def write_exam_folder(exam: SimulatedExam, out_dir: Union[str, os.PathLike], seed: int,
                      write_dicom: bool = True) -> Dict[str, object]:
    """Write one simulated exam (``orthodiffusion simulate exam``) into ``out_dir``: ``dicom/<plane>_<n>/`` (DICOM
    series, unless ``write_dicom`` is False), ``nifti/<plane>_<n>.nii.gz``, ``labels/<plane>_<n>_seg.nii.gz``
    (11-structure labelmaps on the same grids) and ``exam.json`` (labels, EHR, per-series metadata and file names),
    whose content is returned. ``seed`` is the exam's seed (recorded, and the seed of the DICOM UIDs)."""
    from ..io import write_dicom_series

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    series = []
    for n, s in enumerate(exam.series, start=1):
        stem = f"{s.plane}_{s.meta['series_index']}"
        if write_dicom:
            write_dicom_series(s.image, out / "dicom" / stem, meta=s.meta, series_number=n,
                               series_description=str(s.meta["series_description"]),
                               uid_seed=f"orthodiffusion-sim-exam:{seed}:{stem}",
                               study_uid_seed=f"orthodiffusion-sim-exam:{seed}")
        (out / "nifti").mkdir(exist_ok=True)
        (out / "labels").mkdir(exist_ok=True)
        write_image(s.image, out / "nifti" / f"{stem}.nii.gz")
        write_image(s.labelmap, out / "labels" / f"{stem}_seg.nii.gz")
        series.append({**s.meta, "dicom": f"dicom/{stem}" if write_dicom else None, "nifti": f"nifti/{stem}.nii.gz",
                       "labelmap": f"labels/{stem}_seg.nii.gz"})
    info: Dict[str, object] = {"seed": seed, "anatomy": exam.anatomy, "side": exam.side, "center": exam.center,
                               "field_strength": exam.field_strength,
                               "labels": {k: int(v) for k, v in exam.labels.items()}, "ehr": exam.ehr,
                               "series": series}
    (out / "exam.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return info
