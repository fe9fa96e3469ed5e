"""Fitting: each phase by non-negative least squares on the relative error, with a held-out
split, leave-one-out fidelity and warnings (see :meth:`LatencyEstimator.fit`). scipy is imported
inside :func:`_nnls_relative` only."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from model_runtime.latency_estimator.features import (
    MIN_ROWS_FOR_HOLDOUT,
    PHASES,
    _design,
    _phase_rows,
    _rows_to_arrays,
    coefficient_names,
)
from model_runtime.latency_estimator.report import fidelity_metrics


def _nnls_relative(X: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, int, list[int]]:
    """Non-negative fit of ``X θ ≈ y`` minimising Σ((Xθ − y)/y)² + ridge·‖θ·colnorm‖².

    Returns ``(theta, rank, zero_columns)``: coefficients in original units, the numerical rank of
    the weighted design, and the indices of all-zero columns (their coefficient is fixed at 0).
    """
    from scipy.optimize import nnls  # lazy: scipy is not on the replay path

    A = X / y[:, None]
    scale = np.linalg.norm(A, axis=0)
    zero = [int(j) for j in np.flatnonzero(scale == 0)]
    live = scale > 0
    As = A[:, live] / scale[live]
    b = np.ones(len(y))
    if ridge > 0:
        As = np.vstack([As, math.sqrt(ridge) * np.eye(As.shape[1])])
        b = np.r_[b, np.zeros(As.shape[1])]
    sol, _ = nnls(As, b, maxiter=50 * max(As.shape[1], 1))
    theta = np.zeros(X.shape[1])
    theta[live] = sol / scale[live]
    rank = int(np.linalg.matrix_rank(A[:, live] / scale[live])) if live.any() else 0
    return theta, rank, zero



def fit_coefficients(
    rows: Any,
    *,
    holdout_frac: float = 0.25,
    seed: int = 0,
    ridge: float = 1e-4,
    attention_quadratic: bool = False,
    max_top_k: int = 8,
    source: str = "",
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """``(coefficients, fit report)`` of :meth:`LatencyEstimator.fit` (arguments documented there)."""
    if not 0 <= float(holdout_frac) < 1:
        raise ValueError(f"holdout_frac must be in [0, 1), got {holdout_frac}")
    if not float(ridge) >= 0 or not math.isfinite(float(ridge)):
        raise ValueError(f"ridge must be finite and >= 0, got {ridge}")
    arrays = _rows_to_arrays(rows)
    names = coefficient_names(attention_quadratic)
    coefs: dict[str, dict[str, float]] = {}
    phases_report: dict[str, Any] = {}
    for pi, phase in enumerate(PHASES):
        r = _phase_rows(arrays, phase, max_top_k)
        n = len(r["ms"])
        if n == 0:
            raise ValueError(f"no {phase} rows: every phase needs at least one profiling row")
        X = _design(phase, r, max_top_k, attention_quadratic)
        y = r["ms"]
        warn: list[str] = []
        test = np.zeros(n, dtype=bool)
        if n >= MIN_ROWS_FOR_HOLDOUT and holdout_frac > 0:
            n_hold = min(max(1, int(round(holdout_frac * n))), n - 2)
            rng = np.random.default_rng([int(seed), pi])
            test[rng.permutation(n)[:n_hold]] = True
        elif holdout_frac > 0:
            warn.append(
                f"only {n} rows (< {MIN_ROWS_FOR_HOLDOUT}): no held-out split, fidelity is in-sample"
            )
        else:
            warn.append("holdout_frac=0: no held-out split, fidelity is in-sample")
        train = ~test
        theta, rank, zero = _nnls_relative(X[train], y[train], float(ridge))
        n_coef = X.shape[1]
        under = rank < n_coef
        if under:
            warn.append(
                f"underdetermined: {int(train.sum())} training rows of rank {rank} for {n_coef} "
                "coefficients; the coefficients are the ridge (minimum-norm in column-scaled units) "
                "non-negative solution, a prior rather than a measurement"
            )
        for j in zero:
            warn.append(f"feature {names[phase][j]} is zero in all training rows: coefficient fixed at 0")
        pred = X @ theta
        loo = None
        if n >= MIN_ROWS_FOR_HOLDOUT:
            loo_pred = np.empty(n)
            for i in range(n):
                keep = np.arange(n) != i
                th_i, _, _ = _nnls_relative(X[keep], y[keep], float(ridge))
                loo_pred[i] = X[i] @ th_i
            loo = fidelity_metrics(y, loo_pred)
        phases_report[phase] = {
            "n_rows": n,
            "n_train": int(train.sum()),
            "n_heldout": int(test.sum()),
            "n_coef": n_coef,
            "rank": rank,
            "underdetermined": bool(under),
            "heldout_evaluated": bool(test.any()),
            "heldout_rows": [int(i) for i in np.flatnonzero(test)],
            "train": fidelity_metrics(y[train], pred[train]),
            "heldout": fidelity_metrics(y[test], pred[test]) if test.any() else None,
            "loo": loo,
            "warnings": warn,
        }
        coefs[phase] = {nm: float(v) for nm, v in zip(names[phase], theta)}
    report = {
        "source": str(source),
        "holdout_frac": float(holdout_frac),
        "seed": int(seed),
        "ridge": float(ridge),
        "objective": "NNLS on relative error (rows weighted 1/ms), unit-norm columns, ridge on scaled coefficients",
        "phases": phases_report,
    }
    return coefs, report
