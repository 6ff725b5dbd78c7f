"""The Slicer module's run without the GUI: volume nodes of a real MRML scene (slicer-core) written by
``mrml.write_volume_node``, ``orthodiffusion predict`` run with the module's arguments in a child process whose
Python has only the core packages (as Slicer's; the real Predictor and a tiny bundle), progress lines parsed, outputs imported as segmentation and table nodes on the volume
nodes' geometry; a bad input fails with the CLI's one line; Cancel kills the run and leaves no output."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from bundle_helpers import make_tiny_bundle
from io_helpers import load_dess, reformat
from OrthoDiffusionLib import labels
from OrthoDiffusionLib.slicer import mrml
from OrthoDiffusionLib.slicer.child_process import ChildProcess, error_line, parse_progress_line, predict_arguments
from core_only import CORE_ENV, core_only_command


@pytest.fixture(scope="module")
def slicer():
    import slicer as slicer_namespace

    if not hasattr(slicer_namespace, "vtkMRMLScene"):
        pytest.fail("`import slicer` is not slicer-core's MRML namespace (the unrelated pip package 'slicer'?)")
    return slicer_namespace


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny.odbundle",
                            segmentation_planes=("sagittal", "coronal"))


@pytest.fixture()
def scene_volumes(slicer, shared_data):
    """A scene with the real DESS (read by MRML) and its coronal and axial reformats as volume nodes."""
    scene = slicer.vtkMRMLScene()
    dess = load_dess(shared_data)
    volumes = {"sagittal": mrml.load_volume_file(scene, dess.source, "DESS")}
    for plane in ("coronal", "axial"):
        volumes[plane] = mrml.image_to_volume_node(sitk.Cast(reformat(dess.image, plane), sitk.sitkInt16), scene,
                                                   f"DESS {plane} reformat")
    return scene, volumes


def _write_inputs(volumes, folder: Path):
    return {plane: mrml.write_volume_node(node, folder / f"{plane}.nrrd") for plane, node in volumes.items()}


def test_module_run_imports_prediction_on_volume_geometry(scene_volumes, bundle, tmp_path):
    scene, volumes = scene_volumes
    assert mrml.assign_planes(mrml.scene_volume_nodes(scene)) == volumes
    out = tmp_path / "result"
    args = predict_arguments(_write_inputs(volumes, tmp_path / "inputs"), out, model=str(bundle), device="cpu",
                             fuse_segmentations=True)
    proc = ChildProcess(core_only_command(*args), env=CORE_ENV).start()
    assert proc.wait(timeout=600) == 0, "\n".join(proc.output())
    events = [e for e in map(parse_progress_line, proc.output("stderr")) if e is not None]
    assert len(events) >= 3 and events[-1][1] == pytest.approx(1.0)
    assert all(b[1] >= a[1] for a, b in zip(events, events[1:])), events

    imported = mrml.import_result_folder(scene, out, volumes)
    # the bundle segments these two planes; "Fuse planes" adds their fused segmentation on the sagittal volume
    assert list(imported.segmentations) == ["sagittal", "coronal", "fused"]
    fused = imported.segmentations["fused"]
    assert fused.GetSegmentation().GetNumberOfSegments() == 11
    mask, matrix = mrml.segment_labelmap(fused, "femur")
    assert np.allclose(matrix, mrml.ijk_to_ras(volumes["sagittal"]), atol=1e-4)
    assert mask.shape[::-1] == volumes["sagittal"].GetImageData().GetDimensions()
    for plane, n in (("sagittal", 11), ("coronal", 9)):
        node = imported.segmentations[plane]
        segmentation = node.GetSegmentation()
        structures = labels.knee_structures(plane)
        assert segmentation.GetNumberOfSegments() == n
        assert [segmentation.GetNthSegment(i).GetName() for i in range(n)] == [s.name for s in structures]
        for s in structures:
            assert np.allclose(segmentation.GetSegment(s.key).GetColor(), np.asarray(s.color) / 255.0, atol=1e-6)
            mask, matrix = mrml.segment_labelmap(node, s.key)
            assert np.allclose(matrix, mrml.ijk_to_ras(volumes[plane]), atol=1e-4)
            assert mask.shape[::-1] == volumes[plane].GetImageData().GetDimensions()
    table = imported.diagnosis_table
    assert table.GetNumberOfRows() == 8
    weights = np.array([mrml.table_column(table, f"{p.capitalize()} weight") for p in ("sagittal", "coronal",
                                                                                        "axial")])
    assert np.allclose(weights.sum(axis=0), 1.0, atol=1e-4) and (weights > 0).all()
    assert np.allclose(mrml.table_column(table, "Probability"),
                       [e["probability"] for e in imported.result["labels"]])
    assert imported.measures_table is not None and imported.measures_table.GetNumberOfRows() > 0
    assert imported.report == out / "report.html" and imported.report.is_file()


def test_bad_input_fails_with_one_line_and_no_output(scene_volumes, bundle, tmp_path):
    _, volumes = scene_volumes
    inputs = _write_inputs({"sagittal": volumes["sagittal"]}, tmp_path / "inputs")
    broken = tmp_path / "inputs" / "coronal.nrrd"
    broken.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\n")            # truncated header, no data
    out = tmp_path / "result"
    args = predict_arguments({**inputs, "coronal": broken}, out, model=str(bundle), device="cpu")
    proc = ChildProcess(core_only_command(*args), env=CORE_ENV).start()
    assert proc.wait(timeout=300) == 2
    reason = error_line(proc.output())
    assert reason.startswith("orthodiffusion predict: error:") and "coronal.nrrd" in reason
    assert not out.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="process groups")
def test_cancel_kills_the_run_and_leaves_no_output(scene_volumes, bundle, tmp_path):
    _, volumes = scene_volumes
    out = tmp_path / "result"
    args = predict_arguments(_write_inputs(volumes, tmp_path / "inputs"), out, model=str(bundle), device="cpu",
                             noise_draws=8)
    proc = ChildProcess(core_only_command(*args), env=CORE_ENV).start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not any(parse_progress_line(t) for _, t in proc.read_lines()):
        assert proc.poll() is None, "\n".join(proc.output())
        time.sleep(0.05)
    proc.kill_tree()
    assert proc.cancelled and proc.wait(timeout=30) != 0
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs"]    # no temporary output folder either
