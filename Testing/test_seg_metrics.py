"""Dice and HD95 per structure, cross-checked against MONAI; empty-structure conventions; tables."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from OrthoDiffusionLib import labels
from OrthoDiffusionLib.segmentation.metrics import (dice_per_structure, dice_score, evaluate_case, format_table,
                                           hausdorff95, hd95_per_structure, summarize, summarize_cases)

monai_metrics = pytest.importorskip("monai.metrics")


def _blobs(rng, shape=(16, 32, 32), n_labels=11, p=0.998, it=2):
    lab = np.zeros(shape, np.uint8)
    for v in range(1, n_labels + 1):
        lab[ndimage.binary_dilation(rng.random(shape) > p, iterations=it)] = v
    return lab


def _t(mask):
    return torch.from_numpy(np.asarray(mask, np.float32)[None, None])


def test_dice_and_hd95_match_monai_on_random_shapes():
    rng = np.random.default_rng(0)
    spacing = (1.5, 0.4, 0.6)
    checked = 0
    for _ in range(3):
        pred, gt = _blobs(rng), _blobs(rng)
        dice = dice_per_structure(pred, gt)
        hd = hd95_per_structure(pred, gt, spacing)
        for s in labels.knee_structures():
            p, g = pred == s.value, gt == s.value
            if not p.any() or not g.any():
                continue
            m = monai_metrics.DiceMetric(include_background=True, reduction="none")
            m(_t(p), _t(g))
            assert dice[s.key] == pytest.approx(float(m.aggregate()), abs=1e-6)
            ref = monai_metrics.compute_hausdorff_distance(_t(p), _t(g), include_background=True,
                                                           percentile=95, spacing=list(spacing))
            assert hd[s.key] == pytest.approx(float(ref), rel=1e-5, abs=1e-5)
            checked += 1
    assert checked >= 20


def test_hd95_known_geometry_and_spacing():
    a = np.zeros((20, 20, 20), bool)
    b = np.zeros_like(a)
    a[5:10, 5:10, 5:10] = True
    b[5:10, 5:10, 8:13] = True  # the same cube shifted by 3 voxels along x
    assert hausdorff95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(3.0)
    assert hausdorff95(a, b, (1.0, 1.0, 0.5)) == pytest.approx(1.5)
    assert hausdorff95(a, a, (2.0, 1.0, 1.0)) == 0.0
    assert dice_score(a, b) == pytest.approx(2 * 50 / 250)


def test_empty_structure_conventions():
    a = np.zeros((8, 8, 8), bool)
    b = np.zeros_like(a)
    b[2:4, 2:4, 2:4] = True
    assert math.isnan(dice_score(a, a))
    assert dice_score(a, b) == 0.0 and dice_score(b, a) == 0.0
    assert math.isnan(hausdorff95(a, b, (1, 1, 1))) and math.isnan(hausdorff95(b, a, (1, 1, 1)))
    res = evaluate_case(b.astype(np.uint8), b.astype(np.uint8), (1, 1, 1), plane="coronal")
    assert len(res["dice"]) == 9 and res["dice"]["femur"] == 1.0 and math.isnan(res["dice"]["tibia"])
    with pytest.raises(ValueError, match="shape"):
        dice_score(a, b[:4])


def test_summary_and_table():
    s = summarize([0.8, 0.9, float("nan"), 1.0])
    assert s.n == 3 and s.mean == pytest.approx(0.9) and s.sd == pytest.approx(0.1)
    cases = [{"femur": 0.9, "tibia": 0.7}, {"femur": 0.8, "tibia": float("nan")}]
    summ = summarize_cases(cases)
    assert summ["femur"].mean == pytest.approx(0.85) and summ["tibia"].n == 1
    assert summ["mean"].mean == pytest.approx((0.8 + 0.8) / 2)
    table = format_table({"Ours": summ}, plane="sagittal", scale=100)
    lines = table.splitlines()
    assert lines[0] == "| Structure | Ours |" and len(lines) == 2 + 11 + 1
    assert "| Femur | 85.0 ± 7.1 |" in lines and "| Patella | n/a |" in lines
    assert lines[-1] == "| Mean | 80.0 ± 0.0 |"
