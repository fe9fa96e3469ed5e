"""The fast-path benchmark's floors, bars and prefill profile, checked on the CPU.

The floors are arithmetic on the model's shape, so the MolmoE-1B figures below are counted by hand;
the decode floor must equal the byte count of the earlier GPU runs (committed in
benchmarks/logs/h200_bench_persistent_stage2.json). The expert sweep runs through Triton's CPU
interpreter on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.bench_fast_path import issue15_bars
from benchmarks.prefill_profile import attention_backends, by_kind, expert_rates, expert_sweep, kernel_kind
from benchmarks.roofline import Floor, LMShape, decode_floor, expert_floor, generate_floor, prefill_floor
from model_runtime.molmoe.config import MolmoeConfig
from model_runtime.profiler import build_random_model
from tests.kernel_testing import triton_ok

#: MolmoE-1B's language model in bf16; 50,304 LM-head rows (its embedding size)
MOLMOE = LMShape(d=2048, i=1024, e=64, h=16, hkv=16, hd=128, vocab=50304, elem=2)
FULL = (8,) * 16


def test_decode_floor_matches_the_byte_count_of_earlier_runs():
    assert decode_floor(MOLMOE, FULL, 1000).bytes == 2_488_795_136  # h200 stage-2 run, (8, 16) at 1,000 tokens
    # a skipped block (top-k 0) costs nothing; batch 8 reads the union of the rows' experts
    assert decode_floor(MOLMOE, (8,) * 12 + (0,) * 4, 1000).bytes < decode_floor(MOLMOE, FULL, 1000).bytes
    one, eight = decode_floor(MOLMOE, FULL, 1000), decode_floor(MOLMOE, FULL, 1000, batch=8)
    experts8 = 64 * (1 - (1 - 8 / 64) ** 8)
    assert eight.bytes - one.bytes == pytest.approx(16 * ((experts8 - 8) * 3 * 2048 * 1024 * 2 + 7 * 2 * 16 * 128 * 1000 * 2))


def test_prefill_floor_counted_by_hand():
    f = prefill_floor(MOLMOE, FULL, 1000)
    attn, router, expert = 4 * 2048 * 2048, 64 * 2048, 3 * 2048 * 1024
    per_block_bytes = (attn + router + 64 * expert) * 2 + 2 * 1000 * 16 * 128 * 2  # every expert is reached
    assert f.bytes == pytest.approx(16 * per_block_bytes + 50304 * 2048 * 2, rel=1e-12)
    per_block_flops = 2 * 1000 * (attn + router + 8 * expert) + 4 * 16 * 128 * (1000 * 1001 // 2)
    assert f.flops == 16 * per_block_flops + 2 * 50304 * 2048
    # the floor is the longer of the two times: bytes on an H200-like device, FLOPs on a slow matmul
    assert f.ms(4.0, 750.0) == pytest.approx(f.bytes / 4e12 * 1e3)
    assert f.ms(4.0, 100.0) == pytest.approx(f.flops / 100e12 * 1e3)
    assert f.report(4.0, 750.0)["floor_ms"] == f.ms(4.0, 750.0) and "floor_ms" not in f.report(None, None)


def test_expert_and_generate_floors():
    e = expert_floor(MOLMOE, 8, 1000)
    assert e.flops == 2 * 1000 * 8 * 3 * 2048 * 1024
    assert e.bytes == pytest.approx(64 * 3 * 2048 * 1024 * 2, rel=1e-12)
    assert expert_floor(MOLMOE, 8, 1).bytes == pytest.approx(8 * 3 * 2048 * 1024 * 2)
    g = generate_floor(MOLMOE, FULL, 1000, 4, batch=2, copy_tbps=4.0, matmul_tflops=750.0)
    steps = [decode_floor(MOLMOE, FULL, 1000 + j, 2) for j in range(3)]
    assert g["decode_floor_ms"] == pytest.approx(sum(s.ms(4.0, 750.0) for s in steps))
    assert g["floor_ms"] == pytest.approx(prefill_floor(MOLMOE, FULL, 1000, 2).ms(4.0, 750.0) + g["decode_floor_ms"])
    assert "floor_ms" not in generate_floor(MOLMOE, FULL, 10, 2)
    assert (Floor(1, 2) + Floor(3, 4)) == Floor(4, 6)


def test_shape_of_a_model():
    lm = build_random_model(MolmoeConfig.tiny(), device="cpu", dtype=torch.float32).lm
    s = LMShape.of(lm)
    cfg = MolmoeConfig.tiny()
    assert (s.d, s.i, s.e, s.elem) == (cfg.d_model, cfg.expert_hidden, cfg.num_experts, 4)
    assert s.vocab == lm.n_logits and s.h * s.hd == cfg.d_model


def test_bars_from_a_run():
    grid = [{"top_k": k, "blocks": b, "ms_per_token": 0.1 * b * (0.5 + k / 16), "x_floor": 1.2 + 0.01 * k}
            for k in (8, 4) for b in (16, 12)]
    res = {"decode": grid,
           "prefill": {"rows": [{"tokens": 1000, "k8b16_x_floor": 1.9}]},
           "prefill_kernels": {"sorted_gemm": {"experts": {"experts_x_copy_rate": 0.9}}, "sorted_tma": {"error": "x"}},
           "batching": {"k8b16": {"share_of_bound": 0.7, "share_of_bound_sorted": 0.82, "share_of_bound_pdl": 0.79,
                                  "batched_pdl_ms": 3.0}},
           "decode_variants": {"pdl": {"k8b16": {"ms_per_token": 1.0, "x_floor": 1.4},
                                       "k4b12": {"ms_per_token": 0.58, "x_floor": 1.6}, "ratio_k4b12_over_k8b16": 0.58},
                               "triton_gemv": {"error": "no GPU"}},
           "correctness": {"real_shape": [{"top_k": 8, "blocks": 12, "prompts": 8, "decode_err_ratio": 1.2,
                                           "tokens_equal": "32/32"},
                                          {"top_k": 4, "blocks": 12, "prompts": 8, "decode_err_ratio": 1.7,
                                           "tokens_equal": "31/32"},
                                          {"top_k": 8, "blocks": 16, "tokens_equal": "32/32"}]}}  # float32: no ratio
    bars = {b["bar"]: (b["value"], b["met"]) for b in issue15_bars(res, 1000)}
    assert bars["decode: worst of 4 points x floor <= 1.5"] == (pytest.approx(1.28), True)
    ratio = (0.1 * 12 * 0.75) / (0.1 * 16 * 1.0)
    assert bars["decode: (4, 12) / (8, 16) <= 0.60"] == (pytest.approx(ratio), ratio <= 0.60)
    assert bars["prefill 1000 tokens (8, 16) x floor <= 1.5"] == (1.9, False)
    assert bars["prefill expert GEMMs (sorted_gemm) >= 0.85 of the copy rate"] == (0.9, True)
    assert bars["batching 8 at (8, 16), pair kernels, >= 0.80 of the byte-bound speed-up"] == (0.7, False)
    assert bars["batching 8 at (8, 16), sorted experts, >= 0.80 of the byte-bound speed-up"] == (0.82, True)
    assert bars["batching 8 at (8, 16), pdl, >= 0.80 of the byte-bound speed-up"] == (0.79, False)
    assert bars["decode, pdl: worst of 2 corners x floor <= 1.5"] == (1.6, False)
    assert bars["decode, pdl: (4, 12) / (8, 16) <= 0.60"] == (0.58, True)
    ratio_bar = "correctness ({}, 12): decode logits' error vs float32 <= 1.5x the eager bf16 path's (means of 8 prompts)"
    assert bars[ratio_bar.format(8)] == (1.2, True) and bars[ratio_bar.format(4)] == (1.7, False)
    assert bars["correctness (4, 12): greedy tokens equal the eager bf16 path's"] == (31 / 32, False)
    # the failed TMA form and GEMV variant, the absent persistent section and the float32 row add none
    assert len(bars) == 13
    assert issue15_bars({"decode": {"error": "OOM"}}, 1000) == []


def test_kernel_kinds_of_real_kernel_names():
    # names from the H100 profile of a 1,000-token prefill (benchmarks/logs/h100_bench_fast_path.json)
    names = {"_grouped_gate_up_kernel": "experts gate/up", "_grouped_gate_up_tma_kernel": "experts gate/up",
             "_grouped_down_kernel": "experts down", "_expert_place_kernel": "expert sort",
             "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_": "attention",
             "nvjet_sm90_tst_192x128_64x5_1x2_h_bz_coopB_TNT": "dense GEMMs", "_qk_norm_rope_rows_kernel": "norms, QK-norm, RoPE",
             "_rms_norm_kernel": "norms, QK-norm, RoPE", "_router_topk_kernel": "router", "_gather_sum_kernel": "gather-sum",
             "_router_gemm_topk_kernel": "router",  # not a dense GEMM
             "void at::native::elementwise_kernel<128, 4, at::native::gpu_": "other"}
    assert {n: kernel_kind(n) for n in names} == names
    kinds = by_kind({"_grouped_gate_up_kernel": [2000.0, 1000.0], "_grouped_down_kernel": [1500.0], "nvjet_x": [500.0]})
    assert list(kinds) == ["experts gate/up", "experts down", "dense GEMMs"]
    assert kinds["experts gate/up"] == {"n": 2, "ms": 3.0, "share": 0.6}
    rates = expert_rates(kinds, MOLMOE, 8, 1000, 16, copy_tbps=4.0, matmul_tflops=750.0)
    expert_bytes = 16 * 64 * 3 * 2048 * 1024 * 2
    assert rates["gate_up_TBps"] == pytest.approx(expert_bytes * 2 / 3 / 3.0e-3 / 1e12, rel=1e-9)
    assert rates["experts_TBps"] == pytest.approx(expert_bytes / 4.5e-3 / 1e12, rel=1e-9)
    assert rates["experts_x_copy_rate"] == pytest.approx(rates["experts_TBps"] / 4.0)
    assert rates["experts_floor_ms"] == pytest.approx(16 * expert_floor(MOLMOE, 8, 1000).ms(4.0, 750.0))


@triton_ok
def test_expert_sweep_times_every_form_and_keeps_going_past_a_bad_tile():
    lm = build_random_model(MolmoeConfig.tiny(), device="cpu", dtype=torch.float32).lm
    lm.use_fast_path()
    calls = []

    def timer(fn):
        fn()
        calls.append(1)
        return 10.0

    out = expert_sweep(lm, 12, 4, [{"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}, {"BLOCK_M": 16}], timer, 4.0, 750.0)
    rows = out["rows"]
    assert len(rows) == 2 * 3 * 2  # forms x (autotuned, 2 tiles) x (gate/up, down)
    assert len(calls) == 2 * 2 * 2 and sum("error" in r for r in rows) == 4
    assert all("missing ['BLOCK_N', 'BLOCK_K']" in r["error"] for r in rows if "error" in r)
    ok = [r for r in rows if "us" in r]
    fl = expert_floor(LMShape.of(lm), 4, 12)
    assert sum(r["TBps"] for r in ok if r["weight_loads"] == "pointer" and r["tiles"] == "autotuned") == pytest.approx(
        fl.bytes / 10.0 / 1e6)
    assert all(math.isclose(r["x_copy_rate"], r["TBps"] / 4.0) for r in ok)
    assert out["best_gate_up"]["us"] == 10.0 and out["pairs"] == 48


def test_attention_backends_time_each_backend_and_record_refusals():
    lm = build_random_model(MolmoeConfig.tiny(), device="cpu", dtype=torch.float32).lm
    lm.use_fast_path()
    out = attention_backends(lm, 9, lambda fn: float(fn().shape[2]), backends=("MATH", "CUDNN_ATTENTION"))
    assert out["default_us"] == 9.0 and out["math_us"] == 9.0  # the timer saw (1, H, 9, Dh) outputs
    assert "cudnn_attention_error" in out and "cudnn_attention_us" not in out  # no cuDNN on a CPU
