"""Coronal/axial reformats of the real DESS as DICOM and NIfTI/NRRD/MHA variants; plane classification; load_study."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from io_helpers import load_dess, reformat

from OrthoDiffusionLib.io import classify_plane, load_study, read_series, write_dicom_series
from OrthoDiffusionLib.errors import MissingPlaneError, ObliqueSeriesError

# Orientation codes (DICOMOrient: letters = where increasing index points) used to store the same volume with
# permuted and flipped axes. "RAS" stored in NIfTI gives an identity-like RAS affine, "LPS" a flipped one.
VARIANT_CODES = ("RAS", "LPS", "SAR", "IRP", "PLI")


@pytest.fixture(scope="module")
def reformats(shared_data):
    dess = load_dess(shared_data)
    return {
        "sagittal": reformat(dess.image, "sagittal", spacing=(1.25, 1.25, 1.5)),
        "coronal": reformat(dess.image, "coronal"),
        "axial": reformat(dess.image, "axial"),
    }


def test_reformat_grids(reformats):
    cor = reformats["coronal"]
    assert classify_plane(cor) == ("coronal", 0.0)
    assert classify_plane(reformats["axial"]) == ("axial", 0.0)
    assert classify_plane(reformats["sagittal"]) == ("sagittal", 0.0)
    assert cor.GetSpacing() == (1.5, 1.5, 3.0)


@pytest.mark.parametrize("plane", ["coronal", "axial"])
def test_dicom_reformat_round_trip(reformats, plane, tmp_path):
    img = reformats[plane]
    write_dicom_series(img, tmp_path, series_description=f"PD {plane[:3].upper()}", uid_seed=plane)
    s = read_series(tmp_path)
    assert s.plane == plane and s.obliquity_deg < 1e-3
    np.testing.assert_allclose(s.image.GetDirection(), img.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(s.origin, img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(s.spacing, img.GetSpacing(), atol=1e-6)
    # float intensities stored as uint16 with rescale
    values = sitk.GetArrayFromImage(img)
    np.testing.assert_allclose(s.array, values, atol=(values.max() - values.min()) / 65535 + 1e-3)
    ds = pydicom.dcmread(sorted(tmp_path.glob("*.dcm"))[0])
    iop = np.asarray(ds.ImageOrientationPatient, float)
    np.testing.assert_allclose(iop, np.asarray(img.GetDirection()).reshape(3, 3)[:, :2].T.ravel(), atol=1e-6)


@pytest.mark.parametrize("plane", ["coronal", "axial"])
@pytest.mark.parametrize("code", VARIANT_CODES)
def test_volume_variants_classified(reformats, plane, code, tmp_path):
    img = sitk.DICOMOrient(reformats[plane], code)
    suffix = {"RAS": ".nii.gz", "LPS": ".nii", "SAR": ".nrrd", "IRP": ".mha", "PLI": ".nii.gz"}[code]
    path = tmp_path / f"{plane}_{code}{suffix}"
    sitk.WriteImage(img, str(path))
    s = read_series(path)
    assert s.plane == plane, f"{path.name} classified {s.plane}"
    # whatever the stored axis order, the slice axis (3 mm) becomes ITK axis 2 and the voxels are unchanged
    assert s.spacing[2] == pytest.approx(3.0)
    back = sitk.DICOMOrient(s.image, "LIP" if plane == "coronal" else "LPS")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(reformats[plane]))


def test_nifti_ras_and_lps_affines_differ_in_the_file(reformats, tmp_path):
    """The two NIfTI variants really store different affines (read from the raw header's srow_x)."""
    srow_x0 = {}
    for code in ("RAS", "LPS"):
        path = tmp_path / f"cor_{code}.nii"
        sitk.WriteImage(sitk.DICOMOrient(reformats["coronal"], code), str(path))
        header = np.fromfile(path, dtype=np.uint8, count=348).tobytes()
        srow_x0[code] = float(np.frombuffer(header[280:296], dtype="<f4")[0])
        assert read_series(path).plane == "coronal"
    # increasing i points to patient Right for "RAS" (+x in the file's RAS space), to Left for "LPS" (-x)
    assert srow_x0["RAS"] == pytest.approx(1.5) and srow_x0["LPS"] == pytest.approx(-1.5)


def test_oblique_volume_rejected(reformats, tmp_path):
    img = sitk.Image(reformats["coronal"])
    a = np.deg2rad(40)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    img.SetDirection(tuple((rot @ np.asarray(img.GetDirection()).reshape(3, 3)).ravel()))
    path = tmp_path / "oblique40.nii"
    sitk.WriteImage(img, str(path))
    with pytest.raises(ObliqueSeriesError) as e:
        read_series(path)
    assert "oblique40.nii" in str(e.value) and "40.0 deg" in str(e.value)
    # 20 degrees is the usual small obliquity: accepted, angle reported
    a = np.deg2rad(20)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    plane, angle = classify_plane(rot @ np.asarray(reformats["coronal"].GetDirection()).reshape(3, 3))
    assert plane == "coronal" and angle == pytest.approx(20.0)


def _sr_file(path):
    """A minimal Basic Text SR (non-image DICOM) to be ignored by the study scan."""
    from pydicom.dataset import Dataset, FileMetaDataset

    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = pydicom.uid.BasicTextSRStorage
    fm.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["sr"])
    fm.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID = fm.MediaStorageSOPClassUID
    ds.SOPInstanceUID = fm.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    ds.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["sr-series"])
    ds.save_as(path, enforce_file_format=True)


def _dicomdir_file(path):
    """A minimal DICOMDIR-like index file (Media Storage Directory), no image."""
    from pydicom.dataset import Dataset, FileMetaDataset

    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    fm.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["dicomdir"])
    fm.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.FileSetID = "KNEE"
    ds.DirectoryRecordSequence = pydicom.sequence.Sequence([])
    ds.save_as(path, enforce_file_format=True)


def test_load_study_assigns_three_planes(reformats, tmp_path):
    study = tmp_path / "study"
    write_dicom_series(reformats["sagittal"], study / "s1", series_description="PD SAG", series_number=1,
                       meta={"echo_time": 30, "repetition_time": 3000}, uid_seed="sag")
    write_dicom_series(reformats["coronal"], study / "s2", series_description="COR PD", series_number=2,
                       uid_seed="cor")
    # a fat-suppressed coronal PD with more slices: must lose to the non-fat-sat one
    finer = reformat(reformats["coronal"], "coronal", spacing=(1.5, 1.5, 2.0))
    write_dicom_series(finer, study / "s3", series_description="COR PD FS", series_number=3, uid_seed="cor-fs")
    write_dicom_series(reformats["axial"], study / "s4", series_description="AX T2 FS", series_number=4,
                       meta={"echo_time": 80, "repetition_time": 4000}, uid_seed="ax")
    for code in ("RAS", "LPS", "SAR"):
        sitk.WriteImage(sitk.DICOMOrient(reformats["axial"], code), str(study / f"axial_{code}.nii.gz"))
        sitk.WriteImage(sitk.DICOMOrient(reformats["coronal"], code), str(study / f"coronal_{code}.nrrd"))
    _sr_file(study / "report.dcm")
    _dicomdir_file(study / "DICOMDIR")
    (study / "notes.txt").write_text("not an image")

    exam = load_study(study)
    assert exam.planes_present() == ["sagittal", "coronal", "axial"]
    assert exam.sagittal.meta["series_description"] == "PD SAG"
    assert exam.coronal.meta["series_description"] == "COR PD"
    # the axial DICOM is T2 fat-sat; the NIfTI/NRRD copies have unknown weighting, no fat sat -> preferred
    assert exam.axial.meta["format"] in ("NIfTI", "NRRD") and exam.axial.plane == "axial"
    text = "\n".join(exam.choices)
    assert "COR PD FS" in text and "fat-suppressed" in text
    assert "report.dcm" in text and "non-image DICOM" in text
    assert "DICOMDIR" in text
    exam.require(("sagittal", "coronal", "axial"))

    only_sag = load_study(study / "s1")
    assert only_sag.planes_present() == ["sagittal"]
    assert any(line.startswith("coronal: missing") for line in only_sag.choices)
    with pytest.raises(MissingPlaneError) as e:
        only_sag.require(("sagittal", "coronal", "axial"))
    assert "coronal, axial" in str(e.value) and "s1" in str(e.value)
