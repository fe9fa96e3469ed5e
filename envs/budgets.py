"""Latency budgets of episodes (docs/DESIGN.md §3).

Each episode draws one budget (ms): uniform over a range (default: the replay data's
``budget_range_ms``, i.e. cheapest → full configuration latency of a typical request) or a
uniform choice from a fixed list. A budget pinned through ``reset(options={"budget_ms": b})``
is validated against ``bounds`` (default ``(0.5·lo, 2·hi)`` of the range / list), so that an
obviously wrong unit (seconds for ms) fails loudly.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def _finite_positive(x: float, what: str) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {x!r} is not a number") from None
    if not math.isfinite(v) or v <= 0.0:
        raise ValueError(f"{what} {x!r} must be finite and > 0 (ms)")
    return v


class BudgetSampler:
    """Draws episode budgets in ms.

    Args:
        range_ms: ``(lo, hi)`` with ``0 < lo <= hi``: budgets uniform on ``[lo, hi)``
            (``lo == hi`` gives a constant budget).
        budgets: a fixed list of budgets; each episode takes one uniformly at random.
            Exactly one of ``range_ms`` / ``budgets`` must be given.
        bounds: ``(min, max)`` accepted for pinned budgets; default ``(0.5·lo, 2·hi)`` where
            ``lo, hi`` are the range or the list's min / max.

    Draws use the generator passed to :meth:`sample` (the env's ``np_random``), so an env
    seeded the same way draws the same budgets.
    """

    def __init__(
        self,
        range_ms: Sequence[float] | None = None,
        budgets: Sequence[float] | None = None,
        bounds: Sequence[float] | None = None,
    ) -> None:
        if (range_ms is None) == (budgets is None):
            raise ValueError("give exactly one of range_ms=(lo, hi) or budgets=[...]")
        if budgets is not None:
            values = np.array([_finite_positive(b, "budget") for b in np.asarray(budgets, dtype=object).reshape(-1)])
            if values.size == 0:
                raise ValueError("budgets must not be empty")
            self.budgets: np.ndarray | None = values.astype(np.float64)
            lo, hi = float(values.min()), float(values.max())
        else:
            r = list(np.asarray(range_ms, dtype=object).reshape(-1))
            if len(r) != 2:
                raise ValueError(f"budget range must be (lo, hi), got {range_ms!r}")
            lo, hi = _finite_positive(r[0], "budget range lo"), _finite_positive(r[1], "budget range hi")
            if lo > hi:
                raise ValueError(f"budget range ({lo}, {hi}) has lo > hi")
            self.budgets = None
        self.range_ms: tuple[float, float] = (lo, hi)
        if bounds is None:
            self.bounds: tuple[float, float] = (0.5 * lo, 2.0 * hi)
        else:
            b = list(np.asarray(bounds, dtype=object).reshape(-1))
            if len(b) != 2:
                raise ValueError(f"budget bounds must be (min, max), got {bounds!r}")
            blo, bhi = _finite_positive(b[0], "budget bounds min"), _finite_positive(b[1], "budget bounds max")
            if not blo <= lo <= hi <= bhi:
                raise ValueError(f"budget bounds ({blo}, {bhi}) must contain the budgets' range ({lo}, {hi})")
            self.bounds = (blo, bhi)

    def __repr__(self) -> str:
        src = f"budgets={self.budgets.tolist()}" if self.budgets is not None else f"range_ms={self.range_ms}"
        return f"BudgetSampler({src}, bounds={self.bounds})"

    def sample(self, rng: np.random.Generator, size: int | None = None) -> float | np.ndarray:
        """One budget (Python float) or ``size`` budgets (float64 array), in ms."""
        if self.budgets is not None:
            idx = rng.integers(0, self.budgets.size, size=size)
            return float(self.budgets[idx]) if size is None else self.budgets[idx]
        lo, hi = self.range_ms
        if size is None:  # Generator.uniform's formula without its per-call overhead (~5 us)
            return lo + (hi - lo) * rng.random()
        return rng.uniform(lo, hi, size=size)

    def from_uniform(self, u: np.ndarray) -> np.ndarray:
        """Budgets (float64) from uniform draws ``u`` in [0, 1): the vector envs draw requests
        and budgets with one generator call."""
        if self.budgets is not None:
            return self.budgets[(u * self.budgets.size).astype(np.int64)]
        lo, hi = self.range_ms
        return lo + (hi - lo) * u

    def validate(self, budget_ms: float) -> float:
        """A pinned budget as a float; ValueError naming the budget and the bounds if unusable."""
        lo, hi = self.bounds
        try:
            v = float(budget_ms)
        except (TypeError, ValueError):
            raise ValueError(f"budget_ms {budget_ms!r} is not a number; expected ms within bounds [{lo}, {hi}]") from None
        if not (math.isfinite(v) and v > 0.0 and lo <= v <= hi):
            raise ValueError(f"budget_ms {budget_ms!r} must be finite, > 0 and within the budget bounds [{lo}, {hi}] ms")
        return v

    def validate_many(self, budgets_ms: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`validate`: float64 array, ValueError naming the first bad budget."""
        v = np.asarray(budgets_ms, dtype=np.float64)
        lo, hi = self.bounds
        bad = ~(np.isfinite(v) & (v > 0.0) & (v >= lo) & (v <= hi))
        if bad.any():
            i = int(np.flatnonzero(bad.reshape(-1))[0])
            raise ValueError(
                f"budget_ms {float(v.reshape(-1)[i])!r} (entry {i}) must be finite, > 0 and within the budget bounds [{lo}, {hi}] ms"
            )
        return v


#: Budget modes (``EnvConfig.budget_mode``); see :class:`EpisodeBudgets`.
BUDGET_MODES: tuple[str, ...] = ("absolute", "relative", "slo")
#: The default mode: change this one line to switch every env (and the evaluator) over.
DEFAULT_BUDGET_MODE = "absolute"

BUDGET_MODES_DOC = """
    Budget modes (``budget_mode=``):

    - ``"absolute"`` (default): one latency budget in ms per episode, uniform over
      ``budget_range`` (default: the data's ``budget_range_ms``, median cheapest → median full)
      or a choice from ``budgets``; a configuration violates when its total estimated latency
      (at the request's own output length) exceeds it.
    - ``"relative"``: budget = cheapest_i + u·(full_i − cheapest_i) with u ~ U[u_lo, u_hi)
      (``budget_u_range``, default (0, 1)): the request's own cheapest → full span at the nominal
      output length, so every request's high tier is affordable at some budgets. Violation and
      reward as in ``absolute``.
    - ``"slo"``: a serving SLO, a time-to-first-token budget ``B_ttft`` (ms, uniform over
      ``slo_ttft_range``, default median cheapest → median full TTFT) and a per-output-token
      budget ``B_tpot`` (ms, uniform over ``slo_tpot_range``, default median cheapest → median
      full decode ms per token at the nominal length), drawn independently. A configuration
      violates when its estimated TTFT (vision + prefill) exceeds ``B_ttft`` or its decode time
      per token after the first (``decode_ms / (output_tokens − 1)``; 0 for one token) exceeds
      ``B_tpot``. The reward sees the normalised latency
      ``ρ = max(TTFT/B_ttft, TPOT/B_tpot)`` when both fit and ``ρ = 1 + max(0, TTFT/B_ttft − 1)
      + max(0, TPOT/B_tpot − 1)`` otherwise (continuous at 1), with budget 1: ``hinge`` =
      S − α·(sum of the normalised excesses), ``hard`` = S if ρ ≤ 1 else −c, ``shaped`` uses ρ as
      L/B; ``lagrangian`` is budget-free (unchanged). ``budget_ms`` (info, observation) is then
      the equivalent total budget ``B_ttft + B_tpot·(nominal_output_tokens − 1)``.

    Pinned budgets (``reset(options=...)``): ``budget_ms`` in ``absolute`` and ``relative`` mode;
    ``budget_u`` (the u of the formula) in ``relative`` mode; ``ttft_budget_ms`` and
    ``tpot_budget_ms`` (both) in ``slo`` mode. Each a scalar or, in the vector envs, a (num_envs,)
    array.
"""


def slo_ratio(ttft_ms: np.ndarray, tpot_ms: np.ndarray, ttft_budget_ms: np.ndarray, tpot_budget_ms: np.ndarray) -> np.ndarray:
    """The SLO mode's normalised latency ρ (float64; ρ > 1 ⇔ violation), see :data:`BUDGET_MODES_DOC`."""
    r1 = np.asarray(ttft_ms, np.float64) / np.asarray(ttft_budget_ms, np.float64)
    r2 = np.asarray(tpot_ms, np.float64) / np.asarray(tpot_budget_ms, np.float64)
    over = np.maximum(r1 - 1.0, 0.0) + np.maximum(r2 - 1.0, 0.0)
    return np.where(over > 0.0, 1.0 + over, np.maximum(r1, r2))


def slo_ratio_scalar(ttft_ms: float, tpot_ms: float, ttft_budget_ms: float, tpot_budget_ms: float) -> float:
    """:func:`slo_ratio` for Python floats (the scalar envs' hot path)."""
    r1, r2 = ttft_ms / ttft_budget_ms, tpot_ms / tpot_budget_ms
    over = (r1 - 1.0 if r1 > 1.0 else 0.0) + (r2 - 1.0 if r2 > 1.0 else 0.0)
    return 1.0 + over if over > 0.0 else max(r1, r2)


def _range2(x: Sequence[float], what: str, allow_zero: bool = False) -> tuple[float, float]:
    r = list(np.asarray(x, dtype=object).reshape(-1))
    if len(r) != 2:
        raise ValueError(f"{what} must be (lo, hi), got {x!r}")
    try:
        lo, hi = float(r[0]), float(r[1])
    except (TypeError, ValueError):
        raise ValueError(f"{what} {x!r} is not a pair of numbers") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and (lo >= 0.0 if allow_zero else lo > 0.0) and lo <= hi):
        raise ValueError(f"{what} {x!r} must be finite with {'0 <=' if allow_zero else '0 <'} lo <= hi")
    return lo, hi


class EpisodeBudgets:
    """The episode budgets of one env under a budget mode (:data:`BUDGET_MODES_DOC`).

    Args:
        mode: one of :data:`BUDGET_MODES`.
        sampler: the absolute-budget :class:`BudgetSampler` (draws in ``absolute`` mode; validates
            pinned ``budget_ms`` in ``absolute`` / ``relative`` mode).
        cheapest_ms, full_ms: float64 (n,) the requests' nominal cheapest / full latencies.
        u_range: ``relative`` mode's (u_lo, u_hi).
        ttft_range, tpot_range: ``slo`` mode's budget ranges (ms).
        nominal_output_tokens: for the SLO mode's equivalent total budget.

    :meth:`from_uniform` turns uniform draws ``u`` (3, k) into budgets of requests ``s`` (k,):
    ``(budget_ms, ttft_budget_ms, tpot_budget_ms)`` float64 arrays (the last two NaN outside
    ``slo`` mode).
    """

    def __init__(self, mode: str, sampler: BudgetSampler, cheapest_ms: np.ndarray, full_ms: np.ndarray, *,
                 u_range: Sequence[float] | None = None, ttft_range: Sequence[float] | None = None,
                 tpot_range: Sequence[float] | None = None, nominal_output_tokens: int = 3) -> None:
        if mode not in BUDGET_MODES:
            raise ValueError(f"budget_mode={mode!r}; valid modes: {list(BUDGET_MODES)}")
        self.mode = mode
        self.sampler = sampler
        self.cheapest_ms = np.asarray(cheapest_ms, np.float64)
        self.full_ms = np.asarray(full_ms, np.float64)
        self.u_range = _range2((0.0, 1.0) if u_range is None else u_range, "budget_u_range", allow_zero=True)
        self.ttft_range = None if ttft_range is None else _range2(ttft_range, "slo_ttft_range")
        self.tpot_range = None if tpot_range is None else _range2(tpot_range, "slo_tpot_range")
        if mode == "slo" and (self.ttft_range is None or self.tpot_range is None):
            raise ValueError("budget_mode='slo' needs slo_ttft_range and slo_tpot_range")
        self.nominal_steps = float(max(int(nominal_output_tokens) - 1, 0))

    @property
    def slo(self) -> bool:
        return self.mode == "slo"

    def __repr__(self) -> str:
        extra = {"absolute": f"{self.sampler!r}", "relative": f"u_range={self.u_range}",
                 "slo": f"ttft_range={self.ttft_range}, tpot_range={self.tpot_range}"}[self.mode]
        return f"EpisodeBudgets(mode={self.mode!r}, {extra})"

    def from_uniform(self, u: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Budgets of requests ``s`` (k,) from uniform draws ``u`` (3, k) in [0, 1)."""
        k = len(s)
        nan = np.full(k, np.nan)
        if self.mode == "absolute":
            return self.sampler.from_uniform(u[0]), nan, nan.copy()
        if self.mode == "relative":
            lo, hi = self.u_range
            return self.relative_budget(s, lo + (hi - lo) * u[0]), nan, nan.copy()
        (t0, t1), (p0, p1) = self.ttft_range, self.tpot_range
        bt, bp = t0 + (t1 - t0) * u[1], p0 + (p1 - p0) * u[2]
        return bt + bp * self.nominal_steps, bt, bp

    def sample(self, rng: np.random.Generator, s: int) -> tuple[float, float, float]:
        """One episode's budgets for request ``s`` (Python floats; the scalar envs)."""
        if self.mode == "absolute":  # one draw, as before the modes existed (seeded runs unchanged)
            return self.sampler.sample(rng), float("nan"), float("nan")
        b, bt, bp = self.from_uniform(rng.random((3, 1)), np.array([s]))
        return float(b[0]), float(bt[0]), float(bp[0])

    def relative_budget(self, s: np.ndarray, u: np.ndarray) -> np.ndarray:
        c = self.cheapest_ms[s]
        return c + np.asarray(u, np.float64) * (self.full_ms[s] - c)

    def pinned(self, opts: dict, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Pinned budgets of requests ``s`` (k,) from ``reset`` options (scalars broadcast), or
        None when the options pin none; ValueError for options of another mode or bad values."""
        k = len(s)
        has = {key: opts.get(key) is not None for key in ("budget_ms", "budget_u", "ttft_budget_ms", "tpot_budget_ms")}
        nan = np.full(k, np.nan)

        def arr(key: str) -> np.ndarray:
            return np.broadcast_to(np.asarray(opts[key], dtype=np.float64), (k,)).astype(np.float64)

        if self.mode == "slo":
            if has["budget_ms"] or has["budget_u"]:
                raise ValueError("budget_mode='slo' pins budgets with ttft_budget_ms= and tpot_budget_ms=, "
                                 "not budget_ms= / budget_u=")
            if not (has["ttft_budget_ms"] or has["tpot_budget_ms"]):
                return None
            if not (has["ttft_budget_ms"] and has["tpot_budget_ms"]):
                raise ValueError("budget_mode='slo': pin both ttft_budget_ms and tpot_budget_ms")
            bt, bp = arr("ttft_budget_ms"), arr("tpot_budget_ms")
            for name, v in (("ttft_budget_ms", bt), ("tpot_budget_ms", bp)):
                bad = ~(np.isfinite(v) & (v > 0.0))
                if bad.any():
                    raise ValueError(f"{name} {float(v[bad][0])!r} must be finite and > 0 (ms)")
            return bt + bp * self.nominal_steps, bt, bp
        if has["ttft_budget_ms"] or has["tpot_budget_ms"]:
            raise ValueError(f"ttft_budget_ms= / tpot_budget_ms= only apply to budget_mode='slo' (this env: {self.mode!r})")
        if has["budget_u"]:
            if self.mode != "relative":
                raise ValueError(f"budget_u= only applies to budget_mode='relative' (this env: {self.mode!r})")
            if has["budget_ms"]:
                raise ValueError("options: give budget_ms or budget_u, not both")
            u = arr("budget_u")
            bad = ~(np.isfinite(u) & (u >= -1.0) & (u <= 4.0))
            if bad.any():
                raise ValueError(f"budget_u {float(u[bad][0])!r} must be finite and within [-1, 4]")
            b = self.relative_budget(s, u)
            if np.any(b <= 0.0):
                raise ValueError("budget_u gives a budget <= 0 ms for some request")
            return b, nan, nan.copy()
        if has["budget_ms"]:
            return self.sampler.validate_many(arr("budget_ms")), nan, nan.copy()
        return None
