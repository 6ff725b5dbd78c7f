"""Single-file multi-frame DICOM (enhanced MR with per-frame functional groups, and legacy multi-frame)."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
from io_helpers import code_direction
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from OrthoDiffusionLib.io import read_series


def _geometry():
    a = np.deg2rad(7.0)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    direction = rot @ code_direction("LIP")  # coronal, 7 degrees oblique
    return direction, np.array([-30.0, 10.0, 45.0]), (0.6, 0.7, 2.5)


def _base(n_frames: int, stored: np.ndarray, sop_class: str, big_endian: bool = False) -> Dataset:
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = sop_class
    fm.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["mf", sop_class])
    fm.TransferSyntaxUID = pydicom.uid.ExplicitVRBigEndian if big_endian else pydicom.uid.ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, fm.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["mf-series", sop_class])
    ds.SeriesDescription = "COR PD multiframe"
    ds.SeriesNumber = 9
    ds.NumberOfFrames = n_frames
    ds.Rows, ds.Columns = stored.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    big = fm.TransferSyntaxUID == pydicom.uid.ExplicitVRBigEndian
    ds.PixelData = stored.astype(">u2" if big else "<u2").tobytes()
    return ds


def _volume():
    return np.random.default_rng(5).integers(0, 4000, size=(7, 10, 12)).astype(np.uint16)  # (D, H, W)


def test_enhanced_mr_frames_out_of_order(tmp_path):
    direction, origin, spacing = _geometry()
    vol = _volume()
    order = np.array([3, 0, 6, 1, 5, 2, 4])  # frames stored out of slice order
    ds = _base(len(order), vol[order], pydicom.uid.EnhancedMRImageStorage)
    shared = Dataset()
    po = Dataset()
    po.ImageOrientationPatient = [float(v) for v in (*direction[:, 0], *direction[:, 1])]
    pm = Dataset()
    pm.PixelSpacing = [spacing[1], spacing[0]]
    pm.SliceThickness = spacing[2]
    pvt = Dataset()
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = 0.5, -10, "US"
    shared.PlaneOrientationSequence = Sequence([po])
    shared.PixelMeasuresSequence = Sequence([pm])
    shared.PixelValueTransformationSequence = Sequence([pvt])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for k in order:
        item, pp, echo = Dataset(), Dataset(), Dataset()
        pp.ImagePositionPatient = [float(v) for v in origin + k * spacing[2] * direction[:, 2]]
        echo.EffectiveEchoTime = 28.0
        item.PlanePositionSequence = Sequence([pp])
        item.MREchoSequence = Sequence([echo])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    path = tmp_path / "enhanced.dcm"
    ds.save_as(path, enforce_file_format=True)

    s = read_series(path)
    assert s.plane == "coronal" and s.obliquity_deg == pytest.approx(7.0, abs=1e-6)
    np.testing.assert_array_equal(s.array, vol.astype(np.float32) * 0.5 - 10)
    np.testing.assert_allclose(s.spacing, spacing, atol=1e-6)
    np.testing.assert_allclose(s.origin, origin, atol=1e-6)
    np.testing.assert_allclose(s.direction, direction, atol=1e-6)
    assert s.meta["echo_time"] == pytest.approx(28.0) and s.meta["number_of_slices"] == 7


def test_legacy_multiframe_big_endian(tmp_path):
    direction, origin, spacing = _geometry()
    vol = _volume()
    ds = _base(vol.shape[0], vol, pydicom.uid.MRImageStorage, big_endian=True)
    ds.ImageOrientationPatient = [float(v) for v in (*direction[:, 0], *direction[:, 1])]
    ds.ImagePositionPatient = [float(v) for v in origin]
    ds.PixelSpacing = [spacing[1], spacing[0]]
    ds.SpacingBetweenSlices = spacing[2]
    path = tmp_path / "legacy_mf.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRBigEndian
    s = read_series(path)
    np.testing.assert_array_equal(s.array, vol.astype(np.float32))
    np.testing.assert_allclose(s.origin, origin, atol=1e-6)
    np.testing.assert_allclose(s.spacing, spacing, atol=1e-6)
    assert s.plane == "coronal"
