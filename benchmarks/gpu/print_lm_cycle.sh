#!/usr/bin/env bash
# One annealed cycle of the print-supervised recipe with the language model and the connector at 0.3 of the
# tower's rate (benchmarks/RESULTS.md "Eighteenth H200 run", call 3), then its val scores at the full configuration.
#   bash benchmarks/gpu/print_lm_cycle.sh WORK INIT_FROM FIRST_EXAMPLE [TRAIN_S]
# WORK/ckpt/plain is the checkpoint, WORK/grid_val.json 300 val requests a task at (high, p=1, top-8, 16 blocks).
# INIT_FROM: the checkpoint the cycle starts from (its weights and tokenizer; a fresh optimizer and schedule).
# FIRST_EXAMPLE: the train stream's first example, past every example the chain behind INIT_FROM has read
# (a cycle reads steps x 64 / 2 examples; the script prints where the next cycle may start). TRAIN_S (default 450):
# the seconds the schedule is fitted to; the fit
# measures the rate during the warm-up, which is slower than the rest, so the cycle ends early rather than cut.
# LR_SCALE overrides the per-module rates (default "lm.=0.3 connector.=0.3"); TASK_WEIGHTS the training mix (default
# below); VAL_PER_TASK the val requests a task that grid_val.json scores (default 300; the suite holds 1,000).
set -euo pipefail
W=${1:?usage: print_lm_cycle.sh WORK INIT_FROM FIRST_EXAMPLE [TRAIN_S]}
INIT=${2:?usage: print_lm_cycle.sh WORK INIT_FROM FIRST_EXAMPLE [TRAIN_S]}
FIRST=${3:?usage: print_lm_cycle.sh WORK INIT_FROM FIRST_EXAMPLE [TRAIN_S]}
TRAIN_S=${4:-450}
PY=${PYTHON:-python3}
# the sixteenth run's numbers-heavy mix (synth_numbers is a training-only task), as in the eighteenth run
TWQ=${TASK_WEIGHTS:-"easy_vqa=0.03 synth_text=0.08 synth_doc=0.22 synth_chart=0.18 synth_count=0.08 synth_diagram=0.05 synth_read=0.03 synth_words=0.08 synth_digits=0.05 synth_numbers=0.20"}
env BATCH=64 REUSE=2 COMPILE=0 PATCH_STEM=hybrid SPLIT_DIGITS=1 PRINT_LOSS=1 PRINT_SITES=tokens SKIP_GRID=1 LR=3.5e-4 \
    LR_SCALE="${LR_SCALE-lm.=0.3 connector.=0.3}" INIT_FROM="$INIT" FIRST_EXAMPLE="$FIRST" TASK_WEIGHTS="$TWQ" \
    STOP_AFTER=$((TRAIN_S + 10)) PYTHON="$PY" bash benchmarks/gpu/train_small_model.sh "$W" "$TRAIN_S" 0
NEXT=$($PY -c 'import json, sys; print(int(sys.argv[2]) + json.load(open(sys.argv[1]))["steps"] * 64 // 2)' \
    "$W/ckpt/train_summary.json" "$FIRST")
echo "[print_lm_cycle] this cycle read the train stream's examples $FIRST to $((NEXT - 1)); a cycle from it starts at FIRST_EXAMPLE >= $NEXT"
$PY -m experiments.eval_model_grid --model "$W/ckpt/plain" --requests "$W/suite/val.jsonl" --per-task "${VAL_PER_TASK:-300}" \
    --configs "tier=high,p=1,top_k=8,blocks=16" --max-new-tokens 16 --dense-decode --device cuda --out "$W/grid_val.json"
