"""The shipped training configurations, one line each, or one of them resolved (``orthodiffusion configs``).

    orthodiffusion configs                                  # the table
    orthodiffusion configs knee-demo-ft                     # the resolved configuration as JSON
    orthodiffusion configs knee-ft-opt --protocol linear-probe --size 128 --set stage1.epochs=3

A configuration is a JSON file in ``training/configs``; ``extends`` names the file it builds on. "Resolved" means
with ``extends`` merged, the named options and ``--set`` overrides applied, and (for diagnosis) the label set filled
in: exactly what a trainer given the same options would use. A JSON file path works wherever a name does.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Sequence

from OrthoDiffusionLib.errors import InputError

__all__ = ["catalog_rows", "resolve_any"]


def resolve_any(name: str, overrides: Sequence[str] = (), protocol: str | None = None) -> Dict[str, Any]:
    """A diagnosis or segmentation configuration resolved as its trainer would (module doc)."""
    from .configs import resolve_config as read_raw

    raw, shown = read_raw(name)
    if raw.get("task") == "segmentation":
        if protocol is not None:
            raise InputError("--protocol applies to diagnosis configurations only", shown)
        from .segmentation.train import load_seg_config

        return load_seg_config(name, overrides)
    from .named_options import protocol_overrides
    from .diagnosis.train import resolve_config

    return resolve_config(name, protocol_overrides(protocol, raw.get("protocol")) + list(overrides))


def catalog_rows() -> List[Dict[str, str]]:
    """One row per shipped configuration: name, task, protocol, input size, labels, summary."""
    from .configs import config_path, list_configs

    rows = []
    for name in list_configs():
        cfg = resolve_any(name)
        own = json.loads(config_path(name).read_text(encoding="utf-8"))  # the summary is not inherited
        cfg["summary"] = own.get("summary") or own.get("description", "")
        pre = cfg.get("preprocessing") or {}
        task = cfg.get("task", "diagnosis")
        grid = f" on {pre['slice_mm']:g}/{pre['inplane_mm']:g} mm" if pre.get("slice_mm") else ""
        rows.append({"name": name, "task": task,
                     "protocol": str(cfg.get("protocol", "finetune")).replace("_", "-").replace("finetune",
                                                                                               "fine-tune"),
                     "input": f"{pre.get('slices')}x{pre.get('size')}x{pre.get('size')}{grid}",
                     "labels": str(cfg.get("num_labels", "11 structures" if task == "segmentation" else "")),
                     "summary": str(cfg.get("summary") or cfg.get("description", "")).split(". ")[0]})
    return rows
