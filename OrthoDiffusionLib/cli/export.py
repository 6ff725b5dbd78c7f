"""``orthodiffusion export``: build a model bundle (``.odbundle``) from training run folders.

    orthodiffusion export --diagnosis RUN [--segmentation RUN ...] --name NAME --out FILE.odbundle [--half]
                          [--description TEXT]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..bundle import export as bundle_export
from ..bundle.format import BUNDLE_SUFFIX, load_bundle
from ..errors import InputError
from .common import add_command


def _cmd_export(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix != BUNDLE_SUFFIX:
        raise InputError(f"the bundle file must end in {BUNDLE_SUFFIX}", out)
    path = bundle_export.export_bundle(args.diagnosis, args.segmentation or [], args.name, out, half=args.half,
                                       description=args.description or "")
    bundle = load_bundle(path)
    s = bundle.summary()
    print(f"wrote {path} ({s['size_bytes'] / 2**20:.2f} MiB, sha256 {s['sha256']})")
    print(f"  diagnosis planes: {', '.join(s['diagnosis_planes']) or 'none'}; segmentation planes: "
          f"{', '.join(s['segmentation_planes']) or 'none'}; backbones stored: {len(bundle.meta['backbones'])}; "
          f"synthetic data only: {s['synthetic_data_only']}")
    bytes_per = {"float16": 2, "float32": 4}
    for comp, info in bundle.meta["components"].items():
        n = sum(v.numel() for v in bundle.states[comp].values())
        print(f"  {comp:<24} {n / 1e6:8.2f} M values  {n * bytes_per.get(info['dtype'], 4) / 2**20:8.2f} MiB "
              f"({info['dtype']})")
    return 0


def register(subparsers) -> None:
    """Add ``orthodiffusion export``."""
    usage = __doc__.split("\n\n", 1)[1]
    details = (bundle_export.__doc__ or "").split("\n\n", 1)[-1]
    p = add_command(subparsers, "export", _cmd_export,
                    help="build a model bundle (.odbundle) from training run folders",
                    description=f"{usage}\n{details}", raw=True)
    p.add_argument("--diagnosis", metavar="RUN", default=None,
                   help="train-diagnosis or train-tissue-diagnosis run folder (the latter brings the "
                        "segmentation runs it reads)")
    p.add_argument("--segmentation", metavar="RUN", action="append", default=[],
                   help="train-segmentation run folder (repeat for several planes)")
    p.add_argument("--name", required=True, help="model name")
    p.add_argument("--out", required=True, help="output file NAME.odbundle")
    p.add_argument("--half", action="store_true", help="store the backbones as float16 (half the size)")
    p.add_argument("--description", default="", help="free text shown in listings and reports")
