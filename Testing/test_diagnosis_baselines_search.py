"""``orthodiffusion train-baseline`` and ``search-timesteps`` on a tiny synthetic cohort."""
from __future__ import annotations

import csv
import json

import pytest

from diag_helpers import KEYS, TINY_SETTINGS, write_backbone, write_cohort
from OrthoDiffusionLib.cli import main
from OrthoDiffusionLib.training.diagnosis.train import resolve_config


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort_small")
    manifest = write_cohort(root, n_patients=12, seed=3, missing_plane={"p011": "axial"})
    return manifest, write_backbone(root / "backbone.safetensors")


def test_baselines_write_predictions_that_evaluate_compares(cohort, tmp_path, capsys):
    manifest, _ = cohort
    runs = {}
    for model, extra in (("unet3d", ["--unet-channels", "8,8,16,16,16", "--train-patients", "5"]),
                         ("resnet18", ["--resnet-widen", "0.125"])):
        runs[model] = tmp_path / model
        rc = main(["train-baseline", "--manifest", str(manifest), "--model", model, "--out", str(runs[model]),
                   "--size", "32", "--slices", "8", "--set", f"baselines.epochs.{model}=1", "--device", "cpu", *extra])
        assert rc == 0
        info = json.loads((runs[model] / "run.json").read_text())
        assert info["format"] == "orthodiffusion.baseline-run" and info["model"] == model
        assert info["training"]["epochs"] == 1 and info["training"]["lr"] == 1e-4
        assert info["training"]["train_patients"] == (5 if model == "unet3d" else 8)
        assert info["training"]["eval_rows_zero_filled_plane"] == 1  # p011 (test) has no axial series
        with open(runs[model] / "predictions_test.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [r["patient_id"] for r in rows] == ["p010", "p011"] and all(0 <= float(r[k]) <= 1 for r in rows
                                                                          for k in KEYS)
        assert not (runs[model] / "checkpoint.safetensors").exists()
    capsys.readouterr()
    # paired permutation test of one baseline against the other, on the validation split
    rc = main(["evaluate", "--predictions", str(runs["unet3d"] / "predictions_val.csv"), "--manifest", str(manifest),
               "--baseline", str(runs["resnet18"] / "predictions_val.csv"), "--out", str(tmp_path / "eval"),
               "--split", "val", "--bootstrap", "10", "--permutations", "20", "--no-figures"])
    assert rc == 0
    with open(tmp_path / "eval" / "comparison.csv", newline="") as f:
        comparison = list(csv.DictReader(f))
    # the same file name as the evaluated one: named by its run folder
    assert comparison[0]["baseline"] == f"{runs['resnet18'].name}/predictions_val"
    assert 0 < float(comparison[0]["p_value"]) <= 1


def test_one_plane_baseline_reads_only_that_plane(cohort, tmp_path, capsys):
    """``--planes sagittal``: one encoder, no zero-filled rows (p011 lacks only its axial series); a plane name
    that does not exist is one clear error (exit 2) and no run folder."""
    from safetensors.numpy import load_file

    manifest, _ = cohort
    run = tmp_path / "sag"
    common = ["train-baseline", "--manifest", str(manifest), "--model", "resnet18", "--resnet-widen", "0.125",
              "--size", "32", "--slices", "8", "--set", "baselines.epochs.resnet18=1", "--device", "cpu"]
    assert main([*common, "--planes", "sagittal", "--out", str(run)]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["planes"] == ["sagittal"] and info["training"]["eval_rows_zero_filled_plane"] == 0
    assert {k.split(".")[1] for k in load_file(str(run / "model.safetensors")) if k.startswith("encoders.")} == \
        {"sagittal"}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*common, "--planes", "sagital", "--out", str(tmp_path / "bad")])
    assert exit_info.value.code == 2 and "sagital" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_search_writes_table_and_a_trainable_config(cohort, tmp_path):
    manifest, backbone = cohort
    out = tmp_path / "search"
    args = ["search-timesteps", "--manifest", str(manifest), "--backbone", str(backbone), "--out", str(out),
            "--timesteps", "50,300", "--blocks", "mid_0,mid_2", "--top-k", "2", "--device", "cpu", "--no-figures"]
    for s in TINY_SETTINGS + ["stage1.epochs=1"]:
        args += ["--set", s]
    assert main(args) == 0
    with open(out / "per_plane.csv", newline="") as f:
        grid = list(csv.DictReader(f))
    assert len(grid) == 3 * 2 * 2 and {r["plane"] for r in grid} == {"sagittal", "coronal", "axial"}
    assert sum(1 for r in grid if r["top_rank"]) == 3 * 2
    with open(out / "combinations.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2 ** 3
    chosen = json.loads((out / "chosen.json").read_text())
    cfg = resolve_config(str(out / "config.json"))
    assert cfg["planes"] == chosen["planes"] and cfg["preprocessing"] == {"slices": 8, "size": 32}
    assert all(v["timestep"] in (50, 300) and v["block"] in ("mid_0", "mid_2") for v in chosen["planes"].values())
    # the second run reads the cached taps (same table)
    again = list(args)
    again[again.index("--out") + 1] = str(tmp_path / "again")
    assert main(again + ["--cache-dir", str(out / "cache")]) == 0
    assert (tmp_path / "again" / "per_plane.csv").read_text() == (out / "per_plane.csv").read_text()
