"""``MolmoeKnobsFlat-v0``: one step over all configurations (for bandits and flat PPO), replay mode."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from gymnasium import spaces

from envs.env_settings import INFO_DOC, INVALID_ACTION_REWARD
from envs.observations import flat_observation_space
from envs.replay_data import ReplayData
from envs.replay_env_base import Outcome, ReplayEnvBase
from envs.reward import RewardConfig

if TYPE_CHECKING:
    from cache.reader import OutcomeCache
    from model_runtime.latency_estimator import LatencyEstimator


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

    ``reset`` draws a request and a budget exactly like :class:`envs.two_stage_env.MolmoeKnobsEnv`;
    ``step(c)`` picks configuration ``c`` (``KnobSpace.config(c)``), ends the episode
    (``terminated=True``, never truncated) and returns the reward of its outcome. The
    observation is ``{"lang", "budget", "action_mask"}`` (see :mod:`envs.observations`);
    ``action_mask`` (int8 (C,)) and ``action_masks()`` (bool (C,)) mark the configurations
    with an outcome (all of them under ``incomplete="skip"``).

    A masked action raises a ValueError naming the action and the valid set
    (``invalid_action="raise"``) or ends the episode with reward −1.0 and
    ``info["invalid_action"] = True`` (``"penalty"``); an action outside ``Discrete(C)`` always
    raises. The terminal observation repeats the observation acted on (fresh arrays).
    ``reset(seed=, options={"sample_index"|"sample_id", "budget_ms"})`` pins request / budget.

    Args: see :func:`envs.env_settings.resolve_settings` (``mode="live"`` with ``runtime``,
    ``requests``, ``live_options``: outcomes from running the model, see :mod:`envs.live`).
    """

    __doc__ = (__doc__ or "") + INFO_DOC

    def __init__(
        self,
        cache: "str | Path | OutcomeCache | None" = None,
        split: str = "train",
        data: ReplayData | None = None,
        reward: "str | RewardConfig" = "hinge",
        reward_kwargs: dict | None = None,
        budget_range: Sequence[float] | None = None,
        budgets: Sequence[float] | None = None,
        budget_bounds: Sequence[float] | None = None,
        estimator: "LatencyEstimator | None" = None,
        nominal_output_tokens: int = 3,
        incomplete: str = "skip",
        invalid_action: str = "raise",
        mode: str = "replay",
        render_mode: str | None = None,
        runtime: Any = None,
        requests: Any = None,
        live_options: Any = None,
    ) -> None:
        self._setup(
            render_mode, cache=cache, split=split, data=data, reward=reward, reward_kwargs=reward_kwargs,
            budget_range=budget_range, budgets=budgets, budget_bounds=budget_bounds, estimator=estimator,
            nominal_output_tokens=nominal_output_tokens, incomplete=incomplete, invalid_action=invalid_action, mode=mode,
            runtime=runtime, requests=requests, live_options=live_options,
        )
        self.n_configs = self.data.n_configs
        self.action_space = spaces.Discrete(self.n_configs)
        self.observation_space = flat_observation_space(self.data)
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
