"""train-tissue-diagnosis: on a tiny cohort whose joint effusion is a larger fluid collection, a context-tissue
segmentation run and the tissue-pooled label models learn the effusion in well under a minute of CPU; the run folder
contract; the features' layout; refusals (a structures-only run, a foreign output folder)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from OrthoDiffusionLib import labels
from io_helpers import write_rows_csv
from OrthoDiffusionLib.cli import main
from OrthoDiffusionLib.errors import InputError
from OrthoDiffusionLib.model.backbone import DiffusionUNet
from OrthoDiffusionLib.model.checkpoints import save_backbone
from OrthoDiffusionLib.simulate.tissues import Tissue
from OrthoDiffusionLib.training.diagnosis.tissue_pooled import train_tissue_diagnosis
from OrthoDiffusionLib.training.segmentation.train import train_segmentation

SAGITTAL = (0, 0, 1, 1, 0, 0, 0, -1, 0)
TINY = ["preprocessing.size=32", "epochs=3", "batch_size=2", "head.decoder_channels=[32,16,16,8]",
        "eval.noise_draws=1", "eval.val_every=0", "lr=0.002", "backbone_lr_scale=1.0"]
KEYS = [lab.key for lab in labels.diagnosis_labels("knee")]
N_PATIENTS = 40


def _exam(rng: np.random.Generator, effusion: bool):
    """(image, labelmap, tissue map) of 20 x 40 x 40: structure boxes, a fat pad and a fluid collection that is
    large with an effusion and small without."""
    lab = np.zeros((20, 40, 40), np.uint8)
    for v in range(1, 12):
        r, c = 3 + 3 * ((v - 1) % 4), 3 + 8 * ((v - 1) // 4)
        lab[4:16, r:r + 3, c:c + 6] = v
    tissue = lab.copy()
    tissue[4:16, 30:36, 30:38] = Tissue.FAT.value
    depth = int(rng.integers(5, 7)) if effusion else int(rng.integers(1, 3))
    tissue[5:15, 30:30 + depth, 2:12] = Tissue.FLUID.value
    brightness = {Tissue.FAT.value: 300.0, Tissue.FLUID.value: 520.0}
    img = 100 + 30 * lab.astype(np.float32)
    for v, b in brightness.items():
        img[tissue == v] = b
    img += rng.normal(0, 8, img.shape)
    out = []
    for arr, kind in ((img, sitk.sitkFloat32), (lab, sitk.sitkUInt8), (tissue, sitk.sitkUInt8)):
        im = sitk.Cast(sitk.GetImageFromArray(arr.astype(np.float32 if kind == sitk.sitkFloat32 else np.uint8)), kind)
        im.SetSpacing((0.5, 0.5, 3.0))
        im.SetDirection(SAGITTAL)
        out.append(im)
    return out


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tissue-cohort")
    rng = np.random.default_rng(5)
    splits = ["train"] * 24 + ["val"] * 8 + ["test"] * 8
    rows = []
    for i in range(N_PATIENTS):
        pid = f"P{i:03d}"
        (root / pid).mkdir()
        y = {k: int(rng.random() < 0.5) for k in KEYS}
        y["joint_effusion"] = i % 2  # balanced in every split
        for name, image in zip(("sagittal", "sagittal_seg", "sagittal_tissue"), _exam(rng, bool(y["joint_effusion"]))):
            sitk.WriteImage(image, str(root / pid / f"{name}.nii.gz"))
        rows.append({"patient_id": pid, "plane": "sagittal", "series_path": f"{pid}/sagittal.nii.gz",
                     "split": splits[i], **y, "seg_path": f"{pid}/sagittal_seg.nii.gz",
                     "tissue_path": f"{pid}/sagittal_tissue.nii.gz"})
    manifest = root / "manifest.csv"
    return write_rows_csv(manifest, rows)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("bb") / "backbone.safetensors"
    save_backbone(DiffusionUNet(model_channels=32), path, "sagittal")
    return path


@pytest.fixture(scope="module")
def context_run(cohort, backbone, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seg") / "context"
    train_segmentation(cohort, "sagittal", backbone, out, config="seg-demo", device="cpu", command="test",
                       overrides=TINY + ["context_tissues=true"])
    return out


@pytest.fixture(scope="module")
def tissue_run(cohort, context_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tissue") / "diag"
    train_tissue_diagnosis(cohort, {"sagittal": context_run}, out, command="test")
    return out


def test_the_tissue_pooled_diagnosis_learns_the_effusion(cohort, context_run, tissue_run):
    out = tissue_run
    run = json.loads((out / "run.json").read_text())
    assert run["metrics"]["test"]["auroc"]["joint_effusion"] >= 0.9, run["metrics"]["test"]["auroc"]
    assert run["metrics"]["test"]["patients"] == 8 and run["data"] == {"train": 24, "val": 8, "test": 8}
    assert run["planes"]["sagittal"]["features"] == 24 + 3 + 24 * 8  # volumes, patella offset, pooled (K = 8)
    assert {p.name for p in out.iterdir()} == {"run.json", "tissue_head.safetensors", "predictions_val.csv",
                                               "predictions_test.csv", "features"}
    from safetensors.torch import load_file

    head = load_file(out / "tissue_head.safetensors")
    assert head["weight"].shape == (8, 219) and head["bias"].shape == (8,) and head["mean"].shape == (219,)
    assert head["platt_scale"].shape == head["platt_shift"].shape == (8,)
    assert float(head["platt_scale"][KEYS.index("joint_effusion")]) > 0  # calibration keeps the ranking
    header = next(csv.reader(open(out / "predictions_test.csv")))
    assert header == ["patient_id", *KEYS]
    # a second fit into the same folder reuses the cached features and gives the same model
    again = train_tissue_diagnosis(cohort, {"sagittal": context_run}, out, command="test")
    assert again["metrics"]["test"]["macro_auroc"] == pytest.approx(run["metrics"]["test"]["macro_auroc"])


def test_refusals(cohort, backbone, context_run, tmp_path, capsys):
    structures_only = tmp_path / "plain"
    train_segmentation(cohort, "sagittal", backbone, structures_only, config="seg-demo", device="cpu",
                       command="test", overrides=TINY[:2] + ["epochs=1", "eval.val_every=0"])
    with pytest.raises(InputError, match="context_tissues"):
        train_tissue_diagnosis(cohort, {"sagittal": structures_only}, tmp_path / "a")
    with pytest.raises(InputError, match="coronal run|sagittal segmentation run"):
        train_tissue_diagnosis(cohort, {"coronal": context_run}, tmp_path / "b")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["train-tissue-diagnosis", "--manifest", str(cohort), "--run", f"sagittal={context_run}",
                 "--out", str(foreign), "--progress", "none"]) == 2
    assert "did not write" in capsys.readouterr().err and (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(SystemExit) as e:
        main(["train-tissue-diagnosis", "--manifest", str(cohort), "--run", "knee=x", "--out", str(tmp_path / "c")])
    assert e.value.code == 2 and "PLANE=FOLDER" in capsys.readouterr().err


def test_a_bundle_predicts_what_the_run_learnt(cohort, context_run, tissue_run, tmp_path):
    """Exported with its segmentation run (taken from the run's record when not given), the tissue-pooled diagnosis
    gives the predictor the effusion the run learnt: through ``Predictor`` on the test patients' series, with the
    predictor's own noise draws."""
    from sklearn.metrics import roc_auc_score

    from OrthoDiffusionLib.bundle.export import export_bundle
    from OrthoDiffusionLib.bundle.format import load_bundle
    from OrthoDiffusionLib.inference.predictor import Predictor, load_exam

    path = export_bundle(tissue_run, [], "tissue-test", tmp_path / "m.odbundle", half=True)
    bundle = load_bundle(path)
    diag = bundle.meta["diagnosis"]
    assert diag["kind"] == "tissue-pooled" and set(diag["planes"]) == {"sagittal"} == set(bundle.segmentation)
    assert diag["planes"]["sagittal"]["backbone"] == bundle.segmentation["sagittal"]["backbone"]
    assert bundle.meta["synthetic_data_only"] is None  # the test cohort has no simulator README
    rows = [r for r in csv.DictReader(open(cohort)) if r["split"] == "test"]
    exams = [load_exam(sagittal=cohort.parent / r["series_path"]) for r in rows]
    results = Predictor(path, device="cpu").predict_many(exams, noise_draws=2, segmentation=False)
    effusion = [next(lb for lb in res.labels if lb["key"] == "joint_effusion") for res in results]
    truth = [int(r["joint_effusion"]) for r in rows]
    assert roc_auc_score(truth, [lb["calibrated_probability"] for lb in effusion]) >= 0.9
    assert all(res.fused_by == "tissue-pooled" for res in results)
    assert all(lb["plane_weights"] == {"sagittal": 1.0, "coronal": 0.0, "axial": 0.0} for lb in effusion)
    assert any(lb["uncertainty"] > 0 for lb in effusion)  # two noise draws give two feature vectors


def test_export_refuses_a_segmentation_run_the_diagnosis_did_not_read(cohort, backbone, tissue_run, tmp_path):
    from OrthoDiffusionLib.bundle.export import export_bundle

    other = tmp_path / "other"
    train_segmentation(cohort, "sagittal", backbone, other, config="seg-demo", device="cpu", command="test",
                       overrides=TINY[:2] + ["epochs=1", "eval.val_every=0", "context_tissues=true"])
    with pytest.raises(InputError, match="not the one this diagnosis was fitted on"):
        export_bundle(tissue_run, [other], "x", tmp_path / "x.odbundle")
    assert not (tmp_path / "x.odbundle").exists()


def test_the_diagnosis_learns_from_the_patients_its_segmentation_runs_saw():
    """Label-efficiency runs: segmentation runs trained on a nested subset (--train-patients) give the diagnosis
    that subset's training patients, not all of them; runs of different subsets are refused."""
    from OrthoDiffusionLib.training.diagnosis.tissue_pooled import _training_patients
    from OrthoDiffusionLib.training.segmentation.data import nested_patient_subset

    train = [f"P{i:03d}" for i in range(50)]

    def runs(*subsets):
        return {plane: (Path(plane), {"config": {"train_patients": n, "seed": 0}}, "sha")
                for plane, n in zip(("sagittal", "coronal"), subsets)}

    assert _training_patients(train, runs(None, None)) == train
    ten = _training_patients(train, runs(5, 5))
    assert ten == nested_patient_subset(train, 5, 0) and len(ten) == 5 and set(ten) < set(train)
    with pytest.raises(InputError, match="different training subsets"):
        _training_patients(train, runs(5, None))
