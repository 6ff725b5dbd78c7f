#!/usr/bin/env bash
# One call on a lent GPU (H100/H200, about 9 minutes): rebuild the demo model at 128 x 128 with a real pretraining,
# and run the simulated-cohort experiments of the diagnosis and segmentation issues (fine-tuning vs the baselines,
# at 100% and 10% of the training labels), with nothing but this project's own commands.
#
#   bash training/recipes/gpu-session.sh OUT_DIR [WORK_DIR]
#   SMOKE=1 bash training/recipes/gpu-session.sh OUT_DIR      (tiny CPU run of the same steps: checks the plumbing)
#
# Steps, most important first; each has a wall-clock limit cut to what is left of BUDGET_S (default 540 s), and a step
# that fails or runs out of time is reported in OUT_DIR/commands.log while the later steps still run:
#   1. a 300-exam procedural cohort (16-slice series at 128 x 128; seed 7, as the CPU demo recipe), all CPU cores
#   2. one shared diffusion backbone (width 32, channel multipliers 1,1,2,2,2, 16 x 128 x 128, bf16 autocast, batch
#      16), pretrained for PRETRAIN_MIN minutes (`pretrain --time-limit`; the step count reached is in its log)
#   3. sagittal and coronal segmentation fine-tuning (seg-demo at 128 x 128, whole encoder trainable, smaller decoder
#      so that the bundle stays under 25 MB)
#   4. diagnosis fine-tuning (knee-demo-ft at 128 x 128) and linear probing
#   5. export of the demo bundle (float16) to OUT_DIR/knee-demo-synthetic.odbundle, fine-tuned diagnosis if the
#      bundle fits in 25 MB, else the linear-probing one
#   6. evaluation tables (diagnosis: AUROC, AP, CIs; segmentation: Dice and HD95 per structure, sagittal+coronal fusion)
#   7. baselines on the same data at 100% and 10% of the training patients (3D U-Net encoder and 3D ResNet-18 for
#      diagnosis, 3D U-Net and UNETR for sagittal segmentation), fine-tuning at 10%, then the tables again with the
#      paired permutation tests against the baselines
# OUT_DIR receives the bundle, every run's run.json / log.csv / metrics and predictions CSVs, the tables, the
# pretraining log and commands.log with each step's exit status and seconds; nothing large (no cohort, no caches).
set -uo pipefail

OUT="${1:?usage: gpu-session.sh OUT_DIR [WORK_DIR]}"
WORK="${2:-${TMPDIR:-/tmp}/orthodiffusion-gpu-session}"
SMOKE="${SMOKE:-0}"
T0=$(date +%s)
mkdir -p "$OUT/logs" "$WORK"
LOG="$OUT/commands.log"
: > "$LOG"

if [[ "$SMOKE" == 1 ]]; then
    # tiny sizes, CPU: every command and option of the real run is exercised in a few minutes
    BUDGET_S="${BUDGET_S:-2400}"; LIMIT_SCALE=8; DEVICE=cpu; N=40; MATRIX=48; SIZE=32; BATCH=2; PRETRAIN_MIN=0.2
    PRECISION=fp32
    DIAG_EPOCHS=1; LP_EPOCHS=2; SEG_EPOCHS=1; BASE_EPOCHS=1; SEG_BASE_EPOCHS=1; LOADERS=0
    UNETR=(--set baseline.unetr.hidden_size=48 --set baseline.unetr.num_heads=2 --set baseline.unetr.mlp_dim=96
           --set baseline.unetr.feature_size=8)
else
    BUDGET_S="${BUDGET_S:-540}"; LIMIT_SCALE=1; DEVICE="${DEVICE:-cuda}"; N=300; MATRIX=128; SIZE=128; BATCH=16
    PRETRAIN_MIN="${PRETRAIN_MIN:-3}"; PRECISION=bf16
    DIAG_EPOCHS=8; LP_EPOCHS=40; SEG_EPOCHS=20; BASE_EPOCHS=20; SEG_BASE_EPOCHS=20; LOADERS=8
    UNETR=()
fi
# the command that runs the project's CLI (OD="python3 -m OrthoDiffusionLib" where no console script is installed)
read -ra OD <<< "${OD:-orthodiffusion}"
WORKERS="$(nproc)"
COHORT="$WORK/cohort"
MANIFEST="$COHORT/manifest.csv"
BACKBONE="$WORK/pretrain/backbone_shared.safetensors"
CACHE="$WORK/cache"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$WORKERS}"

left() { echo $(( BUDGET_S - ($(date +%s) - T0) )); }

# run NAME LIMIT_S COMMAND...: at most LIMIT_S x LIMIT_SCALE seconds (and what is left of the budget); the output
# goes to OUT/logs/NAME.log, the exit status and seconds to commands.log
run() {
    local name=$1 limit=$2 rest
    shift 2
    limit=$(( limit * LIMIT_SCALE ))
    rest=$(left)
    (( limit > rest )) && limit=$rest
    if (( limit < 15 )); then
        echo "SKIPPED $name: ${rest} s of the budget left" | tee -a "$LOG"
        return 1
    fi
    echo "+ [$name, at most ${limit} s] $*" >> "$LOG"
    local t rc
    t=$(date +%s)
    timeout --signal=TERM --kill-after=15 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
    rc=$?
    echo "  $name: exit $rc after $(( $(date +%s) - t )) s$([[ $rc == 124 ]] && echo ' (time limit)')" | tee -a "$LOG"
    return $rc
}

# keep: copy the small result files of a run folder into OUT/runs/NAME
keep() {
    local src=$1 name=$2
    [[ -d "$src" ]] || return 0
    mkdir -p "$OUT/runs/$name"
    find "$src" -maxdepth 1 -type f \( -name '*.json' -o -name '*.csv' -o -name '*.md' -o -name '*.png' \) \
        -size -5M -exec cp {} "$OUT/runs/$name/" \;
}

{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "smoke: $SMOKE, device: $DEVICE, cores: $WORKERS, budget: ${BUDGET_S} s"
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
} > "$OUT/environment.txt" 2>&1

# 1. cohort
run cohort 150 "${OD[@]}" simulate cohort --out "$COHORT" --n "$N" --seed 7 --matrix "$MATRIX" --no-dicom \
    --workers "$WORKERS" || { echo "no cohort, nothing else can run" | tee -a "$LOG"; exit 1; }
cp "$MANIFEST" "$OUT/manifest.csv"

# 2. pretraining (time-limited; the backbone is written from the steps done)
PRE_LIMIT=$(python3 -c "print(int(float('$PRETRAIN_MIN') * 60 + 120))")
run pretrain "$PRE_LIMIT" "${OD[@]}" pretrain --manifest "$MANIFEST" --plane shared --out "$WORK/pretrain" \
    --width 32 --channel-mult 1,1,2,2,2 --attention-resolutions 16 --size "$SIZE" --slices 16 \
    --steps 1000000 --time-limit "$PRETRAIN_MIN" --batch-size "$BATCH" --lr-per-sample 1e-5 --ema-start 500 \
    --precision "$PRECISION" --num-workers "$LOADERS" --ckpt-every 500 --keep-checkpoints 1 --log-every 20 \
    --device "$DEVICE" || {
    echo "no backbone, nothing else can run" | tee -a "$LOG"
    keep "$WORK/pretrain" pretrain
    exit 1
}
keep "$WORK/pretrain" pretrain

# 3. segmentation fine-tuning, sagittal and coronal
SEG=(--config seg-demo --head skip --set "preprocessing.size=$SIZE" --set "epochs=$SEG_EPOCHS"
     --set frozen_input_blocks=0 --set "head.decoder_channels=[64,32,16,16]" --device "$DEVICE" --cache-dir "$CACHE")
for plane in sagittal coronal; do
    run "seg_$plane" 90 "${OD[@]}" train-segmentation --manifest "$MANIFEST" --plane "$plane" \
        --backbone "$BACKBONE" --out "$WORK/seg_$plane" "${SEG[@]}"
    keep "$WORK/seg_$plane" "seg_$plane"
done

# 4. diagnosis: fine-tuning (the paper's FT protocol) and linear probing
DIAG=(--manifest "$MANIFEST" --config knee-demo-ft --backbone "$BACKBONE" --set "preprocessing.size=$SIZE"
      --device "$DEVICE" --cache-dir "$CACHE")
run diag_ft 90 "${OD[@]}" train-diagnosis "${DIAG[@]}" --out "$WORK/diag_ft" --set "stage1.epochs=$DIAG_EPOCHS"
keep "$WORK/diag_ft" diag_ft
run diag_lp 60 "${OD[@]}" train-diagnosis "${DIAG[@]}" --out "$WORK/diag_lp" --set 'protocol="linear_probe"' \
    --set "stage1.epochs=$LP_EPOCHS" --set stage1.lr=0.002 --set 'stage1.noise="fixed-draw-cached"' \
    --set stage1.backbone_lr_scale=null
keep "$WORK/diag_lp" diag_lp

# 5. the demo bundle: fine-tuned diagnosis if it fits in 25 MB, else linear probing
BUNDLE="$OUT/knee-demo-synthetic.odbundle"
SEGS=()
for plane in sagittal coronal; do
    [[ -f "$WORK/seg_$plane/run.json" ]] && SEGS+=(--segmentation "$WORK/seg_$plane")
done
for variant in diag_ft diag_lp; do
    [[ -f "$WORK/$variant/run.json" ]] || continue
    run "export_$variant" 60 "${OD[@]}" export --diagnosis "$WORK/$variant" "${SEGS[@]}" \
        --name knee-demo-synthetic --out "$WORK/$variant.odbundle" --half \
        --description "Demo model trained on simulated (procedural) knee MRI only. Not for clinical use." \
        || continue
    size=$(stat -c %s "$WORK/$variant.odbundle")
    echo "  $variant bundle: $size bytes" | tee -a "$LOG"
    if (( size <= 25 * 1000 * 1000 )); then
        cp "$WORK/$variant.odbundle" "$BUNDLE"
        echo "  shipped bundle: $variant" | tee -a "$LOG"
        break
    fi
done

# 6. evaluation tables without baselines (in case the budget ends during the baselines)
evaluate_all() {
    local suffix=$1
    shift
    local bases=("$@")
    local segruns=() names=()
    for r in seg_sagittal seg_unet_100 seg_unetr_100 seg_sagittal_10 seg_unet_10 seg_unetr_10; do
        [[ -f "$WORK/$r/run.json" ]] && { segruns+=("$WORK/$r"); names+=("$r"); }
    done
    if (( ${#segruns[@]} )); then
        local fuse=()
        [[ -f "$WORK/seg_coronal/run.json" && -f "$WORK/seg_sagittal/run.json" ]] && \
            fuse=(--fuse "$WORK/seg_sagittal" "$WORK/seg_coronal")
        run "eval_seg$suffix" 90 "${OD[@]}" evaluate-segmentation --runs "${segruns[@]}" --names "${names[@]}" \
            --split test --out "$OUT/eval_seg$suffix" --device "$DEVICE" "${fuse[@]}"
    fi
    for variant in diag_ft diag_lp; do
        [[ -f "$WORK/$variant/predictions_test.csv" ]] || continue
        run "eval_$variant$suffix" 60 "${OD[@]}" evaluate --predictions "$WORK/$variant/predictions_test.csv" \
            --val-predictions "$WORK/$variant/predictions_val.csv" --manifest "$MANIFEST" \
            --out "$OUT/eval_$variant$suffix" "${bases[@]}"
    done
}
evaluate_all ""

# 7. baselines and 10% label-efficiency runs, then the tables with permutation tests
mkdir -p "$WORK/named"
BASES=()
for frac in 100 10; do
    F=()
    [[ $frac == 10 ]] && F=(--train-fraction 0.1)
    for model in unet3d resnet18; do
        run "base_${model}_$frac" 60 "${OD[@]}" train-baseline --manifest "$MANIFEST" --model "$model" \
            --out "$WORK/base_${model}_$frac" --size "$SIZE" --slices 16 --device "$DEVICE" --cache-dir "$CACHE" \
            --set "baselines.epochs.$model=$BASE_EPOCHS" "${F[@]}" || continue
        keep "$WORK/base_${model}_$frac" "base_${model}_$frac"
        cp "$WORK/base_${model}_$frac/predictions_test.csv" "$WORK/named/${model}_${frac}pct.csv" \
            && BASES+=(--baseline "$WORK/named/${model}_${frac}pct.csv")
    done
done
SEGB=(--plane sagittal --config seg-demo --set "preprocessing.size=$SIZE" --set "baseline.epochs=$SEG_BASE_EPOCHS"
      --device "$DEVICE" --cache-dir "$CACHE" "${UNETR[@]}")
for frac in 100 10; do
    P=()
    [[ $frac == 10 ]] && P=(--train-patients $(( N * 7 / 100 )))
    for model in unet unetr; do
        run "seg_${model}_$frac" 75 "${OD[@]}" train-seg-baseline --manifest "$MANIFEST" --model "$model" \
            --out "$WORK/seg_${model}_$frac" "${SEGB[@]}" "${P[@]}"
        keep "$WORK/seg_${model}_$frac" "seg_${model}_$frac"
    done
done
run seg_sagittal_10 60 "${OD[@]}" train-segmentation --manifest "$MANIFEST" --plane sagittal \
    --backbone "$BACKBONE" --out "$WORK/seg_sagittal_10" --train-patients $(( N * 7 / 100 )) "${SEG[@]}"
keep "$WORK/seg_sagittal_10" seg_sagittal_10
run diag_ft_10 60 "${OD[@]}" train-diagnosis "${DIAG[@]}" --out "$WORK/diag_ft_10" \
    --set "stage1.epochs=$DIAG_EPOCHS" --train-fraction 0.1
keep "$WORK/diag_ft_10" diag_ft_10
if [[ -f "$WORK/diag_ft_10/predictions_test.csv" ]]; then
    cp "$WORK/diag_ft_10/predictions_test.csv" "$WORK/named/ft_10pct.csv"
    BASES+=(--baseline "$WORK/named/ft_10pct.csv")
fi
(( ${#BASES[@]} )) && evaluate_all "_vs_baselines" "${BASES[@]}"

echo "total: $(( $(date +%s) - T0 )) s of ${BUDGET_S} s" | tee -a "$LOG"

# PACK_TO=DIR: the results as at most 8 files of at most 15 MiB (what a device call brings back): results.tar.gz
# (everything but the bundle) and the bundle in parts (join them with: cat bundle.part-* > NAME.odbundle)
if [[ -n "${PACK_TO:-}" ]]; then
    mkdir -p "$PACK_TO"
    tar czf "$PACK_TO/results.tar.gz" -C "$OUT" --exclude='*.odbundle' .
    [[ -f "$BUNDLE" ]] && split -b 15M -d "$BUNDLE" "$PACK_TO/bundle.part-"
    ls -l "$PACK_TO"
fi
