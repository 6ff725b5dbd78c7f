"""``orthodiffusion search-timesteps``: the timestep-block search on a manifest with linear-probing features.

For every plane and every (timestep, block) of the grid (default: t in {10, 30, 50, 100, 150, 200, 300, 500} x
{mid_0, mid_1, mid_2}) a linear probe -- the configuration's pooling + a per-plane linear classifier, trained with the
Stage I linear-probing settings on frozen, cached taps (one fixed noise draw per series; one encoder pass per series
and timestep gives all three blocks) -- is scored by its validation macro AUROC (patient level). The top ``k`` per
plane are kept and all ``k^3`` cross-plane combinations are scored by the validation macro AUROC of a concat fusion
trained on the probes' pooled features with the Stage II settings (starting from the mean of the probes, as in
``train-diagnosis``). :mod:`.search` ranks and writes ``per_plane.csv/.md/.png`` (like Extended Data Fig. 1),
``combinations.csv/.md`` and ``chosen.json``; ``config.json`` is the configuration with the chosen planes, ready for
``train-diagnosis --config``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from OrthoDiffusionLib.model.checkpoints import file_sha256, load_backbone
from OrthoDiffusionLib.device import resolve_device
from OrthoDiffusionLib.errors import InputError
from OrthoDiffusionLib.model.fusion import PlaneClassifier, SimpleConcatFusion
from OrthoDiffusionLib.labels import PLANES
from OrthoDiffusionLib.progress import ProgressFn
from OrthoDiffusionLib.model.pooling import build_pooling
from OrthoDiffusionLib.model.schedule import CosineSchedule

from .checkpoint import derived_seed
from .data import SeriesRow, fixed_noise_tap_set, read_diagnosis_manifest, series_weights
from .feature_cache import FeatureCache
from OrthoDiffusionLib.inference.preprocess import model_grid

from ..pretrain.ddpm import SeriesVolumes
from ..run_files import write_text
from .search import BLOCKS, TIMESTEPS, SearchResult, timestep_block_search, write_search_outputs
from .train import fit_module, init_concat_from_stage1, patient_metrics, plane_backbone_files

__all__ = ["search_timesteps"]

Candidate = Tuple[int, str]


class _Probe(nn.Module):
    def __init__(self, pool: nn.Module, classifier: PlaneClassifier):
        super().__init__()
        self.pool, self.classifier = pool, classifier


def search_timesteps(manifest: str | os.PathLike, config: Mapping[str, Any], out: str | os.PathLike, *,
                     backbone: Optional[str | os.PathLike] = None,
                     plane_backbones: Optional[Mapping[str, Optional[str | os.PathLike]]] = None,
                     timesteps: Sequence[int] = TIMESTEPS, blocks: Sequence[str] = BLOCKS, top_k: int = 4,
                     device: str = "cpu", seed: int = 0, cache_dir: Optional[str | os.PathLike] = None,
                     progress: Optional[ProgressFn] = None, figure: bool = True) -> Dict[str, Any]:
    """Run the search (module doc) and write its outputs into ``out``; returns the chosen configuration dict."""
    cfg = json.loads(json.dumps(dict(config)))
    bad = [b for b in blocks if b not in BLOCKS]
    if bad:
        raise InputError(f"unknown block(s) {bad}; choose from {', '.join(BLOCKS)}")
    paths = plane_backbone_files(backbone, plane_backbones or {})
    data = read_diagnosis_manifest(manifest, cfg["labels"])
    dev = resolve_device(device)
    outdir = Path(out)
    cache = Path(cache_dir) if cache_dir is not None else outdir / "cache"
    slices, size = int(cfg["preprocessing"]["slices"]), int(cfg["preprocessing"]["size"])
    volumes = SeriesVolumes([r.path for r in data.rows], slices=slices, size=size, cache_dir=cache / "volumes",
                            grid=model_grid(cfg["preprocessing"]))
    noise_seed = int(cfg.get("features", {}).get("noise_seed", 0))
    schedule = CosineSchedule()
    s2 = cfg["stage2"]
    probes: Dict[Tuple[str, int, str], Tuple[_Probe, Dict[int, torch.Tensor]]] = {}
    table: Dict[str, Dict[Candidate, float]] = {}
    total, done = len(PLANES) * len(timesteps) * len(blocks), 0

    for plane in PLANES:
        model, _ = load_backbone(paths[plane], device=dev)
        feature_cache = FeatureCache(cache / "features", file_sha256(paths[plane]))
        rows = data.series("train", plane) + data.series("val", plane)
        train_n = len(data.series("train", plane))
        if train_n == 0 or train_n == len(rows):
            raise InputError(f"the {plane} plane needs training and validation series", data.path)
        y = torch.as_tensor(data.labels_of([r.patient_id for r in rows[:train_n]])).to(dev)
        w = torch.as_tensor(series_weights(rows[:train_n])).to(dev)
        table[plane] = {}
        for t in timesteps:
            taps = _taps(model, schedule, volumes, feature_cache, rows, plane, int(t), blocks, noise_seed, slices, size,
                         dev)
            for b in blocks:
                probe, pooled, p_val = _fit_probe(cfg, taps[b].to(dev), y, w, train_n, seed, (plane, int(t), b), dev)
                score = patient_metrics([r.patient_id for r in rows[train_n:]], p_val, data)["macro_auroc"]
                table[plane][(int(t), b)] = float("nan") if score is None else score
                probes[(plane, int(t), b)] = (probe, {r.index: pooled[i] for i, r in enumerate(rows)})
                done += 1
                if progress is not None:
                    progress("per-plane probes", done / total)

    train = data.combinations("train", require_all_planes=True)
    val = data.combinations("val", require_all_planes=True)
    if not len(train) or not len(val):
        raise InputError("the combination search needs train and val patients with all three planes", data.path)
    y_tr = torch.as_tensor(data.labels_of(train.patient_ids())).to(dev)
    w_tr = torch.as_tensor(train.weights(), dtype=torch.float32).to(dev)

    def features(combos, choice: Mapping[str, Candidate]) -> Dict[str, torch.Tensor]:
        return {p: torch.stack([probes[(p, *choice[p])][1][c.series[p]["index"]] for c in combos.combinations]).to(dev)
                for p in PLANES}

    def score_combination(choice: Dict[str, Candidate]) -> float:
        fusion = SimpleConcatFusion(next(iter(probes.values()))[0].pool.out_features, cfg["num_labels"], PLANES)
        init_concat_from_stage1(fusion, {p: probes[(p, *choice[p])][0].classifier for p in PLANES})
        fusion = fusion.to(dev)
        x_tr, x_val = features(train, choice), features(val, choice)
        fit_module(fusion, lambda idx: fusion({p: v[idx] for p, v in x_tr.items()}).logits, y_tr, w_tr,
                   float(s2["lr"]), int(s2["epochs"]), int(s2["batch_size"]), derived_seed(seed, "search-fusion"))
        with torch.no_grad():
            p_val = torch.sigmoid(fusion(x_val).logits).cpu().numpy()
        m = patient_metrics(val.patient_ids(), p_val, data)["macro_auroc"]
        return float("nan") if m is None else m

    result = timestep_block_search(table, score_combination, top_k=min(top_k, len(timesteps) * len(blocks)),
                                   planes=PLANES, timesteps=timesteps, blocks=blocks, progress=progress)
    write_search_outputs(result, outdir, figure=figure)
    _write_chosen_config(cfg, result, data.path.name, outdir / "config.json")
    return result.chosen_config()


def _fit_probe(cfg: Mapping[str, Any], x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, train_n: int, seed: int,
               candidate: Tuple[str, int, str], dev: torch.device) -> Tuple[_Probe, torch.Tensor, np.ndarray]:
    """A linear probe (the config's pooling + a per-plane classifier, Stage I settings) on the taps ``x`` of one
    ``(plane, t, block)``, trained on the first ``train_n`` rows; returns it, the pooled features of every row (CPU)
    and the validation probabilities of the other rows."""
    plane, t, b = candidate
    s1 = cfg["stage1"]
    torch.manual_seed(derived_seed(seed, "search", plane, t, b))
    pool = build_pooling(cfg["pooling"], x.shape[1], **cfg.get("pooling_options", {}))
    probe = _Probe(pool, PlaneClassifier(pool.out_features, cfg["num_labels"])).to(dev)
    fit_module(probe, lambda idx: probe.classifier(probe.pool(x[idx])), y, w, float(s1["lr"]),
               int(s1["epochs"]), int(s1["batch_size"]), derived_seed(seed, "search-order", plane, t, b))
    with torch.no_grad():
        pooled = probe.pool(x).cpu()
        p_val = torch.sigmoid(probe.classifier(pooled[train_n:].to(dev))).cpu().numpy()
    return probe, pooled, p_val


def _write_chosen_config(cfg: Mapping[str, Any], result: SearchResult, manifest_name: str, path: Path) -> None:
    """``config.json``: the configuration with the chosen planes, ready for ``train-diagnosis --config``."""
    chosen = dict(cfg)
    chosen["planes"] = result.chosen_config()["planes"]
    chosen["description"] = (f"{cfg.get('description', '')} Planes chosen by search-timesteps on {manifest_name} "
                             f"(validation macro AUROC {result.best_score:.4f}).").strip()
    for k in ("labels", "num_labels"):
        chosen.pop(k, None)
    write_text(path, json.dumps(chosen, indent=2) + "\n")


def _taps(model, schedule: CosineSchedule, volumes: SeriesVolumes, cache: FeatureCache, rows: Sequence[SeriesRow],
          plane: str, t: int, blocks: Sequence[str], noise_seed: int, slices: int, size: int,
          dev: torch.device) -> Dict[str, torch.Tensor]:
    """``{block: (N, C, d, h, w)}`` CPU taps of ``rows`` at ``t`` from the cache, computing missing series once for
    all blocks."""
    out: Dict[str, list] = {b: [] for b in blocks}
    for r in rows:
        sid = r.series_id(slices, size)
        got = {b: cache.get(sid, plane, t, b, noise_seed) for b in blocks}
        if any(v is None for v in got.values()):
            computed = fixed_noise_tap_set(model, schedule, volumes[r.index][None].to(dev), t, blocks, noise_seed,
                                           [sid])
            for b in blocks:
                cache.put(sid, plane, t, b, noise_seed, computed[b][0])
                got[b] = computed[b][0].cpu()
        for b in blocks:
            out[b].append(got[b])
    return {b: torch.stack(v) for b, v in out.items()}
