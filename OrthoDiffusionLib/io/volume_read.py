"""Read NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) and MetaImage (.mha, .mhd) volumes with SimpleITK.

These formats do not say which axis is the slice axis. Rule (:func:`choose_slice_axis`): the axis with the largest
spacing; if spacings tie, the axis with the fewest voxels; if that ties too, the last such axis. The volume's axes are
then permuted (no resampling) so the slice axis is ITK axis 2. SimpleITK reports geometry in LPS whatever the file's
convention (a NIfTI RAS affine is converted on reading).
"""
from __future__ import annotations

import gzip
import os
import struct
from typing import Any, Dict, Optional

import numpy as np
import SimpleITK as sitk

from ..errors import CorruptFileError, InvalidVolumeError, NotVolumeError
from . import sequence
from .anatomy import meta_from_header_fields
from .limits import check_volume_size, max_volume_bytes
from .orientation import choose_slice_axis, classify_plane, move_slice_axis_last
from .series import Series

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
_FORMAT = {".nii": "NIfTI", ".nii.gz": "NIfTI", ".nrrd": "NRRD", ".nhdr": "NRRD", ".mha": "MetaImage",
           ".mhd": "MetaImage"}


def volume_suffix(path: str) -> str:
    """The recognised volume suffix of ``path`` (lower case) or ""."""
    name = os.path.basename(path).lower()
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return ""


def is_volume_file(path: str) -> bool:
    return bool(volume_suffix(path)) and not os.path.basename(path).lower().endswith(".seg.nrrd")


def _stem(path: str) -> str:
    name = os.path.basename(path)
    suffix = volume_suffix(path)
    return name[: len(name) - len(suffix)] if suffix else name


#: A volume with at most this many distinct integer values is a label map (segmentation), not an MR image.
MAX_LABEL_MAP_VALUES = 64
_PIXEL_BYTES = {sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2, sitk.sitkUInt32: 4,
                sitk.sitkInt32: 4, sitk.sitkUInt64: 8, sitk.sitkInt64: 8, sitk.sitkFloat32: 4, sitk.sitkFloat64: 8}


def label_map_values(values: np.ndarray) -> Optional[int]:
    """The number of distinct values when ``values`` (integer pixel type) has at most
    :data:`MAX_LABEL_MAP_VALUES` of them (a label map), else None (float data: None)."""
    if not np.issubdtype(values.dtype, np.integer) or values.size == 0:
        return None
    flat = values.reshape(-1)
    if len(np.unique(flat[:: max(1, flat.size // 100_000)])) > MAX_LABEL_MAP_VALUES:
        return None
    n = len(np.unique(flat))
    return n if n <= MAX_LABEL_MAP_VALUES else None


def nifti_has_nonfinite(path: str) -> bool:
    """True if a float NIfTI-1/2 file stores NaN/Inf voxels.

    ITK's NIfTI reader silently turns NaN into 0, so the raw voxel block is checked here (float32/float64 only;
    integer data cannot hold NaN).
    """
    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        data = fh.read(max_volume_bytes() + 1024)  # never inflate more than a volume may take
    if len(data) < 348:
        return False
    for endian in ("<", ">"):
        (sizeof_hdr,) = struct.unpack(endian + "i", data[:4])
        if sizeof_hdr == 348:
            datatype = struct.unpack(endian + "h", data[70:72])[0]
            offset = int(struct.unpack(endian + "f", data[108:112])[0])
            break
        if sizeof_hdr == 540:
            datatype = struct.unpack(endian + "h", data[12:14])[0]
            offset = int(struct.unpack(endian + "q", data[168:176])[0])
            break
    else:
        return False
    dtype = {16: "f4", 64: "f8"}.get(datatype)
    if dtype is None:
        return False
    start = max(offset, 352 if sizeof_hdr == 348 else 544)
    item = np.dtype(dtype).itemsize
    usable = max(0, (len(data) - start) // item) * item
    voxels = np.frombuffer(data[start:start + usable], dtype=endian + dtype)
    return not bool(np.all(np.isfinite(voxels)))


def read_volume(path: str, *, tolerance_deg: float = 30.0) -> Series:
    """One series from a volume file; slice axis chosen by the rule above and moved to ITK axis 2.

    Raises:
        CorruptFileError (unreadable / not that format), NotVolumeError (2D, vector or 4D image, or a single slice),
        InvalidVolumeError (NaN/Inf or constant), ObliqueSeriesError.
    """
    suffix = volume_suffix(path)
    if not suffix:
        raise CorruptFileError("not a DICOM, NIfTI, NRRD or MetaImage file", path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        raise CorruptFileError(f"cannot read as {_FORMAT[suffix]} ({first[:120]})", path)
    dim = reader.GetDimension()
    size = reader.GetSize()
    if reader.GetNumberOfComponents() != 1:
        raise NotVolumeError(f"{reader.GetNumberOfComponents()}-component (vector/colour) image, not a scalar volume",
                             path)
    if dim == 4 and size[3] == 1:
        dim = 3
    if dim != 3:
        raise NotVolumeError(f"{dim}D image of size {list(size)}; a 3D volume is needed", path)
    if min(size[:3]) < 2:
        raise NotVolumeError(f"image of size {list(size[:3])} is a single slice, not a 3D volume", path)
    check_volume_size(size, _PIXEL_BYTES.get(reader.GetPixelID(), 8), path, f"the {_FORMAT[suffix]} header")
    header = {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()}
    try:
        image = reader.Execute()
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        raise CorruptFileError(f"cannot read the {_FORMAT[suffix]} voxel data (truncated?) ({first[:120]})", path)
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    n_labels = label_map_values(sitk.GetArrayViewFromImage(image))
    if n_labels is not None:
        raise InvalidVolumeError(f"this looks like a label map ({n_labels} distinct integer values), not an MR "
                                 "image; give the MR series", path)
    image = sitk.Cast(image, sitk.sitkFloat32)
    values = sitk.GetArrayViewFromImage(image)
    if not np.all(np.isfinite(values)) or (_FORMAT[suffix] == "NIfTI" and nifti_has_nonfinite(str(path))):
        raise InvalidVolumeError("volume holds NaN/Inf values", path)
    if float(values.max()) == float(values.min()):
        raise InvalidVolumeError(f"volume is constant ({float(values.min()):g} everywhere)", path)
    axis = choose_slice_axis(image.GetSize(), image.GetSpacing())
    image = move_slice_axis_last(image, axis)
    plane, obliquity = classify_plane(image, 2, tolerance_deg, path=path)
    w, h, d = image.GetSize()
    sx, sy, sz = image.GetSpacing()
    meta: Dict[str, Any] = {
        "format": _FORMAT[suffix],
        "modality": "MR",
        "series_description": _stem(path),
        "spacing_between_slices": float(sz),
        "pixel_spacing": [float(sy), float(sx)],
        "rows": h,
        "columns": w,
        "number_of_slices": d,
        **meta_from_header_fields(header),  # anatomy tags a NRRD/MetaImage header may carry
    }
    return Series(image=image, plane=plane, obliquity_deg=obliquity, source=os.fspath(path),
                  meta=sequence.annotate(meta))
