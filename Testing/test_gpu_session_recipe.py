"""The GPU session recipe (training/recipes/gpu-session.sh) runs end to end.

A lent GPU comes with minutes of device time and no second try, so every command and option the recipe uses is
exercised here in its SMOKE mode (the same steps on a 40-exam cohort at 32 x 32 on the CPU): cohort, time-limited
pretraining, segmentation and diagnosis fine-tuning, linear probing, export of a bundle under 25 MB, evaluation
tables, the baselines at 100% and 10%, and the tables with permutation tests against them.
"""
from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from OrthoDiffusionLib.bundle.format import load_bundle

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "training" / "recipes" / "gpu-session.sh"


def test_recipe_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(RECIPE)], capture_output=True).returncode == 0


@pytest.mark.slow
def test_smoke_run_of_every_step(tmp_path):
    if shutil.which("orthodiffusion") is None:
        pytest.skip("the orthodiffusion command is not on PATH (install the package)")
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(os.environ, SMOKE="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    proc = subprocess.run(["bash", str(RECIPE), str(out), str(work)], env=env, capture_output=True, text=True,
                          timeout=3000, cwd=ROOT)
    log = (out / "commands.log").read_text()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    status = dict(re.findall(r"^  (\S+): exit (\d+)", log, flags=re.M))
    expected = {"cohort", "pretrain", "seg_sagittal", "seg_coronal", "diag_ft", "diag_lp", "export_diag_ft",
                "eval_seg", "eval_diag_ft", "eval_diag_lp", "base_unet3d_100", "base_resnet18_100", "base_unet3d_10",
                "base_resnet18_10", "seg_unet_100", "seg_unetr_100", "seg_unet_10", "seg_unetr_10",
                "seg_sagittal_10", "diag_ft_10", "eval_seg_vs_baselines", "eval_diag_ft_vs_baselines"}
    assert expected <= set(status), sorted(expected - set(status))
    assert {k: v for k, v in status.items() if v != "0"} == {}
    assert "SKIPPED" not in log

    bundle_path = out / "knee-demo-synthetic.odbundle"
    assert bundle_path.stat().st_size <= 25 * 1000 * 1000
    bundle = load_bundle(bundle_path)
    assert bundle.meta["synthetic_data_only"] is True
    assert set(bundle.segmentation) == {"sagittal", "coronal"}

    with open(out / "eval_diag_ft_vs_baselines" / "comparison.csv", newline="") as f:
        compared = {row["baseline"] for row in csv.DictReader(f)}
    assert compared == {"unet3d_100pct", "resnet18_100pct", "unet3d_10pct", "resnet18_10pct", "ft_10pct"}
    table = (out / "eval_seg_vs_baselines" / "table.md").read_text()
    for name in ("seg_sagittal", "seg_unet_100", "seg_unetr_100", "seg_sagittal_10", "seg_unet_10", "seg_unetr_10"):
        assert name in table
    assert (out / "eval_seg" / "fusion.md").is_file()
    assert (out / "runs" / "pretrain" / "log.csv").is_file()
    # nothing large comes back: no cohort volumes, caches or checkpoints
    assert not list(out.rglob("*.safetensors")) and not list(out.rglob("*_seg.nii.gz"))
