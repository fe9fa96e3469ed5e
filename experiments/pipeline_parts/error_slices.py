"""Error slices (seed 05 §E2): accuracy, violation rate and regret (oracle reward − reward) per
action bucket of the pick (tier, p, top-k, blocks) and per dataset, for every policy of the
main experiment (its per-request records). ``slices.csv`` (long format)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from experiments.pipeline_parts.analysis import KNOBS, error_slices, knob_frame, with_oracle
from experiments.pipeline_parts.common import Context, plt, save_fig, write_experiment

NAME = "error_slices"
NEEDS = ("main",)
DESCRIPTION = ("Error slices: for every policy of the main experiment, accuracy, violation rate and regret to the "
               "oracle per action bucket (tier, p, top-k, blocks of the chosen configuration) and per dataset.")


def main_records(ctx: Context) -> pd.DataFrame:
    r = pd.read_csv(ctx.out / "main" / "requests.csv.gz")
    r = r[r["lambda"].isna()]
    return r.drop(columns=[c for c in ("synthetic", "cache_label", "feasible") if c in r])


def run(ctx: Context, out: Path) -> dict:
    records = main_records(ctx)
    joined = with_oracle(records, knob_frame(ctx.test.knob_space))
    table = error_slices(joined)
    table.to_csv(out / "slices.csv", index=False)
    write_experiment(ctx, out, records, extra={"name": NAME, "table": "slices.csv", "source": "main/requests.csv.gz"})
    return {"figures": [_plot(ctx, table, out)], "tables": ["slices.csv"], "notes": []}


def _plot(ctx: Context, table: pd.DataFrame, out: Path) -> str:
    p = plt()
    slices = [*KNOBS, "dataset"]
    fig, axes = p.subplots(2, len(slices), figsize=(3.4 * len(slices), 6.4), squeeze=False)
    for j, s in enumerate(slices):
        t = table[table["slice"] == s]
        values = sorted(set(t["value"]), key=str)
        if s == "tier":  # knob-space order (low → high), not alphabetical
            order = [str(v) for v in ctx.test.knob_space.tiers]
            values = sorted(values, key=lambda v: order.index(str(v)) if str(v) in order else len(order))
        elif s != "dataset":
            values = sorted(values, key=float)
        x = np.arange(len(values))
        for pol, g in t.groupby("policy"):
            g = g.set_index("value").reindex(values)
            axes[0][j].plot(x, g["mean_regret"], marker="o", ms=3, label=pol)
            axes[1][j].plot(x, g["accuracy"], marker="o", ms=3, label=pol)
        for ax in (axes[0][j], axes[1][j]):
            ax.set_xticks(x, [str(v)[:12] for v in values], rotation=30, fontsize=7)
            ax.set_xlabel(s if s != "dataset" else "dataset")
        axes[0][j].set_ylabel("mean regret (reward, unitless)")
        axes[1][j].set_ylabel("accuracy (metric score)")
    axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(f"Error slices per chosen knob value and per dataset ({ctx.tag})", fontsize=10)
    return save_fig(fig, out / "error_slices.png")
