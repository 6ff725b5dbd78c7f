"""Hostile and careless use: every case ends safely (inputs intact, one line on stderr, exit code 2, nothing left
behind), or runs with a warning that names what is wrong.

The cases, by kind of misuse:
1. ``--out``/``--overwrite`` never delete inputs or foreign files (``demo`` included);
2. the viewer refuses foreign origins and hosts and sessions without the per-launch token; its picker stays inside
   the folders it was started with;
3. two patients/studies in one exam are refused (or accepted with a warning naming both series); a study scan
   ignores this tool's outputs;
4. two runs into one new ``--out``: at most one succeeds;
5. argument and output-folder errors are one line (``--noise-draws 0``, ``--out .``, an unwritable ``--out``, a
   labelmap given as a series);
6. few slices warn; gantry tilt, truncated files, decompression bombs and multi-echo folders end in one clear line;
   SIGTERM cleans up;
7. pydicom's own test files (written by others) all end in a loaded exam or one line (``badVR.dcm`` included).
"""
from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from bundle_helpers import make_tiny_bundle
from io_helpers import code_direction

from OrthoDiffusionLib.cli import main
from OrthoDiffusionLib.errors import OrthoDiffusionError
from OrthoDiffusionLib.io import load_study, read_series, write_dicom_series
from OrthoDiffusionLib.output_folder import MARKER_NAME, claim_output_folder

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CODES = {"sagittal": "PIL", "coronal": "LIP", "axial": "LPS"}


# ------------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("hostile_bundle") / "tiny.odbundle")


def _volume(plane: str, seed: int = 0, slices: int = 20) -> sitk.Image:
    rng = np.random.default_rng(seed)
    arr = rng.normal(300, 60, (slices, 40, 40)).astype(np.float32)
    arr[:, 10:30, 12:28] += 400
    img = sitk.GetImageFromArray(arr)
    img.SetDirection(tuple(code_direction(CODES[plane]).ravel()))
    return img


def _write_plane(folder: Path, plane: str, seed: int = 0, slices: int = 20, patient: Optional[str] = None,
                 study: str = "one-exam") -> List[Path]:
    paths = write_dicom_series(_volume(plane, seed, slices), folder, series_description=f"PD {plane}",
                               uid_seed=f"{folder}", study_uid_seed=study, series_number=seed + 1)
    if patient is not None:
        _set_tag(paths, "PatientID", patient)
    return paths


def _set_tag(paths, tag: str, value) -> None:
    for p in paths:
        ds = pydicom.dcmread(p)
        setattr(ds, tag, value)
        ds.save_as(p)


def _fingerprint(folder: Path) -> Dict[str, str]:
    """{relative path: sha256} of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(argv: List[str], capsys) -> tuple:
    """(exit code, stderr lines) of the ``orthodiffusion`` command run in-process (argparse exits included)."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    return rc, err


def _refused(argv: List[str], capsys, *needles: str) -> str:
    """Run, expect exit code 2 and ONE stderr line (no traceback) containing every needle; returns the line."""
    rc, err = _run(argv, capsys)
    assert rc == 2, (rc, err)
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def _nothing_left(parent: Path, name: str) -> None:
    """Neither ``parent/name`` nor any of its temporary siblings (``.name.partial.*``, ``.name.old.*``, the lock)."""
    assert not (parent / name).exists()
    assert not [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def _predict(bundle: Path, *args: str) -> List[str]:
    return ["predict", *args, "--model", str(bundle), "--device", "cpu", "--progress", "none"]


def _env() -> Dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                PYTHONPATH=os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]))


@pytest.fixture()
def dess_subset(shared_data, tmp_path) -> Path:
    """A copy of 20 contiguous slices of the real DESS (a valid sagittal DICOM series) in ``X/sag``."""
    files = sorted((shared_data / "dess_sagittal_dicom").glob("*.dcm"))
    mid = len(files) // 2
    sag = tmp_path / "X" / "sag"
    sag.mkdir(parents=True)
    for f in files[mid - 10: mid + 10]:
        shutil.copy2(f, sag / f.name)
    return sag


# ---------------------------------------------------------------------------- 1. --overwrite never deletes inputs
def test_1_out_equal_to_holding_or_inside_the_input_is_refused_and_the_input_is_intact(dess_subset, bundle,
                                                                                       capsys):
    x = dess_subset.parent
    before = _fingerprint(x)
    _refused(_predict(bundle, "--sagittal", str(dess_subset), "--out", str(dess_subset), "--overwrite"), capsys,
             "is the input", str(dess_subset))
    _refused(_predict(bundle, "--sagittal", str(dess_subset), "--out", str(x), "--overwrite"), capsys,
             "holds the input")
    _refused(_predict(bundle, "--sagittal", str(dess_subset), "--out", str(dess_subset / "res")), capsys,
             "lies inside the input")
    _refused(_predict(bundle, "--study", str(x), "--out", str(x / "results")), capsys, "lies inside the input")
    assert _fingerprint(x) == before


def test_1_overwrite_replaces_only_an_earlier_result_of_this_tool(dess_subset, bundle, tmp_path, capsys):
    foreign = tmp_path / "my_folder"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    _refused(_predict(bundle, "--sagittal", str(dess_subset), "--out", str(foreign), "--overwrite"), capsys,
             "not written by orthodiffusion", "my_folder")
    assert (foreign / "notes.txt").read_text() == "mine"
    out = tmp_path / "result"
    rc, err = _run(_predict(bundle, "--sagittal", str(dess_subset), "--out", str(out)), capsys)
    assert rc == 0, err
    marker = json.loads((out / MARKER_NAME).read_text())
    assert marker["format"] == "orthodiffusion.output-folder" and marker["tool_version"]
    (out / "my_notes.txt").write_text("added by the user")       # a result folder the user added a file to
    _refused(_predict(bundle, "--sagittal", str(dess_subset), "--out", str(out), "--overwrite"), capsys,
             "did not write", "my_notes.txt")
    assert (out / "my_notes.txt").is_file() and (out / "diagnosis.json").is_file()
    (out / "my_notes.txt").unlink()
    rc, err = _run(_predict(bundle, "--sagittal", str(dess_subset), "--out", str(out), "--overwrite"), capsys)
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X", "my_folder", "result"]


def test_1_demo_never_deletes_other_files_in_its_default_folder(bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    default = tmp_path / "orthodiffusion-demo"
    default.mkdir()
    (default / "holiday.jpg").write_bytes(b"not a result")
    demo = ["demo", "--model", str(bundle), "--matrix", "48", "--device", "cpu", "--progress", "none"]
    _refused(demo, capsys, "orthodiffusion-demo")
    assert (default / "holiday.jpg").read_bytes() == b"not a result"
    shutil.rmtree(default)
    rc, err = _run(demo, capsys)
    assert rc == 0, err
    rc, err = _run(demo, capsys)                                  # its own earlier result is replaced
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orthodiffusion-demo"]


# ---------------------------------------------------------------------------------------- 2. the viewer's doors
async def _hello(ws, secret: str) -> dict:
    """wslink's authentication message; returns the server's reply."""
    import aiohttp
    import msgpack
    from wslink.chunking import UnChunker, generate_chunks

    message = {"wslink": "1.0", "id": "system:c0:0", "method": "wslink.hello", "args": [{"secret": secret}],
               "kwargs": {}}
    for chunk in generate_chunks(msgpack.packb(message), 4096):
        await ws.send_bytes(chunk)
    return await _reply(ws, UnChunker(), aiohttp)


async def _call(ws, method: str, args=()) -> dict:
    import aiohttp
    import msgpack
    from wslink.chunking import UnChunker, generate_chunks

    message = {"wslink": "1.0", "id": "rpc:c0:1", "method": method, "args": list(args), "kwargs": {}}
    for chunk in generate_chunks(msgpack.packb(message), 4096):
        await ws.send_bytes(chunk)
    return await _reply(ws, UnChunker(), aiohttp)


async def _reply(ws, unchunker, aiohttp) -> dict:
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout=20)
        if msg.type != aiohttp.WSMsgType.BINARY:
            raise AssertionError(f"unexpected WebSocket message {msg.type}")
        full = unchunker.process_chunk(msg.data)
        if full is not None:
            return full


async def _probe_viewer(port: int, token: str) -> Dict[str, object]:
    import aiohttp

    ws_url = f"http://127.0.0.1:{port}/ws"
    own = f"http://127.0.0.1:{port}"
    seen: Dict[str, object] = {}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for name, headers in {
            "foreign_origin": {"Origin": "http://evil.example.com"},
            "foreign_host": {"Host": f"evil.example.com:{port}", "Origin": f"http://evil.example.com:{port}"},
        }.items():
            try:
                async with session.ws_connect(ws_url, headers=headers):
                    seen[name] = "open"
            except aiohttp.WSServerHandshakeError as e:
                seen[name] = e.status
        async with session.get(f"{own}/", headers={"Host": f"rebound.example.com:{port}"}) as r:
            seen["page_foreign_host"] = r.status
        async with session.get(f"{own}/", allow_redirects=False) as r:
            seen["page_without_token"] = r.status
        async with session.get(f"{own}/?token=wrong", allow_redirects=False) as r:
            seen["page_wrong_token"] = r.status
        async with session.get(f"{own}/?token={token}", allow_redirects=False) as r:
            seen["page_with_token"] = (r.status, r.headers.get("Location", ""))
        async with session.ws_connect(ws_url, headers={"Origin": own}) as ws:
            seen["default_secret"] = await _hello(ws, "wslink-secret")   # trame's public default
            seen["state_without_token"] = await _call(ws, "trame.state.get")
        async with session.ws_connect(ws_url, headers={"Origin": own}) as ws:
            seen["token"] = await _hello(ws, token)
    return seen


def test_2_viewer_refuses_foreign_origin_foreign_host_and_missing_token(tmp_path):
    from viewer_helpers import require, viewer_process

    require("trame_slicer", "browser viewer extra")
    require("aiohttp", "browser viewer extra")
    home = tmp_path / "home"
    home.mkdir()
    with viewer_process(["--host", "127.0.0.1", "--device", "cpu", "--out", str(home / "results")], home) as match:
        port, token = int(match.group(2)), match.group(3)
        assert len(token) >= 32
        seen = asyncio.run(asyncio.wait_for(_probe_viewer(port, token), timeout=120))
    assert seen["foreign_origin"] == 403 and seen["foreign_host"] == 403 and seen["page_foreign_host"] == 403
    assert seen["page_without_token"] == 403 and seen["page_wrong_token"] == 403
    status, location = seen["page_with_token"]
    assert status == 302 and location.startswith("index.html?") and f"secret={token}" in location
    assert "error" in seen["default_secret"] and "result" not in seen["default_secret"]
    assert "error" in seen["state_without_token"]              # no state (exam paths) for an unauthenticated client
    assert "Unauthorized" in seen["state_without_token"]["error"]["message"]
    assert str(seen["token"]["result"]["clientID"]).startswith("c")


def test_2_folder_picker_stays_inside_the_folders_it_was_started_with(tmp_path):
    from viewer_helpers import require

    require("trame_slicer", "browser viewer extra")
    from OrthoDiffusionLib.viewer.app import ViewerApp
    from OrthoDiffusionLib.viewer.security import ViewerGuard

    root = tmp_path / "exams"
    (root / "knee1").mkdir(parents=True)
    (tmp_path / "private").mkdir()
    guard = ViewerGuard([root])
    assert guard.allows_folder(root / "knee1") and not guard.allows_folder(tmp_path / "private")
    (root / "escape").symlink_to(tmp_path / "private")
    assert not guard.allows_folder(root / "escape")              # symbolic links are resolved first
    assert guard.origin_allowed(None, "127.0.0.1:8000") and not guard.origin_allowed("null", "127.0.0.1:8000")
    assert guard.origin_allowed("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert not guard.origin_allowed("http://localhost:3000", "localhost:8000")   # another local site
    assert guard.host_allowed("localhost:9000") and not guard.host_allowed("rebound.example.com:8000")

    app = ViewerApp(server="hostile-picker-test", sample_matrix=48, start_folder=root, folder_roots=[root],
                    out_root=tmp_path / "results")
    try:
        app.picker_show(str(root))
        assert [e["name"] for e in app.state.picker_entries] == ["escape", "knee1"]
        app.picker_up()                                            # never above the root
        assert app.state.picker_path == str(root.resolve())
        app.picker_show("/")
        assert "outside the folders" in app.state.picker_error
        assert app.state.picker_path == str(root.resolve())
        app.state.picker_path = str(tmp_path / "private")          # what a client could set
        app.picker_open_current()
        assert "outside the folders" in app.state.picker_error and not app.state.busy
    finally:
        app.task.shutdown()


# ------------------------------------------------------------------------------------ 3. one patient per exam
def test_3_two_patients_in_one_study_are_refused_naming_both(bundle, tmp_path, capsys):
    study = tmp_path / "study"
    _write_plane(study / "sag", "sagittal", 0, patient="PATIENT-A")
    _write_plane(study / "cor", "coronal", 1, patient="PATIENT-B")
    _write_plane(study / "ax", "axial", 2, patient="PATIENT-B")
    before = _fingerprint(study)
    out = tmp_path / "out"
    line = _refused(_predict(bundle, "--study", str(study), "--out", str(out)), capsys,
                    "PATIENT-A", "PATIENT-B", "sagittal", "coronal", "--allow-mixed-patients")
    assert "PatientID" in line and str(study / "cor") in line
    _nothing_left(tmp_path, "out")
    rc, err = _run(_predict(bundle, "--study", str(study), "--out", str(out), "--allow-mixed-patients"), capsys)
    assert rc == 0, err
    warnings = json.loads((out / "diagnosis.json").read_text())["warnings"]
    mixed = [w for w in warnings if "PatientID" in w]
    assert mixed and str(study / "sag") in mixed[0] and str(study / "cor") in mixed[0]
    assert "PATIENT-A" not in json.dumps(json.loads((out / "diagnosis.json").read_text()))  # identifiers stay out
    assert _fingerprint(study) == before


def test_3_other_study_and_other_birth_date_are_refused(tmp_path):
    study = tmp_path / "study"
    _write_plane(study / "sag", "sagittal", 0, study="exam-1")
    _write_plane(study / "cor", "coronal", 1, study="exam-2")
    with pytest.raises(OrthoDiffusionError, match="StudyInstanceUID"):
        load_study(study)
    assert load_study(study, allow_mixed_patients=True).planes_present() == ["sagittal", "coronal"]
    other = tmp_path / "other"
    _set_tag(_write_plane(other / "sag", "sagittal", 0), "PatientBirthDate", "19700101")
    _set_tag(_write_plane(other / "cor", "coronal", 1), "PatientBirthDate", "19800202")
    with pytest.raises(OrthoDiffusionError, match="PatientBirthDate '19700101' vs '19800202'"):
        load_study(other)


def test_3_one_series_with_slices_of_two_patients_is_refused_naming_both_files(bundle, tmp_path, capsys):
    paths = _write_plane(tmp_path / "sag", "sagittal", 0, patient="PATIENT-A")
    _set_tag(paths[5:], "PatientID", "PATIENT-B")
    line = _refused(_predict(bundle, "--sagittal", str(tmp_path / "sag"), "--out", str(tmp_path / "out")), capsys,
                    "PATIENT-A", "PATIENT-B", paths[0].name, paths[5].name)
    assert "slices of one series" in line
    _nothing_left(tmp_path, "out")


def test_3_study_scan_ignores_the_tools_own_outputs(bundle, tmp_path, capsys):
    study = tmp_path / "study"
    _write_plane(study / "sag", "sagittal", 0)
    rc, err = _run(_predict(bundle, "--study", str(study), "--out", str(study / "results")), capsys)
    assert rc == 2                                                  # not inside the study
    out = tmp_path / "out"
    assert _run(_predict(bundle, "--study", str(study), "--out", str(out)), capsys)[0] == 0
    shutil.copytree(out, study / "old_result")                     # a result folder (marker) in the study
    shutil.copy(out / "labelmap_sagittal.nii.gz", study / "labelmap_sagittal.nii.gz")  # and a loose labelmap
    exam = load_study(study)
    assert exam.planes_present() == ["sagittal"] and exam.sagittal.source == str(study / "sag")
    assert not any("labelmap" in c for c in exam.choices if not c.startswith("ignored"))
    only_outputs = tmp_path / "only_outputs"
    only_outputs.mkdir()
    shutil.copy(out / "labelmap_sagittal.nii.gz", only_outputs / "labelmap_sagittal.nii.gz")
    _refused(_predict(bundle, "--study", str(only_outputs), "--out", str(tmp_path / "o2")), capsys, "only_outputs")
    _refused(_predict(bundle, "--study", str(out), "--out", str(tmp_path / "o3")), capsys, "result folder")


# ----------------------------------------------------------------------------------- 4. concurrent runs, one wins
def test_4_two_runs_into_one_new_out_cannot_both_succeed(bundle, tmp_path):
    _write_plane(tmp_path / "sag", "sagittal", 0)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "OrthoDiffusionLib", *_predict(bundle, "--sagittal", str(tmp_path / "sag"),
                                                                "--out", str(out))]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    err = [e.strip().splitlines() for rc, e in results if rc == 2][0]
    assert len(err) == 1 and ("another orthodiffusion run" in err[0] or "not empty" in err[0]), err
    assert (out / "diagnosis.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "sag"]
    # the lock itself: a second claim while the first holds it is refused at once
    with claim_output_folder(tmp_path / "new") as first:
        with pytest.raises(OrthoDiffusionError, match="another orthodiffusion run"):
            claim_output_folder(tmp_path / "new")
        assert first.partial.is_dir()
    _nothing_left(tmp_path, "new")


# ------------------------------------------------------------------------------- 5. one line instead of tracebacks
def test_5_noise_draws_below_one_is_one_line(bundle, tmp_path, capsys):
    _write_plane(tmp_path / "sag", "sagittal", 0)
    for k in ("0", "-1"):
        _refused(_predict(bundle, "--sagittal", str(tmp_path / "sag"), "--out", str(tmp_path / "out"),
                          "--noise-draws", k), capsys, "--noise-draws", "at least 1")
    _nothing_left(tmp_path, "out")


def test_5_out_dot_and_unwritable_out_are_one_line_before_any_work(dess_subset, bundle, tmp_path, monkeypatch,
                                                                   capsys):
    x = dess_subset.parent
    before = _fingerprint(x)
    monkeypatch.chdir(x)
    _refused(_predict(bundle, "--sagittal", "sag", "--out", ".", "--overwrite"), capsys, "current folder")
    _refused(_predict(bundle, "--sagittal", "sag", "--out", ".."), capsys, "current folder")
    assert _fingerprint(x) == before
    assert not [p.name for p in tmp_path.iterdir() if ".old." in p.name or ".partial." in p.name]
    assert sorted(p.name for p in x.iterdir()) == ["sag"]
    if os.geteuid() == 0:       # root writes anywhere a normal file system allows: use one that refuses it
        unwritable = Path("/sys/orthodiffusion-hostile-test")
        parent = None
    else:
        parent = tmp_path / "read_only"
        parent.mkdir()
        parent.chmod(0o555)
        unwritable = parent / "out"
    try:
        start = time.perf_counter()
        _refused(_predict(bundle, "--sagittal", str(dess_subset), "--out", str(unwritable)), capsys,
                 str(unwritable), "cannot")
        assert time.perf_counter() - start < 30                       # refused before the model ran
        assert not unwritable.exists()
        if parent is not None:
            assert list(parent.iterdir()) == []
    finally:
        if parent is not None:
            parent.chmod(0o755)


def test_5_a_labelmap_given_as_a_series_is_one_line(bundle, tmp_path, capsys):
    _write_plane(tmp_path / "sag", "sagittal", 0)
    out = tmp_path / "out"
    assert _run(_predict(bundle, "--sagittal", str(tmp_path / "sag"), "--out", str(out)), capsys)[0] == 0
    labelmap = out / "labelmap_sagittal.nii.gz"
    _refused(_predict(bundle, "--sagittal", str(labelmap), "--out", str(tmp_path / "o2")), capsys,
             "labelmap_sagittal.nii.gz", "not an MR series")
    renamed = tmp_path / "my_segmentation.nii.gz"                 # the same label map under another name
    shutil.copy(labelmap, renamed)
    _refused(_predict(bundle, "--sagittal", str(renamed), "--out", str(tmp_path / "o2")), capsys,
             "my_segmentation.nii.gz", "label map")
    _nothing_left(tmp_path, "o2")


# --------------------------------------------------------------------------------------------- 6. odd series
def test_6_a_two_slice_series_warns_in_json_report_and_terminal(bundle, tmp_path, capsys):
    _write_plane(tmp_path / "sag", "sagittal", 0, slices=2)
    out = tmp_path / "out"
    assert main(_predict(bundle, "--sagittal", str(tmp_path / "sag"), "--out", str(out))) == 0
    terminal = capsys.readouterr().out
    warnings = json.loads((out / "diagnosis.json").read_text())["warnings"]
    assert any("has 2 slices" in w and "needs 16" in w for w in warnings)
    assert any("covers only 2 mm" in w for w in warnings)
    assert "has 2 slices" in (out / "report.html").read_text()
    assert "note: the sagittal series" in terminal and "has 2 slices" in terminal


def test_6_a_gantry_tilted_series_is_refused(bundle, tmp_path, capsys):
    paths = _write_plane(tmp_path / "tilted", "sagittal", 0)
    for k, p in enumerate(paths):                                   # slice k moves 2 mm anterior per slice
        ds = pydicom.dcmread(p)
        pos = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [f"{pos[0]:.4f}", f"{pos[1] - 2.0 * k:.4f}", f"{pos[2]:.4f}"]
        ds.save_as(p)
    _refused(_predict(bundle, "--sagittal", str(tmp_path / "tilted"), "--out", str(tmp_path / "out")), capsys,
             "tilted", "gantry tilt")
    _nothing_left(tmp_path, "out")


def test_6_sigterm_prints_a_message(bundle, tmp_path):
    _write_plane(tmp_path / "sag", "sagittal", 0)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "OrthoDiffusionLib", *_predict(bundle, "--sagittal", str(tmp_path / "sag"),
                                                                "--out", str(out), "--noise-draws", "50")]
    cmd[cmd.index("none")] = "json"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        for line in proc.stderr:
            if line.startswith("ORTHODIFFUSION-PROGRESS"):
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("ORTHODIFFUSION-PROGRESS")]
    assert proc.returncode == 143
    assert len(lines) == 1 and "SIGTERM" in lines[0] and "nothing was written" in lines[0], lines
    _nothing_left(tmp_path, "out")


def test_6_a_truncated_file_inside_a_study_is_named(bundle, tmp_path, capsys):
    paths = _write_plane(tmp_path / "study" / "sag", "sagittal", 0)
    data = paths[7].read_bytes()
    paths[7].write_bytes(data[: len(data) - 500])                   # pixel data cut short
    _refused(_predict(bundle, "--study", str(tmp_path / "study"), "--out", str(tmp_path / "out")), capsys,
             paths[7].name, "truncated")
    _nothing_left(tmp_path, "out")
    # with other planes present the exam runs, and the result names the skipped file
    _write_plane(tmp_path / "study" / "cor", "coronal", 1)
    out = tmp_path / "out"
    rc, err = _run(_predict(bundle, "--study", str(tmp_path / "study"), "--out", str(out)), capsys)
    assert rc == 0, err
    assert any(paths[7].name in w for w in json.loads((out / "diagnosis.json").read_text())["warnings"])


def _nifti_header(dims, datatype=16, bitpix=32) -> bytes:
    """A little-endian NIfTI-1 header (348 bytes + 4-byte extension flag) for a volume of ``dims``."""
    hdr = bytearray(352)
    struct.pack_into("<i", hdr, 0, 348)
    dim = [len(dims), *dims] + [1] * (7 - len(dims))
    struct.pack_into("<8h", hdr, 40, *dim)
    struct.pack_into("<h", hdr, 70, datatype)
    struct.pack_into("<h", hdr, 72, bitpix)
    struct.pack_into("<8f", hdr, 76, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<f", hdr, 108, 352.0)
    struct.pack_into("<f", hdr, 112, 1.0)          # scl_slope
    struct.pack_into("<h", hdr, 252, 1)            # qform_code
    hdr[344:348] = b"n+1\x00"
    return bytes(hdr)


def test_6_a_gzip_nifti_that_would_inflate_to_8_gib_is_refused_from_its_header(bundle, tmp_path, capsys):
    bomb = tmp_path / "bomb.nii.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as fh:
        fh.write(_nifti_header((2048, 2048, 512)))                   # 2048 x 2048 x 512 float32 = 8 GiB
        fh.write(bytes(2**20))                                       # (only 1 MiB of it is really there)
    assert bomb.stat().st_size < 100_000
    _refused(_predict(bundle, "--sagittal", str(bomb), "--out", str(tmp_path / "out")), capsys,
             "bomb.nii.gz", "8.0 GiB", "limit")
    _nothing_left(tmp_path, "out")


def test_6_multi_echo_folder_names_the_flags_and_they_work(shared_data, bundle, tmp_path, capsys):
    mese = shared_data / "mese_t2_sagittal_dicom"
    line = _refused(_predict(bundle, "--sagittal", str(mese), "--out", str(tmp_path / "out")), capsys,
                    "--series-uid", "--echo", "echo 8")
    assert "series_uid=" in line                                   # the library names too, after the flags
    _nothing_left(tmp_path, "out")
    rc, err = _run(_predict(bundle, "--sagittal", str(mese), "--echo", "3", "--out", str(tmp_path / "out"),
                            "--no-diagnosis"), capsys)
    assert rc == 0, err
    source = json.loads((tmp_path / "out" / "diagnosis.json").read_text())["exam"]["planes"]["sagittal"]
    assert source["echo_number"] == 3
    assert main(["inspect", str(mese), "--echo", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["series"]) == 1 and "echo 2" in report["series"][0]["label"]
    assert main(["inspect", str(mese), "--series-uid", "8", "--echo", "5", "--json"]) == 0
    assert "echo 5" in json.loads(capsys.readouterr().out)["series"][0]["label"]
    _refused(["inspect", str(mese), "--echo", "0"], capsys, "--echo")


def test_6_series_uid_chooses_in_a_folder_with_several_series(bundle, tmp_path, capsys):
    folder = tmp_path / "two"
    _write_plane(folder / "a", "sagittal", 0)
    _write_plane(folder / "b", "sagittal", 6)
    _refused(_predict(bundle, "--sagittal", str(folder), "--out", str(tmp_path / "out")), capsys,
             "--series-uid")
    rc, err = _run(_predict(bundle, "--sagittal", str(folder), "--series-uid", "7", "--out", str(tmp_path / "out"),
                            "--no-diagnosis"), capsys)
    assert rc == 0, err
    assert read_series(folder, series_uid=["7", "99"]).meta["series_number"] == 7


# -------------------------------------------------------------------------------------- 7. pydicom's corpus
def _pydicom_corpus() -> List[Path]:
    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith((".py", ".txt", ".md")))


def _bad_vr_file(folder: Path) -> Path:
    """A DICOM file like pydicom's ``badVR.dcm``: a header value that does not parse (IS ``1A``)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, "MR"
    ds.Rows, ds.Columns = 4, 4
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.ImagePositionPatient = [0, 0, 0]
    ds.PixelSpacing = [1, 1]
    ds.add_new(0x00280008, "IS", None)                               # NumberOfFrames, filled in raw below
    path = folder / "constructed_badVR.dcm"
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    tag = struct.pack("<HH", 0x0028, 0x0008) + b"IS" + struct.pack("<H", 0)
    assert tag in raw
    path.write_bytes(raw.replace(tag, struct.pack("<HH", 0x0028, 0x0008) + b"IS" + struct.pack("<H", 2) + b"1A"))
    return path


def test_7_pydicom_corpus_each_file_loads_or_ends_in_one_line():
    from OrthoDiffusionLib.inference.predictor import load_exam

    files = _pydicom_corpus()
    assert files, "pydicom ships its test files"
    outcomes = {}
    for f in files:
        try:
            load_exam(sagittal=f, anatomy=None)
            outcomes[f.name] = "loaded"
        except OrthoDiffusionError as e:
            assert "\n" not in str(e)
            outcomes[f.name] = "refused"
    if "badVR.dcm" in outcomes:
        assert outcomes["badVR.dcm"] == "refused"


def test_7_bad_vr_ends_in_one_line_naming_the_file(bundle, tmp_path, capsys):
    from pydicom.data import get_testdata_file

    candidates = [_bad_vr_file(tmp_path)]
    shipped = get_testdata_file("badVR.dcm")
    if shipped:
        candidates.append(Path(shipped))
    for path in candidates:
        _refused(_predict(bundle, "--sagittal", str(path), "--out", str(tmp_path / "out")), capsys, path.name,
                 "invalid literal")
        _nothing_left(tmp_path, "out")
