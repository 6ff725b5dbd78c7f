"""Exact-resume checkpoints and the epoch loop of diagnosis training.

One file, ``RUN/checkpoint.safetensors``, rewritten atomically at the end of every epoch (and after every stage that
has no epochs). Tensors: the state dicts of all trained parts so far (``part.<name>.<key>``) and the optimizer state
of the stage in progress (``opt.<index>.<name>``). Metadata ``state`` (JSON): completed stages, the stage in progress
and its next epoch, the optimizer's non-tensor state, the LR scheduler's state, the RNG states, and the settings the
run must agree on to resume.

Determinism does not rest on the saved RNG alone: the sample order of an epoch, the noise of a fine-tuning step and
the initial weights of every part come from generators seeded by ``(seed, stage, epoch, step)`` (:func:`derived_seed`),
so a resumed run repeats exactly what the uninterrupted one does.
"""
from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from OrthoDiffusionLib.atomic import atomic_path
from OrthoDiffusionLib.model.checkpoints import tensors_sha256
from OrthoDiffusionLib.errors import CancelledError, CorruptFileError, InputError
from OrthoDiffusionLib.progress import ProgressFn

from ..run_checkpoints import optimizer_state, optimizer_tensors, rng_restore, rng_snapshot
from ..run_files import utc_now

__all__ = ["CHECKPOINT_NAME", "derived_seed", "cosine_lambda", "RunState", "EpochLoop"]

CHECKPOINT_NAME = "checkpoint.safetensors"
CHECKPOINT_FORMAT = "orthodiffusion.diagnosis-checkpoint"


def derived_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed that depends only on ``seed`` and ``parts`` (e.g. stage name, epoch, step)."""
    text = "|".join([str(int(seed)), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def cosine_lambda(total_steps: int) -> Callable[[int], float]:
    """LR factor ``0.5 (1 + cos(pi step / total))`` for :class:`torch.optim.lr_scheduler.LambdaLR`."""
    total = max(1, int(total_steps))
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


@dataclass
class RunState:
    """What a checkpoint holds (module doc). ``parts`` are live modules, saved by reference."""

    path: Path
    settings: Dict[str, Any]
    parts: Dict[str, nn.Module] = field(default_factory=dict)
    completed: List[str] = field(default_factory=list)
    stage: Optional[str] = None
    next_epoch: int = 0
    optimizer: Optional[Dict[str, Any]] = None        # (tensors, meta) of the stage in progress when loaded
    scheduler: Optional[Dict[str, Any]] = None
    extra: Dict[str, Any] = field(default_factory=dict)  # small JSON facts (e.g. counts) of completed stages
    _loaded_parts: Dict[str, Dict[str, torch.Tensor]] = field(default_factory=dict)
    _rng: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------------------------------------------ parts
    def add_part(self, name: str, module: nn.Module) -> nn.Module:
        """Register ``module``; when resuming and the checkpoint has it, its saved weights are loaded into it."""
        saved = self._loaded_parts.pop(name, None)
        if saved is not None:
            module.load_state_dict(saved, strict=True)
        self.parts[name] = module
        return module

    # ------------------------------------------------------------------------------------------------ files
    def save(self, stage: Optional[str], next_epoch: int, optimizer: Optional[torch.optim.Optimizer] = None,
             scheduler: Optional[Any] = None) -> None:
        from safetensors.torch import save_file

        tensors: Dict[str, torch.Tensor] = {}
        for name, module in self.parts.items():
            for k, v in module.state_dict().items():
                tensors[f"part.{name}.{k}"] = v.detach().to("cpu").contiguous().clone()
        opt_meta = None
        if optimizer is not None:
            opt_tensors, opt_meta = optimizer_tensors(optimizer)
            tensors.update(opt_tensors)
        state = {"format": CHECKPOINT_FORMAT, "version": 1, "settings": self.settings, "completed": self.completed,
                 "stage": stage, "next_epoch": int(next_epoch), "optimizer": opt_meta,
                 "scheduler": None if scheduler is None else scheduler.state_dict(),
                 "rng": rng_snapshot(torch.Generator(), torch.device("cpu")), "extra": self.extra,
                 "parts": sorted(self.parts), "tensors_sha256": tensors_sha256(tensors)}
        with atomic_path(self.path) as tmp:
            save_file(tensors, str(tmp), metadata={"state": json.dumps(state, default=float)})

    @classmethod
    def load(cls, path: Path, settings: Mapping[str, Any]) -> "RunState":
        """Read a checkpoint written for the same ``settings``; raises ``CorruptFileError`` / ``InputError``."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                state = json.loads((f.metadata() or {})["state"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # noqa: BLE001 - any read problem is a corrupt checkpoint
            raise CorruptFileError(f"unreadable training checkpoint ({str(e).splitlines()[0][:200]})", path) from None
        if state.get("format") != CHECKPOINT_FORMAT or tensors_sha256(tensors) != state.get("tensors_sha256"):
            raise CorruptFileError("not a diagnosis training checkpoint, or it fails its integrity check", path)
        if json.loads(json.dumps(dict(settings), default=float)) != state["settings"]:
            diff = sorted(k for k in set(settings) | set(state["settings"])
                          if json.loads(json.dumps(settings.get(k), default=float)) != state["settings"].get(k))
            raise InputError(f"cannot resume: the run was started with different settings ({', '.join(diff)})", path)
        out = cls(path, dict(settings), completed=list(state["completed"]), stage=state["stage"],
                  next_epoch=int(state["next_epoch"]), scheduler=state["scheduler"], extra=dict(state["extra"]))
        for name in state["parts"]:
            prefix = f"part.{name}."
            out._loaded_parts[name] = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if state["optimizer"] is not None:
            out.optimizer = optimizer_state({k: v for k, v in tensors.items() if k.startswith("opt.")},
                                             state["optimizer"])
        out._rng = state["rng"]
        return out

    @classmethod
    def open(cls, run: Path, settings: Mapping[str, Any], resume: bool, kind: str = "training") -> "RunState":
        """The state of a run folder: a new run, or (``resume``) the one in its ``checkpoint.safetensors``.

        Refuses a folder holding a finished run (``run.json``), an unfinished one without ``resume``, and
        ``resume`` without a checkpoint (:class:`InputError`; ``kind`` names the run in the message). Records
        ``extra["started"]`` (ISO time, kept on resume)."""
        path = run / CHECKPOINT_NAME
        if (run / "run.json").is_file():
            raise InputError(f"already holds a finished {kind} run; choose another --out", run)
        if path.is_file() and not resume:
            raise InputError("holds an unfinished run (checkpoint.safetensors): add --resume, or choose another --out",
                             run)
        if resume and not path.is_file():
            raise InputError("--resume given but there is no checkpoint.safetensors to resume from", run)
        run.mkdir(parents=True, exist_ok=True)
        state = cls.load(path, settings) if resume else cls(path, dict(settings))
        state.extra.setdefault("started", utc_now())
        return state

    def restore_rng(self) -> None:
        if self._rng is not None:
            rng_restore(self._rng, torch.Generator(), torch.device("cpu"))
            self._rng = None

    def complete(self, stage: str) -> None:
        """Mark ``stage`` done and checkpoint."""
        if stage not in self.completed:
            self.completed.append(stage)
        self.save(None, 0)


@dataclass
class EpochLoop:
    """Runs the epochs of one stage with checkpoints, cancellation, progress and a log.

    After every epoch the row ``{"stage", "epoch", "train_loss", "lr", "seconds", **evaluate()}`` is appended to
    ``state.extra["log"]`` (so the log is saved with, and resumes with, the checkpoint), then ``log(row)`` is called.
    """

    state: RunState
    log: Callable[[Dict[str, Any]], None]
    progress: Optional[ProgressFn] = None
    cancel: Optional[threading.Event] = None
    step_log: Optional[Callable[[str, int, float], None]] = None  # (stage, epoch 1-based, running mean loss)

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise CancelledError("training cancelled (resume with --resume)")

    def run(self, stage: str, param_groups: Sequence[Dict[str, Any]], n_samples: int, batch_size: int, epochs: int,
            step: Callable[[torch.Tensor, int, int], torch.Tensor],
            evaluate: Optional[Callable[[], Dict[str, float]]] = None, schedule: str = "cosine") -> None:
        """Adam + per-step ``cosine`` (or ``constant``) learning rate over ``epochs``; ``step(indices, epoch,
        batch_no) -> loss`` (weighted mean over the batch). Skips a completed stage; continues a stage in progress
        from its checkpoint."""
        if stage in self.state.completed:
            return
        opt = torch.optim.Adam(param_groups)
        steps_per_epoch = max(1, math.ceil(n_samples / batch_size))
        if schedule not in ("cosine", "constant"):
            raise ValueError(f"unknown schedule {schedule!r}; expected cosine or constant")
        factor = cosine_lambda(epochs * steps_per_epoch) if schedule == "cosine" else (lambda step: 1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        start = 0
        if self.state.stage == stage:
            if self.state.optimizer is not None:
                opt.load_state_dict(self.state.optimizer)
            if self.state.scheduler is not None:
                sched.load_state_dict(self.state.scheduler)
            start = self.state.next_epoch
            self.state.restore_rng()
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            order = torch.randperm(n_samples, generator=torch.Generator().manual_seed(
                derived_seed(self.state.settings.get("seed", 0), stage, "order", epoch)))
            total, count = 0.0, 0
            for b, begin in enumerate(range(0, n_samples, batch_size)):
                idx = order[begin:begin + batch_size]
                loss = step(idx, epoch, b)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
                if self.progress is not None:
                    self.progress(stage, (epoch + (b + 1) / steps_per_epoch) / epochs)
                if self.step_log is not None:
                    self.step_log(stage, epoch + 1, total / max(count, 1))
                self.check_cancel()  # a cancel mid-epoch resumes from the previous epoch's checkpoint
            row = {"stage": stage, "epoch": epoch + 1, "train_loss": total / max(count, 1),
                   "lr": opt.param_groups[-1]["lr"], "seconds": time.perf_counter() - t0}
            if evaluate is not None:
                row.update(evaluate())
            self.state.extra.setdefault("log", []).append(row)
            self.state.stage = stage
            self.state.save(stage, epoch + 1, opt, sched)
            self.log(row)
            self.check_cancel()
        self.state.stage = None
        self.state.complete(stage)
