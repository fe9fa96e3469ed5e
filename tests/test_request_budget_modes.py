"""Request features in the observations and the budget modes (relative, SLO): scalar and vector
envs agree, pinned budgets work per mode, the SLO reward / violation follow their definition."""

import numpy as np
import pytest

from envs.budgets import slo_ratio, slo_ratio_scalar
from envs.env_settings import EnvConfig
from envs.flat_env import MolmoeKnobsFlatEnv
from envs.replay_data import ReplayData, request_lm_configs
from envs.reward import RewardConfig, compute_reward
from envs.two_stage_env import MolmoeKnobsEnv
from envs.vector_env import MolmoeKnobsFlatVectorEnv, MolmoeKnobsVectorEnv


@pytest.fixture(scope="module")
def data() -> ReplayData:
    return ReplayData.random(24, seed=5)


def test_request_features_layout(data):
    ks = data.knob_space
    t_ = len(ks.tiers)
    assert data.request.shape == (data.n, 4 * t_ + 3) and data.request.dtype == np.float32
    np.testing.assert_allclose(data.request[:, :t_], data.crops / max(ks.crops), rtol=1e-6)
    np.testing.assert_allclose(data.request[:, 2 * t_], data.prompt_tokens / 100.0, rtol=1e-6)
    lm = request_lm_configs(ks)
    ttft = data.vision_ms + data.prefill_ms
    np.testing.assert_allclose(data.request[:, 2 * t_ + 1:3 * t_ + 1] * data.latency_scale_ms, ttft[:, lm[0]], rtol=1e-5)
    np.testing.assert_allclose(data.request[:, 3 * t_ + 1:4 * t_ + 1] * data.latency_scale_ms, ttft[:, lm[1]], rtol=1e-5)
    assert lm[0, 0] == ks.index(ks.cheapest_config) and lm[1, -1] == ks.index(ks.full_config)


def test_request_features_from_cache_match_estimator(tmp_path):
    import dataclasses

    from cache.synthetic import default_params, write_synthetic_cache
    from model_runtime.latency_estimator import LatencyEstimator

    path = write_synthetic_cache(tmp_path / "c.h5", dataclasses.replace(default_params(), n_samples=60, lang_dim=8,
                                                                        token_dim=8), seed=1)
    d = ReplayData.from_cache(path, "train")
    from cache.reader import OutcomeCache

    with OutcomeCache(path) as oc:
        est = LatencyEstimator.from_dict(oc.estimator_json) if oc.estimator_json else LatencyEstimator.default()
        rows = d.cache_rows
        np.testing.assert_array_equal(d.crops, oc.crops[rows])
        np.testing.assert_array_equal(d.vision_tokens, oc.vision_tokens[rows])
        np.testing.assert_array_equal(d.prompt_tokens, oc.prompt_tokens[rows])
    ks, a = d.knob_space, d.knob_space.config_table()
    fi = ks.index(ks.full_config)
    pred = est.predict(crops=d.crops[:, -1], vision_tokens=d.vision_tokens[:, -1], prompt_tokens=d.prompt_tokens,
                       p=a["p"][fi], top_k=a["top_k"][fi], blocks=a["blocks"][fi], output_tokens=d.nominal_output_tokens)
    np.testing.assert_allclose(d.ttft_tier_ms[:, 1, -1], pred["vision_ms"] + pred["prefill_ms"], rtol=1e-5)
    np.testing.assert_allclose(d.tpot_nominal_ms[:, 1], pred["decode_ms_per_token"], rtol=1e-4)


@pytest.mark.parametrize("mode", ["absolute", "relative", "slo"])
@pytest.mark.parametrize("flat", [True, False])
def test_scalar_and_vector_agree_per_mode(data, mode, flat):
    n = data.n
    reward = "hinge"
    if mode == "absolute":
        opts = {"budget_ms": np.linspace(*data.budget_range_ms, n)}
    elif mode == "relative":
        opts = {"budget_u": np.linspace(0.0, 1.0, n)}
    else:
        opts = {"ttft_budget_ms": np.full(n, float(np.median(data.ttft_ms))),
                "tpot_budget_ms": np.linspace(0.5, 1.5, n) * float(np.median(data.tpot_nominal_ms[:, 1]))}
    cfg = EnvConfig(data=data, budget_mode=mode, reward=reward)
    venv = (MolmoeKnobsFlatVectorEnv if flat else MolmoeKnobsVectorEnv)(num_envs=n, config=cfg)
    obs, info = venv.reset(options={"sample_index": np.arange(n), **opts})
    assert ("slo" in obs) == (mode == "slo") and obs["request"].shape == (n, data.request_dim)
    np.testing.assert_array_equal(obs["request"], data.request)
    if mode == "relative":
        np.testing.assert_allclose(info["budget_ms"], data.cheapest_ms + opts["budget_u"] * (data.full_ms - data.cheapest_ms))
    rng = np.random.default_rng(0)
    if flat:
        acts = rng.integers(0, data.n_configs, n)
        _, r, *_, info2 = venv.step(acts)
    else:
        a0 = np.stack([rng.integers(0, 3, n), rng.integers(0, 5, n), np.zeros(n, int), np.zeros(n, int)], 1)
        obs1, *_ = venv.step(a0)
        np.testing.assert_array_equal(obs1["request"], data.request)
        p = a0[:, 1] + 1
        a1 = np.stack([a0[:, 0], a0[:, 1], rng.integers(0, 5, n), rng.integers(0, 6 - p)], 1)
        _, r, *_, info2 = venv.step(a1)
    fin = info2["final_info"]
    env = (MolmoeKnobsFlatEnv if flat else MolmoeKnobsEnv)(cfg)
    for i in range(n):
        o, inf = env.reset(options={"sample_index": i, **{k: v[i] for k, v in opts.items()}})
        np.testing.assert_array_equal(o["request"], data.request[i])
        if mode == "slo":
            np.testing.assert_array_equal(o["slo"], obs["slo"][i])
        assert inf["budget_ms"] == pytest.approx(info["budget_ms"][i])
        if flat:
            _, ri, *_, fi = env.step(int(acts[i]))
        else:
            env.step(a0[i])
            _, ri, *_, fi = env.step(a1[i])
        assert ri == pytest.approx(r[i], rel=1e-6, abs=1e-9)
        assert fi["violation"] == bool(fin["violation"][i])
        c = fi["config_index"]
        if mode == "slo":
            assert fi["ttft_ms"] == pytest.approx(float(data.ttft_ms[i, c]), rel=1e-6)
            assert fi["tpot_ms"] == pytest.approx(float(data.tpot_ms[i, c]), rel=1e-5)
            rho = slo_ratio(data.ttft_ms[i, c], data.tpot_ms[i, c], opts["ttft_budget_ms"][i], opts["tpot_budget_ms"][i])
            assert fi["violation"] == bool(rho > 1.0)
            assert ri == pytest.approx(float(compute_reward(data.score[i, c], rho, 1.0, 0.0, RewardConfig())), rel=1e-5, abs=1e-6)
            assert fi["ttft_budget_ms"] == opts["ttft_budget_ms"][i]
        else:
            assert fi["violation"] == bool(data.total_ms[i, c] > inf["budget_ms"])


def test_slo_ratio_definition():
    assert slo_ratio_scalar(5.0, 1.0, 10.0, 2.0) == 0.5
    assert slo_ratio_scalar(12.0, 1.0, 10.0, 2.0) == pytest.approx(1.2)
    assert slo_ratio_scalar(12.0, 3.0, 10.0, 2.0) == pytest.approx(1.7)  # both excesses add
    x = np.array([5.0, 12.0, 12.0])
    np.testing.assert_allclose(slo_ratio(x, np.array([1.0, 1.0, 3.0]), 10.0, 2.0), [0.5, 1.2, 1.7])


def test_budget_mode_draws_and_errors(data):
    env = MolmoeKnobsFlatEnv(data=data, budget_mode="relative", budget_u_range=(0.25, 0.5))
    for seed in range(20):
        _, info = env.reset(seed=seed)
        s = info["sample_index"]
        u = (info["budget_ms"] - data.cheapest_ms[s]) / (data.full_ms[s] - data.cheapest_ms[s])
        assert 0.25 <= u < 0.5
    with pytest.raises(ValueError, match="budget_u"):
        MolmoeKnobsFlatEnv(data=data).reset(options={"budget_u": 0.5})
    slo = MolmoeKnobsEnv(data=data, budget_mode="slo")
    with pytest.raises(ValueError, match="ttft_budget_ms"):
        slo.reset(options={"budget_ms": 10.0})
    with pytest.raises(ValueError, match="both"):
        slo.reset(options={"ttft_budget_ms": 10.0})
    _, info = slo.reset(seed=1)
    lo, hi = slo.episode_budgets.ttft_range
    assert lo <= info["ttft_budget_ms"] <= hi and "tpot_budget_ms" in info
    with pytest.raises(ValueError, match="budget_mode"):
        MolmoeKnobsEnv(data=data, budget_mode="nope")
    with pytest.raises(ValueError, match="only apply"):
        MolmoeKnobsEnv(data=data, budget_mode="relative", budget_range=(1.0, 2.0))
    venv = MolmoeKnobsVectorEnv(num_envs=8, data=data, budget_mode="slo")
    obs, info = venv.reset(seed=0)
    assert np.all(np.isfinite(info["ttft_budget_ms"])) and obs["slo"].shape == (8, 2)


def test_gymnasium_checker_per_mode(data):
    from gymnasium.utils.env_checker import check_env

    for mode in ("relative", "slo"):
        check_env(MolmoeKnobsEnv(data=data, budget_mode=mode), skip_render_check=True)
        check_env(MolmoeKnobsFlatEnv(data=data, budget_mode=mode), skip_render_check=True)
