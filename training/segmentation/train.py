"""``orthodiffusion train-segmentation`` and ``train-seg-baseline``: one plane's segmentation model from a manifest.

``train-segmentation`` fine-tunes a diffusion backbone (encoder + middle block at ``backbone_lr_scale`` x lr) with a
segmentation head (``bottleneck`` = the paper's, or ``skip``) on the tap ``block`` at ``timestep`` of the config's
plane entry (paper: t = 50, ``mid_2``). ``train-seg-baseline`` trains a MONAI 3D U-Net or UNETR from scratch on the
same cases and splits. Loop, checkpoints and metrics: :mod:`.trainer`; data: :mod:`.data`.

Configuration: a shipped name (``seg-ft`` = the paper's recipe, ``seg-demo`` = a small CPU demo) or a JSON path,
``extends`` resolved as for the diagnosis configs, then ``--set key.sub=value`` overrides (value parsed as JSON,
else taken as a string). The command-line options ``--head`` and ``--train-patients`` are stored in the config too,
so a resumed run must use the same ones.

Run folder (read by ``orthodiffusion export``)::

    RUN/run.json                    written last: format, plane, timestep, block, preprocessing, head, weights,
                                    num_classes, structures, config, metrics {val, test}, provenance
    RUN/backbone.safetensors        the fine-tuned backbone (checkpoints.save_backbone format)
    RUN/seg_head.safetensors        the head's state dict (metadata: its build_seg_head config)
    RUN/metrics_{val,test}.csv      per-case Dice and HD95 (mm) per structure, on the preprocessed grid
    RUN/log.csv                     per epoch: loss, ce, dice_loss, lr, seconds, val_mean_dice
    RUN/curves.png                  log.csv drawn: training losses and validation mean Dice
    RUN/checkpoints/                per-epoch checkpoints (resume)
    RUN/cache/                      preprocessed cases (.npz)

A baseline run writes ``model.safetensors`` instead of the backbone and head, with ``format``
``orthodiffusion.segmentation-baseline-run`` and the network's constructor arguments under ``model``.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import shlex
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch

from OrthoDiffusionLib import labels
from OrthoDiffusionLib.atomic import atomic_path
from OrthoDiffusionLib.device import resolve_device
from OrthoDiffusionLib.errors import CorruptFileError, InputError, MissingPathError
from OrthoDiffusionLib.inference.preprocess import model_grid
from OrthoDiffusionLib.progress import ProgressFn

from ..configs import resolve_config
from ..curves import plot_run_curves
from ..diagnosis.data import is_simulated_cohort
from .data import SegCase, SegVolumes, read_seg_cases, split_cases, training_cases
from .losses import context_tissue_names, num_seg_classes
from .trainer import TrainSettings, evaluate, train

PathLike = Union[str, os.PathLike]
RUN_FORMAT = "orthodiffusion.segmentation-run"
BASELINE_RUN_FORMAT = "orthodiffusion.segmentation-baseline-run"
RUN_VERSION = 1
HEAD_FORMAT = "orthodiffusion-seg-head"
BLOCKS = ("mid_0", "mid_1", "mid_2")
BASELINE_ALIASES = {"unet": "unet3d", "unet3d": "unet3d", "unetr": "unetr"}


# ------------------------------------------------------------------------------------------------------ config
def _set_value(cfg: Dict[str, Any], assignment: str) -> None:
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise InputError(f"--set needs key=value, got {assignment!r}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    node = cfg
    parts = key.strip().split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def _validate(cfg: Mapping[str, Any], shown: str) -> None:
    if cfg.get("task") != "segmentation":
        raise InputError(f"not a segmentation configuration (task {cfg.get('task')!r})", shown)
    pre = cfg.get("preprocessing", {})
    for k in ("slices", "size"):
        if not isinstance(pre.get(k), int) or pre[k] < 16 or pre[k] % 16:
            raise InputError(f"preprocessing.{k} must be a multiple of 16, got {pre.get(k)!r}", shown)
    for plane, sel in cfg.get("planes", {}).items():
        t, b = sel.get("timestep"), sel.get("block")
        if plane not in labels.PLANES or not isinstance(t, int) or not 0 <= t <= 999 or b not in BLOCKS:
            raise InputError(f"planes.{plane} needs an integer timestep in [0, 999] and a block in "
                             f"{', '.join(BLOCKS)}, got {sel!r}", shown)
    for k in ("epochs", "batch_size"):
        if not isinstance(cfg.get(k), int) or cfg[k] < 1:
            raise InputError(f"{k} must be a positive integer, got {cfg.get(k)!r}", shown)
    if not float(cfg.get("lr", 0)) > 0 or float(cfg.get("backbone_lr_scale", -1)) < 0:
        raise InputError("lr must be > 0 and backbone_lr_scale >= 0", shown)
    tp = cfg.get("train_patients")
    if tp is not None and (not isinstance(tp, int) or tp < 1):
        raise InputError(f"train_patients must be a positive integer or null, got {tp!r}", shown)


def load_seg_config(name_or_path: PathLike = "seg-ft", overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """A segmentation config by shipped name or JSON path, ``extends`` resolved, ``--set`` overrides applied,
    validated. Raises MissingPathError / CorruptFileError / InputError naming the file."""
    cfg, shown = resolve_config(name_or_path)
    for item in overrides:
        _set_value(cfg, item)
    _validate(cfg, shown)
    return cfg


def _settings(cfg: Mapping[str, Any], plane: str, section: Optional[str] = None) -> TrainSettings:
    """TrainSettings from a config; ``section="baseline"`` takes epochs/batch/lr from ``cfg["baseline"]``."""
    src = dict(cfg)
    if section:
        src.update({k: v for k, v in cfg[section].items() if not isinstance(v, dict)})
    aug = dict(cfg.get("augment") or {})
    enabled = aug.pop("enabled", True)
    return TrainSettings(plane=plane, epochs=int(src["epochs"]), batch_size=int(src["batch_size"]),
                         lr=float(src["lr"]), backbone_lr_scale=float(src.get("backbone_lr_scale", 1.0)),
                         weight_decay=float(src.get("weight_decay", 0.0)), seed=int(cfg.get("seed", 0)),
                         ce_weight=float(cfg["loss"]["ce_weight"]), excluded_as=str(cfg["loss"]["excluded_as"]),
                         ce_class_balance=bool(cfg["loss"].get("ce_class_balance", False)),
                         augment=aug if enabled else None, crop=int(cfg.get("crop", 0)),
                         val_every=int(cfg["eval"].get("val_every", 1)),
                         eval_noise_draws=int(cfg["eval"].get("noise_draws", 1)),
                         eval_seed=int(cfg["eval"].get("seed", 1234)),
                         keep_checkpoints=int(cfg.get("keep_checkpoints", 2)),
                         num_classes=num_seg_classes(bool(cfg.get("context_tissues", False))))


# ------------------------------------------------------------------------------------------------------ models
def head_config(name: str, backbone, block: str, cfg_head: Mapping[str, Any], num_classes: Optional[int] = None
                ) -> Dict[str, Any]:
    """``build_seg_head`` keyword arguments (incl. ``name``) for a head on ``backbone``'s tap ``block`` with
    ``num_classes`` outputs (default: background + the label table's structures)."""
    from OrthoDiffusionLib.model.seg_head import DEFAULT_SKIP_TAPS

    out: Dict[str, Any] = {
        "name": name, "num_classes": int(num_classes or num_seg_classes()),
        "model_channels": int(backbone.model_channels),
        "bottleneck_tap": block,
        "tap_channels": {t: int(backbone.tap_channels(t)) for t in backbone.tap_names()},
        "skip_taps": [list(s) for s in cfg_head.get("skip_taps", DEFAULT_SKIP_TAPS)],
        "decoder_channels": [int(c) for c in cfg_head.get("decoder_channels", (128, 64, 32, 16))],
    }
    if "strides" in cfg_head:
        out["strides"] = [[int(v) for v in s] for s in cfg_head["strides"]]
    if cfg_head.get("image_stages"):
        out["image_stages"] = [int(v) for v in cfg_head["image_stages"]]
        out["image_channels"] = int(cfg_head.get("image_channels", 16))
    missing = [t for t, _ in out["skip_taps"] if t not in out["tap_channels"]] if name == "skip" else []
    if missing:
        raise InputError(f"the skip head's taps {', '.join(missing)} do not exist in this backbone (it has "
                         f"{', '.join(backbone.tap_names())}): use --head bottleneck, or set head.skip_taps (and head.strides)")
    return out


def build_head(config: Mapping[str, Any]) -> torch.nn.Module:
    """The head described by a :func:`head_config` dict (as stored in run.json)."""
    from OrthoDiffusionLib.model.seg_head import build_seg_head

    kwargs = {k: v for k, v in config.items() if k != "name"}
    kwargs["skip_taps"] = [tuple(s) for s in kwargs.get("skip_taps", [])]
    if "strides" in kwargs:
        kwargs["strides"] = [tuple(s) for s in kwargs["strides"]]
    return build_seg_head(config["name"], **kwargs)


def _save_head(head: torch.nn.Module, config: Mapping[str, Any], path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in head.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": HEAD_FORMAT, "config": json.dumps(dict(config))})


def _load_weights(path: Path) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise MissingPathError("weights file not found", path)
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error type for a malformed file
        raise CorruptFileError(f"not a readable safetensors file ({str(e).splitlines()[0][:200]})", path) from None


def read_segmentation_run(run_dir: PathLike) -> Dict[str, Any]:
    """``run.json`` of a finished ``train-segmentation`` or ``train-seg-baseline`` run.

    Raises MissingPathError (no run.json), CorruptFileError (not JSON), InputError (another format)."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise MissingPathError("not a finished segmentation run (no run.json)", run_dir)
    try:
        run = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CorruptFileError(f"not valid JSON ({e.msg})", path) from None
    if run.get("format") not in (RUN_FORMAT, BASELINE_RUN_FORMAT):
        raise InputError(f"not a segmentation run (format {run.get('format')!r})", path)
    return run


def load_segmentation_run(run_dir: PathLike, device: Union[str, torch.device] = "cpu"
                          ) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """(network in eval mode, run.json) of a finished ``train-segmentation`` or ``train-seg-baseline`` run."""
    from OrthoDiffusionLib.model.checkpoints import check_state_dict, load_backbone

    from .baselines import build_seg_baseline
    from .model import BaselineSegmenter, DiffusionSegmenter

    run_dir = Path(run_dir)
    run = read_segmentation_run(run_dir)
    if run["format"] == RUN_FORMAT:
        backbone, _ = load_backbone(run_dir / run["backbone"], device="cpu")
        head = build_head(run["head"])
        state = _load_weights(run_dir / run["head_weights"])
        check_state_dict(head, state, run_dir / run["head_weights"])
        head.load_state_dict(state)
        model: torch.nn.Module = DiffusionSegmenter(backbone, head, int(run["timestep"]))
    else:  # BASELINE_RUN_FORMAT
        spec = dict(run["model"])
        size = run["preprocessing"]
        net = build_seg_baseline(spec.pop("name"), num_classes=int(run["num_classes"]),
                                 img_size=(size["slices"], size["size"], size["size"]), **spec)
        state = _load_weights(run_dir / run["weights"])
        check_state_dict(net, state, run_dir / run["weights"])
        net.load_state_dict(state)
        model = BaselineSegmenter(net)
    return model.to(device).eval(), run


# --------------------------------------------------------------------------------------------------- run folder
def _sha256(path: PathLike) -> str:
    from OrthoDiffusionLib.model.checkpoints import file_sha256

    return file_sha256(path)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_case_csv(path: Path, cases: Sequence[Mapping[str, Any]], plane: str) -> None:
    keys = [s.key for s in labels.knee_structures(plane)]
    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["case_id", "patient_id", *[f"dice_{k}" for k in keys], *[f"hd95_{k}" for k in keys]])
            for c in cases:
                w.writerow([c["case_id"], c["patient_id"], *[_fmt(c["dice"].get(k)) for k in keys],
                            *[_fmt(c["hd95"].get(k)) for k in keys]])


def _fmt(v: Optional[float]) -> str:
    return "" if v is None or v != v else f"{float(v):.6g}"


def _require_tissue_maps(cases: Sequence[SegCase], manifest: Path) -> None:
    """InputError unless every case has a tissue map (``context_tissues`` learns them)."""
    missing = [c for c in cases if not c.tissue_path]
    if missing:
        raise InputError(f"context_tissues needs a tissue map for every series (the manifest's tissue_path column, "
                         f"written by `orthodiffusion simulate pool-cohort`); {len(missing)} of {len(cases)} have "
                         f"none, e.g. row {missing[0].row}", manifest)


class _Job:
    """Shared plumbing of both commands: cases, datasets, training, evaluation, metrics files."""

    def __init__(self, manifest: PathLike, plane: str, out: PathLike, cfg: Dict[str, Any],
                 cache_dir: Optional[PathLike] = None):
        if plane not in labels.PLANES:
            raise InputError(f"plane must be one of {', '.join(labels.PLANES)}, got {plane!r}")
        self.manifest, self.plane, self.run_dir, self.cfg = Path(manifest), plane, Path(out), cfg
        self.started = _now()
        cases = read_seg_cases(self.manifest, plane)
        pre = cfg["preprocessing"]
        cache = Path(cache_dir) if cache_dir is not None else self.run_dir / "cache"
        self.train_cases = training_cases(cases, cfg.get("train_patients"), int(cfg.get("seed", 0)))
        grid = model_grid(pre)
        randomize = float(dict(cfg.get("domain_randomisation") or {}).get("p", 0.0))
        self.context = bool(cfg.get("context_tissues", False))
        if self.context:
            _require_tissue_maps(cases, self.manifest)
        kwargs = {"cache_dir": cache, "grid": grid, "context_tissues": self.context}
        self.sets = {"train": SegVolumes(self.train_cases, pre["slices"], pre["size"], randomize=randomize, **kwargs),
                     "val": SegVolumes(split_cases(cases, "val"), pre["slices"], pre["size"], **kwargs),
                     "test": SegVolumes(split_cases(cases, "test"), pre["slices"], pre["size"], **kwargs)}

    def fit(self, model: torch.nn.Module, settings: TrainSettings, device: torch.device, resume: bool,
            stop_after_epoch: Optional[int], progress: Optional[ProgressFn], cancel: Optional[threading.Event],
            show_progress: bool, desc: str = "train-segmentation") -> Dict[str, Any]:
        try:
            return train(model, self.sets["train"], settings, self.run_dir, self.cfg, device=device, resume=resume,
                         val_set=self.sets["val"], stop_after_epoch=stop_after_epoch, progress=progress,
                         cancel=cancel, show_progress=show_progress, desc=desc)
        finally:
            plot_run_curves(self.run_dir / "log.csv", title=f"{desc} {self.plane} {self.run_dir.name}")

    def evaluate(self, model: torch.nn.Module, settings: TrainSettings, device: torch.device,
                 progress: Optional[ProgressFn], cancel: Optional[threading.Event]) -> Dict[str, Any]:
        metrics: Dict[str, Any] = {}
        for split in ("val", "test"):
            if not len(self.sets[split]):
                metrics[split] = None
                continue
            res = evaluate(model, self.sets[split], self.plane, device, settings.eval_noise_draws,
                           settings.eval_seed, progress=progress, cancel=cancel, stage=f"evaluate {split}")
            _write_case_csv(self.run_dir / f"metrics_{split}.csv", res["cases"], self.plane)
            metrics[split] = {**res["summary"], "n_cases": res["n_cases"], "grid": "preprocessed",
                              "cases_file": f"metrics_{split}.csv"}
        return metrics

    def base_record(self, command: Optional[str]) -> Dict[str, Any]:
        structures = labels.knee_structures(self.plane)
        return {
            "plane": self.plane,
            "preprocessing": dict(self.cfg["preprocessing"]),
            "num_classes": num_seg_classes(self.context),
            "structures": [s.key for s in structures],
            "context_tissues": context_tissue_names() if self.context else [],
            "label_values": {s.key: s.value for s in structures},
            "config": self.cfg,
            "data": {"train_cases": len(self.sets["train"]), "val_cases": len(self.sets["val"]),
                     "test_cases": len(self.sets["test"]),
                     "train_patients": len({c.patient_id for c in self.train_cases})},
            "provenance": {"command": command or "orthodiffusion " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                           "manifest": os.fspath(self.manifest.resolve()),
                           "manifest_sha256": _sha256(self.manifest), "started": self.started,
                           "synthetic_data_only": is_simulated_cohort(self.manifest)},
        }

    def write_run(self, record: Dict[str, Any]) -> Dict[str, Any]:
        record["provenance"]["finished"] = _now()
        with atomic_path(self.run_dir / "run.json", suffix=".json") as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n")
        return record


# ------------------------------------------------------------------------------------------------- the commands
def _init_run(run_dir: PathLike, plane: str) -> Dict[str, Any]:
    """run.json of the finished ``train-segmentation`` run that ``--init-from`` names, checked to be of ``plane``."""
    run = read_segmentation_run(run_dir)
    if run["format"] != RUN_FORMAT:
        raise InputError("--init-from needs a train-segmentation run (this is a baseline run)", run_dir)
    if run["plane"] != plane:
        raise InputError(f"--init-from is a {run['plane']} run; this run trains {plane}", run_dir)
    return run


def _load_init_head(head: torch.nn.Module, hcfg: Mapping[str, Any], run: Mapping[str, Any],
                    run_dir: Path) -> str:
    """Load the ``--init-from`` run's head weights into ``head``; returns their sha256 (kept in the config so a
    resumed run must start from the same weights). Raises InputError when the two heads differ other than by
    more classes (context tissues) or by a new image path (``image_stages``)."""
    from OrthoDiffusionLib.model.checkpoints import check_state_dict

    changed = sorted(k for k in set(hcfg) | set(run["head"]) if json.dumps(hcfg.get(k)) != json.dumps(run["head"].get(k)))
    grows = changed == ["num_classes"] and int(hcfg["num_classes"]) > int(run["head"]["num_classes"])
    adds_image = bool(changed) and set(changed) <= {"image_stages", "image_channels"} and \
        not run["head"].get("image_stages")
    if changed and not grows and not adds_image:
        raise InputError("--init-from: its segmentation head differs from this configuration's in "
                         + ", ".join(changed), run_dir)
    path = run_dir / run["head_weights"]
    state = _load_weights(path)
    if grows:  # structures -> structures + context tissues: the new classes start as copies of background
        state = _grown_classifier(state, int(hcfg["num_classes"]))
    if adds_image:  # the new image path starts as built: its zero-initialised fusion leaves the logits unchanged
        state = {**{k: v for k, v in head.state_dict().items() if k.startswith("image_")}, **state}
    check_state_dict(head, state, path)
    head.load_state_dict(state)
    return _sha256(path)


def _grown_classifier(state: Mapping[str, torch.Tensor], num_classes: int) -> Dict[str, torch.Tensor]:
    """A head state dict whose output layer (``classifier.*``) grows to ``num_classes``; each new class starts as
    the background class with its bias lowered by 2 (so the structures keep their predictions at the start)."""
    out = dict(state)
    w, b = state["classifier.weight"], state["classifier.bias"]
    extra = num_classes - w.shape[0]
    out["classifier.weight"] = torch.cat([w, w[:1].repeat(extra, *([1] * (w.dim() - 1)))])
    out["classifier.bias"] = torch.cat([b, b[:1].repeat(extra) - 2.0])
    return out


def train_segmentation(manifest: PathLike, plane: str, backbone: PathLike, out: PathLike, *,
                       config: PathLike = "seg-ft", overrides: Sequence[str] = (), head: Optional[str] = None,
                       train_patients: Optional[int] = None, resume: bool = False, device: str = "auto",
                       progress: Optional[ProgressFn] = None, cancel: Optional[threading.Event] = None,
                       stop_after_epoch: Optional[int] = None, show_progress: bool = False,
                       command: Optional[str] = None, cache_dir: Optional[PathLike] = None,
                       init_from: Optional[PathLike] = None, random_init: bool = False
                       ) -> Optional[Dict[str, Any]]:
    """Fine-tune ``backbone`` with a segmentation head on ``plane``; returns the run.json record (None when stopped
    early by ``stop_after_epoch``). See the module docstring for the run folder.

    ``init_from``: a finished ``train-segmentation`` run whose backbone and head start this run (a new schedule on
    top of a trained model); ``backbone`` is then ignored and may be None. Its head must match this config's.
    ``random_init``: train ``backbone``'s architecture from random weights (seeded by the config's ``seed``), the
    no-pretraining ablation; recorded as ``config.backbone_init = "random"``."""
    from OrthoDiffusionLib.model.checkpoints import load_backbone, save_backbone

    from .model import DiffusionSegmenter

    extra = list(overrides)
    if head is not None:
        extra.append(f"head.name={json.dumps(head)}")
    if train_patients is not None:
        extra.append(f"train_patients={int(train_patients)}")
    cfg = load_seg_config(config, extra)
    if plane not in cfg["planes"]:
        raise InputError(f"the configuration has no timestep/block for plane {plane!r}", os.fspath(config))
    dev = resolve_device(device)
    init_run = _init_run(init_from, plane) if init_from is not None else None
    backbone_path = Path(init_from) / init_run["backbone"] if init_run else Path(backbone)
    net, _ = load_backbone(backbone_path, device="cpu")
    if random_init:
        if init_run:
            raise ValueError("random_init takes the architecture of backbone; it cannot be used with init_from")
        torch.manual_seed(int(cfg.get("seed", 0)))
        net = type(net)(**net.config())
        cfg["backbone_init"] = "random"
    sel = cfg["planes"][plane]
    cfg["backbone_sha256"] = _sha256(backbone_path)
    job = _Job(manifest, plane, out, cfg, cache_dir)
    hcfg = head_config(cfg["head"]["name"], net, sel["block"], cfg["head"],
                       num_seg_classes(bool(cfg.get("context_tissues", False))))
    torch.manual_seed(int(cfg.get("seed", 0)))
    seg_head = build_head(hcfg)
    if init_run:
        cfg["init_head_sha256"] = _load_init_head(seg_head, hcfg, init_run, Path(init_from))
    model = DiffusionSegmenter(net, seg_head, sel["timestep"],
                               frozen_input_blocks=int(cfg.get("frozen_input_blocks", 0))).to(dev)
    settings = _settings(cfg, plane)
    state = job.fit(model, settings, dev, resume, stop_after_epoch, progress, cancel, show_progress)
    if not state["finished"]:
        return None
    metrics = job.evaluate(model, settings, dev, progress, cancel)
    run_dir = job.run_dir
    save_backbone(model.backbone, run_dir / "backbone.safetensors", plane,
                  provenance={"recipe": "orthodiffusion train-segmentation", "base_backbone_sha256":
                              cfg["backbone_sha256"], "epochs": settings.epochs},
                  preprocessing={**{k: int(cfg["preprocessing"][k]) for k in ("slices", "size")},
                                 **model_grid(cfg["preprocessing"])})
    _save_head(model.head, hcfg, run_dir / "seg_head.safetensors")
    record = {"format": RUN_FORMAT, "version": RUN_VERSION, "plane": plane, "timestep": int(sel["timestep"]),
              "block": sel["block"], **job.base_record(command), "head": hcfg,
              "head_weights": "seg_head.safetensors", "backbone": "backbone.safetensors", "metrics": metrics}
    record["provenance"]["backbone_sha256"] = {plane: cfg["backbone_sha256"]}
    record["provenance"]["backbone"] = os.fspath(backbone_path.resolve())
    ordered = {k: record[k] for k in ("format", "version", "plane", "timestep", "block", "preprocessing", "head",
                                      "head_weights", "backbone", "num_classes", "structures", "context_tissues")}
    ordered.update({k: v for k, v in record.items() if k not in ordered})
    return job.write_run(ordered)


def train_seg_baseline(manifest: PathLike, plane: str, model_name: str, out: PathLike, *,
                       config: PathLike = "seg-ft", overrides: Sequence[str] = (),
                       train_patients: Optional[int] = None, resume: bool = False, device: str = "auto",
                       progress: Optional[ProgressFn] = None, cancel: Optional[threading.Event] = None,
                       stop_after_epoch: Optional[int] = None, show_progress: bool = False,
                       command: Optional[str] = None, cache_dir: Optional[PathLike] = None
                       ) -> Optional[Dict[str, Any]]:
    """Train a from-scratch baseline (``unet``/``unet3d`` or ``unetr``) on the same cases and splits; the network
    size and epochs / batch / lr come from the config's ``baseline`` section."""
    from .baselines import build_seg_baseline
    from .model import BaselineSegmenter

    if model_name not in BASELINE_ALIASES:
        raise InputError(f"unknown baseline {model_name!r}; known: {', '.join(BASELINE_ALIASES)}")
    name = BASELINE_ALIASES[model_name]
    extra = list(overrides) + [f"baseline_model={json.dumps(name)}"]
    if train_patients is not None:
        extra.append(f"train_patients={int(train_patients)}")
    cfg = load_seg_config(config, extra)
    dev = resolve_device(device)
    job = _Job(manifest, plane, out, cfg, cache_dir)
    pre = cfg["preprocessing"]
    spec = dict(cfg["baseline"].get(name, {}))
    torch.manual_seed(int(cfg.get("seed", 0)))
    net = build_seg_baseline(name, num_classes=num_seg_classes(bool(cfg.get("context_tissues", False))),
                             img_size=(pre["slices"], pre["size"], pre["size"]), **spec)
    model = BaselineSegmenter(net).to(dev)
    settings = _settings(cfg, plane, section="baseline")
    state = job.fit(model, settings, dev, resume, stop_after_epoch, progress, cancel, show_progress,
                    desc=f"train-seg-baseline {name}")
    if not state["finished"]:
        return None
    metrics = job.evaluate(model, settings, dev, progress, cancel)
    from safetensors.torch import save_file

    weights = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    with atomic_path(job.run_dir / "model.safetensors") as tmp:
        save_file(weights, str(tmp), metadata={"format": "orthodiffusion-seg-baseline", "model": name})
    record = {"format": BASELINE_RUN_FORMAT, "version": RUN_VERSION, **job.base_record(command),
              "model": {"name": name, **spec}, "weights": "model.safetensors", "metrics": metrics}
    return job.write_run(record)
