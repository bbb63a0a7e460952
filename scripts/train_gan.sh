#!/usr/bin/env bash
# Adversarial decoder training on frozen codes (issue: sound quality), started from the embedded
# model, or resumed: the run recorded in bsqaudio/weights/MODEL_CARD.md ("Session 7/8").
# Usage: scripts/train_gan.sh TRAIN_LIST_OR_DIR VAL_DIR RUN_DIR [more `bsqaudio train` flags]
#   CPU (2 cores):  scripts/train_gan.sh /work/data/lists/mix1.txt /work/data/corpus/val runs/gan
#   GPU (device tool, ~10 min of a 15-min lease; corpus from scripts/pack_opus.py within 64 MiB):
#     scripts/train_gan.sh .gpu/corpus/train .gpu/corpus/val runs/gan-gpu --device cuda \
#         --batch-size 64 --max-minutes 9 --checkpoint-every 200
# The encoder and quantizer are frozen, so the codes (and every .bsq file) keep their meaning; the
# export is a new decoder of the same code space (bsqaudio/code_space.py).
set -euo pipefail
train=$1
val=$2
run=$3
shift 3
resume=()
[[ -f "$run/checkpoint/meta.json" ]] && resume=(--resume)
here=$(cd "$(dirname "$0")/.." && pwd)
exec python3 -m bsqaudio train "$train" --val-dir "$val" --out "$run" \
    --init-from "$here/bsqaudio/weights" --freeze-encoder --discriminator --disc-start 0 \
    --no-spec-augment --loss l1 --disc-weight 1.0 --feature-match-weight 1.0 --lr 1e-4 --disc-lr 1e-4 \
    --warmup 50 --steps 3000 --batch-size 8 --ema-decay 0.998 --val-every 250 --val-windows 32 \
    --checkpoint-every 50 "${resume[@]}" "$@"
