#!/usr/bin/env bash
# The fast path's measurements on one GPU, in parts that each fit a 10-minute command.
#   bash benchmarks/gpu/fast_path.sh OUT PART        (PART 1, 2, 3, 4 or 5)
# PART 1: the kernel tests on the GPU, then the prefill: its lengths against their floors, the expert
#         forms, its kernel time by kind and the expert-GEMM tile sweep (OUT/fast_path_1.{json,log});
# PART 2: decode over the 25 (top-k, blocks) points and batching (OUT/fast_path_2.{json,log});
# PART 3: the remaining sections: the decode attention's tiles by batch rows, then the table ATTN_AB (JSON without
#         spaces; default: 4 warps at every batch size, the default before 2) against the default's, alternately, in
#         decode and batching, the decode kernels' sweep (and the router's two forms), transformers, vision,
#         correctness (the fused blocks' tests build their model on the CPU: they are not GPU tests);
# PART 4: the persistent decode step: its option sweep, the 25 points, the barriers and its correctness checks
#         (decode and persistent together took more than 10 minutes on an H100);
# PART 5: the decode step's variants in one shorter call: the PDL tests on the GPU, then decode at the four corners
#         and batching, each with the variants (bench_fast_path's DECODE_VARIANTS: the Triton GEMV, programmatic
#         dependent launch, the one-kernel and split-K routers, the last-arrival epilogues, and their combinations),
#         then one replayed step's kernel timeline (span, busy, idle per block) for the default and the plain launch.
# VARIANT=NAME (default: default, FusedLM's own defaults: PDL + the staged Triton GEMV + the router's top-k in the
# experts' kernel on Hopper) runs the sections with that
# decode form as if it were the default
# (bench_fast_path --decode-variant NAME, a name of DECODE_VARIANTS), its correctness checks included; VARIANT=best takes
# the variant that OUT/fast_path_5.json (an earlier part 5) found faster than the default at all four corners, if any.
# VARIANTS=a,b,... times only those variants beside the run's form (bench_fast_path --variants; default: cublas, the
# plain launch, and pdl_triton_gemv, the previous default; VARIANTS=all times every one, past 10 minutes in parts 2 and 5).
# A failing kernel test is reported and the measurements still run. Each part prints issue 15's bars for the sections it
# ran; every JSON is rewritten after each section, so a part cut short keeps what it measured.
set -euo pipefail
OUT=${1:?usage: fast_path.sh OUT PART}
PART=${2:?usage: fast_path.sh OUT PART}
PY=${PYTHON:-python3}
VARIANT=${VARIANT:-default}
VARIANTS=${VARIANTS:-cublas,pdl_triton_gemv}
ATTN_AB=${ATTN_AB:-'{"1":"c64_n64_w4_s3"}'}
mkdir -p "$OUT"
if [ "$VARIANT" = best ]; then
  VARIANT=$($PY -m benchmarks.bench_fast_path --best-variant-of "$OUT/fast_path_5.json")
  echo "[fast_path] VARIANT=best: $VARIANT (from $OUT/fast_path_5.json)"
fi
case "$PART" in
  1) { $PY -m pytest -q -x tests/test_prefill_moe.py tests/test_decode_kernels.py tests/test_persistent_decode.py tests/test_pdl.py || true; } 2>&1 \
       | tail -5 | tee "$OUT/fast_path_tests.log"
     SECTIONS=ceilings,prefill,prefill_kernels,experts ;;
  2) SECTIONS=ceilings,decode,batching ;;
  3) SECTIONS=ceilings,attention,attn_ab,kernels,hf,vision,correctness; EXTRA="--attn-ab $ATTN_AB --ab-rounds 2" ;;
  4) SECTIONS=ceilings,persistent ;;
  5) { $PY -m pytest -q -x tests/test_pdl.py || true; } 2>&1 | tail -5 | tee "$OUT/fast_path_pdl_tests.log"
     SECTIONS=ceilings,decode,batching,timeline; EXTRA="--decode-grid corners" ;;
  *) echo "PART must be 1, 2, 3, 4 or 5, got $PART" >&2; exit 2 ;;
esac
$PY -m benchmarks.bench_fast_path --sections "$SECTIONS" --decode-variant "$VARIANT" ${VARIANTS:+--variants "$VARIANTS"} ${EXTRA:-} \
  --out "$OUT/fast_path_$PART.json" 2>&1 | tee "$OUT/fast_path_$PART.log"
