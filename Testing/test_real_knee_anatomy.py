"""The shipped model on real knees: the real 3D DESS (sagittal, and reformatted as a coronal 2D series) and the first
echo of the real multi-echo T2, segmented over the whole series and checked against anatomy (femur, tibia and patella
present and each one piece, patella anterior to the femur, tibia inferior to it, femoral cartilage on the femur
surface, volumes in adult ranges over what the series covers, bones on the slices where the knee is).

Every check must hold on all three; an independent check runs the same rules on other real studies.
"""
from __future__ import annotations

import pytest

from OrthoDiffusionLib.bundle.registry import default_model
from OrthoDiffusionLib.training.evaluation.anatomy_check import check_anatomy, series_to_check

#: The checks every segmented knee series must pass (io.anatomy's segmentation checks; "patella anterior" only where
#: the plane shows it).
CHECKS = {"present", "one piece", "patella anterior", "tibia inferior", "cartilage on bone", "volumes", "knee extent"}


@pytest.fixture(scope="module")
def results(shared_data, tmp_path_factory):
    cases = (series_to_check([shared_data / "dess_sagittal_dicom"], ("coronal",))
             + series_to_check([shared_data / "mese_t2_sagittal_dicom"], (), echo=1))
    return check_anatomy(str(default_model().file), cases, tmp_path_factory.mktemp("anatomy"))


def _failed(result) -> dict:
    return {c.name: c.detail for c in result["checks"] if not c.passed}


@pytest.mark.parametrize("name", ["dess_sagittal_dicom", "mese_t2_sagittal_dicom", "dess_sagittal_dicom_coronal"])
def test_the_shipped_model_passes_every_anatomical_check_on_a_real_knee(results, name):
    r = results[name]
    expected = CHECKS if r["plane"] == "sagittal" else CHECKS - {"patella anterior"}
    assert {c.name for c in r["checks"]} == expected
    assert not _failed(r), (name, _failed(r))
    volumes = r["volumes_ml"]
    assert 20 <= volumes["femur"] and 10 <= volumes["tibia"]
    if r["plane"] == "sagittal":
        assert 3 <= volumes["patella"]
