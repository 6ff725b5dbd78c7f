"""Reformat a series onto another imaging plane (a thin-slice 3D series read as coronal or axial, as scanner
consoles do).

The new grid has the plane's canonical orientation
(:data:`~OrthoDiffusionLib.io.orientation.CANONICAL_ORIENTATION`: sagittal PIL, coronal LIP, axial LPS; ITK axis 2 =
slice axis), covers the series' bounding box, and takes
``spacing`` (in-plane x, in-plane y, slice) in millimetres; intensities are resampled linearly.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .orientation import CANONICAL_ORIENTATION
from .series import Series

__all__ = ["reformat_image", "reformat_series", "CLINICAL_2D_SPACING"]

#: Grid of a reformat read as a clinical 2D series (in-plane, in-plane, slice; mm).
CLINICAL_2D_SPACING = (0.6, 0.6, 3.0)

def _direction(plane: str) -> np.ndarray:
    code = CANONICAL_ORIENTATION[plane]
    return np.asarray(sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation(code)).reshape(3, 3)


def reformat_image(image: sitk.Image, plane: str, spacing: Sequence[float] = (1.5, 1.5, 3.0)) -> sitk.Image:
    """``image`` resampled (linear, float32, 0 outside) onto a ``plane`` grid covering its bounding box."""
    direction = _direction(plane)
    size = np.asarray(image.GetSize())
    corners = np.array([[i, j, k] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)])
    points = np.array([image.TransformContinuousIndexToPhysicalPoint(c.astype(float).tolist()) for c in corners])
    local = points @ direction  # coordinates along the new axes
    lo, hi = local.min(axis=0), local.max(axis=0)
    spacing = np.asarray(spacing, dtype=float)
    new_size = [int(v) for v in np.floor((hi - lo) / spacing) + 1]
    return sitk.Resample(image, new_size, sitk.Transform(), sitk.sitkLinear, tuple(direction @ lo), tuple(spacing),
                         tuple(direction.ravel()), 0.0, sitk.sitkFloat32)


def reformat_series(series: Series, plane: str, spacing: Sequence[float] = (1.5, 1.5, 3.0)) -> Series:
    """A :class:`Series` of ``series`` reformatted onto ``plane`` (metadata kept; the source names the reformat)."""
    return Series(reformat_image(series.image, plane, spacing), plane, 0.0,
                  f"{series.source} (reformatted {plane})", dict(series.meta))
