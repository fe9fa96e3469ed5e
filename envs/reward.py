"""Rewards of the replay envs (docs/DESIGN.md §3): one configurable function, vectorised and scalar.

Notation: ``S`` = score of the chosen configuration on the request (metric in [0, 1]),
``L`` = the latency estimator's total latency (ms) of that configuration for the request's
vision / prompt token counts and its own output length at that configuration, ``B`` = the
episode's latency budget (ms), ``x`` = the configuration's complexity in [0, 1]
(:attr:`envs.replay_data.ReplayData.complexity`), ``L_ref`` = the request's full-configuration
latency at the nominal output length (``ReplayData.full_ms``, the same number the observation
carries, known before anything runs).

=============  ==========================================================================  =====================================
mode           reward                                                                      parameters (defaults)
=============  ==========================================================================  =====================================
``hinge``      ``S − α·max(0, L − B)/B``                                                   ``alpha`` = 2.0
``hard``       ``S`` if ``L ≤ B`` else ``−c``                                              ``c`` = 1.0
``lagrangian`` ``S − λ·L/L_ref``                                                           ``lam`` = 0.5
``shaped``     ``α·S − β·σ(10(L/B − 1)) − γ·(max(0, L − B)/B)² − ε·x + δ·[L ≤ B]·(1 − L/B)``  ``alpha`` = 1, ``beta`` = 0.5,
                                                                                           ``gamma`` = 10, ``delta`` = 0.1,
                                                                                           ``epsilon`` = 0.05
=============  ==========================================================================  =====================================

``σ`` is the logistic function. ``shaped`` is the reward of the seeds' fork; ``lagrangian`` is
VoVNet's ``lambda_cost`` form. :func:`compute_reward` is the vectorised definition;
:meth:`RewardConfig.scalar` is the same formula in plain Python for the single envs' hot path
(a numpy call on 0-d arrays costs more than the rest of a step); the tests hold them equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

REWARD_MODES: tuple[str, ...] = ("hinge", "hard", "lagrangian", "shaped")

#: ``alpha`` when not given, per mode (the other parameters share one default across modes).
_DEFAULT_ALPHA = {"hinge": 2.0, "shaped": 1.0}


@dataclass(frozen=True)
class RewardConfig:
    """Which reward and its parameters (see the module docstring for the formulas).

    Args:
        mode: one of :data:`REWARD_MODES`.
        alpha: ``hinge``: violation slope (default 2.0); ``shaped``: score weight (default 1.0).
        c: ``hard``: penalty magnitude for a violated budget (reward ``-c``).
        lam: ``lagrangian``: λ, the price of one full-configuration latency.
        beta, gamma, delta, epsilon: ``shaped``: sigmoid penalty weight, squared overshoot
            weight, in-budget slack bonus weight, complexity weight.
    """

    mode: str = "hinge"
    alpha: float | None = None
    c: float = 1.0
    lam: float = 0.5
    beta: float = 0.5
    gamma: float = 10.0
    delta: float = 0.1
    epsilon: float = 0.05

    def __post_init__(self) -> None:
        if self.mode not in REWARD_MODES:
            raise ValueError(f"unknown reward mode {self.mode!r}; valid modes: {list(REWARD_MODES)}")
        if self.alpha is None:
            object.__setattr__(self, "alpha", _DEFAULT_ALPHA.get(self.mode, 1.0))
        for f in fields(self):
            if f.name == "mode":
                continue
            v = getattr(self, f.name)
            if not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(float(v)):
                raise ValueError(f"reward parameter {f.name}={v!r} must be a finite number")
            object.__setattr__(self, f.name, float(v))

    @classmethod
    def make(cls, reward: "str | RewardConfig" = "hinge", reward_kwargs: dict | None = None) -> "RewardConfig":
        """Build from an env's ``reward=`` / ``reward_kwargs=`` arguments; unknown parameter → ValueError."""
        if isinstance(reward, RewardConfig):
            if reward_kwargs:
                raise ValueError("pass reward parameters either in the RewardConfig or in reward_kwargs, not both")
            return reward
        kw = dict(reward_kwargs or {})
        names = [f.name for f in fields(cls) if f.name != "mode"]
        unknown = sorted(set(kw) - set(names))
        if unknown:
            raise ValueError(f"unknown reward parameter(s) {unknown}; valid parameters: {names}")
        return cls(mode=str(reward), **kw)

    @property
    def needs_latency_ref(self) -> bool:
        return self.mode == "lagrangian"

    def scalar(self, score: float, latency_ms: float, budget_ms: float, complexity: float, latency_ref_ms: float) -> float:
        """:func:`compute_reward` for one outcome, in plain Python floats (same formula)."""
        mode = self.mode
        if mode == "hinge":
            over = latency_ms - budget_ms
            return score - self.alpha * over / budget_ms if over > 0.0 else score
        if mode == "hard":
            return score if latency_ms <= budget_ms else -self.c
        if mode == "lagrangian":
            return score - self.lam * latency_ms / latency_ref_ms
        ratio = latency_ms / budget_ms
        over = ratio - 1.0 if ratio > 1.0 else 0.0
        r = (
            self.alpha * score
            - self.beta / (1.0 + math.exp(-10.0 * (ratio - 1.0)))
            - self.gamma * over * over
            - self.epsilon * complexity
        )
        if latency_ms <= budget_ms:
            r += self.delta * (1.0 - ratio)
        return r


def compute_reward(
    score: np.ndarray | float,
    latency_ms: np.ndarray | float,
    budget_ms: np.ndarray | float,
    complexity: np.ndarray | float,
    cfg: RewardConfig,
    latency_ref_ms: np.ndarray | float | None = None,
) -> np.ndarray:
    """Rewards of outcomes; all inputs broadcast together.

    Args:
        score: metric score of the chosen configuration, in [0, 1].
        latency_ms: estimated total latency of the configuration (ms).
        budget_ms: latency budget (ms), > 0.
        complexity: configuration complexity in [0, 1] (used by ``shaped``).
        cfg: the reward definition.
        latency_ref_ms: ``L_ref`` (ms), the request's full-configuration latency; required by
            ``lagrangian`` only.

    Returns:
        float64 array of the broadcast shape.
    """
    s = np.asarray(score, dtype=np.float64)
    lat = np.asarray(latency_ms, dtype=np.float64)
    b = np.asarray(budget_ms, dtype=np.float64)
    mode = cfg.mode
    if mode == "hinge":
        return s - cfg.alpha * np.maximum(lat - b, 0.0) / b
    if mode == "hard":
        return np.where(lat <= b, s, -cfg.c)
    if mode == "lagrangian":
        if latency_ref_ms is None:
            raise ValueError("reward mode 'lagrangian' needs latency_ref_ms (the request's full-configuration latency)")
        return s - cfg.lam * lat / np.asarray(latency_ref_ms, dtype=np.float64)
    if mode == "shaped":
        ratio = lat / b
        over = np.maximum(ratio - 1.0, 0.0)
        r = (
            cfg.alpha * s
            - cfg.beta / (1.0 + np.exp(-10.0 * (ratio - 1.0)))
            - cfg.gamma * over * over
            - cfg.epsilon * np.asarray(complexity, dtype=np.float64)
        )
        return r + np.where(lat <= b, cfg.delta * (1.0 - ratio), 0.0)
    raise ValueError(f"unknown reward mode {mode!r}; valid modes: {list(REWARD_MODES)}")
