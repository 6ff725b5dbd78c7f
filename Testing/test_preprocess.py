"""preprocess_series: the paper's steps, canonical orientation, padding, and the map back to the original grid."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from io_helpers import code_direction, continuous_index, load_dess, physical_points, reformat

from OrthoDiffusionLib.errors import InvalidVolumeError, TooFewSlicesError
from OrthoDiffusionLib.io import Exam, Series, read_series
from OrthoDiffusionLib.inference.preprocess import preprocess_exam, preprocess_series


def _synthetic(d=10, h=24, w=20, plane_code="LIP", seed=0) -> sitk.Image:
    arr = np.random.default_rng(seed).uniform(10, 200, size=(d, h, w)).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.9, 3.0))
    img.SetOrigin((5.0, -7.0, 30.0))
    img.SetDirection(tuple(code_direction(plane_code).ravel()))
    return img


def test_steps_match_method_on_dess(shared_data):
    s = load_dess(shared_data)
    pre = preprocess_series(s)
    assert pre.volume.shape == (16, 256, 256) and pre.volume.dtype == np.float32
    assert pre.volume.min() == -1.0 and pre.volume.max() == pytest.approx(1.0)
    assert pre.plane == "sagittal" and pre.crop_start == 80 // 2 - 8
    # independent recomputation: reorient to PIL, slices 32..47, bilinear 256x256, min-max -> [-1, 1]
    ref = sitk.GetArrayFromImage(sitk.DICOMOrient(s.image, "PIL"))[32:48]
    t = F.interpolate(torch.from_numpy(ref)[None], size=(256, 256), mode="bilinear", align_corners=False)[0].numpy()
    expected = (t - t.min()) / (t.max() - t.min()) * 2 - 1
    np.testing.assert_allclose(pre.volume, expected, atol=1e-6)
    # reference grid: PIL direction, spacing 0.3125*512/256 and 1.5 mm
    np.testing.assert_allclose(np.asarray(pre.reference.GetDirection()).reshape(3, 3), code_direction("PIL"),
                               atol=1e-6)
    np.testing.assert_allclose(pre.reference.GetSpacing(), (0.625, 0.625, 1.5), atol=1e-4)
    assert pre.reference.GetSize() == (256, 256, 16)


def _cube_round_trip(series: Series, cube):
    """Paint ``cube`` = (k0, k1, y0, y1, x0, x1) on the preprocessed grid, map back, compare physical placement."""
    pre = preprocess_series(series)
    # the reference grid is where the resized voxels really are: linear resampling of the original onto it
    # reproduces the (de-normalised) volume, away from the clamped borders
    lo, hi = pre.intensity_range
    raw = (pre.volume.astype(np.float64) + 1) / 2 * (hi - lo) + lo
    sampled = sitk.GetArrayFromImage(sitk.Resample(series.image, pre.reference, sitk.Transform(), sitk.sitkLinear,
                                                   0.0, sitk.sitkFloat32))
    inner = (slice(None), slice(2, -2), slice(2, -2))
    np.testing.assert_allclose(sampled[inner], raw[inner], atol=1e-4 * (hi - lo))
    k0, k1, y0, y1, x0, x1 = cube
    lab = np.zeros(pre.volume.shape, dtype=np.uint8)
    lab[k0:k1, y0:y1, x0:x1] = 3
    back = pre.to_original(lab)
    # same grid as the original series
    assert back.GetSize() == series.image.GetSize()
    np.testing.assert_allclose(back.GetOrigin(), series.image.GetOrigin())
    np.testing.assert_allclose(back.GetSpacing(), series.image.GetSpacing())
    np.testing.assert_allclose(back.GetDirection(), series.image.GetDirection())
    arr = sitk.GetArrayFromImage(back)
    assert set(np.unique(arr)) == {0, 3}
    zyx = np.argwhere(arr == 3)
    pts = physical_points(back, zyx)
    # every labelled original voxel lies inside the painted cube (half a preprocessed voxel margin = its extent)
    ci = continuous_index(pre.reference, pts)  # (x, y, z)
    lo = np.array([x0, y0, k0]) - 0.5 - 1e-6
    hi = np.array([x1, y1, k1]) - 0.5 + 1e-6
    assert np.all(ci >= lo) and np.all(ci <= hi)
    # and the cube lands where it was painted: centroid error below one original voxel along each axis
    cube_centre = np.asarray(pre.reference.TransformContinuousIndexToPhysicalPoint(
        ((x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, (k0 + k1 - 1) / 2)))
    err_index = np.abs(continuous_index(series.image, (pts.mean(axis=0) - cube_centre)[None]
                                        + np.asarray(series.image.GetOrigin()))[0])
    assert np.all(err_index < 1.0), err_index
    # volume agrees with the painted physical volume (within the voxel quantisation of the faces)
    painted = (k1 - k0) * (y1 - y0) * (x1 - x0) * np.prod(pre.reference.GetSpacing())
    assert len(zyx) * np.prod(series.image.GetSpacing()) == pytest.approx(painted, rel=0.25)
    return pre, back


def test_round_trip_dess(shared_data):
    s = load_dess(shared_data)
    pre, back = _cube_round_trip(s, (5, 8, 100, 120, 60, 80))
    # painting the whole grid marks exactly the 16 central slices of the original
    full = sitk.GetArrayFromImage(pre.to_original(np.ones((16, 256, 256), np.uint8)))
    per_slice = full.reshape(80, -1).all(axis=1)
    assert per_slice.sum() == 16 and not full[~per_slice].any()
    np.testing.assert_array_equal(np.flatnonzero(per_slice), np.arange(32, 48))


def test_round_trip_coronal_reformat(shared_data):
    cor = reformat(load_dess(shared_data).image, "coronal")
    s = Series(image=cor, plane="coronal", obliquity_deg=0.0, source="coronal-reformat")
    _cube_round_trip(s, (6, 10, 40, 70, 150, 190))


def test_linear_map_back_and_float_values():
    img = _synthetic(d=20)
    s = read_series_from_image(img)
    pre = preprocess_series(s, slices=8, size=32)
    back = pre.to_original(pre.volume, interpolation="linear")
    arr = sitk.GetArrayFromImage(back)
    assert arr.dtype == np.float32
    kept = pre.crop_start  # coronal LIP grid is already canonical: same slice order
    assert not arr[:kept].any() and not arr[kept + 8:].any()
    assert np.abs(arr[kept:kept + 8]).max() <= 1.0 + 1e-6


def test_labels_on_original_sum_shared_values_and_follow_the_probabilities():
    """Classes sharing a label value (context tissues are background) are summed before the vote; each value's
    probability is resampled linearly onto the original grid; slices outside the model's input are background."""
    img = _synthetic(d=20)
    pre = preprocess_series(read_series_from_image(img), slices=8, size=32)
    probs = np.zeros((3, 8, 32, 32), np.float32)
    probs[0], probs[1], probs[2] = 0.3, 0.4, 0.3          # values 0, 3, 0: background wins with 0.6
    probs[1, 2:6, 10:20, 10:20], probs[0, 2:6, 10:20, 10:20], probs[2, 2:6, 10:20, 10:20] = 0.8, 0.1, 0.1
    back = pre.labels_on_original(probs, [0, 3, 0])
    assert back.GetSize() == img.GetSize() and back.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(back.GetDirection(), img.GetDirection())
    arr = sitk.GetArrayFromImage(back)
    assert set(np.unique(arr)) == {0, 3}
    nearest = sitk.GetArrayFromImage(pre.to_original(np.where(probs[1] > 0.5, 3, 0).astype(np.uint8)))
    assert np.array_equal(arr, nearest) or (arr != nearest).mean() < 0.01  # the box lands where nearest puts it
    assert not arr[:pre.crop_start].any() and not arr[pre.crop_start + 8:].any()
    with pytest.raises(ValueError, match="2 label values for 3 classes"):
        pre.labels_on_original(probs, [0, 3])


def test_labels_on_original_equal_resampling_every_value_everywhere():
    """Resampling each value only in the box where it can win gives the labelmap of resampling all of them over the
    whole series (smooth random probabilities, 12 values over 24 classes, a finer original grid)."""
    img = _synthetic(d=20, h=40, w=36)
    pre = preprocess_series(read_series_from_image(img), slices=8, size=16)
    logits = torch.from_numpy(np.random.default_rng(1).normal(size=(1, 24, 8, 16, 16)).astype(np.float32))
    probs = torch.softmax(F.avg_pool3d(logits, 3, 1, 1) * 8, 1)[0].numpy()
    values = list(range(12)) + [0] * 12
    maps = {v: sitk.GetArrayFromImage(pre.to_original(probs[[c for c, x in enumerate(values) if x == v]].sum(0),
                                                      "linear")) for v in range(12)}
    expected = np.asarray(list(maps))[np.stack(list(maps.values())).argmax(0)]
    got = sitk.GetArrayFromImage(pre.labels_on_original(probs, values))
    assert len(np.unique(got)) > 5 and np.array_equal(got, expected)


def read_series_from_image(img: sitk.Image) -> Series:
    from OrthoDiffusionLib.io import classify_plane

    plane, angle = classify_plane(img)
    return Series(image=img, plane=plane, obliquity_deg=angle, source="synthetic.nii")


def test_orientation_invariance(shared_data, tmp_path):
    """The same coronal volume stored in different axis orders/flips preprocesses to the same array and grid."""
    cor = reformat(load_dess(shared_data).image, "coronal", spacing=(2.0, 2.0, 3.0))
    results = []
    for code in ("RAS", "LPS", "IRP"):
        path = tmp_path / f"c_{code}.nii"
        sitk.WriteImage(sitk.DICOMOrient(cor, code), str(path))
        results.append(preprocess_series(read_series(path), size=64))
    for r in results[1:]:
        np.testing.assert_array_equal(r.volume, results[0].volume)
        np.testing.assert_allclose(r.reference.GetOrigin(), results[0].reference.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(r.reference.GetDirection(), results[0].reference.GetDirection(), atol=1e-6)


def test_zero_padding_and_strict_mode():
    img = _synthetic(d=11)
    s = Series(image=img, plane="coronal", obliquity_deg=0.0, source="short_series.nii")
    pre = preprocess_series(s, slices=16, size=32)
    assert pre.crop_start == -2  # (16 - 11)//2 = 2 zero slices before, 3 after
    pad_value = pre.volume[0, 0, 0]  # raw 0 after min-max (data 10..200, so 0 is the minimum -> -1)
    assert pad_value == -1.0
    assert np.all(pre.volume[:2] == -1.0) and np.all(pre.volume[13:] == -1.0) and pre.volume[2:13].min() > -1.0
    # the padded slices extend the grid beyond the original
    first = np.asarray(pre.reference.TransformIndexToPhysicalPoint((0, 0, 0)))
    orig_first_slice = np.asarray(img.TransformContinuousIndexToPhysicalPoint((0, 0, -2)))
    assert (first - orig_first_slice) @ code_direction("LIP")[:, 2] == pytest.approx(0.0, abs=1e-6)
    back = sitk.GetArrayFromImage(pre.to_original(np.ones((16, 32, 32), np.uint8)))
    assert back.all()  # every original slice is covered
    with pytest.raises(TooFewSlicesError) as e:
        preprocess_series(s, slices=16, size=32, strict=True)
    assert "short_series.nii" in str(e.value) and "11 slices" in str(e.value)


@pytest.mark.parametrize("bad", ["nan", "constant"])
def test_invalid_volume(bad):
    arr = np.full((20, 16, 16), 7.0, dtype=np.float32)
    if bad == "nan":
        arr[10, 3, 3] = np.nan
    img = sitk.GetImageFromArray(arr)
    s = Series(image=img, plane="axial", obliquity_deg=0.0, source=f"{bad}_volume.nii")
    with pytest.raises(InvalidVolumeError) as e:
        preprocess_series(s, size=16)
    assert f"{bad}_volume.nii" in str(e.value)


def test_preprocess_exam(shared_data):
    dess = load_dess(shared_data)
    cor = reformat(dess.image, "coronal", spacing=(2.0, 2.0, 3.0))
    exam = Exam.from_series(sagittal=dess, coronal=Series(image=cor, plane="coronal", obliquity_deg=0.0,
                                                          source="cor"))
    out = preprocess_exam(exam, size=32, slices=4)
    assert sorted(out) == ["coronal", "sagittal"]
    assert out["coronal"].volume.shape == (4, 32, 32) and out["sagittal"].plane == "sagittal"
