#!/usr/bin/env bash
# Train the small model for the default cache on one GPU and look at its knob grid.
#   bash benchmarks/gpu/train_small_model.sh WORK [TIME_BUDGET_S] [STEPS]
# WORK/suite (val/test requests), WORK/ckpt/plain/ (checkpoint + importance.json), WORK/grid_plain.json.
# Settings from benchmarks/bench_small_model.py on one H200 (benchmarks/RESULTS.md): batch 512,
# compiled dense experts, each rendered example used 4 times (the pipeline renders ~1,000 examples/s).
# STEPS (default 0 = fit to TIME_BUDGET_S) repeats a recorded schedule; SKIP_GRID=1 skips the grid;
# INIT_FROM=CKPT starts from a checkpoint's weights (and its tokenizer) instead of from scratch;
# LR_SCALE sets learning-rate multipliers per module (train_model --lr-scale; default: the language model
# and connector at a tenth of the tower's rate, which a CPU run found lets the model learn to look,
# benchmarks/RESULTS.md "Third and fourth H200 runs"; LR_SCALE= trains every module at one rate);
# CAPTION_RATE (default 0.5) is the share of examples asked for their dense caption (train_model --caption-rate);
# PATCH_STEM (default linear) is the tower's patch embedding (train_model --patch-stem linear|conv|hybrid);
# WORD_PRESENCE (default 0: off) weighs the word-presence loss (train_model --word-presence, needs a conv/hybrid stem),
# read at WORD_PRESENCE_SITES (default "stem"; "stem tokens" adds the image tokens the language model receives).
# PRINT_LOSS (default 0: off) weighs the print-supervision loss (train_model --print-loss: the characters under each
# image token where the suite printed them), read at PRINT_SITES (default "tokens"; "stem tokens" adds the stem's).
# LR (default 2e-3) is the peak learning rate (train_model --lr; LR_SCALE multiplies it per module): a continuation
# through INIT_FROM restarts its schedule, and at the full peak rate it undoes part of what was learned
# (benchmarks/RESULTS.md "Ninth H200 run").
# FIRST_EXAMPLE (default 0) is the train stream's first example index (train_model --first-example): a continuation
# through INIT_FROM sets it past the examples the checkpoint was trained on.
# SPLIT_DIGITS=1 (any non-empty value) gives every digit a token of its own (train_model --split-digits; an INIT_FROM checkpoint's
# tokenizer keeps its ids, benchmarks/RESULTS.md "Twelfth H200 run").
# TASK_WEIGHTS (default: train_model's mix) sets the training mix (train_model --task-weights "TASK=W ...").
# MODEL_CONFIG (default: none) overrides sizes of MolmoeConfig.small for a new run (train_model --model-config
# "FIELD=VALUE ...", e.g. "vit_hidden=256 pool_head_dim=64 vit_mlp=1024" for a wider vision tower).
# COMPILE (default 1) torch.compiles the dense experts (train_model --compile); COMPILE=0 trains eager, which is the
# faster of the two at batch 64 (benchmarks/RESULTS.md "Where a training step's time goes").
# CHANNELS_LAST=1 (default 0) runs a crop stem (PATCH_STEM hybrid or fine) in channels-last memory format (train_model
# --channels-last; bench_small_model times it next to the default layout).
# WORKERS (default 15) is the number of data-loader workers that render the training stream (train_model --workers; two
# runs side by side on one 16-core machine take 7 each).
# BATCH (default 512) is the batch size; REUSE (default 4) the times each rendered example is trained on
# (train_model --reuse: what keeps a batch of 512 fed; at 128 the renderers keep up with 2, and repeats are memorised:
# benchmarks/RESULTS.md "Ninth H200 run"). One schedule over several GPU calls: give STOP_AFTER (seconds,
# train_model --stop-after) and either STEPS or, with STEPS=0, TIME_BUDGET_S = the training seconds of all calls
# together (the step count is fitted to it in the first call and saved) on the first call, then rerun the same
# command with RESUME=1 (train_model --resume: the suite, train_state.pt and the saved tokenizer in WORK are reused,
# the log continues; INIT_FROM left unset) until train_summary.json says "stopped_by_time": false.
# STOP_AT_STEP (default 0: never) stops the schedule at that step with a resumable state (train_model --stop-at-step):
# a schedule cut where an earlier run's STOP_AFTER cut it (e.g. the thirteenth run's 2,539 of 4,600), on any machine.
set -euo pipefail
W=${1:?usage: train_small_model.sh WORK [TIME_BUDGET_S] [STEPS]}
BUDGET=${2:-390}
STEPS=${3:-0}
LR_SCALE=${LR_SCALE-"lm.=0.1 connector.=0.1"}
CAPTION_RATE=${CAPTION_RATE:-0.5}
PATCH_STEM=${PATCH_STEM:-linear}
WORD_PRESENCE=${WORD_PRESENCE:-0}
WORD_PRESENCE_SITES=${WORD_PRESENCE_SITES:-stem}
PRINT_LOSS=${PRINT_LOSS:-0}
PRINT_SITES=${PRINT_SITES:-tokens}
BATCH=${BATCH:-512}
WORKERS=${WORKERS:-15}
COMPILE=${COMPILE:-1}
CHANNELS_LAST=${CHANNELS_LAST:-0}
LR=${LR:-2e-3}
REUSE=${REUSE:-4}
STOP_AFTER=${STOP_AFTER:-0}
STOP_AT_STEP=${STOP_AT_STEP:-0}
RESUME=${RESUME:-0}
FIRST_EXAMPLE=${FIRST_EXAMPLE:-0}
PY=${PYTHON:-python3}
mkdir -p "$W"
t0=$(date +%s)
if [ "$RESUME" = 1 ]; then
  # a fresh machine has no earlier call's state: refuse rather than start the schedule over from nothing
  for f in "$W/suite/manifest.json" "$W/ckpt/train_state.pt"; do
    [ -f "$f" ] || { echo "train_small_model.sh: RESUME=1 but $f is missing (the machine that ran the earlier call is gone?)" >&2; exit 2; }
  done
  MODE=--resume
else
  MODE=--overwrite
  $PY -m experiments.make_suite --out "$W/suite" --seed 0 --per-task 1000 --splits val test --overwrite
fi
$PY -m experiments.train_model --suite "$W/suite" --out "$W/ckpt" --device cuda --time-budget "$BUDGET" \
    --steps "$STEPS" --stop-after "$STOP_AFTER" --stop-at-step "$STOP_AT_STEP" --batch-size "$BATCH" --workers "$WORKERS" --lr "$LR" --reuse "$REUSE" $([ "$COMPILE" = 1 ] && echo --compile) $([ "$CHANNELS_LAST" = 1 ] && echo --channels-last) --recipes plain=0 --caption-rate "$CAPTION_RATE" --patch-stem "$PATCH_STEM" --word-presence "$WORD_PRESENCE" \
    --first-example "$FIRST_EXAMPLE" \
    --word-presence-sites $WORD_PRESENCE_SITES --print-loss "$PRINT_LOSS" --print-sites $PRINT_SITES $MODE \
    ${INIT_FROM:+--init-from "$INIT_FROM"} ${SPLIT_DIGITS:+--split-digits} ${LR_SCALE:+--lr-scale $LR_SCALE} ${TASK_WEIGHTS:+--task-weights $TASK_WEIGHTS} ${MODEL_CONFIG:+--model-config $MODEL_CONFIG}
echo "[train_small_model] trained at $(( $(date +%s) - t0 )) s"
[ "${SKIP_GRID:-0}" = 1 ] && exit 0  # the built cache holds the whole grid anyway
$PY -m experiments.eval_model_grid --model "$W/ckpt/plain" --requests "$W/suite/val.jsonl" --out "$W/grid_plain.json" \
    --per-task 100 --device cuda --max-new-tokens 24 --dense-decode \
    --configs "tier=low|medium|high,p=1,top_k=4|8,blocks=12|16"
echo "[train_small_model] done at $(( $(date +%s) - t0 )) s"
