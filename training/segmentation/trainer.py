"""The segmentation training loop with exact resume, and per-structure evaluation (Dice, HD95).

Shared by ``train-segmentation`` (diffusion backbone + head) and ``train-seg-baseline`` (from-scratch networks):
the network is a :mod:`.model` module, ``forward(x0, generator) -> logits``.

Loop: epochs over the training cases in a seeded permutation per epoch (a pure function of seed and epoch),
mini-batches of ``batch_size``; augmentation (:class:`.augment.SegAugment`), diffusion noise and nothing else
draw from ONE ``torch.Generator``; loss :class:`.losses.SegmentationLoss` with the plane's class mask; Adam with
a cosine learning-rate decay per optimizer step (a pure function of the step: no scheduler state).

Checkpoints: at the end of every epoch ``RUN/checkpoints/epoch_NNN/`` (``weights.safetensors`` with the network
(``model.``) and optimizer (``opt.``) tensors, ``state.json`` with epoch, config, optimizer layout, RNG states and a
tensor digest) is written into a temporary folder and renamed into place, then ``checkpoints/latest.json`` is
replaced atomically; a kill at any time leaves a complete checkpoint. Resuming restores weights, optimizer and every
RNG, so a resumed run ends with exactly the weights of an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from OrthoDiffusionLib.model.checkpoints import tensors_sha256
from OrthoDiffusionLib.errors import CancelledError, OrthoDiffusionError
from OrthoDiffusionLib.progress import ProgressFn
from OrthoDiffusionLib.segmentation.metrics import evaluate_case, summarize_cases

from .. import run_checkpoints
from ..run_checkpoints import (epoch_permutation, optimizer_state, optimizer_tensors, read_checkpoint,
                              remove_partial_checkpoints, rng_restore, rng_snapshot, truncate_log, write_checkpoint)
from .augment import SegAugment, random_inplane_crop
from .data import SegVolumes
from .losses import DEFAULT_IGNORE_INDEX, SegmentationLoss
from .model import predict_probabilities

CHECKPOINT_FORMAT = "orthodiffusion-segmentation-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
EPOCH_PREFIX = "epoch_"  # checkpoint folders RUN/checkpoints/epoch_NNN
LOG_HEADER = "epoch,loss,ce,dice_loss,lr,seconds,val_mean_dice\n"


@dataclass
class TrainSettings:
    """The loop's settings (taken from the resolved config)."""

    plane: str
    epochs: int
    batch_size: int
    lr: float
    backbone_lr_scale: float = 0.05
    weight_decay: float = 0.0
    seed: int = 0
    ce_weight: float = 0.2
    ce_class_balance: bool = False
    excluded_as: str = "background"
    augment: Optional[Mapping[str, Any]] = None  # SegAugment keyword arguments; None = no augmentation
    crop: int = 0  # train on random in-plane crops of this size (0: whole volumes)
    val_every: int = 0
    eval_noise_draws: int = 1
    eval_seed: int = 1234
    keep_checkpoints: int = 2
    num_classes: int = 12  # 24 with context tissues


def cosine_lr(base: float, step: int, total: int) -> float:
    """Learning rate at optimizer step ``step`` (0-based) of ``total``: base * (1 + cos(pi step / total)) / 2."""
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def epoch_batches(n: int, batch: int, seed: int, epoch: int) -> List[List[int]]:
    """Index batches of epoch ``epoch``: one seeded permutation of n items cut into batches (last may be short)."""
    perm = epoch_permutation(n, seed, epoch).tolist()
    return [perm[i:i + batch] for i in range(0, n, batch)]


# ------------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(run_dir: Path, epoch: int, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    generator: torch.Generator, config: Mapping[str, Any], keep: int = 2,
                    extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``checkpoints/epoch_NNN`` atomically, point ``latest.json`` at it, prune all but the ``keep`` newest."""
    tensors = {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = optimizer_tensors(opt)
    tensors.update(opt_tensors)
    device = next(model.parameters()).device
    state = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION, "epoch": epoch,
             "config": dict(config), "optimizer": opt_meta, "rng": rng_snapshot(generator, device),
             "tensors_sha256": tensors_sha256(tensors), **dict(extra or {})}
    return write_checkpoint(run_dir, EPOCH_PREFIX, epoch, 3, tensors, state, keep, {"epoch": epoch})


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint folder of a run (``latest.json``, else the last complete ``epoch_*``)."""
    return run_checkpoints.latest_checkpoint(run_dir, EPOCH_PREFIX)


def load_checkpoint(path: Path) -> tuple:
    """(tensors, state) of a checkpoint folder; OrthoDiffusionError if unreadable, foreign or corrupt."""
    tensors, state = read_checkpoint(path, CHECKPOINT_FORMAT_VERSION)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise OrthoDiffusionError(f"not a segmentation checkpoint (format {state.get('format')!r})", path)
    return tensors, state


def _config_changes(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> List[str]:
    out = []
    for k in sorted(set(saved) | set(current)):
        a, b = saved.get(k), current.get(k)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(_config_changes(a, b, f"{prefix}{k}."))
        elif json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            out.append(f"{prefix}{k} {a!r} -> {b!r}")
    return out


# -------------------------------------------------------------------------------------------------------- loop
def _check_cancel(cancel: Optional[threading.Event]) -> None:
    if cancel is not None and cancel.is_set():
        raise CancelledError("training cancelled")


def _start_or_resume(run_dir: Path, resume: bool, model: torch.nn.Module, opt: torch.optim.Optimizer,
                     generator: torch.Generator, config: Mapping[str, Any], device: torch.device) -> int:
    """The epoch to start after: 0 for a new run, else the newest checkpoint's, whose model, optimizer and random
    state are loaded. Refuses a folder with checkpoints without ``resume``, and a checkpoint of another config."""
    run_dir.mkdir(parents=True, exist_ok=True)
    latest = latest_checkpoint(run_dir)
    if latest is not None and not resume:
        raise OrthoDiffusionError("the run folder already holds checkpoints; pass --resume to continue it or "
                                  "choose a new --out", run_dir)
    if resume:
        remove_partial_checkpoints(run_dir, EPOCH_PREFIX)
    if latest is None:
        return 0
    tensors, state = load_checkpoint(latest)
    changes = _config_changes(state["config"], config)
    if changes:
        raise OrthoDiffusionError("cannot resume with different settings: " + "; ".join(changes), latest)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    opt.load_state_dict(optimizer_state(tensors, state["optimizer"]))
    rng_restore(state["rng"], generator, device)
    return int(state["epoch"])


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, loss_fn: SegmentationLoss, augment: Optional[SegAugment],
          items: Sequence[Any], generator: torch.Generator, device: torch.device, crop: int = 0) -> Dict[str, float]:
    """One optimisation step on ``items`` (``(image, labels)`` pairs), augmented and, with ``crop``, cut to random
    ``crop`` x ``crop`` in-plane crops; returns the loss terms."""
    x = torch.stack([im for im, _ in items])
    y = torch.stack([lab for _, lab in items])
    if augment is not None:
        x, y = augment(x, y)
    if crop:
        x, y = random_inplane_crop(x, y, crop, generator)
    x, y = x.to(device), y.to(device)
    terms = loss_fn.terms(model(x, generator=generator), y)
    opt.zero_grad(set_to_none=True)
    terms["loss"].backward()
    opt.step()
    return {k: float(v.detach()) for k, v in terms.items()}


def _log_epoch(log_path: Path, epoch: int, means: Mapping[str, float], lr: float, seconds: float,
               model: torch.nn.Module, val_set: Optional[SegVolumes], settings: TrainSettings,
               device: torch.device) -> Optional[float]:
    """Append the epoch's row to ``log.csv``, with the mean validation Dice every ``settings.val_every`` epochs;
    returns that Dice (NaN when no structure could be scored), or None in an epoch without validation."""
    val_dice = None
    if val_set is not None and len(val_set) and settings.val_every and epoch % settings.val_every == 0:
        val = evaluate(model, val_set, settings.plane, device, settings.eval_noise_draws, settings.eval_seed)
        val_dice = val["summary"]["dice"]["mean"]["mean"]
        val_dice = float("nan") if val_dice is None else val_dice
    with open(log_path, "a") as f:
        f.write(f"{epoch},{means['loss']:.6g},{means['ce']:.6g},{means['dice_loss']:.6g},{lr:.6g},{seconds:.1f},"
                f"{float('nan') if val_dice is None else val_dice:.4f}\n")
    return val_dice


def train(model: torch.nn.Module, train_set: SegVolumes, settings: TrainSettings, run_dir: Path,
          config: Mapping[str, Any], *, device: torch.device, resume: bool = False,
          val_set: Optional[SegVolumes] = None, stop_after_epoch: Optional[int] = None,
          progress: Optional[ProgressFn] = None, cancel: Optional[threading.Event] = None,
          show_progress: bool = False, desc: str = "train-segmentation") -> Dict[str, Any]:
    """Train ``model`` (already on ``device``) for ``settings.epochs`` epochs, or resume it from ``run_dir``.

    Args:
        config: the resolved run config, stored in every checkpoint; a resumed run must have the same one.
        val_set: if given with ``settings.val_every``, the mean validation Dice is logged every that many epochs.
        stop_after_epoch: return after the checkpoint of this epoch (a bounded job; continue with ``resume``).
        desc: label of the tqdm bar (``show_progress``).
        progress: ``progress("train", fraction)`` after every step; cancel: a set Event stops between steps
            (CancelledError; the last epoch checkpoint stays).

    Returns:
        {"epoch": last finished epoch, "loss": mean loss of that epoch, "finished": bool}
    """
    if len(train_set) == 0:
        raise OrthoDiffusionError("the training set is empty")
    generator = torch.Generator().manual_seed(settings.seed * 7919 + 29)
    opt = torch.optim.Adam(model.param_groups(settings.lr, settings.backbone_lr_scale),  # type: ignore[operator]
                           lr=settings.lr, weight_decay=settings.weight_decay)
    base_lrs = [g["lr"] for g in opt.param_groups]
    start = _start_or_resume(run_dir, resume, model, opt, generator, config, device)

    loss_fn = SegmentationLoss.for_plane(settings.plane, settings.num_classes, ce_weight=settings.ce_weight,
                                         excluded_as=settings.excluded_as,
                                         ce_class_balance=settings.ce_class_balance).to(device)
    augment = (SegAugment(settings.plane, ignore_index=DEFAULT_IGNORE_INDEX, generator=generator,
                          **{k: (tuple(v) if isinstance(v, list) else v) for k, v in settings.augment.items()})
               if settings.augment is not None else None)
    n = len(train_set)
    steps_per_epoch = math.ceil(n / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs

    log_path = run_dir / "log.csv"
    truncate_log(log_path, start)
    if not log_path.exists():
        log_path.write_text(LOG_HEADER)
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=start * steps_per_epoch, desc=f"{desc} {settings.plane}",
                   unit="step", dynamic_ncols=True)
    epoch, mean_loss = start, float("nan")
    shown_val: Dict[str, str] = {}
    try:
        for epoch in range(start + 1, settings.epochs + 1):
            model.train()
            t0 = time.perf_counter()
            sums = {"loss": 0.0, "ce": 0.0, "dice_loss": 0.0}
            batches = epoch_batches(n, settings.batch_size, settings.seed, epoch - 1)
            for b, idx in enumerate(batches):
                _check_cancel(cancel)
                step = (epoch - 1) * steps_per_epoch + b
                for g, base in zip(opt.param_groups, base_lrs):
                    g["lr"] = cosine_lr(base, step, total_steps)
                terms = _step(model, opt, loss_fn, augment, [train_set[i] for i in idx], generator, device,
                              settings.crop)
                for k in sums:
                    sums[k] += terms[k] * len(idx)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{terms['loss']:.4f}", **shown_val)
                if progress is not None:
                    progress("train", (step + 1) / total_steps)
            mean_loss = sums["loss"] / n
            val_dice = _log_epoch(log_path, epoch, {k: v / n for k, v in sums.items()}, opt.param_groups[0]["lr"],
                                  time.perf_counter() - t0, model, val_set, settings, device)
            if val_dice is not None:
                shown_val = {"val_mean_dice": f"{val_dice:.4f}"}
            save_checkpoint(run_dir, epoch, model, opt, generator, config, settings.keep_checkpoints,
                            {"loss": mean_loss})
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                break
    finally:
        if bar is not None:
            bar.close()
    return {"epoch": epoch, "loss": mean_loss, "finished": epoch >= settings.epochs}


# -------------------------------------------------------------------------------------------------- evaluation
def evaluate(model: torch.nn.Module, dataset: SegVolumes, plane: str, device: torch.device, noise_draws: int = 1,
             seed: int = 1234, progress: Optional[ProgressFn] = None, cancel: Optional[threading.Event] = None,
             stage: str = "evaluate") -> Dict[str, Any]:
    """Per-case and summary Dice / HD95 (mm) of ``model`` on ``dataset`` (on the preprocessed grid).

    The noise comes from a generator seeded with ``seed`` (independent of training). Returns
    ``{"cases": [{"case_id", "patient_id", "dice": {key: v}, "hd95": {key: mm}}], "summary": {"dice": {key|"mean":
    {"mean", "sd", "n"}}, "hd95": {...}}, "n_cases": int}``.
    """
    generator = torch.Generator().manual_seed(int(seed))
    cases = []
    for i in range(len(dataset)):
        _check_cancel(cancel)
        image, labels = dataset[i]
        probs = predict_probabilities(model, image[None].to(device), plane, generator=generator, draws=noise_draws)
        pred = probs[0].argmax(0).to("cpu", torch.uint8).numpy()
        scores = evaluate_case(pred, labels.numpy(), dataset.spacing(i), plane)
        c = dataset.cases[i]
        cases.append({"case_id": c.case_id, "patient_id": c.patient_id, **scores})
        if progress is not None:
            progress(stage, (i + 1) / len(dataset))
    return {"cases": cases, "summary": summarize_metrics(cases), "n_cases": len(cases)}


def summarize_metrics(cases: Sequence[Mapping[str, Any]]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{"dice"|"hd95": {structure key | "mean": {"mean", "sd", "n"}}} over per-case score dicts."""
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for metric in ("dice", "hd95"):
        summary = summarize_cases([c[metric] for c in cases])
        out[metric] = {k: {"mean": _finite(s.mean), "sd": _finite(s.sd), "n": s.n} for k, s in summary.items()}
    return out


def _finite(v: float) -> Optional[float]:
    return None if v is None or not np.isfinite(v) else float(v)
