"""Stages (e) and (f): ``MolmoeRuntime.run`` on a tiny checkpoint and a tiny synthetic dataset,
and importance scores in the JSON that ``KnobSpace`` takes (CPU, float32)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from envs.knob_space import KnobConfig, KnobSpace
from model_runtime.datasets import load_requests
from model_runtime.metrics import extract_answer
from model_runtime.molmoe.importance import ImportanceScores, accuracy_drop, block_influence, compute_importance
from model_runtime.molmoe.runtime import MolmoeRuntime
from tests.tiny_molmoe import write_tiny_dataset, write_tiny_molmoe_checkpoint
from tests.tiny_molmoe import torch_single_thread  # noqa: F401  (autouse fixture)

MAX_NEW = 4


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    write_tiny_molmoe_checkpoint(path, seed=5)
    return MolmoeRuntime.from_checkpoint(path, max_new_tokens=MAX_NEW, max_batch_size=4)


@pytest.fixture(scope="module")
def requests(tmp_path_factory):
    return load_requests(write_tiny_dataset(tmp_path_factory.mktemp("data"), n=6, seed=1))


def test_run_returns_complete_outcomes_in_request_order(runtime, requests):
    cfg = KnobConfig("low", 2, 5, 14)
    outs = runtime.run(requests[:3], cfg)
    assert [o.request_id for o in outs] == [r.id for r in requests[:3]]
    d = runtime.model.config.d_model
    for o, r in zip(outs, requests[:3]):
        assert o.config == cfg and o.dataset == "vqav2" and o.batch_size == 3
        assert 1 <= o.output_tokens == len(o.token_ids) <= MAX_NEW
        assert o.ended_with_eos == (o.token_ids[-1] == runtime.model.config.tokens.eos)
        assert (o.crops, o.vision_tokens) == runtime.vision_token_counts(r)["low"]
        assert o.prompt_tokens == len(runtime.tokenizer.encode(runtime.prompt_text(r))) + 1
        assert o.latency_token.shape == (d,) and o.latency_token.dtype == np.float32 and o.latency_tokens is None
        assert o.vision_ms > 0 and o.prefill_ms > 0 and o.decode_ms >= 0
        assert 0 <= o.first_token_entropy <= math.log(runtime.model.config.embedding_size) + 1e-4
        assert 0 <= o.first_token_margin <= 1
        assert o.score == r.score(o.prediction)
    assert runtime.prompt_text(requests[0]) == " User: vqa2: What color is the shape? Assistant:"


def test_score_comes_from_the_request_metric(runtime, requests):
    first = runtime.run(requests[:1], ("high", 1, 8, 16))[0]
    answer = extract_answer(first.prediction) or "nothing"
    hit = dataclasses.replace(requests[0], answers=[answer] * 10)
    miss = dataclasses.replace(requests[0], answers=["zzzz-not-an-answer"] * 10)
    a, b = runtime.run([hit, miss], ("high", 1, 8, 16))
    if first.prediction.strip():
        assert a.score == 1.0
    assert b.score == 0.0 and a.token_ids == b.token_ids == first.token_ids


def test_requests_are_grouped_by_configuration(runtime, requests, monkeypatch):
    configs = [KnobConfig("high", 1, 4, 12), KnobConfig("medium", 3, 6, 15)] * 2
    seen: list[tuple[KnobConfig, int]] = []
    original = runtime._run_batch

    def spy(reqs, cfg, *args, **kwargs):
        seen.append((cfg, len(reqs)))
        return original(reqs, cfg, *args, **kwargs)

    monkeypatch.setattr(runtime, "_run_batch", spy)
    batched = runtime.run(requests[:4], configs)
    assert sorted(seen) == sorted([(configs[0], 2), (configs[1], 2)])  # one forward per configuration
    monkeypatch.setattr(runtime, "max_batch_size", 1)
    singles = runtime.run(requests[:4], configs)
    for a, b, c in zip(batched, singles, configs):
        assert a.config == b.config == c and a.batch_size == 2 and b.batch_size == 1
        assert a.token_ids == b.token_ids
        assert np.allclose(a.latency_token, b.latency_token, atol=1e-4)
        assert a.first_token_margin == pytest.approx(b.first_token_margin, abs=1e-4)


def test_tier_sets_the_crop_budget(runtime, requests):
    wide = requests[3]  # 300 x 900 px
    low, high = runtime.run([wide, wide], [KnobConfig("low", 1, 8, 16), KnobConfig("high", 1, 8, 16)])
    assert low.crops == 4 and high.crops == 5  # 1x3 within 3 crops, 1x4 within 12 (+ the global view)
    assert high.vision_tokens > low.vision_tokens


def test_latency_tokens_of_every_insertion_position(runtime, requests):
    reqs = requests[1:3]
    at3 = runtime.run(reqs, ("medium", 3, 4, 14), return_latency_tokens=True)
    at1 = runtime.run(reqs, ("medium", 1, 7, 12), return_latency_tokens=True)
    for a, b in zip(at3, at1):
        assert a.latency_tokens.shape == (5, runtime.model.config.d_model)
        assert np.allclose(a.latency_tokens[2], a.latency_token, atol=1e-5)
        assert np.allclose(b.latency_tokens[0], b.latency_token, atol=1e-5)
        assert np.allclose(a.latency_tokens, b.latency_tokens, atol=1e-4)  # depends on (tier, p) only


def test_invalid_runs_raise(runtime, requests, tmp_path):
    with pytest.raises(ValueError, match="not a valid configuration"):
        runtime.run(requests[:1], ("high", 2, 8, 12))
    with pytest.raises(ValueError, match="configurations for"):
        runtime.run(requests[:2], [("high", 1, 8, 16)])
    missing = dataclasses.replace(requests[0], image=str(tmp_path / "nope.png"))
    with pytest.raises(FileNotFoundError):
        runtime.run([missing], ("high", 1, 8, 16))
    with pytest.raises(ValueError, match="blocks"):
        MolmoeRuntime(runtime.model, runtime.tokenizer, KnobSpace(num_blocks=15, importance_scores=(0.1,) * 15))


def test_block_influence_scores_feed_the_knob_space(runtime, requests, tmp_path):
    result = block_influence(runtime, requests[:3], tier="low")
    assert len(result.scores) == 16 and all(0.0 <= s <= 2.0 for s in result.scores)
    assert result.details["n_tokens"] > 0 and result.n_requests == 3
    path = result.save(tmp_path / "importance.json")
    raw = json.loads(path.read_text())
    assert raw["method"] == "block_influence" and len(raw["scores"]) == 16 and raw["n_requests"] == 3
    space = ImportanceScores.load(path).apply(KnobSpace())
    assert space.importance_scores == tuple(raw["scores"])
    kept = space.plan(("high", 1, 8, 12)).active
    tail = sorted(range(1, 16), key=lambda b: -raw["scores"][b])[:11]
    assert kept == tuple([0] + sorted(tail))
    with pytest.raises(ValueError, match="unknown importance method"):
        compute_importance(runtime, requests[:1], method="magnitude")


def test_accuracy_drop_scores(runtime, requests):
    result = accuracy_drop(runtime, requests[:2], tier="low", blocks=[3, 7])
    assert result.method == "accuracy_drop" and len(result.scores) == 16
    assert all(math.isfinite(s) for s in result.scores)
    others = [s for b, s in enumerate(result.scores) if b not in (3, 7)]
    assert set(others) == {max(result.scores[3], result.scores[7])}
    with pytest.raises(ValueError):
        ImportanceScores((1.0, float("nan")), "block_influence", 1)


@pytest.fixture(scope="module")
def fast_runtime(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt_fast")
    write_tiny_molmoe_checkpoint(path, seed=5)
    return MolmoeRuntime.from_checkpoint(path, max_new_tokens=MAX_NEW, max_batch_size=4, fast=True)


@pytest.mark.parametrize("config,latency_tokens", [(("low", 2, 5, 14), False), (("medium", 5, 4, 16), True)])
def test_fast_path_runtime_gives_the_reference_outcomes(runtime, fast_runtime, requests, config, latency_tokens):
    """fast=True (fused blocks + GraphDecoder: captured prefill from the second request of a length,
    graph decode steps; eager replays on CPU) = transformers' blocks, outcome by outcome."""
    fast = fast_runtime
    assert fast.decoder is not None and runtime.decoder is None and fast.model.lm.fused is not None
    before = fast.decoder.prefill_captures
    reqs = requests[:4]  # one batch
    ref = runtime.run(reqs, config, return_latency_tokens=latency_tokens)
    for _ in range(2):  # the second pass replays the prefill the first one ran eagerly
        ours = fast.run(reqs, config, return_latency_tokens=latency_tokens)
        for o, r in zip(ours, ref):
            assert (o.token_ids, o.prediction, o.score, o.ended_with_eos) == (r.token_ids, r.prediction, r.score, r.ended_with_eos)
            np.testing.assert_allclose(o.latency_token, r.latency_token, atol=1e-4)
            if latency_tokens:
                np.testing.assert_allclose(o.latency_tokens, r.latency_tokens, atol=1e-4)
            assert abs(o.first_token_entropy - r.first_token_entropy) < 1e-4
    assert fast.decoder.prefill_captures - before == (0 if latency_tokens else 1)


@pytest.mark.parametrize("fast", [False, True])
def test_continue_generation_from_a_prefix_state_equals_run(runtime, fast_runtime, requests, fast, monkeypatch):
    """prefix_state + continue_generation (the live env's path) = run at batch size 1, on the eager
    loop and through the fast runtime's decoder; the prefix state is left untouched, so one prefix
    serves several configurations of its (tier, p)."""
    rt = fast_runtime if fast else runtime
    ks = rt.knob_space
    req = requests[1]
    prompt = rt.prepare(req, ks.crops_for("medium"))
    state = rt.prefix_state(prompt, 3)
    hidden, lengths = state.hidden.clone(), {b: state.cache.length(b) for b in state.cache.blocks}
    steps = []
    if fast:  # count the decode steps that go through the decoder
        step = rt.decoder.step
        monkeypatch.setattr(rt.decoder, "step", lambda *a: steps.append(1) or step(*a))
    for cfg in (("medium", 3, 8, 16), ("medium", 3, 4, 14), ("medium", 3, 6, 15)):
        ref = rt.run([req], cfg)[0]
        del steps[:]
        gen = rt.continue_generation(state, cfg)
        assert len(steps) == (gen.decode_steps if fast else 0)
        assert gen.tokens[0] == ref.token_ids and gen.ended_with_eos[0] == ref.ended_with_eos
        np.testing.assert_allclose(gen.latency_token[0].numpy(), ref.latency_token, atol=1e-4)
        entropy = -(gen.first_logits.log_softmax(-1).exp() * gen.first_logits.log_softmax(-1)).sum(-1)
        assert abs(float(entropy[0]) - ref.first_token_entropy) < 1e-4
        assert gen.prefill_ms > 0 and gen.decode_steps == len(gen.tokens[0]) - 1
    assert state.next_block == 3 and torch.equal(state.hidden, hidden)
    assert {b: state.cache.length(b) for b in state.cache.blocks} == lengths == {0: lengths[0], 1: lengths[0], 2: lengths[0]}
    with pytest.raises(ValueError, match="p=2"):
        rt.continue_generation(state, ("medium", 2, 8, 16))
    with pytest.raises(ValueError, match="outside"):
        rt.prefix_state(prompt, 0)
