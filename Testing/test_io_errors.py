"""Bad input: one typed error per case, and the message names the file or folder."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from io_helpers import code_direction

from OrthoDiffusionLib.errors import (
    AmbiguousSeriesError,
    CorruptFileError,
    InconsistentSeriesError,
    InputError,
    InvalidVolumeError,
    MissingPathError,
    NoDicomError,
    NotMRError,
    NotVolumeError,
    ObliqueSeriesError,
)
from OrthoDiffusionLib.io import Exam, load_study, read_all_series, read_series, write_dicom_series


def _image(d=6, h=16, w=12, code="PIL", seed=0) -> sitk.Image:
    arr = np.random.default_rng(seed).integers(0, 1000, size=(d, h, w)).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 0.5, 2.0))
    img.SetDirection(tuple(code_direction(code).ravel()))
    return img


def _series(folder, **kw):
    return write_dicom_series(_image(**{k: kw.pop(k) for k in list(kw) if k in ("d", "h", "w", "code", "seed")}),
                              folder, uid_seed=str(folder), **kw)


def _raises(exc, name, fn, *args, **kw):
    with pytest.raises(exc) as e:
        fn(*args, **kw)
    assert type(e.value) is exc
    assert name in str(e.value), str(e.value)
    assert "\n" not in str(e.value)
    return e.value


def test_missing_folder(tmp_path):
    _raises(MissingPathError, "nowhere_folder", read_series, tmp_path / "nowhere_folder")
    _raises(MissingPathError, "nowhere_study", load_study, tmp_path / "nowhere_study")


def test_folder_without_dicom(tmp_path):
    folder = tmp_path / "text_only"
    folder.mkdir()
    (folder / "a.txt").write_text("hello")
    (folder / "b.dcm").write_bytes(b"\x00" * 50)  # not DICOM despite the name (no DICM marker)
    _raises(NoDicomError, "text_only", read_series, folder)
    _raises(NoDicomError, "text_only", read_all_series, folder)
    _raises(NoDicomError, "text_only", load_study, folder)


def test_not_mr(tmp_path):
    _series(tmp_path / "ct_series", modality="CT")
    err = _raises(NotMRError, "ct_series", read_series, tmp_path / "ct_series")
    assert "CT" in str(err)


def test_inconsistent_slice_spacing(tmp_path):
    paths = _series(tmp_path / "gap_series", d=6)
    paths[2].unlink()  # a missing slice leaves a 4 mm gap among 2 mm steps
    err = _raises(InconsistentSeriesError, "gap_series", read_series, tmp_path / "gap_series")
    assert "spacing" in str(err)


def test_mixed_orientations(tmp_path):
    paths = _series(tmp_path / "mixed_orient", d=5)
    ds = pydicom.dcmread(paths[3])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]  # an axial image inside a sagittal series
    ds.save_as(paths[3])
    err = _raises(InconsistentSeriesError, "mixed_orient", read_series, tmp_path / "mixed_orient")
    assert "orientation" in str(err)


def test_mixed_sizes(tmp_path):
    paths = _series(tmp_path / "mixed_size", d=5)
    ds = pydicom.dcmread(paths[1])
    ds.Rows, ds.Columns = 12, 16
    ds.save_as(paths[1])
    err = _raises(InconsistentSeriesError, "mixed_size", read_series, tmp_path / "mixed_size")
    assert "size" in str(err)


def test_truncated_file(tmp_path):
    paths = _series(tmp_path / "trunc_series", d=4)
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) - 100])  # pixel data cut short
    _raises(CorruptFileError, paths[2].name, read_series, tmp_path / "trunc_series")
    paths[1].write_bytes(paths[1].read_bytes()[:300])  # cut inside the header
    _raises(CorruptFileError, paths[1].name, read_series, tmp_path / "trunc_series")


def test_nan_and_constant_volumes(tmp_path):
    arr = np.random.default_rng(0).uniform(size=(5, 8, 8)).astype(np.float32)
    arr[2, 2, 2] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "nan_vol.nii"))
    _raises(InvalidVolumeError, "nan_vol.nii", read_series, tmp_path / "nan_vol.nii")
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((5, 8, 8), np.float32)), str(tmp_path / "flat_vol.nrrd"))
    _raises(InvalidVolumeError, "flat_vol.nrrd", read_series, tmp_path / "flat_vol.nrrd")
    write_dicom_series(sitk.GetImageFromArray(np.full((4, 8, 8), 5, np.int16)), tmp_path / "flat_dicom")
    _raises(InvalidVolumeError, "flat_dicom", read_series, tmp_path / "flat_dicom")


def test_2d_images(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(64, dtype=np.float32).reshape(8, 8)), str(tmp_path / "slice2d.nii"))
    _raises(NotVolumeError, "slice2d.nii", read_series, tmp_path / "slice2d.nii")
    paths = _series(tmp_path / "one", d=3)
    _raises(NotVolumeError, paths[0].name, read_series, paths[0])  # a single-frame DICOM file
    single = tmp_path / "single_slice_series"
    single.mkdir()
    paths[1].rename(single / paths[1].name)
    _raises(NotVolumeError, paths[1].name, read_series, single)


def test_wrong_file_type(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    _raises(CorruptFileError, "notes.txt", read_series, tmp_path / "notes.txt")
    (tmp_path / "fake.nii.gz").write_bytes(b"this is not gzip")
    _raises(CorruptFileError, "fake.nii.gz", read_series, tmp_path / "fake.nii.gz")
    bad = tmp_path / "bad_magic.dcm"
    bad.write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 20)
    _raises(CorruptFileError, "bad_magic.dcm", read_series, bad)


def test_oblique_dicom_series(tmp_path):
    img = _image()
    a = np.deg2rad(45)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    img.SetDirection(tuple((rot @ code_direction("PIL")).ravel()))
    write_dicom_series(img, tmp_path / "oblique_series")
    _raises(ObliqueSeriesError, "oblique_series", read_series, tmp_path / "oblique_series")
    # a study scan skips it and says why (here nothing usable is left)
    err = _raises(NoDicomError, tmp_path.name, load_study, tmp_path)
    assert "oblique_series" in str(err) and "45.0 deg" in str(err)


def test_several_series_need_a_choice(tmp_path):
    _series(tmp_path / "study" / "a", series_number=3, series_description="PD SAG")
    _series(tmp_path / "study" / "b", series_number=7, series_description="T1 SAG", seed=1)
    err = _raises(AmbiguousSeriesError, "study", read_series, tmp_path / "study")
    assert "series 3 'PD SAG'" in str(err) and "series 7 'T1 SAG'" in str(err)
    assert read_series(tmp_path / "study", series_uid="7").meta["series_description"] == "T1 SAG"
    uid = pydicom.dcmread(next((tmp_path / "study" / "a").iterdir())).SeriesInstanceUID
    assert read_series(tmp_path / "study", series_uid=uid).meta["series_number"] == 3
    assert uid not in str(err)  # UIDs are never printed


def test_exam_plane_mismatch(tmp_path):
    _series(tmp_path / "sag_only")
    err = _raises(InputError, "sag_only", Exam.from_series, coronal=tmp_path / "sag_only")
    assert "sagittal" in str(err) and "coronal" in str(err)


def test_study_scan_skips_corrupt_files(tmp_path):
    paths = _series(tmp_path / "study" / "good", d=4, series_description="PD SAG")
    (tmp_path / "study" / "broken.dcm").write_bytes(paths[0].read_bytes()[:300])
    exam = load_study(tmp_path / "study")
    assert exam.planes_present() == ["sagittal"]
    assert any("broken.dcm" in c and "truncated" in c for c in exam.choices)


def test_cli_reports_one_line_error_and_no_identifiers(tmp_path):
    _series(tmp_path / "study" / "s1", series_description="PD SAG")
    ok = subprocess.run([sys.executable, "-m", "OrthoDiffusionLib", "inspect", str(tmp_path / "study"), "--json"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    import json

    report = json.loads(ok.stdout)
    assert report["assignment"]["sagittal"].endswith("s1") and report["assignment"]["coronal"] is None
    assert "ANONYMOUS" not in ok.stdout and "SIMULATED" not in ok.stdout
    uid = pydicom.dcmread(next((tmp_path / "study" / "s1").iterdir())).SeriesInstanceUID
    assert uid not in ok.stdout
    text = subprocess.run([sys.executable, "-m", "OrthoDiffusionLib", "inspect", str(tmp_path / "study")],
                          capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and "sagittal" in text.stdout and "PD SAG" in text.stdout
    bad = subprocess.run([sys.executable, "-m", "OrthoDiffusionLib", "inspect", str(tmp_path / "missing_dir")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "missing_dir" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_folder_of_volume_files(tmp_path):
    img = sitk.GetImageFromArray(np.random.default_rng(2).uniform(size=(5, 8, 8)).astype(np.float32))
    (tmp_path / "one").mkdir()
    sitk.WriteImage(img, str(tmp_path / "one" / "only.nii.gz"))
    assert read_series(tmp_path / "one").source.endswith("only.nii.gz")
    sitk.WriteImage(img, str(tmp_path / "one" / "second.nrrd"))
    err = _raises(AmbiguousSeriesError, "one", read_series, tmp_path / "one")
    assert "only.nii.gz" in str(err) and "second.nrrd" in str(err)
    assert len(read_all_series(tmp_path / "one")) == 2


def test_screenshots_without_geometry_are_ignored(tmp_path):
    paths = _series(tmp_path / "with_sc", d=4)
    ds = pydicom.dcmread(paths[0])
    for tag in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        delattr(ds, tag)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    ds.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["sc"])
    ds.Modality = "OT"
    ds.save_as(tmp_path / "with_sc" / "screenshot.dcm")
    s = read_series(tmp_path / "with_sc")
    assert s.shape == (4, 16, 12)
    ignored = []
    read_all_series(tmp_path / "with_sc", ignored)
    assert any(p.endswith("screenshot.dcm") and "geometry" in r for p, r in ignored)
    _raises(NoDicomError, "screenshot.dcm", read_series, tmp_path / "with_sc" / "screenshot.dcm")
