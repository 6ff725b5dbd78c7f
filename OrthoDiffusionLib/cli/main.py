"""The ``orthodiffusion`` console command (also ``python -m OrthoDiffusionLib``): the parser and the dispatch.

Each subcommand lives in its own module of this package; this file only lists them. A subcommand module provides
``register(subparsers)``, which adds its parser and sets ``func`` (called with the parsed arguments, returns the exit
code). Where ``OrthoDiffusionLib.training``, ``OrthoDiffusionLib.bench`` or ``OrthoDiffusionLib.viewer`` is not
installed (the 3D Slicer extension ships only what inference needs), the subcommands whose modules import it are
left out. Library errors
(:class:`~OrthoDiffusionLib.errors.OrthoDiffusionError`) become one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from ..errors import OrthoDiffusionError

# Modules that contribute subcommands, in the order they appear in --help.
SUBCOMMAND_MODULES: List[str] = [
    "OrthoDiffusionLib.cli.inspect",
    "OrthoDiffusionLib.cli.predict",
    "OrthoDiffusionLib.cli.demo",
    "OrthoDiffusionLib.cli.export",
    "OrthoDiffusionLib.cli.models",
    "OrthoDiffusionLib.cli.import_weights",
    "OrthoDiffusionLib.cli.bench",
    "OrthoDiffusionLib.cli.manifest",
    "OrthoDiffusionLib.cli.configs",
    "OrthoDiffusionLib.cli.pretrain",
    "OrthoDiffusionLib.cli.measure",
    "OrthoDiffusionLib.cli.evaluate",
    "OrthoDiffusionLib.cli.diagnosis",
    "OrthoDiffusionLib.cli.segmentation",
    "OrthoDiffusionLib.cli.tissue_diagnosis",
    "OrthoDiffusionLib.cli.evaluate_segmentation",
    "OrthoDiffusionLib.cli.check_model",
    "OrthoDiffusionLib.cli.check_anatomy",
    "OrthoDiffusionLib.cli.simulate",
    "OrthoDiffusionLib.cli.view",
]

#: Packages whose absence only removes the subcommands that need them.
OPTIONAL_PACKAGES = ("OrthoDiffusionLib.training", "OrthoDiffusionLib.bench", "OrthoDiffusionLib.viewer")


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` (and its subcommands' parsers) whose errors are one line on stderr, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = OneLineErrorParser(
        prog="orthodiffusion",
        description="OrthoDiffusion: multi-plane knee MRI segmentation and diagnosis with a diffusion foundation model.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith(OPTIONAL_PACKAGES):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except OrthoDiffusionError as e:
        print(f"orthodiffusion {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", None)  # output_folder.Terminated: SIGTERM
        why = f" ({e}); nothing was written" if signum else ""
        print(f"orthodiffusion {args.command}: cancelled{why}", file=sys.stderr)
        return 128 + signum if signum else 130
