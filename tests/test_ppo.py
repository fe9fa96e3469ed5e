"""PPO agents (agents/ppo.py) and the SB3 VecEnv adapter (agents/sb3_vec_adapter.py), on tiny
ReplayData.random data with missing outcomes so that the masks are not trivial."""

from __future__ import annotations

import csv
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs  # noqa: F401  (registers the env ids)
from agents.budget_encoding import BudgetEncoding
from agents.ppo import (
    FlatPPOPolicy,
    MaskablePPOConfig,
    PPOConfig,
    TwoStagePPOPolicy,
    make_sb3_vec_env,
    torch_budget_encoding,
    train_maskable_ppo,
    train_ppo_flat,
)
from agents.sb3_vec_adapter import SB3VecEnvAdapter
from envs.replay_data import ReplayData


@pytest.fixture(scope="module")
def data() -> ReplayData:
    """Requests with missing outcomes whose pattern per-component masks express exactly
    (incomplete="mask"): no high tier for rows ≡ 0 (mod 3), no top-k 4 and no p = 5 for rows
    ≡ 1 (mod 3), everything for the others. (Scattered holes would need joint masks, which a
    MultiDiscrete mask cannot express; see agents/ppo.py.)"""
    base = ReplayData.random(48, lang_dim=8, token_dim=8, seed=3)
    t = base.knob_space.config_table()
    rows = np.arange(48)[:, None]
    valid = ~(((rows % 3 == 0) & (t["tier"] == 2)[None]) | ((rows % 3 == 1) & ((t["top_k"] == 4) | (t["p"] == 5))[None]))
    return ReplayData.from_arrays(
        score=np.where(valid, base.score, np.nan), valid=valid, vision_ms=base.vision_ms, prefill_ms=base.prefill_ms,
        decode_ms=base.decode_ms, lang=base.lang, tokens=base.tokens, output_tokens=base.output_tokens,
        cheapest_ms=base.cheapest_ms, full_ms=base.full_ms, synthetic=True,
    )


def _kw(data: ReplayData) -> dict:
    return {"data": data, "incomplete": "mask"}


TINY = dict(total_timesteps=256, n_envs=8, n_steps=16, batch_size=64, n_epochs=1, norm_samples=32,
            eval_freq_steps=128, n_eval_episodes=8, eval_envs=4, embed_dim=8, budget_encoding_dim=16, net_arch=(16,))


def test_torch_budget_encoding_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    cheap = rng.uniform(0.4, 0.7, 50)
    full = cheap + rng.uniform(0.2, 0.6, 50)
    b = rng.uniform(0.3, 1.5, 50)
    obs = np.stack([b, cheap, full, b / full], axis=1).astype(np.float32)
    for enc in (BudgetEncoding(dim=64), BudgetEncoding(dim=23, quantities=("pos", "rel"))):
        np.testing.assert_allclose(torch_budget_encoding(torch.as_tensor(obs), enc).numpy(), enc(obs), atol=1e-5)


def test_adapter_follows_sb3_conventions(data: ReplayData) -> None:
    venv = gym.make_vec("MolmoeKnobs-v0", num_envs=6, vectorization_mode="vector_entry_point", **_kw(data))
    vec = SB3VecEnvAdapter(venv)
    vec.seed(5)
    obs = vec.reset()
    assert obs["context"][:, 0].tolist() == [0.0] * 6  # stage 0
    masks = np.stack(vec.env_method("action_masks"))
    assert masks.shape == (6, 18) and masks.dtype == bool
    np.testing.assert_array_equal(masks, obs["action_mask"].astype(bool))
    assert vec.has_attr("action_masks") and vec.get_attr("render_mode") == [None] * 6
    rng = np.random.default_rng(0)

    def valid(m: np.ndarray) -> np.ndarray:
        parts, off = [], 0
        for k in (3, 5, 5, 5):
            parts.append(np.argmax(np.where(m[:, off:off + k], rng.random((m.shape[0], k)), -1), axis=1))
            off += k
        return np.stack(parts, axis=1)

    obs1, r1, d1, i1 = vec.step(valid(masks))
    assert not d1.any() and np.all(r1 == 0) and obs1["context"][:, 0].tolist() == [1.0] * 6
    obs2, r2, d2, i2 = vec.step(valid(np.stack(vec.env_method("action_masks"))))
    assert d2.all() and r2.dtype == np.float32
    for i, info in enumerate(i2):
        # the terminal observation is the stage-1 observation acted on; obs2 is a fresh episode
        np.testing.assert_array_equal(info["terminal_observation"]["token"], obs1["token"][i])
        assert info["TimeLimit.truncated"] is False
        assert 0.0 <= info["score"] <= 1.0 and isinstance(info["violation"], bool)
    assert obs2["context"][:, 0].tolist() == [0.0] * 6
    vec.close()


def test_adapter_rejects_next_step_autoreset() -> None:
    sync = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")])
    with pytest.raises(ValueError, match="same-step autoreset"):
        SB3VecEnvAdapter(sync)


def test_maskable_ppo_learns_through_adapter(tmp_path, data: ReplayData) -> None:
    res = train_maskable_ppo(_kw(data), MaskablePPOConfig(**TINY, checkpoint_freq_steps=128), tmp_path / "run")
    assert res.timesteps >= 256
    assert (tmp_path / "run" / "eval" / "evaluations.npz").is_file()
    assert (tmp_path / "run" / "checkpoints" / "maskable_ppo_128_steps.zip").is_file()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["synthetic"] is True and summary["agent"] == "maskable_ppo"
    progress = (tmp_path / "run" / "progress.csv").read_text()
    assert "rollout/violation_rate" in progress.splitlines()[0]

    # the evaluator's protocol in a native env that raises on any masked action
    venv = gym.make_vec("MolmoeKnobs-v0", num_envs=48, vectorization_mode="vector_entry_point", **_kw(data))
    obs, info = venv.reset(options={"sample_index": np.arange(48), "budget_ms": np.full(48, data.budget_range_ms[0])})
    a1 = res.policy.act_stage1(obs, info)
    assert a1.shape == (48, 4) and a1.dtype == np.int64 and np.all(a1[:, 2:] == 0)
    obs1, _, term, _, info1 = venv.step(a1)
    assert not term.any()
    a2 = res.policy.act_stage2(obs1, info1)
    np.testing.assert_array_equal(a2[:, :2], a1[:, :2])
    _, _, term, _, info2 = venv.step(a2)
    assert term.all() and not info2["final_info"]["invalid_action"].any()

    back = TwoStagePPOPolicy.load(res.policy_dir)
    np.testing.assert_array_equal(back.act_stage1(obs, info), a1)
    np.testing.assert_array_equal(back.act_stage2(obs1, info1), a2)
    with pytest.raises(ValueError, match="not 'ppo'|not a saved"):
        FlatPPOPolicy.load(res.policy_dir)


def test_flat_ppo_trains_and_masked_argmax(tmp_path, data: ReplayData) -> None:
    res = train_ppo_flat(_kw(data), PPOConfig(**{**TINY, "vec_env": "dummy"}), tmp_path / "flat")
    assert res.timesteps >= 256 and res.summary["agent"] == "ppo"
    venv = gym.make_vec("MolmoeKnobsFlat-v0", num_envs=48, vectorization_mode="vector_entry_point", **_kw(data))
    obs, info = venv.reset(seed=0)
    pol = res.policy
    a = pol.act(obs, info)
    assert obs["action_mask"][np.arange(48), a].all()
    # forbid each row's unmasked favourite: the policy must move to the best remaining allowed one
    logits = pol.logits(obs)
    fav = np.argmax(logits, axis=1)
    obs2 = dict(obs)
    obs2["action_mask"] = obs["action_mask"].copy()
    obs2["action_mask"][np.arange(48), fav] = 0
    a2 = pol.act(obs2, info)
    assert obs2["action_mask"][np.arange(48), a2].all() and np.all(a2 != fav)
    expect = np.argmax(np.where(obs2["action_mask"].astype(bool), logits, -np.inf), axis=1)
    np.testing.assert_array_equal(a2, expect)
    back = FlatPPOPolicy.load(res.policy_dir)
    np.testing.assert_array_equal(back.act(obs, info), a)
    _, _, _, _, info2 = venv.step(a)  # raises on a masked action
    assert not info2["final_info"]["invalid_action"].any()


def test_dummy_and_native_vec_envs_expose_masks(data: ReplayData) -> None:
    for kind in ("native", "dummy"):
        vec = make_sb3_vec_env("MolmoeKnobs-v0", _kw(data), 3, kind, seed=1)
        obs = vec.reset()
        masks = np.stack(vec.env_method("action_masks"))
        np.testing.assert_array_equal(masks, obs["action_mask"].astype(bool))
        vec.close()
    with pytest.raises(ValueError, match="vec env kind"):
        make_sb3_vec_env("MolmoeKnobs-v0", _kw(data), 2, "subproc")


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="vec_env"):
        PPOConfig(vec_env="fast")
    with pytest.raises(ValueError, match="n_envs"):
        MaskablePPOConfig(n_envs=0)
    with pytest.raises(ValueError, match="unknown"):
        PPOConfig.from_dict({"lr": 1e-3})
    assert PPOConfig.from_dict(PPOConfig(net_arch=(8, 8)).to_dict()) == PPOConfig(net_arch=(8, 8))


def test_anneal_lr_decays_the_step_size_to_zero_and_off_keeps_it_constant(tmp_path, data: ReplayData) -> None:
    rates = {}
    for anneal in (False, True):
        cfg = MaskablePPOConfig(**{**TINY, "eval_freq_steps": 0, "anneal_lr": anneal})
        res = train_maskable_ppo(_kw(data), cfg, tmp_path / f"anneal_{anneal}")
        logged = [float(r["train/learning_rate"]) for r in csv.DictReader(open(tmp_path / f"anneal_{anneal}" / "progress.csv"))
                  if r.get("train/learning_rate")]
        rates[anneal] = (logged, res.model.policy.optimizer.param_groups[0]["lr"])
    constant, last = rates[False]
    assert constant and all(r == pytest.approx(3e-4) for r in constant) and last == pytest.approx(3e-4)
    annealed, last = rates[True]
    # two rollouts of 128 steps: the first update at half the rate, the last at 0
    assert annealed and annealed[0] == pytest.approx(1.5e-4) and last == pytest.approx(0.0, abs=1e-12)
    assert MaskablePPOConfig.from_dict({"anneal_lr": True}).anneal_lr


def test_ent_coef_final_moves_the_entropy_weight_over_training(tmp_path, data: ReplayData) -> None:
    cfg = MaskablePPOConfig(**{**TINY, "eval_freq_steps": 0, "ent_coef": 0.02, "ent_coef_final": 0.0})
    res = train_maskable_ppo(_kw(data), cfg, tmp_path / "ent")
    logged = [float(r["train/ent_coef"]) for r in csv.DictReader(open(tmp_path / "ent" / "progress.csv")) if r.get("train/ent_coef")]
    # two rollouts of 128 steps: the first update at half the weight, the last at 0
    assert logged and logged[0] == pytest.approx(0.01) and res.model.ent_coef == pytest.approx(0.0)
    with pytest.raises(ValueError, match="ent_coef_final"):
        MaskablePPOConfig(ent_coef_final=-0.1)


def test_input_noise_acts_in_training_mode_only_and_trained_policies_act_without_it(tmp_path, data: ReplayData) -> None:
    """``input_noise``: Gaussian noise on the standardised ``lang`` / ``token`` while SB3 updates (training mode),
    none while it collects rollouts or a trained policy acts (eval mode)."""
    from agents.ppo import KnobsFeatureExtractor

    env = gym.make("MolmoeKnobs-v0", **_kw(data))
    obs, _ = env.reset(seed=0)
    batch = {k: torch.as_tensor(np.asarray(v, np.float32))[None].repeat(4, 1) for k, v in obs.items()}
    ext = KnobsFeatureExtractor(env.observation_space, embed_dim=8, input_noise=0.5)
    clean = KnobsFeatureExtractor(env.observation_space, embed_dim=8)
    clean.load_state_dict(ext.state_dict())
    ext.eval()
    torch.testing.assert_close(ext(batch), clean(batch))
    ext.train()
    noisy = ext(batch)
    assert not torch.allclose(noisy, clean(batch)) and not torch.allclose(noisy[0], noisy[1])
    with pytest.raises(ValueError, match="input_noise must be >= 0"):
        PPOConfig(input_noise=-1.0)
    # a trained policy is in eval mode: its actions are deterministic, here and after loading
    res = train_maskable_ppo(_kw(data), MaskablePPOConfig(**TINY, input_noise=0.3), tmp_path / "noisy")
    assert not res.policy.model.policy.training
    assert res.policy.model.policy.features_extractor.input_noise == 0.3
    venv = gym.make_vec("MolmoeKnobs-v0", num_envs=48, vectorization_mode="vector_entry_point", **_kw(data))
    o, info = venv.reset(options={"sample_index": np.arange(48), "budget_ms": np.full(48, data.budget_range_ms[0])})
    a1 = res.policy.act_stage1(o, info)
    np.testing.assert_array_equal(res.policy.act_stage1(o, info), a1)
    np.testing.assert_array_equal(TwoStagePPOPolicy.load(res.policy_dir).act_stage1(o, info), a1)
