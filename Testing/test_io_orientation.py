"""Plane classification, the slice-axis rule for volumes, and the weighting / fat-suppression guesses."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from OrthoDiffusionLib.errors import ObliqueSeriesError
from OrthoDiffusionLib.io import choose_slice_axis, classify_plane
from OrthoDiffusionLib.io.sequence import fat_sat_guess, preference, weighting_guess


@pytest.mark.parametrize("normal,plane", [((1, 0, 0), "sagittal"), ((-1, 0, 0), "sagittal"),
                                          ((0, 1, 0), "coronal"), ((0, -1, 0), "coronal"),
                                          ((0, 0, 1), "axial"), ((0, 0, -1), "axial")])
def test_plane_from_normal(normal, plane):
    n = np.asarray(normal, float)
    helper = np.array([0, 0, 1.0]) if abs(n[2]) < 0.9 else np.array([1.0, 0, 0])
    a = np.cross(helper, n)
    a /= np.linalg.norm(a)
    b = np.cross(n, a)
    m = np.stack([a, b, n], axis=1)
    assert classify_plane(m) == (plane, 0.0)
    # the normal may sit on any axis when the caller says which
    assert classify_plane(np.stack([n, a, b], axis=1), slice_axis=0)[0] == plane
    img = sitk.Image([3, 3, 3], sitk.sitkUInt8)
    img.SetDirection(tuple(m.ravel()))
    assert classify_plane(img)[0] == plane


def test_obliquity_angle_and_tolerance():
    a = np.deg2rad(25.0)
    n = np.array([np.cos(a), np.sin(a), 0.0])  # sagittal tilted 25 degrees towards coronal
    m = np.stack([np.array([-np.sin(a), np.cos(a), 0.0]), np.array([0, 0, -1.0]), n], axis=1)
    plane, angle = classify_plane(m)
    assert plane == "sagittal" and angle == pytest.approx(25.0)
    with pytest.raises(ObliqueSeriesError) as e:
        classify_plane(m, tolerance_deg=20.0, path="tilted.nii")
    assert "tilted.nii" in str(e.value) and "25.0 deg" in str(e.value)


def test_slice_axis_rule():
    assert choose_slice_axis((256, 256, 30), (0.5, 0.5, 3.0)) == 2
    assert choose_slice_axis((30, 256, 256), (3.0, 0.5, 0.5)) == 0  # largest spacing wins wherever it is
    assert choose_slice_axis((100, 40, 80), (1.0, 1.0, 1.0)) == 1  # isotropic: fewest voxels
    assert choose_slice_axis((64, 64, 64), (1.0, 1.0, 1.0)) == 2  # full tie: the last axis
    assert choose_slice_axis((64, 20, 20), (1.0, 2.0, 2.0)) == 2  # tie in spacing and count: last of those


@pytest.mark.parametrize("meta,weighting,fat", [
    ({"series_description": "PD SAG"}, "PD", False),
    ({"series_description": "Sag PD FS"}, "PD", True),
    ({"series_description": "COR_PDW_SPAIR"}, "PD", True),
    ({"series_description": "AX T2 FATSAT"}, "T2", True),
    ({"series_description": "COR STIR"}, "unknown", True),
    ({"series_description": "SAG T1 TSE"}, "T1", False),
    ({"series_description": "sag fse", "echo_time": 30, "repetition_time": 3000}, "PD", False),
    ({"series_description": "sag fse", "echo_time": 90, "repetition_time": 4000}, "T2", False),
    ({"series_description": "sag fse", "echo_time": 12, "repetition_time": 600}, "T1", False),
    ({"series_description": "3D DESS", "echo_time": 7, "repetition_time": 25}, "unknown", False),
    ({"series_description": "cor fse", "scan_options": "FS\\FAST_GEMS", "echo_time": 35, "repetition_time": 2500},
     "PD", True),
    ({"series_description": "cor ir", "scanning_sequence": "IR\\SE", "inversion_time": 150,
      "echo_time": 40, "repetition_time": 4000}, "PD", True),
    ({"series_description": "PD SAG NON FS"}, "PD", False),
])
def test_weighting_and_fat_sat_guesses(meta, weighting, fat):
    assert weighting_guess(meta)[0] == weighting
    assert fat_sat_guess(meta)[0] is fat


def test_preference_order():
    ranks = [preference(m)[0] for m in ({"series_description": "PD"}, {"series_description": "PD FS"},
                                        {"series_description": "sag"}, {"series_description": "T2"},
                                        {"series_description": "T2 FS"})]
    assert ranks == [0, 1, 2, 3, 4]
