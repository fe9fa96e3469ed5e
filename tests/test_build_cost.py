"""Forced output lengths (``eos_at`` of the generation loops, ``MolmoeRuntime(forced_output_tokens=)``)
and ``benchmarks/bench_build_cost.py``'s core on the tiny float32 model (CPU, random weights): both
cache-build engines honour the forced lengths and build the same cache."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest
import torch

from benchmarks.bench_build_cost import (
    BenchSettings, ByteTokenizer, report, run_benchmark, synthetic_requests, task_lengths,
)
from cache.compare import compare_caches
from cache.schema import STATUS_OK
from cache.synthetic import build_default_cache
from model_runtime.knob_space import KnobSpace
from model_runtime.molmoe.config import MolmoeConfig
from model_runtime.molmoe.generation import continue_generation, greedy_generate, pick_tokens
from model_runtime.molmoe.language_model import BlockKVCache
from model_runtime.molmoe.runtime import MolmoeRuntime
from model_runtime.molmoe.shared_prefix import run_all_configs
from model_runtime.profiler import build_random_model
from tests.tiny_molmoe import torch_single_thread  # noqa: F401  (autouse fixture)

CFG = MolmoeConfig.tiny()
PAD = CFG.tokens.pad
#: two tiers, p 1 and 5, top-k 4 and 8 (skipped blocks: the runtime-level test)
CONFIGS = "tier=low|high,p=1|5,top_k=4|8,blocks=16"


@pytest.fixture(scope="module")
def model():
    return build_random_model(CFG, seed=3)


@pytest.fixture(scope="module")
def lengths_cache(tmp_path_factory):
    return build_default_cache(tmp_path_factory.mktemp("lengths") / "default_cache.h5")


def test_pick_tokens_suppresses_eos_before_the_forced_step_and_emits_it_there() -> None:
    eos = 1
    logits = torch.tensor([[0.0, 5.0, 1.0, 0.5]] * 4)  # EOS is every row's argmax, token 2 the runner-up
    assert pick_tokens(logits, 2, None, eos).tolist() == [1, 1, 1, 1]
    eos_at = torch.tensor([0, 3, 2, 1])  # free; forced later; forced now; forced earlier (row already ended)
    assert pick_tokens(logits, 2, eos_at, eos).tolist() == [1, 2, 1, 2]
    assert pick_tokens(logits, 3, eos_at, eos).tolist() == [1, 1, 2, 2]


@torch.no_grad()
def test_greedy_and_continued_generation_end_at_the_forced_lengths(model) -> None:
    lm = model.lm
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 250, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[2, :4] = 0  # left padding
    emb = lm.embed(ids)
    plan = KnobSpace().plan(("high", 2, 6, 15)).top_k_per_block
    kw = dict(top_k_per_block=plan, p=2, pad_token_id=PAD, max_new_tokens=6)
    free = greedy_generate(lm, emb, mask, eos_token_id=-1, **kw)
    eos = free.tokens[0][0]  # row 0 would end at once with this EOS
    natural = greedy_generate(lm, emb, mask, eos_token_id=eos, **kw)
    assert natural.tokens[0] == [eos]
    forced = greedy_generate(lm, emb, mask, eos_token_id=eos, eos_at=[4, 0, 2], **kw)
    assert [len(t) for t in forced.tokens][::2] == [4, 2] and forced.ended_with_eos[::2] == [True, True]
    for row in forced.tokens[::2]:
        assert row[-1] == eos and eos not in row[:-1]
    assert forced.tokens[1] == natural.tokens[1]  # an unforced row decodes as without forcing
    assert torch.equal(forced.first_logits, natural.first_logits)  # the uncertainty sees the raw logits
    # a length beyond max_new_tokens: no EOS at all, the row runs to the cap
    capped = greedy_generate(lm, emb, mask, eos_token_id=eos, eos_at=torch.tensor([9, 9, 9]), **kw)
    assert [len(t) for t in capped.tokens] == [6, 6, 6] and not any(capped.ended_with_eos)
    # from a prefix state (the shared-prefix engine's path): the same tokens
    state = lm.begin(emb, mask, cache=BlockKVCache(reserve=6))
    lm.advance(state, 2, lm.full_plan())
    cont = continue_generation(lm, state, top_k_per_block=plan, eos_token_id=eos, pad_token_id=PAD, max_new_tokens=6,
                               eos_at=[4, 0, 2])
    assert cont.tokens == forced.tokens
    with pytest.raises(ValueError, match="3 rows"):
        greedy_generate(lm, emb, mask, eos_token_id=eos, eos_at=[4, 0], **kw)
    with pytest.raises(ValueError, match=">= 0"):
        greedy_generate(lm, emb, mask, eos_token_id=eos, eos_at=[4, -1, 2], **kw)


def test_both_engines_honour_the_runtime_s_forced_lengths(model, lengths_cache, tmp_path) -> None:
    """``MolmoeRuntime.run`` and ``run_all_configs`` (per-configuration and grouped dense decode, one
    configuration per group or all in one) give every request its forced length and the same tokens."""
    tk = CFG.tokens
    tok = ByteTokenizer([tk.eos, tk.pad, tk.im_start, tk.im_end, tk.im_patch, tk.im_col, tk.image_prompt])
    reqs, lengths = synthetic_requests(4, task_lengths(lengths_cache), tmp_path, seed=1, max_new_tokens=5,
                                       sides=(64, 400))
    lengths = dict(zip(lengths, (5, 1, 3, 2)))  # lengths of the real distribution are mostly 1-2 tokens
    ks = KnobSpace(crops=(1, 2, 4))
    rt = MolmoeRuntime(model, tok, ks, max_new_tokens=5, max_batch_size=4, fast=False, forced_output_tokens=lengths)
    sel = [ks.index(c) for c in (("low", 1, 4, 12), ("low", 5, 8, 16), ("high", 2, 6, 14), ("high", 1, 8, 16))]
    want = [lengths[r.id] for r in reqs]
    ref = {c: rt.run(reqs, c) for c in sel}
    for c in sel:
        assert [o.output_tokens for o in ref[c]] == want and all(o.ended_with_eos for o in ref[c])
    for dense, group_bytes in ((False, 0), (True, 1), (True, 2**40)):
        res = run_all_configs(rt, reqs, sel, batch_size=4, dense_decode=dense, decode_group_bytes=group_bytes,
                              return_sample_features=False)
        for c in sel:
            got = [res.outcomes[i][c] for i in range(len(reqs))]
            assert [o.token_ids for o in got] == [o.token_ids for o in ref[c]], (dense, group_bytes, c)
    unforced = MolmoeRuntime(model, tok, ks, max_new_tokens=5, max_batch_size=4, fast=False)
    assert unforced.eos_at(reqs) is None and rt.eos_at(reqs).tolist() == want
    with pytest.raises(ValueError, match=">= 1"):
        MolmoeRuntime(model, tok, ks, fast=False, forced_output_tokens={"x": 0})


def test_the_benchmark_builds_the_same_cache_with_both_engines(lengths_cache, tmp_path) -> None:
    s = BenchSettings(requests=4, configs=CONFIGS, lengths_from=str(lengths_cache), max_new_tokens=8,
                      shared_batch_size=2, per_config_batch_size=2, chunk_requests=3, image_sides=(64, 560), seed=1)
    res = run_benchmark(s, workdir=tmp_path, log=lambda line: None)
    want = np.array(res["forced_lengths"]["per_request"])
    assert want.max() > 1 and len(set(want.tolist())) > 1  # the forcing does something
    with h5py.File(tmp_path / "shared-prefix.h5", "r") as fa, h5py.File(tmp_path / "per-config.h5", "r") as fb:
        configs = np.flatnonzero(fa["outcomes/status"][()].any(axis=0))
        assert configs.size == 8 == res["builds"]["shared-prefix"]["configs"]
        for f in (fa, fb):  # every outcome OK at its request's forced length
            assert (f["outcomes/status"][()][:, configs] == STATUS_OK).all()
            assert (f["outcomes/output_tokens"][()][:, configs] == want[:, None]).all()
        for name in ("outcomes/score", "outcomes/output_tokens", "outcomes/status", "samples/crops",
                     "samples/vision_tokens", "samples/prompt_tokens"):
            np.testing.assert_array_equal(fa[name][()], fb[name][()], err_msg=name)
        assert (fa["outcomes/prediction"].asstr()[()] == fb["outcomes/prediction"].asstr()[()]).all()
        np.testing.assert_allclose(fa["samples/latency_token"][()], fb["samples/latency_token"][()],
                                   atol=2e-3, rtol=2e-3)
        assert len({tuple(c) for c in fa["samples/crops"][()]}) > 1  # the images' sizes give different crops
    assert res["forced_length_misses"] == {"shared-prefix": 0, "per-config": 0}
    assert res["equality"]["identical"], res["equality"]
    lines = report(res)
    assert "SYNTHETIC" in lines[0] and "RANDOM" in lines[0] and "caches identical" in lines[-1]
    # the comparison does see a difference
    with h5py.File(tmp_path / "per-config.h5", "r+") as f:
        f["outcomes/output_tokens"][0, configs[0]] += 1
        f["samples/latency_token"][0, 0, 0, 0] += 1.0
    eq = compare_caches(tmp_path / "shared-prefix.h5", tmp_path / "per-config.h5", 2e-3)
    assert not eq["identical"] and eq["mismatches"]["outcomes/output_tokens"] == 1
    assert eq["mismatches"]["samples/latency_token"] == 1


@pytest.mark.parametrize("change, match", [
    ({"shape": "huge"}, "unknown shape"),
    ({"requests": 0}, "--requests must be >= 1"),
    ({"lengths_from": "/nonexistent/cache.h5"}, "no such cache"),
    ({"shared_batch_size": 0}, "--shared-batch-size must be >= 1"),
])
def test_bad_settings_fail_with_one_clear_error(change, match) -> None:
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        run_benchmark(dataclasses.replace(BenchSettings(), **change))
