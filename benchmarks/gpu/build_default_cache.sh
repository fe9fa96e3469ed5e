#!/usr/bin/env bash
# Build the default cache from a trained checkpoint on one GPU: all 225 configurations over the suite's
# 6,000 test requests, then pack it.
#   bash benchmarks/gpu/build_default_cache.sh WORK CKPT [MODEL_ID]
# WORK/suite must hold test.jsonl (train_small_model.sh writes it; make_suite --seed 0 remakes it).
# WORK/cache_raw.h5 (resumable: rerun to continue a killed build), WORK/default_cache.h5 (packed). DECODE_GROUP_GIB=N
# overrides the decode group size chosen from the GPU's memory.
set -euo pipefail
W=${1:?usage: build_default_cache.sh WORK CKPT [MODEL_ID]}
CKPT=${2:?usage: build_default_cache.sh WORK CKPT [MODEL_ID]}
MODEL_ID=${3:-molmoe-small-suite-$(basename "$CKPT")}
PY=${PYTHON:-python3}
t0=$(date +%s)
[ -f "$W/suite/test.jsonl" ] || $PY -m experiments.make_suite --out "$W/suite" --seed 0 --per-task 1000 --splits val test
# a decode group's KV memory: the committed cache's 64 GiB on a GPU of 120 GiB or more (the H200 it was built on), 40 %
# of the memory below that (an 80 GB H100 ran out of memory at 64 with batches of 500)
GIB=${DECODE_GROUP_GIB:-$($PY -c "import torch; c = torch.cuda.is_available(); t = torch.cuda.get_device_properties(0).total_memory / 2**30 if c else 120; print(64 if t >= 120 else int(0.4 * t))")}
RESUME=--overwrite
[ -f "$W/cache_raw.h5" ] && RESUME=--resume
$PY -m experiments.build_cache --model "$CKPT" --dataset "$W/suite/test.jsonl" --out "$W/cache_raw.h5" \
    --device cuda --engine shared-prefix --dense-decode --preprocess-threads 12 --batch-size 500 \
    --chunk-requests 2000 --decode-group-gib "$GIB" --max-new-tokens 16 --importance "$CKPT/importance.json" \
    --model-id "$MODEL_ID" --no-progress $RESUME
echo "[build_default_cache] built at $(( $(date +%s) - t0 )) s"
$PY -m cache.repack "$W/cache_raw.h5" "$W/default_cache.h5" --overwrite
echo "[build_default_cache] packed at $(( $(date +%s) - t0 )) s"
