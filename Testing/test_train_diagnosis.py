"""``orthodiffusion train-diagnosis`` on a tiny synthetic cohort: run-folder contract, head reload, LP/FT, multi-scan
and missing planes, exact resume, bad manifests."""
from __future__ import annotations

import csv
import json
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diag_helpers import KEYS, TINY_SETTINGS, write_backbone, write_cohort
from OrthoDiffusionLib.model.checkpoints import load_backbone
from OrthoDiffusionLib.cli import main
from OrthoDiffusionLib.errors import CancelledError
from OrthoDiffusionLib.model.heads import DiagnosisHead
from OrthoDiffusionLib.io import read_series
from OrthoDiffusionLib.labels import PLANES
from OrthoDiffusionLib.inference.preprocess import preprocess_series
from OrthoDiffusionLib.model.schedule import CosineSchedule
from OrthoDiffusionLib.training.diagnosis.data import fixed_noise_taps
from OrthoDiffusionLib.training.diagnosis.train import resolve_config, train_diagnosis

TAPS = ["planes.sagittal.timestep=50", "planes.coronal.timestep=100", "planes.axial.timestep=50",
        "planes.sagittal.block=mid_0", "planes.coronal.block=mid_2", "planes.axial.block=mid_0"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    manifest = write_cohort(root, n_patients=18, missing_plane={"p001": "axial", "p016": "coronal"},
                            extra_series={"p002": "sagittal"}, ehr=True)
    backbone = write_backbone(root / "backbone.safetensors")
    return manifest, backbone


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_linear_probe_run_contract_and_reload(cohort, tmp_path):
    manifest, backbone = cohort
    out = tmp_path / "run"
    args = ["train-diagnosis", "--manifest", str(manifest), "--config", "knee-lp-opt", "--backbone", str(backbone),
            "--out", str(out), "--device", "cpu"]
    for s in TINY_SETTINGS + TAPS + ["ehr.enabled=true", "ehr.lr=0.001", "ehr.epochs=2"]:
        args += ["--set", s]
    assert main(args) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["format"] == "orthodiffusion.diagnosis-run" and info["version"] == 1
    assert info["anatomy"] == "knee" and info["labels"] == KEYS
    assert info["preprocessing"] == {"slices": 8, "size": 32}
    assert info["planes"]["coronal"] == {"timestep": 100, "block": "mid_2", "backbone": "backbone_coronal.safetensors"}
    assert info["head_weights"] == "diagnosis_head.safetensors"
    # EHR late fusion: weights, constructor config and the z-score statistics of the training patients
    assert info["ehr"]["weights"] == "ehr_fusion.safetensors" and (out / "ehr_fusion.safetensors").is_file()
    assert info["ehr"]["config"] == {"num_labels": 8, "mri_features": 3 * info["head"]["channels"] * 2}
    ages = [40 + i for i in range(11)]  # training patients p000..p010
    assert info["ehr"]["statistics"]["age"]["mean"] == pytest.approx(np.mean(ages))
    assert "test_ehr" in info["metrics"]
    assert info["config"]["protocol"] == "linear_probe"
    assert set(info["metrics"]) >= {"val", "test"} and 0.0 <= info["metrics"]["test"]["macro_auroc"] <= 1.0
    prov = info["provenance"]
    assert prov["manifest_sha256"] and set(prov["backbone_sha256"]) == set(PLANES) and prov["finished"]
    # p001 lacks axial: skipped for Stage II, still predicted (by MPAE)
    assert info["training"]["stage2_skipped_patients_missing_plane"] == 1
    # linear probing keeps the input backbone unchanged
    for p in PLANES:
        assert (out / f"backbone_{p}.safetensors").read_bytes() == backbone.read_bytes()
    assert not (out / "checkpoint.safetensors").exists()
    log = read_rows(out / "log.csv")
    assert [r["stage"] for r in log] == ["stage1.sagittal"] * 2 + ["stage1.coronal"] * 2 + ["stage1.axial"] * 2 + \
        ["stage2"] * 2 + ["ehr"] * 2

    # the head reloads from the run folder and reproduces the test predictions from the series files
    head = DiagnosisHead(**info["head"])
    head.load_state_dict(load_file(str(out / info["head_weights"])))
    head.eval()
    rows = read_rows(manifest)
    preds = read_rows(out / "predictions_test.csv")
    assert {r["patient_id"] for r in preds} == {r["patient_id"] for r in rows if r["split"] == "test"}
    schedule = CosineSchedule()
    pid = "p016"  # missing coronal -> fused by MPAE
    taps = {}
    for r in rows:
        if r["patient_id"] != pid:
            continue
        plane = r["plane"]
        model, _ = load_backbone(out / info["planes"][plane]["backbone"])
        path = str((manifest.parent / r["series_path"]).resolve())
        vol = preprocess_series(read_series(path), slices=8, size=32).volume
        taps[plane] = fixed_noise_taps(model, schedule, torch.from_numpy(vol)[None, None],
                                       info["planes"][plane]["timestep"], info["planes"][plane]["block"],
                                       info["training"]["noise_seed"], [f"{path}|8|32"])
    with torch.no_grad():
        result = head(taps)
    assert result.fused_by == "mpae" and result.planes == ("sagittal", "axial")
    row = next(r for r in preds if r["patient_id"] == pid)
    assert row["fused_by"] == "mpae"
    np.testing.assert_allclose(result.probabilities[0].numpy(), [float(row[k]) for k in KEYS], atol=2e-5)
    w = result.plane_weights[0].numpy()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(w[:, PLANES.index("coronal")] == 0)
    # a patient with two sagittal series has two combination rows, plane weights per label in the CSV
    val = read_rows(out / "predictions_val.csv")
    assert all(abs(sum(float(r[f"{KEYS[0]}__{p}"]) for p in PLANES) - 1) < 1e-4 for r in val)


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort_ft")
    return write_cohort(root, n_patients=10, seed=1), write_backbone(root / "backbone.safetensors")


def _ft_config():
    return resolve_config("knee-ft-opt", TINY_SETTINGS + TAPS + ["stage1.lr=0.001", "stage1.validate_each_epoch=false"])


@pytest.mark.slow
def test_finetune_resume_gives_identical_run(small_cohort, tmp_path):
    manifest, backbone = small_cohort
    cfg = _ft_config()
    full = train_diagnosis(manifest, cfg, tmp_path / "full", backbone=backbone)

    cancel = threading.Event()
    seen = []

    def progress(stage, fraction):
        seen.append(stage)
        if stage == "stage1.coronal" and fraction > 0.5:
            cancel.set()  # mid-epoch 2 of the coronal plane: resume restarts from the end of epoch 1

    with pytest.raises(CancelledError):
        train_diagnosis(manifest, cfg, tmp_path / "resumed", backbone=backbone, progress=progress, cancel=cancel)
    assert (tmp_path / "resumed" / "checkpoint.safetensors").is_file()
    assert not (tmp_path / "resumed" / "run.json").exists()
    with pytest.raises(Exception, match="--resume"):
        train_diagnosis(manifest, cfg, tmp_path / "resumed", backbone=backbone)
    resumed = train_diagnosis(manifest, cfg, tmp_path / "resumed", backbone=backbone, resume=True)

    assert resumed["metrics"] == full["metrics"]
    a = load_file(str(tmp_path / "full" / "diagnosis_head.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "diagnosis_head.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for p in PLANES:
        fa = load_file(str(tmp_path / "full" / f"backbone_{p}.safetensors"))
        fb = load_file(str(tmp_path / "resumed" / f"backbone_{p}.safetensors"))
        assert all(torch.equal(fa[k], fb[k]) for k in fa)
    # fine-tuning changed the encoder (and only the encoder + middle block)
    ft = load_file(str(tmp_path / "full" / "backbone_sagittal.safetensors"))
    orig = load_file(str(backbone))
    assert not torch.equal(ft["input_blocks.0.0.weight"], orig["input_blocks.0.0.weight"])
    assert torch.equal(ft["out.2.weight"], orig["out.2.weight"])
    assert (tmp_path / "full" / "predictions_test.csv").read_bytes() == \
        (tmp_path / "resumed" / "predictions_test.csv").read_bytes()
    assert full["training"]["temperatures"] == resumed["training"]["temperatures"]


def test_bad_manifest_is_one_clear_error(cohort, tmp_path, capsys):
    manifest, backbone = cohort
    bad = manifest.parent / "bad_split.csv"  # beside the volumes (series paths are relative)
    text = manifest.read_text().splitlines()
    text[3] = text[3].replace(",train,", ",training,")
    bad.write_text("\n".join(text) + "\n")
    out = tmp_path / "run"
    rc = main(["train-diagnosis", "--manifest", str(bad), "--config", "knee-lp-opt", "--backbone", str(backbone),
               "--out", str(out), "--set", "preprocessing.size=32"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert str(bad) in err[0] and "line 4" in err[0] and "split 'training'" in err[0]
    assert not out.exists()
