"""``orthodiffusion make-manifest``: command line of :mod:`OrthoDiffusionLib.training.manifest_builder` (its docstring
describes the folder layout, the label CSV and the manifest written)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Tuple

from ..errors import InputError
from ..training import manifest_builder
from ..training.configs import load_config
from .common import add_command


def _fractions(text: str) -> Tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--splits takes three fractions, e.g. 0.7,0.1,0.2, got {text!r}") from None


def _run(args: argparse.Namespace) -> int:
    label_columns = None
    if args.label_columns:
        label_columns = [k.strip() for k in args.label_columns.split(",") if k.strip()]
    elif args.config:
        label_columns = load_config(args.config)["labels"]
    report = manifest_builder.build_manifest(args.images, args.labels, args.out, fractions=_fractions(args.splits),
                                             seed=args.split_seed, label_columns=label_columns, prefer=args.prefer,
                                             tolerance_deg=args.tolerance_deg)
    for line in report.lines():
        print(line)
    return 0


def register(subparsers) -> None:
    """Add ``make-manifest`` to the ``orthodiffusion`` command."""
    p = add_command(subparsers, "make-manifest", _run,
                    help="build and check a training-data manifest from a folder of exams and a label spreadsheet",
                    description=manifest_builder.__doc__, raw=True)
    p.add_argument("--images", type=Path, required=True,
                   help="folder with one sub-folder per patient (named by patient_id)")
    p.add_argument("--labels", type=Path, required=True, help="label CSV: patient_id and one 0/1 column per label")
    p.add_argument("--out", type=Path, required=True, help="the manifest CSV to write")
    p.add_argument("--splits", default="0.7,0.1,0.2", help="train,val,test fractions of the patients (default "
                                                            "0.7,0.1,0.2; ignored when the label CSV has a split "
                                                            "column)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the patient split (default 0)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--label-columns", default=None, metavar="KEY[,KEY...]",
                       help="the label columns to keep (default: every column that is not patient_id, split, an "
                            "EHR column, center or field_strength)")
    group.add_argument("--config", default=None, help="take the label columns from this diagnosis configuration "
                                                      "(e.g. knee-ft-opt: the 8 knee labels)")
    p.add_argument("--prefer", choices=("dicom", "all"), default="dicom",
                   help="dicom: a patient's NIfTI/NRRD images are taken for copies when it has DICOM series "
                        "(default); all: keep every image series")
    p.add_argument("--tolerance-deg", type=float, default=30.0,
                   help="obliquity accepted when assigning a plane (default 30)")
