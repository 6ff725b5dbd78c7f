"""Tiny model bundles for tests: fake training run folders (the run-folder formats of ``train-diagnosis`` and
``train-segmentation``), exported.

``make_tiny_bundle(path)`` writes a diagnosis run and segmentation runs (width-32 backbones, preprocessing 16 x 32 x
32, randomly initialised but seeded heads) beside ``path`` and exports them into ``path`` with
:func:`OrthoDiffusionLib.bundle.export.export_bundle`. Other helpers' tests reuse it (viewer, Slicer module).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from safetensors.torch import save_file

from OrthoDiffusionLib import labels as label_tables
from OrthoDiffusionLib.model.backbone import DiffusionUNet
from OrthoDiffusionLib.bundle.export import export_bundle
from OrthoDiffusionLib.model.checkpoints import file_sha256, save_backbone
from OrthoDiffusionLib.model.heads import DiagnosisHead
from OrthoDiffusionLib.io import Exam, Series
from OrthoDiffusionLib.model.seg_head import build_seg_head

TINY_WIDTH = 32
TINY_SIZE = 32
TINY_SLICES = 16


def _provenance(synthetic: Optional[bool], backbones: dict) -> dict:
    return {"command": "tests: make_tiny_bundle", "manifest": "none", "manifest_sha256": None,
            "started": "2026-01-01T00:00:00+00:00", "finished": "2026-01-01T00:00:01+00:00",
            "backbone_sha256": backbones, "synthetic_data_only": synthetic}


def _state(module: torch.nn.Module) -> dict:
    return {k: v.detach().contiguous() for k, v in module.state_dict().items()}


def make_diagnosis_run(folder: Path, *, fusion: str = "concat", with_mpae: bool = True, ehr: bool = False,
                       shared_backbone: bool = True, planes: Sequence[str] = label_tables.PLANES, seed: int = 0,
                       synthetic: Optional[bool] = True, size: int = TINY_SIZE,
                       temperatures: Optional[Sequence[float]] = None) -> Path:
    """A ``train-diagnosis`` run folder with random seeded weights; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    keys = [d.key for d in label_tables.diagnosis_labels("knee")]
    shared = DiffusionUNet(model_channels=TINY_WIDTH)
    plane_info, digests = {}, {}
    timesteps = {"sagittal": 150, "coronal": 50, "axial": 200}
    blocks = {"sagittal": "mid_0", "coronal": "mid_2", "axial": "mid_0"}
    for i, plane in enumerate(planes):
        model = shared if shared_backbone or i == 0 else DiffusionUNet(model_channels=TINY_WIDTH)
        name = f"backbone_{plane}.safetensors"
        digests[plane] = save_backbone(model, folder / name, plane)
        plane_info[plane] = {"timestep": timesteps[plane], "block": blocks[plane], "backbone": name}
    channels = shared.tap_channels("mid_0")
    head = DiagnosisHead(len(keys), channels=channels, fusion=fusion, with_mpae=with_mpae, planes=tuple(planes))
    if temperatures is not None:
        head.calibration.temperature.copy_(torch.tensor(list(temperatures), dtype=torch.float32))
    save_file(_state(head), str(folder / "diagnosis_head.safetensors"))
    ehr_info = None
    if ehr:
        from OrthoDiffusionLib.model.ehr import EHRFusionClassifier

        cfg = {"num_labels": len(keys), "mri_features": len(planes) * head.pools[planes[0]].out_features}
        model = EHRFusionClassifier(**cfg)
        model.encoder.fit([{"age": 30, "height": 175, "weight": 70}, {"age": 50, "height": 165, "weight": 80}])
        save_file(_state(model), str(folder / "ehr_fusion.safetensors"))
        ehr_info = {"weights": "ehr_fusion.safetensors", "config": cfg, "statistics": model.encoder.statistics()}
    run = {"format": "orthodiffusion.diagnosis-run", "version": 1, "anatomy": "knee", "labels": keys,
           "preprocessing": {"slices": TINY_SLICES, "size": size}, "planes": plane_info, "head": head.config(),
           "head_weights": "diagnosis_head.safetensors", "ehr": ehr_info,
           "config": {"protocol": "linear_probe", "seed": seed},
           "metrics": {"val": {"macro_auroc": 0.5, "auroc": {"pcl_injury": float("nan")}},
                       "test": {"macro_auroc": 0.5}},
           "provenance": _provenance(synthetic, digests)}
    (folder / "run.json").write_text(json.dumps(run, indent=2), encoding="utf-8")
    return folder


def make_segmentation_run(folder: Path, plane: str, *, seed: int = 0, synthetic: Optional[bool] = True,
                          size: int = TINY_SIZE, head: str = "bottleneck", grid: Optional[dict] = None) -> Path:
    """A ``train-segmentation`` run folder for ``plane``; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)  # the same weights as make_diagnosis_run's shared backbone: the bundle stores one
    backbone = DiffusionUNet(model_channels=TINY_WIDTH)
    digest = save_backbone(backbone, folder / "backbone.safetensors", plane)
    kwargs = {"name": head, "model_channels": TINY_WIDTH, "bottleneck_tap": "mid_2"}
    seg = build_seg_head(num_classes=12, **kwargs)
    save_file(_state(seg), str(folder / "seg_head.safetensors"))
    run = {"format": "orthodiffusion.segmentation-run", "version": 1, "plane": plane, "timestep": 50,
           "block": "mid_2", "preprocessing": {"slices": TINY_SLICES, "size": size, **(grid or {})}, "head": kwargs,
           "head_weights": "seg_head.safetensors", "backbone": "backbone.safetensors", "num_classes": 12,
           "structures": [s.key for s in label_tables.knee_structures(plane)], "config": {"seed": seed},
           "metrics": {"val": {"mean_dice": 0.5}, "test": {"mean_dice": 0.5}},
           "provenance": _provenance(synthetic, {plane: digest})}
    (folder / "run.json").write_text(json.dumps(run, indent=2), encoding="utf-8")
    return folder


def make_tiny_bundle(path, *, diagnosis: bool = True, segmentation_planes: Sequence[str] = ("sagittal", "coronal"),
                     fusion: str = "concat", with_mpae: bool = True, ehr: bool = False, half: bool = False,
                     shared_backbone: bool = True, seed: int = 0, synthetic: Optional[bool] = True,
                     name: str = "tiny-test", size: int = TINY_SIZE,
                     temperatures: Optional[Sequence[float]] = None,
                     diagnosis_planes: Sequence[str] = label_tables.PLANES, seg_grid: Optional[dict] = None) -> Path:
    """Export a tiny bundle to ``path`` (run folders go to ``<path stem>_runs/`` beside it); returns ``path``."""
    path = Path(path)
    runs = path.parent / f"{path.stem}_runs"
    diag = None
    if diagnosis:
        diag = make_diagnosis_run(runs / "diagnosis", fusion=fusion, with_mpae=with_mpae, ehr=ehr,
                                  shared_backbone=shared_backbone, seed=seed, synthetic=synthetic, size=size,
                                  temperatures=temperatures, planes=tuple(diagnosis_planes))
    segs = [make_segmentation_run(runs / f"seg_{p}", p, seed=seed, synthetic=synthetic, size=size, grid=seg_grid)
            for p in segmentation_planes]
    export_bundle(diag, segs, name, path, half=half, description="tiny test model (random weights)")
    return path


def tiny_volume(plane: str, seed: int = 0) -> Series:
    """A textured 20 x 40 x 40 series of ``plane`` (1 mm voxels, slice axis = ITK axis 2) with a bright block."""
    rng = np.random.default_rng(seed)
    arr = rng.normal(100, 20, (20, 40, 40)).astype(np.float32)
    arr[6:14, 10:30, 12:28] += 150
    img = sitk.GetImageFromArray(arr)
    codes = {"sagittal": "PIL", "coronal": "LIP", "axial": "LPS"}
    img.SetDirection(sitk.DICOMOrient(sitk.Image([2, 2, 2], sitk.sitkUInt8), codes[plane]).GetDirection())
    return Series(image=img, plane=plane, obliquity_deg=0.0, source=f"{plane}_{seed}.nii")


def tiny_exam(seed: int = 0, planes: Sequence[str] = label_tables.PLANES) -> Exam:
    """An exam of :func:`tiny_volume` series for ``planes`` (others missing)."""
    exam = Exam(source=f"tiny exam {seed}")
    for i, plane in enumerate(planes):
        setattr(exam, plane, tiny_volume(plane, seed + i))
    return exam


__all__ = ["make_tiny_bundle", "make_diagnosis_run", "make_segmentation_run", "tiny_volume", "tiny_exam",
           "file_sha256", "TINY_SIZE", "TINY_WIDTH", "TINY_SLICES"]
