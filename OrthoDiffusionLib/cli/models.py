"""``orthodiffusion models``: list the model registry or import a bundle file into it.

    orthodiffusion models [list] [--json]
    orthodiffusion models import FILE [--name NAME] [--default]

The registry itself: :mod:`OrthoDiffusionLib.bundle.registry`.
"""
from __future__ import annotations

import argparse
import json
from typing import Optional

from ..bundle.registry import import_model, list_models, shipped_registry_path, user_registry_path
from .common import add_command


def _fmt_seconds(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.1f}"


def _cmd_list(args: argparse.Namespace) -> int:
    models = list_models()
    if args.json:
        print(json.dumps([m.as_dict() for m in models], indent=2))
        return 0
    if not models:
        print(f"no models registered (shipped registry: {shipped_registry_path()}; user registry: "
              f"{user_registry_path()})")
        return 0
    print(f"{'name':<28} {'default':<7} {'origin':<7} {'size MB':>8} {'CPU s':>6} {'GPU s':>6}  sha256 / file")
    for m in models:
        size = "-" if m.size_bytes is None else f"{m.size_bytes / 1e6:.1f}"
        state = "" if m.present else "  [FILE ABSENT]"
        print(f"{m.name:<28} {'yes' if m.default else '':<7} {m.origin:<7} {size:>8} {_fmt_seconds(m.cpu_seconds):>6} "
              f"{_fmt_seconds(m.gpu_seconds):>6}  {m.sha256[:16]}  {m.file}{state}")
        if m.description:
            print(f"{'':<28} {m.description}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    entry = import_model(args.file, args.name, args.default)
    print(f"imported {entry.name!r}: {entry.file} (sha256 {entry.sha256}){' [default]' if entry.default else ''}")
    return 0


def register(subparsers) -> None:
    """Add ``orthodiffusion models [list | import FILE]``."""
    p = add_command(subparsers, "models", _cmd_list, help="list registered models or import a bundle file",
                    description="List the model registry (shipped Resources/models.json plus the user's "
                                "$ORTHODIFFUSION_HOME/models.json) or import a verified bundle.")
    p.add_argument("--json", action="store_true", help="print the listing as JSON")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION")
    ls = add_command(sub, "list", _cmd_list, help="list registered models (default)")
    ls.add_argument("--json", action="store_true", help="print JSON")
    im = add_command(sub, "import", _cmd_import,
                     help="verify a .odbundle file, copy it to $ORTHODIFFUSION_HOME and register it")
    im.add_argument("file")
    im.add_argument("--name", default=None, help="registry name (default: the bundle's name)")
    im.add_argument("--default", action="store_true", help="make it the default model")
