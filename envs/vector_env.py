"""Native vector versions of the replay envs: one numpy step for all sub-envs, same-step autoreset.

``gymnasium.make_vec("MolmoeKnobs-v0" | "MolmoeKnobsFlat-v0", num_envs=N,
vectorization_mode="vector_entry_point", **kwargs)`` returns :class:`MolmoeKnobsVectorEnv` /
:class:`MolmoeKnobsFlatVectorEnv`; ``kwargs`` are the scalar envs' (the fields of
:class:`envs.env_settings.EnvConfig`, or ``config=EnvConfig(...)``), loaded once for all sub-envs.

Semantics follow the scalar envs exactly (observations, masks, rewards, info keys and
values); what differs is the gymnasium vector convention:

- ``metadata["autoreset_mode"] = AutoresetMode.SAME_STEP``: a sub-env whose episode ends is
  reset within the same ``step``; the returned observation is the new episode's first one, the
  top-level ``info`` rows are the new episode's reset info, and the finished episode's
  ``info`` goes to ``info["final_info"]`` (a dict of arrays with ``_key`` masks, rows of the
  sub-envs that finished) with ``info["_final_info"]`` marking those sub-envs.
- ``info["final_obs"]`` holds the finished episodes' terminal observations (the observation
  the last action was taken on) *batched like the observation* (dict of (num_envs, ...)
  arrays; rows where ``info["_final_obs"]`` is False are unspecified), not gymnasium's object
  array of per-env dicts, which would cost more than the whole step at thousands of envs.
  It is the observation batch returned by the previous call (episodes always terminate and are
  never truncated, so nothing bootstraps from it).
- ``info["action_mask"]`` is a bool view of the returned ``obs["action_mask"]``;
  ``info["sample_id"]`` / ``info["dataset"]`` are read-only arrays shared by the infos of one
  request draw, and the ``_key`` masks of one info dict share one array (read-only use).
- Info values are batched like gymnasium's ``SyncVectorEnv`` batches the scalar envs' infos
  (floats float64, ints int64, bools bool, ``config`` a nested dict with its own masks), except
  that strings are numpy str arrays (not object arrays); masked-out rows hold NaN / -1 /
  False / ``""``.
- Draws (requests, budgets) come from one generator for all sub-envs, seeded by
  ``reset(seed=int)`` (so the draws differ from N scalar envs' own generators; pinning
  requests and budgets makes the two agree exactly); ``reset(options=)`` takes ``sample_index`` / ``sample_id`` /
  ``budget_ms`` (``budget_u`` in relative, ``ttft_budget_ms`` + ``tpot_budget_ms`` in slo budget
  mode) as a scalar (all sub-envs) or a (num_envs,) array.
- Like the scalar envs, a stage ignores the action components it does not read unless
  ``strict=True``. A masked action in any sub-env raises a ValueError before any state changes
  (``invalid_action="raise"``, the default under ``strict=True``), naming the sub-env, the
  action and the valid sets; with ``"penalty"`` (the default otherwise) those sub-envs end
  with reward −1.0 and ``invalid_action`` True.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector import VectorEnv
from gymnasium.vector.utils import batch_space
from gymnasium.vector.vector_env import AutoresetMode

from envs.budgets import slo_ratio
from envs.env_settings import (
    INFO_DOC,
    EnvConfig,
    INFO_KEYS_ALWAYS,
    INVALID_ACTION_REWARD,
    ReplaySettings,
    check_reset_options,
    resolve_settings,
)
from envs.observations import flat_observation_space, two_stage_observation_space
from envs.reward import compute_reward
from envs.two_stage_env import masked_action_message


#: Autoreset draws are made ahead for this many steps of all sub-envs at once.
DRAW_BLOCK_STEPS = 64


def _fast_str(values: list[str]) -> np.ndarray:
    """A str array whose item size is 4, 8, 16 or 32 bytes where the strings allow: ``np.take``
    copies those sizes with fixed-size loops, other sizes with one memmove per element (about
    4x slower at thousands of elements)."""
    width = max(1, max(len(v) for v in values))
    width = next((w for w in (1, 2, 4, 8) if w >= width), width)
    return np.array(values, dtype=f"U{width}")


def _line_aligned(a: np.ndarray) -> np.ndarray:
    """``a`` as a C-contiguous array starting on a 64-byte cache-line boundary (a copy unless it
    already is). Large numpy arrays start 16 bytes past a page boundary (malloc's header), so
    rows of 32 / 256 bytes gathered at random would touch one cache line more than needed
    (a record of 32 bytes straddles two lines every other row)."""
    a = np.ascontiguousarray(a)
    if a.ctypes.data % 64 == 0:
        return a
    buf = np.empty(a.nbytes + 64, dtype=np.uint8)
    off = -buf.ctypes.data % 64
    out = buf[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _str_table(values: np.ndarray) -> tuple[np.ndarray, np.dtype]:
    """A numpy str array as fixed-width void records (gathering those is a plain memcpy, about
    twice as fast as gathering the str array) and its str dtype to view the gather back."""
    u = np.ascontiguousarray(np.asarray(values).astype(str))
    return u.view(f"V{u.dtype.itemsize}"), u.dtype


class _ReplayVectorEnv(VectorEnv):
    """Shared state and tables of the replay vector envs (requests, budgets, outcomes, info)."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, num_envs: int, config: EnvConfig | None = None, *, render_mode: str | None = None,
                 **kwargs: Any) -> None:
        if isinstance(num_envs, (bool, np.bool_)) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        if render_mode is not None:
            raise ValueError(f"render_mode={render_mode!r}: this env does not render")
        self.num_envs = int(num_envs)
        self.config = EnvConfig.build(config, **kwargs)
        st: ReplaySettings = resolve_settings(self.config)
        self.settings = st
        self.strict = st.strict
        d = self.data = st.data
        self.reward_config = st.reward
        self.budget_sampler = st.budgets
        self.episode_budgets = st.episode_budgets
        self._slo = self.episode_budgets.slo
        self.invalid_action = st.invalid_action
        self.latency_scale_ms = d.latency_scale_ms
        n, c = d.n, d.n_configs
        self._n, self._c = n, c
        # one 32-byte record per (request, configuration): an outcome lookup touches one cache
        # line instead of seven. Columns: score, total, vision, prefill, decode, measured ms,
        # output tokens (exact in float32 below 2**24), padding.
        rec = np.zeros((n * c, 8), dtype=np.float32)
        for j, a in enumerate((d.score, d.total_ms, d.vision_ms, d.prefill_ms, d.decode_ms, d.measured_ms, d.output_tokens)):
            rec[:, j] = a.reshape(-1)
        self._outcome_rec = _line_aligned(rec)
        self._valid_f = d.valid.reshape(-1)
        self._complexity = d.complexity.astype(np.float64)
        self._lang = _line_aligned(d.lang)
        # budget features: columns 1, 2 per request, columns 0 and 3 depend on the budget
        self._budget_base = np.zeros((n, 4), dtype=np.float32)
        self._budget_base[:, 1] = d.cheapest_ms / self.latency_scale_ms
        self._budget_base[:, 2] = d.full_ms / self.latency_scale_ms
        self._full = d.full_ms
        self._request = _line_aligned(d.request)
        self._ids_v, self._ids_dtype = _str_table(d.sample_ids)
        self._ds_v, self._ds_dtype = _str_table(d.datasets)
        ca = d.config_arrays
        # per-configuration tables with a sentinel last entry, so that index -1 reads "not chosen"
        self._cfg_tier_i = np.append(ca["tier"], -1)
        self._cfg_p = np.append(ca["p"], -1)
        self._cfg_k = np.append(ca["top_k"], -1)
        self._cfg_blocks = np.append(ca["blocks"], -1)
        self._tier_names = _fast_str(list(d.knob_space.tiers) + [""])
        self._cfg_tier = np.take(self._tier_names, self._cfg_tier_i)  # tier name per configuration index
        self._positions = np.append(np.asarray(d.knob_space.insertion_positions, dtype=np.int64), -1)
        self._s = np.zeros(self.num_envs, dtype=np.int64)
        self._b = np.zeros(self.num_envs, dtype=np.float64)
        self._bt = np.full(self.num_envs, np.nan)  # SLO mode's TTFT / TPOT budgets (NaN otherwise)
        self._bp = np.full(self.num_envs, np.nan)
        self._req: tuple[np.ndarray, np.ndarray] | None = None  # (ids, datasets) of self._s
        self._pool_s = np.zeros(0, dtype=np.int64)  # requests / budgets drawn ahead (see _draw)
        self._pool_b = np.zeros(0, dtype=np.float64)
        self._pool_bt = self._pool_bp = np.zeros(0, dtype=np.float64)
        self._pool_pos = 0
        self._obs: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------ draws / state
    def _draw(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``k`` requests (uniform over the eligible ones) and budgets (fresh arrays: requests,
        budgets, SLO mode's TTFT / TPOT budgets (NaN in the other modes)).

        Drawn ahead in blocks of :data:`DRAW_BLOCK_STEPS` steps' worth from one generator call
        (a generator call per step is a sizeable part of a flat step); the sequence is fixed by
        the seed, and ``reset(seed=)`` discards the block drawn with the previous generator.
        """
        if self._pool_pos + k > self._pool_s.size:
            eb = self.episode_budgets
            # absolute mode draws 2 rows (the draws of before the budget modes existed)
            u = self.np_random.random((2 if eb.mode == "absolute" else 4, max(k, DRAW_BLOCK_STEPS * self.num_envs)))
            e = self.settings.eligible
            i = (u[0] * e.size).astype(np.int64)
            self._pool_s = i if e.size == self._n else e[i]  # eligible is sorted: all eligible ⇔ arange(n)
            self._pool_b, self._pool_bt, self._pool_bp = eb.from_uniform(u[1:], self._pool_s)
            self._pool_pos = 0
        i = self._pool_pos
        self._pool_pos = i + k
        return (self._pool_s[i:i + k].copy(), self._pool_b[i:i + k].copy(), self._pool_bt[i:i + k].copy(),
                self._pool_bp[i:i + k].copy())

    def _set_requests(self, s: np.ndarray, b: np.ndarray, bt: np.ndarray | None = None, bp: np.ndarray | None = None) -> None:
        self._s, self._b, self._req = s, b, None
        self._bt = np.full(len(s), np.nan) if bt is None else bt
        self._bp = np.full(len(s), np.nan) if bp is None else bp

    def _request_strings(self) -> tuple[np.ndarray, np.ndarray]:
        """(sample ids, dataset names) of the current requests: gathered once per draw and
        handed out read-only to every info until the next draw (copying ~100 KB of str per
        info per step would cost more than the rest of the info)."""
        if self._req is None:
            ids = np.take(self._ids_v, self._s).view(self._ids_dtype)
            ds = np.take(self._ds_v, self._s).view(self._ds_dtype)
            ids.flags.writeable = False
            ds.flags.writeable = False
            self._req = (ids, ds)
        return self._req

    def _reset_state(self, seed: int | None, options: dict[str, Any] | None) -> None:
        if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"seed must be an int or None (one generator draws for all sub-envs), got {seed!r}")
        super().reset(seed=None if seed is None else int(seed))
        if seed is not None:
            self._pool_pos = self._pool_s.size  # drop draws made with the previous generator
        opts = check_reset_options(options)
        s, b, bt, bp = self._draw(self.num_envs)
        d, n_env = self.data, self.num_envs
        has_i, has_s = opts.get("sample_index") is not None, opts.get("sample_id") is not None
        if has_i and has_s:
            raise ValueError("options: give sample_index or sample_id, not both")
        if has_i or has_s:
            if has_s:
                ids = np.broadcast_to(np.asarray(opts["sample_id"], dtype=object), (n_env,))
                s = np.array([d.index_of(x) for x in ids], dtype=np.int64)
            else:
                raw = np.asarray(opts["sample_index"])
                if raw.dtype.kind not in "iu":
                    raise ValueError(f"options sample_index {opts['sample_index']!r} must be int(s)")
                s = np.broadcast_to(raw, (n_env,)).astype(np.int64)
                bad = (s < 0) | (s >= d.n)
                if bad.any():
                    raise ValueError(f"options sample_index {s[bad][0]} out of range [0, {d.n}) of split {d.split!r}")
            bad = ~self.settings.eligible_mask[s]
            if bad.any():
                i = int(s[bad][0])
                raise ValueError(
                    f"request {i} ({d.sample_id_list[i]!r}) is not eligible: it has outcomes for "
                    f"{int(d.valid[i].sum())} of {d.n_configs} configurations (see incomplete=)"
                )
        s = np.array(s, dtype=np.int64)
        pin = self.episode_budgets.pinned(opts, s)
        if pin is not None:
            b, bt, bp = pin
        self._set_requests(s, np.array(b, dtype=np.float64), np.array(bt, dtype=np.float64), np.array(bp, dtype=np.float64))

    def _budget_features(self, s: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.take(self._budget_base, s, axis=0)
        out[:, 0] = b / self.latency_scale_ms
        out[:, 3] = b / self._full[s]
        return out

    def _request_obs(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Add the ``request`` key (and ``slo`` in SLO mode) of the current requests."""
        obs["request"] = np.take(self._request, self._s, axis=0)
        if self._slo:
            obs["slo"] = np.stack([self._bt / self.latency_scale_ms, self._bp / self.data.tpot_scale_ms], axis=1).astype(np.float32)
        return obs

    # ------------------------------------------------------------------ outcomes / info
    def _outcomes(self, s: np.ndarray, c: np.ndarray) -> dict[str, np.ndarray]:
        """Outcomes of requests ``s`` at configurations ``c`` (int64 (k,), pairs with an outcome):
        float64 arrays (``output_tokens`` int64). The one place outcomes come from (live mode
        overrides it)."""
        g = np.take(self._outcome_rec, s * self._c + c, axis=0)  # (k, 8) float32, one cache line per row
        rec = np.empty((6, g.shape[0]), dtype=np.float64)  # one transposing cast: every field a contiguous row
        np.copyto(rec, g[:, :6].T)
        return {
            "score": rec[0],
            "latency_ms": rec[1],
            "vision_ms": rec[2],
            "prefill_ms": rec[3],
            "decode_ms": rec[4],
            "measured_ms": rec[5],
            "output_tokens": g[:, 6].astype(np.int64),
        }

    def _info(self, *, s: np.ndarray, b: np.ndarray, strings: tuple[np.ndarray, np.ndarray], mask_view: np.ndarray,
              stage: np.ndarray, keep: np.ndarray, tier: np.ndarray, p: np.ndarray, top_k: np.ndarray,
              blocks: np.ndarray, config_index: np.ndarray, invalid: np.ndarray) -> dict[str, Any]:
        """The always-present info keys as arrays over all sub-envs, each masked by ``keep``.
        All arguments must be fresh arrays (they are handed out), except ``strings`` (read-only).
        ``tier``: str (num_envs,) tier names. The ``_key`` masks of one info share one array
        (read them, do not write them)."""
        n_env = self.num_envs
        info: dict[str, Any] = {
            "budget_ms": b,
            "config": {"tier": tier, "p": p, "top_k": top_k, "blocks": blocks,
                       "_tier": keep, "_p": keep, "_top_k": keep, "_blocks": keep},
            "config_index": config_index,
            "sample_id": strings[0],
            "sample_index": s,
            "dataset": strings[1],
            "synthetic": np.full(n_env, self.data.synthetic),
            "action_mask": mask_view,
            "stage": stage,
            "invalid_action": invalid,
        }
        for k in INFO_KEYS_ALWAYS:
            info["_" + k] = keep
        if self._slo:  # the budgets of the requests the info describes (the current ones)
            info["ttft_budget_ms"], info["_ttft_budget_ms"] = self._bt.copy(), keep
            info["tpot_budget_ms"], info["_tpot_budget_ms"] = self._bp.copy(), keep
        return info

    def _reward(self, out: dict[str, np.ndarray], b: np.ndarray, s: np.ndarray, c: np.ndarray) -> np.ndarray:
        """float64 (k,) rewards of outcomes ``out`` of requests ``s`` at configurations ``c``
        (valid pairs) under budgets ``b``; gathers the complexity / reference latency only for
        the reward modes that read them."""
        mode = self.reward_config.mode
        cx = self._complexity[c] if mode == "shaped" else 0.0
        ref = self._full[s] if mode == "lagrangian" else None
        if self._slo and mode != "lagrangian":  # the normalised latency against budget 1
            return compute_reward(out["score"], self._slo_rho(out), 1.0, cx, self.reward_config, ref)
        return compute_reward(out["score"], out["latency_ms"], b, cx, self.reward_config, ref)

    def _slo_rho(self, out: dict[str, np.ndarray]) -> np.ndarray:
        """SLO mode: the outcomes' TTFT / TPOT (added to ``out``) and normalised latency ρ under
        the current requests' budgets (outcomes are always of the current requests)."""
        if "ttft_ms" not in out:
            n_out = out["output_tokens"]
            out["ttft_ms"] = out["vision_ms"] + out["prefill_ms"]
            out["tpot_ms"] = np.where(n_out > 1, out["decode_ms"] / np.maximum(n_out - 1, 1), 0.0)
        return slo_ratio(out["ttft_ms"], out["tpot_ms"], self._bt, self._bp)

    def _add_outcome_info(self, info: dict[str, Any], out: dict[str, np.ndarray], b: np.ndarray, fin: np.ndarray) -> None:
        """Outcome keys into a final_info, masked by ``fin``; NaN / -1 / False in the other rows."""
        if self._slo:
            viol = self._slo_rho(out) > 1.0
            for k in ("ttft_ms", "tpot_ms"):
                info[k] = out[k] if bool(fin.all()) else np.where(fin, out[k], np.nan)
                info["_" + k] = fin
        else:
            viol = np.greater(out["latency_ms"], b)
        if bool(fin.all()):  # the lockstep case: the outcome rows as they are, no masking
            for k in ("score", "latency_ms", "vision_ms", "prefill_ms", "decode_ms"):
                info[k] = out[k]
                info["_" + k] = fin
            info["violation"] = viol
            info["_violation"] = fin
            info["output_tokens"] = out["output_tokens"]
            info["_output_tokens"] = fin
            meas = info["measured_ms"] = out["measured_ms"]
            info["_measured_ms"] = np.equal(meas, meas)  # False exactly where NaN
            return
        for k in ("score", "latency_ms", "vision_ms", "prefill_ms", "decode_ms"):
            info[k] = np.where(fin, out[k], np.nan)
            info["_" + k] = fin
        info["violation"] = viol & fin
        info["_violation"] = fin
        info["output_tokens"] = np.where(fin, out["output_tokens"], -1)
        info["_output_tokens"] = fin
        meas = out["measured_ms"]
        info["measured_ms"] = np.where(fin, meas, np.nan)
        info["_measured_ms"] = fin & ~np.isnan(meas)

    def close_extras(self, **kwargs: Any) -> None:
        self._obs = None


class MolmoeKnobsFlatVectorEnv(_ReplayVectorEnv):
    """``num_envs`` copies of :class:`envs.flat_env.MolmoeKnobsFlatEnv` stepped as one numpy batch.

    Every step ends every episode (one decision each), so every step returns ``final_info``
    for all sub-envs and the observations of freshly drawn requests. ``action_masks()``:
    bool (num_envs, C). See the module docstring for the vector conventions.
    """

    __doc__ = (__doc__ or "") + INFO_DOC

    def __init__(self, num_envs: int, config: EnvConfig | None = None, **kwargs: Any) -> None:
        super().__init__(num_envs, config, **kwargs)
        d = self.data
        self.single_observation_space = flat_observation_space(d, self._slo)
        self.single_action_space = spaces.Discrete(self._c)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._mask_i8 = d.valid.view(np.int8)
        # every eligible request complete: the mask is all ones and needs no gather
        self._complete = bool(d.valid[self.settings.eligible].all())
        self._minus1 = np.full(self.num_envs, -1, dtype=np.int64)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        self._reset_state(seed, options)
        obs = self._observe()
        return obs, self._reset_info(obs)

    def _observe(self) -> dict[str, np.ndarray]:
        s = self._s
        if self._complete:
            mask = np.ones((self.num_envs, self._c), dtype=np.int8)
        else:
            mask = np.take(self._mask_i8, s, axis=0)
        obs = {
            "lang": np.take(self._lang, s, axis=0),
            "budget": self._budget_features(s, self._b),
            "action_mask": mask,
        }
        self._request_obs(obs)
        self._obs = obs
        return obs

    def _reset_info(self, obs: dict[str, np.ndarray]) -> dict[str, Any]:
        n_env, m1 = self.num_envs, self._minus1
        return self._info(
            s=self._s.copy(), b=self._b.copy(), strings=self._request_strings(), mask_view=obs["action_mask"].view(bool),
            stage=np.zeros(n_env, dtype=np.int64), keep=np.ones(n_env, dtype=bool),
            tier=np.zeros(n_env, dtype=self._tier_names.dtype), p=m1.copy(),
            top_k=m1.copy(), blocks=m1.copy(), config_index=m1.copy(), invalid=np.zeros(n_env, dtype=bool),
        )

    def action_masks(self) -> np.ndarray:
        """bool (num_envs, C): configurations with an outcome for each sub-env's request."""
        if self._complete:
            return np.ones((self.num_envs, self._c), dtype=bool)
        return np.take(self.data.valid, self._s, axis=0)

    def step(self, actions: Any) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, dict]:
        if self._obs is None:
            raise RuntimeError("step() called before reset(); call reset()")
        n_env = self.num_envs
        a = np.asarray(actions)
        if a.shape != (n_env,) or a.dtype.kind not in "iu":
            raise ValueError(f"actions must be an integer array of shape ({n_env},) in Discrete({self._c}), got {a.dtype} {a.shape}")
        if a.dtype != np.int64:
            a = a.astype(np.int64)
        if a.min() < 0 or a.max() >= self._c:
            i = int(np.flatnonzero((a < 0) | (a >= self._c))[0])
            raise ValueError(f"action {int(a[i])} of sub-env {i} outside Discrete({self._c})")
        s, b = self._s, self._b
        f = s * self._c + a
        ok = None if self._complete else self._valid_f[f]
        all_ok = ok is None or bool(ok.all())
        if not all_ok and self.invalid_action == "raise":
            i = int(np.flatnonzero(~ok)[0])
            valid = np.flatnonzero(self.data.valid[s[i]]).tolist()
            raise ValueError(
                f"action {int(a[i])} ({self.data.knob_space.configs[int(a[i])]}) of sub-env {i} is masked for request "
                f"{self.data.sample_id_list[s[i]]!r}: no outcome; valid configuration indices: {valid} "
                f"({int((~ok).sum())} sub-envs took a masked action)"
            )
        if all_ok:
            ok = np.ones(n_env, dtype=bool)
            c = ci = a
        else:
            c, ci = np.where(ok, a, 0), np.where(ok, a, -1)
        out = self._outcomes(s, c)
        reward = self._reward(out, b, s, c)
        if not all_ok:
            reward[~ok] = INVALID_ACTION_REWARD
        done = np.ones(n_env, dtype=bool)
        prev = self._obs
        final_info = self._info(
            s=s, b=b, strings=self._request_strings(), mask_view=prev["action_mask"].view(bool),
            stage=np.ones(n_env, dtype=np.int64), keep=done, tier=np.take(self._cfg_tier, ci), p=self._cfg_p[ci],
            top_k=self._cfg_k[ci], blocks=self._cfg_blocks[ci], config_index=ci.copy(), invalid=~ok,
        )
        self._add_outcome_info(final_info, out, b, ok)
        self._set_requests(*self._draw(n_env))  # same-step autoreset of every sub-env
        obs = self._observe()
        info = self._reset_info(obs)
        info["final_obs"] = prev
        info["_final_obs"] = done.copy()
        info["final_info"] = final_info
        info["_final_info"] = done.copy()
        return obs, reward, done.copy(), np.zeros(n_env, dtype=bool), info


class MolmoeKnobsVectorEnv(_ReplayVectorEnv):
    """``num_envs`` copies of :class:`envs.two_stage_env.MolmoeKnobsEnv` stepped as one numpy batch.

    Sub-envs step in lockstep (stage 0, stage 1 + autoreset, ...) unless a penalised invalid
    action ends an episode at stage 0; any mix of stages works. ``action_masks()``:
    bool (num_envs, T+P+K+B). See the module docstring for the vector conventions.
    """

    __doc__ = (__doc__ or "") + INFO_DOC

    def __init__(self, num_envs: int, config: EnvConfig | None = None, **kwargs: Any) -> None:
        super().__init__(num_envs, config, **kwargs)
        d = self.data
        self.nvec = d.nvec
        t_, p_, k_, b_ = self.nvec
        self._tp, self._n_md = t_ * p_, t_ * p_ * k_ * b_
        self.single_observation_space = two_stage_observation_space(d, self._slo)
        self.single_action_space = spaces.MultiDiscrete(np.array(self.nvec, dtype=np.int64))
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        # one mask table: row s = stage 0 of request s, row n + (s*T + t)*P + p = stage 1 after (t, p)
        self._mask_table = np.concatenate([d.stage0_mask, d.stage1_mask.reshape(-1, sum(self.nvec))])
        self._mask_table_i8 = self._mask_table.view(np.int8)
        self._md_f = d.md_to_config.reshape(-1)
        # joint validity of a whole 4-vector action, flat over s * n_md + md (see
        # ReplayData.stage0_action_valid); equivalent to the scalar env's per-component checks
        self._valid0_f = d.stage0_action_valid.reshape(-1)
        self._valid1_f = d.prefix_valid.reshape(-1)
        self._tokens_f = _line_aligned(d.tokens.reshape(d.n * self._tp, d.token_dim))
        # context rows: index t*P + p = stage 1 after (t, p); index T*P = stage 0 (all zero)
        ctx = np.zeros((self._tp + 1, 1 + t_ + p_), dtype=np.float32)
        tt, pp = np.divmod(np.arange(self._tp), p_)
        ctx[np.arange(self._tp), 0] = 1.0
        ctx[np.arange(self._tp), 1 + tt] = 1.0
        ctx[np.arange(self._tp), 1 + t_ + pp] = 1.0
        self._ctx_table = ctx
        n_env, sigma = self.num_envs, sum(self.nvec)
        # Every eligible request complete: masks and action validity are the same for all
        # requests, so the lockstep steps read them from tables of a few hundred bytes (always
        # in cache) instead of per-request tables of megabytes.
        self._complete = bool(d.valid[self.settings.eligible].all())
        e0 = int(self.settings.eligible[0])
        self._mask0_block = np.tile(d.stage0_mask[e0].view(np.int8), (n_env, 1))  # copied out per observation
        self._mask1_tp = np.ascontiguousarray(d.stage1_mask[e0].reshape(self._tp, sigma).view(np.int8))
        self._valid0_md = d.stage0_action_valid[e0].reshape(-1)
        self._valid1_md = d.prefix_valid[e0].reshape(-1)
        self._stage = np.zeros(n_env, dtype=np.int64)
        self._t = np.full(n_env, -1, dtype=np.int64)
        self._p = np.full(n_env, -1, dtype=np.int64)
        self._tp_now = np.zeros(n_env, dtype=np.int64)  # t*P + p of the sub-envs at stage 1
        self._n1 = 0  # sub-envs at stage 1 (0 or num_envs in lockstep)
        self._minus1 = np.full(n_env, -1, dtype=np.int64)
        self._zeros_i64 = np.zeros(n_env, dtype=np.int64)  # read-only
        self._bud: np.ndarray | None = None  # budget features of the current requests (private)

    def _set_requests(self, s: np.ndarray, b: np.ndarray, bt: np.ndarray | None = None, bp: np.ndarray | None = None) -> None:
        super()._set_requests(s, b, bt, bp)
        self._bud = None

    def _budget_obs(self) -> np.ndarray:
        """float32 (num_envs, 4) budget features (fresh): computed once per request draw (both
        stages of an episode show the same), copied out per observation."""
        if self._bud is None:
            self._bud = self._budget_features(self._s, self._b)
        return self._bud.copy()

    def _set_stage(self, stage: np.ndarray, t: np.ndarray, p: np.ndarray) -> None:
        self._stage, self._t, self._p = stage, t, p
        self._n1 = int(np.count_nonzero(stage))
        self._tp_now = t * self.nvec[1] + p

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        self._reset_state(seed, options)
        self._set_stage(np.zeros(self.num_envs, dtype=np.int64), self._minus1.copy(), self._minus1.copy())
        obs = self._observe()
        return obs, self._state_info(obs)

    def _mask_rows(self) -> np.ndarray:
        return np.where(self._stage == 0, self._s, self._n + (self._s * self.nvec[0] + self._t) * self.nvec[1] + self._p)

    def action_masks(self) -> np.ndarray:
        """bool (num_envs, T+P+K+B): per-component masks of each sub-env's current observation."""
        return np.take(self._mask_table, self._mask_rows(), axis=0)

    def _observe(self) -> dict[str, np.ndarray]:
        s, st, n_env, n1 = self._s, self._stage, self.num_envs, self._n1
        if n1 == 0:  # all at stage 0 (after reset / autoreset in lockstep)
            token = np.zeros((n_env, self.data.token_dim), dtype=np.float32)
            ctx = np.zeros((n_env, self._ctx_table.shape[1]), dtype=np.float32)
            mask = self._mask0_block.copy() if self._complete else np.take(self._mask_table_i8, s, axis=0)
        else:
            tp = self._tp_now
            tp_row = s * self._tp + tp
            if n1 == n_env:
                token = np.take(self._tokens_f, tp_row, axis=0)
                ctx = np.take(self._ctx_table, tp, axis=0)
                mask = np.take(self._mask1_tp, tp, axis=0) if self._complete else np.take(self._mask_table_i8, tp_row + self._n, axis=0)
            else:
                st0 = st == 0
                token = np.take(self._tokens_f, np.where(st0, 0, tp_row), axis=0)
                token[st0] = 0.0
                ctx = np.take(self._ctx_table, np.where(st0, self._tp, tp), axis=0)
                mask = np.take(self._mask_table_i8, np.where(st0, s, self._n + tp_row), axis=0)
        obs = {
            "lang": np.take(self._lang, s, axis=0),
            "token": token,
            "budget": self._budget_obs(),
            "context": ctx,
            "action_mask": mask,
        }
        self._request_obs(obs)
        self._obs = obs
        return obs

    def _state_info(self, obs: dict[str, np.ndarray]) -> dict[str, Any]:
        n_env, m1 = self.num_envs, self._minus1
        if self._n1 == 0:  # nothing chosen yet: no gathers
            tier, p = np.zeros(n_env, dtype=self._tier_names.dtype), m1.copy()
        else:
            tier, p = np.take(self._tier_names, self._t), np.take(self._positions, self._p)
        return self._info(
            s=self._s.copy(), b=self._b.copy(), strings=self._request_strings(), mask_view=obs["action_mask"].view(bool),
            stage=self._stage.copy(), keep=np.ones(n_env, dtype=bool), tier=tier, p=p,
            top_k=m1.copy(), blocks=m1.copy(), config_index=m1.copy(), invalid=np.zeros(n_env, dtype=bool),
        )

    def _masked_message(self, a: np.ndarray, ok: np.ndarray) -> str:
        i = int(np.flatnonzero(~ok)[0])
        s, st = int(self._s[i]), int(self._stage[i])
        act = a[i].tolist()
        msg = masked_action_message(act, self._mask_table[self._mask_rows()[i]], self.nvec, st, self.data.sample_id_list[s])
        if msg is None:  # passes the per-component masks, but the combination has no outcome
            cfg = int(self.data.md_to_config[tuple(act)])
            what = (f"no configuration with tier index {act[0]} and p index {act[1]} has an outcome" if st == 0
                    else f"configuration {self.data.knob_space.configs[cfg]} has no outcome")
            msg = f"action {act}: {what} for request {self.data.sample_id_list[s]!r} (incomplete='mask')"
        return f"sub-env {i}: {msg} ({int((~ok).sum())} sub-envs took a masked action)"

    def _step_choose(self, a0: np.ndarray, a1: np.ndarray, tp: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Lockstep stage 0 → 1, every action valid: tier ``a0``, p index ``a1``, ``tp`` = t*P + p
        (fresh int (num_envs,)). The general path of :meth:`step` gives the same result."""
        n_env = self.num_envs
        self._stage, self._t, self._p = np.ones(n_env, dtype=np.int64), a0.copy(), a1.copy()
        self._tp_now, self._n1 = tp, n_env
        obs = self._observe()
        info = self._info(
            s=self._s.copy(), b=self._b.copy(), strings=self._request_strings(), mask_view=obs["action_mask"].view(bool),
            stage=np.ones(n_env, dtype=np.int64), keep=np.ones(n_env, dtype=bool), tier=np.take(self._tier_names, a0),
            p=np.take(self._positions, a1), top_k=np.full(n_env, -1, dtype=np.int64), blocks=np.full(n_env, -1, dtype=np.int64),
            config_index=np.full(n_env, -1, dtype=np.int64), invalid=np.zeros(n_env, dtype=bool),
        )
        return obs, np.zeros(n_env, dtype=np.float64), np.zeros(n_env, dtype=bool), np.zeros(n_env, dtype=bool), info

    def _step_finish(self, md: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Lockstep stage 1 → done, every action valid (``md``: flat MultiDiscrete index, int
        (num_envs,)); every sub-env resets in the same step. The general path of :meth:`step`
        gives the same result."""
        n_env = self.num_envs
        s, b, prev = self._s, self._b, self._obs
        cfg = np.take(self._md_f, md)
        out = self._outcomes(s, cfg)
        reward = self._reward(out, b, s, cfg)
        done = np.ones(n_env, dtype=bool)
        final_info = self._info(
            s=s, b=b, strings=self._request_strings(), mask_view=prev["action_mask"].view(bool),
            stage=np.full(n_env, 2, dtype=np.int64), keep=done, tier=np.take(self._cfg_tier, cfg),
            p=np.take(self._cfg_p, cfg), top_k=np.take(self._cfg_k, cfg), blocks=np.take(self._cfg_blocks, cfg),
            config_index=cfg, invalid=np.zeros(n_env, dtype=bool),
        )
        self._add_outcome_info(final_info, out, b, done)
        self._set_requests(*self._draw(n_env))
        self._stage, self._t, self._p, self._n1 = np.zeros(n_env, dtype=np.int64), self._minus1.copy(), self._minus1.copy(), 0
        obs = self._observe()
        info = self._state_info(obs)
        info["final_obs"] = prev
        info["_final_obs"] = done.copy()
        info["final_info"] = final_info
        info["_final_info"] = done.copy()
        return obs, reward, done.copy(), np.zeros(n_env, dtype=bool), info

    def step(self, actions: Any) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, dict]:
        if self._obs is None:
            raise RuntimeError("step() called before reset(); call reset()")
        n_env = self.num_envs
        t_, p_, k_, b_ = self.nvec
        a = np.asarray(actions)
        if a.shape != (n_env, 4) or a.dtype.kind not in "iu":
            raise ValueError(
                f"actions must be an integer array of shape ({n_env}, 4) in MultiDiscrete({list(self.nvec)}), got {a.dtype} {a.shape}"
            )
        a0, a1, a2, a3 = a[:, 0], a[:, 1], a[:, 2], a[:, 3]
        if a.min() < 0 or a0.max() >= t_ or a1.max() >= p_ or a2.max() >= k_ or a3.max() >= b_:
            i = int(np.flatnonzero(((a < 0) | (a >= np.array(self.nvec))).any(axis=1))[0])
            raise ValueError(f"action {a[i].tolist()} of sub-env {i} outside MultiDiscrete({list(self.nvec)})")
        s, b, st = self._s, self._b, self._stage
        n1 = self._n1
        if not self.strict:  # the components a stage does not read take their pinned values
            if n1 == 0:
                a2 = a3 = self._zeros_i64
            elif n1 == n_env:
                a0, a1 = self._t, self._p
            else:
                at0 = st == 0
                a0, a1 = np.where(at0, a0, self._t), np.where(at0, a1, self._p)
                a2, a3 = np.where(at0, 0, a2), np.where(at0, 0, a3)
        pre = a0 * p_ + a1  # t*P + p of the action
        md = (pre * k_ + a2) * b_ + a3
        # lockstep fast paths (every sub-env at the same stage, every action valid)
        if n1 == 0:
            ok = np.take(self._valid0_md, md) if self._complete else np.take(self._valid0_f, s * self._n_md + md)
            if ok.all():
                return self._step_choose(a0, a1, pre)
        elif n1 == n_env:
            ok = np.take(self._valid1_md, md) if self._complete else np.take(self._valid1_f, s * self._n_md + md)
            ok &= pre == self._tp_now
            if ok.all():
                return self._step_finish(md)
        else:
            idx = s * self._n_md + md
            ok = np.where(st == 0, self._valid0_f[idx], self._valid1_f[idx] & (pre == self._tp_now))
        all_ok = bool(ok.all())
        if not all_ok and self.invalid_action == "raise":
            raise ValueError(self._masked_message(np.stack([a0, a1, a2, a3], axis=1), ok))
        reward = np.zeros(n_env, dtype=np.float64)
        prev, final_info = self._obs, None
        fin = (st == 1) & ok if n1 else None  # episodes that end with an outcome
        done = fin if all_ok else (~ok if fin is None else fin | ~ok)
        n_done = 0 if done is None else int(np.count_nonzero(done))
        if n_done:
            cfg = self._md_f[md]
            if fin is None:
                fin = np.zeros(n_env, dtype=bool)
            all_fin = n_done == n_env and all_ok
            safe = cfg if all_fin else np.where(fin, cfg, 0)
            out = self._outcomes(s, safe)
            r = self._reward(out, b, s, safe)
            reward = r if all_fin else np.where(fin, r, np.where(ok, 0.0, INVALID_ACTION_REWARD))
            ci = cfg if all_fin else np.where(fin, cfg, -1)
            final_info = self._info(
                s=s, b=b, strings=self._request_strings(), mask_view=prev["action_mask"].view(bool), stage=st + 1,
                keep=done, tier=np.take(self._cfg_tier, ci) if all_fin
                else np.where(fin, np.take(self._cfg_tier, ci), np.take(self._tier_names, self._t)),
                p=self._cfg_p[ci] if all_fin else np.where(fin, self._cfg_p[ci], self._positions[self._p]),
                top_k=self._cfg_k[ci], blocks=self._cfg_blocks[ci], config_index=ci.copy(), invalid=~ok,
            )
            self._add_outcome_info(final_info, out, b, fin)
        # transitions: stage 0 → 1 with a valid action; finished episodes reset (same step)
        go1 = (st == 0) & ok
        t, p, stage = np.where(go1, a0, self._t), np.where(go1, a1, self._p), np.where(go1, 1, st)
        if n_done:
            new_s, new_b, new_bt, new_bp = s.copy(), b.copy(), self._bt.copy(), self._bp.copy()
            new_s[done], new_b[done], new_bt[done], new_bp[done] = self._draw(n_done)
            self._set_requests(new_s, new_b, new_bt, new_bp)
            t[done], p[done], stage[done] = -1, -1, 0
        self._set_stage(stage, t, p)
        obs = self._observe()
        info = self._state_info(obs)
        if final_info is not None:
            info["final_obs"] = prev
            info["_final_obs"] = done.copy()
            info["final_info"] = final_info
            info["_final_info"] = done.copy()
        terminated = done.copy() if n_done else np.zeros(n_env, dtype=bool)
        return obs, reward, terminated, np.zeros(n_env, dtype=bool), info
