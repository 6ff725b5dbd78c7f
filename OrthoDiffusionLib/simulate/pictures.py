"""Picture check of the simulator: mid/lesion slices of each plane with labelmap outlines, as PNG.

For the normal knee and for each abnormality the same seed is simulated (anatomy and acquisition do not depend on
the labels), so the lesion exam differs from the normal one only by the lesion; the slice shown per plane is the one
where the tissue labels change most (the lesion's slice), or the middle slice for the normal knee.
matplotlib is imported lazily (training/test extra).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from .. import labels as label_tables
from ..progress import ProgressFn
from .cohort import LABEL_KEYS, PLANES, SimulatedExam, simulate_exam


def _slice_of_change(normal: np.ndarray, lesion: np.ndarray) -> int:
    diff = (normal != lesion).reshape(len(normal), -1).sum(axis=1)
    return int(np.argmax(diff)) if diff.max() > 0 else len(normal) // 2


def save_exam_picture(exam: SimulatedExam, path: Union[str, os.PathLike], title: str,
                      reference: Optional[SimulatedExam] = None) -> Path:
    """One PNG: a row with the chosen slice of each plane (image in grey, labelmap outlines in label colours)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {s.value: np.array(s.color) / 255.0 for s in label_tables.knee_structures()}
    fig, axes = plt.subplots(1, len(exam.series), figsize=(5.2 * len(exam.series), 5.6))
    axes = np.atleast_1d(axes)
    for ax, s in zip(axes, exam.series):
        img = sitk.GetArrayFromImage(s.image).astype(np.float32)
        seg = sitk.GetArrayFromImage(s.labelmap)
        k = len(img) // 2
        if reference is not None:
            ref = [r for r in reference.series if r.plane == s.plane][0]
            k = _slice_of_change(sitk.GetArrayFromImage(ref.tissue), sitk.GetArrayFromImage(s.tissue))
        sl = img[k]
        lo, hi = np.percentile(sl, [0.5, 99.5])
        ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi, interpolation="bilinear")
        for v, c in colors.items():
            m = seg[k] == v
            if m.any():
                ax.contour(m.astype(float), levels=[0.5], colors=[c], linewidths=0.8)
        ax.set_title(f"{s.meta['series_description']}  slice {k + 1}/{len(img)}", fontsize=10)
        ax.axis("off")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_pictures(out_dir: Union[str, os.PathLike], seed: int = 1, anatomy: str = "procedural",
                   abnormalities: Sequence[str] = LABEL_KEYS, matrix: int = 256, atlas_path: Optional[str] = None,
                   progress: Optional[ProgressFn] = None) -> List[Path]:
    """Write ``normal.png`` and ``<label key>.png`` for each abnormality into ``out_dir``; returns the paths.
    ``progress("pictures", fraction written)`` after each picture."""
    out = Path(out_dir)
    kw = dict(anatomy=anatomy, matrix=matrix, atlas_path=atlas_path, center="center_a", field_strength=3.0)
    total = 1 + len(abnormalities)
    normal = simulate_exam(seed, {}, **kw)
    paths = [save_exam_picture(normal, out / "normal.png", f"normal knee ({normal.side}, seed {seed}, {anatomy})")]
    if progress:
        progress("pictures", 1 / total)
    for i, key in enumerate(abnormalities):
        exam = simulate_exam(seed, {key: True}, **kw)
        paths.append(save_exam_picture(exam, out / f"{key}.png", f"{key} ({exam.side}, seed {seed}, {anatomy})",
                                       reference=normal))
        if progress:
            progress("pictures", (i + 2) / total)
    return paths
