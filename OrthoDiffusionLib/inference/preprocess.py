"""Preprocessing exactly as the paper's method describes it, with the map back to the original grid.

Per series:
(a) reorient by axis permutation/flip only (no interpolation) to a canonical orientation per plane with
    ``sitk.DICOMOrient``. Codes use the DICOM/ITK convention (letters name where INCREASING index points, for ITK
    axes 0 = columns/W, 1 = rows/H, 2 = slices/D): sagittal "PIL" (columns to Posterior, rows to Inferior, slices to
    Left), coronal "LIP" (columns to Left, rows to Inferior, slices to Posterior), axial "LPS" (columns to Left,
    rows to Posterior, slices to Superior). I.e. the usual radiological display (patient's right on image left for
    coronal/axial, anterior on the left for sagittal, head at the top).
(b) the ``slices`` central slices along the slice axis, starting at ``D//2 - slices//2``. A series with fewer slices
    is zero-padded symmetrically (``(slices - D)//2`` zero slices before, the rest after; zeros in raw intensity,
    before normalisation), or rejected with :class:`TooFewSlicesError` when ``strict=True``.
(c) each slice resized to ``size x size``, bilinear (``torch.nn.functional.interpolate``, ``align_corners=False``).
(d) min-max over the cropped, resized volume, mapped linearly to [-1, 1]. NaN/Inf or a constant volume raise
    :class:`InvalidVolumeError`.

The preprocessed grid is a physical grid too (``PreprocessedSeries.reference``): with ``align_corners=False`` the
new in-plane spacing is ``old * n / size`` and the origin moves by half the spacing change
(``(old_spacing * (n/size - 1)) / 2`` along each in-plane axis); along the slice axis the spacing is unchanged and the
origin is the crop start (padded slices lie beyond the original volume). ``to_original`` resamples a map on that grid
back onto the original series grid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..errors import InvalidVolumeError, NotVolumeError, TooFewSlicesError
from ..io.orientation import CANONICAL_ORIENTATION, classify_plane
from ..io.series import PLANES, Series

DEFAULT_SLICES = 16
DEFAULT_SIZE = 256


@dataclass
class PreprocessedSeries:
    """A series ready for the network, plus the geometry to put results back.

    Attributes:
        volume: float32 (slices, size, size), values in [-1, 1].
        reference: ``sitk.Image`` (uint8 zeros) whose origin/spacing/direction/size describe the physical grid of
            ``volume`` (ITK axis 2 = slices).
        original: the original series grid (``series.image``; only its geometry is used).
        source: file/folder of the series.
        plane: "sagittal" | "coronal" | "axial".
        crop_start: index of the first kept slice in the reoriented series (negative when padded).
        n_original_slices: slices of the original series.
        intensity_range: (min, max) of the cropped, resized volume before mapping to [-1, 1].
    """

    volume: np.ndarray
    reference: sitk.Image
    original: sitk.Image
    source: str
    plane: str
    crop_start: int
    n_original_slices: int
    intensity_range: tuple

    def as_image(self, array: np.ndarray) -> sitk.Image:
        """Wrap a (slices, size, size) array on the preprocessed grid as a ``sitk.Image``."""
        array = np.asarray(array)
        if array.shape != self.volume.shape:
            raise ValueError(f"array shape {array.shape} != preprocessed grid {self.volume.shape}")
        img = sitk.GetImageFromArray(array)
        img.CopyInformation(self.reference)
        return img

    def to_original(self, array: np.ndarray, interpolation: str = "nearest") -> sitk.Image:
        """Resample a map on the preprocessed grid onto the ORIGINAL series grid.

        Args:
            array: (slices, size, size) labelmap (integers, ``interpolation="nearest"``) or float map
                (``"linear"``).
            interpolation: "nearest" or "linear".

        Returns:
            Image with the original series' size/origin/spacing/direction (uint8/int labels keep their dtype;
            "linear" gives float32); voxels outside the preprocessed slices are 0.
        """
        if interpolation not in ("nearest", "linear"):
            raise ValueError("interpolation must be 'nearest' or 'linear'")
        array = np.asarray(array)
        if interpolation == "linear":
            array = array.astype(np.float32)
        elif array.dtype == np.bool_:
            array = array.astype(np.uint8)
        img = self.as_image(array)
        interp = sitk.sitkNearestNeighbor if interpolation == "nearest" else sitk.sitkLinear
        return sitk.Resample(img, self.original, sitk.Transform(), interp, 0, img.GetPixelID())


    def labels_on_original(self, probabilities: np.ndarray, values: Sequence[int]) -> sitk.Image:
        """uint8 labelmap on the ORIGINAL series grid from class probabilities on the preprocessed grid: the
        probabilities of the classes sharing a label value are summed, each value's map is resampled linearly onto
        the original grid, and every voxel takes the most probable value (ties: the lower value; voxels outside the
        preprocessed slices are background). Smoother and closer to the anatomy than resampling the argmax with
        nearest neighbours when the original grid is finer than the model's.

        A value is resampled only within the box of the original grid around the model voxels where its
        probability reaches 1 / (number of values): a linearly interpolated probability is at most that of its
        model-grid neighbours, and the winner of a voxel has at least that share, so nothing outside the box can
        win. Small structures thus cost little on a large series, and the result is that of resampling everything.

        Args:
            probabilities: (C, slices, size, size) class probabilities (summing to 1 over C).
            values: label value of each of the C classes (several classes may share one, e.g. context tissues 0).
        """
        probabilities = np.asarray(probabilities, dtype=np.float32)
        if len(values) != probabilities.shape[0]:
            raise ValueError(f"{len(values)} label values for {probabilities.shape[0]} classes")
        from ..segmentation.postprocess import probabilities_by_value

        by_value = probabilities_by_value(probabilities, values)
        shape = self.original.GetSize()[::-1]
        best = np.zeros(shape, np.float32)             # the most probable value's probability so far
        label = np.zeros(shape, np.uint8)
        for v, summed in by_value.items():
            box = self._original_box(summed >= 1.0 / len(by_value))
            if box is None:
                continue
            region = tuple(slice(a, b) for a, b in box)
            p = self._resample_into(summed, box)
            better = p > best[region]
            best[region] = np.where(better, p, best[region])
            label[region][better] = v
        out = sitk.GetImageFromArray(label)
        out.CopyInformation(self.original)
        return out

    def _original_box(self, mask: np.ndarray) -> Optional[Tuple[Tuple[int, int], ...]]:
        """((z0, z1), (y0, y1), (x0, x1)) of the original grid covering the model voxels of ``mask`` (D, H, W) and
        a margin of one model voxel, clamped to the series; None when ``mask`` is empty or outside it."""
        idx = np.argwhere(mask)
        if idx.size == 0:
            return None
        lo, hi = idx.min(0) - 1, idx.max(0) + 1                   # (k, y, x) on the model grid
        corners = [self.reference.TransformContinuousIndexToPhysicalPoint(
            (float(x), float(y), float(k))) for k in (lo[0] - 0.5, hi[0] + 0.5) for y in (lo[1] - 0.5, hi[1] + 0.5)
            for x in (lo[2] - 0.5, hi[2] + 0.5)]
        cont = np.array([self.original.TransformPhysicalPointToContinuousIndex(c) for c in corners])[:, ::-1]
        size = np.array(self.original.GetSize()[::-1])
        a = np.clip(np.floor(cont.min(0)).astype(int), 0, size)
        b = np.clip(np.ceil(cont.max(0)).astype(int) + 1, 0, size)
        if np.any(b <= a):
            return None
        return tuple((int(i), int(j)) for i, j in zip(a, b))

    def _resample_into(self, array: np.ndarray, box: Tuple[Tuple[int, int], ...]) -> np.ndarray:
        """(z1-z0, y1-y0, x1-x0) float32: ``array`` on the preprocessed grid resampled linearly onto the ``box`` of
        the original grid (0 outside the preprocessed slices)."""
        (z0, z1), (y0, y1), (x0, x1) = box
        roi = sitk.Image([x1 - x0, y1 - y0, z1 - z0], sitk.sitkUInt8)
        roi.SetSpacing(self.original.GetSpacing())
        roi.SetDirection(self.original.GetDirection())
        roi.SetOrigin(self.original.TransformIndexToPhysicalPoint((x0, y0, z0)))
        img = self.as_image(array.astype(np.float32))
        return sitk.GetArrayFromImage(sitk.Resample(img, roi, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                    sitk.sitkFloat32))


def _as_series(series: Union[Series, sitk.Image]) -> Series:
    if isinstance(series, Series):
        return series
    if not isinstance(series, sitk.Image):
        raise TypeError("preprocess_series needs a Series or a SimpleITK.Image")
    if series.GetDimension() != 3:
        raise NotVolumeError(f"{series.GetDimension()}D image; a 3D volume is needed", "image")
    plane, obliquity = classify_plane(series, 2, path="image")
    return Series(image=sitk.Cast(series, sitk.sitkFloat32), plane=plane, obliquity_deg=obliquity, source="image")


def reorient(image: sitk.Image, plane: str) -> sitk.Image:
    """Permute/flip axes (no interpolation) to the canonical orientation of ``plane``."""
    return sitk.DICOMOrient(image, CANONICAL_ORIENTATION[plane])


def resample_to_model_grid(image: sitk.Image, slice_mm: float, inplane_mm: float, size: int,
                           interpolation: str = "linear") -> sitk.Image:
    """Resample a reoriented series onto the model's physical grid.

    The new grid keeps the series' direction and slice-axis extent: slices every ``slice_mm`` across the whole
    series (at least one), and ``size x size`` in-plane pixels of ``inplane_mm`` centred on the series' in-plane
    centre (the field of view is cropped or zero-padded to ``size * inplane_mm``). Intensity images are low-pass
    filtered before downsampling (Gaussian, sigma = 0.4 x the spacing increase on each axis), so a thin-slice 3D
    series shows the partial-volume averaging of a thick-slice one and fine in-plane pixels do not alias.

    Args:
        image: 3D image whose ITK axis 2 is the slice axis (e.g. the output of :func:`reorient`).
        slice_mm, inplane_mm: target spacings (mm).
        size: in-plane size of the target grid.
        interpolation: "linear" (intensities) or "nearest" (label maps; no filtering).

    Returns:
        Image (float32 for "linear", the input pixel type for "nearest") of size (size, size, n_slices).
    """
    if interpolation not in ("linear", "nearest"):
        raise ValueError("interpolation must be 'linear' or 'nearest'")
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    n = np.asarray(image.GetSize(), dtype=np.float64)
    target = np.array([inplane_mm, inplane_mm, slice_mm], dtype=np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    # physical centre of the series (continuous index (n-1)/2 on every axis)
    centre = np.asarray(image.GetOrigin(), dtype=np.float64) + direction @ (spacing * (n - 1.0) / 2.0)
    extent = spacing[2] * n[2]
    n_slices = max(1, int(round(extent / slice_mm)))
    new_size = np.array([size, size, n_slices], dtype=np.float64)
    origin = centre - direction @ (target * (new_size - 1.0) / 2.0)
    src = image
    interp = sitk.sitkNearestNeighbor
    if interpolation == "linear":
        src = sitk.Cast(image, sitk.sitkFloat32)
        sigma = 0.4 * np.sqrt(np.maximum(target ** 2 - spacing ** 2, 0.0))
        for axis in range(3):
            if sigma[axis] > 0.25 * spacing[axis]:
                src = sitk.RecursiveGaussian(src, float(sigma[axis]), False, sitk.RecursiveGaussianImageFilter.ZeroOrder,
                                             axis)
        interp = sitk.sitkLinear
    ref = sitk.Image([int(v) for v in new_size], src.GetPixelID())
    ref.SetSpacing(tuple(float(v) for v in target))
    ref.SetOrigin(tuple(float(v) for v in origin))
    ref.SetDirection(tuple(float(v) for v in direction.ravel()))
    return sitk.Resample(src, ref, sitk.Transform(), interp, 0.0, src.GetPixelID())


def preprocess_series(series: Union[Series, sitk.Image], *, slices: Optional[int] = DEFAULT_SLICES,
                      size: int = DEFAULT_SIZE, strict: bool = False, slice_mm: Optional[float] = None,
                      inplane_mm: Optional[float] = None) -> PreprocessedSeries:
    """Steps (a)-(d) of the module docstring, optionally on the model's physical grid.

    Args:
        series: a :class:`Series` (or a 3D image whose ITK axis 2 is the slice axis).
        slices: slices kept (16 in the paper); None keeps every slice (whole-series segmentation).
        size: in-plane size (256 in the paper).
        strict: raise :class:`TooFewSlicesError` instead of zero-padding series with fewer than ``slices`` slices.
        slice_mm, inplane_mm: the model's physical grid (both or neither). When given, the reoriented series is
            first resampled with :func:`resample_to_model_grid` (slices every ``slice_mm`` over the whole series,
            ``size x size`` pixels of ``inplane_mm`` about its centre), so series of any protocol show the model
            the same anatomy at the same scale; the central slices are then taken on that grid.

    Returns:
        :class:`PreprocessedSeries` with ``volume`` float32 (slices, size, size) in [-1, 1].
    """
    s = _as_series(series)
    if s.plane not in PLANES:
        raise ValueError(f"unknown plane {s.plane!r}")
    img = reorient(s.image, s.plane)
    if (slice_mm is None) != (inplane_mm is None):
        raise ValueError("give both slice_mm and inplane_mm, or neither")
    if slice_mm is not None:
        img = resample_to_model_grid(img, float(slice_mm), float(inplane_mm), size)
    arr = sitk.GetArrayFromImage(img).astype(np.float32, copy=False)  # (D, H, W)
    d, h, w = arr.shape
    slices = d if slices is None else int(slices)
    if d < slices and strict:
        raise TooFewSlicesError(f"{d} slices, the model needs {slices}", s.source)
    if d >= slices:
        start = d // 2 - slices // 2
        crop = arr[start:start + slices]
    else:
        start = -((slices - d) // 2)
        crop = np.zeros((slices, h, w), dtype=np.float32)
        crop[-start:-start + d] = arr
    if not np.all(np.isfinite(crop)):
        raise InvalidVolumeError("volume holds NaN/Inf values", s.source)
    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(crop))[None]  # (1, slices, H, W): slices as channels
        resized = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0].numpy()
    lo, hi = float(resized.min()), float(resized.max())
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise InvalidVolumeError("volume holds NaN/Inf values", s.source)
    if hi <= lo:
        raise InvalidVolumeError(f"the {slices} central slices are constant ({lo:g}); nothing to normalise", s.source)
    volume = ((resized - lo) / (hi - lo) * 2.0 - 1.0).astype(np.float32)

    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    origin = np.asarray(img.GetOrigin(), dtype=np.float64)
    scale = np.array([w / size, h / size, 1.0])
    new_spacing = spacing * scale
    # continuous index in the reoriented image of preprocessed voxel 0: ((n/size) - 1)/2 in-plane, start in depth
    shift_index = np.array([(w / size - 1.0) / 2.0, (h / size - 1.0) / 2.0, float(start)])
    new_origin = origin + direction @ (spacing * shift_index)
    reference = sitk.Image([size, size, slices], sitk.sitkUInt8)
    reference.SetSpacing(tuple(float(v) for v in new_spacing))
    reference.SetOrigin(tuple(float(v) for v in new_origin))
    reference.SetDirection(tuple(float(v) for v in direction.ravel()))
    return PreprocessedSeries(volume=volume, reference=reference, original=s.image, source=s.source, plane=s.plane,
                              crop_start=int(start), n_original_slices=d, intensity_range=(lo, hi))


def model_grid(preprocessing: Mapping[str, object]) -> Dict[str, float]:
    """The physical grid of a model's ``preprocessing`` section as :func:`preprocess_series` keyword arguments:
    ``{"slice_mm": .., "inplane_mm": ..}``, or ``{}`` for the paper's resize-only preprocessing."""
    if preprocessing.get("slice_mm") is None:
        return {}
    return {"slice_mm": float(preprocessing["slice_mm"]), "inplane_mm": float(preprocessing["inplane_mm"])}


def preprocess_exam(exam, *, slices: Optional[int] = DEFAULT_SLICES, size: int = DEFAULT_SIZE, strict: bool = False,
                    planes: Optional[tuple] = None, slice_mm: Optional[float] = None,
                    inplane_mm: Optional[float] = None) -> Dict[str, PreprocessedSeries]:
    """:func:`preprocess_series` for every present plane of an :class:`~OrthoDiffusionLib.io.Exam` (or ``planes``,
    which must all be present: :class:`MissingPlaneError` otherwise)."""
    if planes is not None:
        exam.require(planes)
    wanted = planes if planes is not None else exam.planes_present()
    return {p: preprocess_series(exam.get(p), slices=slices, size=size, strict=strict, slice_mm=slice_mm,
                                 inplane_mm=inplane_mm) for p in wanted}


__all__ = ["PreprocessedSeries", "preprocess_series", "preprocess_exam", "reorient", "resample_to_model_grid", "model_grid",
           "CANONICAL_ORIENTATION"]
