"""Baseline policies for the flat action space (one configuration index per request).

Every baseline is a :class:`FlatPolicy` (docs/INTERFACES.md): ``act(obs, info) -> (n,) int``
over batched observations of ``MolmoeKnobsFlat-v0``'s vector env. ``info`` is the reset info
of that env: baselines read ``budget_ms`` (every baseline may know its budget) and the
full-information ones read ``sample_index`` (documented per class).

=========================  ==================================================================
name                       what it is
=========================  ==================================================================
``always_full``            the full configuration (high, p1, k8, 16 blocks)
``always_cheapest``        the cheapest configuration (low, p1, k4, 12 blocks)
``random``                 uniform over the valid configurations
``static``                 best static configuration per budget bin, chosen on the train split
                           by mean reward (the seeds' lookup table)
``random_matched``         configurations drawn from a learned policy's per-budget
                           configuration distribution, independently of the request (VoVNet
                           B3: isolates the value of per-request adaptivity)
``uncertainty@τ``          VoVNet B2: the cheapest configuration when the cache's first-token
                           entropy (or 1 − margin) is below τ, else the static configuration
                           of the budget; τ swept over quantiles of the train split
``router``                 supervised router (RouterBench's predictive router): ridge
                           regression of each configuration's reward on the flat observation,
                           fitted on the train split's full outcome matrix per budget; picks the
                           best predicted reward
``router2``                the same with the two-stage env's information: stage 1 predicts the
                           value of each (tier, p) from the language feature, stage 2 the reward
                           of each (top-k, blocks) from the latency token at the chosen (tier, p)
``oracle``                 reads the held-out outcomes: per request, the configuration with the
                           best reward (ties → lower latency); an upper bound, not a policy
=========================  ==================================================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from envs.replay_data import ReplayData
from envs.reward import RewardConfig, compute_reward


class FlatPolicy(Protocol):
    name: str

    def act(self, obs: dict[str, np.ndarray], info: dict[str, np.ndarray]) -> np.ndarray: ...


def _mask(obs: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(obs["action_mask"]).astype(bool)


def _budgets(info: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(info["budget_ms"], dtype=np.float64).reshape(-1)


def reward_matrix(data: ReplayData, budget_ms: np.ndarray | float, reward: RewardConfig) -> np.ndarray:
    """Reward of every configuration for every request of ``data`` at ``budget_ms``.

    ``budget_ms`` is a scalar or (n,). Returns float64 (n, C); NaN where no outcome exists.
    """
    b = np.broadcast_to(np.asarray(budget_ms, dtype=np.float64).reshape(-1, 1), (data.score.shape[0], 1))
    r = compute_reward(
        data.score, data.total_ms, b, data.complexity[None, :], reward, latency_ref_ms=data.full_ms[:, None]
    )
    return np.where(data.valid, r, np.nan)


def _argmax_masked(values: np.ndarray, mask: np.ndarray, tie_break: np.ndarray | None = None) -> np.ndarray:
    """Row-wise argmax over allowed entries; ``tie_break`` (same shape, lower wins) breaks ties."""
    v = np.where(mask & np.isfinite(values), values, -np.inf)
    if tie_break is None:
        return np.argmax(v, axis=1)
    best = v.max(axis=1, keepdims=True)
    tb = np.where(v >= best - 1e-12, tie_break, np.inf)
    return np.argmin(tb, axis=1)


# ----------------------------------------------------------------------------- trivial
@dataclass
class FixedConfig:
    """Always the same configuration (``always_full`` / ``always_cheapest``)."""

    name: str
    config_index: int

    def act(self, obs: dict[str, np.ndarray], info: dict[str, np.ndarray]) -> np.ndarray:
        n = _mask(obs).shape[0]
        return np.full(n, self.config_index, dtype=np.int64)


class RandomPolicy:
    """Uniform over each request's valid configurations."""

    def __init__(self, seed: int = 0, name: str = "random") -> None:
        self.name = name
        self.rng = np.random.default_rng(seed)

    def act(self, obs: dict[str, np.ndarray], info: dict[str, np.ndarray]) -> np.ndarray:
        m = _mask(obs)
        u = np.where(m, self.rng.random(m.shape), -1.0)
        return np.argmax(u, axis=1)


# ----------------------------------------------------------------------------- budget-binned
class BudgetBinned:
    """A per-budget-bin table lookup: bin ``i`` covers budgets nearest to ``centers[i]``."""

    def __init__(self, centers: Sequence[float]) -> None:
        self.centers = np.sort(np.asarray(centers, dtype=np.float64))
        if self.centers.size == 0:
            raise ValueError("need at least one budget bin")

    def bin_of(self, budget_ms: np.ndarray) -> np.ndarray:
        c = self.centers
        edges = (c[1:] + c[:-1]) / 2
        return np.searchsorted(edges, budget_ms)


class StaticPerBudget(BudgetBinned):
    """Best static configuration per budget bin, chosen on the train split by mean reward."""

    def __init__(self, centers: Sequence[float], table: Sequence[int], name: str = "static") -> None:
        super().__init__(centers)
        self.table = np.asarray(table, dtype=np.int64)
        if self.table.shape != self.centers.shape:
            raise ValueError("one configuration per budget bin")
        self.name = name

    @classmethod
    def fit(cls, train: ReplayData, centers: Sequence[float], reward: RewardConfig, name: str = "static") -> "StaticPerBudget":
        centers = np.sort(np.asarray(centers, dtype=np.float64))
        # mean reward over requests with an outcome; a config missing for most requests is unusable
        table = []
        for b in centers:
            r = reward_matrix(train, b, reward)
            coverage = np.isfinite(r).mean(axis=0)
            mean_r = np.where(coverage >= 0.99, np.nanmean(np.where(np.isfinite(r), r, np.nan), axis=0), -np.inf)
            table.append(int(np.argmax(mean_r)))
        return cls(centers, table, name)

    def act(self, obs: dict[str, np.ndarray], info: dict[str, np.ndarray]) -> np.ndarray:
        return self.table[self.bin_of(_budgets(info))]

    def to_dict(self) -> dict:
        return {"centers": self.centers.tolist(), "table": self.table.tolist()}


class RandomMatched(BudgetBinned):
    """Configurations drawn from a learned policy's per-budget distribution (VoVNet B3)."""

    def __init__(self, centers: Sequence[float], probs: np.ndarray, seed: int = 0, name: str = "random_matched") -> None:
        super().__init__(centers)
        p = np.asarray(probs, dtype=np.float64)
        if p.ndim != 2 or p.shape[0] != self.centers.size:
            raise ValueError(f"probs must be (n_bins, C), got {p.shape}")
        if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0):
            raise ValueError("each bin's probabilities must be non-negative and sum to 1")
        self.probs = p
        self.rng = np.random.default_rng(seed)
        self.name = name

    @classmethod
    def from_choices(
        cls, budgets_ms: np.ndarray, config_index: np.ndarray, n_configs: int, seed: int = 0, name: str = "random_matched"
    ) -> "RandomMatched":
        """Match the empirical configuration distribution of ``config_index`` at each budget."""
        budgets_ms = np.asarray(budgets_ms, dtype=np.float64)
        centers = np.unique(budgets_ms)
        probs = np.zeros((centers.size, n_configs))
        for i, b in enumerate(centers):
            probs[i] = np.bincount(config_index[budgets_ms == b], minlength=n_configs)
        probs /= probs.sum(axis=1, keepdims=True)
        return cls(centers, probs, seed, name)

    def act(self, obs: dict[str, np.ndarray], info: dict[str, np.ndarray]) -> np.ndarray:
        m = _mask(obs)
        p = self.probs[self.bin_of(_budgets(info))] * m
        p /= np.maximum(p.sum(axis=1, keepdims=True), 1e-12)
        u = self.rng.random((p.shape[0], 1))
        return np.minimum((np.cumsum(p, axis=1) < u).sum(axis=1), p.shape[1] - 1)


class UncertaintyThreshold:
    """VoVNet B2: cheap configuration when the model is confident, the budget's static one otherwise.

    Reads the cache's first-token uncertainty of each request through ``info["sample_index"]``
    (the feature is computed by a cheap pass before the decision in the VoVNet pipeline).
    ``feature``: ``"entropy"`` (column 0) or ``"margin"`` (column 1; uncertainty = −margin).
    """

    def __init__(
        self, uncertainty: np.ndarray, threshold: float, static: StaticPerBudget, cheap_index: int,
        feature: str = "entropy", name: str | None = None,
    ) -> None:
        if feature not in ("entropy", "margin"):
            raise ValueError(f"feature must be 'entropy' or 'margin', got {feature!r}")
        u = np.asarray(uncertainty, dtype=np.float64)
        self.u = u[:, 0] if feature == "entropy" else -u[:, 1]
        self.threshold = float(threshold)
        self.static, self.cheap_index, self.feature = static, int(cheap_index), feature
        self.name = name or f"uncertainty_{feature}@{threshold:.3g}"

    @staticmethod
    def thresholds(train_uncertainty: np.ndarray, feature: str = "entropy", quantiles: Sequence[float] = (0.2, 0.4, 0.6, 0.8)) -> list[float]:
        u = np.asarray(train_uncertainty, dtype=np.float64)
        x = u[:, 0] if feature == "entropy" else -u[:, 1]
        x = x[np.isfinite(x)]
        if x.size == 0:
            raise ValueError("the cache has no uncertainty features (all NaN)")
        return [float(np.quantile(x, q)) for q in quantiles]

    def act(self, obs: dict[str, np.ndarray], info: dict[str, np.ndarray]) -> np.ndarray:
        rows = np.asarray(info["sample_index"], dtype=np.int64)
        rich = self.static.act(obs, info)
        confident = self.u[rows] < self.threshold
        return np.where(confident, self.cheap_index, rich)


# ----------------------------------------------------------------------------- learned from full information
def router_features(obs: dict[str, np.ndarray]) -> np.ndarray:
    """Budget-independent part of the flat observation: language feature, the request's
    cheapest/full latency (scaled), its request features (``obs["request"]`` when present) and a
    bias. float64 (n, Dl + 3 [+ R])."""
    lang = np.asarray(obs["lang"], dtype=np.float64)
    lat = np.asarray(obs["budget"], dtype=np.float64)[:, 1:3]
    cols = [lang, lat]
    if "request" in obs:
        cols.append(np.asarray(obs["request"], dtype=np.float64))
    return np.concatenate(cols + [np.ones((lang.shape[0], 1))], axis=1)


class BudgetGridRidge:
    """Multi-output ridge regressions, one per budget of a grid, interpolated linearly in budget.

    ``weights`` (n_budgets, d, m): targets ``m`` (e.g. the rewards of m configurations) as linear
    functions of ``d`` features at each grid budget ``budgets_ms`` (sorted, ms).
    """

    def __init__(self, budgets_ms: np.ndarray, weights: np.ndarray) -> None:
        self.budgets_ms = np.asarray(budgets_ms, dtype=np.float64)
        self.weights = np.asarray(weights, dtype=np.float64)
        if self.weights.ndim != 3 or self.weights.shape[0] != self.budgets_ms.size:
            raise ValueError(f"weights must be (n_budgets, d, m), got {self.weights.shape}")
        if np.any(np.diff(self.budgets_ms) <= 0):
            raise ValueError("budgets_ms must be strictly increasing")

    @classmethod
    def fit(cls, x: np.ndarray, targets: "Callable[[float], np.ndarray]", budgets_ms: Sequence[float],
            ridge: float) -> "BudgetGridRidge":
        """``x`` (n, d) with a bias column last (not penalised); ``targets(b)`` → (n, m) at budget b."""
        a = x.T @ x + ridge * np.eye(x.shape[1])
        a[-1, -1] -= ridge
        proj = np.linalg.solve(a, x.T)  # (d, n): one factorisation serves every grid budget
        grid = np.sort(np.asarray(budgets_ms, dtype=np.float64))
        return cls(grid, np.stack([proj @ targets(float(b)) for b in grid]))

    def predict(self, x: np.ndarray, budget_ms: np.ndarray) -> np.ndarray:
        """(n, m) predictions at each row's budget (clipped to the grid)."""
        g = self.budgets_ms
        b = np.clip(np.broadcast_to(np.asarray(budget_ms, dtype=np.float64), (x.shape[0],)), g[0], g[-1])
        if g.size == 1:
            lo = hi = np.zeros(b.size, dtype=np.int64)
        else:
            hi = np.clip(np.searchsorted(g, b), 1, g.size - 1)
            lo = hi - 1
        span = g[hi] - g[lo]
        w = np.divide(b - g[lo], span, out=np.zeros_like(b), where=span > 0)
        out = np.zeros((x.shape[0], self.weights.shape[2]))
        for j in np.unique(np.r_[lo, hi]):  # one matmul per grid budget in use
            wj = (1.0 - w) * (lo == j) + w * (hi == j)
            rows = wj > 0
            out[rows] += wj[rows, None] * (x[rows] @ self.weights[j])
        return out


def _reward_targets(data: ReplayData, reward: RewardConfig, cols: np.ndarray | slice = slice(None),
                    memo: dict[float, np.ndarray] | None = None):
    """``targets(b)`` for :meth:`BudgetGridRidge.fit`: rewards of the ``cols`` configurations at
    budget ``b`` (missing outcomes count as the worst reward seen). ``memo`` shares the full
    reward matrices between calls."""
    memo = {} if memo is None else memo

    def targets(b: float) -> np.ndarray:
        if b not in memo:
            r = reward_matrix(data, b, reward)
            memo[b] = np.where(np.isfinite(r), r, np.nanmin(r))
        return memo[b][:, cols]

    return targets


def _router_grid(train: ReplayData, budgets_ms: Sequence[float] | None, n_budgets: int) -> np.ndarray:
    lo, hi = train.budget_range_ms
    return np.asarray(budgets_ms if budgets_ms is not None else np.linspace(0.9 * lo, 1.1 * hi, n_budgets))


class SupervisedRouter:
    """Flat supervised router: ridge regression of every configuration's reward on the flat
    observation (:func:`router_features`), fitted on the train split's full outcome matrix over a
    budget grid (:class:`BudgetGridRidge`); picks the best predicted reward.

    The reward, not the latency, is regressed because a configuration's latency depends on the
    output length, unknown before running: regressing the reward learns its expectation, where
    plugging a predicted latency into the hinge would not.
    """

    def __init__(self, model: BudgetGridRidge, name: str = "router") -> None:
        self.model, self.name = model, name

    @classmethod
    def fit(cls, train: ReplayData, train_obs: dict[str, np.ndarray], reward: RewardConfig,
            ridge: float = 1.0, budgets_ms: Sequence[float] | None = None, n_budgets: int = 16,
            name: str = "router") -> "SupervisedRouter":
        """``train_obs``: flat observations of every train request (row i ↔ train row i);
        ``budgets_ms``: the fitting grid (default ``n_budgets`` points over 0.9·lo .. 1.1·hi of
        the train budget range)."""
        x = router_features(train_obs)
        if x.shape[0] != train.score.shape[0]:
            raise ValueError("train_obs must hold one observation per train request, in order")
        grid = _router_grid(train, budgets_ms, n_budgets)
        return cls(BudgetGridRidge.fit(x, _reward_targets(train, reward), grid, ridge), name)

    def predict(self, obs: dict[str, np.ndarray], budget_ms: np.ndarray) -> np.ndarray:
        """Predicted reward of every configuration, float64 (n, C)."""
        return self.model.predict(router_features(obs), budget_ms)

    def act(self, obs: dict[str, np.ndarray], info: dict[str, np.ndarray]) -> np.ndarray:
        return _argmax_masked(self.predict(obs, _budgets(info)), _mask(obs))

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        np.savez(d / "router.npz", budgets_ms=self.model.budgets_ms, weights=self.model.weights)
        (d / "router.json").write_text(json.dumps({"name": self.name}))

    @classmethod
    def load(cls, directory: str | Path) -> "SupervisedRouter":
        d = Path(directory)
        z = np.load(d / "router.npz")
        meta = json.loads((d / "router.json").read_text())
        return cls(BudgetGridRidge(z["budgets_ms"], z["weights"]), meta["name"])


class TwoStageRouter:
    """Supervised router with the two-stage env's information (a :class:`TwoStagePolicy`).

    Stage 2: for each (tier, p) pair, a :class:`BudgetGridRidge` predicts the rewards of the
    configurations sharing that pair from the latency token at (tier, p) plus the stage-1
    features. Stage 1: a :class:`BudgetGridRidge` on the stage-1 features (language feature,
    cheapest/full latency) predicts, for every pair, the reward that stage 2 then realises on the
    train split. Both are fitted on the train split's full outcome matrix; it sees exactly what
    a two-stage agent sees, in the same order.
    """

    def __init__(self, stage1: BudgetGridRidge, stage2: list[BudgetGridRidge], pair_configs: np.ndarray,
                 nvec: Sequence[int], name: str = "router2") -> None:
        self.stage1, self.stage2 = stage1, stage2
        self.pair_configs = np.asarray(pair_configs, dtype=np.int64)  # (pairs, max configs), -1 pads
        self.nvec = tuple(int(v) for v in nvec)
        self.name = name

    @staticmethod
    def _pairs(ks) -> tuple[list[tuple[int, int]], np.ndarray]:
        t = ks.config_table()
        pairs = [(ti, pi) for ti in range(len(ks.tiers)) for pi in range(len(ks.insertion_positions))]
        width = max(int(((t["tier"] == ti) & (t["p"] == ks.insertion_positions[pi])).sum()) for ti, pi in pairs)
        pc = np.full((len(pairs), width), -1, dtype=np.int64)
        for j, (ti, pi) in enumerate(pairs):
            idx = np.flatnonzero((t["tier"] == ti) & (t["p"] == ks.insertion_positions[pi]))
            pc[j, : idx.size] = idx
        return pairs, pc

    @classmethod
    def fit(cls, train: ReplayData, reward: RewardConfig, ridge: float = 1.0,
            budgets_ms: Sequence[float] | None = None, n_budgets: int = 12, name: str = "router2") -> "TwoStageRouter":
        ks = train.knob_space
        pairs, pc = cls._pairs(ks)
        grid = _router_grid(train, budgets_ms, n_budgets)
        scale = train.latency_scale_ms
        x1 = np.c_[train.lang, train.cheapest_ms / scale, train.full_ms / scale, train.request, np.ones(train.n)]
        stage2, realised, memo = [], {}, {}
        rows = np.arange(train.n)
        for j, (ti, pi) in enumerate(pairs):
            cols = pc[j][pc[j] >= 0]
            x2 = np.c_[train.tokens[:, ti, pi], x1]
            targets = _reward_targets(train, reward, cols, memo)
            m = BudgetGridRidge.fit(x2, targets, grid, ridge)
            stage2.append(m)
            for g, b in enumerate(m.budgets_ms):  # reward stage 2 realises at this pair: stage 1's target
                pick = np.argmax(x2 @ m.weights[g], axis=1)
                realised.setdefault(float(b), []).append(targets(float(b))[rows, pick])
        stage1 = BudgetGridRidge.fit(x1, lambda b: np.stack(realised[b], axis=1), grid, ridge)
        return cls(stage1, stage2, pc, ks.multidiscrete_nvec, name)

    @staticmethod
    def _x1(obs: dict[str, np.ndarray]) -> np.ndarray:
        return router_features(obs)

    def act_stage1(self, obs: dict[str, np.ndarray], info: dict[str, np.ndarray]) -> np.ndarray:
        n_t, n_p = self.nvec[0], self.nvec[1]
        v = self.stage1.predict(self._x1(obs), _budgets(info))  # (n, pairs) in (tier, p) order
        m = np.asarray(obs["action_mask"]).astype(bool)
        pair_ok = m[:, :n_t, None] & m[:, n_t : n_t + n_p][:, None, :]
        j = _argmax_masked(v, pair_ok.reshape(len(v), -1))
        a = np.zeros((len(v), 4), dtype=np.int64)
        a[:, 0], a[:, 1] = j // n_p, j % n_p
        return a

    def act_stage2(self, obs: dict[str, np.ndarray], info: dict[str, np.ndarray]) -> np.ndarray:
        n_t, n_p, n_k, n_b = self.nvec
        ctx = np.asarray(obs["context"])
        ti, pi = np.argmax(ctx[:, 1 : 1 + n_t], axis=1), np.argmax(ctx[:, 1 + n_t : 1 + n_t + n_p], axis=1)
        x1 = self._x1(obs)
        token = np.asarray(obs["token"], dtype=np.float64)
        budgets = _budgets(info)
        m = np.asarray(obs["action_mask"]).astype(bool)
        a = np.zeros((len(x1), 4), dtype=np.int64)
        a[:, 0], a[:, 1] = ti, pi
        for j in np.unique(ti * n_p + pi):
            rows = np.flatnonzero(ti * n_p + pi == j)
            cols = self.pair_configs[j][self.pair_configs[j] >= 0]
            pred = self.stage2[j].predict(np.c_[token[rows], x1[rows]], budgets[rows])
            # configs of a pair are ordered (top_k, blocks): index = k_idx * n_blocks_p + b_idx
            n_blocks_p = cols.size // n_k
            ok = (m[rows, n_t + n_p : n_t + n_p + n_k][:, :, None] & m[rows, n_t + n_p + n_k :][:, None, :n_blocks_p])
            c = _argmax_masked(pred, ok.reshape(len(rows), -1))
            a[rows, 2], a[rows, 3] = c // n_blocks_p, c % n_blocks_p
        return a


class Oracle:
    """Upper bound: per request, the configuration with the best reward on the held-out outcomes
    (ties → lower latency). Reads ``info["sample_index"]`` into ``data`` (the split evaluated)."""

    def __init__(self, data: ReplayData, reward: RewardConfig, name: str = "oracle") -> None:
        self.data, self.reward, self.name = data, reward, name

    def act(self, obs: dict[str, np.ndarray], info: dict[str, np.ndarray]) -> np.ndarray:
        rows = np.asarray(info["sample_index"], dtype=np.int64)
        sub_b = _budgets(info)
        d = self.data
        r = compute_reward(
            d.score[rows], d.total_ms[rows], sub_b[:, None], d.complexity[None, :], self.reward,
            latency_ref_ms=d.full_ms[rows, None],
        )
        return _argmax_masked(np.where(d.valid[rows], r, np.nan), _mask(obs), tie_break=d.total_ms[rows])
