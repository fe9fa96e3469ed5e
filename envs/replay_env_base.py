"""What the single (non-vector) replay envs share: settings, request / budget draws, the
outcome lookup, the budget features, the terminal observation and the info dict."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from envs.budgets import slo_ratio_scalar
from envs.env_settings import EnvConfig, add_outcome, check_reset_options, outcome_tpot, resolve_settings
from envs.replay_data import Outcome, pinned_request
from envs.reward import RewardConfig

class ReplayEnvBase(gym.Env):
    """Base of :class:`envs.two_stage_env.MolmoeKnobsEnv` and :class:`envs.flat_env.MolmoeKnobsFlatEnv`.

    Subclasses call :meth:`_setup` with their constructor arguments, :meth:`_begin_episode` in
    ``reset`` and build observations; the hot path uses Python-level copies of the per-request
    numbers, since a numpy scalar round trip costs more than the lookup itself.
    """

    metadata = {"render_modes": []}

    def _setup(self, render_mode: str | None, config: EnvConfig) -> None:
        if render_mode is not None:
            raise ValueError(f"render_mode={render_mode!r}: this env does not render")
        self.config = config
        self.settings = resolve_settings(config, allow_live=True)
        self._live = self.settings.live  # envs.live.LiveOutcomes in live mode, else None
        d = self.data = self.settings.data
        self.reward_config: RewardConfig = self.settings.reward
        self.budget_sampler = self.settings.budgets
        self.episode_budgets = self.settings.episode_budgets
        self._slo = self.episode_budgets.slo
        self._bt = self._bp = float("nan")  # SLO mode's TTFT / TPOT budgets
        self.invalid_action = self.settings.invalid_action
        self.strict = self.settings.strict
        self.latency_scale_ms = d.latency_scale_ms
        self._cheap = d.cheapest_ms.tolist()
        self._full = d.full_ms.tolist()
        self._complexity = d.complexity.tolist()
        self._ids, self._datasets = d.sample_id_list, d.dataset_list
        self._s = -1
        self._b = float("nan")
        self._done = True
        self._last_obs: dict[str, np.ndarray] | None = None

    def _begin_episode(self, seed: int | None, options: dict[str, Any] | None) -> None:
        """Seed, then draw (or take the pinned) request and budget of a new episode."""
        super().reset(seed=seed)
        opts = check_reset_options(options)
        st = self.settings
        s = pinned_request(self.data, st.eligible_mask, opts)
        if s is None:
            # uniform over the eligible requests (float resolution 2**-53: no measurable bias),
            # about 10x cheaper than Generator.integers for one draw
            s = int(st.eligible[int(self.np_random.random() * st.eligible.size)])
        eb = self.episode_budgets
        if eb.mode == "absolute" and opts.get("budget_ms") is not None and np.ndim(opts["budget_ms"]) == 0:
            self._b = self.budget_sampler.validate(opts["budget_ms"])  # the scalar message of before
        else:
            pin = eb.pinned(opts, np.array([s]))
            if pin is None:
                self._b, self._bt, self._bp = eb.sample(self.np_random, s)
            else:
                self._b, self._bt, self._bp = (float(x[0]) for x in pin)
        self._s, self._done = s, False

    def _check_running(self) -> None:
        if self._done:
            raise RuntimeError("step() called before reset() or after the episode ended; call reset()")

    def _outcome(self, s: int, c: int) -> Outcome:
        """The outcome of request ``s`` at configuration ``c``: the one place outcomes come from
        (the replay tables, or in live mode the model via :class:`envs.live.LiveOutcomes`)."""
        if self._live is not None:
            return self._live.outcome(s, c)
        d = self.data
        return Outcome(
            float(d.score[s, c]), float(d.total_ms[s, c]), float(d.vision_ms[s, c]), float(d.prefill_ms[s, c]),
            float(d.decode_ms[s, c]), float(d.measured_ms[s, c]), int(d.output_tokens[s, c]),
        )

    def _reward(self, outcome: Outcome, c: int) -> float:
        rc = self.reward_config
        if self._slo and rc.mode != "lagrangian":  # the normalised latency against budget 1
            ttft = outcome.vision_ms + outcome.prefill_ms
            rho = slo_ratio_scalar(ttft, outcome_tpot(outcome.decode_ms, outcome.output_tokens), self._bt, self._bp)
            return float(rc.scalar(outcome.score, rho, 1.0, self._complexity[c], self._full[self._s]))
        return float(rc.scalar(outcome.score, outcome.latency_ms, self._b, self._complexity[c], self._full[self._s]))

    def _budget_obs(self) -> np.ndarray:
        """float32 (4,) ``[budget/scale, cheapest/scale, full/scale, budget/full]``."""
        s, b, scale = self._s, self._b, self.latency_scale_ms
        full = self._full[s]
        return np.array([b / scale, self._cheap[s] / scale, full / scale, b / full], dtype=np.float32)

    def _request_obs(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Add the ``request`` key (and ``slo`` in SLO mode) to an observation."""
        obs["request"] = self.data.request[self._s].copy()
        if self._slo:
            obs["slo"] = np.array([self._bt / self.latency_scale_ms, self._bp / self.data.tpot_scale_ms], dtype=np.float32)
        return obs

    def _terminal_observation(self) -> dict[str, np.ndarray]:
        """The observation the last action was taken on, as fresh arrays."""
        return {k: v.copy() for k, v in self._last_obs.items()}

    def _make_info(self, *, stage: int, config: dict, c: int, mask: np.ndarray, outcome: Outcome | None,
                   invalid: bool) -> dict[str, Any]:
        s = self._s
        info = {
            "budget_ms": self._b,
            "config": config,
            "config_index": c,
            "sample_id": self._ids[s],
            "sample_index": s,
            "dataset": self._datasets[s],
            "synthetic": self.data.synthetic,
            "action_mask": mask,
            "stage": stage,
            "invalid_action": invalid,
        }
        if self._slo:
            info["ttft_budget_ms"] = self._bt
            info["tpot_budget_ms"] = self._bp
        if outcome is not None:
            add_outcome(info, outcome, self._b, (self._bt, self._bp) if self._slo else None)
        return info
