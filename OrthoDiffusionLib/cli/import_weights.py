"""``orthodiffusion import-weights``: convert the authors' published ``model.pt`` files to our safetensors backbones
(:func:`OrthoDiffusionLib.model.checkpoints.import_weights`).

Output: ``backbone_{plane}.safetensors`` per plane and ``backbones.json`` in ``--out``; a bad file leaves the output
folder untouched.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..labels import PLANES
from .common import add_command, with_stage_bars

HELP = """Convert the authors' published diffusion checkpoints (train_diffusion_pose_N/model.pt; a pickled dict with
step/model/ema/opt) into OrthoDiffusion backbone files. Files are read with torch.load(weights_only=True): a file that
would need arbitrary code is refused and nothing from it runs. The authors number planes by pose; inferred from their
CSV column order (not stated): pose 0 = axial, pose 1 = sagittal, pose 2 = coronal."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``orthodiffusion import-weights``."""
    p = add_command(subparsers, "import-weights", run,
                    help="convert the authors' model.pt files to safetensors backbones", description=HELP)
    p.add_argument("--axial", type=Path, help="axial checkpoint (authors' pose 0, inferred)")
    p.add_argument("--sagittal", type=Path, help="sagittal checkpoint (authors' pose 1, inferred)")
    p.add_argument("--coronal", type=Path, help="coronal checkpoint (authors' pose 2, inferred)")
    p.add_argument("--source", choices=("ema", "model"), default="ema",
                   help="checkpoint entry holding the weights (default: ema, the published weights)")
    p.add_argument("--out", type=Path, required=True, help="output folder (BACKBONES_DIR)")


def run(args: argparse.Namespace) -> int:
    from ..model.checkpoints import import_weights

    files = {plane: getattr(args, plane) for plane in PLANES if getattr(args, plane)}
    manifest = with_stage_bars(import_weights, files, args.out, source=args.source)
    for plane, entry in manifest["planes"].items():
        print(f"{plane}: {args.out / entry['file']} sha256 {entry['sha256']} (step {entry['step']})")
    return 0
