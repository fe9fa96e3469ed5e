"""``MolmoeKnobsFlat-v0``: one step over all configurations (for bandits and flat PPO), replay mode."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.env_settings import INFO_DOC, add_outcome, INVALID_ACTION_REWARD, check_reset_options, resolve_settings
from envs.observations import flat_observation_space
from envs.replay_data import ReplayData, pinned_request
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


class MolmoeKnobsFlatEnv(gym.Env):
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

    Args: see :func:`envs.env_settings.resolve_settings`. Live mode will override :meth:`_outcome`.
    """

    __doc__ = (__doc__ or "") + INFO_DOC
    metadata = {"render_modes": []}

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
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"render_mode={render_mode!r}: this env does not render")
        self.settings = resolve_settings(
            cache=cache, split=split, data=data, reward=reward, reward_kwargs=reward_kwargs,
            budget_range=budget_range, budgets=budgets, budget_bounds=budget_bounds, estimator=estimator,
            nominal_output_tokens=nominal_output_tokens, incomplete=incomplete, invalid_action=invalid_action, mode=mode,
        )
        d = self.data = self.settings.data
        self.reward_config: RewardConfig = self.settings.reward
        self.budget_sampler = self.settings.budgets
        self.invalid_action = invalid_action
        self.latency_scale_ms = d.latency_scale_ms
        self.n_configs = d.n_configs
        self.action_space = spaces.Discrete(self.n_configs)
        self.observation_space = flat_observation_space(d)
        self._valid = d.valid
        self._cheap = d.cheapest_ms.tolist()
        self._full = d.full_ms.tolist()
        self._complexity = d.complexity.tolist()
        self._ids, self._datasets = d.sample_id_list, d.dataset_list
        self._s = -1
        self._done = True
        self._last_obs: dict[str, np.ndarray] | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        opts = check_reset_options(options)
        st = self.settings
        s = pinned_request(self.data, st.eligible_mask, opts)
        if s is None:
            # uniform over the eligible requests (float resolution 2**-53: no measurable bias),
            # about 10x cheaper than Generator.integers for one draw
            s = int(st.eligible[int(self.np_random.random() * st.eligible.size)])
        b = opts.get("budget_ms")
        self._b = self.budget_sampler.validate(b) if b is not None else self.budget_sampler.sample(self.np_random)
        self._s, self._done = s, False
        scale, full = self.latency_scale_ms, self._full[s]
        obs = {
            "lang": self.data.lang[s].copy(),
            "budget": np.array([self._b / scale, self._cheap[s] / scale, full / scale, self._b / full], dtype=np.float32),
            "action_mask": self._valid[s].astype(np.int8),
        }
        self._last_obs = obs
        return obs, self._info(stage=0)

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        if self._done:
            raise RuntimeError("step() called before reset() or after the episode ended; call reset()")
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
        r = self.reward_config.scalar(outcome[0], outcome[1], self._b, self._complexity[c], self._full[s])
        return self._terminal_observation(), float(r), True, False, self._info(stage=1, c=c, outcome=outcome)

    def _terminal_observation(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._last_obs.items()}

    def action_masks(self) -> np.ndarray:
        """bool (C,): configurations with an outcome for the current request."""
        if self._s < 0:
            return np.ones(self.n_configs, dtype=bool)
        return self._valid[self._s].copy()

    def _outcome(self, s: int, c: int) -> tuple[float, float, float, float, float, float, int]:
        """(score, total, vision, prefill, decode, measured ms, output tokens); live mode overrides it."""
        d = self.data
        return (
            float(d.score[s, c]), float(d.total_ms[s, c]), float(d.vision_ms[s, c]), float(d.prefill_ms[s, c]),
            float(d.decode_ms[s, c]), float(d.measured_ms[s, c]), int(d.output_tokens[s, c]),
        )

    def _info(self, stage: int, c: int = -1, outcome: tuple | None = None, invalid: bool = False) -> dict[str, Any]:
        s = self._s
        info = {
            "budget_ms": self._b,
            "config": dict(self.data.config_dicts[c]) if c >= 0 else {"tier": "", "p": -1, "top_k": -1, "blocks": -1},
            "config_index": c,
            "sample_id": self._ids[s],
            "sample_index": s,
            "dataset": self._datasets[s],
            "synthetic": self.data.synthetic,
            "action_mask": self._valid[s].copy(),
            "stage": stage,
            "invalid_action": invalid,
        }
        if outcome is not None:
            add_outcome(info, outcome, self._b)
        return info
