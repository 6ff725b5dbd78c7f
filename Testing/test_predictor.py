"""Predictor and ``orthodiffusion predict``/``demo``: outputs on the original geometry (real DICOM study), missing
planes, bad inputs (one line, no partial output), progress/cancel, batching, noise draws, EHR, the report."""
from __future__ import annotations

import csv
import html.parser
import io
import json
import shutil
import threading

import numpy as np
import pytest
import SimpleITK as sitk
from bundle_helpers import make_tiny_bundle, tiny_exam
from io_helpers import join_exam_of, load_dess, reformat

from OrthoDiffusionLib import Predictor
from OrthoDiffusionLib.cli import main
from OrthoDiffusionLib.errors import CancelledError, MissingPlaneError
from OrthoDiffusionLib.io import read_series, write_dicom_series
from OrthoDiffusionLib.labels import PLANES, knee_structures
from OrthoDiffusionLib.inference.predictor import load_exam, write_outputs


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    d = tmp_path_factory.mktemp("bundles")
    return {"mpae": make_tiny_bundle(d / "tiny.odbundle"),
            "strict": make_tiny_bundle(d / "strict.odbundle", with_mpae=False, segmentation_planes=("sagittal",)),
            "ehr": make_tiny_bundle(d / "ehr.odbundle", ehr=True, segmentation_planes=()),
            "seg_only": make_tiny_bundle(d / "seg.odbundle", diagnosis=False, segmentation_planes=("coronal",))}


@pytest.fixture(scope="module")
def study(shared_data, tmp_path_factory):
    """Real sagittal DESS (copied DICOM) + its coronal and axial reformats written as DICOM series."""
    root = tmp_path_factory.mktemp("study")
    dess = load_dess(shared_data)
    shutil.copytree(shared_data / "dess_sagittal_dicom", root / "study" / "sag_dess")
    for plane in ("coronal", "axial"):
        write_dicom_series(reformat(dess.image, plane), root / "study" / plane, series_description=f"PD {plane}",
                           uid_seed=f"pipeline-test-{plane}")
        join_exam_of(root / "study" / plane, next((root / "study" / "sag_dess").glob("*.dcm")))
    return root / "study"


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("orthodiffusion predict: error:")
    for n in needles:
        assert n in err[0], err[0]


def _no_partial(parent, name="out"):
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


class _Links(html.parser.HTMLParser):
    """Collects src/href attribute values of every tag."""

    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def test_predict_real_study_outputs_on_original_geometry(study, bundles, tmp_path, capsys):
    import slicerio

    out = tmp_path / "out"
    rc = main(["predict", "--study", str(study), "--model", str(bundles["mpae"]), "--out", str(out),
               "--device", "cpu", "--progress", "none", "--json"])
    assert rc == 0, capsys.readouterr().err
    printed = json.loads(capsys.readouterr().out)
    data = json.loads((out / "diagnosis.json").read_text())
    assert printed == data
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["diagnosis.json", "measures.csv", "report.html", "segmentation_sagittal.seg.nrrd",
         "segmentation_coronal.seg.nrrd", "labelmap_sagittal.nii.gz", "labelmap_coronal.nii.gz",
         ".orthodiffusion-output.json"])
    assert data["exam"]["planes"]["sagittal"]["source"].endswith("sag_dess")
    assert len(data["labels"]) == 8
    # no note about the exam; the tiny random model's labels are no knee, and the anatomical checks say so
    assert [w for w in data["warnings"] if "fails anatomical checks" not in w] == []
    assert set(data["segmentation_checks"]) == {"sagittal", "coronal"}
    assert not all(c["passed"] for c in data["segmentation_checks"]["sagittal"])
    assert any(w.startswith("the sagittal segmentation fails anatomical checks") for w in data["warnings"])
    for lb in data["labels"]:
        assert 0 <= lb["probability"] <= 1 and 0 <= lb["calibrated_probability"] <= 1
        assert sum(lb["plane_weights"].values()) == pytest.approx(1.0, abs=1e-6)
    for plane in ("sagittal", "coronal"):
        series = read_series(data["exam"]["planes"][plane]["source"])
        for name in (f"segmentation_{plane}.seg.nrrd", f"labelmap_{plane}.nii.gz"):
            seg = sitk.ReadImage(str(out / name))
            assert seg.GetSize() == series.image.GetSize()
            np.testing.assert_allclose(seg.GetOrigin(), series.image.GetOrigin(), atol=1e-3)
            np.testing.assert_allclose(seg.GetSpacing(), series.image.GetSpacing(), atol=1e-5)
            np.testing.assert_allclose(seg.GetDirection(), series.image.GetDirection(), atol=1e-5)
        segmentation = slicerio.read_segmentation(str(out / f"segmentation_{plane}.seg.nrrd"))
        names = [s["name"] for s in segmentation["segments"]]
        assert names == [s.name for s in knee_structures(plane)]
        values = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"labelmap_{plane}.nii.gz"))))
        assert set(values.tolist()) <= {0} | {s.value for s in knee_structures(plane)}
    rows = list(csv.DictReader(io.StringIO((out / "measures.csv").read_text())))
    assert {r["plane"] for r in rows} == {"sagittal", "coronal"}
    assert len(rows) == len(knee_structures("sagittal")) + len(knee_structures("coronal"))
    report = (out / "report.html").read_text()
    assert "Research use only, not for diagnosis" in report and "SIMULATED" in report
    assert 'id="sankey"' in report and '"type":"sankey"' in report
    links = _Links()
    links.feed(report)
    assert all(u.startswith(("data:", "#")) for u in links.urls), links.urls  # nothing fetched from a network
    assert sum(u.startswith("data:image/png;base64,") for u in links.urls) == 3  # one overlay per plane
    assert data["model"]["sha256"] in report


def test_fused_segmentation_on_the_sagittal_series_of_a_real_study(study, bundles, tmp_path, capsys):
    import slicerio

    out = tmp_path / "out"
    rc = main(["predict", "--study", str(study), "--model", str(bundles["mpae"]), "--out", str(out),
               "--device", "cpu", "--progress", "none", "--no-diagnosis", "--fuse-segmentations"])
    assert rc == 0, capsys.readouterr().err
    assert "fused segmentation: sagittal + coronal on the sagittal series grid" in capsys.readouterr().out
    data = json.loads((out / "diagnosis.json").read_text())
    entry = data["fused_segmentation"]
    assert entry["planes"] == ["sagittal", "coronal"] and entry["file"] == "segmentation_fused.seg.nrrd"
    series = read_series(data["exam"]["planes"]["sagittal"]["source"])
    for name in ("segmentation_fused.seg.nrrd", "labelmap_fused.nii.gz"):
        seg = sitk.ReadImage(str(out / name))
        assert seg.GetSize() == series.image.GetSize() == tuple(entry["size"])
        np.testing.assert_allclose(seg.GetOrigin(), series.image.GetOrigin(), atol=1e-3)
        np.testing.assert_allclose(seg.GetDirection(), series.image.GetDirection(), atol=1e-5)
    names = [s["name"] for s in slicerio.read_segmentation(str(out / "segmentation_fused.seg.nrrd"))["segments"]]
    assert names == [s.name for s in knee_structures("sagittal")]       # the union of both planes' tables
    fused = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelmap_fused.nii.gz")))
    assert set(np.unique(fused).tolist()) <= {0} | {s.value for s in knee_structures("sagittal")}
    rows = [r for r in csv.DictReader(io.StringIO((out / "measures.csv").read_text())) if r["plane"] == "fused"]
    assert [r["key"] for r in rows] == [s.key for s in knee_structures("sagittal")]
    assert [r["plane"] for r in data["measures"]].count("fused") == len(rows)
    assert "Fused volume (mL)" in (out / "report.html").read_text()
    # without the option there is no fused output
    plain = Predictor(bundles["mpae"], device="cpu").predict(tiny_exam(2), diagnosis=False, measures=False)
    assert plain.fused_segmentation is None and plain.to_json()["fused_segmentation"] is None


def test_fused_segmentation_needs_two_segmented_planes(bundles, tmp_path):
    result = Predictor(bundles["strict"], device="cpu").predict(tiny_exam(3), fuse_segmentations=True)
    assert result.fused_segmentation is None and result.fused_planes == []
    assert any("no fused segmentation" in w and "sagittal" in w for w in result.warnings)
    write_outputs(result, tmp_path / "o")
    assert not (tmp_path / "o" / "segmentation_fused.seg.nrrd").exists()


def test_missing_plane_fails_when_the_model_needs_all_three(study, bundles, tmp_path, capsys):
    rc = main(["predict", "--sagittal", str(study / "sag_dess"), "--coronal", str(study / "coronal"),
               "--model", str(bundles["strict"]), "--out", str(tmp_path / "out"), "--progress", "none"])
    assert rc == 2
    _one_line_error(capsys, "axial")
    _no_partial(tmp_path)
    with pytest.raises(MissingPlaneError, match="axial"):
        Predictor(bundles["strict"], device="cpu").predict(tiny_exam(0, planes=("sagittal", "coronal")))


def test_missing_plane_runs_mpae_and_says_so(bundles):
    result = Predictor(bundles["mpae"], device="cpu").predict(tiny_exam(1, planes=("sagittal", "coronal")))
    assert any("axial plane missing" in w and "MPAE" in w for w in result.warnings)
    assert result.fused_by == "mpae"
    for lb in result.labels:
        assert lb["plane_weights"]["axial"] == 0.0
        assert sum(lb["plane_weights"].values()) == pytest.approx(1.0)
    assert sorted(result.segmentations) == ["coronal", "sagittal"]
    only_axial = Predictor(bundles["mpae"], device="cpu").predict(tiny_exam(1, planes=("axial",)))
    assert only_axial.segmentations == {}
    assert any("no sagittal series" in w for w in only_axial.warnings)


def test_segmentation_planes_choose_which_planes_are_segmented(bundles, tmp_path, capsys):
    predictor = Predictor(bundles["mpae"], device="cpu")            # segments sagittal and coronal
    exam = tiny_exam(2)
    every = predictor.predict(exam)
    coronal = predictor.predict(exam, segmentation_planes=["coronal"])
    assert list(coronal.segmentations) == ["coronal"] and coronal.exam["segmentation_planes"] == ["coronal"]
    assert {row["plane"] for row in coronal.measures} == {"coronal"}
    assert sitk.GetArrayFromImage(coronal.segmentations["coronal"]).tobytes() == \
        sitk.GetArrayFromImage(every.segmentations["coronal"]).tobytes()
    assert coronal.labels == every.labels                           # the diagnosis does not depend on the choice
    axial = predictor.predict(exam, segmentation_planes=("axial",))
    assert axial.segmentations == {} and axial.labels == every.labels
    assert any("does not segment the axial plane" in w for w in axial.warnings)
    assert predictor.predict(exam, segmentation_planes=[]).segmentations == {}
    with pytest.raises(ValueError, match="unknown segmentation plane"):
        predictor.predict(exam, segmentation_planes=["oblique"])
    with pytest.raises(ValueError, match="nothing to do"):
        predictor.predict(exam, diagnosis=False, segmentation_planes=[])
    inputs = tmp_path / "in"
    inputs.mkdir()
    args = ["predict", "--model", str(bundles["mpae"]), "--out", str(tmp_path / "out"), "--progress", "none",
            "--device", "cpu", "--segmentation-planes", "coronal"]
    for plane in PLANES:
        sitk.WriteImage(getattr(exam, plane).image, str(inputs / f"{plane}.nii.gz"))
        args += [f"--{plane}", str(inputs / f"{plane}.nii.gz")]
    assert main(args) == 0
    written = json.loads((tmp_path / "out" / "diagnosis.json").read_text())
    assert list(written["segmentations"]) == ["coronal"]
    assert not (tmp_path / "out" / "segmentation_sagittal.seg.nrrd").exists()


def test_corrupt_and_non_mr_inputs_fail_with_one_line(study, bundles, tmp_path, capsys):
    good = tmp_path / "good.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(next((study / "coronal").iterdir()))), str(good))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    args = ["--model", str(bundles["mpae"]), "--progress", "none"]
    assert main(["predict", "--sagittal", str(bad), "--out", str(tmp_path / "out"), *args]) == 2
    _one_line_error(capsys, "bad.nii.gz")
    _no_partial(tmp_path)
    ct = tmp_path / "ct_series"
    write_dicom_series(read_series(study / "axial").image, ct, modality="CT", uid_seed="pipeline-ct")
    assert main(["predict", "--axial", str(ct), "--out", str(tmp_path / "out"), *args]) == 2
    _one_line_error(capsys, "CT", "ct_series")
    _no_partial(tmp_path)


def test_existing_output_needs_overwrite_and_failed_write_leaves_old_output(bundles, tmp_path, capsys):
    result = Predictor(bundles["mpae"], device="cpu").predict(tiny_exam(2))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(Exception, match="not empty"):
        write_outputs(result, out)
    with pytest.raises(Exception, match="not written by orthodiffusion"):  # a foreign folder is never replaced
        write_outputs(result, out, overwrite=True)
    assert (out / "keep.txt").read_text() == "old"
    (out / "keep.txt").unlink()
    write_outputs(result, out)                                  # an empty folder is used
    first = (out / ".orthodiffusion-output.json").read_text()
    write_outputs(result, out, overwrite=True)                  # an earlier result of this tool is replaced
    assert (out / "report.html").is_file() and json.loads(first)["format"] == "orthodiffusion.output-folder"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_progress_names_each_plane_and_step_in_order(bundles):
    predictor = Predictor(bundles["mpae"], device="cpu")
    events = []
    predictor.predict(tiny_exam(3), progress=lambda s, f: events.append((s, f)))
    fractions = [f for _, f in events]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and events[-1] == ("done", 1.0)
    t = {p: v["timestep"] for p, v in predictor.diag_meta["planes"].items()}
    t_seg = {p: v["timestep"] for p, v in predictor.seg_meta.items()}
    assert t_seg == {"sagittal": 50, "coronal": 50} and t["coronal"] == 50  # the coronal pass serves both heads
    assert [s for s, _ in events] == [
        "sagittal: preprocessing", "coronal: preprocessing", "axial: preprocessing",
        "sagittal: backbone t=50", f"sagittal: backbone t={t['sagittal']}", "coronal: backbone t=50",
        f"axial: backbone t={t['axial']}", "fusion", "sagittal: segmentation", "coronal: segmentation",
        "sagittal: resampling segmentation", "coronal: resampling segmentation",
        "sagittal: measures", "coronal: measures", "done"]
    draws = []
    predictor.predict(tiny_exam(3), noise_draws=2, segmentation=False, progress=lambda s, f: draws.append((s, f)))
    assert [f for _, f in draws] == sorted(f for _, f in draws) and draws[-1] == ("done", 1.0)
    expected = []
    for d in (1, 2):
        expected += [f"{p}: backbone t={t[p]} draw {d}/2" for p in PLANES] + [f"fusion draw {d}/2"]
    assert [s for s, _ in draws if "backbone" in s or "fusion" in s] == expected


def test_progress_and_cancel(bundles):
    predictor = Predictor(bundles["mpae"], device="cpu")
    cancel = threading.Event()

    def stop_in_backbone(stage, fraction):
        if "backbone" in stage:
            cancel.set()

    with pytest.raises(CancelledError):
        predictor.predict(tiny_exam(3), progress=stop_in_backbone, cancel=cancel, segmentation=False)


def test_progress_json_lines_on_stderr(bundles, tmp_path, capsys):
    exam_dir = tmp_path / "in"
    exam_dir.mkdir()
    for plane in PLANES:
        sitk.WriteImage(tiny_exam(4).get(plane).image, str(exam_dir / f"{plane}.nii.gz"))
    rc = main(["predict", "--study", str(exam_dir), "--model", str(bundles["mpae"]), "--out", str(tmp_path / "o"),
               "--progress", "json", "--no-segmentation"])
    assert rc == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("ORTHODIFFUSION-PROGRESS ")]
    events = [json.loads(ln.split(" ", 1)[1]) for ln in lines]
    assert events[-2:] == [{"stage": "writing outputs", "fraction": 0.95}, {"stage": "done", "fraction": 1.0}]
    assert [e["fraction"] for e in events] == sorted(e["fraction"] for e in events)
    assert {f"{p}: backbone t=" for p in PLANES} <= {e["stage"].split("=")[0] + "=" for e in events}
    assert not (tmp_path / "o" / "segmentation_sagittal.seg.nrrd").exists()


def test_batch_equals_single_and_noise_draws(bundles):
    predictor = Predictor(bundles["mpae"], device="cpu")
    exams = [tiny_exam(10), tiny_exam(20), tiny_exam(30, planes=("sagittal", "coronal"))]
    many = predictor.predict_many(exams, batch_size=2)
    for i, (exam, res) in enumerate(zip(exams, many)):
        one = predictor.predict(exam, segmentation=i == 0)
        np.testing.assert_allclose([lb["calibrated_probability"] for lb in res.labels],
                                   [lb["calibrated_probability"] for lb in one.labels], atol=1e-5)
        for plane, img in one.segmentations.items():
            agree = (sitk.GetArrayFromImage(img) == sitk.GetArrayFromImage(res.segmentations[plane])).mean()
            assert agree > 0.999
    assert many[0].labels != many[1].labels
    single = many[0]
    assert all(lb["uncertainty"] == 0.0 for lb in single.labels)
    k2 = predictor.predict(exams[0], noise_draws=2, segmentation=False)
    again = predictor.predict(exams[0], noise_draws=2, segmentation=False)
    assert k2.labels == again.labels  # fixed seed: reproducible
    assert max(lb["uncertainty"] for lb in k2.labels) > 0
    assert k2.noise_draws == 2


def test_ehr_late_fusion_changes_the_probabilities(bundles):
    predictor = Predictor(bundles["ehr"], device="cpu")
    exam = tiny_exam(5)
    plain = predictor.predict(exam)
    fused = predictor.predict(exam, {"age": 25, "sex": "female", "injury_event": "sports_accident"})
    assert not plain.ehr_used and fused.ehr_used
    assert not np.allclose([lb["probability"] for lb in plain.labels], [lb["probability"] for lb in fused.labels])
    other = Predictor(bundles["mpae"], device="cpu").predict(exam, {"age": 25})
    assert any("no EHR branch" in w for w in other.warnings)


def test_load_exam_from_series_paths(study):
    exam = load_exam(sagittal=study / "sag_dess", axial=study / "axial")
    assert exam.planes_present() == ["sagittal", "axial"]
    with pytest.raises(Exception, match="coronal"):
        load_exam(sagittal=study / "coronal")  # a coronal series given as sagittal


def test_demo_end_to_end_with_a_given_model(bundles, tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--model", str(bundles["mpae"]), "--out", str(out), "--matrix", "64", "--progress", "none",
               "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "joint effusion" in text and f"report: {(out / 'report.html').resolve()}" in text
    data = json.loads((out / "diagnosis.json").read_text())
    assert data["exam"]["source"].startswith("simulated exam")
    assert (out / "segmentation_sagittal.seg.nrrd").is_file()


def test_demo_without_the_shipped_model_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ORTHODIFFUSION_HOME", str(tmp_path / "empty-home"))
    import OrthoDiffusionLib.bundle.registry as reg

    monkeypatch.setattr(reg, "shipped_registry_path", lambda: tmp_path / "no-registry" / "models.json")
    assert main(["demo", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "demo model" in err[0] and "--model" in err[0]
    assert not (tmp_path / "d").exists()


def test_segmentation_only_model(bundles, tmp_path):
    result = Predictor(bundles["seg_only"], device="cpu").predict(tiny_exam(6))
    assert result.labels == [] and result.fused_by is None
    assert list(result.segmentations) == ["coronal"]
    assert any("no diagnosis head" in w for w in result.warnings)
    write_outputs(result, tmp_path / "o")
    report = (tmp_path / "o" / "report.html").read_text()
    assert 'id="sankey"' not in report and "No diagnosis" in report
    assert json.loads((tmp_path / "o" / "diagnosis.json").read_text())["labels"] == []


def test_bench_predict_subject_runs(bundles, tmp_path, capsys):
    exam_dir = tmp_path / "in"
    exam_dir.mkdir()
    for plane in PLANES:
        sitk.WriteImage(tiny_exam(7).get(plane).image, str(exam_dir / f"{plane}.nii.gz"))
    rc = main(["bench", "predict", "--model", str(bundles["mpae"]), "--exams", "1", "2", "--repeats", "1",
               "--study", str(exam_dir), "--no-segmentation", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["exams"] for r in out["rows"]] == [1, 2]
    assert out["ratio_per_exam_N1_over_N2"] > 0 and out["model"] == "tiny-test"


def test_two_plane_diagnosis_model_and_plain_weights(tmp_path):
    """A diagnosis head trained on sagittal + coronal only: weights in PLANES order with axial 0; without MPAE the
    weights are equal shares of the present planes."""
    two = make_tiny_bundle(tmp_path / "two.odbundle", diagnosis_planes=("sagittal", "coronal"),
                           segmentation_planes=(), fusion="linear_add", with_mpae=False)
    result = Predictor(two, device="cpu").predict(tiny_exam(8))
    assert result.fused_by == "linear_add" and result.warnings == []
    for lb in result.labels:
        assert lb["plane_weights"] == {"sagittal": 0.5, "coronal": 0.5, "axial": 0.0}


def test_terminal_and_report_show_the_uncertainty_only_when_measured(bundles, tmp_path, capsys):
    """Default runs average several noise draws (a real spread); one draw shows a dash, never '+/- 0.0 %'; a model
    trained on simulated data only says so in the terminal as in the report."""
    from OrthoDiffusionLib.model.uncertainty import DEFAULT_NOISE_DRAWS

    assert DEFAULT_NOISE_DRAWS >= 4
    base = ["demo", "--model", str(bundles["mpae"]), "--matrix", "64", "--progress", "none", "--device", "cpu",
            "--no-segmentation"]
    assert main([*base, "--out", str(tmp_path / "default")]) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    data = json.loads((tmp_path / "default" / "diagnosis.json").read_text())
    assert data["noise_draws"] == DEFAULT_NOISE_DRAWS
    assert data["model"]["synthetic_data_only"] and "trained on SIMULATED (synthetic) data only" in text
    rows = [line for line in text.splitlines() if line.startswith(tuple(lb["name"] for lb in data["labels"]))]
    assert len(rows) == len(data["labels"]) and any(" 0.0%" not in r.split("%")[1] for r in rows)
    assert main([*base, "--out", str(tmp_path / "one"), "--noise-draws", "1"]) == 0
    text = capsys.readouterr().out
    assert "+/- 0.0" not in text and " 0.0%   " not in text and "one noise draw: no uncertainty measured" in text
    report = (tmp_path / "one" / "report.html").read_text()
    assert "&plusmn; 0.00%" not in report and "no uncertainty measured" in report
    assert "&plusmn;" in (tmp_path / "default" / "report.html").read_text()


def test_a_tiny_measured_spread_never_reads_as_zero():
    """A spread that rounds to zero is shown as '< 0.1%' in the terminal and '< 0.01%' in the report."""
    from OrthoDiffusionLib.cli.predict import format_result_table
    from OrthoDiffusionLib.inference.report import _spread
    from OrthoDiffusionLib.model.uncertainty import spread_percent

    assert [spread_percent(v, 1) for v in (0.0, 0.0004, 0.0005, 0.0123)] == ["< 0.1%", "< 0.1%", "0.1%", "1.2%"]
    label = {"key": "acl_injury", "name": "ACL injury", "calibrated_probability": 0.4, "uncertainty": 0.00002,
             "plane_weights": {"sagittal": 1.0, "coronal": 0.0, "axial": 0.0}}
    text = format_result_table({"labels": [label], "noise_draws": 4})
    assert "< 0.1%" in text and " 0.0%" not in text
    assert _spread(label, 4) == "&plusmn; &lt; 0.01%"
