"""Entry points that read series from any supported path (DICOM folder/file, NIfTI, NRRD, MetaImage)."""
from __future__ import annotations

import os
from typing import List, Optional, Tuple, Union

from ..errors import CorruptFileError, MissingPathError, NoDicomError
from .dicom_read import is_dicom_file, read_all_dicom, read_dicom
from .series import Series
from .volume_read import is_volume_file, read_volume, volume_suffix

PathLike = Union[str, os.PathLike]


def read_series(path: PathLike, *, series_uid: Optional[str] = None, echo: Optional[int] = None) -> Series:
    """Read one series.

    Args:
        path: a DICOM folder (searched recursively), a single (multi-frame) DICOM file, or a NIfTI (.nii/.nii.gz),
            NRRD (.nrrd/.nhdr) or MetaImage (.mha/.mhd) volume.
        series_uid: for DICOM folders holding several series: the SeriesInstanceUID (or the SeriesNumber as text).
        echo: for multi-echo series: the echo number (1 = first echo; by increasing TE when EchoNumbers is absent).

    Returns:
        The :class:`Series` (slice axis = ITK axis 2, float32, plane classified).

    Raises:
        MissingPathError, NoDicomError, NotMRError, CorruptFileError, InconsistentSeriesError, NotVolumeError,
        InvalidVolumeError, ObliqueSeriesError, AmbiguousSeriesError (several series/echoes and none chosen).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingPathError("no such file or folder", path)
    if os.path.isdir(path):
        volumes = volume_files(path)
        if volumes and not any(is_dicom_file(os.path.join(r, n)) for r, _, fs in os.walk(path) for n in fs):
            if len(volumes) == 1:
                return read_volume(volumes[0])
            from ..errors import AmbiguousSeriesError

            raise AmbiguousSeriesError(
                f"{len(volumes)} volume files and no DICOM; give one file: "
                f"{', '.join(os.path.relpath(v, path) for v in volumes[:10])}", path)
        return read_dicom(path, series_uid=series_uid, echo=echo)
    if is_dicom_file(path) and not volume_suffix(path):
        return read_dicom(path, series_uid=series_uid, echo=echo)
    if is_volume_file(path):
        return read_volume(path)
    if is_dicom_file(path):
        return read_dicom(path, series_uid=series_uid, echo=echo)
    raise CorruptFileError("not a DICOM, NIfTI, NRRD or MetaImage file", path)


def volume_files(folder: str) -> List[str]:
    """NIfTI/NRRD/MetaImage files under ``folder`` (sorted walk), excluding DICOM files and Slicer .seg.nrrd."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        out += [os.path.join(root, n) for n in sorted(files)
                if is_volume_file(os.path.join(root, n)) and not is_dicom_file(os.path.join(root, n))]
    return out


def read_all_series(folder: PathLike, ignored: Optional[List[Tuple[str, str]]] = None) -> List[Series]:
    """Every series under a folder tree: each DICOM series (multi-echo series split into one Series per echo, in
    echo order) and each NIfTI/NRRD/MetaImage volume file.

    Args:
        folder: folder to scan recursively.
        ignored: if given, receives (path, reason) for skipped files (DICOMDIR, SR, non-MR series).

    Raises:
        MissingPathError; NoDicomError when nothing readable is found; the typed error of a broken series.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        if os.path.exists(folder):
            return [read_series(folder)]
        raise MissingPathError("no such folder", folder)
    skipped: List[Tuple[str, str]] = []
    out = read_all_dicom(folder, skipped)
    out += [read_volume(p) for p in volume_files(folder)]
    if ignored is not None:
        ignored.extend(skipped)
    if not out:
        raise NoDicomError("no MR image series (DICOM, NIfTI, NRRD or MetaImage) under this folder", folder)
    return out


__all__ = ["read_series", "read_all_series", "volume_files"]
