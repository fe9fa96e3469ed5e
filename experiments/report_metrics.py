"""Summary metrics over cost-quality curves and seeds: AIQ, kept-accuracy share, bootstrap CIs.

All functions are pure numpy/pandas on the rows of ``results.csv`` (one row per policy × budget
× dataset) or on per-request arrays.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


def nondecreasing_convex_hull(cost: np.ndarray, quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper hull of (cost, quality) points made non-decreasing in cost (RouterBench's AIQ hull).

    Returns hull vertices sorted by cost. A point that costs more but is not better than a cheaper
    one never lowers the curve: quality is carried forward (non-decreasing), then the concave
    (upper convex) hull is taken.
    """
    c = np.asarray(cost, dtype=np.float64)
    q = np.asarray(quality, dtype=np.float64)
    keep = np.isfinite(c) & np.isfinite(q)
    c, q = c[keep], q[keep]
    if c.size == 0:
        return c, q
    order = np.lexsort((-q, c))
    c, q = c[order], np.maximum.accumulate(q[order])
    hull: list[tuple[float, float]] = []
    for x, y in zip(c, q):
        if hull and x == hull[-1][0]:
            if y <= hull[-1][1]:
                continue
            hull.pop()
        # pop while the last point lies on or below the segment from hull[-2] to (x, y)
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (y2 - y1) * (x - x1) <= (y - y1) * (x2 - x1):
                hull.pop()
            else:
                break
        hull.append((x, y))
    h = np.asarray(hull)
    return h[:, 0], h[:, 1]


def aiq(cost: np.ndarray, quality: np.ndarray, cost_range: tuple[float, float]) -> float:
    """Average improvement in quality: area under the non-decreasing convex hull over
    ``cost_range`` divided by its width. Below the cheapest point the curve is 0 (the policy
    cannot operate there); above the dearest it stays at its best quality."""
    lo, hi = map(float, cost_range)
    if not hi > lo:
        raise ValueError(f"cost_range must have hi > lo, got {cost_range}")
    hx, hy = nondecreasing_convex_hull(cost, quality)
    if hx.size == 0:
        return float("nan")
    grid = np.linspace(lo, hi, 2049)
    y = np.interp(grid, hx, hy, left=0.0, right=hy[-1])
    y[grid < hx[0]] = 0.0
    return float(np.trapezoid(y, grid) / (hi - lo))


def accuracy_at_latency(cost: np.ndarray, quality: np.ndarray, latency_ms: float) -> float:
    """Best accuracy the policy's hull reaches at mean latency ≤ ``latency_ms`` (NaN if none)."""
    hx, hy = nondecreasing_convex_hull(cost, quality)
    if hx.size == 0 or latency_ms < hx[0]:
        return float("nan")
    return float(np.interp(latency_ms, hx, hy))


def kept_share(cost: np.ndarray, quality: np.ndarray, full_cost: float, full_quality: float, frac: float) -> float:
    """Share of the full configuration's accuracy kept at ``frac`` × its latency."""
    if not full_quality > 0:
        return float("nan")
    return accuracy_at_latency(cost, quality, frac * full_cost) / full_quality


def bootstrap_ci(
    values: np.ndarray, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0, statistic=np.mean
) -> tuple[float, float, float]:
    """Percentile bootstrap CI of ``statistic`` over the first axis. Returns (estimate, lo, hi)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_boot, v.size))
    stats = statistic(v[idx], axis=1)
    return float(statistic(v)), float(np.quantile(stats, alpha / 2)), float(np.quantile(stats, 1 - alpha / 2))


def aggregate_seeds(results: pd.DataFrame, group_cols: Sequence[str], value_cols: Sequence[str]) -> pd.DataFrame:
    """Mean ± std over seeds plus a bootstrap 95% CI of the mean, per group.

    Output columns: ``group_cols``, ``n_seeds`` and for each value ``v``: ``v_mean``, ``v_std``,
    ``v_ci_lo``, ``v_ci_hi``.
    """
    rows = []
    for key, g in results.groupby(list(group_cols), dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(group_cols, key))
        row["n_seeds"] = int(g["seed"].nunique()) if "seed" in g else len(g)
        for v in value_cols:
            x = g[v].to_numpy(dtype=np.float64)
            est, lo, hi = bootstrap_ci(x, n_boot=1000)
            row[f"{v}_mean"] = est
            row[f"{v}_std"] = float(np.nanstd(x, ddof=1)) if np.isfinite(x).sum() > 1 else 0.0
            row[f"{v}_ci_lo"], row[f"{v}_ci_hi"] = lo, hi
        rows.append(row)
    return pd.DataFrame(rows)
