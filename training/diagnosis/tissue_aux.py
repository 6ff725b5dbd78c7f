"""Auxiliary dense supervision for Stage I fine-tuning on simulated cohorts: the simulator's tissue map.

A simulated exam comes with the tissue of every voxel (bone, cartilage, menisci, ligaments, fluid, fat, oedema, ...),
and every simulated abnormality is a change of tissue (a torn ACL's gap is fluid with an oedema halo, an effusion is
fluid in the suprapatellar recess, a meniscal tear is a fluid cleft). One bit per label and exam is a weak signal for
lesions of a few millimetres; the tissue map says, everywhere, what the encoder should see. With ``stage1.tissue_aux``
set, each Stage I step adds, for each named tap, a cross-entropy between a 1 x 1 x 1 convolution of the tap and the
fraction of each tissue inside each of the tap's cells. The auxiliary convolutions are training-only: they are not
part of the diagnosis head, the bundle or inference.

Configuration: ``"tissue_aux": {"weight": 0.5, "blocks": ["in_3", "mid_0"]}`` under ``stage1``; rows without a
``tissue_path`` in the manifest (real data) train without it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from OrthoDiffusionLib.atomic import atomic_path
from OrthoDiffusionLib.simulate.tissues import Tissue

from .data import SeriesRow

#: Number of tissue ids of the simulator (``Tissue``: 0 air .. the largest id).
NUM_TISSUES = max(int(t) for t in Tissue) + 1


class TissueMaps:
    """Tissue maps of manifest rows on the model input grid, ``(D, H, W)`` uint8 voxel for voxel with the
    preprocessed volume; cached as ``.npy`` in ``cache_dir`` (keyed by both paths and the preprocessing)."""

    def __init__(self, slices: int, size: int, grid: Optional[Mapping[str, float]], cache_dir: Optional[Path]):
        self.slices, self.size, self.grid = int(slices), int(size), dict(grid or {})
        self.cache_dir = cache_dir
        self._fractions: Dict[Tuple[int, Tuple[int, int, int]], torch.Tensor] = {}

    def _cache_file(self, row: SeriesRow) -> Optional[Path]:
        if self.cache_dir is None:
            return None
        grid = "|".join(f"{k}={v}" for k, v in sorted(self.grid.items()))
        key = f"{row.path}|{row.tissue_path}|{self.slices}|{self.size}|{grid}"
        return self.cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npy"

    def tissue(self, row: SeriesRow) -> np.ndarray:
        """``(D, H, W)`` uint8 tissue ids of ``row`` on its preprocessed grid."""
        from ..segmentation.data import tissue_on_grid

        cache = self._cache_file(row)
        if cache is not None and cache.is_file():
            return np.load(cache, allow_pickle=False)
        out = tissue_on_grid(row.path, row.tissue_path, self.slices, self.size, self.grid)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cache, suffix=".npy") as tmp:
                np.save(tmp, out, allow_pickle=False)
        return out

    def fractions(self, rows: Sequence[SeriesRow], shape: Sequence[int]) -> torch.Tensor:
        """``(B, NUM_TISSUES, d, h, w)`` float32: the share of each tissue inside each cell of a tap of spatial
        ``shape`` (the input grid divided evenly); kept in memory per (row, shape)."""
        shape = tuple(int(v) for v in shape)
        out = []
        for row in rows:
            key = (row.index, shape)
            if key not in self._fractions:
                self._fractions[key] = tissue_fractions(torch.from_numpy(self.tissue(row).astype(np.int64)), shape)
            out.append(self._fractions[key])
        return torch.stack(out)


def tissue_fractions(tissue: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``(D, H, W)`` int64 tissue ids -> ``(NUM_TISSUES, *shape)`` float32 share of each tissue per cell."""
    onehot = F.one_hot(tissue.clamp(0, NUM_TISSUES - 1), NUM_TISSUES).permute(3, 0, 1, 2).float()
    return F.adaptive_avg_pool3d(onehot.unsqueeze(0), tuple(shape))[0]


class TissueAuxHeads(nn.Module):
    """One 1 x 1 x 1 convolution per tap block: ``(B, C_b, d, h, w)`` -> ``(B, NUM_TISSUES, d, h, w)`` logits."""

    def __init__(self, channels: Mapping[str, int]):
        super().__init__()
        self.blocks = list(channels)
        self.convs = nn.ModuleDict({b: nn.Conv3d(int(c), NUM_TISSUES, 1) for b, c in channels.items()})

    def loss(self, taps: Mapping[str, torch.Tensor], maps: TissueMaps, rows: Sequence[SeriesRow]) -> torch.Tensor:
        """Mean over the blocks of the soft cross-entropy against the rows' tissue fractions."""
        total = 0.0
        for b in self.blocks:
            tap = taps[b]
            target = maps.fractions(rows, tap.shape[2:]).to(tap.device)
            total = total + soft_cross_entropy(self.convs[b](tap), target)
        return total / len(self.blocks)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(B, K, ...)`` logits against ``(B, K, ...)`` class shares summing to 1 over K: mean over cells."""
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def aux_settings(stage1: Mapping[str, object]) -> Optional[Tuple[float, Tuple[str, ...]]]:
    """(weight, blocks) of ``stage1.tissue_aux``, or None when it is absent, null or of weight 0."""
    aux = stage1.get("tissue_aux")
    if not aux:
        return None
    weight = float(aux.get("weight", 0.0))
    blocks = tuple(aux.get("blocks") or ())
    return (weight, blocks) if weight > 0 and blocks else None


def has_tissue_maps(rows: Sequence[SeriesRow]) -> bool:
    """Whether every row names a tissue map that exists (a simulated cohort)."""
    return bool(rows) and all(r.tissue_path and os.path.isfile(r.tissue_path) for r in rows)
