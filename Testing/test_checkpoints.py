"""Loading the authors' checkpoints safely, strict weight checks, our safetensors backbones, import-weights."""
from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from OrthoDiffusionLib.model.backbone import DiffusionUNet, reference_init_
from OrthoDiffusionLib.model.checkpoints import (
    file_sha256,
    load_authors_checkpoint,
    load_authors_denoiser,
    load_backbone,
    load_backbone_state,
    save_backbone,
)
from OrthoDiffusionLib.cli import main as cli_main
from OrthoDiffusionLib.errors import (
    BundleError,
    CorruptFileError,
    MissingPathError,
    UnsafeFileError,
    WeightsMismatchError,
)

TINY = dict(model_channels=32, channel_mult=(1, 1, 2, 2, 4))


def authors_file(path, model, prefix="denoise_fn.module.", step=21500):
    """Write a checkpoint the way the authors' trainer does: torch.save of step/model/ema/opt."""
    state = {prefix + k: v.clone() for k, v in model.state_dict().items()}
    buffers = {"betas": torch.linspace(0, 1, 5), "alphas_cumprod": torch.ones(5)}
    opt = torch.optim.Adam(model.parameters(), lr=1e-4).state_dict()
    torch.save({"step": step, "model": {**state, **buffers}, "ema": {**state, **buffers}, "opt": opt}, path)
    return path


class Payload:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class OpenPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("prefix", ["denoise_fn.module.", "denoise_fn."])
def test_authors_format_loads_identical_weights(tmp_path, prefix):
    src = reference_init_(DiffusionUNet(**TINY))
    path = authors_file(tmp_path / "model.pt", src, prefix=prefix)
    model, info = load_authors_denoiser(path, model=DiffusionUNet(**TINY))
    assert info["step"] == 21500 and info["source"] == "ema" and info["file_sha256"] == file_sha256(path)
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert not model.training


@pytest.mark.parametrize("payload,how", [(Payload, "torch.save"), (Payload, "pickle"), (OpenPayload, "torch.save")])
def test_code_smuggling_pickle_is_refused_and_not_run(tmp_path, payload, how):
    marker = tmp_path / "PWNED"
    path = tmp_path / "model.pt"
    obj = {"step": 1, "ema": {"denoise_fn.x": torch.zeros(1)}, "opt": payload(marker)}
    if how == "torch.save":
        torch.save(obj, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    with pytest.raises(UnsafeFileError) as info:
        load_authors_denoiser(path, model=DiffusionUNet(**TINY))
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def test_corrupt_and_missing_files(tmp_path):
    good = authors_file(tmp_path / "good.pt", DiffusionUNet(**TINY))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: 4000])
    with pytest.raises(CorruptFileError, match="truncated.pt"):
        load_authors_checkpoint(truncated)
    with pytest.raises(MissingPathError, match="nope.pt"):
        load_authors_checkpoint(tmp_path / "nope.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CorruptFileError, match="expected a dict"):
        load_authors_checkpoint(tmp_path / "list.pt")
    torch.save({"step": 1, "model": {}}, tmp_path / "noema.pt")
    with pytest.raises(CorruptFileError, match="no 'ema' weights"):
        load_authors_denoiser(tmp_path / "noema.pt", model=DiffusionUNet(**TINY))


def test_mismatch_report_names_missing_unexpected_and_shapes(tmp_path):
    src = DiffusionUNet(**TINY)
    state = {"denoise_fn." + k: v for k, v in src.state_dict().items()}
    del state["denoise_fn.out.2.bias"]
    state["denoise_fn.extra.weight"] = torch.zeros(3)
    state["denoise_fn.time_embed.0.weight"] = torch.zeros(7, 32)
    path = tmp_path / "bad.pt"
    torch.save({"step": 3, "ema": state}, path)
    with pytest.raises(WeightsMismatchError) as info:
        load_authors_denoiser(path, model=DiffusionUNet(**TINY))
    err = info.value
    line = str(err)
    assert line.startswith(str(path)) and "\n" not in line
    assert "1 missing key(s) (e.g. out.2.bias)" in line and "1 unexpected key(s) (e.g. extra.weight)" in line
    assert "time_embed.0.weight 128x32 vs 7x32" in line
    assert "1 shape mismatch(es) (network vs file):\n  time_embed.0.weight: 128x32 vs 7x32" in err.report
    # the paper network refuses a tiny model's weights with a report, too
    tiny = authors_file(tmp_path / "tiny.pt", DiffusionUNet(**TINY))
    with pytest.raises(WeightsMismatchError, match="shape mismatch"):
        load_authors_denoiser(tiny)


def test_backbone_safetensors_round_trip_and_integrity(tmp_path):
    src = reference_init_(DiffusionUNet(**TINY))
    path = tmp_path / "backbone_sagittal.safetensors"
    sha = save_backbone(src, path, "sagittal", provenance={"source_file": "model.pt"})
    assert sha == file_sha256(path) and not list(tmp_path.glob(".*tmp"))
    model, meta = load_backbone(path, plane="sagittal")
    assert meta["plane"] == "sagittal" and meta["format_version"] == "1"
    assert meta["config"]["model_channels"] == 32 and meta["provenance"] == {"source_file": "model.pt"}
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x, 10), src.eval()(x, 10), rtol=0, atol=0)
    with pytest.raises(BundleError, match="expected 'coronal'"):
        load_backbone(path, plane="coronal")
    # flip one byte in the tensor data -> integrity error naming the file
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="flipped.safetensors: integrity check failed"):
        load_backbone_state(bad)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CorruptFileError, match="junk.safetensors"):
        load_backbone_state(junk)


def test_import_weights_cli_full_size(tmp_path, capsys):
    src = DiffusionUNet()
    state = {"denoise_fn.module." + k: v for k, v in src.state_dict().items()}
    path = tmp_path / "train_diffusion_pose_1" / "model.pt"
    path.parent.mkdir()
    torch.save({"step": 21500, "model": {}, "ema": state, "opt": {}}, path)
    out = tmp_path / "backbones"
    assert cli_main(["import-weights", "--sagittal", str(path), "--out", str(out)]) == 0
    manifest = json.loads((out / "backbones.json").read_text())
    entry = manifest["planes"]["sagittal"]
    assert entry["file"] == "backbone_sagittal.safetensors" and entry["step"] == 21500
    assert entry["sha256"] == file_sha256(out / entry["file"]) and entry["source_sha256"] == file_sha256(path)
    model, meta = load_backbone(out / entry["file"], plane="sagittal")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in src.state_dict().items())
    assert "sagittal:" in capsys.readouterr().out


def test_import_weights_cli_bad_file_writes_nothing(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"ema": Payload(marker)}, evil)
    out = tmp_path / "backbones"
    assert cli_main(["import-weights", "--coronal", str(evil), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(evil) in err and "refused" in err
    assert not out.exists() and not marker.exists()
    assert cli_main(["import-weights", "--out", str(out)]) == 2
