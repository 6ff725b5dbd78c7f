"""Volumes and cartilage thickness on synthetic shapes of known size (within 5%), anisotropic spacing included."""
import math

import numpy as np
import pytest
import SimpleITK as sitk

from OrthoDiffusionLib import labels
from OrthoDiffusionLib.segmentation.measures import (MAX_RAYS, array_spacing, local_thickness, mean_thickness,
                                                     measure_structures, structure_volume_ml)


def _grid(shape, spacing):
    """Physical coordinates (mm, centred) of every voxel of an array of ``shape`` with ``spacing`` (z, y, x)."""
    return np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)], indexing="ij")


def _shell(spacing, r_out=12.0, thickness=3.0):
    shape = [int(math.ceil(2 * (r_out + 2) / s)) for s in spacing]
    z, y, x = _grid(shape, spacing)
    r = np.sqrt(z * z + y * y + x * x)
    return (r <= r_out) & (r > r_out - thickness)


def _disc_slab(spacing, thickness, normal, extent=40.0):
    """A slab of ``thickness`` mm across ``normal``, a disc of diameter extent - 4 mm (a wide cartilage plate)."""
    n = np.asarray(normal, float) / np.linalg.norm(normal)
    shape = [int(math.ceil(extent / s)) | 1 for s in spacing]
    z, y, x = _grid(shape, spacing)
    d = z * n[0] + y * n[1] + x * n[2]
    r2 = z * z + y * y + x * x - d * d
    return (np.abs(d) < thickness / 2) & (r2 < (extent / 2 - 2) ** 2)


@pytest.mark.parametrize("spacing", [(0.5, 0.5, 0.5), (1.0, 0.4, 0.4), (0.7, 0.3, 0.5)])
def test_spherical_shell_thickness(spacing):
    res = mean_thickness(_shell(spacing), spacing)
    assert res.mean_mm == pytest.approx(3.0, rel=0.05)
    assert res.n_rays > 0.5 * res.n_surface


@pytest.mark.parametrize("spacing,thickness,normal,expected", [
    ((0.6, 0.3, 0.5), 3.0, (1, 0, 0), 3.0),       # 5 slices of 0.6 mm
    ((0.6, 0.3, 0.5), 3.0, (0, 1, 0), 2.7),       # 9 rows of 0.3 mm (voxel centres strictly inside)
    ((0.7, 0.3, 0.5), 2.5, (1, 1, 1), 2.5),       # oblique
    ((1.0, 0.4, 0.4), 3.0, (1, 0.5, 0), 3.0),     # oblique, thick slices
    ((1.5, 0.35, 0.35), 2.5, (0, 1, 0.3), 2.5),   # DESS-like anisotropy, cartilage as thin as 2 slices
])
def test_slab_thickness(spacing, thickness, normal, expected):
    res = mean_thickness(_disc_slab(spacing, thickness, normal), spacing)
    assert res.mean_mm == pytest.approx(expected, rel=0.05)


def test_local_thickness_returns_surface_voxels_in_array_coordinates():
    spacing = (0.6, 0.3, 0.5)
    mask = _disc_slab(spacing, 3.0, (1, 0, 0), extent=20.0)
    vox, t = local_thickness(mask, spacing)
    assert vox.shape == (t.size, 3) and mask[tuple(vox.T)].all()
    assert np.nanmedian(t) == pytest.approx(3.0, abs=1e-6)
    empty = mean_thickness(np.zeros((4, 4, 4), bool), spacing)
    assert math.isnan(empty.mean_mm) and empty.n_rays == 0


def test_a_seeded_subset_of_rays_gives_the_mean_of_all_rays():
    """Mean thickness casts rays from at most MAX_RAYS surface voxels: the same mean as all rays, reproducibly."""
    spacing = (0.5, 0.3, 0.3)
    mask = _shell(spacing)
    vox, t = local_thickness(mask, spacing)
    assert len(vox) > 2 * MAX_RAYS
    sub_vox, sub_t = local_thickness(mask, spacing, max_rays=MAX_RAYS)
    assert len(sub_vox) == MAX_RAYS and mask[tuple(sub_vox.T)].all()
    assert np.nanmean(sub_t) == pytest.approx(np.nanmean(t), abs=0.02)
    res = mean_thickness(mask, spacing)
    assert res.n_surface == MAX_RAYS and res.mean_mm == mean_thickness(mask, spacing).mean_mm


def test_volume_of_ellipsoid_with_anisotropic_spacing():
    spacing = (1.2, 0.4, 0.5)
    shape = (40, 90, 80)
    z, y, x = _grid(shape, spacing)
    a, b, c = 18.0, 15.0, 12.0
    mask = (z / a) ** 2 + (y / b) ** 2 + (x / c) ** 2 <= 1
    assert structure_volume_ml(mask, spacing) == pytest.approx(4 / 3 * math.pi * a * b * c / 1000, rel=0.02)


def test_measure_structures_table_from_labelmap():
    spacing = (1.0, 0.4, 0.4)
    shell = _shell(spacing)
    shape = shell.shape
    z, y, x = _grid(shape, spacing)
    r = np.sqrt(z * z + y * y + x * x)
    lab = np.zeros(shape, np.uint8)
    lab[r <= 9.0] = labels.structure_by_key()["femur"].value
    lab[shell] = labels.structure_by_key()["femoral_cartilage"].value
    img = sitk.GetImageFromArray(lab)
    img.SetSpacing(spacing[::-1])
    img.SetDirection((0, 0, 1, 1, 0, 0, 0, 1, 0))        # orientation does not matter
    assert array_spacing(img) == spacing
    rows = measure_structures(img, plane="coronal")
    assert [row.key for row in rows] == [s.key for s in labels.knee_structures("coronal")]
    by = {row.key: row for row in rows}
    assert by["femur"].volume_ml == pytest.approx(4 / 3 * math.pi * 9.0 ** 3 / 1000, rel=0.03)
    assert math.isnan(by["femur"].mean_thickness_mm)
    assert by["femoral_cartilage"].volume_ml == pytest.approx(4 / 3 * math.pi * (12 ** 3 - 9 ** 3) / 1000, rel=0.03)
    assert by["femoral_cartilage"].mean_thickness_mm == pytest.approx(3.0, rel=0.05)
    assert by["tibia"].volume_ml == 0.0 and math.isnan(by["medial_tibial_cartilage"].mean_thickness_mm)
    d = by["femoral_cartilage"].as_dict()
    assert set(d) == {"value", "key", "name", "volume_ml", "mean_thickness_mm"} and d["name"] == "Femoral cartilage"


def test_measure_segmentation_cli(tmp_path, capsys):
    import json

    from OrthoDiffusionLib.cli import main
    from OrthoDiffusionLib.segmentation.io import write_labelmap_nifti

    spacing = (0.5, 0.5, 0.5)
    shell = _shell(spacing, r_out=6.0, thickness=2.0)
    lab = np.where(shell, labels.structure_by_key()["patellar_cartilage"].value, 0).astype(np.uint8)
    img = sitk.GetImageFromArray(lab)
    img.SetSpacing(spacing)
    path = write_labelmap_nifti(img, tmp_path / "seg.nii.gz")
    assert main(["measure-segmentation", str(path), "--out", str(tmp_path / "m.json")]) == 0
    printed = capsys.readouterr().out
    assert "Patellar cartilage" in printed and "Mean thickness (mm)" in printed
    rows = {r["key"]: r for r in json.loads((tmp_path / "m.json").read_text())}
    assert len(rows) == 11 and rows["femur"]["mean_thickness_mm"] is None
    assert rows["patellar_cartilage"]["mean_thickness_mm"] == pytest.approx(2.0, rel=0.05)
    assert rows["patellar_cartilage"]["volume_ml"] == pytest.approx(4 / 3 * math.pi * (6 ** 3 - 4 ** 3) / 1000,
                                                                     rel=0.05)
    assert main(["measure-segmentation", str(path), "--plane", "coronal", "--out", str(tmp_path / "m.csv")]) == 0
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines[0] == "value,key,name,volume_ml,mean_thickness_mm" and len(lines) == 1 + 9
    capsys.readouterr()
    assert main(["measure-segmentation", str(tmp_path / "nope.nii.gz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.nii.gz" in err and "does not exist" in err
    assert main(["measure-segmentation", str(path), "--out", str(tmp_path / "m.txt")]) == 2
    assert not (tmp_path / "m.txt").exists()
