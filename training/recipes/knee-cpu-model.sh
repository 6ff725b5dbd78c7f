#!/usr/bin/env bash
# Builds the CPU-scale knee model from nothing but this project's own
# commands, on a 2-core CPU. Everything is synthetic: exams come from the simulator (procedural knees and deformed
# real label maps), and half of what the networks see is drawn with a randomised MR contrast (SynthSeg-style).
#
#   bash training/recipes/knee-cpu-model.sh [WORK_DIR]      (default WORK_DIR: ./knee-cpu-work)
#
# Every step can be interrupted and run again: the pool skips exams already written, pretraining continues from its
# newest checkpoint (--resume) or, in a fresh work folder, from the float16 backbone kept in the repository
# (training/runs/pretrain-cpu/), the trainers resume their runs.
#
# 1. a pool of 2400 simulated exams on the model grid (4 mm slices, 1.2 mm pixels, 128 x 128), images + tissue maps
# 2. diffusion pretraining (on random 64 x 64 crops) of one CPU-scale backbone shared by the three planes on the pool's first 2000 exams, no
#    labels: in-plane space-to-depth x4, width 16, channel multipliers 1,2,4,8, batch 8, fp32, 12000 steps
# 3. the pool as a labelled cohort: 2000 train / 200 val / 200 test exams
# 4. diagnosis fine-tuning (config knee-cpu-ft), 5. sagittal and coronal segmentation fine-tuning (config seg-cpu),
# 6. export with float16 weights.
# The atlas anatomies need the real knee label maps (SPL Knee Atlas, OAI DESS labels); without them pass
# POOL_MIX=procedural=1.
set -euo pipefail
WORK="${1:-knee-cpu-work}"
OUT_MODEL="${OUT_MODEL:-knee-cpu.odbundle}"
POOL_MIX="${POOL_MIX:-procedural=0.6,atlas_spl=0.2,atlas_oai=0.2}"
KEPT="training/runs/pretrain-cpu/backbone_shared.fp16.safetensors"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
mkdir -p "$WORK"

orthodiffusion simulate pool --out "$WORK/pool" --n 2400 --seed 2026 --anatomy-mix "$POOL_MIX" --workers 2
PRETRAIN=(--pool "$WORK/pool" --pool-exams 0:2000 --plane shared --out "$WORK/pretrain" --steps 12000
          --batch-size 8 --lr-per-sample 2.5e-5 --width 16 --channel-mult 1,2,4,8 --attention-resolutions 8
          --patch-size 4 --norm-groups 8 --size 128 --crop 64 --slices 16 --ckpt-every 250 --keep-checkpoints 2 --log-every 25
          --device cpu)
if [ -f "$WORK/pretrain/checkpoints/latest.json" ]; then
    orthodiffusion pretrain "${PRETRAIN[@]}" --resume
elif [ -f "$KEPT" ]; then
    orthodiffusion pretrain "${PRETRAIN[@]}" --init-from "$KEPT"
else
    orthodiffusion pretrain "${PRETRAIN[@]}"
fi
BACKBONE="$WORK/pretrain/backbone_shared.safetensors"
orthodiffusion simulate pool-cohort --pool "$WORK/pool" --out "$WORK/cohort" --splits 2000,200,200
orthodiffusion train-diagnosis --manifest "$WORK/cohort/manifest.csv" --config knee-cpu-ft \
    --backbone "$BACKBONE" --out "$WORK/diagnosis" --device cpu
for plane in sagittal coronal; do
    orthodiffusion train-segmentation --manifest "$WORK/cohort/manifest.csv" --plane "$plane" --config seg-cpu \
        --backbone "$BACKBONE" --out "$WORK/segmentation_$plane" --device cpu
done
orthodiffusion export --diagnosis "$WORK/diagnosis" --segmentation "$WORK/segmentation_sagittal" \
    --segmentation "$WORK/segmentation_coronal" --name knee-demo-synthetic --out "$OUT_MODEL" --half \
    --description "Demo model trained on simulated knee MRI only (procedural and atlas anatomy, randomised contrasts). Not for clinical use."
