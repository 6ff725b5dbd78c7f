"""Write a 3D image as a standard MR DICOM series (one file per slice), with no real identifiers.

Used to export simulated or derived series so they can be read back by any DICOM viewer (and by :func:`read_series`).
UIDs are derived from ``uid_seed`` (or, when omitted, from a hash of the image and the arguments), so identical inputs
give byte-identical files.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from ..errors import InvalidVolumeError, NotVolumeError

PATIENT_NAME = "ANONYMOUS^SIMULATED"
PATIENT_ID = "SIMULATED"


def _ds_number(value: float) -> str:
    """A DICOM decimal string (<= 16 characters) for ``value``."""
    text = f"{float(value):.10g}"
    if len(text) > 16:
        text = f"{float(value):.6g}"
    return text


def _stored_values(array: np.ndarray):
    """Choose integer storage for float intensities.

    Returns (stored array, pixel_representation, slope, intercept): integral data within int16 (or uint16) range is
    stored as-is with slope 1; anything else is mapped linearly onto 0..65535 (uint16) with a rescale slope/intercept.
    """
    lo, hi = float(array.min()), float(array.max())
    integral = bool(np.all(np.round(array) == array))
    if integral and lo >= -32768 and hi <= 32767:
        return array.astype(np.int16), 1, 1.0, 0.0
    if integral and lo >= 0 and hi <= 65535:
        return array.astype(np.uint16), 0, 1.0, 0.0
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    # The slope/intercept written to the header are decimal strings; store against the rounded values.
    slope = float(_ds_number(slope))
    intercept = float(_ds_number(lo))
    stored = np.clip(np.round((array.astype(np.float64) - intercept) / slope), 0, 65535).astype(np.uint16)
    return stored, 0, slope, intercept


def _default_seed(image: sitk.Image, parts: List[Any]) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).tobytes())
    for p in (image.GetOrigin(), image.GetSpacing(), image.GetDirection(), *parts):
        h.update(repr(p).encode())
    return h.hexdigest()


def _series_attributes(meta: Mapping[str, Any], description: str, modality: str, study_description: str,
                       series_number: int, slice_thickness: float, spacing_between: float) -> Dataset:
    """The attributes every slice of a series shares that describe the acquisition (no identifiers: the patient is
    anonymous, dates are empty); UIDs, geometry and pixels are the caller's."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = MRImageStorage
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = str(meta.get("manufacturer") or "OrthoDiffusion")
    if meta.get("manufacturer_model"):
        ds.ManufacturerModelName = str(meta["manufacturer_model"])
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study_description
    ds.SeriesDescription = description
    if meta.get("protocol_name"):
        ds.ProtocolName = str(meta["protocol_name"])
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientIdentityRemoved = "YES"
    ds.BodyPartExamined = "KNEE"
    for key, tag in (("scanning_sequence", "ScanningSequence"), ("sequence_variant", "SequenceVariant"),
                     ("scan_options", "ScanOptions")):
        value = meta.get(key)
        if value:
            ds.__setattr__(tag, list(value) if isinstance(value, (list, tuple)) else str(value).split("\\"))
    if not meta.get("scanning_sequence"):
        ds.ScanningSequence = "RM"  # research mode: not from a scanner
    if not meta.get("sequence_variant"):
        ds.SequenceVariant = "NONE"
    ds.MRAcquisitionType = str(meta.get("mr_acquisition_type") or "2D")
    if meta.get("sequence_name"):
        ds.SequenceName = str(meta["sequence_name"])
    ds.SliceThickness = _ds_number(slice_thickness)
    ds.SpacingBetweenSlices = _ds_number(spacing_between)
    for key, tag in (("repetition_time", "RepetitionTime"), ("echo_time", "EchoTime"),
                     ("inversion_time", "InversionTime"), ("magnetic_field_strength", "MagneticFieldStrength"),
                     ("flip_angle", "FlipAngle")):
        if meta.get(key) is not None:
            ds.__setattr__(tag, _ds_number(meta[key]))
    if meta.get("echo_number") is not None:
        ds.EchoNumbers = int(meta["echo_number"])
    if meta.get("echo_train_length") is not None:
        ds.EchoTrainLength = int(meta["echo_train_length"])
    ds.StudyID = ""
    ds.SeriesNumber = int(series_number)
    ds.PositionReferenceIndicator = ""
    return ds


def _file_meta(sop_uid: str) -> FileMetaDataset:
    """The file meta information of one MR image file (explicit VR little endian)."""
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = MRImageStorage
    fm.MediaStorageSOPInstanceUID = sop_uid
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    fm.ImplementationVersionName = "ORTHODIFFUSION"
    return fm


def _set_pixel_attributes(ds: Dataset, rows: int, cols: int, spacing: Sequence[float], pixel_rep: int,
                          window: Tuple[float, float], slope: float, intercept: float) -> None:
    """The image pixel module of a 16-bit monochrome slice: size, in-plane spacing, stored value range, window
    (the whole series' intensity range) and the rescale to the original intensities."""
    lo, hi = window
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [_ds_number(spacing[1]), _ds_number(spacing[0])]  # row spacing, column spacing
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = pixel_rep
    ds.WindowCenter = _ds_number((lo + hi) / 2)
    ds.WindowWidth = _ds_number(max(hi - lo, 1.0))
    ds.RescaleIntercept = _ds_number(intercept)
    ds.RescaleSlope = _ds_number(slope)
    ds.RescaleType = "US"


def _series_uids(seed: str, study_uid_seed: Optional[str], study_description: str, series_number: int
                 ) -> Tuple[str, str, str]:
    """(StudyInstanceUID, SeriesInstanceUID, FrameOfReferenceUID), each a function of its seeds only."""
    study_uid = generate_uid(entropy_srcs=[str(study_uid_seed) if study_uid_seed is not None
                                           else f"orthodiffusion-study:{study_description}", "study"])
    series_uid = generate_uid(entropy_srcs=[seed, "series", str(series_number)])
    frame_uid = generate_uid(entropy_srcs=[seed, "frame-of-reference"])
    return study_uid, series_uid, frame_uid


def write_dicom_series(
    image: sitk.Image,
    folder: Union[str, os.PathLike],
    *,
    meta: Optional[Mapping[str, Any]] = None,
    series_description: str = "PD SAG",
    modality: str = "MR",
    series_number: int = 1,
    study_description: str = "OrthoDiffusion",
    uid_seed: Optional[str] = None,
    file_prefix: str = "IM",
    study_uid_seed: Optional[str] = None,
) -> List[Path]:
    """Write ``image`` as an MR DICOM series, one file per slice along ITK axis 2.

    Args:
        image: 3D image (any pixel type; intensities are stored as int16/uint16 with RescaleSlope/Intercept when they
            are not integers). ITK axis 0 = columns, axis 1 = rows, axis 2 = slices; geometry (LPS) is written to
            ImageOrientationPatient / ImagePositionPatient / PixelSpacing / SliceThickness / SpacingBetweenSlices.
        folder: output folder (created); files are ``{file_prefix}{slice:04d}.dcm`` with slice 1 at index 0.
        meta: acquisition metadata in :class:`Series` ``meta`` keys (echo_time, repetition_time, inversion_time,
            echo_number, flip_angle, magnetic_field_strength, manufacturer, manufacturer_model, scanning_sequence,
            sequence_variant, scan_options, mr_acquisition_type, protocol_name, slice_thickness, series_description).
            Identifiers are never taken from it.
        series_description: SeriesDescription (``meta["series_description"]`` wins when given).
        modality: Modality tag (``"MR"`` normally; other values only to make test data).
        series_number: SeriesNumber.
        study_description: StudyDescription.
        uid_seed: seed of the Series/SOP/FrameOfReference UIDs. None = derived from the image and arguments.
        file_prefix: file name prefix.
        study_uid_seed: seed of the StudyInstanceUID; series written with the same one form one study (one exam).
            None = one study per ``study_description``.

    Returns:
        The written paths, in slice order.
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise NotVolumeError("write_dicom_series needs a 3D scalar image", folder)
    meta = dict(meta or {})
    description = str(meta.get("series_description") or series_description)
    if uid_seed is None:
        uid_seed = _default_seed(image, [description, modality, series_number, study_description, sorted(meta.items(), key=str)])
    seed = str(uid_seed)
    study_uid, series_uid, frame_uid = _series_uids(seed, study_uid_seed, study_description, series_number)

    array = sitk.GetArrayFromImage(image)  # (D, H, W)
    if not np.all(np.isfinite(array)):
        raise InvalidVolumeError("image holds NaN/Inf values; cannot store them in DICOM", folder)
    stored, pixel_rep, slope, intercept = _stored_values(array)
    n_slices, rows, cols = stored.shape
    spacing = image.GetSpacing()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    row_dir, col_dir, normal = direction[:, 0], direction[:, 1], direction[:, 2]
    slice_thickness = float(meta.get("slice_thickness") or spacing[2])
    window_lo, window_hi = float(array.min()), float(array.max())

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths: List[Path] = []
    for k in range(n_slices):
        sop_uid = generate_uid(entropy_srcs=[seed, "sop", str(series_number), str(k)])
        ds = _series_attributes(meta, description, modality, study_description, series_number, slice_thickness,
                                spacing[2])
        ds.file_meta = _file_meta(sop_uid)
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = k + 1
        position = origin + k * spacing[2] * normal
        ds.ImagePositionPatient = [_ds_number(v) for v in position]
        ds.ImageOrientationPatient = [_ds_number(v) for v in (*row_dir, *col_dir)]
        ds.FrameOfReferenceUID = frame_uid
        ds.SliceLocation = _ds_number(float(position @ normal))
        _set_pixel_attributes(ds, rows, cols, spacing, pixel_rep, (window_lo, window_hi), slope, intercept)
        ds.PixelData = np.ascontiguousarray(stored[k]).astype(stored.dtype.newbyteorder("<"), copy=False).tobytes()
        path = out / f"{file_prefix}{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
