"""MolmoE language model with knobs vs transformers' OlmoeForCausalLM (tiny, CPU, float32).

Stages (a) and (b): full-configuration logits, per-block top-k and skipped blocks, the staged
forward, greedy generation with the skipped-block KV cache, batching with left padding, EOS.
"""

from __future__ import annotations

import pytest
import torch

from envs.knob_space import KnobSpace
from model_runtime.molmoe.generation import greedy_generate
from model_runtime.molmoe.language_model import BlockKVCache, MolmoeLanguageModel
from tests.tiny_molmoe import pruned_hf_copy, tiny_config, tiny_olmoe_hf
from tests.tiny_molmoe import torch_single_thread  # noqa: F401  (autouse fixture)

CFG = tiny_config()
EOS, PAD = CFG.tokens.eos, CFG.tokens.pad


@pytest.fixture(scope="module")
def hf():
    return tiny_olmoe_hf(CFG, seed=1)


@pytest.fixture(scope="module")
def lm(hf):
    return MolmoeLanguageModel.from_hf(hf)


def _ids(n: int, seed: int, batch: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 250, (batch, n), generator=g)


def _plan(config: tuple) -> tuple[int, ...]:
    return KnobSpace().plan(config).top_k_per_block


@torch.no_grad()
def test_full_configuration_logits_match_transformers(hf, lm):
    ids = _ids(40, 0, batch=2)
    ref = hf(ids).logits
    ours = lm(ids)
    assert ours.shape == ref.shape == (2, 40, CFG.vocab_rows)
    assert (ours - ref).abs().max().item() <= 1e-4


@torch.no_grad()
def test_left_padded_logits_match_transformers_with_mask(hf, lm):
    ids = _ids(30, 1, batch=2)
    mask = torch.ones_like(ids)
    mask[1, :7] = 0
    ids[1, :7] = PAD
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    ref = hf(ids, attention_mask=mask, position_ids=pos).logits
    ours = lm(ids, attention_mask=mask)
    # padded query rows are garbage in both; only real positions are compared
    assert (ours - ref)[mask.bool()].abs().max().item() <= 1e-4


@pytest.mark.parametrize("config", [("high", 1, 5, 12), ("low", 2, 4, 14), ("medium", 3, 7, 16)])
@torch.no_grad()
def test_topk_and_skipped_blocks_match_pruned_transformers(hf, lm, config):
    plan = _plan(config)
    assert plan.count(0) == 16 - config[3]
    ids = _ids(36, 2)
    ref = pruned_hf_copy(hf, plan)(ids).logits
    ours = lm(ids, top_k_per_block=plan)
    assert (ours - ref).abs().max().item() <= 1e-4
    # and the knobs matter: the full model gives different logits
    assert (lm(ids) - ours).abs().max().item() > 1e-2


@torch.no_grad()
def test_staged_forward_equals_one_shot(lm):
    plan = _plan(("high", 3, 5, 14))
    ids = _ids(33, 3, batch=2)
    emb = lm.embed(ids)
    one_shot = lm(inputs_embeds=emb, top_k_per_block=plan)[:, -1]
    seen: dict[int, torch.Tensor] = {}
    full = lm.begin(emb)
    lm.advance(full, 16, plan, on_block=lambda b, _i, o: seen.__setitem__(b, o[:, -1].clone()))

    state = lm.begin(emb, cache=BlockKVCache())
    lm.advance(state, 3, plan)
    latency_token = state.hidden[:, -1].clone()
    calls: list[int] = []
    lm.advance(state, 16, plan, on_block=lambda b, _i, _o: calls.append(b))
    staged = lm.logits(state)
    assert torch.equal(latency_token, seen[2])
    assert calls == [b for b in range(3, 16) if plan[b] > 0]  # the prefix is not recomputed
    assert (staged - one_shot).abs().max().item() <= 1e-5


@torch.no_grad()
def test_kv_cache_holds_only_active_blocks_and_decode_skips_them(lm):
    plan = _plan(("low", 1, 6, 12))
    active = [b for b in range(16) if plan[b] > 0]
    calls: dict[int, int] = {}
    hooks = [
        layer.register_forward_hook(lambda m, a, o, b=b: calls.__setitem__(b, calls.get(b, 0) + 1))
        for b, layer in enumerate(lm.backbone.layers)
    ]
    try:
        state = lm.begin(lm.embed(_ids(20, 4)), cache=BlockKVCache(reserve=8))
        lm.advance(state, 16, plan)
        tok = lm.logits(state).argmax(-1)
        for _ in range(3):
            state = lm.begin_decode(state, tok)
            lm.advance(state, 16, plan)
            tok = lm.logits(state).argmax(-1)
    finally:
        for h in hooks:
            h.remove()
    assert state.cache.blocks == tuple(active)
    assert all(state.cache.length(b) == 23 for b in active)
    assert sorted(calls) == active and set(calls.values()) == {4}


@pytest.mark.parametrize("config", [("high", 1, 8, 16), ("low", 2, 4, 13)])
@torch.no_grad()
def test_greedy_generation_matches_transformers_generate(hf, lm, config):
    plan = _plan(config)
    ids = _ids(25, 5)
    ref = pruned_hf_copy(hf, plan).generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
        eos_token_id=EOS, pad_token_id=PAD,
    )[0, 25:].tolist()
    if EOS in ref:
        ref = ref[: ref.index(EOS) + 1]
    out = greedy_generate(
        lm, lm.embed(ids), torch.ones_like(ids), top_k_per_block=plan, p=config[1],
        eos_token_id=EOS, pad_token_id=PAD, max_new_tokens=12,
    )
    assert out.tokens[0] == ref
    assert out.decode_steps == len(ref) - 1 and out.prefill_ms > 0


@torch.no_grad()
def test_batched_generation_equals_one_at_a_time(lm):
    plan = _plan(("medium", 2, 5, 15))
    prompts = [_ids(n, 10 + n)[0] for n in (18, 31, 24)]
    seq = max(len(p) for p in prompts)
    ids = torch.full((3, seq), PAD)
    mask = torch.zeros(3, seq, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, seq - len(p):] = p
        mask[i, seq - len(p):] = 1
    batch = greedy_generate(lm, lm.embed(ids), mask, top_k_per_block=plan, p=2, eos_token_id=EOS,
                            pad_token_id=PAD, max_new_tokens=10, n_latency_tokens=5)
    for i, p in enumerate(prompts):
        one = greedy_generate(lm, lm.embed(p[None]), torch.ones(1, len(p), dtype=torch.long), top_k_per_block=plan,
                              p=2, eos_token_id=EOS, pad_token_id=PAD, max_new_tokens=10, n_latency_tokens=5)
        assert batch.tokens[i] == one.tokens[0]
        assert torch.allclose(batch.first_logits[i], one.first_logits[0], atol=1e-4)
        assert torch.allclose(batch.latency_token[i], one.latency_token[0], atol=1e-4)
        assert torch.allclose(batch.latency_tokens[i], one.latency_tokens[0], atol=1e-4)


@torch.no_grad()
def test_latency_tokens_for_every_p_equal_the_latency_token_of_each_p(lm):
    ids = _ids(22, 6)
    emb, mask = lm.embed(ids), torch.ones_like(ids)
    common = dict(eos_token_id=EOS, pad_token_id=PAD, max_new_tokens=2)
    allp = greedy_generate(lm, emb, mask, top_k_per_block=_plan(("high", 1, 4, 12)), p=1, n_latency_tokens=5, **common)
    assert allp.latency_tokens.shape == (1, 5, CFG.d_model)
    for p in range(1, 6):
        single = greedy_generate(lm, emb, mask, top_k_per_block=_plan(("high", p, 6, 16)), p=p, **common)
        assert torch.allclose(allp.latency_tokens[0, p - 1], single.latency_token[0], atol=1e-5)


@torch.no_grad()
def test_eos_ends_rows_independently(lm):
    plan = lm.full_plan()
    ids = _ids(15, 7, batch=2)
    mask = torch.ones_like(ids)
    free = greedy_generate(lm, lm.embed(ids), mask, top_k_per_block=plan, p=1, eos_token_id=-1, pad_token_id=PAD,
                           max_new_tokens=8)
    assert [len(t) for t in free.tokens] == [8, 8] and free.ended_with_eos == [False, False]
    row0 = free.tokens[0]
    k = max(i for i in range(8) if row0[i] not in row0[:i])  # the last first-occurrence in row 0
    eos = row0[k]
    out = greedy_generate(lm, lm.embed(ids), mask, top_k_per_block=plan, p=1, eos_token_id=eos, pad_token_id=PAD,
                          max_new_tokens=8)
    assert out.tokens[0] == row0[: k + 1] and out.ended_with_eos[0]
    row1 = free.tokens[1]
    expect1 = row1[: row1.index(eos) + 1] if eos in row1 else row1
    assert out.tokens[1] == expect1


def test_invalid_plans_and_positions_raise(lm):
    ids = _ids(5, 8)
    emb, mask = lm.embed(ids), torch.ones_like(ids)
    kw = dict(eos_token_id=EOS, pad_token_id=PAD, max_new_tokens=2)
    with pytest.raises(ValueError, match="16 blocks"):
        greedy_generate(lm, emb, mask, top_k_per_block=[8] * 15, p=1, **kw)
    with pytest.raises(ValueError, match="insertion position"):
        greedy_generate(lm, emb, mask, top_k_per_block=[8] * 16, p=0, **kw)
    with pytest.raises(ValueError, match="skipped"):
        greedy_generate(lm, emb, mask, top_k_per_block=[8, 0] + [8] * 14, p=2, **kw)
    with pytest.raises(ValueError, match="top_k=9"):
        lm(ids, top_k_per_block=[9] * 16)


@torch.no_grad()
def test_experts_implementations_agree(lm):
    ids = _ids(12, 9)
    plan = _plan(("low", 1, 5, 13))
    eager = lm(ids, top_k_per_block=plan)
    lm.experts_implementation = "grouped_mm"  # the CUDA default; must give the same numbers
    try:
        grouped = lm(ids, top_k_per_block=plan)
    finally:
        lm.experts_implementation = "eager"
    assert (eager - grouped).abs().max().item() <= 1e-4
    with pytest.raises(ValueError, match="experts implementation"):
        lm.experts_implementation = "bogus"


def test_block_kv_cache_select_rows_keeps_rows_and_drops_common_padding():
    from model_runtime.molmoe.language_model import BlockKVCache

    cache = BlockKVCache(reserve=2)
    k = torch.arange(3 * 1 * 5 * 2, dtype=torch.float32).reshape(3, 1, 5, 2)
    cache.update(k, -k, 0)
    cache.update(k + 100, -k, 3)
    cache.select_rows(torch.tensor([2, 0]), drop_front=2)
    for b, off in ((0, 0), (3, 100)):
        keys, values = cache.get(b)
        assert torch.equal(keys, k[[2, 0], :, 2:] + off) and torch.equal(values, -k[[2, 0], :, 2:])
        assert cache.length(b) == 3
    keys, _ = cache.update(torch.ones(2, 1, 1, 2), torch.ones(2, 1, 1, 2), 0)  # decode continues in place
    assert keys.shape == (2, 1, 4, 2) and torch.equal(keys[:, :, -1], torch.ones(2, 1, 2))
    with pytest.raises(ValueError, match="cannot drop"):
        cache.select_rows(torch.tensor([0]), drop_front=9)
