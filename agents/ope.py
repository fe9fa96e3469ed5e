"""Off-policy evaluation (OPE) of a target policy from logged bandit feedback (numpy only).

The flat env is a contextual bandit: context = (request, budget), action = configuration index,
reward = the env's reward. A stochastic *behaviour* policy logs rounds with their propensities
in the Open Bandit Pipeline's ``bandit_feedback`` dict format (:func:`bandit_feedback`: keys
``n_rounds``, ``n_actions``, ``action``, ``position``, ``reward``, ``pscore``, ``context``,
``action_context``); the estimators below estimate the value of a *target* policy from the logs:

- IPS: ``mean_i w_i r_i`` with ``w_i = π_e(a_i | x_i) / π_b(a_i | x_i)``;
- SNIPS: ``Σ w_i r_i / Σ w_i``;
- DR: ``mean_i [ Σ_a π_e(a | x_i) q̂(x_i, a) + w_i (r_i − q̂(x_i, a_i)) ]`` with a reward model
  ``q̂`` fitted on the logs (:func:`fit_reward_model`: per-action ridge around a pooled ridge,
  cross-fitted over folds so that no round's prediction saw that round).

They match ``obp.ope.InverseProbabilityWeighting`` / ``SelfNormalizedInverseProbabilityWeighting``
/ ``DoublyRobust`` (no clipping) given the same logs, ``action_dist`` (``target_dist[:, :, None]``)
and ``estimated_rewards_by_reg_model`` (``q̂[:, :, None]``); ``tests/test_ope.py`` checks it.
Every estimator returns an :class:`Estimate` with a normal-approximation 95 % interval (for SNIPS
by the delta method) and a percentile-bootstrap one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

ESTIMATORS: tuple[str, ...] = ("ips", "snips", "dr")
_Z95 = 1.959963984540054


@dataclass
class Estimate:
    """A policy-value estimate with its normal (``ci_*``) and bootstrap (``boot_*``) 95 % intervals."""

    estimator: str
    value: float
    std_err: float
    ci_lo: float
    ci_hi: float
    boot_lo: float
    boot_hi: float
    n_rounds: int

    def covers(self, truth: float, kind: str = "normal") -> bool:
        lo, hi = (self.ci_lo, self.ci_hi) if kind == "normal" else (self.boot_lo, self.boot_hi)
        return bool(lo <= truth <= hi)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- behaviour policies
def softmax_epsilon_probs(scores: np.ndarray, mask: np.ndarray | None = None, temperature: float = 1.0,
                          epsilon: float = 0.1) -> np.ndarray:
    """Behaviour probabilities ``(1 − ε)·softmax(scores / τ) + ε·uniform``, both over each row's
    allowed actions. ``scores`` (n, A); ``mask`` (n, A) bool (default: all allowed). float64 (n, A),
    rows sum to 1, every allowed action ≥ ε / (allowed count) (so every target action has support)."""
    s = np.asarray(scores, dtype=np.float64)
    m = np.ones(s.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if not m.any(axis=1).all():
        raise ValueError("every row needs at least one allowed action")
    if temperature <= 0 or not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"temperature must be > 0 and epsilon in [0, 1], got {temperature}, {epsilon}")
    z = np.where(m & np.isfinite(s), s / temperature, -np.inf)
    z = z - z.max(axis=1, keepdims=True)
    e = np.where(np.isfinite(z), np.exp(z), 0.0)
    soft = e / e.sum(axis=1, keepdims=True)
    uni = m / m.sum(axis=1, keepdims=True)
    return (1.0 - epsilon) * soft + epsilon * uni


def sample_actions(probs: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One action per row of ``probs`` (n, A) by inverse CDF; returns (actions int64, pscores)."""
    p = np.asarray(probs, dtype=np.float64)
    cdf = np.cumsum(p, axis=1)
    u = rng.random(p.shape[0]) * cdf[:, -1]
    a = np.minimum((cdf < u[:, None]).sum(axis=1), p.shape[1] - 1)
    while np.any(p[np.arange(len(a)), a] <= 0):  # float edge: step onto the next allowed action
        bad = p[np.arange(len(a)), a] <= 0
        a[bad] = np.minimum(a[bad] + 1, p.shape[1] - 1)
    return a.astype(np.int64), p[np.arange(len(a)), a]


def one_hot(actions: np.ndarray, n_actions: int) -> np.ndarray:
    """A deterministic policy's action distribution (n, A) from its actions (n,)."""
    a = np.asarray(actions, dtype=np.int64)
    out = np.zeros((a.size, n_actions))
    out[np.arange(a.size), a] = 1.0
    return out


def bandit_feedback(*, action: np.ndarray, reward: np.ndarray, pscore: np.ndarray, context: np.ndarray,
                    n_actions: int, action_context: np.ndarray | None = None, **extra: Any) -> dict[str, Any]:
    """Logged rounds in the Open Bandit Pipeline's ``bandit_feedback`` format (``position`` all 0:
    one slot); ``extra`` arrays (e.g. ``sample_index``, ``budget_ms``) are kept alongside."""
    a = np.asarray(action, dtype=np.int64)
    n = a.size
    fb = {
        "n_rounds": int(n),
        "n_actions": int(n_actions),
        "action": a,
        "position": np.zeros(n, dtype=np.int64),
        "reward": np.asarray(reward, dtype=np.float64),
        "pscore": np.asarray(pscore, dtype=np.float64),
        "context": np.asarray(context, dtype=np.float64),
        "action_context": (np.eye(n_actions) if action_context is None else np.asarray(action_context, dtype=np.float64)),
    }
    for k in ("reward", "pscore", "context"):
        if fb[k].shape[0] != n:
            raise ValueError(f"{k} has {fb[k].shape[0]} rows, action has {n}")
    if np.any(fb["pscore"] <= 0) or np.any(fb["pscore"] > 1):
        raise ValueError("pscore must lie in (0, 1]")
    fb.update(extra)
    return fb


# ----------------------------------------------------------------------------- reward model
def _ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    a = x.T @ x + lam * np.eye(x.shape[1])
    return np.linalg.solve(a, x.T @ y)


def fit_reward_model(context: np.ndarray, action: np.ndarray, reward: np.ndarray, n_actions: int, *,
                     n_folds: int = 5, ridge: float = 1.0, action_ridge: float = 10.0, groups: np.ndarray | None = None,
                     group_ridge: float = 2.0, seed: int = 0) -> np.ndarray:
    """Cross-fitted reward predictions ``q̂`` (n, A) for every logged round and every action.

    Model: a pooled ridge regression of the reward on the context plus, per action, a ridge
    regression of the pooled model's residual on the context (penalty ``action_ridge``, so an
    action logged rarely falls back to the pooled fit). ``context`` should carry a bias column.
    ``groups`` (n,) ints (e.g. the request of each round): a shrunk per-group intercept
    (residual sum / (count + ``group_ridge``)) is added between the two, so that a request's
    difficulty, seen in the other rounds of that request, informs its prediction.
    Rounds are split into ``n_folds`` random folds; a fold's predictions come from a model fitted
    on the other folds (``n_folds=1``: fitted and predicted on all rounds)."""
    x = np.asarray(context, dtype=np.float64)
    a = np.asarray(action, dtype=np.int64)
    r = np.asarray(reward, dtype=np.float64)
    n, d = x.shape
    rng = np.random.default_rng(seed)
    fold = rng.permutation(n) % n_folds if n_folds > 1 else np.zeros(n, dtype=np.int64)
    q = np.empty((n, n_actions))
    for k in range(max(n_folds, 1)):
        te = fold == k
        tr = ~te if n_folds > 1 else np.ones(n, dtype=bool)
        wg = _ridge(x[tr], r[tr], ridge)
        resid = r[tr] - x[tr] @ wg
        g_tr = np.zeros(int(tr.sum()))
        g_te = np.zeros(int(te.sum()))
        if groups is not None:
            gid = np.asarray(groups, dtype=np.int64)
            size = int(gid.max()) + 1
            eff = np.bincount(gid[tr], weights=resid, minlength=size) / (np.bincount(gid[tr], minlength=size) + group_ridge)
            g_tr, g_te = eff[gid[tr]], eff[gid[te]]
            resid = resid - g_tr
        xt, at = x[tr], a[tr]
        # per-action ridge, all actions in one batched solve: per-action sums by sorted segments
        order = np.argsort(at, kind="stable")
        acts, starts = np.unique(at[order], return_index=True)
        xs = xt[order]
        stacked = np.concatenate([(xs[:, :, None] * xs[:, None, :]).reshape(len(xs), d * d),
                                  xs * resid[order, None]], axis=1)
        sums = np.add.reduceat(stacked, starts, axis=0)
        gram = np.zeros((n_actions, d, d))
        rhs = np.zeros((n_actions, d))
        gram[acts] = sums[:, : d * d].reshape(-1, d, d)
        rhs[acts] = sums[:, d * d:]
        w = np.linalg.solve(gram + action_ridge * np.eye(d), rhs[:, :, None])[:, :, 0]
        q[te] = (x[te] @ wg + g_te)[:, None] + x[te] @ w.T
    return q


# ----------------------------------------------------------------------------- estimators
def importance_weights(action: np.ndarray, pscore: np.ndarray, target_dist: np.ndarray) -> np.ndarray:
    a = np.asarray(action, dtype=np.int64)
    return np.asarray(target_dist, dtype=np.float64)[np.arange(a.size), a] / np.asarray(pscore, dtype=np.float64)


def _normal(name: str, value: float, per_round: np.ndarray) -> tuple[float, float, float]:
    n = per_round.size
    se = float(per_round.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return se, value - _Z95 * se, value + _Z95 * se


def _boot(stat, arrays: tuple[np.ndarray, ...], n_boot: int, seed: int) -> tuple[float, float]:
    if n_boot <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    n = arrays[0].size
    vals = np.empty(n_boot)
    chunk = max(1, 2_000_000 // max(n, 1))
    for s in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - s), n))
        vals[s:s + idx.shape[0]] = stat(*(arr[idx] for arr in arrays))
    lo, hi = np.quantile(vals, [0.025, 0.975])
    return float(lo), float(hi)


def ips(reward, action, pscore, target_dist, *, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """Inverse propensity scoring."""
    v = importance_weights(action, pscore, target_dist) * np.asarray(reward, dtype=np.float64)
    est = float(v.mean())
    se, lo, hi = _normal("ips", est, v)
    blo, bhi = _boot(lambda vv: vv.mean(axis=1), (v,), n_boot, seed)
    return Estimate("ips", est, se, lo, hi, blo, bhi, v.size)


def snips(reward, action, pscore, target_dist, *, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """Self-normalised IPS; its normal interval is the delta method's."""
    w = importance_weights(action, pscore, target_dist)
    r = np.asarray(reward, dtype=np.float64)
    if w.sum() <= 0:
        nan = float("nan")
        return Estimate("snips", nan, nan, nan, nan, nan, nan, w.size)
    est = float((w * r).sum() / w.sum())
    se, lo, hi = _normal("snips", est, w * (r - est) / w.mean())
    blo, bhi = _boot(lambda ww, rr: (ww * rr).sum(axis=1) / np.maximum(ww.sum(axis=1), 1e-300), (w, r), n_boot, seed)
    return Estimate("snips", est, se, lo, hi, blo, bhi, w.size)


def dr(reward, action, pscore, target_dist, q_hat, *, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """Doubly robust: the reward model's value of the target plus the IPS-weighted residual."""
    a = np.asarray(action, dtype=np.int64)
    q = np.asarray(q_hat, dtype=np.float64)
    pi = np.asarray(target_dist, dtype=np.float64)
    w = importance_weights(a, pscore, pi)
    v = (pi * q).sum(axis=1) + w * (np.asarray(reward, dtype=np.float64) - q[np.arange(a.size), a])
    est = float(v.mean())
    se, lo, hi = _normal("dr", est, v)
    blo, bhi = _boot(lambda vv: vv.mean(axis=1), (v,), n_boot, seed)
    return Estimate("dr", est, se, lo, hi, blo, bhi, v.size)


def estimate_all(feedback: dict[str, Any], target_dist: np.ndarray, q_hat: np.ndarray | None = None, *,
                 n_boot: int = 1000, seed: int = 0) -> dict[str, Estimate]:
    """IPS, SNIPS and (when ``q_hat`` is given) DR on one ``bandit_feedback`` dict."""
    args = (feedback["reward"], feedback["action"], feedback["pscore"], target_dist)
    out = {"ips": ips(*args, n_boot=n_boot, seed=seed), "snips": snips(*args, n_boot=n_boot, seed=seed)}
    if q_hat is not None:
        out["dr"] = dr(*args, q_hat, n_boot=n_boot, seed=seed)
    return out
