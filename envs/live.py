"""Live mode of ``MolmoeKnobs-v0`` / ``MolmoeKnobsFlat-v0``: outcomes from running the model.

::

    import gymnasium as gym, envs
    from model_runtime.molmoe.runtime import MolmoeRuntime
    rt = MolmoeRuntime.from_checkpoint("ckpt/", device="cuda", dtype=torch.bfloat16)
    env = gym.make("MolmoeKnobs-v0", mode="live", runtime=rt, requests="requests.jsonl")

The scalar envs keep their replay contract (observations, masks, rewards, ``info`` keys); only
where the numbers come from changes (docs/DESIGN.md §4):

- ``lang`` (float32 (d_model,)): mean token embedding of the prompt text
  (``MolmoeRuntime.language_feature``, the seeds' LanguageFeatureExtractor), computed on first
  use and memoised per request.
- ``token`` (float32 (d_model,)) at (tier, p): the *staged forward*: the request preprocessed
  with the tier's crops, vision tower + connector, embeddings, blocks ``0..p-1`` at the model's
  top-k; the last prompt token's hidden state. Memoised per (request, tier, p) (LRU of
  ``LiveOptions.token_memo_size``), and the forward's state (hidden states and the KV cache of
  blocks ``0..p-1``) is kept (LRU of ``LiveOptions.prefix_states``), so that stage 2 continues
  from it instead of recomputing the prefix.
- Outcome of a configuration (stage 2 of the two-stage env; the single step of the flat env,
  which runs the staged forward itself): ``MolmoeRuntime.continue_generation`` runs blocks
  ``p..15`` of the configuration's plan (``KnobSpace.plan``: top-k, skipped blocks) from the
  prefix state (``MolmoeRuntime.prefix_state``), then greedy decoding (``runtime.max_new_tokens``,
  EOS honoured, KV cache only for the blocks that run; through the runtime's decoder when
  ``runtime.fast``), the computation of ``MolmoeRuntime.run`` at batch size 1. The prediction is scored with the
  request's metric and stored like the live cache builder stores it (CIDEr / 10,
  ``cache.live_builder.cache_score``).
- Latency in the reward (``info["latency_ms"]`` and its components): the latency estimator's
  prediction for the configuration, the request's crops / vision tokens at the tier, its prompt
  tokens (text + BOS) and the *actual* output length, as in replay. ``info["measured_ms"]``:
  the measured model time of this request at this configuration (vision + prefix + rest of the
  prefill + decode; ``PhaseTimer``: CUDA events on GPU, ``perf_counter`` on CPU;
  preprocessing not timed, as in the runtime); when the prefix state was reused, its vision and
  prefix times are those measured when it ran.
- Observation's cheapest / full latencies: the estimator at ``nominal_output_tokens``, with the
  request's vision tokens per tier from the Molmo preprocessing arithmetic on the image size
  (``MolmoeRuntime.vision_token_counts``, no model run) and its prompt tokens. Default budget
  range: (median cheapest, median full) over the requests.
- ``request`` (the request features, :data:`envs.replay_data.REQUEST_FEATURE_DOC`): the same
  crops / vision tokens per tier and prompt tokens, and the estimator's TTFT per tier at the
  cheapest / full configuration's LM knobs; computed up front, no model run.

Outcome values are rounded to float32 like the outcome cache and :class:`ReplayData` store
them, so a live env and a replay env on a cache built live from the same model and requests
give bit-identical rewards.

**Outcome memo** (``LiveOptions.memo_outcomes``, default True): greedy decoding is
deterministic, so the outcome of a (request, configuration) is computed once and then replayed
(its ``measured_ms`` is the measurement of that run). This keeps seeded trajectories —
``info`` included — reproducible (gymnasium's step-determinism check compares infos) and avoids
rerunning the model for repeated pairs. ``memo_outcomes=False`` runs the model at every step;
``info["measured_ms"]`` then differs run to run.

Every request is usable (``valid`` all True): a request whose image cannot be read fails when
the env is built. Splits do not apply (all requests; ``ReplayData.split`` is ``"all"``).

torch is imported only inside the functions that run the model, so ``import envs`` stays
numpy / h5py / gymnasium only; :mod:`envs.env_settings` imports this module only for
``mode="live"``.
"""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from envs.knob_space import KnobSpace
from envs.replay_data import Outcome, ReplayData, config_complexity, request_lm_configs

if TYPE_CHECKING:
    from model_runtime.datasets import Request
    from model_runtime.latency_estimator import LatencyEstimator
    from model_runtime.molmoe.runtime import MolmoeRuntime

@dataclass(frozen=True)
class LiveOptions:
    """Memoisation of live mode (see the module docstring).

    Attributes:
        memo_outcomes: compute each (request, configuration) outcome once and replay it.
        token_memo_size: latency tokens kept (LRU over (request, tier, p)); 0 keeps none.
        prefix_states: staged-forward states kept for stage 2 (LRU over (request, tier, p)); 1
            is enough for the two-stage env's stage 1 → stage 2 handover; more lets repeated
            (request, tier, p) skip the prefix. Each holds the prompt's hidden states and the KV
            cache of blocks ``0..p-1`` on the model's device.
        vision_tokens: the image tokens the latency estimator is fed, as the cache builder's
            ``--vision-tokens``: ``"model"`` (the model's own), ``"molmoe-1b"`` (MolmoE-1B's for
            the image at the scale its crop geometry is the model's, e.g. 2× for
            ``MolmoeConfig.small()``: the same crop grid, MolmoE-1B's token count) or ``"auto"``
            (default: MolmoE-1B's when the model's geometry is a scaled-down copy, else the
            model's), so that a live env and a cache built from the same checkpoint estimate the
            same latencies.
    """

    memo_outcomes: bool = True
    token_memo_size: int = 4096
    prefix_states: int = 4
    vision_tokens: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.memo_outcomes, bool):
            raise ValueError(f"live option memo_outcomes must be a bool, got {self.memo_outcomes!r}")
        for name in ("token_memo_size", "prefix_states"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"live option {name} must be an int >= 0, got {v!r}")
        if self.vision_tokens not in ("auto", "model", "molmoe-1b"):
            raise ValueError(f"live option vision_tokens must be 'auto', 'model' or 'molmoe-1b', got {self.vision_tokens!r}")
        if self.prefix_states < 1:
            raise ValueError("live option prefix_states must be >= 1 (stage 2 continues from the stage-1 state)")

    @classmethod
    def make(cls, options: "LiveOptions | Mapping[str, Any] | None") -> "LiveOptions":
        if options is None:
            return cls()
        if isinstance(options, cls):
            return options
        if isinstance(options, Mapping):
            unknown = sorted(set(options) - {f.name for f in dataclasses.fields(cls)})
            if unknown:
                raise ValueError(f"unknown live option(s) {unknown}; valid: {[f.name for f in dataclasses.fields(cls)]}")
            return cls(**dict(options))
        raise ValueError(f"live_options must be a LiveOptions or a dict, got {type(options).__name__}")


@dataclass(frozen=True)
class LiveResult:
    """Everything one live outcome produced (``LiveOutcomes.last_result``; the env's ``info``
    carries the :meth:`as_outcome` part).

    Attributes:
        sample_index, config_index: the request row and the KnobSpace configuration index.
        prediction: generated text (EOS and special tokens removed); token_ids: generated ids.
        output_tokens: generated tokens incl. EOS when one was produced.
        score: the request's metric as the cache stores it (CIDEr / 10), float32-rounded.
        vision_ms, prefill_ms, decode_ms, total_ms: the estimator's latency (float32-rounded, ms).
        measured_vision_ms, measured_prefill_ms, measured_decode_ms: measured model time (ms);
            prefill = embeddings + blocks 0..p-1 + the rest + the first token's logits.
        prefix_reused: the staged-forward state came from an earlier call (no prefix forward).
    """

    sample_index: int
    config_index: int
    prediction: str
    token_ids: tuple[int, ...]
    output_tokens: int
    score: float
    vision_ms: float
    prefill_ms: float
    decode_ms: float
    total_ms: float
    measured_vision_ms: float
    measured_prefill_ms: float
    measured_decode_ms: float
    prefix_reused: bool

    @property
    def measured_ms(self) -> float:
        """Measured total (vision + prefill + decode), float32-rounded like the cache's sum."""
        return float(np.float32(self.measured_vision_ms) + np.float32(self.measured_prefill_ms)
                     + np.float32(self.measured_decode_ms))

    def as_outcome(self) -> Outcome:
        return Outcome(self.score, self.total_ms, self.vision_ms, self.prefill_ms, self.decode_ms, self.measured_ms,
                       self.output_tokens)


@dataclass
class _Prefix:
    """A staged forward stopped after block p-1 (batch of one request)."""

    state: Any  # model_runtime.molmoe.language_model.LMState
    vision_ms: float
    prefill_ms: float


class _LRU(OrderedDict):
    """OrderedDict with a size bound; ``get`` refreshes, ``put`` evicts the oldest."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = int(size)

    def get(self, key: Any, default: Any = None) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        return default

    def put(self, key: Any, value: Any) -> None:
        if self.size <= 0:
            return
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


def load_live_requests(requests: "str | os.PathLike | Sequence[Request | Mapping]") -> list["Request"]:
    """Requests of live mode: a JSONL path (``model_runtime.datasets.load_requests``) or a list of
    ``Request`` objects / their JSON dicts; ValueError if empty, of a wrong type or ids repeat."""
    from model_runtime.datasets import Request, load_requests, request_from_json

    if requests is None:
        raise ValueError("mode='live' needs requests= (a request JSONL path or a list of model_runtime.datasets.Request)")
    if isinstance(requests, (str, os.PathLike)):
        out = load_requests(Path(requests))
    elif isinstance(requests, Sequence):
        out = []
        for i, r in enumerate(requests):
            if isinstance(r, Request):
                out.append(r)
            elif isinstance(r, Mapping):
                out.append(request_from_json(dict(r)))
            else:
                raise ValueError(f"requests[{i}] is a {type(r).__name__}, expected a Request or its JSON dict")
    else:
        raise ValueError(f"requests must be a JSONL path or a list of Request, got {type(requests).__name__}")
    if not out:
        raise ValueError("requests is empty: live mode needs at least one request")
    seen: set[str] = set()
    for r in out:
        if r.id in seen:
            raise ValueError(f"request id {r.id!r} appears more than once")
        seen.add(r.id)
    return out


class LiveOutcomes:
    """The live outcome source: language features, latency tokens and outcomes of requests
    under configurations, computed with a :class:`MolmoeRuntime` (see the module docstring).

    Args:
        runtime: the model runtime; its ``knob_space`` is the env's.
        requests: the requests (row ``s`` = ``requests[s]``).
        estimator: latency estimator (default ``LatencyEstimator.default()``).
        nominal_output_tokens: output length of the cheapest / full latencies.
        options: memoisation (:class:`LiveOptions`).

    Per-request arrays (computed here, no model run): ``crops`` / ``vision_tokens`` int64 (n, T)
    per tier, ``prompt_tokens`` int64 (n,) (text + BOS), ``cheapest_ms`` / ``full_ms`` float64
    (n,). ``counts`` tallies the work done (``prefix_forwards``, ``continuations``,
    ``outcome_memo_hits``, ``token_memo_hits``, ``language_features``).

    Raises:
        ValueError: a runtime of the wrong type, a request whose image or prompt cannot be read
            (naming the request).
    """

    def __init__(
        self,
        runtime: "MolmoeRuntime",
        requests: Sequence["Request"],
        *,
        estimator: "LatencyEstimator | None" = None,
        nominal_output_tokens: int = 3,
        options: LiveOptions | None = None,
    ) -> None:
        from model_runtime.latency_estimator import LatencyEstimator
        from model_runtime.molmoe.runtime import MolmoeRuntime

        if not isinstance(runtime, MolmoeRuntime):
            raise ValueError(
                f"runtime must be a model_runtime.molmoe.runtime.MolmoeRuntime, got {type(runtime).__name__}"
            )
        # its latency would be the unpruned prompt's: the knobs are the env's only cost
        runtime.require_unpruned("live mode", "vision-token pruning is the pipeline's token_pruning experiment")
        if isinstance(nominal_output_tokens, bool) or int(nominal_output_tokens) < 1:
            raise ValueError(f"nominal_output_tokens must be >= 1, got {nominal_output_tokens!r}")
        self.runtime = runtime
        self.knob_space: KnobSpace = runtime.knob_space
        self.requests = list(requests)
        self.estimator = LatencyEstimator.default() if estimator is None else estimator
        self.nominal_output_tokens = int(nominal_output_tokens)
        self.options = LiveOptions.make(options)
        ks = self.knob_space
        scale = runtime.model.config.molmoe_1b_image_scale
        if self.options.vision_tokens == "molmoe-1b" and scale is None:
            raise ValueError("vision_tokens='molmoe-1b': the model's crop geometry is not MolmoE-1B's scaled down")
        #: > 1: the estimator gets MolmoE-1B's image tokens for the image at this scale (as the cache builder)
        self.molmoe_scale = scale if self.options.vision_tokens != "model" and scale not in (None, 1.0) else None
        n, t_ = len(self.requests), len(ks.tiers)
        self.crops = np.zeros((n, t_), np.int64)
        self.vision_tokens = np.zeros((n, t_), np.int64)  # what the latency estimator is fed
        self.model_vision_tokens = np.zeros((n, t_), np.int64)  # what the model runs
        self.prompt_tokens = np.zeros(n, np.int64)
        for s, r in enumerate(self.requests):
            try:
                counts = runtime.vision_token_counts(r)
                ref = runtime.vision_token_counts(r, molmoe_scale=self.molmoe_scale) if self.molmoe_scale else counts
                self.prompt_tokens[s] = len(runtime.tokenizer.encode(runtime.prompt_text(r))) + 1  # + BOS
            except Exception as exc:  # PIL raises many types for unreadable images
                raise ValueError(f"request {r.id!r} cannot run live: {type(exc).__name__}: {exc}") from exc
            for t, tier in enumerate(ks.tiers):
                self.crops[s, t], self.model_vision_tokens[s, t] = counts[tier]
                self.vision_tokens[s, t] = ref[tier][1]
        self._table = ks.config_table()
        # cheapest / full at the nominal length, computed as ReplayData.from_cache does
        a = self._table
        ci, fi = ks.index(ks.cheapest_config), ks.index(ks.full_config)
        tiers = a["tier"][[ci, fi]]
        ends = self.estimator.predict(
            crops=self.crops[:, tiers], vision_tokens=self.vision_tokens[:, tiers], prompt_tokens=self.prompt_tokens[:, None],
            p=a["p"][None, [ci, fi]], top_k=a["top_k"][None, [ci, fi]], blocks=a["blocks"][None, [ci, fi]],
            output_tokens=self.nominal_output_tokens,
        )
        total = np.asarray(ends["total_ms"], np.float64)
        self.cheapest_ms, self.full_ms = total[:, 0].copy(), total[:, 1].copy()
        # TTFT (vision + prefill) per tier at the cheapest / full configuration's LM knobs
        lm = request_lm_configs(ks)  # (2, T)
        tt = self.estimator.predict(
            crops=self.crops[:, None, :], vision_tokens=self.vision_tokens[:, None, :],
            prompt_tokens=self.prompt_tokens[:, None, None], p=a["p"][lm][None], top_k=a["top_k"][lm][None],
            blocks=a["blocks"][lm][None], output_tokens=self.nominal_output_tokens,
        )
        self.ttft_tier_ms = np.asarray(tt["vision_ms"] + tt["prefill_ms"], np.float64)  # (n, 2, T)
        self._lang: dict[int, np.ndarray] = {}
        self._tokens = _LRU(self.options.token_memo_size)
        self._prefixes = _LRU(self.options.prefix_states)
        self._outcomes: dict[tuple[int, int], LiveResult] = {}
        self.last_result: LiveResult | None = None
        self.counts: dict[str, int] = dict.fromkeys(
            ("language_features", "prefix_forwards", "token_memo_hits", "continuations", "outcome_memo_hits"), 0
        )

    @property
    def n(self) -> int:
        return len(self.requests)

    @property
    def d_model(self) -> int:
        return int(self.runtime.model.config.d_model)

    # ------------------------------------------------------------------ observations
    def language_feature(self, s: int) -> np.ndarray:
        """float32 (d_model,) mean prompt-token embedding of request ``s`` (memoised, read-only)."""
        f = self._lang.get(s)
        if f is None:
            f = np.array(self.runtime.language_feature(self.requests[s]), dtype=np.float32, copy=True)
            f.flags.writeable = False
            self._lang[s] = f
            self.counts["language_features"] += 1
        return f

    def latency_token(self, s: int, t: int, p_index: int) -> np.ndarray:
        """float32 (d_model,) latency token of request ``s`` at tier index ``t`` and insertion
        position index ``p_index`` (memoised, read-only); runs the staged forward when needed
        and keeps its state for :meth:`outcome`."""
        key = (s, t, p_index)
        tok = self._tokens.get(key)
        if tok is not None:
            self.counts["token_memo_hits"] += 1
            return tok
        return self._token_of(key, self._prefix(key))

    def _token_of(self, key: tuple[int, int, int], pre: _Prefix) -> np.ndarray:
        # a copy: on CPU .numpy() would be a view that keeps the whole (1, S, D) hidden state alive
        tok = np.array(pre.state.hidden[0, -1].float().cpu().numpy(), dtype=np.float32, copy=True)
        tok.flags.writeable = False
        self._tokens.put(key, tok)
        return tok

    def _prefix(self, key: tuple[int, int, int]) -> _Prefix:
        """Run the staged forward of (request, tier, p) up to block p-1 and keep its state."""
        from model_runtime.molmoe.timing import PhaseTimer

        s, t, pi = key
        rt, ks = self.runtime, self.knob_space
        req = self.requests[s]
        tier, p = ks.tiers[t], ks.insertion_positions[pi]
        prompt = rt.prepare(req, ks.crops_for(tier))
        if prompt.vision_tokens != self.model_vision_tokens[s, t]:
            raise RuntimeError(
                f"request {req.id!r} at tier {tier!r}: preprocessing gave {prompt.vision_tokens} vision tokens, "
                f"the image-size arithmetic {int(self.model_vision_tokens[s, t])} (runtime inconsistency)"
            )
        timer = PhaseTimer(rt.model.device)
        state = rt.prefix_state(prompt, p, timer=timer)
        pre = _Prefix(state=state, vision_ms=timer.get("vision"), prefill_ms=timer.get("prefill"))
        self._prefixes.put(key, pre)
        self.counts["prefix_forwards"] += 1
        return pre

    # ------------------------------------------------------------------ outcomes
    def outcome(self, s: int, c: int) -> Outcome:
        """The :class:`~envs.replay_data.Outcome` of request ``s`` at configuration ``c`` (see
        :meth:`result`)."""
        return self.result(s, c).as_outcome()

    def result(self, s: int, c: int) -> LiveResult:
        """Run (or, with ``memo_outcomes``, replay) request ``s`` at configuration index ``c``."""
        memo = self.options.memo_outcomes
        if memo:
            hit = self._outcomes.get((s, c))
            if hit is not None:
                self.counts["outcome_memo_hits"] += 1
                self.last_result = hit
                return hit
        res = self._run(s, c)
        if memo:
            self._outcomes[(s, c)] = res
        self.last_result = res
        return res

    def _run(self, s: int, c: int) -> LiveResult:
        from cache.live_builder import cache_score  # the cache's score scale (CIDEr / 10)
        from model_runtime.molmoe.timing import PhaseTimer

        rt, ks = self.runtime, self.knob_space
        cfg = ks.config(int(c))
        t, pi = ks.tiers.index(cfg.tier), ks.insertion_positions.index(cfg.p)
        key = (s, t, pi)
        pre = self._prefixes.get(key)
        reused = pre is not None
        if pre is None:
            pre = self._prefix(key)
            if self._tokens.get(key) is None:
                self._token_of(key, pre)
        # the runtime continues a copy of the kept state's cache (through its decoder when fast)
        timer = PhaseTimer(rt.model.device)
        gen = rt.continue_generation(pre.state, cfg, timer=timer)
        self.counts["continuations"] += 1
        ids = gen.tokens[0]
        prediction = rt.tokenizer.decode(ids[:-1] if gen.ended_with_eos[0] else ids).strip()
        req = self.requests[s]
        score = float(np.float32(cache_score(req.metric, float(req.score(prediction)))))
        a = self._table
        lat = self.estimator.predict(
            crops=self.crops[s, t], vision_tokens=self.vision_tokens[s, t], prompt_tokens=self.prompt_tokens[s],
            p=a["p"][c], top_k=a["top_k"][c], blocks=a["blocks"][c], output_tokens=len(ids),
        )
        f32 = lambda k: float(np.float32(lat[k]))  # noqa: E731  (ReplayData stores float32)
        return LiveResult(
            sample_index=s, config_index=int(c), prediction=prediction, token_ids=tuple(ids), output_tokens=len(ids),
            score=score, vision_ms=f32("vision_ms"), prefill_ms=f32("prefill_ms"), decode_ms=f32("decode_ms"),
            total_ms=f32("total_ms"), measured_vision_ms=pre.vision_ms,
            measured_prefill_ms=pre.prefill_ms + timer.get("prefill"), measured_decode_ms=timer.get("decode"),
            prefix_reused=reused,
        )


class LazyRows:
    """Read-only array-like whose entries are computed on first access: ``x[i]`` (1 index) or
    ``x[s, t, p]`` (3 indices) with Python / numpy ints, each returning a float32 row.

    Live mode's ``lang`` (shape (n, Dl)) and ``tokens`` (shape (n, T, P, Dt)) are these: the
    envs index single rows only, and materialising every latency token would run every staged
    forward up front. Any other use (slicing, ``np.asarray``) raises a TypeError.
    """

    def __init__(self, shape: tuple[int, ...], n_index: int, fn: Callable[..., np.ndarray], what: str) -> None:
        self.shape = tuple(int(x) for x in shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(np.float32)
        self._n_index = n_index
        self._fn = fn
        self._what = what

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        idx = key if isinstance(key, tuple) else (key,)
        if len(idx) != self._n_index or not all(
            isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)) for i in idx
        ):
            raise TypeError(
                f"live {self._what} are computed on demand: index exactly {self._n_index} integer(s), got {key!r}"
            )
        out = []
        for i, n in zip(idx, self.shape):
            i = int(i)
            if not -n <= i < n:
                raise IndexError(f"index {i} out of range for live {self._what} of shape {self.shape}")
            out.append(i % n)
        return self._fn(*out)

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError(f"live {self._what} are computed on demand and cannot be converted to an array; index rows")

    def __repr__(self) -> str:
        return f"LazyRows({self._what}, shape={self.shape})"


class LiveData(ReplayData):
    """The :class:`ReplayData` view the scalar envs read in live mode (built by :meth:`build`).

    It holds what an env needs before any outcome: request ids and datasets, ``valid`` (all
    True), ``cheapest_ms`` / ``full_ms``, the budget range, the latency scale, and ``lang`` /
    ``tokens`` as :class:`LazyRows` backed by :attr:`live` (a :class:`LiveOutcomes`). There are
    no outcome tables (``score``, ``total_ms``, ...): the env asks :attr:`live` per step.
    """

    live: LiveOutcomes

    def __init__(self, live: LiveOutcomes) -> None:
        # ReplayData's dataclass __init__ would materialise and validate every table; live mode
        # fills only what the envs read before an outcome (outcomes come from `live`)
        ks = live.knob_space
        n, c = live.n, len(ks)
        t_, p_ = len(ks.tiers), len(ks.insertion_positions)
        self.live = live
        self.knob_space = ks
        self.sample_ids = np.array([r.id for r in live.requests]).astype(str)
        self.datasets = np.array([r.dataset for r in live.requests]).astype(str)
        self.valid = np.ones((n, c), dtype=bool)
        d = live.d_model
        self.lang = LazyRows((n, d), 1, live.language_feature, "language features")
        self.tokens = LazyRows((n, t_, p_, d), 3, live.latency_token, "latency tokens")
        self.cheapest_ms = live.cheapest_ms
        self.full_ms = live.full_ms
        self.crops, self.vision_tokens, self.prompt_tokens = live.crops, live.vision_tokens, live.prompt_tokens
        self.ttft_tier_ms = live.ttft_tier_ms
        if not (np.all(np.isfinite(self.cheapest_ms)) and np.all(self.cheapest_ms > 0)
                and np.all(np.isfinite(self.full_ms)) and np.all(self.full_ms > 0)):
            raise ValueError("the estimator's cheapest / full latencies must be finite and > 0 for every request")
        # the default budget range, as ReplayData.from_cache derives it with an explicit estimator
        self.budget_range_ms = (float(np.median(self.cheapest_ms)), float(np.median(self.full_ms)))
        self.latency_scale_ms = float(np.median(self.full_ms))
        self.synthetic = False
        self.split = "all"
        self.nominal_output_tokens = live.nominal_output_tokens
        self.source = f"live:{type(live.runtime).__name__}"
        self.cache_rows = np.arange(n, dtype=np.int64)
        self.complexity = config_complexity(ks)
        self._set_request_features()

    def __getattr__(self, name: str) -> Any:
        # only reached for attributes that do not exist: the replay outcome tables
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"LiveData has no {name!r}: live outcomes are computed per step by LiveData.live "
            "(LiveOutcomes.outcome / .result), there is no precomputed table"
        )

    def __repr__(self) -> str:
        return (
            f"LiveData(n={self.n}, C={self.n_configs}, d_model={self.live.d_model}, "
            f"budget_range_ms=({self.budget_range_ms[0]:.1f}, {self.budget_range_ms[1]:.1f}), source={self.source!r})"
        )

    @classmethod
    def build(
        cls,
        runtime: "MolmoeRuntime",
        requests: "str | os.PathLike | Sequence[Request | Mapping]",
        *,
        estimator: "LatencyEstimator | None" = None,
        nominal_output_tokens: int = 3,
        options: "LiveOptions | Mapping[str, Any] | None" = None,
    ) -> "LiveData":
        """Load the requests, compute their token counts and nominal latencies (no model run)."""
        if runtime is None:
            raise ValueError("mode='live' needs runtime= (a model_runtime.molmoe.runtime.MolmoeRuntime)")
        live = LiveOutcomes(runtime, load_live_requests(requests), estimator=estimator,
                            nominal_output_tokens=nominal_output_tokens, options=LiveOptions.make(options))
        return cls(live)
