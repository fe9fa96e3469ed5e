"""``MolmoeKnobs-v0``: the two-stage budget-aware configuration env (replay mode; live mode via :mod:`envs.live`)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from gymnasium import spaces

from envs.env_settings import INFO_DOC, INVALID_ACTION_REWARD, EnvConfig
from envs.observations import two_stage_observation_space
from envs.replay_env_base import Outcome, ReplayEnvBase

COMPONENT_NAMES: tuple[str, ...] = ("tier index", "p index", "top-k index", "active-blocks index")


def parse_multidiscrete(action: Any, nvec: Sequence[int]) -> list[int]:
    """A MultiDiscrete action as Python ints; ValueError if it is not an in-range integer vector."""
    a = action if type(action) is np.ndarray else np.asarray(action)
    if a.shape != (len(nvec),) or a.dtype.kind not in "iu":
        raise ValueError(
            f"action {action!r} is not an integer array of shape ({len(nvec)},) in MultiDiscrete({list(nvec)})"
        )
    vals = a.tolist()
    for v, n in zip(vals, nvec):
        if not 0 <= v < n:
            raise ValueError(f"action {vals} outside MultiDiscrete({list(nvec)})")
    return vals


def masked_action_message(action: Sequence[int], mask: np.ndarray, nvec: Sequence[int], stage: int, sample_id: str) -> str | None:
    """Why ``action`` violates the per-component ``mask`` (bool (Σnvec,)), or None if it does not."""
    bad, offset, valid_sets = [], 0, []
    for name, v, n in zip(COMPONENT_NAMES, action, nvec):
        m = mask[offset:offset + n]
        allowed = np.flatnonzero(m).tolist()
        valid_sets.append(f"{name} {allowed}")
        if not m[v]:
            bad.append(f"{name} = {v} not in {allowed}")
        offset += n
    if not bad:
        return None
    return (
        f"action {list(action)} is masked at stage {stage} of request {sample_id!r}: {'; '.join(bad)} "
        f"(valid per component: {', '.join(valid_sets)})"
    )


class MolmoeKnobsEnv(ReplayEnvBase):
    """Two-stage env: pick (tier, p), see the latency token, pick (top-k, active blocks); one request per episode.

    ## Description

    One episode is one request (an image and a question) and one latency budget. The agent
    first chooses how many image crops MolmoE-1B sees (the tier) and where the pruning starts
    (p); it then sees the latency token of that choice and chooses the routed experts per
    token (top-k) and how many transformer blocks run (active blocks). The reward trades the
    configuration's score against its latency under the budget. Outcomes are replayed from an
    HDF5 outcome cache (``cache=``) or a :class:`envs.replay_data.ReplayData` (``data=``);
    ``mode="live"`` runs the model instead (:mod:`envs.live`).

    ## Action Space

    ``MultiDiscrete([T, P, K, B])`` = ``[3, 5, 5, 5]``: (tier index, p − 1, top-k − 4,
    active-blocks index ``i`` with total blocks ``p + 11 + i``, valid ``i = 0 .. 5 − p``).
    Both steps take the whole 4-vector; the mask of the current observation says which values
    are valid (``action_masks()``: bool (T+P+K+B,), sb3-contrib's MultiDiscrete format):

    - stage 0 reads (tier, p): tiers / positions with an outcome allowed; top-k and the
      active-blocks index are pinned to index 0 by the mask;
    - stage 1 reads (top-k, active blocks): the values with an outcome allowed (all top-k,
      active-blocks index ``0 .. 5 − p`` on complete data); tier and p are pinned to the
      stage-0 choice by the mask.

    The components a stage does not read are ignored by default (``strict=False``), so random
    actions run (gymnasium's and SB3's ``check_env``); ``strict=True`` checks them against the
    mask too, for debugging agents. A masked component the stage reads ends the episode with
    reward :data:`envs.env_settings.INVALID_ACTION_REWARD` (−1.0) and
    ``info["invalid_action"] = True`` (``invalid_action="penalty"``, the default unless
    ``strict``) or raises a ValueError naming the action and each component's valid set
    (``invalid_action="raise"``, the default under ``strict=True``); the state is then untouched.
    Under ``incomplete="mask"`` the per-component masks cannot express every missing
    combination: a (tier, p) without any outcome, or a final configuration without an outcome,
    is treated like a masked action. An action outside the action space always raises.

    ## Observation Space

    ``Dict`` (see :mod:`envs.observations`): ``lang`` float32 (Dl,) language feature;
    ``token`` float32 (Dt,) latency token at the chosen (tier, p) at stage 1, zeros at stage 0;
    ``budget`` float32 (4,) ``[budget/scale, cheapest/scale, full/scale, budget/full]``;
    ``context`` float32 (1+T+P,) ``[stage, one-hot tier, one-hot p]``; ``action_mask`` int8
    (T+P+K+B,), the same as ``action_masks()``; ``request`` float32 (4T+3,) the request's
    features known before running (crops and vision tokens per tier, prompt tokens, estimated
    TTFT per tier at the cheapest / full LM configuration, decode ms per token; layout in
    :data:`envs.replay_data.REQUEST_FEATURE_DOC`); ``slo`` float32 (2,) the TTFT / per-token
    budgets (``budget_mode="slo"`` only).

    ## Rewards

    0.0 after stage 0; after stage 1 the reward of the configuration's outcome under the
    reward mode (``reward="hinge"`` by default; ``hard``, ``lagrangian``, ``shaped``, see
    :mod:`envs.reward`): its score, less a penalty when its latency exceeds the budget; −1.0
    for a penalised masked action.

    ## Starting State

    ``reset`` draws a request uniformly from the split's eligible requests (every outcome
    present under ``incomplete="skip"``) and a budget under ``budget_mode`` (default
    ``"absolute"``: uniformly from ``budget_range`` or from ``budgets``; ``"relative"``: between
    the request's cheapest and full latency; ``"slo"``: a TTFT and a per-token budget, see
    :class:`envs.env_settings.EnvConfig`). ``reset(seed=, options=)``: ``{"sample_index": i}`` or
    ``{"sample_id": s}`` pins the request, ``{"budget_ms": b}`` the budget (checked against
    ``budget_bounds``; ``budget_u`` in relative mode, ``ttft_budget_ms`` + ``tpot_budget_ms`` in
    slo mode). A
    seeded reset makes the whole trajectory deterministic.

    ## Episode End

    The episode terminates after stage 1 (two steps), or after a penalised masked action; it
    is never truncated. The terminal observation repeats the observation the last action was
    taken on (fresh arrays); it is never bootstrapped from.

    ## Arguments

    The fields of :class:`envs.env_settings.EnvConfig`, as an ``EnvConfig`` or as keyword
    arguments (``cache`` / ``data``, ``split``, ``reward``, ``reward_kwargs``, ``budget_range``
    / ``budgets``, ``budget_bounds``, ``estimator``, ``nominal_output_tokens``, ``incomplete``,
    ``strict``, ``invalid_action``, ``mode``; ``runtime``, ``requests``, ``live_options`` in
    live mode); ``render_mode`` must be None.

    >>> import gymnasium as gym, numpy as np, envs
    >>> from envs.replay_data import ReplayData
    >>> env = gym.make("MolmoeKnobs-v0", data=ReplayData.random(8, seed=0), reward="hinge")
    >>> obs, info = env.reset(seed=0)
    >>> sorted(obs), info["stage"]
    (['action_mask', 'budget', 'context', 'lang', 'request', 'token'], 0)
    >>> obs, reward, terminated, truncated, info = env.step(np.array([2, 0, 3, 4]))  # top-k, blocks ignored
    >>> reward, terminated, info["config"]
    (0.0, False, {'tier': 'high', 'p': 1, 'top_k': -1, 'blocks': -1})
    >>> obs, reward, terminated, truncated, info = env.step(np.array([0, 0, 4, 0]))  # tier, p ignored
    >>> terminated, info["config"], 0.0 <= info["score"] <= 1.0
    (True, {'tier': 'high', 'p': 1, 'top_k': 8, 'blocks': 12}, True)
    """

    __doc__ = (__doc__ or "") + INFO_DOC

    def __init__(self, config: EnvConfig | None = None, *, render_mode: str | None = None, **kwargs: Any) -> None:
        self._setup(render_mode, EnvConfig.build(config, **kwargs))
        d = self.data
        self.nvec = d.nvec
        t_, p_, _, _ = self.nvec
        self.action_space = spaces.MultiDiscrete(np.array(self.nvec, dtype=np.int64))
        self.observation_space = two_stage_observation_space(d, self._slo)
        self._mask0, self._mask1 = d.stage0_mask, d.stage1_mask
        self._mask0_i8, self._mask1_i8 = d.stage0_mask.view(np.int8), d.stage1_mask.view(np.int8)
        # joint validity of whole actions, flat over s * n_md + md (ReplayData.stage0_action_valid)
        self._valid0_f = d.stage0_action_valid.reshape(-1)
        self._valid1_f = d.prefix_valid.reshape(-1)
        self._md_f = d.md_to_config.reshape(-1)
        self._n_md = int(np.prod(self.nvec))
        # context rows per (t, p) at stage 1, index t*P + p
        ctx = np.zeros((t_ * p_, 1 + t_ + p_), dtype=np.float32)
        tt, pp = np.divmod(np.arange(t_ * p_), p_)
        ctx[:, 0] = 1.0
        ctx[np.arange(t_ * p_), 1 + tt] = 1.0
        ctx[np.arange(t_ * p_), 1 + t_ + pp] = 1.0
        self._ctx1 = ctx
        self._zero_token = np.zeros(d.token_dim, dtype=np.float32)
        self._zero_ctx = np.zeros(1 + t_ + p_, dtype=np.float32)
        self._tiers, self._positions = d.knob_space.tiers, d.knob_space.insertion_positions
        self._stage, self._t, self._p = 0, -1, -1
        self._last_mask: np.ndarray = np.zeros(sum(self.nvec), dtype=bool)

    # ------------------------------------------------------------------ API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        self._begin_episode(seed, options)
        self._stage, self._t, self._p = 0, -1, -1
        obs = self._observation()
        return obs, self._info(stage=0)

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        self._check_running()
        a = parse_multidiscrete(action, self.nvec)
        if not self.strict:  # the components this stage does not read take their pinned values
            if self._stage == 0:
                a[2] = a[3] = 0
            else:
                a[0], a[1] = self._t, self._p
        s = self._s
        _, p_, k_, b_ = self.nvec
        md = ((a[0] * p_ + a[1]) * k_ + a[2]) * b_ + a[3]
        if self._stage == 0:
            if not self._valid0_f[s * self._n_md + md]:
                return self._invalid(self._masked_message(a), stage=1)
            self._t, self._p, self._stage = a[0], a[1], 1
            return self._observation(), 0.0, False, False, self._info(stage=1)
        if not (a[0] == self._t and a[1] == self._p and self._valid1_f[s * self._n_md + md]):
            return self._invalid(self._masked_message(a), stage=2)
        c = int(self._md_f[md])
        outcome = self._outcome(s, c)
        r = self._reward(outcome, c)
        self._done = True
        return self._terminal_observation(), r, True, False, self._info(stage=2, c=c, outcome=outcome)

    def action_masks(self) -> np.ndarray:
        """bool (T+P+K+B,) per-component masks of the current observation (sb3-contrib format)."""
        return self._last_mask.copy()

    # ------------------------------------------------------------------ helpers
    def _masked_message(self, a: list[int]) -> str:
        """Why ``a`` is invalid now: the component(s) outside the mask with the valid sets, or,
        when every component passes (``incomplete="mask"``), the missing outcome."""
        s = self._s
        mask = self._mask0[s] if self._stage == 0 else self._mask1[s, self._t, self._p]
        err = masked_action_message(a, mask, self.nvec, self._stage, self._ids[s])
        if err is not None:
            return err
        if self._stage == 0:
            return (f"action {a}: no configuration with tier index {a[0]} and p index {a[1]} has an outcome "
                    f"for request {self._ids[s]!r} (incomplete='mask')")
        c = int(self.data.md_to_config[tuple(a)])
        return f"action {a}: configuration {self.data.knob_space.configs[c]} has no outcome for request {self._ids[s]!r}"

    def _observation(self) -> dict[str, np.ndarray]:
        s = self._s
        if self._stage == 0:
            token, ctx = self._zero_token.copy(), self._zero_ctx.copy()
            mask = self._mask0_i8[s].copy()
            self._last_mask = self._mask0[s]
        else:
            t, p = self._t, self._p
            token = self.data.tokens[s, t, p].copy()
            ctx = self._ctx1[t * self.nvec[1] + p].copy()
            mask = self._mask1_i8[s, t, p].copy()
            self._last_mask = self._mask1[s, t, p]
        obs = {
            "lang": self.data.lang[s].copy(),
            "token": token,
            "budget": self._budget_obs(),
            "context": ctx,
            "action_mask": mask,
        }
        self._request_obs(obs)
        self._last_obs = obs
        return obs

    def _invalid(self, err: str, stage: int) -> tuple[dict, float, bool, bool, dict]:
        if self.invalid_action == "raise":  # state untouched: the episode can go on with a valid action
            raise ValueError(err)
        self._done = True
        info = self._info(stage=stage, invalid=True)
        return self._terminal_observation(), float(INVALID_ACTION_REWARD), True, False, info

    def _info(self, stage: int, c: int = -1, outcome: Outcome | None = None, invalid: bool = False) -> dict[str, Any]:
        if c >= 0:
            config = dict(self.data.config_dicts[c])
        else:
            config = {
                "tier": self._tiers[self._t] if self._t >= 0 else "",
                "p": self._positions[self._p] if self._p >= 0 else -1,
                "top_k": -1,
                "blocks": -1,
            }
        return self._make_info(stage=stage, config=config, c=c, mask=self._last_mask.copy(), outcome=outcome,
                               invalid=invalid)
