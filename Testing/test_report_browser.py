"""report.html in headless Chromium: renders the Sankey and the overlays offline (no request leaves the file)."""
from __future__ import annotations

import os
import shutil

import pytest
from bundle_helpers import make_tiny_bundle, tiny_exam

from OrthoDiffusionLib import Predictor
from OrthoDiffusionLib.inference.predictor import write_outputs

pytestmark = pytest.mark.browser


def _chromium() -> str:
    path = os.environ.get("ORTHODIFFUSION_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("Chromium is not installed")
    return path


def test_report_renders_offline(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = _chromium()
    bundle = make_tiny_bundle(tmp_path / "tiny.odbundle", segmentation_planes=("sagittal",))
    write_outputs(Predictor(bundle, device="cpu").predict(tiny_exam(0)), tmp_path / "out")
    requests = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((tmp_path / "out" / "report.html").as_uri())
        page.wait_for_selector("#sankey .sankey-node", timeout=20000)
        nodes = page.locator("#sankey .sankey-node").count()
        links = page.locator("#sankey .sankey-link").count()
        images = page.evaluate("Array.from(document.images).map(i => i.naturalWidth > 0)")
        text = page.inner_text("body")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    assert nodes == 3 + 8 and links == 3 * 8
    assert images == [True, True, True]
    assert "Research use only, not for diagnosis" in text
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert (tmp_path / "report.png").stat().st_size > 10_000
