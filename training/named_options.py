"""Named command-line options of the trainers, turned into configuration overrides.

Experts can change any configuration value with ``--set key.sub=value`` (a JSON value). The common choices have
names instead:

* ``--protocol linear-probe | fine-tune`` (:data:`PROTOCOL_PRESETS`): the settings that make up a diagnosis
  protocol -- frozen backbone with one cached noise draw per series, or the encoder + middle block trained at 0.05 x
  the head's learning rate with noise redrawn every step -- and the paper's number of Stage I epochs for it. Nothing
  changes when the configuration already follows that protocol.
* ``--size`` / ``--slices``: the input size. When neither the option nor ``--set preprocessing.*`` gives it, it is
  read from the backbone file's metadata (:func:`backbone_preprocessing`), written there by ``pretrain``,
  ``import-weights`` and every trainer that saves a backbone, so the size chosen once at pretraining carries through
  fine-tuning, export and ``predict``.

Overrides are produced as ``key=JSON`` strings and applied before the ``--set`` ones, so ``--set`` still wins.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from OrthoDiffusionLib.errors import InputError

__all__ = ["PROTOCOL_PRESETS", "RESERVED_COLUMNS", "protocol_overrides", "backbone_preprocessing", "size_overrides",
           "label_overrides", "manifest_label_columns", "diagnosis_overrides", "resolved_size"]

PathLike = Union[str, os.PathLike]

#: The configuration values that define each diagnosis protocol (paper: linear probing 10 epochs, fine-tuning 5).
PROTOCOL_PRESETS: Dict[str, Dict[str, object]] = {
    "linear-probe": {"protocol": "linear_probe", "stage1.noise": "fixed-draw-cached",
                     "stage1.backbone_lr_scale": None, "stage1.epochs": 10},
    "fine-tune": {"protocol": "finetune", "stage1.noise": "redraw-every-step", "stage1.backbone_lr_scale": 0.05,
                  "stage1.epochs": 5},
}


def protocol_overrides(protocol: Optional[str], current: Optional[str]) -> List[str]:
    """``--set`` strings that switch a configuration whose protocol is ``current`` (``linear_probe`` /
    ``finetune``) to ``protocol`` (``linear-probe`` / ``fine-tune``); empty when it already follows it."""
    if protocol is None:
        return []
    key = protocol.strip().lower().replace("_", "-")
    key = {"finetune": "fine-tune", "linear-probing": "linear-probe", "lp": "linear-probe",
           "ft": "fine-tune"}.get(key, key)
    if key not in PROTOCOL_PRESETS:
        raise InputError(f"--protocol must be one of {', '.join(PROTOCOL_PRESETS)}, got {protocol!r}")
    preset = PROTOCOL_PRESETS[key]
    if preset["protocol"] == current:
        return []
    return [f"{k}={json.dumps(v)}" for k, v in preset.items()]


def backbone_preprocessing(path: PathLike) -> Optional[Dict[str, float]]:
    """``{"slices", "size"[, "slice_mm", "inplane_mm"]}`` recorded in a backbone file's metadata (header only, no tensors read), or None when
    the file does not record it (older files) or is not a readable safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
            text = (f.metadata() or {}).get("preprocessing")
    except Exception:  # noqa: BLE001 - an unreadable file is reported by the loader that follows
        return None
    if not text:
        return None
    try:
        value = json.loads(text)
        out = {"slices": int(value["slices"]), "size": int(value["size"])}
        if value.get("slice_mm") is not None:
            out.update(slice_mm=float(value["slice_mm"]), inplane_mm=float(value["inplane_mm"]))
        return out
    except (ValueError, KeyError, TypeError):
        return None


def size_overrides(size: Optional[int], slices: Optional[int], overrides: Sequence[str],
                   backbones: Sequence[PathLike] = ()) -> Tuple[List[str], Optional[str]]:
    """(``--set`` strings for ``preprocessing.size`` / ``preprocessing.slices``, a note saying where they came from).

    Precedence per value: the explicit option, then a ``--set preprocessing.<key>`` among ``overrides`` (left as
    is), then the metadata of the backbone files (they must agree), then the configuration (nothing added). A model
    grid (``slice_mm``, ``inplane_mm``) recorded in the backbone is taken the same way; when the backbone records
    none, the configuration's grid (if any) stays."""
    given = {k for k in ("size", "slices") if any(o.split("=", 1)[0].strip() == f"preprocessing.{k}"
                                                  for o in overrides)}
    out: List[str] = []
    explicit = {"size": size, "slices": slices}
    for key, value in explicit.items():
        if value is not None:
            if int(value) < 1:
                raise InputError(f"--{key} must be a positive integer, got {value}")
            out.append(f"preprocessing.{key}={int(value)}")
    missing = [k for k, v in explicit.items() if v is None and k not in given]
    if not missing:
        return out, None
    found = {os.fspath(b): backbone_preprocessing(b) for b in backbones}
    known = {p: v for p, v in found.items() if v is not None}
    if not known:
        return out, None
    values = {json.dumps(v, sort_keys=True) for v in known.values()}
    if len(values) > 1:
        listing = "; ".join(f"{Path(p).name}: {v['slices']} x {v['size']} x {v['size']}" for p, v in known.items())
        raise InputError(f"the backbones were trained at different input sizes ({listing}); give --size and "
                         "--slices")
    value = next(iter(known.values()))
    taken = list(missing)
    # the model grid the backbone was trained on, unless --set gives it
    taken += [k for k in ("slice_mm", "inplane_mm") if k in value and not any(
        o.split("=", 1)[0].strip() == f"preprocessing.{k}" for o in overrides)]
    for key in taken:
        out.append(f"preprocessing.{key}={value[key]}")
    return out, (f"input from the backbone's metadata ({Path(next(iter(known))).name}): "
                 + ", ".join(f"{k} {value[k]}" for k in taken))


def resolved_size(cfg: Mapping[str, object]) -> str:
    pre = cfg.get("preprocessing") or {}
    grid = f" on a {pre['slice_mm']:g} mm x {pre['inplane_mm']:g} mm grid" if pre.get("slice_mm") else ""  # type: ignore
    return f"{pre.get('slices')} x {pre.get('size')} x {pre.get('size')}{grid}"  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------------ label sets
#: Manifest columns that are not diagnosis labels.
RESERVED_COLUMNS = ("patient_id", "plane", "series_path", "split", "seg_path", "age", "sex", "height", "weight",
                    "patient_type", "injury_event", "center", "field_strength")


def manifest_label_columns(manifest: PathLike) -> List[str]:
    """The label columns of a manifest: every column but :data:`RESERVED_COLUMNS`, in file order."""
    import csv

    path = Path(manifest)
    if not path.is_file():
        from OrthoDiffusionLib.errors import MissingPathError

        raise MissingPathError("manifest not found", path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])
    labels = [c.strip() for c in header if c.strip() and c.strip() not in RESERVED_COLUMNS]
    if not labels:
        raise InputError("the manifest has no label columns (every column is a reserved one)", path)
    return labels


def label_overrides(labels: Optional[str] = None, from_manifest: Optional[PathLike] = None) -> List[str]:
    """``--set labels=[...]`` from ``--labels KEY,...`` or, with ``from_manifest``, from the label columns of that
    manifest (empty when neither is given)."""
    keys: Optional[List[str]] = None
    if labels:
        keys = [k.strip() for k in str(labels).split(",") if k.strip()]
        if not keys:
            raise InputError("--labels needs at least one label key")
    elif from_manifest is not None:
        keys = manifest_label_columns(from_manifest)
    return [] if keys is None else [f"labels={json.dumps(keys)}"]


def diagnosis_overrides(base_protocol: Optional[str], user_sets: Sequence[str], *, protocol: Optional[str] = None,
                        labels: Optional[str] = None, labels_from: Optional[PathLike] = None,
                        size: Optional[int] = None, slices: Optional[int] = None,
                        backbones: Sequence[PathLike] = ()) -> Tuple[List[str], List[str]]:
    """(all ``--set`` strings of a diagnosis trainer's named options, in the order they apply -- protocol, labels,
    input size, then the user's ``--set`` -- and notes to print)."""
    overrides = protocol_overrides(protocol, base_protocol) + label_overrides(labels, labels_from)
    sizes, note = size_overrides(size, slices, user_sets, backbones)
    return overrides + sizes + list(user_sets), [note] if note else []
