"""Rewards (envs/reward.py): every mode against hand computations, scalar == vectorised, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs.reward import REWARD_MODES, RewardConfig, compute_reward


def both(cfg: RewardConfig, score: float, lat: float, budget: float, cx: float = 0.5, ref: float = 300.0) -> float:
    """The reward by both implementations, asserting they agree."""
    vec = float(compute_reward(score, lat, budget, cx, cfg, latency_ref_ms=ref))
    sca = cfg.scalar(score, lat, budget, cx, ref)
    assert sca == pytest.approx(vec, rel=1e-12, abs=1e-12)
    return sca


def test_hinge_by_hand() -> None:
    cfg = RewardConfig("hinge")
    assert cfg.alpha == 2.0
    assert both(cfg, 0.8, 200.0, 250.0) == pytest.approx(0.8)  # within budget: the score
    assert both(cfg, 0.8, 250.0, 250.0) == pytest.approx(0.8)  # at the budget: no penalty
    assert both(cfg, 0.8, 300.0, 250.0) == pytest.approx(0.8 - 2.0 * 50.0 / 250.0)  # 0.4
    assert both(RewardConfig("hinge", alpha=0.5), 1.0, 500.0, 250.0) == pytest.approx(0.5)


def test_hard_by_hand() -> None:
    cfg = RewardConfig("hard")
    assert both(cfg, 0.7, 250.0, 250.0) == pytest.approx(0.7)
    assert both(cfg, 0.7, 250.001, 250.0) == pytest.approx(-1.0)
    assert both(RewardConfig("hard", c=2.5), 0.7, 400.0, 250.0) == pytest.approx(-2.5)


def test_lagrangian_by_hand() -> None:
    cfg = RewardConfig("lagrangian")
    assert cfg.lam == 0.5
    assert both(cfg, 0.8, 150.0, 999.0, ref=300.0) == pytest.approx(0.8 - 0.5 * 0.5)  # budget plays no role
    assert both(RewardConfig("lagrangian", lam=2.0), 0.6, 300.0, 100.0, ref=300.0) == pytest.approx(-1.4)
    with pytest.raises(ValueError, match="latency_ref_ms"):
        compute_reward(0.5, 100.0, 200.0, 0.0, cfg)


def test_shaped_by_hand() -> None:
    cfg = RewardConfig("shaped")
    assert (cfg.alpha, cfg.beta, cfg.gamma, cfg.delta, cfg.epsilon) == (1.0, 0.5, 10.0, 0.1, 0.05)
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    # over budget by 20 %: sigmoid(2), squared overshoot 0.04, no slack bonus
    assert both(cfg, 0.8, 300.0, 250.0, cx=0.5) == pytest.approx(0.8 - 0.5 * sig(2.0) - 10.0 * 0.04 - 0.05 * 0.5)
    # under budget by 20 %: sigmoid(-2), slack bonus 0.1 * 0.2
    assert both(cfg, 0.8, 200.0, 250.0, cx=0.5) == pytest.approx(0.8 - 0.5 * sig(-2.0) - 0.025 + 0.02)
    # exactly at the budget: sigmoid(0) = 0.5, bonus term (1 - 1) = 0
    assert both(cfg, 0.8, 250.0, 250.0, cx=1.0) == pytest.approx(0.8 - 0.25 - 0.05)
    # complexity costs epsilon per unit
    assert both(cfg, 0.8, 200.0, 250.0, cx=0.0) - both(cfg, 0.8, 200.0, 250.0, cx=1.0) == pytest.approx(0.05)


@pytest.mark.parametrize("mode", REWARD_MODES)
def test_vectorised_matches_scalar_on_a_grid(mode: str) -> None:
    rng = np.random.default_rng(0)
    n = 500
    score = rng.uniform(0, 1, n)
    lat = rng.uniform(50, 600, n)
    bud = rng.uniform(100, 400, n)
    cx = rng.uniform(0, 1, n)
    ref = rng.uniform(200, 500, n)
    cfg = RewardConfig(mode)
    vec = compute_reward(score, lat, bud, cx, cfg, latency_ref_ms=ref)
    assert vec.shape == (n,) and vec.dtype == np.float64
    sca = np.array([cfg.scalar(*args) for args in zip(score, lat, bud, cx, ref)])
    np.testing.assert_allclose(vec, sca, rtol=1e-12, atol=1e-12)


def test_broadcasting_over_budgets() -> None:
    out = compute_reward(np.array([0.5, 1.0])[:, None], 300.0, np.array([200.0, 300.0, 400.0]), 0.0, RewardConfig())
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out[:, 0], [0.5 - 1.0, 1.0 - 1.0])
    np.testing.assert_allclose(out[:, 1:], [[0.5, 0.5], [1.0, 1.0]])


def test_bad_configs_raise() -> None:
    with pytest.raises(ValueError, match=r"unknown reward mode 'linear'.*hinge.*hard.*lagrangian.*shaped"):
        RewardConfig("linear")
    with pytest.raises(ValueError, match=r"unknown reward parameter\(s\) \['lambda'\].*valid parameters"):
        RewardConfig.make("lagrangian", {"lambda": 0.1})
    with pytest.raises(ValueError, match="finite"):
        RewardConfig("hinge", alpha=float("nan"))
    with pytest.raises(ValueError, match="either"):
        RewardConfig.make(RewardConfig("hard"), {"c": 2.0})
    assert RewardConfig.make("hard", {"c": 3}).c == 3.0
