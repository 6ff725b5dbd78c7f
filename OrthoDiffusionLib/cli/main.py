"""The ``orthodiffusion`` console command (also ``python -m OrthoDiffusionLib``).

Each subcommand lives in the module that implements its stage; this file only lists them. A subcommand module
provides ``register(subparsers)`` which adds its parser and sets ``func`` (called with the parsed args, returns the
exit code). Library errors (:class:`~OrthoDiffusionLib.errors.OrthoDiffusionError`) become one line on stderr and
exit code 2.
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
    "OrthoDiffusionLib.bundle.export",
    "OrthoDiffusionLib.bundle.registry",
    "OrthoDiffusionLib.cli.import_weights",
    "OrthoDiffusionLib.bench.timing",
    "OrthoDiffusionLib.cli.manifest",
    "OrthoDiffusionLib.cli.configs",
    "OrthoDiffusionLib.cli.pretrain",
    "OrthoDiffusionLib.segmentation.measures",
    "OrthoDiffusionLib.training.evaluation.diagnosis",
    "OrthoDiffusionLib.cli.diagnosis",
    "OrthoDiffusionLib.training.segmentation.train",
    "OrthoDiffusionLib.training.evaluation.segmentation",
    "OrthoDiffusionLib.cli.simulate",
    "OrthoDiffusionLib.cli.view",
]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="orthodiffusion",
        description="OrthoDiffusion: multi-plane knee MRI segmentation and diagnosis with a diffusion foundation model.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
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
    except KeyboardInterrupt:
        print(f"orthodiffusion {args.command}: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
