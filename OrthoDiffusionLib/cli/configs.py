"""``orthodiffusion configs``: command line of :mod:`OrthoDiffusionLib.training.config_catalog` (see its docstring).
"""
from __future__ import annotations

import argparse
import json
from typing import Dict, Sequence

from ..errors import InputError
from ..training import config_catalog
from ..training.named_options import PROTOCOL_PRESETS
from .common import add_command


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
        rows = config_catalog.catalog_rows()
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
    print(json.dumps(config_catalog.resolve_any(args.name, overrides, args.protocol), indent=2))
    return 0


def register(subparsers) -> None:
    """Add ``configs`` to the ``orthodiffusion`` command."""
    p = add_command(subparsers, "configs", _run, help="list the shipped training configurations, or show one resolved",
                    description=config_catalog.__doc__, raw=True)
    p.add_argument("name", nargs="?", help="configuration name (or paper name, or JSON file) to show resolved")
    p.add_argument("--protocol", choices=tuple(PROTOCOL_PRESETS), default=None,
                   help="as train-diagnosis --protocol")
    p.add_argument("--size", type=int, default=None, help="as the trainers' --size")
    p.add_argument("--slices", type=int, default=None, help="as the trainers' --slices")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="as the trainers' --set (repeatable)")
    p.add_argument("--json", action="store_true", help="the list as JSON")
