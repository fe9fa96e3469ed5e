"""Leave-tasks-out generalization (seed 05 §C).

For each held-out dataset ``d`` (every dataset of the cache; ``--quick``: the first two), the
GRPO controller is trained and the static / router baselines are fitted on the train split of
the *other* datasets, then evaluated on the test requests of ``d`` (``<policy>@heldout``); the
same policies fitted on the train split of *all* datasets (``<policy>@in_dist``) are evaluated
on the same requests. ``generalization.csv``: per held-out dataset and policy, mean reward and
accuracy with bootstrap 95 % CIs for both, and the paired held-out − in-distribution
difference with its CI. The oracle (which reads the test outcomes) is the common upper bound.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from agents.baselines import Oracle, StaticPerBudget, SupervisedRouter, TwoStageRouter
from experiments.evaluate import flat_observations
from experiments.pipeline_parts.common import (Context, dataset_rows, mean_ci, paired_diff, plt, run_policy, save_fig,
                                               subset, train_controller, write_experiment)

NAME = "generalization"
DESCRIPTION = ("Leave-tasks-out generalization: controllers and baselines fitted without a dataset, evaluated on "
               "it (held-out), next to the same policies fitted on every dataset (in-distribution), per held-out "
               "dataset with bootstrap 95 % CIs and the paired held-out − in-distribution difference.")

POLICIES = ("static", "router", "router2", "grpo")


def _fit(ctx: Context, train, seed: int, key: str) -> list:
    obs = flat_observations(train, float(ctx.test.budget_range_ms[1]))
    return [StaticPerBudget.fit(train, ctx.budgets, ctx.reward), SupervisedRouter.fit(train, obs, ctx.reward),
            TwoStageRouter.fit(train, ctx.reward), train_controller(ctx, key, seed, train)]


def run(ctx: Context, out: Path) -> dict:
    names = sorted(set(np.asarray(ctx.test.datasets).astype(str)))
    held = names[:2] if ctx.quick else names
    frames = []
    for seed in ctx.seeds:
        in_dist = _fit(ctx, ctx.train, seed, "grpo")
        for d in held:
            others = [n for n in names if n != d]
            tr_rows = dataset_rows(ctx.train, others)
            te_rows = dataset_rows(ctx.test, [d])
            if tr_rows.size == 0 or te_rows.size == 0:
                continue
            tr, te = subset(ctx.train, tr_rows), subset(ctx.test, te_rows)
            ctx.log(f"generalization seed {seed}: held out {d} ({te.n} test requests; trained on {tr.n})")
            envs: dict = {}
            held_pols = _fit(ctx, tr, seed, f"grpo_without_{d}")
            for name, pol in zip(POLICIES, held_pols):
                frames.append(run_policy(pol, te, ctx.budgets, ctx.reward, seed, name=f"{name}@heldout",
                                         index_map=te_rows, envs=envs).assign(heldout=d))
            for name, pol in zip(POLICIES, in_dist):
                frames.append(run_policy(pol, te, ctx.budgets, ctx.reward, seed, name=f"{name}@in_dist",
                                         index_map=te_rows, envs=envs).assign(heldout=d))
            frames.append(run_policy(Oracle(te, ctx.reward), te, ctx.budgets, ctx.reward, seed, name="oracle",
                                     index_map=te_rows, envs=envs).assign(heldout=d))
    records = pd.concat(frames, ignore_index=True)
    rows = []
    for d, g in records.groupby("heldout"):
        for name in POLICIES:
            h, i = g[g["policy"] == f"{name}@heldout"], g[g["policy"] == f"{name}@in_dist"]
            rh, ri = mean_ci(h["reward"]), mean_ci(i["reward"])
            ah, ai = mean_ci(h["score"]), mean_ci(i["score"])
            dm, dlo, dhi, n = paired_diff(g, f"{name}@heldout", f"{name}@in_dist")
            rows.append({"heldout_dataset": d, "policy": name, "n_pairs": n,
                         "reward_heldout": rh[0], "reward_heldout_ci_lo": rh[1], "reward_heldout_ci_hi": rh[2],
                         "reward_in_dist": ri[0], "reward_in_dist_ci_lo": ri[1], "reward_in_dist_ci_hi": ri[2],
                         "accuracy_heldout": ah[0], "accuracy_heldout_ci_lo": ah[1], "accuracy_heldout_ci_hi": ah[2],
                         "accuracy_in_dist": ai[0], "accuracy_in_dist_ci_lo": ai[1], "accuracy_in_dist_ci_hi": ai[2],
                         "reward_heldout_minus_in_dist": dm, "diff_ci_lo": dlo, "diff_ci_hi": dhi,
                         "oracle_reward": float(g.loc[g["policy"] == "oracle", "reward"].mean())})
    table = pd.DataFrame(rows)
    table.to_csv(out / "generalization.csv", index=False)
    write_experiment(ctx, out, records.drop(columns="heldout"),
                     extra={"name": NAME, "heldout_datasets": held, "table": "generalization.csv"})
    fig_name = _plot(ctx, table, out)
    return {"figures": [fig_name], "tables": ["generalization.csv"],
            "notes": [] if held == names else [f"--quick: held out {', '.join(held)} only (of {len(names)} datasets)"]}


def _plot(ctx: Context, table: pd.DataFrame, out: Path) -> str:
    p = plt()
    ds = list(dict.fromkeys(table["heldout_dataset"]))
    fig, axes = p.subplots(1, len(ds), figsize=(4.2 * len(ds), 3.6), squeeze=False, sharey=True)
    for ax, d in zip(axes[0], ds):
        t = table[table["heldout_dataset"] == d]
        x = np.arange(len(t))
        for off, col, lab in ((-0.18, "in_dist", "in-distribution"), (0.18, "heldout", "held out")):
            m = t[f"reward_{col}"].to_numpy()
            err = np.vstack([m - t[f"reward_{col}_ci_lo"].to_numpy(), t[f"reward_{col}_ci_hi"].to_numpy() - m])
            ax.bar(x + off, m, 0.36, yerr=err, capsize=3, label=lab)
        ax.axhline(t["oracle_reward"].iloc[0], color="k", ls="--", lw=1, label="oracle")
        ax.set_xticks(x, t["policy"], rotation=20)
        ax.set_title(f"held out: {d}", fontsize=9)
        ax.set_xlabel("policy")
    axes[0][0].set_ylabel("mean reward (hinge, unitless)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Leave-one-dataset-out ({ctx.tag})", fontsize=10)
    return save_fig(fig, out / "generalization.png")
