"""Helpers shared by the io/preprocess tests: cached real-data loads and reformats of the DESS series; manifest
CSVs for the training tests."""
from __future__ import annotations

import csv
import functools
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from OrthoDiffusionLib.io import Series, read_series
from OrthoDiffusionLib.io.orientation import CANONICAL_ORIENTATION
from OrthoDiffusionLib.io.reformat import reformat_image

CODES = CANONICAL_ORIENTATION


def write_rows_csv(path: Path, rows) -> Path:
    """``rows`` (dicts with the same keys) as a CSV at ``path`` (header from the first row); returns ``path``."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@functools.lru_cache(maxsize=2)
def load_dess(shared_data: Path) -> Series:
    """The real sagittal DESS series (read once per test session)."""
    return read_series(shared_data / "dess_sagittal_dicom")


def code_direction(code: str) -> np.ndarray:
    """3x3 direction matrix of a DICOMOrient code (letters = where increasing index points)."""
    dummy = sitk.DICOMOrient(sitk.Image([2, 2, 2], sitk.sitkUInt8), code)
    return np.asarray(dummy.GetDirection()).reshape(3, 3)


def reformat(image: sitk.Image, plane: str, spacing=(1.5, 1.5, 3.0)) -> sitk.Image:
    """Resample ``image`` (linear) onto a grid of ``plane`` covering its bounding box; ITK axis 2 = slice axis."""
    return reformat_image(image, plane, spacing)


def physical_points(image: sitk.Image, zyx: np.ndarray) -> np.ndarray:
    """LPS points (n, 3) of voxel indices given as (n, 3) rows (z, y, x)."""
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    xyz = zyx[:, ::-1].astype(np.float64) * np.asarray(image.GetSpacing())
    return np.asarray(image.GetOrigin()) + xyz @ d.T


def continuous_index(image: sitk.Image, points: np.ndarray) -> np.ndarray:
    """Continuous (x, y, z) indices (n, 3) of LPS points in ``image``."""
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    m = d @ np.diag(image.GetSpacing())
    return (points - np.asarray(image.GetOrigin())) @ np.linalg.inv(m).T


def join_exam_of(folder: Path, reference: Path) -> None:
    """Give every DICOM file in ``folder`` the patient and study of the DICOM file ``reference`` (PatientID,
    StudyInstanceUID, birth date, sex), so series written separately form one exam with it."""
    import pydicom

    from OrthoDiffusionLib.io.exam_identity import IDENTITY_TAGS

    ref = pydicom.dcmread(reference, stop_before_pixels=True)
    for path in sorted(Path(folder).glob("*.dcm")):
        ds = pydicom.dcmread(path)
        for tag in IDENTITY_TAGS:
            if tag in ref:
                setattr(ds, tag, ref.get(tag))
            elif tag in ds:
                del ds[tag]
        ds.save_as(path)
