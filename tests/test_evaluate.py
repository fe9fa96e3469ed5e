"""End-to-end replay evaluation on a small synthetic cache: outputs, columns, summary figures."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from agents.baselines import StaticPerBudget
from cache.synthetic import default_params, write_synthetic_cache
from envs.replay_data import ReplayData
from envs.reward import RewardConfig
from experiments.evaluate import EvalConfig, evaluate
from experiments.train import apply_overrides, parse_set, train_agent


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / "small.h5"
    params = dataclasses.replace(default_params(), n_samples=400, lang_dim=16, token_dim=16)
    return str(write_synthetic_cache(path, params, seed=3))


def test_evaluate_writes_reports_with_expected_rows(small_cache, tmp_path):
    test = ReplayData.from_cache(small_cache, "test")
    train = ReplayData.from_cache(small_cache, "train")
    lo, hi = test.budget_range_ms
    # a "learned" policy stand-in: static tuned on a coarser grid (exercises random_matched too)
    learned = StaticPerBudget.fit(train, [lo, hi], RewardConfig.make("hinge"), name="coarse_static")
    cfg = EvalConfig(cache=small_cache, out=str(tmp_path), n_budgets=3, lambdas=[0.5], plots=True)
    results, summary = evaluate(cfg, learned={"coarse_static": learned}, verbose=False)

    for f in ("results.csv", "summary.json", "requests.csv.gz", "pareto.png", "knobs_static.png"):
        assert (tmp_path / f).exists(), f
    df = pd.read_csv(tmp_path / "results.csv")
    main = df[df["lambda"].isna()]
    policies = set(main["policy"])
    assert {"always_full", "always_cheapest", "random", "static", "router", "router2", "oracle",
            "coarse_static", "random_matched[coarse_static]"} <= policies
    assert any(p.startswith("uncertainty@") for p in policies)
    # one row per policy x budget x (datasets + all)
    n_ds = test.datasets.size and len(set(test.datasets.tolist()))
    assert len(main[main["policy"] == "static"]) == 3 * (n_ds + 1)
    allrows = main[main["dataset"] == "all"]
    assert (allrows["n"] == test.n).all() and df["synthetic"].all()
    for prefix in ("ratio_tier_", "ratio_p", "ratio_k", "ratio_b"):
        cols = [c for c in df.columns if c.startswith(prefix)]
        assert np.allclose(allrows[cols].sum(axis=1), 1.0)
    # always_full picks only the full configuration
    full = allrows[allrows["policy"] == "always_full"]
    assert (full["ratio_tier_high"] == 1).all() and (full["ratio_b16"] == 1).all() and (full["ratio_k8"] == 1).all()
    lam = df[df["lambda"] == 0.5]
    assert set(lam["reward_mode"]) == {"lagrangian"} and "oracle" in set(lam["policy"])
    # violations restated: feasible-only rates and the oracle's / static's for reference
    from experiments.evaluate import feasible_pairs

    for c in ("violation_rate_feasible", "infeasible_share", "oracle_violation_rate", "static_violation_rate",
              "oracle_violation_rate_feasible", "static_violation_rate_feasible"):
        assert c in df.columns, c
    st = allrows[allrows["policy"] == "static"].sort_values("budget_ms")
    for _, row in st.iterrows():
        feas = feasible_pairs(test, np.arange(test.n), np.full(test.n, row["budget_ms"]))
        assert row["infeasible_share"] == pytest.approx(1.0 - feas.mean())
        assert row["static_violation_rate"] == pytest.approx(row["violation_rate"])
    orc = allrows[allrows["policy"] == "oracle"]
    assert np.allclose(orc["oracle_violation_rate"], orc["violation_rate"])
    assert (allrows["violation_rate_feasible"].dropna() <= 1).all()

    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["synthetic"] and len(s["cache"]["sha256"]) == 64 and s["budgets_ms"][0] == pytest.approx(lo)
    pol = s["policies"]
    # the oracle is an upper bound on mean reward; static is its own baseline
    assert pol["oracle"]["mean_reward"] >= max(v["mean_reward"] for v in pol.values()) - 1e-12
    assert pol["oracle"]["share_of_static_to_oracle_gap"] == pytest.approx(1.0)
    lo_ci, hi_ci = pol["oracle"]["reward_minus_static"]["ci95"]
    assert lo_ci <= pol["oracle"]["reward_minus_static"]["mean"] <= hi_ci
    assert 0.0 <= pol["static"]["aiq"] <= 1.0


def test_multi_seed_aggregates(small_cache, tmp_path):
    cfg = EvalConfig(cache=small_cache, out=str(tmp_path), policies=["random", "static"], seeds=[0, 1],
                     n_budgets=2, lambdas=[], plots=False)
    evaluate(cfg, verbose=False)
    agg = pd.read_csv(tmp_path / "results_agg.csv")
    assert set(agg["n_seeds"]) == {2}
    rnd = agg[(agg["policy"] == "random") & (agg["dataset"] == "all")]
    assert (rnd["mean_reward_ci_lo"] <= rnd["mean_reward_mean"]).all()
    assert (rnd["mean_reward_std"] > 0).all(), "random differs between seeds"


def test_train_cli_config_overrides_and_smoke_bandit(small_cache, tmp_path):
    from agents.grpo import GRPOConfig

    assert parse_set(["a.b=1", "c=x"]) == {"a": {"b": 1}, "c": "x"}
    cfg = apply_overrides(GRPOConfig(), {"lr": 1e-4, "group_size": 5})
    assert cfg.lr == 1e-4 and cfg.group_size == 5
    # YAML reads 1e-4 as a string: it is coerced to the field's type
    cfg = apply_overrides(GRPOConfig(), parse_set(["lr=1e-4", "group_size=6"]))
    assert cfg.lr == 1e-4 and cfg.group_size == 6
    with pytest.raises(ValueError, match="expects a number"):
        apply_overrides(GRPOConfig(), {"lr": "fast"})
    with pytest.raises(ValueError, match="unknown config key 'bogus'"):
        apply_overrides(GRPOConfig(), {"bogus": 1})
    pol = train_agent("linucb", cache=small_cache, out=str(tmp_path / "lin"), seed=0, steps=2000, progress=False)
    assert (tmp_path / "lin" / "config.yaml").exists() and (tmp_path / "lin" / "policy").exists()
    from agents.registry import load_policy

    again = load_policy(f"linucb:{tmp_path / 'lin' / 'policy'}")
    cfg = EvalConfig(cache=small_cache, out=str(tmp_path / "ev"), policies=["static"], n_budgets=2, lambdas=[],
                     plots=False, random_matched=False)
    res, _ = evaluate(cfg, learned={"linucb": pol, "linucb_loaded": again}, verbose=False)
    a = res[(res["policy"] == "linucb") & (res["dataset"] == "all")]["mean_reward"].to_numpy()
    b = res[(res["policy"] == "linucb_loaded") & (res["dataset"] == "all")]["mean_reward"].to_numpy()
    assert np.allclose(a, b), "a saved and reloaded policy acts identically"
    with pytest.raises(ValueError, match="unknown agent"):
        load_policy("nope:dir")
