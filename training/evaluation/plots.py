"""Evaluation figures: ROC curves, reliability diagram, label-efficiency curve (matplotlib PNG) and the Sankey of
mean MPAE plane weights per label (plotly HTML, self-contained, no network needed to view).

All functions take plain arrays / metric rows and a path, create parent folders, and return the path written.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .metrics import roc_auc, roc_curve

__all__ = ["plot_roc_curves", "plot_reliability", "plot_label_efficiency", "plot_timestep_block_grid",
           "write_plane_weight_sankey"]

_PLANE_COLORS = {"sagittal": "#1f77b4", "coronal": "#2ca02c", "axial": "#d62728"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _prepare(path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def _save_figure(fig, path) -> Path:
    """Write a matplotlib figure as PNG (120 dpi) to ``path`` (folders created) and close it."""
    out = _prepare(path)
    fig.savefig(out, dpi=120)
    _pyplot().close(fig)
    return out


def plot_roc_curves(y_true, y_prob, label_names: Sequence[str], path: str | os.PathLike,
                    title: str = "ROC curves", baseline_prob=None, baseline_name: str = "baseline") -> Path:
    """One panel per label with the model's ROC curve (AUROC in the legend) and optionally a baseline's."""
    plt = _pyplot()
    y, p = np.asarray(y_true), np.asarray(y_prob)
    k = y.shape[1]
    cols = min(4, k)
    rows = int(np.ceil(k / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for i, name in enumerate(label_names):
        ax = axes[i // cols][i % cols]
        curves = [("model", p)] + ([(baseline_name, np.asarray(baseline_prob))] if baseline_prob is not None else [])
        for label, probs in curves:
            fpr, tpr, _ = roc_curve(y[:, i], probs[:, i])
            ax.plot(fpr, tpr, label=f"{label} {roc_auc(y[:, i], probs[:, i]):.3f}")
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("1 - specificity", fontsize=8)
        ax.set_ylabel("sensitivity", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
    for j in range(k, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return _save_figure(fig, path)


def plot_reliability(diagrams: Mapping[str, Mapping[str, np.ndarray]], path: str | os.PathLike,
                     title: str = "Reliability") -> Path:
    """Reliability curves from :func:`OrthoDiffusionLib.model.calibration.reliability_diagram` outputs, one per name
    (e.g. ``{"uncalibrated": d0, "temperature-scaled": d1}``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], color="0.7", ls="--", lw=0.8)
    for name, d in diagrams.items():
        keep = np.asarray(d["count"]) > 0
        ax.plot(np.asarray(d["confidence"])[keep], np.asarray(d["frequency"])[keep], marker="o", label=name)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save_figure(fig, path)


def plot_label_efficiency(curves: Mapping[str, Mapping[float, float]], path: str | os.PathLike,
                          ylabel: str = "macro AUROC", xlabel: str = "training patients",
                          title: str = "Label efficiency") -> Path:
    """``{model: {n_train: score}}`` -> one line per model (log x axis)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, pts in curves.items():
        xs = sorted(pts)
        ax.plot(xs, [pts[x] for x in xs], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save_figure(fig, path)


def plot_timestep_block_grid(plane_scores: Mapping[str, Mapping[tuple, float]], path: str | os.PathLike,
                             top: Mapping[str, Sequence[tuple]] | None = None,
                             title: str = "Validation score per timestep and block") -> Path:
    """Heatmaps (timestep rows x block columns, one per plane) of the search's per-plane scores
    (``SearchResult.plane_scores``), like the paper's Extended Data Fig. 1; kept candidates (``top``) are boxed."""
    plt = _pyplot()
    planes = list(plane_scores)
    fig, axes = plt.subplots(1, len(planes), figsize=(3.0 * len(planes), 4.0), squeeze=False)
    finite = [s for sc in plane_scores.values() for s in sc.values() if np.isfinite(s)]
    vmin, vmax = (min(finite), max(finite)) if finite else (0.0, 1.0)
    for ax, plane in zip(axes[0], planes):
        scores = plane_scores[plane]
        ts = sorted({t for t, _ in scores})
        bs = sorted({b for _, b in scores})
        grid = np.array([[scores.get((t, b), np.nan) for b in bs] for t in ts], dtype=float)
        im = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        for i, t in enumerate(ts):
            for j, b in enumerate(bs):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=7, color="w")
                if top is not None and (t, b) in top.get(plane, ()):
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="r", lw=1.5))
        ax.set_xticks(range(len(bs)), bs, fontsize=8)
        ax.set_yticks(range(len(ts)), [str(t) for t in ts], fontsize=8)
        ax.set_title(plane, fontsize=10)
    axes[0][0].set_ylabel("timestep", fontsize=8)
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8)
    fig.suptitle(title)
    return _save_figure(fig, path)


def write_plane_weight_sankey(rows: Sequence[Mapping[str, float]], path: str | os.PathLike,
                              planes: Sequence[str] = ("sagittal", "coronal", "axial"),
                              title: str = "MPAE plane weights per label") -> Path:
    """Sankey (plane -> label, flow thickness = weight) from :func:`~OrthoDiffusionLib.training.diagnosis.mpae.mean_plane_weights` rows, written
    as a self-contained HTML file (plotly.js embedded)."""
    import plotly.graph_objects as go

    labels = [r["label"] for r in rows]
    nodes = list(planes) + labels
    src, dst, val, col = [], [], [], []
    for k, r in enumerate(rows):
        for j, p in enumerate(planes):
            src.append(j)
            dst.append(len(planes) + k)
            val.append(float(r[p]))
            col.append(_PLANE_COLORS.get(p, "#888888") + "88")
    fig = go.Figure(go.Sankey(node=dict(label=nodes, pad=12, thickness=14,
                                        color=[_PLANE_COLORS.get(p, "#888888") for p in planes]
                                        + ["#bbbbbb"] * len(labels)),
                              link=dict(source=src, target=dst, value=val, color=col)))
    fig.update_layout(title_text=title, font_size=12)
    out = _prepare(path)
    fig.write_html(str(out), include_plotlyjs=True, full_html=True)
    return out
