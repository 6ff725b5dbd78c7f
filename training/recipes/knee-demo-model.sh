#!/usr/bin/env bash
# Rebuilds the shipped demo model, Resources/models/knee-demo-synthetic.odbundle, from nothing but this project's
# own commands, on a CPU. Everything is synthetic: the cohort comes from the procedural simulator.
#
#   bash training/recipes/knee-demo-model.sh [WORK_DIR]      (default WORK_DIR: ./knee-demo-work)
#
# Steps: a 300-exam procedural cohort (16-slice series at 128 x 128), one small diffusion backbone pretrained on the
# train split's series of all three planes (width 32, channel multipliers 1,1,2,2,2, 16 x 64 x 64 volumes), diagnosis
# linear probing (config knee-demo-ft with the overrides below), sagittal and coronal segmentation fine-tuning (config seg-demo; 60 epochs sagittal, 40 coronal), export with
# float16 weights. See docs/inference.md ("The demo model") for the measured results and times.
set -euo pipefail
WORK="${1:-knee-demo-work}"
OUT_MODEL="${OUT_MODEL:-Resources/models/knee-demo-synthetic.odbundle}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
mkdir -p "$WORK"

orthodiffusion simulate cohort --out "$WORK/cohort" --n 300 --seed 7 --matrix 128 --no-dicom --workers 2
orthodiffusion pretrain --manifest "$WORK/cohort/manifest.csv" --plane shared --out "$WORK/pretrain" \
    --width 32 --channel-mult 1,1,2,2,2 --attention-resolutions 16 --size 64 --slices 16 \
    --steps 120 --batch-size 8 --lr-per-sample 2.5e-5 --ckpt-every 10 --keep-checkpoints 2 --log-every 5 --device cpu
BACKBONE="$WORK/pretrain/backbone_shared.safetensors"
# linear probing (the shared backbone stays frozen, so the bundle stores it once and stays under 25 MB)
orthodiffusion train-diagnosis --manifest "$WORK/cohort/manifest.csv" --config knee-demo-ft \
    --set protocol='"linear_probe"' --set stage1.epochs=40 --set stage1.lr=0.002 \
    --set stage1.noise='"fixed-draw-cached"' --set stage1.backbone_lr_scale=null \
    --backbone "$BACKBONE" --out "$WORK/diagnosis" --device cpu
for plane_epochs in sagittal:60 coronal:40; do
    plane="${plane_epochs%%:*}"
    orthodiffusion train-segmentation --manifest "$WORK/cohort/manifest.csv" --plane "$plane" --config seg-demo \
        --backbone "$BACKBONE" --out "$WORK/segmentation_$plane" --device cpu --head skip --set "epochs=${plane_epochs##*:}"
done
orthodiffusion export --diagnosis "$WORK/diagnosis" --segmentation "$WORK/segmentation_sagittal" \
    --segmentation "$WORK/segmentation_coronal" --name knee-demo-synthetic --out "$OUT_MODEL" --half \
    --description "Demo model trained on simulated (procedural) knee MRI only. Not for clinical use."
