"""``orthodiffusion check-model`` scores exactly what ``orthodiffusion predict`` gives for each exam of a cohort."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from bundle_helpers import make_tiny_bundle
from diag_helpers import KEYS, write_cohort
from OrthoDiffusionLib.cli import main
from OrthoDiffusionLib.inference.result_folder import DIAGNOSIS_FILE, labelmap_file_name


def _add_seg_column(manifest, segs):
    """Give the sagittal rows of ``segs`` ({patient: labelmap path}) a ``seg_path``."""
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["seg_path"] = segs.get(r["patient_id"], "") if r["plane"] == "sagittal" else ""
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_check_model_scores_the_predict_flow(tmp_path, capsys):
    bundle = make_tiny_bundle(tmp_path / "tiny.odbundle", segmentation_planes=("sagittal",))
    cohort = tmp_path / "cohort"
    manifest = write_cohort(cohort, n_patients=5, seed=3)
    # what a user gets from predict for patient p000
    out = tmp_path / "p000-result"
    series = {p: str(cohort / "p000" / f"{p}_0.nii.gz") for p in ("sagittal", "coronal", "axial")}
    assert main(["predict", *sum(([f"--{p}", s] for p, s in series.items()), []), "--model", str(bundle),
                 "--out", str(out), "--progress", "none"]) == 0
    diagnosis = json.loads((out / DIAGNOSIS_FILE).read_text())
    predicted = sitk.ReadImage(str(out / labelmap_file_name("sagittal")))
    # ground truth: p000's own prediction (Dice 1 wherever the structure is present), p001 an empty labelmap
    empty = sitk.Image(predicted)
    empty = sitk.Multiply(empty, 0)
    sitk.WriteImage(predicted, str(cohort / "p000" / "gt.nii.gz"))
    sitk.WriteImage(empty, str(cohort / "p001" / "gt.nii.gz"))
    _add_seg_column(manifest, {"p000": "p000/gt.nii.gz", "p001": "p001/gt.nii.gz"})

    report = tmp_path / "check"
    assert main(["check-model", "--model", str(bundle), "--manifest", str(manifest), "--out", str(report),
                 "--progress", "none"]) == 0
    assert "macro AUROC" in capsys.readouterr().out
    with open(report / "predictions.csv", newline="") as f:
        rows = {r["patient_id"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == [f"p{i:03d}" for i in range(5)]
    for label in diagnosis["labels"]:
        assert float(rows["p000"][label["key"]]) == pytest.approx(label["calibrated_probability"], abs=1e-5)
    with open(report / "dice.csv", newline="") as f:
        dice = {r["patient_id"]: r for r in csv.DictReader(f)}
    assert sorted(dice) == ["p000", "p001"]                      # patients without a ground truth are not scored
    present = [v for v in np.unique(sitk.GetArrayFromImage(predicted)) if v]
    assert present, "the tiny model segmented nothing; the test needs at least one structure"
    scores = [float(v) for k, v in dice["p000"].items() if k not in ("patient_id", "plane") and v != "nan"]
    assert len(scores) == len(present) and all(s == pytest.approx(1.0) for s in scores)
    summary = json.loads((report / "summary.json").read_text())
    assert summary["n_patients"] == 5 and set(summary["auroc"]) == set(KEYS)
    assert 0.0 <= summary["mean_dice"]["sagittal"] < 1.0                # p001's empty truth pulls the mean down


def test_check_model_refuses_a_file_that_is_not_a_cohort(tmp_path, capsys):
    bogus = tmp_path / "manifest.csv"
    bogus.write_text("a,b\n1,2\n")
    bundle = make_tiny_bundle(tmp_path / "tiny.odbundle", segmentation_planes=())
    assert main(["check-model", "--model", str(bundle), "--manifest", str(bogus), "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "manifest.csv" in err and "not a cohort manifest" in err and not (tmp_path / "o").exists()
