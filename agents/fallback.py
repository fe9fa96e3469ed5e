"""Uncertainty-triggered fallback around any policy (seed 05 §E1).

:class:`UncertaintyFallback` wraps a flat or a two-stage policy. For each request it reads the
cache's first-token uncertainty (``OutcomeCache.uncertainty``: column 0 the entropy, column 1 the
margin, computed at the cheapest configuration, i.e. by a cheap pass before the decision) through
``info["sample_index"]``. When the request is *uncertain* (entropy above ``threshold``, or margin
at or below it) the wrapper escalates: it replaces the inner policy's choice by the **largest
configuration within budget**, the one of highest complexity (:func:`envs.replay_data.config_complexity`)
among the request's valid configurations whose *nominal* estimated latency (TTFT + decode ms per
token × (nominal output tokens − 1), what is knowable before running) fits the budget. When no
configuration fits, the inner choice is kept (the escalation would only add a violation).

- Flat inner policy: ``act`` returns the escalated configuration indices.
- Two-stage inner policy: the wrapper is a two-stage policy too; an escalated request takes the
  target's (tier, p) at stage 1 and its (top-k, blocks) at stage 2, the others pass through.

``last_triggered`` (bool (n,)) and ``last_escalated`` (bool (n,): triggered and a target existed)
describe the latest decision, for trigger-rate accounting.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.replay_data import ReplayData


class UncertaintyFallback:
    def __init__(self, policy: Any, data: ReplayData, uncertainty: np.ndarray, threshold: float,
                 feature: str = "entropy", name: str | None = None) -> None:
        if feature not in ("entropy", "margin"):
            raise ValueError(f"feature must be 'entropy' or 'margin', got {feature!r}")
        u = np.asarray(uncertainty, dtype=np.float64)
        if u.ndim != 2 or u.shape[0] != data.n:
            raise ValueError(f"uncertainty must be (n, 2) with n = data.n = {data.n}, got {u.shape}")
        self.policy, self.data, self.feature = policy, data, feature
        self.threshold = float(threshold)
        self.signal = u[:, 0] if feature == "entropy" else u[:, 1]
        self.name = name or f"fallback[{getattr(policy, 'name', 'policy')}]@{feature}{self.threshold:.3g}"
        nominal = data.ttft_ms.astype(np.float64) + data.tpot_ms.astype(np.float64) * max(data.nominal_output_tokens - 1, 0)
        self.nominal_ms = np.where(data.valid, nominal, np.inf)
        self.last_triggered = np.zeros(0, dtype=bool)
        self.last_escalated = np.zeros(0, dtype=bool)
        if hasattr(policy, "act_stage1") and hasattr(policy, "act_stage2"):
            self.act_stage1, self.act_stage2 = self._stage1, self._stage2
        else:
            self.act = self._act

    # ------------------------------------------------------------------ decisions
    def triggered(self, rows: np.ndarray) -> np.ndarray:
        s = self.signal[rows]
        with np.errstate(invalid="ignore"):
            # margin: ``<=`` so that a threshold at a point mass (e.g. margins clipped at 0) still triggers
            return (s > self.threshold) if self.feature == "entropy" else (s <= self.threshold)

    def targets(self, rows: np.ndarray, budget_ms: np.ndarray) -> np.ndarray:
        """The largest configuration within budget per row (-1 where none fits)."""
        fits = self.nominal_ms[rows] <= np.asarray(budget_ms, dtype=np.float64).reshape(-1, 1)
        cx = np.where(fits, self.data.complexity[None, :], -np.inf)
        best = np.argmax(cx, axis=1)
        return np.where(fits.any(axis=1), best, -1)

    def _plan(self, info: dict) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(info["sample_index"], dtype=np.int64).reshape(-1)
        budgets = np.asarray(info["budget_ms"], dtype=np.float64).reshape(-1)
        trig = self.triggered(rows)
        tgt = np.where(trig, self.targets(rows, budgets), -1)
        self.last_triggered, self.last_escalated = trig, tgt >= 0
        return trig, tgt

    def _act(self, obs: dict, info: dict) -> np.ndarray:
        base = np.asarray(self.policy.act(obs, info), dtype=np.int64)
        _, tgt = self._plan(info)
        return np.where(tgt >= 0, tgt, base)

    def _components(self, cfg: np.ndarray) -> np.ndarray:
        a = self.data.config_arrays
        c = np.maximum(cfg, 0)
        return np.stack([a["tier"][c], a["p_index"][c], a["k_index"][c], a["blocks_index"][c]], axis=1)

    def _stage1(self, obs: dict, info: dict) -> np.ndarray:
        base = np.asarray(self.policy.act_stage1(obs, info), dtype=np.int64)
        _, tgt = self._plan(info)
        self._stage_targets = tgt
        out = base.copy()
        esc = tgt >= 0
        out[esc] = self._components(tgt[esc])
        return out

    def _stage2(self, obs: dict, info: dict) -> np.ndarray:
        base = np.asarray(self.policy.act_stage2(obs, info), dtype=np.int64)
        tgt = getattr(self, "_stage_targets", None)
        if tgt is None or tgt.shape[0] != base.shape[0]:
            return base
        out = base.copy()
        esc = tgt >= 0
        out[esc] = self._components(tgt[esc])
        return out

    @staticmethod
    def thresholds(train_uncertainty: np.ndarray, feature: str, quantiles: Any) -> list[float]:
        """Thresholds at ``quantiles`` of the train split's signal, ordered so that a higher
        quantile triggers less often (entropy: the q-quantile; margin: the (1−q)-quantile)."""
        u = np.asarray(train_uncertainty, dtype=np.float64)
        x = u[:, 0] if feature == "entropy" else u[:, 1]
        x = x[np.isfinite(x)]
        if x.size == 0:
            raise ValueError("the cache has no uncertainty features (all NaN)")
        return [float(np.quantile(x, q if feature == "entropy" else 1.0 - q)) for q in quantiles]
