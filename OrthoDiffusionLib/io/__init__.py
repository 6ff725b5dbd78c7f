"""Exam input/output: read MR series (DICOM, NIfTI, NRRD, MetaImage), classify planes, assemble exams, write DICOM.

Coordinates are LPS millimetres throughout (DICOM/ITK convention). Every :class:`Series` has its slice axis as ITK
axis 2, so ``Series.array`` is (D, H, W) = (slices, rows, columns).
"""
from .dicom_write import write_dicom_series
from .orientation import choose_slice_axis, classify_plane
from .reader import read_all_series, read_series
from .series import META_KEYS, PLANES, Series
from .study import Exam, load_study

__all__ = [
    "Series", "Exam", "PLANES", "META_KEYS", "read_series", "read_all_series", "load_study", "classify_plane",
    "choose_slice_axis", "write_dicom_series",
]
