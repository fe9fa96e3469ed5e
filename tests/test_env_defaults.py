"""The registered envs on their default arguments (issue 16, items 1 and 13): gymnasium's and
SB3's ``check_env`` pass, random actions run for 10,000 episodes, a stage ignores the action
components it does not read unless ``strict=True``; one ``EnvConfig`` holds the arguments; the
env docstrings follow Gymnasium's section layout and their examples run."""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import time
import warnings

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers the ids)
from envs.env_settings import EnvConfig
from envs.flat_env import MolmoeKnobsFlatEnv
from envs.replay_data import ReplayData
from envs.two_stage_env import MolmoeKnobsEnv
from envs.vector_env import MolmoeKnobsFlatVectorEnv, MolmoeKnobsVectorEnv
from tests.test_envs import write_tiny_cache

IDS = ("MolmoeKnobs-v0", "MolmoeKnobsFlat-v0")


@pytest.fixture(scope="module")
def data() -> ReplayData:
    return ReplayData.random(32, lang_dim=6, token_dim=5, seed=4)


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("defaults") / "tiny.h5"
    write_tiny_cache(path)
    return str(path)


# ---------------------------------------------------------------------------------------- item 1: checkers
@pytest.mark.parametrize("env_id", IDS)
def test_checkers_pass_on_registered_defaults(env_id: str, cache_path: str) -> None:
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Box observation space (maximum|minimum) value is.*infinity")
        warnings.filterwarnings("ignore", message=".*is different from the unwrapped version.*")
        env = gym.make(env_id, cache=cache_path)  # nothing but the cache: the registered defaults
        check_env(env.unwrapped, skip_render_check=True)
        check_env(env, skip_render_check=True)
        sb3_check_env(gym.make(env_id, cache=cache_path), warn=True)


def test_stage_irrelevant_components_ignored_but_masks_pin_them(data: ReplayData) -> None:
    env = MolmoeKnobsEnv(data=data)
    assert env.strict is False and env.invalid_action == "penalty"
    obs, _ = env.reset(seed=0)
    m = env.action_masks()
    t_, p_, k_, b_ = env.nvec
    # the masks still pin top-k and the active-blocks index at stage 0 (MaskablePPO samples index 0)
    assert m[t_ + p_:t_ + p_ + k_].tolist() == [True] + [False] * (k_ - 1)
    assert m[t_ + p_ + k_:].tolist() == [True] + [False] * (b_ - 1)
    _, r, term, _, info = env.step(np.array([1, 2, 4, 3]))  # top-k / blocks not read at stage 0
    assert (r, term, info["invalid_action"]) == (0.0, False, False)
    assert info["config"] == {"tier": "medium", "p": 3, "top_k": -1, "blocks": -1}
    m1 = env.action_masks()
    assert m1[:t_].tolist() == [False, True, False] and m1[t_:t_ + p_].tolist() == [False, False, True, False, False]
    _, r, term, _, info = env.step(np.array([0, 4, 4, 2]))  # tier / p not read at stage 1
    assert term and not info["invalid_action"]
    assert info["config"] == {"tier": "medium", "p": 3, "top_k": 8, "blocks": 16}
    # a masked component the stage does read: penalty by default, ValueError with invalid_action="raise"
    env.reset(seed=1)
    env.step(np.array([0, 4, 0, 0]))  # p = 5: only active-blocks index 0
    _, r, term, _, info = env.step(np.array([0, 4, 0, 1]))
    assert (r, term, info["invalid_action"]) == (-1.0, True, True)
    raising = MolmoeKnobsEnv(data=data, invalid_action="raise")
    raising.reset(seed=1)
    raising.step(np.array([0, 4, 3, 3]))  # still ignored at stage 0
    with pytest.raises(ValueError, match="active-blocks index = 1 not in \\[0\\]"):
        raising.step(np.array([2, 0, 0, 1]))


def test_strict_mode_keeps_raising(data: ReplayData) -> None:
    env = MolmoeKnobsEnv(data=data, strict=True)
    assert env.invalid_action == "raise"
    env.reset(seed=0)
    with pytest.raises(ValueError, match="masked at stage 0.*top-k index = 4 not in \\[0\\]"):
        env.step(np.array([1, 2, 4, 0]))
    env.step(np.array([1, 2, 0, 0]))
    with pytest.raises(ValueError, match="masked at stage 1.*tier index = 0 not in \\[1\\]"):
        env.step(np.array([0, 2, 0, 0]))
    venv = MolmoeKnobsVectorEnv(2, data=data, strict=True)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match="sub-env 1.*top-k index = 1"):
        venv.step(np.array([[0, 0, 0, 0], [0, 0, 1, 0]]))
    with pytest.raises(ValueError, match="strict=.*True, False"):
        MolmoeKnobsEnv(data=data, strict="yes")


def test_vector_env_ignores_like_the_scalar_env(data: ReplayData) -> None:
    """Non-strict vector steps (lockstep and mixed stages) agree with the scalar env."""
    n = 6
    rng = np.random.default_rng(3)
    venv = MolmoeKnobsVectorEnv(n, data=data)
    scal = [MolmoeKnobsEnv(data=data) for _ in range(n)]
    bud = np.full(n, float(np.mean(data.budget_range_ms)))
    for step in range(40):
        if step % 5 == 0:  # re-pin all: same requests and budgets in both
            idx = rng.integers(0, data.n, n)
            venv.reset(options={"sample_index": idx, "budget_ms": bud})
            for e, i in zip(scal, idx):
                e.reset(options={"sample_index": int(i), "budget_ms": float(bud[0])})
        acts = venv.action_space.sample()
        _, r, term, _, info = venv.step(acts)
        for j, e in enumerate(scal):
            _, rj, tj, _, ij = e.step(acts[j])
            assert r[j] == pytest.approx(rj) and term[j] == tj
            fin = info["final_info"] if tj else info
            if tj:
                assert fin["config_index"][j] == ij["config_index"] and fin["invalid_action"][j] == ij["invalid_action"]
                e.reset(options={"sample_index": int(info["sample_index"][j]), "budget_ms": float(info["budget_ms"][j])})
            else:
                assert info["stage"][j] == 1 and info["config"]["tier"][j] == ij["config"]["tier"]


def test_ten_thousand_random_action_episodes(cache_path: str, data: ReplayData) -> None:
    t0 = time.perf_counter()
    # scalar, through gym.make (with gymnasium's passive checker wrapper), registered defaults
    for env_id in IDS:
        env = gym.make(env_id, cache=cache_path)
        env.action_space.seed(0)
        env.reset(seed=0)
        episodes = 0
        while episodes < 10_000:
            _, r, term, trunc, info = env.step(env.action_space.sample())
            assert np.isfinite(r) and not trunc
            if term:
                episodes += 1
                env.reset()
    # vector: 10,000 episodes of each vector env
    for cls in (MolmoeKnobsVectorEnv, MolmoeKnobsFlatVectorEnv):
        venv = cls(500, data=data)
        venv.action_space.seed(1)
        venv.reset(seed=1)
        episodes = 0
        while episodes < 10_000:
            _, r, term, _, _ = venv.step(venv.action_space.sample())
            assert np.isfinite(r).all()
            episodes += int(term.sum())
    assert time.perf_counter() - t0 < 60


# ---------------------------------------------------------------------------------------- item 13: EnvConfig
def test_env_config_object_and_keywords(data: ReplayData) -> None:
    cfg = EnvConfig(data=data, reward="hard", budgets=[10.0, 20.0])
    for env in (MolmoeKnobsEnv(cfg), MolmoeKnobsFlatEnv(config=cfg), gym.make("MolmoeKnobs-v0", config=cfg).unwrapped):
        assert env.config == cfg and env.reward_config.mode == "hard"
    # keywords replace fields of a given config; gym.make(..., reward="hinge") keeps working
    env = MolmoeKnobsEnv(cfg, reward="hinge")
    assert env.reward_config.mode == "hinge" and cfg.reward == "hard"
    assert gym.make("MolmoeKnobsFlat-v0", data=data, reward="hinge").unwrapped.reward_config.mode == "hinge"
    venv = gym.make_vec("MolmoeKnobs-v0", num_envs=3, vectorization_mode="vector_entry_point", data=data, reward="shaped")
    assert venv.unwrapped.reward_config.mode == "shaped"
    assert MolmoeKnobsFlatVectorEnv(2, cfg).config == cfg
    with pytest.raises(TypeError, match=r"unknown env argument\(s\) \['rewards'\]; valid arguments: \['cache', 'data'"):
        MolmoeKnobsEnv(data=data, rewards="hinge")
    with pytest.raises(TypeError, match="EnvConfig, got str.*cache="):
        MolmoeKnobsEnv("outputs/cache.h5")
    # one definition: the envs take no keyword arguments of their own besides render_mode
    import inspect

    for cls in (MolmoeKnobsEnv, MolmoeKnobsFlatEnv, MolmoeKnobsVectorEnv, MolmoeKnobsFlatVectorEnv):
        params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "num_envs")]
        assert params[0] == "config" and params[-1] == "kwargs" and set(params[1:-1]) <= {"render_mode"}, (cls, params)
    names = [f.name for f in dataclasses.fields(EnvConfig)]
    for name in names:  # every field documented in EnvConfig's docstring
        assert f"    {name}:" in EnvConfig.__doc__, name


# ---------------------------------------------------------------------------------------- item 13: docstrings
SECTIONS = ("Description", "Action Space", "Observation Space", "Rewards", "Starting State", "Episode End", "Arguments")


@pytest.mark.parametrize("cls", [MolmoeKnobsEnv, MolmoeKnobsFlatEnv])
def test_env_docstring_sections(cls) -> None:
    doc = cls.__doc__
    pos = [doc.find(f"## {s}\n") for s in SECTIONS]
    assert all(p >= 0 for p in pos) and pos == sorted(pos), dict(zip(SECTIONS, pos))


@pytest.mark.parametrize("module", ["envs.two_stage_env", "envs.flat_env"])
def test_env_doctests_run(module: str) -> None:
    mod = importlib.import_module(module)
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted >= 5 and res.failed == 0, res
