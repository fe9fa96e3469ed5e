#!/usr/bin/env bash
# Rebuild the committed default model from nothing on one GPU, its cache, and the comparison with the committed cache.
#   bash benchmarks/gpu/reproduce_default.sh WORK          # the next piece of work, then stop
#   bash benchmarks/gpu/reproduce_default.sh WORK --status # what is done, what comes next, and its time on one GPU
#   bash benchmarks/gpu/reproduce_default.sh WORK --travel # the paths under WORK a fresh machine needs to go on
#   bash benchmarks/gpu/reproduce_default.sh WORK --travel-to DEST  # those paths alone as a new WORK, to carry
#   bash benchmarks/gpu/reproduce_default.sh WORK --seed STAGE DIR  # start the chain after STAGE, from DIR's weights
# The committed checkpoint (molmoe-small-suite-v12's, run22f) is the end of a chain of training runs, each starting from
# the one before (benchmarks/RESULTS.md, the ninth to fourteenth H200 runs, which end in the earlier default v7 (run14),
# then the print-supervised cycles of the nineteenth to twenty-second runs; the settings below are those runs' own, the
# later ones as their train_config.json files recorded them). Three stages were cut by a time limit where the next stage took over
# from their weights; STOP_AT_STEP cuts them at the same steps on any machine.
# Each call does one piece and returns: a training stage, or the part of it that fits STOP_AFTER seconds (default 470;
# the next call on the same machine resumes it), then the cache build (resumable the same way), which the comparison
# follows in the same call (report_live_cache --against the committed cache: every task's full-configuration score
# within 2 points).
# CALL_SECONDS=N (default 0: one piece per call) keeps taking pieces until the call's N seconds would not hold the next:
# a training piece gets what is left less PIECE_OVERHEAD seconds (default 50: process start, suite, model
# set-up outside the trainer's clock, and the stage's packing after it; 19-33 s a piece in the five pieces of
# benchmarks/logs/h100_chain14_call*.log) in place of STOP_AFTER, TOKENIZER_OVERHEAD (20) less for run9's first piece,
# which writes the suite and trains the tokenizer (58 s outside the trainer's clock in benchmarks/logs/h200_full_call1.log),
# and none starts below MIN_PIECE (60) seconds; the build only with BUILD_SECONDS (450) left. A stage cut by the
# call's end resumes in the next call on the same machine. END_WITH=STAGE ends the call once STAGE is done, nothing
# after it started: a session's last call ends on a stage's end (`--status` times each stage), since a stage cut by
# the session's end starts over on the next machine.
# Each finished stage's val figures are printed next to the original run's (benchmarks/reproduction_check.py; also in
# WORK/chain/STAGE/reproduction_check.json), so a stage that drifts shows before the hour is spent.
# Finished stages stay in WORK/chain/STAGE/plain: a later machine continues from the last one when WORK/chain travels
# (a stage starts from the one before it only: the earlier stages' plain/ folders can stay behind, their DONE markers
# must travel). The stage in progress is named in WORK/current_stage, outside chain/, so that a chain/ copied onto the
# machine that holds a part-trained stage (WORK/ckpt) leaves its resume intact.
# The stages at batch 64 train eager (COMPILE=0 of train_small_model.sh): on one H200 a compiled step was slower than
# an eager one at that batch (benchmarks/RESULTS.md "Where a training step's time goes"); the originals were compiled,
# which changes rounding only. CHANNELS_LAST=1 runs every stage's crop stem in channels-last memory format
# (train_small_model.sh CHANNELS_LAST; the same function, other kernels), for when bench_small_model finds it faster.
# KEEP=DIR (default ~/.cache/molmoe-gym/reproduce_default; KEEP= turns it off) keeps on the machine a copy of what
# each call finished, under the WORK's line id (WORK/line_id, made once and carried with the WORK): every finished
# stage (the weights of the last one only) and a part-trained stage's state with the suite it resumes on. A call whose
# WORK is an older copy of the same line (one carried onto the machine again after a call there went further) takes
# those back from the keep first and says so, rather than training them again; a WORK of another line, or a fresh
# one, takes nothing.
# PACK_TO=DIR also writes each stage as it finishes as DIR/STAGE.tar.part00, 01, ... (pieces of at most 15 MiB, for a
# machine whose results come back in size-limited files); `cat DIR/STAGE.tar.part* | tar xf - -C WORK` restores it;
# the final comparison's reproduction.json (and with CHECK=score the full_scores.json it read) is copied there too,
# also when a task misses the 2 points (the call then exits 1, as the comparison does).
# --seed STAGE DIR (a fresh WORK only): DIR, the checkpoint STAGE ended with, becomes WORK/chain/STAGE/plain, and STAGE
# and every stage before it are marked done and SEEDED (not trained here), so the calls after it train only the later
# stages, then build and compare: a partial reproduction that fits one session's device time. The SEEDED marker names
# DIR and, where DIR is a stage of another WORK's chain, how that stage got its weights (trained there, from nothing
# or from that chain's own seed; or seeded there itself), so a line retrained across several WORKs keeps its origin.
# The twelfth run's weights are in git as the default of that time (molmoe-small-suite-v5):
#   mkdir -p runs/v5 && git archive ca07612 cache/default/molmoe_small_suite_model | tar x -C runs/v5
#   bash benchmarks/gpu/reproduce_default.sh runs/repro --seed run12 runs/v5/cache/default/molmoe_small_suite_model
# CHECK=score (default CHECK=build) ends the chain with the last stage's checkpoint scored at the full configuration on
# the cache's 6,000 requests (experiments.eval_model_grid, ≈ 2 minutes where the build takes ≈ 6) and those per-task
# scores compared with the committed cache's (benchmarks.reproduction_check --grid): the training half of the bar
# alone. The build half, the committed checkpoint rebuilt into the committed cache, was checked on its own (RESULTS,
# "The one-GPU launch on an H100, finished": every task within 0.0 points). SCORE_SECONDS (120) as BUILD_SECONDS:
# the scoring took 66 and 75 s on an H100, 89 s with its process's start (benchmarks/logs/h100_reproduce_seg12_call3.log).
# UNTIL=STAGE (default run22f, the default's) ends the chain after STAGE: its checkpoint is built or scored, and compared
# with AGAINST=CACHE, which a stage other than run22f and run14 (v7, cache/candidates/molmoe_small_suite_v7.h5) must
# name: the committed cache of that stage's time (the same 6,000 requests), e.g.
#   git archive 54ecd1e cache/default/molmoe_small_suite.h5 | tar x -C runs/v3   # run10's (molmoe-small-suite-v3)
#   git archive 87264d1 cache/default/molmoe_small_suite.h5 | tar x -C runs/v4   # run11b's (v4)
#   git archive ca07612 cache/default/molmoe_small_suite.h5 | tar x -C runs/v5   # run12's (v5); run14's (v7) is in cache/candidates/
# With --seed, one segment of the chain between two committed defaults is checked on its own, e.g. run12 from v4's
# weights (`--seed run11b`) against v5's cache: a session's device time each, where the whole chain needs three.
# The stages after run14 are print-supervised cycles (the print loss on, the language model at 0.3;
# benchmarks/gpu/print_lm_cycle.sh); the last, run22f, is the default's checkpoint: run19u-run19y, the nineteenth run's
# four (their end has no cache: the segment is checked with CHECK=score against its own full-configuration scores of
# the cache's requests, float32 on a CPU where the chain scores in bf16 on the GPU), run20a, the twentieth run's (its
# checkpoint and cache molmoe-small-suite-v10 are in git at a3df153), and run21b-run21d, the twenty-first run's three:
# run21c ends in the candidate cache/candidates/molmoe_small_suite_run21 and its cache molmoe_small_suite_v11.h5,
# run21d goes on from it (not built: checked with CHECK=score AGAINST=benchmarks/logs/run21_d_test1000_cpu.json; its
# weights, the seed of run22e-run22f: git archive 0ebafc9 cache/candidates/molmoe_small_suite_run21d), and
# run22e-run22f, the twenty-second run's two with the chart mixes (synth_chart_bind beside synth_chart): run22f ends in
# the default, cache/default/molmoe_small_suite_model and its cache molmoe_small_suite.h5 (v12; the default AGAINST; or
# CHECK=score AGAINST=benchmarks/logs/run22_f_test1000_cpu.json, its float32 scores of the same requests), e.g.
#   CHECK=score UNTIL=run19y AGAINST=benchmarks/logs/run19_y_test1000_cpu.json \
#       bash benchmarks/gpu/reproduce_default.sh runs/repro --seed run14 cache/candidates/molmoe_small_suite_run14
#   UNTIL=run21c AGAINST=cache/candidates/molmoe_small_suite_v11.h5 bash benchmarks/gpu/reproduce_default.sh runs/r21 \
#       --seed run20a DIR   # DIR: the twentieth run's cycle, git archive a3df153 cache/candidates/molmoe_small_suite_run20
# An AGAINST that is a grid JSON needs CHECK=score.
# Device time: ≈ 50 minutes of training on one H200 (run9 compiled at batch 128, the rest eager at 64) and ≈ 5 of building;
# run19u-run19y ≈ 23 more minutes of one H100, run20a ≈ 6, run21b-run21d ≈ 19, run22e-run22f ≈ 13.
set -euo pipefail
W=${1:?usage: reproduce_default.sh WORK [--status | --travel | --travel-to DEST | --seed STAGE DIR]}
PY=${PYTHON:-python3}
KEEP=${KEEP-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/molmoe-gym/reproduce_default}
STOP_AFTER=${STOP_AFTER:-470}
CALL_SECONDS=${CALL_SECONDS:-0}
PIECE_OVERHEAD=${PIECE_OVERHEAD:-50}
TOKENIZER_OVERHEAD=${TOKENIZER_OVERHEAD:-20}  # more for run9's first piece, which trains the tokenizer
MIN_PIECE=${MIN_PIECE:-60}
BUILD_SECONDS=${BUILD_SECONDS:-450}
SCORE_SECONDS=${SCORE_SECONDS:-120}
RATE64=${RATE64:-5.4}     # --status's planning rates: steps/s at batch 64 and 128, and a stage's set-up in s
# (rates vary with the stage and the machine: on H100s run11a and run11b ran at 5.0-7.4 steps/s,
# benchmarks/logs/h100_full_call{4,5}.log and h100_reproduce_seg11_call*.log, and the stages from run12 on, whose mix
# adds synth_read and splits digits, at 5.4 over 33 pieces on H100s and H200s alike, 4.0-6.6 each,
# h100_full_call{6,7}.log, h100_reproduce_seg*_call*.log, h100_reproduce_seeded_call*.log, h{100,200}_chain14_call*.log)
RATE128=${RATE128:-3.8}
STAGE_SETUP=${STAGE_SETUP:-30}
# --status with SESSION_SECONDS=N also plans a session of N device-seconds: SESSION_START of them go to the machine's
# start and the transfers (≈ 130-150 s in the sessions of benchmarks/logs/h200_full_call*.log and h100_full_call*.log),
# CALL_OUTSIDE to each call's own start, and the calls run CALL_SECONDS each (560 when unset), the pieces as above.
# N is the device time left once a machine is got: a request that finds none has cost 15-180 s (466 s in all before
# benchmarks/logs/h100_full_call6.log), so plan again with what is left before choosing the last call's END_WITH.
SESSION_SECONDS=${SESSION_SECONDS:-0}
SESSION_START=${SESSION_START:-130}
CALL_OUTSIDE=${CALL_OUTSIDE:-10}
CHECK=${CHECK:-build}
UNTIL=${UNTIL:-run22f}
AGAINST=${AGAINST:-}
case $CHECK in
  build) CHECKED=$W/default_cache.h5; CHECK_SECONDS=$BUILD_SECONDS; CHECK_NAME=build ;;
  score) CHECKED=$W/full_scores.json; CHECK_SECONDS=$SCORE_SECONDS; CHECK_NAME="full-configuration scoring" ;;
  *) echo "reproduce_default.sh: CHECK must be build or score, got $CHECK" >&2; exit 2 ;;
esac
PACK_TO=${PACK_TO:-}
HERE=$(cd "$(dirname "$0")" && pwd)
STAGES=(run9 run10 run11a run11b run12 run13a run13b run14 run19u run19w run19x run19y run20a run21b run21c run21d run22e run22f)
MIX9="easy_vqa=0.08 synth_text=0.16 synth_doc=0.16 synth_chart=0.16 synth_count=0.12 synth_diagram=0.12 synth_read=0.20"
MIX10="easy_vqa=0.05 synth_text=0.16 synth_doc=0.14 synth_chart=0.14 synth_count=0.10 synth_diagram=0.10 synth_read=0.06 synth_words=0.25"
MIX11="easy_vqa=0.04 synth_text=0.14 synth_doc=0.22 synth_chart=0.20 synth_count=0.08 synth_diagram=0.08 synth_read=0.04 synth_words=0.20"
MIX12="easy_vqa=0.03 synth_text=0.11 synth_doc=0.22 synth_chart=0.20 synth_count=0.08 synth_diagram=0.06 synth_read=0.12 synth_words=0.18"
MIX13="easy_vqa=0.03 synth_text=0.11 synth_doc=0.22 synth_chart=0.20 synth_count=0.08 synth_diagram=0.06 synth_read=0.05 synth_words=0.10 synth_digits=0.15"
MIXP="easy_vqa=0.03 synth_text=0.08 synth_doc=0.22 synth_chart=0.18 synth_count=0.08 synth_diagram=0.05 synth_read=0.03 synth_words=0.08 synth_digits=0.05 synth_numbers=0.20"
# the twenty-second run's chart mixes: the binding questions beside the charts (run22e), then the charts at 0.35 (run22f)
MIXB1="easy_vqa=0.03 synth_text=0.07 synth_doc=0.17 synth_chart=0.20 synth_chart_bind=0.20 synth_count=0.08 synth_diagram=0.05 synth_read=0.02 synth_words=0.06 synth_digits=0.02 synth_numbers=0.10"
MIXB2="easy_vqa=0.02 synth_text=0.07 synth_doc=0.14 synth_chart=0.35 synth_chart_bind=0.15 synth_count=0.08 synth_diagram=0.05 synth_read=0.01 synth_words=0.04 synth_digits=0.01 synth_numbers=0.08"

# stage settings: FROM (the stage whose weights it starts from), STEPS (its schedule), STOP_AT (0: the whole
# schedule), LR, BATCH, REUSE, MIX, FIRST (the train stream's first example), DIGITS (one token per digit), COMPILE,
# and the recipe: LRS (the per-module rates), WP (the word-presence loss's weight), PRINT (the print loss's)
stage() {
  FROM=; STOP_AT=0; BATCH=64; REUSE=2; FIRST=0; DIGITS=; COMPILE=0; LRS="lm.=0.1 connector.=0.1"; WP=0.5; PRINT=0
  case $1 in
    run9)   STEPS=3000; LR=2e-3; BATCH=128; REUSE=4; MIX=$MIX9; COMPILE=1 ;;
    run10)  FROM=run9; STEPS=3186; LR=1e-3; MIX=$MIX10 ;;
    run11a) FROM=run10; STEPS=3220; STOP_AT=2376; LR=1e-3; MIX=$MIX11 ;;
    run11b) FROM=run11a; STEPS=900; LR=5e-4; MIX=$MIX11 ;;
    run12)  FROM=run11b; STEPS=4600; LR=7e-4; MIX=$MIX12; FIRST=1000000; DIGITS=1 ;;
    run13a) FROM=run12; STEPS=4600; STOP_AT=2539; LR=7e-4; MIX=$MIX13; FIRST=1200000; DIGITS=1 ;;
    run13b) FROM=run13a; STEPS=1400; STOP_AT=1292; LR=3.5e-4; MIX=$MIX13; FIRST=1400000; DIGITS=1 ;;
    run14)  FROM=run13b; STEPS=1800; LR=3.5e-4; MIX=$MIX13; FIRST=1500000; DIGITS=1 ;;
    run19u|run19w|run19x|run19y|run20a|run21b|run21c|run21d|run22e|run22f)
            LR=3.5e-4; MIX=$MIXP; DIGITS=1; LRS="lm.=0.3 connector.=0.3"; WP=0; PRINT=1
            case $1 in
              run19u) FROM=run14; STEPS=1745; FIRST=2400000 ;;
              run19w) FROM=run19u; STEPS=1725; FIRST=2460000 ;;
              run19x) FROM=run19w; STEPS=1732; FIRST=2520000 ;;
              run19y) FROM=run19x; STEPS=1580; FIRST=2580000 ;;
              run20a) FROM=run19y; STEPS=1677; FIRST=2640000 ;;
              run21b) FROM=run20a; STEPS=2108; FIRST=2700000 ;;
              run21c) FROM=run21b; STEPS=2385; FIRST=2767456 ;;
              run21d) FROM=run21c; STEPS=2037; FIRST=2843776 ;;
              run22e) FROM=run21d; STEPS=2277; FIRST=2908960; MIX=$MIXB1 ;;
              run22f) FROM=run22e; STEPS=1966; FIRST=2981824; MIX=$MIXB2 ;;
            esac ;;
    *) echo "reproduce_default.sh: unknown stage $1" >&2; exit 2 ;;
  esac
}

# the first stage up to UNTIL that is not done; nothing when the chain is trained
next_stage() {
  for s in "${STAGES[@]}"; do
    [ -f "$W/chain/$s/DONE" ] || { echo "$s"; return; }
    [ "$s" = "$UNTIL" ] && return
  done
}

# "stopped" when the last training call in WORK/ckpt stopped by time (a resumable part), else "finished"
last_call() {
  "$PY" -c 'import json, sys; s = json.load(open(sys.argv[1])); print("stopped" if s.get("stopped_by_time") else "finished")' \
    "$W/ckpt/train_summary.json"
}

# WORK/line_id names the line of training a WORK holds, so that the keep (KEEP) serves only copies of the same line
new_line_id() {
  [ -f "$W/line_id" ] && return 0
  mkdir -p "$W"
  od -An -N8 -tx1 /dev/urandom | tr -d ' \n' > "$W/line_id"
}

( stage "$UNTIL" ) || { echo "reproduce_default.sh: UNTIL must be a stage" >&2; exit 2; }
END_WITH=${END_WITH:-}
[ -z "$END_WITH" ] || ( stage "$END_WITH" ) || { echo "reproduce_default.sh: END_WITH must be a stage" >&2; exit 2; }
if [ "${2:-}" = --seed ]; then
  SEED=${3:?usage: reproduce_default.sh WORK --seed STAGE DIR}
  DIR=${4:?usage: reproduce_default.sh WORK --seed STAGE DIR}
  stage "$SEED"  # (an unknown stage is refused)
  if [ ! -f "$DIR/config.json" ]; then
    echo "reproduce_default.sh: --seed: $DIR is not a checkpoint (no config.json)" >&2; exit 2
  fi
  if [ -n "$(ls "$W"/chain/*/DONE 2>/dev/null)" ] || [ -f "$W/current_stage" ]; then
    echo "reproduce_default.sh: --seed: $W already holds stages; seed a fresh WORK (nothing was changed)" >&2; exit 2
  fi
  # DIR a stage of another WORK's chain (WORK2/chain/STAGE/plain): where its weights came from goes into the marker
  origin=
  if [ -f "$DIR/../SEEDED" ]; then
    origin=", itself $(head -1 "$DIR/../SEEDED")"
  elif [ -f "$DIR/../DONE" ]; then
    up=$(cat "$DIR"/../../*/SEEDED 2>/dev/null | sort -u | paste -sd';' - || true)
    origin=", trained there ${up:+in a chain seeded with }${up:-from nothing}"
  fi
  new_line_id
  for s in "${STAGES[@]}"; do
    mkdir -p "$W/chain/$s"
    if [ "$s" = "$SEED" ]; then cp -r "$DIR" "$W/chain/$s/plain"; fi
    echo "weights of $SEED from $DIR$origin" > "$W/chain/$s/SEEDED"
    touch "$W/chain/$s/DONE"
    [ "$s" = "$SEED" ] && break
  done
  echo "[reproduce_default] seeded: the stages up to $SEED are marked done, $SEED's weights are $DIR's; the next call trains the stage after it"
  exit 0
fi
mkdir -p "$W/chain"
if [ "${2:-}" = --status ]; then
  # Each stage left, timed at the rates the chain's stages have run at on one H100 or H200 (RESULTS, "Reproducing the
  # default from nothing" and after: 5.2-6.5 steps/s at batch 64, 3.5-4.1 at run9's 128) plus its set-up, and the sum
  # to it, so that a session's last call can be planned to end where a stage ends: a stage cut by the session's end
  # starts over on the next machine (its optimiser state, ≈ 190 MB, does not fit a carry).
  beyond= total=0 todo=() todo_secs=()
  for s in "${STAGES[@]}"; do
    stage "$s"
    state="to do"; [ -f "$W/chain/$s/DONE" ] && state=done
    [ -n "$beyond" ] && [ "$state" != done ] && state="not in this chain (UNTIL=$UNTIL)"
    [ "$s" = "$UNTIL" ] && beyond=1
    [ -f "$W/chain/$s/SEEDED" ] && state="seeded (not trained here)"
    [ "$(cat "$W/current_stage" 2>/dev/null)" = "$s" ] && [ "$state" != done ] && state="in progress"
    cut=; [ "$STOP_AT" != 0 ] && cut=", cut at step $STOP_AT"
    eta=
    if [ "$state" = "to do" ] || [ "$state" = "in progress" ]; then
      rate=$RATE64; [ "$BATCH" = 128 ] && rate=$RATE128
      secs=$(awk -v n="$([ "$STOP_AT" != 0 ] && echo "$STOP_AT" || echo "$STEPS")" -v r="$rate" -v o="$STAGE_SETUP" \
             'BEGIN { printf "%d", n / r + o + 0.5 }')
      total=$(( total + secs ))
      todo+=("$s"); todo_secs+=("$secs")
      since=; [ "$state" = "in progress" ] && since=" from its start"
      eta=" ≈ $secs s$since at $rate steps/s, $total s to its end"
    fi
    echo "$s: $state (from ${FROM:-nothing}, $STEPS steps$cut, lr $LR)$eta"
  done
  [ -f "$W/default_cache.h5" ] && echo "cache: built ($W/default_cache.h5)" || echo "cache: to do"
  [ "$CHECK" = score ] && { [ -f "$CHECKED" ] && echo "full-configuration scores: done ($CHECKED)" || echo "full-configuration scores: to do"; }
  [ ! -f "$CHECKED" ] && echo "left: ≈ $(( total + CHECK_SECONDS )) s of one GPU (stages $total s, the $CHECK_NAME $CHECK_SECONDS s; RATE64=$RATE64 RATE128=$RATE128 STAGE_SETUP=$STAGE_SETUP)"
  if [ "$SESSION_SECONDS" -gt 0 ] && [ ${#todo[@]} -gt 0 ]; then
    # the calls of one session, piece by piece as the loop below takes them (a stage in progress counted from its
    # start: its state may not be on the session's machine); the last stage that finishes is the one to END_WITH
    per_call=$CALL_SECONDS; [ "$per_call" -gt 0 ] || per_call=560
    avail=$(( SESSION_SECONDS - SESSION_START )) i=0 rem=${todo_secs[0]} ends= calls=0 ends_calls=0
    while (( i < ${#todo[@]} )); do
      call=$per_call; (( avail - CALL_OUTSIDE < call )) && call=$(( avail - CALL_OUTSIDE ))
      (( call >= MIN_PIECE + PIECE_OVERHEAD )) || break
      avail=$(( avail - call - CALL_OUTSIDE )) calls=$(( calls + 1 )) left=$call
      while (( i < ${#todo[@]} && left - PIECE_OVERHEAD >= MIN_PIECE )); do
        if (( rem > left - PIECE_OVERHEAD )); then rem=$(( rem - left + PIECE_OVERHEAD )); break; fi
        left=$(( left - rem - PIECE_OVERHEAD )) ends=${todo[i]} ends_calls=$calls i=$(( i + 1 )) rem=${todo_secs[i]:-0}
      done
    done
    if [ -n "$ends" ]; then
      echo "a session of $SESSION_SECONDS s ($SESSION_START s the machine's start and transfers, calls of $per_call s and $CALL_OUTSIDE s each): $ends_calls calls end on $ends (END_WITH=$ends)"
    else
      echo "a session of $SESSION_SECONDS s ($SESSION_START s the machine's start and transfers, calls of $per_call s and $CALL_OUTSIDE s each): no stage finishes (${todo[0]} needs ≈ ${todo_secs[0]} s)"
    fi
  fi
  exit 0
fi
# what a fresh machine needs to take the chain on, one path a line: every finished stage's DONE marker and the last
# finished stage whole (the next stage starts from its plain/), and the built cache (the comparison reads it)
travel_paths() {
  local s last=
  for s in "${STAGES[@]}"; do [ -f "$W/chain/$s/DONE" ] && last=$s; done
  for s in "${STAGES[@]}"; do
    [ -f "$W/chain/$s/DONE" ] || continue
    if [ "$s" = "$last" ]; then echo "$W/chain/$s"; continue; fi
    echo "$W/chain/$s/DONE"
    [ -f "$W/chain/$s/SEEDED" ] && echo "$W/chain/$s/SEEDED"
  done
  [ -f "$W/default_cache.h5" ] && echo "$W/default_cache.h5"
  [ -f "$W/full_scores.json" ] && echo "$W/full_scores.json"
  [ -f "$W/line_id" ] && echo "$W/line_id"
  return 0
}
if [ "${2:-}" = --travel ]; then
  travel_paths
  exit 0
fi
# --travel-to DEST: a new WORK holding only those paths (hard links where DEST shares WORK's file system), so that one
# carried folder takes the chain on where WORK, with every finished stage's weights (32 MB each), would not fit
if [ "${2:-}" = --travel-to ]; then
  D=${3:?usage: reproduce_default.sh WORK --travel-to DEST}
  [ -e "$D" ] && { echo "reproduce_default.sh: --travel-to $D: it exists (a WORK is never overwritten; nothing was done)" >&2; exit 2; }
  new_line_id  # WORK and the copy are one line: a machine's keep serves the copy what it finished from it
  while read -r p; do
    rel=${p#"$W"/}
    mkdir -p "$D/$(dirname "$rel")"
    # a copy where links cannot cross file systems; a part-linked folder goes first, or cp would copy into it
    cp -al "$p" "$D/$rel" 2>/dev/null || { rm -rf "${D:?}/$rel"; cp -a "$p" "$D/$rel"; }
  done < <(travel_paths)
  S=$(next_stage)
  echo "$D: $(du -sh "$D" | cut -f1), what a fresh machine needs to go on from $W (next: ${S:-the $CHECK_NAME})"
  exit 0
fi

# whether stage $1's training resumes from WORK/ckpt (a piece of it stopped by time here) rather than starting over
resumes() {
  [ "$(cat "$W/current_stage" 2>/dev/null)" = "$1" ] && [ -f "$W/ckpt/train_state.pt" ] && [ "$(last_call)" = stopped ]
}

# the keep: what this machine finished of WORK's line, in KEEP/LINE_ID (chain/STAGE as in WORK, ckpt/ with STAGE)
kept() { echo "$KEEP/$(cat "$W/line_id")"; }
# (a keep that cannot be written is reported and left: the call's own work, and its packing, go on without it)
copy_over() {  # $1 copied to $2 in place of what $2 held, through $2.part, so that a copy cut short replaces nothing
  rm -rf "$2.part" && cp -a "$1" "$2.part" && rm -rf "$2" && mv "$2.part" "$2"
}
keep_stage() {  # stage $1 finished: keep it whole, and only the markers of the stages before it
  [ -n "$KEEP" ] || return 0
  local K s; K=$(kept)
  if mkdir -p "$K/chain" 2>/dev/null && rm -rf "$K/ckpt" && copy_over "$W/chain/$1" "$K/chain/$1"; then
    for s in "${STAGES[@]}"; do [ "$s" = "$1" ] && break; rm -rf "$K/chain/$s/plain"; done
  else
    echo "[reproduce_default] (stage $1 could not be kept in $K; going on without the keep)"
  fi
}
keep_part() {  # stage $1 stopped by time: keep its state (a copy: the trainer rewrites its files in place), and the
  [ -n "$KEEP" ] || return 0  # suite it reads on resuming (the same every stage: make_suite --seed 0)
  local K; K=$(kept)
  # (STAGE is written after the copy: a state cut short before it is never taken back)
  if mkdir -p "$K" 2>/dev/null && { [ -f "$K/suite/manifest.json" ] || copy_over "$W/suite" "$K/suite"; } \
      && copy_over "$W/ckpt" "$K/ckpt" && echo "$1" > "$K/ckpt/STAGE"; then
    return 0
  fi
  echo "[reproduce_default] (stage $1's part-trained state could not be kept in $K; going on without the keep)"
}
# before a call's work: the stages, and a part-trained stage's state, that the keep has and WORK lacks
restore_kept() {
  [ -n "$KEEP" ] || return 0
  local K s S got=; K=$(kept)
  [ -d "$K" ] || return 0
  for s in "${STAGES[@]}"; do
    if [ -f "$K/chain/$s/DONE" ] && [ ! -f "$W/chain/$s/DONE" ]; then
      copy_over "$K/chain/$s" "$W/chain/$s"; got="$got $s"
    fi
  done
  [ -z "$got" ] || echo "[reproduce_default] taken from this machine's keep ($K), finished here by an earlier call:$got"
  S=$(next_stage)
  if [ -n "$S" ] && [ "$(cat "$K/ckpt/STAGE" 2>/dev/null)" = "$S" ] && ! resumes "$S"; then
    [ -f "$W/suite/manifest.json" ] || copy_over "$K/suite" "$W/suite"
    copy_over "$K/ckpt" "$W/ckpt"; rm "$W/ckpt/STAGE"; echo "$S" > "$W/current_stage"
    echo "[reproduce_default] taken from this machine's keep: stage $S's part-trained state"
  fi
  return 0
}

# One piece of work: a training piece, the build or the scoring; nothing when only the comparison is left. (Called as
# a plain command, not in a condition, so that set -e stops the script when a piece fails.)
piece() {
  local S; S=$(next_stage)
  if [ -n "$S" ]; then
    stage "$S"  # the stages before it are done (next_stage takes the first that is not)
    RESUME=0
    if resumes "$S"; then RESUME=1; fi
    cut=; [ "$STOP_AT" != 0 ] && cut=", cut at step $STOP_AT"
    how=; [ $RESUME = 1 ] && how=", resumed"
    echo "[reproduce_default] stage $S ($STEPS steps$cut, lr $LR$how)"
    echo "$S" > "$W/current_stage"
    # the weights a stage starts from come from the finished stage before it; a resumed call takes its own state
    INIT=; [ $RESUME = 0 ] && [ -n "$FROM" ] && INIT="$W/chain/$FROM/plain"
    env PATCH_STEM=hybrid WORD_PRESENCE=$WP WORD_PRESENCE_SITES="stem tokens" CAPTION_RATE=0.5 \
        LR_SCALE="$LRS" SKIP_GRID=1 PRINT_LOSS=$PRINT PRINT_SITES=tokens BATCH=$BATCH REUSE=$REUSE LR=$LR COMPILE=$COMPILE \
        CHANNELS_LAST="${CHANNELS_LAST:-0}" \
        TASK_WEIGHTS="$MIX" FIRST_EXAMPLE=$FIRST SPLIT_DIGITS=$DIGITS STOP_AFTER="$PIECE_STOP_AFTER" STOP_AT_STEP=$STOP_AT \
        RESUME=$RESUME INIT_FROM="$INIT" PYTHON="$PY" \
        bash "$HERE/train_small_model.sh" "$W" 960 "$STEPS"
    if [ "$(last_call)" = stopped ]; then
      keep_part "$S"
      echo "[reproduce_default] stage $S stopped by time: run the same command again on this machine to resume it"
      return 0
    fi
    rm -rf "$W/chain/$S"
    mkdir -p "$W/chain/$S"
    cp -r "$W/ckpt/plain" "$W/chain/$S/plain"
    cp "$W/ckpt/train_summary.json" "$W/chain/$S/"
    touch "$W/chain/$S/DONE"
    echo "[reproduce_default] stage $S done: $W/chain/$S/plain"
    if [ -f "$W/ckpt/train_log.csv" ]; then  # the stage's figures next to the original run's (information only)
      cp "$W/ckpt/train_log.csv" "$W/chain/$S/"
      $PY -m benchmarks.reproduction_check --stage "$S" --log "$W/chain/$S/train_log.csv" \
          --json "$W/chain/$S/reproduction_check.json" || echo "[reproduce_default] (the check of stage $S failed; the stage stands)"
    fi
    keep_stage "$S"
    if [ -n "$PACK_TO" ]; then  # the finished stage as a tar in pieces of at most 15 MiB
      mkdir -p "$PACK_TO"
      tar cf - -C "$W" "chain/$S" | split -b 15M -d - "$PACK_TO/$S.tar.part"
      echo "[reproduce_default] stage $S packed: $PACK_TO/$S.tar.part*"
    fi
    return 0
  fi
  if [ ! -f "$CHECKED" ] && [ "$CHECK" = build ]; then
    bash "$HERE/build_default_cache.sh" "$W" "$W/chain/$UNTIL/plain" molmoe-small-suite-reproduced
    return 0
  fi
  if [ ! -f "$CHECKED" ]; then  # CHECK=score: the committed cache's requests (the build's suite), full configuration
    [ -f "$W/suite/test.jsonl" ] || $PY -m experiments.make_suite --out "$W/suite" --seed 0 --per-task 1000 --splits val test
    $PY -m experiments.eval_model_grid --model "$W/chain/$UNTIL/plain" --requests "$W/suite/test.jsonl" --per-task 1000 \
        --configs "tier=high,p=1,top_k=8,blocks=16" --max-new-tokens 16 --dense-decode --per-request --device cuda --out "$CHECKED"
    return 0
  fi
}

# seconds left of this call (CALL_SECONDS > 0), else a large number
left() { if [ "$CALL_SECONDS" -gt 0 ]; then echo $(( CALL_SECONDS - ($(date +%s) - T0) )); else echo 999999; fi; }

# the two committed caches a chain end has without naming one: the default's (run22f's) and v7's (run14's)
if [ -z "$AGAINST" ]; then
  case $UNTIL in
    run22f) AGAINST=cache/default/molmoe_small_suite.h5 ;;
    run14)  AGAINST=cache/candidates/molmoe_small_suite_v7.h5 ;;
    *) echo "reproduce_default.sh: UNTIL=$UNTIL needs AGAINST=CACHE, the committed cache of that stage's time (the default cache is run22f's, cache/candidates/molmoe_small_suite_v7.h5 run14's; nothing was run)" >&2
       exit 2 ;;
  esac
fi
[ -f "$AGAINST" ] || { echo "reproduce_default.sh: AGAINST=$AGAINST: no such cache (nothing was run)" >&2; exit 2; }
if [ "${AGAINST##*.}" = json ] && [ "$CHECK" != score ]; then
  echo "reproduce_default.sh: AGAINST=$AGAINST is a grid of scores, not a cache: it needs CHECK=score (nothing was run)" >&2
  exit 2
fi
if [ -z "$(next_stage)" ] && [ ! -d "$W/chain/$UNTIL/plain" ]; then
  echo "reproduce_default.sh: UNTIL=$UNTIL: its weights are not in $W (a stage before the seeded one?); nothing was run" >&2
  exit 2
fi
new_line_id
restore_kept
T0=$(date +%s)
while :; do
  if [ -n "$END_WITH" ] && [ -f "$W/chain/$END_WITH/DONE" ]; then
    echo "[reproduce_default] $END_WITH is done: this call ends here (END_WITH=$END_WITH; unset it to go on)"
    break
  fi
  L=$(left)
  S=$(next_stage)
  if [ -n "$S" ]; then
    PIECE_STOP_AFTER=$STOP_AFTER
    if [ "$CALL_SECONDS" -gt 0 ]; then
      PIECE_STOP_AFTER=$(( L - PIECE_OVERHEAD ))
      if [ "$S" = run9 ] && ! resumes run9; then
        PIECE_STOP_AFTER=$(( PIECE_STOP_AFTER - TOKENIZER_OVERHEAD ))
      fi
      if (( PIECE_STOP_AFTER < MIN_PIECE )); then
        echo "[reproduce_default] ${L} s left of this call: too little for a training piece; stopping here"
        break
      fi
    fi
  elif [ ! -f "$CHECKED" ] && [ "$CALL_SECONDS" -gt 0 ] && (( L < CHECK_SECONDS )); then
    echo "[reproduce_default] ${L} s left of this call: too little for the $CHECK_NAME (${CHECK^^}_SECONDS=$CHECK_SECONDS); stopping here"
    break
  fi
  piece
  # the comparison takes seconds: it follows, in the same call, the piece that finished the build or the scoring
  if [ -z "$(next_stage)" ] && [ -f "$CHECKED" ]; then
    # both comparisons exit 1 when a task is beyond the 2 points: the call still packs and reports, then exits so
    compared=0
    if [ "$CHECK" = build ]; then
      $PY -m benchmarks.report_live_cache --cache "$W/default_cache.h5" --against "$AGAINST" \
          --points 2 --json "$W/reproduction.json" || compared=$?
    else
      $PY -m benchmarks.reproduction_check --grid "$CHECKED" --against "$AGAINST" \
          --points 2 --json "$W/reproduction.json" || compared=$?
    fi
    if [ -n "$PACK_TO" ]; then  # the comparison, and the scores it read, come back with the stages (a cache stays)
      mkdir -p "$PACK_TO"
      cp "$W/reproduction.json" "$PACK_TO/" 2>/dev/null || true
      [ "$CHECK" = build ] || cp "$CHECKED" "$PACK_TO/"
      echo "[reproduce_default] the comparison copied to $PACK_TO"
    fi
    seeded=$(cat "$W"/chain/*/SEEDED 2>/dev/null | sort -u || true)
    [ -z "$seeded" ] || echo "[reproduce_default] a partial reproduction: $seeded (the stages up to it were not trained here)"
    [ "$compared" = 0 ] || exit "$compared"
    break
  fi
  [ "$CALL_SECONDS" -gt 0 ] || break  # one piece per call
done
