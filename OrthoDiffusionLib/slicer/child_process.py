"""Run a library command in a separate process with streamed output and a cancel that kills the whole process tree.

Used by the 3D Slicer module (heavy work never runs in the GUI process): the GUI starts a :class:`ChildProcess`,
polls :meth:`ChildProcess.read_lines` from a timer, turns ``ORTHODIFFUSION-PROGRESS`` lines into its progress bar
(:func:`parse_progress_line`) and shows :func:`error_line` when the command fails. Output is read by two daemon
threads (stdout, stderr) into one queue, so polling never blocks.

The child runs in its own session (POSIX) or process group (Windows); :meth:`ChildProcess.kill_tree` ends it and
everything it started (e.g. Slicer's ``PythonSlicer`` launcher and the ``python-real`` it spawns).
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from OrthoDiffusionLib.errors import CorruptFileError
from OrthoDiffusionLib.inference.result_folder import DEFAULT_NOISE_DRAWS
from OrthoDiffusionLib.labels import PLANES, planes_in_order
from OrthoDiffusionLib.progress import parse_progress_line

PathLike = Union[str, os.PathLike]


def library_command(python: str, *args: str) -> List[str]:
    """argv running ``python -m OrthoDiffusionLib ARGS`` (the ``orthodiffusion`` command)."""
    return [python, "-m", "OrthoDiffusionLib", *args]


def predict_arguments(inputs: Mapping[str, PathLike], out: PathLike, *, model: Optional[str] = None,
                      device: str = "auto", segmentation: bool = True, diagnosis: bool = True,
                      noise_draws: int = DEFAULT_NOISE_DRAWS, fuse_segmentations: bool = False,
                      segmentation_planes: Optional[Sequence[str]] = None, precision: str = "fp32") -> List[str]:
    """``orthodiffusion predict`` arguments for ``{plane: series file}``, writing into ``out`` with JSON progress
    lines (the Slicer module's run).

    ``segmentation_planes``: segment only these planes (``--segmentation-planes``; None = every plane the model
    segments, an empty list = no segmentation); ``precision``: ``fp32`` or ``bf16`` (``--precision``)."""
    if segmentation and segmentation_planes is not None:
        segmentation_planes = list(planes_in_order(segmentation_planes))
        segmentation = bool(segmentation_planes)
    args = ["predict"]
    for plane, path in inputs.items():
        args += [f"--{plane}", os.fspath(path)]
    args += ["--out", os.fspath(out), "--device", device, "--precision", precision,
             "--noise-draws", str(int(noise_draws)), "--progress", "json"]
    if model:
        args += ["--model", model]
    if not segmentation:
        args.append("--no-segmentation")
    elif segmentation_planes is not None and list(segmentation_planes) != list(PLANES):
        args += ["--segmentation-planes", ",".join(segmentation_planes)]
    if not diagnosis:
        args.append("--no-diagnosis")
    if segmentation and fuse_segmentations:
        args.append("--fuse-segmentations")
    return args


def sample_exam_arguments(folder: PathLike, seed: int = 0, abnormality: str = "joint_effusion",
                          matrix: int = 256) -> List[str]:
    """``orthodiffusion simulate exam`` arguments for the module's sample knee (NIfTI only, one lesion)."""
    return ["simulate", "exam", "--out", os.fspath(folder), "--no-dicom", "--seed", str(int(seed)),
            "--abnormality", abnormality, "--matrix", str(int(matrix))]


def sample_exam_series(folder: PathLike) -> Dict[str, Path]:
    """``{plane: NIfTI path}`` of a simulated exam folder, from its ``exam.json`` (first series of each plane)."""
    folder = Path(folder)
    try:
        series = json.loads((folder / "exam.json").read_text(encoding="utf-8"))["series"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptFileError(f"not a simulated exam ({e})", folder / "exam.json") from None
    out: Dict[str, Path] = {}
    for s in series:
        if s.get("plane") in PLANES and s.get("nifti") and s["plane"] not in out:
            out[s["plane"]] = folder / s["nifti"]
    return {p: out[p] for p in PLANES if p in out}


def error_line(lines: Sequence[str]) -> str:
    """The one-line reason of a failed command: its ``orthodiffusion ...: error: ...`` line if it printed one
    (the CLI's contract), else the last non-progress line of a traceback or output, else ''."""
    text = [ln.strip() for ln in lines if ln.strip() and parse_progress_line(ln) is None]
    for ln in reversed(text):
        if ln.startswith("orthodiffusion") and "error:" in ln:
            return ln
    return text[-1] if text else ""


class ChildProcess:
    """One command in its own process group, its output lines collected without blocking.

    Args:
        argv: the command.
        env: extra environment variables (added to this process's environment).
        cwd: working folder.

    Attributes:
        log: every line read so far as ``(stream, text)``, stream ``"stdout"`` or ``"stderr"``.
    """

    def __init__(self, argv: Sequence[str], env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None):
        self.argv = list(argv)
        self.env = dict(os.environ, **(env or {}))
        self.cwd = cwd
        self.log: List[Tuple[str, str]] = []
        self._queue: "queue.Queue[Tuple[str, str]]" = queue.Queue()
        self._proc: Optional[subprocess.Popen] = None
        self._readers: List[threading.Thread] = []
        self.cancelled = False

    def start(self) -> "ChildProcess":
        kwargs = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True
        self._proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                      env=self.env, cwd=self.cwd, text=True, encoding="utf-8", errors="replace",
                                      bufsize=1, **kwargs)
        for name, stream in (("stdout", self._proc.stdout), ("stderr", self._proc.stderr)):
            t = threading.Thread(target=self._pump, args=(name, stream), daemon=True)
            t.start()
            self._readers.append(t)
        return self

    def _pump(self, name: str, stream) -> None:
        for line in iter(stream.readline, ""):
            self._queue.put((name, line.rstrip("\r\n")))
        stream.close()

    @property
    def pid(self) -> Optional[int]:
        return None if self._proc is None else self._proc.pid

    def read_lines(self) -> List[Tuple[str, str]]:
        """The lines that arrived since the last call (never blocks)."""
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self.log.extend(out)
        return out

    def poll(self) -> Optional[int]:
        """The exit code once the process has ended and all its output was read, else None."""
        if self._proc is None:
            raise RuntimeError("the process was not started")
        code = self._proc.poll()
        if code is None or any(t.is_alive() for t in self._readers):
            return None
        return code

    def wait(self, timeout: Optional[float] = None) -> int:
        """Block until the process ends (or raise ``subprocess.TimeoutExpired``); returns the exit code."""
        if self._proc is None:
            raise RuntimeError("the process was not started")
        code = self._proc.wait(timeout)
        for t in self._readers:
            t.join(timeout)
        self.read_lines()
        return code

    def output(self, stream: Optional[str] = None) -> List[str]:
        """All lines read so far (of one stream, or both)."""
        return [text for s, text in self.log if stream is None or s == stream]

    def kill_tree(self, grace_s: float = 3.0) -> None:
        """End the process and every process it started: SIGTERM to its group, SIGKILL after ``grace_s``
        (POSIX); ``taskkill /T /F`` (Windows)."""
        if self._proc is None:
            return
        self.cancelled = True
        if sys.platform == "win32":
            if self._proc.poll() is None:
                subprocess.run(["taskkill", "/T", "/F", "/PID", str(self._proc.pid)], capture_output=True,
                               check=False)
            return
        pgid = self._proc.pid                                  # session leader: its pid is the group id
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline:
                if self._proc.poll() is not None and not _group_alive(pgid):
                    return
                time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
