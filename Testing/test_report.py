"""Report building blocks: the PNG encoder, overlays, and the Sankey figure."""
from __future__ import annotations

import io

import numpy as np
import pytest

from OrthoDiffusionLib.inference.overlays import encode_png, overlay_rgb
from OrthoDiffusionLib.inference.report import PLANE_COLORS, sankey_figure


def test_png_round_trip():
    import matplotlib.image as mpimg

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (13, 21, 3), dtype=np.uint8)
    back = mpimg.imread(io.BytesIO(encode_png(rgb)), format="png")
    np.testing.assert_array_equal(np.round(back * 255).astype(np.uint8), rgb)
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4)))


def test_overlay_fills_and_outlines_in_the_structure_colour():
    image = np.tile(np.linspace(0, 1, 20), (20, 1))
    labels = np.zeros((20, 20), np.uint8)
    labels[5:15, 5:15] = 4
    rgb = overlay_rgb(image, labels, {4: (0, 0, 255), 7: (255, 0, 0)})
    assert tuple(rgb[5, 10]) == (0, 0, 255)  # outline: the pure colour
    inside = rgb[10, 10].astype(int)
    assert inside[2] > inside[0] and inside[2] < 255  # blended fill
    assert rgb[0, 0, 0] == rgb[0, 0, 1] == rgb[0, 0, 2]  # grey outside


def _result(weights):
    labels = [{"key": f"k{i}", "name": f"Label {i}", "probability": 0.2, "calibrated_probability": 0.3 + 0.1 * i,
               "uncertainty": 0.0, "plane_weights": dict(zip(("sagittal", "coronal", "axial"), w))}
              for i, w in enumerate(weights)]
    return {"labels": labels}


def test_sankey_links_are_the_plane_weights():
    data = _result([(0.5, 0.3, 0.2), (0.6, 0.4, 0.0)])
    fig = sankey_figure(data)
    trace = fig.data[0]
    assert trace.type == "sankey"
    assert list(trace.node.label[:3]) == ["Sagittal (55%)", "Coronal (35%)", "Axial (10%)"]
    assert trace.node.label[3] == "Label 0 (30%)"
    # the zero weight has no link; every label receives a total of 1
    assert len(trace.link.value) == 5
    for k in (3, 4):
        assert sum(v for t, v in zip(trace.link.target, trace.link.value) if t == k) == pytest.approx(1.0)
    assert trace.node.color[0] == PLANE_COLORS["sagittal"]
    assert trace.node.y[3] < trace.node.y[4]  # labels keep model order, top to bottom


def test_sankey_leaves_out_an_absent_plane():
    trace = sankey_figure(_result([(0.5, 0.5, 0.0), (0.7, 0.3, 0.0)])).data[0]
    assert list(trace.node.label) == ["Sagittal (60%)", "Coronal (40%)", "Label 0 (30%)", "Label 1 (40%)"]
    assert len(trace.node.x) == len(trace.node.label) == 4
    assert set(trace.link.source) == {0, 1} and set(trace.link.target) == {2, 3}
