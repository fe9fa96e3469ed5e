"""The 256-d latency-budget encoding of the controllers (docs/DESIGN.md §8, seeds' ``budget_feat_dim``).

The envs give the budget as four numbers (docs/INTERFACES.md, observation key ``budget``)::

    obs["budget"] = [budget/scale, cheapest/scale, full/scale, budget/full]     float32 (..., 4)

where ``cheapest`` / ``full`` are the estimator's latencies of this request at the cheapest and at
the full configuration and ``scale`` is the env's ``latency_scale_ms``. A controller must map the
budget onto *thresholds* ("can I afford the high tier for this request?"), which an MLP learns far
more easily from sinusoidal (Fourier) features than from one raw scalar (Tancik et al. 2020,
"Fourier features let networks learn high frequency functions"). The encoding is::

    [ raw (4)  |  sin/cos(2π f_j x_q)  for q in quantities, j < F  |  zero padding ]

with three quantities ``x_q`` derived from the four numbers:

- ``abs`` = budget / scale: the absolute budget (what the seeds encoded);
- ``rel`` = budget / full: the budget relative to this request's full-configuration latency
  (1 = the full configuration just fits);
- ``pos`` = (budget − cheapest) / (full − cheapest): where the budget lies between this
  request's cheapest and full configuration (0 = only the cheapest fits, 1 = everything fits).

``F = (dim − 4) // (2·len(quantities))`` frequencies per quantity, geometrically spaced in
``[freq_min, freq_max]`` cycles per unit of ``x_q``; the remaining ``dim − 4 − 2·F·len(quantities)``
entries are zeros (none with the defaults: 4 + 2·42·3 = 256). Pure numpy, deterministic, no
parameters to learn, so that every agent (GRPO, bandits, PPO feature extractors) can share it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: The quantities :class:`BudgetEncoding` knows how to derive from ``obs["budget"]``.
BUDGET_QUANTITIES: tuple[str, ...] = ("abs", "rel", "pos")

#: Width of the raw ``obs["budget"]`` vector.
RAW_BUDGET_DIM = 4


@dataclass(frozen=True)
class BudgetEncoding:
    """Fourier-feature encoding of ``obs["budget"]``; see the module docstring for the layout.

    Args:
        dim: output width (the seeds' ``budget_feat_dim``, 256).
        quantities: which derived quantities get Fourier features, a subset of
            :data:`BUDGET_QUANTITIES` (order = layout order).
        freq_min: lowest frequency in cycles per unit of the quantity. 0.25 gives a wavelength of
            4 units, longer than the range of any quantity, so the lowest pair is monotone there.
        freq_max: highest frequency in cycles per unit. 32 resolves ~1/64 of a unit, i.e. about
            1.5 % of the request's full latency for ``rel``.
        eps: guard for ``full − cheapest`` (in units of ``scale``) when both latencies coincide.
    """

    dim: int = 256
    quantities: tuple[str, ...] = BUDGET_QUANTITIES
    freq_min: float = 0.25
    freq_max: float = 32.0
    eps: float = 1e-6

    def __post_init__(self) -> None:
        object.__setattr__(self, "quantities", tuple(str(q) for q in self.quantities))
        unknown = [q for q in self.quantities if q not in BUDGET_QUANTITIES]
        if unknown or not self.quantities or len(set(self.quantities)) != len(self.quantities):
            raise ValueError(
                f"quantities must be distinct names from {BUDGET_QUANTITIES}, got {self.quantities}"
            )
        if not 0.0 < self.freq_min <= self.freq_max:
            raise ValueError(f"need 0 < freq_min <= freq_max, got {self.freq_min}, {self.freq_max}")
        if self.n_freqs < 1:
            raise ValueError(
                f"dim={self.dim} leaves no room for Fourier features of {len(self.quantities)} quantities "
                f"(need dim >= {RAW_BUDGET_DIM + 2 * len(self.quantities)})"
            )

    @property
    def n_freqs(self) -> int:
        """Frequencies per quantity, ``(dim − 4) // (2·len(quantities))``."""
        return (int(self.dim) - RAW_BUDGET_DIM) // (2 * len(self.quantities))

    @property
    def frequencies(self) -> np.ndarray:
        """(F,) float64 frequencies in cycles per unit, geometric from ``freq_min`` to ``freq_max``."""
        return np.geomspace(self.freq_min, self.freq_max, self.n_freqs)

    def quantities_of(self, budget_obs: np.ndarray) -> np.ndarray:
        """The derived quantities, float64 (..., len(quantities)), in the order of ``quantities``."""
        b = np.asarray(budget_obs, dtype=np.float64)
        if b.shape[-1:] != (RAW_BUDGET_DIM,):
            raise ValueError(f"budget observation must have last dim {RAW_BUDGET_DIM}, got shape {b.shape}")
        if not np.all(np.isfinite(b)):
            raise ValueError("budget observation contains NaN or inf")
        budget, cheapest, full, rel = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
        derived = {
            "abs": budget,
            "rel": rel,
            "pos": (budget - cheapest) / np.maximum(full - cheapest, self.eps),
        }
        return np.stack([derived[q] for q in self.quantities], axis=-1)

    def __call__(self, budget_obs: np.ndarray) -> np.ndarray:
        """Encode ``obs["budget"]`` (..., 4) → float32 (..., dim)."""
        b = np.asarray(budget_obs, dtype=np.float64)
        x = self.quantities_of(b)  # (..., Q)
        angles = 2.0 * np.pi * x[..., :, None] * self.frequencies  # (..., Q, F)
        fourier = np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)  # (..., Q, 2F)
        fourier = fourier.reshape(*x.shape[:-1], -1)
        pad = int(self.dim) - RAW_BUDGET_DIM - fourier.shape[-1]
        parts = [b, fourier]
        if pad:
            parts.append(np.zeros((*x.shape[:-1], pad)))
        return np.concatenate(parts, axis=-1).astype(np.float32)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["quantities"] = list(self.quantities)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BudgetEncoding":
        known = {"dim", "quantities", "freq_min", "freq_max", "eps"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown BudgetEncoding fields {sorted(unknown)}")
        return cls(**{k: (tuple(v) if k == "quantities" else v) for k, v in d.items()})
