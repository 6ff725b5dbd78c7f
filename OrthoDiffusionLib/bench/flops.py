"""``orthodiffusion bench flops``: FLOPs of the work and the achieved fraction of the device's peak.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matmuls, attention; element-wise
work is not counted, so the FLOP-bound minimum is a lower bound) for:

* one encoder pass (``DiffusionUNet.encode`` to ``mid_2``, the deepest tap an FT-Opt model uses);
* one full exam of ours (:class:`~OrthoDiffusionLib.inference.predictor.Predictor` on the random-weight FT-Opt-shaped model of
  :mod:`.model`, no structure measures);
* one pretraining step (full U-Net forward + backward of the epsilon loss at ``--train-batch``).

Peak: on the CPU the MEASURED throughput of a large 3x3x3 convolution (64 -> 64 channels on 16 x 128 x 128, the
network's commonest layer; fp32, and bf16 autocast when asked), i.e. what this machine's convolution kernels reach;
on CUDA the spec-sheet dense bf16 peak of the GPU (:data:`GPU_BF16_PEAK_TFLOPS`; unknown GPU -> the measured conv).
Each row gives seconds (median after warm-up), achieved TFLOP/s, the fraction of the peak, and
``over_flop_bound`` = seconds / (FLOPs / peak): 1.0 would be FLOP-bound with the conv kernels' speed.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

from ..device import precision_autocast
from .timing import device_facts, device_sync, setup_device, time_callable

__all__ = ["GPU_BF16_PEAK_TFLOPS", "count_flops", "measured_conv_tflops", "bench_flops"]

#: Spec-sheet dense (no sparsity) bf16 tensor-core peak, TFLOP/s, by a substring of the CUDA device name.
GPU_BF16_PEAK_TFLOPS: Dict[str, float] = {"H200": 989.4, "H100 SXM": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0,
                                          "H100": 756.0, "A100": 312.0, "L40S": 362.05, "L4": 121.0,
                                          "A10G": 70.0, "RTX 4090": 165.2}


def count_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs of the torch operators ``fn`` runs (FlopCounterMode; multiply-add = 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    mode = FlopCounterMode(display=False)
    with mode:
        fn()
    return int(mode.get_total_flops())


def measured_conv_tflops(device, precision: str = "fp32", repeats: int = 3, size: int = 128) -> Dict[str, float]:
    """Throughput (TFLOP/s) of Conv3d(64, 64, 3, padding=1) on (1, 64, 16, size, size): median of ``repeats``."""
    import torch

    conv = torch.nn.Conv3d(64, 64, 3, padding=1).to(device).eval()
    x = torch.randn(1, 64, 16, size, size, device=device)

    def run() -> object:
        with torch.inference_mode(), precision_autocast(device, precision):
            return conv(x)

    flops = count_flops(run)
    t = time_callable(run, repeats=repeats, warmup=1, sync=device_sync(device))
    return {"flops": flops, "median_s": t["median_s"], "tflops": flops / t["median_s"] / 1e12}


def _gpu_peak(name: str) -> Optional[float]:
    for key, value in GPU_BF16_PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


def bench_flops(width: int = 64, size: int = 256, slices: int = 16, train_batch: int = 10,
                train_size: Optional[int] = None, repeats: int = 3, device: str = "cpu", precision: str = "fp32",
                threads: Optional[int] = None, exam: bool = True, train: bool = True,
                probe_size: int = 128) -> Dict[str, object]:
    """FLOPs, seconds, achieved rate and fraction of peak of an encoder pass, a full exam and a pretraining step
    (see the module docstring). ``train_size`` (default ``size``) shrinks only the training step; ``probe_size``
    is the in-plane size of the peak probe (128; smaller only for quick checks)."""
    import torch

    from ..model.backbone import DiffusionUNet
    from ..model.schedule import CosineSchedule

    dev = setup_device(threads, device)
    autocast = precision_autocast(dev, precision)
    sync = device_sync(dev)
    if dev.type == "cuda":
        peak = _gpu_peak(torch.cuda.get_device_name(dev))
        peak_source = "spec sheet, dense bf16" if peak else None
    else:
        peak, peak_source = None, None
    conv = measured_conv_tflops(dev, precision, repeats=repeats, size=probe_size)
    if peak is None:
        peak = conv["tflops"]
        peak_source = f"measured Conv3d 64->64 3x3x3 on 16x{probe_size}x{probe_size} ({precision})"
    rows = []

    def add(work: str, flops: int, seconds: float) -> None:
        achieved = flops / seconds / 1e12
        rows.append({"work": work, "gflop": flops / 1e9, "median_s": seconds, "achieved_tflops": achieved,
                     "fraction_of_peak": achieved / peak, "over_flop_bound": seconds / (flops / 1e12 / peak)})

    add(f"Conv3d 64->64 3x3x3, 16x{probe_size}x{probe_size} (the peak probe)", conv["flops"], conv["median_s"])
    net = DiffusionUNet(model_channels=width).to(dev).eval()
    x = torch.randn(1, 1, slices, size, size, device=dev)
    t = torch.full((1,), 50, device=dev, dtype=torch.long)

    def encode() -> object:
        with torch.inference_mode(), autocast:
            return net.encode(x, t, ("mid_2",))

    add(f"encoder pass to mid_2 (1x1x{slices}x{size}x{size})", count_flops(encode),
        time_callable(encode, repeats=repeats, warmup=1, sync=sync)["median_s"])
    net = None  # free the encoder before the exam run (``encode`` is not called again)
    if exam:
        from .model import simulated_exams, synthetic_bundle
        from ..inference.predictor import Predictor

        predictor = Predictor(synthetic_bundle(width, size, slices, full_backbones=False), device=str(dev),
                              precision=precision)
        one = simulated_exams(1, matrix=max(size, 64))[0]

        def predict() -> object:
            return predictor.predict(one, measures=False)

        add("full exam, ours (4 encoder passes + heads + resampling)", count_flops(predict),
            time_callable(predict, repeats=repeats, warmup=1, sync=sync)["median_s"])
        del predictor
    if train:
        ts = int(train_size or size)
        model = DiffusionUNet(model_channels=width).to(dev).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        schedule = CosineSchedule()
        x0 = torch.randn(train_batch, 1, slices, ts, ts, device=dev)
        gen = torch.Generator().manual_seed(0)
        tt = torch.randint(0, schedule.T, (train_batch,), generator=gen).to(dev)
        noise = torch.randn(x0.shape, generator=gen).to(dev)

        def step() -> object:
            with autocast:
                loss = schedule.training_loss(model, x0, t=tt, noise=noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss

        add(f"pretraining step (batch {train_batch}, {slices}x{ts}x{ts}, fwd+bwd+AdamW)", count_flops(step),
            time_callable(step, repeats=repeats, warmup=1, sync=sync)["median_s"])
    return {"rows": rows, "peak_tflops": peak, "peak_source": peak_source, "precision": precision,
            "width": width, "repeats": repeats, **device_facts(dev)}
