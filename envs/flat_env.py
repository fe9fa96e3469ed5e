"""``MolmoeKnobsFlat-v0``: one step over all configurations (for bandits and flat PPO), replay mode."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from envs.env_settings import INFO_DOC, INVALID_ACTION_REWARD, EnvConfig
from envs.observations import flat_observation_space
from envs.replay_env_base import Outcome, ReplayEnvBase


def parse_discrete(action: Any, n: int) -> int:
    """A Discrete(n) action as a Python int; ValueError if not an integer in [0, n)."""
    if isinstance(action, (bool, np.bool_)):
        raise ValueError(f"action {action!r} is not an integer in Discrete({n})")
    if isinstance(action, (int, np.integer)):
        a = int(action)
    else:
        arr = np.asarray(action)
        if arr.size != 1 or arr.dtype.kind not in "iu":
            raise ValueError(f"action {action!r} is not an integer in Discrete({n})")
        a = int(arr.reshape(-1)[0])
    if not 0 <= a < n:
        raise ValueError(f"action {a} outside Discrete({n})")
    return a


class MolmoeKnobsFlatEnv(ReplayEnvBase):
    """Flat env: one decision, ``Discrete(C)`` over the KnobSpace's configurations (stable order).

    ## Description

    The one-step version of :class:`envs.two_stage_env.MolmoeKnobsEnv` (for bandits and flat
    PPO): one episode is one request and one latency budget, and the agent picks a whole
    configuration (tier, p, top-k, blocks) at once, without seeing a latency token. Outcomes
    are replayed from an outcome cache (``cache=``) or a :class:`envs.replay_data.ReplayData`
    (``data=``); ``mode="live"`` runs the model instead (:mod:`envs.live`).

    ## Action Space

    ``Discrete(C)`` (C = 225): configuration ``c`` is ``KnobSpace.config(c)``. ``action_masks()``
    (bool (C,)) and the observation's ``action_mask`` (int8 (C,)) mark the configurations with
    an outcome (all of them under ``incomplete="skip"``). A masked action ends the episode with
    reward −1.0 and ``info["invalid_action"] = True`` (``invalid_action="penalty"``, the
    default unless ``strict=True``) or raises a ValueError naming the action and the valid set
    (``invalid_action="raise"``); an action outside ``Discrete(C)`` always raises.

    ## Observation Space

    ``Dict`` (see :mod:`envs.observations`): ``lang`` float32 (Dl,) language feature,
    ``budget`` float32 (4,) ``[budget/scale, cheapest/scale, full/scale, budget/full]``,
    ``request`` float32 (4T+3,) the request's features known before running
    (:data:`envs.replay_data.REQUEST_FEATURE_DOC`), ``slo`` float32 (2,) (``budget_mode="slo"``
    only), ``action_mask`` int8 (C,).

    ## Rewards

    The reward of the configuration's outcome under the reward mode (``reward="hinge"`` by
    default, see :mod:`envs.reward`); −1.0 for a penalised masked action.

    ## Starting State

    ``reset`` draws a request and a budget exactly like the two-stage env;
    ``reset(seed=, options={"sample_index"|"sample_id", "budget_ms"|"budget_u"|"ttft_budget_ms"
    + "tpot_budget_ms"})`` pins request / budget (the keys of the env's ``budget_mode``).

    ## Episode End

    Every episode terminates after its one step (``terminated=True``, never truncated). The
    terminal observation repeats the observation acted on (fresh arrays).

    ## Arguments

    The fields of :class:`envs.env_settings.EnvConfig`, as an ``EnvConfig`` or as keyword
    arguments; ``strict`` only sets the default of ``invalid_action`` here (every component of
    a flat action is read). ``render_mode`` must be None.

    >>> import gymnasium as gym, envs
    >>> from envs.env_settings import EnvConfig
    >>> from envs.replay_data import ReplayData
    >>> env = gym.make("MolmoeKnobsFlat-v0", config=EnvConfig(data=ReplayData.random(8, seed=0), reward="hard"))
    >>> obs, info = env.reset(seed=0)
    >>> sorted(obs), obs["action_mask"].shape
    (['action_mask', 'budget', 'lang', 'request'], (225,))
    >>> obs, reward, terminated, truncated, info = env.step(224)
    >>> terminated, info["config_index"], info["config"]["tier"]
    (True, 224, 'high')
    """

    __doc__ = (__doc__ or "") + INFO_DOC

    def __init__(self, config: EnvConfig | None = None, *, render_mode: str | None = None, **kwargs: Any) -> None:
        self._setup(render_mode, EnvConfig.build(config, **kwargs))
        self.n_configs = self.data.n_configs
        self.action_space = spaces.Discrete(self.n_configs)
        self.observation_space = flat_observation_space(self.data, self._slo)
        self._valid = self.data.valid
        self._valid_i8 = self.data.valid.view(np.int8)
        self._no_config = {"tier": "", "p": -1, "top_k": -1, "blocks": -1}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        self._begin_episode(seed, options)
        s = self._s
        obs = {
            "lang": self.data.lang[s].copy(),
            "budget": self._budget_obs(),
            "action_mask": self._valid_i8[s].copy(),
        }
        self._request_obs(obs)
        self._last_obs = obs
        return obs, self._info(stage=0)

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        self._check_running()
        c = parse_discrete(action, self.n_configs)
        s = self._s
        if not self._valid[s, c]:
            if self.invalid_action == "raise":  # state untouched: the episode can go on with a valid action
                valid = np.flatnonzero(self._valid[s]).tolist()
                raise ValueError(
                    f"action {c} ({self.data.knob_space.configs[c]}) is masked for request {self._ids[s]!r}: "
                    f"no outcome; valid configuration indices: {valid}"
                )
            self._done = True
            return self._terminal_observation(), float(INVALID_ACTION_REWARD), True, False, self._info(stage=1, invalid=True)
        self._done = True
        outcome = self._outcome(s, c)
        r = self._reward(outcome, c)
        return self._terminal_observation(), r, True, False, self._info(stage=1, c=c, outcome=outcome)

    def action_masks(self) -> np.ndarray:
        """bool (C,): configurations with an outcome for the current request."""
        if self._s < 0:
            return np.ones(self.n_configs, dtype=bool)
        return self._valid[self._s].copy()

    def _info(self, stage: int, c: int = -1, outcome: Outcome | None = None, invalid: bool = False) -> dict[str, Any]:
        config = dict(self.data.config_dicts[c]) if c >= 0 else dict(self._no_config)
        return self._make_info(stage=stage, config=config, c=c, mask=self._valid[self._s].copy(), outcome=outcome,
                               invalid=invalid)
