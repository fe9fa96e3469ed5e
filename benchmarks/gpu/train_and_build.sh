#!/usr/bin/env bash
# The default cache from scratch on one GPU: suite -> train the small model -> knob grid -> build the
# live cache over all 225 configurations -> pack it. Two steps, each under ten minutes on one H200:
#   bash benchmarks/gpu/train_and_build.sh WORK [TIME_BUDGET_S] [STEPS]
set -euo pipefail
W=${1:?usage: train_and_build.sh WORK [TIME_BUDGET_S] [STEPS]}
HERE=$(dirname "$0")
bash "$HERE/train_small_model.sh" "$W" "${2:-390}" "${3:-0}"
bash "$HERE/build_default_cache.sh" "$W" "$W/ckpt/plain"
