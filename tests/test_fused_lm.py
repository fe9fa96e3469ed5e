"""The fast path (FusedLM: fused prefill blocks and fused decode step) vs transformers' blocks
(tiny model, CPU, float32): torch ops everywhere, and the Triton kernels composed into a whole
decode step through Triton's CPU interpreter."""

from __future__ import annotations

import pytest
import torch

from envs.knob_space import KnobSpace
from model_runtime.molmoe import kernels as dk
from model_runtime.molmoe.fused_lm import ROUTED_FORMS, FusedLM
from model_runtime.molmoe.generation import greedy_generate
from model_runtime.molmoe.language_model import BlockKVCache, MolmoeLanguageModel
from model_runtime.molmoe.static_decode import GraphDecoder, StaticKVCache
from tests.kernel_testing import triton_ok
from tests.tiny_molmoe import left_padded_ids, prefilled_static_cache, tiny_config, tiny_olmoe_hf
from tests.tiny_molmoe import torch_single_thread  # noqa: F401  (autouse fixture)

CFG = tiny_config()
PAD = CFG.tokens.pad
CONFIGS = [("high", 1, 8, 16), ("low", 1, 4, 12), ("medium", 3, 5, 14), ("low", 5, 6, 16)]


@pytest.fixture()
def lm() -> MolmoeLanguageModel:
    return MolmoeLanguageModel.from_hf(tiny_olmoe_hf(CFG, seed=2))


def _plan(config: tuple) -> tuple[int, ...]:
    return KnobSpace().plan(config).top_k_per_block


def _left_padded(lengths: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return left_padded_ids(lengths, seed, PAD)


def test_qkv_packing_shares_storage_and_keeps_the_eager_path(lm):
    ids, mask = _left_padded((9, 6), seed=0)
    before = lm(ids, mask)
    fused = FusedLM(lm)
    attn = lm.backbone.layers[3].self_attn
    packed = fused.blocks[3].qkv
    assert attn.q_proj.weight.data_ptr() == packed.data_ptr()  # a view, no copy
    assert torch.equal(packed[: attn.q_proj.out_features], attn.q_proj.weight)
    assert FusedLM(lm).blocks[3].qkv.data_ptr() == packed.data_ptr()  # packing twice reuses it
    assert torch.equal(lm(ids, mask), before)


@pytest.mark.parametrize("form", ROUTED_FORMS)
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("lengths", [(12,), (12, 7, 10)])
@torch.no_grad()
def test_fused_prefill_equals_transformers_blocks(lm, form, config, lengths):
    plan = _plan(config)
    ids, mask = _left_padded(lengths, seed=1)
    ref = lm(ids, mask, top_k_per_block=plan)
    lm.use_fast_path(routed_form=form)
    ours = lm(ids, mask, top_k_per_block=plan)
    lm.use_fast_path(False)
    real = mask.bool()  # left-padding rows attend to nothing: their outputs are never used
    assert (ours - ref)[real].abs().max().item() <= 1e-5


@torch.no_grad()
def test_fused_staged_forward_and_decode_through_block_cache(lm):
    """Stopping after block p-1 and continuing gives the one-shot result; eager decode steps over
    a BlockKVCache (attention with a past: the padding-mask SDPA) equal the reference's."""
    plan = _plan(("medium", 3, 5, 14))
    ids, mask = _left_padded((11, 8), seed=2)
    out = {}
    for fast in (False, True):
        lm.use_fast_path(fast)
        st = lm.begin(lm.embed(ids), mask, cache=BlockKVCache(reserve=4))
        lm.advance(st, 3, plan)
        lat = st.hidden[:, -1].clone()
        lm.advance(st, lm.n_layers, plan)
        logits = [lm.logits(st)]
        for _ in range(3):
            st = lm.begin_decode(st, logits[-1].argmax(-1))
            lm.advance(st, lm.n_layers, plan)
            logits.append(lm.logits(st))
        out[fast] = (lat, torch.stack(logits))
    lm.use_fast_path(False)
    for a, b in zip(out[False], out[True]):
        assert (a - b).abs().max().item() <= 1e-5


@pytest.mark.parametrize("config", CONFIGS)
@torch.no_grad()
def test_fused_decode_step_equals_eager_decode(lm, config):
    plan = _plan(config)
    ids, mask = _left_padded((13, 9, 5), seed=3)
    emb = lm.embed(ids)
    eager = lm.begin(emb, mask, cache=BlockKVCache(reserve=4))
    lm.advance(eager, lm.n_layers, plan)
    tok = lm.logits(eager).argmax(-1)
    fused = FusedLM(lm, backend="torch")
    cache = StaticKVCache.for_plan(lm, plan, batch=4, max_len=ids.shape[1] + 5)  # one padded bucket row
    st = lm.begin(emb, mask, cache=cache)
    lm.advance(st, lm.n_layers, plan)
    cache.start_decode(mask)
    for step in range(4):
        eager = lm.begin_decode(eager, tok)
        lm.advance(eager, lm.n_layers, plan)
        ref = lm.logits(eager)
        ours = fused.decode_step(cache, torch.cat([tok, torch.zeros(1, dtype=torch.long)]), plan)[:3]
        cache.position += 1
        assert (ours - ref).abs().max().item() <= 1e-5, f"step {step}"
        tok = ref.argmax(-1)
    with pytest.raises(ValueError, match="active blocks"):
        other = lm.full_plan() if 0 in plan else _plan(("low", 1, 4, 12))
        fused.decode_step(cache, torch.zeros(4, dtype=torch.long), other)


@triton_ok
@torch.no_grad()
def test_triton_decode_step_equals_torch_ops(lm):
    """The Triton kernels composed into a prefill into the static cache (keys/values written in
    place) and whole decode steps (interpreted on CPU) = the torch ops."""
    plan = _plan(("low", 2, 5, 13))
    ids, mask = _left_padded((10, 6), seed=4)
    logits = {}
    # (the Triton GEMV serves the Q/K/V and output projections in the fifth form; the split router's top-k
    # kernel is the second form's, and the GEMV alone is test_decode_kernels'; the fourth form runs the reductions in
    # the last program of the kernel before them, the fifth takes the router's top-k in the experts' kernel. The
    # opt-in forms measured slower (the third, the fourth and the last two) are composed from the ops' torch references,
    # which test_decode_kernels checks their kernels against (the fourth's with its arrival counters back at zero) and
    # the GPU test in test_pdl composes, to keep the suite short)
    forms = (("torch", "cublas", "split", "kernels"), ("triton", "cublas", "split", "kernels"),
             ("torch", "triton", "fused", "kernels"), ("torch", "triton", "splitk", "last_program"),
             ("triton", "triton", "in_experts", "kernels"), ("torch", "triton", "in_experts", "on_load"),
             ("torch", "triton", "in_experts", "on_load_attention"))
    for backend, gemv, router, epilogues in forms:
        # (the fourth form also norms and rotates the queries and keys in the attention's kernel; the second form's
        # prefill feeds the experts' GEMMs by TMA descriptors, test_triton_prefill's by pointers)
        fused = FusedLM(
            lm, backend=backend, routed_form="sorted_tma" if gemv == "cublas" else "sorted_gemm", decode_gemv=gemv,
            decode_router=router, decode_epilogues=epilogues,
            decode_qk_norm="in_attention" if epilogues == "last_program" else "kernel")
        # the forms after the second differ from the second in their decode step only: their prefill (the interpreter's
        # slowest part) is the torch ops', and one step (the first two forms check the second step's cache positions)
        prefill = FusedLM(lm, backend="torch") if gemv == "triton" else fused
        cache, tok = prefilled_static_cache(lm, prefill, plan, ids, mask)
        steps = []
        for _ in range(1 if gemv == "triton" else 2):
            steps.append(fused.decode_step(cache, tok, plan))
            cache.position += 1
            tok = steps[-1].argmax(-1)
        logits[backend, gemv, router, epilogues] = torch.stack(steps)
    ref = logits[forms[0]]
    assert (logits[forms[1]] - ref).abs().max().item() <= 1e-5
    # the router's projection and top-k as one op (decode_router="fused"): the same steps
    assert (logits[forms[2]] - ref[:1]).abs().max().item() <= 1e-5
    # the last-arrival epilogues (decode_epilogues="last_program", decode_router="splitk"): the same steps
    assert (logits[forms[3]] - ref[:1]).abs().max().item() <= 1e-5
    # the router's top-k taken by the experts' gate/up kernel (decode_router="in_experts"): the same step
    assert (logits[forms[4]] - ref[:1]).abs().max().item() <= 1e-5
    # the residual adds in the kernels that produce them and the norms in those that read them (decode_epilogues=
    # "on_load", 8 kernels a block; "on_load_attention", the output projection and the router only): the same step
    assert (logits[forms[5]] - ref[:1]).abs().max().item() <= 1e-5
    assert (logits[forms[6]] - ref[:1]).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="needs decode_router='in_experts'"):
        FusedLM(lm, backend="torch", decode_epilogues="on_load", decode_router="split")
    with pytest.raises(ValueError, match="unknown decode epilogue form 'fused'"):
        FusedLM(lm, backend="torch", decode_epilogues="fused")
    with pytest.raises(ValueError, match="unknown decode QK-norm form 'rows'"):
        FusedLM(lm, backend="torch", decode_qk_norm="rows")
    with pytest.raises(ValueError, match="needs decode_experts='pairs'"):
        FusedLM(lm, backend="torch", decode_router="in_experts", decode_experts="sorted")
    with pytest.raises(ValueError, match="unknown decode GEMV form 'cutlass'"):
        FusedLM(lm, backend="torch", decode_gemv="cutlass")
    with pytest.raises(ValueError, match="unknown decode router form 'sparse'"):
        FusedLM(lm, backend="torch", decode_router="sparse")


@triton_ok
@torch.no_grad()
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_sorted_decode_experts_equal_the_pair_kernels(lm, backend):
    """decode_experts="sorted" (the prefill's grouped GEMMs over the batch's pairs, the gather-sum
    with the next block's norm) gives the pair kernels' decode steps; an unknown form is refused. (The pair
    kernels run as torch ops: test_triton_decode_step_equals_torch_ops checks their Triton form against them.)"""
    plan = _plan(("low", 1, 5, 12))
    ids, mask = _left_padded((10, 6), seed=4)
    logits = {}
    for form in ("pairs", "sorted"):
        fused = FusedLM(lm, backend=backend if form == "sorted" else "torch", routed_form="sorted_gemm",
                        decode_experts=form)
        # the same prefill for both (the decode step is under test)
        cache, tok = prefilled_static_cache(lm, FusedLM(lm, backend="torch"), plan, ids, mask)
        logits[form] = fused.decode_step(cache, tok, plan)
    assert (logits["sorted"] - logits["pairs"]).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="unknown decode expert form 'grouped'"):
        FusedLM(lm, backend=backend, decode_experts="grouped")


@triton_ok
@torch.no_grad()
def test_triton_prefill_equals_transformers_blocks(lm):
    """The prefill with the Triton ops (norms, QK-norm/RoPE, router top-k, SiLU·up·weight, gather-sum;
    interpreted on CPU) around the grouped GEMMs = transformers' blocks. (The ops around the GEMMs are the same
    for every routed form: test_fused_prefill composes each form with the torch ops, and test_triton_decode_step
    this prefill with the TMA-fed GEMMs.)"""
    plan = _plan(("medium", 3, 5, 14))
    ids, mask = _left_padded((7, 5), seed=9)
    ref = lm(ids, mask, top_k_per_block=plan)
    lm.use_fast_path(backend="triton", routed_form="sorted_gemm")
    ours = lm(ids, mask, top_k_per_block=plan)
    lm.use_fast_path(False)
    assert (ours - ref)[mask.bool()].abs().max().item() <= 1e-5


@pytest.mark.parametrize("n_latency", [0, 5])
@pytest.mark.parametrize("config", CONFIGS)
@torch.no_grad()
def test_greedy_generate_through_the_decoder_equals_eager(lm, config, n_latency):
    """n_latency=0: the decoder's captured staged prefill (eager capture on CPU: the same code);
    n_latency=5: the eager prefill into the decoder's cache, then its decode steps."""
    plan = _plan(config)
    ids, mask = _left_padded((14, 9, 12), seed=5)  # 3 rows in bucket 4
    emb = lm.embed(ids)
    kw = dict(top_k_per_block=plan, p=config[1], eos_token_id=-1, pad_token_id=PAD, max_new_tokens=10,
              n_latency_tokens=n_latency)
    ref = greedy_generate(lm, emb, mask, **kw)
    lm.use_fast_path()
    dec = GraphDecoder(lm, len_bucket=8)
    ours = greedy_generate(lm, emb, mask, **kw, decoder=dec)
    again = greedy_generate(lm, emb, mask, **kw, decoder=dec)  # reuses the entry (and its prefill graph)
    lm.use_fast_path(False)
    assert ours.tokens == again.tokens == ref.tokens and ours.decode_steps == ref.decode_steps == 9
    assert (ours.first_logits - ref.first_logits).abs().max().item() <= 1e-5
    assert (ours.latency_token - ref.latency_token).abs().max().item() <= 1e-5
    if n_latency:
        assert (ours.latency_tokens - ref.latency_tokens).abs().max().item() <= 1e-5
    assert dec.keys[0][:2] == (4, 24)  # 14 + 9 positions, rounded up to the 8-position bucket
    assert dec.captures == 1 and dec.prefill_captures == (0 if n_latency else 1)
    other = MolmoeLanguageModel.from_hf(tiny_olmoe_hf(CFG, seed=3))
    with pytest.raises(ValueError, match="different language model"):
        greedy_generate(other, emb, mask, top_k_per_block=plan, p=1, eos_token_id=-1, pad_token_id=PAD,
                        max_new_tokens=2, decoder=dec)


@torch.no_grad()
def test_prefill_graphs_keyed_by_length_and_p_lru_bounded(lm):
    log: list[str] = []

    def capture(step):
        log.append("capture")
        return step, 10

    lm.use_fast_path()
    dec = GraphDecoder(lm, len_bucket=32, max_prefill_graphs=2, prefill_capture_after=0, batch_buckets=(1, 2),
                       capture=capture)
    plan = _plan(("low", 2, 5, 13))
    full_ids, full_mask = _left_padded((10, 10), seed=6)
    pad_ids, pad_mask = _left_padded((10, 7), seed=6)
    long_ids, long_mask = _left_padded((12, 12), seed=6)
    for ids, mask, p in ((full_ids, full_mask, 2), (full_ids, full_mask, 2), (pad_ids, pad_mask, 2), (full_ids, full_mask, 1),
                         (long_ids, long_mask, 2)):
        cache = dec.prepare(2, plan, positions=16)
        lat, logits = dec.prefill(cache, lm.embed(ids), mask, p)
        assert cache.position == mask.shape[1] and cache.rows == 2 and lat.shape == (2, CFG.d_model)
    entry_prefills = dec.memory_report()[0]["prefill_graphs"]
    lm.use_fast_path(False)
    # decode graph + 3 distinct prefill keys (10 tokens p=2 — with or without padding, rows are
    # right-aligned — 10 tokens p=1, 12 tokens p=2); at most 2 kept
    assert log.count("capture") == 4 and dec.prefill_captures == 3 and entry_prefills == 2
    with pytest.raises(ValueError, match="insertion position"):
        dec.prefill(dec.prepare(2, plan, positions=16), lm.embed(full_ids), full_mask, 17)
    with pytest.raises(ValueError, match="max_prefill_graphs"):
        GraphDecoder(lm, max_prefill_graphs=-1)
    with pytest.raises(ValueError, match="prefill_capture_after"):
        GraphDecoder(lm, prefill_capture_after=-1)


@torch.no_grad()
def test_length_bucketed_prefill_right_aligns_and_keeps_the_outputs(lm):
    """prefill_bucket=8: prompts of 10 and 13 tokens share one 16-position graph (rows right-aligned,
    causal); generation equals the left-padded reference; the bucket is used for the cache length too."""
    plan = _plan(("low", 2, 5, 13))
    lm.use_fast_path()
    dec = GraphDecoder(lm, len_bucket=8, prefill_bucket=8, prefill_capture_after=0, batch_buckets=(2,))
    results = []
    for lengths in ((10, 7), (13, 9), (16, 16)):
        ids, mask = _left_padded(lengths, seed=sum(lengths))
        kw = dict(top_k_per_block=plan, p=2, eos_token_id=-1, pad_token_id=PAD, max_new_tokens=6)
        ours = greedy_generate(lm, lm.embed(ids), mask, **kw, decoder=dec)
        lm.use_fast_path(False)
        ref = greedy_generate(lm, lm.embed(ids), mask, **kw)
        lm.use_fast_path()
        results.append((ours.tokens == ref.tokens, (ours.first_logits - ref.first_logits).abs().max().item(),
                        (ours.latency_token - ref.latency_token).abs().max().item()))
    lm.use_fast_path(False)
    assert all(same for same, _, _ in results) and max(max(a, b) for _, a, b in results) <= 1e-5
    # (10,7), (13,9) and (16,16) -> one 16-position graph
    assert dec.prefill_captures == 1 and dec.prefill_len(10) == dec.prefill_len(13) == 16
    with pytest.raises(ValueError, match="prefill_bucket"):
        GraphDecoder(lm, prefill_bucket=0)


@torch.no_grad()
def test_first_prefill_of_a_length_runs_eagerly_then_replays(lm):
    """Default policy: a length's first prefill runs eagerly into the cache, its second is captured;
    both leave the same cache state and outputs."""
    lm.use_fast_path()
    dec = GraphDecoder(lm, len_bucket=32, batch_buckets=(2,))
    plan = _plan(("medium", 3, 5, 14))
    ids, mask = _left_padded((10, 7), seed=8)
    outs = []
    for _ in range(3):
        cache = dec.prepare(2, plan, positions=16)
        lat, logits = dec.prefill(cache, lm.embed(ids), mask, 3)
        outs.append((lat.clone(), logits.clone(), cache.valid.clone(), int(cache.slot), cache.keys[0].clone()))
        outs[-1] += (dec.prefill_captures,)
    lm.use_fast_path(False)
    assert [o[5] for o in outs] == [0, 1, 1]
    for o in outs[1:]:
        for a, b in zip(o[:5], outs[0][:5]):
            assert a == b if isinstance(a, int) else (a - b).abs().max().item() <= 1e-5


def test_fused_lm_rejects_bad_settings(lm):
    with pytest.raises(ValueError, match="routed-expert form"):
        FusedLM(lm, routed_form="dense")
    with pytest.raises(ValueError, match="unknown backend"):
        FusedLM(lm, backend="cuda-magic")
