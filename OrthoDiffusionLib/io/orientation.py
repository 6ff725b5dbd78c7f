"""Plane classification from direction cosines, and the slice-axis rule for volumes without slice information.

Coordinates are LPS (DICOM/ITK): +x = patient Left, +y = Posterior, +z = Superior. The plane of a series is decided by
its slice normal (the direction of the slice axis): a normal along L-R means sagittal slices, A-P coronal, S-I axial.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from ..errors import NotVolumeError, ObliqueSeriesError

#: Orientation code of each plane's canonical grid (letters: where increasing column, row and slice index point).
CANONICAL_ORIENTATION = {"sagittal": "PIL", "coronal": "LIP", "axial": "LPS"}

_AXIS_PLANE = ("sagittal", "coronal", "axial")  # dominant LPS component of the normal -> plane
DEFAULT_TOLERANCE_DEG = 30.0


def direction_matrix(image_or_direction: Union[sitk.Image, Sequence[float], np.ndarray]) -> np.ndarray:
    """3x3 direction matrix (column j = LPS unit vector of ITK axis j) from an image, a 9-tuple or a 3x3 array."""
    if isinstance(image_or_direction, sitk.Image):
        if image_or_direction.GetDimension() != 3:
            raise NotVolumeError(f"expected a 3D image, got {image_or_direction.GetDimension()}D")
        values = image_or_direction.GetDirection()
    else:
        values = image_or_direction
    m = np.asarray(values, dtype=np.float64)
    if m.size != 9:
        raise ValueError(f"a direction needs 9 values (3x3), got {m.size}")
    return m.reshape(3, 3)


def classify_plane(
    image_or_direction: Union[sitk.Image, Sequence[float], np.ndarray],
    slice_axis: int = 2,
    tolerance_deg: float = DEFAULT_TOLERANCE_DEG,
    *,
    path: Optional[Union[str, os.PathLike]] = None,
) -> Tuple[str, float]:
    """Plane of a series from its slice-normal direction cosine.

    Args:
        image_or_direction: an image, or its direction as 9 numbers / a 3x3 matrix (column j = axis j).
        slice_axis: which ITK axis is the slice axis (its direction column is the slice normal).
        tolerance_deg: largest accepted angle between the normal and the nearest patient axis (L-R, A-P, S-I).
        path: file or folder named in the error message.

    Returns:
        (plane, obliquity_deg): "sagittal" (normal along L-R), "coronal" (A-P) or "axial" (S-I), and the angle in
        degrees between the normal and that axis.

    Raises:
        ObliqueSeriesError: the angle exceeds ``tolerance_deg``.
    """
    m = direction_matrix(image_or_direction)
    normal = m[:, slice_axis]
    norm = float(np.linalg.norm(normal))
    if not norm > 0:
        raise ObliqueSeriesError("slice normal is zero (invalid direction cosines)", path)
    normal = np.abs(normal) / norm
    k = int(np.argmax(normal))
    angle = math.degrees(math.acos(min(1.0, float(normal[k]))))
    if angle > tolerance_deg:
        raise ObliqueSeriesError(
            f"slice normal is {angle:.1f} deg from the nearest patient axis ({_AXIS_PLANE[k]}); more than the "
            f"{tolerance_deg:g} deg allowed, cannot assign a plane",
            path,
        )
    return _AXIS_PLANE[k], angle


def choose_slice_axis(size: Sequence[int], spacing: Sequence[float], rel_tol: float = 1e-3) -> int:
    """The slice axis of a volume that carries no slice information (NIfTI, NRRD, MHA).

    Rule: the axis with the largest spacing; among axes whose spacings tie (within ``rel_tol``), the one with the
    fewest voxels; if that ties as well, the last of them.

    Args:
        size: voxels per ITK axis (x, y, z).
        spacing: mm per ITK axis.
    """
    spacing = [float(s) for s in spacing]
    largest = max(spacing)
    tied = [a for a, s in enumerate(spacing) if s >= largest * (1.0 - rel_tol)]
    fewest = min(size[a] for a in tied)
    return [a for a in tied if size[a] == fewest][-1]


def move_slice_axis_last(image: sitk.Image, slice_axis: int) -> sitk.Image:
    """Permute axes (no resampling) so that ``slice_axis`` becomes ITK axis 2; the other two keep their order."""
    if slice_axis == 2:
        return image
    order = [a for a in range(3) if a != slice_axis] + [slice_axis]
    return sitk.PermuteAxes(image, order)
