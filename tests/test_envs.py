"""Replay envs (scalar): ReplayData, budgets, masks, invalid actions, rewards, options,
determinism, the gymnasium and SB3 checkers, and loading from a real cache file."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
import warnings

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers the ids)
from envs.budgets import BudgetSampler
from envs.env_settings import add_outcome
from envs.flat_env import MolmoeKnobsFlatEnv
from envs.knob_space import KnobSpace
from envs.replay_data import Outcome, ReplayData, config_complexity
from envs.two_stage_env import MolmoeKnobsEnv

KS = KnobSpace()


@pytest.fixture(scope="module")
def data() -> ReplayData:
    return ReplayData.random(24, lang_dim=6, token_dim=5, seed=1)


def with_missing(d: ReplayData, cells: list[tuple[int, int]]) -> ReplayData:
    """``d`` with the outcomes of (request, configuration) ``cells`` removed."""
    valid, score = d.valid.copy(), d.score.copy()
    for s, c in cells:
        valid[s, c], score[s, c] = False, np.nan
    return dataclasses.replace(d, valid=valid, score=score)


def cfg_index(tier: str, p: int, k: int, b: int) -> int:
    return KS.index((tier, p, k, b))


@pytest.fixture(scope="module")
def holey(data: ReplayData) -> ReplayData:
    """Request 0: no 'high' outcome at all, nothing for (low, p=3), and (medium, 1, 8, 16) missing."""
    cells = [(0, i) for i, c in enumerate(KS.configs) if c.tier == "high" or (c.tier == "low" and c.p == 3)]
    cells.append((0, cfg_index("medium", 1, 8, 16)))
    cells.append((1, 7))  # request 1 merely incomplete
    return with_missing(data, cells)


def valid_actions(mask: np.ndarray, nvec=(3, 5, 5, 5), rng=None) -> np.ndarray:
    """A uniformly random action that respects a per-component mask."""
    rng = rng or np.random.default_rng(0)
    out, off = [], 0
    for n in nvec:
        out.append(rng.choice(np.flatnonzero(mask[off:off + n])))
        off += n
    return np.array(out, dtype=np.int64)


# ---------------------------------------------------------------------------------------- data
def test_replay_data_shapes_and_tables(data: ReplayData) -> None:
    n, c = data.n, len(KS)
    assert data.score.shape == data.valid.shape == data.total_ms.shape == (n, c)
    assert data.tokens.shape == (n, 3, 5, 5) and data.tokens.dtype == np.float32
    assert data.lang.dtype == np.float32 and data.synthetic
    np.testing.assert_allclose(data.total_ms, data.vision_ms + data.prefill_ms + data.decode_ms, rtol=1e-5)
    # complexity: mean of normalised tier, top-k, blocks; cheapest 0, full 1
    cx = config_complexity(KS)
    assert cx[KS.index(KS.cheapest_config)] == 0.0 and cx[KS.index(KS.full_config)] == 1.0
    i = cfg_index("medium", 2, 6, 14)  # tier 1/2, top-k 2/4, blocks 2/4
    assert cx[i] == pytest.approx(0.5)
    # md_to_config agrees with the knob space for every MultiDiscrete action
    for a in np.ndindex(3, 5, 5, 5):
        c_idx = data.md_to_config[a]
        if a[3] <= 4 - a[1]:
            assert KS.config(c_idx) == KS.from_multidiscrete(a)
        else:
            assert c_idx == -1
    assert data.budget_range_ms == (pytest.approx(np.median(data.cheapest_ms)), pytest.approx(np.median(data.full_ms)))


def test_replay_data_validation() -> None:
    d = ReplayData.random(4, lang_dim=2, token_dim=2)
    with pytest.raises(ValueError, match=r"score has shape \(4, 3\), expected \(4, 225\)"):
        dataclasses.replace(d, score=d.score[:, :3])
    bad = d.valid.copy()
    with pytest.raises(ValueError, match="score is not finite"):
        score = d.score.copy()
        score[0, 0] = np.nan
        dataclasses.replace(d, score=score, valid=bad)
    with pytest.raises(ValueError, match="sample_ids must be unique"):
        dataclasses.replace(d, sample_ids=np.array(["a", "a", "b", "c"]))
    with pytest.raises(ValueError, match="tokens has shape"):
        dataclasses.replace(d, tokens=d.tokens[:, :2])
    with pytest.raises(ValueError, match="budget_range_ms"):
        dataclasses.replace(d, budget_range_ms=(300.0, 100.0))


def test_eligible_requests(holey: ReplayData) -> None:
    assert 0 not in holey.eligible("skip") and 1 not in holey.eligible("skip")
    assert holey.eligible("skip").size == holey.n - 2
    assert holey.eligible("mask").size == holey.n
    with pytest.raises(ValueError, match="incomplete='nope'"):
        holey.eligible("nope")
    empty = with_missing(ReplayData.random(2, lang_dim=2, token_dim=2), [(0, 0), (1, 0)])
    with pytest.raises(ValueError, match="no request of split 'train'.*0 of 2 requests are complete"):
        MolmoeKnobsEnv(data=empty)


# ---------------------------------------------------------------------------------------- budgets
def test_budget_sampler() -> None:
    rng = np.random.default_rng(0)
    bs = BudgetSampler(range_ms=(100.0, 200.0))
    draws = bs.sample(rng, size=1000)
    assert draws.min() >= 100.0 and draws.max() < 200.0 and abs(draws.mean() - 150.0) < 5.0
    assert bs.bounds == (50.0, 400.0)
    fixed = BudgetSampler(budgets=[120, 250, 380])
    assert set(fixed.sample(rng, size=200).tolist()) == {120.0, 250.0, 380.0}
    assert isinstance(fixed.sample(rng), float) and fixed.bounds == (60.0, 760.0)
    for bad in (-5.0, float("nan"), float("inf"), 10.0, 1000.0):
        with pytest.raises(ValueError, match=re.escape(f"budget_ms {bad!r}") + r".*\[50\.0, 400\.0\]"):
            bs.validate(bad)
    assert bs.validate(60) == 60.0
    with pytest.raises(ValueError, match="exactly one"):
        BudgetSampler(range_ms=(1, 2), budgets=[1])
    with pytest.raises(ValueError, match="lo > hi"):
        BudgetSampler(range_ms=(3, 2))
    with pytest.raises(ValueError, match="must contain"):
        BudgetSampler(range_ms=(100, 200), bounds=(150, 300))
    np.testing.assert_allclose(bs.from_uniform(np.array([0.0, 0.5, 0.999])), [100.0, 150.0, 199.9])
    np.testing.assert_array_equal(fixed.from_uniform(np.array([0.0, 0.4, 0.99])), [120.0, 250.0, 380.0])
    # same generator state -> same draws
    assert BudgetSampler(range_ms=(1, 2)).sample(np.random.default_rng(5)) == BudgetSampler(range_ms=(1, 2)).sample(
        np.random.default_rng(5))


# ---------------------------------------------------------------------------------------- masks and observations
def test_two_stage_masks_and_observations_for_every_tier_and_p(data: ReplayData) -> None:
    env = MolmoeKnobsEnv(data=data)
    for t in range(3):
        for pi in range(5):
            p = pi + 1
            obs, info = env.reset(seed=10 * t + pi)
            s = info["sample_index"]
            m0 = env.action_masks()
            assert m0.dtype == bool and m0.shape == (18,)
            np.testing.assert_array_equal(m0, [1] * 3 + [1] * 5 + [1, 0, 0, 0, 0] + [1, 0, 0, 0, 0])
            np.testing.assert_array_equal(obs["action_mask"], m0.astype(np.int8))
            np.testing.assert_array_equal(info["action_mask"], m0)
            assert obs["action_mask"].dtype == np.int8
            np.testing.assert_array_equal(obs["token"], 0.0)
            np.testing.assert_array_equal(obs["context"], 0.0)
            np.testing.assert_array_equal(obs["lang"], data.lang[s])
            b, scale = info["budget_ms"], data.latency_scale_ms
            np.testing.assert_allclose(
                obs["budget"], [b / scale, data.cheapest_ms[s] / scale, data.full_ms[s] / scale, b / data.full_ms[s]],
                rtol=1e-6)
            assert info["stage"] == 0 and info["config"] == {"tier": "", "p": -1, "top_k": -1, "blocks": -1}

            obs, r, term, trunc, info = env.step(np.array([t, pi, 0, 0]))
            assert (r, term, trunc) == (0.0, False, False) and type(r) is float
            m1 = env.action_masks()
            expect = np.zeros(18, dtype=bool)
            expect[t] = True
            expect[3 + pi] = True
            expect[8:13] = True  # every top-k
            expect[13:13 + 6 - p] = True  # active-blocks index 0 .. 5 - p
            np.testing.assert_array_equal(m1, expect)
            np.testing.assert_array_equal(obs["action_mask"], expect.astype(np.int8))
            np.testing.assert_array_equal(obs["token"], data.tokens[s, t, pi])
            ctx = np.zeros(9, dtype=np.float32)
            ctx[[0, 1 + t, 4 + pi]] = 1.0
            np.testing.assert_array_equal(obs["context"], ctx)
            assert info["stage"] == 1 and info["config"] == {"tier": KS.tiers[t], "p": p, "top_k": -1, "blocks": -1}
            assert "score" not in info and info["config_index"] == -1

            k3 = 5 - p  # the largest valid active-blocks index: blocks = 16
            obs, r, term, trunc, info = env.step(np.array([t, pi, 4, k3]))
            assert term and not trunc and info["stage"] == 2
            assert info["config"] == {"tier": KS.tiers[t], "p": p, "top_k": 8, "blocks": 16}


def test_flat_env_masks_and_observation(data: ReplayData, holey: ReplayData) -> None:
    env = MolmoeKnobsFlatEnv(data=data)
    obs, info = env.reset(seed=0)
    assert set(obs) == {"lang", "budget", "request", "action_mask"} and obs["action_mask"].shape == (225,)
    assert obs["action_mask"].all() and env.action_masks().all() and env.action_space.start == 0
    env = MolmoeKnobsFlatEnv(data=holey, incomplete="mask")
    obs, info = env.reset(options={"sample_index": 0})
    np.testing.assert_array_equal(obs["action_mask"], holey.valid[0].astype(np.int8))
    np.testing.assert_array_equal(env.action_masks(), holey.valid[0])


def test_incomplete_mask_two_stage_masks(holey: ReplayData) -> None:
    env = MolmoeKnobsEnv(data=holey, incomplete="mask", strict=True)
    env.reset(options={"sample_index": 0})
    m = env.action_masks()
    np.testing.assert_array_equal(m[:3], [1, 1, 0])  # no 'high' outcome
    np.testing.assert_array_equal(m[3:8], [1] * 5)  # p=3 still exists with 'medium'
    env.step(np.array([1, 0, 0, 0]))  # (medium, p=1): everything but (8, 16) exists
    m = env.action_masks()
    assert m[8:13].all() and m[13:18].all()


# ---------------------------------------------------------------------------------------- invalid actions
def raises_naming(env, action, *parts: str) -> None:
    with pytest.raises(ValueError) as exc:
        env.step(action)
    msg = str(exc.value)
    for part in parts:
        assert part in msg, f"{part!r} not in {msg!r}"


def test_every_invalid_action_raises_with_action_and_valid_set(data: ReplayData, holey: ReplayData) -> None:
    env = MolmoeKnobsEnv(data=data, strict=True)  # strict: every component checked, masked actions raise
    env.reset(seed=3)
    # outside the action space / malformed
    raises_naming(env, np.array([3, 0, 0, 0]), "[3, 0, 0, 0]", "MultiDiscrete([3, 5, 5, 5])")
    raises_naming(env, np.array([0, 0, 0]), "shape (4,)")
    raises_naming(env, np.array([0.0, 0.0, 0.0, 0.0]), "integer")
    # stage 0: top-k and active-blocks index pinned to 0
    raises_naming(env, np.array([1, 2, 3, 0]), "[1, 2, 3, 0]", "stage 0", "top-k index = 3 not in [0]")
    raises_naming(env, np.array([1, 2, 0, 1]), "[1, 2, 0, 1]", "active-blocks index = 1 not in [0]",
                  "tier index [0, 1, 2]", "p index [0, 1, 2, 3, 4]")
    # a raise leaves the episode where it was
    env.step(np.array([1, 2, 0, 0]))  # tier medium, p = 3
    raises_naming(env, np.array([0, 2, 0, 0]), "[0, 2, 0, 0]", "stage 1", "tier index = 0 not in [1]")
    raises_naming(env, np.array([1, 1, 0, 0]), "p index = 1 not in [2]")
    raises_naming(env, np.array([1, 2, 0, 3]), "active-blocks index = 3 not in [0, 1, 2]")
    _, _, term, _, info = env.step(np.array([1, 2, 0, 2]))
    assert term and info["config"] == {"tier": "medium", "p": 3, "top_k": 4, "blocks": 16}
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([1, 2, 0, 2]))

    # incomplete='mask': masked tier, a (tier, p) without outcomes, a missing configuration
    env = MolmoeKnobsEnv(data=holey, incomplete="mask", strict=True)
    env.reset(options={"sample_index": 0})
    raises_naming(env, np.array([2, 0, 0, 0]), "[2, 0, 0, 0]", "tier index = 2 not in [0, 1]")
    raises_naming(env, np.array([0, 2, 0, 0]), "[0, 2, 0, 0]", "no configuration with tier index 0 and p index 2")
    env.step(np.array([1, 0, 0, 0]))
    raises_naming(env, np.array([1, 0, 4, 4]), "[1, 0, 4, 4]", "medium/p1/k8/b16", "no outcome")

    flat = MolmoeKnobsFlatEnv(data=holey, incomplete="mask", strict=True)
    flat.reset(options={"sample_index": 1})
    raises_naming(flat, 7, "action 7", "no outcome", "valid configuration indices: [0, 1, 2, 3, 4, 5, 6, 8,")
    raises_naming(flat, 225, "action 225 outside Discrete(225)")
    raises_naming(flat, True, "not an integer")
    assert flat.step(8)[2]  # still usable after the raises


def test_penalty_mode(data: ReplayData, holey: ReplayData) -> None:
    env = MolmoeKnobsEnv(data=data, invalid_action="penalty", strict=True)
    obs0, _ = env.reset(seed=0)
    obs, r, term, trunc, info = env.step(np.array([0, 0, 1, 0]))
    assert (r, term, trunc) == (-1.0, True, False) and type(r) is float
    assert info["invalid_action"] and info["stage"] == 1 and "score" not in info
    for k in obs0:  # the terminal observation repeats the one acted on
        np.testing.assert_array_equal(obs[k], obs0[k])
    with pytest.raises(ValueError, match="outside"):  # out of the space: always an error
        env.reset(seed=0)
        env.step(np.array([0, 9, 0, 0]))
    env.reset(seed=0)
    env.step(np.array([0, 4, 0, 0]))
    _, r, term, _, info = env.step(np.array([0, 4, 0, 1]))
    assert r == -1.0 and term and info["invalid_action"] and info["stage"] == 2
    assert info["config"] == {"tier": "low", "p": 5, "top_k": -1, "blocks": -1}
    flat = MolmoeKnobsFlatEnv(data=holey, incomplete="mask", invalid_action="penalty")
    flat.reset(options={"sample_index": 1})
    _, r, term, _, info = flat.step(7)
    assert r == -1.0 and term and info["invalid_action"] and info["config_index"] == -1


# ---------------------------------------------------------------------------------------- rewards and info
@pytest.mark.parametrize("reward,kwargs", [("hinge", {}), ("hard", {"c": 2.0}), ("lagrangian", {"lam": 0.3}), ("shaped", {})])
def test_rewards_and_info_by_hand(data: ReplayData, reward: str, kwargs: dict) -> None:
    env = MolmoeKnobsEnv(data=data, reward=reward, reward_kwargs=kwargs)
    flat = MolmoeKnobsFlatEnv(data=data, reward=reward, reward_kwargs=kwargs)
    rng = np.random.default_rng(1)
    for ep in range(12):
        c = int(rng.integers(225))
        a = KS.to_multidiscrete(c)
        budget = float(rng.uniform(*data.budget_range_ms))
        _, info0 = env.reset(options={"sample_index": ep, "budget_ms": budget})
        env.step(np.array([a[0], a[1], 0, 0]))
        _, r, term, _, info = env.step(a)
        flat.reset(options={"sample_index": ep, "budget_ms": budget})
        _, rf, _, _, info_f = flat.step(c)
        s = ep
        score, lat = float(data.score[s, c]), float(data.total_ms[s, c])
        over = max(0.0, lat - budget) / budget
        if reward == "hinge":
            expect = score - 2.0 * over
        elif reward == "hard":
            expect = score if lat <= budget else -2.0
        elif reward == "lagrangian":
            expect = score - 0.3 * lat / data.full_ms[s]
        else:
            x = float(data.complexity[c])
            expect = (score - 0.5 / (1 + math.exp(-10 * (lat / budget - 1))) - 10 * over ** 2 - 0.05 * x
                      + (0.1 * (1 - lat / budget) if lat <= budget else 0.0))
        assert r == pytest.approx(expect, rel=1e-9, abs=1e-12) and rf == pytest.approx(expect, rel=1e-9, abs=1e-12)
        assert type(r) is float and term is True
        for inf in (info, info_f):
            assert inf["score"] == score and inf["latency_ms"] == lat and inf["budget_ms"] == budget
            assert inf["vision_ms"] + inf["prefill_ms"] + inf["decode_ms"] == pytest.approx(lat, rel=1e-5)
            assert inf["violation"] is (lat > budget)
            assert inf["config"] == KS.config(c).as_dict() and inf["config_index"] == c
            assert inf["sample_id"] == data.sample_ids[s] and inf["sample_index"] == s
            assert inf["dataset"] == data.datasets[s] and inf["synthetic"] is True
            assert inf["output_tokens"] == int(data.output_tokens[s, c]) and not inf["invalid_action"]
            if np.isfinite(data.measured_ms[s, c]):
                assert inf["measured_ms"] == pytest.approx(float(data.measured_ms[s, c]))
            else:
                assert "measured_ms" not in inf
        assert info0["sample_id"] == data.sample_ids[s]


# ---------------------------------------------------------------------------------------- options and determinism
def test_reset_options_pin_request_and_budget(data: ReplayData, holey: ReplayData) -> None:
    env = MolmoeKnobsEnv(data=data)
    obs, info = env.reset(seed=0, options={"sample_id": data.sample_ids[5], "budget_ms": 17.5})
    assert info["sample_index"] == 5 and info["budget_ms"] == 17.5
    for _ in range(3):  # GRPO: many rollouts of one context
        o, i = env.reset(options={"sample_index": 5, "budget_ms": 17.5})
        for k in obs:
            np.testing.assert_array_equal(o[k], obs[k])
    lo, hi = env.budget_sampler.bounds
    with pytest.raises(ValueError, match=re.escape(f"budget_ms 1e-06") + ".*" + re.escape(f"[{lo}, {hi}]")):
        env.reset(options={"budget_ms": 1e-6})
    with pytest.raises(ValueError, match="budget_ms nan"):
        env.reset(options={"budget_ms": float("nan")})
    with pytest.raises(ValueError, match="out of range"):
        env.reset(options={"sample_index": data.n})
    with pytest.raises(ValueError, match="'nope' is not in split"):
        env.reset(options={"sample_id": "nope"})
    with pytest.raises(ValueError, match="not both"):
        env.reset(options={"sample_id": "s1", "sample_index": 1})
    with pytest.raises(ValueError, match=r"unknown reset option\(s\) \['sample'\]"):
        env.reset(options={"sample": 1})
    skip = MolmoeKnobsEnv(data=holey)
    with pytest.raises(ValueError, match="request 1 .* not eligible.*224 of 225"):
        skip.reset(options={"sample_index": 1})
    fixed = MolmoeKnobsFlatEnv(data=data, budgets=[15.0, 18.0])
    assert {fixed.reset(seed=i)[1]["budget_ms"] for i in range(30)} == {15.0, 18.0}
    ranged = MolmoeKnobsFlatEnv(data=data, budget_range=(20.0, 21.0))
    assert all(20.0 <= ranged.reset()[1]["budget_ms"] < 21.0 for _ in range(20))


def rollout(env: gym.Env, seed: int, episodes: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    obs, info = env.reset(seed=seed)
    for _ in range(episodes):
        while True:
            mask = env.unwrapped.action_masks()
            if isinstance(env.action_space, gym.spaces.Discrete):
                act = int(rng.choice(np.flatnonzero(mask)))
            else:
                act = valid_actions(mask, rng=rng)
            obs, r, term, trunc, info = env.step(act)
            out.append(({k: v.copy() for k, v in obs.items()}, r, info["sample_index"], info["budget_ms"]))
            if term:
                break
        obs, info = env.reset()
        out.append(({k: v.copy() for k, v in obs.items()}, 0.0, info["sample_index"], info["budget_ms"]))
    return out


@pytest.mark.parametrize("cls", [MolmoeKnobsEnv, MolmoeKnobsFlatEnv])
def test_same_seed_same_trajectory(data: ReplayData, cls) -> None:
    a = rollout(cls(data=data), 7, 15)
    b = rollout(cls(data=data), 7, 15)
    c = rollout(cls(data=data), 8, 15)
    assert [x[1:] for x in a] == [x[1:] for x in b]
    for (oa, *_), (ob, *_) in zip(a, b):
        for k in oa:
            np.testing.assert_array_equal(oa[k], ob[k])
    assert [x[2:] for x in a] != [x[2:] for x in c]


# ---------------------------------------------------------------------------------------- checkers, registration
def test_gymnasium_and_sb3_checkers(data: ReplayData) -> None:
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    # random MultiDiscrete actions are mostly masked at stage 0 (top-k / active-blocks index pinned to 0), so
    # the checkers, which step random actions, run the two-stage env with invalid_action="penalty"
    envs_to_check = [
        MolmoeKnobsEnv(data=data, invalid_action="penalty"),
        MolmoeKnobsEnv(data=data, invalid_action="penalty", reward="shaped"),
        MolmoeKnobsFlatEnv(data=data),  # every action is valid on complete data
        MolmoeKnobsFlatEnv(data=data, invalid_action="penalty"),
    ]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Box observation space (maximum|minimum) value is.*infinity")
        for env in envs_to_check:
            check_env(env.unwrapped, skip_render_check=True)
            sb3_check_env(env, warn=True)
    with pytest.raises(ValueError, match="masked at stage 0"):
        two = MolmoeKnobsEnv(data=data, strict=True)
        two.reset(seed=0)
        two.step(np.array([0, 0, 1, 1]))


def test_registration_and_argument_errors(data: ReplayData) -> None:
    env = gym.make("MolmoeKnobs-v0", data=data, reward="hard")
    assert isinstance(env.unwrapped, MolmoeKnobsEnv) and env.unwrapped.reward_config.mode == "hard"
    assert isinstance(gym.make("MolmoeKnobsFlat-v0", data=data).unwrapped, MolmoeKnobsFlatEnv)
    with pytest.raises(ValueError, match="mode='live'.*model runtime"):
        MolmoeKnobsEnv(data=data, mode="live")
    with pytest.raises(ValueError, match="incomplete='all'"):
        MolmoeKnobsEnv(data=data, incomplete="all")
    with pytest.raises(ValueError, match="invalid_action='clip'.*raise.*penalty"):
        MolmoeKnobsFlatEnv(data=data, invalid_action="clip")
    with pytest.raises(ValueError, match="unknown reward mode"):
        MolmoeKnobsFlatEnv(data=data, reward="linear")
    with pytest.raises(ValueError, match="either cache= or data="):
        MolmoeKnobsEnv(cache="x.h5", data=data)
    with pytest.raises(ValueError, match="no replay data"):
        MolmoeKnobsEnv()
    with pytest.raises(ValueError, match="not both"):
        MolmoeKnobsEnv(data=data, budgets=[1.0], budget_range=(1.0, 2.0))


# ---------------------------------------------------------------------------------------- from a cache file
HAVE_WRITER = importlib.util.find_spec("cache.writer") is not None and importlib.util.find_spec("cache.reader") is not None


def write_tiny_cache(path, *, attrs: dict | None = None) -> dict:
    """A 6-request cache (4 train, 1 val, 1 test) written with CacheWriter; returns what was written."""
    from cache.writer import CacheWriter

    rng = np.random.default_rng(0)
    n, c = 6, len(KS)
    crops = np.tile([3, 6, 12], (n, 1))
    prompt = rng.integers(10, 50, n)
    score = rng.uniform(size=(n, c)).round(2)
    score[1, 5] = np.nan  # one missing outcome in the train split
    out = rng.integers(1, 9, size=(n, c))
    meas = np.full((n, c, 3), np.nan)
    meas[0, 0] = [5.0, 10.0, 20.0]
    with CacheWriter.create(path, knob_space=KS, n_samples=n, lang_dim=3, token_dim=4, model_id="synthetic",
                            generator="synthetic", generator_params={"test": True}, datasets=["vqa", "mc"],
                            metrics={"vqa": "vqa_score", "mc": "mc"}, synthetic=True) as w:
        w.write_samples(np.arange(n), id=[f"q{i}" for i in range(n)], dataset=[0, 1, 0, 1, 0, 1],
                        split=["train", "train", "train", "train", "val", "test"], question=["?"] * n,
                        answers=[["a"]] * n, prompt_tokens=prompt, crops=crops, vision_tokens=crops * 144,
                        lang_feature=rng.normal(size=(n, 3)), latency_token=rng.normal(size=(n, 3, 5, 4)))
        w.write_outcomes(np.arange(n), np.arange(c), score=score, output_tokens=out, measured_ms=meas)
        if attrs:
            w.set_attrs(**attrs)
    return {"crops": crops, "prompt": prompt, "score": score, "out": out}


@pytest.mark.skipif(not HAVE_WRITER, reason="cache.writer / cache.reader not written yet")
def test_from_cache_round_trip(tmp_path) -> None:
    from model_runtime.latency_estimator import LatencyEstimator

    path = tmp_path / "tiny.h5"
    w = write_tiny_cache(path)
    d = ReplayData.from_cache(path, split="train")
    c = len(KS)
    assert d.n == 4 and list(d.sample_ids) == ["q0", "q1", "q2", "q3"] and d.synthetic
    assert list(d.datasets) == ["vqa", "mc", "vqa", "mc"] and d.source == str(path)
    assert not d.valid[1, 5] and int(d.valid.sum()) == 4 * c - 1
    np.testing.assert_allclose(d.score[0], w["score"][0], rtol=1e-6)
    assert d.measured_ms[0, 0] == pytest.approx(35.0) and np.isnan(d.measured_ms[0, 1])
    np.testing.assert_array_equal(d.output_tokens, w["out"][:4])
    # latencies: the default estimator (the file stores none), per (request, configuration)
    est = LatencyEstimator.default()
    a = KS.config_table()
    i, j = 2, 37
    cr = w["crops"][i, a["tier"][j]]
    pred = est.predict(crops=cr, vision_tokens=144 * cr, prompt_tokens=w["prompt"][i], p=a["p"][j],
                       top_k=a["top_k"][j], blocks=a["blocks"][j], output_tokens=w["out"][i, j])
    assert d.total_ms[i, j] == pytest.approx(float(pred["total_ms"]), rel=1e-5)
    assert d.decode_ms[i, j] == pytest.approx(float(pred["decode_ms"]), rel=1e-5)
    full = est.predict(crops=12, vision_tokens=12 * 144, prompt_tokens=w["prompt"][i], p=1, top_k=8, blocks=16,
                       output_tokens=3)
    assert d.full_ms[i] == pytest.approx(float(full["total_ms"]), rel=1e-6)
    # no budget range stored: medians of cheapest / full over the split
    assert d.budget_range_ms == (pytest.approx(np.median(d.cheapest_ms)), pytest.approx(np.median(d.full_ms)))
    # envs straight from the path; the incomplete request 1 is skipped by default
    env = MolmoeKnobsEnv(cache=path, split="train")
    assert {env.reset(seed=k)[1]["sample_index"] for k in range(40)} == {0, 2, 3}
    assert MolmoeKnobsFlatEnv(cache=path, split="val").data.sample_ids.tolist() == ["q4"]


@pytest.mark.skipif(not HAVE_WRITER, reason="cache.writer / cache.reader not written yet")
def test_from_cache_stored_estimator_and_budget_range(tmp_path) -> None:
    from model_runtime.latency_estimator import LatencyEstimator

    est = LatencyEstimator.default()
    doubled = est.to_dict()
    for phase, coefs in doubled["coefficients"].items():  # a profile twice as slow everywhere
        doubled["coefficients"][phase] = {k: 2.0 * v for k, v in coefs.items()}
    path = tmp_path / "attrs.h5"
    write_tiny_cache(path, attrs={"budget_range_ms": [100.0, 200.0], "estimator": doubled})
    base = ReplayData.from_cache(path)
    assert base.budget_range_ms == (100.0, 200.0)  # the stored range goes with the stored estimator
    explicit = ReplayData.from_cache(path, estimator=est)
    np.testing.assert_allclose(base.total_ms, 2.0 * explicit.total_ms, rtol=1e-5)
    assert explicit.budget_range_ms == (pytest.approx(np.median(explicit.cheapest_ms)),
                                        pytest.approx(np.median(explicit.full_ms)))
    with pytest.raises(ValueError, match="unknown split 'nope'"):
        ReplayData.from_cache(path, split="nope")


def test_outcome_is_one_named_type(data: ReplayData) -> None:
    """Both scalar envs read outcomes as an ``Outcome`` NamedTuple whose fields are the tables'."""
    s, c = 3, cfg_index("medium", 2, 6, 15)
    for env in (MolmoeKnobsEnv(data=data), MolmoeKnobsFlatEnv(data=data)):
        env.reset(seed=0, options={"sample_index": s})
        o = env._outcome(s, c)
        assert type(o) is Outcome and o._fields == (
            "score", "latency_ms", "vision_ms", "prefill_ms", "decode_ms", "measured_ms", "output_tokens")
        assert (o.score, o.latency_ms, o.vision_ms, o.prefill_ms, o.decode_ms, o.output_tokens) == (
            float(data.score[s, c]), float(data.total_ms[s, c]), float(data.vision_ms[s, c]),
            float(data.prefill_ms[s, c]), float(data.decode_ms[s, c]), int(data.output_tokens[s, c]))
        info: dict = {}
        add_outcome(info, o, budget_ms=o.latency_ms - 1.0)
        assert info["latency_ms"] == o.latency_ms and info["violation"] and info["output_tokens"] == o.output_tokens
