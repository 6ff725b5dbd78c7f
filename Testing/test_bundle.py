"""Model bundles: export from run folders, round trip, integrity checks, refusal of pickles; the model registry."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from bundle_helpers import make_diagnosis_run, make_segmentation_run, make_tiny_bundle, tiny_exam
from safetensors.torch import load_file

from OrthoDiffusionLib.bundle.format import encoder_state, load_bundle
from OrthoDiffusionLib.bundle.export import export_bundle
from OrthoDiffusionLib.model.checkpoints import file_sha256, load_backbone
from OrthoDiffusionLib.errors import BundleError, InputError, MissingPathError
from OrthoDiffusionLib.model.heads import DiagnosisHead
from OrthoDiffusionLib.inference.predictor import Predictor, noise_seed
from OrthoDiffusionLib.inference.preprocess import preprocess_series
from OrthoDiffusionLib.model.schedule import CosineSchedule


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny.odbundle", temperatures=[1.5] * 8)


def test_bundle_holds_the_runs(tiny):
    b = load_bundle(tiny)
    runs = tiny.parent / "tiny_runs"
    # one shared backbone (diagnosis planes + segmentation planes), stored encoder-only
    assert list(b.meta["backbones"]) == ["b0"]
    assert sorted(b.meta["backbones"]["b0"]["planes"]) == ["axial", "coronal", "sagittal"]
    model, _ = load_backbone(runs / "diagnosis" / "backbone_sagittal.safetensors")
    stored = b.states["backbone.b0"]
    assert stored.keys() == encoder_state(model.state_dict()).keys()
    assert not any(k.startswith(("output_blocks.", "out.")) for k in stored)
    for k, v in stored.items():
        torch.testing.assert_close(v, model.state_dict()[k], rtol=0, atol=0)
    head = load_file(str(runs / "diagnosis" / "diagnosis_head.safetensors"))
    assert all(torch.equal(b.states["diagnosis_head"][k], v) for k, v in head.items())
    assert b.meta["diagnosis"]["calibration"]["temperature"] == [1.5] * 8
    assert b.meta["segmentation"]["coronal"]["class_values"] == list(range(12))
    assert b.meta["synthetic_data_only"] is True
    assert b.meta["diagnosis"]["metrics"]["val"]["auroc"]["pcl_injury"] is None  # NaN in run.json -> null
    assert [lb["key"] for lb in b.labels][0] == "acl_injury"
    assert b.summary()["sha256"] == file_sha256(tiny)


def test_round_trip_same_predictions_as_the_runs(tiny):
    """Predictor(bundle) == the pipeline composed by hand from the run folders' own files."""
    exam = tiny_exam(3)
    result = Predictor(tiny, device="cpu").predict(exam, segmentation=False)
    runs = tiny.parent / "tiny_runs" / "diagnosis"
    run = json.loads((runs / "run.json").read_text())
    head = DiagnosisHead(**run["head"])
    head.load_state_dict(load_file(str(runs / run["head_weights"])))
    head.eval()
    schedule = CosineSchedule()
    taps = {}
    with torch.no_grad():
        for plane, p in run["planes"].items():
            model, _ = load_backbone(runs / p["backbone"])
            x0 = torch.from_numpy(preprocess_series(exam.get(plane), slices=16, size=32).volume)[None, None]
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(noise_seed(0, 0, plane,
                                                                                               p["timestep"])))
            x_t = schedule.q_sample(x0, p["timestep"], noise)
            taps[plane] = model.encode(x_t, torch.tensor([p["timestep"]]), [p["block"]])[p["block"]]
        out = head(taps)
    got = np.array([lb["calibrated_probability"] for lb in result.labels])
    np.testing.assert_allclose(got, out.probabilities[0].numpy(), atol=1e-5)
    raw = torch.sigmoid(out.logits * 1.5)[0].numpy()
    np.testing.assert_allclose([lb["probability"] for lb in result.labels], raw, atol=1e-5)
    assert not np.allclose(got, raw, atol=1e-3)  # the temperature really applies
    w = out.plane_weights[0].numpy()
    np.testing.assert_allclose([[lb["plane_weights"][p] for p in ("sagittal", "coronal", "axial")]
                                for lb in result.labels], w, atol=1e-5)


def test_half_bundle_is_smaller_and_predicts_nearly_the_same(tiny, tmp_path):
    half = make_tiny_bundle(tmp_path / "half.odbundle", half=True)
    assert half.stat().st_size < 0.55 * tiny.stat().st_size
    b = load_bundle(half)
    assert b.meta["components"]["segmentation.sagittal"]["dtype"] == "float16"
    assert b.meta["components"]["diagnosis_head"]["dtype"] == "float32"
    assert b.meta["backbones"]["b0"]["dtype"] == "float16"
    assert all(v.dtype == torch.float32 for v in b.states["backbone.b0"].values())  # cast back on load
    exam = tiny_exam(5)
    full_p = [lb["calibrated_probability"] for lb in Predictor(tiny, device="cpu").predict(exam).labels]
    half_p = [lb["calibrated_probability"] for lb in Predictor(half, device="cpu").predict(exam).labels]
    np.testing.assert_allclose(half_p, full_p, atol=2e-2)


@pytest.mark.parametrize("where", ["data_end", "data_middle", "metadata"])
def test_one_changed_byte_is_refused(tiny, tmp_path, where):
    data = bytearray(tiny.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    if where == "data_end":
        pos = len(data) - 3
    elif where == "data_middle":
        pos = 8 + header_len + (len(data) - 8 - header_len) // 2
    else:
        pos = data.index(b"synthetic_data_only") + 3  # inside the bundle JSON text in the header
    data[pos] ^= 0x01
    bad = tmp_path / "tampered.odbundle"
    bad.write_bytes(bytes(data))
    with pytest.raises(BundleError) as err:
        load_bundle(bad)
    msg = str(err.value)
    assert str(bad) in msg and "\n" not in msg
    assert "integrity" in msg or "not a valid" in msg


def test_pickle_renamed_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran.txt"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for i, write in enumerate((lambda p: p.write_bytes(pickle.dumps({"w": Payload()})),
                               lambda p: torch.save({"w": torch.zeros(2)}, p))):
        path = tmp_path / f"model{i}.odbundle"
        write(path)
        with pytest.raises(BundleError, match="pickle") as err:
            load_bundle(path)
        assert str(path) in str(err.value)
    assert not marker.exists()


def test_wrong_format_and_missing_file(tmp_path, tiny):
    from safetensors.torch import save_file

    other = tmp_path / "other.odbundle"
    save_file({"x": torch.zeros(2)}, str(other), metadata={"format": "something-else"})
    with pytest.raises(BundleError, match="format"):
        load_bundle(other)
    with pytest.raises(MissingPathError):
        load_bundle(tmp_path / "absent.odbundle")
    with pytest.raises(BundleError, match="sagittal"):  # a plane that the bundle has no head for
        load_bundle(tiny).segmentation_head("axial")


def test_export_refuses_bad_runs(tmp_path):
    run = make_segmentation_run(tmp_path / "seg", "sagittal")
    info = json.loads((run / "run.json").read_text())
    info["format"] = "orthodiffusion.diagnosis-run"
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match="run.json"):
        export_bundle(None, [run], "x", tmp_path / "x.odbundle")
    with pytest.raises(MissingPathError, match="run.json"):
        export_bundle(tmp_path / "nowhere", [], "x", tmp_path / "x.odbundle")
    diag = make_diagnosis_run(tmp_path / "diag")
    (diag / "diagnosis_head.safetensors").write_bytes(b"garbage")
    with pytest.raises(Exception) as err:
        export_bundle(diag, [], "x", tmp_path / "x.odbundle")
    assert "diagnosis_head.safetensors" in str(err.value)
    assert not (tmp_path / "x.odbundle").exists()


def test_export_dedupes_and_keeps_distinct_backbones(tmp_path):
    path = make_tiny_bundle(tmp_path / "distinct.odbundle", shared_backbone=False, segmentation_planes=("sagittal",))
    b = load_bundle(path)
    # three distinct diagnosis backbones; the segmentation backbone equals the first one (same seed)
    assert len(b.meta["backbones"]) == 3
    keys = {p: v["backbone"] for p, v in b.meta["diagnosis"]["planes"].items()}
    assert len(set(keys.values())) == 3
    assert b.meta["segmentation"]["sagittal"]["backbone"] == keys["sagittal"]


# ----------------------------------------------------------------------------------------------------- registry
def test_registry_import_list_default(tmp_path, tiny, monkeypatch, capsys):
    from OrthoDiffusionLib.cli import main
    from OrthoDiffusionLib.bundle.registry import default_model, list_models, resolve_model

    monkeypatch.setenv("ORTHODIFFUSION_HOME", str(tmp_path / "home"))
    assert main(["models", "import", str(tiny), "--name", "mine", "--default"]) == 0
    entry = next(m for m in list_models() if m.name == "mine")
    assert entry.origin == "user" and entry.present and entry.sha256 == file_sha256(tiny)
    assert entry.file == tmp_path / "home" / "models" / "mine.odbundle"
    assert default_model().name == "mine"
    assert resolve_model(None) == entry.file
    assert resolve_model("mine") == entry.file
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "mine" in out and entry.sha256[:16] in out
    # a registered file that changed is refused
    data = bytearray(entry.file.read_bytes())
    data[-1] ^= 1
    entry.file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        resolve_model("mine")
    # importing a non-bundle fails with one line and registers nothing
    junk = tmp_path / "junk.odbundle"
    junk.write_bytes(b"\x80\x04junk")
    assert main(["models", "import", str(junk)]) == 2
    assert "junk.odbundle" in capsys.readouterr().err
    assert [m.name for m in list_models() if m.origin == "user"] == ["mine"]
