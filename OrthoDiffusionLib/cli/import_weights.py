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

EPILOG = """where the weights are: the authors' GitHub repository (github.com/lt-0123/OrthoDiffusion) points in its
README to a model hub page, lanstat0123/orthodiffusion, holding train_diffusion_pose_0/model.pt,
train_diffusion_pose_1/model.pt and train_diffusion_pose_2/model.pt (one backbone per plane; download them yourself,
this command only reads local files).

which file is which plane (inferred from the order of the authors' CSV columns, not stated by them):
  --axial    train_diffusion_pose_0/model.pt
  --sagittal train_diffusion_pose_1/model.pt
  --coronal  train_diffusion_pose_2/model.pt

what it writes: OUT/backbone_<plane>.safetensors (the 'ema' weights of the paper's network, 34.5 M parameters, input
16 slices x 256 x 256, recorded in the file so that the trainers use that size) and OUT/backbones.json (sha256 of
each output, the source file and its sha256, the training step).

which configuration matches: the paper's own, at 16 x 256 x 256 -- knee-ft-opt (fine-tuning) or knee-lp-opt (linear
probing) for diagnosis, seg-ft for segmentation; ankle-ft-opt / shoulder-ft-opt for those label sets. Preprocessing:
the 16 central slices of each series, each slice resized to 256 x 256, min-max scaled to [-1, 1] (done for you by
every trainer and by predict). List the configurations with: orthodiffusion configs

example:
  orthodiffusion import-weights --axial pose_0/model.pt --sagittal pose_1/model.pt --coronal pose_2/model.pt \\
      --out backbones
  orthodiffusion train-diagnosis --manifest manifest.csv --config knee-ft-opt \\
      --backbone-sagittal backbones/backbone_sagittal.safetensors \\
      --backbone-coronal backbones/backbone_coronal.safetensors \\
      --backbone-axial backbones/backbone_axial.safetensors --out runs/diagnosis"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``orthodiffusion import-weights``."""
    p = add_command(subparsers, "import-weights", run,
                    help="convert the authors' model.pt files to safetensors backbones", description=HELP,
                    raw=True, epilog=EPILOG)
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
