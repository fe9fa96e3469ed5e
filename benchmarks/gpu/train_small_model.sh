#!/usr/bin/env bash
# Train the small MolmoE-architecture model on one GPU, then look at its knob grid.
#   bash benchmarks/gpu/train_small_model.sh OUT [TIME_BUDGET_S] [STEPS]
# Writes OUT/ckpt/{plain,robust}/ (checkpoints), OUT/ckpt/train_log.csv, training_curves.png,
# OUT/grid_{plain,robust}.json (accuracy per task x configuration on 60 val requests per task).
# STEPS (default 0 = fit to TIME_BUDGET_S) repeats a recorded schedule exactly.
set -euo pipefail
OUT=${1:?usage: train_small_model.sh OUT [TIME_BUDGET_S] [STEPS]}
BUDGET=${2:-380}
STEPS=${3:-0}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
$PY -m experiments.make_suite --out "$OUT/suite" --seed 0 --per-task 100 --splits val --overwrite
$PY -m experiments.train_model --suite "$OUT/suite" --out "$OUT/ckpt" --device cuda --time-budget "$BUDGET" \
    --steps "$STEPS" --overwrite
for r in plain robust; do
  $PY -m experiments.eval_model_grid --model "$OUT/ckpt/$r" --requests "$OUT/suite/val.jsonl" \
      --out "$OUT/grid_$r.json" --per-task 60 --device cuda --max-new-tokens 24 \
      --configs "p=1,top_k=4|6|8,blocks=12|14|16"
done
