"""Evaluation figures are written as valid files."""
import numpy as np

from OrthoDiffusionLib.model.calibration import reliability_diagram
from OrthoDiffusionLib.training.evaluation.plots import (plot_label_efficiency, plot_reliability, plot_roc_curves,
                                              plot_timestep_block_grid, write_plane_weight_sankey)
from OrthoDiffusionLib.training.diagnosis.search import candidate_grid, top_candidates

PNG = b"\x89PNG\r\n\x1a\n"


def test_figures(tmp_path):
    rng = np.random.default_rng(0)
    y = (rng.random((40, 3)) < 0.5).astype(int)
    p = np.clip(0.5 * y + 0.5 * rng.random(y.shape), 0, 1)
    roc = plot_roc_curves(y, p, ["a", "b", "c"], tmp_path / "figs" / "roc.png", baseline_prob=rng.random(y.shape))
    rel = plot_reliability({"raw": reliability_diagram(p, y)}, tmp_path / "rel.png")
    eff = plot_label_efficiency({"ours": {100: 0.8, 500: 0.85}, "unet": {100: 0.7, 500: 0.8}}, tmp_path / "eff.png")
    scores = {p: {c: float(rng.random()) for c in candidate_grid()} for p in ("sagittal", "coronal", "axial")}
    scores["axial"][(10, "mid_0")] = float("nan")
    grid = plot_timestep_block_grid(scores, tmp_path / "grid.png", top=top_candidates(scores))
    for f in (roc, rel, eff, grid):
        assert f.read_bytes()[:8] == PNG and f.stat().st_size > 5000
    html = write_plane_weight_sankey([{"label": "ACL injury", "sagittal": 0.7, "coronal": 0.2, "axial": 0.1}],
                                     tmp_path / "sankey.html").read_text()
    assert "ACL injury" in html and '"type":"sankey"' in html.replace(" ", "")
