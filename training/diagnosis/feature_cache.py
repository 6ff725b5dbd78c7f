"""On-disk cache of frozen-backbone tap features for linear probing (no pickle: safetensors files).

Linear probing keeps the backbone frozen and draws the noise once, so a series' tap at (timestep, block) is a fixed
tensor that can be computed once and reused for every epoch and every head. An entry is identified by the backbone
weights' sha256, the plane, the timestep, the block, the noise seed and the series id; its file name is the sha256
of those fields (canonical JSON), and the fields are also stored in the file's metadata and checked on reading.

:func:`series_noise` gives the one reproducible noise draw of a series for a seed, so that cached and recomputed
features agree.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import torch

from OrthoDiffusionLib.atomic import atomic_path
from OrthoDiffusionLib.errors import CorruptFileError

__all__ = ["feature_cache_key", "series_noise", "FeatureCache"]


def _fields(backbone_sha256: str, plane: str, timestep: int, block: str, noise_seed: int,
            series_id: str) -> Dict[str, str]:
    return {"backbone_sha256": str(backbone_sha256), "plane": str(plane), "timestep": str(int(timestep)),
            "block": str(block), "noise_seed": str(int(noise_seed)), "series_id": str(series_id)}


def feature_cache_key(backbone_sha256: str, plane: str, timestep: int, block: str, noise_seed: int,
                      series_id: str) -> str:
    """64-hex-digit key of one cached tap."""
    text = json.dumps(_fields(backbone_sha256, plane, timestep, block, noise_seed, series_id), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def series_noise(shape: Sequence[int], noise_seed: int, series_id: str, dtype: torch.dtype = torch.float32
                 ) -> torch.Tensor:
    """Standard-normal noise of ``shape`` that depends only on ``(noise_seed, series_id)`` (CPU generator)."""
    digest = hashlib.sha256(f"{int(noise_seed)}:{series_id}".encode("utf-8")).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return torch.randn(tuple(shape), generator=g, dtype=dtype)


class FeatureCache:
    """Cached taps of one backbone under ``root`` (created): ``root/<key[:2]>/<key>.safetensors``."""

    def __init__(self, root: str | os.PathLike, backbone_sha256: str):
        self.root = Path(root)
        self.backbone_sha256 = str(backbone_sha256)

    def path(self, series_id: str, plane: str, timestep: int, block: str, noise_seed: int) -> Path:
        key = feature_cache_key(self.backbone_sha256, plane, timestep, block, noise_seed, series_id)
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, series_id: str, plane: str, timestep: int, block: str, noise_seed: int) -> Optional[torch.Tensor]:
        """The cached tensor, or ``None`` if absent. Raises ``CorruptFileError`` naming the file if it is unreadable
        or belongs to other fields."""
        from safetensors import SafetensorError
        from safetensors.torch import safe_open

        path = self.path(series_id, plane, timestep, block, noise_seed)
        if not path.is_file():
            return None
        expected = _fields(self.backbone_sha256, plane, timestep, block, noise_seed, series_id)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensor = f.get_tensor("features")
        except (SafetensorError, OSError, ValueError) as e:
            raise CorruptFileError(f"unreadable cached features ({e})", path) from None
        if {k: meta.get(k) for k in expected} != expected:
            raise CorruptFileError("cached features belong to another series/backbone/tap (metadata mismatch)", path)
        return tensor

    def put(self, series_id: str, plane: str, timestep: int, block: str, noise_seed: int,
            features: torch.Tensor) -> Path:
        """Store ``features`` (written to a temporary file, then renamed: never a half-written entry)."""
        from safetensors.torch import save_file

        path = self.path(series_id, plane, timestep, block, noise_seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = _fields(self.backbone_sha256, plane, timestep, block, noise_seed, series_id)
        with atomic_path(path) as tmp:
            save_file({"features": features.detach().contiguous().cpu()}, str(tmp), metadata=meta)
        return path

    def get_or_compute(self, series_id: str, plane: str, timestep: int, block: str, noise_seed: int,
                       compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Cached tensor, or ``compute()`` stored and returned."""
        cached = self.get(series_id, plane, timestep, block, noise_seed)
        if cached is not None:
            return cached
        features = compute()
        self.put(series_id, plane, timestep, block, noise_seed, features)
        return features.detach().cpu()
