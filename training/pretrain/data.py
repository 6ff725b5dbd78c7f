"""What pretraining reads: image series only, from the chosen splits, with a summary printed before the first step.

Label maps are never images. A file is taken for a label map, and left out, when

* its name says so: ``*.seg.nrrd`` or a stem ending in ``_seg``, ``-seg``, ``_label``, ``_labels``, ``_labelmap``,
  ``_mask`` or ``_segmentation`` (``P00001_sagittal_1_seg.nii.gz``), or it is a manifest's ``seg_path``;
* or its content does: whole numbers only, at most :data:`MAX_LABEL_VALUES` distinct values, none negative (an MR
  image has hundreds of grey values).

With ``--data FOLDER`` the same image stored twice (a DICOM series and its NIfTI copy) is read once: series with the
same geometry (in any axis order) and the same intensity distribution count once. A folder carries no split, so every series under it is used; a
manifest (``--manifest``) restricts pretraining to the training split unless ``--splits`` says otherwise.
"""
from __future__ import annotations

import csv
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from OrthoDiffusionLib.errors import InputError, MissingPathError
from OrthoDiffusionLib.labels import PLANES, SHARED_PLANE


__all__ = ["MAX_LABEL_VALUES", "is_labelmap_name", "looks_like_labelmap", "parse_splits", "ManifestSelection",
           "select_manifest_rows", "FolderSelection", "select_folder_series"]

PathLike = Union[str, os.PathLike]
MAX_LABEL_VALUES = 64
_LABEL_STEM = re.compile(r"[_\-.](seg|segmentation|label|labels|labelmap|mask)$", re.IGNORECASE)
_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SPLITS = ("train", "val", "test")


def is_labelmap_name(path: PathLike) -> bool:
    """True for ``*.seg.nrrd`` and volume files whose stem ends in ``_seg``, ``_label(s)``, ``_mask``, ..."""
    name = os.path.basename(os.fspath(path).rstrip("/\\")).lower()
    if name.endswith(".seg.nrrd"):
        return True
    for suffix in _VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return bool(_LABEL_STEM.search(name[: -len(suffix)]))
    return False


def looks_like_labelmap(array: np.ndarray, max_values: int = MAX_LABEL_VALUES) -> bool:
    """True when ``array`` holds only whole, non-negative numbers with at most ``max_values`` distinct values."""
    a = np.asarray(array)
    if a.size == 0:
        return False
    if a.dtype.kind == "f" and not np.all(np.equal(np.mod(a, 1), 0)):
        return False
    if a.min() < 0:
        return False
    return len(np.unique(a)) <= max_values


def parse_splits(text: Optional[str]) -> Tuple[str, ...]:
    """``"train,val"`` -> ("train", "val"); None -> ("train",)."""
    if text is None:
        return ("train",)
    splits = tuple(dict.fromkeys(s.strip().lower() for s in text.split(",") if s.strip()))
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise InputError(f"--splits takes a comma-separated subset of {', '.join(SPLITS)}, got {text!r}")
    return splits


def _plane_selected(series_plane: str, plane: str) -> bool:
    return series_plane == plane or (plane == SHARED_PLANE and series_plane in PLANES)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 or word.endswith('s') else 's'}"


@dataclass
class ManifestSelection:
    """Rows of a manifest chosen for pretraining: absolute image paths, with patient, split and plane per path."""

    paths: List[str]
    patients: List[str]
    splits: List[str]
    planes: List[str]
    skipped_labelmaps: List[str] = field(default_factory=list)

    def summary(self) -> str:
        by_split = Counter(self.splits)
        split_text = ", ".join(f"{s} {by_split[s]}" for s in SPLITS if by_split[s])
        planes = Counter(self.planes)
        plane_text = ", ".join(f"{p} {planes[p]}" for p in PLANES if planes[p])
        text = (f"{_plural(len(self.paths), 'series')} of {_plural(len(set(self.patients)), 'patient')} "
                f"(splits: {split_text}; planes: {plane_text})")
        if self.skipped_labelmaps:
            text += f"; left out {_plural(len(self.skipped_labelmaps), 'label map')} listed as series"
        return text


def select_manifest_rows(manifest: PathLike, plane: str, splits: Sequence[str] = ("train",)) -> ManifestSelection:
    """Image rows of ``plane`` (``shared``: every plane) in ``splits``; ``series_path`` relative to the CSV.

    Raises MissingPathError (no CSV), InputError (columns missing, or no row selected)."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise MissingPathError("manifest not found", manifest)
    with open(manifest, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"plane", "series_path", "split"} - set(reader.fieldnames or [])
        if missing:
            raise InputError(f"manifest lacks column(s) {', '.join(sorted(missing))}", manifest)
        rows = list(reader)
    sel = ManifestSelection([], [], [], [])
    for r in rows:
        p, split = (r.get("plane") or "").strip().lower(), (r.get("split") or "").strip().lower()
        if not _plane_selected(p, plane) or split not in splits:
            continue
        series = (r.get("series_path") or "").strip()
        full = Path(series) if Path(series).is_absolute() else manifest.parent / series
        seg = (r.get("seg_path") or "").strip()
        if is_labelmap_name(series) or (seg and os.path.normpath(seg) == os.path.normpath(series)):
            sel.skipped_labelmaps.append(os.fspath(full))
            continue
        sel.paths.append(os.fspath(full))
        sel.patients.append((r.get("patient_id") or "").strip() or os.fspath(full))
        sel.splits.append(split)
        sel.planes.append(p)
    if not sel.paths:
        raise InputError(f"no image rows with plane={plane} and split in {', '.join(splits)}", manifest)
    return sel


@dataclass
class FolderSelection:
    """Image series of a folder chosen for pretraining (``series`` are :class:`OrthoDiffusionLib.io.Series`)."""

    folder: str
    series: list
    patients: List[str]
    skipped_labelmaps: List[str] = field(default_factory=list)
    skipped_duplicates: List[str] = field(default_factory=list)
    other_planes: int = 0

    def summary(self) -> str:
        planes = Counter(s.plane for s in self.series)
        plane_text = ", ".join(f"{p} {planes[p]}" for p in PLANES if planes[p])
        text = (f"{_plural(len(self.series), 'series')} of {_plural(len(set(self.patients)), 'patient')} "
                f"(top-level folders; planes: {plane_text}); no splits in a folder: every series is used "
                "(--manifest trains on the training split only)")
        left = []
        if self.skipped_labelmaps:
            left.append(_plural(len(self.skipped_labelmaps), "label map"))
        if self.skipped_duplicates:
            left.append(f"{_plural(len(self.skipped_duplicates), 'duplicate')} (same image in another file)")
        if left:
            text += f"; left out {' and '.join(left)}"
        return text


def _same_image_key(series) -> Tuple[tuple, np.ndarray]:
    """(geometry that survives an axis permutation, intensity percentiles scaled to [0, 1]): equal for the same image
    stored in another file, format (DICOM integers vs NIfTI floats) or axis order."""
    size = series.image.GetSize()
    centre = series.image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in size])
    geometry = (tuple(sorted(series.shape)), tuple(np.round(centre, 1)), tuple(sorted(np.round(series.spacing, 2))))
    a = np.asarray(series.array, dtype=np.float64)
    lo, hi = float(a.min()), float(a.max())
    q = np.percentile((a - lo) / max(hi - lo, 1e-9), [1, 5, 10, 25, 50, 75, 90, 95, 99])
    return geometry, q


def _scan_units(folder: Path) -> List[Tuple[str, Path]]:
    """(patient, path) pairs to read: each top-level sub-folder or volume file is one patient; a folder that holds
    DICOM files itself (one exam, e.g. a single series folder) is one unit."""
    from OrthoDiffusionLib.io.dicom_read import is_dicom_file
    from OrthoDiffusionLib.io.volume_read import is_volume_file

    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    if any(p.is_file() and is_dicom_file(os.fspath(p)) for p in entries):
        return [(folder.name, folder)]
    return [(p.name if p.is_dir() else p.name.split(".")[0], p) for p in entries
            if p.is_dir() or is_volume_file(os.fspath(p))]


def _read_unit(path: Path) -> Tuple[list, List[str]]:
    """(image series, label map files) of one patient folder or volume file: DICOM series and volume files, label
    maps (by name, or refused by the reader as one) set aside."""
    from OrthoDiffusionLib.errors import InvalidVolumeError
    from OrthoDiffusionLib.io.dicom_read import read_all_dicom
    from OrthoDiffusionLib.io.reader import volume_files
    from OrthoDiffusionLib.io.volume_read import read_volume

    series = [] if path.is_file() else read_all_dicom(os.fspath(path))
    labelmaps: List[str] = []
    for f in [os.fspath(path)] if path.is_file() else volume_files(os.fspath(path)):
        if is_labelmap_name(f):
            labelmaps.append(f)
            continue
        try:
            series.append(read_volume(f))
        except InvalidVolumeError as e:
            if "label map" not in e.problem:
                raise
            labelmaps.append(f)
    return series, labelmaps


def select_folder_series(folder: PathLike, plane: str) -> FolderSelection:
    """Every image series of ``plane`` under ``folder`` (module doc: label maps and duplicates left out); each
    top-level sub-folder (or file) counts as one patient.

    Raises MissingPathError (no folder), InputError (no image series of the plane)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingPathError("data folder not found", folder)
    sel = FolderSelection(os.fspath(folder), [], [])
    seen: Dict[tuple, List[np.ndarray]] = {}
    for patient, path in _scan_units(folder):
        found, labelmaps = _read_unit(path)
        sel.skipped_labelmaps += labelmaps
        for s in found:
            if looks_like_labelmap(s.array):
                sel.skipped_labelmaps.append(s.source)
                continue
            geometry, q = _same_image_key(s)
            if any(np.allclose(q, other, atol=2e-3) for other in seen.get(geometry, [])):
                sel.skipped_duplicates.append(s.source)
                continue
            seen.setdefault(geometry, []).append(q)
            if not _plane_selected(s.plane, plane):
                sel.other_planes += 1
                continue
            sel.series.append(s)
            sel.patients.append(patient)
    if not sel.series:
        raise InputError(f"no {plane} series under this folder (label maps and duplicate copies left out)", folder)
    return sel
