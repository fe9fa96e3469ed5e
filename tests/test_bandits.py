"""Contextual bandits (agents/bandits.py): update math vs a naive per-sample reference, masks,
save/load, the mabwiser cross-check and a smoke training run on tiny replay data."""

from __future__ import annotations

import numpy as np
import pytest

from agents.bandits import (
    BanditPolicy,
    ContextFeaturizer,
    FeaturizerConfig,
    LinearBandit,
    LinearBanditConfig,
)


# ----------------------------------------------------------------------------- naive reference
class NaiveLinear:
    """Per-arm ridge regression, updated one sample at a time with explicit inverses."""

    def __init__(self, n_arms: int, d: int, l2: float) -> None:
        self.A = [l2 * np.eye(d) for _ in range(n_arms)]
        self.b = [np.zeros(d) for _ in range(n_arms)]

    def update(self, arms, X, r) -> None:
        for a, x, y in zip(arms, X, r):
            self.A[a] = self.A[a] + np.outer(x, x)
            self.b[a] = self.b[a] + y * x

    def stats(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, variance) per arm for one context x."""
        mean, var = [], []
        for A, b in zip(self.A, self.b):
            Ai = np.linalg.inv(A)
            mean.append(x @ Ai @ b)
            var.append(x @ Ai @ x)
        return np.array(mean), np.array(var)


def _stream(seed: int, n_arms: int, d: int, rounds: int, batch: int):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(n_arms, d))
    for _ in range(rounds):
        X = rng.normal(size=(batch, d))
        yield X, W, rng


@pytest.mark.parametrize("method", ["sherman_morrison", "refactor", "auto"])
@pytest.mark.parametrize("kind", ["linucb", "lin_ts", "eps_greedy"])
def test_update_and_choices_match_naive_reference(kind: str, method: str) -> None:
    n_arms, d, alpha, l2 = 6, 4, 0.7, 0.5
    # the kind's own rule (LinUCB's default uniform share and weights are tested below)
    bandit = LinearBandit(n_arms, d, LinearBanditConfig(kind=kind, alpha=alpha, l2=l2, epsilon=0.3,
                                                        uniform_explore=0.0, importance_weighted=False,
                                                        update_method=method, seed=3))
    ref = NaiveLinear(n_arms, d, l2)
    ref_rng = np.random.default_rng(3)  # replays the bandit's own draws, in the same order
    for X, W, rng in _stream(1, n_arms, d, rounds=12, batch=9):
        mask = rng.random((9, n_arms)) < 0.7
        mask[:, 0] = True
        arms = bandit.select(X, mask, explore=True)
        # reference choice: one context at a time
        n = X.shape[0]
        if kind == "lin_ts":
            z = ref_rng.standard_normal((n, n_arms))
        elif kind == "eps_greedy":
            coin = ref_rng.random(n) < 0.3
            keys = ref_rng.random((n, n_arms))
        expect = []
        for i, x in enumerate(X):
            mean, var = ref.stats(x)
            if kind == "linucb":
                s = mean + alpha * np.sqrt(var)
            elif kind == "lin_ts":
                s = mean + alpha * np.sqrt(var) * z[i]
            else:
                s = keys[i] if coin[i] else mean
            s = np.where(mask[i], s, -np.inf)
            expect.append(s)
        # arms never pulled share the prior's score exactly: any of a tie is a correct choice
        got = np.array([s[a] for s, a in zip(expect, arms)])
        best = np.array([s.max() for s in expect])
        np.testing.assert_allclose(got, best, rtol=0, atol=1e-9)
        assert mask[np.arange(n), arms].all()
        # skewed arms so that several samples of one arm land in one batch
        arms = np.where(rng.random(n) < 0.5, arms, 1)
        r = np.einsum("nd,nd->n", X, W[arms]) + 0.1 * rng.normal(size=n)
        bandit.update(arms, X, r)
        ref.update(arms, X, r)
    for a in range(n_arms):
        np.testing.assert_allclose(bandit.A[a], ref.A[a], atol=1e-8, rtol=0)
        np.testing.assert_allclose(bandit.A_inv[a], np.linalg.inv(ref.A[a]), atol=1e-8, rtol=0)
        np.testing.assert_allclose(bandit.b[a], ref.b[a], atol=1e-8, rtol=0)
        np.testing.assert_allclose(bandit.theta[a], np.linalg.solve(ref.A[a], ref.b[a]), atol=1e-8, rtol=0)
    assert bandit.counts.sum() == 12 * 9


def test_large_multiplicity_refactor_equals_sherman_morrison() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 5))
    arms = rng.integers(0, 3, size=3000)  # ~1000 samples per arm in one update
    r = rng.normal(size=3000)
    sm = LinearBandit(3, 5, LinearBanditConfig(update_method="sherman_morrison"))
    rf = LinearBandit(3, 5, LinearBanditConfig(update_method="refactor"))
    sm.update(arms, X, r)
    rf.update(arms, X, r)
    np.testing.assert_allclose(sm.A, rf.A, atol=1e-8)
    np.testing.assert_allclose(sm.A_inv, rf.A_inv, atol=1e-8)
    np.testing.assert_allclose(sm.theta, rf.theta, atol=1e-8)


def test_linucb_learns_best_arm_per_context() -> None:
    """Arm 0 pays when x1 > 0, arm 1 when x1 < 0, arm 2 never: greedy must find that."""
    rng = np.random.default_rng(0)
    bandit = LinearBandit(3, 2, LinearBanditConfig(kind="linucb", alpha=0.5))
    for _ in range(60):
        x1 = rng.uniform(-1, 1, size=32)
        X = np.stack([np.ones(32), x1], axis=1)
        arms = bandit.select(X)
        truth = np.stack([x1, -x1, np.full(32, -0.5)], axis=1)
        bandit.update(arms, X, truth[np.arange(32), arms] + 0.05 * rng.normal(size=32))
    x1 = np.linspace(-1, 1, 21)[np.abs(np.linspace(-1, 1, 21)) > 0.15]
    got = bandit.select(np.stack([np.ones_like(x1), x1], axis=1), explore=False)
    np.testing.assert_array_equal(got, np.where(x1 > 0, 0, 1))


def test_masked_arms_never_chosen_even_when_exploring() -> None:
    rng = np.random.default_rng(1)
    for kind in ("linucb", "lin_ts", "eps_greedy"):
        b = LinearBandit(10, 3, LinearBanditConfig(kind=kind, epsilon=1.0, alpha=5.0, seed=2))
        # make the masked arm 9 by far the best in mean
        b.update(np.full(50, 9), rng.normal(size=(50, 3)) + 3, np.full(50, 100.0))
        X = rng.normal(size=(200, 3)) + 3
        mask = np.ones((200, 10), bool)
        mask[:, 9] = False
        mask[:100, :5] = False
        for explore in (True, False):
            a = b.select(X, mask, explore=explore)
            assert mask[np.arange(200), a].all(), kind
        with pytest.raises(ValueError, match="allow no arm"):
            b.select(X[:1], np.zeros((1, 10), bool))


def test_bad_inputs_raise_clear_errors() -> None:
    b = LinearBandit(4, 3)
    with pytest.raises(ValueError, match="shape"):
        b.select(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="arm indices"):
        b.update(np.array([4]), np.zeros((1, 3)), np.zeros(1))
    with pytest.raises(ValueError, match="NaN"):
        b.update(np.array([0]), np.zeros((1, 3)), np.array([np.nan]))
    with pytest.raises(ValueError, match="kind"):
        LinearBanditConfig(kind="ucb1")
    with pytest.raises(ValueError, match="l2"):
        LinearBanditConfig(l2=0.0)


def test_epsilon_decays_linearly() -> None:
    b = LinearBandit(2, 1, LinearBanditConfig(kind="eps_greedy", epsilon=0.5, epsilon_final=0.1))
    b.set_progress(0.5)
    assert b.epsilon_now == pytest.approx(0.3)
    b.set_progress(2.0)
    assert b.epsilon_now == pytest.approx(0.1)


# ----------------------------------------------------------------------------- featurizer + policy
def _obs(rng: np.random.Generator, n: int, n_arms: int = 12, dl: int = 20) -> dict[str, np.ndarray]:
    cheapest = rng.uniform(0.5, 0.8, n)
    full = cheapest + rng.uniform(0.3, 0.6, n)
    budget = rng.uniform(0.6, 1.4, n)
    mask = rng.random((n, n_arms)) < 0.8
    mask[:, 0] = True
    return {
        "lang": rng.normal(size=(n, dl)).astype(np.float32) @ rng.normal(size=(dl, dl)).astype(np.float32),
        "budget": np.stack([budget, cheapest, full, budget / full], axis=1).astype(np.float32),
        "action_mask": mask.astype(np.int8),
    }


def test_featurizer_layout_and_pca() -> None:
    rng = np.random.default_rng(0)
    obs = _obs(rng, 400)
    f = ContextFeaturizer(FeaturizerConfig(lang_components=5, rbf_centers=6)).fit(obs)
    X = f.transform(obs)
    assert X.shape == (400, 1 + 5 + 4 + 2 + 6) == (400, f.dim)
    np.testing.assert_array_equal(X[:, 0], 1.0)
    pcs = X[:, 1:6]
    np.testing.assert_allclose(pcs.mean(axis=0), 0, atol=1e-8)
    np.testing.assert_allclose(np.cov(pcs.T), np.eye(5), atol=1e-8)  # whitened, decorrelated
    u = (obs["budget"][:, 0] - obs["budget"][:, 1]) / (obs["budget"][:, 2] - obs["budget"][:, 1])
    np.testing.assert_allclose(X[:, 10], u, rtol=1e-6)
    # shared budget encoding appended without its raw 4 entries
    g = ContextFeaturizer(FeaturizerConfig(lang_components=0, rbf_centers=0, budget_encoding_dim=16)).fit(obs)
    assert g.transform(obs).shape == (400, 1 + 4 + 2 + 12)
    with pytest.raises(ValueError, match="not fitted"):
        ContextFeaturizer().transform(obs)


def test_featurizer_tier_positions_from_the_request_layout(tmp_path) -> None:
    # obs["request"] = [crops (T) | vision tokens (T) | prompt (1) | TTFT cheapest-LM (T) | TTFT full-LM (T) | tpot (2)]
    T, n = 3, 50
    rng = np.random.default_rng(1)
    obs = _obs(rng, n)
    ttft_c = np.sort(rng.uniform(0.1, 0.5, (n, T)), axis=1)
    ttft_f = ttft_c + rng.uniform(0.2, 0.4, (n, T))
    decode = rng.uniform(0.1, 0.2, (n, 1))
    cheapest, full = ttft_c[:, :1] + decode, ttft_f[:, -1:] + decode
    budget = rng.uniform(cheapest, full)
    obs["budget"] = np.concatenate([budget, cheapest, full, budget / full], axis=1)
    obs["request"] = np.concatenate([rng.uniform(0, 1, (n, 2 * T + 1)), ttft_c, ttft_f, rng.uniform(0, 1, (n, 2))], axis=1)
    f = ContextFeaturizer(FeaturizerConfig(lang_components=0, rbf_centers=4, tier_rbf_centers=5)).fit(obs)
    assert f.n_tiers == T and f.dim == 1 + 4 + 2 + 4 + (4 * T + 3) + T * 5
    u_t = f.tier_positions(obs["budget"], obs["request"])
    # the span of tier t: its TTFT at the cheapest / full language model, plus the shared decode part
    expect = (budget - (ttft_c + decode)) / ((ttft_f + decode) - (ttft_c + decode))
    np.testing.assert_allclose(u_t, expect, rtol=1e-9)
    X = f.transform(obs)
    assert X.shape == (n, f.dim)
    lo, hi = f.config.rbf_range
    bump0 = np.exp(-0.5 * ((u_t[:, 1] - lo) / ((hi - lo) / 4)) ** 2)  # tier 1, first centre
    np.testing.assert_allclose(X[:, -T * 5 + 5], bump0, rtol=1e-9)
    with pytest.raises(ValueError, match="needs obs\\['request'\\]"):
        ContextFeaturizer(FeaturizerConfig(tier_rbf_centers=5)).fit({k: obs[k] for k in ("lang", "budget")})
    with pytest.raises(ValueError, match="fitted on"):
        f.transform({**obs, "request": obs["request"][:, :-1]})
    # a saved policy keeps the tier bumps
    pol = BanditPolicy(LinearBandit(12, f.dim, LinearBanditConfig()), f)
    pol.bandit.update(np.arange(n) % 12, X, rng.normal(size=n))
    back = BanditPolicy.load(pol.save(tmp_path / "p"))
    np.testing.assert_array_equal(back.act(obs, {}), pol.act(obs, {}))


def test_featurizer_language_groups_give_each_group_its_own_budget_curve(tmp_path) -> None:
    # three groups of questions, far apart in the language feature (as the suite's tasks are)
    rng = np.random.default_rng(2)
    n = 600
    obs = _obs(rng, n)
    task = np.arange(n) % 3
    obs["lang"] = (rng.normal(size=(n, 20)) * 0.1 + 5.0 * np.eye(3, 20)[task]).astype(np.float32)
    f = ContextFeaturizer(FeaturizerConfig(lang_components=4, rbf_centers=6, lang_clusters=3, cluster_rbf_centers=5)).fit(obs)
    X = f.transform(obs)
    base = 1 + 4 + 4 + 2 + 6
    assert X.shape == (n, base + 3 * (1 + 5)) == (n, f.dim)
    groups = X[:, base:].reshape(n, 3, 6)
    indicator = groups[:, :, 0]
    np.testing.assert_array_equal(indicator.sum(axis=1), 1.0)  # one group per request
    found = indicator.argmax(axis=1)
    assert len({(t, g) for t, g in zip(task, found)}) == 3  # the groups are the tasks
    u = f.budget_position(obs["budget"].astype(np.float64))
    own = groups[np.arange(n), found, 1:]
    np.testing.assert_allclose(own, f._bumps(u, 5), rtol=1e-12)  # the bumps sit in the request's own group
    assert np.all(groups[np.arange(n), (found + 1) % 3] == 0)  # and nowhere else
    # deterministic, and kept by a saved policy
    np.testing.assert_array_equal(ContextFeaturizer(f.config).fit(obs).transform(obs), X)
    pol = BanditPolicy(LinearBandit(12, f.dim, LinearBanditConfig()), f)
    pol.bandit.update(np.arange(n) % 12, X, rng.normal(size=n))
    back = BanditPolicy.load(pol.save(tmp_path / "p"))
    np.testing.assert_array_equal(back.featurizer.transform(obs), X)
    np.testing.assert_array_equal(back.act(obs, {}), pol.act(obs, {}))
    with pytest.raises(ValueError, match="needs lang_components > 0"):
        FeaturizerConfig(lang_components=0, lang_clusters=3)


def test_policy_save_load_identical_actions(tmp_path) -> None:
    rng = np.random.default_rng(0)
    obs = _obs(rng, 300)
    for kind in ("linucb", "lin_ts", "eps_greedy"):
        f = ContextFeaturizer(FeaturizerConfig(lang_components=4, rbf_centers=5)).fit(obs)
        pol = BanditPolicy(LinearBandit(12, f.dim, LinearBanditConfig(kind=kind, seed=1)), f)
        for _ in range(5):
            a, X = pol.act_explore(obs)
            pol.bandit.update(a, X, rng.normal(size=300) + 0.1 * a)
        acts = pol.act(obs, {})
        assert obs["action_mask"][np.arange(300), acts].all()
        pol.save(tmp_path / kind)
        back = BanditPolicy.load(tmp_path / kind)
        np.testing.assert_array_equal(back.act(obs, {}), acts)
        assert back.name == kind and back.bandit.config == pol.bandit.config
        np.testing.assert_array_equal(back.bandit.A_inv, pol.bandit.A_inv)
    with pytest.raises(ValueError, match="not a saved bandit"):
        BanditPolicy.load(tmp_path / "nothing")


# ----------------------------------------------------------------------------- mabwiser cross-check
def test_linucb_matches_mabwiser() -> None:
    mabwiser = pytest.importorskip("mabwiser.mab")
    MAB, LearningPolicy = mabwiser.MAB, mabwiser.LearningPolicy
    n_arms, d, alpha, l2 = 4, 3, 1.25, 0.8
    rng = np.random.default_rng(0)
    W = rng.normal(size=(n_arms, d))
    ours = LinearBandit(n_arms, d, LinearBanditConfig(kind="linucb", alpha=alpha, l2=l2, uniform_explore=0.0,
                                                      importance_weighted=False))
    mab = MAB(arms=list(range(n_arms)), learning_policy=LearningPolicy.LinUCB(alpha=alpha, l2_lambda=l2), seed=0)
    # mabwiser needs one fit() before predicting: seed both with the same 8 observations
    X0 = rng.normal(size=(8, d))
    a0 = np.arange(8) % n_arms
    r0 = np.einsum("nd,nd->n", X0, W[a0])
    mab.fit(decisions=a0, rewards=r0, contexts=X0)
    ours.update(a0, X0, r0)
    for _ in range(200):
        x = rng.normal(size=(1, d))
        exp = mab.predict_expectations(x)
        ours_scores = ours.scores(x)[0]
        np.testing.assert_allclose(ours_scores, [exp[a] for a in range(n_arms)], rtol=1e-9, atol=1e-9)
        a = int(ours.select(x)[0])
        assert a == int(mab.predict(x))
        r = np.array([x[0] @ W[a] + 0.1 * rng.normal()])
        mab.partial_fit(decisions=[a], rewards=r, contexts=x)
        ours.update(np.array([a]), x, r)


# ----------------------------------------------------------------------------- training on the flat env
@pytest.fixture(scope="module")
def tiny_data():
    from envs.knob_space import KnobSpace
    from envs.replay_data import ReplayData

    # 12 configurations (2 tiers × (p, blocks) ∈ {(4,15), (4,16), (5,16)} × top-k {4, 8}), so a
    # few thousand steps give each arm's model a few hundred samples
    ks = KnobSpace(tiers=("low", "high"), crops=(3, 12), insertion_positions=(4, 5), top_ks=(4, 8))
    return ReplayData.random(64, lang_dim=8, token_dim=4, seed=5, missing_frac=0.15, knob_space=ks)


@pytest.mark.parametrize("kind", ["linucb", "lints", "eps_greedy"])
def test_train_bandit_smoke(tmp_path, tiny_data, kind: str) -> None:
    from agents.bandits import BanditTrainConfig, train_bandit
    from envs.vector_env import MolmoeKnobsFlatVectorEnv

    kw = {"data": tiny_data, "incomplete": "mask"}
    cfg = BanditTrainConfig(total_steps=6000, num_envs=64, featurizer_samples=256, log_every=10, seed=1,
                            features=FeaturizerConfig(lang_components=2, rbf_centers=6))
    res = train_bandit(kind, kw, cfg, tmp_path / kind)
    assert res.steps == 6016 and res.summary["synthetic"] is True
    assert res.policy.bandit.counts.sum() == 6016 and res.policy.bandit.n_arms == 12
    # the kind's exploration defaults are written out in what was saved
    saved = res.summary["config"]["bandit"]
    assert (saved["uniform_explore"], saved["importance_weighted"]) == ((0.75, True) if kind == "linucb" else (0.0, False))
    lines = (tmp_path / kind / "progress.csv").read_text().splitlines()
    assert lines[0].startswith("round,steps,reward_mean") and len(lines) == 1 + 10
    venv = MolmoeKnobsFlatVectorEnv(64, **kw)  # invalid_action="raise": a masked choice would raise
    budgets = np.linspace(*tiny_data.budget_range_ms, 64)  # request i at budget i
    obs, info = venv.reset(options={"sample_index": np.arange(64), "budget_ms": budgets})
    greedy = res.policy.act(obs, info)
    assert obs["action_mask"][np.arange(64), greedy].all()
    _, r_greedy, _, _, _ = venv.step(greedy)
    back = BanditPolicy.load(res.policy_dir)
    np.testing.assert_array_equal(back.act(obs, info), greedy)
    # better than choosing uniformly among the valid configurations, on the same requests
    rng = np.random.default_rng(0)
    venv.reset(options={"sample_index": np.arange(64), "budget_ms": budgets})
    rand = np.argmax(np.where(obs["action_mask"].astype(bool), rng.random((64, obs["action_mask"].shape[1])), -1), axis=1)
    _, r_rand, _, _, _ = venv.step(rand)
    assert r_greedy.mean() > r_rand.mean() + 0.05


# ----------------------------------------------------------------------------- uniform share + importance weights
def test_propensities_match_the_empirical_choice_frequencies() -> None:
    """``last_propensity`` is the probability of the arm picked: repeated exploring choices for one
    context (with a mask) land on each arm as often as the propensities say."""
    n_arms, d = 5, 3
    b = LinearBandit(n_arms, d, LinearBanditConfig(kind="linucb", uniform_explore=0.4, importance_weighted=False,
                                                   alpha=0.0, seed=0))
    b.theta[:] = np.arange(n_arms)[:, None] * np.array([1.0, 0.0, 0.0])  # own choice: the highest valid arm
    x = np.array([[1.0, 0.3, -0.2]])
    mask = np.array([[True, True, True, False, True]])  # arm 3 masked: 4 valid arms
    X, M = np.repeat(x, 40_000, axis=0), np.repeat(mask, 40_000, axis=0)
    arms = b.select(X, M, explore=True)
    assert not np.any(arms == 3)
    expected = {0: 0.1, 1: 0.1, 2: 0.1, 4: 0.6 + 0.1}  # (1 − 0.4)·[own] + 0.4 / 4
    for a, p in expected.items():
        assert abs(np.mean(arms == a) - p) < 0.01
        np.testing.assert_allclose(b.last_propensity[arms == a], p)
    w = LinearBandit(n_arms, d, LinearBanditConfig(kind="linucb", uniform_explore=0.4, importance_weighted=True, seed=0))
    w.select(x, mask, explore=True)
    np.testing.assert_allclose(w.importance_weights(), 1.0 / (n_arms * w.last_propensity))
    assert b.importance_weights() is None  # not importance-weighted
    g = b.select(X[:3], M[:3], explore=False)  # greedy: its own choice, propensity 1
    np.testing.assert_array_equal(g, 4)
    np.testing.assert_allclose(b.last_propensity, 1.0)


@pytest.mark.parametrize("method", ["sherman_morrison", "refactor"])
def test_weighted_update_is_weighted_ridge(method: str) -> None:
    rng = np.random.default_rng(2)
    n_arms, d, l2 = 3, 4, 0.5
    b = LinearBandit(n_arms, d, LinearBanditConfig(l2=l2, update_method=method))
    A = [l2 * np.eye(d) for _ in range(n_arms)]
    bb = [np.zeros(d) for _ in range(n_arms)]
    for _ in range(5):
        arms, X, r, w = rng.integers(0, n_arms, 20), rng.normal(size=(20, d)), rng.normal(size=20), rng.uniform(0.1, 5, 20)
        b.update(arms, X, r, weights=w)
        for a, x, y, wi in zip(arms, X, r, w):
            A[a] += wi * np.outer(x, x)
            bb[a] += wi * y * x
    for a in range(n_arms):
        np.testing.assert_allclose(b.A[a], A[a], rtol=1e-10)
        np.testing.assert_allclose(b.theta[a], np.linalg.solve(A[a], bb[a]), rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="weights"):
        b.update(arms, X, r, weights=np.zeros(20))


def test_importance_weighting_recovers_the_uniform_design_fit() -> None:
    """A misspecified linear model fitted on adaptively chosen pulls depends on where the bandit
    pulled; weighted by inverse propensity it estimates the fit a uniform design would give."""
    rng = np.random.default_rng(0)

    def reward(arm: np.ndarray, u: np.ndarray) -> np.ndarray:  # a step in u: not linear in [1, u]
        return np.where(arm == 0, (u > 0.5).astype(float), 0.5)

    def ctx(u: np.ndarray) -> np.ndarray:
        return np.stack([np.ones_like(u), u], axis=1)

    # the uniform-design least-squares fit of arm 0 (u ~ U[0, 1]): intercept −0.25, slope 1.5
    target = np.array([-0.25, 1.5])
    fits = {}
    for iw in (False, True):
        b = LinearBandit(2, 2, LinearBanditConfig(kind="linucb", alpha=0.0, uniform_explore=0.3,
                                                  importance_weighted=iw, l2=1e-3, seed=1))
        b.theta[0] = [0.0, 1.0]  # arm 0 starts ahead for u > 0.5: the own choice is then arm-0-heavy there
        for _ in range(400):
            u = rng.random(500)
            X = ctx(u)
            arms = b.select(X, explore=True)
            b.update(arms, X, reward(arms, u), weights=b.importance_weights())
        fits[iw] = b.theta[0].copy()
    assert np.abs(fits[True] - target).max() < 0.05
    assert np.abs(fits[False] - target).max() > 0.1  # 0.14 with this seed: fitted where arm 0 was chosen


def test_importance_weighted_needs_known_propensities() -> None:
    with pytest.raises(ValueError, match="uniform_explore > 0"):
        LinearBanditConfig(kind="linucb", uniform_explore=0.0, importance_weighted=True)
    assert LinearBanditConfig(kind="linucb").importance_weighted_value  # the default: a share of 0.75
    assert LinearBanditConfig(kind="linucb").uniform_explore_value == 0.75
    assert not LinearBanditConfig(kind="lin_ts").importance_weighted_value
    assert LinearBanditConfig(kind="lin_ts").uniform_explore_value == 0.0
    with pytest.raises(ValueError, match="Thompson"):
        LinearBanditConfig(kind="lin_ts", uniform_explore=0.5, importance_weighted=True)
    with pytest.raises(ValueError, match="epsilon"):
        LinearBanditConfig(kind="eps_greedy", epsilon_final=0.0, importance_weighted=True)
    with pytest.raises(ValueError, match="uniform_explore must be in"):
        LinearBanditConfig(uniform_explore=1.5)
    LinearBanditConfig(kind="eps_greedy", importance_weighted=True)  # ε 0.3 → 0.05: fine
