"""What the Slicer module runs outside the GUI process: a child process with streamed progress lines and a cancel
that kills its whole process tree (OrthoDiffusionLib.slicer.child_process), and the dependency check
(OrthoDiffusionLib.dependencies)."""
from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest

from OrthoDiffusionLib.slicer.child_process import (ChildProcess, error_line, library_command, parse_progress_line)
from OrthoDiffusionLib.dependencies import CORE_REQUIREMENTS, Requirement, missing_requirements, version_tuple

ROOT = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _read_until(proc: ChildProcess, predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _, line in proc.read_lines():
            if predicate(line):
                return line
        time.sleep(0.02)
    raise AssertionError(f"no matching line in {timeout} s; got {proc.output()}")


def test_progress_lines_and_exit_code():
    script = textwrap.dedent("""
        import sys
        for i in range(5):
            print('ORTHODIFFUSION-PROGRESS {"stage": "sagittal", "fraction": %s}' % (i / 4), file=sys.stderr, flush=True)
        print("result table")
        print("orthodiffusion predict: error: /x/y.dcm: not MR", file=sys.stderr)
        sys.exit(2)
    """)
    proc = ChildProcess([sys.executable, "-c", script]).start()
    assert proc.wait(timeout=30) == 2
    events = [parse_progress_line(ln) for ln in proc.output("stderr")]
    assert [e for e in events if e] == [("sagittal", i / 4) for i in range(5)]
    assert proc.output("stdout") == ["result table"]
    assert error_line(proc.output()) == "orthodiffusion predict: error: /x/y.dcm: not MR"
    assert proc.poll() == 2


def test_parse_progress_line_rejects_other_lines():
    assert parse_progress_line('ORTHODIFFUSION-PROGRESS {"stage": "loading", "fraction": 1.7}') == ("loading", 1.0)
    assert parse_progress_line('ORTHODIFFUSION-PROGRESS {"stage": "loading"}') is None
    assert parse_progress_line("ORTHODIFFUSION-PROGRESS not json") is None
    assert parse_progress_line("100%|####| predict") is None
    assert error_line(["Traceback (most recent call last):", '  File "x"', "ValueError: boom", ""]) == \
        "ValueError: boom"


@pytest.mark.skipif(sys.platform == "win32", reason="checks /proc")
def test_kill_tree_ends_child_and_grandchild():
    script = textwrap.dedent("""
        import subprocess, sys, time
        g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print("grandchild", g.pid, flush=True)
        time.sleep(120)
    """)
    proc = ChildProcess([sys.executable, "-c", script]).start()
    line = _read_until(proc, lambda ln: ln.startswith("grandchild"))
    grandchild = int(line.split()[1])
    assert _alive(proc.pid) and _alive(grandchild)
    proc.kill_tree(grace_s=5.0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (_alive(proc.pid) or _alive(grandchild)):
        time.sleep(0.05)
    assert not _alive(proc.pid) and not _alive(grandchild)
    assert proc.cancelled and proc.wait(timeout=10) != 0


def test_library_command_runs_the_cli():
    proc = ChildProcess(library_command(sys.executable, "--version"), env={"PYTHONPATH": str(ROOT)}).start()
    assert proc.wait(timeout=120) == 0
    assert "orthodiffusion" in " ".join(proc.output())


def test_core_requirements_match_pyproject():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert [r.spec for r in CORE_REQUIREMENTS] == project["dependencies"]


def test_missing_requirements():
    assert missing_requirements() == []                      # this test environment has the core installed
    absent = Requirement("orthodiffusion-no-such-package>=1.0", "orthodiffusion_no_such_module")
    too_old = Requirement("numpy>=999.0", "numpy")
    fine = Requirement("numpy>=1.0", "numpy")
    assert missing_requirements([absent, too_old, fine]) == [absent, too_old]
    assert absent.dist == "orthodiffusion-no-such-package" and too_old.minimum == "999.0"
    assert version_tuple("2.13.0+cpu") == (2, 13, 0) and version_tuple("1.26.4") > version_tuple("1.24")
    assert version_tuple("2.0rc1") == (2, 0)


def test_module_command_lines_parse_with_the_cli():
    from OrthoDiffusionLib.slicer.child_process import predict_arguments, sample_exam_arguments
    from OrthoDiffusionLib.cli import build_parser
    from OrthoDiffusionLib.labels import PLANES

    parser = build_parser()
    args = parser.parse_args(predict_arguments({"sagittal": "s.nrrd", "axial": "a.nrrd"}, "out", model="tiny",
                                               device="cuda", segmentation=False, diagnosis=False, noise_draws=4))
    assert (args.command, args.sagittal, args.coronal, args.axial, args.out) == ("predict", "s.nrrd", None, "a.nrrd",
                                                                                  "out")
    assert (args.model, args.device, args.noise_draws, args.progress) == ("tiny", "cuda", 4, "json")
    assert args.no_segmentation and args.no_diagnosis
    assert not args.fuse_segmentations                       # no segmentation -> nothing to fuse
    args = parser.parse_args(predict_arguments({"coronal": "c.nrrd"}, "out"))
    assert args.model is None and not args.no_segmentation and not args.no_diagnosis and args.device == "auto"
    assert not args.fuse_segmentations
    assert parser.parse_args(predict_arguments({"coronal": "c.nrrd"}, "out", fuse_segmentations=True)
                             ).fuse_segmentations
    assert args.precision == "fp32" and args.segmentation_planes is None
    # the module's per-plane segmentation choice and precision reach the child's command line
    chosen = parser.parse_args(predict_arguments({"sagittal": "s.nrrd", "coronal": "c.nrrd"}, "out",
                                                 segmentation_planes=["coronal", "sagittal"], precision="bf16",
                                                 fuse_segmentations=True))
    assert chosen.segmentation_planes == ("sagittal", "coronal") and chosen.precision == "bf16"
    assert not chosen.no_segmentation and chosen.fuse_segmentations
    every = parser.parse_args(predict_arguments({"coronal": "c.nrrd"}, "out", segmentation_planes=PLANES))
    assert every.segmentation_planes is None and not every.no_segmentation     # all planes: the default
    none = parser.parse_args(predict_arguments({"coronal": "c.nrrd"}, "out", segmentation_planes=[],
                                               fuse_segmentations=True))
    assert none.no_segmentation and none.segmentation_planes is None and not none.fuse_segmentations
    with pytest.raises(ValueError, match="unknown plane"):
        predict_arguments({"coronal": "c.nrrd"}, "out", segmentation_planes=["oblique"])
    sample = parser.parse_args(sample_exam_arguments("dir", seed=3, matrix=128))
    assert (sample.out, sample.seed, sample.abnormality, sample.matrix, sample.no_dicom) == \
        ("dir", 3, ["joint_effusion"], 128, True)
    imported = parser.parse_args(["models", "import", "x.odbundle"])
    assert imported.func is not None
