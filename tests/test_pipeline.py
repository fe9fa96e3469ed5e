"""The experiment pipeline at toy size: every file written, figures linked, resume skips;
the uncertainty fallback wrapper and the oracle-action numbers on hand-made cases."""

import dataclasses
import json
import re

import numpy as np
import pandas as pd
import pytest

from agents.baselines import FixedConfig, TwoStageRouter
from agents.fallback import UncertaintyFallback
from envs.replay_data import ReplayData
from envs.reward import RewardConfig
from experiments.pipeline_parts.analysis import confusion, error_slices, oracle_agreement, regret_by_oracle_bucket, with_oracle
from experiments.pipeline_parts.common import run_policy

TINY_GRPO = {"iterations": 2, "contexts_per_iter": 16, "group_size": 4, "hidden_sizes": (16,), "budget_dim": 16,
             "num_minibatches": 1, "scale_rewards": "none"}


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    from cache.synthetic import default_params, write_synthetic_cache

    path = tmp_path_factory.mktemp("pipe") / "toy.h5"
    params = dataclasses.replace(default_params(), n_samples=200, lang_dim=8, token_dim=8)
    return str(write_synthetic_cache(path, params, seed=5))


def test_pipeline_end_to_end_and_resume(toy_cache, tmp_path):
    from experiments.pipeline import EXPERIMENTS, main, run_pipeline

    out = tmp_path / "exp"
    st = run_pipeline(toy_cache, out, seeds=[0], quick=True, grpo=TINY_GRPO, n_budgets=2, verbose=False, figures="few")
    assert {n: s["status"] for n, s in st.items()} == {n: "done" for n in EXPERIMENTS}
    for f in ("main_table.csv", "pareto.csv", "action_ratio.csv", "report.md"):
        assert (out / f).stat().st_size > 0, f
    for name in EXPERIMENTS:
        d = out / name
        if name == "token_pruning":  # needs a model: not applicable to a SYNTHETIC cache (tests/test_token_pruning.py)
            assert (d / "DONE").exists() and not (d / "results.csv").exists()
            assert "not applicable to this cache: the cache is SYNTHETIC" in st[name]["notes"][0]
            continue
        assert (d / "DONE").exists() and (d / "results.csv").exists(), name
        s = json.loads((d / "summary.json").read_text())
        assert s["synthetic"] is True and s["cache_label"] == "SYNTHETIC" and len(s["cache"]["sha256"]) == 64
        res = pd.read_csv(d / "results.csv")
        assert {"synthetic", "cache_label", "policy", "budget_ms", "dataset", "accuracy", "mean_reward",
                "violation_rate", "ratio_tier_low"} <= set(res.columns)
    report = (out / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(links) >= 6 and all((out / l).exists() for l in links)
    for name in EXPERIMENTS:
        assert f"## {name}" in report
    assert "SYNTHETIC" in report and "not possible yet" in report
    abl = pd.read_csv(out / "ablations" / "ablations.csv")
    assert {"obs: lang only", "actions: tier only", "cost: lagrangian λ=0", "advantage: std-scaled (group)"} <= set(abl["row"])
    fb = pd.read_csv(out / "fallback" / "fallback_sweep.csv")
    assert fb["trigger_rate"].between(0, 1).all() and (fb.groupby("policy")["trigger_rate"].apply(
        lambda x: x.is_monotonic_decreasing)).all()  # higher quantile → fewer triggers
    gen = pd.read_csv(out / "generalization" / "generalization.csv")
    assert len(set(gen["heldout_dataset"])) == 2 and (gen["diff_ci_lo"] <= gen["diff_ci_hi"]).all()
    pareto = pd.read_csv(out / "pareto.csv")
    assert pareto["on_front"].any() and "fixed configuration" in set(pareto["kind"])

    # resume: everything finished is skipped; a killed experiment (no marker) runs again
    stamp = (out / "main" / "DONE").stat().st_mtime_ns
    (out / "fallback" / "DONE").unlink()
    (out / "fallback" / "junk.txt").write_text("partial")
    st2 = run_pipeline(toy_cache, out, seeds=[0], quick=True, grpo=TINY_GRPO, n_budgets=2, verbose=False, figures="few")
    assert st2["fallback"]["status"] == "done" and not (out / "fallback" / "junk.txt").exists()
    assert all(st2[n]["status"] == "skipped" for n in EXPERIMENTS if n != "fallback")
    assert (out / "main" / "DONE").stat().st_mtime_ns == stamp
    assert "finished by an earlier run" in (out / "report.md").read_text()
    # --only: the named experiment (and what it needs) only; the report keeps the finished others
    st3 = run_pipeline(toy_cache, out, seeds=[0], quick=True, grpo=TINY_GRPO, n_budgets=2, verbose=False,
                       figures="few", only=["oracle_actions"])
    assert list(st3) == list(EXPERIMENTS) and all(s["status"] == "skipped" for s in st3.values())
    assert all(f"## {n}" in (out / "report.md").read_text() for n in EXPERIMENTS)
    # the CLI: a bad --only name is a one-line user error
    assert main(["--cache", toy_cache, "--out", str(tmp_path / "x"), "--only", "bogus"]) == 2


def _tiny_data():
    return ReplayData.random(n=6, lang_dim=4, token_dim=4, seed=1)


def test_fallback_wrapper_escalates_within_budget():
    data = _tiny_data()
    ks = data.knob_space
    cheap = ks.index(ks.cheapest_config)
    u = np.array([[0.1, 0.9], [0.9, 0.1], [0.9, 0.1], [0.2, 0.8], [0.95, 0.05], [0.3, 0.7]])
    w = UncertaintyFallback(FixedConfig("cheap", cheap), data, u, threshold=0.5)
    nominal = data.ttft_ms + data.tpot_ms * (data.nominal_output_tokens - 1)
    budget = float(np.median(nominal[:, cheap])) * 3
    info = {"sample_index": np.arange(6), "budget_ms": np.full(6, budget)}
    obs = {"action_mask": np.ones((6, len(ks)), dtype=np.int8)}
    a = w.act(obs, info)
    trig = np.array([False, True, True, False, True, False])
    assert (w.last_triggered == trig).all()
    for i in range(6):
        fits = data.valid[i] & (nominal[i] <= budget)
        if trig[i] and fits.any():
            assert fits[a[i]] and data.complexity[a[i]] == data.complexity[fits].max()
        else:
            assert a[i] == cheap
    # margin: uncertain when the margin is below the threshold (same rows here)
    wm = UncertaintyFallback(FixedConfig("cheap", cheap), data, u, threshold=0.5, feature="margin")
    wm.act(obs, info)
    assert (wm.last_triggered == trig).all()
    # a threshold at a value the margin takes (a point mass, e.g. margins clipped at 0) still triggers it
    wm0 = UncertaintyFallback(FixedConfig("cheap", cheap), data, u, threshold=0.1, feature="margin")
    wm0.act(obs, info)
    assert (wm0.last_triggered == trig).all()
    # a budget nothing fits: nothing escalates
    w.act(obs, {"sample_index": np.arange(6), "budget_ms": np.full(6, 1e-6)})
    assert w.last_triggered.any() and not w.last_escalated.any()
    # a two-stage inner policy: escalated requests end on the same configuration as the flat wrapper's
    reward = RewardConfig.make("hinge")
    inner2 = TwoStageRouter.fit(data, reward, n_budgets=2)
    w2 = UncertaintyFallback(inner2, data, u, threshold=0.5)
    r2 = run_policy(w2, data, [budget], reward, 0)
    rf = run_policy(w, data, [budget], reward, 0)
    esc = w2.last_escalated
    assert esc.any()
    assert (r2["config_index"].to_numpy()[esc] == rf["config_index"].to_numpy()[esc]).all()
    bare = run_policy(inner2, data, [budget], reward, 0)
    assert (r2["config_index"].to_numpy()[~esc] == bare["config_index"].to_numpy()[~esc]).all()


def test_oracle_analysis_hand_made():
    knobs = pd.DataFrame({"tier": ["low", "high", "high"], "p": [1, 1, 2], "top_k": [4, 8, 8], "blocks": [12, 16, 16]})
    base = {"seed": 0, "budget_ms": 10.0, "lambda": np.nan, "latency_ms": 1.0}
    rows = []
    oracle = [(0, 2, 1.0), (1, 0, 0.5), (2, 1, 0.8), (3, 2, 0.6)]  # (request, config, reward)
    pol = [(0, 2, 1.0), (1, 1, 0.48), (2, 0, 0.3), (3, 1, 0.6)]
    for name, picks in (("oracle", oracle), ("a", pol)):
        for s, c, r in picks:
            rows.append({**base, "policy": name, "sample_index": s, "config_index": c, "reward": r,
                         "score": r, "violation": c == 1, "dataset": "d0" if s < 2 else "d1"})
    j = with_oracle(pd.DataFrame(rows), knobs)
    assert np.allclose(j.sort_values("sample_index")["regret"], [0.0, 0.02, 0.5, 0.0])
    ag = oracle_agreement(j, eps=(0.01, 0.05)).iloc[0]
    assert ag["share_equal_oracle"] == pytest.approx(0.25)
    assert ag["share_within_0.01"] == pytest.approx(0.5) and ag["share_within_0.05"] == pytest.approx(0.75)
    assert ag["share_equal_tier"] == pytest.approx(0.5)  # high/high, high/low, low/high, high/high
    assert ag["share_equal_p"] == pytest.approx(0.75)  # p: 2/2, 1/1, 1/1, 1/2
    assert ag["mean_regret"] == pytest.approx(0.13)
    conf = confusion(j)
    t = conf[conf["knob"] == "tier"].set_index(["oracle_value", "policy_value"])
    assert t.loc[("high", "high"), "count"] == 2 and t.loc[("high", "low"), "count"] == 1
    assert t.loc[("high", "high"), "share_of_oracle_value"] == pytest.approx(2 / 3)
    assert t.loc[("low", "high"), "share_of_oracle_value"] == pytest.approx(1.0)
    rb = regret_by_oracle_bucket(j).set_index(["knob", "oracle_value"])
    assert rb.loc[("tier", "high"), "mean_regret"] == pytest.approx(0.5 / 3)
    assert rb.loc[("tier", "low"), "mean_regret"] == pytest.approx(0.02)
    sl = error_slices(j).set_index(["slice", "value"])
    assert sl.loc[("tier", "high"), "n"] == 3 and sl.loc[("tier", "high"), "violation_rate"] == pytest.approx(2 / 3)
    assert sl.loc[("dataset", "d1"), "mean_regret"] == pytest.approx(0.25)
