"""The fast path's bars on a GPU (issues 7 and 15): decode, knobs, prefill, batching, correctness.

Run (H100, ~4-5 min; random weights at the MolmoE-1B shape — SYNTHETIC model, real shapes)::

    python -m benchmarks.bench_fast_path --out bench_fast_path.json
    .venv/bin/python -m benchmarks.bench_fast_path --device cpu --quick      # CPU smoke (torch ops, no graphs)

Sections, all in one process so that every ratio compares figures of the same run:

1. **ceilings**: device-to-device copy rate (bytes read + written per second, 1 GiB) and a bf16
   8192³ matmul rate.
2. **attention** (CUDA): the decode attention (split + merge) over the context for every tile of
   :func:`benchmarks.attention_tiles.tile_grid` at 1, 2, 4, 8 and 16 rows, against each batch size's
   default tile (:data:`~model_runtime.molmoe.kernels.ATTN_TILES`); ``--attn-tune`` lets the tiles that beat
   it serve the later sections, ``--attn-tiles`` sets the table for the whole run.
3. **decode**: batch 1, ``--context`` (1000) prompt tokens, ms per token of the fast path
   (:class:`GraphDecoder`: fused decode step, one CUDA graph per plan) for the 5 x 5 grid of
   top-k (4..8) x active blocks (12..16) at p = 1 (block 0 at top-8, as the knob space
   defines), each with its byte floor = bytes that must be read (Q/K/V/O and router weights of
   the active blocks, their routed experts, the LM head, the KV cache) / the copy rate; the two
   corners again with ``decode_experts="sorted"``, and the four corners for each decode variant
   (``decode_variants``, :data:`DECODE_VARIANTS`): the projections as the Triton GEMV
   (``decode_gemv="triton"``), the router in one kernel (``decode_router="fused"``) and, on Hopper,
   the kernels launched for programmatic dependent launch (``pdl=True``), alone and combined, and the
   reductions in the last program of the kernel before them (``decode_epilogues="last_program"``,
   ``decode_router="splitk"``), together and apart, the router's top-k in the experts' kernel
   (``decode_router="in_experts"``, the default with PDL), the QK-norm in the attention's
   (``decode_qk_norm="in_attention"``) and the projections' L2 prefetch (``decode_prefetch``).
4. **transformers**: ``OlmoeForCausalLM.generate`` on the same weights (the model's own modules
   wrapped, transformers' experts implementation of the device), ms per token = (t(64 new) -
   t(1 new)) / 63 after the same prompt; ratio to the fast path.
5. **prefill**: ms of the staged prefill + first token for 300-2000 tokens at (top-8, 16) and
   (top-4, 12): replayed from the decoder's captured prefill graph (what ``greedy_generate`` runs
   with a decoder, i.e. the runtime on CUDA; wall time of the whole call, and the graph's replay
   alone in CUDA events) and run eagerly through the same fused blocks (the difference is host
   launch overhead), each with its floor (:mod:`benchmarks.roofline`: the longer of the byte and
   FLOP floors at this run's ceilings) and the replay × floor; the routed-expert forms
   (``grouped_mm``, ``sorted_gemm``, ``sorted_tma``) and transformers' blocks at 1000 tokens.
6. **prefill_kernels** (CUDA): one uncaptured 1000-token prefill at (top-8, 16) by kernel kind for
   each sorted expert form, and its expert GEMMs' weight rate × the copy rate
   (:func:`benchmarks.prefill_profile.prefill_breakdown`); one block's causal attention with each
   SDPA backend (:func:`benchmarks.prefill_profile.attention_backends`).
7. **experts** (CUDA): one block's expert GEMMs alone for the same prompt's pairs, each weight-load
   form autotuned and at ``--expert-tiles``, with what the autotuner chose
   (:func:`benchmarks.prefill_profile.expert_sweep`).
8. **kernels** (CUDA): block-size sweep of the decode kernels and the kernel-time breakdown of
   one uncaptured decode step (how much of the graph's time is kernels, how much gaps).
9. **batching**: 8 requests of one configuration left-padded into one batch vs one after another
   (``greedy_generate`` with the decoder, 64 new tokens, EOS disabled), tokens/s ratio, and the
   share of the byte-bound speed-up 8·t₁ / floor₈ it reaches (= floor₈ / t₈); the batch again with
   the decode step's experts sorted (``decode_experts="sorted"``) and with each decode variant
   (``batched_<variant>_ms``, ``share_of_bound_<variant>``). Where the batch's time goes: its prefill
   (``batched_prefill_ms``) and one decode step (``batched_step_ms``), against their floors
   (``prefill8_floor_ms``, ``step8_floor_ms``); the timeline section adds a step of the 8 by kernel.
10. **attn_ab** (``--attn-ab JSON``, not in the default list): the run's attention tile table (A) against
   another (B), alternately for ``--ab-rounds`` rounds on fresh graphs: the four decode corners and the batches of
   8 at (8, 16) and (4, 12), each pair's medians, B / A, and the batches' shares of the byte-bound speed-up.
11. **vision**: CLIP tower + connector, eager vs replayed from its graph per crop count
   (:class:`~model_runtime.molmoe.vision_graphs.VisionGraphs`), 2-13 crops.
12. **correctness**: tiny model in float32 on the device: greedy tokens of the fast path (graphs)
   equal transformers' blocks for every distinct language-model plan of the knob space; real
   shape in bf16: relative error ||fast - ref|| / ||ref|| of the prefill logits and of the first
   decode step's logits, and greedy token agreement, at the four corners; against float32, each
   path's error is the mean over ``--agreement-prompts`` prompts (8), and the contract's figure the
   ratio of the two means (each prompt's ratio beside it).
13. **timeline** (CUDA): one replayed decode step's kernels as the profiler sees them on the GPU
   (:mod:`benchmarks.step_timeline`) at (8, 16) and (4, 12), for the run's decode form (and the default's, when the
   run's is another) and for the plain launch (``cublas``): the step's span, the time some kernel ran (the union of
   their intervals) and the idle rest, each per active block, and the time by kernel (each kernel's own part of the
   busy time too, which under PDL leaves out its wait for the kernel before): whether a block's time above its bytes
   is in the kernels or between them.
14. **persistent** (not in the default list; ``--sections decode,persistent``): the decode grid
   through :class:`~model_runtime.molmoe.kernels.persistent_decode.PersistentDecodeStep` (one
   kernel per token, ``--persistent`` options) next to the fused step's figures of the same run,
   a sweep of tile options (``--persistent-sweep``) at the two corners, and the correctness checks
   of section 12 for it (tiny float32 over every plan at batch 1; real shape at the four corners).

Last, **bars**: issue 15's bars computed from the sections that ran (:func:`issue15_bars`).
Prints one table per section and writes everything to ``--out`` (JSON).

``--decode-variant NAME`` (one of :data:`DECODE_VARIANTS`) runs every section with that decode form as if it were
the default, its correctness checks included: how a variant that wins at the four corners earns the default.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
from typing import Any, Callable

import torch

from benchmarks import attention_tiles
from benchmarks.prefill_profile import attention_backends, expert_sweep, kernel_times, prefill_breakdown
from benchmarks.roofline import LMShape, decode_floor, generate_floor, prefill_floor
from envs.knob_space import KnobSpace
from model_runtime.molmoe import kernels as dk
from model_runtime.molmoe.config import MolmoeConfig
from model_runtime.molmoe.fused_lm import ROUTED_FORMS
from model_runtime.molmoe.generation import greedy_generate
from model_runtime.molmoe.language_model import BlockKVCache, MolmoeLanguageModel
from model_runtime.molmoe.static_decode import GraphDecoder, cuda_graph_capture, eager_capture
from model_runtime.profiler import build_random_model, device_name

KS = KnobSpace()
#: every section, in the order a run takes them (``--sections`` picks any of them)
SECTIONS: tuple[str, ...] = ("ceilings", "attention", "decode", "kernels", "hf", "prefill", "prefill_kernels", "experts",
                             "batching", "attn_ab", "vision", "correctness", "timeline", "persistent")
#: the decode step's forms (``use_fast_path`` options): the decode section times each at the four corners beside the
#: run's own, the batching section each batch; ``--decode-variant`` runs every section with one of them
DECODE_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},  # FusedLM's defaults: pdl_staged_gemv_router_in_experts where PDL can run (Hopper), else cublas
    "cublas": {"pdl": False, "decode_gemv": "cublas", "decode_router": "split"},
    "triton_gemv": {"pdl": False, "decode_gemv": "triton", "decode_router": "split"},
    "pdl": {"pdl": True, "decode_gemv": "cublas", "decode_router": "split"},
    # the default decode form before the router's top-k moved into the experts' kernel
    "pdl_triton_gemv": {"pdl": True, "decode_gemv": "triton", "decode_router": "split"},
    "fused_router": {"pdl": False, "decode_gemv": "cublas", "decode_router": "fused"},
    "pdl_triton_gemv_fused_router": {"pdl": True, "decode_gemv": "triton", "decode_router": "fused"},
    "pdl_triton_gemv_splitk_router": {"pdl": True, "decode_gemv": "triton", "decode_router": "splitk"},
    # the router's top-k in the experts' gate/up kernel (no synchronisation; 10 kernels a block; the default form
    # before the staged GEMV), and with the QK-norm in the attention's kernel too (9)
    "pdl_triton_gemv_router_in_experts": {"pdl": True, "decode_gemv": "triton", "decode_router": "in_experts"},
    # the same with cuBLAS's projections (a batch's rows: a GEMM rather than a GEMV)
    "pdl_router_in_experts": {"pdl": True, "decode_gemv": "cublas", "decode_router": "in_experts"},
    # the default: the Triton GEMV's loop pipelined over several tiles (no tile loaded before the wait)
    "pdl_staged_gemv_router_in_experts": {"pdl": True, "decode_gemv": "triton_staged", "decode_router": "in_experts"},
    # the same with the GEMV's first weight tile loaded before its wait
    "pdl_staged_early_gemv_router_in_experts": {"pdl": True, "decode_gemv": "triton_staged_early",
                                                "decode_router": "in_experts"},
    "pdl_no_sync_fusions": {"pdl": True, "decode_gemv": "triton", "decode_router": "in_experts",
                            "decode_qk_norm": "in_attention"},
    # the four reductions of a block in the last program of the kernel before them
    "last_program": {"pdl": False, "decode_gemv": "triton", "decode_epilogues": "last_program", "decode_router": "splitk"},
    "pdl_last_program": {"pdl": True, "decode_gemv": "triton", "decode_epilogues": "last_program", "decode_router": "splitk"},
    # the same without the router's (its top-k kernel after the Triton GEMV: the split router)
    "pdl_last_program_split_router": {"pdl": True, "decode_gemv": "triton", "decode_epilogues": "last_program",
                                      "decode_router": "split"},
    # the QK-norm + RoPE in the attention's kernel, alone and with the four last-arrival reductions (10 and 6 kernels a block)
    "pdl_triton_gemv_qk_in_attention": {"pdl": True, "decode_gemv": "triton", "decode_router": "split",
                                        "decode_qk_norm": "in_attention"},
    "pdl_last_program_qk_in_attention": {"pdl": True, "decode_gemv": "triton", "decode_epilogues": "last_program",
                                         "decode_router": "splitk", "decode_qk_norm": "in_attention"},
    # the residual adds in the kernels that produce them and the norms in the kernels that read them (8 kernels a
    # block), and the output projection's add + the router's norm only (9)
    "pdl_on_load": {"pdl": True, "decode_gemv": "triton", "decode_router": "in_experts", "decode_epilogues": "on_load"},
    "pdl_on_load_attention": {"pdl": True, "decode_gemv": "triton", "decode_router": "in_experts",
                              "decode_epilogues": "on_load_attention"},
    # the dense projections' weights into L2 before their wait, and with the kernels before them releasing first
    "pdl_prefetch": {"pdl": True, "decode_gemv": "triton", "decode_router": "in_experts", "decode_prefetch": "weights"},
    "pdl_prefetch_early": {"pdl": True, "decode_gemv": "triton", "decode_router": "in_experts",
                           "decode_prefetch": "weights_early"},
    # the attention's past keys and values loaded before its wait, while the QK-norm kernel runs
    "pdl_kv_early": {"pdl": True, "decode_gemv": "triton", "decode_router": "in_experts", "decode_prefetch": "kv"},
}
#: explicit tiles the experts section times next to the autotuned kernels (Hopper-sized: 64- and
#: 128-row tiles for experts of ~125 pairs at 1,000 tokens, deep pipelines for the weight stream)
EXPERT_TILES: list[dict[str, int]] = [
    {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": w, "num_stages": st}
    for bm, bn, bk, w, st in ((64, 128, 64, 4, 3), (64, 128, 64, 4, 5), (64, 64, 128, 4, 4), (128, 128, 64, 8, 3),
                              (128, 128, 64, 8, 4), (128, 64, 64, 4, 5), (64, 256, 64, 8, 3))]


def sorted_experts_opts(opts: dict[str, Any]) -> dict[str, Any]:
    """``opts`` with the decode step's experts as sorted grouped GEMMs (``decode_experts="sorted"``); a router whose
    top-k lives in the pair experts' kernel (``decode_router="in_experts"``) becomes the default split router there,
    and the epilogues that need it (``decode_epilogues="on_load..."``) the separate kernels."""
    out = opts | {"decode_experts": "sorted"}
    if out.get("decode_router") == "in_experts":
        out["decode_router"] = "split"
    if str(out.get("decode_epilogues", "")).startswith("on_load"):
        out["decode_epilogues"] = "kernels"
    return out


def plan_of(top_k: int, blocks: int, p: int = 1) -> tuple[int, ...]:
    return KS.plan(("high", p, top_k, blocks)).top_k_per_block


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed_ms(fn: Callable[[], Any], dev: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall ms of ``fn`` (synchronised before and after each call)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(out)


def prompt(lm: MolmoeLanguageModel, rows: int, length: int, seed: int, spread: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, length) random token embeddings, row i left-padded by ``i * spread // rows`` tokens."""
    dev = lm.lm_head.weight.device
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, lm.n_logits - 1, (rows, length), generator=g)
    mask = torch.ones(rows, length, dtype=torch.long)
    for i in range(rows):
        mask[i, : i * spread // max(rows, 1)] = 0
    return lm.embed(ids.to(dev)), mask.to(dev)


def batch_prompt(lm: MolmoeLanguageModel, rows: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batching section's requests (the timeline's batch too): ``rows`` prompts left-padded by up to 7 tokens."""
    return prompt(lm, rows, length, seed=7, spread=8)


# ------------------------------------------------------------------------------------ 1 ceilings
def ceilings(dev: torch.device) -> dict[str, float]:
    if dev.type != "cuda":
        return {}
    x = torch.empty(2**29, dtype=torch.bfloat16, device=dev).normal_()
    y = torch.empty_like(x)
    ms = timed_ms(lambda: y.copy_(x), dev, repeats=10, warmup=2)
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device=dev)
    mm = timed_ms(lambda: a @ a, dev, repeats=10, warmup=2)
    return {"copy_TBps": 2 * 2**30 / ms / 1e9, "matmul_TFLOPs": 2 * 8192**3 / mm / 1e9}


# ------------------------------------------------------------------------------------ 2 decode
@torch.no_grad()
def decode_ms(lm: MolmoeLanguageModel, dec: GraphDecoder, plan: tuple[int, ...], emb: torch.Tensor, mask: torch.Tensor,
              steps: int, repeats: int) -> float:
    dev = emb.device
    cache = dec.prepare(emb.shape[0], plan, positions=emb.shape[1] + steps * (repeats + 1) + 1)
    st = lm.begin(emb, mask, cache=cache)
    lm.advance(st, lm.n_layers, plan)
    tok = lm.logits(st).argmax(-1)
    cache.start_decode(mask)

    def run() -> None:
        nonlocal tok
        for _ in range(steps):
            tok = dec.step(cache, tok).argmax(-1)

    return timed_ms(run, dev, repeats=repeats, warmup=1) / steps


# ------------------------------------------------------------------------------------ 3 transformers
@torch.no_grad()
def hf_generate_ms(lm: MolmoeLanguageModel, emb_ids: torch.Tensor, top_k: int, repeats: int) -> float:
    from transformers import OlmoeForCausalLM

    with torch.device("meta"):
        hf = OlmoeForCausalLM(lm.config)
    hf.model, hf.lm_head = lm.backbone, lm.lm_head
    hf.eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    for layer in lm.backbone.layers:
        layer.mlp.gate.top_k = top_k
    mask = torch.ones_like(emb_ids)
    dev = emb_ids.device

    def gen(n: int) -> None:
        hf.generate(input_ids=emb_ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    t64 = timed_ms(lambda: gen(64), dev, repeats=repeats, warmup=1)
    t1 = timed_ms(lambda: gen(1), dev, repeats=repeats, warmup=1)
    for layer in lm.backbone.layers:
        layer.mlp.gate.top_k = lm.max_top_k
    return (t64 - t1) / 63


# ------------------------------------------------------------------------------------ 4 prefill
@torch.no_grad()
def prefill_ms(lm: MolmoeLanguageModel, plan: tuple[int, ...], emb: torch.Tensor, mask: torch.Tensor, repeats: int,
               decoder: GraphDecoder | None = None) -> float:
    """Median ms of the staged prefill + first token (``greedy_generate(max_new_tokens=1)``): eager
    blocks without ``decoder``, the decoder's captured prefill with it."""
    return timed_ms(
        lambda: greedy_generate(lm, emb, mask, top_k_per_block=plan, p=1, eos_token_id=-1, pad_token_id=0,
                                max_new_tokens=1, decoder=decoder),
        emb.device, repeats=repeats, warmup=2,
    )


@torch.no_grad()
def prefill_replay_ms(dec: GraphDecoder, plan: tuple[int, ...], seq: int, p: int, repeats: int) -> float:
    """Median GPU ms of the captured prefill graph alone (CUDA events around its replay): the
    prefill without the host's work around it (input copies, cache bookkeeping, argmax, Python)."""
    graph = next(e.prefills[(dec.prefill_len(seq), p)] for k, e in dec._entries.items()
                 if k[2] == plan and (dec.prefill_len(seq), p) in e.prefills)
    return statistics.median(attention_tiles.event_times_ms(graph.replay, repeats))


# ------------------------------------------------------------------------------------ 5 batching
@torch.no_grad()
def batching(lm: MolmoeLanguageModel, dec: GraphDecoder, plan: tuple[int, ...], length: int, new: int, n_req: int,
             repeats: int, sequential: bool = True) -> dict[str, float]:
    emb, mask = batch_prompt(lm, n_req, length)
    dev = emb.device
    # every single request (its own prompt length) keeps its captured prefill: no capture is timed
    dec.max_prefill_graphs = max(dec.max_prefill_graphs, n_req + 1)

    def gen(e: torch.Tensor, m: torch.Tensor, tokens: int = new) -> None:
        r = greedy_generate(lm, e, m, top_k_per_block=plan, p=1, eos_token_id=-1, pad_token_id=0, max_new_tokens=tokens,
                            decoder=dec)
        assert r.decode_steps == tokens - 1

    singles = [(emb[i : i + 1, (mask[i] == 0).sum():], mask[i : i + 1, (mask[i] == 0).sum():]) for i in range(n_req)]
    # two warm-ups: a prompt length's first prefill runs eagerly, its second is captured
    batched = timed_ms(lambda: gen(emb, mask), dev, repeats=repeats, warmup=2)
    out = {"batched_ms": batched, "tokens_per_s_batched": n_req * new / batched * 1e3}
    if sequential:
        # where the batch's time goes: its prefill (the first token) and one of its decode steps (replayed alone).
        # One new token needs a shorter cache, so the decoder's entry for it is another: two warm-ups again, or the
        # eager first prefill and the capture would be timed
        out["batched_prefill_ms"] = timed_ms(lambda: gen(emb, mask, 1), dev, repeats=repeats, warmup=2)
        out["batched_step_ms"] = decode_ms(lm, dec, plan, emb, mask, steps=max(2, new // 4), repeats=repeats)
        one_by_one = timed_ms(lambda: [gen(e, m) for e, m in singles], dev, repeats=repeats, warmup=2)
        out.update(sequential_ms=one_by_one, tokens_per_s_sequential=n_req * new / one_by_one * 1e3,
                   ratio=one_by_one / batched)
    return out


# ------------------------------------------------------------------------------------ 6 correctness
@torch.no_grad()
def tiny_all_plans(dev: torch.device, new: int, impl: str = "fused", fast_opts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Greedy tokens of the fast path (``use_fast_path(**fast_opts)``) against transformers' blocks on every plan
    of the knob space, tiny model in float32."""
    fast_opts = fast_opts or {}
    lm = build_random_model(MolmoeConfig.tiny(), device=dev, dtype=torch.float32, seed=3).lm
    capture = cuda_graph_capture if dev.type == "cuda" else eager_capture
    plans = sorted({(c.p, KS.plan(c).top_k_per_block) for c in KS.configs})
    # the persistent step serves batch 1: one row (of the two, the padded one)
    emb, mask = prompt(lm, 2, 24, seed=1, spread=10)
    if impl == "persistent":
        emb, mask = emb[1:], mask[1:]
    mismatched, worst = [], 0.0
    lm.use_fast_path(**fast_opts)
    dec = GraphDecoder(lm, max_graphs=4, capture=capture, impl=impl)
    for p, plan in plans:
        lm.use_fast_path(False)
        ref = greedy_generate(lm, emb, mask, top_k_per_block=plan, p=p, eos_token_id=-1, pad_token_id=0, max_new_tokens=new)
        lm.use_fast_path(**fast_opts)
        dec.fused = lm.fused
        ours = greedy_generate(lm, emb, mask, top_k_per_block=plan, p=p, eos_token_id=-1, pad_token_id=0,
                               max_new_tokens=new, decoder=dec)
        worst = max(worst, (ours.first_logits - ref.first_logits).abs().max().item())
        if ours.tokens != ref.tokens:
            mismatched.append((p, plan))
    if impl == "persistent":
        dec.check_persistent()
    return {"impl": impl, "plans": len(plans), "tokens_equal_plans": len(plans) - len(mismatched), "new_tokens": new,
            "max_abs_dlogit_prefill": worst, "mismatched": [list(m[1]) for m in mismatched[:5]]}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def fp32_copy(lm: MolmoeLanguageModel) -> MolmoeLanguageModel:
    """A float32 copy of the model (transformers' blocks: the copy leaves the fast path behind)."""
    import copy

    fused, lm.fused = lm.fused, None
    try:
        return copy.deepcopy(lm).float()
    finally:
        lm.fused = fused


@torch.no_grad()
def reference_fp32(lm32: MolmoeLanguageModel, emb: torch.Tensor, mask: torch.Tensor, plan: tuple[int, ...],
                   tok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 logits (prefill, then one decode step fed ``tok``) of transformers' blocks."""
    st = lm32.begin(emb.float(), mask, cache=BlockKVCache(reserve=4))
    lm32.advance(st, lm32.n_layers, plan)
    p0 = lm32.logits(st)
    st = lm32.begin_decode(st, tok)
    lm32.advance(st, lm32.n_layers, plan)
    return p0, lm32.logits(st)


@torch.no_grad()
def real_shape_agreement(lm: MolmoeLanguageModel, dec: GraphDecoder, top_k: int, blocks: int, context: int,
                         new: int, lm32: MolmoeLanguageModel | None = None,
                         fast_opts: dict[str, Any] | None = None, prompts: int = 1) -> dict[str, Any]:
    """The fast path (``dec``, made with ``use_fast_path(**fast_opts)``) against the eager bf16 path and, with
    ``lm32``, both against float32: prefill and first decode step's logits, and greedy tokens (first prompt).

    Each logits error is the mean over ``prompts`` prompts (seeds 11, 12, ...), and with ``lm32`` the contract's
    figure is the ratio of the two paths' mean errors against float32 (``decode_err_ratio``), with each prompt's own
    ratio beside it: on random weights one prompt's ratio moves from run to run by more than the contract's margin."""
    plan = plan_of(top_k, blocks)
    errs: dict[str, list[float]] = {}

    def note(**values: float) -> None:
        for key, value in values.items():
            errs.setdefault(key, []).append(value)

    for i in range(prompts):
        emb, mask = prompt(lm, 1, context, seed=11 + i)
        lm.use_fast_path(False)
        st = lm.begin(emb, mask, cache=BlockKVCache(reserve=4))
        lm.advance(st, lm.n_layers, plan)
        ref0 = lm.logits(st)
        tok = ref0.argmax(-1)
        st = lm.begin_decode(st, tok)
        lm.advance(st, lm.n_layers, plan)
        ref1 = lm.logits(st)
        if i == 0:
            ref_gen = greedy_generate(lm, emb, mask, top_k_per_block=plan, p=1, eos_token_id=-1, pad_token_id=0,
                                      max_new_tokens=new)
        lm.use_fast_path(**(fast_opts or {}))
        cache = dec.prepare(1, plan, positions=context + 4)
        st = lm.begin(emb, mask, cache=cache)
        lm.advance(st, lm.n_layers, plan)
        ours0 = lm.logits(st)
        cache.start_decode(mask)
        ours1 = dec.step(cache, tok).clone()  # same fed token as the reference
        if i == 0:
            gen = greedy_generate(lm, emb, mask, top_k_per_block=plan, p=1, eos_token_id=-1, pad_token_id=0,
                                  max_new_tokens=new, decoder=dec)
        note(rel_err_prefill_logits=_rel(ours0, ref0), rel_err_decode_logits=_rel(ours1, ref1))
        if lm32 is not None:  # both bf16 paths against float32 arithmetic on the same weights
            r0, r1 = reference_fp32(lm32, emb, mask, plan, tok)
            note(fast_vs_fp32_prefill=_rel(ours0, r0), eager_bf16_vs_fp32_prefill=_rel(ref0, r0),
                 fast_vs_fp32_decode=_rel(ours1, r1), eager_bf16_vs_fp32_decode=_rel(ref1, r1))
    a, b = gen.tokens[0], ref_gen.tokens[0]
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
    out: dict[str, Any] = {"top_k": top_k, "blocks": blocks, "prompts": prompts,
                           **{key: statistics.fmean(values) for key, values in errs.items()},
                           "tokens_equal": f"{sum(x == y for x, y in zip(a, b))}/{len(a)}", "first_divergence": first}
    if lm32 is not None:
        for step in ("prefill", "decode"):
            fast, eager = errs[f"fast_vs_fp32_{step}"], errs[f"eager_bf16_vs_fp32_{step}"]
            out[f"{step}_err_ratio"] = statistics.fmean(fast) / statistics.fmean(eager)
            out[f"{step}_err_ratio_per_prompt"] = [f / e for f, e in zip(fast, eager)]
    return out


# ------------------------------------------------------------------------------------ 7 kernels
@torch.no_grad()
def kernel_sweep(lm: MolmoeLanguageModel, dec: GraphDecoder, context: int) -> dict[str, Any]:
    """Block-size sweep of the decode kernels (triton.testing.do_bench, L2 flushed, median us and
    GB/s of the bytes each must read) and a kernel-time breakdown of one (uncaptured) decode step."""
    from triton.testing import do_bench

    dev = lm.lm_head.weight.device
    blk = lm.fused.blocks[1]
    e_, i2, d = blk.gate_up.shape
    out: dict[str, Any] = {"tuning_used": dict(dk.TUNING)}
    g = torch.Generator(device=dev).manual_seed(0)
    for t in (1, 8):
        x = torch.randn(t, d, device=dev, dtype=blk.gate_up.dtype)
        idx = torch.stack([torch.randperm(e_, device=dev, generator=g)[:8] for _ in range(t)]).int()
        distinct = idx.unique().numel()
        for bi in (8, 16, 32, 64):
            us = do_bench(lambda: dk.moe_gate_up_act(x, blk.gate_up, idx, "triton", block_i=bi), return_mode="median") * 1e3
            out[f"gate_up_T{t}_bi{bi}"] = {"us": us, "GBps": distinct * i2 * d * 2 / us / 1e3}
        act = dk.moe_gate_up_act(x, blk.gate_up, idx, "triton")
        for bd in (4, 8, 16, 32):
            us = do_bench(lambda: dk.moe_down(act, blk.down, idx, "triton", block_d=bd), return_mode="median") * 1e3
            out[f"down_T{t}_bd{bd}"] = {"us": us, "GBps": distinct * i2 // 2 * d * 2 / us / 1e3}
        for name, fn in (("gate_up", lambda: dk.moe_gate_up_act(x, blk.gate_up, idx, "triton")),
                         ("down", lambda: dk.moe_down(act, blk.down, idx, "triton"))):
            us = do_bench(fn, return_mode="median") * 1e3
            out[f"{name}_T{t}_autotuned"] = {"us": us, "GBps": distinct * i2 * d * (2 if name == "gate_up" else 1) / us / 1e3}
        # the decode step's router (cuBLAS GEMV + top-k kernel) against the prefill's one-kernel router
        out[f"router_T{t}_gemv_then_topk_us"] = do_bench(
            lambda: dk.router_topk(x @ blk.router.T, 8, False, "triton"), return_mode="median") * 1e3
        for bd in (64, 128, 256):
            out[f"router_T{t}_one_kernel_bd{bd}_us"] = do_bench(
                lambda: dk.router_gemm_topk(x, blk.router, 8, False, "triton", block_d=bd), return_mode="median") * 1e3
    # the prefill's router at a prompt's length: GEMM + top-k kernel against the one-kernel form's tiles
    h = torch.randn(context, d, device=dev, dtype=blk.gate_up.dtype)
    out[f"router_T{context}_gemm_then_topk_us"] = do_bench(
        lambda: dk.router_topk(h @ blk.router.T, 8, False, "triton"), return_mode="median") * 1e3
    for bt, bd in ((16, 64), (16, 256), (32, 128), (64, 64)):
        out[f"router_T{context}_one_kernel_t{bt}_d{bd}_us"] = do_bench(
            lambda: dk.router_gemm_topk(h, blk.router, 8, False, "triton", block_t=bt, block_d=bd), return_mode="median") * 1e3
    cfg = lm.config
    hd = cfg.hidden_size // cfg.num_attention_heads
    length = -(-(context + 64) // 256) * 256
    kc = torch.randn(1, cfg.num_key_value_heads, length, hd, device=dev, dtype=blk.gate_up.dtype)
    vc = torch.randn_like(kc)
    q = torch.randn(1, cfg.num_attention_heads, hd, device=dev, dtype=kc.dtype)
    valid = torch.ones(1, length, dtype=torch.long, device=dev)
    slot = torch.tensor([context], device=dev)
    for ch in (32, 64, 128, 256):
        us = do_bench(lambda: dk.decode_attention(q, kc, vc, valid, slot, 0.1, "triton", chunk=ch), return_mode="median") * 1e3
        out[f"attn_ctx{context}_chunk{ch}"] = {"us": us, "GBps": 2 * kc[:, :, : context + 1].numel() * 2 / us / 1e3}
    # where the time of one decode step goes (kernels of an uncaptured step; gaps excluded)
    plan = plan_of(8, 16)
    emb, mask = prompt(lm, 1, context, seed=0)
    cache = dec.prepare(1, plan, positions=context + 16)
    st = lm.begin(emb, mask, cache=cache)
    lm.advance(st, lm.n_layers, plan)
    cache.start_decode(mask)
    tok = lm.logits(st).argmax(-1)
    lm.fused.decode_step(cache, tok, plan)
    torch.cuda.synchronize()
    kernels = kernel_times(lambda: lm.fused.decode_step(cache, tok, plan))
    top = sorted(kernels.items(), key=lambda kv: -sum(kv[1]))
    out["step_kernels"] = sum(len(v) for v in kernels.values())
    out["step_kernel_us"] = sum(sum(v) for v in kernels.values())
    out["step_top"] = [{"kernel": k[:60], "n": len(v), "us": round(sum(v), 1)} for k, v in top[:16]]
    return out


# ------------------------------------------------------------------------------------ bars
def issue15_bars(res: dict[str, Any], context: int) -> list[dict[str, Any]]:
    """Issue 15's bars from this run's sections (those that ran): worst decode point × its
    floor, the decode knob ratio, the prefill of ``context`` tokens × its floor, the expert GEMMs'
    share of the copy rate, batching's share of its byte-bound speed-up, and the real-shape
    correctness contract (error ratio against float32, greedy tokens) at each corner."""
    bars: list[dict[str, Any]] = []

    def add(name: str, value: float | None, met: bool) -> None:
        if value is not None:
            bars.append({"bar": name, "value": value, "met": met})

    for key, rows in (("decode", res.get("decode")), ("persistent decode", (res.get("persistent") or {}).get("decode"))):
        if isinstance(rows, list) and rows and all("x_floor" in r for r in rows):
            worst = max(r["x_floor"] for r in rows)
            add(f"{key}: worst of {len(rows)} points x floor <= 1.5", worst, worst <= 1.5)
            by = {(r["top_k"], r["blocks"]): r["ms_per_token"] for r in rows}
            if (8, 16) in by and (4, 12) in by:
                ratio = by[(4, 12)] / by[(8, 16)]
                add(f"{key}: (4, 12) / (8, 16) <= 0.60", ratio, ratio <= 0.60)
    pre = res.get("prefill")
    row = next((r for r in pre.get("rows", []) if r.get("tokens") == context), None) if isinstance(pre, dict) else None
    if row and "k8b16_x_floor" in row:
        add(f"prefill {context} tokens (8, 16) x floor <= 1.5", row["k8b16_x_floor"], row["k8b16_x_floor"] <= 1.5)
    kern = res.get("prefill_kernels")
    if isinstance(kern, dict):
        for form, b in kern.items():
            share = (b.get("experts") or {}).get("experts_x_copy_rate") if isinstance(b, dict) else None
            if share is not None:
                add(f"prefill expert GEMMs ({form}) >= 0.85 of the copy rate", share, share >= 0.85)
    for name, var in (res.get("decode_variants") or {}).items():
        corners = [v["x_floor"] for k, v in var.items() if k.startswith("k") and isinstance(v, dict) and "x_floor" in v]
        if not corners:  # no floors (no ceilings measured): no bars, as for the default decode
            continue
        add(f"decode, {name}: worst of {len(corners)} corners x floor <= 1.5", max(corners), max(corners) <= 1.5)
        if "ratio_k4b12_over_k8b16" in var:
            add(f"decode, {name}: (4, 12) / (8, 16) <= 0.60", var["ratio_k4b12_over_k8b16"], var["ratio_k4b12_over_k8b16"] <= 0.60)
    bat = res.get("batching")
    forms = [("share_of_bound", "pair kernels"), ("share_of_bound_sorted", "sorted experts")]
    forms += [(key, key.removeprefix("share_of_bound_")) for key in (bat or {}).get("k8b16", {})
              if key.startswith("share_of_bound_") and key != "share_of_bound_sorted"] if isinstance(bat, dict) else []
    for key, form in forms:
        if isinstance(bat, dict) and key in bat.get("k8b16", {}):
            share = bat["k8b16"][key]
            add(f"batching 8 at (8, 16), {form}, >= 0.80 of the byte-bound speed-up", share, share >= 0.80)
    corr = res.get("correctness")
    for row in (corr.get("real_shape") or []) if isinstance(corr, dict) else []:
        if isinstance(row, dict) and "decode_err_ratio" in row:
            where = f"({row['top_k']}, {row['blocks']})"
            add(f"correctness {where}: decode logits' error vs float32 <= 1.5x the eager bf16 path's "
                f"(means of {row['prompts']} prompts)", row["decode_err_ratio"], row["decode_err_ratio"] <= 1.5)
            same, total = (int(x) for x in row["tokens_equal"].split("/"))
            add(f"correctness {where}: greedy tokens equal the eager bf16 path's", same / total, same == total)
    return bars


def best_decode_variant(res: dict[str, Any]) -> str:
    """The decode variant of a run's ``decode_variants`` that beat the default at every corner it timed, the one with
    the lowest mean ms ratio to the default; ``"default"`` when none did. How ``fast_path.sh`` picks ``VARIANT=best``
    from part 5's JSON for the longer parts."""
    best, best_ratio = "default", 1.0
    for name, var in (res.get("decode_variants") or {}).items():
        ratios = [v["ms_per_token"] / v["default_ms"] for k, v in var.items()
                  if k.startswith("k") and isinstance(v, dict) and "ms_per_token" in v and v.get("default_ms")]
        if ratios and max(ratios) < 1.0 and sum(ratios) / len(ratios) < best_ratio:
            best, best_ratio = name, sum(ratios) / len(ratios)
    return best


# ------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--context", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=32, help="decode steps per timed call")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="tiny shape, few points (CPU smoke)")
    ap.add_argument("--decode-variant", choices=tuple(DECODE_VARIANTS), default="default",
                    help="the decode step's form for every section, as if it were the default (its correctness too): "
                         "one of DECODE_VARIANTS (the Triton GEMV, the one-kernel router, programmatic dependent "
                         "launch on Hopper, and their combinations)")
    ap.add_argument("--variants", default="all",
                    help="comma-separated DECODE_VARIANTS the decode and batching sections time beside the run's form "
                         "(default: all that can run here; those with PDL only on Hopper; none: the run's form only)")
    ap.add_argument("--decode-grid", choices=("all", "corners"), default="all",
                    help="the decode table's (top-k, blocks) points: all 25 or the four corners (a shorter run)")
    ap.add_argument("--sections",
                    default="ceilings,attention,decode,kernels,hf,prefill,prefill_kernels,experts,batching,vision,correctness,"
                            "timeline")
    ap.add_argument("--attn-tiles", default=None, metavar="JSON",
                    help='the decode attention\'s tiles by batch rows for every section, e.g. \'{"8": "c256_n64_w8_s3"}\' '
                         "(names as the attention section prints them; model_runtime.molmoe.kernels.ATTN_TILES)")
    ap.add_argument("--attn-tune", action="store_true",
                    help="after the attention section, the tiles that beat a batch size's default by 3 %% or more "
                         "serve the later sections (decode, batching, ...)")
    ap.add_argument("--agreement-prompts", type=int, default=8,
                    help="prompts the correctness section's real-shape errors are averaged over (the contract's ratio "
                         "is of the two paths' mean errors against float32)")
    ap.add_argument("--attn-ab", default=None, metavar="JSON",
                    help="section attn_ab: an attention tile table (as --attn-tiles) timed against the run's own, "
                         "alternately, in the decode corners and the batches of 8")
    ap.add_argument("--ab-rounds", type=int, default=3, help="alternations of section attn_ab")
    ap.add_argument("--routed-form", default=None, choices=ROUTED_FORMS,
                    help="prefill experts (default: the fast path's default for the device)")
    ap.add_argument("--persistent", default="best",
                    help="JSON keyword arguments of PersistentDecodeStep for the persistent section's grid, or "
                         "'best': the fastest of the sweep at the two corners")
    # two options: on an H100 stages 3, 16-row tiles and the stepped form (one kernel per phase) were
    # slower still (benchmarks/RESULTS.md, "Issue 15 on one H100"), and the section must fit a call
    ap.add_argument("--persistent-sweep", default='[{}, {"stages": 2}]',
                    help="JSON list of PersistentDecodeStep options timed at the two corners (section persistent)")
    ap.add_argument("--expert-tiles", default=json.dumps(EXPERT_TILES),
                    help="JSON list of tile configurations (BLOCK_M/N/K, num_warps, num_stages) timed by the experts section")
    ap.add_argument("--out", default=None, help="JSON with every figure")
    ap.add_argument("--best-variant-of", default=None, metavar="JSON",
                    help="print the decode variant that an earlier run's JSON found fastest (best_decode_variant) and stop")
    args = ap.parse_args()
    wanted = {"all": set(DECODE_VARIANTS), "none": set()}.get(args.variants, set(args.variants.split(",")))
    if wanted - set(DECODE_VARIANTS):
        raise SystemExit(f"bench_fast_path: unknown --variants {sorted(wanted - set(DECODE_VARIANTS))}; "
                         f"choose from {', '.join(DECODE_VARIANTS)}")
    if args.best_variant_of:
        try:
            with open(args.best_variant_of) as f:
                print(best_decode_variant(json.load(f)))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"bench_fast_path: --best-variant-of {args.best_variant_of}: {exc}") from None
        return
    dev = torch.device(args.device)
    if args.attn_tiles:
        try:
            dk.ATTN_TILES.update(attention_tiles.tiles_from_json(args.attn_tiles))
        except ValueError as exc:
            raise SystemExit(f"bench_fast_path: {exc}") from None
    sections = set(args.sections.split(","))
    if sections - set(SECTIONS):
        ap.error(f"unknown sections {sorted(sections - set(SECTIONS))}; choose from {', '.join(SECTIONS)}")
    if args.agreement_prompts < 1 or args.ab_rounds < 1:
        raise SystemExit("bench_fast_path: --agreement-prompts and --ab-rounds take 1 or more")
    if ("attn_ab" in sections) != bool(args.attn_ab):
        raise SystemExit("bench_fast_path: section attn_ab and --attn-ab JSON go together (the table B it times)")
    try:
        ab_tiles = attention_tiles.tiles_from_json(args.attn_ab, "--attn-ab") if args.attn_ab else {}
    except ValueError as exc:
        raise SystemExit(f"bench_fast_path: {exc}") from None
    res: dict[str, Any] = {"device": device_name(dev), "torch": torch.__version__, "synthetic": "random weights"}
    try:
        import transformers
        import triton  # noqa: F401

        res.update(transformers=transformers.__version__, triton=triton.__version__)
    except ImportError:
        pass
    print(json.dumps(res), flush=True)
    t_start = time.perf_counter()

    def save() -> None:
        if args.out:
            with open(args.out, "w") as f:
                json.dump(res, f, indent=1)

    def section(name: str, fn: Callable[[], Any]) -> None:
        if name not in sections:
            return
        t0 = time.perf_counter()
        try:
            res[name] = fn()
        except Exception as exc:  # keep the other sections' figures
            traceback.print_exc(limit=8)
            res[name] = {"error": repr(exc)}
        print(f"== {name} ({time.perf_counter() - t0:.0f} s)\n{json.dumps(res[name], indent=1)}", flush=True)
        save()

    section("ceilings", lambda: ceilings(dev))
    copy = res.get("ceilings", {}).get("copy_TBps")
    mm = res.get("ceilings", {}).get("matmul_TFLOPs")
    if args.quick:
        cfg, dtype, context, grid = MolmoeConfig.tiny(), torch.float32, 64, [(8, 16), (4, 12)]
    else:
        cfg, dtype, context = MolmoeConfig.molmoe_1b(), (torch.bfloat16 if dev.type == "cuda" else torch.float32), args.context
        grid = [(k, b) for k in (8, 7, 6, 5, 4) for b in (16, 15, 14, 13, 12)]
        if args.decode_grid == "corners":
            grid = [(8, 16), (8, 12), (4, 16), (4, 12)]
    t0 = time.perf_counter()
    model = build_random_model(cfg, device=dev, dtype=dtype)
    lm = model.lm
    # every section runs the fast path with these options (--decode-variant: a decode variant as if it were the default)
    run_opts: dict[str, Any] = {"routed_form": args.routed_form, **DECODE_VARIANTS[args.decode_variant]}
    res["decode_variant"] = args.decode_variant
    try:
        lm.use_fast_path(**run_opts)
    except (ValueError, RuntimeError) as exc:  # e.g. pdl where it cannot run
        raise SystemExit(f"bench_fast_path: --decode-variant {args.decode_variant}: {exc}") from None
    capture = cuda_graph_capture if dev.type == "cuda" else eager_capture
    dec = GraphDecoder(lm, max_graphs=32, capture=capture)
    # the decode step's variants timed beside the run's own form, those with programmatic dependent launch only where
    # it can run (Hopper and later)
    hopper = dev.type == "cuda" and torch.cuda.get_device_capability(dev)[0] >= 9
    variants = {name: opts for name, opts in DECODE_VARIANTS.items()
                if name != "default" and name in wanted and (hopper or not opts.get("pdl"))}
    print(f"model built in {time.perf_counter() - t0:.1f} s ({cfg.d_model=}, {dtype}); fast path backend "
          f"{lm.fused.backend}, experts {lm.fused.routed_form}, decode variant {args.decode_variant}", flush=True)
    emb1, mask1 = prompt(lm, 1, context, seed=0)

    def attention() -> dict[str, Any]:
        if dev.type != "cuda":
            return {"skipped": "the Triton kernels need a CUDA GPU"}
        c = lm.config
        out = attention_tiles.sweep(c.num_attention_heads, c.num_key_value_heads, c.hidden_size // c.num_attention_heads,
                                    context, (1, 2, 4, 8, 16), dev, attention_tiles.cuda_graph_us, dtype)
        for key, row in out.items():
            if key.startswith("rows"):
                print(f"  attention, {key}: default {row['default']} {row['default_us']:.1f} us, best {row['best']} "
                      f"{row['best_us']:.1f} us ({row['cache_MB'] / row['best_us'] * 1e3:.0f} GB/s)", flush=True)
        if args.attn_tune:
            dk.ATTN_TILES.update(attention_tiles.earned_tiles(out))
        return out

    section("attention", attention)
    res["attn_tiles"] = {str(k): attention_tiles.tile_name(t) for k, t in sorted(dk.ATTN_TILES.items())}
    print(f"decode attention tiles by batch rows: {res['attn_tiles'] or 'none (TUNING attn_chunk)'}", flush=True)

    def decode_table() -> list[dict[str, Any]]:
        rows = []
        for k, b in grid:
            plan = plan_of(k, b)
            ms = decode_ms(lm, dec, plan, emb1, mask1, args.steps, args.repeats)
            fb = decode_floor(LMShape.of(lm), plan, context).bytes
            row = {"top_k": k, "blocks": b, "ms_per_token": ms, "floor_GB": fb / 1e9}
            if copy:
                row["floor_ms"] = fb / copy / 1e9
                row["x_floor"] = ms / row["floor_ms"]
            rows.append(row)
            print(f"  decode k={k} blocks={b}: {ms:.3f} ms/token" + (f" (floor {row['floor_ms']:.3f}, x{row['x_floor']:.2f})" if copy else ""), flush=True)
        full = next(r for r in rows if (r["top_k"], r["blocks"]) == (8, 16))
        cheap = next(r for r in rows if (r["top_k"], r["blocks"]) == (4, 12))
        res["decode_ratio_k4b12_over_k8b16"] = cheap["ms_per_token"] / full["ms_per_token"]
        dec.max_graphs = 4  # the table's entries can go
        # the two corners again with the experts as sorted grouped GEMMs (decode_experts="sorted")
        lm.use_fast_path(**sorted_experts_opts(run_opts))
        sorted_dec = GraphDecoder(lm, max_graphs=2, capture=capture)
        try:
            res["decode_sorted_experts"] = {f"k{k}b{b}_ms_per_token": decode_ms(lm, sorted_dec, plan_of(k, b), emb1, mask1,
                                                                                  args.steps, args.repeats)
                                            for k, b in ((8, 16), (4, 12))}
        except Exception as exc:  # keep the table
            res["decode_sorted_experts"] = {"error": repr(exc)[:200]}
        print(f"  decode, sorted experts: {res['decode_sorted_experts']}", flush=True)
        del sorted_dec
        # the four corners with each decode variant
        res["decode_variants"] = {}
        for name, opts in variants.items():
            out: dict[str, Any] = {}
            try:
                lm.use_fast_path(routed_form=args.routed_form, **opts)
                var_dec = GraphDecoder(lm, max_graphs=4, capture=capture)
                for k, b in [c for c in ((8, 16), (8, 12), (4, 16), (4, 12)) if c in grid]:
                    ms = decode_ms(lm, var_dec, plan_of(k, b), emb1, mask1, args.steps, args.repeats)
                    ref_row = next(r for r in rows if (r["top_k"], r["blocks"]) == (k, b))
                    out[f"k{k}b{b}"] = {"ms_per_token": ms, "default_ms": ref_row["ms_per_token"],
                                        **({"x_floor": ms / ref_row["floor_ms"]} if "floor_ms" in ref_row else {})}
                out["ratio_k4b12_over_k8b16"] = out["k4b12"]["ms_per_token"] / out["k8b16"]["ms_per_token"]
                del var_dec
            except Exception as exc:  # keep the table
                out["error"] = repr(exc)[:200]
            res["decode_variants"][name] = out
            print(f"  decode, {name} {opts}: {out}", flush=True)
        lm.use_fast_path(**run_opts)
        dec.fused = lm.fused
        return rows

    section("decode", decode_table)
    if dev.type == "cuda":
        section("kernels", lambda: kernel_sweep(lm, dec, context))

    def hf() -> dict[str, Any]:
        ids = torch.randint(0, lm.n_logits - 1, (1, context), generator=torch.Generator().manual_seed(0)).to(dev)
        out: dict[str, Any] = {"experts_implementation": lm.experts_implementation}
        out["hf_ms_per_token_k8b16"] = hf_generate_ms(lm, ids, 8, repeats=max(1, args.repeats // 2))
        fast = decode_ms(lm, dec, plan_of(8, 16), emb1, mask1, args.steps, args.repeats)
        out["fast_ms_per_token_k8b16"] = fast
        out["speedup"] = out["hf_ms_per_token_k8b16"] / fast
        # memory of the live entries (static cache, decode graph pool, captured prefills)
        out["memory_MiB"] = [{"batch": r["batch"], "max_len": r["max_len"], "active_blocks": sum(k > 0 for k in r["plan"]),
                              "cache": r["cache_bytes"] / 2**20, "graph": r["graph_bytes"] / 2**20,
                              "prefill_graphs": r["prefill_graphs"], "prefill": r["prefill_bytes"] / 2**20}
                             for r in dec.memory_report()]
        return out

    section("hf", hf)

    def prefill() -> dict[str, Any]:
        lengths = (64, 128) if args.quick else (300, 500, 1000, 1500, 2000)
        out: dict[str, Any] = {"rows": []}
        for s in lengths:
            e, m = prompt(lm, 1, s, seed=s)
            row: dict[str, Any] = {"tokens": s}
            for k, b in ((8, 16), (4, 12)):
                row[f"k{k}b{b}_graph_ms"] = prefill_ms(lm, plan_of(k, b), e, m, args.repeats * 2, dec)
                if dev.type == "cuda":
                    row[f"k{k}b{b}_replay_ms"] = prefill_replay_ms(dec, plan_of(k, b), s, 1, args.repeats * 4)
                row[f"k{k}b{b}_eager_ms"] = prefill_ms(lm, plan_of(k, b), e, m, args.repeats)
                if copy and mm:  # the bar's floor: the longer of the byte and FLOP floors of this run
                    row[f"k{k}b{b}_floor_ms"] = prefill_floor(LMShape.of(lm), plan_of(k, b), s).ms(copy, mm)
                    measured = row.get(f"k{k}b{b}_replay_ms", row[f"k{k}b{b}_graph_ms"])
                    row[f"k{k}b{b}_x_floor"] = measured / row[f"k{k}b{b}_floor_ms"]
            out["rows"].append(row)
            print(f"  prefill S={s}: {row}", flush=True)
        s = lengths[len(lengths) // 2]
        e, m = prompt(lm, 1, s, seed=s)
        # the grouped expert forms of the prefill on the same prompt (each its own captured graph);
        # torch's grouped GEMM is capturable on CUDA in bf16 only (other dtypes copy through the host)
        forms = ("grouped_mm", "sorted_gemm", "sorted_tma") if dev.type != "cuda" or dtype == torch.bfloat16 else (
            "sorted_gemm", "sorted_tma")
        for form in forms:
            lm.use_fast_path(**run_opts | {"routed_form": form})
            own = GraphDecoder(lm, max_graphs=2, capture=capture)
            try:
                out[f"form_{form}_k8b16_S{s}_graph_ms"] = prefill_ms(lm, plan_of(8, 16), e, m, args.repeats * 2, own)
            except Exception as exc:  # e.g. TMA on a GPU without it: keep the other forms' figures
                out[f"form_{form}_error"] = repr(exc)[:200]
            del own
        lm.use_fast_path(**run_opts)
        dec.fused = lm.fused
        # the runtime's setting: prompts left-padded to a 64-token length bucket (masked SDPA)
        bucketed = GraphDecoder(lm, max_graphs=2, capture=capture, prefill_bucket=64)
        out[f"bucket64_k8b16_S{s}_graph_ms"] = prefill_ms(lm, plan_of(8, 16), e, m, args.repeats * 2, bucketed)
        del bucketed
        lm.use_fast_path(False)
        try:
            out[f"transformers_k8b16_S{s}_ms"] = prefill_ms(lm, plan_of(8, 16), e, m, args.repeats)
        finally:
            lm.use_fast_path(**run_opts)
            dec.fused = lm.fused
        return out

    section("prefill", prefill)

    def prefill_kernels() -> dict[str, Any]:
        # one uncaptured prefill of the fused blocks into a decoder's static cache: the kernels its
        # captured prefill graph replays
        e, m = prompt(lm, 1, context, seed=5)
        plan = plan_of(8, 16)
        out = {}
        for form in ("sorted_gemm", "sorted_tma"):
            lm.use_fast_path(**run_opts | {"routed_form": form})
            own = GraphDecoder(lm, max_graphs=1, capture=capture)

            def run(own: GraphDecoder = own) -> torch.Tensor:
                st = lm.begin(e, m, cache=own.prepare(1, plan, positions=context + 4))
                lm.advance(st, lm.n_layers, plan)
                return lm.logits(st)

            try:
                out[form] = prefill_breakdown(lm, run, 8, context, 16, copy, mm)
                print(f"  {form}: {out[form]['kernel_ms']:.2f} ms in {out[form]['kernels']} kernels; "
                      + ", ".join(f"{k} {v['ms']:.2f}" for k, v in out[form]["by_kind"].items()), flush=True)
            except Exception as exc:  # e.g. TMA on a GPU without it: keep the other form's figures
                out[form] = {"error": repr(exc)[:200]}
            del own, run
        lm.use_fast_path(**run_opts)
        dec.fused = lm.fused
        from triton.testing import do_bench

        out["attention_backends"] = attention_backends(lm, context, lambda fn: do_bench(fn, return_mode="median") * 1e3)
        print(f"  attention: {out['attention_backends']}", flush=True)
        return out

    if dev.type == "cuda":
        section("prefill_kernels", prefill_kernels)

    def experts() -> dict[str, Any]:
        from triton.testing import do_bench

        return expert_sweep(lm, context, 8, json.loads(args.expert_tiles),
                            lambda fn: do_bench(fn, return_mode="median") * 1e3, copy, mm)

    if dev.type == "cuda":
        section("experts", experts)

    def batch() -> dict[str, Any]:
        length, new = (32, 16) if args.quick else (context, 64)
        out = {}
        reps = max(1, args.repeats // 2)
        for k, b in ((8, 16), (4, 12)):
            row = out[f"k{k}b{b}"] = batching(lm, dec, plan_of(k, b), length, new, 8, reps)
        # the decode step's experts as grouped GEMMs over the batch's sorted pairs (each expert's
        # weights read once per step), the same requests batched
        lm.use_fast_path(**sorted_experts_opts(run_opts))
        sorted_dec = GraphDecoder(lm, max_graphs=4, capture=capture)
        for k, b in ((8, 16), (4, 12)):
            row = out[f"k{k}b{b}"]
            try:
                row["batched_sorted_ms"] = batching(lm, sorted_dec, plan_of(k, b), length, new, 8, reps, sequential=False)["batched_ms"]
                row["ratio_sorted"] = row["sequential_ms"] / row["batched_sorted_ms"]
            except Exception as exc:  # keep the pair kernels' figures
                row["batched_sorted_error"] = repr(exc)[:200]
            if copy and mm:
                # the bar: batched speed-up 8·t1/t8 against the byte-bound one 8·t1/floor8, i.e. floor8/t8
                shape = LMShape.of(lm)
                row["floor8_ms"] = generate_floor(shape, plan_of(k, b), length, new, 8, copy, mm)["floor_ms"]
                row["floor1_ms"] = generate_floor(shape, plan_of(k, b), length, new, 1, copy, mm)["floor_ms"]
                row["bound_speedup"] = row["sequential_ms"] / row["floor8_ms"]
                row["prefill8_floor_ms"] = prefill_floor(shape, plan_of(k, b), length, 8).ms(copy, mm)
                row["step8_floor_ms"] = decode_floor(shape, plan_of(k, b), length + new // 2, 8).ms(copy, mm)
                row["share_of_bound"] = row["ratio"] / row["bound_speedup"]
                if "ratio_sorted" in row:
                    row["share_of_bound_sorted"] = row["ratio_sorted"] / row["bound_speedup"]
        del sorted_dec
        # the same batches with each decode variant
        for name, opts in variants.items():
            lm.use_fast_path(routed_form=args.routed_form, **opts)
            var_dec = GraphDecoder(lm, max_graphs=4, capture=capture)
            for k, b in ((8, 16), (4, 12)):
                row = out[f"k{k}b{b}"]
                try:
                    row[f"batched_{name}_ms"] = batching(lm, var_dec, plan_of(k, b), length, new, 8, reps, sequential=False)["batched_ms"]
                    if "floor8_ms" in row:  # floor8 / t8, as share_of_bound
                        row[f"share_of_bound_{name}"] = row["floor8_ms"] / row[f"batched_{name}_ms"]
                except Exception as exc:  # keep the other figures
                    row[f"batched_{name}_error"] = repr(exc)[:200]
            del var_dec
        lm.use_fast_path(**run_opts)
        dec.fused = lm.fused
        return out

    section("batching", batch)

    def attn_ab() -> dict[str, Any]:
        # the run's attention table (A) against --attn-ab's (B), alternately in one process and on fresh graphs: a
        # tile's gain in a decode step is a few per cent, about the spread between two runs of this bench
        length, new = (32, 16) if args.quick else (context, 64)
        corners = [(8, 16), (4, 12)] if args.quick else [(8, 16), (8, 12), (4, 16), (4, 12)]
        batches = ((8, 16), (4, 12))
        tables = {"A": dict(dk.ATTN_TILES), "B": {**dk.ATTN_TILES, **ab_tiles}}
        times: dict[str, dict[str, list[float]]] = {"A": {}, "B": {}}
        try:
            for _ in range(args.ab_rounds):
                for name, table in tables.items():
                    dk.ATTN_TILES.clear()
                    dk.ATTN_TILES.update(table)
                    d = GraphDecoder(lm, max_graphs=8, capture=capture)
                    for k, b in corners:
                        times[name].setdefault(f"decode_k{k}b{b}_ms", []).append(
                            decode_ms(lm, d, plan_of(k, b), emb1, mask1, args.steps, args.repeats))
                    for k, b in batches:
                        times[name].setdefault(f"batch8_k{k}b{b}_ms", []).append(batching(
                            lm, d, plan_of(k, b), length, new, 8, max(1, args.repeats // 2), sequential=False)["batched_ms"])
                    del d
        finally:
            dk.ATTN_TILES.clear()
            dk.ATTN_TILES.update(tables["A"])
        out: dict[str, Any] = {name: {str(r): attention_tiles.tile_name(t) for r, t in sorted(table.items())}
                               for name, table in tables.items()}
        out["rounds"] = args.ab_rounds
        # floor8 / t8 of the batches, as the batching section's share_of_bound
        floors8 = {f"batch8_k{k}b{b}_ms": generate_floor(LMShape.of(lm), plan_of(k, b), length, new, 8, copy, mm)["floor_ms"]
                   for k, b in batches} if copy and mm else {}
        for key in times["A"]:
            a, b = statistics.median(times["A"][key]), statistics.median(times["B"][key])
            row = out[key] = {"A": times["A"][key], "B": times["B"][key], "A_median": a, "B_median": b, "B_over_A": b / a}
            if key in floors8:
                floor8 = floors8[key]
                row.update(floor8_ms=floor8, share_of_bound_A=floor8 / a, share_of_bound_B=floor8 / b)
            print(f"  attn_ab {key}: A {a:.3f} ms, B {b:.3f} ms (B/A {b / a:.4f})", flush=True)
        return out

    section("attn_ab", attn_ab)

    def timeline() -> dict[str, Any]:
        if dev.type != "cuda":
            return {}
        from benchmarks.step_timeline import step_intervals, timeline_summary

        out: dict[str, Any] = {}
        # the run's form, the default's when the run times another, and the plain launch
        forms = [("run", run_opts)]
        if args.decode_variant != "default":
            forms.append(("default", {"routed_form": args.routed_form}))
        forms.append(("cublas", {"routed_form": args.routed_form, **DECODE_VARIANTS["cublas"]}))
        emb8, mask8 = batch_prompt(lm, 8, context)  # the run's form also takes a step of the batching section's 8
        for form, opts in forms:
            lm.use_fast_path(**opts)
            form_dec = GraphDecoder(lm, max_graphs=2, capture=capture)
            for k, b in ((8, 16), (4, 12)):
                summary = timeline_summary(step_intervals(lm, form_dec, plan_of(k, b), emb1, mask1), blocks=b)
                out[f"{form}_k{k}b{b}"] = summary
                print(f"  timeline {form} (k{k}, b{b}): span {summary['span_us']:.0f} us, busy {summary['busy_us']:.0f}, "
                      f"idle {summary['idle_us']:.0f} ({summary['kernels']} kernels; per block: busy "
                      f"{summary['busy_per_block_us']:.1f}, idle {summary['idle_per_block_us']:.1f})", flush=True)
                if form == "run":
                    summary = timeline_summary(step_intervals(lm, form_dec, plan_of(k, b), emb8, mask8), blocks=b)
                    out[f"run_b8_k{k}b{b}"] = summary
                    print(f"  timeline run, 8 requests (k{k}, b{b}): busy {summary['busy_us']:.0f} us, per block "
                          f"{summary['busy_per_block_us']:.1f}", flush=True)
            del form_dec
        lm.use_fast_path(**run_opts)
        dec.fused = lm.fused
        return out

    section("timeline", timeline)

    def vision() -> list[dict[str, Any]]:
        from model_runtime.molmoe.vision_graphs import VisionGraphs

        vg = VisionGraphs(model, capture=capture)
        rows = []
        for crops in ((2, 5) if args.quick else (2, 5, 9, 13)):
            g = torch.Generator().manual_seed(crops)
            p = torch.randn(crops, cfg.patches_per_crop, cfg.pixels_per_patch, generator=g).to(dev, dtype)
            m = torch.ones(crops, cfg.patches_per_crop, device=dev)
            rows.append({"crops": crops, "eager_ms": timed_ms(lambda: model.image_features(p, m), dev, args.repeats * 2, 2),
                         "graph_ms": timed_ms(lambda: vg(p, m), dev, args.repeats * 2, 2)})
            print(f"  vision {rows[-1]}", flush=True)
        return rows

    section("vision", vision)

    def correctness() -> dict[str, Any]:
        out: dict[str, Any] = {"tiny_fp32": tiny_all_plans(dev, 16, fast_opts=run_opts)}
        print(f"  tiny: {out['tiny_fp32']}", flush=True)
        corners = [(8, 16), (4, 12)] if args.quick else [(8, 16), (8, 12), (4, 16), (4, 12)]
        lm32 = fp32_copy(lm) if dtype != torch.float32 else None
        out["real_shape"] = [real_shape_agreement(lm, dec, k, b, context, 32, lm32, run_opts, args.agreement_prompts)
                             for k, b in corners]
        # the forms the real-shape decode steps ran (the decoder's), as a check that the variant was in effect
        out["decoder_forms"] = {name: getattr(dec.fused, name, None) for name in
                                ("pdl", "decode_gemv", "decode_router", "decode_epilogues", "decode_qk_norm",
                                 "decode_experts", "decode_prefetch")}
        del lm32
        return out

    section("correctness", correctness)

    def persistent() -> dict[str, Any]:
        # the same grid through the persistent decode step, next to the fused step's figures of this run
        out: dict[str, Any] = {}
        fused_ms = {(r["top_k"], r["blocks"]): r["ms_per_token"] for r in res.get("decode", []) if isinstance(r, dict)}
        sweep = []
        for opts in json.loads(args.persistent_sweep):
            d = GraphDecoder(lm, max_graphs=2, capture=capture, impl="persistent", persistent=opts)
            row: dict[str, Any] = {"options": opts}
            try:
                for k, b in ((8, 16), (4, 12)):
                    row[f"k{k}b{b}_ms"] = decode_ms(lm, d, plan_of(k, b), emb1, mask1, args.steps, args.repeats)
                d.check_persistent()
                one = d.persistent_steps[-1]
                row.update(programs=one.num_programs, resident_per_sm=one.resident_per_sm, splits=one.n_splits)
            except Exception as exc:  # a tile option that does not compile or fit: keep the others
                row["error"] = repr(exc)
            sweep.append(row)
            print(f"  sweep {row}", flush=True)
            del d
        out["sweep"] = sweep
        ok = [r for r in sweep if "error" not in r]
        best = min(ok, key=lambda r: r["k8b16_ms"] + r["k4b12_ms"])["options"] if ok else {}
        out["options"] = best if args.persistent == "best" else json.loads(args.persistent)
        decp = GraphDecoder(lm, max_graphs=32, capture=capture, impl="persistent", persistent=out["options"])
        rows = []
        for k, b in grid:
            plan = plan_of(k, b)
            ms = decode_ms(lm, decp, plan, emb1, mask1, args.steps, args.repeats)
            row = {"top_k": k, "blocks": b, "ms_per_token": ms, "fused_ms_per_token": fused_ms.get((k, b))}
            if copy:
                row["floor_ms"] = decode_floor(LMShape.of(lm), plan, context).bytes / copy / 1e9
                row["x_floor"] = ms / row["floor_ms"]
            rows.append(row)
            print(f"  persistent k={k} blocks={b}: {ms:.3f} ms/token" + (f" (x{row['x_floor']:.2f} floor)" if copy else "")
                  + (f", fused {row['fused_ms_per_token']:.3f}" if row["fused_ms_per_token"] else ""), flush=True)
        decp.check_persistent()
        out["decode"] = rows
        # the grid barriers alone (CUDA: the stepped form has none): every phase's work skipped
        barriers = []
        for k, b in ((8, 16), (4, 12)) if dev.type == "cuda" else ():
            cache = decp.prepare(1, plan_of(k, b), positions=context + 8)
            one = next(s for s in decp.persistent_steps if s.cache is cache)
            if one.stepped:  # one launch per phase: no grid barriers to time
                break
            replay, _ = capture(lambda one=one: (one.barriers_only(), one.logits)[1])  # as the decode graph replays it

            def many(replay=replay) -> None:
                for _ in range(args.steps):
                    replay()

            ms = timed_ms(many, dev, repeats=args.repeats, warmup=1) / args.steps
            barriers.append({"top_k": k, "blocks": b, "barriers": one.phases - 1, "ms": ms,
                             "us_per_barrier": ms * 1e3 / (one.phases - 1)})
            print(f"  barriers only k={k} blocks={b}: {ms:.3f} ms ({barriers[-1]['us_per_barrier']:.2f} us each)", flush=True)
        decp.check_persistent()
        out["barriers_only"] = barriers
        full = next(r for r in rows if (r["top_k"], r["blocks"]) == (8, 16))
        cheap = next(r for r in rows if (r["top_k"], r["blocks"]) == (4, 12))
        out["ratio_k4b12_over_k8b16"] = cheap["ms_per_token"] / full["ms_per_token"]
        decp.max_graphs = 4
        out["tiny_fp32"] = tiny_all_plans(dev, 16, impl="persistent", fast_opts=run_opts)
        print(f"  tiny: {out['tiny_fp32']}", flush=True)
        corners = [(8, 16), (4, 12)] if args.quick else [(8, 16), (8, 12), (4, 16), (4, 12)]
        lm32 = fp32_copy(lm) if dtype != torch.float32 else None
        out["real_shape"] = [real_shape_agreement(lm, decp, k, b, context, 32, lm32, run_opts, args.agreement_prompts)
                             for k, b in corners]
        decp.check_persistent()
        return out

    section("persistent", persistent)
    res["bars"] = issue15_bars(res, context)
    for b in res["bars"]:
        print(f"  bar {b['bar']}: {b['value']:.3f} ({'met' if b['met'] else 'not met'})", flush=True)
    res["wall_s"] = time.perf_counter() - t_start
    save()
    print(f"wall {res['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
