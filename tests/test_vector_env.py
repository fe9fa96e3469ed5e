"""Native vector envs: make_vec, equality with N scalar envs given the same draws, same-step
autoreset, masks, invalid actions (raise / penalty, mixed stages), determinism, info layout."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector.vector_env import AutoresetMode

import envs  # noqa: F401
from envs.flat_env import MolmoeKnobsFlatEnv
from envs.knob_space import KnobSpace
from envs.replay_data import ReplayData
from envs.two_stage_env import MolmoeKnobsEnv
from envs.vector_env import MolmoeKnobsFlatVectorEnv, MolmoeKnobsVectorEnv

KS = KnobSpace()
N = 5


@pytest.fixture(scope="module")
def data() -> ReplayData:
    return ReplayData.random(20, lang_dim=6, token_dim=5, seed=2, measured_frac=0.3)


def sample_masked(masks: np.ndarray, rng: np.random.Generator, nvec=(3, 5, 5, 5)) -> np.ndarray:
    """One random valid MultiDiscrete action per row of per-component masks (N, 18)."""
    out = np.zeros((masks.shape[0], len(nvec)), dtype=np.int64)
    for i, m in enumerate(masks):
        off = 0
        for j, n in enumerate(nvec):
            out[i, j] = rng.choice(np.flatnonzero(m[off:off + n]))
            off += n
    return out


def assert_obs_row(vec_obs: dict, i: int, obs: dict) -> None:
    assert set(vec_obs) == set(obs)
    for k in obs:
        np.testing.assert_array_equal(vec_obs[k][i], obs[k], err_msg=k)


def assert_info_row(vec_info: dict, i: int, info: dict) -> None:
    """A scalar env's info equals row i of a vector info (keys present exactly where masked in)."""
    present = {k for k in vec_info if not k.startswith("_") and k not in ("final_info", "final_obs")
               and vec_info["_" + k][i]}
    assert present == set(info), (present ^ set(info))
    for k, v in info.items():
        got = vec_info[k]
        if isinstance(v, dict):
            assert {kk: got[kk][i].item() for kk in v} == v
        elif isinstance(v, np.ndarray):
            np.testing.assert_array_equal(got[i], v, err_msg=k)
        elif isinstance(v, float):
            assert got[i] == pytest.approx(v, rel=1e-12, nan_ok=True), k
        else:
            assert got[i].item() == v, k


def test_make_vec_returns_native_classes(data: ReplayData) -> None:
    for env_id, cls, scalar in (("MolmoeKnobs-v0", MolmoeKnobsVectorEnv, MolmoeKnobsEnv),
                                ("MolmoeKnobsFlat-v0", MolmoeKnobsFlatVectorEnv, MolmoeKnobsFlatEnv)):
        venv = gym.make_vec(env_id, num_envs=3, vectorization_mode="vector_entry_point", data=data)
        assert type(venv) is cls and venv.num_envs == 3
        assert venv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
        one = scalar(data=data)
        assert venv.single_observation_space == one.observation_space
        assert venv.single_action_space == one.action_space
        obs, info = venv.reset(seed=0)
        assert obs in venv.observation_space
        assert venv.action_space.sample().shape[0] == 3
    with pytest.raises(ValueError, match="num_envs"):
        MolmoeKnobsVectorEnv(0, data=data)
    with pytest.raises(NotImplementedError, match="live"):
        MolmoeKnobsFlatVectorEnv(2, data=data, mode="live")


@pytest.mark.parametrize("reward", ["hinge", "hard", "lagrangian", "shaped"])
def test_two_stage_vector_equals_scalar_envs(data: ReplayData, reward: str) -> None:
    rng = np.random.default_rng(0)
    venv = MolmoeKnobsVectorEnv(N, data=data, reward=reward)
    singles = [MolmoeKnobsEnv(data=data, reward=reward) for _ in range(N)]
    for episode in range(3):
        idx = rng.choice(data.n, N, replace=False)
        bud = rng.uniform(*data.budget_range_ms, N)
        vobs, vinfo = venv.reset(options={"sample_index": idx, "budget_ms": bud})
        for i, env in enumerate(singles):
            obs, info = env.reset(options={"sample_index": int(idx[i]), "budget_ms": float(bud[i])})
            assert_obs_row(vobs, i, obs)
            assert_info_row(vinfo, i, info)
        np.testing.assert_array_equal(venv.action_masks(), np.stack([e.action_masks() for e in singles]))
        # stage 0 -> 1
        a0 = sample_masked(venv.action_masks(), rng)
        vobs, vr, vterm, vtrunc, vinfo = venv.step(a0)
        assert not vterm.any() and not vtrunc.any() and (vr == 0).all() and "final_info" not in vinfo
        for i, env in enumerate(singles):
            obs, r, term, trunc, info = env.step(a0[i])
            assert_obs_row(vobs, i, obs)
            assert_info_row(vinfo, i, info)
        np.testing.assert_array_equal(venv.action_masks(), np.stack([e.action_masks() for e in singles]))
        # stage 1 -> terminal (+ same-step autoreset)
        a1 = sample_masked(venv.action_masks(), rng)
        prev = vobs
        vobs, vr, vterm, vtrunc, vinfo = venv.step(a1)
        assert vterm.all() and not vtrunc.any() and vr.dtype == np.float64
        assert vinfo["_final_info"].all() and vinfo["_final_obs"].all()
        for i, env in enumerate(singles):
            obs, r, term, trunc, info = env.step(a1[i])
            assert vr[i] == pytest.approx(r, rel=1e-12, abs=1e-12)
            assert_obs_row(vinfo["final_obs"], i, obs)  # terminal obs = the obs acted on
            assert_obs_row(prev, i, obs)
            assert_info_row(vinfo["final_info"], i, info)


def test_flat_vector_equals_scalar_envs(data: ReplayData) -> None:
    rng = np.random.default_rng(1)
    venv = MolmoeKnobsFlatVectorEnv(N, data=data, reward="shaped")
    singles = [MolmoeKnobsFlatEnv(data=data, reward="shaped") for _ in range(N)]
    idx = rng.choice(data.n, N, replace=False)
    bud = rng.uniform(*data.budget_range_ms, N)
    vobs, vinfo = venv.reset(options={"sample_index": idx, "budget_ms": bud})
    acts = rng.integers(0, 225, N)
    for i, env in enumerate(singles):
        obs, info = env.reset(options={"sample_index": int(idx[i]), "budget_ms": float(bud[i])})
        assert_obs_row(vobs, i, obs)
        assert_info_row(vinfo, i, info)
    nobs, vr, vterm, _, vinfo = venv.step(acts)
    assert vterm.all()
    for i, env in enumerate(singles):
        obs, r, term, _, info = env.step(int(acts[i]))
        assert vr[i] == pytest.approx(r, rel=1e-12, abs=1e-12)
        assert_info_row(vinfo["final_info"], i, info)
        assert_obs_row(vinfo["final_obs"], i, obs)
    # measured latency: present exactly where the cache has it
    fi = vinfo["final_info"]
    np.testing.assert_array_equal(fi["_measured_ms"], np.isfinite(data.measured_ms[idx, acts]))
    np.testing.assert_array_equal(np.isnan(fi["measured_ms"]), ~fi["_measured_ms"])


def test_same_step_autoreset(data: ReplayData) -> None:
    venv = MolmoeKnobsVectorEnv(4, data=data)
    obs, info = venv.reset(seed=3)
    rng = np.random.default_rng(3)
    for _ in range(4):
        obs, r, term, trunc, info = venv.step(sample_masked(venv.action_masks(), rng))
        assert not term.any() and (info["stage"] == 1).all() and (obs["context"][:, 0] == 1).all()
        prev = obs
        obs, r, term, trunc, info = venv.step(sample_masked(venv.action_masks(), rng))
        assert term.all()
        assert info["final_obs"] is prev
        np.testing.assert_array_equal(info["final_info"]["stage"], 2)
        # the returned observation is the new episode's first
        s, b = info["sample_index"], info["budget_ms"]
        np.testing.assert_array_equal(info["stage"], 0)
        np.testing.assert_array_equal(obs["context"], 0.0)
        np.testing.assert_array_equal(obs["token"], 0.0)
        np.testing.assert_array_equal(obs["lang"], data.lang[s])
        np.testing.assert_allclose(obs["budget"][:, 0], b / data.latency_scale_ms, rtol=1e-6)
        np.testing.assert_array_equal(obs["action_mask"], data.stage0_mask[s].astype(np.int8))
        np.testing.assert_array_equal(venv.action_masks(), obs["action_mask"].astype(bool))
        np.testing.assert_array_equal(info["action_mask"], obs["action_mask"].astype(bool))
        assert info["config"]["tier"].tolist() == [""] * 4 and (info["config_index"] == -1).all()
        assert "score" not in info  # outcomes only in final_info
    flat = MolmoeKnobsFlatVectorEnv(3, data=data)
    flat.reset(seed=0)
    obs, r, term, trunc, info = flat.step(np.array([0, 100, 224]))
    assert term.all() and info["final_info"]["config_index"].tolist() == [0, 100, 224]
    np.testing.assert_array_equal(obs["lang"], data.lang[info["sample_index"]])
    np.testing.assert_array_equal(info["stage"], 0)
    np.testing.assert_array_equal(info["final_info"]["stage"], 1)


def test_info_layout_and_dtypes(data: ReplayData) -> None:
    venv = MolmoeKnobsFlatVectorEnv(3, data=data)
    venv.reset(seed=0)
    _, _, _, _, info = venv.step(np.array([1, 2, 3]))
    fi = info["final_info"]
    assert fi["score"].dtype == np.float64 and fi["latency_ms"].dtype == np.float64
    assert fi["sample_index"].dtype == np.int64 and fi["output_tokens"].dtype == np.int64
    assert fi["violation"].dtype == bool and fi["synthetic"].all() and fi["sample_id"].dtype.kind == "U"
    assert fi["config"]["top_k"].dtype == np.int64 and fi["config"]["_top_k"].all()
    assert fi["action_mask"].shape == (3, 225) and fi["action_mask"].dtype == bool
    for k in ("score", "budget_ms", "config", "dataset", "stage", "invalid_action"):
        assert fi["_" + k].dtype == bool and fi["_" + k].shape == (3,)
    np.testing.assert_array_equal(fi["violation"], fi["latency_ms"] > fi["budget_ms"])
    # fresh arrays every call
    o1, i1 = venv.reset(seed=0)
    o2, _, _, _, i2 = venv.step(np.array([1, 2, 3]))
    for k in o1:
        assert not np.shares_memory(o1[k], o2[k])
    assert not np.shares_memory(i1["sample_index"], i2["sample_index"])


def test_raise_mode_names_sub_env_and_keeps_state(data: ReplayData) -> None:
    venv = MolmoeKnobsVectorEnv(3, data=data, strict=True)  # strict: every component checked, masked actions raise
    obs, info = venv.reset(seed=1)
    acts = np.array([[0, 0, 0, 0], [1, 1, 2, 0], [2, 4, 0, 0]])
    with pytest.raises(ValueError, match=r"sub-env 1: action \[1, 1, 2, 0\] is masked at stage 0.*top-k index = 2 "
                                         r"not in \[0\].*1 sub-envs took a masked action"):
        venv.step(acts)
    np.testing.assert_array_equal(venv.action_masks(), obs["action_mask"].astype(bool))  # unchanged
    acts[1, 2] = 0
    venv.step(acts)
    bad = np.array([[0, 0, 0, 4], [1, 1, 0, 3], [2, 4, 0, 1]])  # sub-env 2 (p = 5) allows active-blocks index 0 only
    with pytest.raises(ValueError, match=r"sub-env 2: action \[2, 4, 0, 1\] is masked at stage 1.*active-blocks index = 1 not in \[0\]"):
        venv.step(bad)
    with pytest.raises(ValueError, match="outside MultiDiscrete"):
        venv.step(np.array([[0, 0, 0, 4], [1, 1, 0, 3], [2, 5, 0, 0]]))
    with pytest.raises(ValueError, match=r"shape \(3, 4\)"):
        venv.step(np.zeros((3, 3), dtype=np.int64))
    bad[2, 3] = 0
    _, _, term, _, _ = venv.step(bad)
    assert term.all()
    flat = MolmoeKnobsFlatVectorEnv(2, data=data, strict=True)
    flat.reset(seed=0)
    with pytest.raises(ValueError, match="action 300 of sub-env 1 outside Discrete"):
        flat.step(np.array([0, 300]))


def test_penalty_mode_with_mixed_stages(data: ReplayData) -> None:
    venv = MolmoeKnobsVectorEnv(4, data=data, invalid_action="penalty", reward="hard", strict=True)
    bud = np.full(4, float(np.mean(data.budget_range_ms)))
    venv.reset(options={"sample_index": np.arange(4), "budget_ms": bud})
    # sub-envs 0 and 1 take masked stage-0 actions; 2 and 3 go to stage 1
    obs, r, term, _, info = venv.step(np.array([[0, 0, 1, 0], [0, 0, 0, 2], [1, 2, 0, 0], [2, 0, 0, 0]]))
    np.testing.assert_array_equal(term, [True, True, False, False])
    np.testing.assert_array_equal(r, [-1.0, -1.0, 0.0, 0.0])
    fi = info["final_info"]
    np.testing.assert_array_equal(info["_final_info"], [True, True, False, False])
    np.testing.assert_array_equal(fi["invalid_action"][:2], True)
    np.testing.assert_array_equal(fi["_score"], False)  # no outcome for an invalid action
    np.testing.assert_array_equal(fi["stage"][:2], 1)
    np.testing.assert_array_equal(info["stage"], [0, 0, 1, 1])
    np.testing.assert_array_equal(obs["context"][:2], 0.0)
    np.testing.assert_array_equal(obs["context"][2:, 0], 1.0)
    np.testing.assert_array_equal(obs["token"][:2], 0.0)
    np.testing.assert_array_equal(obs["token"][2], data.tokens[2, 1, 2])
    np.testing.assert_array_equal(venv.action_masks(), obs["action_mask"].astype(bool))
    new_s = info["sample_index"]
    np.testing.assert_array_equal(new_s[2:], [2, 3])
    # next step: 0, 1 at stage 0 (one valid, one not), 2 finishes validly, 3 breaks the pin
    obs, r, term, _, info = venv.step(np.array([[0, 0, 0, 0], [0, 0, 3, 0], [1, 2, 4, 2], [1, 0, 0, 0]]))
    np.testing.assert_array_equal(term, [False, True, True, True])
    c = KS.index(("medium", 3, 8, 16))
    lat = float(data.total_ms[2, c])
    expect = float(data.score[2, c]) if lat <= bud[2] else -1.0
    assert r[2] == pytest.approx(expect) and r[1] == -1.0 and r[3] == -1.0 and r[0] == 0.0
    fi = info["final_info"]
    np.testing.assert_array_equal(fi["_score"], [False, False, True, False])
    assert fi["config_index"][2] == c and fi["config"]["tier"][2] == "medium" and fi["config"]["blocks"][2] == 16
    assert fi["config"]["tier"][3] == "high" and fi["config"]["p"][3] == 1 and fi["config"]["top_k"][3] == -1
    np.testing.assert_array_equal(fi["invalid_action"][1:], [True, False, True])
    np.testing.assert_array_equal(info["stage"], [1, 0, 0, 0])


def test_incomplete_mask_vector(data: ReplayData) -> None:
    valid, score = data.valid.copy(), data.score.copy()
    c = KS.index(("low", 1, 4, 12))
    valid[0, c], score[0, c] = False, np.nan
    holey = dataclasses.replace(data, valid=valid, score=score)
    flat = MolmoeKnobsFlatVectorEnv(2, data=holey, incomplete="mask", invalid_action="raise")
    obs, _ = flat.reset(options={"sample_index": np.array([0, 1])})
    np.testing.assert_array_equal(obs["action_mask"], holey.valid[[0, 1]].astype(np.int8))
    with pytest.raises(ValueError, match=rf"action {c} .* of sub-env 0 is masked.*no outcome"):
        flat.step(np.array([c, c]))
    two = MolmoeKnobsVectorEnv(2, data=holey, incomplete="mask", invalid_action="raise")
    two.reset(options={"sample_index": np.array([1, 0])})
    two.step(np.array([[0, 0, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match=r"sub-env 1: action \[0, 0, 0, 0\]: configuration low/p1/k4/b12 has no outcome"):
        two.step(np.array([[0, 0, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="not eligible"):
        MolmoeKnobsVectorEnv(2, data=holey).reset(options={"sample_index": 0})


@pytest.mark.parametrize("cls", [MolmoeKnobsVectorEnv, MolmoeKnobsFlatVectorEnv])
def test_vector_determinism(data: ReplayData, cls) -> None:
    def run(seed: int) -> list:
        venv = cls(6, data=data)
        obs, info = venv.reset(seed=seed)
        rng = np.random.default_rng(0)
        out = [(obs, info["sample_index"], info["budget_ms"])]
        for _ in range(6):
            m = venv.action_masks()
            act = sample_masked(m, rng) if cls is MolmoeKnobsVectorEnv else rng.integers(0, 225, 6)
            obs, r, term, _, info = venv.step(act)
            out.append((obs, info["sample_index"], info["budget_ms"], r))
        return out

    a, b, c = run(11), run(11), run(12)
    for x, y in zip(a, b):
        for k in x[0]:
            np.testing.assert_array_equal(x[0][k], y[0][k])
        for u, v in zip(x[1:], y[1:]):
            np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0][1], c[0][1]) or not np.array_equal(a[0][2], c[0][2])


def test_reset_options_validation(data: ReplayData) -> None:
    venv = MolmoeKnobsFlatVectorEnv(3, data=data)
    obs, info = venv.reset(options={"sample_id": data.sample_ids[4], "budget_ms": 16.0})
    np.testing.assert_array_equal(info["sample_index"], 4)
    np.testing.assert_array_equal(info["budget_ms"], 16.0)
    with pytest.raises(ValueError, match="budget_ms -1.0"):
        venv.reset(options={"budget_ms": [15.0, -1.0, 15.0]})
    with pytest.raises(ValueError, match="out of range"):
        venv.reset(options={"sample_index": [0, 1, 99]})
    with pytest.raises(ValueError, match="unknown reset option"):
        venv.reset(options={"seed": 1})
    with pytest.raises(ValueError, match="seed must be an int"):
        venv.reset(seed=[1, 2, 3])


def test_two_stage_vector_equals_scalar_envs_on_incomplete_data(data: ReplayData) -> None:
    """Lockstep episodes on data with missing outcomes (incomplete="mask"): the per-request
    validity and mask tables (not the shared ones of complete data) give the scalar envs' results."""
    rng = np.random.default_rng(5)
    valid = data.valid & (rng.random(data.valid.shape) >= 0.2)
    holey = dataclasses.replace(data, valid=valid, score=np.where(valid, data.score, np.nan))
    venv = MolmoeKnobsVectorEnv(N, data=holey, incomplete="mask", reward="shaped")
    assert not venv._complete  # the path under test
    singles = [MolmoeKnobsEnv(data=holey, incomplete="mask", reward="shaped") for _ in range(N)]
    md_of = np.stack([KS.to_multidiscrete(c) for c in range(len(KS))])
    for _ in range(3):
        idx = rng.choice(holey.n, N, replace=False)
        bud = rng.uniform(*holey.budget_range_ms, N)
        vobs, vinfo = venv.reset(options={"sample_index": idx, "budget_ms": bud})
        for i, env in enumerate(singles):
            obs, info = env.reset(options={"sample_index": int(idx[i]), "budget_ms": float(bud[i])})
            assert_obs_row(vobs, i, obs)
            assert_info_row(vinfo, i, info)
        # a configuration with an outcome per sub-env: its (tier, p) first, then the whole action
        full = md_of[[rng.choice(np.flatnonzero(holey.valid[s])) for s in idx]]
        first = full.copy()
        first[:, 2:] = 0
        vobs, vr, vterm, _, vinfo = venv.step(first)
        assert not vterm.any()
        for i, env in enumerate(singles):
            obs, r, term, _, info = env.step(first[i])
            assert_obs_row(vobs, i, obs)
            assert_info_row(vinfo, i, info)
        np.testing.assert_array_equal(venv.action_masks(), np.stack([e.action_masks() for e in singles]))
        vobs, vr, vterm, _, vinfo = venv.step(full)
        assert vterm.all()
        for i, env in enumerate(singles):
            obs, r, term, _, info = env.step(full[i])
            assert vr[i] == pytest.approx(r, rel=1e-12, abs=1e-12)
            assert_obs_row(vinfo["final_obs"], i, obs)
            assert_info_row(vinfo["final_info"], i, info)


def test_line_aligned_tables_hold_the_data(data: ReplayData) -> None:
    """The gather tables start on a cache line and equal the replay data they copy."""
    venv = MolmoeKnobsVectorEnv(2, data=data)
    for table, source in ((venv._tokens_f, data.tokens.reshape(-1, data.token_dim)), (venv._lang, data.lang)):
        assert table.ctypes.data % 64 == 0 and table.flags.c_contiguous
        np.testing.assert_array_equal(table, source)
    assert venv._outcome_rec.ctypes.data % 64 == 0
    np.testing.assert_array_equal(venv._outcome_rec[:, 0], data.score.reshape(-1))
