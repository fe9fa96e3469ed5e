"""Latency budgets of episodes (DESIGN.md §3).

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
