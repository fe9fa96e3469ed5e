"""Fidelity of an estimator's predictions (MAPE, max error, Spearman) and the text report of a fit."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

def _rank(x: np.ndarray) -> np.ndarray:
    """Ranks (1-based, ties get their average rank) of a 1-D array."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # group equal values; every member of a group gets the mean of the group's positions
    starts = np.r_[True, xs[1:] != xs[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    counts = np.diff(np.r_[first, len(xs)])
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = avg[group]
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two 1-D arrays (NaN when fewer than 2 rows or a constant side)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"spearman: shapes differ {a.shape} vs {b.shape}")
    if len(a) < 2:
        return float("nan")
    ra, rb = _rank(a), _rank(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb / den) if den > 0 else float("nan")


def fidelity_metrics(measured: np.ndarray, predicted: np.ndarray) -> dict[str, float | int | None]:
    """``mape`` (%), ``max_abs_pct_err`` (%), ``spearman`` and ``n`` of predictions vs measurements.

    Undefined values (no rows, constant measurements for Spearman) are ``None`` so that the
    result serialises to strict JSON.
    """
    m = np.asarray(measured, dtype=np.float64).ravel()
    q = np.asarray(predicted, dtype=np.float64).ravel()
    if len(m) == 0:
        return {"mape": None, "max_abs_pct_err": None, "spearman": None, "n": 0}
    pct = 100.0 * np.abs(q - m) / m
    rho = spearman(m, q)
    return {
        "mape": float(pct.mean()),
        "max_abs_pct_err": float(pct.max()),
        "spearman": None if math.isnan(rho) else rho,
        "n": int(len(m)),
    }


def _fmt(x: Any, spec: str = ".1f") -> str:
    return "n/a" if x is None else format(x, spec)


def format_report(d: Mapping[str, Any]) -> str:
    """Human-readable report of an estimator dict (coefficients and fidelity per phase)."""
    lines = [f"LatencyEstimator (format_version {d.get('format_version')}, max_top_k {d.get('max_top_k')})"]
    if d.get("source"):
        lines.append(f"source: {d['source']}")
    for ph, coefs in d["coefficients"].items():
        lines.append(f"[{ph}] " + ", ".join(f"{k}={v:.4g}" for k, v in coefs.items()))
    rep = d.get("fit_report") or {}
    if rep:
        lines.append(f"fit: holdout_frac={rep.get('holdout_frac')} seed={rep.get('seed')} ridge={rep.get('ridge')}")
        for ph, pr in rep.get("phases", {}).items():
            def fid(name: str) -> str:
                f = pr.get(name)
                if not f:
                    return f"{name}: n/a"
                return (f"{name}: MAPE {_fmt(f['mape'])}% max {_fmt(f['max_abs_pct_err'])}% "
                        f"spearman {_fmt(f['spearman'], '.2f')} n={f['n']}")
            lines.append(
                f"  {ph}: rows {pr['n_rows']} (train {pr['n_train']}, held-out {pr['n_heldout']}), "
                f"{pr['n_coef']} coef, rank {pr['rank']}{' UNDERDETERMINED' if pr['underdetermined'] else ''}"
            )
            lines.append(f"    {fid('train')} | {fid('heldout')} | {fid('loo')}")
            for w in pr.get("warnings", []):
                lines.append(f"    warning: {w}")
    return "\n".join(lines)
