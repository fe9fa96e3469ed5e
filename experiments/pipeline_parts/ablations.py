"""Ablations of the GRPO controller (seed 05 §D), one row each in ``ablations.csv``.

Every row is a GRPO controller trained with one change against the full controller (every
observation feature, all four knobs two-stage, the hinge reward, mean-centred advantages),
evaluated on the test split over the budget grid under the hinge reward; the table gives its
reward / accuracy / latency / violations and the paired difference of mean reward to the full
controller with a bootstrap 95 % CI.

- observation features: the ablated inputs are zeroed in the train and test data (a constant
  input carries no information): ``lang only`` (latency tokens and request features zeroed),
  ``lang + latency token``, ``lang + request features``. ``+ uncertainty`` is *not possible
  yet*: the controller's observation has no uncertainty input (only the fallback wrapper and the
  uncertainty baseline read it).
- action-space subsets: the knobs outside the subset are pinned at the full configuration's
  values by masking every other configuration (``incomplete="mask"``): ``tier only``, ``top-k
  only``, ``blocks only``, ``tier + top-k``. ``one-stage flat`` is *not possible yet* for GRPO
  (it has no flat controller); the flat supervised router vs the two-stage one is reported
  instead (``router (flat) vs router2 (two-stage)``, a difference between two baselines).
- cost term: trained under the lagrangian reward with λ = 0 and λ = 0.25 (evaluated under the
  hinge reward like every row).
- GRPO advantage: std-scaled (``scale_rewards="group"``) instead of mean-centred.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from agents.baselines import StaticPerBudget, SupervisedRouter, TwoStageRouter
from experiments.evaluate import flat_observations
from experiments.pipeline_parts.common import (Context, paired_diff, plt, run_policy, save_fig, subset,
                                               train_controller, write_experiment)

NAME = "ablations"
DESCRIPTION = ("Ablations of the GRPO controller: observation features, action-space subsets, the cost term "
               "(λ = 0 vs > 0 under the lagrangian reward) and the GRPO advantage (std-scaled vs mean-centred), "
               "each as a row with its paired difference in mean reward to the full controller and a bootstrap "
               "95 % CI.")

NOT_POSSIBLE = {
    "obs: + uncertainty": "the controller's observation has no uncertainty input (only the fallback wrapper and "
                          "the uncertainty baseline read OutcomeCache.uncertainty)",
    "actions: one-stage flat (GRPO)": "GRPO has only a two-stage controller; the flat vs two-stage supervised "
                                      "routers are compared instead",
}


def _zeroed(data, *, tokens: bool = False, request: bool = False):
    d = subset(data, np.arange(data.n))
    if tokens:
        d.tokens = np.zeros_like(d.tokens)
    if request:
        d.request = np.zeros_like(d.request)
    return d


def _restricted(data, knobs: set[str]):
    """Only configurations whose knobs outside ``knobs`` equal the full configuration's."""
    ks = data.knob_space
    t = ks.config_table()
    fi = ks.index(ks.full_config)
    keep = np.ones(len(ks), dtype=bool)
    for k in ("tier", "p", "top_k", "blocks"):
        if k not in knobs:
            keep &= t[k] == t[k][fi]
    return subset(data, np.arange(data.n), valid=np.broadcast_to(keep, data.valid.shape))


def variants(ctx: Context) -> list[tuple[str, str, object, object, dict, dict]]:
    """(row, group, train data, test data, GRPO overrides, env overrides)."""
    tr, te = ctx.train, ctx.test
    v = [("full controller", "reference", tr, te, {}, {})]
    for row, kw in (("obs: lang only", {"tokens": True, "request": True}),
                    ("obs: lang + latency token", {"request": True}),
                    ("obs: lang + request features", {"tokens": True})):
        v.append((row, "observation features", _zeroed(tr, **kw), _zeroed(te, **kw), {}, {}))
    for row, knobs in (("actions: tier only", {"tier"}), ("actions: top-k only", {"top_k"}),
                       ("actions: blocks only", {"blocks"}), ("actions: tier + top-k", {"tier", "top_k"})):
        v.append((row, "action space", _restricted(tr, knobs), _restricted(te, knobs), {}, {}))
    for lam in (0.0, 0.25):
        v.append((f"cost: lagrangian λ={lam:g}", "cost term", tr, te, {},
                  {"reward": "lagrangian", "reward_kwargs": {"lam": lam}}))
    v.append(("advantage: std-scaled (group)", "GRPO advantage", tr, te, {"scale_rewards": "group"}, {}))
    return v


def run(ctx: Context, out: Path) -> dict:
    frames, meta = [], {}
    for seed in ctx.seeds:
        for row, group, tr, te, over, env in variants(ctx):
            key = "grpo" if row == "full controller" else "abl_" + "".join(c if c.isalnum() else "_" for c in row)
            ctx.log(f"ablations seed {seed}: {row}")
            pol = train_controller(ctx, key, seed, tr, overrides=over, env=env)
            meta[row] = group
            frames.append(run_policy(pol, te, ctx.budgets, ctx.reward, seed, name=row))
        obs = flat_observations(ctx.train, float(ctx.test.budget_range_ms[1]))
        for name, pol in (("router (flat)", SupervisedRouter.fit(ctx.train, obs, ctx.reward)),
                          ("router2 (two-stage)", TwoStageRouter.fit(ctx.train, ctx.reward)),
                          ("static", StaticPerBudget.fit(ctx.train, ctx.budgets, ctx.reward))):
            frames.append(run_policy(pol, ctx.test, ctx.budgets, ctx.reward, seed, name=name))
    records = pd.concat(frames, ignore_index=True)
    meta.update({"router (flat)": "action space (baselines)", "router2 (two-stage)": "action space (baselines)",
                 "static": "reference"})
    rows = []
    for row, group in meta.items():
        g = records[records["policy"] == row]
        ref = "router2 (two-stage)" if row == "router (flat)" else "full controller"
        d = paired_diff(records, row, ref) if row != ref else (0.0, 0.0, 0.0, len(g))
        rows.append({"row": row, "group": group, "possible": True, "mean_reward": g["reward"].mean(),
                     "accuracy": g["score"].mean(), "mean_latency_ms": g["latency_ms"].mean(),
                     "violation_rate": g["violation"].mean(), "compared_to": ref, "reward_diff": d[0],
                     "diff_ci_lo": d[1], "diff_ci_hi": d[2], "n_pairs": d[3], "why_not": ""})
    for row, why in NOT_POSSIBLE.items():
        rows.append({"row": row, "group": "not possible yet", "possible": False, "why_not": why})
    table = pd.DataFrame(rows)
    table.to_csv(out / "ablations.csv", index=False)
    write_experiment(ctx, out, records, extra={"name": NAME, "table": "ablations.csv", "not_possible": NOT_POSSIBLE})
    return {"figures": [_plot(ctx, table, out)], "tables": ["ablations.csv"],
            "notes": [f"not possible yet: {k}: {v}" for k, v in NOT_POSSIBLE.items()]}


def _plot(ctx: Context, table: pd.DataFrame, out: Path) -> str:
    p = plt()
    t = table[table["possible"] & (table["row"] != "full controller") & (table["row"] != "static")]
    fig, ax = p.subplots(figsize=(7, 0.35 * len(t) + 1.5))
    y = np.arange(len(t))
    m = t["reward_diff"].to_numpy(dtype=float)
    err = np.vstack([m - t["diff_ci_lo"].to_numpy(dtype=float), t["diff_ci_hi"].to_numpy(dtype=float) - m])
    ax.barh(y, m, xerr=err, capsize=3, color="tab:orange")
    ax.axvline(0, color="k", lw=1)
    ax.set_yticks(y, [f"{r} (vs {c})" if c != "full controller" else r for r, c in zip(t["row"], t["compared_to"])],
                  fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("Δ mean reward vs the full controller (hinge, unitless; 95 % CI)")
    ax.set_title(f"Ablations ({ctx.tag})", fontsize=10)
    return save_fig(fig, out / "ablations.png")
