"""Tiny synthetic diagnosis cohorts for the training tests: NIfTI volumes (16 x 32 x 32) whose first label (ACL)
is visible as a bright blob, a manifest CSV, and a width-32 backbone. The tests keep the 8 central slices (CPU time)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from io_helpers import CODES, code_direction
from OrthoDiffusionLib.model.backbone import DiffusionUNet, reference_init_
from OrthoDiffusionLib.model.checkpoints import save_backbone
from OrthoDiffusionLib.labels import PLANES, diagnosis_labels

KEYS = [d.key for d in diagnosis_labels("knee")]
TINY_BACKBONE = dict(model_channels=32, channel_mult=(1, 1, 2), attention_resolutions=(), num_heads=1)


def volume(rng: np.random.Generator, positive: bool, plane: str) -> sitk.Image:
    """A 32 x 32 x 16 (W, H, slices) noisy volume with a bright blob when ``positive``."""
    arr = rng.normal(0.0, 0.3, size=(16, 32, 32)).astype(np.float32) + 1.0
    if positive:
        z, y, x = np.mgrid[:16, :32, :32]
        c = rng.integers(10, 22, size=2)
        arr += 3.0 * np.exp(-(((y - c[0]) ** 2 + (x - c[1]) ** 2) / 18.0 + (z - 8) ** 2 / 20.0))
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 0.5, 3.0))
    img.SetDirection(tuple(code_direction(CODES[plane]).ravel()))
    return img


def tissue_map(image: sitk.Image) -> sitk.Image:
    """A simulator-style tissue-id map of a :func:`volume`: the bright blob is fluid (16), the rest fat (17)."""
    arr = sitk.GetArrayFromImage(image)
    out = sitk.GetImageFromArray(np.where(arr > 2.2, 16, 17).astype(np.uint8))
    out.CopyInformation(image)
    return out


def write_cohort(root: Path, n_patients: int = 24, seed: int = 0, missing_plane: Optional[Dict[str, str]] = None,
                 extra_series: Optional[Dict[str, str]] = None, ehr: bool = False, tissue: bool = False) -> Path:
    """Write volumes + manifest.csv under ``root``; splits: 60% train, 20% val, 20% test (patient order).
    ``missing_plane``: patient -> plane left out; ``extra_series``: patient -> plane with a second series;
    ``tissue``: a ``tissue_path`` column with each series' :func:`tissue_map`."""
    rng = np.random.default_rng(seed)
    missing_plane, extra_series = missing_plane or {}, extra_series or {}
    rows: List[List[object]] = []
    for i in range(n_patients):
        pid = f"p{i:03d}"
        split = "train" if i < 0.6 * n_patients else ("val" if i < 0.8 * n_patients else "test")
        y = (rng.random(len(KEYS)) < 0.4).astype(int)
        y[0] = i % 2
        for plane in PLANES:
            if missing_plane.get(pid) == plane:
                continue
            for s in range(2 if extra_series.get(pid) == plane else 1):
                rel = f"{pid}/{plane}_{s}.nii.gz"
                (root / pid).mkdir(parents=True, exist_ok=True)
                image = volume(rng, bool(y[0]), plane)
                sitk.WriteImage(image, str(root / rel))
                row = [pid, plane, rel, split, *y]
                if tissue:
                    sitk.WriteImage(tissue_map(image), str(root / rel.replace(".nii.gz", "_tissue.nii.gz")))
                    row.append(rel.replace(".nii.gz", "_tissue.nii.gz"))
                if ehr:
                    row += [40 + i, "female" if i % 3 else "male", 170, 70 + i % 5, "athlete", "sports"]
                rows.append(row)
    header = ["patient_id", "plane", "series_path", "split", *KEYS] + (["tissue_path"] if tissue else [])
    if ehr:
        header += ["age", "sex", "height", "weight", "patient_type", "injury_event"]
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return manifest


def write_backbone(path: Path, seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    model = reference_init_(DiffusionUNet(**TINY_BACKBONE))
    save_backbone(model, path, "sagittal")
    return path


TINY_SETTINGS = ["preprocessing.size=32", "preprocessing.slices=8", "stage1.epochs=2", "stage1.batch_size=4",
                 "stage1.lr=0.003", "stage2.epochs=2", "stage2.batch_size=4", "stage2.lr=0.001", "mpae.folds=3",
                 "mpae.head_epochs=2", "mpae.head_lr=0.003", "mpae.gate_epochs=2", "pooling_options.heads=4"]
