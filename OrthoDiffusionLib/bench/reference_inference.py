"""The straightforward inference of the authors' code, as the reference of ``orthodiffusion bench inference``.

What it does differently from :class:`~OrthoDiffusionLib.inference.predictor.Predictor` (same numbers, more work):

* float32 eager, no ``inference_mode`` tricks beyond ``no_grad``;
* one FULL U-Net call (encoder, middle block AND decoder, as the authors' feature extractor runs ``model(x_t, t)``
  with a forward hook on the block) per (plane, block) of the diagnosis head, and again per segmented plane: no pass
  is shared between diagnosis and segmentation, even where plane, timestep and backbone are the same;
* every plane is preprocessed again for every use.

The noise, schedule and heads are those of the predictor (same seeds: :func:`~OrthoDiffusionLib.inference.predictor.noise_seed`), so the
reference and ours must give equal probabilities and label maps; the benchmark and the tests check that.

Shapes: preprocessed volume (slices, size, size); backbone input (1, 1, slices, size, size); tap
(1, C, slices/ds, size/ds, size/ds); diagnosis probabilities (K,); segmentation probabilities (C, slices, size, size).
"""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np
import SimpleITK as sitk
import torch

from ..model.backbone import INPUT_TAP, DiffusionUNet
from ..io import Exam
from ..inference.predictor import Predictor, noise_seed
from ..inference.preprocess import preprocess_series
from ..segmentation.postprocess import postprocess_knee

__all__ = ["reference_predict", "tap_module"]


def tap_module(model: DiffusionUNet, tap: str) -> torch.nn.Module:
    """The sub-module whose output is ``tap`` (``in_i`` -> ``input_blocks[i]``, ``mid_j`` -> ``middle_block[j]``)."""
    kind, index = tap.split("_")
    return model.input_blocks[int(index)] if kind == "in" else model.middle_block[int(index)]


def _hooked_forward(model: DiffusionUNet, x_t: torch.Tensor, t: torch.Tensor, tap: str) -> torch.Tensor:
    """Run the FULL network ``model(x_t, t)`` and return the output of ``tap`` caught by a forward hook."""
    caught: List[torch.Tensor] = []
    handle = tap_module(model, tap).register_forward_hook(lambda _m, _i, out: caught.append(out))
    try:
        model(x_t, t)
    finally:
        handle.remove()
    return caught[0]


def _noised(predictor: Predictor, volume: np.ndarray, plane: str, timestep: int) -> torch.Tensor:
    x0 = torch.from_numpy(volume)[None, None].to(predictor.device)
    g = torch.Generator().manual_seed(noise_seed(predictor.seed, 0, plane, timestep))
    noise = torch.randn((1, *x0.shape[1:]), generator=g).to(predictor.device)
    return predictor.schedule.q_sample(x0, predictor.schedule.as_timesteps(timestep, 1, predictor.device), noise)


def reference_predict(predictor: Predictor, full_backbones: Dict[str, DiffusionUNet], exam: Exam,
                      measures: bool = True) -> Dict[str, Any]:
    """Predict one exam the authors' way with ``predictor``'s heads, noise and schedule (one noise draw).

    Args:
        predictor: gives the bundle metadata, heads, device and seed.
        full_backbones: backbone id -> the full DiffusionUNet (decoder included) on ``predictor.device``.
        exam: must hold every plane the model uses.
        measures: also measure structure volumes on the resampled label maps (as the predictor does).

    Returns:
        {"probabilities": (K,) calibrated, "segmentation_probabilities": {plane: (C, D, H, W) float32},
        "segmentations": {plane: sitk.Image on the original grid}, "measures": [rows]}.
    """
    dev = predictor.device
    diag, seg_meta = predictor.diag_meta, predictor.seg_meta
    out: Dict[str, Any] = {"probabilities": None, "segmentation_probabilities": {}, "segmentations": {},
                           "measures": []}
    with torch.no_grad():
        if diag:
            taps = {}
            for plane, p in diag["planes"].items():
                prep = preprocess_series(exam.get(plane), slices=int(diag["preprocessing"]["slices"]),
                                         size=int(diag["preprocessing"]["size"]))
                x_t = _noised(predictor, prep.volume, plane, int(p["timestep"]))
                t = predictor.schedule.as_timesteps(int(p["timestep"]), 1, dev)
                taps[plane] = _hooked_forward(full_backbones[p["backbone"]], x_t, t, p["block"])
            out["probabilities"] = predictor.diagnosis_head(taps).probabilities[0].float().cpu().numpy()
        for plane, s in seg_meta.items():
            prep_cfg = s["preprocessing"]
            prep = preprocess_series(exam.get(plane), slices=int(prep_cfg["slices"]), size=int(prep_cfg["size"]))
            x_t = _noised(predictor, prep.volume, plane, int(s["timestep"]))
            t = predictor.schedule.as_timesteps(int(s["timestep"]), 1, dev)
            taps = {name: x_t if name == INPUT_TAP else _hooked_forward(full_backbones[s["backbone"]], x_t, t, name)
                    for name in predictor.seg_heads[plane].required_taps}
            probs = predictor._segmentation_probabilities(plane, taps)[0]
            out["segmentation_probabilities"][plane] = probs.numpy()
            probs = probs.numpy()
            if predictor.anatomy == "knee":
                probs = postprocess_knee(probs, s["class_values"], prep.reference, s.get("context_tissues") or ())
            labelmap = prep.labels_on_original(probs, s["class_values"])
            out["segmentations"][plane] = predictor._bones_in_one_piece(labelmap)
    if measures:
        for plane, img in out["segmentations"].items():
            out["measures"] += predictor.plane_measures(plane, img)
    return out


def labelmap_agreement(a: sitk.Image, b: sitk.Image) -> float:
    """Fraction of voxels with the same label in two label maps on the same grid."""
    x, y = sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)
    if x.shape != y.shape:
        return 0.0
    return float((x == y).mean())
