"""Entry points that read series from any supported path (DICOM folder/file, NIfTI, NRRD, MetaImage)."""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple, Union

from ..errors import CorruptFileError, InputError, MissingPathError, NoDicomError
from ..output_folder import carries_marker, is_tool_output
from .dicom_read import is_dicom_file, read_all_dicom, read_dicom
from .series import Series
from .volume_read import is_volume_file, read_volume, volume_suffix

PathLike = Union[str, os.PathLike]


def read_series(path: PathLike, *, series_uid: Union[str, Sequence[str], None] = None,
                echo: Optional[int] = None) -> Series:
    """Read one series.

    Args:
        path: a DICOM folder (searched recursively), a single (multi-frame) DICOM file, or a NIfTI (.nii/.nii.gz),
            NRRD (.nrrd/.nhdr) or MetaImage (.mha/.mhd) volume.
        series_uid: for DICOM folders holding several series: the SeriesInstanceUID (or the SeriesNumber as text), or
            a list of them (a folder holding one series that none names keeps it).
        echo: for multi-echo series: the echo number (1 = first echo; by increasing TE when EchoNumbers is absent).

    Returns:
        The :class:`Series` (slice axis = ITK axis 2, float32, plane classified).

    Raises:
        MissingPathError, NoDicomError, NotMRError, CorruptFileError, InconsistentSeriesError, NotVolumeError,
        InvalidVolumeError, ObliqueSeriesError, AmbiguousSeriesError (several series/echoes and none chosen),
        InputError (a segmentation or other output of this tool, not an MR series).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingPathError("no such file or folder", path)
    if is_tool_output(path) or (os.path.isdir(path) and carries_marker(path)):
        raise InputError("this is an output of orthodiffusion (a segmentation or result folder), not an MR series",
                         path)
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
    """NIfTI/NRRD/MetaImage files under ``folder`` (sorted walk), excluding DICOM files, Slicer .seg.nrrd and this
    tool's outputs (``labelmap_*.nii.gz``, anything in a folder carrying its marker)."""
    out = []
    for root, dirs, files in os.walk(folder):
        if carries_marker(root):  # a result folder of this tool: its labelmaps are not MR series
            dirs[:] = []
            continue
        dirs.sort()
        out += [os.path.join(root, n) for n in sorted(files)
                if is_volume_file(os.path.join(root, n)) and not is_tool_output(os.path.join(root, n))
                and not is_dicom_file(os.path.join(root, n))]
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
