"""Every configuration of a knob space on a list of requests, with the shared work done once.

``MolmoeRuntime.run(reqs, cfg)`` recomputes, for every configuration, the work that does not depend
on most knobs: preprocessing, the vision tower + connector (they depend on the tier only), the
embeddings, and blocks ``0..p-1`` (always at the model's top-k, so they depend on the tier and
``p`` only). :func:`run_all_configs` runs one batch of requests under many configurations:

- per tier: each request is preprocessed once (its image decoded once for all tiers), the batch is
  collated once, the vision tower + connector run once and the embeddings are built once;
- blocks ``0..p-1`` run once per (batch, tier) *incrementally*: after block ``p-1`` of every
  insertion position ``p`` that is needed the :class:`~.language_model.LMState` is kept (``p=5``'s
  prefix extends ``p=4``'s); one :class:`~.language_model.BlockKVCache` holds the keys/values of
  the prefix blocks;
- per configuration ``(tier, p, top_k, blocks)``: a copy of the prefix cache (its blocks
  ``0..p-1`` cloned) continues the prefill through the plan's blocks ``p..`` (with
  ``dense_decode``, from the furthest block its plan shares with the plan prefilled before it:
  ``_BlockPath``), then greedy decoding
  runs with the rules of :func:`~.generation.greedy_generate` (``max_new_tokens``, EOS ends a row
  and later steps feed ``pad``, ``output_tokens`` counts the EOS; a runtime's
  ``forced_output_tokens`` force each request's length, in every decode group too), the text is
  decoded and scored with the request's metric.

The sample features of the cache's sample table (crops, vision and prompt tokens per tier, the
latency tokens of every insertion position per tier, the first-token entropy and margin at the
knob space's cheapest configuration, the language feature) come from the same passes.

It runs transformers' reference blocks (``lm.use_fast_path(False)`` for the duration of the call;
a fast runtime's fused path is restored afterwards) and the eager vision tower: the fused blocks,
Triton kernels and CUDA graphs are tuned for the MolmoE-1B shape, whereas this engine is for small
models, where large batches and shared work pay. Results equal ``MolmoeRuntime(fast=False).run``
per (request, configuration) up to floating-point differences of batch composition (same batch →
same numbers).

Timing (:class:`~.timing.PhaseTimer`, CUDA events on GPU): ``vision_ms`` is the tower + connector
time of the (batch, tier); ``prefill_ms`` the embedding and shared prefix up to block ``p-1`` plus
the configuration's remaining blocks and first-token logits (the prefix time is shared by every
configuration of that (tier, p); the cache copy is not counted; block passes shared with the
configuration before it count for that one only); ``decode_ms`` the decode steps.
These are the batch's times, as in :class:`~.runtime.Outcome`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from model_runtime.knob_space import KnobConfig

from .dense_experts import dense_experts
from .generation import _decode, _result, continue_generation, pick_tokens
from .language_model import BlockKVCache, LMState, MolmoeLanguageModel
from .runtime import MolmoeRuntime, _as_request, first_token_uncertainty, load_image
from .timing import PhaseTimer


@dataclass
class ConfigOutcome:
    """What one request produced under one configuration (the fields a cache stores).

    Attributes mirror :class:`~.runtime.Outcome`: ``prediction`` (text, EOS and special tokens
    removed), ``output_tokens`` (incl. EOS), ``score`` (the request's metric, unscaled), the batch's
    ``vision_ms`` / ``prefill_ms`` / ``decode_ms`` and ``decode_ms_per_token``, ``ended_with_eos``,
    ``batch_size`` (requests in the batch), ``token_ids``; ``first_token_entropy`` and
    ``first_token_margin`` of the first token's softmax.
    """

    request_id: str
    config: KnobConfig
    prediction: str
    output_tokens: int
    score: float
    vision_ms: float
    prefill_ms: float
    decode_ms: float
    decode_ms_per_token: float
    ended_with_eos: bool
    batch_size: int
    token_ids: list[int]
    first_token_entropy: float
    first_token_margin: float

    @property
    def total_ms(self) -> float:
        return self.vision_ms + self.prefill_ms + self.decode_ms


@dataclass
class SampleFeatures:
    """The sample-table fields of one request (T tiers, P insertion positions, D d_model).

    Attributes:
        crops, vision_tokens: (T,) int per tier (crops incl. the global view).
        prompt_tokens: text tokens + BOS.
        latency_tokens: (T, P, D) float32, last prompt token's hidden state after block p-1
            (blocks 0..p-1 at the model's top-k) for every insertion position p of every tier.
        first_token_entropy, first_token_margin: at the knob space's cheapest configuration.
        lang_feature: (D,) float32 mean prompt-token embedding.
    """

    crops: np.ndarray
    vision_tokens: np.ndarray
    prompt_tokens: int
    latency_tokens: np.ndarray
    first_token_entropy: float
    first_token_margin: float
    lang_feature: np.ndarray


@dataclass
class SharedPrefixResult:
    """Output of :func:`run_all_configs` for R requests.

    Attributes:
        configs: the configuration indices that ran (sorted).
        outcomes: per request (in order), configuration index → :class:`ConfigOutcome`.
        features: per request its :class:`SampleFeatures` (None when not asked for).
    """

    configs: list[int]
    outcomes: list[dict[int, ConfigOutcome]]
    features: list[SampleFeatures] | None

    def per_request(self) -> list[tuple[dict[int, ConfigOutcome], SampleFeatures | None]]:
        """``(outcomes, features)`` per request (what a per-request batch runner expects)."""
        feats = self.features if self.features is not None else [None] * len(self.outcomes)
        return list(zip(self.outcomes, feats))


@contextlib.contextmanager
def reference_blocks(lm: MolmoeLanguageModel) -> Iterator[None]:
    """Run transformers' blocks for the enclosed code, restoring a fast path that was on."""
    fused = lm.fused
    lm.fused = None
    try:
        yield
    finally:
        lm.fused = fused


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def run_all_configs(
    runtime: MolmoeRuntime,
    requests: Sequence[Any],
    configs: Sequence[int] | None = None,
    *,
    batch_size: int = 512,
    return_sample_features: bool = True,
    on_config: Callable[[int, list[ConfigOutcome]], None] | None = None,
    dense_decode: bool = False,
    preprocess_threads: int = 1,
    decode_group_bytes: int = 24 * 2**30,
    sort_by_length: bool = True,
    log: Callable[[str], None] | None = None,
) -> SharedPrefixResult:
    """Run ``requests`` under every selected configuration of ``runtime.knob_space``.

    Args:
        runtime: its model, tokenizer, knob space, ``max_new_tokens`` and template are used.
        requests: ``Request`` objects (or their JSON dicts).
        configs: configuration indices (default: all of the knob space).
        batch_size: requests per batch (every (tier, configuration) of a batch shares its passes).
        return_sample_features: also compute every request's :class:`SampleFeatures` (the cheapest
            configuration's first-token logits come from its run when it is selected, else from an
            extra prefill without decoding).
        on_config: called as ``on_config(c, outcomes)`` as soon as configuration ``c`` has run on
            every request (``outcomes`` in request order); with one batch that is right after
            ``c`` ran, else during the last batch.
        dense_decode: decode several configurations of a tier in one batch, the experts computed
            densely (:mod:`~.dense_experts`: the same function, a few large GEMMs instead of the
            routed form's gathers) with a top-k per row and skipped blocks as a per-row
            pass-through; for small models, whose decode is bound by kernel launches. Each
            configuration's prefill still runs alone (from the shared prefix); the rows of a
            decode group are the batch's requests × as many configurations as fit
            ``decode_group_bytes`` of KV cache.
        preprocess_threads: threads that preprocess a batch's images (PIL, numpy and torch's
            resize release the GIL; the order of the results does not depend on it).
        sort_by_length: batch requests of similar prompt length together
            (:func:`prompt_length_order`; results stay in request order).
        log: when given, called with one line per (batch, tier) saying where the time went
            (preprocessing, vision + shared prefix, the configurations' prefills, decode groups).

    Raises:
        ValueError: invalid configurations or requests, a runtime that prunes vision tokens
            (``vision_keep`` < 1: a cache holds the unpruned model's outcomes); FileNotFoundError:
            missing images; errors of the model (the caller isolates failing requests, e.g. by
            retrying halves).
    """
    ks, model = runtime.knob_space, runtime.model
    lm = model.lm
    runtime.require_unpruned("the shared-prefix engine")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sel = sorted({int(c) for c in (range(len(ks)) if configs is None else configs)})
    for c in sel:
        ks.config(c)  # validates the index
    reqs = [_as_request(r) for r in requests]
    outcomes: list[dict[int, ConfigOutcome]] = [{} for _ in reqs]
    features: list[SampleFeatures] | None = [] if return_sample_features else None
    if not reqs:
        return SharedPrefixResult(sel, outcomes, features)
    order = prompt_length_order(runtime, reqs) if sort_by_length and len(reqs) > batch_size else list(range(len(reqs)))
    starts = list(range(0, len(reqs), batch_size))
    by_request: dict[int, SampleFeatures] = {}
    with reference_blocks(lm):
        for n_batch, start in enumerate(starts):
            idx = order[start : start + batch_size]
            last = n_batch == len(starts) - 1
            done = (lambda c: on_config(c, [outcomes[i][c] for i in range(len(reqs))])) if (on_config and last) else None
            feats = _run_batch(runtime, [reqs[i] for i in idx], sel, return_sample_features, done,
                               [outcomes[i] for i in idx], dense_decode=dense_decode,
                               preprocess_threads=preprocess_threads, decode_group_bytes=decode_group_bytes,
                               log=log)
            by_request.update(zip(idx, feats))
    if features is not None:
        features.extend(by_request[i] for i in range(len(reqs)))
    return SharedPrefixResult(sel, outcomes, features)


def prompt_length_order(runtime: MolmoeRuntime, reqs: Sequence[Any]) -> list[int]:
    """Request indices by their image's token count at the highest tier
    (:meth:`MolmoeRuntime.vision_token_counts`: the image header only), so that a batch holds
    prompts of similar length: every batch is left-padded to its longest prompt, and attention
    reads the padding too. Unreadable images sort first (their batch fails and is retried apart
    by the caller, as before)."""
    top = runtime.knob_space.tiers[-1]

    def tokens(r: Any) -> int:
        try:
            return runtime.vision_token_counts(r)[top][1]
        except (OSError, ValueError):
            return -1

    n = [tokens(r) for r in reqs]
    return sorted(range(len(reqs)), key=lambda i: (n[i], i))


def _run_batch(
    runtime: MolmoeRuntime,
    reqs: list[Any],
    sel: list[int],
    want_features: bool,
    done: Callable[[int], None] | None,
    out: list[dict[int, ConfigOutcome]],
    *,
    dense_decode: bool = False,
    preprocess_threads: int = 1,
    decode_group_bytes: int = 24 * 2**30,
    log: Callable[[str], None] | None = None,
) -> list[SampleFeatures]:
    ks, model = runtime.knob_space, runtime.model
    lm, dev = model.lm, model.device
    B, T = len(reqs), len(ks.tiers)
    eos_at = runtime.eos_at(reqs)
    positions = tuple(ks.insertion_positions)
    cheap = ks.cheapest_config
    cheap_idx = ks.index(cheap)
    by_tier: dict[str, dict[int, list[int]]] = {}
    for c in sel:
        cfg = ks.config(c)
        by_tier.setdefault(cfg.tier, {}).setdefault(cfg.p, []).append(c)
    # features: every tier's latency tokens; tier 0's cheapest plan for the uncertainty
    tiers = list(ks.tiers) if want_features else [t for t in ks.tiers if t in by_tier]
    pool = ThreadPoolExecutor(preprocess_threads) if preprocess_threads > 1 else None
    mapper = pool.map if pool is not None else map
    images = list(mapper(lambda r: load_image(r.image), reqs))

    crops = np.zeros((B, T), np.int32)
    vtok = np.zeros((B, T), np.int32)
    ptok = np.zeros(B, np.int32)
    lat = np.zeros((B, T, len(positions), lm.d_model), np.float32)
    unc = np.full((B, 2), np.nan, np.float32)
    scored: list[dict[tuple, tuple[str, float]]] = [{} for _ in reqs]  # per request: output → (text, score)

    for tier in tiers:
        t = ks.tiers.index(tier)
        wall = time.perf_counter()
        prompts = list(mapper(lambda ri: runtime.prepare(ri[0], ks.crops_for(tier), image=ri[1]), zip(reqs, images)))
        wall_prep = time.perf_counter() - wall
        for b, pr in enumerate(prompts):
            crops[b, t], vtok[b, t], ptok[b] = pr.image.n_crops, pr.vision_tokens, pr.prompt_tokens
        batch = model.collate(prompts)
        timer = PhaseTimer(dev)
        with timer.phase("vision"):
            feats = model.image_features(batch.patches, batch.image_masks)
        vision_ms = timer.get("vision")
        p_runs = by_tier.get(tier, {})
        need_p = set(p_runs)
        if want_features:
            need_p |= set(positions)
        prefix_cache = BlockKVCache(reserve=runtime.max_new_tokens)
        states: dict[int, LMState] = {}
        prefix_ms: dict[int, float] = {}
        with timer.phase("prefill"):
            embeds = model.embed(batch, feats)
            state = lm.begin(embeds, batch.attention_mask, cache=prefix_cache)
        full = lm.full_plan()
        for p in sorted(need_p):
            with timer.phase("prefill"):
                lm.advance(state, p, full)
            states[p] = dataclasses.replace(state)  # shallow: advance() rebinds hidden, never mutates it
            prefix_ms[p] = timer.get("prefill")
        del feats, embeds
        if want_features:
            lat[:, t] = torch.stack([states[p].hidden[:, -1] for p in positions], 1).float().cpu().numpy()

        def record(c: int, gen: Any, ent: np.ndarray, mar: np.ndarray, ms: dict[str, float]) -> None:
            cfg = ks.config(c)
            prefill_ms = prefix_ms[cfg.p] + ms["prefill"]
            if want_features and c == cheap_idx:
                unc[:, 0], unc[:, 1] = ent, mar
            for b, req in enumerate(reqs):
                ids = gen.tokens[b]
                key = (tuple(ids), gen.ended_with_eos[b])
                if key not in scored[b]:  # configurations of a request often give the same answer
                    text_ids = ids[:-1] if gen.ended_with_eos[b] else ids
                    prediction = runtime.tokenizer.decode(text_ids).strip()
                    scored[b][key] = (prediction, float(req.score(prediction)))
                prediction, score = scored[b][key]
                out[b][c] = ConfigOutcome(
                    request_id=req.id, config=cfg, prediction=prediction, output_tokens=len(ids),
                    score=score, vision_ms=vision_ms, prefill_ms=prefill_ms,
                    decode_ms=ms["decode"], decode_ms_per_token=gen.decode_ms_per_token,
                    ended_with_eos=gen.ended_with_eos[b], batch_size=B, token_ids=list(ids),
                    first_token_entropy=float(ent[b]), first_token_margin=float(mar[b]),
                )
            if done is not None:
                done(c)

        tier_configs = [c for p in sorted(p_runs) for c in p_runs[p]]
        if log is not None:
            _sync(dev)
        wall_prefix = time.perf_counter() - wall - wall_prep
        stats = {"groups": 0, "steps": 0, "decode_s": 0.0, "blocks_run": 0, "blocks_shared": 0}
        if dense_decode:
            _grouped_configs(runtime, states, prefix_cache, tier_configs, record, decode_group_bytes, stats, eos_at)
        else:
            for c in tier_configs:
                cfg = ks.config(c)
                record(c, *_continue(runtime, states[cfg.p], prefix_cache, cfg, decode=True, eos_at=eos_at))
        if want_features and tier == cheap.tier and cheap_idx not in sel:
            _, ent, mar, _ = _continue(runtime, states[cheap.p], prefix_cache, cheap, decode=False)
            unc[:, 0], unc[:, 1] = ent, mar
        del states, prefix_cache, state
        if log is not None:
            _sync(dev)
            lengths = batch.attention_mask.sum(1).float()
            log(f"[engine] {B} requests, tier {tier}: prompts {lengths.mean():.0f} tokens on average, padded to "
                f"{batch.attention_mask.shape[1]}; preprocess {wall_prep:.1f} s, vision + prefixes {wall_prefix:.1f} s, "
                f"{len(tier_configs)} configurations {time.perf_counter() - wall - wall_prep - wall_prefix:.1f} s"
                + (f" ({stats['blocks_run']} block passes, {stats['blocks_shared']} shared; {stats['groups']} decode "
                   f"groups, {stats['steps']} steps, {stats['decode_s']:.1f} s decoding)" if dense_decode else ""))
    if pool is not None:
        pool.shutdown()
    if not want_features:
        return []
    feats_out = []
    for b, req in enumerate(reqs):
        feats_out.append(SampleFeatures(
            crops=crops[b], vision_tokens=vtok[b], prompt_tokens=int(ptok[b]), latency_tokens=lat[b],
            first_token_entropy=float(unc[b, 0]), first_token_margin=float(unc[b, 1]),
            lang_feature=runtime.language_feature(req),
        ))
    return feats_out


def _continue(
    runtime: MolmoeRuntime, prefix: LMState, prefix_cache: BlockKVCache, cfg: KnobConfig, *, decode: bool,
    eos_at: torch.Tensor | None = None,
) -> tuple[Any, np.ndarray, np.ndarray, dict[str, float]]:
    """Finish the prefill of ``cfg`` from its prefix state and greedy-decode
    (:func:`~.generation.continue_generation`, which copies the prefix's blocks ``0..p-1`` out of
    the shared prefix cache; ``eos_at``: forced lengths per row); ``decode=False``: first token
    only, without a cache. Returns (GenerationResult, entropy, margin, {prefill, decode} ms)."""
    ks, model = runtime.knob_space, runtime.model
    lm, tk = model.lm, model.config.tokens
    plan = lm.check_plan(ks.plan(cfg).top_k_per_block)
    if not decode:
        timer = PhaseTimer(model.device)
        with timer.phase("prefill"):
            branch = dataclasses.replace(prefix, cache=None)
            lm.advance(branch, lm.n_layers, plan, use_cache=False)
            logits = lm.logits(branch)
        ent, mar = first_token_uncertainty(logits)
        return None, ent.cpu().numpy(), mar.cpu().numpy(), {"prefill": timer.get("prefill"), "decode": 0.0}
    gen = continue_generation(lm, dataclasses.replace(prefix, cache=prefix_cache.truncated(cfg.p)),
                              top_k_per_block=plan, eos_token_id=tk.eos, pad_token_id=tk.pad,
                              max_new_tokens=runtime.max_new_tokens, eos_at=eos_at)
    ent, mar = first_token_uncertainty(gen.first_logits)
    return gen, ent.cpu().numpy(), mar.cpu().numpy(), {"prefill": gen.prefill_ms, "decode": gen.decode_ms}


class _BlockPath:
    """The hidden states entering each block along the last prefilled configuration's plan, and
    that configuration's cache (prompt positions only: it is decoded later, in a group).

    The hidden state entering block ``j`` and the keys/values of blocks ``0..j-1`` depend only on
    the plan's blocks ``0..j-1``, so a configuration whose plan agrees with the last one on those
    blocks starts at block ``j`` instead of at its insertion position. Visiting a tier's plans in
    sorted order makes each plan's longest shared prefix the one with the plan before it; the
    plans of one (``p``, ``top_k``) differ only in blocks skipped late, and the top-8 plans of
    different ``p`` often not at all, so about half of the configurations' block passes go.
    """

    def __init__(self) -> None:
        self.plan: tuple[int, ...] | None = None
        self.entering: dict[int, torch.Tensor] = {}
        self.cache: BlockKVCache | None = None

    def start(self, plan: tuple[int, ...], p: int) -> int:
        """The block ``plan`` (insertion position ``p``) starts at: a block ``j > p`` whose
        entering state this path holds and before which both plans agree, else ``p``."""
        if self.plan is None:
            return p
        agree = next((j for j, (a, b) in enumerate(zip(self.plan, plan)) if a != b), len(plan))
        return max((j for j in self.entering if p < j <= agree), default=p)


def _prefill_config(runtime: MolmoeRuntime, prefix: LMState, prefix_cache: BlockKVCache, p: int,
                    plan: tuple[int, ...], start: int, path: _BlockPath) -> tuple[LMState, torch.Tensor, float]:
    """The prefill of ``plan`` (insertion position ``p``) from block ``start`` (``path.start``):
    from the path's state entering it and a copy of the path's cache up to it when ``start > p``,
    else from the prefix (a copy of the prefix cache); updates ``path``. Returns (state, first
    logits, ms of the blocks this call ran)."""
    lm = runtime.model.lm
    if start > p:
        assert path.cache is not None
        entering = {j: h for j, h in path.entering.items() if j <= start}
        state = dataclasses.replace(prefix, hidden=entering[start], next_block=start,
                                    cache=path.cache.truncated(start).copy(runtime.max_new_tokens))
    else:
        entering = {p: prefix.hidden}
        state = dataclasses.replace(prefix, cache=prefix_cache.truncated(p).copy(runtime.max_new_tokens))
    _sync(runtime.model.device)  # the copy is not part of the measured prefill
    timer = PhaseTimer(runtime.model.device)
    with timer.phase("prefill"):
        lm.advance(state, lm.n_layers, plan, on_block=lambda b, h, out: entering.__setitem__(b, h))
        logits = lm.logits(state).float()
    entering[lm.n_layers] = state.hidden
    path.plan, path.entering, path.cache = plan, entering, state.cache
    state.hidden = state.hidden[:, -1:]  # only the cache and the mask are needed from here on
    return state, logits, timer.get("prefill")


def _grouped_configs(runtime: MolmoeRuntime, states: dict[int, LMState], prefix_cache: BlockKVCache,
                     configs: list[int], record: Callable[..., None], group_bytes: int,
                     stats: dict[str, Any], eos_at: torch.Tensor | None = None) -> None:
    """Prefill each configuration (in plan order, sharing block passes: :class:`_BlockPath`), then
    decode them in groups (see ``dense_decode``; ``eos_at``: the batch's forced lengths per
    request); adds the groups, their decode steps and seconds and the block passes run and saved
    to ``stats``."""
    ks, lm = runtime.knob_space, runtime.model.lm
    pending: list[tuple[int, LMState, torch.Tensor, float]] = []
    rows_bytes = 0
    path = _BlockPath()
    plans = {c: tuple(lm.check_plan(ks.plan(ks.config(c)).top_k_per_block)) for c in configs}
    for c in sorted(configs, key=lambda c: plans[c]):
        p, plan = ks.config(c).p, plans[c]
        start = path.start(plan, p)
        stats["blocks_run"] += sum(k > 0 for k in plan[start:])
        stats["blocks_shared"] += sum(k > 0 for k in plan[p:start])
        st, logits, ms = _prefill_config(runtime, states[p], prefix_cache, p, plan, start, path)
        k0 = st.attention_mask.shape[1]
        per_config = st.attention_mask.shape[0] * (k0 + runtime.max_new_tokens) * lm.n_layers * 2 * \
            lm.config.num_key_value_heads * (lm.d_model // lm.config.num_attention_heads) * st.hidden.element_size()
        if pending and rows_bytes + per_config > group_bytes:
            _decode_group(runtime, pending, record, stats, eos_at)
            pending, rows_bytes = [], 0
        pending.append((c, st, logits, ms))
        rows_bytes += per_config
    if pending:
        _decode_group(runtime, pending, record, stats, eos_at)


#: A decode group drops its finished rows once at most this share of its rows is unfinished.
COMPACT_BELOW = 0.75


def _decode_group(runtime: MolmoeRuntime, items: list[tuple[int, LMState, torch.Tensor, float]],
                  record: Callable[..., None], stats: dict[str, Any], eos_at: torch.Tensor | None = None) -> None:
    """Greedy-decode several configurations' rows as one batch; per-row plans (see ``dense_decode``);
    ``eos_at``: (requests,) forced lengths, the same for each configuration's rows."""
    from .language_model import _cache_kwarg
    from .dense_experts import set_row_top_k

    ks, model = runtime.knob_space, runtime.model
    lm, tk, dev = model.lm, model.config.tokens, model.device
    n_rows = items[0][1].attention_mask.shape[0]
    L = lm.n_layers
    plans = [lm.check_plan(ks.plan(ks.config(c)).top_k_per_block) for c, *_ in items]
    k_rows = torch.tensor([[plan[b] for plan in plans for _ in range(n_rows)] for b in range(L)], device=dev)
    cache = BlockKVCache(reserve=runtime.max_new_tokens)
    for b in range(L):
        present = [st.cache for _, st, _, _ in items if b in st.cache._keys]
        if not present:
            continue
        tmpl_k, tmpl_v, length = present[0]._keys[b], present[0]._values[b], present[0]._length[b]
        cache._keys[b] = torch.cat([st.cache._keys[b] if b in st.cache._keys else torch.zeros_like(tmpl_k)
                                    for _, st, _, _ in items])
        cache._values[b] = torch.cat([st.cache._values[b] if b in st.cache._values else torch.zeros_like(tmpl_v)
                                      for _, st, _, _ in items])
        cache._length[b] = length
        del tmpl_k, tmpl_v
        for src in present:  # block by block, so the merge holds one block twice at most
            del src._keys[b], src._values[b]
    mask = torch.cat([st.attention_mask for _, st, _, _ in items])
    first_logits = torch.cat([lg for _, _, lg, _ in items])
    for _, st, _, _ in items:
        st.cache = None  # the merged cache holds the rows now
    state = dataclasses.replace(items[0][1], attention_mask=mask, cache=cache, next_block=L,
                                hidden=torch.empty(0, device=dev))
    cache_kw = _cache_kwarg(type(lm.backbone.layers[0]))
    total_rows = k_rows.shape[1]
    live = torch.arange(total_rows, device=dev)  # full-batch rows of the (compacted) decode state

    def block_flags(k: torch.Tensor) -> tuple[list, list, list, list, list]:
        active = [(k[b] > 0) for b in range(L)]
        runs = [bool(a.any()) for a in active]
        all_on = [bool(a.all()) for a in active]
        k_max = [int(k[b].max()) for b in range(L)]
        uniform_k = [bool((k[b][active[b]] == k_max[b]).all()) if runs[b] else True for b in range(L)]
        return active, runs, all_on, k_max, uniform_k

    flags = block_flags(k_rows)

    def compact(keep: torch.Tensor) -> None:
        """Drop finished rows from the decode state (and the padding columns no kept row needs):
        attention over long image prompts reads every row's whole cache at every step, and the
        longest answer of a large group would otherwise keep every finished row running."""
        nonlocal state, live, k_rows, flags
        mask = state.attention_mask[keep]
        front = int((mask.cumsum(1) == 0).all(0).sum())  # left padding common to every kept row
        cache.select_rows(keep, front)
        state = dataclasses.replace(state, attention_mask=mask[:, front:])
        live, k_rows = live[keep], k_rows[:, keep]
        flags = block_flags(k_rows)

    def step(feed: torch.Tensor, ended: torch.Tensor) -> torch.Tensor:
        """One decode step of every unfinished row under its own plan: per-row top-k, skipped
        blocks pass through; finished rows' logits are zeros (the decode loop ignores them)."""
        nonlocal state
        alive = ~ended[live]
        if int(alive.sum()) <= COMPACT_BELOW * live.numel():
            compact(alive.nonzero()[:, 0])
        active, runs, all_on, k_max, uniform_k = flags
        state = lm.begin_decode(state, feed[live])
        h = state.hidden
        for b in range(L):
            if not runs[b]:
                continue
            layer = lm.backbone.layers[b]
            layer.mlp.gate.top_k = k_max[b]
            set_row_top_k(layer.mlp.experts, None if uniform_k[b] else k_rows[b])
            out = layer(h, attention_mask=state.mask, position_ids=state.position_ids,
                        position_embeddings=state.position_embeddings, **{cache_kw: cache})
            h = out if all_on[b] else torch.where(active[b][:, None, None], out, h)
        state.hidden = h
        state.next_block = L
        logits = lm.logits(state)
        if live.numel() == total_rows:
            return logits
        full = logits.new_zeros(total_rows, logits.shape[-1])
        full[live] = logits
        return full

    timer = PhaseTimer(dev)
    # the group's rows are configuration-major: each configuration's n_rows requests in batch order
    rows_eos = None if eos_at is None else eos_at.repeat(len(items))
    with dense_experts(lm):
        generated, steps = _decode(lm, None, cache, (), pick_tokens(first_logits, 1, rows_eos, tk.eos), decoder=None,
                                   eos_token_id=tk.eos, pad_token_id=tk.pad, max_new_tokens=runtime.max_new_tokens,
                                   timer=timer, step=step, eos_at=rows_eos)
    decode_ms = timer.get("decode")
    stats["groups"] += 1
    stats["steps"] += steps
    stats["decode_s"] += decode_ms / 1e3
    for layer in lm.backbone.layers:
        set_row_top_k(layer.mlp.experts, None)
    for g, (c, st, logits, prefill_ms) in enumerate(items):
        rows = slice(g * n_rows, (g + 1) * n_rows)
        gen = _result([t[rows] for t in generated], tk.eos, logits, st.hidden[:, -1].float(), None,
                      prefill_ms, decode_ms, steps)
        ent, mar = first_token_uncertainty(logits)
        record(c, gen, ent.cpu().numpy(), mar.cpu().numpy(), {"prefill": prefill_ms, "decode": decode_ms})
