"""``orthodiffusion bench train``: training step time, memory and loss curve, fp32 eager reference vs ours.

Two kinds of step, each run by two configurations from the SAME initial weights on the SAME batches (data, t and
noise from one seeded generator), so their loss curves are comparable step by step:

* ``pretrain``: the epsilon-prediction loss of the full diffusion U-Net (:meth:`CosineSchedule.training_loss`),
  backward, Adam step -- what ``orthodiffusion pretrain`` does per step (batch ``--batch`` of
  1 x slices x size x size volumes; 10 x 16 x 256 x 256 in the paper);
* ``finetune``: FT-Opt fine-tuning of diagnosis: three backbones' ``encode`` (sagittal (150, mid_0), coronal
  (50, mid_2), axial (200, mid_0)), the SAP + concat diagnosis head, BCE on 8 labels, backward, Adam step.

Configurations: ``reference`` = float32, eager, contiguous (the authors' trainer); ``ours`` = bf16 autocast +
channels-last-3d (+ ``torch.compile`` with ``--compile``); attention is SDPA in both (the backbone's only
implementation). Rows: median step seconds after warm-up, steps/s, peak memory (CUDA allocations on a GPU, process
RSS on the CPU), the loss of every step and the number of non-finite ones; extras: speed-up ours/reference and the
largest relative difference between the two loss curves (over the steps where both are finite).
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from OrthoDiffusionLib.device import precision_autocast
from OrthoDiffusionLib.model.backbone import CPU_SCALE_CONFIG, DiffusionUNet
from OrthoDiffusionLib.bench.model import FT_OPT_TAPS
from OrthoDiffusionLib.bench.timing import device_facts, device_sync, setup_device
from OrthoDiffusionLib.model.heads import DiagnosisHead
from OrthoDiffusionLib.labels import PLANES
from OrthoDiffusionLib.model.schedule import CosineSchedule

__all__ = ["CONFIGS", "bench_train"]

#: name -> (precision, channels-last-3d)
CONFIGS: Dict[str, Tuple[str, bool]] = {"reference": ("fp32", False), "ours": ("bf16", True)}


def _batches(kind: str, n: int, batch: int, slices: int, size: int, seed: int) -> List[Dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        b: Dict[str, torch.Tensor] = {"x0": torch.rand(batch, 1, slices, size, size, generator=g) * 2 - 1}
        if kind == "pretrain":
            b["t"] = torch.randint(0, 1000, (batch,), generator=g)
            b["noise"] = torch.randn(batch, 1, slices, size, size, generator=g)
        else:
            for plane in PLANES:
                b[plane] = torch.rand(batch, 1, slices, size, size, generator=g) * 2 - 1
            b["y"] = (torch.rand(batch, 8, generator=g) < 0.3).float()
        out.append(b)
    return out


class _FineTuneModel(torch.nn.Module):
    """Three plane backbones (encode only) + the diagnosis head: (B, 1, D, H, W) per plane -> (B, 8) logits."""

    def __init__(self, config: Dict[str, object]):
        super().__init__()
        self.backbones = torch.nn.ModuleDict({p: DiffusionUNet(**config) for p in PLANES})
        channels = self.backbones[PLANES[0]].tap_channels("mid_0")
        self.head = DiagnosisHead(8, channels=channels, fusion="concat", with_mpae=False)

    def forward(self, volumes: Dict[str, torch.Tensor]) -> torch.Tensor:
        taps = {}
        for plane, (t, block) in FT_OPT_TAPS.items():
            x = volumes[plane]
            taps[plane] = self.backbones[plane].encode(x, torch.full((x.shape[0],), t, device=x.device), (block,))[block]
        return self.head(taps).logits


def network_config(network: str, width: int) -> Dict[str, object]:
    """DiffusionUNet arguments of a benchmarked network: ``authors`` (their layout at ``width``) or ``cpu`` (the
    CPU-scale configuration, :data:`CPU_SCALE_CONFIG`)."""
    if network == "authors":
        return {"model_channels": width}
    if network == "cpu":
        return dict(CPU_SCALE_CONFIG)
    raise ValueError(f"unknown network {network!r} (authors, cpu)")


def _make_model(kind: str, config: Dict[str, object], seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "pretrain":
        net = DiffusionUNet(**config)
        with torch.no_grad():  # the zero-initialised output convs would make the first steps degenerate
            for p in net.parameters():
                if not p.any():
                    p.normal_(0.0, 0.02)
        return net
    return _FineTuneModel(config)


def _step_fn(kind: str, model: torch.nn.Module, opt: torch.optim.Optimizer, precision: str, device: torch.device,
             schedule: CosineSchedule, forward: Callable) -> Callable[[Dict[str, torch.Tensor]], torch.Tensor]:
    autocast = precision_autocast(device, precision)

    def step(b: Dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast:
            if kind == "pretrain":
                loss = schedule.training_loss(forward, b["x0"], t=b["t"], noise=b["noise"])
            else:
                logits = forward({p: b[p] for p in PLANES})
                loss = F.binary_cross_entropy_with_logits(logits.float(), b["y"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def _run_config(kind: str, name: str, base: torch.nn.Module, batches: Sequence[Dict[str, torch.Tensor]],
                warmup: int, device: torch.device, compile_model: bool, ours_precision: str = "bf16"
                ) -> Dict[str, object]:
    from OrthoDiffusionLib.bench.peak_memory import PeakMemory

    precision, channels_last = CONFIGS[name]
    if name == "ours":
        precision = ours_precision
    model = copy.deepcopy(base).to(device).train()
    if channels_last:
        for m in model.modules():
            if isinstance(m, DiffusionUNet):
                m.to_channels_last_3d()
    forward = torch.compile(model) if compile_model and name == "ours" else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    step = _step_fn(kind, model, opt, precision, device, CosineSchedule(), forward)
    on_device = [{k: v.to(device) for k, v in b.items()} for b in batches]
    sync = device_sync(device)
    losses: List[float] = []
    times: List[float] = []
    with PeakMemory(device) as pm:
        for i, b in enumerate(on_device):
            sync()
            start = time.perf_counter()
            loss = step(b)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
            losses.append(float(loss))
    median = statistics.median(times)
    label = {"reference": "reference (fp32 eager)",
             "ours": f"ours ({precision}{' autocast' if precision == 'bf16' else ''}, channels-last-3d"
                     + (", torch.compile)" if compile_model else ")")}[name]
    row: Dict[str, object] = {"step": kind, "config": label, "median_step_s": median, "steps_per_s": 1.0 / median,
                              "peak_rss_mib": pm.rss_mib, "losses": [round(v, 6) for v in losses],
                              "nonfinite_steps": sum(not math.isfinite(v) for v in losses)}
    if pm.cuda_mib is not None:
        row["peak_cuda_mib"] = pm.cuda_mib
    return row


def bench_train(kinds: Sequence[str] = ("pretrain", "finetune"), width: int = 64, size: int = 256, slices: int = 16,
                batch: int = 10, steps: int = 6, warmup: int = 2, device: str = "cpu", compile_model: bool = False,
                threads: Optional[int] = None, seed: int = 0, network: str = "authors",
                ours_precision: str = "bf16") -> Dict[str, object]:
    """Time ``steps`` training steps (the first ``warmup`` untimed) of each kind in each configuration (see the
    module docstring) for ``network`` (:func:`network_config`; ``width`` applies to ``authors``). Returns rows,
    per-kind speed-ups and loss-curve differences, with the device (CPU model name) they ran on."""

    if steps <= warmup:
        raise ValueError(f"steps ({steps}) must exceed warmup ({warmup})")
    dev = setup_device(threads, device)
    rows: List[Dict[str, object]] = []
    extra: Dict[str, object] = {}
    for kind in kinds:
        if kind not in ("pretrain", "finetune"):
            raise ValueError(f"unknown step kind {kind!r} (pretrain, finetune)")
        base = _make_model(kind, network_config(network, width), seed)
        batches = _batches(kind, steps, batch, slices, size, seed + 1)
        ref = _run_config(kind, "reference", base, batches, warmup, dev, False)
        ours = _run_config(kind, "ours", base, batches, warmup, dev, compile_model, ours_precision)
        rows += [ref, ours]
        extra[f"speedup_{kind}_ours_over_reference"] = ours["steps_per_s"] / ref["steps_per_s"]
        both = [(a, b) for a, b in zip(ref["losses"], ours["losses"]) if math.isfinite(a) and math.isfinite(b)]
        extra[f"loss_curve_max_rel_diff_{kind}"] = (max(abs(a - b) / max(abs(a), 1e-12) for a, b in both)
                                                    if both else float("nan"))
    return {"rows": rows, **extra, "input": [batch, 1, slices, size, size], "network": network,
            "network_config": {k: list(v) if isinstance(v, tuple) else v
                               for k, v in network_config(network, width).items()}, "width": width, "steps": steps,
            "warmup": warmup, **device_facts(dev)}
