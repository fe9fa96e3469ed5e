"""`benchmarks.bench_fast_path` runs end to end on the CPU (``--quick``: the tiny model, torch ops,
no graphs), so a section broken by a change shows here rather than after a GPU machine starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quick_cpu_run_writes_every_section_it_ran(tmp_path: Path) -> None:
    out = tmp_path / "fast_path.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.bench_fast_path", "--device", "cpu", "--quick", "--repeats", "1",
                          "--steps", "2", "--sections", "ceilings,attention,decode,prefill,batching,attn_ab,timeline", "--decode-variant",
                          "fused_router", "--variants", "triton_gemv,pdl", "--attn-tiles", '{"4": "c128_n32_w4_s1"}',
                          "--attn-ab", '{"1": "c64_n64_w2_s3"}', "--ab-rounds", "1",
                          "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["decode_variant"] == "fused_router"  # every section ran with the one-kernel router as its default
    assert [(r["top_k"], r["blocks"]) for r in res["decode"]] == [(8, 16), (4, 12)]
    assert all(r["ms_per_token"] > 0 and r["floor_GB"] > 0 for r in res["decode"])
    assert set(res["decode_sorted_experts"]) == {"k8b16_ms_per_token", "k4b12_ms_per_token"}
    gemv = res["decode_variants"]["triton_gemv"]  # the variants asked for, less those with PDL (no Hopper here)
    assert set(res["decode_variants"]) == {"triton_gemv"} and gemv["k8b16"]["ms_per_token"] > 0 and gemv["ratio_k4b12_over_k8b16"] > 0
    prefill = res["prefill"]
    assert [r["tokens"] for r in prefill["rows"]] == [64, 128]
    for form in ("grouped_mm", "sorted_gemm", "sorted_tma"):  # every routed form ran (torch ops on the CPU)
        assert prefill[f"form_{form}_k8b16_S128_graph_ms"] > 0
    for key in ("k8b16", "k4b12"):
        row = res["batching"][key]
        assert row["sequential_ms"] > 0 and row["batched_ms"] > 0 and row["batched_sorted_ms"] > 0 and row["batched_triton_gemv_ms"] > 0
        assert "batched_pdl_ms" not in row and "batched_fused_router_ms" not in row  # no Hopper; the run's own form
        assert row["ratio"] == row["sequential_ms"] / row["batched_ms"]
        # the batch's prefill and one decode step were timed; that each is a part of the whole is a GPU figure
        # (one timed repeat on a shared CPU once took 1,199 ms for the prefill against 335 ms for the whole batch)
        assert row["batched_prefill_ms"] > 0 and row["batched_step_ms"] > 0
    assert res["ceilings"] == {} and res["bars"] == []  # no GPU: no ceilings, so no floors and no bars
    assert res["timeline"] == {}  # a CUDA-only section: ran, and measured nothing on the CPU
    assert res["attention"] == {"skipped": "the Triton kernels need a CUDA GPU"}
    assert res["attn_tiles"] == {"4": "c128_n32_w4_s1"}  # the table every section ran with
    ab = res["attn_ab"]  # the run's table against it with --attn-ab's entry added, each timed once (torch ops here)
    assert ab["A"] == {"4": "c128_n32_w4_s1"} and ab["B"] == {"1": "c64_n64_w2_s3", "4": "c128_n32_w4_s1"}
    assert {k for k in ab if k.endswith("_ms")} == {"decode_k8b16_ms", "decode_k4b12_ms", "batch8_k8b16_ms", "batch8_k4b12_ms"}
    assert all(len(ab[k]["A"]) == len(ab[k]["B"]) == 1 and ab[k]["B_over_A"] > 0 for k in ab if k.endswith("_ms"))
    assert "error" not in json.dumps(res)


@pytest.mark.parametrize("args,message", [
    (["--decode-variant", "pdl"], "bench_fast_path: --decode-variant pdl: pdl=True"),
    (["--attn-tiles", '{"8": "c256_n64"}'],
     "bench_fast_path: not an attention tile name (c<chunk>_n<block_n>_w<warps>_s<stages>): 'c256_n64'"),
    (["--attn-ab", '{"1": "c64_n64_w2_s3"}'], "bench_fast_path: section attn_ab and --attn-ab JSON go together"),
    (["--sections", "attn_ab", "--attn-ab", "[1]"], "bench_fast_path: --attn-ab must map batch rows to tile names"),
    (["--agreement-prompts", "0"], "bench_fast_path: --agreement-prompts and --ab-rounds take 1 or more"),
])
def test_what_cannot_run_is_refused_in_one_line(args: list[str], message: str, tmp_path: Path, monkeypatch) -> None:
    from benchmarks import bench_fast_path

    monkeypatch.setattr(sys, "argv", ["bench_fast_path", "--device", "cpu", "--quick", "--sections", "ceilings", *args,
                                      "--out", str(tmp_path / "refused.json")])
    with pytest.raises(SystemExit) as refused:
        bench_fast_path.main()
    assert str(refused.value.code).startswith(message)
    from model_runtime.molmoe import kernels as dk

    assert dk.ATTN_TILES == {}  # a refused table leaves the kernels' own untouched


def test_best_variant_is_the_one_faster_than_the_default_at_every_corner(tmp_path: Path, monkeypatch, capsys) -> None:
    from benchmarks import bench_fast_path
    from benchmarks.bench_fast_path import best_decode_variant

    def var(*ms: float) -> dict:
        return {**{k: {"ms_per_token": m, "default_ms": 1.0} for k, m in zip(("k8b16", "k8b12", "k4b16", "k4b12"), ms)},
                "ratio_k4b12_over_k8b16": 0.6}

    res = {"decode_variants": {"pdl": var(0.99, 0.99, 0.99, 0.99), "gemv": var(0.90, 0.90, 0.90, 1.01),  # slower at one
                               "both": var(0.97, 0.97, 0.97, 0.97)}}
    assert best_decode_variant(res) == "both"
    assert best_decode_variant({"decode_variants": {"gemv": var(0.90, 0.90, 0.90, 1.01)}}) == "default"
    assert best_decode_variant({}) == "default"
    # what fast_path.sh VARIANT=best calls, and a missing JSON named in one line
    (tmp_path / "fast_path_5.json").write_text(json.dumps(res))
    monkeypatch.setattr(sys, "argv", ["bench_fast_path", "--best-variant-of", str(tmp_path / "fast_path_5.json")])
    bench_fast_path.main()
    assert capsys.readouterr().out.strip() == "both"
    monkeypatch.setattr(sys, "argv", ["bench_fast_path", "--best-variant-of", str(tmp_path / "none.json")])
    with pytest.raises(SystemExit, match="bench_fast_path: --best-variant-of .*none.json"):
        bench_fast_path.main()
    # an unknown name in --variants, refused before any model is built
    monkeypatch.setattr(sys, "argv", ["bench_fast_path", "--device", "cpu", "--variants", "cublas,megakernel"])
    with pytest.raises(SystemExit, match=r"bench_fast_path: unknown --variants \['megakernel'\]"):
        bench_fast_path.main()


def test_the_sorted_experts_form_of_a_variant_keeps_a_router_it_can_run() -> None:
    """The decode and batching sections time each run's form again with the sorted experts: a variant whose top-k
    lives in the pair experts' kernel (in_experts, refused with sorted experts) gets the split router there."""
    from benchmarks.bench_fast_path import DECODE_VARIANTS, sorted_experts_opts

    opts = sorted_experts_opts(DECODE_VARIANTS["pdl_triton_gemv_router_in_experts"])
    assert opts == {"pdl": True, "decode_gemv": "triton", "decode_router": "split", "decode_experts": "sorted"}
    assert sorted_experts_opts(DECODE_VARIANTS["cublas"])["decode_router"] == "split"
    assert sorted_experts_opts({}) == {"decode_experts": "sorted"}  # FusedLM's default router for sorted experts
    assert sorted_experts_opts(DECODE_VARIANTS["pdl_on_load"])["decode_epilogues"] == "kernels"
    assert DECODE_VARIANTS["pdl_triton_gemv_router_in_experts"]["decode_router"] == "in_experts"  # not changed in place


def test_the_correctness_contract_is_taken_over_several_prompts() -> None:
    """Each path's error against float32 is a mean over prompts, and the contract's ratio is of the two means: one
    prompt's ratio swings widely (0.6-1.6 on this tiny bf16 model), which a single-prompt check reads as a pass or a
    fail by chance."""
    import statistics

    import torch

    from benchmarks.bench_fast_path import fp32_copy, real_shape_agreement
    from model_runtime.molmoe.config import MolmoeConfig
    from model_runtime.molmoe.static_decode import GraphDecoder, eager_capture
    from model_runtime.profiler import build_random_model

    lm = build_random_model(MolmoeConfig.tiny(), device="cpu", dtype=torch.bfloat16, seed=3).lm
    lm.use_fast_path()
    dec = GraphDecoder(lm, max_graphs=2, capture=eager_capture)
    row = real_shape_agreement(lm, dec, 4, 12, 24, 4, fp32_copy(lm), {}, prompts=3)
    assert row["prompts"] == 3 and len(row["decode_err_ratio_per_prompt"]) == 3
    assert row["decode_err_ratio"] == pytest.approx(row["fast_vs_fp32_decode"] / row["eager_bf16_vs_fp32_decode"])
    assert row["decode_err_ratio"] != pytest.approx(statistics.fmean(row["decode_err_ratio_per_prompt"]))
    assert 0 < row["fast_vs_fp32_prefill"] < 0.1 and row["tokens_equal"] == "4/4"
    one = real_shape_agreement(lm, dec, 4, 12, 24, 4, fp32_copy(lm), {}, prompts=1)  # the first prompt alone
    assert one["decode_err_ratio"] == pytest.approx(row["decode_err_ratio_per_prompt"][0])
