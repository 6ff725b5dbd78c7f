"""A random-weight model bundle built in memory, and simulated exams, for the benchmarks (``orthodiffusion bench``).

:func:`synthetic_bundle` gives a :class:`~OrthoDiffusionLib.bundle.format.ModelBundle` with the layout of a real FT-Opt knee
model (no file is written): one diffusion backbone per plane (``DiffusionUNet`` of width ``width``; width 64 = the
paper's 34.5M-parameter network), the FT-Opt (timestep, block) per plane (sagittal (150, mid_0), coronal (50, mid_2),
axial (200, mid_0)), a SAP + concat + MPAE diagnosis head for the 8 knee labels, and bottleneck segmentation heads
(12 classes, tap ``mid_2`` at timestep 50) for the sagittal and coronal planes. Backbones are stored FULL (decoder
included) by default so that the authors-style reference (:mod:`OrthoDiffusionLib.bench.reference_inference`) can run the
whole U-Net as their code does. Timing does not depend on the weights' values, so random weights are fine.

Shapes: preprocessing gives (slices, size, size) volumes; backbone input (B, 1, slices, size, size).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .. import labels as label_tables
from ..bundle.format import ModelBundle, encoder_state, now_iso
from ..io import Exam

__all__ = ["FT_OPT_TAPS", "SEG_TAP", "synthetic_bundle", "simulated_exams"]

#: FT-Opt (timestep, block) per plane for knee diagnosis (the paper's Supplementary Table 10).
FT_OPT_TAPS: Dict[str, Tuple[int, str]] = {"sagittal": (150, "mid_0"), "coronal": (50, "mid_2"),
                                           "axial": (200, "mid_0")}
#: (timestep, block) of the segmentation heads.
SEG_TAP: Tuple[int, str] = (50, "mid_2")


def _state(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def synthetic_bundle(width: int = 64, size: int = 256, slices: int = 16,
                     seg_planes: Sequence[str] = ("sagittal", "coronal"), seed: int = 0,
                     full_backbones: bool = True, seg_grid: Optional[Mapping[str, float]] = None) -> ModelBundle:
    """A random-weight FT-Opt-shaped bundle in memory (see the module docstring). ``seed`` seeds the weights (the
    same seed gives the same weights whatever ``full_backbones``); ``full_backbones=False`` stores the encoder and
    middle block only, as exported bundles do. ``seg_grid`` (``slice_mm``, ``inplane_mm``) gives the segmentation
    heads a physical model grid, so they segment the whole series in windows instead of its central slices."""
    from ..model.backbone import DiffusionUNet
    from ..model.heads import DiagnosisHead
    from ..model.seg_head import build_seg_head

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        states: Dict[str, Dict[str, torch.Tensor]] = {}
        backbones: Dict[str, Dict[str, object]] = {}
        for plane in label_tables.PLANES:
            net = DiffusionUNet(model_channels=width)
            # the zero-initialised output convolutions would make every tap after a ResBlock equal its skip input:
            # give all parameters small random values so the whole network does real arithmetic
            with torch.no_grad():
                for p in net.parameters():
                    if not p.any():
                        p.normal_(0.0, 0.02)
            state = _state(net)
            states[f"backbone.{plane}"] = state if full_backbones else encoder_state(state)
            backbones[plane] = {"config": net.config(), "stored": "full" if full_backbones else "encoder",
                                "dtype": "float32", "planes": [plane]}
        keys = [d.key for d in label_tables.diagnosis_labels("knee")]
        head = DiagnosisHead(len(keys), channels=4 * width, fusion="concat", with_mpae=True)
        states["diagnosis_head"] = _state(head)
        seg_meta: Dict[str, Dict[str, object]] = {}
        head_kwargs = {"name": "bottleneck", "model_channels": width, "bottleneck_tap": SEG_TAP[1]}
        for plane in seg_planes:
            seg = build_seg_head(num_classes=12, **head_kwargs)
            states[f"segmentation.{plane}"] = _state(seg)
            seg_meta[plane] = {"backbone": plane, "timestep": SEG_TAP[0], "block": SEG_TAP[1],
                               "preprocessing": {"slices": slices, "size": size, **dict(seg_grid or {})},
                               "head": dict(head_kwargs),
                               "num_classes": 12, "class_values": list(range(12)),
                               "structures": [s.key for s in label_tables.knee_structures(plane)],
                               "metrics": {}, "provenance": {}, "dtype": "float32"}
    finally:
        torch.random.set_rng_state(gen_state)
    known = {d.key: d.name for d in label_tables.diagnosis_labels("knee")}
    meta = {
        "format": "orthodiffusion.bundle", "version": 1, "name": f"synthetic-ft-opt-w{width}",
        "description": "random weights, built in memory for benchmarks", "created": now_iso(),
        "anatomy": "knee", "labels": [{"key": k, "name": known[k]} for k in keys],
        "structures": [{"value": s.value, "key": s.key, "name": s.name, "color": list(s.color),
                        "planes": list(s.planes), "kind": s.kind} for s in label_tables.knee_structures()],
        "synthetic_data_only": True, "backbones": backbones,
        "diagnosis": {"preprocessing": {"slices": slices, "size": size},
                      "planes": {p: {"backbone": p, "timestep": t, "block": b, "pooling": head.settings["pooling"]}
                                 for p, (t, b) in FT_OPT_TAPS.items()},
                      "head": head.config(), "calibration": head.calibration.to_dict(), "ehr": None,
                      "metrics": {}, "provenance": {}},
        "segmentation": seg_meta,
    }
    return ModelBundle(path=Path(f"<in-memory synthetic-ft-opt-w{width}>"), meta=meta, states=states,
                       sha256="none (in memory)")


def simulated_exams(n: int, matrix: int = 256, distinct: int = 1) -> List[Exam]:
    """``n`` simulated procedural knee exams of in-plane ``matrix``: ``distinct`` different ones (seeds 0..), the
    rest copies (simulating is slower than a benchmark needs; the networks do the same work on a copy)."""
    from ..inference.demo import exam_from_simulation
    from ..simulate import simulate_exam

    if n < 1 or distinct < 1:
        raise ValueError(f"need n >= 1 and distinct >= 1, got {n}, {distinct}")
    made = [exam_from_simulation(simulate_exam(seed, matrix=matrix)) for seed in range(min(n, distinct))]
    return [made[i % len(made)] for i in range(n)]
