"""Static KV cache + fixed-shape decode step vs the eager BlockKVCache path (tiny, CPU, float32),
and the GraphDecoder's LRU bookkeeping with a fake capture function.

The CUDA-graph capture itself is checked by benchmarks/bench_fast_path.py on a GPU.
"""

from __future__ import annotations

import pytest
import torch

from envs.knob_space import KnobSpace
from model_runtime.molmoe.generation import greedy_generate
from model_runtime.molmoe.language_model import BlockKVCache, MolmoeLanguageModel
from model_runtime.molmoe.static_decode import (
    STATIC_MOE_FORMS,
    GraphDecoder,
    StaticKVCache,
    static_decode_step,
    static_greedy_generate,
    static_moe,
)
from tests.tiny_molmoe import left_padded_ids, tiny_config, tiny_olmoe_hf
from tests.tiny_molmoe import torch_single_thread  # noqa: F401  (autouse fixture)

CFG = tiny_config()
EOS, PAD = CFG.tokens.eos, CFG.tokens.pad


@pytest.fixture(scope="module")
def lm() -> MolmoeLanguageModel:
    return MolmoeLanguageModel.from_hf(tiny_olmoe_hf(CFG, seed=1))


def _plan(config: tuple) -> tuple[int, ...]:
    return KnobSpace().plan(config).top_k_per_block


def _left_padded(lengths: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return left_padded_ids(lengths, seed, PAD)


@pytest.mark.parametrize("form", STATIC_MOE_FORMS)
@pytest.mark.parametrize("top_k", [1, 3, 8])
@torch.no_grad()
def test_static_moe_equals_transformers_sparse_block(lm, form, top_k):
    mlp = lm.backbone.layers[4].mlp
    x = torch.randn(3, 5, CFG.d_model, generator=torch.Generator().manual_seed(top_k))
    mlp.gate.top_k = top_k
    ref = mlp(x)
    ours = static_moe(mlp, x, top_k, form)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= 1e-5
    assert ref.abs().max().item() > 1e-2  # not trivially zero


@pytest.mark.parametrize("form", STATIC_MOE_FORMS)
@pytest.mark.parametrize(
    "config,lengths",
    [(("high", 1, 8, 16), (17,)), (("low", 2, 4, 13), (21, 14)), (("medium", 3, 6, 14), (9, 19, 15))],
)
@torch.no_grad()
def test_static_step_logits_equal_eager_cache_path(lm, form, config, lengths):
    plan = _plan(config)
    ids, mask = _left_padded(lengths, seed=sum(lengths))
    emb = lm.embed(ids)
    eager = lm.begin(emb, mask, cache=BlockKVCache(reserve=4))
    lm.advance(eager, lm.n_layers, plan)
    tok = lm.logits(eager).argmax(-1)

    cache = StaticKVCache.for_plan(lm, plan, batch=len(lengths), max_len=ids.shape[1] + 4)
    assert cache.blocks == tuple(b for b, k in enumerate(plan) if k > 0)  # skipped blocks own nothing
    static = lm.begin(emb, mask, cache=cache)
    lm.advance(static, lm.n_layers, plan)
    assert torch.equal(lm.logits(static), lm.logits(eager))  # the prefill goes through unchanged
    cache.start_decode(mask)
    for step in range(3):
        eager = lm.begin_decode(eager, tok)
        lm.advance(eager, lm.n_layers, plan)
        ref = lm.logits(eager)
        ours = static_decode_step(lm, cache, tok, plan, moe_form=form)
        cache.position += 1
        assert (ours - ref).abs().max().item() <= 1e-5, f"step {step}"
        tok = ref.argmax(-1)
    assert int(cache.slot) == ids.shape[1] + 3
    assert torch.equal(cache.valid[:, : ids.shape[1] + 3], eager.attention_mask)


@pytest.mark.parametrize("config", [("high", 1, 8, 16), ("low", 1, 4, 12), ("medium", 4, 5, 15)])
@torch.no_grad()
def test_greedy_tokens_over_8_steps_equal_greedy_generate(lm, config):
    plan = _plan(config)
    ids, mask = _left_padded((16, 11), seed=3)
    dec = GraphDecoder(lm, max_len=32)
    ours = static_greedy_generate(dec, lm.embed(ids), mask, top_k_per_block=plan, eos_token_id=-1,
                                  pad_token_id=PAD, max_new_tokens=9)
    ref = greedy_generate(lm, lm.embed(ids), mask, top_k_per_block=plan, p=config[1], eos_token_id=-1,
                          pad_token_id=PAD, max_new_tokens=9)
    assert ours == ref.tokens and ref.decode_steps == 8
    # a second request on the same (reused, reset) entry gives the same tokens again
    again = static_greedy_generate(dec, lm.embed(ids), mask, top_k_per_block=plan, eos_token_id=-1,
                                   pad_token_id=PAD, max_new_tokens=9)
    assert again == ours and dec.captures == 1


@torch.no_grad()
def test_padded_bucket_rows_and_eos_match_eager(lm):
    plan = _plan(("low", 1, 6, 15))
    ids, mask = _left_padded((12, 7, 10), seed=5)  # 3 rows in bucket 4
    emb = lm.embed(ids)
    free = greedy_generate(lm, emb, mask, top_k_per_block=plan, p=1, eos_token_id=-1, pad_token_id=PAD,
                           max_new_tokens=8)
    eos = free.tokens[0][3]
    ref = greedy_generate(lm, emb, mask, top_k_per_block=plan, p=1, eos_token_id=eos, pad_token_id=PAD,
                          max_new_tokens=8)
    dec = GraphDecoder(lm, max_len=24)
    ours = static_greedy_generate(dec, emb, mask, top_k_per_block=plan, eos_token_id=eos, pad_token_id=PAD,
                                  max_new_tokens=8)
    assert ours == ref.tokens and dec.keys[0][0] == 4


def _fake_capture(log: list[str]):
    def capture(step):
        log.append("capture")
        return step, 1000

    return capture


@torch.no_grad()
def test_lru_bounds_live_graphs_and_reports_memory(lm):
    log: list[str] = []
    dec = GraphDecoder(lm, max_len=8, max_graphs=2, batch_buckets=(1, 4), capture=_fake_capture(log))
    a, b, c = _plan(("high", 1, 8, 16)), _plan(("low", 1, 4, 12)), _plan(("medium", 1, 6, 14))
    dec.prepare(1, a)
    dec.prepare(3, a)  # bucket 4: a different key
    assert dec.keys == [(1, 8, a), (4, 8, a)] and log == ["capture"] * 2
    dec.prepare(1, a)  # hit: no capture, becomes most recent
    assert dec.keys == [(4, 8, a), (1, 8, a)] and len(log) == 2
    dec.prepare(1, b)  # evicts the least recently used (4, a)
    assert dec.keys == [(1, 8, a), (1, 8, b)] and dec.evictions == 1 and len(log) == 3
    dec.prepare(2, c)
    assert dec.keys == [(1, 8, b), (4, 8, c)] and dec.captures == 4
    report = dec.memory_report()
    assert [r["plan"] for r in report] == [b, c]
    for r in report:
        n_active = sum(k > 0 for k in r["plan"])
        kv = 2 * n_active * r["batch"] * CFG.olmoe_config().num_key_value_heads * 8 * (CFG.d_model // 4) * 4
        assert r["graph_bytes"] == 1000 and r["cache_bytes"] >= kv and r["bytes"] > r["cache_bytes"] + 1000


@torch.no_grad()
def test_step_bumps_lru_and_rejects_evicted_or_full_caches(lm):
    dec = GraphDecoder(lm, max_len=6, max_graphs=2, batch_buckets=(1,), capture=_fake_capture([]))
    a, b, c = _plan(("high", 1, 8, 16)), _plan(("low", 1, 4, 12)), _plan(("medium", 1, 6, 14))
    ids, mask = _left_padded((4,), seed=7)
    cache_a = dec.prepare(1, a)
    state = lm.begin(lm.embed(ids), mask, cache=cache_a)
    lm.advance(state, lm.n_layers, a)
    cache_a.start_decode(mask)
    dec.prepare(1, b)
    dec.step(cache_a, torch.tensor([3]))  # a is most recent again
    dec.prepare(1, c)  # so b is evicted, not a
    assert dec.keys == [(1, 6, a), (1, 6, c)]
    dec.step(cache_a, torch.tensor([4]))
    with pytest.raises(ValueError, match="full"):
        dec.step(cache_a, torch.tensor([5]))
    with pytest.raises(ValueError, match="rows"):
        dec.step(dec.prepare(1, a), torch.tensor([1, 2]))
    foreign = StaticKVCache.for_plan(lm, a, batch=1, max_len=6)
    with pytest.raises(ValueError, match="live entry"):
        dec.step(foreign, torch.tensor([1]))


def test_invalid_inputs_raise(lm):
    plan = _plan(("low", 1, 4, 12))
    cache = StaticKVCache.for_plan(lm, plan, batch=1, max_len=4)
    skipped = plan.index(0)
    with pytest.raises(ValueError, match="owns no static cache"):
        cache.update(torch.zeros(1, 4, 1, 16), torch.zeros(1, 4, 1, 16), skipped)
    with pytest.raises(ValueError, match="max_len"):
        cache.update(torch.zeros(1, 4, 5, 16), torch.zeros(1, 4, 5, 16), 0)
    with pytest.raises(ValueError, match="active blocks"):
        static_decode_step(lm, cache, torch.zeros(1, dtype=torch.long), lm.full_plan())
    with pytest.raises(ValueError, match="MoE form"):
        GraphDecoder(lm, max_len=4, moe_form="dense")
    with pytest.raises(ValueError, match="bucket"):
        GraphDecoder(lm, max_len=4, batch_buckets=(1, 2)).bucket(3)
    with pytest.raises(ValueError, match="max_graphs"):
        GraphDecoder(lm, max_len=4, max_graphs=0)
    with pytest.raises(ValueError, match="decode impl"):
        GraphDecoder(lm, max_len=4, impl="magic")
    with pytest.raises(ValueError, match="exceed max_len"):
        GraphDecoder(lm, max_len=4).prepare(1, plan, positions=5)
    with pytest.raises(ValueError, match="positions="):
        GraphDecoder(lm).prepare(1, plan)


@torch.no_grad()
def test_memory_budget_evicts_least_recently_used_entries(lm):
    dec = GraphDecoder(lm, max_len=8, max_graphs=10, batch_buckets=(1,), capture=_fake_capture([]))
    a, b, c = _plan(("high", 1, 8, 16)), _plan(("low", 1, 4, 12)), _plan(("medium", 1, 6, 14))
    dec.prepare(1, a)
    one = dec.nbytes  # an entry of the full plan
    dec.max_bytes = 2 * one  # room for about two entries
    dec.prepare(1, b)
    dec.prepare(1, a)  # a becomes the most recent
    dec.prepare(1, c)  # over budget: b (least recent) goes, a and c stay
    assert [k[2] for k in dec.keys] == [a, c] and dec.nbytes <= 2 * one and dec.evictions == 1
    dec.max_bytes = 1  # nothing fits: the entry in use is still kept
    dec.prepare(1, b)
    assert [k[2] for k in dec.keys] == [b]
    with pytest.raises(ValueError, match="max_bytes"):
        GraphDecoder(lm, max_bytes=0)


def test_caches_sized_per_request_in_length_buckets(lm):
    dec = GraphDecoder(lm, len_bucket=16, capture=_fake_capture([]))
    plan = _plan(("low", 1, 4, 12))
    assert dec.prepare(1, plan, positions=5).max_len == 16
    assert dec.prepare(1, plan, positions=16).max_len == 16
    assert dec.prepare(1, plan, positions=17).max_len == 32
    assert [k[1] for k in dec.keys] == [16, 32]


def test_right_align_moves_left_padding_after_the_tokens():
    from model_runtime.molmoe.static_decode import right_align

    emb = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    e, m, last = right_align(emb, mask, 6)
    assert torch.equal(m, torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]]))
    assert torch.equal(last, torch.tensor([1, 3]))
    assert torch.equal(e[0, :2], emb[0, 2:]) and torch.equal(e[1, :4], emb[1]) and e[0, 2:].abs().sum() == 0
    buf = (torch.ones(3, 6, 3), torch.ones(3, 6, dtype=torch.long), torch.ones(3, dtype=torch.long))
    right_align(emb, mask, 6, out=buf)  # rows past the input's are cleared
    assert torch.equal(buf[0][:2], e) and buf[0][2].abs().sum() == 0 and buf[1][2].sum() == 0 and buf[2][2] == 0
    with pytest.raises(ValueError, match="shorter"):
        right_align(emb, mask, 3)
