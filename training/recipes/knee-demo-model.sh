#!/usr/bin/env bash
# Rebuilds the shipped model, Resources/models/knee-demo-synthetic.odbundle, from nothing but this project's own
# commands, on a 2-core CPU. Everything is synthetic: exams come from the simulator (procedural knees and deformed
# real label maps), and part of what the networks see is drawn with a randomised MR contrast (SynthSeg-style).
#
#   bash training/recipes/knee-demo-model.sh [WORK_DIR]      (default WORK_DIR: ./knee-demo-work)
#
# 1. a pool of POOL_N simulated exams on the model grid (4 mm slices, 1.2 mm pixels, 128 x 128): images + tissue maps
# 2. the CPU-scale diffusion backbone, shared by the three planes (in-plane space-to-depth x4, width 16, channel
#    multipliers 1,2,4,8), pretrained without labels on random 64 x 64 crops of the pool's first POOL_PRETRAIN exams.
#    The repository keeps the float16 backbone the shipped model started from (training/runs/pretrain-cpu/,
#    6,750 steps); the recipe uses it unless PRETRAIN_FROM_SCRATCH=1, which pretrains PRETRAIN_STEPS steps here.
# 3. the pool as a labelled cohort (POOL_SPLITS train/val/test exams)
# 4. segmentation per plane (config seg-cpu, skip head): the 11 structures first, then continued with the 12 context
#    tissues of the simulator (--set context_tissues=true; fluid, collateral ligaments, oedema, ...), then (sagittal)
#    with the input image joined at the full-resolution decoder stages, and two more rounds of that
# 5. the tissue-pooled diagnosis (train-tissue-diagnosis): per-label models on what those networks see in each plane
# 6. export: one network per plane serves both tasks; float16 weights.
# Every step can be interrupted and run again: the pool skips exams already written, pretraining resumes, the
# trainers resume their runs (--resume), the diagnosis reuses its feature cache.
# The atlas anatomies need the real knee label maps (SPL Knee Atlas, OAI DESS labels); without them pass
# POOL_MIX=procedural=1.
set -euo pipefail
WORK="${1:-knee-demo-work}"
OUT_MODEL="${OUT_MODEL:-Resources/models/knee-demo-synthetic.odbundle}"
POOL_MIX="${POOL_MIX:-procedural=0.6,atlas_spl=0.2,atlas_oai=0.2}"
POOL_N="${POOL_N:-1141}"
POOL_PRETRAIN="${POOL_PRETRAIN:-1000}"
POOL_SPLITS="${POOL_SPLITS:-941,100,100}"
PRETRAIN_STEPS="${PRETRAIN_STEPS:-6750}"
KEPT="training/runs/pretrain-cpu/backbone_shared.fp16.safetensors"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
mkdir -p "$WORK"

# resumable segmentation run: continue a run folder that has checkpoints, else start it
seg() {  # seg OUT ARGS...
    local out="$1"; shift
    if [ -f "$out/run.json" ]; then return; fi
    if [ -d "$out/checkpoints" ]; then set -- "$@" --resume; fi
    orthodiffusion train-segmentation --manifest "$WORK/cohort/manifest.csv" --config seg-cpu --set crop=64 \
        --cache-dir "$WORK/seg-cache" --out "$out" --device cpu "$@"
}

orthodiffusion simulate pool --out "$WORK/pool" --n "$POOL_N" --seed 2026 --anatomy-mix "$POOL_MIX" --workers 2
if [ "${PRETRAIN_FROM_SCRATCH:-0}" = 1 ] || [ ! -f "$KEPT" ]; then
    PRETRAIN=(--pool "$WORK/pool" --pool-exams "0:$POOL_PRETRAIN" --plane shared --out "$WORK/pretrain"
              --steps "$PRETRAIN_STEPS" --batch-size 8 --lr-per-sample 2.5e-5 --width 16 --channel-mult 1,2,4,8
              --attention-resolutions 8 --patch-size 4 --norm-groups 8 --size 128 --crop 64 --slices 16
              --ckpt-every 250 --keep-checkpoints 2 --log-every 25 --device cpu)
    if [ -f "$WORK/pretrain/checkpoints/latest.json" ]; then
        orthodiffusion pretrain "${PRETRAIN[@]}" --resume
    else
        orthodiffusion pretrain "${PRETRAIN[@]}"
    fi
    BACKBONE="$WORK/pretrain/backbone_shared.safetensors"
else
    BACKBONE="$KEPT"
fi
orthodiffusion simulate pool-cohort --pool "$WORK/pool" --out "$WORK/cohort" --splits "$POOL_SPLITS"

# 4a. the 11 structures (these steps ran before the image path existed: head.image_stages=[] keeps it out)
NO_IMAGE=(--set "head.image_stages=[]")
seg "$WORK/sag-a" --plane sagittal --backbone "$BACKBONE" "${NO_IMAGE[@]}" --set epochs=6 --set eval.val_every=2
seg "$WORK/sag-b" --plane sagittal --init-from "$WORK/sag-a" "${NO_IMAGE[@]}" --set epochs=12 --set lr=0.0005 \
    --set backbone_lr_scale=0.5 --set eval.val_every=3
seg "$WORK/cor-a" --plane coronal --backbone "$BACKBONE" "${NO_IMAGE[@]}" --set epochs=8 --set backbone_lr_scale=0.3 \
    --set eval.val_every=4
# 4b. continued with the context tissues (a quarter of the cases with a randomised contrast)
TISSUES=(--set context_tissues=true --set backbone_lr_scale=0.5 --set domain_randomisation.p=0.25)
seg "$WORK/sag-c" --plane sagittal --init-from "$WORK/sag-b" "${NO_IMAGE[@]}" "${TISSUES[@]}" --set epochs=8 \
    --set lr=0.0005 --set eval.val_every=4
seg "$WORK/sag-d" --plane sagittal --init-from "$WORK/sag-c" "${NO_IMAGE[@]}" "${TISSUES[@]}" --set epochs=12 \
    --set lr=0.0003 --set eval.val_every=6
seg "$WORK/sag-e" --plane sagittal --init-from "$WORK/sag-d" "${NO_IMAGE[@]}" "${TISSUES[@]}" --set epochs=10 \
    --set lr=0.0002 --set eval.val_every=5
seg "$WORK/cor-c" --plane coronal --init-from "$WORK/cor-a" "${NO_IMAGE[@]}" "${TISSUES[@]}" --set epochs=6 \
    --set lr=0.0005 --set eval.val_every=3
# 4c. the sagittal head grown with the image path (seg-cpu's head.image_stages: the input joins the two
#     full-resolution decoder stages, starting from exactly sag-e's predictions)
seg "$WORK/sag-f" --plane sagittal --init-from "$WORK/sag-e" "${TISSUES[@]}" --set epochs=12 --set lr=0.0003 \
    --set eval.val_every=6
# 4d. two more rounds of 16 epochs with the image path (each a fresh cosine schedule from lr 3e-4)
seg "$WORK/sag-g" --plane sagittal --init-from "$WORK/sag-f" "${TISSUES[@]}" --set epochs=16 --set lr=0.0003 \
    --set eval.val_every=8
seg "$WORK/sag-h" --plane sagittal --init-from "$WORK/sag-g" "${TISSUES[@]}" --set epochs=16 --set lr=0.0003 \
    --set eval.val_every=8
# 4e. one more round of 12 epochs (chosen over sag-h on the pool's validation split: 0.848 against 0.843)
seg "$WORK/sag-i" --plane sagittal --init-from "$WORK/sag-h" "${TISSUES[@]}" --set epochs=12 --set lr=0.0003 \
    --set eval.val_every=6

# 5. the diagnosis, on the networks as they are stored in the bundle (float16)
for run in sag-i cor-c; do
    [ -f "$WORK/$run-fp16/run.json" ] || orthodiffusion keep-segmentation-run --run "$WORK/$run" --out "$WORK/$run-fp16"
done
orthodiffusion train-tissue-diagnosis --manifest "$WORK/cohort/manifest.csv" --run "sagittal=$WORK/sag-i-fp16" \
    --run "coronal=$WORK/cor-c-fp16" --out "$WORK/diagnosis" --progress none --device cpu

# 6. the bundle (the diagnosis brings the two segmentation runs it reads)
orthodiffusion export --diagnosis "$WORK/diagnosis" --name knee-demo-synthetic --out "$OUT_MODEL" --half \
    --description "Demo model trained on simulated knee MRI only (procedural and atlas anatomy, randomised contrasts). Not for clinical use."
