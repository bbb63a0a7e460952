#!/usr/bin/env bash
# Train (or resume) the embedded default model: the run recorded in bsqaudio/weights/MODEL_CARD.md.
# Usage: scripts/train_default.sh CORPUS_DIR RUN_DIR [more `bsqaudio train` flags]
# CORPUS_DIR holds train/ and val/ as written by scripts/build_corpus.py (or scripts/pack_opus.py).
set -euo pipefail
corpus=$1
run=$2
shift 2
resume=()
[[ -f "$run/checkpoint/meta.json" ]] && resume=(--resume)
exec python3 -m bsqaudio train "$corpus/train" --val-dir "$corpus/val" --out "$run" \
    --preset small --batch-size 64 --lr 8e-4 --warmup 1000 --steps 24000 \
    --val-every 1000 --val-windows 150 --checkpoint-every 500 "${resume[@]}" "$@"
