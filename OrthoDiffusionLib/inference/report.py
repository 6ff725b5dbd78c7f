"""The human-readable result: the plane -> label Sankey figure and the self-contained ``report.html``.

:func:`sankey_figure` is THE Sankey of OrthoDiffusion (the report, the browser viewer and the Slicer module all call
it): nodes are the three planes and the diagnosis labels; a link plane -> label has the plane weight of that plane for
that label as its value (MPAE weights, or for a tissue-pooled diagnosis each plane's share of the label's evidence), so every label node has total 1 and a plane node's thickness is proportional to its mean
weight over the labels. Label nodes show the calibrated probability.

:func:`write_report` writes ONE HTML file with everything inlined (plotly's JavaScript, the overlay PNGs as base64
data URIs, the styles): no network access is needed to open it.
"""
from __future__ import annotations

import base64
import html
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Union

from ..labels import PLANES
from ..model.uncertainty import spread_percent
from .result_folder import DISCLAIMER

__all__ = ["PLANE_COLORS", "sankey_figure", "report_html", "write_report"]

PathLike = Union[str, os.PathLike]
#: Colour of each plane in the Sankey and the report (sagittal blue, coronal orange, axial green).
PLANE_COLORS: Dict[str, str] = {"sagittal": "#1f77b4", "coronal": "#ff7f0e", "axial": "#2ca02c"}


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def sankey_figure(result_json: Mapping[str, Any]):
    """A ``plotly.graph_objects.Figure``: Sankey of plane -> label weights of one prediction (``diagnosis.json``
    content, i.e. :meth:`PredictionResult.to_json`). Nodes: the planes with any weight (an absent plane has weight 0
    everywhere and is left out), stacked by mean weight, then the labels in model order, top to bottom."""
    import plotly.graph_objects as go

    labels = list(result_json.get("labels") or [])
    means = {p: (sum(lb["plane_weights"].get(p, 0.0) for lb in labels) / len(labels) if labels else 0.0)
             for p in PLANES}
    planes = [p for p in PLANES if means[p] > 0]
    total = sum(means[p] for p in planes) or 1.0
    names, colors, xs, ys = [], [], [], []
    acc = 0.0
    for p in planes:  # plotly drops nodes without links, so only linked nodes are listed (positions stay aligned)
        names.append(f"{p.capitalize()} ({100 * means[p]:.0f}%)")
        colors.append(PLANE_COLORS[p])
        xs.append(0.001)
        ys.append(0.03 + 0.94 * (acc + means[p] / 2) / total)
        acc += means[p]
    for k, lb in enumerate(labels):
        prob = float(lb.get("calibrated_probability", lb.get("probability", 0.0)))
        names.append(f"{lb['name']} ({100 * prob:.0f}%)")
        colors.append(_rgba("#d62728", 0.25 + 0.75 * prob))
        xs.append(0.999)
        ys.append(0.03 + 0.94 * (k + 0.5) / len(labels))
    source, target, value, link_colors, hover = [], [], [], [], []
    for k, lb in enumerate(labels):
        for i, p in enumerate(planes):
            w = float(lb["plane_weights"].get(p, 0.0))
            if w <= 0:
                continue
            source.append(i)
            target.append(len(planes) + k)
            value.append(w)
            link_colors.append(_rgba(PLANE_COLORS[p], 0.45))
            hover.append(f"{p} -> {lb['name']}: weight {w:.2f}")
    fig = go.Figure(go.Sankey(
        arrangement="fixed",
        node=dict(label=names, color=colors, pad=14, thickness=18, line=dict(color="#444", width=0.5), x=xs, y=ys),
        link=dict(source=source, target=target, value=value, color=link_colors, customdata=hover,
                  hovertemplate="%{customdata}<extra></extra>"),
    ))
    how = "share of the evidence" if result_json.get("fused_by") == "tissue-pooled" else "MPAE weights"
    fig.update_layout(title=dict(text=f"Plane contribution to each diagnosis ({how})", x=0.5),
                      font=dict(size=13), margin=dict(l=10, r=10, t=50, b=10), height=460)
    return fig


# ------------------------------------------------------------------------------------------------ the report
_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:1180px;margin:0 auto;padding:18px 24px 40px}
h1{font-size:24px;margin:8px 0 4px} h2{font-size:18px;margin:26px 0 8px;border-bottom:1px solid #d8dce3;padding-bottom:4px}
.banner{background:#b3261e;color:#fff;font-weight:600;padding:10px 14px;border-radius:6px;margin:10px 0}
.synthetic{background:#7a4f01}
.warn{background:#fff4d6;border:1px solid #e0c060;padding:8px 12px;border-radius:6px;margin:6px 0}
table{border-collapse:collapse;background:#fff;width:100%;font-size:14px}
th,td{border-bottom:1px solid #e3e6eb;padding:6px 8px;text-align:left;vertical-align:middle}
th{background:#eef0f4;font-weight:600} td.num{text-align:right;font-variant-numeric:tabular-nums}
table.compact{width:auto;min-width:460px}
.pbar{display:flex;align-items:center;gap:10px}
.bar{background:#e9ecf1;border-radius:4px;height:14px;width:240px}
.bar>span{display:block;height:14px;border-radius:4px;background:#d62728}
.pbar b{min-width:52px;text-align:right;font-variant-numeric:tabular-nums}
.pw{display:inline-block;height:10px;margin-right:1px}
.card{background:#fff;border:1px solid #e3e6eb;border-radius:8px;padding:8px;margin-top:6px}
.overlays{display:flex;flex-wrap:wrap;gap:14px}
.overlays figure{margin:0;background:#fff;border:1px solid #e3e6eb;border-radius:8px;padding:8px}
.overlays img{height:300px;image-rendering:auto;display:block;background:#000}
figcaption{font-size:13px;margin-top:4px;color:#4a5160}
.legend span{display:inline-block;margin:2px 10px 2px 0;font-size:13px}
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px;border-radius:2px}
.muted{color:#5b6270;font-size:13px} code{font-size:12px;word-break:break-all}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.1f}%"


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{float(v):.{digits}f}"


def _spread(label: Mapping[str, Any], noise_draws: int) -> str:
    """The uncertainty cell: the sd over noise draws, or a dash with one draw (which measures no spread)."""
    if noise_draws < 2:
        return "<span title='one noise draw: no uncertainty measured'>&ndash;</span>"
    return f"&plusmn; {_e(spread_percent(label['uncertainty'], 2))}"


def _labels_table(labels: List[Mapping[str, Any]], noise_draws: int = 1) -> str:
    if not labels:
        return "<p class='muted'>No diagnosis (the model has no diagnosis head, or diagnosis was switched off).</p>"
    rows = []
    for lb in labels:
        cal = float(lb["calibrated_probability"])
        shares = "".join(f"<span class='pw' title='{p}: {lb['plane_weights'].get(p, 0):.2f}' style='width:"
                         f"{90 * lb['plane_weights'].get(p, 0):.1f}px;background:{PLANE_COLORS[p]}'></span>"
                         for p in PLANES)
        rows.append(f"<tr><td>{_e(lb['name'])}</td><td><div class='pbar'><div class='bar'><span style='width:"
                    f"{100 * cal:.1f}%'></span></div><b>{_pct(cal)}</b></div></td>"
                    f"<td class='num'>{_spread(lb, noise_draws)}</td><td class='num'>{_pct(lb['probability'])}"
                    f"</td><td>{shares}</td></tr>")
    return ("<table><tr><th>Abnormality</th><th>Calibrated probability</th><th>Uncertainty (sd)</th>"
            "<th>Uncalibrated</th><th>Plane weights (sag / cor / ax)</th></tr>" + "".join(rows) + "</table>")


def _exam_table(data: Mapping[str, Any]) -> str:
    exam = data.get("exam") or {}
    rows = []
    for plane in PLANES:
        s = (exam.get("planes") or {}).get(plane)
        used = [w for w, key in (("diagnosis", "diagnosis_planes"), ("segmentation", "segmentation_planes"))
                if plane in (exam.get(key) or [])]
        if s is None:
            rows.append(f"<tr><td>{plane}</td><td colspan='5' class='muted'>missing</td></tr>")
            continue
        size = "x".join(str(v) for v in s.get("size", []))
        spacing = " x ".join(f"{float(v):.2f}" for v in s.get("spacing", []))
        desc = s.get("series_description") or "-"
        rows.append(f"<tr><td>{plane}</td><td>{_e(desc)}</td><td><code>{_e(s.get('source', ''))}</code></td>"
                    f"<td>{_e(size)}</td><td>{_e(spacing)} mm</td><td>{_e(', '.join(used) or 'not used')}</td></tr>")
    choices = "".join(f"<li>{_e(c)}</li>" for c in exam.get("choices") or [])
    return ("<table><tr><th>Plane</th><th>Series</th><th>Source</th><th>Size (voxels)</th><th>Spacing</th>"
            "<th>Used for</th></tr>" + "".join(rows) + "</table>"
            + (f"<details class='muted'><summary>Series choice</summary><ul>{choices}</ul></details>"
               if choices else ""))


def _measures_table(measures: List[Mapping[str, Any]]) -> str:
    """One row per structure; volume and mean thickness per segmented plane side by side."""
    if not measures:
        return "<p class='muted'>No segmentation.</p>"
    planes = [p for p in (*PLANES, "fused") if any(m["plane"] == p for m in measures)]
    by_key: Dict[str, Dict[str, Mapping[str, Any]]] = {}
    names: Dict[str, str] = {}
    for m in sorted(measures, key=lambda m: m["value"]):
        by_key.setdefault(m["key"], {})[m["plane"]] = m
        names[m["key"]] = m["name"]
    head = "".join(f"<th>{p.capitalize()} volume (mL)</th><th>{p.capitalize()} thickness (mm)</th>" for p in planes)
    rows = []
    for key, per_plane in by_key.items():
        cells = []
        for p in planes:
            m = per_plane.get(p)
            cells.append("<td class='num muted' colspan='2'>not segmented on this plane</td>" if m is None else
                         f"<td class='num'>{_fmt(m['volume_ml'])}</td><td class='num'>"
                         f"{_fmt(m.get('mean_thickness_mm'))}</td>")
        rows.append(f"<tr><td>{_e(names[key])}</td>{''.join(cells)}</tr>")
    fused = (" The fused segmentation (all segmented planes' probabilities averaged on one grid, the sagittal "
             "series' when there is one) also covers the slices the other planes see." if "fused" in planes else "")
    return (f"<table><tr><th>Structure</th>{head}</tr>{''.join(rows)}</table><p class='muted'>Measured on each "
            "plane's segmentation, which covers the model's central slices of that series only; thickness is "
            f"measured for cartilage.{fused}</p>")


def _overlays(result: Any) -> str:
    from .. import labels as label_tables
    from .overlays import mid_slice_overlay

    images = getattr(result, "images", {}) or {}
    segs = getattr(result, "segmentations", {}) or {}
    if not images:
        return "<p class='muted'>No images.</p>"
    structures = label_tables.knee_structures()
    colors = {s.value: s.color for s in structures}
    figs = []
    for plane in PLANES:
        if plane not in images:
            continue
        png, aspect = mid_slice_overlay(images[plane], segs.get(plane), plane, colors)
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        what = "with segmentation" if plane in segs else "(no segmentation for this plane)"
        figs.append(f"<figure><img alt='{plane} mid slice' src='{uri}' style='width:{300 * aspect:.0f}px'>"
                    f"<figcaption>{plane.capitalize()}, middle slice {what}</figcaption></figure>")
    shown = {v for img in segs.values() for v in _label_values(img)}
    legend = "".join(f"<span><i style='background:rgb{tuple(s.color)}'></i>{_e(s.name)}</span>"
                     for s in structures if s.value in shown)
    return f"<div class='overlays'>{''.join(figs)}</div><div class='legend'>{legend}</div>"


def _label_values(img) -> List[int]:
    import numpy as np
    import SimpleITK as sitk

    return [int(v) for v in np.unique(sitk.GetArrayViewFromImage(img)) if v]


def report_html(result: Any) -> str:
    """The report of a :class:`~OrthoDiffusionLib.inference.predictor.PredictionResult` as one self-contained HTML string."""
    from plotly.offline import get_plotlyjs

    data = result.to_json()
    model = data.get("model") or {}
    parts = [f"<h1>OrthoDiffusion knee MRI report</h1><div class='banner'>{_e(DISCLAIMER)} The probabilities and "
             f"segmentations are research outputs of a machine-learning model and must not be used for clinical "
             f"decisions.</div>"]
    if model.get("synthetic_data_only"):
        parts.append("<div class='banner synthetic'>This model was trained on SIMULATED (synthetic) data only; its "
                     "outputs on real patient images are not meaningful.</div>")
    parts += [f"<div class='warn'>{_e(w)}</div>" for w in data.get("warnings") or []]
    parts.append("<h2>Exam</h2>" + _exam_table(data))
    fused = data.get("fused_by")
    how = f" Probabilities fused by <b>{_e(fused)}</b>{' with EHR late fusion' if data.get('ehr_used') else ''}; " \
          f"{data.get('noise_draws', 1)} noise draw(s)." if fused else ""
    calibration = "Platt scaling" if fused == "tissue-pooled" else "temperature scaling"
    parts.append(f"<h2>Diagnosis</h2><p class='muted'>Calibrated probability ({calibration}), its spread over "
                 f"noise draws, and the uncalibrated model output.{how}</p>" + _labels_table(data["labels"], int(data.get("noise_draws") or 1)))
    if data["labels"]:
        fig = sankey_figure(data)
        div = fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True},
                          div_id="sankey")
        parts.append(f"<h2>Plane contributions</h2><div class='card'>{div}</div>")
    parts.append("<h2>Segmentation</h2>" + _overlays(result))
    parts.append("<h2>Structure measures</h2>" + _measures_table(data.get("measures") or []))
    timings = "".join(f"<tr><td>{_e(k)}</td><td class='num'>{_fmt(v, 3)}</td></tr>"
                      for k, v in (data.get("timings") or {}).items())
    parts.append(
        "<h2>Model and run</h2><table class='compact'>"
        f"<tr><th>Model</th><td>{_e(model.get('name'))} (bundle format v{_e(model.get('version'))})</td></tr>"
        f"<tr><th>Description</th><td>{_e(model.get('description') or '-')}</td></tr>"
        f"<tr><th>sha256</th><td><code>{_e(model.get('sha256'))}</code></td></tr>"
        f"<tr><th>File</th><td><code>{_e(model.get('file'))}</code></td></tr>"
        f"<tr><th>Trained on synthetic data only</th><td>{_e(model.get('synthetic_data_only'))}</td></tr>"
        f"<tr><th>Device</th><td>{_e(data.get('device'))}</td></tr></table>"
        f"<h2>Timings (seconds per exam)</h2><table class='compact'>{timings}</table>")
    body = "\n".join(parts)
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>OrthoDiffusion report</title><style>{_CSS}</style>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head>"
            f"<body><main>{body}<p class='muted'>{_e(DISCLAIMER)}</p></main></body></html>")


def write_report(result: Any, path: PathLike) -> Path:
    """Write :func:`report_html` of ``result`` to ``path`` atomically; returns the path."""
    from ..atomic import atomic_path

    text = report_html(result)
    with atomic_path(path, suffix=".html") as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return Path(path)
