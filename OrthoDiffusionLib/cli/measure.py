"""``orthodiffusion measure-segmentation LABELMAP [--plane P] [--out FILE.csv|.json]``

Volumes of the knee structures and mean cartilage thickness (surface-normal rays, sub-voxel) of a labelmap whose
values are the OrthoDiffusion label table (or a Slicer .seg.nrrd whose segments are named after the structures);
the measures are those of :mod:`OrthoDiffusionLib.segmentation.measures`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import labels
from ..errors import InputError
from .common import add_command


def _cmd_measure(args: argparse.Namespace) -> int:
    from ..segmentation.io import read_labelmap
    from ..segmentation.measures import format_measures, measure_structures, write_measures

    if args.out is not None and Path(args.out).suffix.lower() not in (".csv", ".json"):
        raise InputError("the measures table must end in .csv or .json", args.out)
    rows = measure_structures(read_labelmap(args.labelmap), plane=args.plane)
    print(format_measures(rows))
    if args.out is not None:
        write_measures(rows, Path(args.out))
    return 0


def register(subparsers) -> None:
    """Add ``orthodiffusion measure-segmentation``."""
    p = add_command(subparsers, "measure-segmentation", _cmd_measure,
                    help="structure volumes (mL) and mean cartilage thickness (mm) of a knee labelmap or .seg.nrrd",
                    description=__doc__.split("\n\n", 1)[1], raw=True)
    p.add_argument("labelmap", help="labelmap file: .seg.nrrd, .nrrd, .nii or .nii.gz")
    p.add_argument("--plane", choices=labels.PLANES, default=None,
                   help="only the structures segmented on this plane (default: all 11)")
    p.add_argument("--out", default=None, help="also write the table to this .csv or .json file")
