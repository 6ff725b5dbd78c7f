"""The named options shared by the training commands: ``--protocol``, ``--size``/``--slices`` and the label set
(their meaning: :mod:`OrthoDiffusionLib.training.named_options`)."""
from __future__ import annotations

import argparse

from ..training.named_options import PROTOCOL_PRESETS

__all__ = ["add_protocol_argument", "add_size_arguments", "add_label_arguments"]


def add_protocol_argument(p: argparse.ArgumentParser) -> None:
    """``--protocol linear-probe|fine-tune``."""
    p.add_argument("--protocol", choices=tuple(PROTOCOL_PRESETS), default=None,
                   help="linear-probe: backbone frozen, taps cached, 10 epochs; fine-tune: encoder + middle block "
                        "trained at 0.05 x the head's learning rate, noise redrawn every step, 5 epochs (default: "
                        "the configuration's protocol, unchanged)")


def add_size_arguments(p: argparse.ArgumentParser, from_backbone: bool = True) -> None:
    """``--size`` and ``--slices`` (default: as recorded in the backbone file, else the configuration's)."""
    where = "the backbone file records, else the configuration's" if from_backbone else "the configuration's"
    p.add_argument("--size", type=int, default=None, help=f"in-plane input size in pixels (default: what {where})")
    p.add_argument("--slices", type=int, default=None, help=f"slices per input volume (default: what {where})")


def add_label_arguments(p: argparse.ArgumentParser) -> None:
    """``--labels KEY,...`` or ``--labels-from-manifest``."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--labels", metavar="KEY[,KEY...]", default=None,
                       help="train these labels only, in this order (each a 0/1 manifest column: a subset of the "
                            "configuration's labels, or new ones); default: the configuration's labels")
    group.add_argument("--labels-from-manifest", action="store_true",
                       help="train every label column of the manifest (all columns except patient_id, plane, "
                            "series_path, split, seg_path, the EHR columns, center and field_strength)")
