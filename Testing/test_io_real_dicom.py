"""Reading the real DICOM series in ../shared/data (little and big endian, multi-echo, compressed re-encodings)."""
from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from io_helpers import load_dess

from OrthoDiffusionLib.errors import AmbiguousSeriesError
from OrthoDiffusionLib.io import read_all_series, read_series

IDENTIFYING_KEYS = ("patient", "birth", "accession", "institution", "uid", "physician", "date")


def test_dess_geometry_and_meta(shared_data):
    s = load_dess(shared_data)
    assert s.shape == (80, 512, 512)
    assert s.array.dtype == np.float32
    np.testing.assert_allclose(s.spacing, (0.3125, 0.3125, 1.5), atol=1e-4)
    assert s.plane == "sagittal" and s.obliquity_deg < 1.0
    assert s.meta["echo_time"] == pytest.approx(7.48)
    assert s.meta["magnetic_field_strength"] == pytest.approx(3.0)
    assert s.meta["manufacturer"].startswith("GE")
    assert s.meta["slice_thickness"] == pytest.approx(1.5)
    assert s.meta["number_of_slices"] == 80
    assert not any(w in k.lower() for k in s.meta for w in IDENTIFYING_KEYS)
    # slice order follows the slice normal: origin is the first slice's ImagePositionPatient with lowest projection
    normal = s.direction[:, 2]
    positions = [np.asarray(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient, float)
                 for p in sorted((shared_data / "dess_sagittal_dicom").glob("*.dcm"))]
    first = min(positions, key=lambda p: p @ normal)
    np.testing.assert_allclose(s.origin, first, atol=1e-4)


def test_dess_nifti_round_trip_keeps_geometry(shared_data, tmp_path):
    s = load_dess(shared_data)
    path = tmp_path / "dess.nii"
    sitk.WriteImage(s.image, str(path))
    r = read_series(path)
    assert r.plane == "sagittal" and r.shape == s.shape
    np.testing.assert_allclose(r.spacing, s.spacing, atol=1e-5)
    np.testing.assert_allclose(r.origin, s.origin, atol=1e-4)
    np.testing.assert_allclose(r.direction, s.direction, atol=1e-5)
    np.testing.assert_array_equal(r.array, s.array)


def test_mese_big_endian_splits_into_eight_echoes(shared_data):
    series = read_all_series(shared_data / "mese_t2_sagittal_dicom")
    assert len(series) == 8
    tes = [s.meta["echo_time"] for s in series]
    assert tes == sorted(tes) and len(set(tes)) == 8
    assert tes[0] == pytest.approx(6.312) and tes[-1] == pytest.approx(50.496)
    assert [s.meta["echo_number"] for s in series] == list(range(1, 9))
    for s in series:
        assert s.shape == (24, 256, 256) and s.plane == "sagittal"
        assert s.spacing[2] == pytest.approx(4.0, abs=1e-3)
        assert s.spacing[0] == pytest.approx(0.625)
        assert s.meta["transfer_syntax"] == "Explicit VR Big Endian"
    # echoes at the same positions: identical geometry, different intensities (T2 decay: later echoes darker)
    np.testing.assert_allclose(series[0].origin, series[7].origin)
    assert series[0].array.mean() > series[7].array.mean() > 0


def test_mese_needs_an_echo_choice(shared_data):
    folder = shared_data / "mese_t2_sagittal_dicom"
    with pytest.raises(AmbiguousSeriesError) as e:
        read_series(folder)
    assert "mese_t2_sagittal_dicom" in str(e.value) and "echo 8" in str(e.value)
    s3 = read_series(folder, echo=3)
    assert s3.meta["echo_time"] == pytest.approx(18.936) and s3.shape == (24, 256, 256)
    assert read_series(folder, series_uid="8", echo=1).meta["echo_number"] == 1


def _dess_subset(shared_data, n=12):
    files = sorted((shared_data / "dess_sagittal_dicom").glob("*.dcm"))
    mid = len(files) // 2
    return files[mid - n // 2: mid + n // 2]


def test_order_comes_from_positions_not_names(shared_data, tmp_path):
    subset = _dess_subset(shared_data)
    rng = np.random.default_rng(3)
    perm = rng.permutation(len(subset))
    for new_index, i in enumerate(perm):
        ds = pydicom.dcmread(subset[i])
        ds.InstanceNumber = int(rng.integers(1, 1000))  # scrambled, must not matter
        ds.save_as(tmp_path / f"z{new_index:03d}.dcm")
        shutil.copy(subset[i], tmp_path.parent / f"ref_{tmp_path.name}_{i:03d}.dcm")
    ref_dir = tmp_path.parent / f"ref_{tmp_path.name}"
    ref_dir.mkdir()
    for p in tmp_path.parent.glob(f"ref_{tmp_path.name}_*.dcm"):
        p.rename(ref_dir / p.name)
    a, b = read_series(tmp_path), read_series(ref_dir)
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.origin, b.origin)
    full = load_dess(shared_data)
    # the subset is a contiguous block of the full series
    k = int(round((np.asarray(a.origin) - np.asarray(full.origin)) @ full.direction[:, 2] / full.spacing[2]))
    np.testing.assert_array_equal(a.array, full.array[k:k + len(subset)])


def _jpeg_lossless_bytes(ds: pydicom.Dataset, tmp_path) -> bytes:
    """Encapsulated JPEG Lossless (Process 14 SV1) pixel data for ``ds``, encoded by GDCM through SimpleITK."""
    img = sitk.GetImageFromArray(ds.pixel_array[None].astype(np.int16))
    out = tmp_path / "gdcm_tmp.dcm"
    w = sitk.ImageFileWriter()
    w.SetFileName(str(out))
    w.SetUseCompression(True)
    w.SetCompressor("JPEG")
    w.Execute(img)
    enc = pydicom.dcmread(out)
    assert enc.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLosslessSV1
    out.unlink()
    return enc.PixelData


def test_compressed_variants_load_losslessly(shared_data, tmp_path):
    subset = _dess_subset(shared_data, n=8)
    ref = read_series(_copy(subset, tmp_path / "plain"))
    j2k, jll = tmp_path / "j2k", tmp_path / "jpegll"
    j2k.mkdir()
    jll.mkdir()
    for i, p in enumerate(subset):
        ds = pydicom.dcmread(p)
        ds.compress(pydicom.uid.JPEG2000Lossless)
        ds.save_as(j2k / f"{i}.dcm")
        ds = pydicom.dcmread(p)
        if ds.PixelRepresentation == 1 or ds.BitsStored != 16:
            ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
        ds.PixelData = _jpeg_lossless_bytes(ds, tmp_path)
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGLosslessSV1
        ds.save_as(jll / f"{i}.dcm", enforce_file_format=True)
    for folder, name in ((j2k, "JPEG 2000"), (jll, "JPEG Lossless")):
        s = read_series(folder)
        assert name in s.meta["transfer_syntax"]
        np.testing.assert_array_equal(s.array, ref.array)
        np.testing.assert_allclose(s.origin, ref.origin)


def _copy(files, folder):
    folder.mkdir()
    for p in files:
        shutil.copy(p, folder / p.name)
    return folder
