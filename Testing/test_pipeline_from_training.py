"""From the training commands to a prediction: train-diagnosis (with EHR) and train-segmentation on tiny cohorts,
``orthodiffusion export`` of their real run folders, then ``orthodiffusion predict`` with the bundle."""
from __future__ import annotations

import json

import pytest
import SimpleITK as sitk
from diag_helpers import TINY_SETTINGS, write_backbone, write_cohort
from test_train_segmentation import TINY as SEG_TINY
from test_train_segmentation import _cohort as seg_cohort

from OrthoDiffusionLib import Predictor
from OrthoDiffusionLib.bundle.format import load_bundle
from OrthoDiffusionLib.cli import main
from OrthoDiffusionLib.io import Exam
from OrthoDiffusionLib.labels import PLANES


@pytest.mark.slow
def test_export_real_runs_and_predict(tmp_path, capsys):
    diag_root = tmp_path / "diag"
    diag_root.mkdir()
    manifest = write_cohort(diag_root, n_patients=12, ehr=True)
    backbone = write_backbone(tmp_path / "backbone.safetensors")
    diag_run = tmp_path / "runs" / "diagnosis"
    args = ["train-diagnosis", "--manifest", str(manifest), "--config", "knee-lp-opt", "--backbone", str(backbone),
            "--out", str(diag_run), "--device", "cpu", "--set", "ehr.enabled=true", "--set", "ehr.epochs=1"]
    for s in TINY_SETTINGS:
        args += ["--set", s]
    assert main(args) == 0, capsys.readouterr().err
    seg_manifest = seg_cohort(tmp_path / "seg", planes=("sagittal",), n=6)
    seg_run = tmp_path / "runs" / "seg_sagittal"
    assert main(["train-segmentation", "--manifest", str(seg_manifest), "--plane", "sagittal", "--backbone",
                 str(backbone), "--out", str(seg_run), "--config", "seg-demo", "--device", "cpu",
                 "--head", "bottleneck",  # the tiny 3-level backbone lacks the skip head's default taps (in_8, in_6)
                 *[a for s in SEG_TINY for a in ("--set", s)]]) == 0, capsys.readouterr().err

    bundle_path = tmp_path / "real.odbundle"
    assert main(["export", "--diagnosis", str(diag_run), "--segmentation", str(seg_run), "--name", "from-training",
                 "--out", str(bundle_path), "--half"]) == 0, capsys.readouterr().err
    bundle = load_bundle(bundle_path)
    assert bundle.meta["diagnosis"]["ehr"] is not None
    assert bundle.meta["synthetic_data_only"] in (None, False, True)
    # linear probing: every diagnosis plane and the segmentation run share one input backbone (encoder differs
    # for the fine-tuned segmentation backbone) -> at most 2 stored
    assert 1 <= len(bundle.meta["backbones"]) <= 2

    exam = Exam.from_series(*(diag_root / "p011" / f"{p}_0.nii.gz" for p in PLANES))
    predictor = Predictor(bundle_path, device="cpu")
    result = predictor.predict(exam, {"age": 40, "sex": "female", "injury_event": "sports_accident"})
    assert result.ehr_used and len(result.labels) == 8
    seg = result.segmentations["sagittal"]
    assert seg.GetSize() == exam.sagittal.image.GetSize()
    assert seg.GetOrigin() == exam.sagittal.image.GetOrigin()

    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["predict", "--sagittal", str(diag_root / "p011" / "sagittal_0.nii.gz"), "--coronal",
                 str(diag_root / "p011" / "coronal_0.nii.gz"), "--model", str(bundle_path), "--out", str(out),
                 "--progress", "none", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fused_by"] == "mpae" and any("axial plane missing" in w for w in data["warnings"])
    assert (out / "segmentation_sagittal.seg.nrrd").is_file()
    assert sitk.ReadImage(str(out / "labelmap_sagittal.nii.gz")).GetSize() == exam.sagittal.image.GetSize()
