"""Pretraining of one plane's diffusion backbone (``orthodiffusion pretrain``), on one process, many GPUs or many nodes.

Recipe (the paper and the authors' code): unconditional epsilon-prediction DDPM on 1 x 16 x 256 x 256 volumes of ONE
plane, cosine schedule (T = 1000), MSE loss, Adam with lr = lr_per_sample x batch x world size (1e-5 per sample),
EMA of the weights (decay 0.995) updated every 10 steps from step 2000 -- before that step the EMA is reset to the
model at each update, as in the authors' trainer (see :class:`EMA`) -- checkpoints every 500 steps, fp32 (bf16 autocast on request).

Why plain PyTorch DDP and not Lightning (the design doc's default for training loops): the acceptance test demands
that a run killed mid-way and resumed reaches BIT-IDENTICAL weights. That needs the exact position inside the data
order, every RNG (global torch/numpy/python, the per-rank noise generator) and the EMA captured in the checkpoint and
restored before the next step; Lightning restores mid-epoch dataloader position and custom generators only
approximately. Here the data order is a pure function of (seed, step, rank, world size) (a DistributedSampler-style
sharding of one seeded permutation per epoch), so it needs no state at all, and everything else is saved explicitly.

Multi-GPU / multi-node: launch with ``torchrun --nproc_per_node=N [--nnodes ...] -m OrthoDiffusionLib pretrain ...``
(the environment variables RANK / WORLD_SIZE / LOCAL_RANK select DDP; nccl on GPU, gloo on CPU). ``--batch-size`` is
per process.

Run folder::

    RUN_DIR/config.json                       the run's configuration
    RUN_DIR/log.csv                           step, loss, lr, steps_per_s, samples_per_s (rank 0)
    RUN_DIR/val_log.csv                       step, val_loss: denoising loss on the validation series (manifest)
    RUN_DIR/curves.png                        both drawn (written when the run ends or stops)
    RUN_DIR/tb/                               TensorBoard events (if tensorboard is installed)
    RUN_DIR/checkpoints/step_NNNNNNN/         weights.safetensors (model., ema., opt., rng. tensors) + state.json
    RUN_DIR/checkpoints/latest.json           the newest complete checkpoint (written last, atomically)
    RUN_DIR/samples/step_NNNNNNN.nii.gz       DDIM samples from the EMA weights
    RUN_DIR/backbone_{plane}.safetensors      the final EMA backbone (OrthoDiffusionLib.model.checkpoints format)
    RUN_DIR/summary.json                      final step, loss, weight digests of every rank (must agree)

Every checkpoint is written into a temporary folder that is renamed into place (os.replace) only when complete, so a
kill at any moment leaves either the previous or the new checkpoint, never a half-written one. Ctrl-C (SIGINT) stops
like ``time_limit``: at the end of the current step, with a checkpoint and the backbone file (a second Ctrl-C aborts
at once).

Data: image series only (label maps are left out by name and content), from the manifest's training split unless
``splits`` says otherwise (:mod:`training.pretrain.data`); a summary of what will be trained on is printed before the
first step.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist

from OrthoDiffusionLib.device import check_precision, precision_autocast, resolve_device
from OrthoDiffusionLib.model.backbone import DiffusionUNet
from OrthoDiffusionLib.model.checkpoints import atomic_path, save_backbone, tensors_sha256
from OrthoDiffusionLib.errors import InputError, MissingPathError, OrthoDiffusionError
from OrthoDiffusionLib.labels import PLANES, SHARED_PLANE
from OrthoDiffusionLib.model.schedule import CosineSchedule
from OrthoDiffusionLib.progress import ProgressFn
from .watch import InterruptRequest, log_validation, print_plan, validation_loss
from ..run_checkpoints import (epoch_permutation, latest_checkpoint, optimizer_state, optimizer_tensors,
                              read_checkpoint, remove_partial_checkpoints, rng_restore, rng_snapshot, truncate_log,
                              write_checkpoint)

__all__ = [
    "PretrainConfig",
    "VolumeDataset",
    "InMemoryVolumes",
    "SeriesVolumes",
    "PoolWindows",
    "EMA",
    "batch_indices",
    "load_training_set",
    "pretrain",
]

CHECKPOINT_FORMAT_VERSION = 1
STEP_PREFIX = "step_"  # checkpoint folders RUN/checkpoints/step_NNNNNNN
# config keys that define the network, data and optimisation; a resumed run must agree on them
_STRUCTURAL = ("plane", "batch_size", "lr_per_sample", "ema_decay", "ema_every", "ema_start", "width", "channel_mult",
               "attention_resolutions", "num_heads", "size", "slices", "precision", "seed", "timesteps", "patch_size",
               "norm_groups", "crop", "slice_mm", "inplane_mm")


@dataclass
class PretrainConfig:
    """Settings of a pretraining run (defaults = the authors' recipe; ``batch_size`` is per process)."""

    plane: str = "sagittal"
    out: str = "runs/pretrain"
    steps: int = 21500
    batch_size: int = 10
    lr_per_sample: float = 1e-5
    ema_decay: float = 0.995
    ema_every: int = 10
    ema_start: int = 2000
    ckpt_every: int = 500
    keep_checkpoints: int = 3
    sample_every: int = 0  # 0: no samples
    sample_steps: int = 25
    log_every: int = 10
    width: int = 64
    channel_mult: Tuple[int, ...] = (1, 1, 2, 2, 4)
    attention_resolutions: Tuple[int, ...] = (16,)
    num_heads: int = 1
    patch_size: int = 1  # in-plane space-to-depth factor (CPU-scale configurations)
    norm_groups: int = 32
    size: int = 256
    crop: int = 0  # with a pool: random in-plane crops of this many pixels at the pool's resolution (0: whole)
    slices: int = 16
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    seed: int = 0
    timesteps: int = 1000
    grad_checkpoint: bool = False
    num_workers: int = 0
    device: str = "auto"  # auto | cpu | cuda
    resume: bool = False
    splits: Tuple[str, ...] = ("train",)  # manifest splits to train on
    slice_mm: Optional[float] = None  # model grid (both or neither): series resampled to it before the 16 slices
    inplane_mm: Optional[float] = None
    val_every: int = 500  # validation loss on the manifest's val series every N steps (0: never)
    val_series: int = 16  # at most this many validation series

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_resolutions = tuple(int(a) for a in self.attention_resolutions)
        self.splits = tuple(self.splits)
        if (self.slice_mm is None) != (self.inplane_mm is None):
            raise OrthoDiffusionError("give both --slice-mm and --inplane-mm, or neither")
        if self.plane not in PLANES + (SHARED_PLANE,):
            raise OrthoDiffusionError(f"plane must be one of {', '.join(PLANES + (SHARED_PLANE,))}, got {self.plane!r}")
        check_precision(self.precision)
        for name in ("steps", "batch_size", "ema_every", "ckpt_every", "log_every", "sample_steps", "timesteps"):
            if int(getattr(self, name)) < 1:
                raise OrthoDiffusionError(f"{name} must be >= 1, got {getattr(self, name)}")
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.crop and self.crop % (factor * self.patch_size):
            raise OrthoDiffusionError(f"--crop must be a multiple of {factor * self.patch_size} for this network")
        if self.size % (factor * self.patch_size) or self.slices % factor:
            raise OrthoDiffusionError(f"--size must be a multiple of {factor * self.patch_size} and --slices of "
                                      f"{factor} for this network")

    def model(self) -> DiffusionUNet:
        return DiffusionUNet(model_channels=self.width, channel_mult=self.channel_mult,
                             attention_resolutions=self.attention_resolutions, num_heads=self.num_heads,
                             use_checkpoint=self.grad_checkpoint, patch_size=self.patch_size,
                             norm_groups=self.norm_groups)

    def grid(self) -> Dict[str, float]:
        """The model grid as ``preprocess_series`` keyword arguments ({} when resized only)."""
        return {} if self.slice_mm is None else {"slice_mm": float(self.slice_mm), "inplane_mm": float(self.inplane_mm)}

    def to_json(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_resolutions"] = list(self.attention_resolutions)
        d["splits"] = list(self.splits)
        return d


# ------------------------------------------------------------------------------------------------------- data
class VolumeDataset(torch.utils.data.Dataset):
    """Training volumes: ``dataset[i]`` -> float32 tensor (1, slices, size, size) in [-1, 1]."""

    def __len__(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def __getitem__(self, i: int) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class InMemoryVolumes(VolumeDataset):
    """Volumes already preprocessed, each (slices, size, size) or (1, slices, size, size)."""

    def __init__(self, volumes: Sequence[Union[np.ndarray, torch.Tensor]]):
        self.volumes = [torch.as_tensor(np.asarray(v, dtype=np.float32)).reshape(1, *np.shape(v)[-3:])
                        for v in volumes]

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.volumes[i]


class SeriesVolumes(VolumeDataset):
    """Series files/folders read with ``OrthoDiffusionLib.io.read_series`` and preprocessed with
    ``OrthoDiffusionLib.inference.preprocess.preprocess_series(slices, size)`` (16 central slices, resize, [-1, 1]).

    Preprocessed volumes are cached as ``.npy`` in ``cache_dir`` (keyed by path, slices and size) so each series is
    read once per run; without ``cache_dir`` they are kept in memory.
    """

    def __init__(self, paths: Sequence[Union[str, os.PathLike]], slices: int, size: int,
                 cache_dir: Optional[Union[str, os.PathLike]] = None, grid: Optional[Dict[str, float]] = None):
        self.paths = [os.fspath(p) for p in paths]
        self.slices, self.size = slices, size
        self.grid = dict(grid or {})  # slice_mm / inplane_mm of the model grid ({}: resize only)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._memory: Dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def _cache_file(self, i: int) -> Optional[Path]:
        if self.cache_dir is None:
            return None
        grid = "|".join(f"{k}={v}" for k, v in sorted(self.grid.items()))
        key = hashlib.sha256(f"{os.path.abspath(self.paths[i])}|{self.slices}|{self.size}{'|' + grid if grid else ''}"
                             .encode()).hexdigest()[:24]
        return self.cache_dir / f"{key}.npy"

    def load(self, i: int) -> np.ndarray:
        """Read + preprocess series i -> (slices, size, size) float32."""
        from OrthoDiffusionLib.io import read_series
        from OrthoDiffusionLib.inference.preprocess import preprocess_series

        return preprocess_series(read_series(self.paths[i]), slices=self.slices, size=self.size, **self.grid).volume

    def __getitem__(self, i: int) -> torch.Tensor:
        if i in self._memory:
            return self._memory[i]
        cache = self._cache_file(i)
        if cache is not None and cache.is_file():
            vol = np.load(cache, allow_pickle=False)
        else:
            vol = np.ascontiguousarray(self.load(i), dtype=np.float32)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(cache) as tmp:
                    with open(tmp, "wb") as f:
                        np.save(f, vol, allow_pickle=False)
        t = torch.from_numpy(vol).reshape(1, self.slices, self.size, self.size)
        if cache is None:
            self._memory[i] = t
        return t


class ImageSeriesVolumes(SeriesVolumes):
    """``SeriesVolumes`` of pretraining: a series whose content is a label map is refused (InputError naming it)."""

    def load(self, i: int) -> np.ndarray:
        from OrthoDiffusionLib.io import read_series
        from OrthoDiffusionLib.inference.preprocess import preprocess_series

        from .data import looks_like_labelmap

        series = read_series(self.paths[i])
        if looks_like_labelmap(series.array):
            raise InputError("this is a label map (whole numbers, few distinct values), not an image: it cannot be "
                             "a pretraining series; list images in the manifest's series_path", self.paths[i])
        return preprocess_series(series, slices=self.slices, size=self.size, **self.grid).volume


def _plane_selected(series_plane: str, plane: str) -> bool:
    """Whether a series of ``series_plane`` belongs to a run of ``plane`` (``shared``: every plane)."""
    return series_plane == plane or (plane == SHARED_PLANE and series_plane in PLANES)


def load_training_set(plane: str, manifest: Optional[Union[str, os.PathLike]] = None,
                      data: Optional[Union[str, os.PathLike]] = None, slices: int = 16, size: int = 256,
                      cache_dir: Optional[Union[str, os.PathLike]] = None,
                      splits: Sequence[str] = ("train",), grid: Optional[Dict[str, float]] = None) -> VolumeDataset:
    """Training volumes of one plane from a manifest CSV (image rows of that plane in ``splits``; relative
    ``series_path`` are relative to the CSV; read lazily, cached in ``cache_dir``) or from a folder (every image
    series of that plane found under it, label maps and duplicate copies left out, read and preprocessed up front).
    The dataset's ``summary`` says what was selected (:mod:`training.pretrain.data`)."""
    from .data import select_folder_series, select_manifest_rows

    if (manifest is None) == (data is None):
        raise OrthoDiffusionError("give exactly one of --manifest or --data")
    if manifest is not None:
        try:
            sel = select_manifest_rows(manifest, plane, splits)
        except InputError as e:
            if "no image rows" in e.problem:
                raise InputError(f"no rows with plane={plane} and split={'/'.join(splits)}", manifest) from None
            raise
        dataset: VolumeDataset = ImageSeriesVolumes(sel.paths, slices=slices, size=size, cache_dir=cache_dir,
                                                    grid=grid)
    else:
        from OrthoDiffusionLib.inference.preprocess import preprocess_series

        sel = select_folder_series(data, plane)
        dataset = InMemoryVolumes([preprocess_series(s, slices=slices, size=size, **(grid or {})).volume
                                   for s in sel.series])
    dataset.summary = sel.summary()  # type: ignore[attr-defined]
    return dataset


def validation_set(cfg, manifest):
    """Up to ``cfg.val_series`` readable val series of the manifest's plane(s), in memory; None without a manifest,
    with ``val_every`` 0, when val is trained on, or when the manifest has no readable val series."""
    if manifest is None or not cfg.val_every or "val" in cfg.splits:
        return None
    from .data import select_manifest_rows

    try:
        sel = select_manifest_rows(manifest, cfg.plane, ("val",))
    except InputError:
        return None
    volumes = []
    for path in sel.paths[: cfg.val_series]:
        try:
            volumes.append(ImageSeriesVolumes([path], cfg.slices, cfg.size, grid=cfg.grid())[0])
        except OrthoDiffusionError as e:
            warnings.warn(f"validation series left out: {e}")
    return InMemoryVolumes(volumes) if volumes else None


# ------------------------------------------------------------------------------------------------- data order
def batch_indices(n: int, step: int, batch: int, rank: int = 0, world: int = 1, seed: int = 0) -> List[int]:
    """Dataset indices of rank ``rank``'s batch for training step ``step`` (0-based).

    Each epoch is one seeded permutation of the n items, padded by wrapping to a multiple of ``world`` and sharded
    ``[rank::world]`` (as DistributedSampler); a rank's stream concatenates its shards of successive epochs, and step
    ``s`` takes items ``[s*batch, (s+1)*batch)`` of it. A pure function: resuming needs no sampler state.
    """
    shard = math.ceil(n / world)
    out = []
    cache: Dict[int, torch.Tensor] = {}
    for p in range(step * batch, (step + 1) * batch):
        epoch, offset = divmod(p, shard)
        if epoch not in cache:
            perm = epoch_permutation(n, seed, epoch)
            padded = torch.cat([perm] * math.ceil(shard * world / n))[: shard * world]
            cache[epoch] = padded[rank::world]
        out.append(int(cache[epoch][offset]))
    return out


class _StepBatches(torch.utils.data.Sampler):
    """batch_sampler for a DataLoader: the index lists of steps ``start .. stop-1`` for one rank."""

    def __init__(self, n: int, start: int, stop: int, batch: int, rank: int, world: int, seed: int):
        self.args = (n, batch, rank, world, seed)
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[List[int]]:
        n, batch, rank, world, seed = self.args
        for step in range(self.start, self.stop):
            yield batch_indices(n, step, batch, rank, world, seed)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


# -------------------------------------------------------------------------------------------------------- EMA
class EMA:
    """Exponential moving average of a model's parameters, on the authors' schedule.

    The authors' trainer counts optimizer steps from 0 and, after optimizer step ``k`` with ``k % every == 0``,
    copies the model into the EMA while ``k < start`` and blends ``ema = decay * ema + (1 - decay) * model`` from
    then on. ``update(model, step)`` takes the 1-based number of completed steps (``k = step - 1``), so with the
    defaults the EMA is refreshed after the 1st, 11th, 21st, ... step and averages from the 2001st on.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.995, every: int = 10, start: int = 2000):
        import copy

        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.every, self.start = decay, every, start

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        k = step - 1
        if k % self.every:
            return
        for e, p in zip(self.model.parameters(), model.parameters()):
            if k < self.start:
                e.copy_(p)
            else:
                e.mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)


# -------------------------------------------------------------------------------------------- distributed setup
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = resolve_device(device).type == "cuda"
    dev = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    d = _Dist(rank=rank, world=world, local_rank=local_rank, device=dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        d.initialised_here = True
    return d


def _gather(obj: Any, d: _Dist) -> List[Any]:
    if d.world == 1:
        return [obj]
    out: List[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


# ------------------------------------------------------------------------------------------------- checkpoints
def _save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, ema: EMA, opt: torch.optim.Optimizer,
                     rng_all: List[Dict[str, Any]], cfg: PretrainConfig, extra: Dict[str, Any]) -> Path:
    """Write checkpoint ``step`` (rank 0 only) with :func:`write_checkpoint`; prune old ones."""
    tensors = {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().to("cpu").contiguous() for k, v in ema.model.state_dict().items()})
    opt_tensors, opt_meta = optimizer_tensors(opt)
    tensors.update(opt_tensors)
    state = {
        "format": "orthodiffusion-pretrain-checkpoint",
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "step": step,
        "world_size": len(rng_all),
        "config": cfg.to_json(),
        "optimizer": opt_meta,
        "rng": rng_all,
        "tensors_sha256": tensors_sha256(tensors),
        **extra,
    }
    return write_checkpoint(run_dir, STEP_PREFIX, step, 7, tensors, state, cfg.keep_checkpoints, {"step": step})


# ----------------------------------------------------------------------------------------------------- samples
def _write_sample(path: Path, volume: np.ndarray) -> None:
    """(D, H, W) float32 -> NIfTI (1 mm voxels), atomically."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(volume.astype(np.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        target = tmp.with_name(tmp.name + ".nii.gz")
        sitk.WriteImage(img, str(target))
        os.replace(target, tmp)


# -------------------------------------------------------------------------------------------------------- loop
def pretrain(cfg: PretrainConfig, dataset: Optional[VolumeDataset] = None, *,
             manifest: Optional[Union[str, os.PathLike]] = None, data: Optional[Union[str, os.PathLike]] = None,
             progress: Optional[ProgressFn] = None, stop_at: Optional[int] = None,
             show_progress: bool = False, time_limit: Optional[float] = None,
             init_from: Optional[Union[str, os.PathLike]] = None) -> Dict[str, Any]:
    """Train (or resume) one plane's backbone; returns the summary written to ``RUN_DIR/summary.json``.

    Args:
        cfg: the run's settings (``cfg.out`` = RUN_DIR, ``cfg.resume`` continues from its newest checkpoint).
        dataset: volumes (1, slices, size, size); else read from ``manifest`` or ``data`` via the io API.
        progress: ``progress("step S/N, loss L", S / N)`` after every step (rank 0); may raise to cancel.
        stop_at: return after writing a checkpoint at this step (e.g. jobs of bounded length on a cluster;
            continue later with ``resume``).
        show_progress: tqdm bar on rank 0.
        time_limit: seconds of training (counted from the first step of this process) after which the run stops
            cleanly at the end of the current step: it writes a checkpoint AND the backbone file (trained on fewer
            steps than ``cfg.steps``; the step count is in its provenance and ``summary["stopped_by_time_limit"]``
            is True). ``resume`` later continues towards ``cfg.steps``. All ranks stop at the same step.
        init_from: a backbone file written by an earlier run of the same configuration (e.g. the float16
            ``backbone_{plane}.fp16.safetensors`` kept in a repository when the run folder is gone): a run folder
            without checkpoints starts from those weights (model and EMA) at the step recorded in its provenance,
            with a fresh optimizer; the data order continues from that step.
    """
    run_dir = Path(cfg.out)
    d = _setup_distributed(cfg.device)
    try:
        return _pretrain(cfg, run_dir, d, dataset, manifest, data, progress, stop_at, show_progress, time_limit,
                         init_from)
    finally:
        if d.initialised_here and dist.is_initialized():
            dist.destroy_process_group()


def _pretrain(cfg: PretrainConfig, run_dir: Path, d: _Dist, dataset: Optional[VolumeDataset], manifest, data,
              progress: Optional[ProgressFn], stop_at: Optional[int], show_progress: bool,
              time_limit: Optional[float] = None, init_from=None) -> Dict[str, Any]:
    tensors, state = _resume_state(cfg, run_dir, d)
    dataset, val_set = _training_data(cfg, run_dir, d, dataset, manifest, data)
    tr = _build_training(cfg, d, dataset, tensors, state, init_from)
    del tensors
    if d.main and show_progress:
        print_plan(cfg, dataset, val_set, tr.model, d.world, d.device, tr.start)
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        tr.net = DDP(tr.model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    out = _RunOutputs.open(cfg, run_dir, d, tr.start, show_progress)
    loop = _LoopState(step=tr.start, step_last=tr.start)
    interrupt = InterruptRequest()
    try:
        tr.net.train()
        for x0 in tr.loader:
            loop.step += 1
            loop.record(_train_step(cfg, tr, d, x0, loop.step))
            if d.main:
                _report_step(cfg, tr, out, loop, progress, run_dir, d)
            _check_stops(cfg, loop, d, time_limit, interrupt)
            if d.main and val_set is not None and (loop.step % cfg.val_every == 0 or loop.step == cfg.steps
                                                  or loop.stopping):
                _validate(cfg, tr, out, val_set, run_dir, loop.step, d)
            if (loop.step % cfg.ckpt_every == 0 or loop.step == cfg.steps or loop.step == stop_at
                    or loop.stopping):
                rng_all = _gather(rng_snapshot(tr.noise_gen, d.device), d)
                if d.main:
                    _save_checkpoint(run_dir, loop.step, tr.model, tr.ema, tr.opt, rng_all, cfg,
                                     {"loss": loop.last_loss})
            if loop.stopping or (stop_at is not None and loop.step >= stop_at):
                break
    finally:
        interrupt.restore()
        out.close()
    return _finish(cfg, run_dir, d, tr, loop)


def _resume_state(cfg: PretrainConfig, run_dir: Path, d: _Dist) -> Tuple[Optional[Dict[str, torch.Tensor]],
                                                                          Optional[Dict[str, Any]]]:
    """The newest checkpoint's tensors and state when resuming (``(None, None)`` otherwise); refuses a run folder
    with checkpoints without ``resume``, and a resume with different structural settings."""
    latest = latest_checkpoint(run_dir, STEP_PREFIX)
    if d.main and cfg.resume:
        remove_partial_checkpoints(run_dir, STEP_PREFIX)
    if latest is not None and not cfg.resume:
        raise OrthoDiffusionError("the run folder already holds checkpoints; pass --resume to continue it or "
                                  "choose a new --out", run_dir)
    if latest is None or not cfg.resume:
        return None, None
    tensors, state = read_checkpoint(latest, CHECKPOINT_FORMAT_VERSION)
    saved = state["config"]
    defaults = PretrainConfig().to_json()  # settings added later read as their default in older runs
    changed = [k for k in _STRUCTURAL
               if json.dumps(saved.get(k, defaults.get(k))) != json.dumps(cfg.to_json().get(k))]
    if changed:
        raise OrthoDiffusionError(
            "cannot resume with different settings: " + ", ".join(f"{k} {saved.get(k)} -> {cfg.to_json()[k]}"
                                                                  for k in changed), latest)
    return tensors, state


def _training_data(cfg: PretrainConfig, run_dir: Path, d: _Dist, dataset: Optional[VolumeDataset], manifest,
                   data) -> Tuple[VolumeDataset, Optional[InMemoryVolumes]]:
    """The training set (given, or read from the manifest / folder) and the validation set (rank 0); writes the
    run's ``config.json``."""
    if dataset is None:
        dataset = load_training_set(cfg.plane, manifest=manifest, data=data, slices=cfg.slices, size=cfg.size,
                                    cache_dir=run_dir / "cache", splits=cfg.splits, grid=cfg.grid())
    if len(dataset) == 0:
        raise OrthoDiffusionError("the training set is empty")
    val_set = validation_set(cfg, manifest) if d.main else None
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(run_dir / "config.json") as t:
            t.write_text(json.dumps(cfg.to_json(), indent=2) + "\n")
    return dataset, val_set


@dataclass
class _Training:
    """What one process trains: the network (``net``: ``model`` or its DDP wrapper), its EMA, the optimizer, the
    noise generator and schedule, and the data from step ``start`` on."""
    model: torch.nn.Module
    net: torch.nn.Module
    ema: EMA
    opt: torch.optim.Optimizer
    lr: float
    noise_gen: torch.Generator
    schedule: CosineSchedule
    start: int
    loader: Iterator[torch.Tensor]


def _build_training(cfg: PretrainConfig, d: _Dist, dataset: VolumeDataset, tensors, state,
                    init_from) -> _Training:
    """A fresh network, continued from a checkpoint (``state``) or a backbone file (``init_from``)."""
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = cfg.model().to(d.device)
    ema = EMA(model, cfg.ema_decay, cfg.ema_every, cfg.ema_start)
    lr = cfg.lr_per_sample * cfg.batch_size * d.world
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    noise_gen = torch.Generator().manual_seed(cfg.seed * 7919 + 17 + d.rank)
    start = int(state["step"]) if state is not None else 0
    if state is None and init_from is not None:
        start = _init_from_backbone(init_from, cfg, model, ema)
        noise_gen.manual_seed(cfg.seed * 7919 + 17 + d.rank + 1_000_003 * start)
    # the loader's iterator draws its worker base seed from the global RNG: create it BEFORE restoring RNG states
    loader = iter(torch.utils.data.DataLoader(
        dataset, batch_sampler=_StepBatches(len(dataset), start, cfg.steps, cfg.batch_size, d.rank, d.world, cfg.seed),
        num_workers=cfg.num_workers, pin_memory=d.device.type == "cuda"))
    if state is not None:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        ema.model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        opt.load_state_dict(optimizer_state(tensors, state["optimizer"]))
        for group in opt.param_groups:
            group["lr"] = lr
        if state["world_size"] == d.world:
            rng_restore(state["rng"][d.rank], noise_gen, d.device)
        else:
            warnings.warn(f"resuming a {state['world_size']}-process run on {d.world} processes: data order and "
                          "noise continue deterministically but not identically to an uninterrupted run")
            noise_gen.manual_seed(cfg.seed * 7919 + 17 + d.rank + 1_000_003 * start)
    return _Training(model=model, net=model, ema=ema, opt=opt, lr=lr, noise_gen=noise_gen,
                     schedule=CosineSchedule(T=cfg.timesteps), start=start, loader=loader)


@dataclass
class _RunOutputs:
    """Rank 0's outputs while training: ``log.csv`` (open for appending), TensorBoard, the tqdm bar."""
    log_file: Any = None
    writer: Any = None
    bar: Any = None

    @classmethod
    def open(cls, cfg: PretrainConfig, run_dir: Path, d: _Dist, start: int, show_progress: bool) -> "_RunOutputs":
        """Logs cut back to ``start`` (a resumed run rewrites what came after its checkpoint); nothing off rank 0."""
        out = cls()
        if not d.main:
            return out
        log_path = run_dir / "log.csv"
        truncate_log(log_path, start)
        new = not log_path.exists()
        out.log_file = open(log_path, "a", newline="")
        if new:
            out.log_file.write("step,loss,lr,steps_per_s,samples_per_s\n")
        truncate_log(run_dir / "val_log.csv", start)
        with contextlib.suppress(ImportError):
            from torch.utils.tensorboard import SummaryWriter

            out.writer = SummaryWriter(str(run_dir / "tb"), purge_step=start + 1)
        if show_progress:
            from tqdm import tqdm

            out.bar = tqdm(total=cfg.steps, initial=start, desc=f"pretrain {cfg.plane}", unit="step",
                           dynamic_ncols=True)
        return out

    def close(self) -> None:
        for thing in (self.bar, self.log_file, self.writer):
            if thing is not None:
                thing.close()


@dataclass
class _LoopState:
    """The training loop's running state: the step, the losses since the last log line, why it stops."""
    step: int
    last_loss: float = float("nan")
    window: List[float] = field(default_factory=list)
    t_last: float = field(default_factory=time.perf_counter)
    step_last: int = 0
    t_begin: float = field(default_factory=time.perf_counter)
    timed_out: bool = False
    interrupted: bool = False

    @property
    def stopping(self) -> bool:
        return self.timed_out or self.interrupted

    def record(self, loss: float) -> None:
        self.last_loss = loss
        self.window.append(loss)


def _train_step(cfg: PretrainConfig, tr: _Training, d: _Dist, x0: torch.Tensor, step: int) -> float:
    """One optimizer step (and the EMA update of ``step``); returns the loss, averaged over the ranks."""
    x0 = x0.to(d.device, non_blocking=True)
    t = torch.randint(0, tr.schedule.T, (x0.shape[0],), generator=tr.noise_gen).to(d.device)
    noise = torch.randn(x0.shape, generator=tr.noise_gen).to(d.device)
    with precision_autocast(d.device, cfg.precision):
        loss = tr.schedule.training_loss(tr.net, x0, t=t, noise=noise)
    tr.opt.zero_grad(set_to_none=True)
    loss.backward()
    tr.opt.step()
    tr.ema.update(tr.model, step)
    loss_value = loss.detach()
    if d.world > 1:
        dist.all_reduce(loss_value)
        loss_value = loss_value / d.world
    return float(loss_value)


def _report_step(cfg: PretrainConfig, tr: _Training, out: _RunOutputs, loop: _LoopState,
                 progress: Optional[ProgressFn], run_dir: Path, d: _Dist) -> None:
    """Rank 0 after a step: the bar, the progress callback, a ``log.csv`` line every ``log_every`` steps, samples."""
    step = loop.step
    if out.bar is not None:
        out.bar.update(1)
        out.bar.set_postfix(loss=f"{loop.last_loss:.4f}")
    if progress is not None:
        progress(f"step {step}/{cfg.steps}, loss {loop.last_loss:.4f}", step / cfg.steps)
    if step % cfg.log_every == 0 or step == cfg.steps:
        now = time.perf_counter()
        sps = (step - loop.step_last) / max(now - loop.t_last, 1e-9)
        mean_loss = sum(loop.window) / len(loop.window)
        out.log_file.write(f"{step},{mean_loss:.6g},{tr.lr:.6g},{sps:.4g},{sps * cfg.batch_size * d.world:.4g}\n")
        out.log_file.flush()
        if out.writer is not None:
            out.writer.add_scalar("loss", mean_loss, step)
            out.writer.add_scalar("steps_per_s", sps, step)
        loop.window.clear()
        loop.t_last, loop.step_last = now, step
    if cfg.sample_every and step % cfg.sample_every == 0:
        _sample(cfg, tr.ema.model, tr.schedule, run_dir, step, d.device)


def _check_stops(cfg: PretrainConfig, loop: _LoopState, d: _Dist, time_limit: Optional[float],
                 interrupt: InterruptRequest) -> None:
    """Whether the time limit has passed or Ctrl-C was pressed (rank 0 decides for every rank)."""
    if time_limit is not None and loop.step < cfg.steps:
        loop.timed_out = _all_ranks_agree(time.perf_counter() - loop.t_begin >= time_limit, d)
    if interrupt.installed and loop.step < cfg.steps:
        loop.interrupted = _all_ranks_agree(interrupt.requested, d)


def _validate(cfg: PretrainConfig, tr: _Training, out: _RunOutputs, val_set: InMemoryVolumes, run_dir: Path,
              step: int, d: _Dist) -> None:
    """The denoising loss on the validation series, to ``val_log.csv`` and TensorBoard."""
    val_loss = validation_loss(cfg, tr.model, tr.schedule, val_set, d.device)
    log_validation(run_dir, step, val_loss)
    if out.writer is not None:
        out.writer.add_scalar("val_loss", val_loss, step)
    tr.net.train()


def _finish(cfg: PretrainConfig, run_dir: Path, d: _Dist, tr: _Training, loop: _LoopState) -> Dict[str, Any]:
    """Check the ranks agree; rank 0 writes the backbone files (when the run ended or stopped early), the summary
    and the curves. Returns the summary."""
    step, timed_out, interrupted = loop.step, loop.timed_out, loop.interrupted
    digests = _gather(tensors_sha256(tr.model.state_dict()), d)
    summary = {"step": step, "loss": loop.last_loss, "world_size": d.world, "lr": tr.lr,
               "rank_weight_sha256": digests, "ema_weight_sha256": tensors_sha256(tr.ema.model.state_dict()),
               "stopped_by_time_limit": timed_out, "stopped_by_interrupt": interrupted}
    if len(set(digests)) != 1:
        raise OrthoDiffusionError(f"ranks hold different weights after step {step} (DDP desynchronised)", run_dir)
    if not d.main:
        return summary
    if step >= cfg.steps or timed_out or interrupted:
        provenance = {"trained_steps": step, "planned_steps": cfg.steps, "run": run_dir.name,
                      "recipe": "orthodiffusion pretrain", "stopped_by_time_limit": timed_out,
                      "stopped_by_interrupt": interrupted}
        preprocessing = {"slices": cfg.slices, "size": cfg.size, **cfg.grid()}
        save_backbone(tr.ema.model, run_dir / f"backbone_{cfg.plane}.safetensors", cfg.plane, provenance=provenance,
                      preprocessing=preprocessing)
        save_backbone(tr.ema.model, run_dir / f"backbone_{cfg.plane}.fp16.safetensors", cfg.plane,
                      provenance=provenance, half=True, preprocessing=preprocessing)
    with atomic_path(run_dir / "summary.json") as t:
        t.write_text(json.dumps(summary, indent=2) + "\n")
    from ..curves import plot_run_curves

    plot_run_curves(run_dir / "log.csv", extra_csv=run_dir / "val_log.csv",
                    title=f"pretrain {cfg.plane} ({run_dir.name}), step {step}")
    return summary


def _init_from_backbone(path: Union[str, os.PathLike], cfg: PretrainConfig, model: torch.nn.Module,
                        ema: EMA) -> int:
    """Load a backbone file into the model and its EMA; returns the step recorded in its provenance."""
    from ...model.checkpoints import load_backbone_state

    state, meta = load_backbone_state(path)
    expected = cfg.model().config()
    if meta["config"] != expected:
        raise OrthoDiffusionError(f"--init-from holds a network configured as {meta['config']}, this run builds "
                                  f"{expected}", path)
    model.load_state_dict(state, strict=True)
    ema.model.load_state_dict(state, strict=True)
    return int(dict(meta.get("provenance") or {}).get("trained_steps", 0))


def _all_ranks_agree(flag: bool, d: _Dist) -> bool:
    """True on every rank when rank 0's ``flag`` is True (one broadcast per call under DDP; clocks differ)."""
    if d.world == 1:
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=d.device)
    dist.broadcast(value, src=0)
    return bool(value.item() > 0)


@torch.no_grad()
def _sample(cfg: PretrainConfig, model: torch.nn.Module, schedule: CosineSchedule, run_dir: Path, step: int,
            device: torch.device) -> None:
    """One DDIM volume from the EMA weights (own generator: does not disturb the training RNG)."""
    gen = torch.Generator().manual_seed(cfg.seed * 104729 + step)
    with precision_autocast(device, cfg.precision):
        vol = schedule.ddim_sample(model, (1, 1, cfg.slices, cfg.size, cfg.size), steps=cfg.sample_steps,
                                   generator=gen, device=device)
    _write_sample(run_dir / "samples" / f"step_{step:07d}.nii.gz", vol[0, 0].float().cpu().numpy())


class PoolWindows(VolumeDataset):
    """Windows of ``slices`` consecutive slices from a simulated pool (:mod:`OrthoDiffusionLib.simulate.pool`; its
    ``pool.csv`` or its folder, whose exam files are then taken as they are, e.g. while the pool is still being
    written), every plane's series of every pool exam, each draw with a new appearance.

    The dataset is ``virtual_epochs`` times the number of series long: item ``v`` is series ``v % n_series`` with a
    draw seeded by ``(seed, v)`` (window position, and with probability ``p_randomized`` a domain-randomised contrast
    from the tissue map instead of the simulated PD image), so the data order and every draw stay a pure function of
    the step and an interrupted run resumes exactly. No label is read.

    With ``crop`` > 0 each window is a random ``crop`` x ``crop`` in-plane crop at the pool's pixel size (the
    network is convolutional: pretraining on crops costs (crop / size)^2 of whole windows and keeps every detail).

    ``dataset[v]`` -> float32 (1, slices, size, size) in [-1, 1], size = ``crop`` or the pool's size.
    """

    def __init__(self, pool: Union[str, os.PathLike], slices: int = 16, exams: Optional[Sequence[int]] = None,
                 planes: Sequence[str] = PLANES, p_randomized: float = 0.5, seed: int = 0,
                 virtual_epochs: int = 200, crop: int = 0):
        from ...simulate.pool import pool_files

        files = pool_files(pool)
        if exams is not None:
            files = [files[i] for i in exams if i < len(files)]
        if not files:
            raise InputError("the pool holds no exams", pool)
        self.series = [(f, p) for f in files for p in planes]
        self.slices, self.p_randomized, self.seed = int(slices), float(p_randomized), int(seed)
        self.virtual_epochs, self.crop = int(virtual_epochs), int(crop)

    def __len__(self) -> int:
        return len(self.series) * self.virtual_epochs

    def __getitem__(self, v: int) -> torch.Tensor:
        from ...simulate.randomize import randomize_contrast

        path, plane = self.series[v % len(self.series)]
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 5501, int(v)]))
        with np.load(path, allow_pickle=False) as z:
            image, tissue = z[f"{plane}_image"], z[f"{plane}_tissue"]
        depth = image.shape[0]
        start = int(rng.integers(0, depth - self.slices + 1)) if depth >= self.slices else 0
        sl = slice(start, start + self.slices)
        image, tissue = image[sl], tissue[sl]
        if 0 < self.crop < min(image.shape[1:]):
            y, x = (int(rng.integers(0, n - self.crop + 1)) for n in image.shape[1:])
            image, tissue = image[:, y:y + self.crop, x:x + self.crop], tissue[:, y:y + self.crop, x:x + self.crop]
        if rng.random() < self.p_randomized:
            vol = randomize_contrast(tissue, rng)
        else:
            vol = image.astype(np.float32)
        return torch.from_numpy(normalize_window(vol, self.slices))[None]


def normalize_window(vol: np.ndarray, slices: int) -> np.ndarray:
    """Zero-pad (D, H, W) symmetrically to ``slices`` slices, then min-max to [-1, 1] (as the preprocessing)."""
    d = vol.shape[0]
    if d < slices:
        pad = np.zeros((slices, *vol.shape[1:]), dtype=np.float32)
        pad[(slices - d) // 2:(slices - d) // 2 + d] = vol
        vol = pad
    lo, hi = float(vol.min()), float(vol.max())
    return ((vol - lo) / max(hi - lo, 1e-6) * 2.0 - 1.0).astype(np.float32)


def backbone_from_checkpoint(run_dir: Union[str, os.PathLike], out: Union[str, os.PathLike],
                             half: bool = True) -> Path:
    """Write the EMA weights of a run's newest checkpoint as a backbone file (float16 with ``half``), e.g. to keep
    a run that is still going: the file continues it in another run folder with ``pretrain(..., init_from=...)``.
    Returns ``out``."""
    run_dir = Path(run_dir)
    latest = latest_checkpoint(run_dir, STEP_PREFIX)
    if latest is None:
        raise MissingPathError("no complete checkpoint in this run folder", run_dir)
    tensors, state = read_checkpoint(latest, CHECKPOINT_FORMAT_VERSION)
    cfg_json = dict(state["config"])
    cfg = PretrainConfig(**{k: v for k, v in cfg_json.items() if k in {f.name for f in dataclasses.fields(PretrainConfig)}})
    model = cfg.model()
    model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    step = int(state["step"])
    save_backbone(model, out, cfg.plane, half=half,
                  provenance={"trained_steps": step, "planned_steps": cfg.steps, "run": run_dir.name,
                              "recipe": "orthodiffusion pretrain", "from_checkpoint": latest.name})
    return Path(out)
