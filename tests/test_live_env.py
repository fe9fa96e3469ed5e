"""Live mode of the scalar envs on a tiny MolmoE checkpoint and a tiny JSONL dataset (CPU).

The reference is a cache built live (experiments.build_cache, batch size 1) from the same
checkpoint and requests: for every request, selected configuration and a pinned budget, the
live envs must return what the replay envs return on that cache (score, output tokens,
estimated latency, reward, language feature, latency token within float16 storage, budget
features), with a measured latency in ``info``. Besides: the gymnasium and SB3 checkers, the
stage-1 state reused by stage 2, pinned reset options, determinism, argument errors, and
``import envs`` staying torch-free.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs  # noqa: F401  (registers the ids)
from envs.env_settings import INFO_KEYS, INFO_KEYS_ALWAYS
from envs.flat_env import MolmoeKnobsFlatEnv
from envs.knob_space import KnobSpace
from envs.live import LazyRows, LiveData, LiveOptions
from envs.two_stage_env import MolmoeKnobsEnv
from envs.vector_env import MolmoeKnobsVectorEnv
from experiments import build_cache
from experiments.build_cache import parse_config_selection
from model_runtime.datasets import load_requests, write_requests
from model_runtime.molmoe.runtime import MolmoeRuntime
from tests.tiny_molmoe import tiny_config, write_tiny_dataset, write_tiny_molmoe_checkpoint

MAX_NEW = 3
CROPS = ("1", "2", "4")  # tier crops: few vision tokens, fast
# a product set (the two-stage env's per-component masks are exact on it), 2 tiers x 2 p x 2 top-k
CONFIGS = "tier=low|high,p=1|2,top_k=4|8,blocks=14"
KS = KnobSpace(crops=tuple(int(c) for c in CROPS))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as the build runs: the same kernels give the same numbers."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Checkpoint, 2 requests (one with more crops at higher tiers) whose reference answer is the
    model's own prediction at the first selected configuration (so that scores vary), the
    runtime, and the live-built reference cache."""
    d = tmp_path_factory.mktemp("live_env")
    write_tiny_molmoe_checkpoint(d / "ckpt", tiny_config(image_size=224), seed=0)
    reqs = load_requests(write_tiny_dataset(d / "data", n=4))[2:4]
    rt = MolmoeRuntime.from_checkpoint(d / "ckpt", KS, max_new_tokens=MAX_NEW, max_batch_size=1)
    configs = parse_config_selection(CONFIGS, KS)
    first = rt.run(reqs, int(configs[0]))
    reqs = [dataclasses.replace(r, answers=[o.prediction] * 10) for r, o in zip(reqs, first)]
    jl = d / "data" / "answered.jsonl"
    write_requests(jl, reqs)
    cache = d / "reference.h5"
    assert build_cache.main([
        "--model", str(d / "ckpt"), "--dataset", str(jl), "--out", str(cache), "--configs", CONFIGS,
        "--batch-size", "1", "--chunk-requests", "8", "--max-new-tokens", str(MAX_NEW), "--tier-crops", *CROPS,
        "--importance", "default", "--splits", "1", "0", "0", "--threads", "1", "--no-progress",
    ]) == 0
    return {"dir": d, "jsonl": jl, "requests": load_requests(jl), "runtime": rt, "cache": cache,
            "configs": configs}


def live(world: dict, env_id: str = "MolmoeKnobs-v0", **kwargs) -> gym.Env:
    return gym.make(env_id, mode="live", runtime=world["runtime"], requests=str(world["jsonl"]), **kwargs)


def assert_same_outcome(a: dict, b: dict) -> None:
    for k in ("score", "output_tokens", "latency_ms", "vision_ms", "prefill_ms", "decode_ms", "violation",
              "config", "config_index", "sample_id", "budget_ms", "stage"):
        assert a[k] == b[k], k


# ------------------------------------------------------------------------------ live == replay
def test_live_envs_equal_replay_of_a_live_built_cache(world: dict) -> None:
    two = live(world)
    flat = live(world, "MolmoeKnobsFlat-v0")
    rtwo = gym.make("MolmoeKnobs-v0", cache=str(world["cache"]), split="train", incomplete="mask")
    rflat = gym.make("MolmoeKnobsFlat-v0", cache=str(world["cache"]), split="train", incomplete="mask")
    ld, rd = two.unwrapped.data, rtwo.unwrapped.data
    assert isinstance(ld, LiveData) and ld.sample_id_list == rd.sample_id_list
    assert rd.knob_space == KS and two.unwrapped.observation_space == rtwo.unwrapped.observation_space
    # default budget range: the estimator's median cheapest -> full over the requests, as the build derives it
    assert ld.budget_range_ms == pytest.approx(rd.budget_range_ms, rel=1e-12)
    np.testing.assert_array_equal(ld.cheapest_ms, rd.cheapest_ms)
    np.testing.assert_array_equal(ld.full_ms, rd.full_ms)
    scores = []
    for s in range(ld.n):
        b = float(0.5 * (ld.cheapest_ms[s] + ld.full_ms[s]))  # some configurations violate it
        opts = {"sample_index": s, "budget_ms": b}
        for c in world["configs"]:
            md = KS.to_multidiscrete(int(c))
            stage1 = np.array([md[0], md[1], 0, 0])
            (lo, li), (ro, ri) = two.reset(options=opts), rtwo.reset(options=opts)
            np.testing.assert_array_equal(lo["budget"], ro["budget"])
            np.testing.assert_allclose(lo["lang"], ro["lang"], rtol=1e-6, atol=1e-7)
            # live: every tier / p; replay: those of the configurations in the cache
            assert lo["action_mask"][:8].all() and ro["action_mask"][[md[0], 3 + md[1]]].all()
            (lo, *_), (ro, *_) = two.step(stage1), rtwo.step(stage1)
            # the cache stores latency tokens as float16
            np.testing.assert_allclose(lo["token"], ro["token"], rtol=2e-3, atol=2e-3)
            assert np.abs(lo["token"]).max() > 0
            np.testing.assert_array_equal(lo["context"], ro["context"])
            _, lr, lt, _, linfo = two.step(md)
            _, rr, rt_, _, rinfo = rtwo.step(md)
            assert lt and rt_ and lr == rr
            assert_same_outcome(linfo, rinfo)
            assert math.isfinite(linfo["measured_ms"]) and linfo["measured_ms"] > 0 and rinfo["measured_ms"] > 0
            flat.reset(options=opts)
            rflat.reset(options=opts)
            _, fr, *_, finfo = flat.step(int(c))
            _, rfr, *_, rfinfo = rflat.step(int(c))
            assert fr == rfr == lr
            assert_same_outcome(finfo, rfinfo)
            scores.append(linfo["score"])
    # the comparison covers different scores (the answer is the first configuration's prediction)
    assert 1.0 in scores and len(set(scores)) > 1
    for e in (two, flat, rtwo, rflat):
        e.close()


# ------------------------------------------------------------------------------ checkers
def test_gymnasium_and_sb3_checkers(world: dict) -> None:
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    for env in (live(world, invalid_action="penalty"), live(world, "MolmoeKnobsFlat-v0")):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*infinity.*")  # unbounded feature boxes, by design
            check_env(env.unwrapped, skip_render_check=True)
            sb3_check_env(env, warn=True)
        env.close()


# ------------------------------------------------------------------------------ episodes
def test_episode_info_and_stage_one_state_reused_by_stage_two(world: dict) -> None:
    env = live(world)
    src = env.unwrapped.data.live
    obs, info = env.reset(seed=3)
    assert set(info) == set(INFO_KEYS_ALWAYS) and not np.any(obs["token"])
    assert src.counts["prefix_forwards"] == 0  # nothing runs the model before stage 1
    obs, r, term, _, info = env.step(np.array([2, 1, 0, 0]))  # high, p=2
    assert not term and r == 0.0 and src.counts["prefix_forwards"] == 1 and np.abs(obs["token"]).max() > 0
    assert obs["token"].shape == (world["runtime"].model.config.d_model,) and obs["token"].dtype == np.float32
    obs2, r, term, _, info = env.step(np.array([2, 1, 4, 2]))  # top-k 8, 15 blocks
    assert term and set(info) == set(INFO_KEYS)  # every documented key, measured latency included
    assert src.counts == {**src.counts, "prefix_forwards": 1, "continuations": 1}  # the prefix was not recomputed
    res = src.last_result
    assert res.prefix_reused and info["config"] == {"tier": "high", "p": 2, "top_k": 8, "blocks": 15}
    assert info["measured_ms"] == pytest.approx(res.measured_vision_ms + res.measured_prefill_ms + res.measured_decode_ms, rel=1e-5)
    assert res.measured_vision_ms > 0 and res.measured_prefill_ms > 0 and info["measured_ms"] > 0
    assert info["latency_ms"] == pytest.approx(info["vision_ms"] + info["prefill_ms"] + info["decode_ms"], rel=1e-5)
    assert info["violation"] == (info["latency_ms"] > info["budget_ms"])
    assert 1 <= info["output_tokens"] == len(res.token_ids) <= MAX_NEW
    req = world["requests"][info["sample_index"]]
    assert info["score"] == pytest.approx(req.score(res.prediction)) and info["sample_id"] == req.id
    np.testing.assert_array_equal(obs2["token"], obs["token"])  # terminal observation repeats the last one
    # flat env: one step runs the staged forward itself
    flat = live(world, "MolmoeKnobsFlat-v0")
    flat.reset(seed=0)
    _, r, term, _, finfo = flat.step(KS.index(("medium", 1, 5, 13)))
    assert term and set(finfo) == set(INFO_KEYS) and flat.unwrapped.data.live.counts["prefix_forwards"] == 1


def test_pinned_reset_options(world: dict) -> None:
    env = live(world)
    ids = [r.id for r in world["requests"]]
    lo, hi = env.unwrapped.budget_sampler.bounds
    pinned = float((lo + hi) / 2)
    for i, rid in enumerate(ids):
        obs, info = env.reset(options={"sample_id": rid, "budget_ms": pinned})
        assert info["sample_index"] == i and info["sample_id"] == rid and info["budget_ms"] == pinned
        obs_i, info_i = env.reset(seed=7, options={"sample_index": i, "budget_ms": pinned})
        np.testing.assert_array_equal(obs["lang"], obs_i["lang"])
        np.testing.assert_array_equal(obs["budget"], obs_i["budget"])
    with pytest.raises(ValueError, match="budget bounds"):
        env.reset(options={"budget_ms": hi * 10})
    with pytest.raises(ValueError, match="not in split 'all'"):
        env.reset(options={"sample_id": "nope"})
    with pytest.raises(ValueError, match="out of range"):
        env.reset(options={"sample_index": len(ids)})
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"split": "train"})
    # unpinned resets draw both requests and budgets within the default range
    seen = {env.reset(seed=k)[1]["sample_id"] for k in range(12)}
    assert seen == set(ids)


def test_determinism_and_outcome_memo(world: dict) -> None:
    def episode(env: gym.Env, seed: int) -> tuple:
        o0, i0 = env.reset(seed=seed)
        a = env.unwrapped.action_space.sample()
        o1, *_ = env.step(np.array([a[0], a[1], 0, 0]))
        m = env.unwrapped.action_masks()
        k = int(np.flatnonzero(m[8:13])[seed % int(m[8:13].sum())])
        kb = int(np.flatnonzero(m[13:18])[-1])
        o2, r, _, _, info = env.step(np.array([a[0], a[1], k, kb]))
        return o0, o1, r, info

    a, b = live(world), live(world)  # separate memos: b runs the model again
    a.unwrapped.action_space.seed(0)
    b.unwrapped.action_space.seed(0)
    for seed in (0, 1):
        ea, eb = episode(a, seed), episode(b, seed)
        for x, y in zip(ea[:2], eb[:2]):
            for k in x:
                np.testing.assert_array_equal(x[k], y[k])
        assert ea[2] == eb[2]
        assert {k: v for k, v in ea[3].items() if k not in ("measured_ms", "action_mask")} == \
               {k: v for k, v in eb[3].items() if k not in ("measured_ms", "action_mask")}
    # the same env replays a memoised outcome: the whole info (measurement included) repeats
    src = a.unwrapped.data.live
    a.unwrapped.action_space.seed(5)
    first = episode(a, 4)
    runs = src.counts["continuations"]
    a.unwrapped.action_space.seed(5)
    again = episode(a, 4)
    assert src.counts["continuations"] == runs and src.counts["outcome_memo_hits"] >= 1
    assert again[2] == first[2] and again[3]["measured_ms"] == first[3]["measured_ms"]
    # without the memo the model runs at every step, with the same outcome
    c = live(world, live_options={"memo_outcomes": False})
    c.unwrapped.action_space.seed(5)
    one = episode(c, 4)
    c.unwrapped.action_space.seed(5)
    two = episode(c, 4)
    assert c.unwrapped.data.live.counts["continuations"] == 2
    assert one[2] == two[2] == first[2] and one[3]["output_tokens"] == two[3]["output_tokens"]


# ------------------------------------------------------------------------------ errors
def test_argument_errors(world: dict, tmp_path: Path) -> None:
    rt, jl = world["runtime"], str(world["jsonl"])
    with pytest.raises(NotImplementedError, match="scalar envs only"):
        MolmoeKnobsVectorEnv(2, mode="live", runtime=rt, requests=jl)
    with pytest.raises(ValueError, match="needs runtime="):
        MolmoeKnobsEnv(mode="live", requests=jl)
    with pytest.raises(ValueError, match="needs requests="):
        MolmoeKnobsFlatEnv(mode="live", runtime=rt)
    with pytest.raises(ValueError, match="not cache= / data="):
        MolmoeKnobsEnv(mode="live", runtime=rt, requests=jl, cache=str(world["cache"]))
    with pytest.raises(ValueError, match="only apply to mode='live'"):
        MolmoeKnobsEnv(cache=str(world["cache"]), runtime=rt)
    with pytest.raises(ValueError, match="valid modes"):
        MolmoeKnobsEnv(mode="online", runtime=rt, requests=jl)
    with pytest.raises(ValueError, match="must be a model_runtime.molmoe.runtime.MolmoeRuntime"):
        MolmoeKnobsEnv(mode="live", runtime=object(), requests=jl)
    with pytest.raises(ValueError, match="unknown live option"):
        MolmoeKnobsEnv(mode="live", runtime=rt, requests=jl, live_options={"memo": True})
    with pytest.raises(ValueError, match="prefix_states must be >= 1"):
        LiveOptions(prefix_states=0)
    missing = dataclasses.replace(world["requests"][0], id="lost", image=str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match="request 'lost' cannot run live"):
        MolmoeKnobsEnv(mode="live", runtime=rt, requests=[missing])
    with pytest.raises(ValueError, match="more than once"):
        MolmoeKnobsEnv(mode="live", runtime=rt, requests=[world["requests"][0]] * 2)
    with pytest.raises(ValueError, match="is empty"):
        MolmoeKnobsEnv(mode="live", runtime=rt, requests=[])
    d = MolmoeKnobsEnv(mode="live", runtime=rt, requests=world["requests"]).data  # a list works too
    assert isinstance(d.tokens, LazyRows) and d.tokens.shape == (2, 3, 5, rt.model.config.d_model)
    with pytest.raises(TypeError, match="computed on demand"):
        d.tokens[0, 0]
    with pytest.raises(TypeError, match="cannot be converted"):
        np.asarray(d.lang)
    with pytest.raises(AttributeError, match="no 'score'.*computed per step"):
        d.score


def test_import_envs_stays_torch_free() -> None:
    code = ("import sys, envs, envs.env_settings, envs.live, envs.two_stage_env, envs.flat_env; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr
