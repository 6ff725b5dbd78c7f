"""A training-data manifest from a folder of exams and a label spreadsheet (``orthodiffusion make-manifest``).

    orthodiffusion make-manifest --images EXAMS --labels labels.csv --out manifest.csv
                                 [--splits 0.7,0.1,0.2] [--split-seed 0] [--label-columns KEY,...] [--prefer dicom]

Input:

* ``EXAMS/<patient_id>/...``: one folder per patient, named by the patient id of the label spreadsheet, holding that
  patient's series in any layout below it: DICOM (one folder per series; a series may also be one multi-frame
  file) and/or NIfTI / NRRD / MetaImage files. Every series is read from its headers (DICOM) or file and assigned to
  the sagittal, coronal or axial plane from its slice orientation, as ``orthodiffusion inspect`` shows it. Label
  maps (files named ``*_seg.nii.gz``, ``*_label.nrrd``, ``*.seg.nrrd``, ... or holding a few whole numbers only) are
  never taken for images: one whose name is an image's name plus the label suffix (``IMAGE_seg.nii.gz`` next to
  ``IMAGE.nii.gz`` or to the DICOM folder ``IMAGE``, also ``<patient>_IMAGE_seg.nii.gz``) becomes that series'
  ``seg_path``. With ``--prefer dicom`` (default), NIfTI/NRRD images of a patient who also has DICOM series are
  taken for copies and left out (``--prefer all`` keeps both).
* ``labels.csv``: one row per patient: ``patient_id``, one 0/1 column per diagnosis label, optionally the EHR
  columns (``age, sex, height, weight, patient_type, injury_event``), ``center``, ``field_strength`` and ``split``
  (``train``/``val``/``test``; when present it is used as given, else splits are drawn). Label columns: those of
  ``--label-columns``, else every column that is not one of the named ones.

Output: the manifest (one row per image series: ``patient_id, plane, series_path, split``, the label columns,
``seg_path`` when any label map was found, then the EHR / ``center`` / ``field_strength`` columns the spreadsheet
has; paths relative to the manifest's folder), checked by reading it back as the trainers do, and a report on the
terminal: patients, series per plane, splits, label prevalence per split, and every problem found (patients
without labels or images, missing planes, folders holding several series, files that could not be read, too few
validation positives).

Splits are drawn per patient (all series of a patient share one split) from a permutation seeded by
``--split-seed``: ``round(fraction x patients)`` patients each, at least one per split with a non-zero fraction.
"""
from __future__ import annotations

import csv
import io
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from OrthoDiffusionLib.atomic import atomic_path
from OrthoDiffusionLib.errors import InputError, MissingPathError
from OrthoDiffusionLib.labels import PLANES

from .named_options import RESERVED_COLUMNS

__all__ = ["ManifestReport", "build_manifest", "assign_splits"]

PathLike = Union[str, os.PathLike]
EHR_COLUMNS = ("age", "sex", "height", "weight", "patient_type", "injury_event")
EXTRA_COLUMNS = (*EHR_COLUMNS, "center", "field_strength")
SPLITS = ("train", "val", "test")
_LABEL_SUFFIXES = ("_seg", "-seg", ".seg", "_label", "_labels", "_labelmap", "_mask", "_segmentation")


@dataclass
class _Image:
    patient: str
    plane: str
    path: str
    stem: str
    is_dicom: bool
    seg: Optional[str] = None


@dataclass
class ManifestReport:
    """What :func:`build_manifest` found; ``lines()`` is the terminal report."""

    out: str
    patients: int = 0
    rows: int = 0
    per_plane: Dict[str, int] = field(default_factory=dict)
    splits: Dict[str, int] = field(default_factory=dict)
    prevalence: Dict[str, Dict[str, Tuple[int, int]]] = field(default_factory=dict)  # label -> split -> (pos, n)
    labels: List[str] = field(default_factory=list)
    seg_paths: int = 0
    splits_given: bool = False
    problems: List[str] = field(default_factory=list)

    def lines(self) -> List[str]:
        out = [f"patients: {self.patients} with images and labels; series: {self.rows} "
               f"({', '.join(f'{p} {self.per_plane.get(p, 0)}' for p in PLANES)}); label maps attached as "
               f"seg_path: {self.seg_paths}",
               f"splits ({'from the label file' if self.splits_given else 'drawn per patient'}): "
               + ", ".join(f"{s} {self.splits.get(s, 0)}" for s in SPLITS) + " patients",
               f"labels ({len(self.labels)}): positives / patients, all | " + " | ".join(SPLITS)]
        width = max([len(k) for k in self.labels] + [5])
        for k in self.labels:
            cells = []
            for s in ("all", *SPLITS):
                pos, n = self.prevalence.get(k, {}).get(s, (0, 0))
                cells.append(f"{pos:>3}/{n:<3} {100.0 * pos / n:5.1f}%" if n else "    -    ")
            out.append(f"  {k.ljust(width)}  {cells[0]} | " + " | ".join(cells[1:]))
        if self.problems:
            out.append(f"problems ({len(self.problems)}):")
            out += [f"  - {p}" for p in self.problems]
        else:
            out.append("problems: none")
        out.append(f"wrote {self.out} ({self.rows} rows)")
        return out


# ------------------------------------------------------------------------------------------------ labels
def _read_labels(path: Path, label_columns: Optional[Sequence[str]]
                 ) -> Tuple[List[str], Dict[str, Dict[str, str]], List[str], bool]:
    """(label keys, {patient: row}, extra columns present, split column present)."""
    if not path.is_file():
        raise MissingPathError("label file not found", path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    if "patient_id" not in header:
        raise InputError("the label file needs a patient_id column", path)
    keys = list(label_columns) if label_columns else [h for h in header if h and h not in RESERVED_COLUMNS]
    missing = [k for k in keys if k not in header]
    if missing:
        raise InputError(f"label column(s) not in the file: {', '.join(missing)}", path)
    if not keys:
        raise InputError("no label columns (every column is patient_id, split, an EHR column, center or "
                         "field_strength)", path)
    by_patient: Dict[str, Dict[str, str]] = {}
    for line, r in enumerate(rows, start=2):
        pid = r.get("patient_id", "")
        if not pid:
            raise InputError(f"line {line}: empty patient_id", path)
        for k in keys:
            v = r.get(k, "")
            try:
                num = float(v)
            except ValueError:
                num = float("nan")
            if num not in (0.0, 1.0):
                raise InputError(f"line {line}: {k}={v!r} is not 0 or 1", path)
            r[k] = str(int(num))
        if "split" in header and r.get("split", "").lower() not in SPLITS:
            raise InputError(f"line {line}: split {r.get('split')!r} is not one of {', '.join(SPLITS)}", path)
        known = by_patient.setdefault(pid, r)
        if any(known.get(k) != r.get(k) for k in keys):
            raise InputError(f"line {line}: patient {pid} has labels that differ between its rows", path)
    extras = [c for c in EXTRA_COLUMNS if c in header]
    return keys, by_patient, extras, "split" in header


# ------------------------------------------------------------------------------------------------ images
def _stem(path: str) -> str:
    name = os.path.basename(path.rstrip("/\\"))
    low = name.lower()
    for suffix in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _label_base(path: str) -> Optional[str]:
    """The image stem a label map's name points at, or None when its name carries no label suffix."""
    stem = _stem(path)
    if os.path.basename(path).lower().endswith(".seg.nrrd"):
        return stem
    for suffix in _LABEL_SUFFIXES:
        if stem.lower().endswith(suffix):
            return stem[: -len(suffix)]
    return None


def _scan_patient(folder: Path, patient: str, prefer: str, tolerance_deg: float,
                  problems: List[str]) -> List[_Image]:
    from OrthoDiffusionLib.io.study import find_candidates

    from .pretrain.data import is_labelmap_name, looks_like_labelmap

    candidates, ignored = find_candidates(folder, tolerance_deg)
    images: List[_Image] = []
    labelmaps: List[str] = []
    for path, reason in ignored:
        if is_labelmap_name(path) or "label map" in reason:  # the reader sets label maps aside: candidates for seg_path
            labelmaps.append(path)
        else:
            problems.append(f"{patient}: ignored {os.path.relpath(path, folder.parent)}: {reason}")
    for c in candidates:
        is_dicom = (c.meta or {}).get("format") == "DICOM"
        if not is_dicom:
            series = c.load()
            if is_labelmap_name(c.source) or looks_like_labelmap(series.array):
                labelmaps.append(c.source)
                continue
        images.append(_Image(patient, c.plane, c.source, _stem(c.source), is_dicom))
    # *.seg.nrrd files are not volume candidates: find them by name
    for root, _, files in os.walk(folder):
        labelmaps += [os.path.join(root, n) for n in files if n.lower().endswith(".seg.nrrd")]
    sources = Counter(i.path for i in images if i.is_dicom)
    shared = sorted(p for p, n in sources.items() if n > 1)
    for p in shared:
        problems.append(f"{patient}: {os.path.relpath(p, folder.parent)} holds {sources[p]} series (or echoes); "
                        "left out: put each series in its own folder (a DICOM sorter does this) or convert them to "
                        "NIfTI")
    images = [i for i in images if i.path not in shared]
    if prefer == "dicom" and any(i.is_dicom for i in images):
        copies = [i for i in images if not i.is_dicom]
        if copies:
            problems.append(f"{patient}: {len(copies)} NIfTI/NRRD image file(s) left out as copies of the DICOM "
                            "series (--prefer all keeps them)")
        images = [i for i in images if i.is_dicom]
    by_base: Dict[str, List[str]] = defaultdict(list)
    for lm in labelmaps:
        base = _label_base(lm)
        if base is not None:
            by_base[base].append(lm)
    for img in images:
        for base in (img.stem, f"{patient}_{img.stem}"):
            if by_base.get(base):
                img.seg = sorted(by_base[base])[0]
                break
    return images


# ------------------------------------------------------------------------------------------------ splits
def assign_splits(patients: Sequence[str], fractions: Sequence[float], seed: int = 0) -> Dict[str, str]:
    """Patient -> split from a seeded permutation of the sorted ids (module doc)."""
    fr = np.asarray(list(fractions), dtype=float)
    if fr.shape != (3,) or (fr < 0).any() or not np.isclose(fr.sum(), 1.0, atol=1e-6) or fr[0] <= 0:
        raise InputError(f"--splits takes three fractions train,val,test summing to 1 (train > 0), got "
                         f"{','.join(map(str, fractions))}")
    ids = sorted(set(patients))
    n = len(ids)
    counts = np.floor(fr * n + 0.5).astype(int)
    for i in (1, 2):  # at least one patient in a split asked for, taken from the largest
        if fr[i] > 0 and counts[i] == 0 and n >= 3:
            counts[i] = 1
    while counts.sum() > n:
        counts[int(np.argmax(counts))] -= 1
    counts[0] += n - counts.sum()
    order = np.random.default_rng(np.random.SeedSequence([int(seed), 7211])).permutation(n)
    out, start = {}, 0
    for split, k in zip(SPLITS, counts):
        for j in order[start:start + k]:
            out[ids[j]] = split
        start += k
    return out


# ------------------------------------------------------------------------------------------------ build
def build_manifest(images_dir: PathLike, labels_csv: PathLike, out: PathLike, *,
                   fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0,
                   label_columns: Optional[Sequence[str]] = None, prefer: str = "dicom",
                   tolerance_deg: float = 30.0) -> ManifestReport:
    """Scan ``images_dir``, join ``labels_csv``, assign splits, write and check ``out`` (module doc)."""
    from .diagnosis.data import read_diagnosis_manifest

    images_dir, labels_csv, out = Path(images_dir), Path(labels_csv), Path(out)
    if not images_dir.is_dir():
        raise MissingPathError("image folder not found", images_dir)
    if prefer not in ("dicom", "all"):
        raise InputError(f"--prefer must be dicom or all, got {prefer!r}")
    keys, labels, extras, splits_given = _read_labels(labels_csv, label_columns)
    report = ManifestReport(out=os.fspath(out), labels=keys)
    scanned = _scan_patients(images_dir, prefer, tolerance_deg, report.problems)
    patients = _patients_with_images_and_labels(scanned, labels, images_dir, labels_csv, report.problems)
    split_of = ({p: labels[p]["split"].lower() for p in patients} if splits_given
                else assign_splits(patients, fractions, seed))
    text = _manifest_text(report, scanned, patients, labels, keys, extras, split_of, out.resolve().parent)
    report.patients = len(patients)
    report.splits = dict(Counter(split_of[p] for p in patients))
    report.splits_given = splits_given
    _check_labels(report, patients, labels, keys, split_of)

    with atomic_path(out, suffix=".csv") as tmp:  # beside ``out``: relative paths resolve the same
        tmp.write_text(text, encoding="utf-8")
        # the trainers' own checks (files exist, one split per patient, train and val patients, ...): a manifest
        # that fails them is not written
        read_diagnosis_manifest(tmp, keys)
    return report


def _scan_patients(images_dir: Path, prefer: str, tolerance_deg: float,
                   problems: List[str]) -> Dict[str, List[_Image]]:
    """patient_id (the folder's name) -> its usable image series; folders without any are reported."""
    folders = sorted(p for p in images_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise InputError("no patient folders: put each patient's exam in a folder named by its patient_id", images_dir)
    scanned: Dict[str, List[_Image]] = {}
    for folder in folders:
        try:
            found = _scan_patient(folder, folder.name, prefer, tolerance_deg, problems)
        except InputError as e:
            problems.append(f"{folder.name}: no usable series ({e.problem})")
            continue
        if not found:
            problems.append(f"{folder.name}: no usable image series")
            continue
        scanned[folder.name] = found
    return scanned


def _patients_with_images_and_labels(scanned: Dict[str, List[_Image]], labels: Dict[str, Dict[str, str]],
                                     images_dir: Path, labels_csv: Path, problems: List[str]) -> List[str]:
    """The patients with both images and a label row, sorted; the others, and missing planes, are reported."""
    no_labels = sorted(p for p in scanned if p not in labels)
    if no_labels:
        problems.append(f"{len(no_labels)} patient folder(s) have no row in {labels_csv.name} and are left out: "
                        f"{', '.join(no_labels[:8])}{' ...' if len(no_labels) > 8 else ''}")
    no_images = sorted(p for p in labels if p not in scanned)
    if no_images:
        problems.append(f"{len(no_images)} patient(s) of {labels_csv.name} have no usable images under "
                        f"{images_dir.name}: {', '.join(no_images[:8])}{' ...' if len(no_images) > 8 else ''}")
    patients = sorted(p for p in scanned if p in labels)
    if not patients:
        raise InputError(f"no patient folder matches a patient_id of {labels_csv} (folder names must be the ids)",
                         images_dir)
    for p in patients:
        missing = [pl for pl in PLANES if not any(i.plane == pl for i in scanned[p])]
        if missing:
            problems.append(f"{p}: no {', '.join(missing)} series (a model needs all three planes to train "
                            "fusion; the patient still counts for its other planes)")
    return patients


def _manifest_text(report: ManifestReport, scanned: Dict[str, List[_Image]], patients: List[str],
                   labels: Dict[str, Dict[str, str]], keys: List[str], extras: List[str], split_of: Dict[str, str],
                   base: Path) -> str:
    """The manifest CSV (paths relative to ``base``, the manifest's folder); counts its rows into ``report``."""
    columns = ["patient_id", "plane", "series_path", "split", *keys]
    any_seg = any(i.seg for p in patients for i in scanned[p])
    if any_seg:
        columns.append("seg_path")
    columns += extras
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for p in patients:
        for img in sorted(scanned[p], key=lambda i: (PLANES.index(i.plane), i.path)):
            row = [p, img.plane, os.path.relpath(os.path.abspath(img.path), base), split_of[p],
                   *[labels[p][k] for k in keys]]
            if any_seg:
                row.append(os.path.relpath(os.path.abspath(img.seg), base) if img.seg else "")
            row += [labels[p].get(c, "") for c in extras]
            w.writerow(row)
            report.rows += 1
            report.per_plane[img.plane] = report.per_plane.get(img.plane, 0) + 1
            report.seg_paths += bool(img.seg)
    return buf.getvalue()


def _check_labels(report: ManifestReport, patients: List[str], labels: Dict[str, Dict[str, str]], keys: List[str],
                  split_of: Dict[str, str]) -> None:
    """Prevalence per split into ``report``; labels that are never or always positive, and a validation split too
    small for calibration, reported."""
    from .split_checks import small_split_message

    for k in keys:
        cells = {}
        for s in ("all", *SPLITS):
            group = [p for p in patients if s == "all" or split_of[p] == s]
            cells[s] = (sum(labels[p][k] == "1" for p in group), len(group))
        report.prevalence[k] = cells
        if cells["all"][0] in (0, cells["all"][1]):
            report.problems.append(f"label {k} is {'never' if cells['all'][0] == 0 else 'always'} positive: it "
                                   "cannot be learned or evaluated")
    val_patients = [p for p in patients if split_of[p] == "val"]
    message = small_split_message(np.array([[float(labels[p][k]) for k in keys] for p in val_patients])
                                  .reshape(-1, len(keys)), keys, "calibration and threshold choice on it")
    if message:
        report.problems.append(message)
