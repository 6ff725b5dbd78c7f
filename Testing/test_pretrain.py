"""Pretraining: data order, exact resume after a stop, run-folder outputs from files, 2-process DDP on CPU (gloo)."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import load_file

from OrthoDiffusionLib.model.checkpoints import load_backbone
from OrthoDiffusionLib.cli import main as cli_main
from OrthoDiffusionLib.errors import InputError, OrthoDiffusionError
from OrthoDiffusionLib.training.pretrain.ddpm import InMemoryVolumes, PretrainConfig, batch_indices, pretrain

# tiny network on 16x32x32 volumes (GroupNorm(32) needs widths that are multiples of 32)
TINY = dict(width=32, channel_mult=(1, 2), attention_resolutions=(), size=32, slices=16)
TINY_ARGS = ["--width", "32", "--channel-mult", "1,2", "--attention-resolutions", "", "--size", "32",
             "--slices", "16"]
SAGITTAL = (0, 0, 1, 1, 0, 0, 0, -1, 0)  # ITK direction whose slice axis is left-right
CORONAL = (1, 0, 0, 0, 0, 1, 0, -1, 0)


def smooth_volumes(n, seed=0, shape=(16, 32, 32)):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        v = rng.standard_normal(shape).cumsum(1).cumsum(2)
        v = (v - v.min()) / (v.max() - v.min()) * 2 - 1
        out.append(v.astype(np.float32))
    return out


def write_nifti(path, direction, seed):
    vol = smooth_volumes(1, seed, shape=(20, 40, 40))[0] * 500 + 600
    img = sitk.GetImageFromArray(vol)
    img.SetDirection(direction)
    img.SetSpacing((0.5, 0.5, 3.0))
    sitk.WriteImage(img, str(path))
    return path


def write_manifest(folder, rows):
    """A manifest CSV in ``folder`` from (patient_id, plane, series path, split) rows (paths made relative)."""
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient_id", "plane", "series_path", "split", "acl"])
        for pid, plane, path, split in rows:
            w.writerow([pid, plane, os.path.relpath(path, folder), split, 0])
    return manifest


def read_log(run):
    with open(run / "log.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_batch_indices_shard_each_epoch_and_are_pure():
    n = 7
    one = [i for s in range(7) for i in batch_indices(n, s, 1, seed=3)]
    assert sorted(one) == list(range(7))  # one epoch = one permutation
    two = [batch_indices(n, s, 2, seed=3) for s in range(10)]
    assert two == [batch_indices(n, s, 2, seed=3) for s in range(10)]
    ranks = [[i for s in range(2) for i in batch_indices(n, s, 2, rank=r, world=2, seed=3)] for r in (0, 1)]
    assert set(ranks[0]) | set(ranks[1]) == set(range(7))  # padded to 8 by wrapping, shards cover everything
    assert batch_indices(n, 0, 3, seed=3) != batch_indices(n, 0, 3, seed=4)


def test_stop_at_returns_after_a_checkpoint(tmp_path):
    data = InMemoryVolumes(smooth_volumes(2))
    cfg = PretrainConfig(out=str(tmp_path / "run"), steps=5, batch_size=1, ckpt_every=4, device="cpu", **TINY)
    summary = pretrain(cfg, data, stop_at=1)
    assert summary["step"] == 1 and json.loads((tmp_path / "run" / "checkpoints" / "latest.json").read_text()) == {
        "step": 1, "dir": "step_0000001"}
    assert not (tmp_path / "run" / "backbone_sagittal.safetensors").exists()  # only a finished run exports


def test_time_limit_stops_cleanly_with_a_backbone_and_resumes_to_the_planned_steps(tmp_path):
    data = InMemoryVolumes(smooth_volumes(2))
    run = tmp_path / "run"
    cfg = PretrainConfig(out=str(run), steps=4, batch_size=1, ckpt_every=10, device="cpu", **TINY)
    summary = pretrain(cfg, data, time_limit=0.0)  # the limit is reached after the first step
    assert summary["step"] == 1 and summary["stopped_by_time_limit"] is True
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 1
    _, meta = load_backbone(run / "backbone_sagittal.safetensors")
    assert meta["provenance"]["trained_steps"] == 1 and meta["provenance"]["stopped_by_time_limit"] is True
    cfg.resume = True
    summary = pretrain(cfg, data, time_limit=3600.0)
    assert summary["step"] == 4 and summary["stopped_by_time_limit"] is False
    _, meta = load_backbone(run / "backbone_sagittal.safetensors")
    assert meta["provenance"]["trained_steps"] == 4 and meta["provenance"]["planned_steps"] == 4


def test_time_limit_must_be_positive(tmp_path, capsys):
    rc = cli_main(["pretrain", "--data", str(tmp_path), "--plane", "sagittal", "--out", str(tmp_path / "r"),
                   "--time-limit", "0", *TINY_ARGS])
    assert rc != 0 and "--time-limit must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_killed_process_resumes_bit_identically(tmp_path):
    """SIGKILL a CLI run right after its first checkpoint, resume it, compare with an uninterrupted run."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        write_nifti(data / f"s{i}.nii.gz", SAGITTAL, 20 + i)
    args = ["pretrain", "--data", str(data), "--plane", "sagittal", "--steps", "3", "--batch-size", "1",
            "--lr-per-sample", "1e-3", "--ema-every", "1", "--ema-start", "1", "--ckpt-every", "1",
            "--log-every", "1", "--seed", "9", "--device", "cpu", *TINY_ARGS]
    killed = tmp_path / "killed"
    # the child must compute with as many threads as this process (reduction order decides the last bits)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "OrthoDiffusionLib", *args, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    latest = killed / "checkpoints" / "latest.json"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if latest.exists():
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    killed_at = json.loads(latest.read_text())["step"]
    assert 1 <= killed_at < 3, "the run was not interrupted"
    assert not (killed / "backbone_sagittal.safetensors").exists()

    # a kill during a checkpoint write leaves a temporary folder: ignored, then cleaned by the resume
    (killed / "checkpoints" / ".step_0000003.x.tmp").mkdir()
    assert cli_main([*args, "--out", str(killed)]) == 2  # not without --resume
    with pytest.raises(OrthoDiffusionError, match="width 32 -> 64"):
        pretrain(PretrainConfig(out=str(killed), resume=True, **{**TINY, "width": 64}), data=data)
    # the resumed and the uninterrupted run each run in a fresh process like the killed one, so all three compute
    # with the same threads and kernels whatever the caller's OMP/MKL settings
    def run_child(*extra: str) -> int:
        return subprocess.run([sys.executable, "-m", "OrthoDiffusionLib", *args, *extra], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300).returncode

    assert run_child("--out", str(killed), "--resume") == 0
    assert not list((killed / "checkpoints").glob(".*"))

    assert run_child("--out", str(tmp_path / "full")) == 0
    a = load_file(str(tmp_path / "full" / "checkpoints" / "step_0000003" / "weights.safetensors"))
    b = load_file(str(killed / "checkpoints" / "step_0000003" / "weights.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("opt.") for k in a) and any(k.startswith("ema.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    resumed = json.loads((killed / "summary.json").read_text())
    assert resumed["rank_weight_sha256"] == full["rank_weight_sha256"]
    assert resumed["ema_weight_sha256"] == full["ema_weight_sha256"]
    # the resumed log continues the killed one (rows past the checkpoint dropped) and equals the uninterrupted one
    assert [r["step"] for r in read_log(killed)] == [1, 2, 3]
    assert [r["loss"] for r in read_log(killed)] == [r["loss"] for r in read_log(tmp_path / "full")]
    # the EMA blends from the 2nd step on and differs from the model afterwards
    assert any(not torch.equal(a[k], a["ema." + k[6:]]) for k in a if k.startswith("model."))


def test_pretrain_cli_from_manifest_writes_run_folder(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    rows = [("p1", "sagittal", write_nifti(series / "s1.nii.gz", SAGITTAL, 1), "train"),
            ("p2", "sagittal", write_nifti(series / "s2.nii.gz", SAGITTAL, 2), "train"),
            ("p3", "sagittal", series / "missing_but_val.nii.gz", "val"),
            ("p1", "coronal", series / "missing_but_coronal.nii.gz", "train")]
    manifest = write_manifest(tmp_path, rows)
    run = tmp_path / "run"
    code = cli_main(["pretrain", "--manifest", str(manifest), "--plane", "sagittal", "--out", str(run),
                     "--steps", "2", "--batch-size", "1", "--ckpt-every", "1", "--log-every", "1",
                     "--sample-every", "2", "--sample-steps", "2", "--device", "cpu", *TINY_ARGS])
    assert code == 0
    assert [r["step"] for r in read_log(run)] == [1, 2]
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 2
    sample = sitk.GetArrayFromImage(sitk.ReadImage(str(run / "samples" / "step_0000002.nii.gz")))
    assert sample.shape == (16, 32, 32) and np.isfinite(sample).all()
    model, meta = load_backbone(run / "backbone_sagittal.safetensors", plane="sagittal")
    assert meta["provenance"]["trained_steps"] == 2 and model.model_channels == 32
    assert len(list((run / "cache").glob("*.npy"))) == 2  # the two train series, preprocessed once
    # a plane absent from the manifest: one error line naming the manifest
    assert cli_main(["pretrain", "--manifest", str(manifest), "--plane", "axial", "--out", str(tmp_path / "r2"),
                     "--steps", "1", *TINY_ARGS]) == 2
    with pytest.raises(InputError, match="manifest.csv: no rows with plane=axial"):
        pretrain(PretrainConfig(plane="axial", out=str(tmp_path / "r3"), **TINY), manifest=manifest)


def test_pretrain_on_real_dicom_folder(tmp_path, shared_data):
    summary = pretrain(PretrainConfig(out=str(tmp_path / "run"), steps=1, batch_size=1, device="cpu", **TINY),
                       data=shared_data / "dess_sagittal_dicom")
    assert summary["step"] == 1 and np.isfinite(summary["loss"])
    with pytest.raises(InputError, match="dess_sagittal_dicom: no coronal series under this folder"):
        pretrain(PretrainConfig(plane="coronal", out=str(tmp_path / "run2"), **TINY),
                 data=shared_data / "dess_sagittal_dicom")


def test_folder_dataset_keeps_only_the_plane(tmp_path):
    from OrthoDiffusionLib.training.pretrain.ddpm import load_training_set

    write_nifti(tmp_path / "sag.nii.gz", SAGITTAL, 1)
    write_nifti(tmp_path / "cor.nii.gz", CORONAL, 2)
    ds = load_training_set("coronal", data=tmp_path, slices=16, size=32)
    assert len(ds) == 1
    vol = ds[0]
    assert vol.shape == (1, 16, 32, 32) and vol.min() == pytest.approx(-1) and vol.max() == pytest.approx(1)


@pytest.mark.slow
def test_two_process_ddp_on_cpu_matches_single_process(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        write_nifti(data / f"s{i}.nii.gz", SAGITTAL, 10 + i)
    args = ["pretrain", "--data", str(data), "--plane", "sagittal", "--steps", "5", "--lr-per-sample", "1e-3",
            "--ckpt-every", "5", "--log-every", "1", "--device", "cpu", "--ema-start", "0", "--ema-every", "1",
            *TINY_ARGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "OrthoDiffusionLib", *args, "--batch-size", "1", "--out", str(tmp_path / "ddp")],
        env=env, capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "OrthoDiffusionLib", *args, "--batch-size", "2",
                             "--out", str(tmp_path / "single")], env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]

    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and len(summary["rank_weight_sha256"]) == 2
    assert len(set(summary["rank_weight_sha256"])) == 1  # every rank holds the same weights
    assert summary["lr"] == pytest.approx(2e-3) == json.loads((tmp_path / "single" / "summary.json").read_text())["lr"]
    ddp_loss = [r["loss"] for r in read_log(tmp_path / "ddp")]
    one_loss = [r["loss"] for r in read_log(tmp_path / "single")]
    assert len(ddp_loss) == len(one_loss) == 5
    for curve in (ddp_loss, one_loss):
        assert np.mean(curve[-2:]) < 0.7 * np.mean(curve[:2])  # falls
    assert 0.5 < np.mean(ddp_loss[-2:]) / np.mean(one_loss[-2:]) < 2.0  # and by a similar amount


def test_ema_follows_the_authors_schedule():
    from OrthoDiffusionLib.training.pretrain.ddpm import EMA

    model = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(model, decay=0.5, every=2, start=2)
    history = []
    for step in range(1, 7):
        model.weight.data.fill_(float(step))
        ema.update(model, step)
        history.append(ema.model.weight.item())
    # k = step - 1: k=0 copy (1.0); k=2 blend 0.5*1 + 0.5*3 = 2.0; k=4 blend 0.5*2 + 0.5*5 = 3.5
    assert history == [1.0, 1.0, 2.0, 2.0, 3.5, 3.5]


def test_shared_backbone_trains_on_every_plane_and_loads_for_each(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    rows = [("p1", "sagittal", write_nifti(series / "s1.nii.gz", SAGITTAL, 1), "train"),
            ("p1", "coronal", write_nifti(series / "c1.nii.gz", CORONAL, 2), "train"),
            ("p2", "coronal", series / "missing_but_test.nii.gz", "test")]
    manifest = write_manifest(tmp_path, rows)
    run = tmp_path / "run"
    assert cli_main(["pretrain", "--manifest", str(manifest), "--plane", "shared", "--out", str(run),
                     "--steps", "1", "--batch-size", "2", "--device", "cpu", *TINY_ARGS]) == 0
    assert len(list((run / "cache").glob("*.npy"))) == 2  # one sagittal and one coronal train series
    for plane in ("sagittal", "coronal", "axial"):
        _, meta = load_backbone(run / "backbone_shared.safetensors", plane=plane)
        assert meta["plane"] == "shared"
    single = tmp_path / "single"
    assert cli_main(["pretrain", "--manifest", str(manifest), "--plane", "coronal", "--out", str(single),
                     "--steps", "1", "--batch-size", "1", "--device", "cpu", *TINY_ARGS]) == 0
    with pytest.raises(OrthoDiffusionError, match="backbone is for plane 'coronal', expected 'sagittal'"):
        load_backbone(single / "backbone_coronal.safetensors", plane="sagittal")
