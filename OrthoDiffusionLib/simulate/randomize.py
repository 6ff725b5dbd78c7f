"""Domain randomisation: a new MR contrast, resolution and artefact set drawn from a tissue map at every call.

Following SynthSeg (Billot et al., Medical Image Analysis 2023), a network trained on images generated from label
maps with randomised appearance learns shapes rather than one scanner's look, so it transfers to real scans of any
contrast. One call of :func:`randomize_contrast`:

1. picks a sequence family (PD, PD fat-sat, T1, T2, DESS-like) and draws each tissue's mean intensity around that
   family's typical appearance (bone marrow bright with fat, dark with fat suppression; fluid bright on PD/T2/DESS,
   dark on T1; menisci, ligaments and tendons dark everywhere), or, with probability ``p_random``, uniformly at
   random for every tissue (the Gaussian-mixture draw of SynthSeg);
2. gives every tissue a random within-tissue spread, and bone a dark cortical rim;
3. blurs in-plane and across slices (random resolution and slice thickness: partial volume);
4. multiplies a smooth random bias field, adds Rician noise, applies a random gamma.

All operations are numpy/torch on the model grid and take a few milliseconds for a 16 x 128 x 128 volume.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .tissues import BONES, Tissue

__all__ = ["SEQUENCES", "tissue_means", "randomize_contrast"]

T = Tissue
_N_TISSUES = max(int(t) for t in Tissue) + 1
#: Typical relative intensity per sequence family for groups of tissues (0 = black, 1 = brightest).
_TYPICAL: Dict[str, Dict[str, float]] = {
    #          marrow cartilage fluid  fat   muscle fibrous soft  edema
    "pd":     dict(marrow=0.75, cartilage=0.50, fluid=0.90, fat=0.85, muscle=0.32, fibrous=0.06, soft=0.36, edema=0.85),
    "pd_fs":  dict(marrow=0.15, cartilage=0.45, fluid=0.95, fat=0.10, muscle=0.30, fibrous=0.05, soft=0.30, edema=0.90),
    "t1":     dict(marrow=0.85, cartilage=0.35, fluid=0.15, fat=0.95, muscle=0.35, fibrous=0.05, soft=0.30, edema=0.20),
    "t2":     dict(marrow=0.45, cartilage=0.25, fluid=0.95, fat=0.55, muscle=0.20, fibrous=0.04, soft=0.25, edema=0.85),
    "dess":   dict(marrow=0.12, cartilage=0.75, fluid=0.95, fat=0.10, muscle=0.25, fibrous=0.05, soft=0.25, edema=0.85),
}
SEQUENCES: Tuple[str, ...] = tuple(_TYPICAL)
_GROUP: Dict[int, str] = {
    T.FEMUR: "marrow", T.TIBIA: "marrow", T.PATELLA: "marrow", T.FIBULA: "marrow",
    T.FEMORAL_CARTILAGE: "cartilage", T.MEDIAL_TIBIAL_CARTILAGE: "cartilage",
    T.LATERAL_TIBIAL_CARTILAGE: "cartilage", T.PATELLAR_CARTILAGE: "cartilage",
    T.MEDIAL_MENISCUS: "fibrous", T.LATERAL_MENISCUS: "fibrous", T.ACL: "fibrous", T.PCL: "fibrous",
    T.MCL: "fibrous", T.LCL: "fibrous", T.TENDON: "fibrous", T.CAPSULE: "fibrous",
    T.FLUID: "fluid", T.FAT: "fat", T.MUSCLE: "muscle", T.SKIN: "soft", T.VESSEL: "fluid", T.EDEMA: "edema",
    T.SOFT_TISSUE: "soft",
}


def tissue_means(sequence: str, rng: np.random.Generator, jitter: float = 0.08) -> np.ndarray:
    """Mean intensity per tissue id (``_N_TISSUES``,) for a sequence family, each jittered by N(0, ``jitter``);
    air is 0. The ACL is drawn a little brighter than the other fibrous tissues (its striated look)."""
    typical = _TYPICAL[sequence]
    means = np.zeros(_N_TISSUES, dtype=np.float32)
    for tissue, group in _GROUP.items():
        means[int(tissue)] = typical[group] + rng.normal(0.0, jitter)
    means[int(T.ACL)] += rng.uniform(0.05, 0.15)
    return np.clip(means, 0.0, 1.0)


def _cortex(tissue: torch.Tensor) -> torch.Tensor:
    """Bone voxels with a non-bone in-plane neighbour (3x3): (D, H, W) bool."""
    bone = torch.zeros_like(tissue, dtype=torch.bool)
    for b in BONES:
        bone |= tissue == int(b)
    outside = (~bone).float()[:, None]  # (D, 1, H, W)
    near_outside = F.max_pool2d(outside, 3, stride=1, padding=1)[:, 0] > 0
    return bone & near_outside


def _blur(x: torch.Tensor, sigma_inplane: float, sigma_slice: float) -> torch.Tensor:
    """Separable Gaussian blur of (D, H, W) (sigmas in voxels; <= 0.1 skips an axis)."""
    def kernel(sigma: float) -> torch.Tensor:
        r = max(1, int(np.ceil(2.5 * sigma)))
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
        return k / k.sum()

    v = x[None, None]
    if sigma_inplane > 0.1:
        k = kernel(sigma_inplane)
        v = F.conv3d(F.pad(v, (len(k) // 2, len(k) // 2, 0, 0, 0, 0), mode="replicate"), k.view(1, 1, 1, 1, -1))
        v = F.conv3d(F.pad(v, (0, 0, len(k) // 2, len(k) // 2, 0, 0), mode="replicate"), k.view(1, 1, 1, -1, 1))
    if sigma_slice > 0.1 and x.shape[0] > 1:
        k = kernel(sigma_slice)
        v = F.conv3d(F.pad(v, (0, 0, 0, 0, len(k) // 2, len(k) // 2), mode="replicate"), k.view(1, 1, -1, 1, 1))
    return v[0, 0]


def _bias_field(shape: Tuple[int, int, int], rng: np.random.Generator, amplitude: float) -> torch.Tensor:
    """exp of a smooth random field (trilinear upsampling of a 3x4x4 random grid), (D, H, W)."""
    coarse = torch.from_numpy(rng.normal(0.0, amplitude, size=(1, 1, 3, 4, 4)).astype(np.float32))
    return torch.exp(F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0, 0])


def randomize_contrast(tissue: np.ndarray, rng: np.random.Generator, sequence: Optional[str] = None,
                       p_random: float = 0.2) -> np.ndarray:
    """A randomised MR image of a tissue map.

    Args:
        tissue: (D, H, W) integer tissue ids (:class:`.tissues.Tissue`) on the model grid.
        rng: the draw (all randomness comes from it).
        sequence: one of :data:`SEQUENCES`, or None to draw one.
        p_random: probability of fully random per-tissue means instead of a sequence family.

    Returns:
        float32 (D, H, W), roughly in [0, 1.2] (normalise before use).
    """
    t = torch.from_numpy(np.ascontiguousarray(tissue, dtype=np.int64))
    if rng.random() < p_random:
        means = rng.uniform(0.0, 1.0, size=_N_TISSUES).astype(np.float32)
        means[int(T.AIR)] = 0.0
    else:
        seq = sequence if sequence is not None else SEQUENCES[int(rng.integers(len(SEQUENCES)))]
        means = tissue_means(seq, rng)
    spread = rng.uniform(0.0, 0.06, size=_N_TISSUES).astype(np.float32)
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**31 - 1)))
    img = torch.from_numpy(means)[t] + torch.from_numpy(spread)[t] * torch.randn(t.shape, generator=gen)
    img = torch.where(_cortex(t), torch.tensor(float(rng.uniform(0.0, 0.12))), img)
    img = _blur(img, float(rng.uniform(0.0, 1.0)), float(rng.uniform(0.0, 0.7)))
    img = img * _bias_field(tuple(t.shape), rng, float(rng.uniform(0.0, 0.25)))
    sigma = float(rng.uniform(0.005, 0.05))
    n1 = torch.randn(t.shape, generator=gen) * sigma
    n2 = torch.randn(t.shape, generator=gen) * sigma
    img = torch.sqrt((img.clamp_min(0.0) + n1) ** 2 + n2 ** 2)
    img = img.clamp_min(0.0) ** float(np.exp(rng.normal(0.0, 0.25)))
    return img.numpy().astype(np.float32)
