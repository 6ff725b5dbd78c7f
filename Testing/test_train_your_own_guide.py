"""docs/train-your-own.md runs as written: its ``bash`` blocks, in order, on a tiny simulated cohort.

The commands are taken from the guide's fenced ``bash`` blocks (``text`` blocks -- the authors' weights, the viewer --
are not run) and executed in one bash script in a temporary folder. Only sizes shrink (:data:`SHRINK`: 6 patients,
a 64-pixel matrix, 2 pretraining steps of batch 2, 32 x 32 inputs), so every subcommand, option and file path of the
guide is exercised; then the outputs the guide promises are checked.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "train-your-own.md"

#: (pattern, replacement) applied to the guide's commands: smaller, not different.
SHRINK = [
    (r"--n \d+", "--n 6"),
    (r"--matrix \d+", "--matrix 64"),
    (r"--steps \d+", "--steps 2"),
    (r"--batch-size \d+", "--batch-size 2"),
    (r"--size \d+", "--size 32"),
    (r"--ckpt-every \d+", "--ckpt-every 1"),
    (r"--val-every \d+", "--val-every 1"),
    (r"--ema-start \d+", "--ema-start 0"),
]


def guide_script() -> str:
    """The guide's ``bash`` blocks joined in order, shrunk by :data:`SHRINK`."""
    blocks = re.findall(r"^```bash\n(.*?)^```", GUIDE.read_text(encoding="utf-8"), flags=re.S | re.M)
    script = "\n".join(blocks)
    for pattern, replacement in SHRINK:
        script = re.sub(pattern, replacement, script)
    return script


def test_guide_blocks_are_found_and_every_stage_is_there():
    script = guide_script()
    for command in ("simulate cohort", "make-manifest", "pretrain", "train-diagnosis", "train-segmentation",
                    "evaluate", "evaluate-segmentation", "export", "predict", "models import", "configs"):
        assert f"orthodiffusion {command}" in script, command
    text = GUIDE.read_text(encoding="utf-8")
    for column in ("patient_id", "plane", "series_path", "split", "seg_path", "age, sex, height, weight, "
                   "patient_type, injury_event", "center", "field_strength"):
        assert column in text, column


@pytest.mark.slow
def test_the_guide_runs_end_to_end(tmp_path):
    script = "set -euo pipefail\n" + guide_script()
    env = {**os.environ, "ORTHODIFFUSION_HOME": str(tmp_path / "home"),
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=3600)
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-4000:])
    out = proc.stdout

    # make-manifest reported what it found, and the manifest has the documented columns
    assert "patients: 6 with images and labels" in out and "wrote manifest.csv" in out
    header = (tmp_path / "manifest.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["patient_id", "plane", "series_path", "split"] and "seg_path" in header
    # pretraining: summary before the first step, training split only, size recorded in the backbone
    assert re.search(r"pretrain shared: \d+ series of \d+ patients \(splits: train \d+;", out)
    from OrthoDiffusionLib.training.named_options import backbone_preprocessing

    assert backbone_preprocessing(tmp_path / "runs/pretrain/backbone_shared.safetensors") == {
        "slices": 16, "size": 32, "slice_mm": 4.0, "inplane_mm": 1.2}
    # every trainer drew its curves; segmentation validated every epoch
    for run in ("pretrain", "diagnosis", "seg-sagittal", "seg-coronal", "diagnosis-2labels"):
        assert (tmp_path / "runs" / run / "curves.png").is_file(), run
    seg_log = (tmp_path / "runs/seg-sagittal/log.csv").read_text().splitlines()
    assert all(not line.endswith(",nan") for line in seg_log[1:])
    # the size came from the backbone; the 2-label run trained two labels
    diag = json.loads((tmp_path / "runs/diagnosis/run.json").read_text())
    assert diag["preprocessing"]["size"] == 32 and len(diag["labels"]) == 8
    two = json.loads((tmp_path / "runs/diagnosis-2labels/run.json").read_text())
    assert two["labels"] == ["acl_injury", "joint_effusion"]
    # the bundle runs in predict and is registered
    results = [p for p in (tmp_path / "results").iterdir() if p.is_dir()]
    assert len(results) == 1
    diagnosis = json.loads((results[0] / "diagnosis.json").read_text())
    assert len(diagnosis["labels"]) == 8 and (results[0] / "segmentation_sagittal.seg.nrrd").is_file()
    assert "my-knee" in out and (tmp_path / "home" / "models" / "my-knee.odbundle").is_file()
    # configs listed and one shown resolved
    assert "knee-cpu-ft" in out and '"protocol": "linear_probe"' in out
