"""End to end: ``orthodiffusion view`` in a subprocess on a free loopback port, driven by Playwright + system Chromium.

1. Open a folder with no MRI through the folder picker: the library's error shows in a banner; the app then opens a
   real study folder.
2. Open the simulated sample, press Run (the shipped demo model), wait for the result: the 4 views, the 8 diagnosis rows
   and the Sankey are on the page, the result folder is written; a screenshot is saved (and copied to
   ``$ORTHODIFFUSION_VIEWER_SCREENSHOT`` when set). The viewer runs the shipped demo model (``ORTHODIFFUSION_VIEWER_MODEL`` names
   another bundle); docs/images/viewer.png is made with
   ``ORTHODIFFUSION_VIEWER_SCREENSHOT=$PWD/docs/images/viewer.png python -m pytest Testing/test_viewer_e2e.py -k run``.

Skips outside CI when Chromium / Playwright / the viewer extra are missing; fails in CI (``CI`` set).
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from viewer_helpers import require, viewer_process, write_study

pytestmark = pytest.mark.browser


def chromium_path() -> str:
    path = os.environ.get("ORTHODIFFUSION_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI (.ci/run installs it with apt-get)")
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    return path


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    sync_api = require("playwright.sync_api", "browser tests")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    """The viewer process (the shipped demo model, simulated sample); yields (url, home folder)."""
    require("trame_slicer", "browser viewer extra")
    from OrthoDiffusionLib.bundle.registry import default_model

    home = tmp_path_factory.mktemp("viewer_home")
    # ORTHODIFFUSION_VIEWER_MODEL: another bundle instead of the shipped demo model
    bundle = os.environ.get("ORTHODIFFUSION_VIEWER_MODEL") or str(default_model().file)
    with viewer_process(["--model", str(bundle), "--device", "cpu", "--sample-matrix", "256", "--out",
                         str(home / "results")], home) as match:
        yield match.group(1), home


def _open_page(browser, url):
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(url)
    page.wait_for_selector(".od-view-label", timeout=240_000)  # a busy CI machine can be slow to serve
    return page


def _pick_folder(page, folder: Path) -> None:
    if not page.is_visible("#picker-path"):  # the picker is open at start when the viewer was given nothing
        page.click("#btn-open")
    page.fill("#picker-path", str(folder))
    page.click("#picker-open")


def _close_picker(page) -> None:
    if page.is_visible("#picker-close"):
        page.click("#picker-close")
        page.wait_for_selector("#picker-path", state="hidden")


def test_folder_without_mri_shows_the_library_error_and_the_app_keeps_working(browser, viewer, tmp_path):
    from OrthoDiffusionLib.errors import NoDicomError
    from OrthoDiffusionLib.io import load_study

    url, home = viewer
    # the picker browses only the folders the viewer was started with: here its working folder (home)
    empty = home / "no_mri"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(NoDicomError) as expected:
        load_study(empty)
    page = _open_page(browser, url)
    try:
        _pick_folder(page, empty)
        banner = page.wait_for_selector("#error-banner", timeout=60_000)
        assert str(expected.value) in banner.inner_text()
        # still working: a real study folder opens and the banner goes away
        study = home / "knee_study"
        write_study(study, seed=5, matrix=48)
        _pick_folder(page, study)
        page.wait_for_function("document.querySelector('#exam-label').innerText.includes('knee_study')",
                               timeout=90_000)
        assert "sagittal, coronal, axial" in page.inner_text("#exam-label")
        assert page.query_selector("#error-banner") is None
    finally:
        page.close()


def test_run_on_the_simulated_sample_shows_views_labels_and_sankey(browser, viewer, tmp_path):
    url, home = viewer
    page = _open_page(browser, url)
    try:
        _close_picker(page)
        page.click("#btn-sample")
        page.wait_for_function("document.querySelector('#exam-label').innerText.includes('simulated sample')",
                               timeout=180_000)
        page.wait_for_selector("#btn-run:not([disabled])", timeout=30_000)
        page.click("#btn-run")
        page.wait_for_function("document.querySelectorAll('.diagnosis-row').length === 8", timeout=600_000)
        page.wait_for_function("document.querySelector('#progress-stage').innerText.includes('Run: done')",
                               timeout=60_000)
        assert page.query_selector("#error-banner") is None
        # the four views, each with its rendered image
        labels = [e.inner_text() for e in page.query_selector_all(".od-view-label")]
        assert labels == ["Sagittal", "Coronal", "Axial", "3D"]
        assert len(page.query_selector_all(".layout-grid-item img")) == 4
        # 8 label rows with a probability each
        texts = [e.inner_text() for e in page.query_selector_all(".diagnosis-row .diagnosis-probability")]
        assert len(texts) == 8 and all(re.fullmatch(r"\d+% ± (\d+\.\d|< 0\.1)%", t) for t in texts), texts
        assert not any(t.endswith("± 0.0%") for t in texts), texts  # a measured spread never reads as nothing
        # the Sankey: one node per plane the default model diagnoses from (sagittal, coronal) + 8 label nodes
        from OrthoDiffusionLib.bundle.format import load_bundle
        from OrthoDiffusionLib.bundle.registry import resolve_model

        nodes = len(load_bundle(resolve_model(None)).meta["diagnosis"]["planes"]) + 8
        page.wait_for_function(f"document.querySelectorAll('#sankey .sankey-node').length === {nodes}",
                               timeout=30_000)
        # structures listed for toggling; unticking one reaches the server (which sends back the updated rows)
        rows = page.query_selector_all(".structure-row")
        assert len(rows) >= 9
        rows[0].query_selector("input[type=checkbox]").click()
        page.wait_for_function("window.trame.state.get('structures')[0].visible === false", timeout=30_000)
        rows[0].query_selector("input[type=checkbox]").click()
        page.wait_for_function("window.trame.state.get('structures')[0].visible === true", timeout=30_000)
        # the result folder written
        result_dir = page.inner_text("#result-dir").split("Results:", 1)[1].strip()
        assert Path(result_dir).parent == home / "results"
        assert (Path(result_dir) / "diagnosis.json").is_file()
        assert (Path(result_dir) / "segmentation_sagittal.seg.nrrd").is_file()
        time.sleep(2)  # let the views stream their last frame
        shot = tmp_path / "viewer.png"
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 50_000
        if os.environ.get("ORTHODIFFUSION_VIEWER_SCREENSHOT"):
            shutil.copy(shot, os.environ["ORTHODIFFUSION_VIEWER_SCREENSHOT"])
    finally:
        page.close()
