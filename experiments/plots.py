"""Figures of an evaluation run: accuracy-latency Pareto plot and knob distributions per budget.

Both read the ``results.csv`` table (one row per policy × budget × dataset) of
``experiments.evaluate``; matplotlib runs headless (Agg).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

KNOB_PREFIXES: tuple[tuple[str, str], ...] = (
    ("tier", "ratio_tier_"),
    ("insertion p", "ratio_p"),
    ("top-k", "ratio_k"),
    ("blocks", "ratio_b"),
)


def pareto_plot(
    results: pd.DataFrame,
    static_points: pd.DataFrame | None,
    path: str | Path,
    *,
    title: str,
    dataset: str = "all",
) -> Path:
    """Accuracy vs mean estimated latency. Adaptive policies are curves over the budget grid;
    ``static_points`` (columns ``mean_latency_ms``, ``accuracy``, ``label``) are dots: every
    fixed configuration evaluated on the same requests."""
    df = results[(results["dataset"] == dataset) & results["budget_ms"].notna()]
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    if static_points is not None and len(static_points):
        ax.scatter(static_points["mean_latency_ms"], static_points["accuracy"], s=9, c="0.75",
                   label="static configurations", zorder=1)
        for _, row in static_points[static_points["label"] != ""].iterrows():
            ax.scatter(row["mean_latency_ms"], row["accuracy"], s=40, marker="D", zorder=3)
            ax.annotate(row["label"], (row["mean_latency_ms"], row["accuracy"]), fontsize=8,
                        xytext=(4, -10), textcoords="offset points")
    colors = plt.get_cmap("tab20").colors
    markers = "osD^v<>ph*"
    for i, (policy, g) in enumerate(df.groupby("policy", sort=True)):
        g = g.sort_values("budget_ms")
        style = "--" if policy.startswith(("random", "uncertainty")) else "-"
        ax.plot(g["mean_latency_ms"], g["accuracy"], style, marker=markers[i % len(markers)], ms=3.5, lw=1.4,
                color=colors[i % len(colors)], label=policy, zorder=2)
    ax.set_xlabel("mean estimated latency (ms)")
    ax.set_ylabel("accuracy (mean metric score)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def knob_distribution_plot(results: pd.DataFrame, policy: str, path: str | Path, *, title: str) -> Path:
    """Stacked shares of every knob value over the budget grid for one policy (dataset 'all')."""
    df = results[(results["policy"] == policy) & (results["dataset"] == "all") & results["budget_ms"].notna()]
    df = df.sort_values("budget_ms")
    fig, axes = plt.subplots(1, len(KNOB_PREFIXES), figsize=(14, 3.4), sharey=True)
    x = np.arange(len(df))
    for ax, (label, prefix) in zip(axes, KNOB_PREFIXES):
        cols = [c for c in df.columns if c.startswith(prefix)]
        bottom = np.zeros(len(df))
        for c in cols:
            v = df[c].to_numpy(dtype=float)
            ax.bar(x, v, bottom=bottom, label=c[len(prefix):])
            bottom += v
        ax.set_title(label, fontsize=9)
        ax.set_xticks(x, [f"{b:.0f}" for b in df["budget_ms"]], rotation=60, fontsize=7)
        ax.set_xlabel("budget (ms)", fontsize=8)
        ax.legend(fontsize=6, loc="upper left")
    axes[0].set_ylabel("share of requests")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
