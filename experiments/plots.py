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


#: Policies drawn as reference lines (thin, dashed) rather than as learned / adaptive policies.
REFERENCE_PREFIXES: tuple[str, ...] = ("random", "uncertainty", "always_")
MARKERS: str = "osD^v<>ph*XP"


def policy_styles(policies: list[str]) -> dict[str, dict]:
    """A distinct (colour, marker, line style, marker size) per policy, in sorted order: markers
    are hollow and shrink along the list so that coinciding curves stay visible on each other."""
    colors = plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors
    out: dict[str, dict] = {}
    n = max(len(policies), 1)
    for i, p in enumerate(sorted(policies)):
        ref = p.startswith(REFERENCE_PREFIXES)
        out[p] = {
            "color": colors[i % len(colors)],
            "marker": MARKERS[i % len(MARKERS)],
            "linestyle": "--" if ref else "-",
            "linewidth": 1.0 if ref else 1.6,
            "markersize": 9.0 - 4.5 * i / n,
            "markerfacecolor": "none",
            "markeredgewidth": 1.3,
            "alpha": 0.9,
        }
    return out


def pareto_plot(
    results: pd.DataFrame,
    static_points: pd.DataFrame | None,
    path: str | Path,
    *,
    title: str,
    dataset: str = "all",
    extra: pd.DataFrame | None = None,
) -> Path:
    """Write :func:`pareto_figure` to ``path``."""
    fig = pareto_figure(results, static_points, title=title, dataset=dataset, extra=extra)
    out = Path(path)
    fig.savefig(out, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return out


def pareto_figure(
    results: pd.DataFrame,
    static_points: pd.DataFrame | None,
    *,
    title: str,
    dataset: str = "all",
    extra: pd.DataFrame | None = None,
) -> plt.Figure:
    """Accuracy vs mean estimated latency on one dataset (or ``"all"``).

    ``static_points`` (columns ``mean_latency_ms``, ``accuracy``, ``label``: every fixed
    configuration on the same requests) are a grey cloud, the ``full`` and ``cheapest`` ones
    labelled; every policy of ``results`` is a curve over the budget grid with its own colour,
    hollow marker and marker size (:func:`policy_styles`), so overlapping curves stay visible.
    ``extra`` (columns ``series``, ``mean_latency_ms``, ``accuracy``, ``label``) adds series that
    are not budget-driven policies, e.g. the token-pruning proxy's points: each a dotted line of
    filled markers in its own colour, every point annotated with its ``label``.
    """
    df = results[(results["dataset"] == dataset) & results["budget_ms"].notna()]
    fig, ax = plt.subplots(figsize=(8, 5.8))
    if static_points is not None and len(static_points):
        ax.scatter(static_points["mean_latency_ms"], static_points["accuracy"], s=10, c="0.72", edgecolors="none",
                   label=f"static configurations ({len(static_points)})", zorder=1)
        for _, row in static_points[static_points["label"] != ""].iterrows():
            ax.scatter(row["mean_latency_ms"], row["accuracy"], s=36, c="0.35", marker="s", zorder=2)
            ax.annotate(row["label"], (row["mean_latency_ms"], row["accuracy"]), fontsize=8, color="0.25",
                        xytext=(5, -11), textcoords="offset points", zorder=2)
    styles = policy_styles(sorted(set(df["policy"])))
    for policy, g in df.groupby("policy", sort=True):
        g = g.sort_values("budget_ms")
        st = styles[policy]
        ax.plot(g["mean_latency_ms"], g["accuracy"], label=policy, zorder=3, color=st["color"], marker=st["marker"],
                linestyle=st["linestyle"], linewidth=st["linewidth"], markersize=st["markersize"],
                markerfacecolor=st["markerfacecolor"], markeredgewidth=st["markeredgewidth"], alpha=st["alpha"])
    if extra is not None and len(extra):
        colors = plt.get_cmap("Set1").colors
        for i, (series, g) in enumerate(extra.groupby("series", sort=False)):  # in the caller's order
            g = g.sort_values("mean_latency_ms")
            color = colors[i % len(colors)]
            ax.plot(g["mean_latency_ms"], g["accuracy"], label=series, zorder=4, color=color, marker="P",
                    linestyle=":", linewidth=1.4, markersize=8)
            for _, row in g.iterrows():
                ax.annotate(str(row["label"]), (row["mean_latency_ms"], row["accuracy"]), fontsize=7, color=color,
                            xytext=(4, 4), textcoords="offset points", zorder=4)
    ax.set_xlabel("mean estimated latency (ms)")
    ax.set_ylabel("accuracy (mean metric score)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=1, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    return fig


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
