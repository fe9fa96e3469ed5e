"""GRPO two-stage controller: advantage and loss math, masks, persistence, a smoke training run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from agents.budget_encoding import BudgetEncoding
from agents.grpo import (
    GRPOConfig,
    GRPOPolicy,
    RunningNorm,
    categorical_entropy,
    categorical_kl,
    clipped_policy_loss,
    evaluate_deterministic,
    group_advantages,
    make_vector_env,
    masked_log_probs,
    train_grpo,
)

NVEC = (3, 5, 5, 5)


# ----------------------------------------------------------------------------- budget encoding
def test_budget_encoding_layout_and_quantities() -> None:
    enc = BudgetEncoding()
    assert enc.n_freqs == 42 and enc.dim == 256
    obs = np.array([[0.5, 0.4, 1.0, 0.5], [0.9, 0.4, 1.2, 0.75]], dtype=np.float32)
    e = enc(obs)
    assert e.shape == (2, 256) and e.dtype == np.float32
    np.testing.assert_allclose(e[:, :4], obs)  # raw values first
    q = enc.quantities_of(obs)
    np.testing.assert_allclose(q[:, 0], obs[:, 0], rtol=1e-6)  # abs
    np.testing.assert_allclose(q[:, 1], obs[:, 3], rtol=1e-6)  # rel
    np.testing.assert_allclose(q[:, 2], [(0.5 - 0.4) / 0.6, (0.9 - 0.4) / 0.8], rtol=1e-6)  # pos
    # first Fourier pair of "abs": sin / cos at the lowest frequency
    f0 = enc.frequencies[0]
    np.testing.assert_allclose(e[:, 4], np.sin(2 * np.pi * f0 * obs[:, 0]), atol=1e-6)
    np.testing.assert_allclose(e[:, 4 + enc.n_freqs], np.cos(2 * np.pi * f0 * obs[:, 0]), atol=1e-6)
    # batched and single observations agree; nearby budgets are told apart
    np.testing.assert_array_equal(enc(obs[1]), e[1])
    near = obs[1].copy()
    near[0] += 0.01
    near[3] += 0.01 / 1.2
    assert np.abs(enc(near) - e[1]).max() > 0.1


def test_budget_encoding_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="last dim 4"):
        BudgetEncoding()(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        BudgetEncoding()(np.array([np.nan, 1, 1, 1]))
    with pytest.raises(ValueError, match="quantities"):
        BudgetEncoding(quantities=("abs", "bogus"))
    # padding when dim does not split evenly; round trip through a dict
    enc = BudgetEncoding(dim=17, quantities=("rel",))
    assert enc.n_freqs == 6 and enc(np.ones(4)).shape == (17,) and enc(np.ones(4))[-1] == 0.0
    assert BudgetEncoding.from_dict(enc.to_dict()) == enc


# ---------------------------------------------------------------------------- advantages, loss
def test_group_advantages_hand_computed() -> None:
    r = np.array([1.0, 0.0, 0.5, 0.5, 0.2, 0.2, 0.2, 0.2])  # group 0 varies, group 1 constant
    adv, zero = group_advantages(r, group_size=4, scale_rewards="group", eps=1e-4)
    g0 = r[:4]
    expect0 = (g0 - g0.mean()) / (g0.std(ddof=1) + 1e-4)
    np.testing.assert_allclose(adv[:4].numpy(), expect0, rtol=1e-5)
    np.testing.assert_array_equal(adv[4:].numpy(), 0.0)
    assert zero.tolist() == [False, True]
    adv_none, _ = group_advantages(r, 4, "none")
    np.testing.assert_allclose(adv_none[:4].numpy(), g0 - g0.mean(), rtol=1e-6)
    np.testing.assert_array_equal(adv_none[4:].numpy(), 0.0)
    adv_b, _ = group_advantages(r, 4, "batch", eps=0.0)
    np.testing.assert_allclose(adv_b[:4].numpy(), (g0 - g0.mean()) / r.std(ddof=1), rtol=1e-5)
    # advantages of a varying group sum to zero; all-equal groups give no NaN
    assert abs(float(adv[:4].sum())) < 1e-5
    adv_c, zero_c = group_advantages(np.full(6, 0.7), 3)
    assert torch.all(adv_c == 0) and zero_c.all()
    with pytest.raises(ValueError, match="divisible"):
        group_advantages(np.zeros(5), 2)


def test_clipped_loss_matches_hand_computation() -> None:
    old = torch.log(torch.tensor([0.5, 0.5, 0.5, 0.5]))
    new = torch.log(torch.tensor([0.75, 0.25, 0.55, 0.75]))  # ratios 1.5, 0.5, 1.1, 1.5
    adv = torch.tensor([1.0, 1.0, -2.0, -1.0])
    loss, clip_frac = clipped_policy_loss(new, old, adv, clip_eps=0.2)
    # min(ρA, clip(ρ)A): 1.5→min(1.5, 1.2)=1.2; 0.5→min(0.5, 0.8)=0.5; 1.1·−2=−2.2 (inside);
    # 1.5·−1=−1.5 vs 1.2·−1=−1.2 → −1.5
    expect = -(1.2 + 0.5 - 2.2 - 1.5) / 4
    assert math.isclose(float(loss), expect, rel_tol=1e-6)
    assert math.isclose(float(clip_frac), 0.75)
    loss_nc, cf = clipped_policy_loss(new, old, adv, clip_eps=None)
    assert math.isclose(float(loss_nc), -(1.5 + 0.5 - 2.2 - 1.5) / 4, rel_tol=1e-6) and float(cf) == 0.0
    # gradient flows only through unclipped terms: d/dnew of −mean(min(...)) at the clipped 1.5·A>0 is 0
    new_r = new.clone().requires_grad_(True)
    clipped_policy_loss(new_r, old, adv, 0.2)[0].backward()
    g = new_r.grad.numpy()
    np.testing.assert_allclose(g, [0.0, -0.5 / 4, 2.2 / 4, 1.5 / 4], rtol=1e-5)


def test_entropy_kl_and_running_norm() -> None:
    p = torch.tensor([[0.5, 0.5, 0.0]])
    q = torch.tensor([[0.25, 0.75, 0.0]])
    mask = torch.tensor([[True, True, False]])
    lp = masked_log_probs(torch.log(p.clamp_min(1e-30)), mask)
    lq = masked_log_probs(torch.log(q.clamp_min(1e-30)), mask)
    assert math.isclose(float(categorical_entropy(lp)), math.log(2), rel_tol=1e-6)
    kl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert math.isclose(float(categorical_kl(lp, lq)), kl, rel_tol=1e-5)
    assert float(categorical_kl(lp, lp)) == 0.0
    # running normaliser over two batches = statistics of their union
    rng = np.random.default_rng(0)
    a, b = rng.normal(3, 2, size=(50, 4)), rng.normal(-1, 0.5, size=(30, 4))
    norm = RunningNorm(4, clip=100.0)
    norm.update(torch.as_tensor(a))
    norm.update(torch.as_tensor(b))
    both = np.concatenate([a, b])
    np.testing.assert_allclose(norm.mean.numpy(), both.mean(0), rtol=1e-10)
    np.testing.assert_allclose(norm.var.numpy(), both.var(0), rtol=1e-10)
    y = norm(torch.as_tensor(both, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.std(0), 1.0, atol=1e-4)


def test_masked_log_probs_zero_on_invalid() -> None:
    logits = torch.tensor([[10.0, 0.0, -3.0]])
    lp = masked_log_probs(logits, torch.tensor([[False, True, True]]))
    assert lp.exp()[0, 0] == 0.0 and math.isclose(float(lp.exp().sum()), 1.0, rel_tol=1e-6)
    with pytest.raises(ValueError, match="no valid option"):
        masked_log_probs(logits, torch.zeros(1, 3, dtype=torch.bool))


# --------------------------------------------------------------------------------------- masks
def _stage_obs(n: int, stage: int, tier: np.ndarray, p_idx: np.ndarray, rng: np.random.Generator,
               dl: int = 6, dt: int = 7) -> dict[str, np.ndarray]:
    """Hand-built MolmoeKnobs-v0 observations (layout of docs/INTERFACES.md)."""
    budget = rng.uniform(0.3, 1.2, size=n)
    cheap, full = np.full(n, 0.4), np.full(n, 1.0)
    ctx = np.zeros((n, 1 + 3 + 5), np.float32)
    mask = np.zeros((n, sum(NVEC)), np.int8)
    if stage == 0:
        mask[:, :8] = 1
        mask[:, 8] = 1
        mask[:, 13] = 1
    else:
        ctx[:, 0] = 1
        ctx[np.arange(n), 1 + tier] = 1
        ctx[np.arange(n), 4 + p_idx] = 1
        mask[np.arange(n), tier] = 1
        mask[np.arange(n), 3 + p_idx] = 1
        mask[:, 8:13] = 1
        for i, pi in enumerate(p_idx):
            mask[i, 13:13 + (5 - pi)] = 1  # active-blocks index j valid for j <= 5 - p = 4 - p_idx
    return {
        "lang": rng.normal(size=(n, dl)).astype(np.float32),
        "token": (rng.normal(size=(n, dt)) if stage else np.zeros((n, dt))).astype(np.float32),
        "budget": np.stack([budget, cheap, full, budget / full], -1).astype(np.float32),
        "context": ctx,
        "action_mask": mask,
    }


def _adversarial_policy(seed: int = 0) -> GRPOPolicy:
    """A policy whose active-blocks head prefers the last (mostly invalid) option by a wide margin."""
    pol = GRPOPolicy(6, 7, NVEC, GRPOConfig(hidden_sizes=(16,)), seed=seed)
    with torch.no_grad():
        pol.net.blocks_head.bias.copy_(torch.tensor([-5.0, -2.0, 0.0, 2.0, 8.0]))
        pol.net.tier_head.bias.copy_(torch.tensor([0.0, 1.0, 3.0]))
    return pol


@pytest.mark.parametrize("deterministic", [False, True])
def test_masks_respected_for_every_p(deterministic: bool) -> None:
    rng = np.random.default_rng(0)
    pol = _adversarial_policy()
    n = 2000
    tier = rng.integers(0, 3, size=n)
    p_idx = np.repeat(np.arange(5), n // 5)
    o1 = _stage_obs(n, 1, tier, p_idx, rng)
    a = pol.act_stage2(o1, {}, deterministic=deterministic)
    assert a.shape == (n, 4) and a.dtype == np.int64
    np.testing.assert_array_equal(a[:, 0], tier)  # pinned by the stage-1 mask
    np.testing.assert_array_equal(a[:, 1], p_idx)
    assert np.all(a[:, 3] <= 4 - p_idx), "active-blocks index beyond 5 - p was chosen"
    # every p: the (biased-to-invalid) policy picks the largest valid active-blocks index under argmax
    if deterministic:
        np.testing.assert_array_equal(a[:, 3], 4 - p_idx)
    else:
        for pi in range(5):  # sampling explores the valid options only
            assert set(np.unique(a[p_idx == pi, 3])) <= set(range(5 - pi))
    o0 = _stage_obs(n, 0, tier, p_idx, rng)
    a0 = pol.act_stage1(o0, {}, deterministic=deterministic)
    assert np.all(a0[:, 2:] == 0) and np.all((a0[:, 0] < 3) & (a0[:, 1] < 5))
    # a stage-0 mask with a forbidden tier is respected too
    o0["action_mask"][:, 2] = 0
    a0 = pol.act_stage1(o0, {}, deterministic=deterministic)
    assert not np.any(a0[:, 0] == 2)
    # single (unbatched) observation → (4,) action
    single = {k: v[0] for k, v in o1.items()}
    assert pol.act_stage2(single, {}).shape == (4,)


def test_policy_rejects_wrong_observation() -> None:
    pol = GRPOPolicy(6, 7, NVEC, GRPOConfig(hidden_sizes=(8,)))
    obs = _stage_obs(3, 1, np.zeros(3, int), np.zeros(3, int), np.random.default_rng(0), dl=5)
    with pytest.raises(ValueError, match="lang"):
        pol.act_stage1(obs, {})


def test_save_load_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(1)
    cfg = GRPOConfig(hidden_sizes=(32, 32), group_size=5, lr=1e-4, clip_eps=None)
    pol = GRPOPolicy(6, 7, NVEC, cfg, seed=3)
    n = 300
    tier, p_idx = rng.integers(0, 3, n), rng.integers(0, 5, n)
    o0, o1 = _stage_obs(n, 0, tier, p_idx, rng), _stage_obs(n, 1, tier, p_idx, rng)
    pol.lang_norm.update(torch.as_tensor(o0["lang"]) * 3 + 1)  # non-trivial normaliser state
    pol.token_norm.update(torch.as_tensor(o1["token"]) * 2 - 1)
    with torch.no_grad():
        for prm in pol.net.parameters():
            prm.add_(torch.randn(prm.shape, generator=torch.Generator().manual_seed(7)) * 0.5)
    pol.save(tmp_path / "ckpt")
    back = GRPOPolicy.load(tmp_path / "ckpt")
    assert back.cfg == cfg and back.nvec == NVEC
    np.testing.assert_array_equal(back.act_stage1(o0, {}), pol.act_stage1(o0, {}))
    np.testing.assert_array_equal(back.act_stage2(o1, {}), pol.act_stage2(o1, {}))
    assert len(np.unique(pol.act_stage1(o0, {})[:, :2], axis=0)) > 1  # the comparison is not trivial
    with pytest.raises(ValueError, match="not a saved GRPO policy"):
        GRPOPolicy.load(tmp_path / "missing")
    # a policy saved when the active-blocks head was called knob3_head still loads
    sd = torch.load(tmp_path / "ckpt" / "policy.pt", weights_only=True)
    sd["net"] = {k.replace("blocks_head.", "knob3_head."): v for k, v in sd["net"].items()}
    assert any(k.startswith("knob3_head.") for k in sd["net"])
    torch.save(sd, tmp_path / "ckpt" / "policy.pt")
    old = GRPOPolicy.load(tmp_path / "ckpt")
    np.testing.assert_array_equal(old.act_stage2(o1, {}), pol.act_stage2(o1, {}))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="scale_rewards"):
        GRPOConfig(scale_rewards="std")
    with pytest.raises(ValueError, match="group_size"):
        GRPOConfig(group_size=1)
    with pytest.raises(ValueError, match="divisible"):
        GRPOConfig(contexts_per_iter=3, group_size=5, num_minibatches=4)
    with pytest.raises(ValueError, match="ema_decay"):
        GRPOConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="unknown GRPOConfig"):
        GRPOConfig.from_dict({"learning_rate": 1.0})
    assert GRPOConfig.from_dict(GRPOConfig().to_dict()) == GRPOConfig()


# ------------------------------------------------------------------------------ smoke training
def _easy_data(n: int = 48, seed: int = 0):
    """Every request's best configuration is (high, p=3, top-k 6, active-blocks index 0): each knob adds 0.25
    to the score when it takes that value; latency 30 ms, budgets 40-60 ms (never violated)."""
    from envs.knob_space import KnobSpace
    from envs.replay_data import ReplayData

    ks = KnobSpace()
    t = ks.config_table()
    per_config = 0.25 * ((t["tier"] == 2).astype(float) + (t["p"] == 3) + (t["top_k"] == 6) + (t["blocks_index"] == 0))
    rng = np.random.default_rng(seed)
    c = len(ks)
    score = np.tile(per_config, (n, 1)).astype(np.float32)
    ms = np.full((n, c), 10.0, np.float32)
    data = ReplayData.from_arrays(
        score=score, vision_ms=ms, prefill_ms=ms, decode_ms=ms,
        lang=rng.normal(size=(n, 8)).astype(np.float32),
        tokens=rng.normal(size=(n, 3, 5, 8)).astype(np.float32),
        knob_space=ks, budget_range_ms=(40.0, 60.0),
    )
    return data, per_config


def test_smoke_training_improves_reward(tmp_path) -> None:
    data, per_config = _easy_data()
    cfg = GRPOConfig(iterations=25, contexts_per_iter=16, group_size=8, hidden_sizes=(32, 32), lr=3e-3,
                     update_epochs=2, num_minibatches=2, eval_every=25, seed=0, ema_decay=0.5)
    env_kwargs = {"data": data, "reward": "hinge"}
    venv = make_vector_env(env_kwargs, 64)
    budgets = np.array([40.0, 50.0, 60.0])
    init = GRPOPolicy(data.lang_dim, data.token_dim, venv.nvec, cfg, seed=0)
    before = evaluate_deterministic(venv, init, budgets)
    # expected score of the near-uniform initial sampling policy: 0.25·(1/3 + 1/5 + 1/5 + P(active-blocks index = 0))
    rand_before = 0.25 * (1 / 3 + 1 / 5 + 1 / 5 + np.mean([1 / (6 - p) for p in range(1, 6)]))
    policy, hist = train_grpo(env_kwargs, cfg, log_dir=tmp_path / "tb", progress=False)
    after = evaluate_deterministic(venv, policy, budgets)
    assert after["reward"].shape == (data.n * 3,)
    # the argmax policy finds the obvious best configuration for (almost) every context
    assert after["reward"].mean() >= 0.95 > before["reward"].mean()
    # sampled rollouts improved from about a random policy's reward
    assert hist[0]["reward/mean"] < rand_before + 0.15 and hist[-1]["reward/mean"] > hist[0]["reward/mean"] + 0.3
    # logged numbers: present, finite, consistent
    row = hist[-1]
    for key in ("reward/mean", "score/mean", "violation/rate", "latency_ms/mean", "frac_reward_zero_std",
                "grad_norm", "entropy/tier", "entropy/p", "entropy/top_k", "entropy/blocks", "kl/ref",
                "kl/old", "clip_frac", "loss/policy", "eval/val/reward"):
        assert np.isfinite(row[key]), key
    assert row["violation/rate"] == 0.0 and math.isclose(row["latency_ms/mean"], 30.0, rel_tol=1e-6)
    assert math.isclose(sum(row[f"knob/tier={t}"] for t in ("low", "medium", "high")), 1.0)
    assert row["knob/tier=high"] > 0.8 and row["entropy/tier"] < hist[0]["entropy/tier"]
    assert row["kl/ref"] > 0.0  # the policy moved away from the initial one
    assert len(hist) == 25 and [h["iteration"] for h in hist] == list(range(1, 26))
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def test_input_noise_perturbs_the_update_only_and_still_learns() -> None:
    """``input_noise`` (the demo's GRPO uses 0.3): noise on the standardised features in the update, not in the
    rollouts. The first iteration's rollouts (before any update) are the noiseless run's, the updates differ, and the
    easy case, whose best configuration does not depend on the features, is still learned."""
    data, _ = _easy_data(n=24, seed=2)
    base = dict(iterations=12, contexts_per_iter=16, group_size=8, hidden_sizes=(32,), lr=3e-3, seed=2)
    _, clean = train_grpo({"data": data}, GRPOConfig(**base), progress=False)
    _, noisy = train_grpo({"data": data}, GRPOConfig(**base, input_noise=0.3), progress=False)
    _, again = train_grpo({"data": data}, GRPOConfig(**base, input_noise=0.3), progress=False)
    assert noisy[0]["reward/mean"] == clean[0]["reward/mean"]  # the rollouts see clean inputs
    assert noisy[0]["loss/policy"] != clean[0]["loss/policy"]  # the update does not
    assert [h["reward/mean"] for h in again] == [h["reward/mean"] for h in noisy]  # seeded
    assert noisy[-1]["reward/mean"] > noisy[0]["reward/mean"] + 0.3
    with pytest.raises(ValueError, match="input_noise must be >= 0"):
        GRPOConfig(input_noise=-0.1)


def test_seeds_fork_recipe_learns() -> None:
    """The seeds' fork (G=5, lr 1e-4, std-scaled advantages, no clipping, no KL) stays reachable;
    with a larger lr for speed it learns the easy case too."""
    data, _ = _easy_data(n=24, seed=1)
    cfg = GRPOConfig(iterations=15, contexts_per_iter=16, group_size=5, lr=3e-3, scale_rewards="group",
                     clip_eps=None, kl_coef=0.0, hidden_sizes=(32,), seed=1)
    policy, hist = train_grpo({"data": data}, cfg, progress=False)
    assert hist[-1]["reward/mean"] > hist[0]["reward/mean"] + 0.3
    assert all(h["clip_frac"] == 0.0 for h in hist)  # no clipping
    # a KL-regularised run stays closer to the reference policy than an unregularised one
    kl_cfg = GRPOConfig(**{**cfg.to_dict(), "kl_coef": 1.0})
    _, hist_kl = train_grpo({"data": data}, kl_cfg, progress=False)
    assert hist_kl[-1]["kl/ref"] < hist[-1]["kl/ref"]
