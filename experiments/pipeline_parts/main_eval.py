"""Main comparison: every baseline and the GRPO controller on the held-out test split over the
budget grid, through ``experiments.evaluate`` itself (its results.csv / summary.json / plots)."""

from __future__ import annotations

from pathlib import Path

from experiments.evaluate import BASELINES, EvalConfig, evaluate
from experiments.pipeline_parts.common import Context, train_controller

NAME = "main"
DESCRIPTION = ("The main comparison: the GRPO controller (trained on the train split) against every baseline "
               "(always-full, always-cheapest, random, static-per-budget, uncertainty threshold, the flat and "
               "two-stage supervised routers, the oracle upper bound) on the test split over the budget grid, "
               "with the lagrangian λ sweep of the reward-aware baselines. It is the source of main_table.csv, "
               "pareto.csv and action_ratio.csv.")


def run(ctx: Context, out: Path) -> dict:
    for seed in ctx.seeds:
        train_controller(ctx, "grpo", seed, ctx.train)
    spec = f"grpo:{ctx.out / 'controllers' / 'grpo_s{seed}'}"
    cfg = EvalConfig(cache=ctx.cache, out=str(out), policies=list(BASELINES) + [spec], seeds=ctx.seeds,
                     budgets=[float(b) for b in ctx.budgets], lambdas=[0.25] if ctx.quick else [0.1, 0.25, 0.5, 1.0],
                     plots=ctx.figures == "all")
    results, _ = evaluate(cfg, verbose=False)
    if ctx.figures != "all":  # the two figures the report needs most, without the per-dataset / per-policy ones
        from experiments.evaluate import static_points
        from experiments.plots import knob_distribution_plot, pareto_plot

        main = results[results["seed"] == ctx.seeds[0]]
        pareto_plot(main, static_points(ctx.test), out / "pareto.png", title=f"{ctx.tag}: accuracy vs latency (test split)")
        knob_distribution_plot(main, "grpo", out / "knobs_grpo.png", title=f"grpo: knob shares per budget ({ctx.tag})")
    figs = ["pareto.png"] + sorted(p.name for p in out.glob("pareto_*.png")) + sorted(p.name for p in out.glob("knobs_*.png"))
    return {"figures": figs, "tables": ["results.csv"], "notes": []}
