"""Does pretraining teach the backbone anything? Linear-probe AUROC of each tap, for backbones saved along a run.

For every backbone file (e.g. the float16 snapshots of a pretraining run at growing step counts) and every tap, the
features of labelled simulated exams are computed once (the 16 central slices of each plane on the model grid,
noised at one timestep with a fixed draw, the tap averaged over space, the three planes concatenated), a
logistic regression per label is fitted on the probe's training exams and scored (AUROC) on its test exams. A
backbone that has learned nothing useful scores near chance; useful features rise with the pretraining steps.

Outputs (``write_probe_curve``): ``probe_curve.csv`` (step, tap, label, auroc; label ``macro`` = the mean) and
``probe_curve.png`` (macro AUROC against steps, one line per tap).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
import torch

from OrthoDiffusionLib.atomic import atomic_path
from OrthoDiffusionLib.labels import PLANES

__all__ = ["central_windows", "tap_features", "probe_aurocs", "write_probe_curve"]

PathLike = Union[str, os.PathLike]


def central_windows(pool_rows: Sequence[Dict[str, object]], slices: int = 16,
                    planes: Sequence[str] = PLANES) -> Dict[str, torch.Tensor]:
    """{plane: (N, 1, slices, H, W)} the central slices of every exam's simulated image of each of ``planes``, each
    min-max to [-1, 1]."""
    from ..pretrain.ddpm import normalize_window

    out: Dict[str, List[np.ndarray]] = {p: [] for p in planes}
    for row in pool_rows:
        with np.load(str(row["path"]), allow_pickle=False) as z:
            for plane in planes:
                image = z[f"{plane}_image"].astype(np.float32)
                start = max(0, image.shape[0] // 2 - slices // 2)
                out[plane].append(normalize_window(image[start:start + slices], slices))
    return {p: torch.from_numpy(np.stack(v))[:, None] for p, v in out.items()}


@torch.no_grad()
def tap_features(backbone: torch.nn.Module, windows: Dict[str, torch.Tensor], taps: Sequence[str],
                 timestep: int = 50, seed: int = 0, batch: int = 8) -> Dict[str, np.ndarray]:
    """{tap: (N, 3 * C_tap)} spatially averaged taps of the three planes (fixed noise draw per plane)."""
    from OrthoDiffusionLib.model.schedule import CosineSchedule

    schedule = CosineSchedule()
    backbone.eval()
    per_tap: Dict[str, List[np.ndarray]] = {t: [] for t in taps}
    for k, plane in enumerate(PLANES):
        x0 = windows[plane]
        gen = torch.Generator().manual_seed(seed * 31 + k)
        noise = torch.randn(x0.shape, generator=gen)
        feats: Dict[str, List[torch.Tensor]] = {t: [] for t in taps}
        for i in range(0, x0.shape[0], batch):
            t = schedule.as_timesteps(timestep, x0[i:i + batch].shape[0], torch.device("cpu"))
            x_t = schedule.q_sample(x0[i:i + batch], t, noise[i:i + batch])
            for name, value in backbone.encode(x_t, t, taps).items():
                feats[name].append(value.float().mean(dim=(2, 3, 4)))
        for name in taps:
            per_tap[name].append(torch.cat(feats[name]).numpy())
    return {name: np.concatenate(parts, axis=1) for name, parts in per_tap.items()}


def probe_aurocs(features: np.ndarray, labels: np.ndarray, n_train: int) -> np.ndarray:
    """(K,) test AUROC of a standardised L2 logistic regression per label fitted on the first ``n_train`` rows
    (NaN where the test part has one class only)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(features[:n_train])
    xtr, xte = scaler.transform(features[:n_train]), scaler.transform(features[n_train:])
    out = np.full(labels.shape[1], np.nan)
    for k in range(labels.shape[1]):
        ytr, yte = labels[:n_train, k], labels[n_train:, k]
        if len(set(ytr)) < 2 or len(set(yte)) < 2:
            continue
        model = LogisticRegression(C=0.1, max_iter=2000).fit(xtr, ytr)
        out[k] = roc_auc_score(yte, model.predict_proba(xte)[:, 1])
    return out


def write_probe_curve(backbones: Sequence[Tuple[int, PathLike]], pool: PathLike, train_exams: Sequence[int],
                      test_exams: Sequence[int], out: PathLike,
                      taps: Sequence[str] = ("in_3", "in_5", "in_7", "mid_0", "mid_2"),
                      timestep: int = 50) -> Path:
    """Probe every (step, backbone file) on the pool's exams; writes the CSV and PNG into ``out``."""
    from OrthoDiffusionLib.model.checkpoints import load_backbone
    from OrthoDiffusionLib.simulate.cohort import LABEL_KEYS
    from OrthoDiffusionLib.simulate.pool import read_pool

    rows_all = read_pool(pool)
    chosen = [rows_all[i] for i in [*train_exams, *test_exams]]
    labels = np.array([[int(r[k]) for k in LABEL_KEYS] for r in chosen])
    windows = central_windows(chosen)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for step, path in backbones:
        model, _ = load_backbone(path)
        feats = tap_features(model, windows, taps, timestep)
        for tap in taps:
            aucs = probe_aurocs(feats[tap], labels, len(train_exams))
            records += [(int(step), tap, key, float(a)) for key, a in zip(LABEL_KEYS, aucs)]
            macro = float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")
            records.append((int(step), tap, "macro", macro))
    table = out / "probe_curve.csv"
    with atomic_path(table) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "tap", "label", "auroc"])
            w.writerows((s, t, k, f"{a:.4f}") for s, t, k, a in records)
    _plot(records, taps, out / "probe_curve.png")
    return table


def _plot(records: Sequence[Tuple[int, str, str, float]], taps: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for tap in taps:
        pts = sorted((s, a) for s, t, k, a in records if t == tap and k == "macro")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=tap)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("linear-probe macro AUROC (test)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
