"""Uncertainty-triggered fallback (seed 05 §E1): :class:`agents.fallback.UncertaintyFallback`
around the static, router and GRPO policies, over a sweep of thresholds (quantiles of the train
split's first-token entropy and, outside ``--quick``, margin). ``fallback_sweep.csv``: per
inner policy, feature and threshold, the trigger rate (share of requests whose signal crosses
the threshold), the escalation rate (triggered and some configuration fits the budget), and
the wrapped policy's reward / accuracy / latency / violations with the paired reward
difference to the bare policy (bootstrap 95 % CI)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from agents.baselines import StaticPerBudget, SupervisedRouter
from agents.fallback import UncertaintyFallback
from experiments.evaluate import flat_observations
from experiments.pipeline_parts.common import Context, NotApplicable, paired_diff, plt, run_policy, save_fig, train_controller, write_experiment

NAME = "fallback"
DESCRIPTION = ("Uncertainty-triggered fallback: any policy wrapped so that a request whose first-token entropy "
               "(or margin) crosses a threshold is escalated to the largest configuration that fits its budget; "
               "trigger rate and the effect on reward, accuracy and latency over a threshold sweep.")


def run(ctx: Context, out: Path) -> dict:
    if ctx.u_test is None:
        raise NotApplicable("the cache has no uncertainty features (OutcomeCache.uncertainty is missing or all NaN)")
    qs = (0.5, 0.75, 0.9) if ctx.quick else (0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
    features = ("entropy",) if ctx.quick else ("entropy", "margin")
    frames, rows_meta = [], []
    for seed in ctx.seeds:
        obs = flat_observations(ctx.train, float(ctx.test.budget_range_ms[1]))
        inners = [StaticPerBudget.fit(ctx.train, ctx.budgets, ctx.reward), SupervisedRouter.fit(ctx.train, obs, ctx.reward),
                  train_controller(ctx, "grpo", seed, ctx.train)]
        envs: dict = {}
        for inner in inners:
            frames.append(run_policy(inner, ctx.test, ctx.budgets, ctx.reward, seed, envs=envs))
            for feat in features:
                for q, thr in zip(qs, UncertaintyFallback.thresholds(ctx.u_train, feat, qs)):
                    w = UncertaintyFallback(inner, ctx.test, ctx.u_test, thr, feat,
                                            name=f"fallback[{inner.name}]@{feat}_q{q:g}")
                    rec = run_policy(w, ctx.test, ctx.budgets, ctx.reward, seed, envs=envs)
                    trig = w.triggered(rec["sample_index"].to_numpy())
                    esc = trig & (w.targets(rec["sample_index"].to_numpy(), rec["budget_ms"].to_numpy()) >= 0)
                    frames.append(rec)
                    rows_meta.append({"seed": seed, "policy": inner.name, "wrapped": w.name, "feature": feat,
                                      "quantile": q, "threshold": thr, "trigger_rate": float(trig.mean()),
                                      "escalation_rate": float(esc.mean())})
    records = pd.concat(frames, ignore_index=True)
    rows = []
    for m in rows_meta:
        g = records[(records["policy"] == m["wrapped"]) & (records["seed"] == m["seed"])]
        b = records[(records["policy"] == m["policy"]) & (records["seed"] == m["seed"])]
        d = paired_diff(records[records["seed"] == m["seed"]], m["wrapped"], m["policy"])
        rows.append({**m, "mean_reward": g["reward"].mean(), "accuracy": g["score"].mean(),
                     "mean_latency_ms": g["latency_ms"].mean(), "violation_rate": g["violation"].mean(),
                     "bare_mean_reward": b["reward"].mean(), "bare_accuracy": b["score"].mean(),
                     "bare_mean_latency_ms": b["latency_ms"].mean(), "reward_diff": d[0], "diff_ci_lo": d[1],
                     "diff_ci_hi": d[2], "accuracy_diff": g["score"].mean() - b["score"].mean(),
                     "latency_diff_ms": g["latency_ms"].mean() - b["latency_ms"].mean()})
    table = pd.DataFrame(rows)
    table.to_csv(out / "fallback_sweep.csv", index=False)
    write_experiment(ctx, out, records, extra={"name": NAME, "table": "fallback_sweep.csv", "quantiles": list(qs)})
    return {"figures": [_plot(ctx, table, out)], "tables": ["fallback_sweep.csv"], "notes": []}


def _plot(ctx: Context, table: pd.DataFrame, out: Path) -> str:
    p = plt()
    t = table[table["seed"] == table["seed"].min()]
    fig, axes = p.subplots(1, 3, figsize=(12, 3.6))
    for (pol, feat), g in t.groupby(["policy", "feature"]):
        g = g.sort_values("trigger_rate")
        for ax, col in zip(axes, ("reward_diff", "accuracy_diff", "latency_diff_ms")):
            ax.plot(g["trigger_rate"], g[col], marker="o", label=f"{pol} ({feat})")
    for ax, lab in zip(axes, ("Δ mean reward (unitless)", "Δ accuracy (metric score)", "Δ mean latency (ms)")):
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel("trigger rate (share of requests)")
        ax.set_ylabel(lab)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Fallback vs the bare policy over the threshold sweep ({ctx.tag})", fontsize=10)
    return save_fig(fig, out / "fallback.png")
