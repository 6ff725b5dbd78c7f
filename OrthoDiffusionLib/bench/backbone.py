"""``orthodiffusion bench backbone``: the diffusion U-Net's full forward against ``encode`` up to the middle block
(the feature extraction every prediction runs)."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from ..device import precision_autocast, resolve_device
from .timing import device_sync, time_callable

__all__ = ["bench_backbone"]


def bench_backbone(size: int = 256, slices: int = 16, batch: int = 1, repeats: int = 5, warmup: int = 1,
                   device: str = "cpu", precision: str = "fp32", width: int = 64,
                   taps: Sequence[str] = ("mid_0", "mid_1", "mid_2"), threads: Optional[int] = None) -> Dict:
    """Time ``model(x_t, t)`` against ``model.encode(x_t, t, taps)`` on a (batch, 1, slices, size, size) input.

    Returns {"rows": [...], "ratio": forward median / encode median, "device": ..., "params": ..., "tap_shapes": ...}.
    """
    import torch

    from ..model.backbone import DiffusionUNet

    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    model = DiffusionUNet(model_channels=width).to(dev).eval()
    x = torch.randn(batch, 1, slices, size, size, device=dev)
    t = torch.full((batch,), 150, device=dev, dtype=torch.long)
    sync = device_sync(dev)
    autocast = precision_autocast(dev, precision)

    def forward() -> object:
        with torch.no_grad(), autocast:
            return model(x, t)

    def encode() -> object:
        with torch.no_grad(), autocast:
            return model.encode(x, t, taps)

    with torch.no_grad(), autocast:
        tap_shapes = {k: list(v.shape) for k, v in model.encode(x, t, taps).items()}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    f = time_callable(forward, repeats, warmup, sync)
    e = time_callable(encode, repeats, warmup, sync)
    rows = [
        {"pass": "forward (full U-Net)", "median_ms": f["median_s"] * 1e3, "min_ms": f["min_s"] * 1e3,
         "max_ms": f["max_s"] * 1e3},
        {"pass": f"encode ({', '.join(taps)})", "median_ms": e["median_s"] * 1e3, "min_ms": e["min_s"] * 1e3,
         "max_ms": e["max_s"] * 1e3},
    ]
    result = {
        "rows": rows,
        "ratio_forward_over_encode": f["median_s"] / e["median_s"],
        "input": [batch, 1, slices, size, size],
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "precision": precision,
        "params": sum(p.numel() for p in model.parameters()),
        "tap_shapes": tap_shapes,
        "repeats": repeats,
        "warmup": warmup,
        "torch": torch.__version__,
    }
    if dev.type == "cuda":
        result["peak_memory_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return result
