"""Non-knee series are refused: the metadata anatomy check (io/anatomy.py), the exam loaders, ``predict``."""
from __future__ import annotations

import shutil

import pydicom
import pytest
from bundle_helpers import make_tiny_bundle, tiny_volume

from OrthoDiffusionLib.cli import main
from OrthoDiffusionLib.errors import AnatomyMismatchError
from OrthoDiffusionLib.io import Exam, load_study, read_series, write_dicom_series
from OrthoDiffusionLib.io.anatomy import anatomy_findings, anatomy_mismatch
from OrthoDiffusionLib.inference.predictor import load_exam


def _retag(folder, **tags) -> None:
    """Set DICOM tags (keyword=value; None deletes) in every ``.dcm`` file of ``folder``."""
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        for key, value in tags.items():
            if value is None:
                if key in ds:
                    delattr(ds, key)
            else:
                setattr(ds, key, value)
        ds.save_as(path)


def _tiny_dicom(folder, plane="sagittal", seed=0, **tags):
    write_dicom_series(tiny_volume(plane, seed).image, folder, series_description=f"PD {plane}",
                       series_number=seed + 1, uid_seed=f"anatomy-{folder.name}")
    if tags:
        _retag(folder, **tags)
    return folder


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny.odbundle", segmentation_planes=("sagittal",))


# ------------------------------------------------------------------------------------------------ the classifier
@pytest.mark.parametrize("meta", [
    {},                                                        # real knee data often has no anatomy at all
    {"body_part_examined": "", "series_description": None},
    {"body_part_examined": "KNEE"},
    {"body_part_examined": "LEG"},
    {"body_part_examined": "LOWEREXTREMITY"},
    {"body_part_examined": "EXTREMITY"},
    {"body_part_examined": "RKNEE"},                          # run-together defined term
    {"study_description": "MRT Knie links", "body_part_examined": None},
    {"series_description": "Sag DESS 3132 30 HiRes thk1p5 ARCx2"},  # the real DESS's description
    {"protocol_name": "T2_TSE_SAG_KNEE"},
    {"series_description": "PD fibular head"},                 # "HEAD" inside a knee phrase
    {"body_part_examined": "BRAIN", "series_description": "PD SAG KNEE"},  # contradictory: not a clear statement
])
def test_knee_or_unknown_metadata_is_accepted_for_a_knee_model(meta):
    assert anatomy_mismatch(meta, "knee") is None


@pytest.mark.parametrize("meta, keyword, region", [
    ({"body_part_examined": "BRAIN"}, "BRAIN", "head/brain"),
    ({"body_part_examined": "HEAD"}, "HEAD", "head/brain"),
    ({"body_part_examined": "SHOULDER"}, "SHOULDER", "shoulder"),
    ({"body_part_examined": "CSPINE"}, "CSPINE", "spine"),
    ({"body_part_examined": "CARDIAC"}, "CARDIAC", "heart"),
    ({"body_part_examined": "ÉPAULE"}, "EPAULE", "shoulder"),   # accents dropped
    ({"study_description": "MR Schulter re."}, "SCHULTER", "shoulder"),
    ({"series_description": "t1_mprage_sag BRAIN"}, "BRAIN", "head/brain"),
    ({"protocol_name": "AX T2 ANKLE"}, "ANKLE", "ankle"),
    ({"anatomic_region": "Hip joint"}, "HIP", "hip"),
    ({"series_description": "T1 femoral head"}, "FEMORAL HEAD", "hip"),
    ({"series_description": "brain_t1", "format": "NIfTI"}, "BRAIN", "head/brain"),
])
def test_another_anatomy_is_refused_for_a_knee_model(meta, keyword, region):
    finding = anatomy_mismatch(meta, "knee")
    assert finding is not None and (finding.keyword, finding.region) == (keyword, region)


def test_the_models_anatomy_decides():
    shoulder = {"body_part_examined": "SHOULDER"}
    assert anatomy_mismatch(shoulder, "knee").region == "shoulder"
    assert anatomy_mismatch(shoulder, "shoulder") is None
    assert anatomy_mismatch({"body_part_examined": "KNEE"}, "shoulder").region == "knee"
    assert anatomy_mismatch({"body_part_examined": "LOWEREXTREMITY"}, "shoulder").region == "leg"
    assert anatomy_mismatch({"body_part_examined": "LOWEREXTREMITY"}, "ankle") is None
    assert anatomy_mismatch({"body_part_examined": "ANKLE"}, "ankle") is None
    assert anatomy_mismatch({"body_part_examined": "BRAIN"}, "ankle").region == "head/brain"
    # an anatomy the table does not know cannot be checked: nothing is refused
    assert anatomy_mismatch({"body_part_examined": "BRAIN"}, "tail") is None


def test_findings_name_the_tag_and_say_file_name_for_volumes():
    f = anatomy_findings({"body_part_examined": "BRAIN", "series_description": "t1 brain", "format": "DICOM"})
    assert [(x.field, x.region) for x in f] == [("BodyPartExamined", "head/brain"),
                                                ("SeriesDescription", "head/brain")]
    assert anatomy_findings({"series_description": "brain", "format": "NRRD"})[0].field == "file name"


# ---------------------------------------------------------------------------------------------------- the loaders
def test_dicom_reader_keeps_the_anatomy_tags(tmp_path):
    folder = _tiny_dicom(tmp_path / "s", StudyDescription="MR SHOULDER", BodyPartExamined="SHOULDER")
    meta = read_series(folder).meta
    assert meta["body_part_examined"] == "SHOULDER" and meta["study_description"] == "MR SHOULDER"


def test_given_series_of_another_anatomy_is_refused_unless_allowed(tmp_path):
    brain = _tiny_dicom(tmp_path / "brain_series", BodyPartExamined="BRAIN")
    with pytest.raises(AnatomyMismatchError) as err:
        Exam.from_series(sagittal=brain)
    assert str(err.value).startswith(str(brain)) and "BRAIN" in str(err.value) and "\n" not in str(err.value)
    exam = Exam.from_series(sagittal=brain, allow_anatomy_mismatch=True)
    assert exam.sagittal is not None and any("anatomy check overridden" in c for c in exam.choices)
    assert Exam.from_series(sagittal=brain, anatomy=None).sagittal is not None
    shoulder = _tiny_dicom(tmp_path / "shoulder_series", BodyPartExamined="SHOULDER")
    with pytest.raises(AnatomyMismatchError, match="shoulder"):
        load_exam(sagittal=shoulder)
    assert load_exam(sagittal=shoulder, anatomy="shoulder").sagittal is not None


def test_study_folder_ignores_other_anatomies_and_refuses_when_nothing_is_left(tmp_path):
    study = tmp_path / "study"
    _tiny_dicom(study / "knee_sag", "sagittal", 0)  # written with BodyPartExamined KNEE
    _tiny_dicom(study / "cor", "coronal", 1, BodyPartExamined="CHEST", StudyDescription="CT-like chest")
    exam = load_study(study)
    assert exam.planes_present() == ["sagittal"]
    assert any(c.startswith("ignored:") and "CHEST" in c for c in exam.choices)
    assert load_study(study, allow_anatomy_mismatch=True).planes_present() == ["sagittal", "coronal"]
    shutil.rmtree(study / "knee_sag")
    with pytest.raises(AnatomyMismatchError, match="CHEST"):
        load_study(study)


# ------------------------------------------------------------------------------------------------------ predict
def test_predict_refuses_a_real_brain_tagged_series_with_one_line(shared_data, bundle, tmp_path, capsys):
    brain = tmp_path / "brain_dicom"
    shutil.copytree(shared_data / "dess_sagittal_dicom", brain)
    _retag(brain, BodyPartExamined="BRAIN")
    out = tmp_path / "out"
    rc = main(["predict", "--sagittal", str(brain), "--model", str(bundle), "--out", str(out), "--progress", "none"])
    assert rc != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert str(brain) in err[0] and "BRAIN" in err[0] and "knee" in err[0], err[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_predict_allow_anatomy_mismatch_runs_and_records_it(bundle, tmp_path, capsys):
    brain = _tiny_dicom(tmp_path / "brain", BodyPartExamined="BRAIN")
    out = tmp_path / "out"
    rc = main(["predict", "--sagittal", str(brain), "--model", str(bundle), "--out", str(out), "--progress", "none",
               "--no-diagnosis", "--allow-anatomy-mismatch", "--json"])
    assert rc == 0
    import json

    data = json.loads((out / "diagnosis.json").read_text())
    assert any("anatomy check overridden" in c and "BRAIN" in c for c in data["exam"]["choices"])


def test_the_models_anatomy_is_read_from_the_bundle_header(bundle, tmp_path):
    from OrthoDiffusionLib.bundle.format import bundle_anatomy
    from OrthoDiffusionLib.errors import BundleError
    from OrthoDiffusionLib.bundle.registry import model_anatomy

    assert bundle_anatomy(bundle) == "knee" and model_anatomy(str(bundle)) == "knee"
    pickle = tmp_path / "model.odbundle"
    pickle.write_bytes(b"\x80\x04\x95junk")
    with pytest.raises(BundleError, match="pickle"):
        bundle_anatomy(pickle)


def test_nrrd_and_metaimage_headers_carry_the_anatomy_tags(tmp_path):
    import SimpleITK as sitk

    from OrthoDiffusionLib.io.anatomy import header_fields, meta_from_header_fields

    assert header_fields({"body_part_examined": " BRAIN ", "protocol_name": "", "series_description": "x"}) == {
        "BodyPartExamined": "BRAIN"}
    assert meta_from_header_fields({"BodyPartExamined": "BRAIN", "NRRD_space": "x"}) == {"body_part_examined": "BRAIN"}
    image = tiny_volume("axial").image
    for name in ("axial.nrrd", "axial.mha"):
        image.SetMetaData("BodyPartExamined", "CHEST")
        sitk.WriteImage(image, str(tmp_path / name))
        with pytest.raises(AnatomyMismatchError, match=name):
            Exam.from_series(axial=tmp_path / name)
    sitk.WriteImage(tiny_volume("axial").image, str(tmp_path / "plain.nii.gz"))
    assert Exam.from_series(axial=tmp_path / "plain.nii.gz").axial.meta.get("body_part_examined") is None
