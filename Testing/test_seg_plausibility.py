"""The anatomical plausibility checks for real-scan segmentations: a plausible knee passes every check, and each kind
of failure seen on real scans (patella in the wrong place, labels on a few central slices, fragments, floating
cartilage, oversized structures) fails the check that names it."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from OrthoDiffusionLib import labels
from OrthoDiffusionLib.segmentation.plausibility import knee_plausibility, summary

V = {s.key: s.value for s in labels.knee_structures()}


def _ellipsoid(shape, lo, hi) -> np.ndarray:
    """Boolean (z, y, x) mask of the ellipsoid inscribed in the box [lo, hi) (voxel indices)."""
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    c = [(a + b - 1) / 2.0 for a, b in zip(lo, hi)]
    r = [(b - a) / 2.0 for a, b in zip(lo, hi)]
    return ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1.0


def _knee() -> np.ndarray:
    """(z, y, x) labels on a 1 mm LPS grid of 120 x 100 x 90 mm: femur above the joint (rounded condyles, the shaft
    leaving the series at the top), tibia below (rounded plateau, the shaft leaving at the bottom), a rounded patella
    anterior (smaller y) to the femur, a 2 mm femoral cartilage cap on the condyles' lower surface. The bones taper
    where they end inside the series, as real bones do."""
    a = np.zeros((120, 100, 90), np.uint8)
    condyles = _ellipsoid(a.shape, (62, 35, 10), (100, 85, 80))
    cap = _ellipsoid(a.shape, (60, 33, 8), (102, 87, 82)) & ~condyles
    cap[81:] = False                                          # the lower half: about 8 mL
    a[cap] = V["femoral_cartilage"]
    a[condyles] = V["femur"]
    a[85:120, 45:75, 30:60] = V["femur"]
    a[_ellipsoid(a.shape, (30, 35, 15), (56, 85, 75))] = V["tibia"]
    a[0:40, 45:75, 30:60] = V["tibia"]
    a[_ellipsoid(a.shape, (70, 15, 30), (100, 32, 60))] = V["patella"]  # 8 mL
    return a


def _image(a: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(a)
    img.SetSpacing((1.0, 1.0, 1.0))
    return img


def _failed(a: np.ndarray):
    return [c.name for c in knee_plausibility(_image(a)) if not c.passed]


def test_a_plausible_knee_passes_every_check():
    checks = knee_plausibility(_image(_knee()))
    assert [c.name for c in checks] == ["present", "one piece", "patella anterior", "tibia inferior",
                                        "cartilage on bone", "volumes", "knee extent"]
    assert all(c.passed for c in checks), summary(checks)


def test_the_same_knee_in_another_orientation_still_passes():
    """Checks use patient coordinates: a sagittal-like grid (slices along x) gives the same verdicts."""
    a = np.transpose(_knee(), (2, 0, 1))[:, ::-1]  # array axes (x, z, y) with rows running inferior
    img = sitk.GetImageFromArray(np.ascontiguousarray(a))
    img.SetDirection((0, 0, 1, 1, 0, 0, 0, -1, 0))  # columns -> y (P), rows -> -z (I), slices -> x (L)
    img.SetOrigin((0.0, 0.0, 119.0))
    assert all(c.passed for c in knee_plausibility(img)), summary(knee_plausibility(img))


@pytest.mark.parametrize("defect, failing", [
    ("patella posterior", "patella anterior"),
    ("tibia above", "tibia inferior"),
    ("central slices only", "knee extent"),
    ("bones cut off", "knee extent"),
    ("fragments", "one piece"),
    ("floating cartilage", "cartilage on bone"),
    ("thick cartilage", "volumes"),
    ("no patella", "present"),
])
def test_each_defect_fails_its_check(defect, failing):
    a = _knee()
    if defect == "patella posterior":
        a[a == V["patella"]] = 0
        a[70:100, 88:100, 30:60] = V["patella"]
    elif defect == "tibia above":
        a[a == V["tibia"]] = 0
        a[112:120, 35:85, 15:75] = V["tibia"]
    elif defect == "central slices only":
        # labels on 16 of the 120 slices along the series' slice axis (z here)
        a[:52] = 0
        a[68:] = 0
        a[52:68, 35:85, 10:80] = np.where(a[52:68, 35:85, 10:80] == 0, V["femur"], a[52:68, 35:85, 10:80])
        a[52:56, 35:85, 15:75] = V["tibia"]
        a[60:68, 15:32, 30:60] = V["patella"]
    elif defect == "bones cut off":  # labels stop on full cross-sections, though they span 50 mm
        a[:40] = 0
        a[90:] = 0
    elif defect == "fragments":
        a[a == V["tibia"]] = 0
        a[10:30, 35:85, 15:75] = V["tibia"]
        a[36:56, 35:85, 15:75] = V["tibia"]
    elif defect == "floating cartilage":
        a[a == V["femoral_cartilage"]] = 0
        a[75:77, 88:99, 10:80] = V["femoral_cartilage"]
    elif defect == "thick cartilage":
        a[52:62, 35:85, 10:80] = V["femoral_cartilage"]  # 10 mm: 35 mL
    elif defect == "no patella":
        a[a == V["patella"]] = 0
    assert failing in _failed(a)
    if defect == "no patella":  # every check still runs; the one that needs the patella says it cannot
        checks = {c.name: c for c in knee_plausibility(_image(a))}
        assert len(checks) == 7 and checks["patella anterior"].detail == "not measurable: no patella labelled"
        assert checks["tibia inferior"].passed and checks["knee extent"].passed


def test_thick_slices_keep_cartilage_on_the_bone():
    """On 4 mm slices the cartilage under the condyles lies in the slice below the femur's last one (voxel centres
    4 mm apart): the tolerance grows by half a voxel, so the plausible knee still passes."""
    a = _knee()[::4]
    img = sitk.GetImageFromArray(np.ascontiguousarray(a))
    img.SetSpacing((1.0, 1.0, 4.0))
    checks = {c.name: c for c in knee_plausibility(img)}
    assert checks["cartilage on bone"].passed, checks["cartilage on bone"].detail
    assert "within 5.0 mm" in checks["cartilage on bone"].detail


def test_checks_follow_the_structures_the_plane_segments():
    """A coronal model does not segment the patella: no patella check, and a labelmap without one still passes."""
    a = _knee()
    a[a == V["patella"]] = 0
    coronal = [s.key for s in labels.knee_structures("coronal")]
    assert "patella" not in coronal
    checks = knee_plausibility(_image(a), coronal)
    assert all(c.passed for c in checks) and "patella anterior" not in [c.name for c in checks]
    assert "patella" not in checks[0].detail
