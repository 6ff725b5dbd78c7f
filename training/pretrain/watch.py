"""What ``orthodiffusion pretrain`` shows and how it stops: the plan printed before the first step, the validation
loss on the manifest's val series (``val_log.csv``), and Ctrl-C as a clean stop.

* :func:`print_plan`: the selected data (the dataset's ``summary``), the steps to go, how many passes over the data
  they are, the network's size, the input size, precision, device and the validation and checkpoint intervals.
* :func:`validation_loss`: the denoising loss of the model on up to ``val_series`` validation volumes at the fixed
  timesteps :data:`VALIDATION_TIMESTEPS`, with a noise draw that is the same at every call (own generator: the
  training RNG is untouched, so an interrupted run still resumes exactly). Comparable across steps and runs of the
  same data; it falls as the backbone learns the anatomy, and rises when it overfits the training series.
* :class:`InterruptRequest`: while installed (main thread only), the first Ctrl-C (SIGINT) only sets
  ``requested``; the loop then stops at the end of the step with a checkpoint and the backbone file, exactly as
  ``--time-limit`` does. A second Ctrl-C raises KeyboardInterrupt at once.
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import torch

from OrthoDiffusionLib.model.schedule import CosineSchedule

__all__ = ["VALIDATION_TIMESTEPS", "InterruptRequest", "print_plan", "validation_loss", "log_validation"]

VALIDATION_TIMESTEPS = (50, 200, 500, 800)


class InterruptRequest:
    """Ctrl-C as a request to stop after the current step (module doc)."""

    def __init__(self) -> None:
        import signal

        self.requested = False
        self._previous: Any = None
        self.installed = threading.current_thread() is threading.main_thread()
        if self.installed:
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        import signal

        if self.requested:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        print("\npretrain: Ctrl-C: stopping after this step with a checkpoint and the backbone "
              "(press Ctrl-C again to abort at once)", file=sys.stderr, flush=True)

    def restore(self) -> None:
        import signal

        if self.installed and self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def print_plan(cfg, dataset, val_set, model: torch.nn.Module, world: int, device: torch.device, start: int) -> None:
    """Two lines: what will be trained on, and how much (rank 0, before the first step)."""
    n = len(dataset)
    summary = getattr(dataset, "summary", None) or f"{n} training volumes"
    print(f"pretrain {cfg.plane}: {summary}", flush=True)
    params = sum(p.numel() for p in model.parameters())
    samples = (cfg.steps - start) * cfg.batch_size * world
    passes = "" if hasattr(dataset, "virtual_epochs") else f" (about {samples / n:.1f} passes over the {n} volumes)"
    grid = f" on a {cfg.slice_mm:g} mm x {cfg.inplane_mm:g} mm grid" if cfg.slice_mm is not None else ""
    val = (f"validation loss on {len(val_set)} val series every {cfg.val_every} steps" if val_set is not None
           else "no validation series")
    print(f"pretrain {cfg.plane}: {cfg.steps - start} steps to go of {cfg.steps} at batch {cfg.batch_size} x "
          f"{world} process(es){passes}; network {params / 1e6:.2f} M parameters (width {cfg.width}, channel "
          f"multipliers {','.join(map(str, cfg.channel_mult))}, patch {cfg.patch_size}); input {cfg.slices} x "
          f"{cfg.size} x {cfg.size}{grid}; {cfg.precision} on {device}; {val}; checkpoint every {cfg.ckpt_every} steps",
          flush=True)


@torch.no_grad()
def validation_loss(cfg, model: torch.nn.Module, schedule: CosineSchedule, val_set, device: torch.device) -> float:
    """Mean denoising loss on the validation volumes (module doc); leaves ``model`` in eval mode."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 4242)
    model.eval()
    total, count = 0.0, 0
    for i in range(len(val_set)):
        x0 = val_set[i][None].to(device)
        for t in VALIDATION_TIMESTEPS:
            tt = torch.full((1,), min(t, schedule.T - 1), dtype=torch.long, device=device)
            noise = torch.randn(x0.shape, generator=gen).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                total += float(schedule.training_loss(model, x0, t=tt, noise=noise))
            count += 1
    return total / max(count, 1)


def log_validation(run_dir: Path, step: int, value: float) -> None:
    """Append ``step,val_loss`` to ``RUN_DIR/val_log.csv``."""
    path = Path(run_dir) / "val_log.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        if new:
            f.write("step,val_loss\n")
        f.write(f"{step},{value:.6g}\n")
