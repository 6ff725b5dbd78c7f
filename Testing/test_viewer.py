"""Browser viewer pieces without a browser: result folders, folder picker, background worker, the MRML scene."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk

from OrthoDiffusionLib.errors import CorruptFileError, InputError, MissingPathError, NoDicomError
from OrthoDiffusionLib.viewer.background import BackgroundTask
from OrthoDiffusionLib.viewer.security import is_loopback
from OrthoDiffusionLib.viewer.folders import list_folder
from OrthoDiffusionLib.viewer.results import open_result_folder
from viewer_helpers import require, write_result_folder, write_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    return folder, write_study(folder)


# ---- result folders ------------------------------------------------------------------------------------------------
def test_open_result_folder_reads_labels_and_segmentations(tmp_path, study):
    _, truth = study
    written = write_result_folder(tmp_path / "res", {"sagittal": truth["sagittal"], "coronal": truth["coronal"]})
    res = open_result_folder(tmp_path / "res")
    assert [e["name"] for e in res.labels] == [e["name"] for e in written["labels"]]
    assert sorted(res.segmentations) == ["coronal", "sagittal"]
    assert res.warnings == ["a test result folder"]


def test_open_result_folder_errors_name_the_file(tmp_path):
    with pytest.raises(MissingPathError):
        open_result_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="diagnosis.json"):
        open_result_folder(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "diagnosis.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CorruptFileError, match="bad/diagnosis.json"):
        open_result_folder(bad)
    (bad / "diagnosis.json").write_text(json.dumps({"labels": [{"name": "ACL injury"}]}), encoding="utf-8")
    with pytest.raises(CorruptFileError, match="probability"):
        open_result_folder(bad)


# ---- folder picker -------------------------------------------------------------------------------------------------
def test_list_folder_marks_result_folders_and_hides_dot_folders(tmp_path, study):
    (tmp_path / "b_exam").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "file.txt").write_text("x")
    write_result_folder(tmp_path / "A_result", {"sagittal": study[1]["sagittal"]})
    rows = list_folder(tmp_path)
    assert [(r["name"], r["kind"]) for r in rows] == [("A_result", "result"), ("b_exam", "folder")]
    with pytest.raises(MissingPathError):
        list_folder(tmp_path / "file.txt")


# ---- background worker ---------------------------------------------------------------------------------------------
class _Recorder:
    def __init__(self):
        self.progress, self.outcomes = [], []
        self.done = threading.Event()

    def task(self) -> BackgroundTask:
        return BackgroundTask(lambda fn, *a: fn(*a), lambda *a: self.progress.append(a), self._done)

    def _done(self, outcome):
        self.outcomes.append(outcome)
        self.done.set()


def test_background_task_reports_progress_and_value():
    rec = _Recorder()
    task = rec.task()

    def work(progress, cancel):
        for i in range(3):
            progress(f"step {i}", i / 2)
        return "value"

    assert task.start("job", work)
    assert rec.done.wait(10)
    assert rec.progress == [("job", "step 0", 0.0), ("job", "step 1", 0.5), ("job", "step 2", 1.0)]
    assert rec.outcomes[0].ok and rec.outcomes[0].value == "value"


def test_background_task_cancel_stops_work_and_refuses_a_second_task():
    rec = _Recorder()
    task = rec.task()
    started = threading.Event()

    def work(progress, cancel):
        started.set()
        for i in range(1000):
            time.sleep(0.01)
            progress("looping", i / 1000)
        return "finished"

    assert task.start("long", work)
    assert started.wait(10)
    assert task.busy and not task.start("other", work)
    assert task.cancel()
    assert rec.done.wait(10)
    assert rec.outcomes[0].cancelled and rec.outcomes[0].value is None
    assert not task.busy and len(rec.progress) < 1000


def test_background_task_turns_library_errors_into_messages_and_keeps_working(tmp_path):
    from OrthoDiffusionLib.io import load_study

    rec = _Recorder()
    task = rec.task()
    task.start("open", lambda progress, cancel: load_study(tmp_path))
    assert rec.done.wait(30)
    out = rec.outcomes[0]
    assert not out.ok and out.crash is None and str(tmp_path) in out.error
    with pytest.raises(NoDicomError) as e:
        load_study(tmp_path)
    assert out.error == str(e.value)  # the banner says what the CLI says
    rec.done.clear()
    task.start("crash", lambda progress, cancel: 1 / 0)
    assert rec.done.wait(10)
    assert isinstance(rec.outcomes[1].crash, ZeroDivisionError) and "ZeroDivisionError" in rec.outcomes[1].error
    rec.done.clear()
    task.start("again", lambda progress, cancel: 7)
    assert rec.done.wait(10) and rec.outcomes[2].value == 7


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("127.3.2.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")


# ---- MRML scene ----------------------------------------------------------------------------------------------------
def test_ijk_to_ras_matches_itk_geometry():
    from OrthoDiffusionLib.slicer.mrml import matrix_from_image as ijk_to_ras  # what the viewer's scene uses

    img = sitk.Image(5, 6, 7, sitk.sitkFloat32)
    img.SetSpacing((0.5, 0.7, 3.0))
    img.SetOrigin((10.0, -20.0, 30.0))
    rot = sitk.VersorTransform((0.2, 0.3, 0.1), 0.4).GetMatrix()
    img.SetDirection(rot)
    m = ijk_to_ras(img)
    for ijk in [(0, 0, 0), (4, 5, 6), (1, 3, 2)]:
        lps = np.array(img.TransformIndexToPhysicalPoint(ijk))
        ras = (m @ np.array([*ijk, 1.0]))[:3]
        np.testing.assert_allclose(ras, lps * np.array([-1, -1, 1]), atol=1e-9)


@pytest.fixture(scope="module")
def viewer_app():
    require("trame_slicer", "browser viewer extra")
    from OrthoDiffusionLib.viewer.app import ViewerApp

    app = ViewerApp(sample_matrix=48)
    yield app
    app.task.shutdown()


def test_scene_shows_each_series_in_its_view_and_segments_by_structure_key(viewer_app, study, tmp_path):
    from OrthoDiffusionLib import labels
    from OrthoDiffusionLib.io import load_study
    from OrthoDiffusionLib.viewer.scene import VIEW_TAGS

    folder, truth = study
    exam = load_study(folder)
    viewer_app._show_exam(exam, "study")
    scene = viewer_app.scene
    assert viewer_app.state.has_exam and viewer_app.state.exam_label.startswith("study:")
    for plane in ("sagittal", "coronal", "axial"):
        node = scene.volumes[plane]
        view = viewer_app.slicer.view_manager.get_view(VIEW_TAGS[plane])
        assert view.get_background_volume_id() == node.GetID()
        # the node holds the series' voxels on the series' geometry (RAS = LPS with x, y negated)
        img = exam.get(plane).image
        arr = node.GetImageData().GetPointData().GetScalars()
        assert arr.GetNumberOfTuples() == np.prod(img.GetSize())
        far = [s - 1 for s in img.GetSize()]
        ras = [0.0, 0.0, 0.0, 1.0]
        from vtkmodules.vtkCommonMath import vtkMatrix4x4

        m = vtkMatrix4x4()
        node.GetIJKToRASMatrix(m)
        ras = m.MultiplyPoint([*far, 1.0])[:3]
        lps = img.TransformIndexToPhysicalPoint(far)
        np.testing.assert_allclose(ras, [-lps[0], -lps[1], lps[2]], atol=1e-4)

    res = tmp_path / "res"
    write_result_folder(res, truth)
    for plane in ("sagittal", "coronal", "axial"):
        scene.show_segmentation(plane, res / f"segmentation_{plane}.seg.nrrd")
    assert scene.surface_plane == "sagittal"
    sag = scene.segmentations["sagittal"].GetSegmentation()
    present = {int(v) for v in np.unique(sitk.GetArrayFromImage(truth["sagittal"])) if v}
    assert {sag.GetNthSegmentID(i) for i in range(sag.GetNumberOfSegments())} == \
        {s.key for s in labels.knee_structures("sagittal")}
    key = next(s.key for s in labels.knee_structures("coronal") if s.value in present)
    scene.set_structure_visible(key, False)
    scene.set_structure_opacity(key, 0.25)
    for plane in ("sagittal", "coronal"):
        d = scene.segmentations[plane].GetDisplayNode()
        assert not d.GetSegmentVisibility(key) and d.GetSegmentOpacity2DFill(key) == pytest.approx(0.25)
    assert scene.structure_display(key) == (False, pytest.approx(0.25))
    # the 3D view shows only the sagittal segmentation, each slice view only its own plane's
    threed = viewer_app.slicer.view_manager.get_view(VIEW_TAGS["threed"]).get_view_node_id()
    assert scene.segmentations["sagittal"].GetDisplayNode().IsDisplayableInView(threed)
    assert not scene.segmentations["coronal"].GetDisplayNode().IsDisplayableInView(threed)

    bad = tmp_path / "not_a_segmentation.seg.nrrd"
    bad.write_bytes(b"NRRD0004\ngarbage")
    with pytest.raises(CorruptFileError):
        scene.show_segmentation("axial", bad)
    scene.clear()
    assert not scene.volumes and not scene.segmentations


def test_result_folder_reopens_with_the_series_it_records(study, tmp_path):
    from OrthoDiffusionLib.viewer.app import ViewerApp

    folder, truth = study
    sources = {p: str(folder / f"{p}.nii.gz") for p in ("sagittal", "coronal", "axial")}
    write_result_folder(tmp_path / "res", truth, series_sources=sources, study=str(folder))
    result = open_result_folder(tmp_path / "res")
    assert result.series_sources() == sources and result.study_source() == str(folder)
    exam, notice = ViewerApp._exam_of_result(result, None, lambda *a: None)
    assert notice == "" and {p: exam.get(p).source for p in exam.planes_present()} == sources
    # the open exam is reused when it is those series
    assert ViewerApp._exam_of_result(result, exam, lambda *a: None) == (exam, "")
    # series moved away but the study folder is still there: the study is loaded
    moved = dict(sources, sagittal=str(tmp_path / "gone.nii.gz"))
    write_result_folder(tmp_path / "res2", truth, series_sources=moved, study=str(folder))
    exam2, notice2 = ViewerApp._exam_of_result(open_result_folder(tmp_path / "res2"), None, lambda *a: None)
    assert notice2 == "" and exam2.sagittal.source == sources["sagittal"]
    # nothing readable: no exam, and a notice naming the missing file
    write_result_folder(tmp_path / "res3", truth, series_sources=moved, study=str(tmp_path / "nowhere"))
    exam3, notice3 = ViewerApp._exam_of_result(open_result_folder(tmp_path / "res3"), None, lambda *a: None)
    assert exam3 is None and "gone.nii.gz" in notice3


def _drive(app, until, timeout: float = 300.0) -> None:
    """Run the app's event loop (where the worker posts its progress and outcome) until ``until()``."""
    import asyncio

    async def wait():
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.05)

    app._loop.run_until_complete(wait())


def test_run_shows_the_result_and_cancel_leaves_no_result_folder(viewer_app, study, tmp_path):
    import asyncio

    from bundle_helpers import make_tiny_bundle

    from OrthoDiffusionLib.io import load_study

    folder, _ = study
    app = viewer_app
    app._loop = asyncio.new_event_loop()
    app.model = str(make_tiny_bundle(tmp_path / "tiny.odbundle", segmentation_planes=("sagittal", "coronal")))
    app.device, app.out_root = "cpu", tmp_path / "results"
    app._show_exam(load_study(folder), "study")

    assert app.run()
    assert app.state.busy and not app.run()  # one task at a time; the refusal is a banner, not a crash
    assert "still running" in app.state.error_message
    _drive(app, lambda: not app.task.busy and not app.state.busy)
    assert app.state.progress_stage == "Run: done", app.state.error_message
    written = list((tmp_path / "results").iterdir())
    assert len(written) == 1 and (written[0] / "diagnosis.json").is_file()
    assert app.state.result_dir == str(written[0]) and len(app.state.diagnosis_rows) == 8
    assert sorted(app.scene.segmentations) == ["coronal", "sagittal"] and app.scene.surface_plane == "sagittal"
    assert {r["key"] for r in app.state.structures} == set(app.scene.structures_present())
    assert app.state[app._sankey.key]["data"][0]["type"] == "sankey"

    assert app.run()
    app.cancel()
    _drive(app, lambda: not app.task.busy and not app.state.busy)
    assert app.state.progress_stage == "Run: cancelled"
    assert list((tmp_path / "results").iterdir()) == written  # no new (partial) result folder
    assert app.result.path == written[0]  # the shown result is unchanged


def test_diagnosis_rows_show_uncertainty_only_with_several_noise_draws(tmp_path, study):
    from OrthoDiffusionLib.viewer.app import diagnosis_rows

    written = write_result_folder(tmp_path / "res", {}, probabilities=[0.05, 0.5, 0.954, 0.1, 0.2, 0.3, 0.4, 0.6])
    for draws, text in [(4, "95% ± 2.0%"), (1, "95%")]:
        written["noise_draws"] = draws
        (tmp_path / "res" / "diagnosis.json").write_text(json.dumps(written), encoding="utf-8")
        rows = diagnosis_rows(open_result_folder(tmp_path / "res"))
        assert len(rows) == 8 and rows[2]["text"] == text and rows[2]["percent"] == pytest.approx(95.4)
        assert rows[2]["name"] == written["labels"][2]["name"]
        assert rows[2]["color"] != rows[0]["color"]  # >= 50% is drawn in the alarm colour
    # a measured spread too small for one decimal reads "< 0.1%" (as in the terminal and the report), never "0.0%"
    written["noise_draws"], written["labels"][2]["uncertainty"] = 4, 0.0002
    (tmp_path / "res" / "diagnosis.json").write_text(json.dumps(written), encoding="utf-8")
    assert diagnosis_rows(open_result_folder(tmp_path / "res"))[2]["text"] == "95% ± < 0.1%"
    written["noise_draws"] = 1
    # the headline is the calibrated probability (as in report.html); the raw model output is shown beside it
    written["labels"][2]["probability"] = 0.40
    (tmp_path / "res" / "diagnosis.json").write_text(json.dumps(written), encoding="utf-8")
    row = diagnosis_rows(open_result_folder(tmp_path / "res"))[2]
    assert row["text"] == "95%" and row["percent"] == pytest.approx(95.4) and row["calibrated"] == "uncalibrated 40%"


def test_view_command_rejects_conflicting_arguments_with_one_line(capsys, tmp_path):
    from OrthoDiffusionLib.cli import main

    assert main(["view", str(tmp_path), "--sagittal", str(tmp_path / "s.nii.gz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "either a study folder or --sagittal" in err[0]
    assert main(["view", "--demo", str(tmp_path)]) == 2
    assert main(["view", "--noise-draws", "0"]) == 2
    assert "--noise-draws must be at least 1" in capsys.readouterr().err
