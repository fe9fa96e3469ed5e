"""Baselines on hand-made replay data: each picks what its definition says it picks."""

import numpy as np
import pytest

from agents.baselines import (
    FixedConfig,
    Oracle,
    RandomMatched,
    RandomPolicy,
    StaticPerBudget,
    SupervisedRouter,
    UncertaintyThreshold,
    reward_matrix,
)
from envs.knob_space import KnobSpace
from envs.replay_data import ReplayData
from envs.reward import RewardConfig
from envs.vector_env import MolmoeKnobsFlatVectorEnv

KS = KnobSpace()
C = len(KS)
HINGE = RewardConfig.make("hinge")


def make_data(n=60, seed=0):
    """Latency grows with config complexity; score is high only at rich configs for 'hard'
    requests (lang[:, 0] > 0), while easy requests are answered by every configuration."""
    rng = np.random.default_rng(seed)
    t = KS.config_table()
    cost = 100.0 + 20.0 * t["tier"] + 10.0 * (t["top_k"] - 4) + 15.0 * (t["blocks"] - 12)  # (C,)
    hard = rng.random(n) < 0.5
    lang = np.c_[np.where(hard, 1.0, -1.0), rng.normal(size=(n, 3))].astype(np.float32)
    rich = (t["tier"] == 2) & (t["blocks"] == 16)
    score = np.where(hard[:, None], rich[None, :].astype(float), 1.0)
    vision = np.broadcast_to(cost * 0.1, (n, C))
    prefill = np.broadcast_to(cost * 0.6, (n, C))
    decode = np.broadcast_to(cost * 0.3, (n, C))
    tokens = rng.normal(size=(n, 3, 5, 4)).astype(np.float32)
    return ReplayData.from_arrays(score=score, vision_ms=vision, prefill_ms=prefill, decode_ms=decode,
                                  lang=lang, tokens=tokens, knob_space=KS), hard


def flat_obs_info(data, budget):
    venv = MolmoeKnobsFlatVectorEnv(num_envs=data.n, data=data)
    return venv.reset(options={"sample_index": np.arange(data.n), "budget_ms": np.full(data.n, budget)})


def test_fixed_and_random_respect_masks():
    data, _ = make_data()
    obs, info = flat_obs_info(data, 200.0)
    assert (FixedConfig("full", KS.index(KS.full_config)).act(obs, info) == KS.index(KS.full_config)).all()
    a = RandomPolicy(seed=1).act(obs, info)
    assert a.shape == (data.n,) and len(set(a.tolist())) > 10
    obs["action_mask"][:, :200] = 0
    assert (RandomPolicy(seed=2).act(obs, info) >= 200).all()


def test_static_picks_best_mean_reward_per_budget():
    data, _ = make_data()
    budgets = [150.0, 260.0]
    static = StaticPerBudget.fit(data, budgets, HINGE)
    for b, c in zip(budgets, static.table):
        mean_r = np.nanmean(reward_matrix(data, b, HINGE), axis=0)
        assert mean_r[c] == pytest.approx(mean_r.max())
    obs, info = flat_obs_info(data, 150.0)
    assert (static.act(obs, info) == static.table[0]).all()
    info = dict(info, budget_ms=np.full(data.n, 255.0))
    assert (static.act(obs, info) == static.table[1]).all()


def test_oracle_is_per_request_best_and_upper_bounds_static():
    data, hard = make_data()
    b = 260.0
    obs, info = flat_obs_info(data, b)
    a = Oracle(data, HINGE).act(obs, info)
    r = reward_matrix(data, b, HINGE)
    got = r[np.arange(data.n), a]
    assert np.allclose(got, np.nanmax(r, axis=1))
    # easy requests: every config scores 1, so the oracle takes the cheapest latency
    assert (data.total_ms[~hard, :][np.arange((~hard).sum()), a[~hard]] == data.total_ms.min()).all()
    static = StaticPerBudget.fit(data, [b], HINGE)
    assert got.mean() >= r[:, static.table[0]].mean()


def test_router_learns_the_hard_easy_split():
    data, hard = make_data(n=200)
    obs, info = flat_obs_info(data, 300.0)
    # lagrangian: latency always costs, so easy requests should go cheap, hard ones rich
    router = SupervisedRouter.fit(data, obs, RewardConfig.make("lagrangian", {"lam": 0.5}), ridge=1e-3,
                                  budgets_ms=[300.0])
    a = router.act(obs, info)
    t = KS.config_table()
    rich = (t["tier"] == 2) & (t["blocks"] == 16)
    assert rich[a[hard]].mean() > 0.9, "hard requests get a rich configuration"
    assert rich[a[~hard]].mean() < 0.1, "easy requests get a cheap one"


def test_random_matched_reproduces_distribution():
    budgets = np.repeat([100.0, 200.0], 500)
    chosen = np.where(budgets == 100.0, 3, np.where(np.arange(1000) % 2 == 0, 7, 9))
    rm = RandomMatched.from_choices(budgets, chosen, C, seed=0)
    obs = {"action_mask": np.ones((4000, C), dtype=np.int8)}
    a_lo = rm.act(obs, {"budget_ms": np.full(4000, 100.0)})
    a_hi = rm.act(obs, {"budget_ms": np.full(4000, 200.0)})
    assert (a_lo == 3).all()
    assert set(a_hi.tolist()) == {7, 9} and abs((a_hi == 7).mean() - 0.5) < 0.05
    with pytest.raises(ValueError):
        RandomMatched([1.0], np.array([[0.5, 0.6]]))


def test_uncertainty_threshold_switches_on_entropy():
    data, _ = make_data()
    static = StaticPerBudget.fit(data, [300.0], HINGE)
    u = np.c_[np.linspace(0, 1, data.n), np.zeros(data.n)]
    cheap = KS.index(KS.cheapest_config)
    pol = UncertaintyThreshold(u, 0.5, static, cheap)
    obs, info = flat_obs_info(data, 300.0)
    a = pol.act(obs, info)
    rows = info["sample_index"]
    assert (a[u[rows, 0] < 0.5] == cheap).all() and (a[u[rows, 0] >= 0.5] == static.table[0]).all()
    assert UncertaintyThreshold.thresholds(u, quantiles=[0.5]) == [pytest.approx(0.5)]
    with pytest.raises(ValueError, match="feature"):
        UncertaintyThreshold(u, 0.5, static, cheap, feature="bogus")


def test_router_save_load(tmp_path):
    data, _ = make_data()
    obs, info = flat_obs_info(data, 300.0)
    router = SupervisedRouter.fit(data, obs, HINGE)
    router.save(tmp_path)
    again = SupervisedRouter.load(tmp_path)
    assert (again.act(obs, info) == router.act(obs, info)).all()


def test_two_stage_router_uses_the_latency_token():
    """Hardness visible only in the latency token at (high, p=5): router2 must read it at stage 2."""
    from agents.baselines import TwoStageRouter
    from envs.vector_env import MolmoeKnobsVectorEnv

    data, hard = make_data(n=300, seed=1)
    lang = data.lang.copy()
    lang[:, 0] = 0.0  # hide hardness from stage 1
    tokens = np.random.default_rng(2).normal(size=data.tokens.shape).astype(np.float32)
    tokens[:, :, :, 0] = np.where(hard, 3.0, -3.0)[:, None, None]  # visible at every (tier, p)
    d2 = ReplayData.from_arrays(score=data.score, vision_ms=data.vision_ms, prefill_ms=data.prefill_ms,
                                decode_ms=data.decode_ms, lang=lang, tokens=tokens, knob_space=KS)
    lag = RewardConfig.make("lagrangian", {"lam": 0.5})
    router = TwoStageRouter.fit(d2, lag, ridge=1e-3, budgets_ms=[300.0])
    venv = MolmoeKnobsVectorEnv(num_envs=d2.n, data=d2, reward=lag)
    obs, info = venv.reset(options={"sample_index": np.arange(d2.n), "budget_ms": np.full(d2.n, 300.0)})
    a1 = router.act_stage1(obs, info)
    obs, _, _, _, info = venv.step(a1)  # raises if a stage-1 action were masked
    a2 = router.act_stage2(obs, info)
    _, _, _, _, info = venv.step(a2)
    cfg = info["final_info"]["config_index"]
    t = KS.config_table()
    assert (t["blocks"][cfg[hard]] == 16).mean() > 0.9, "hard requests keep every block"
    assert (t["blocks"][cfg[~hard]] == 16).mean() < 0.5, "easy requests drop blocks"
