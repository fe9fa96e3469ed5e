"""Oracle-action analysis (seed 05 §H) of every policy of the main experiment: share of picks
equal to the oracle's configuration or within ε reward of it (``agreement.csv``), regret per
bucket of the oracle's pick (``regret_by_oracle_bucket.csv``) and the confusion table between
the policy's and the oracle's value of each knob (``confusion.csv``, long format)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from experiments.pipeline_parts.analysis import KNOBS, confusion, knob_frame, oracle_agreement, regret_by_oracle_bucket, with_oracle
from experiments.pipeline_parts.common import Context, plt, save_fig, write_experiment
from experiments.pipeline_parts.error_slices import main_records

NAME = "oracle_actions"
NEEDS = ("main",)
DESCRIPTION = ("Oracle-action analysis: how often each policy picks the oracle's configuration or one within ε "
               "reward of it, the regret per bucket of the oracle's choice, and per-knob confusion tables "
               "between the policy's and the oracle's choice.")
EPS = (0.01, 0.05)


def run(ctx: Context, out: Path) -> dict:
    records = main_records(ctx)
    joined = with_oracle(records, knob_frame(ctx.test.knob_space))
    agree = oracle_agreement(joined, EPS)
    agree.to_csv(out / "agreement.csv", index=False)
    regret_by_oracle_bucket(joined).to_csv(out / "regret_by_oracle_bucket.csv", index=False)
    conf = confusion(joined)
    conf.to_csv(out / "confusion.csv", index=False)
    write_experiment(ctx, out, records, extra={"name": NAME, "eps": list(EPS),
                                               "tables": ["agreement.csv", "regret_by_oracle_bucket.csv", "confusion.csv"]})
    focus = "grpo" if "grpo" in set(conf["policy"]) else sorted(set(conf["policy"]))[0]
    return {"figures": [_plot_agree(ctx, agree, out), _plot_confusion(ctx, conf, focus, out)],
            "tables": ["agreement.csv", "regret_by_oracle_bucket.csv", "confusion.csv"], "notes": []}


def _plot_agree(ctx: Context, agree: pd.DataFrame, out: Path) -> str:
    p = plt()
    fig, ax = p.subplots(figsize=(8, 3.6))
    x = np.arange(len(agree))
    cols = ["share_equal_oracle"] + [f"share_within_{e:g}" for e in EPS]
    for i, c in enumerate(cols):
        ax.bar(x + (i - 1) * 0.27, agree[c], 0.27, label=c.replace("_", " "))
    ax.set_xticks(x, agree["policy"], rotation=30, fontsize=7)
    ax.set_xlabel("policy")
    ax.set_ylabel("share of (request, budget) pairs")
    ax.legend(fontsize=7)
    ax.set_title(f"Agreement with the oracle's configuration ({ctx.tag})", fontsize=10)
    return save_fig(fig, out / "oracle_agreement.png")


def _plot_confusion(ctx: Context, conf: pd.DataFrame, policy: str, out: Path) -> str:
    p = plt()
    fig, axes = p.subplots(1, len(KNOBS), figsize=(3.6 * len(KNOBS), 3.4))
    for ax, k in zip(axes, KNOBS):
        t = conf[(conf["policy"] == policy) & (conf["knob"] == k)]
        vals = sorted(set(t["oracle_value"]) | set(t["policy_value"]), key=lambda v: (str(type(v)), v))
        if k == "tier":  # knob-space order (low → high), not alphabetical
            order = list(ctx.test.knob_space.tiers)
            vals = sorted(vals, key=lambda v: order.index(v) if v in order else len(order))
        m = np.zeros((len(vals), len(vals)))
        for _, r in t.iterrows():
            m[vals.index(r["oracle_value"]), vals.index(r["policy_value"])] = r["share_of_oracle_value"]
        ax.imshow(m, vmin=0, vmax=1, cmap="Blues")
        ax.set_xticks(range(len(vals)), [str(v) for v in vals], fontsize=7)
        ax.set_yticks(range(len(vals)), [str(v) for v in vals], fontsize=7)
        ax.set_xlabel(f"{policy}'s {k}")
        ax.set_ylabel(f"oracle's {k}")
    fig.colorbar(axes[-1].images[0], ax=list(axes), shrink=0.8, label="share of the oracle value's rows")
    fig.suptitle(f"P({policy}'s value | oracle's value) per knob ({ctx.tag})", fontsize=10)
    return save_fig(fig, out / f"confusion_{policy}.png")
