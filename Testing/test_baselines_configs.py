"""Classification baselines (MONAI) and named training configurations."""
import json

import pytest
import torch

from OrthoDiffusionLib.errors import CorruptFileError, InputError, MissingPathError, MissingPlaneError
from OrthoDiffusionLib.labels import PLANES
from OrthoDiffusionLib.training.diagnosis.baselines import BASELINE_EPOCHS, UNetEncoder, build_classification_baseline
from OrthoDiffusionLib.training.configs import config_path, list_configs, load_config

TINY_UNET = dict(channels=(4, 4, 8, 8, 16))


def volumes(b=2):
    torch.manual_seed(0)
    return {p: torch.randn(b, 1, 16, 32, 32) for p in PLANES}


@pytest.mark.parametrize("name,kw", [("unet3d", TINY_UNET), ("resnet18", dict(widen_factor=0.125))])
def test_multiplane_baseline_forward_and_backward(name, kw):
    model = build_classification_baseline(name, 8, **kw)
    logits = model(volumes())
    assert logits.shape == (2, 8)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(MissingPlaneError, match="axial"):
        model({p: v for p, v in volumes().items() if p != "axial"})


@pytest.mark.parametrize("name,kw", [("3d-unet", TINY_UNET), ("ResNet-18", dict(widen_factor=0.125))])
def test_single_volume_baseline(name, kw):
    model = build_classification_baseline(name, 4, planes=None, **kw)
    assert model(torch.randn(3, 1, 16, 32, 32)).shape == (3, 4)


def test_unet_encoder_bottleneck_geometry():
    enc = UNetEncoder(**TINY_UNET)
    # four stride-2 stages: 16x32x32 -> 1x2x2 (16x256x256 -> 1x16x16 at full size, like mid_0)
    assert enc.bottleneck(torch.randn(1, 1, 16, 32, 32)).shape == (1, 16, 1, 2, 2)
    full = UNetEncoder()
    assert full.out_features == 256
    with torch.no_grad():  # full size: the bottleneck matches the diffusion U-Net's mid_0 tap (256 x 1 x 16 x 16)
        assert full.bottleneck(torch.zeros(1, 1, 16, 256, 256)).shape == (1, 256, 1, 16, 16)
    with pytest.raises(ValueError):
        build_classification_baseline("vit", 8)


def test_configs_load_by_name_with_label_counts():
    names = list_configs()
    assert {"knee-lp-opt", "knee-ft-opt", "ankle-ft-opt", "shoulder-ft-opt"} <= set(names)
    counts = {n: load_config(n)["num_labels"] for n in ("knee-lp-opt", "knee-ft-opt", "ankle-ft-opt",
                                                        "shoulder-ft-opt")}
    assert counts == {"knee-lp-opt": 8, "knee-ft-opt": 8, "ankle-ft-opt": 4, "shoulder-ft-opt": 7}
    ft = load_config("FT-Opt")
    assert ft["name"] == "knee-ft-opt" and ft["labels"][0] == "acl_injury"
    assert ft["planes"] == {"sagittal": {"timestep": 150, "block": "mid_0"},
                            "coronal": {"timestep": 50, "block": "mid_2"},
                            "axial": {"timestep": 200, "block": "mid_0"}}
    assert ft["stage1"]["lr"] == 5e-4 and ft["stage1"]["backbone_lr_scale"] == 0.05 and ft["stage1"]["epochs"] == 5
    lp = load_config("lp-opt")
    assert lp["planes"]["coronal"] == {"timestep": 100, "block": "mid_2"}
    assert lp["stage1"]["epochs"] == 10 and lp["stage1"]["batch_size"] == 10 and lp["stage1"]["schedule"] == "cosine"
    assert lp["stage2"]["lr"] == 5e-5 and lp["stage2"]["epochs"] == 5
    assert lp["mpae"]["gate_lr"] == 1e-3 and lp["mpae"]["gate_weight_decay"] == 1e-4
    assert load_config("FT-A-Opt")["planes"]["sagittal"] == {"timestep": 300, "block": "mid_0"}
    assert load_config("FT-S-Opt")["planes"]["axial"] == {"timestep": 100, "block": "mid_1"}
    for anatomy in ("knee", "ankle", "shoulder"):
        cfg = load_config(f"{anatomy}-ft-opt")
        assert cfg["baselines"]["epochs"] == BASELINE_EPOCHS[anatomy]


def test_config_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="^knee-xl: unknown configuration"):
        load_config("knee-xl")
    with pytest.raises(MissingPathError, match="nope.json"):
        load_config(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CorruptFileError, match="bad.json: not valid JSON"):
        load_config(bad)
    cfg = json.loads(config_path("knee-ft-opt").read_text())
    cfg["planes"]["axial"]["block"] = "mid_9"
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="wrong.json: planes.axial.block"):
        load_config(wrong)
    cfg["planes"]["axial"]["block"] = "mid_1"
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps(cfg))
    assert load_config(ok)["planes"]["axial"]["block"] == "mid_1"
