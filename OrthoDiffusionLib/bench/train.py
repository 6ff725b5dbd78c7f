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

import argparse
import copy
import math
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from OrthoDiffusionLib.model.backbone import DiffusionUNet
from OrthoDiffusionLib.bench.model import FT_OPT_TAPS
from OrthoDiffusionLib.model.heads import DiagnosisHead
from OrthoDiffusionLib.labels import PLANES
from OrthoDiffusionLib.model.schedule import CosineSchedule

__all__ = ["CONFIGS", "bench_train", "register_train_bench"]

#: name -> (bf16 autocast, channels-last-3d)
CONFIGS: Dict[str, Tuple[bool, bool]] = {"reference": (False, False), "ours": (True, True)}


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

    def __init__(self, width: int):
        super().__init__()
        self.backbones = torch.nn.ModuleDict({p: DiffusionUNet(model_channels=width) for p in PLANES})
        self.head = DiagnosisHead(8, channels=4 * width, fusion="concat", with_mpae=False)

    def forward(self, volumes: Dict[str, torch.Tensor]) -> torch.Tensor:
        taps = {}
        for plane, (t, block) in FT_OPT_TAPS.items():
            x = volumes[plane]
            taps[plane] = self.backbones[plane].encode(x, torch.full((x.shape[0],), t, device=x.device), (block,))[block]
        return self.head(taps).logits


def _make_model(kind: str, width: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "pretrain":
        net = DiffusionUNet(model_channels=width)
        with torch.no_grad():  # the zero-initialised output convs would make the first steps degenerate
            for p in net.parameters():
                if not p.any():
                    p.normal_(0.0, 0.02)
        return net
    return _FineTuneModel(width)


def _step_fn(kind: str, model: torch.nn.Module, opt: torch.optim.Optimizer, bf16: bool, device: torch.device,
             schedule: CosineSchedule, forward: Callable) -> Callable[[Dict[str, torch.Tensor]], torch.Tensor]:
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

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
                warmup: int, device: torch.device, compile_model: bool) -> Dict[str, object]:
    from OrthoDiffusionLib.bench.timing import device_sync
    from OrthoDiffusionLib.bench.peak_memory import PeakMemory

    bf16, channels_last = CONFIGS[name]
    model = copy.deepcopy(base).to(device).train()
    if channels_last:
        for m in model.modules():
            if isinstance(m, DiffusionUNet):
                m.to_channels_last_3d()
    forward = torch.compile(model) if compile_model and name == "ours" else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    step = _step_fn(kind, model, opt, bf16, device, CosineSchedule(), forward)
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
             "ours": "ours (bf16 autocast, channels-last-3d" + (", torch.compile)" if compile_model else ")")}[name]
    row: Dict[str, object] = {"step": kind, "config": label, "median_step_s": median, "steps_per_s": 1.0 / median,
                              "peak_rss_mib": pm.rss_mib, "losses": [round(v, 6) for v in losses],
                              "nonfinite_steps": sum(not math.isfinite(v) for v in losses)}
    if pm.cuda_mib is not None:
        row["peak_cuda_mib"] = pm.cuda_mib
    return row


def bench_train(kinds: Sequence[str] = ("pretrain", "finetune"), width: int = 64, size: int = 256, slices: int = 16,
                batch: int = 10, steps: int = 6, warmup: int = 2, device: str = "cpu", compile_model: bool = False,
                threads: Optional[int] = None, seed: int = 0) -> Dict[str, object]:
    """Time ``steps`` training steps (the first ``warmup`` untimed) of each kind in each configuration (see the
    module docstring). Returns rows, per-kind speed-ups and loss-curve differences."""
    from OrthoDiffusionLib.bench.inference import _device_facts, _setup

    if steps <= warmup:
        raise ValueError(f"steps ({steps}) must exceed warmup ({warmup})")
    dev = _setup(threads, device)
    rows: List[Dict[str, object]] = []
    extra: Dict[str, object] = {}
    for kind in kinds:
        if kind not in ("pretrain", "finetune"):
            raise ValueError(f"unknown step kind {kind!r} (pretrain, finetune)")
        base = _make_model(kind, width, seed)
        batches = _batches(kind, steps, batch, slices, size, seed + 1)
        ref = _run_config(kind, "reference", base, batches, warmup, dev, False)
        ours = _run_config(kind, "ours", base, batches, warmup, dev, compile_model)
        rows += [ref, ours]
        extra[f"speedup_{kind}_ours_over_reference"] = ours["steps_per_s"] / ref["steps_per_s"]
        both = [(a, b) for a, b in zip(ref["losses"], ours["losses"]) if math.isfinite(a) and math.isfinite(b)]
        extra[f"loss_curve_max_rel_diff_{kind}"] = (max(abs(a - b) / max(abs(a), 1e-12) for a, b in both)
                                                    if both else float("nan"))
    return {"rows": rows, **extra, "input": [batch, 1, slices, size, size], "width": width, "steps": steps,
            "warmup": warmup, **_device_facts(dev)}


def _run(args: argparse.Namespace) -> int:
    from OrthoDiffusionLib.bench.timing import print_results

    start = time.perf_counter()
    result = bench_train(tuple(k.strip() for k in args.steps_of.split(",") if k.strip()), args.width, args.size,
                         args.slices, args.batch, args.steps, args.warmup, args.device, args.compile, args.threads)
    result["wall_s"] = time.perf_counter() - start
    rows = result.pop("rows")
    print_results("Training steps: fp32 eager reference vs ours", rows,
                  ["step", "config", "median_step_s", "steps_per_s", "peak_cuda_mib", "peak_rss_mib", "nonfinite_steps",
                   "losses"],
                  result, args.json)
    return 0


def register_train_bench(sub: argparse._SubParsersAction) -> None:
    """The ``train`` subject (in :data:`OrthoDiffusionLib.bench.SUBJECT_REGISTRARS`)."""
    p = sub.add_parser("train", help="training step time: fp32 eager reference vs ours (bf16, channels-last)",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps-of", default="pretrain,finetune", help="pretrain, finetune or both (default)")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--slices", type=int, default=16)
    p.add_argument("--batch", type=int, default=10, help="batch size (default 10, the paper's)")
    p.add_argument("--steps", type=int, default=6, help="steps per configuration, warm-up included (default 6)")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps (default 2)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--compile", action="store_true", help="ours with torch.compile")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    p.set_defaults(func=_run)
