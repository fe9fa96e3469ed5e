"""Contextual bandits over the 225 configurations of the flat env ``MolmoeKnobsFlat-v0``.

Three disjoint-linear-model bandits (one ridge regression per arm, Li et al. 2010):

- ``linucb``: score = x·θ_a + α √(xᵀ A_a⁻¹ x). By default (``uniform_explore`` 0.75,
  ``importance_weighted``) three training pulls in four are a uniformly random valid arm and every
  update is weighted by the inverse propensity of its arm (importance-weighted regression), so
  each arm's ridge model is the fit a uniform design would give rather than a fit to the contexts
  where the arm won: the models are misspecified (the reward is a step in the budget), and fitted
  on the UCB pulls alone the greedy policy under-estimated the cheap configurations at tight
  budgets and violated more than static-per-budget (benchmarks/RESULTS.md, "LinUCB's violations").
- ``lin_ts``: linear Thompson sampling, score = x·θ̃_a with θ̃_a ~ N(θ_a, v² A_a⁻¹) drawn
  independently per (context, arm). Only the scalar x·θ̃_a enters the argmax, and its law is
  N(x·θ_a, v² xᵀA_a⁻¹x), so it is sampled directly as ``x·θ_a + v √(xᵀA_a⁻¹x) z``, z ~ N(0, 1),
  which is the same distribution as drawing θ̃_a (what mabwiser does) at O(d) per pair
  instead of a Cholesky factor per draw.
- ``eps_greedy``: with probability ε a uniformly random *valid* arm, else argmax x·θ_a;
  ε decays linearly from ``epsilon`` to ``epsilon_final`` over the training rounds.

Per arm a: precision ``A_a = λI + Σ x xᵀ`` (d×d), ``b_a = Σ r x``, ``θ_a = A_a⁻¹ b_a``. They are
stored stacked, ``A``/``A_inv`` as (arms, d, d) float64 and ``b``/``theta`` as (arms, d), so that
a whole batch of n contexts is scored at once with two matrix products (no Python loop over
arms or samples). An update with a batch of (arm, context, reward) triples either applies
rank-one Sherman–Morrison updates to ``A_inv`` — grouped by occurrence rank, i.e. the k-th
sample of every arm is applied to all arms together, so the loop runs over the largest
per-arm multiplicity, not over samples — or re-inverts the touched arms' precision matrices in
one batched Cholesky factorisation (``update_method``; ``auto`` picks Sherman–Morrison while the multiplicity is
small). Both give the same matrices as sequential per-sample updates (tests check 1e-8).

Masked arms score −inf and are never chosen (exploration included).

Greedy action (what :class:`BanditPolicy.act` does in evaluation): argmax of the posterior
mean x·θ_a over valid arms, for all three kinds (UCB without its bonus, TS without sampling,
ε-greedy with ε = 0).

Context (:class:`ContextFeaturizer`): ``[1, PCA(lang) (optional, off by default),
standardised obs["budget"], u, u², RBF(u)]`` with ``u = (budget − cheapest) / (full − cheapest)`` read from
``obs["budget"] = [budget/scale, cheapest/scale, full/scale, budget/full]``. The reward of an
arm as a function of the budget is a step (in budget → score, over budget → penalty) located
where the budget crosses that arm's latency, which sits between the request's cheapest and
full latency; the radial basis bumps over ``u`` let each arm's linear model place that step.
Optionally the GRPO agent's shared budget encoding (``agents.budget_encoding``) is appended, and
(``lang_clusters``) per group of questions (k-means on the PCA components) an indicator and bumps
over u that are zero outside the group, so that each arm's budget curve can differ by group.

Reward is the env's reward (the budget is in the context, so each arm's model learns the
reward as a function of the budget).

Torch is not needed here; only numpy (and gymnasium / the envs in :func:`train_bandit`).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from cache.schema import LABEL_KEYS

BANDIT_KINDS: tuple[str, ...] = ("linucb", "lin_ts", "eps_greedy")
#: Other accepted spellings (the command line's agent names) → kind.
KIND_ALIASES: dict[str, str] = {"lints": "lin_ts", "egreedy": "eps_greedy", "epsilon_greedy": "eps_greedy",
                                "thompson": "lin_ts"}


def canonical_kind(kind: str) -> str:
    """``kind`` or an alias of it (:data:`KIND_ALIASES`) → one of :data:`BANDIT_KINDS`; ValueError otherwise."""
    k = KIND_ALIASES.get(str(kind), str(kind))
    if k not in BANDIT_KINDS:
        raise ValueError(f"unknown bandit kind {kind!r}; expected one of {BANDIT_KINDS} (aliases {sorted(KIND_ALIASES)})")
    return k
UPDATE_METHODS: tuple[str, ...] = ("auto", "sherman_morrison", "refactor")

#: ``LinearBanditConfig.alpha`` when None, per kind (unused by ε-greedy).
DEFAULT_ALPHA: dict[str, float] = {"linucb": 1.0, "lin_ts": 0.4, "eps_greedy": 0.0}
#: ``LinearBanditConfig.uniform_explore`` / ``importance_weighted`` when None, per kind. LinUCB
#: draws three pulls in four uniformly and fits its models by importance-weighted regression:
#: with its own (UCB) pulls alone, each arm's misspecified linear model is fitted where that arm
#: wins and the greedy policy's violations were 1.3-2.6 points over static-per-budget's on the
#: live default (benchmarks/RESULTS.md, "LinUCB's violations"). ε-greedy's ε schedule is its own.
DEFAULT_UNIFORM_EXPLORE: dict[str, float] = {"linucb": 0.75, "lin_ts": 0.0, "eps_greedy": 0.0}
DEFAULT_IMPORTANCE_WEIGHTED: dict[str, bool] = {"linucb": True, "lin_ts": False, "eps_greedy": False}

#: Largest per-arm multiplicity in one update for which ``auto`` still uses Sherman–Morrison;
#: beyond it one batched re-inversion of the touched arms is cheaper than that many passes.
_SM_MAX_RANK = 8


# ============================================================================ linear models
@dataclass
class LinearBanditConfig:
    """Hyper-parameters of :class:`LinearBandit`.

    Attributes:
        kind: one of :data:`BANDIT_KINDS` (aliases accepted, :data:`KIND_ALIASES`).
        alpha: LinUCB bonus width α, and the posterior scale v of linear Thompson sampling;
            None = the kind's default (:data:`DEFAULT_ALPHA`: 1.0 for LinUCB; 0.4 for TS, about
            the reward noise sd on the default synthetic cache, since v scales the posterior of
            a model whose noise variance is taken as 1).
        l2: ridge regularisation λ (prior precision): ``A_a`` starts at ``λ I``.
        epsilon: ε-greedy's initial exploration probability.
        epsilon_final: ε at the end of training (linear decay; see :meth:`LinearBandit.set_progress`).
        uniform_explore: LinUCB / linear TS only: the probability, per context while training, of
            a uniformly random valid arm instead of the kind's own choice (constant over training;
            0 = pure UCB / TS); None = the kind's default (:data:`DEFAULT_UNIFORM_EXPLORE`: 0.75
            for LinUCB, 0 for TS).
        importance_weighted: None = the kind's default (:data:`DEFAULT_IMPORTANCE_WEIGHTED`:
            LinUCB yes, the others no). Weight every update by the inverse propensity of the pulled arm
            (:meth:`LinearBandit.importance_weights`; importance-weighted regression, Bietti,
            Agarwal & Langford, "A Contextual Bandit Bake-off", JMLR 2021), so that each arm's
            ridge model estimates its reward over the context distribution rather than over the
            contexts where the bandit chose it. Needs a uniform share (``uniform_explore`` > 0
            for LinUCB, ε > 0 for ε-greedy); not for TS.
        update_method: one of :data:`UPDATE_METHODS`.
        seed: seed of the bandit's own generator (TS draws, ε coin flips, random arms).
    """

    kind: str = "linucb"
    alpha: float | None = None
    l2: float = 1.0
    epsilon: float = 0.3
    epsilon_final: float = 0.05
    uniform_explore: float | None = None
    importance_weighted: bool | None = None
    update_method: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        self.kind = canonical_kind(self.kind)
        if self.update_method not in UPDATE_METHODS:
            raise ValueError(f"unknown update_method {self.update_method!r}; expected one of {UPDATE_METHODS}")
        if not self.l2 > 0:
            raise ValueError(f"l2 must be > 0 (it makes every A_a invertible), got {self.l2}")
        if self.importance_weighted_value:
            if self.kind == "lin_ts":
                raise ValueError("importance_weighted needs known propensities; linear Thompson sampling's are not (use linucb or eps_greedy)")
            if self.kind == "linucb" and not self.uniform_explore_value > 0:
                raise ValueError("importance_weighted needs uniform_explore > 0 for linucb (a deterministic choice has propensity 0 or 1)")
            if self.kind == "eps_greedy" and not min(self.epsilon, self.epsilon_final) > 0:
                raise ValueError("importance_weighted needs epsilon and epsilon_final > 0 for eps_greedy")
        if self.alpha is not None and not self.alpha >= 0:
            raise ValueError(f"alpha must be >= 0 or None, got {self.alpha}")
        for name in ("epsilon", "epsilon_final", "uniform_explore"):
            v = getattr(self, name)
            if v is None:
                continue
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")


    @property
    def alpha_value(self) -> float:
        """``alpha``, or the kind's default when it is None."""
        return DEFAULT_ALPHA[self.kind] if self.alpha is None else float(self.alpha)

    @property
    def uniform_explore_value(self) -> float:
        """``uniform_explore``, or the kind's default when it is None."""
        return DEFAULT_UNIFORM_EXPLORE[self.kind] if self.uniform_explore is None else float(self.uniform_explore)

    @property
    def importance_weighted_value(self) -> bool:
        """``importance_weighted``, or the kind's default when it is None."""
        return DEFAULT_IMPORTANCE_WEIGHTED[self.kind] if self.importance_weighted is None else bool(self.importance_weighted)


def _spd_inverse(A: np.ndarray) -> np.ndarray:
    """Inverses of a stack of symmetric positive-definite matrices (k, d, d) via batched Cholesky:
    ``A = L Lᵀ`` → ``A⁻¹ = L⁻ᵀ L⁻¹`` (exactly symmetric; raises LinAlgError if some A is not SPD)."""
    L_inv = np.linalg.inv(np.linalg.cholesky(A))
    return np.matmul(L_inv.transpose(0, 2, 1), L_inv)


class LinearBandit:
    """Disjoint linear models for ``n_arms`` arms over ``dim``-dimensional contexts.

    State (all float64): ``A`` (arms, d, d) precision, ``A_inv`` (arms, d, d) its inverse,
    ``b`` (arms, d), ``theta`` (arms, d) = ``A_inv @ b``, ``counts`` (arms,) int64 updates per arm.
    """

    def __init__(self, n_arms: int, dim: int, config: LinearBanditConfig | None = None) -> None:
        if n_arms < 1 or dim < 1:
            raise ValueError(f"need n_arms >= 1 and dim >= 1, got n_arms={n_arms}, dim={dim}")
        self.config = config or LinearBanditConfig()
        self.n_arms = int(n_arms)
        self.dim = int(dim)
        eye = np.eye(self.dim)
        self.A = np.repeat((self.config.l2 * eye)[None], self.n_arms, axis=0)
        self.A_inv = np.repeat((eye / self.config.l2)[None], self.n_arms, axis=0)
        self.b = np.zeros((self.n_arms, self.dim))
        self.theta = np.zeros((self.n_arms, self.dim))
        self.counts = np.zeros(self.n_arms, dtype=np.int64)
        self.rng = np.random.default_rng(self.config.seed)
        self.epsilon_now = float(self.config.epsilon)
        self.last_propensity = np.zeros(0)

    # ------------------------------------------------------------------ checks
    def _check_contexts(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise ValueError(f"contexts must have shape (n, {self.dim}), got {X.shape}")
        if not np.all(np.isfinite(X)):
            raise ValueError("contexts contain NaN or inf")
        return X

    def _check_mask(self, mask: np.ndarray | None, n: int) -> np.ndarray | None:
        if mask is None:
            return None
        m = np.asarray(mask).astype(bool)
        if m.shape != (n, self.n_arms):
            raise ValueError(f"mask must have shape ({n}, {self.n_arms}), got {m.shape}")
        empty = ~m.any(axis=1)
        if empty.any():
            raise ValueError(f"rows {np.flatnonzero(empty)[:5].tolist()} of the mask allow no arm")
        return m

    # ------------------------------------------------------------------ scoring
    def mean(self, X: np.ndarray) -> np.ndarray:
        """Posterior mean x·θ_a: (n, arms) float64 for contexts X (n, d)."""
        return self._check_contexts(X) @ self.theta.T

    def variance(self, X: np.ndarray, chunk: int = 1024) -> np.ndarray:
        """xᵀ A_a⁻¹ x for every (context, arm): (n, arms) float64, ≥ 0.

        One GEMM per chunk of contexts over the upper triangle (A⁻¹ is symmetric):
        ``[x_i x_j]_{i≤j} (n, d(d+1)/2) @ [w_ij A⁻¹_a,ij]ᵀ (d(d+1)/2, arms)`` with ``w`` = 1 on
        the diagonal and 2 off it, half the work of the full quadratic form.
        """
        X = self._check_contexts(X)
        n = X.shape[0]
        iu, ju = np.triu_indices(self.dim)
        w = np.where(iu == ju, 1.0, 2.0)
        M = (self.A_inv[:, iu, ju] * w).T  # (d(d+1)/2, arms)
        out = np.empty((n, self.n_arms))
        for s in range(0, n, chunk):
            x = X[s : s + chunk]
            out[s : s + chunk] = (x[:, iu] * x[:, ju]) @ M
        return np.maximum(out, 0.0)

    def _model_scores(self, X: np.ndarray, n: int, explore: bool) -> np.ndarray:
        """The kind's own scores before any uniform draw: posterior mean, + α√var (LinUCB), +
        v√var·z (TS) when exploring."""
        s = X @ self.theta.T
        if explore:
            kind, alpha = self.config.kind, self.config.alpha_value
            if kind == "linucb" and alpha > 0:
                s = s + alpha * np.sqrt(self.variance(X))
            elif kind == "lin_ts":
                z = self.rng.standard_normal((n, self.n_arms))
                s = s + alpha * np.sqrt(self.variance(X)) * z
        return s

    @property
    def uniform_share(self) -> float:
        """Probability that an exploring choice is a uniformly random valid arm: ε now for
        ε-greedy, ``uniform_explore`` for LinUCB / TS."""
        return self.epsilon_now if self.config.kind == "eps_greedy" else self.config.uniform_explore_value

    def _exploring_parts(self, X: np.ndarray, mask: np.ndarray | None,
                         explore: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | int]:
        """What :meth:`scores` and :meth:`select` share: the kind's own scores with masked arms at
        −inf, and, when exploring with a uniform share, the rows drawn for it (coin, (n,) bool)
        and their uniform random keys (n, arms) with masked arms at −inf (else None, None); last
        the valid arms per row."""
        X = self._check_contexts(X)
        n = X.shape[0]
        m = self._check_mask(mask, n)
        s = self._model_scores(X, n, explore)
        coin = keys = None
        share = self.uniform_share if explore else 0.0
        if share > 0:
            coin = self.rng.random(n) < share
            keys = self.rng.random((n, self.n_arms))
        if m is not None:
            s = np.where(m, s, -np.inf)
            keys = None if keys is None else np.where(m, keys, -np.inf)
        return s, coin, keys, (self.n_arms if m is None else m.sum(axis=1))

    def scores(self, X: np.ndarray, mask: np.ndarray | None = None, *, explore: bool = True) -> np.ndarray:
        """Selection scores (n, arms): masked arms get −inf.

        ``explore=False`` gives the posterior mean for every kind. With ``explore=True``:
        LinUCB adds α√var, TS adds v√var·z (z fresh N(0,1) per pair, from the bandit's generator),
        and the rows drawn for uniform exploration (:attr:`uniform_share`) get uniform random keys
        (so the argmax is a uniformly random valid arm).
        """
        s, coin, keys, _ = self._exploring_parts(X, mask, explore)
        return s if coin is None else np.where(coin[:, None], keys, s)

    def select(self, X: np.ndarray, mask: np.ndarray | None = None, *, explore: bool = True) -> np.ndarray:
        """Arm per context: (n,) int64, argmax of :meth:`scores` (ties → lowest arm index).

        Also sets ``last_propensity`` (n,) float64: the probability that this call picks the arm
        it picked, ``(1 − share)·[arm = the kind's own argmax] + share / valid arms`` with
        ``share`` = :attr:`uniform_share` (1 for the argmax when not exploring); exact for
        LinUCB and ε-greedy, whose own choice is deterministic, and for TS only up to its
        sampling (TS with ``importance_weighted`` is refused)."""
        s, coin, keys, n_valid = self._exploring_parts(X, mask, explore)
        own = np.argmax(s, axis=1).astype(np.int64)
        arms = own if coin is None else np.where(coin, np.argmax(keys, axis=1), own).astype(np.int64)
        share = 0.0 if coin is None else self.uniform_share
        self.last_propensity = (1.0 - share) * (arms == own) + share / n_valid
        return arms

    def importance_weights(self) -> np.ndarray | None:
        """Update weights of the latest exploring :meth:`select` when ``importance_weighted``:
        ``1 / (arms · propensity)`` (a uniformly drawn arm weighs 1 / share, the kind's own
        choice about 1 / arms), else None."""
        if not self.config.importance_weighted_value:
            return None
        return 1.0 / (self.n_arms * self.last_propensity)

    def set_progress(self, frac: float) -> None:
        """Training progress in [0, 1] → ε = epsilon + frac·(epsilon_final − epsilon)."""
        f = min(max(float(frac), 0.0), 1.0)
        self.epsilon_now = self.config.epsilon + f * (self.config.epsilon_final - self.config.epsilon)

    # ------------------------------------------------------------------ updates
    def update(self, arms: np.ndarray, X: np.ndarray, rewards: np.ndarray, method: str | None = None,
               weights: np.ndarray | None = None) -> None:
        """Add observations: arms (n,) ints, contexts X (n, d), rewards (n,) finite floats;
        ``weights`` (n,) > 0 optional per-observation weights (``A += w x xᵀ``, ``b += w r x``).

        ``method`` overrides ``config.update_method`` for this call.
        """
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64).reshape(-1)
            rewards = np.asarray(rewards, dtype=np.float64).reshape(-1)
            if w.shape != rewards.shape or not np.all(np.isfinite(w) & (w > 0)):
                raise ValueError(f"weights must be {rewards.shape[0]} finite values > 0, got shape {w.shape}")
            # a weighted rank-one update is an unweighted one of √w·x and √w·r
            X = np.asarray(X, dtype=np.float64) * np.sqrt(w)[:, None]
            rewards = rewards * np.sqrt(w)
        X = self._check_contexts(X)
        arms = np.asarray(arms).astype(np.int64).reshape(-1)
        r = np.asarray(rewards, dtype=np.float64).reshape(-1)
        n = X.shape[0]
        if arms.shape != (n,) or r.shape != (n,):
            raise ValueError(f"arms {arms.shape} and rewards {r.shape} must both have shape ({n},)")
        if n == 0:
            return
        if arms.min() < 0 or arms.max() >= self.n_arms:
            raise ValueError(f"arm indices must be in [0, {self.n_arms}), got range [{arms.min()}, {arms.max()}]")
        if not np.all(np.isfinite(r)):
            raise ValueError("rewards contain NaN or inf")
        method = method or self.config.update_method
        if method not in UPDATE_METHODS:
            raise ValueError(f"unknown update method {method!r}; expected one of {UPDATE_METHODS}")

        order = np.argsort(arms, kind="stable")  # stable: per-arm samples keep arrival order
        sa, sx = arms[order], X[order]
        starts = np.flatnonzero(np.r_[True, sa[1:] != sa[:-1]])
        touched = sa[starts]
        group_len = np.diff(np.r_[starts, n])
        rank = np.arange(n) - np.repeat(starts, group_len)
        max_rank = int(group_len.max())

        np.add.at(self.b, arms, r[:, None] * X)
        np.add.at(self.counts, arms, 1)
        if method == "auto":
            method = "sherman_morrison" if max_rank <= _SM_MAX_RANK else "refactor"
        if method == "sherman_morrison":
            for k in range(max_rank):
                sel = rank == k
                a, x = sa[sel], sx[sel]  # distinct arms
                self.A[a] += x[:, :, None] * x[:, None, :]
                u = np.einsum("aij,aj->ai", self.A_inv[a], x)  # A⁻¹x (A⁻¹ symmetric)
                denom = 1.0 + np.einsum("ai,ai->a", x, u)
                self.A_inv[a] -= u[:, :, None] * u[:, None, :] / denom[:, None, None]
        else:
            self._add_outer_grouped(sa, sx)
            self.A_inv[touched] = _spd_inverse(self.A[touched])
        self.theta[touched] = np.einsum("aij,aj->ai", self.A_inv[touched], self.b[touched])

    def _add_outer_grouped(self, sorted_arms: np.ndarray, sorted_X: np.ndarray, chunk: int = 1024) -> None:
        """A[a] += Σ x xᵀ over the (arm-sorted) samples, summing each arm's run with reduceat.

        Chunked so the (chunk, d, d) temporary stays small whatever the batch size.
        """
        n = sorted_X.shape[0]
        for s in range(0, n, chunk):
            a, x = sorted_arms[s : s + chunk], sorted_X[s : s + chunk]
            st = np.flatnonzero(np.r_[True, a[1:] != a[:-1]])
            sums = np.add.reduceat(x[:, :, None] * x[:, None, :], st, axis=0)
            self.A[a[st]] += sums  # arms within one chunk are distinct after the reduce

    def refresh(self) -> None:
        """Recompute ``A_inv`` and ``theta`` from ``A`` and ``b`` (removes any Sherman–Morrison drift)."""
        self.A_inv = _spd_inverse(self.A)
        self.theta = np.einsum("aij,aj->ai", self.A_inv, self.b)

    # ------------------------------------------------------------------ state
    def state_arrays(self) -> dict[str, np.ndarray]:
        return {"A": self.A, "A_inv": self.A_inv, "b": self.b, "theta": self.theta, "counts": self.counts}

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        for name, ref in self.state_arrays().items():
            arr = np.asarray(arrays[name])
            if arr.shape != ref.shape:
                raise ValueError(f"bandit state {name!r} has shape {arr.shape}, expected {ref.shape}")
        self.A = np.array(arrays["A"], dtype=np.float64)
        self.A_inv = np.array(arrays["A_inv"], dtype=np.float64)
        self.b = np.array(arrays["b"], dtype=np.float64)
        self.theta = np.array(arrays["theta"], dtype=np.float64)
        self.counts = np.array(arrays["counts"], dtype=np.int64)


# ============================================================================ context features
@dataclass
class FeaturizerConfig:
    """What goes into the bandit context (see the module docstring).

    Attributes:
        lang_components: PCA components kept of the language feature (whitened); 0 drops it.
            Fitted on the observations given to :meth:`ContextFeaturizer.fit`. Default 4: on the
            live-built default cache the language feature is what tells the tasks apart, which
            is most of the observable signal there (a static table per task gains +0.007 over
            static), and LinUCB with 4 components scores −0.0021 / +0.0021 / +0.0034 against
            static for seeds 0-2 where without it −0.0118 / −0.0092 / −0.0068 (test, 8 budgets,
            benchmarks/RESULTS.md "Agents on the live-built default"). On the SYNTHETIC default
            it lowered every bandit's held-out reward (LinUCB: 4 components 0.6678 vs none
            0.6716 at 600k steps, 0.6652 vs 0.6745 at 2.4M), whose language feature carries no
            task-level signal that the budget features do not. ``benchmarks/bench_ppo_bandits.py``
            re-measures it (agent ``linucb_nolang``).
        rbf_centers: Gaussian bumps over u = (budget − cheapest)/(full − cheapest), evenly spaced
            on ``rbf_range``; width = their spacing. 0 disables them.
        rbf_range: (lo, hi) of the bump centres in units of u.
        budget_encoding_dim: width of the shared :class:`agents.budget_encoding.BudgetEncoding`
            appended (its first 4 raw entries are dropped, they are already in); 0 = none.
            Keep it small (≤ ~32): the bandit's cost grows with d² per arm.
        budget_encoding_quantities: quantities of that encoding.
        tier_rbf_centers: Gaussian bumps (same range and width rule as ``rbf_centers``) over the
            budget's position *within each tier's own latency span*, u_t = (budget − cheapest_t) /
            (full_t − cheapest_t), where cheapest_t / full_t are the request's cheapest / full
            latency moved by that tier's TTFT difference (``obs["request"]``'s per-tier TTFT at the
            cheapest and full language-model configuration). A configuration's hinge step sits at
            a fixed u_t of its own tier far more nearly than at a fixed u, since a tier's cost
            share moves with the request's crop count; these bumps let its linear model place the
            step per request. T·tier_rbf_centers features; needs ``use_request``. 0 = off.
        lang_clusters: K > 0 groups the requests by their language feature (k-means on the
            whitened PCA components, fitted once with the rest; needs ``lang_components`` > 0) and
            adds, per group, an indicator and ``cluster_rbf_centers`` bumps over u that are zero
            outside the group: each arm's linear model then gets its own budget curve per group of
            questions, which the additive PCA and budget terms cannot give it (a request's task
            shifts the whole step of reward against budget, not one offset). 0 = off.
        cluster_rbf_centers: bumps over u per group (same range and width rule as ``rbf_centers``).
        use_request: :func:`train_bandit` fits the featurizer on ``obs["request"]`` too (the
            request's token counts and per-tier TTFT, z-scored, in the context).
            Both are off by default: on the live-built default (v5, val split, seeds 0-2) neither
            raised LinUCB's reward over the default context (benchmarks/RESULTS.md, "Agents on
            the live-built default", v5).
    """

    lang_components: int = 4
    rbf_centers: int = 20
    rbf_range: tuple[float, float] = (-0.1, 1.1)
    budget_encoding_dim: int = 0
    budget_encoding_quantities: tuple[str, ...] = ("pos",)
    tier_rbf_centers: int = 0
    lang_clusters: int = 0
    cluster_rbf_centers: int = 8
    use_request: bool = False

    def __post_init__(self) -> None:
        self.rbf_range = tuple(float(v) for v in self.rbf_range)  # type: ignore[assignment]
        self.budget_encoding_quantities = tuple(self.budget_encoding_quantities)
        if min(self.lang_components, self.rbf_centers, self.budget_encoding_dim, self.tier_rbf_centers,
               self.lang_clusters, self.cluster_rbf_centers) < 0:
            raise ValueError("lang_components, rbf_centers, budget_encoding_dim, tier_rbf_centers, lang_clusters and "
                             "cluster_rbf_centers must be >= 0")
        if self.lang_clusters and not self.lang_components:
            raise ValueError("lang_clusters groups the requests on the language feature's PCA components: it needs "
                             "lang_components > 0")
        if len(self.rbf_range) != 2 or not self.rbf_range[0] < self.rbf_range[1]:
            raise ValueError(f"rbf_range must be (lo, hi) with lo < hi, got {self.rbf_range}")


def _request_tiers(width: int) -> int:
    """Tiers T of an ``obs["request"]`` row of ``width`` entries (layout 4·T + 3, ``envs.replay_data``);
    ValueError for a width that layout cannot have."""
    if width < 3 or (width - 3) % 4:
        raise ValueError(f"obs['request'] has {width} entries, not the 4·T + 3 of the env's layout")
    return (width - 3) // 4


def _sq_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance of every point (n, D) to every centre (k, D): (n, k)."""
    return ((points[:, None] - centres[None]) ** 2).sum(-1)


def _kmeans(points: np.ndarray, k: int, seed: int = 0, restarts: int = 4, iterations: int = 50) -> np.ndarray:
    """Centres (k, D) of Lloyd's k-means on ``points`` (n, D), k-means++ seeding, the best of
    ``restarts`` by inertia; deterministic for a given ``seed``."""
    rng = np.random.default_rng(seed)
    k = min(k, points.shape[0])
    best, best_inertia = None, np.inf
    for _ in range(restarts):
        centres = [points[rng.integers(points.shape[0])]]
        for _ in range(1, k):
            d2 = _sq_distances(points, np.asarray(centres)).min(1)
            total = d2.sum()
            centres.append(points[rng.choice(points.shape[0], p=d2 / total)] if total > 0 else points[rng.integers(points.shape[0])])
        c = np.asarray(centres)
        for _ in range(iterations):
            assign = _sq_distances(points, c).argmin(1)
            new = np.stack([points[assign == j].mean(0) if np.any(assign == j) else c[j] for j in range(k)])
            if np.allclose(new, c):
                break
            c = new
        inertia = ((points - c[_sq_distances(points, c).argmin(1)]) ** 2).sum()
        if inertia < best_inertia:
            best, best_inertia = c, inertia
    return best


class ContextFeaturizer:
    """Maps a flat-env observation batch to bandit contexts ``(n, dim)`` float64.

    Layout: ``[1 | PCA(lang) (k) | z-scored obs["budget"] (4) | u, u² (2) | RBF(u) (R) |
    shared budget encoding without its raw part (E − 4) | z-scored obs["request"] (R_q) |
    RBF(u_t) per tier (T·R_t) | per language group g: [g is the request's] · [1, RBF(u) (R_c)] (K·(1 + R_c))]``;
    the request parts only when the observations :meth:`fit` saw carry ``request`` (then every
    observation must). The PCA basis and the z-score
    statistics are fitted once (:meth:`fit`) and then frozen, so contexts of one request never
    change during training. PCA components are scaled to unit variance on the fit data.
    """

    def __init__(self, config: FeaturizerConfig | None = None) -> None:
        self.config = config or FeaturizerConfig()
        self.lang_mean: np.ndarray | None = None  # (Dl,)
        self.lang_basis: np.ndarray | None = None  # (Dl, k): projection incl. 1/σ of each component
        self.budget_mean: np.ndarray | None = None  # (4,)
        self.budget_std: np.ndarray | None = None  # (4,)
        self.request_mean: np.ndarray | None = None  # (R_q,) when fitted on obs with "request"
        self.request_std: np.ndarray | None = None
        self.lang_centers: np.ndarray | None = None  # (K, k): k-means centres in the PCA space
        self._encoding = None
        if self.config.budget_encoding_dim:
            from agents.budget_encoding import BudgetEncoding

            self._encoding = BudgetEncoding(
                dim=self.config.budget_encoding_dim, quantities=self.config.budget_encoding_quantities
            )

    @property
    def fitted(self) -> bool:
        return self.budget_mean is not None

    @property
    def dim(self) -> int:
        if not self.fitted:
            raise ValueError("ContextFeaturizer is not fitted; call fit(obs) first")
        k = 0 if self.lang_basis is None else self.lang_basis.shape[1]
        e = 0 if self._encoding is None else self.config.budget_encoding_dim - 4
        q = 0 if self.request_mean is None else self.request_mean.shape[0]
        t = self.n_tiers * self.config.tier_rbf_centers if self.config.tier_rbf_centers else 0
        c = 0 if self.lang_centers is None else self.lang_centers.shape[0] * (1 + self.config.cluster_rbf_centers)
        return 1 + k + 4 + 2 + self.config.rbf_centers + e + q + t + c

    @property
    def n_tiers(self) -> int:
        """Tiers in the fitted ``obs["request"]`` (0 when not fitted on it)."""
        return 0 if self.request_mean is None else _request_tiers(self.request_mean.shape[0])

    @staticmethod
    def _arrays(obs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        for key in ("lang", "budget"):
            if key not in obs:
                raise ValueError(f"observation lacks key {key!r} (flat-env Dict obs expected), has {sorted(obs)}")
        lang = np.asarray(obs["lang"], dtype=np.float64)
        budget = np.asarray(obs["budget"], dtype=np.float64)
        if lang.ndim == 1:
            lang, budget = lang[None], budget[None]
        if budget.ndim != 2 or budget.shape[1] != 4 or lang.shape[0] != budget.shape[0]:
            raise ValueError(f"expected lang (n, Dl) and budget (n, 4), got {lang.shape} and {budget.shape}")
        return lang, budget

    def fit(self, obs: Mapping[str, np.ndarray]) -> "ContextFeaturizer":
        """Fit the PCA basis of ``obs["lang"]`` (n, Dl) and z-score stats of ``obs["budget"]`` (n, 4)."""
        lang, budget = self._arrays(obs)
        if lang.shape[0] < 2:
            raise ValueError("need at least 2 observations to fit the featurizer")
        self.budget_mean = budget.mean(axis=0)
        self.budget_std = np.where(budget.std(axis=0) > 1e-8, budget.std(axis=0), 1.0)
        if "request" in obs:
            req = np.asarray(obs["request"], dtype=np.float64).reshape(lang.shape[0], -1)
            self.request_mean = req.mean(axis=0)
            self.request_std = np.where(req.std(axis=0) > 1e-8, req.std(axis=0), 1.0)
        else:
            self.request_mean = self.request_std = None
        if self.config.tier_rbf_centers and self.request_mean is None:
            raise ValueError("tier_rbf_centers needs obs['request'] (the per-tier TTFT; features.use_request=true in train_bandit); these observations lack it")
        if self.config.tier_rbf_centers:
            _request_tiers(self.request_mean.shape[0])
        k = min(self.config.lang_components, lang.shape[1], lang.shape[0] - 1)
        if k > 0:
            self.lang_mean = lang.mean(axis=0)
            _, s, vt = np.linalg.svd(lang - self.lang_mean, full_matrices=False)
            sd = s[:k] / math.sqrt(lang.shape[0] - 1)
            keep = sd > 1e-8 * max(sd[0], 1e-300)
            self.lang_basis = (vt[:k][keep] / sd[keep][:, None]).T
            # fix the sign of each component (SVD signs are arbitrary) for reproducible contexts
            signs = np.sign(self.lang_basis[np.argmax(np.abs(self.lang_basis), axis=0), np.arange(self.lang_basis.shape[1])])
            self.lang_basis = self.lang_basis * signs
        else:
            self.lang_mean, self.lang_basis = None, None
        self.lang_centers = None
        if self.config.lang_clusters and self.lang_basis is not None:
            # cluster the distinct requests: every (request, budget) context repeats its request's language feature
            z = np.unique((lang - self.lang_mean) @ self.lang_basis, axis=0)
            self.lang_centers = _kmeans(z, self.config.lang_clusters)
        return self

    def budget_position(self, budget: np.ndarray) -> np.ndarray:
        """u = (budget − cheapest)/(full − cheapest) for obs["budget"] rows (n, 4) → (n,)."""
        return (budget[:, 0] - budget[:, 1]) / np.maximum(budget[:, 2] - budget[:, 1], 1e-6)

    def tier_positions(self, budget: np.ndarray, request: np.ndarray) -> np.ndarray:
        """u_t per tier (n, T) (see ``FeaturizerConfig.tier_rbf_centers``). ``budget`` and the
        request's TTFT entries share the env's latency scale; the decode part of the cheapest /
        full latency is taken as the same in every tier."""
        T = _request_tiers(request.shape[1])
        ttft_cheap = request[:, 2 * T + 1 : 3 * T + 1]
        ttft_full = request[:, 3 * T + 1 : 4 * T + 1]
        cheap_t = budget[:, 1:2] + ttft_cheap - ttft_cheap[:, :1]
        full_t = budget[:, 2:3] + ttft_full - ttft_full[:, -1:]
        return (budget[:, :1] - cheap_t) / np.maximum(full_t - cheap_t, 1e-6)

    def _bumps(self, u: np.ndarray, n_centers: int) -> np.ndarray:
        """Gaussian bumps over ``rbf_range``: (n,) → (n, R); (n, T) → (n, T·R)."""
        lo, hi = self.config.rbf_range
        centers = np.linspace(lo, hi, n_centers)
        width = (hi - lo) / max(n_centers - 1, 1)
        out = np.exp(-0.5 * ((u[..., None] - centers) / width) ** 2)
        return out.reshape(u.shape[0], -1)

    def transform(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Observation batch (``lang`` (n, Dl), ``budget`` (n, 4)) → contexts (n, dim) float64."""
        if not self.fitted:
            raise ValueError("ContextFeaturizer is not fitted; call fit(obs) first")
        lang, budget = self._arrays(obs)
        n = lang.shape[0]
        parts = [np.ones((n, 1))]
        z = None  # the PCA components: the language groups are found in their space
        if self.lang_basis is not None:
            if lang.shape[1] != self.lang_basis.shape[0]:
                raise ValueError(f"lang feature width {lang.shape[1]} != fitted width {self.lang_basis.shape[0]}")
            z = (lang - self.lang_mean) @ self.lang_basis
            parts.append(z)
        parts.append((budget - self.budget_mean) / self.budget_std)
        u = self.budget_position(budget)
        parts.append(np.stack([u, u * u], axis=1))
        if self.config.rbf_centers:
            parts.append(self._bumps(u, self.config.rbf_centers))
        if self._encoding is not None:
            parts.append(self._encoding(budget)[:, 4:].astype(np.float64))
        if self.request_mean is not None:
            if "request" not in obs:
                raise ValueError("the featurizer was fitted with obs['request']; this observation lacks it")
            req = np.asarray(obs["request"], dtype=np.float64).reshape(n, -1)
            if req.shape[1] != self.request_mean.shape[0]:
                raise ValueError(f"obs['request'] has {req.shape[1]} entries, the featurizer was fitted on {self.request_mean.shape[0]}")
            parts.append((req - self.request_mean) / self.request_std)
            if self.config.tier_rbf_centers:
                parts.append(self._bumps(self.tier_positions(budget, req), self.config.tier_rbf_centers))
        if self.lang_centers is not None:  # fitted only with the PCA basis, so z is set
            group = _sq_distances(z, self.lang_centers).argmin(1)
            per_group = np.concatenate([np.ones((n, 1)), self._bumps(u, self.config.cluster_rbf_centers)], axis=1)
            onehot = np.zeros((n, self.lang_centers.shape[0]))
            onehot[np.arange(n), group] = 1.0
            parts.append((onehot[:, :, None] * per_group[:, None, :]).reshape(n, -1))
        X = np.concatenate(parts, axis=1)
        if not np.all(np.isfinite(X)):
            raise ValueError("non-finite context features (check obs['budget'] / obs['lang'])")
        return X

    def state_arrays(self) -> dict[str, np.ndarray]:
        if not self.fitted:
            raise ValueError("ContextFeaturizer is not fitted")
        out = {"feat_budget_mean": self.budget_mean, "feat_budget_std": self.budget_std}
        if self.lang_basis is not None:
            out["feat_lang_mean"] = self.lang_mean
            out["feat_lang_basis"] = self.lang_basis
        if self.request_mean is not None:
            out["feat_request_mean"] = self.request_mean
            out["feat_request_std"] = self.request_std
        if self.lang_centers is not None:
            out["feat_lang_centers"] = self.lang_centers
        return out

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.budget_mean = np.asarray(arrays["feat_budget_mean"], dtype=np.float64)
        self.budget_std = np.asarray(arrays["feat_budget_std"], dtype=np.float64)
        if "feat_lang_basis" in arrays:
            self.lang_mean = np.asarray(arrays["feat_lang_mean"], dtype=np.float64)
            self.lang_basis = np.asarray(arrays["feat_lang_basis"], dtype=np.float64)
        else:
            self.lang_mean, self.lang_basis = None, None
        if "feat_request_mean" in arrays:
            self.request_mean = np.asarray(arrays["feat_request_mean"], dtype=np.float64)
            self.request_std = np.asarray(arrays["feat_request_std"], dtype=np.float64)
        else:
            self.request_mean = self.request_std = None
        self.lang_centers = np.asarray(arrays["feat_lang_centers"], dtype=np.float64) if "feat_lang_centers" in arrays else None


# ============================================================================ policy (evaluator API)
def _mask_from(obs: Mapping[str, np.ndarray], info: Mapping[str, Any] | None, n: int, n_arms: int) -> np.ndarray | None:
    """The (n, arms) bool action mask from ``obs["action_mask"]`` (else ``info["action_mask"]``)."""
    m = obs.get("action_mask") if hasattr(obs, "get") else None
    if m is None and info is not None and hasattr(info, "get"):
        m = info.get("action_mask")
    if m is None:
        return None
    m = np.asarray(m).astype(bool).reshape(n, -1)
    if m.shape[1] != n_arms:
        raise ValueError(f"action mask has {m.shape[1]} entries per row, the bandit has {n_arms} arms")
    return m


class BanditPolicy:
    """A fitted :class:`ContextFeaturizer` + :class:`LinearBandit`, as a ``FlatPolicy``.

    :meth:`act` is greedy (posterior mean, masks respected) — the evaluation behaviour;
    :meth:`act_explore` is the training behaviour of the bandit's kind.
    ``provenance``: the training data's label (``cache_label``, ``synthetic``, ``generator``,
    ``model_id``; :func:`cache.reader.data_label`), written into ``config.json`` by :meth:`save`.
    """

    provenance: dict[str, Any] | None = None

    def __init__(self, bandit: LinearBandit, featurizer: ContextFeaturizer, name: str | None = None) -> None:
        if featurizer.dim != bandit.dim:
            raise ValueError(f"featurizer dim {featurizer.dim} != bandit dim {bandit.dim}")
        self.bandit = bandit
        self.featurizer = featurizer
        self.name = name or bandit.config.kind

    def _prepare(self, obs: Mapping[str, np.ndarray], info: Mapping[str, Any] | None) -> tuple[np.ndarray, np.ndarray | None]:
        X = self.featurizer.transform(obs)
        return X, _mask_from(obs, info, X.shape[0], self.bandit.n_arms)

    def act(self, obs: Mapping[str, np.ndarray], info: Mapping[str, Any] | None = None) -> np.ndarray:
        """Greedy configuration index per row: (n,) int64."""
        X, m = self._prepare(obs, info)
        return self.bandit.select(X, m, explore=False)

    def act_explore(self, obs: Mapping[str, np.ndarray], info: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exploring choice per row and the contexts used: ((n,) int64, (n, d) float64)."""
        X, m = self._prepare(obs, info)
        return self.bandit.select(X, m, explore=True), X

    def save(self, directory: str | Path) -> Path:
        """Write ``bandit.npz`` (model + featurizer arrays) and ``config.json``; returns the dir."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        arrays = {**self.bandit.state_arrays(), **self.featurizer.state_arrays()}
        np.savez(d / "bandit.npz", **arrays)
        cfg = {
            "format": "molmoe-gym-linear-bandit",
            "version": 1,
            "name": self.name,
            "n_arms": self.bandit.n_arms,
            "dim": self.bandit.dim,
            "bandit": asdict(self.bandit.config),
            "features": {**asdict(self.featurizer.config),
                         "rbf_range": list(self.featurizer.config.rbf_range),
                         "budget_encoding_quantities": list(self.featurizer.config.budget_encoding_quantities)},
            **(self.provenance or {}),
        }
        (d / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "BanditPolicy":
        d = Path(directory)
        cfg_path, npz_path = d / "config.json", d / "bandit.npz"
        if not cfg_path.is_file() or not npz_path.is_file():
            raise ValueError(f"{d} is not a saved bandit policy (needs config.json and bandit.npz)")
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("format") != "molmoe-gym-linear-bandit":
            raise ValueError(f"{cfg_path} is not a molmoe-gym bandit config (format={cfg.get('format')!r})")
        feat = ContextFeaturizer(FeaturizerConfig(**cfg["features"]))
        bandit = LinearBandit(cfg["n_arms"], cfg["dim"], LinearBanditConfig(**cfg["bandit"]))
        with np.load(npz_path) as z:
            arrays = {k: z[k] for k in z.files}
        feat.load_state_arrays(arrays)
        bandit.load_state_arrays(arrays)
        pol = cls(bandit, feat, name=cfg.get("name"))
        pol.provenance = {k: cfg[k] for k in LABEL_KEYS if k in cfg} or None
        return pol


# ============================================================================ training
@dataclass
class BanditTrainConfig:
    """Settings of :func:`train_bandit`.

    Attributes:
        bandit: the linear model / exploration settings (``kind`` is set by ``train_bandit``).
        features: the context featurizer settings.
        total_steps: env steps (= observed (context, arm, reward) triples) to train for.
        num_envs: contexts scored and updated per round (the native flat vector env's size).
        featurizer_samples: observations drawn (unpinned resets) to fit the featurizer.
        refresh_every: rounds between exact re-inversions of all ``A`` (bounds the
            floating-point drift of long Sherman–Morrison chains); 0 = never.
        log_every: rounds between rows of ``progress.csv``.
        blas_threads: BLAS threads while training (via ``threadpoolctl`` when installed; no-op
            otherwise). The per-round matrices are small, and multi-threaded OpenBLAS on shared
            cores is far slower than one thread (on a loaded 2-core machine, scoring 256 contexts ×
            225 arms took some fifty times longer with the default threads than with one).
        seed: seed of the run: the env draws and the bandit's own generator (it replaces
            ``bandit.seed``).
    """

    bandit: LinearBanditConfig = field(default_factory=LinearBanditConfig)
    features: FeaturizerConfig = field(default_factory=FeaturizerConfig)
    total_steps: int = 2_000_000
    num_envs: int = 256
    featurizer_samples: int = 4096
    refresh_every: int = 100
    log_every: int = 20
    blas_threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.bandit, Mapping):
            self.bandit = LinearBanditConfig(**self.bandit)
        if isinstance(self.features, Mapping):
            self.features = FeaturizerConfig(**self.features)
        for name in ("total_steps", "num_envs", "featurizer_samples", "log_every", "blas_threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.refresh_every < 0:
            raise ValueError(f"refresh_every must be >= 0, got {self.refresh_every}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"]["rbf_range"] = list(self.features.rbf_range)
        d["features"]["budget_encoding_quantities"] = list(self.features.budget_encoding_quantities)
        return d


@dataclass
class BanditTrainResult:
    """What :func:`train_bandit` returns."""

    policy: BanditPolicy
    log_dir: Path
    policy_dir: Path
    wall_s: float
    steps: int
    summary: dict


def blas_threads(n: int):
    """Context limiting BLAS threads to ``n`` (threadpoolctl when installed, else a no-op)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=int(n), user_api="blas")


def _run_rounds(policy: BanditPolicy, venv: Any, obs: dict[str, np.ndarray], n_rounds: int,
                cfg: BanditTrainConfig, rows: list[dict[str, float]], progress: bool = False,
                cache_label: str = "") -> None:
    """The training rounds of :func:`train_bandit`; appends ``progress.csv`` rows to ``rows``;
    ``progress``: a tqdm bar over env steps (stderr), labelled with ``cache_label``."""
    bandit = policy.bandit
    acc = {"reward": 0.0, "score": 0.0, "violation": 0.0, "n": 0}
    t_learn = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        desc = bandit.config.kind + (f" [{cache_label}]" if cache_label else "")
        bar = tqdm(total=n_rounds * cfg.num_envs, unit="step", unit_scale=True, desc=desc,
                   mininterval=0.5)
    try:
        _rounds(policy, venv, obs, n_rounds, cfg, rows, acc, t_learn, bar)
    finally:
        if bar is not None:
            bar.close()


def _rounds(policy: BanditPolicy, venv: Any, obs: dict[str, np.ndarray], n_rounds: int, cfg: BanditTrainConfig,
            rows: list[dict[str, float]], acc: dict[str, float], t_learn: float, bar: Any) -> None:
    bandit = policy.bandit
    for rnd in range(n_rounds):
        bandit.set_progress(rnd / n_rounds)
        arms, X = policy.act_explore(obs)
        weights = bandit.importance_weights()
        obs, reward, _, _, info = venv.step(arms)
        bandit.update(arms, X, reward, weights=weights)
        if cfg.refresh_every and (rnd + 1) % cfg.refresh_every == 0:
            bandit.refresh()
        fin = info["final_info"]
        acc["reward"] += float(np.sum(reward))
        acc["score"] += float(np.nansum(fin["score"]))
        acc["violation"] += float(np.sum(fin["violation"]))
        acc["n"] += int(reward.shape[0])
        if (rnd + 1) % cfg.log_every == 0 or rnd == n_rounds - 1:
            n = max(acc["n"], 1)
            rows.append({"round": rnd + 1, "steps": (rnd + 1) * cfg.num_envs, "reward_mean": acc["reward"] / n,
                         "score_mean": acc["score"] / n, "violation_rate": acc["violation"] / n,
                         "epsilon": bandit.epsilon_now, "wall_s": time.perf_counter() - t_learn})
            if bar is not None:
                bar.set_postfix(reward=f"{acc['reward'] / n:.3f}", refresh=False)
            acc.update(reward=0.0, score=0.0, violation=0.0, n=0)
        if bar is not None:
            bar.update(cfg.num_envs)


def train_bandit(kind: str, env_kwargs: Mapping[str, Any], cfg: BanditTrainConfig | None = None,
                 log_dir: str | Path = "outputs/bandit", progress: bool = False) -> BanditTrainResult:
    """Train a contextual bandit of ``kind`` (:data:`BANDIT_KINDS` or an alias) on ``MolmoeKnobsFlat-v0``.

    Each round: the native flat vector env's ``num_envs`` observations → contexts, one batched
    exploring choice, one env step (which ends every episode and draws fresh requests and
    budgets, same-step autoreset), one batched update with the env rewards. Writes
    ``log_dir/progress.csv`` (round, steps, mean reward / score / violation rate of the round's
    choices, ε, wall seconds), ``log_dir/policy/`` (:meth:`BanditPolicy.save`) and
    ``log_dir/summary.json``; returns a :class:`BanditTrainResult`. ``progress``: a tqdm bar
    over env steps on stderr (like GRPO's progress lines).
    """
    from envs.vector_env import MolmoeKnobsFlatVectorEnv  # lazy: keeps `import agents.bandits` numpy-only

    kind = canonical_kind(kind)
    cfg = cfg or BanditTrainConfig()
    # one seed for the whole run: the env draws and the bandit's own generator
    bcfg = LinearBanditConfig(**{**asdict(cfg.bandit), "kind": kind, "seed": cfg.seed})
    # the kind's defaults written out, so the saved config says how the policy was trained
    bcfg = replace(bcfg, uniform_explore=bcfg.uniform_explore_value, importance_weighted=bcfg.importance_weighted_value)
    log = Path(log_dir)
    log.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    venv = MolmoeKnobsFlatVectorEnv(cfg.num_envs, **dict(env_kwargs))
    from cache.reader import data_label  # lazy: h5py

    label = data_label(venv.data.source, venv.data.synthetic)
    # featurizer fit on the env's own draws (no access to the data behind the env)
    batches, got, k = [], 0, 0
    while got < cfg.featurizer_samples:
        o, _ = venv.reset(seed=cfg.seed + 7919 * (k + 1))
        batches.append(o)
        got += o["lang"].shape[0]
        k += 1
    keys = [key for key in ("lang", "budget", "request") if key in batches[0] and (key != "request" or cfg.features.use_request)]
    fit_obs = {key: np.concatenate([b[key] for b in batches])[: cfg.featurizer_samples] for key in keys}
    featurizer = ContextFeaturizer(cfg.features).fit(fit_obs)
    bandit = LinearBandit(int(venv.single_action_space.n), featurizer.dim, bcfg)
    policy = BanditPolicy(bandit, featurizer, name=kind)
    policy.provenance = label

    n_rounds = max(1, math.ceil(cfg.total_steps / cfg.num_envs))
    obs, _ = venv.reset(seed=cfg.seed)
    rows: list[dict[str, float]] = []
    t_learn = time.perf_counter()
    with blas_threads(cfg.blas_threads):
        _run_rounds(policy, venv, obs, n_rounds, cfg, rows, progress, label["cache_label"])
    learn_s = time.perf_counter() - t_learn
    venv.close()
    with open(log / "progress.csv", "w") as fh:
        cols = list(rows[0])
        fh.write(",".join(cols) + "\n")
        for r in rows:
            fh.write(",".join(f"{r[c]:.6g}" for c in cols) + "\n")
    policy_dir = policy.save(log / "policy")
    steps = n_rounds * cfg.num_envs
    wall = time.perf_counter() - t0
    summary = {
        "agent": kind,
        "env_id": "MolmoeKnobsFlat-v0",
        **label,
        "env_kwargs": {k: (v if isinstance(v, (str, int, float, bool, list, type(None))) else repr(v))
                       for k, v in env_kwargs.items()},
        "config": cfg.to_dict() | {"bandit": asdict(bcfg)},
        "context_dim": featurizer.dim,
        "steps": steps,
        "rounds": n_rounds,
        "wall_s": wall,
        "learn_s": learn_s,
        "steps_per_s": steps / max(learn_s, 1e-9),
        "final_rows": rows[-3:],
    }
    (log / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return BanditTrainResult(policy, log, policy_dir, wall, steps, summary)
