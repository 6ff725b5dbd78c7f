"""The shipped demo model: registered with the right sha256 and size, trained on synthetic data only, and the README's
first command (`orthodiffusion demo`) runs end to end with it on CPU."""
from __future__ import annotations

import json

import pytest

from OrthoDiffusionLib.bundle.format import load_bundle
from OrthoDiffusionLib.model.checkpoints import file_sha256
from OrthoDiffusionLib.cli import main
from OrthoDiffusionLib.labels import PLANES, diagnosis_labels
from OrthoDiffusionLib.bundle.registry import default_model, shipped_registry_path

MAX_DEMO_BYTES = 25 * 1024 * 1024


@pytest.fixture(scope="module")
def shipped():
    entry = default_model()
    assert entry.origin == "shipped", "the default model must be the one shipped in Resources/"
    return entry


def test_demo_model_is_registered_with_its_sha256_size_and_rebuild_command(shipped):
    assert shipped.file.is_file()
    assert shipped.file.stat().st_size == shipped.size_bytes <= MAX_DEMO_BYTES
    assert file_sha256(shipped.file) == shipped.sha256
    assert "training/recipes/knee-demo-model.sh" in shipped.rebuild_command
    assert shipped.cpu_seconds is not None and shipped.cpu_seconds > 0
    raw = json.loads(shipped_registry_path().read_text())
    assert [m["name"] for m in raw["models"] if m.get("default")] == [shipped.name]


def test_demo_model_says_it_is_synthetic_and_carries_its_metrics(shipped):
    bundle = load_bundle(shipped.file)
    assert bundle.meta["synthetic_data_only"] is True
    assert [l["key"] for l in bundle.labels] == [l.key for l in diagnosis_labels("knee")]
    assert set(bundle.segmentation) == {"sagittal", "coronal"}
    # the registry's description states the measured test macro AUROC recorded in the bundle
    macro = bundle.meta["diagnosis"]["metrics"]["test"]["macro_auroc"]
    assert 0.0 <= macro <= 1.0 and f"macro AUROC {macro:.2f}" in shipped.description
    for plane in ("sagittal", "coronal"):
        dice = bundle.meta["segmentation"][plane]["metrics"]["test"]["dice"]
        assert dice["femur"]["mean"] > 0.9 and dice["tibia"]["mean"] > 0.9


def test_readme_demo_runs_end_to_end_on_cpu(shipped, tmp_path, capsys):
    out = tmp_path / "demo_output"
    assert main(["demo", "--out", str(out), "--device", "cpu", "--progress", "none"]) == 0
    text = capsys.readouterr().out
    assert f"report: {(out / 'report.html').resolve()}" in text
    result = json.loads((out / "diagnosis.json").read_text())
    assert len(result["labels"]) == 8
    for label in result["labels"]:
        assert 0.0 <= label["probability"] <= 1.0
        assert sum(label["plane_weights"][p] for p in PLANES) == pytest.approx(1.0, abs=1e-5)
    for plane in ("sagittal", "coronal"):
        assert (out / f"segmentation_{plane}.seg.nrrd").is_file()
    report = (out / "report.html").read_text()
    assert "Research use only" in report and "synthetic" in report.lower()


def test_fused_segmentation_weighs_each_plane_by_how_well_it_segments_on_a_simulated_knee(shipped, monkeypatch):
    """``fuse_segmentations``: the sagittal and coronal probabilities averaged on the sagittal series' grid (the
    classes of one label value, such as background and the context tissues, summed first), each plane's vote for a
    structure weighted by its validation Dice. The shipped sagittal network is about 0.1 Dice better than the
    coronal one, so averaging them equally would dilute it; weighted, the fused map beats the equal average and
    stays as close to the simulation's ground truth as the sagittal map alone (within 0.005)."""
    import numpy as np
    import SimpleITK as sitk

    from OrthoDiffusionLib import Predictor
    from OrthoDiffusionLib.inference.demo import exam_from_simulation
    from OrthoDiffusionLib.labels import knee_structures
    from OrthoDiffusionLib.simulate import simulate_exam

    sim = simulate_exam(2, matrix=128)
    truth = sim.series_for("sagittal")[0].labelmap
    result = Predictor(shipped.file, device="cpu").predict(exam_from_simulation(sim), diagnosis=False,
                                                           fuse_segmentations=True)
    fused = result.fused_segmentation
    assert result.fused_planes == ["sagittal", "coronal"]
    assert fused.GetSize() == truth.GetSize()
    np.testing.assert_allclose(fused.GetOrigin(), truth.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(fused.GetDirection(), truth.GetDirection(), atol=1e-6)

    gt = sitk.GetArrayFromImage(truth)

    def mean_dice(labelmap):
        arr = sitk.GetArrayFromImage(labelmap)
        scores = [2 * ((arr == s.value) & (gt == s.value)).sum() / ((arr == s.value).sum() + (gt == s.value).sum())
                  for s in knee_structures("sagittal") if (gt == s.value).any()]
        return float(np.mean(scores))

    sagittal, both = mean_dice(result.segmentations["sagittal"]), mean_dice(fused)
    import OrthoDiffusionLib.segmentation.io as segmentation_io

    monkeypatch.setattr(segmentation_io, "FUSION_DICE_TEMPERATURE", 1e9)   # every plane's vote counts the same
    equal = mean_dice(Predictor(shipped.file, device="cpu").predict(
        exam_from_simulation(sim), diagnosis=False, fuse_segmentations=True).fused_segmentation)
    assert both > equal and both >= sagittal - 0.005 and both > 0.8, (sagittal, both, equal)
    # the fused map is measured too: every structure of both planes, a cartilage thickness for each plate
    fused_rows = {r["key"]: r for r in result.measures if r["plane"] == "fused"}
    assert list(fused_rows) == [s.key for s in knee_structures("sagittal")]
    for key in ("femoral_cartilage", "medial_tibial_cartilage", "lateral_tibial_cartilage", "patellar_cartilage"):
        assert 0.5 < fused_rows[key]["mean_thickness_mm"] < 6.0, fused_rows[key]
