"""One split of an outcome cache, loaded once into numpy arrays for the replay envs.

The envs never touch h5py or the latency estimator while stepping: everything a step needs
(scores, output lengths, the estimator's latency components of every (request,
configuration), language features, latency tokens, masks) is precomputed here, so a step is a
handful of index lookups.

Shapes: ``n`` requests of the split, ``C`` configurations (KnobSpace stable order), ``T``
tiers, ``P`` insertion positions, ``Dl`` / ``Dt`` language-feature / latency-token widths.
Latencies are in milliseconds.

*Complexity* of a configuration (used by the ``shaped`` reward) is the mean of three
normalised knobs, each in [0, 1]: ``tier index / (T − 1)``, ``(top_k − min top_k) /
(max top_k − min top_k)`` and ``(blocks − min blocks) / (num_blocks − min blocks)``, where
``min blocks`` is the smallest valid total (12 by default). The cheapest configuration has
complexity 0, the full one 1.

*Nominal output length*: the observation carries the request's cheapest- and
full-configuration latency before anything runs. Those depend on the image (vision tokens per
tier) and the prompt length, and on an output length that is not known yet; they are
evaluated at ``nominal_output_tokens`` generated tokens (default 3: short VQA answers). The
reward instead uses the estimator's latency at the request's own output length at the chosen
configuration.

*Request features* (:attr:`ReplayData.request`, the observations' ``request`` key): everything
about the request that is known before anything runs, float32 (n, R) with ``R = 4·T + 3``
(15 by default), see :data:`REQUEST_FEATURE_DOC`. The estimated time to first token
(``TTFT`` = vision + prefill, independent of the output length) is given per tier at two
language-model configurations: the cheapest one's ``(p, top_k, blocks)`` and the full one's.
The image's width / height are not part of it: the outcome cache does not store them
(``cache/schema.py``); the crops per tier are the image-size information Molmo's tiling uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple, Sequence

import numpy as np

from envs.knob_space import KnobSpace

if TYPE_CHECKING:  # imported lazily: the readers import h5py, the estimator may import more
    from cache.reader import OutcomeCache
    from model_runtime.latency_estimator import LatencyEstimator

INCOMPLETE_MODES: tuple[str, ...] = ("skip", "mask")


class Outcome(NamedTuple):
    """The outcome of one request at one configuration, as the scalar envs pass it around (from
    the replay tables of :class:`ReplayData`, or in live mode from ``envs.live.LiveOutcomes``).

    Attributes:
        score: the request's metric as the cache stores it.
        latency_ms: the estimated total latency (vision + prefill + decode, ms; the tables'
            ``total_ms``).
        vision_ms, prefill_ms, decode_ms: its components (ms).
        measured_ms: the measured total (ms), NaN if unknown.
        output_tokens: generated tokens (incl. EOS).
    """

    score: float
    latency_ms: float
    vision_ms: float
    prefill_ms: float
    decode_ms: float
    measured_ms: float
    output_tokens: int

#: Scales of the request features (fixed, so that features mean the same across caches).
VISION_TOKENS_SCALE = 1000.0
PROMPT_TOKENS_SCALE = 100.0

REQUEST_FEATURE_DOC = """
    ``request``: float32 (4·T + 3,) = (15,) by default, known before anything runs, fixed per
    episode (``T`` tiers, cheapest first; ``scale`` = the env's ``latency_scale_ms``):

    - ``[0, T)``: crops per tier / max crops of the knob space (``KnobSpace.crops[-1]``);
    - ``[T, 2T)``: vision tokens per tier / 1000;
    - ``[2T]``: prompt tokens / 100;
    - ``[2T+1, 3T+1)``: estimated TTFT (vision + prefill ms) per tier at the cheapest
      configuration's ``(p, top_k, blocks)``, / scale;
    - ``[3T+1, 4T+1)``: the same at the full configuration's ``(p, top_k, blocks)``, / scale;
    - ``[4T+1]``, ``[4T+2]``: estimated decode time per output token (ms) of the cheapest and
      of the full configuration at the nominal output length, / ``tpot_scale_ms`` (the median
      full-configuration one, so ~1).

    The image width / height are not included: the outcome cache does not store them.
"""


def config_complexity(knob_space: KnobSpace) -> np.ndarray:
    """Complexity of every configuration, float32 (C,) in [0, 1] (see the module docstring)."""
    t = knob_space.config_table()

    def norm(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
        return np.zeros(x.shape) if hi <= lo else (x - lo) / (hi - lo)

    min_blocks = min(knob_space.block_options(p)[0] for p in knob_space.insertion_positions)
    c = (
        norm(t["tier"].astype(np.float64), 0, len(knob_space.tiers) - 1)
        + norm(t["top_k"].astype(np.float64), knob_space.top_ks[0], knob_space.top_ks[-1])
        + norm(t["blocks"].astype(np.float64), min_blocks, knob_space.num_blocks)
    ) / 3.0
    return c.astype(np.float32)


def request_lm_configs(knob_space: KnobSpace) -> np.ndarray:
    """int64 (2, T): configuration index of each tier at the cheapest configuration's
    ``(p, top_k, blocks)`` (row 0) and at the full configuration's (row 1)."""
    ks = knob_space
    rows = []
    for ref in (ks.cheapest_config, ks.full_config):
        rows.append([ks.index(type(ref)(tier, ref.p, ref.top_k, ref.blocks)) for tier in ks.tiers])
    return np.asarray(rows, dtype=np.int64)


def nominal_tpot(knob_space: KnobSpace, ttft_tier_ms: np.ndarray, cheapest_ms: np.ndarray, full_ms: np.ndarray,
                 nominal_output_tokens: int) -> np.ndarray:
    """float64 (n, 2) decode ms per output token of the cheapest / full configuration at the
    nominal output length: (total − TTFT) / (nominal − 1) (0 when the nominal length is 1)."""
    if nominal_output_tokens <= 1:
        return np.zeros((len(cheapest_ms), 2))
    ttft_c = ttft_tier_ms[:, 0, 0]
    ttft_f = ttft_tier_ms[:, 1, -1]
    steps = float(nominal_output_tokens - 1)
    return np.maximum(np.stack([np.asarray(cheapest_ms) - ttft_c, np.asarray(full_ms) - ttft_f], axis=1) / steps, 0.0)


def request_features(knob_space: KnobSpace, crops: np.ndarray, vision_tokens: np.ndarray, prompt_tokens: np.ndarray,
                     ttft_tier_ms: np.ndarray, tpot_nominal_ms: np.ndarray, latency_scale_ms: float,
                     tpot_scale_ms: float) -> np.ndarray:
    """float32 (n, 4T+3) request features (layout: :data:`REQUEST_FEATURE_DOC`)."""
    n = len(prompt_tokens)
    cols = [
        np.asarray(crops, np.float64) / float(max(knob_space.crops)),
        np.asarray(vision_tokens, np.float64) / VISION_TOKENS_SCALE,
        np.asarray(prompt_tokens, np.float64).reshape(n, 1) / PROMPT_TOKENS_SCALE,
        np.asarray(ttft_tier_ms, np.float64)[:, 0] / latency_scale_ms,
        np.asarray(ttft_tier_ms, np.float64)[:, 1] / latency_scale_ms,
        np.asarray(tpot_nominal_ms, np.float64) / tpot_scale_ms,
    ]
    out = np.concatenate(cols, axis=1).astype(np.float32)
    return np.ascontiguousarray(out)


def _as(a: Any, dtype: Any, shape: tuple, name: str) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(a), dtype=dtype)
    if arr.shape != shape:
        raise ValueError(f"ReplayData.{name} has shape {arr.shape}, expected {shape}")
    return arr


@dataclass(eq=False)
class ReplayData:
    """In-memory replay data of one split (all numpy; built by :meth:`from_cache` / :meth:`from_arrays`).

    Attributes:
        knob_space: the knob space; ``C = len(knob_space)``.
        sample_ids: str (n,) request ids.
        datasets: str (n,) dataset name per request.
        score: float32 (n, C) metric score in [0, 1]; NaN where no outcome.
        valid: bool (n, C) True where an outcome exists (finite score).
        output_tokens: int32 (n, C) generated tokens; -1 where unknown.
        vision_ms, prefill_ms, decode_ms, total_ms: float32 (n, C) the estimator's latency
            components at the request's own output length (``total = vision + prefill + decode``).
        measured_ms: float32 (n, C) measured total latency; NaN where not measured.
        lang: float32 (n, Dl) language feature of the prompt.
        tokens: float32 (n, T, P, Dt) latency token per (tier, insertion position).
        cheapest_ms, full_ms: float64 (n,) estimated latency of the cheapest / full configuration
            at ``nominal_output_tokens`` (known before running the request).
        budget_range_ms: default ``(lo, hi)`` budget range of episodes.
        latency_scale_ms: latency normaliser of the observations (default: median ``full_ms``).
        synthetic: True when the outcomes come from a synthetic generator.
        complexity: float32 (C,) per-configuration complexity in [0, 1] (derived, not an argument).
        split: split name; nominal_output_tokens: see the module docstring;
        source: where the data came from (cache path or ``"arrays"``);
        cache_rows: int64 (n,) rows of the requests in the cache file (``arange(n)`` otherwise).
        crops, vision_tokens: int64 (n, T) per tier; prompt_tokens: int64 (n,) (zeros when the
            arrays were built without them).
        request: float32 (n, 4T+3) request features (derived, see :data:`REQUEST_FEATURE_DOC`).
        ttft_tier_ms: float64 (n, 2, T) estimated TTFT per tier at the cheapest / full LM
            configuration; tpot_nominal_ms: float64 (n, 2) decode ms per token of the cheapest /
            full configuration at the nominal length; tpot_scale_ms: their full median (derived).
    """

    knob_space: KnobSpace
    sample_ids: np.ndarray
    datasets: np.ndarray
    score: np.ndarray
    valid: np.ndarray
    output_tokens: np.ndarray
    vision_ms: np.ndarray
    prefill_ms: np.ndarray
    decode_ms: np.ndarray
    total_ms: np.ndarray
    measured_ms: np.ndarray
    lang: np.ndarray
    tokens: np.ndarray
    cheapest_ms: np.ndarray
    full_ms: np.ndarray
    budget_range_ms: tuple[float, float]
    latency_scale_ms: float
    synthetic: bool
    split: str = "train"
    nominal_output_tokens: int = 3
    source: str = "arrays"
    cache_rows: np.ndarray | None = None
    crops: np.ndarray | None = None
    vision_tokens: np.ndarray | None = None
    prompt_tokens: np.ndarray | None = None
    complexity: np.ndarray = field(init=False)
    request: np.ndarray = field(init=False)
    ttft_tier_ms: np.ndarray = field(init=False)
    tpot_nominal_ms: np.ndarray = field(init=False)
    tpot_scale_ms: float = field(init=False)

    def __post_init__(self) -> None:
        ks = self.knob_space
        if not isinstance(ks, KnobSpace):
            raise ValueError(f"knob_space must be a KnobSpace, got {type(ks).__name__}")
        self.sample_ids = np.asarray(self.sample_ids).astype(str)
        if self.sample_ids.ndim != 1 or self.sample_ids.size == 0:
            raise ValueError(f"sample_ids must be a non-empty 1-d array, got shape {self.sample_ids.shape}")
        n, c = self.sample_ids.size, len(ks)
        if len(set(self.sample_ids.tolist())) != n:
            raise ValueError("sample_ids must be unique")
        self.datasets = np.asarray(self.datasets).astype(str)
        if self.datasets.shape != (n,):
            raise ValueError(f"ReplayData.datasets has shape {self.datasets.shape}, expected ({n},)")
        self.score = _as(self.score, np.float32, (n, c), "score")
        self.valid = _as(self.valid, bool, (n, c), "valid")
        self.output_tokens = _as(self.output_tokens, np.int32, (n, c), "output_tokens")
        for name in ("vision_ms", "prefill_ms", "decode_ms", "total_ms", "measured_ms"):
            setattr(self, name, _as(getattr(self, name), np.float32, (n, c), name))
        lang = np.asarray(self.lang)
        if lang.ndim != 2 or lang.shape[0] != n:
            raise ValueError(f"ReplayData.lang has shape {lang.shape}, expected ({n}, Dl)")
        self.lang = _as(lang, np.float32, lang.shape, "lang")
        tok = np.asarray(self.tokens)
        t_, p_ = len(ks.tiers), len(ks.insertion_positions)
        if tok.ndim != 4 or tok.shape[:3] != (n, t_, p_):
            raise ValueError(f"ReplayData.tokens has shape {tok.shape}, expected ({n}, {t_}, {p_}, Dt)")
        self.tokens = _as(tok, np.float32, tok.shape, "tokens")
        self.cheapest_ms = _as(self.cheapest_ms, np.float64, (n,), "cheapest_ms")
        self.full_ms = _as(self.full_ms, np.float64, (n,), "full_ms")
        if not (np.all(np.isfinite(self.cheapest_ms)) and np.all(self.cheapest_ms > 0)
                and np.all(np.isfinite(self.full_ms)) and np.all(self.full_ms > 0)):
            raise ValueError("cheapest_ms and full_ms must be finite and > 0 for every request")
        if np.any(self.valid & ~np.isfinite(self.score)):
            raise ValueError("valid marks an outcome whose score is not finite")
        if np.any(self.valid & ~(np.isfinite(self.total_ms) & (self.total_ms > 0))):
            raise ValueError("valid marks an outcome whose estimated total latency is not finite and > 0")
        if not np.all(np.isfinite(self.lang)) or not np.all(np.isfinite(self.tokens)):
            raise ValueError("lang and tokens must be finite (missing latency tokens cannot be replayed)")
        lo, hi = (float(x) for x in self.budget_range_ms)
        if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo <= hi):
            raise ValueError(f"budget_range_ms {self.budget_range_ms} must be finite with 0 < lo <= hi")
        self.budget_range_ms = (lo, hi)
        self.latency_scale_ms = float(self.latency_scale_ms)
        if not (np.isfinite(self.latency_scale_ms) and self.latency_scale_ms > 0):
            raise ValueError(f"latency_scale_ms {self.latency_scale_ms} must be finite and > 0")
        self.synthetic = bool(self.synthetic)
        self.nominal_output_tokens = int(self.nominal_output_tokens)
        if self.nominal_output_tokens < 1:
            raise ValueError(f"nominal_output_tokens must be >= 1, got {self.nominal_output_tokens}")
        self.cache_rows = np.arange(n, dtype=np.int64) if self.cache_rows is None else _as(self.cache_rows, np.int64, (n,), "cache_rows")
        self.complexity = config_complexity(ks)
        t_ = len(ks.tiers)
        self.crops = np.zeros((n, t_), np.int64) if self.crops is None else _as(self.crops, np.int64, (n, t_), "crops")
        self.vision_tokens = (np.zeros((n, t_), np.int64) if self.vision_tokens is None
                              else _as(self.vision_tokens, np.int64, (n, t_), "vision_tokens"))
        self.prompt_tokens = (np.zeros(n, np.int64) if self.prompt_tokens is None
                              else _as(self.prompt_tokens, np.int64, (n,), "prompt_tokens"))
        # TTFT per tier at the cheapest / full LM configuration: read from the estimator's tables
        # (vision + prefill do not depend on the output length)
        ttft = (self.vision_ms + self.prefill_ms).astype(np.float64)
        lm_rows = request_lm_configs(ks)  # (2, T) configuration indices
        self.ttft_tier_ms = ttft[:, lm_rows]  # (n, 2, T)
        self._set_request_features()

    def _set_request_features(self) -> None:
        """Derive ``tpot_nominal_ms`` / ``tpot_scale_ms`` / ``request`` (from ``ttft_tier_ms``,
        ``cheapest_ms`` / ``full_ms`` and the token counts)."""
        ks = self.knob_space
        self.tpot_nominal_ms = nominal_tpot(ks, self.ttft_tier_ms, self.cheapest_ms, self.full_ms, self.nominal_output_tokens)
        med = float(np.median(self.tpot_nominal_ms[:, 1]))
        self.tpot_scale_ms = med if np.isfinite(med) and med > 0 else 1.0
        self.request = request_features(ks, self.crops, self.vision_tokens, self.prompt_tokens, self.ttft_tier_ms,
                                        self.tpot_nominal_ms, self.latency_scale_ms, self.tpot_scale_ms)

    @property
    def request_dim(self) -> int:
        return int(self.request.shape[1])

    @cached_property
    def ttft_ms(self) -> np.ndarray:
        """float32 (n, C) estimated time to first token (vision + prefill) of every configuration."""
        return (self.vision_ms + self.prefill_ms).astype(np.float32)

    @cached_property
    def tpot_ms(self) -> np.ndarray:
        """float32 (n, C) estimated decode time per output token after the first, at the
        request's own output length: ``decode_ms / (output_tokens − 1)``; 0 where one token or
        fewer is generated (no inter-token time)."""
        out = self.output_tokens.astype(np.float64)
        return np.where(out > 1, self.decode_ms / np.maximum(out - 1, 1), 0.0).astype(np.float32)

    # ------------------------------------------------------------------ sizes
    @property
    def n(self) -> int:
        return int(self.sample_ids.size)

    @property
    def n_configs(self) -> int:
        return len(self.knob_space)

    @property
    def lang_dim(self) -> int:
        return int(self.lang.shape[1])

    @property
    def token_dim(self) -> int:
        return int(self.tokens.shape[3])

    def __repr__(self) -> str:
        return (
            f"ReplayData(split={self.split!r}, n={self.n}, C={self.n_configs}, Dl={self.lang_dim}, "
            f"Dt={self.token_dim}, valid={int(self.valid.sum())}/{self.valid.size}, synthetic={self.synthetic}, "
            f"budget_range_ms=({self.budget_range_ms[0]:.1f}, {self.budget_range_ms[1]:.1f}), source={self.source!r})"
        )

    # ------------------------------------------------------------------ derived tables (computed once)
    @cached_property
    def config_arrays(self) -> dict[str, np.ndarray]:
        """``KnobSpace.config_table()`` plus ``p_index`` and ``k_index`` (int64 (C,))."""
        t = self.knob_space.config_table()
        t["p_index"] = np.searchsorted(np.array(self.knob_space.insertion_positions), t["p"]).astype(np.int64)
        t["k_index"] = np.searchsorted(np.array(self.knob_space.top_ks), t["top_k"]).astype(np.int64)
        return t

    @cached_property
    def nvec(self) -> tuple[int, int, int, int]:
        return self.knob_space.multidiscrete_nvec

    @cached_property
    def md_to_config(self) -> np.ndarray:
        """int64 (T, P, K, B): configuration index of a MultiDiscrete action, -1 where the
        active-blocks index is invalid for p."""
        a = self.config_arrays
        out = np.full(self.nvec, -1, dtype=np.int64)
        out[a["tier"], a["p_index"], a["k_index"], a["blocks_index"]] = np.arange(self.n_configs)
        return out

    @cached_property
    def config_dicts(self) -> tuple[dict, ...]:
        """``KnobConfig.as_dict()`` of every configuration (copy before handing out)."""
        return tuple(c.as_dict() for c in self.knob_space.configs)

    @cached_property
    def prefix_valid(self) -> np.ndarray:
        """bool (n, T, P, K, B): outcome exists for the MultiDiscrete action (False where the
        active-blocks index is invalid for p)."""
        md = self.md_to_config
        return np.where(md >= 0, self.valid[:, np.maximum(md, 0)], False)

    @cached_property
    def stage0_action_valid(self) -> np.ndarray:
        """bool (n, T, P, K, B): a whole 4-vector action is valid at stage 0: top-k and active-blocks
        index at index 0 and some configuration with this (tier, p) has an outcome (which implies the
        tier and p masks). At stage 1 the check is tier / p equal to the stage-0 choice and
        :attr:`prefix_valid` (which implies the top-k and active-blocks masks)."""
        pv = self.prefix_valid
        v0 = np.zeros_like(pv)
        v0[:, :, :, 0, 0] = pv.any(axis=(3, 4))
        return v0

    @cached_property
    def stage0_mask(self) -> np.ndarray:
        """bool (n, T+P+K+B): per-component masks at stage 0 (tiers / positions with any outcome;
        top-k and active-blocks index pinned to index 0)."""
        t_, p_, k_, b_ = self.nvec
        pv = self.prefix_valid
        m = np.zeros((self.n, t_ + p_ + k_ + b_), dtype=bool)
        m[:, :t_] = pv.any(axis=(2, 3, 4))
        m[:, t_:t_ + p_] = pv.any(axis=(1, 3, 4))
        m[:, t_ + p_] = True
        m[:, t_ + p_ + k_] = True
        return m

    @cached_property
    def stage1_mask(self) -> np.ndarray:
        """bool (n, T, P, T+P+K+B): per-component masks at stage 1 after choosing (tier, p):
        tier and position pinned to the choice, top-k values / active-blocks indices with any
        outcome."""
        t_, p_, k_, b_ = self.nvec
        pv = self.prefix_valid
        m = np.zeros((self.n, t_, p_, t_ + p_ + k_ + b_), dtype=bool)
        ti, pi = np.arange(t_), np.arange(p_)
        m[:, ti, :, ti] = True  # advanced indices first: shape (T, n, P)
        m[:, :, pi, t_ + pi] = True
        m[..., t_ + p_:t_ + p_ + k_] = pv.any(axis=4)
        m[..., t_ + p_ + k_:] = pv.any(axis=3)
        return m

    def eligible(self, incomplete: str) -> np.ndarray:
        """int64 sorted indices of the requests episodes draw from.

        ``"skip"``: requests with an outcome for every configuration; ``"mask"``: requests with at
        least one outcome (their masks hide what is missing).
        """
        if incomplete == "skip":
            idx = np.flatnonzero(self.valid.all(axis=1))
        elif incomplete == "mask":
            idx = np.flatnonzero(self.valid.any(axis=1))
        else:
            raise ValueError(f"incomplete={incomplete!r}; valid values: {list(INCOMPLETE_MODES)}")
        if idx.size == 0:
            raise ValueError(
                f"no request of split {self.split!r} ({self.source}) is usable with incomplete={incomplete!r}: "
                f"{int(self.valid.all(axis=1).sum())} of {self.n} requests are complete, "
                f"{int(self.valid.any(axis=1).sum())} have any outcome"
            )
        return idx.astype(np.int64)

    @cached_property
    def _id_index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.sample_ids.tolist())}

    def index_of(self, sample_id: str) -> int:
        """Row of a request id in this split; ValueError if absent."""
        try:
            return self._id_index[str(sample_id)]
        except KeyError:
            raise ValueError(f"sample_id {sample_id!r} is not in split {self.split!r} ({self.source})") from None

    @cached_property
    def sample_id_list(self) -> list[str]:
        return self.sample_ids.tolist()

    @cached_property
    def dataset_list(self) -> list[str]:
        return self.datasets.tolist()

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_arrays(
        cls,
        *,
        score: np.ndarray,
        vision_ms: np.ndarray,
        prefill_ms: np.ndarray,
        decode_ms: np.ndarray,
        lang: np.ndarray,
        tokens: np.ndarray,
        knob_space: KnobSpace | None = None,
        sample_ids: Sequence[str] | None = None,
        datasets: Sequence[str] | str = "synthetic",
        valid: np.ndarray | None = None,
        output_tokens: np.ndarray | None = None,
        total_ms: np.ndarray | None = None,
        measured_ms: np.ndarray | None = None,
        cheapest_ms: np.ndarray | None = None,
        full_ms: np.ndarray | None = None,
        budget_range_ms: Sequence[float] | None = None,
        latency_scale_ms: float | None = None,
        synthetic: bool = True,
        split: str = "train",
        nominal_output_tokens: int = 3,
        source: str = "arrays",
        cache_rows: np.ndarray | None = None,
        crops: np.ndarray | None = None,
        vision_tokens: np.ndarray | None = None,
        prompt_tokens: np.ndarray | None = None,
    ) -> "ReplayData":
        """Replay data from arrays (shapes as in the class docstring); no file involved.

        Defaults: ``sample_ids`` ``"s0".."s{n-1}"``; ``valid`` = finite ``score``;
        ``output_tokens`` = ``nominal_output_tokens`` everywhere; ``total_ms`` = the sum of the
        components; ``measured_ms`` NaN; ``cheapest_ms`` / ``full_ms`` = ``total_ms`` at the
        cheapest / full configuration (an approximation of the nominal-length latency that
        :meth:`from_cache` computes exactly); ``budget_range_ms`` = (median cheapest, median
        full); ``latency_scale_ms`` = median ``full_ms``.
        """
        ks = knob_space or KnobSpace()
        score = np.asarray(score, dtype=np.float32)
        if score.ndim != 2:
            raise ValueError(f"score must be (n, C), got shape {score.shape}")
        n = score.shape[0]
        ids = np.array([f"s{i}" for i in range(n)]) if sample_ids is None else np.asarray(sample_ids).astype(str)
        ds = np.full(n, datasets) if isinstance(datasets, str) else np.asarray(datasets).astype(str)
        valid = np.isfinite(score) if valid is None else np.asarray(valid, dtype=bool)
        out = np.full(score.shape, nominal_output_tokens, np.int32) if output_tokens is None else np.asarray(output_tokens)
        vision_ms, prefill_ms, decode_ms = (np.asarray(x, dtype=np.float32) for x in (vision_ms, prefill_ms, decode_ms))
        total = vision_ms + prefill_ms + decode_ms if total_ms is None else np.asarray(total_ms, dtype=np.float32)
        meas = np.full(score.shape, np.nan, np.float32) if measured_ms is None else measured_ms
        if total.shape != (n, len(ks)):
            raise ValueError(f"latency arrays must be (n, C) = ({n}, {len(ks)}), got {total.shape}")
        ci, fi = ks.index(ks.cheapest_config), ks.index(ks.full_config)
        cheap = total[:, ci].astype(np.float64) if cheapest_ms is None else np.asarray(cheapest_ms, np.float64)
        full = total[:, fi].astype(np.float64) if full_ms is None else np.asarray(full_ms, np.float64)
        if budget_range_ms is None:
            budget_range_ms = (float(np.median(cheap)), float(np.median(full)))
        scale = float(np.median(full)) if latency_scale_ms is None else float(latency_scale_ms)
        return cls(
            knob_space=ks, sample_ids=ids, datasets=ds, score=score, valid=valid, output_tokens=out,
            vision_ms=vision_ms, prefill_ms=prefill_ms, decode_ms=decode_ms, total_ms=total, measured_ms=meas,
            lang=lang, tokens=tokens, cheapest_ms=cheap, full_ms=full, budget_range_ms=tuple(budget_range_ms),
            latency_scale_ms=scale, synthetic=synthetic, split=split, nominal_output_tokens=nominal_output_tokens,
            source=source, cache_rows=cache_rows, crops=crops, vision_tokens=vision_tokens, prompt_tokens=prompt_tokens,
        )

    @classmethod
    def random(
        cls,
        n: int = 64,
        *,
        lang_dim: int = 16,
        token_dim: int = 16,
        seed: int = 0,
        knob_space: KnobSpace | None = None,
        missing_frac: float = 0.0,
        measured_frac: float = 0.1,
        datasets: Sequence[str] = ("synthetic-a", "synthetic-b"),
        split: str = "train",
        nominal_output_tokens: int = 3,
    ) -> "ReplayData":
        """Small random replay data for tests and benchmarks (``synthetic=True``; no file).

        A toy generative model, not :mod:`cache.synthetic`: latency components grow with the
        crops of the tier and with expert work ``8·p + top_k·(blocks − p)``; scores rise with
        complexity for hard requests; output lengths 1-12 tokens; ``missing_frac`` of the
        (request, configuration) outcomes are dropped at random, ``measured_frac`` measured.
        """
        ks = knob_space or KnobSpace()
        rng = np.random.default_rng(seed)
        c = len(ks)
        a = ks.config_table()
        t_, p_ = len(ks.tiers), len(ks.insertion_positions)
        slots = (ks.max_top_k * a["p"] + a["top_k"] * (a["blocks"] - a["p"])).astype(np.float64)
        work = 0.35 + 0.65 * slots / (ks.max_top_k * ks.num_blocks)
        need = rng.integers(2, max(ks.crops) + 2, size=n)
        crops = np.minimum(np.array(ks.crops)[None, a["tier"]], need[:, None]).astype(np.float64)  # (n, C)
        prompt = rng.integers(16, 256, size=n).astype(np.float64)
        vision = 3.0 + 0.8 * crops
        prefill = (2.0 + 0.0025 * (144.0 * crops + prompt[:, None])) * work[None]
        per_tok = 2.7 * (0.4 + 0.6 * work[None]) * np.ones((n, 1))
        base_len = rng.integers(1, 10, size=n)
        out = (base_len[:, None] + rng.integers(0, 3, size=(n, c))).astype(np.int32)
        decode = per_tok * np.maximum(out - 1, 0)
        ci, fi = ks.index(ks.cheapest_config), ks.index(ks.full_config)
        nominal = per_tok[:, 0] * max(nominal_output_tokens - 1, 0)
        cheap = vision[:, ci] + prefill[:, ci] + nominal
        full = vision[:, fi] + prefill[:, fi] + nominal
        ability = rng.normal(size=n)
        difficulty = rng.uniform(0.0, 3.0, size=n)
        comp = config_complexity(ks).astype(np.float64)
        logit = ability[:, None] + difficulty[:, None] * (comp[None] - 0.6) + 0.3 * rng.normal(size=(n, c))
        score = np.round(3.0 / (1.0 + np.exp(-logit))) / 3.0
        valid = rng.random((n, c)) >= missing_frac
        score = np.where(valid, score, np.nan)
        total = vision + prefill + decode
        measured = np.where(rng.random((n, c)) < measured_frac, total * rng.uniform(0.9, 1.1, size=(n, c)), np.nan)
        lang = rng.normal(size=(n, lang_dim)).astype(np.float32)
        lang[:, 0] = ability
        tokens = rng.normal(size=(n, t_, p_, token_dim)).astype(np.float32)
        return cls.from_arrays(
            score=score, vision_ms=vision, prefill_ms=prefill, decode_ms=decode, total_ms=total, lang=lang,
            tokens=tokens, knob_space=ks, datasets=np.array(datasets)[rng.integers(0, len(datasets), size=n)],
            valid=valid, output_tokens=out, measured_ms=measured, cheapest_ms=cheap, full_ms=full,
            synthetic=True, split=split, nominal_output_tokens=nominal_output_tokens, source=f"random(seed={seed})",
            crops=np.minimum(np.array(ks.crops)[None, :], need[:, None]),
            vision_tokens=144 * np.minimum(np.array(ks.crops)[None, :], need[:, None]), prompt_tokens=prompt.astype(np.int64),
        )

    @classmethod
    def from_cache(
        cls,
        cache: "str | Path | OutcomeCache",
        split: str = "train",
        estimator: "LatencyEstimator | None" = None,
        nominal_output_tokens: int = 3,
    ) -> "ReplayData":
        """Load one split of an outcome cache.

        Args:
            cache: path of an HDF5 outcome cache or an open :class:`cache.reader.OutcomeCache`
                (left open; a path is opened and closed here).
            split: ``"train"``, ``"val"`` or ``"test"``.
            estimator: latency estimator; default: the cache's stored ``estimator`` attribute
                (``LatencyEstimator.from_dict``), else ``LatencyEstimator.default()``.
            nominal_output_tokens: output length of the observation's cheapest / full latencies.

        The budget range is the cache's ``budget_range_ms`` attribute when the estimator is the
        cache's own (it was derived with it); with an explicitly given estimator, or when the
        cache has none, it is (median cheapest, median full) over the split by the estimator in
        use, so that budgets and latencies stay in the same units of one latency profile.
        An outcome counts as present where the reader's status is OK (its score is finite).
        """
        from cache.reader import OutcomeCache  # lazy: h5py
        from cache.schema import STATUS_OK
        from model_runtime.latency_estimator import LatencyEstimator

        own = not isinstance(cache, OutcomeCache)
        oc = OutcomeCache(cache) if own else cache
        try:
            rows = np.asarray(oc.split_indices(split), dtype=np.int64)
            if rows.size == 0:
                raise ValueError(f"split {split!r} of {oc.path} has no requests")
            ks: KnobSpace = oc.knob_space
            explicit = estimator is not None
            if estimator is None:
                est_json = getattr(oc, "estimator_json", None)
                estimator = LatencyEstimator.from_dict(est_json) if est_json else LatencyEstimator.default()
            a = ks.config_table()
            score = np.asarray(oc.score[rows], dtype=np.float32)
            status = np.asarray(oc.status[rows])
            valid = (status == STATUS_OK) & np.isfinite(score)
            out = np.asarray(oc.output_tokens[rows], dtype=np.int32)
            crops_t = np.asarray(oc.crops[rows])
            vtok_t = np.asarray(oc.vision_tokens[rows])
            crops = crops_t[:, a["tier"]]
            vtok = vtok_t[:, a["tier"]]
            prompt = np.asarray(oc.prompt_tokens[rows])[:, None]
            # unknown output lengths only occur where there is no outcome; the nominal length
            # keeps their (unused) latency finite
            out_for_est = np.where(out >= 0, out, nominal_output_tokens)
            pred = estimator.predict(
                crops=crops, vision_tokens=vtok, prompt_tokens=prompt,
                p=a["p"][None], top_k=a["top_k"][None], blocks=a["blocks"][None], output_tokens=out_for_est,
            )
            ci, fi = ks.index(ks.cheapest_config), ks.index(ks.full_config)
            ends = estimator.predict(
                crops=crops[:, [ci, fi]], vision_tokens=vtok[:, [ci, fi]], prompt_tokens=prompt,
                p=a["p"][None, [ci, fi]], top_k=a["top_k"][None, [ci, fi]], blocks=a["blocks"][None, [ci, fi]],
                output_tokens=nominal_output_tokens,
            )
            cheap, full = (np.asarray(ends["total_ms"], np.float64)[:, j] for j in (0, 1))
            bucket = None if explicit else oc.budget_range_ms
            budget_range = tuple(bucket) if bucket is not None else (float(np.median(cheap)), float(np.median(full)))
            names = np.asarray(list(oc.datasets)).astype(str)
            meas = np.asarray(oc.measured_ms[rows], dtype=np.float32).sum(axis=-1)  # NaN if any phase is unknown
            shape = score.shape
            return cls.from_arrays(
                score=np.where(valid, score, np.nan), valid=valid, output_tokens=out,
                vision_ms=np.broadcast_to(pred["vision_ms"], shape), prefill_ms=np.broadcast_to(pred["prefill_ms"], shape),
                decode_ms=np.broadcast_to(pred["decode_ms"], shape), total_ms=np.broadcast_to(pred["total_ms"], shape),
                measured_ms=meas, lang=np.asarray(oc.lang_feature[rows], np.float32),
                tokens=np.asarray(oc.latency_tokens(rows), np.float32), knob_space=ks,
                sample_ids=np.asarray(oc.ids[rows]).astype(str), datasets=names[np.asarray(oc.dataset[rows], np.int64)],
                cheapest_ms=cheap, full_ms=full, budget_range_ms=budget_range, synthetic=bool(oc.synthetic),
                split=split, nominal_output_tokens=nominal_output_tokens, source=str(oc.path), cache_rows=rows,
                crops=crops_t, vision_tokens=vtok_t, prompt_tokens=prompt[:, 0],
            )
        finally:
            if own:
                oc.close()


def as_replay_data(
    cache: "str | Path | OutcomeCache | None",
    data: ReplayData | None,
    split: str,
    estimator: "LatencyEstimator | None",
    nominal_output_tokens: int,
) -> ReplayData:
    """The envs' data argument resolution: exactly one of ``cache`` / ``data``."""
    if data is not None and cache is not None:
        raise ValueError("pass either cache= or data=, not both")
    if data is not None:
        if not isinstance(data, ReplayData):
            raise ValueError(f"data must be a ReplayData, got {type(data).__name__}")
        return data
    if cache is None:
        raise ValueError(
            "no replay data: pass cache= (an outcome-cache path, e.g. outputs/default_cache.h5 from "
            "cache.synthetic.build_default_cache) or data=ReplayData(...)"
        )
    return ReplayData.from_cache(cache, split=split, estimator=estimator, nominal_output_tokens=nominal_output_tokens)


def pinned_request(data: ReplayData, eligible_mask: np.ndarray, options: Mapping[str, Any]) -> int | None:
    """Request pinned by ``reset(options=)`` (``sample_index`` or ``sample_id``), validated; None if unpinned."""
    has_i, has_s = options.get("sample_index") is not None, options.get("sample_id") is not None
    if has_i and has_s:
        raise ValueError("options: give sample_index or sample_id, not both")
    if not (has_i or has_s):
        return None
    if has_s:
        i = data.index_of(options["sample_id"])
    else:
        raw = options["sample_index"]
        if isinstance(raw, (bool, np.bool_)) or not isinstance(raw, (int, np.integer)):
            raise ValueError(f"options sample_index {raw!r} must be an int")
        i = int(raw)
        if not 0 <= i < data.n:
            raise ValueError(f"options sample_index {i} out of range [0, {data.n}) of split {data.split!r}")
    if not eligible_mask[i]:
        raise ValueError(
            f"request {i} ({data.sample_id_list[i]!r}) is not eligible: it has outcomes for "
            f"{int(data.valid[i].sum())} of {data.n_configs} configurations (see incomplete=)"
        )
    return i
