"""``orthodiffusion configs``: the shipped training configurations, one line each, or one of them resolved.

    orthodiffusion configs                                  # the table
    orthodiffusion configs knee-demo-ft                     # the resolved configuration as JSON
    orthodiffusion configs knee-ft-opt --protocol linear-probe --size 128 --set stage1.epochs=3

A configuration is a JSON file in ``training/configs``; ``extends`` names the file it builds on. "Resolved" means
with ``extends`` merged, the named options and ``--set`` overrides applied, and (for diagnosis) the label set filled
in: exactly what a trainer given the same options would use. A JSON file path works wherever a name does.
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Dict, List, Sequence

from OrthoDiffusionLib.errors import InputError

__all__ = ["catalog_rows", "resolve_any", "register"]


def resolve_any(name: str, overrides: Sequence[str] = (), protocol: str | None = None) -> Dict[str, Any]:
    """A diagnosis or segmentation configuration resolved as its trainer would (module doc)."""
    from .configs import resolve_config as read_raw

    raw, shown = read_raw(name)
    if raw.get("task") == "segmentation":
        if protocol is not None:
            raise InputError("--protocol applies to diagnosis configurations only", shown)
        from .train_segmentation import load_seg_config

        return load_seg_config(name, overrides)
    from .named_options import protocol_overrides
    from .train_diagnosis import resolve_config

    return resolve_config(name, protocol_overrides(protocol, raw.get("protocol")) + list(overrides))


def catalog_rows() -> List[Dict[str, str]]:
    """One row per shipped configuration: name, task, protocol, input size, labels, summary."""
    from .configs import list_configs

    rows = []
    for name in list_configs():
        cfg = resolve_any(name)
        pre = cfg.get("preprocessing") or {}
        task = cfg.get("task", "diagnosis")
        rows.append({"name": name, "task": task,
                     "protocol": str(cfg.get("protocol", "finetune")).replace("_", "-").replace("finetune",
                                                                                               "fine-tune"),
                     "input": f"{pre.get('slices')}x{pre.get('size')}x{pre.get('size')}",
                     "labels": str(cfg.get("num_labels", "11 structures" if task == "segmentation" else "")),
                     "summary": str(cfg.get("summary") or cfg.get("description", "")).split(". ")[0]})
    return rows


def _print_table(rows: Sequence[Dict[str, str]]) -> None:
    columns = ("name", "task", "protocol", "input", "labels", "summary")
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns[:-1]}
    print("  ".join(c.ljust(widths[c]) for c in columns[:-1]) + "  summary")
    for r in rows:
        print("  ".join(r[c].ljust(widths[c]) for c in columns[:-1]) + "  " + r["summary"])


def _run(args: argparse.Namespace) -> int:
    if args.name is None:
        if args.set or args.protocol or args.size or args.slices:
            raise InputError("--set, --protocol, --size and --slices need a configuration NAME")
        rows = catalog_rows()
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            _print_table(rows)
            print("\nshow one resolved: orthodiffusion configs NAME [--protocol ...] [--size N] [--set key=value]")
        return 0
    overrides = list(args.set or ())
    for key in ("size", "slices"):
        value = getattr(args, key)
        if value is not None:
            overrides.insert(0, f"preprocessing.{key}={int(value)}")
    print(json.dumps(resolve_any(args.name, overrides, args.protocol), indent=2))
    return 0


def register(subparsers) -> None:
    """Add ``configs`` to the ``orthodiffusion`` command."""
    from .named_options import PROTOCOL_PRESETS

    p = subparsers.add_parser("configs", help="list the shipped training configurations, or show one resolved",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", help="configuration name (or paper name, or JSON file) to show resolved")
    p.add_argument("--protocol", choices=tuple(PROTOCOL_PRESETS), default=None,
                   help="as train-diagnosis --protocol")
    p.add_argument("--size", type=int, default=None, help="as the trainers' --size")
    p.add_argument("--slices", type=int, default=None, help="as the trainers' --slices")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="as the trainers' --set (repeatable)")
    p.add_argument("--json", action="store_true", help="the list as JSON")
    p.set_defaults(func=_run)
