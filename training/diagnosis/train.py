"""``orthodiffusion train-diagnosis``: the paper's two-stage diagnosis training on a manifest, with exact resume.

Stage I, per plane (``stage1.<plane>``): SAP (or the configured) pooling + a per-plane linear classifier on the
plane's tap (timestep, block from the config), weighted BCE (optional positive-class weights), Adam with a per-step
cosine schedule.

* ``linear_probe``: the backbone is frozen; each series' tap (one fixed noise draw, keyed by ``(noise_seed,
  series)``) is computed once and cached on disk by :class:`.feature_cache.FeatureCache` (backbone sha256 +
  timestep + block + noise seed), then every epoch reads the cache.
* ``finetune``: the encoder + middle block train at ``backbone_lr_scale`` x the head learning rate (the decoder is
  never run); the noise is redrawn every step (seeded by stage, epoch and step).

Stage II (``stage2``): pooling and (fine-tuned) backbones frozen; every series' pooled feature is computed once (fixed
noise draw). The configured fusion (concat by default; its weights start as the mean of the Stage I classifiers, so
training starts from the average of the per-plane logits) trains on all cross-plane combinations of the training
patients with weight 1/n per combination (:mod:`.multiscan`); patients lacking a plane are skipped (counted
in ``run.json``). Alongside, MPAE (``mpae``): per-plane heads give out-of-fold logits by patient-level K-fold CV, the
gate trains on them (:mod:`.mpae`), and the final per-plane heads train on all training series. With
``ehr.enabled`` and EHR columns in the manifest, an :class:`~OrthoDiffusionLib.model.ehr.EHRFusionClassifier` trains on the
concatenated pooled features (``ehr``). Finally per-label temperatures are fitted on the validation predictions.

The result is ONE :class:`~OrthoDiffusionLib.model.heads.DiagnosisHead` state dict plus one backbone per plane. At
evaluation a patient's combinations are averaged; a patient with a missing plane is predicted by MPAE.

Run folder (read by ``orthodiffusion export``): ``run.json`` (written last), ``backbone_<plane>.safetensors``,
``diagnosis_head.safetensors``, ``ehr_fusion.safetensors`` (with EHR), ``predictions_{val,test}.csv`` (format of
``orthodiffusion evaluate``; extra columns ``<label>__<plane>`` = MPAE plane weights and ``fused_by``), ``log.csv``,
``cache/`` (preprocessed volumes, cached taps; ``--cache-dir`` moves it) and, while training,
``checkpoint.safetensors`` (every epoch; removed when the run finishes). ``--resume`` continues from the checkpoint
and ends with the same weights and metrics as an uninterrupted run.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from OrthoDiffusionLib.atomic import atomic_path
from OrthoDiffusionLib.model.backbone import DiffusionUNet
from OrthoDiffusionLib.model.checkpoints import file_sha256, load_backbone, save_backbone
from OrthoDiffusionLib.model.ehr import EHRFusionClassifier
from OrthoDiffusionLib.device import resolve_device
from OrthoDiffusionLib.errors import InputError, MissingPathError
from OrthoDiffusionLib.model.features import extract_taps
from OrthoDiffusionLib.model.fusion import MPAEFusion, PlaneClassifier, SimpleConcatFusion, build_fusion
from OrthoDiffusionLib.model.heads import DiagnosisHead
from OrthoDiffusionLib.labels import PLANES
from OrthoDiffusionLib.progress import ProgressFn
from OrthoDiffusionLib.model.pooling import build_pooling
from OrthoDiffusionLib.model.schedule import CosineSchedule

from ..evaluation import metrics as M
from ..configs import apply_label_set, load_config, validate_config
from .checkpoint import EpochLoop, RunState, cosine_lambda, derived_seed
from .data import (DiagnosisManifest, SeriesRow, fixed_noise_taps, is_simulated_cohort,
                             read_diagnosis_manifest, series_weights)
from .feature_cache import FeatureCache
from .tissue_aux import TissueAuxHeads, TissueMaps, aux_settings, has_tissue_maps
from .losses import positive_class_weights, weighted_bce
from .mpae import out_of_fold_predictions, train_mpae_gate
from .multiscan import CombinationSet, aggregate_by_patient
from OrthoDiffusionLib.inference.preprocess import model_grid

from ..pretrain.ddpm import SeriesVolumes
from ..run_files import save_tensors, utc_now, write_log_csv, write_text
from ..curves import plot_run_curves
from ..split_checks import warn_if_small

__all__ = ["RUN_FORMAT", "resolve_config", "train_diagnosis", "patient_metrics", "fit_module",
           "init_concat_from_stage1", "plane_backbone_files"]

RUN_FORMAT = "orthodiffusion.diagnosis-run"
DEFAULT_PREPROCESSING = {"slices": 16, "size": 256}


# ------------------------------------------------------------------------------------------------ configuration
def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def resolve_config(name_or_path: str, overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """:func:`OrthoDiffusionLib.training.configs.load_config` plus ``key.sub=value`` overrides (values parsed as JSON, else text),
    re-validated, with ``preprocessing`` defaulting to 16 slices of 256 x 256."""
    cfg = load_config(name_or_path)
    for item in overrides:
        if "=" not in item:
            raise InputError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        node = cfg
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"--set {key}: {part!r} is not a section of the configuration")
        node[parts[-1]] = _parse_value(value)
    validate_config(cfg, str(name_or_path))
    apply_label_set(cfg, str(name_or_path))
    cfg["preprocessing"] = {**DEFAULT_PREPROCESSING, **cfg.get("preprocessing", {})}
    return cfg


# ------------------------------------------------------------------------------------------------ context
@dataclass
class _Context:
    cfg: Dict[str, Any]
    manifest: DiagnosisManifest
    backbones: Dict[str, DiffusionUNet]
    backbone_paths: Dict[str, Path]
    backbone_sha: Dict[str, str]
    volumes: SeriesVolumes
    cache: Path
    device: torch.device
    seed: int
    state: RunState
    loop: EpochLoop
    schedule: CosineSchedule = field(default_factory=CosineSchedule)
    notes: List[str] = field(default_factory=list)  # run.json warnings gathered while training

    @property
    def slices(self) -> int:
        return int(self.cfg["preprocessing"]["slices"])

    @property
    def size(self) -> int:
        return int(self.cfg["preprocessing"]["size"])

    @property
    def finetune(self) -> bool:
        return self.cfg["protocol"] == "finetune"

    @property
    def noise_seed(self) -> int:
        return int(self.cfg.get("features", {}).get("noise_seed", 0))

    def sid(self, row: SeriesRow) -> str:
        return row.series_id(self.slices, self.size)

    def x0(self, rows: Sequence[SeriesRow]) -> torch.Tensor:
        """Clean volumes ``(B, 1, slices, size, size)`` on the device."""
        return torch.stack([self.volumes[r.index] for r in rows]).to(self.device)

    def fixed_taps(self, plane: str, rows: Sequence[SeriesRow]) -> torch.Tensor:
        """``(N, C, d, h, w)`` CPU taps with the fixed noise draw: cached (linear probing) or computed with the
        current (fine-tuned) backbone."""
        sel = self.cfg["planes"][plane]
        model = self.backbones[plane]
        model.eval()

        def compute(chunk: Sequence[SeriesRow]) -> torch.Tensor:
            return fixed_noise_taps(model, self.schedule, self.x0(chunk), sel["timestep"], sel["block"],
                                    self.noise_seed, [self.sid(r) for r in chunk]).cpu()

        if self.finetune:
            return torch.cat([compute(rows[i:i + 8]) for i in range(0, len(rows), 8)])
        cache = FeatureCache(self.cache / "features", self.backbone_sha[plane])
        return torch.stack([cache.get_or_compute(self.sid(r), plane, sel["timestep"], sel["block"], self.noise_seed,
                                                 lambda r=r: compute([r])[0]) for r in rows])


def _seeded(ctx: _Context, name: str, build: Callable[[], nn.Module],
            init: Optional[Callable[[nn.Module], None]] = None) -> nn.Module:
    """Build a module with initial weights fixed by ``(seed, name)`` (then ``init(module)``) and register it as a
    checkpoint part (which loads its saved weights when resuming)."""
    torch.manual_seed(derived_seed(ctx.seed, "init", name))
    module = build()
    if init is not None:
        init(module)
    return ctx.state.add_part(name, module.to(ctx.device))


def _labels(ctx: _Context, rows: Sequence[SeriesRow]) -> torch.Tensor:
    return torch.as_tensor(ctx.manifest.labels_of([r.patient_id for r in rows]))


def _pos_weight(section: Mapping[str, Any], y: torch.Tensor, w: torch.Tensor) -> Optional[torch.Tensor]:
    if not section.get("pos_weight", False):
        return None
    return positive_class_weights(y, float(section.get("max_pos_weight", 20.0)), w)


def patient_metrics(patient_ids: Sequence[str], probabilities: np.ndarray, manifest: DiagnosisManifest
                    ) -> Dict[str, Any]:
    """Patient-level metrics (rows of a patient averaged): macro AUROC, per-label AUROC/AP, CP..OF1 at 0.5."""
    ids, p = aggregate_by_patient(patient_ids, probabilities)
    y = manifest.labels_of(ids)
    keys = manifest.label_keys

    def clean(v: float) -> Optional[float]:
        return None if not np.isfinite(v) else float(v)

    return {"patients": len(ids), "macro_auroc": clean(M.macro_auroc(y, p)),
            "auroc": {k: clean(v) for k, v in zip(keys, M.per_label_auroc(y, p))},
            "ap": {k: clean(v) for k, v in zip(keys, M.per_label_ap(y, p))},
            "multilabel_0.5": {k: float(v) for k, v in M.multilabel_prf(y, p, 0.5).items()}}


# ------------------------------------------------------------------------------------------------ Stage I
def _tissue_aux(ctx: _Context, name: str, model: DiffusionUNet, train: Sequence[SeriesRow]
                ) -> Tuple[Optional[TissueAuxHeads], Optional[TissueMaps]]:
    """The auxiliary tissue heads of ``stage1.tissue_aux`` (a checkpoint part) and the training rows' tissue maps,
    or (None, None) when the config sets none or a training row has no tissue map (real data)."""
    settings = aux_settings(ctx.cfg["stage1"])
    if settings is None:
        return None, None
    if not has_tissue_maps(train):
        ctx.notes.append(f"{name}: stage1.tissue_aux skipped (not every training series has a tissue map)")
        return None, None
    missing = [b for b in settings[1] if b not in model.tap_names()]
    if missing:
        raise InputError(f"stage1.tissue_aux.blocks: {', '.join(missing)} not in this backbone "
                         f"({', '.join(model.tap_names())})")
    heads = _seeded(ctx, f"{name}.tissue_aux", lambda: TissueAuxHeads(
        {b: model.tap_channels(b) for b in settings[1]}))
    maps = TissueMaps(ctx.slices, ctx.size, ctx.volumes.grid, ctx.cache / "tissue")
    return heads, maps


def _stage1(ctx: _Context, plane: str) -> Tuple[nn.Module, PlaneClassifier]:
    cfg, s1 = ctx.cfg, ctx.cfg["stage1"]
    sel = cfg["planes"][plane]
    model = ctx.backbones[plane]
    channels = model.tap_channels(sel["block"])
    name = f"stage1.{plane}"
    pool = _seeded(ctx, f"{name}.pool", lambda: build_pooling(cfg["pooling"], channels,
                                                              **cfg.get("pooling_options", {})))
    clf = _seeded(ctx, f"{name}.classifier", lambda: PlaneClassifier(pool.out_features, cfg["num_labels"]))
    if ctx.finetune:
        ctx.state.add_part(f"{name}.backbone", model)
    train = ctx.manifest.series("train", plane)
    val = ctx.manifest.series("val", plane)
    if not train:
        raise InputError(f"no training series of the {plane} plane", ctx.manifest.path)
    y = _labels(ctx, train).to(ctx.device)
    w = torch.as_tensor(series_weights(train)).to(ctx.device)
    pos_weight = _pos_weight(s1, y, w)
    lr = float(s1["lr"])
    head_params = [*pool.parameters(), *clf.parameters()]

    def score(taps: torch.Tensor) -> torch.Tensor:
        return clf(pool(taps.to(ctx.device)))

    def evaluate() -> Dict[str, float]:
        if not val:
            return {}
        pool.eval()
        with torch.no_grad():
            p = torch.sigmoid(score(ctx.fixed_taps(plane, val))).cpu().numpy()
        pool.train()
        return {"val_macro_auroc": patient_metrics([r.patient_id for r in val], p, ctx.manifest)["macro_auroc"]}

    if ctx.finetune:
        t, block = int(sel["timestep"]), sel["block"]
        scale = s1.get("backbone_lr_scale")
        if scale is None:
            raise InputError("protocol finetune needs stage1.backbone_lr_scale")
        aux, maps = _tissue_aux(ctx, name, model, train)
        if aux is not None:
            head_params += list(aux.parameters())
        blocks = tuple(dict.fromkeys((block, *(aux.blocks if aux is not None else ()))))
        weight = aux_settings(s1)[0] if aux is not None else 0.0
        groups = [{"params": model.encoder_parameters(), "lr": lr * float(scale)}, {"params": head_params, "lr": lr}]

        def step(idx: torch.Tensor, epoch: int, b: int) -> torch.Tensor:
            model.train()
            g = torch.Generator().manual_seed(derived_seed(ctx.seed, name, "noise", epoch, b))
            rows = [train[i] for i in idx.tolist()]
            taps = extract_taps(model, ctx.schedule, ctx.x0(rows), t, blocks, generator=g, grad=True)
            loss = weighted_bce(clf(pool(taps[block])), y[idx], w[idx], pos_weight)
            return loss + weight * aux.loss(taps, maps, rows) if aux is not None else loss
    else:
        model.requires_grad_(False)
        taps = ctx.fixed_taps(plane, train) if name not in ctx.state.completed else None
        groups = [{"params": head_params, "lr": lr}]

        def step(idx: torch.Tensor, epoch: int, b: int) -> torch.Tensor:
            return weighted_bce(score(taps[idx]), y[idx], w[idx], pos_weight)

    ctx.loop.run(name, groups, len(train), int(s1["batch_size"]), int(s1["epochs"]), step,
                 evaluate if s1.get("validate_each_epoch", True) else None)
    model.eval().requires_grad_(False)
    pool.eval()
    return pool, clf


# ------------------------------------------------------------------------------------------------ Stage II
@dataclass
class _Pooled:
    """Pooled features of every series: ``features[plane]`` ``(N_plane, F)`` CPU, ``position[row index]``."""

    features: Dict[str, torch.Tensor]
    position: Dict[int, int]

    def of(self, rows: Sequence[SeriesRow]) -> torch.Tensor:
        return self.features[rows[0].plane][[self.position[r.index] for r in rows]] if rows else torch.zeros(0)

    def combination_features(self, combos: CombinationSet, planes: Sequence[str] = PLANES) -> Dict[str, torch.Tensor]:
        return {p: torch.stack([self.features[p][self.position[c.series[p]["index"]]] for c in combos.combinations])
                for p in planes}


def _pool_all(ctx: _Context, pools: Mapping[str, nn.Module]) -> _Pooled:
    feats, position = {}, {}
    for plane in PLANES:
        rows = ctx.manifest.series(plane=plane)
        chunks = []
        for start in range(0, len(rows), 16):
            chunk = rows[start:start + 16]
            with torch.no_grad():
                chunks.append(pools[plane](ctx.fixed_taps(plane, chunk).to(ctx.device)).cpu())
            ctx.loop.check_cancel()
            if ctx.loop.progress is not None:
                ctx.loop.progress(f"pooled features {plane}", min(1.0, (start + len(chunk)) / len(rows)))
        feats[plane] = torch.cat(chunks) if chunks else torch.zeros(0)
        position.update({r.index: i for i, r in enumerate(rows)})
    return _Pooled(feats, position)


def init_concat_from_stage1(fusion: SimpleConcatFusion, classifiers: Mapping[str, PlaneClassifier]) -> None:
    """Concat head = mean of the Stage I classifiers: its logits start as the average of the per-plane logits."""
    with torch.no_grad():
        n = len(fusion.planes)
        fusion.head.weight.copy_(torch.cat([classifiers[p].linear.weight for p in fusion.planes], dim=1) / n)
        fusion.head.bias.copy_(torch.stack([classifiers[p].linear.bias for p in fusion.planes]).mean(0))


def _combination_labels(ctx: _Context, combos: CombinationSet) -> Tuple[torch.Tensor, torch.Tensor]:
    y = torch.as_tensor(ctx.manifest.labels_of(combos.patient_ids()))
    return y, torch.as_tensor(combos.weights(), dtype=torch.float32)


def _stage2(ctx: _Context, pooled: _Pooled, classifiers: Mapping[str, PlaneClassifier], width: int,
            train: CombinationSet) -> nn.Module:
    cfg, s2 = ctx.cfg, ctx.cfg["stage2"]
    def init(module: nn.Module) -> None:
        if isinstance(module, SimpleConcatFusion):
            init_concat_from_stage1(module, classifiers)

    fusion = _seeded(ctx, "stage2.fusion", lambda: build_fusion(cfg["fusion"], width, cfg["num_labels"], PLANES,
                                                                **cfg.get("fusion_options", {})), init)
    if "stage2" in ctx.state.completed:
        return fusion.eval()
    if not len(train):
        raise InputError("no training patient has all three planes: the fusion cannot be trained",
                         ctx.manifest.path)
    x = {p: v.to(ctx.device) for p, v in pooled.combination_features(train).items()}
    y, w = (t.to(ctx.device) for t in _combination_labels(ctx, train))
    pos_weight = _pos_weight(s2, y, w)
    val = ctx.manifest.combinations("val", require_all_planes=True)
    xv = {p: v.to(ctx.device) for p, v in pooled.combination_features(val).items()} if len(val) else None

    def step(idx: torch.Tensor, epoch: int, b: int) -> torch.Tensor:
        return weighted_bce(fusion({p: v[idx] for p, v in x.items()}).logits, y[idx], w[idx], pos_weight)

    def evaluate() -> Dict[str, float]:
        if xv is None:
            return {}
        fusion.eval()
        with torch.no_grad():
            p = torch.sigmoid(fusion(xv).logits).cpu().numpy()
        fusion.train()
        return {"val_macro_auroc": patient_metrics(val.patient_ids(), p, ctx.manifest)["macro_auroc"]}

    ctx.loop.run("stage2", [{"params": fusion.parameters(), "lr": float(s2["lr"])}], len(train),
                 int(s2["batch_size"]), int(s2["epochs"]), step, evaluate)
    return fusion.eval()


def fit_module(module: nn.Module, logits_of: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor,
               w: torch.Tensor, lr: float, epochs: int, batch_size: int, seed: int,
               pos_weight: Optional[torch.Tensor] = None) -> nn.Module:
    """Fit ``module``'s parameters with Adam + per-step cosine schedule on weighted BCE of ``logits_of(indices)``
    ``(b, K)`` against ``y[indices]`` (``(N, K)``, weights ``w`` ``(N,)``); sample order seeded by ``seed``. Returns
    ``module`` in eval mode. (For short fits that need no checkpoint: MPAE heads, search probes.)"""
    n = y.shape[0]
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(max(1, epochs * -(-n // batch_size))))
    g = torch.Generator().manual_seed(seed)
    module.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            loss = weighted_bce(logits_of(idx), y[idx], w[idx], pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return module.eval()


def _fit_plane_head(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, lr: float, epochs: int, batch_size: int,
                    seed: int) -> PlaneClassifier:
    """A per-plane MPAE head ``Linear(F, K)`` on pooled features ``x`` ``(N, F)`` (initial weights from ``seed``)."""
    torch.manual_seed(seed)
    head = PlaneClassifier(x.shape[1], y.shape[1]).to(x.device)
    return fit_module(head, lambda idx: head(x[idx]), y, w, lr, epochs, batch_size, seed)


def _train_mpae(ctx: _Context, pooled: _Pooled, width: int, train: CombinationSet) -> MPAEFusion:
    cfg, mc = ctx.cfg, ctx.cfg["mpae"]
    mpae = _seeded(ctx, "mpae", lambda: MPAEFusion(width, cfg["num_labels"], PLANES, int(mc.get("gate_hidden", 32)),
                                                   float(mc.get("gate_dropout", 0.0))))
    if "mpae" in ctx.state.completed:
        return mpae.eval()
    lr, epochs, bs = float(mc["head_lr"]), int(mc["head_epochs"]), int(ctx.cfg["stage2"]["batch_size"])
    oof: Dict[str, Dict[int, torch.Tensor]] = {}
    for plane in PLANES:
        rows = ctx.manifest.series("train", plane)
        x = pooled.of(rows).to(ctx.device)
        y = _labels(ctx, rows).to(ctx.device)
        w = torch.as_tensor(series_weights(rows)).to(ctx.device)
        pids = [r.patient_id for r in rows]
        folds = min(int(mc.get("folds", 5)), len(set(pids)))
        fold_no = iter(range(folds))

        def fit_predict(tr: np.ndarray, held: np.ndarray) -> np.ndarray:
            head = _fit_plane_head(x[tr], y[tr], w[tr], lr, epochs, bs,
                                   derived_seed(ctx.seed, "mpae", plane, "fold", next(fold_no)))
            with torch.no_grad():
                return head(x[held]).cpu().numpy()

        logits = out_of_fold_predictions(pids, fit_predict, n_folds=folds, seed=derived_seed(ctx.seed, "folds") % 2**32)
        oof[plane] = {r.index: torch.as_tensor(logits[i], dtype=torch.float32) for i, r in enumerate(rows)}
        final = _fit_plane_head(x, y, w, lr, epochs, bs, derived_seed(ctx.seed, "mpae", plane, "final"))
        mpae.heads[plane].load_state_dict(final.state_dict())
        ctx.loop.check_cancel()
    z = {p: torch.stack([oof[p][c.series[p]["index"]] for c in train.combinations]) for p in PLANES}
    y, w = _combination_labels(ctx, train)
    train_mpae_gate(mpae, z, y, w, epochs=int(mc["gate_epochs"]), lr=float(mc["gate_lr"]),
                    weight_decay=float(mc["gate_weight_decay"]), batch_size=bs,
                    seed=derived_seed(ctx.seed, "mpae", "gate") % 2**32)
    ctx.state.complete("mpae")
    return mpae.eval()


def _ehr_records(ctx: _Context, patient_ids: Sequence[str]) -> List[Dict[str, Any]]:
    return [ctx.manifest.ehr.get(p, {}) for p in patient_ids]


def _encode_ehr(ctx: _Context, model: EHRFusionClassifier, patient_ids: Sequence[str]):
    """Encoded EHR of the patients; a non-numeric age/height/weight is an ``InputError`` naming the manifest."""
    try:
        return model.encoder.encode(_ehr_records(ctx, patient_ids)).to(ctx.device)
    except ValueError as e:
        raise InputError(f"EHR columns: {e}", ctx.manifest.path) from None


def _train_ehr(ctx: _Context, pooled: _Pooled, width: int, train: CombinationSet,
               fusion: nn.Module) -> Optional[EHRFusionClassifier]:
    ec = ctx.cfg.get("ehr", {})
    if not ec.get("enabled", False) or ctx.manifest.ehr is None:
        return None
    torch.manual_seed(derived_seed(ctx.seed, "init", "ehr"))
    model = EHRFusionClassifier(ctx.cfg["num_labels"], len(PLANES) * width)
    try:
        model.encoder.fit(_ehr_records(ctx, ctx.manifest.patients("train")))
    except ValueError as e:
        raise InputError(f"EHR columns: {e}", ctx.manifest.path) from None
    if isinstance(fusion, SimpleConcatFusion):
        model.mri_head.load_state_dict(fusion.head.state_dict())
    model = ctx.state.add_part("ehr", model.to(ctx.device))
    if "ehr" in ctx.state.completed:
        return model.eval()
    feats = pooled.combination_features(train)
    x = torch.cat([feats[p] for p in PLANES], dim=1).to(ctx.device)
    batch = _encode_ehr(ctx, model, train.patient_ids())
    y, w = (t.to(ctx.device) for t in _combination_labels(ctx, train))

    def step(idx: torch.Tensor, epoch: int, b: int) -> torch.Tensor:
        sub = type(batch)(batch.fixed[idx], batch.event[idx])
        return weighted_bce(model(x[idx], sub), y[idx], w[idx])

    ctx.loop.run("ehr", [{"params": model.parameters(), "lr": float(ec["lr"])}], len(train),
                 int(ctx.cfg["stage2"]["batch_size"]), int(ec["epochs"]), step)
    return model.eval()


# ------------------------------------------------------------------------------------------------ predictions
@dataclass
class _SplitPredictions:
    patient_ids: List[str]
    logits: np.ndarray          # (N, K) uncalibrated
    probabilities: np.ndarray   # (N, K) calibrated
    plane_weights: np.ndarray   # (N, K, 3)
    fused_by: List[str]
    ehr_probabilities: Optional[np.ndarray] = None


def _predict(ctx: _Context, head: DiagnosisHead, pooled: _Pooled, split: str,
             ehr: Optional[EHRFusionClassifier]) -> Optional[_SplitPredictions]:
    combos = ctx.manifest.combinations(split, require_all_planes=False)
    if not len(combos):
        return None
    k = ctx.cfg["num_labels"]
    logits, probs = np.zeros((len(combos), k)), np.zeros((len(combos), k))
    weights, fused_by = np.zeros((len(combos), k, len(PLANES))), [""] * len(combos)
    groups: Dict[Tuple[str, ...], List[int]] = {}
    for i, c in enumerate(combos.combinations):
        groups.setdefault(tuple(p for p in PLANES if p in c.series), []).append(i)
    head.eval()
    with torch.no_grad():
        for planes, idx in groups.items():
            feats = {p: torch.stack([pooled.features[p][pooled.position[combos.combinations[i].series[p]["index"]]]
                                     for i in idx]).to(ctx.device) for p in planes}
            out = head.fuse(feats)
            probs[idx] = out.probabilities.cpu().numpy()
            logits[idx] = (out.logits * head.calibration.temperature).cpu().numpy()
            weights[idx] = out.plane_weights.cpu().numpy()
            for i in idx:
                fused_by[i] = out.fused_by
    ehr_probs = None
    if ehr is not None:
        complete = [i for i, c in enumerate(combos.combinations) if len(c.series) == len(PLANES)]
        ehr_probs = np.full((len(combos), k), np.nan)
        if complete:
            x = torch.cat([torch.stack([pooled.features[p][pooled.position[combos.combinations[i].series[p]["index"]]]
                                        for i in complete]) for p in PLANES], dim=1).to(ctx.device)
            batch = _encode_ehr(ctx, ehr, [combos.combinations[i].patient_id for i in complete])
            with torch.no_grad():
                ehr_probs[complete] = torch.sigmoid(ehr(x, batch)).cpu().numpy()
    return _SplitPredictions(combos.patient_ids(), logits, probs, weights, fused_by, ehr_probs)


def _predictions_csv(pred: _SplitPredictions, keys: Sequence[str], probabilities: np.ndarray) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["patient_id", *keys, *[f"{k}__{p}" for k in keys for p in PLANES], "fused_by"])
    for i, pid in enumerate(pred.patient_ids):
        w.writerow([pid, *[f"{v:.6f}" for v in probabilities[i]],
                    *[f"{pred.plane_weights[i, j, o]:.6f}" for j in range(len(keys)) for o in range(len(PLANES))],
                    pred.fused_by[i]])
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ run folder
def _assemble_head(ctx: _Context, pools: Mapping[str, nn.Module], fusion: nn.Module, mpae: MPAEFusion
                   ) -> DiagnosisHead:
    """The :class:`DiagnosisHead` of the run (eval mode): the trained poolings, fusion and MPAE gate."""
    cfg = ctx.cfg
    head = DiagnosisHead(cfg["num_labels"],
                         channels=ctx.backbones[PLANES[0]].tap_channels(cfg["planes"][PLANES[0]]["block"]),
                         pooling=cfg["pooling"], fusion=cfg["fusion"], with_mpae=True, planes=PLANES,
                         pooling_options=cfg.get("pooling_options", {}), fusion_options=cfg.get("fusion_options", {}),
                         mpae_options={"gate_hidden": int(cfg["mpae"].get("gate_hidden", 32)),
                                       "gate_dropout": float(cfg["mpae"].get("gate_dropout", 0.0))}).to(ctx.device)
    for plane in PLANES:
        head.pools[plane].load_state_dict(pools[plane].state_dict())
    head.fusion.load_state_dict(fusion.state_dict())
    if head.mpae is not None:
        head.mpae.load_state_dict(mpae.state_dict())
    return head.eval()


def _calibrate(ctx: _Context, head: DiagnosisHead, pooled: _Pooled) -> List[str]:
    """Fit the head's per-label temperatures on the validation predictions; returns the warning (also printed) when
    the validation split is too small for it, else []."""
    data = ctx.manifest
    val_pred = _predict(ctx, head, pooled, "val", None)
    small_val = warn_if_small(data.labels_of(data.patients("val")), ctx.cfg["labels"],
                              "the per-label temperature calibration fitted on it (and thresholds chosen on it)",
                              who="train-diagnosis")
    head.calibration.fit(val_pred.logits, data.labels_of(val_pred.patient_ids))
    return small_val


def _training_record(ctx: _Context, head: DiagnosisHead, train: CombinationSet) -> Dict[str, Any]:
    """The ``training`` entry of ``run.json``: protocol, seeds and noise, what was trained on, the temperatures."""
    data = ctx.manifest
    skipped = data.combinations("train", require_all_planes=True).skipped
    return {"protocol": ctx.cfg["protocol"], "seed": ctx.seed, "noise_seed": ctx.noise_seed,
            "noise": "series_noise((1, slices, size, size), noise_seed, '<abs series path>|slices|size')",
            "train_patients": len(data.patients("train")),
            "train_patients_excluded_by_subset": data.excluded_train_patients,
            "stage2_train_combinations": len(train),
            "stage2_skipped_patients_missing_plane": len(skipped),
            "temperatures": head.calibration.to_dict()["temperature"]}


def _test_and_write_predictions(ctx: _Context, run: Path, head: DiagnosisHead, pooled: _Pooled,
                                ehr: Optional[EHRFusionClassifier]) -> Dict[str, Any]:
    """Patient-level metrics of the validation and test splits (``None`` for an empty split; ``<split>_ehr`` with
    EHR fusion), writing ``predictions_<split>.csv``."""
    metrics: Dict[str, Any] = {}
    for split in ("val", "test"):
        pred = _predict(ctx, head, pooled, split, ehr)
        if pred is None:
            metrics[split] = None
            continue
        metrics[split] = patient_metrics(pred.patient_ids, pred.probabilities, ctx.manifest)
        metrics[split]["fused_by_mpae_rows"] = sum(f == "mpae" and ctx.cfg["fusion"] != "mpae" for f in pred.fused_by)
        write_text(run / f"predictions_{split}.csv", _predictions_csv(pred, ctx.cfg["labels"], pred.probabilities))
        if pred.ehr_probabilities is not None:
            ok = ~np.isnan(pred.ehr_probabilities).any(axis=1)
            ids = [p for p, good in zip(pred.patient_ids, ok) if good]
            if ids:
                metrics[f"{split}_ehr"] = patient_metrics(ids, pred.ehr_probabilities[ok], ctx.manifest)
    return metrics


def _save_weights(ctx: _Context, run: Path, head: DiagnosisHead, ehr: Optional[EHRFusionClassifier],
                  width: int, preprocessing: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """Write the backbones (fine-tuned ones record ``preprocessing``; frozen ones are copied), the head and the EHR
    branch into ``run``; returns the ``ehr`` entry of ``run.json`` (None without EHR)."""
    for plane in PLANES:
        target = run / f"backbone_{plane}.safetensors"
        if ctx.finetune:
            save_backbone(ctx.backbones[plane], target, plane,
                          {"fine_tuned_from": ctx.backbone_sha[plane], "run": str(run)},
                          preprocessing=dict(preprocessing))
        else:
            with atomic_path(target) as tmp:
                shutil.copyfile(ctx.backbone_paths[plane], tmp)
    save_tensors(run / "diagnosis_head.safetensors", head.state_dict())
    if ehr is None:
        return None
    save_tensors(run / "ehr_fusion.safetensors", ehr.state_dict())
    return {"weights": "ehr_fusion.safetensors",
            "config": {"num_labels": ctx.cfg["num_labels"], "mri_features": len(PLANES) * width},
            "statistics": ehr.encoder.statistics()}


def plane_backbone_files(backbone: Optional[str | os.PathLike], per_plane: Mapping[str, Optional[str | os.PathLike]]
                         ) -> Dict[str, Path]:
    """``{plane: backbone file}``: ``per_plane[plane]`` or else ``backbone``; InputError / MissingPathError when a
    plane has none or its file is missing."""
    out = {}
    for plane in PLANES:
        chosen = per_plane.get(plane) or backbone
        if chosen is None:
            raise InputError(f"no backbone for the {plane} plane (give --backbone or --backbone-{plane})")
        out[plane] = Path(chosen)
        if not out[plane].is_file():
            raise MissingPathError("backbone file not found", out[plane])
    return out


def train_diagnosis(manifest: str | os.PathLike, config: Mapping[str, Any], out: str | os.PathLike, *,
                    backbone: Optional[str | os.PathLike] = None,
                    plane_backbones: Optional[Mapping[str, Optional[str | os.PathLike]]] = None,
                    resume: bool = False, device: str = "cpu", seed: int = 0, train_patients: Optional[int] = None,
                    train_fraction: Optional[float] = None, cache_dir: Optional[str | os.PathLike] = None,
                    command: str = "", progress: Optional[ProgressFn] = None,
                    cancel: Optional[threading.Event] = None,
                    epoch_log: Optional[Callable[[Dict[str, Any]], None]] = None,
                    step_log: Optional[Callable[[str, int, float], None]] = None) -> Dict[str, Any]:
    """Train a diagnosis model (module doc) into ``out``; returns the ``run.json`` dict.

    ``config``: a resolved configuration (:func:`resolve_config`). ``backbone``: one backbone file for every plane;
    ``plane_backbones`` overrides per plane. ``progress(stage, fraction)`` reports progress; setting ``cancel``
    stops at the next step with :class:`~OrthoDiffusionLib.errors.CancelledError` (resume with ``resume=True``).
    ``epoch_log(row)`` gets every epoch's log row, ``step_log(stage, epoch, running loss)`` every step's.
    """
    cfg = json.loads(json.dumps(dict(config)))
    run = Path(out)
    paths = plane_backbone_files(backbone, plane_backbones or {})
    data = read_diagnosis_manifest(manifest, cfg["labels"])
    data = data.restrict_train(train_patients, train_fraction, seed=seed)
    lacking = [p for p in PLANES if not data.series("train", p)]
    if lacking:
        raise InputError(f"no training series of the {', '.join(lacking)} plane(s)", data.path)
    sha = {p: file_sha256(paths[p]) for p in PLANES}
    settings = {"config": cfg, "manifest_sha256": data.sha256, "backbone_sha256": sha, "seed": int(seed),
                "train_patients": data.patients("train")}
    state = RunState.open(run, settings, resume)
    dev = resolve_device(device)
    models = {}
    for plane in PLANES:
        models[plane], _ = load_backbone(paths[plane], device=dev)
    cache = Path(cache_dir) if cache_dir is not None else run / "cache"
    slices, size = int(cfg["preprocessing"]["slices"]), int(cfg["preprocessing"]["size"])
    volumes = SeriesVolumes([r.path for r in data.rows], slices=slices, size=size, cache_dir=cache / "volumes",
                            grid=model_grid(cfg["preprocessing"]))

    def log(row: Dict[str, Any]) -> None:
        write_log_csv(run / "log.csv", state.extra["log"])
        if epoch_log is not None:
            epoch_log(row)

    loop = EpochLoop(state, log, progress, cancel, step_log)
    ctx = _Context(cfg, data, models, paths, sha, volumes, cache, dev, int(seed), state, loop)

    pools, classifiers = {}, {}
    for plane in PLANES:
        pools[plane], classifiers[plane] = _stage1(ctx, plane)
    pooled = _pool_all(ctx, pools)
    width = pools[PLANES[0]].out_features
    train = data.combinations("train", require_all_planes=True)
    mpae = _train_mpae(ctx, pooled, width, train)
    fusion = mpae if cfg["fusion"] == "mpae" else _stage2(ctx, pooled, classifiers, width, train)
    ehr = _train_ehr(ctx, pooled, width, train, fusion)

    head = _assemble_head(ctx, pools, fusion, mpae)
    small_val = _calibrate(ctx, head, pooled)
    metrics = _test_and_write_predictions(ctx, run, head, pooled, ehr)
    preprocessing = {"slices": slices, "size": size, **model_grid(cfg["preprocessing"])}
    ehr_entry = _save_weights(ctx, run, head, ehr, width, preprocessing)
    keys = cfg["labels"]
    info = {"format": RUN_FORMAT, "version": 1, "anatomy": cfg["anatomy"], "labels": keys,
            "label_names": cfg.get("label_names") or {}, "warnings": small_val + ctx.notes,
            "preprocessing": preprocessing,
            "planes": {p: {"timestep": int(cfg["planes"][p]["timestep"]), "block": cfg["planes"][p]["block"],
                           "backbone": f"backbone_{p}.safetensors"} for p in PLANES},
            "head": head.config(), "head_weights": "diagnosis_head.safetensors", "ehr": ehr_entry,
            "config": cfg, "metrics": metrics,
            "training": _training_record(ctx, head, train),
            "provenance": {"command": command, "manifest": str(Path(manifest).resolve()),
                           "manifest_sha256": data.sha256, "started": state.extra["started"], "finished": utc_now(),
                           "backbone_sha256": sha,
                           "synthetic_data_only": is_simulated_cohort(manifest)}}
    write_text(run / "run.json", json.dumps(info, indent=2, default=float) + "\n")
    state.path.unlink(missing_ok=True)
    plot_run_curves(run / "log.csv", title=f"train-diagnosis {run.name}")
    return info
