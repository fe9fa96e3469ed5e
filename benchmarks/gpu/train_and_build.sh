#!/usr/bin/env bash
# The default cache from scratch on one GPU: suite -> train the small model -> choose the recipe ->
# build the live cache over all 225 configurations -> pack it.
#   bash benchmarks/gpu/train_and_build.sh WORK [TIME_BUDGET_S] [STEPS]
# WORK/ckpt/{plain,robust}/ checkpoints, WORK/grid_*.json, WORK/chosen, WORK/cache_raw.h5,
# WORK/default_cache.h5 (packed). STEPS (default 0 = fit to TIME_BUDGET_S) repeats a recorded schedule.
set -euo pipefail
W=${1:?usage: train_and_build.sh WORK [TIME_BUDGET_S] [STEPS]}
BUDGET=${2:-270}
STEPS=${3:-0}
PY=${PYTHON:-python3}
mkdir -p "$W"
t0=$(date +%s)
$PY -m experiments.make_suite --out "$W/suite" --seed 0 --per-task 1000 --splits val test --overwrite
$PY -m experiments.train_model --suite "$W/suite" --out "$W/ckpt" --device cuda --time-budget "$BUDGET" \
    --steps "$STEPS" --overwrite
echo "[train_and_build] trained at $(( $(date +%s) - t0 )) s"
for r in plain robust; do
  $PY -m experiments.eval_model_grid --model "$W/ckpt/$r" --requests "$W/suite/val.jsonl" --out "$W/grid_$r.json" \
      --per-task 100 --device cuda --max-new-tokens 24 --dense-decode \
      --configs "tier=low|high,p=1,top_k=4|8,blocks=12|16"
done
CHOSEN=$($PY benchmarks/gpu/choose_recipe.py "$W/grid_plain.json" "$W/grid_robust.json")
echo "$CHOSEN" > "$W/chosen"
echo "[train_and_build] chose $CHOSEN at $(( $(date +%s) - t0 )) s"
$PY -m experiments.build_cache --model "$W/ckpt/$CHOSEN" --dataset "$W/suite/test.jsonl" --out "$W/cache_raw.h5" \
    --device cuda --engine shared-prefix --dense-decode --preprocess-threads 12 --batch-size 3000 \
    --chunk-requests 3000 --decode-group-gib 64 --max-new-tokens 24 --importance "$W/ckpt/$CHOSEN/importance.json" \
    --model-id "molmoe-small-suite-$CHOSEN" --no-progress --overwrite
echo "[train_and_build] built at $(( $(date +%s) - t0 )) s"
$PY -m cache.repack "$W/cache_raw.h5" "$W/default_cache.h5" --overwrite
echo "[train_and_build] done at $(( $(date +%s) - t0 )) s"
