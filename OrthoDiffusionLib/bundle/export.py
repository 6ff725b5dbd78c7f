"""Build a model bundle from training run folders (``orthodiffusion export``: :mod:`OrthoDiffusionLib.cli.export`).

A diagnosis run (``train-diagnosis``) supplies the per-plane backbones, (timestep, block), the DiagnosisHead (pooling,
fusion, MPAE, temperatures) and the optional EHR branch; each segmentation run (``train-segmentation``, one plane per
run) a backbone, (timestep, block) and a segmentation head. Backbones are stored encoder + middle block only and
deduplicated by the sha256 of those tensors (identical backbones are stored once). ``half`` stores the backbones and
segmentation heads as float16 (half the size; loading casts back to float32); the small diagnosis and EHR heads stay
float32. A tissue-pooled diagnosis run (``train-tissue-diagnosis``) supplies its per-label models only: it reads the
segmentation networks of its planes, so the segmentation runs it was fitted on go into the bundle with it (those given
with ``--segmentation`` must be them; the others are taken from the paths its run.json records) and one network per
plane serves both tasks. Every weight file is checked while exporting: backbone files
by their own integrity digest, heads by loading them into the network their run.json describes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .. import labels as label_tables
from .format import encoder_state, load_bundle, now_iso, save_bundle
from ..model.checkpoints import compare_state_dict, load_backbone_state, tensors_sha256
from ..errors import BundleError, CorruptFileError, InputError, MissingPathError

__all__ = ["DIAGNOSIS_RUN_FORMAT", "SEGMENTATION_RUN_FORMAT", "TISSUE_DIAGNOSIS_RUN_FORMAT", "export_bundle",
           "segmentation_run_digest"]

PathLike = Union[str, os.PathLike]
DIAGNOSIS_RUN_FORMAT = "orthodiffusion.diagnosis-run"
SEGMENTATION_RUN_FORMAT = "orthodiffusion.segmentation-run"
TISSUE_DIAGNOSIS_RUN_FORMAT = "orthodiffusion.tissue-diagnosis-run"


def _read_run(run: PathLike, fmt: str, required: Sequence[str]) -> Tuple[Path, Dict[str, Any]]:
    folder = Path(run)
    path = folder / "run.json"
    if not path.is_file():
        raise MissingPathError("no run.json in this training run folder", folder)
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CorruptFileError(f"not readable JSON ({e})", path) from None
    if info.get("format") != fmt:
        raise InputError(f"not a {fmt} run (format {info.get('format')!r})", path)
    if info.get("version") != 1:
        raise InputError(f"unsupported run version {info.get('version')!r} (expected 1)", path)
    missing = [k for k in required if k not in info]
    if missing:
        raise InputError(f"run.json lacks {', '.join(missing)}", path)
    return folder, info


def _weights(folder: Path, name: str) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = folder / name
    if not path.is_file():
        raise MissingPathError("weight file named in run.json not found", path)
    try:
        return load_file(str(path))
    except Exception as e:  # malformed safetensors header
        raise CorruptFileError(f"not a readable safetensors file ({str(e).splitlines()[0][:160]})", path) from None


def _check_fits(module: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    diff = compare_state_dict(module.state_dict(), state)
    if not diff.ok:
        raise BundleError(f"weights do not fit the network described by run.json: {diff.summary()}", path)


class _Backbones:
    """Collects backbones, deduplicated by the digest of their encoder tensors."""

    def __init__(self) -> None:
        self.meta: Dict[str, Dict[str, Any]] = {}
        self.states: Dict[str, Dict[str, torch.Tensor]] = {}
        self._by_digest: Dict[str, str] = {}

    def add(self, path: Path, plane: str) -> str:
        state, meta = load_backbone_state(path)  # verifies the file's own digest
        enc = encoder_state(state)
        digest = tensors_sha256(enc)
        key = self._by_digest.get(digest)
        if key is None:
            key = f"b{len(self._by_digest)}"
            self._by_digest[digest] = key
            self.states[key] = enc
            self.meta[key] = {"config": meta["config"], "stored": "encoder", "planes": [],
                              "encoder_sha256_float32": digest,
                              "source_tensors_sha256": meta.get("tensors_sha256")}
        if plane not in self.meta[key]["planes"]:
            self.meta[key]["planes"].append(plane)
        return key


def _synthetic_flag(runs: Sequence[Mapping[str, Any]]) -> Optional[bool]:
    flags = [(r.get("provenance") or {}).get("synthetic_data_only") for r in runs]
    if any(f is False for f in flags):
        return False
    if flags and all(f is True for f in flags):
        return True
    return None


def _class_values(num_classes: int, structures: Sequence[str], path: Path, context: int = 0) -> List[int]:
    """Label-table value of each output class: identity for a full-table head (num_classes = 12), else class i+1 is
    ``structures[i]``; the ``context`` tissue classes after them (``context_tissues``) are background (0)."""
    if context:
        return _class_values(num_classes - context, structures, path) + [0] * context
    table = label_tables.structure_by_key()
    unknown = [s for s in structures if s not in table]
    if unknown:
        raise InputError(f"unknown structure key(s) {unknown} in run.json", path)
    n_table = len(table) + 1
    if num_classes == n_table:
        return list(range(n_table))
    if num_classes == len(structures) + 1:
        return [0] + [table[s].value for s in structures]
    raise InputError(f"num_classes {num_classes} fits neither the label table ({n_table}) nor the run's "
                     f"{len(structures)} structures + background", path)


def _add_diagnosis_run(path: PathLike, meta: Dict[str, Any], components: Dict[str, Dict[str, torch.Tensor]],
                       backbones: "_Backbones") -> Mapping[str, Any]:
    """Put a ``train-diagnosis`` run into the bundle being built: its labels, backbones, diagnosis head and EHR
    branch (checked against their networks) into ``meta``/``components``/``backbones``; returns its run.json."""
    from ..model.heads import DiagnosisHead

    folder, run = _read_run(path, DIAGNOSIS_RUN_FORMAT,
                            ("anatomy", "labels", "preprocessing", "planes", "head", "head_weights"))
    run_json = folder / "run.json"
    known = {d.key: d.name for d in label_tables.diagnosis_labels(run["anatomy"])}
    known.update(run.get("label_names") or {})  # a custom label set names its labels in run.json
    unknown = [k for k in run["labels"] if k not in known]
    if unknown:
        raise InputError(f"labels {unknown} are not {run['anatomy']} diagnosis labels and run.json names none "
                         "of them (label_names)", run_json)
    meta["anatomy"] = run["anatomy"]
    meta["labels"] = [{"key": k, "name": known[k]} for k in run["labels"]]
    head = DiagnosisHead(**run["head"])
    head_state = _weights(folder, run["head_weights"])
    _check_fits(head, head_state, folder / run["head_weights"])
    head.load_state_dict(head_state)
    if head.settings["num_labels"] != len(run["labels"]):
        raise InputError(f"the head predicts {head.settings['num_labels']} labels, run.json lists "
                         f"{len(run['labels'])}", run_json)
    components["diagnosis_head"] = head_state
    planes = {}
    for plane, p in run["planes"].items():
        if plane not in label_tables.PLANES:
            raise InputError(f"unknown plane {plane!r}", run_json)
        key = backbones.add(folder / p["backbone"], plane)
        planes[plane] = {"backbone": key, "timestep": int(p["timestep"]), "block": str(p["block"]),
                         "pooling": head.settings["pooling"]}
    ehr = None
    if run.get("ehr"):
        from ..model.ehr import EHRFusionClassifier

        e = run["ehr"]
        ehr_state = _weights(folder, e["weights"])
        model = EHRFusionClassifier(**e["config"])
        _check_fits(model, ehr_state, folder / e["weights"])
        components["ehr"] = ehr_state
        ehr = {"config": e["config"], "statistics": e.get("statistics")}
    meta["diagnosis"] = {"preprocessing": dict(run["preprocessing"]), "planes": planes, "head": run["head"],
                         "calibration": head.calibration.to_dict(), "ehr": ehr,
                         "metrics": run.get("metrics", {}), "provenance": run.get("provenance", {}),
                         "source": str(folder.resolve())}
    return run


def _add_segmentation_run(path: PathLike, meta: Dict[str, Any], components: Dict[str, Dict[str, torch.Tensor]],
                          backbones: "_Backbones") -> Mapping[str, Any]:
    """Put a ``train-segmentation`` run (one plane) into the bundle being built: its backbone and head (checked
    against the network) and the plane's settings; returns its run.json."""
    from ..model.seg_head import build_seg_head

    folder, run = _read_run(path, SEGMENTATION_RUN_FORMAT,
                            ("plane", "timestep", "block", "preprocessing", "head", "head_weights", "backbone",
                             "num_classes", "structures"))
    plane = run["plane"]
    run_json = folder / "run.json"
    if plane not in label_tables.PLANES:
        raise InputError(f"unknown plane {plane!r}", run_json)
    if plane in meta["segmentation"]:
        raise InputError(f"a second segmentation run for the {plane} plane", run_json)
    kwargs = dict(run["head"])
    kwargs["num_classes"] = int(run["num_classes"])
    try:
        head = build_seg_head(**kwargs)
    except (TypeError, ValueError) as e:
        raise InputError(f"the head in run.json cannot be built ({e})", run_json) from None
    state = _weights(folder, run["head_weights"])
    _check_fits(head, state, folder / run["head_weights"])
    components[f"segmentation.{plane}"] = state
    key = backbones.add(folder / run["backbone"], plane)
    meta["segmentation"][plane] = {
        "backbone": key, "timestep": int(run["timestep"]), "block": str(run["block"]),
        "preprocessing": dict(run["preprocessing"]), "head": dict(run["head"]),
        "num_classes": int(run["num_classes"]), "structures": list(run["structures"]),
        "class_values": _class_values(int(run["num_classes"]), run["structures"], run_json,
                                      len(run.get("context_tissues") or [])),
        "context_tissues": list(run.get("context_tissues") or []),
        "metrics": run.get("metrics", {}), "provenance": run.get("provenance", {}),
        "source": str(folder.resolve())}
    return run


def _run_format(path: PathLike) -> Optional[str]:
    """The ``format`` recorded in a run folder's run.json (None when unreadable; :func:`_read_run` reports why)."""
    try:
        return json.loads((Path(path) / "run.json").read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        return None


def segmentation_run_digest(folder: Path, run: Mapping[str, Any]) -> str:
    """The digest a tissue-diagnosis run records for a segmentation run it reads: of the tensors of its head and
    backbone (names, dtypes, shapes, values), not of the files, whose metadata safetensors writes in no fixed
    order, so two copies of one run (``keep-segmentation-run`` twice) get the same digest."""
    import hashlib

    from safetensors.torch import load_file

    from ..model.checkpoints import tensors_sha256

    return hashlib.sha256((tensors_sha256(load_file(str(folder / run["head_weights"]))) +
                           tensors_sha256(load_file(str(folder / run["backbone"])))).encode()).hexdigest()


def _add_tissue_diagnosis_run(path: PathLike, meta: Dict[str, Any], components: Dict[str, Dict[str, torch.Tensor]],
                              segmentation: Mapping[str, Tuple[Path, Mapping[str, Any]]]) -> Mapping[str, Any]:
    """Put a ``train-tissue-diagnosis`` run into the bundle being built, after the segmentation runs of its planes
    (``{plane: (folder, run.json)}``, checked to be the very runs it was fitted on); returns its run.json."""
    from ..model.tissue_diagnosis import TISSUE_POOLED, TissueDiagnosisHead, feature_width

    folder, run = _read_run(path, TISSUE_DIAGNOSIS_RUN_FORMAT, ("labels", "planes", "head_weights"))
    run_json = folder / "run.json"
    known = {d.key: d.name for d in label_tables.diagnosis_labels("knee")}
    unknown = [k for k in run["labels"] if k not in known]
    if unknown:
        raise InputError(f"labels {unknown} are not knee diagnosis labels", run_json)
    planes, preprocessing = {}, None
    for plane, p in run["planes"].items():
        seg_folder, seg_run = segmentation[plane]
        if segmentation_run_digest(seg_folder, seg_run) != p.get("weights_sha256"):
            raise InputError(f"the {plane} segmentation run {seg_folder} is not the one this diagnosis was fitted on "
                             f"({p.get('segmentation_run')}); give that run, or refit the diagnosis", run_json)
        seg = meta["segmentation"][plane]
        channels = int(components[f"segmentation.{plane}"]["classifier.weight"].shape[1])
        if int(p["features"]) != feature_width(seg["num_classes"], channels):
            raise InputError(f"{p['features']} {plane} features do not fit a head of {seg['num_classes']} classes "
                             f"and {channels} channels", run_json)
        prep = dict(seg["preprocessing"])
        if preprocessing not in (None, prep):
            raise InputError("the segmentation runs of the diagnosis planes use different preprocessing", run_json)
        preprocessing = prep
        planes[plane] = {"segmentation": plane, "backbone": seg["backbone"], "timestep": seg["timestep"],
                         "features": int(p["features"])}
    head = TissueDiagnosisHead(list(planes), {q: v["features"] for q, v in planes.items()}, len(run["labels"]))
    state = _weights(folder, run["head_weights"])
    _check_fits(head, state, folder / run["head_weights"])
    components["diagnosis_head"] = state
    meta["labels"] = [{"key": k, "name": known[k]} for k in run["labels"]]
    meta["diagnosis"] = {"kind": TISSUE_POOLED, "preprocessing": preprocessing, "planes": planes,
                         "head": head.config(), "calibration": {"method": "platt"}, "ehr": None,
                         "metrics": run.get("metrics", {}), "provenance": run.get("provenance", {}),
                         "source": str(folder.resolve())}
    return run


def _tissue_planes(diagnosis: Optional[PathLike]) -> Dict[str, Path]:
    """``{plane: segmentation run folder}`` recorded by a tissue-diagnosis run ({} for any other run)."""
    if diagnosis is None or _run_format(diagnosis) != TISSUE_DIAGNOSIS_RUN_FORMAT:
        return {}
    _, run = _read_run(diagnosis, TISSUE_DIAGNOSIS_RUN_FORMAT, ("planes",))
    return {plane: Path(p["segmentation_run"]) for plane, p in run["planes"].items()}


def export_bundle(diagnosis: Optional[PathLike], segmentation: Sequence[PathLike], name: str, out: PathLike,
                  half: bool = False, description: str = "") -> Path:
    """Build ``out`` (a ``.odbundle``) from one diagnosis run and/or segmentation runs; returns the path.

    Raises InputError / MissingPathError / CorruptFileError / BundleError naming the offending file."""
    if diagnosis is None and not segmentation:
        raise InputError("nothing to export: give --diagnosis RUN and/or --segmentation RUN")
    backbones = _Backbones()
    components: Dict[str, Dict[str, torch.Tensor]] = {}
    runs: List[Mapping[str, Any]] = []
    meta: Dict[str, Any] = {"name": name, "description": description, "created": now_iso(),
                            "software": {"orthodiffusion": _version(), "torch": torch.__version__},
                            "anatomy": "knee", "labels": [], "structures": [], "diagnosis": None,
                            "segmentation": {}}
    tissue = _tissue_planes(diagnosis)
    if diagnosis is not None and not tissue:
        runs.append(_add_diagnosis_run(diagnosis, meta, components, backbones))
    seg_runs: Dict[str, Tuple[Path, Mapping[str, Any]]] = {}
    for seg_run in segmentation:
        runs.append(_add_segmentation_run(seg_run, meta, components, backbones))
        seg_runs[runs[-1]["plane"]] = (Path(seg_run), runs[-1])
    for plane, folder in tissue.items():
        if plane not in seg_runs:  # the diagnosis reads this plane's segmentation network: it goes in too
            runs.append(_add_segmentation_run(folder, meta, components, backbones))
            seg_runs[plane] = (folder, runs[-1])
    if tissue:
        runs.append(_add_tissue_diagnosis_run(diagnosis, meta, components, seg_runs))
    used = {v for s in meta["segmentation"].values() for v in s["class_values"] if v}
    meta["structures"] = [{"value": s.value, "key": s.key, "name": s.name, "color": list(s.color),
                           "planes": list(s.planes), "kind": s.kind}
                          for s in label_tables.knee_structures() if s.value in used]
    meta["backbones"] = backbones.meta
    meta["synthetic_data_only"] = _synthetic_flag(runs)
    for key, state in backbones.states.items():
        components[f"backbone.{key}"] = state
    # float16 where the bytes are (backbones, segmentation decoders); the small diagnosis/EHR heads stay float32
    half_components = [c for c in components if c.startswith(("backbone.", "segmentation."))] if half else []
    for k in backbones.meta:
        backbones.meta[k]["dtype"] = "float16" if half else "float32"
    for seg in meta["segmentation"].values():
        seg["dtype"] = "float16" if half else "float32"
    save_bundle(out, meta, components, half=half_components)
    load_bundle(out)  # read back: the file verifies
    return Path(out)


def _version() -> str:
    from .. import __version__

    return __version__
