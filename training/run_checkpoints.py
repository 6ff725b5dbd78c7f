"""Exact-resume checkpoints shared by the trainers (pretraining, segmentation, diagnosis).

Checkpoint folders (pretraining ``step_NNNNNNN``, segmentation ``epoch_NNN``)::

    RUN/checkpoints/<prefix>NNN/weights.safetensors   tensors (model., ema., opt. ...)
    RUN/checkpoints/<prefix>NNN/state.json            format, version, counters, RNG, optimizer layout, tensors_sha256
    RUN/checkpoints/latest.json                       {"dir": name, ...}: the newest complete one (written last)

A folder is written into a hidden temporary folder and renamed into place, then ``latest.json`` is replaced
atomically and all but the ``keep`` newest folders of the prefix are removed, so a kill at any moment leaves the
previous complete checkpoint usable. :func:`latest_checkpoint` follows ``latest.json`` and falls back to the newest
complete folder.

Also here: the RNG state a checkpoint carries (:func:`rng_snapshot` / :func:`rng_restore`), the optimizer state split
into safetensors tensors and JSON (:func:`optimizer_tensors` / :func:`optimizer_state`), the seeded data order of an
epoch (:func:`epoch_permutation`) and the log truncation on resume (:func:`truncate_log`).
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from OrthoDiffusionLib.atomic import atomic_path
from OrthoDiffusionLib.model.checkpoints import tensors_sha256
from OrthoDiffusionLib.errors import OrthoDiffusionError

__all__ = ["CHECKPOINTS", "LATEST", "checkpoint_root", "write_checkpoint", "remove_partial_checkpoints", "latest_checkpoint",
           "read_checkpoint",
           "rng_snapshot", "rng_restore", "optimizer_tensors", "optimizer_state", "epoch_permutation",
           "truncate_log"]

CHECKPOINTS = "checkpoints"
LATEST = "latest.json"
_WEIGHTS = "weights.safetensors"
_STATE = "state.json"


def checkpoint_root(run_dir: Path) -> Path:
    """``RUN/checkpoints``."""
    return Path(run_dir) / CHECKPOINTS


# ------------------------------------------------------------------------------------------------ folders
def write_checkpoint(run_dir: Path, prefix: str, number: int, width: int, tensors: Mapping[str, torch.Tensor],
                     state: Mapping[str, Any], keep: int, pointer: Optional[Mapping[str, Any]] = None) -> Path:
    """Write checkpoint folder ``<prefix><number:0width>`` atomically, point ``latest.json`` at it (with ``pointer``
    facts beside ``dir``), and remove all but the ``keep`` (at least 1) newest ``<prefix>*`` folders.

    Args:
        tensors: CPU tensors for ``weights.safetensors``. state: JSON for ``state.json``.

    Returns:
        The checkpoint folder.
    """
    from safetensors.torch import save_file

    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"{prefix}{int(number):0{width}d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
    try:
        save_file(dict(tensors), str(tmp / _WEIGHTS))
        (tmp / _STATE).write_text(json.dumps(state))
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with atomic_path(root / LATEST) as t:
        t.write_text(json.dumps({**dict(pointer or {}), "dir": name}) + "\n")
    done = sorted(p for p in root.glob(f"{prefix}*") if p.is_dir())
    for old in done[: max(0, len(done) - max(1, int(keep)))]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def remove_partial_checkpoints(run_dir: Path, prefix: str) -> None:
    """Remove the temporary folders a kill during :func:`write_checkpoint` left behind."""
    for stale in checkpoint_root(run_dir).glob(f".{prefix}*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def latest_checkpoint(run_dir: Path, prefix: str) -> Optional[Path]:
    """The newest complete checkpoint folder of a run (``latest.json``, else the last complete ``<prefix>*``)."""
    root = checkpoint_root(run_dir)
    pointer = root / LATEST
    if pointer.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError, OSError):
            p = root / json.loads(pointer.read_text())["dir"]
            if (p / _STATE).is_file() and (p / _WEIGHTS).is_file():
                return p
    complete = sorted(p for p in root.glob(f"{prefix}*") if (p / _STATE).is_file())
    return complete[-1] if complete else None


def read_checkpoint(path: Path, format_version: int) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(tensors, state) of a checkpoint folder.

    Raises:
        OrthoDiffusionError: unreadable, another format version, or tensors that fail their sha256.
    """
    from safetensors.torch import load_file

    try:
        state = json.loads((path / _STATE).read_text())
        tensors = load_file(str(path / _WEIGHTS))
    except Exception as e:  # noqa: BLE001 - any read problem is a corrupt checkpoint
        raise OrthoDiffusionError(f"unreadable checkpoint ({str(e).splitlines()[0][:200]})", path) from None
    if state.get("format_version") != format_version:
        raise OrthoDiffusionError(f"unsupported checkpoint format version {state.get('format_version')!r}", path)
    if tensors_sha256(tensors) != state.get("tensors_sha256"):
        raise OrthoDiffusionError("checkpoint integrity check failed (tensors do not match their sha256)", path)
    return tensors, state


# ------------------------------------------------------------------------------------------------ RNG, optimizer
def rng_snapshot(noise_gen: torch.Generator, device: torch.device) -> Dict[str, Any]:
    """JSON-able state of Python's, NumPy's, torch's (and CUDA's on a CUDA ``device``) global RNGs and ``noise_gen``."""
    np_state = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
        "cuda": torch.cuda.get_rng_state(device).tolist() if device.type == "cuda" else None,
        "noise": noise_gen.get_state().tolist(),
    }


def rng_restore(snap: Mapping[str, Any], noise_gen: torch.Generator, device: torch.device) -> None:
    """Set the RNGs :func:`rng_snapshot` recorded (CUDA's only on a CUDA ``device``)."""
    v, state, gauss = snap["python"]
    random.setstate((v, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = snap["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(snap["torch"], dtype=torch.uint8))
    if device.type == "cuda" and snap.get("cuda") is not None:
        torch.cuda.set_rng_state(torch.tensor(snap["cuda"], dtype=torch.uint8), device)
    noise_gen.set_state(torch.tensor(snap["noise"], dtype=torch.uint8))


def optimizer_tensors(opt: torch.optim.Optimizer) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """An optimizer's state as (``opt.<param index>.<name>`` CPU tensors, JSON layout + param groups)."""
    sd = opt.state_dict()
    tensors, layout = {}, {}
    for idx, st in sd["state"].items():
        layout[str(idx)] = {}
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{idx}.{name}"] = value.detach().to("cpu").contiguous()
                layout[str(idx)][name] = "tensor"
            else:
                layout[str(idx)][name] = value
    return tensors, {"state": layout, "param_groups": sd["param_groups"]}


def optimizer_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Dict[str, Any]:
    """The ``optimizer.load_state_dict`` argument from :func:`optimizer_tensors`' two parts."""
    state = {}
    for idx, names in meta["state"].items():
        state[int(idx)] = {n: (tensors[f"opt.{idx}.{n}"] if v == "tensor" else v) for n, v in names.items()}
    return {"state": state, "param_groups": meta["param_groups"]}


# ------------------------------------------------------------------------------------------------ resume
def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """(n,) int64: the data order of ``epoch``, from a generator seeded by (seed, epoch) only."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g)


def truncate_log(path: Path, start: int) -> None:
    """On resume drop the CSV log rows whose first column (step or epoch) is after ``start`` (they belong to the lost
    part of a killed run)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    keep = [lines[0]] + [ln for ln in lines[1:] if ln and int(ln.split(",")[0]) <= start] if lines else []
    with atomic_path(path) as t:
        t.write_text("".join(f"{ln}\n" for ln in keep))
