"""Shared by the viewer tests: the CI-aware skip, a small simulated study folder, a finished result folder and the
viewer in a subprocess."""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np
import pytest
import SimpleITK as sitk

from OrthoDiffusionLib import labels
from OrthoDiffusionLib.segmentation import io as seg_io
from OrthoDiffusionLib.io import PLANES


def require(module: str, why: str):
    """Import ``module``; skip the test when it is missing, but fail in CI (``CI`` set), where it must be installed."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is missing in CI ({why}): {e}")
        pytest.skip(f"{module} not installed ({why})")


def write_study(folder: Path, seed: int = 3, matrix: int = 48, abnormality: str = "joint_effusion"
                ) -> Dict[str, sitk.Image]:
    """Simulate a knee exam into ``folder`` as ``<plane>.nii.gz`` (+ ``labels/<plane>.nii.gz`` ground truth);
    returns the ground-truth labelmaps per plane."""
    from OrthoDiffusionLib.simulate import simulate_exam
    from OrthoDiffusionLib.simulate.cohort import write_image

    exam = simulate_exam(seed, {abnormality: True}, matrix=matrix)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    truth = {}
    for s in exam.series:
        write_image(s.image, folder / f"{s.plane}.nii.gz")
        write_image(s.labelmap, folder / "labels" / f"{s.plane}.nii.gz")
        truth[s.plane] = s.labelmap
    return truth


def write_result_folder(folder: Path, labelmaps: Dict[str, sitk.Image], probabilities=None,
                        series_sources: Optional[Dict[str, str]] = None, study: Optional[str] = None) -> Dict:
    """A result folder as ``write_outputs`` lays it out: ``segmentation_<plane>.seg.nrrd`` (each plane's label table
    only) and a ``diagnosis.json`` with the 8 knee labels (``probabilities`` or 0.1, 0.2, ...) and, when given, the
    exam's series paths (``exam.planes.<plane>.source``) and study folder; returns the JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    for plane in PLANES:
        if plane not in labelmaps:
            continue
        arr = sitk.GetArrayFromImage(labelmaps[plane])
        keep = [s.value for s in labels.knee_structures(plane)]
        arr = np.where(np.isin(arr, keep), arr, 0).astype(np.uint8)
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(labelmaps[plane])
        seg_io.write_seg_nrrd(img, folder / f"segmentation_{plane}.seg.nrrd", plane)
    keys = labels.diagnosis_labels("knee")
    probs = probabilities or [0.1 * (i + 1) for i in range(len(keys))]
    entries = []
    for d, p in zip(keys, probs):
        entries.append({"key": d.key, "name": d.name, "probability": p, "calibrated_probability": p,
                        "uncertainty": 0.02, "plane_weights": {"sagittal": 0.5, "coronal": 0.3, "axial": 0.2}})
    diagnosis = {"labels": entries, "warnings": ["a test result folder"],
                 "exam": {"source": study, "planes": {p: ({"source": src} if src else None) for p, src in
                                                      (series_sources or {}).items()}}}
    (folder / "diagnosis.json").write_text(json.dumps(diagnosis), encoding="utf-8")
    return diagnosis


#: The line ``orthodiffusion view`` prints once it serves: groups (address with token, port, token).
VIEWER_URL_LINE = re.compile(r"OrthoDiffusion viewer: (http://127\.0\.0\.1:(\d+)/\?token=([A-Za-z0-9_\-]+))")


@contextlib.contextmanager
def viewer_process(args: List[str], home: Path, timeout_s: float = 300) -> Iterator[re.Match]:
    """``orthodiffusion view ARGS`` in a subprocess on a free loopback port (working folder and
    ``$ORTHODIFFUSION_HOME`` = ``home``, log in ``home/viewer.log``); yields the match of :data:`VIEWER_URL_LINE`
    and ends the process (terminate, then kill) afterwards."""
    log_path = home / "viewer.log"
    env = dict(os.environ, ORTHODIFFUSION_HOME=str(home), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "OrthoDiffusionLib", "view", *args, "--port", "0"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(home))
    try:
        match, deadline = None, time.monotonic() + timeout_s
        while match is None and time.monotonic() < deadline and proc.poll() is None:
            match = VIEWER_URL_LINE.search(log_path.read_text(errors="replace"))
            time.sleep(0.3)
        if match is None:
            pytest.fail(f"the viewer did not start (exit {proc.poll()}):\n{log_path.read_text()[-3000:]}")
        yield match
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
