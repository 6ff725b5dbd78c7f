"""Named training configurations (JSON files in this folder), loadable by name.

``load_config("knee-ft-opt")`` (or the paper's name ``"FT-Opt"``, or a path to a JSON file) returns a plain dict:
the named file deep-merged over the file it ``extends`` (here ``diagnosis-defaults``), validated, with ``labels``
(the anatomy's label keys in model output order) and ``num_labels`` added.

Shipped: ``knee-lp-opt`` (LP-Opt), ``knee-ft-opt`` (FT-Opt), ``ankle-ft-opt`` (FT-A-Opt), ``shoulder-ft-opt``
(FT-S-Opt) -- the per-plane (timestep, block) of Supplementary Table 10 -- and ``knee-ablation`` (t = 30, mid_2 on
every plane, the paper's pooling/fusion ablation setting). The paper gives no linear-probing selection for ankle
or shoulder, so none is shipped.
"""
from __future__ import annotations

import copy
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

from OrthoDiffusionLib.errors import CorruptFileError, InputError, MissingPathError
from OrthoDiffusionLib.labels import PLANES, anatomies, diagnosis_labels

__all__ = ["list_configs", "load_config", "resolve_config", "validate_config", "config_path", "apply_label_set",
           "PAPER_NAMES"]

BLOCK_NAMES = ("mid_0", "mid_1", "mid_2")
PAPER_NAMES = {"lp-opt": "knee-lp-opt", "ft-opt": "knee-ft-opt", "ft-a-opt": "ankle-ft-opt",
               "ft-s-opt": "shoulder-ft-opt"}
PROTOCOLS = ("linear_probe", "finetune")


def _folder():
    return resources.files(__name__)


def list_configs() -> List[str]:
    """Names of the shipped configurations that can be trained (files that only serve as a base are left out)."""
    names = [Path(e.name).stem for e in _folder().iterdir() if e.name.endswith(".json")]
    return sorted(n for n in names if not n.endswith("-defaults"))


def config_path(name: str):
    """The shipped file of ``name`` (case-insensitive; paper names like ``FT-Opt`` accepted)."""
    key = str(name).strip().lower()
    key = PAPER_NAMES.get(key, key)
    node = _folder() / f"{key}.json"
    if not node.is_file():
        raise InputError(f"unknown configuration; known: {', '.join(list_configs())} "
                         f"(or paper names {', '.join(sorted(PAPER_NAMES))})", name)
    return node


def _read(node, shown: str) -> Dict[str, Any]:
    try:
        with node.open("r", encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise CorruptFileError(f"not valid JSON ({e.msg} at line {e.lineno})", shown) from None
    if not isinstance(data, dict):
        raise CorruptFileError("a configuration must be a JSON object", shown)
    return data


def _merge(base: Dict[str, Any], over: Mapping[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _resolve(node, shown: str, depth: int = 0) -> Dict[str, Any]:
    data = _read(node, shown)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if depth > 8:
        raise InputError("'extends' nests too deeply (a cycle?)", shown)
    base_node = _folder() / f"{parent}.json"
    if not base_node.is_file():
        raise InputError(f"extends unknown configuration {parent!r}", shown)
    return _merge(_resolve(base_node, str(parent), depth + 1), data)


def validate_config(cfg: Dict[str, Any], shown: str) -> None:
    """Check a resolved diagnosis configuration; :class:`InputError` naming ``shown`` (its file or name)."""
    anatomy = cfg.get("anatomy")
    if anatomy not in anatomies():
        raise InputError(f"anatomy must be one of {', '.join(anatomies())}, got {anatomy!r}", shown)
    if cfg.get("protocol") not in PROTOCOLS:
        raise InputError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {cfg.get('protocol')!r}", shown)
    planes = cfg.get("planes")
    if not isinstance(planes, dict) or set(planes) != set(PLANES):
        raise InputError(f"'planes' must give a timestep and block for each of {', '.join(PLANES)}", shown)
    for p, sel in planes.items():
        t, b = sel.get("timestep"), sel.get("block")
        if not isinstance(t, int) or not 0 <= t <= 999:
            raise InputError(f"planes.{p}.timestep must be an integer in [0, 999], got {t!r}", shown)
        if b not in BLOCK_NAMES:
            raise InputError(f"planes.{p}.block must be one of {', '.join(BLOCK_NAMES)}, got {b!r}", shown)


def resolve_config(name_or_path: str | os.PathLike) -> Tuple[Dict[str, Any], str]:
    """(configuration, how to name it in errors) by shipped name, paper name, or path to a JSON file, with
    ``extends`` resolved (deep merge) but not validated: shared by the diagnosis (:func:`load_config`) and the
    segmentation configurations.

    Raises ``MissingPathError`` / ``CorruptFileError`` / ``InputError`` naming the file for a missing or unparsable
    configuration or an unknown name.
    """
    text = os.fspath(name_or_path)
    if text.endswith(".json") or os.sep in text:
        path = Path(text)
        if not path.is_file():
            raise MissingPathError("configuration file not found", path)
        node, shown = path, str(path)
    else:
        node, shown = config_path(text), text
    return _resolve(node, shown), shown


def load_config(name_or_path: str | os.PathLike) -> Dict[str, Any]:
    """A diagnosis configuration by shipped name, paper name, or path to a JSON file (see module doc).

    Raises ``MissingPathError`` / ``CorruptFileError`` / ``InputError`` naming the file for a missing, unparsable or
    invalid configuration.
    """
    cfg, shown = resolve_config(name_or_path)
    validate_config(cfg, shown)
    return apply_label_set(cfg, shown)


def apply_label_set(cfg: Dict[str, Any], shown: str = "configuration") -> Dict[str, Any]:
    """Fill ``labels`` (keys in model output order), ``label_names`` and ``num_labels`` of a diagnosis config.

    The label set is the configuration's ``labels`` when it has one -- a list of keys (a subset of the anatomy's, or
    new ones: each key is a 0/1 column of the manifest) or of ``{"key", "name"}`` objects -- else every label of its
    ``anatomy``. Display names come from ``{"key", "name"}`` entries, then ``label_names`` ({key: name}), then the
    anatomy's table, else the key with spaces for underscores.
    """
    table = {d.key: d.name for d in diagnosis_labels(cfg["anatomy"])}
    given = cfg.get("labels")
    if given is None:
        given = list(table)
    if isinstance(given, str):
        given = [k for k in given.split(",") if k.strip()]
    if not isinstance(given, list) or not given:
        raise InputError("'labels' must be a non-empty list of label keys", shown)
    names = dict(cfg.get("label_names") or {})
    keys: List[str] = []
    for entry in given:
        if isinstance(entry, Mapping):
            key, name = str(entry.get("key", "")).strip(), entry.get("name")
            if name:
                names[key] = str(name)
        else:
            key = str(entry).strip()
        if not key or any(c in key for c in ",\"\n") or key in keys:
            raise InputError(f"'labels': bad or repeated label key {key!r}", shown)
        keys.append(key)
    cfg["labels"] = keys
    cfg["label_names"] = {k: str(names.get(k) or table.get(k) or k.replace("_", " ")) for k in keys}
    cfg["num_labels"] = len(keys)
    return cfg
