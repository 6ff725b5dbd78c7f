"""Read MR series from DICOM files and folders with pydicom.

Slices are sorted by their position along the slice normal (ImagePositionPatient . (row x column direction)), never
by file name or InstanceNumber; the geometry of the returned image is built from ImageOrientationPatient,
ImagePositionPatient and PixelSpacing. Pixel data goes through pydicom's handlers (with the pylibjpeg plugins for
JPEG 2000 / JPEG lossless / JPEG-LS / RLE), any byte order, with RescaleSlope/RescaleIntercept applied.

A folder may hold several series; files are grouped by SeriesInstanceUID, and a series holding several echoes
(EchoNumbers, else EchoTime) at the same positions is split into one group per echo. Multi-frame files (enhanced MR
with per-frame functional groups, or legacy multi-frame) contribute one slice per frame.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ..errors import (
    CorruptFileError,
    InconsistentSeriesError,
    InvalidVolumeError,
    NoDicomError,
    NotMRError,
    NotVolumeError,
)
from ..output_folder import carries_marker
from . import sequence
from .exam_identity import header_identity, series_identity
from .limits import check_volume_size
from .orientation import classify_plane
from .series import Series

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_POSITION_TOL_MM = 1e-3


@dataclass
class DicomFrame:
    """One 2D image of a series: a single-frame file, or one frame of a multi-frame file."""

    path: str
    frame: Optional[int]  # None for single-frame files
    position: np.ndarray  # (3,) LPS mm, centre of the first transmitted pixel
    row_dir: np.ndarray  # (3,) direction of increasing column index
    col_dir: np.ndarray  # (3,) direction of increasing row index
    pixel_spacing: Tuple[float, float]  # (between rows, between columns) mm
    rows: int
    columns: int
    echo_number: Optional[int]
    echo_time: Optional[float]
    slope: float
    intercept: float


@dataclass
class DicomSeriesGroup:
    """Header-only description of one series (one echo of it when a series holds several echoes).

    ``uid`` is kept for selection only; it never goes into :class:`Series` metadata or messages.
    """

    uid: str
    series_number: Optional[int]
    description: str
    modality: str
    echo_number: Optional[int]
    echo_time: Optional[float]
    header: Dataset
    frames: List[DicomFrame] = field(default_factory=list)
    n_echoes: int = 1
    identity: Dict[str, str] = field(default_factory=dict)  # in memory only (see .exam_identity)
    identity_conflict: Optional[str] = None

    @property
    def files(self) -> List[str]:
        return sorted({f.path for f in self.frames})

    @property
    def folder(self) -> str:
        files = self.files
        return os.path.commonpath(files) if len(files) > 1 else files[0]

    def label(self) -> str:
        """Identifier-free description, e.g. ``series 8 'T2 MAP' echo 2 (TE 12.6 ms), 24 images``."""
        parts = [f"series {self.series_number if self.series_number is not None else '?'}"]
        parts.append(repr(self.description or "(no description)"))
        if self.n_echoes > 1:
            parts.append(f"echo {self.echo_number if self.echo_number is not None else '?'}")
        if self.echo_time is not None:
            parts.append(f"(TE {self.echo_time:g} ms)")
        return " ".join(parts) + f", {len(self.frames)} images"


@dataclass
class DicomScan:
    """Everything found under a folder: image series groups and files that were skipped (with the reason)."""

    groups: List[DicomSeriesGroup]
    ignored: List[Tuple[str, str]]  # (path, reason)
    corrupt: List[Tuple[str, str]] = field(default_factory=list)  # (file, problem): the unreadable ones of ignored


# ----------------------------------------------------------------------------------------------------------- headers
def _has_dicm_magic(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _looks_like_raw_dicom(path: str) -> bool:
    """DICOM without the 128-byte preamble usually starts with a group 0x0008 tag (little or big endian)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head[:2] in (b"\x08\x00", b"\x00\x08") and len(head) == 4


def is_dicom_file(path: str) -> bool:
    """True when the file has the DICOM 'DICM' marker (or looks like preamble-less DICOM)."""
    return _has_dicm_magic(path) or _looks_like_raw_dicom(path)


def read_header(path: str) -> Optional[Dataset]:
    """The header (no pixel data) of a DICOM file; None if the file is not DICOM.

    Raises:
        CorruptFileError: the file says it is DICOM but cannot be parsed (e.g. truncated).
    """
    magic = _has_dicm_magic(path)
    if not magic and not _looks_like_raw_dicom(path):
        return None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=not magic)
    except InvalidDicomError:
        if magic:
            raise CorruptFileError("not a valid DICOM file", path)
        return None
    except Exception as e:  # pydicom raises many types on truncated/garbled headers
        if magic:
            raise CorruptFileError(f"cannot parse DICOM header ({type(e).__name__}: {e})", path)
        return None
    eof = [str(w.message) for w in caught if "end of file" in str(w.message).lower()]
    if eof and magic:
        raise CorruptFileError(f"DICOM header ends early (truncated): {eof[0][:100]}", path)
    if magic and len(ds) == 0:
        raise CorruptFileError("DICOM file holds no data set (truncated or empty)", path)
    sop = str(getattr(ds.get("file_meta", None), "MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
    if sop and "Image Storage" in pydicom.uid.UID(sop).name and ("Rows" not in ds or "Columns" not in ds):
        raise CorruptFileError(f"{pydicom.uid.UID(sop).name} file without Rows/Columns (truncated header?)", path)
    return ds


def _vec(values: Any, n: int, what: str, path: str) -> np.ndarray:
    try:
        v = np.asarray([float(x) for x in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise CorruptFileError(f"unreadable {what}", path)
    if v.size != n or not np.all(np.isfinite(v)):
        raise CorruptFileError(f"{what} must have {n} finite numbers, got {list(values)}", path)
    return v


def _first(seq_owner: Optional[Dataset], seq_name: str) -> Optional[Dataset]:
    if seq_owner is None or seq_name not in seq_owner:
        return None
    seq = seq_owner[seq_name].value
    return seq[0] if len(seq) else None


def _functional(ds: Dataset, frame: int, seq_name: str) -> Optional[Dataset]:
    """Item of a functional group macro for one frame (per-frame first, then shared)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame):
        item = _first(per_frame[frame], seq_name)
        if item is not None:
            return item
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared is not None and len(shared):
        return _first(shared[0], seq_name)
    return None


def _orientation(values: Any, path: str) -> Tuple[np.ndarray, np.ndarray]:
    iop = _vec(values, 6, "ImageOrientationPatient", path)
    row, col = iop[:3], iop[3:]
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    if nr < 1e-6 or nc < 1e-6:
        raise CorruptFileError("ImageOrientationPatient has a zero vector", path)
    return row / nr, col / nc


def _frames_of(ds: Dataset, path: str) -> List[DicomFrame]:
    """The 2D images (with geometry) a DICOM image file holds."""
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows < 1 or cols < 1:
        raise CorruptFileError("image without Rows/Columns", path)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    echo_number = ds.get("EchoNumbers")
    echo_number = int(sequence.number(echo_number)) if sequence.number(echo_number) is not None else None
    echo_time = sequence.number(ds.get("EchoTime"))
    slope = sequence.number(ds.get("RescaleSlope"))
    intercept = sequence.number(ds.get("RescaleIntercept"))
    slope = 1.0 if slope is None or slope == 0 else slope
    intercept = 0.0 if intercept is None else intercept

    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        frames = []
        for i in range(n_frames):
            pos_item = _functional(ds, i, "PlanePositionSequence")
            ori_item = _functional(ds, i, "PlaneOrientationSequence")
            pix_item = _functional(ds, i, "PixelMeasuresSequence")
            if pos_item is None or ori_item is None or pix_item is None:
                raise CorruptFileError(f"multi-frame image: frame {i + 1} lacks plane position/orientation/pixel "
                                       "measures", path)
            row, col = _orientation(ori_item.ImageOrientationPatient, path)
            ps = _vec(pix_item.PixelSpacing, 2, "PixelSpacing", path)
            echo_item = _functional(ds, i, "MREchoSequence")
            te = sequence.number(echo_item.get("EffectiveEchoTime")) if echo_item is not None else echo_time
            pvt = _functional(ds, i, "PixelValueTransformationSequence")
            f_slope, f_inter = slope, intercept
            if pvt is not None:
                s = sequence.number(pvt.get("RescaleSlope"))
                f_slope = s if s not in (None, 0.0) else 1.0
                f_inter = sequence.number(pvt.get("RescaleIntercept")) or 0.0
            frames.append(DicomFrame(path, i, _vec(pos_item.ImagePositionPatient, 3, "ImagePositionPatient", path),
                                     row, col, (float(ps[0]), float(ps[1])), rows, cols,
                                     echo_number, te, f_slope, f_inter))
        return frames

    row, col = _orientation(ds.ImageOrientationPatient, path)
    ps = _vec(ds.PixelSpacing, 2, "PixelSpacing", path)
    pos = _vec(ds.ImagePositionPatient, 3, "ImagePositionPatient", path)
    if n_frames == 1:
        return [DicomFrame(path, None, pos, row, col, (float(ps[0]), float(ps[1])), rows, cols,
                           echo_number, echo_time, slope, intercept)]
    # Legacy multi-frame: frames stacked along the normal at SpacingBetweenSlices (else SliceThickness).
    step = sequence.number(ds.get("SpacingBetweenSlices")) or sequence.number(ds.get("SliceThickness"))
    if not step:
        raise CorruptFileError("multi-frame image without per-frame positions or slice spacing", path)
    normal = np.cross(row, col)
    return [DicomFrame(path, i, pos + i * step * normal, row, col, (float(ps[0]), float(ps[1])), rows, cols,
                       echo_number, echo_time, slope, intercept) for i in range(n_frames)]


def _is_image(ds: Dataset) -> bool:
    return "Rows" in ds and "Columns" in ds and ds.get("SOPClassUID", "") != DICOMDIR_SOP_CLASS


def _skip_reason(ds: Dataset) -> Optional[str]:
    sop = str(ds.get("SOPClassUID", "") or getattr(ds.get("file_meta", None), "MediaStorageSOPClassUID", ""))
    if sop == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return "DICOMDIR (index file, no image)"
    name = pydicom.uid.UID(sop).name if sop else "unknown SOP class"
    if not _is_image(ds):
        return f"non-image DICOM ({name})"
    functional = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    if not functional and not all(k in ds for k in ("ImageOrientationPatient", "ImagePositionPatient",
                                                    "PixelSpacing")):
        return f"image without patient geometry, e.g. a screenshot ({name}, modality {ds.get('Modality', '?')})"
    return None


# ---------------------------------------------------------------------------------------------------------- scanning
def _iter_files(folder: str) -> Iterable[str]:
    """Files under ``folder`` (sorted walk), skipping hidden files and this tool's result folders (marker)."""
    for root, dirs, files in os.walk(folder):
        if carries_marker(root):
            dirs[:] = []
            continue
        dirs.sort()
        for name in sorted(files):
            if not name.startswith("."):
                yield os.path.join(root, name)


def scan_dicom(paths: Sequence[str], strict: bool = True) -> DicomScan:
    """Read the headers of ``paths`` and group the image files into series (split by echo).

    Non-DICOM files are skipped silently; non-image DICOM (DICOMDIR, SR, ...) is listed in ``ignored``.
    A corrupt DICOM file raises :class:`CorruptFileError` when ``strict``, else it is listed in ``ignored``.
    """
    by_uid: Dict[str, List[Tuple[Dataset, List[DicomFrame]]]] = {}
    ignored: List[Tuple[str, str]] = []
    corrupt: List[Tuple[str, str]] = []
    for path in paths:
        try:
            ds = read_header(path)
            if ds is None:
                continue
            try:
                reason = _skip_reason(ds)
                frames = None if reason else _frames_of(ds, path)
                uid = str(ds.get("SeriesInstanceUID", "") or f"no-uid:{os.path.dirname(path)}")
            except (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError) as e:
                # pydicom parses values lazily: a malformed one (e.g. IS '1A') fails only when read
                raise CorruptFileError(f"malformed DICOM header value ({type(e).__name__}: {str(e)[:120]})",
                                       path) from None
            if reason:
                ignored.append((path, reason))
                continue
        except CorruptFileError as e:
            if strict:
                raise
            ignored.append((path, e.problem))
            corrupt.append((path, e.problem))
            continue
        by_uid.setdefault(uid, []).append((ds, frames))

    groups: List[DicomSeriesGroup] = []
    for uid, items in by_uid.items():
        header = items[0][0]
        frames = [f for _, fr in items for f in fr]
        identity, conflict = series_identity([(fr[0].path, header_identity(ds)) for ds, fr in items if fr])
        numbers = {f.echo_number for f in frames}
        times = {round(f.echo_time, 4) if f.echo_time is not None else None for f in frames}
        if len(numbers) > 1:
            key = lambda f: (f.echo_number is None, f.echo_number or 0)  # noqa: E731
        elif len(times) > 1:
            key = lambda f: (f.echo_time is None, round(f.echo_time or 0.0, 4))  # noqa: E731
        else:
            key = lambda f: (False, 0)  # noqa: E731
        split: Dict[Any, List[DicomFrame]] = {}
        for f in frames:
            split.setdefault(key(f), []).append(f)
        for rank, k in enumerate(sorted(split)):
            fr = split[k]
            tes = sorted({f.echo_time for f in fr if f.echo_time is not None})
            echo_number = fr[0].echo_number if len(numbers) > 1 or fr[0].echo_number is not None else None
            if len(split) > 1 and len(numbers) <= 1:
                echo_number = rank + 1  # echoes told apart by TE only: number them by increasing TE
            sn = sequence.number(header.get("SeriesNumber"))
            groups.append(DicomSeriesGroup(
                uid=uid, series_number=None if sn is None else int(sn),
                description=str(header.get("SeriesDescription", "") or ""),
                modality=str(header.get("Modality", "") or ""),
                echo_number=echo_number, echo_time=tes[0] if tes else None,
                header=header, frames=fr, n_echoes=len(split), identity=identity, identity_conflict=conflict))
    groups.sort(key=lambda g: (g.series_number if g.series_number is not None else 1 << 30, g.description,
                               g.echo_number or 0, g.echo_time or 0.0, g.files[0]))
    return DicomScan(groups, ignored, corrupt)


def scan_dicom_folder(folder: str, strict: bool = True) -> DicomScan:
    """:func:`scan_dicom` over every file in a folder tree (sorted walk)."""
    return scan_dicom(list(_iter_files(folder)), strict=strict)


# ------------------------------------------------------------------------------------------------------------ volume
def _read_pixels(path: str) -> np.ndarray:
    """Stored pixel values of a file, shape (frames, rows, columns) float32 (before rescale)."""
    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    except Exception as e:
        ts = ""
        try:
            ts = f" (transfer syntax {pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID.name})"
        except Exception:
            pass
        raise CorruptFileError(f"cannot read pixel data{ts}: {type(e).__name__}: {str(e)[:200]}", path)
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise NotMRError(f"colour image ({ds.get('PhotometricInterpretation', '?')}), not an MR intensity image", path)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    expected = (n_frames, int(ds.Rows), int(ds.Columns))
    arr = np.asarray(arr, dtype=np.float32).reshape(expected) if arr.size == np.prod(expected) else None
    if arr is None:
        raise CorruptFileError("pixel data does not match Rows x Columns x frames (truncated?)", path)
    return arr


def _check_geometry(frames: List[DicomFrame], where: str) -> None:
    ref = frames[0]
    for f in frames[1:]:
        if (f.rows, f.columns) != (ref.rows, ref.columns):
            raise InconsistentSeriesError(
                f"mixed image sizes in one series ({ref.rows}x{ref.columns} in {os.path.basename(ref.path)}, "
                f"{f.rows}x{f.columns} in {os.path.basename(f.path)})", where)
        if float(np.dot(f.row_dir, ref.row_dir)) < 0.9999 or float(np.dot(f.col_dir, ref.col_dir)) < 0.9999:
            raise InconsistentSeriesError(
                f"mixed orientations in one series ({os.path.basename(ref.path)} and {os.path.basename(f.path)} "
                "have different ImageOrientationPatient)", where)
        if not np.allclose(f.pixel_spacing, ref.pixel_spacing, rtol=1e-3, atol=1e-4):
            raise InconsistentSeriesError(
                f"mixed pixel spacing in one series ({ref.pixel_spacing} vs {f.pixel_spacing})", where)


def check_not_sheared(frames: List[DicomFrame], normal: np.ndarray, where: str) -> None:
    """Refuse a slice stack whose positions do not lie along the slice normal (gantry tilt, sheared stacks): its
    voxels are not on the rectangular grid the geometry describes. Offsets up to half a pixel are tolerated.

    Raises:
        InconsistentSeriesError: naming the worst offset and the tilt angle.
    """
    d = np.stack([f.position for f in frames]) - frames[0].position
    along = d @ normal
    inplane = d - along[:, None] * normal[None, :]
    offset = np.linalg.norm(inplane, axis=1)
    k = int(np.argmax(offset))
    tolerance = max(0.5 * min(frames[0].pixel_spacing), 0.01)
    if offset[k] > tolerance:
        tilt = float(np.degrees(np.arctan2(offset[k], abs(along[k]) or 1e-9)))
        raise InconsistentSeriesError(
            f"the slices do not stack along their normal (gantry tilt or a sheared stack): "
            f"{os.path.basename(frames[k].path)} is {offset[k]:.1f} mm off the normal through the first slice "
            f"(tilt about {tilt:.1f} deg); resample the series onto an orthogonal grid first", where)


def sort_frames(frames: List[DicomFrame], where: str) -> Tuple[List[DicomFrame], np.ndarray, float]:
    """Sort frames by position along the slice normal and check the spacing.

    Returns:
        (sorted frames, unit normal (3,), slice spacing mm).

    Raises:
        NotVolumeError: a single image. InconsistentSeriesError: mixed geometry, duplicate positions, uneven spacing.
    """
    if len(frames) < 2:
        raise NotVolumeError("a single 2D image, not a 3D series", frames[0].path if frames else where)
    _check_geometry(frames, where)
    normal = np.cross(frames[0].row_dir, frames[0].col_dir)
    normal /= np.linalg.norm(normal)
    dist = np.array([float(f.position @ normal) for f in frames])
    order = np.argsort(dist, kind="stable")
    frames = [frames[i] for i in order]
    dist = dist[order]
    steps = np.diff(dist)
    if np.any(steps < _POSITION_TOL_MM):
        i = int(np.argmin(steps))
        raise InconsistentSeriesError(
            f"several images at the same slice position ({os.path.basename(frames[i].path)} and "
            f"{os.path.basename(frames[i + 1].path)}); repeated acquisitions or phases are not supported", where)
    check_not_sheared(frames, normal, where)
    spacing = float(np.median(steps))
    if np.max(np.abs(steps - spacing)) > max(0.01 * spacing, 0.01):
        raise InconsistentSeriesError(
            f"inconsistent slice spacing: steps between {steps.min():.3f} and {steps.max():.3f} mm along the normal "
            "(missing or extra slices?)", where)
    return frames, normal, float(np.mean(steps))


def meta_from_header(ds: Dataset, n_slices: int, spacing: float, pixel_spacing: Tuple[float, float],
                      echo_number: Optional[int], echo_time: Optional[float]) -> Dict[str, Any]:
    def text(tag: str) -> Optional[str]:
        v = ds.get(tag)
        if v is None or v == "":
            return None
        if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
            return "\\".join(str(x) for x in v)
        return str(v)

    sn = sequence.number(ds.get("SeriesNumber"))
    region = _first(ds, "AnatomicRegionSequence")
    meta = {
        "format": "DICOM",
        "modality": text("Modality"),
        "body_part_examined": text("BodyPartExamined"),
        "anatomic_region": None if region is None else (str(region.get("CodeMeaning", "") or "") or None),
        "study_description": text("StudyDescription"),
        "series_description": text("SeriesDescription"),
        "protocol_name": text("ProtocolName"),
        "series_number": None if sn is None else int(sn),
        "scanning_sequence": text("ScanningSequence"),
        "sequence_variant": text("SequenceVariant"),
        "scan_options": text("ScanOptions"),
        "sequence_name": text("SequenceName"),
        "mr_acquisition_type": text("MRAcquisitionType"),
        "echo_time": echo_time if echo_time is not None else sequence.number(ds.get("EchoTime")),
        "repetition_time": sequence.number(ds.get("RepetitionTime")),
        "inversion_time": sequence.number(ds.get("InversionTime")),
        "echo_number": echo_number,
        "echo_train_length": None if sequence.number(ds.get("EchoTrainLength")) is None
        else int(sequence.number(ds.get("EchoTrainLength"))),
        "flip_angle": sequence.number(ds.get("FlipAngle")),
        "magnetic_field_strength": sequence.number(ds.get("MagneticFieldStrength")),
        "manufacturer": text("Manufacturer"),
        "manufacturer_model": text("ManufacturerModelName"),
        "slice_thickness": sequence.number(ds.get("SliceThickness")),
        "spacing_between_slices": round(spacing, 6),
        "pixel_spacing": [float(pixel_spacing[0]), float(pixel_spacing[1])],
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "number_of_slices": n_slices,
        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID.name) if "TransferSyntaxUID" in ds.get("file_meta", {})
        else None,
    }
    return sequence.annotate(meta)


def load_group(group: DicomSeriesGroup, *, where: Optional[str] = None,
               tolerance_deg: float = 30.0) -> Series:
    """Read the pixels of one series group into a :class:`Series` (slice axis = ITK axis 2).

    Raises:
        NotMRError, NotVolumeError, InconsistentSeriesError, CorruptFileError, InvalidVolumeError,
        ObliqueSeriesError (all naming the file or folder).
    """
    where = where or group.folder
    if group.modality.upper() != "MR":
        raise NotMRError(f"modality is {group.modality or 'missing'}, not MR ({group.label()})", where)
    frames, normal, slice_spacing = sort_frames(group.frames, where)
    ref = frames[0]
    check_volume_size((ref.columns, ref.rows, len(frames)), 4, where, "the DICOM headers")
    volume = np.empty((len(frames), ref.rows, ref.columns), dtype=np.float32)
    cache: Dict[str, np.ndarray] = {}
    for k, f in enumerate(frames):
        if f.path not in cache:
            cache.clear()  # keep at most one (multi-frame) file in memory
            cache[f.path] = _read_pixels(f.path)
        pixels = cache[f.path]
        volume[k] = pixels[0 if f.frame is None else f.frame] * f.slope + f.intercept
    if not np.all(np.isfinite(volume)):
        raise InvalidVolumeError("volume holds NaN/Inf values", where)
    if float(volume.max()) == float(volume.min()):
        raise InvalidVolumeError(f"volume is constant ({float(volume.min()):g} everywhere)", where)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((ref.pixel_spacing[1], ref.pixel_spacing[0], slice_spacing))
    image.SetOrigin(tuple(float(v) for v in ref.position))
    direction = np.stack([ref.row_dir, ref.col_dir, normal], axis=1)
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    plane, obliquity = classify_plane(image, 2, tolerance_deg, path=where)
    meta = meta_from_header(group.header, len(frames), slice_spacing, ref.pixel_spacing,
                             group.echo_number, group.echo_time)
    return Series(image=image, plane=plane, obliquity_deg=obliquity, source=where, meta=meta,
                  identity=dict(group.identity), identity_conflict=group.identity_conflict)


def select_group(groups: List[DicomSeriesGroup], where: str, series_uid: Union[str, Sequence[str], None],
                 echo: Optional[int]) -> DicomSeriesGroup:
    """Pick one group by SeriesInstanceUID (or SeriesNumber given as text) and echo number (1 = first echo).

    ``series_uid`` may list several UIDs (one per folder of an exam): the groups matching any of them are kept, and a
    path holding a single series that none of them names keeps it."""
    from ..errors import AmbiguousSeriesError

    chosen = groups
    if series_uid is not None:
        uids = [str(series_uid)] if isinstance(series_uid, (str, int)) else [str(u) for u in series_uid]
        chosen = [g for g in groups if g.uid in uids]
        if not chosen:
            chosen = [g for g in groups if g.series_number is not None and str(g.series_number) in uids]
        if not chosen and len(uids) > 1 and len({g.uid for g in groups}) == 1:
            chosen = groups
        if not chosen:
            raise AmbiguousSeriesError(
                f"no series matches the requested SeriesInstanceUID/SeriesNumber; found: "
                f"{'; '.join(g.label() for g in groups)}", where)
    if echo is not None and any(g.n_echoes > 1 for g in chosen):  # the echo of a multi-echo series
        picked = [g for g in chosen if g.n_echoes == 1 or
                  (g.echo_number if g.echo_number is not None else 1) == int(echo)]
        if not picked:
            raise AmbiguousSeriesError(
                f"no echo {echo}; found: {'; '.join(g.label() for g in chosen)}", where)
        chosen = picked
    if len(chosen) > 1:
        raise AmbiguousSeriesError(
            f"{len(chosen)} series/echoes found, choose one with --series-uid UID (SeriesInstanceUID or SeriesNumber) "
            f"and/or --echo N (library: series_uid=, echo=): {'; '.join(g.label() for g in chosen)}", where)
    return chosen[0]


def read_dicom(path: str, *, series_uid: Union[str, Sequence[str], None] = None,
               echo: Optional[int] = None) -> Series:
    """One series from a DICOM folder or a single (multi-frame) DICOM file."""
    if os.path.isdir(path):
        scan = scan_dicom_folder(path)
        if not scan.groups:
            extra = f" (only {', '.join(sorted({r for _, r in scan.ignored}))})" if scan.ignored else ""
            raise NoDicomError(f"no DICOM image series in this folder{extra}", path)
    else:
        scan = scan_dicom([path])
        if not scan.groups:
            reason = scan.ignored[0][1] if scan.ignored else "not a DICOM file"
            raise NoDicomError(f"no image in this file: {reason}", path)
    group = select_group(scan.groups, path, series_uid, echo)
    return load_group(group, where=path)


def read_all_dicom(folder: str, ignored: Optional[List[Tuple[str, str]]] = None) -> List[Series]:
    """Every MR series (each echo separately) under a folder; non-MR and non-image files are listed in ``ignored``.

    Raises the typed error of the first broken series (a study scan that should skip broken series uses
    :func:`scan_dicom_folder` and :func:`load_group` directly).
    """
    scan = scan_dicom_folder(folder)
    if ignored is not None:
        ignored.extend(scan.ignored)
    out: List[Series] = []
    for g in scan.groups:
        if g.modality.upper() != "MR":
            if ignored is not None:
                ignored.append((g.folder, f"not MR (modality {g.modality or 'missing'}): {g.label()}"))
            continue
        out.append(load_group(g, where=g.folder if len(scan.groups) > 1 else folder))
    return out


__all__ = [
    "DicomFrame", "DicomSeriesGroup", "DicomScan", "scan_dicom", "scan_dicom_folder", "load_group",
    "select_group", "read_dicom", "read_all_dicom", "read_header", "is_dicom_file", "sort_frames", "meta_from_header",
    "check_not_sheared",
]
