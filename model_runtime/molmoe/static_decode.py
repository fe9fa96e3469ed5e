"""Fixed-shape decode and prefill: a static KV cache, a decode step without host syncs, CUDA graphs.

The eager path (:class:`~model_runtime.molmoe.language_model.BlockKVCache` + ``lm.advance``) stays
the reference and the CPU path. This module holds the GPU fast path's graph side:

- :class:`StaticKVCache`: keys/values preallocated to ``max_len`` positions for the *active*
  blocks only (a skipped block owns no buffer). It implements the same ``update`` protocol as
  ``BlockKVCache``, so the prefill runs through the unchanged ``lm.begin`` / ``lm.advance`` and
  writes straight into the static buffers.
- :class:`GraphDecoder`: one captured ``torch.cuda.CUDAGraph`` per (batch bucket, cache length,
  plan) — the plan fixes both the top-k of each block and the active-block set — replayed per
  decode token, and per entry the captured staged prefill of each (prompt length, p, padding),
  built lazily, kept in LRUs, each reporting the memory it holds. The step it captures is
  :meth:`~model_runtime.molmoe.fused_lm.FusedLM.decode_step` (``impl="fused"``, the default: 11
  kernels per block), :class:`~model_runtime.molmoe.kernels.persistent_decode.PersistentDecodeStep`
  (``impl="persistent"``: one kernel per token for batch-1 entries, the fused step for larger
  buckets) or :func:`static_decode_step` (``impl="static"``: transformers' attention
  modules with a static mask and :func:`static_moe`, the first-stage version kept as a second
  reference). On CPU the same steps run eagerly (``capture`` is the identity).
- :func:`static_decode_step`: one decode token for every row with fixed shapes. The cache slot
  is a (1,) int64 *tensor*, attention covers all ``max_len`` positions under an additive mask
  built from a (B, max_len) validity buffer, and the step advances the slot itself.

MoE forms of :func:`static_moe` (fixed shapes; transformers' eager experts loop over the experts
that were hit, a data-dependent shape and a host sync), both through
:func:`~model_runtime.molmoe.fused_lm.routed_experts`:

- ``"grouped_mm"`` (default on CUDA): token-expert pairs sorted by expert, grouped GEMMs;
- ``"gather"`` (default on CPU): the k routed experts' weights gathered per token, batched matmuls.

Both give the eager experts' numbers up to summation order (tested at float32).

Shapes: B batch rows (the cache's capacity; requests may use fewer rows), L = ``max_len``,
H_kv key/value heads, Dh head dim, D ``d_model``, V logits, E experts, k top-k, I expert FFN.
"""

from __future__ import annotations

import functools
import gc
import inspect
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from .kernels.common import check_backend
from .kernels.persistent_decode import PersistentDecodeStep
from .kernels.router import router_topk
from .fused_lm import FusedLM, routed_experts
from .language_model import MolmoeLanguageModel

#: MoE forms usable inside a captured step.
STATIC_MOE_FORMS: tuple[str, ...] = ("grouped_mm", "gather")

#: Decode steps a :class:`GraphDecoder` can capture.
DECODE_IMPLS: tuple[str, ...] = ("fused", "persistent", "static")

#: Batch buckets a :class:`GraphDecoder` pads requests up to.
DEFAULT_BATCH_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)


def default_moe_form(device: torch.device | str) -> str:
    """``grouped_mm`` on CUDA (reads only routed experts), ``gather`` elsewhere."""
    return "grouped_mm" if torch.device(device).type == "cuda" else "gather"


@functools.lru_cache(maxsize=None)
def _attn_cache_kwarg(attn_cls: type) -> str:
    """``cache`` (transformers >= 5.2x) or ``past_key_values`` (earlier 5.x)."""
    params = inspect.signature(attn_cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


# ---------------------------------------------------------------------------- cache
class StaticKVCache:
    """Keys/values of the active blocks, preallocated to ``max_len`` positions.

    Buffers: ``keys[b]`` / ``values[b]`` (B, H_kv, L, Dh) in ``dtype`` for each active block b;
    ``valid`` (B, L) int64, 1 where a position holds a real token (prompt padding stays 0);
    ``slot`` (1,) int64, the next position the decode step writes. All are zero-initialised so
    that unused rows and positions hold finite values (masked, never NaN).

    Args:
        active_blocks: blocks that run (own a buffer), e.g. those with top-k > 0 in the plan.
        batch: row capacity B (a request may use the first ``rows <= B`` rows).
        max_len: positions L per row (prompt + generated tokens).
        n_kv_heads, head_dim: attention geometry.
        dtype, device: of the buffers (the model's).
    """

    def __init__(
        self,
        active_blocks: Sequence[int],
        *,
        batch: int,
        max_len: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        if batch < 1 or max_len < 1:
            raise ValueError(f"batch and max_len must be >= 1, got batch={batch}, max_len={max_len}")
        blocks = tuple(sorted(int(b) for b in active_blocks))
        if not blocks:
            raise ValueError("a static cache needs at least one active block")
        self.batch, self.max_len = int(batch), int(max_len)
        shape = (self.batch, n_kv_heads, self.max_len, head_dim)
        self.keys: dict[int, torch.Tensor] = {b: torch.zeros(shape, dtype=dtype, device=device) for b in blocks}
        self.values: dict[int, torch.Tensor] = {b: torch.zeros(shape, dtype=dtype, device=device) for b in blocks}
        self.valid = torch.zeros(self.batch, self.max_len, dtype=torch.long, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self._length: dict[int, int] = {b: 0 for b in blocks}
        self.rows = 0
        self.position = 0  # host mirror of ``slot`` (bounds checks without a sync)

    @classmethod
    def for_plan(
        cls, lm: MolmoeLanguageModel, top_k_per_block: Sequence[int], *, batch: int, max_len: int
    ) -> "StaticKVCache":
        """Cache for the blocks a plan runs, in the model's dtype and device."""
        plan = lm.check_plan(top_k_per_block)
        cfg = lm.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        w = lm.lm_head.weight
        return cls(
            [b for b, k in enumerate(plan) if k > 0], batch=batch, max_len=max_len,
            n_kv_heads=int(cfg.num_key_value_heads), head_dim=int(head_dim), dtype=w.dtype, device=w.device,
        )

    @property
    def blocks(self) -> tuple[int, ...]:
        """Blocks that own a buffer, in model order."""
        return tuple(self.keys)

    def length(self, block: int) -> int:
        """Positions written by the prefill protocol for ``block`` (0 if it owns no buffer)."""
        return self._length.get(block, 0)

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffers."""
        kv = sum(t.numel() * t.element_size() for d in (self.keys, self.values) for t in d.values())
        return kv + self.valid.numel() * 8 + 8

    def reset(self) -> None:
        """Forget the contents (a new request): lengths 0, no valid position."""
        for b in self._length:
            self._length[b] = 0
        self.valid.zero_()
        self.slot.zero_()
        self.rows = 0
        self.position = 0

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefill protocol (as ``BlockKVCache.update``): append (rows, H_kv, S, Dh) keys/values of
        block ``layer_idx``; return its (rows, H_kv, K, Dh) keys/values so far."""
        k_slots, v_slots, keys, values = self.append_slots(layer_idx, key_states.shape[0], key_states.shape[2])
        k_slots.copy_(key_states)
        v_slots.copy_(value_states)
        return keys, values

    def append_slots(
        self, layer_idx: int, rows: int, n: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`update` without the copy, for kernels that write keys/values in place: reserve the
        next ``n`` positions of block ``layer_idx`` for ``rows`` rows; return (keys slots, values
        slots) (rows, H_kv, n, Dh) to fill and (keys, values) (rows, H_kv, K, Dh) so far incl. them."""
        if layer_idx not in self.keys:
            raise ValueError(f"block {layer_idx} owns no static cache buffer (active blocks {self.blocks})")
        if rows > self.batch:
            raise ValueError(f"{rows} rows exceed the cache's batch capacity {self.batch}")
        start = self._length[layer_idx]
        if start + n > self.max_len:
            raise ValueError(f"{start + n} positions exceed max_len={self.max_len}")
        keys, values = self.keys[layer_idx][:rows], self.values[layer_idx][:rows]
        self._length[layer_idx] = start + n
        self.rows = rows
        return keys[:, :, start : start + n], values[:, :, start : start + n], keys[:, :, : start + n], values[:, :, : start + n]

    def start_decode(self, attention_mask: torch.Tensor) -> None:
        """After the prefill: mark the prompt's real positions valid and point the slot after them.

        Args:
            attention_mask: (rows, S) 1 for real prompt tokens (left padding), S = prefill length.
        """
        lengths = set(self._length.values())
        if len(lengths) != 1:
            raise ValueError(f"active blocks hold different lengths {sorted(lengths)}; finish the prefill first")
        (seq,) = lengths
        rows = attention_mask.shape[0]
        if attention_mask.shape[1] != seq or rows > self.batch:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} does not match the cache ({seq} positions)")
        self.valid.zero_()
        self.valid[:rows, :seq] = attention_mask.to(self.valid.device, torch.long)
        self.slot.fill_(seq)
        self.rows = rows
        self.position = seq


class _SlotWriter:
    """``update`` protocol for one decode step: writes (B, H_kv, 1, Dh) at ``slot``, returns the
    full (B, H_kv, L, Dh) buffers (the mask hides positions that are not valid)."""

    def __init__(self, cache: StaticKVCache) -> None:
        self.cache = cache

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.cache.keys[layer_idx], self.cache.values[layer_idx]
        k.index_copy_(2, self.cache.slot, key_states)
        v.index_copy_(2, self.cache.slot, value_states)
        return k, v


# ---------------------------------------------------------------------------- fixed-shape MoE
def static_moe(mlp: nn.Module, hidden: torch.Tensor, top_k: int, form: str) -> torch.Tensor:
    """Fixed-shape forward of an ``OlmoeSparseMoeBlock`` at ``top_k`` experts per token.

    Routing equals transformers' ``OlmoeTopKRouter`` (float32 softmax over all experts, top-k,
    optional renormalisation); experts through :func:`~model_runtime.molmoe.fused_lm.routed_experts`.
    Args: hidden (B, S, D) → (B, S, D) in hidden's dtype.
    """
    if form not in STATIC_MOE_FORMS:
        raise ValueError(f"unknown MoE form {form!r}; choose from {STATIC_MOE_FORMS}")
    bsz, seq, dim = hidden.shape
    h = hidden.reshape(-1, dim)
    gate = mlp.gate
    weights, idx = router_topk(nn.functional.linear(h, gate.weight), top_k, bool(gate.norm_topk_prob), "torch")
    experts = mlp.experts
    out = routed_experts(h, experts.gate_up_proj, experts.down_proj, idx, weights, form)
    return out.reshape(bsz, seq, dim)


# ---------------------------------------------------------------------------- decode step
def static_decode_step(
    lm: MolmoeLanguageModel,
    cache: StaticKVCache,
    token_ids: torch.Tensor,
    top_k_per_block: Sequence[int],
    *,
    moe_form: str | None = None,
) -> torch.Tensor:
    """One decode token for all B cache rows, fixed shapes, no host sync; capturable.

    Writes the new keys/values at ``cache.slot``, marks the slot valid, advances ``slot`` by one
    (on the device; the caller advances ``cache.position``).

    Args:
        token_ids: (B,) int64 (B = cache.batch) tokens fed at this step.
        top_k_per_block: the plan; its active blocks must be exactly the cache's.
        moe_form: one of :data:`STATIC_MOE_FORMS` (default by device, see :func:`default_moe_form`).

    Returns:
        (B, V) logits in the model's dtype.
    """
    plan = tuple(int(k) for k in top_k_per_block)
    active = tuple(b for b, k in enumerate(plan) if k > 0)
    if active != cache.blocks:
        raise ValueError(f"plan's active blocks {active} differ from the cache's {cache.blocks}")
    form = default_moe_form(token_ids.device) if moe_form is None else moe_form
    if form not in STATIC_MOE_FORMS:
        raise ValueError(f"unknown MoE form {form!r}; choose from {STATIC_MOE_FORMS}")
    cache.valid.index_fill_(1, cache.slot, 1)
    position_ids = cache.valid.sum(-1, keepdim=True) - 1  # (B, 1): real tokens so far, as begin_decode
    hidden = lm.embed(token_ids.reshape(-1, 1))
    cos_sin = lm.backbone.rotary_emb(hidden, position_ids)
    mask = torch.zeros(cache.valid.shape, dtype=hidden.dtype, device=hidden.device)
    mask = mask.masked_fill(cache.valid == 0, torch.finfo(hidden.dtype).min)[:, None, None, :]
    writer = _SlotWriter(cache)
    for b in active:
        layer = lm.backbone.layers[b]
        attn = layer.self_attn
        residual = hidden
        h = layer.input_layernorm(hidden)
        h, _ = attn(
            hidden_states=h, position_embeddings=cos_sin, attention_mask=mask, position_ids=position_ids,
            **{_attn_cache_kwarg(type(attn)): writer},
        )
        hidden = residual + h
        hidden = hidden + static_moe(layer.mlp, layer.post_attention_layernorm(hidden), plan[b], form)
    cache.slot.add_(1)
    return lm.lm_head(lm.backbone.norm(hidden))[:, 0]


# ---------------------------------------------------------------------------- graphs
#: ``capture(step) -> replay``: ``step()`` runs one decode step on static buffers; ``replay()``
#: re-runs it (a CUDA graph replay, or ``step`` itself when eager). Returns (replay, bytes held).
CaptureFn = Callable[[Callable[[], torch.Tensor]], tuple[Callable[[], torch.Tensor], int]]


def eager_capture(step: Callable[[], torch.Tensor]) -> tuple[Callable[[], torch.Tensor], int]:
    """No capture: replay runs the step eagerly (CPU path); holds no graph memory."""
    return step, 0


def cuda_graph_capture(step: Callable[[], torch.Tensor], warmup: int = 2) -> tuple[Callable[[], torch.Tensor], int]:
    """Capture ``step`` in a ``torch.cuda.CUDAGraph`` (after ``warmup`` runs on a side stream,
    which also loads kernels/cuBLAS handles); bytes held = growth of allocated memory during
    capture (the graph's private pool). The step's side effects during warm-up land in the
    static buffers; callers reset them afterwards."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    # torch.cuda.graph() empties the allocator cache on entry; do it first so that the growth of
    # reserved memory is the graph's private pool only (without this the delta came out negative)
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    torch.cuda.synchronize()
    held = max(torch.cuda.memory_reserved() - before, 0)

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    replay.graph = graph  # type: ignore[attr-defined]  # keeps the graph alive with the closure
    return replay, int(held)


@dataclass
class GraphEntry:
    """One cached decode graph and the static buffers it is bound to.

    Attributes:
        key: (batch bucket, positions L of the cache, plan).
        cache: the static KV cache the graph reads and writes.
        tokens: (bucket,) int64 input buffer of the step.
        replay: runs the step, returns the (bucket, V) logits buffer.
        graph_bytes: memory held by the graph's pool (0 when eager).
        persistent: the persistent step the graph runs (``impl="persistent"``, batch 1), else None.
    """

    key: tuple[int, int, tuple[int, ...]]
    cache: StaticKVCache
    tokens: torch.Tensor
    replay: Callable[[], torch.Tensor]
    graph_bytes: int
    persistent: PersistentDecodeStep | None = None
    prefills: "OrderedDict[tuple[int, int], PrefillGraph]" = field(default_factory=OrderedDict)
    prefill_seen: dict[tuple[int, int], int] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Cache + input buffer + graph pool bytes, prefill graphs included."""
        pre = sum(g.nbytes for g in self.prefills.values())
        own = self.persistent.nbytes if self.persistent is not None else 0
        return self.cache.nbytes + self.tokens.numel() * 8 + self.graph_bytes + pre + own


@dataclass
class PrefillGraph:
    """One captured prefill (prompt length S, insertion position p) of an entry.

    Attributes:
        embeds: (bucket, S, D) input buffer; mask: (bucket, S) int64 input buffer (rows
            left-padded, as the callers give them).
        aligned: the graph's right-aligned copy of the inputs, (embeds, mask, last) from
            :func:`right_align` (real tokens first; ``last`` (bucket,) each row's last real position).
        replay: runs the prefill into the entry's cache; returns the (bucket, D) latency token
            (last real position after block p-1) and the (bucket, V) logits of the last real position.
        graph_bytes: memory held by the graph's pool (0 when eager).
    """

    embeds: torch.Tensor
    mask: torch.Tensor
    aligned: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    replay: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    graph_bytes: int

    @property
    def nbytes(self) -> int:
        tensors = (self.embeds, self.mask, *self.aligned)
        return sum(t.numel() * t.element_size() for t in tensors) + self.graph_bytes


def right_align(
    inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, length: int,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded rows → right-padded rows of ``length`` positions, on the device (no host sync).

    Real tokens keep their order and positions 0..n-1; the padding after them is what a causal
    mask already hides from every real query, so the prefill runs SDPA's causal kernel whatever
    the rows' lengths and the length bucket (left padding needs the slower masked kernel; see
    benchmarks/RESULTS.md, "The fast path").

    Args:
        inputs_embeds: (rows, S, D); attention_mask: (rows, S) left-padded; length >= S.
        out: (embeds (R, length, D), mask (R, length), last (R,)) buffers with R >= rows to fill
            (rows past ``rows`` are zeroed); fresh tensors when None.

    Returns:
        (embeds, mask, last): right-padded embeddings, mask, and each row's last real index.
    """
    rows, seq = attention_mask.shape
    if length < seq:
        raise ValueError(f"length {length} is shorter than the prompt's {seq} positions")
    dev = inputs_embeds.device
    if out is None:
        out = (torch.empty(rows, length, inputs_embeds.shape[-1], dtype=inputs_embeds.dtype, device=dev),
               torch.empty(rows, length, dtype=torch.long, device=dev), torch.empty(rows, dtype=torch.long, device=dev))
    embeds, mask, last = out
    n = attention_mask.to(dev).long().sum(-1)  # (rows,) real tokens
    j = torch.arange(length, device=dev)
    real = j[None, :] < n[:, None]
    src = (j[None, :] + (seq - n)[:, None]).clamp(max=seq - 1)  # left-padded column of right-padded position j
    moved = inputs_embeds.gather(1, src[..., None].expand(-1, -1, inputs_embeds.shape[-1]))
    embeds[:rows] = moved * real[..., None].to(moved.dtype)
    mask[:rows] = real.long()
    last[:rows] = (n - 1).clamp(min=0)
    if embeds.shape[0] > rows:
        embeds[rows:].zero_()
        mask[rows:].zero_()
        last[rows:].zero_()
    return embeds, mask, last


class GraphDecoder:
    """Decode steps replayed from one graph per (batch bucket, cache length, plan), LRU-bounded.

    Use::

        cache = dec.prepare(rows, plan, positions=S + max_new_tokens)  # captures if new; empty cache
        state = lm.begin(embeds, mask, cache=cache); lm.advance(state, lm.n_layers, plan)
        tok = lm.logits(state).argmax(-1); cache.start_decode(mask)
        logits = dec.step(cache, tok)         # (rows, V), repeat

    Args:
        lm: the language model (its dtype/device decide the buffers).
        max_len: positions per row of every cache; None: caches are sized per request, rounded
            up to a multiple of ``len_bucket`` (``prepare(..., positions=...)``).
        len_bucket: length granularity when ``max_len`` is None (the attention reads only the
            positions written so far, so padding the cache costs memory, not time).
        max_graphs: live entries at most; the least recently used is dropped beyond it.
        max_bytes: memory the entries may hold together (caches, graph pools, prefill graphs);
            least recently used entries are dropped beyond it (the entry in use is kept). None: no
            bound beyond ``max_graphs``.
        batch_buckets: row counts a request is padded up to.
        capture: capture function (default: CUDA graphs on CUDA, eager elsewhere).
        max_prefill_graphs: captured prefills kept per entry (LRU; each holds its activations,
            about 60 MB per 1,000 prompt tokens at the MolmoE-1B shape in bf16); 0 = prefill eagerly.
        prefill_capture_after: eager prefills of a (prompt length, p) key before it is captured
            (default 1: the second request of a length replays a graph; 0 captures at once).
        prefill_bucket: prefills pad prompts to a multiple of this many tokens, so that prompts of
            nearby lengths share a graph (None: exact lengths; the cost is up to
            ``prefill_bucket - 1`` padding positions; the padding goes after each row's tokens,
            see :func:`right_align`, so the causal SDPA kernel serves every prompt).
        impl: ``"fused"`` (:meth:`FusedLM.decode_step`, the fast path: Triton ops on CUDA, their
            torch references elsewhere), ``"persistent"`` (batch-1 entries run
            :class:`PersistentDecodeStep`, one kernel per token; CUDA, or Triton's interpreter on
            CPU; larger buckets the fused step) or ``"static"`` (:func:`static_decode_step`:
            transformers' attention modules and :func:`static_moe`, the first-stage reference).
        moe_form: ``impl="static"`` only; see :data:`STATIC_MOE_FORMS` (default by device).
        persistent: keyword arguments of :class:`PersistentDecodeStep` (``impl="persistent"``
            only): programs, stepped form, tile sizes.
    """

    def __init__(
        self,
        lm: MolmoeLanguageModel,
        *,
        max_len: int | None = None,
        len_bucket: int = 256,
        max_graphs: int = 8,
        max_bytes: int | None = None,
        batch_buckets: Sequence[int] = DEFAULT_BATCH_BUCKETS,
        capture: CaptureFn | None = None,
        max_prefill_graphs: int = 4,
        prefill_capture_after: int = 1,
        prefill_bucket: int | None = None,
        impl: str = "fused",
        moe_form: str | None = None,
        persistent: dict | None = None,
    ) -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        buckets = tuple(sorted(int(b) for b in batch_buckets))
        if not buckets or buckets[0] < 1:
            raise ValueError(f"batch buckets must be positive, got {batch_buckets}")
        if impl not in DECODE_IMPLS:
            raise ValueError(f"unknown decode impl {impl!r}; choose from {DECODE_IMPLS}")
        if persistent and impl != "persistent":
            raise ValueError("persistent= options need impl='persistent'")
        if (max_len is not None and max_len < 1) or len_bucket < 1:
            raise ValueError(f"max_len and len_bucket must be >= 1, got {max_len}, {len_bucket}")
        device = lm.lm_head.weight.device
        self.lm, self.max_graphs, self.batch_buckets = lm, int(max_graphs), buckets
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be positive or None, got {max_bytes}")
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self.max_len = None if max_len is None else int(max_len)
        self.len_bucket, self.impl = int(len_bucket), impl
        if max_prefill_graphs < 0:
            raise ValueError(f"max_prefill_graphs must be >= 0, got {max_prefill_graphs}")
        self.max_prefill_graphs = int(max_prefill_graphs)
        if prefill_capture_after < 0:
            raise ValueError(f"prefill_capture_after must be >= 0, got {prefill_capture_after}")
        self.prefill_capture_after = int(prefill_capture_after)
        if prefill_bucket is not None and prefill_bucket < 1:
            raise ValueError(f"prefill_bucket must be >= 1 or None, got {prefill_bucket}")
        self.prefill_bucket = None if prefill_bucket is None else int(prefill_bucket)
        self.prefill_captures = 0
        self.fused = (lm.fused or FusedLM(lm)) if impl != "static" else None
        self.persistent = dict(persistent or {})
        if impl == "persistent":  # its kernel runs on CUDA, or in Triton's interpreter on CPU
            check_backend("triton", device)
        self.capture = capture if capture is not None else (cuda_graph_capture if device.type == "cuda" else eager_capture)
        self.moe_form = default_moe_form(device) if moe_form is None else moe_form
        if self.moe_form not in STATIC_MOE_FORMS:
            raise ValueError(f"unknown MoE form {self.moe_form!r}; choose from {STATIC_MOE_FORMS}")
        self._entries: OrderedDict[tuple[int, int, tuple[int, ...]], GraphEntry] = OrderedDict()
        self._by_cache: dict[int, GraphEntry] = {}
        self.captures = 0
        self.evictions = 0

    def bucket(self, rows: int) -> int:
        """Smallest bucket holding ``rows`` rows."""
        for b in self.batch_buckets:
            if rows <= b:
                return b
        raise ValueError(f"{rows} rows exceed the largest batch bucket {self.batch_buckets[-1]}")

    def cache_len(self, positions: int | None) -> int:
        """Positions of the cache that holds ``positions`` (prompt + decode steps)."""
        if self.max_len is not None:
            if positions is not None and positions > self.max_len:
                raise ValueError(f"{positions} positions exceed max_len={self.max_len}")
            return self.max_len
        if positions is None or positions < 1:
            raise ValueError("this decoder sizes caches per request: pass positions= (prompt + new tokens)")
        return -(-int(positions) // self.len_bucket) * self.len_bucket

    @torch.no_grad()
    def prepare(self, rows: int, top_k_per_block: Sequence[int], positions: int | None = None) -> StaticKVCache:
        """The (reset) static cache of the entry for ``rows`` rows, at least ``positions`` positions
        (required unless the decoder has a fixed ``max_len``), under a plan; captures it if new."""
        plan = self.lm.check_plan(top_k_per_block)
        key = (self.bucket(rows), self.cache_len(positions), plan)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._build(key)
        self._entries.move_to_end(key)
        entry.cache.reset()
        return entry.cache

    def _build(self, key: tuple[int, int, tuple[int, ...]]) -> GraphEntry:
        while len(self._entries) >= self.max_graphs:
            _, old = self._entries.popitem(last=False)
            del self._by_cache[id(old.cache)]
            self.evictions += 1
        bucket, length, plan = key
        cache = StaticKVCache.for_plan(self.lm, plan, batch=bucket, max_len=length)
        tokens = torch.zeros(bucket, dtype=torch.long, device=cache.valid.device)
        lm, form, fused = self.lm, self.moe_form, self.fused
        one = None
        if self.impl == "persistent" and bucket == 1:
            one = PersistentDecodeStep(fused, cache, plan, tokens=tokens, **self.persistent)

        def step() -> torch.Tensor:
            if one is not None:
                return one()
            if fused is not None:
                return fused.decode_step(cache, tokens, plan)
            return static_decode_step(lm, cache, tokens, plan, moe_form=form)

        replay, graph_bytes = self.capture(step)
        cache.reset()  # warm-up runs wrote into the buffers
        entry = GraphEntry(key, cache, tokens, replay, int(graph_bytes), one)
        self._entries[key] = entry
        self._by_cache[id(cache)] = entry
        self.captures += 1
        self._fit_budget(entry)
        return entry

    @property
    def persistent_steps(self) -> list[PersistentDecodeStep]:
        """The live entries' persistent steps (``impl="persistent"``, batch-1 entries)."""
        return [e.persistent for e in self._entries.values() if e.persistent is not None]

    def check_persistent(self) -> None:
        """Raise if a live entry's persistent step gave up on a grid barrier (a host sync)."""
        for step in self.persistent_steps:
            step.check()

    @property
    def nbytes(self) -> int:
        """Memory held by all live entries."""
        return sum(e.nbytes for e in self._entries.values())

    def _fit_budget(self, keep: GraphEntry) -> None:
        """Drop least recently used entries (never ``keep``), then ``keep``'s oldest prefill graphs
        but its newest, until the entries fit ``max_bytes``."""
        if self.max_bytes is None:
            return
        for key in [k for k in self._entries if k != keep.key]:
            if self.nbytes <= self.max_bytes:
                return
            old = self._entries.pop(key)
            del self._by_cache[id(old.cache)]
            self.evictions += 1
        while self.nbytes > self.max_bytes and len(keep.prefills) > 1:
            keep.prefills.popitem(last=False)

    @torch.no_grad()
    def step(self, cache: StaticKVCache, token_ids: torch.Tensor) -> torch.Tensor:
        """Feed (rows,) tokens at the next position; (rows, V) logits.

        The logits are a view of the entry's static output buffer: the next step overwrites them
        (clone to keep them)."""
        entry = self._by_cache.get(id(cache))
        if entry is None or entry.cache is not cache:
            raise ValueError("this cache does not belong to a live entry of this decoder (evicted or foreign)")
        rows = token_ids.shape[0]
        if rows != cache.rows:
            raise ValueError(f"{rows} tokens for a cache prefilled with {cache.rows} rows")
        if cache.position >= cache.max_len:
            raise ValueError(f"cache is full ({cache.max_len} positions)")
        self._entries.move_to_end(entry.key)
        entry.tokens[:rows].copy_(token_ids)
        logits = entry.replay()
        cache.position += 1
        return logits[:rows]

    @torch.no_grad()
    def prefill_len(self, seq: int) -> int:
        """Positions a captured prefill of a ``seq``-token prompt occupies (``prefill_bucket``)."""
        b = self.prefill_bucket
        return seq if b is None else -(-int(seq) // b) * b

    def prefill(
        self, cache: StaticKVCache, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, p: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The staged prefill of a prepared (empty) cache, replayed from a captured graph per
        (prompt length, p); leaves the cache ready for :meth:`step` (``start_decode`` done).

        The rows are right-aligned (:func:`right_align`: real tokens first, padding after, up to
        the length bucket; rows past ``rows`` up to the entry's batch bucket all padding), so the
        prefill is causal for every row and one graph serves every length of a bucket. The cache
        holds the padding positions as not valid; decode skips them.

        Args:
            inputs_embeds: (rows, S, D); attention_mask: (rows, S) left-padded; p: the latency
                token is read after block p-1.

        Returns:
            latency token (rows, D) and last-real-position logits (rows, V), views of static
            buffers that the next prefill of this key overwrites (clone to keep).
        """
        entry = self._by_cache.get(id(cache))
        if entry is None or entry.cache is not cache:
            raise ValueError("this cache does not belong to a live entry of this decoder (evicted or foreign)")
        rows, seq = attention_mask.shape
        bucket, _, plan = entry.key
        if inputs_embeds.shape[:2] != (rows, seq):
            raise ValueError(f"embeddings {tuple(inputs_embeds.shape)} do not match the mask {tuple(attention_mask.shape)}")
        if not 1 <= p <= self.lm.n_layers or plan[p - 1] == 0:
            raise ValueError(f"insertion position p={p} invalid for the plan (block p-1 must run)")
        if seq > cache.max_len:
            raise ValueError(f"prompt of {seq} positions exceeds the cache's {cache.max_len}")
        seq_b = self.prefill_len(seq)
        if seq_b > cache.max_len:
            raise ValueError(f"prompt of {seq} positions, {seq_b} with its length bucket, exceeds the cache's {cache.max_len}")
        key = (seq_b, p)
        graph = entry.prefills.get(key)
        self._entries.move_to_end(entry.key)
        if graph is None:
            seen = entry.prefill_seen.get(key, 0)
            if seen < self.prefill_capture_after or not self.max_prefill_graphs:
                # a prompt length seen for the first time runs eagerly into the same cache: a
                # stream of distinct lengths never pays for captures it would not replay
                entry.prefill_seen[key] = seen + 1
                return self._eager_prefill(cache, inputs_embeds, attention_mask, p, entry.key[2], seq_b)
            graph = self._capture_prefill(entry, seq_b, p)
        entry.prefills.move_to_end(key)
        pad = seq_b - seq  # left padding up to the length bucket; the graph right-aligns the rows
        graph.embeds[:rows, pad:].copy_(inputs_embeds)
        graph.mask[:rows, pad:].copy_(attention_mask)
        if pad:
            graph.embeds[:rows, :pad].zero_()
            graph.mask[:rows, :pad].zero_()
        if rows < bucket:
            graph.embeds[rows:].zero_()
            graph.mask[rows:].zero_()
        cache.reset()
        latency, logits = graph.replay()
        for b in cache.blocks:  # the replay wrote positions 0..seq_b-1 of every active block
            cache._length[b] = seq_b
        cache.start_decode(graph.aligned[1])
        cache.rows = rows
        return latency[:rows], logits[:rows]

    def _staged_prefill(
        self, cache: StaticKVCache, embeds: torch.Tensor, mask: torch.Tensor, last: torch.Tensor, p: int,
        plan: tuple[int, ...],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reset ``cache`` and run the staged prefill of right-padded rows into it: (latency token
        after block p-1, logits) at each row's ``last`` position. Causal by construction: no host
        sync to pick the SDPA kernel (capturable)."""
        lm = self.lm
        cache.reset()
        state = lm.begin(embeds, mask, cache=cache)  # type: ignore[arg-type]  # same protocol
        state.causal_only = True
        lm.advance(state, p, plan)
        latency = state.hidden[torch.arange(last.shape[0], device=last.device), last]
        lm.advance(state, lm.n_layers, plan)
        return latency, lm.logits(state, at=last)

    def _eager_prefill(
        self, cache: StaticKVCache, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, p: int,
        plan: tuple[int, ...], length: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, mask, last = right_align(inputs_embeds, attention_mask, length)
        latency, logits = self._staged_prefill(cache, embeds, mask, last, p, plan)
        cache.start_decode(mask)
        return latency, logits

    def _capture_prefill(self, entry: GraphEntry, seq: int, p: int) -> PrefillGraph:
        while len(entry.prefills) >= max(self.max_prefill_graphs, 1):
            entry.prefills.popitem(last=False)
        bucket, _, plan = entry.key
        lm, cache = self.lm, entry.cache
        dev = cache.valid.device
        embeds = torch.zeros(bucket, seq, lm.d_model, dtype=lm.lm_head.weight.dtype, device=dev)
        mask = torch.ones(bucket, seq, dtype=torch.long, device=dev)
        aligned = (torch.empty_like(embeds), torch.empty_like(mask), torch.empty(bucket, dtype=torch.long, device=dev))

        def run() -> tuple[torch.Tensor, torch.Tensor]:
            # the right-alignment is part of the graph: ~10 small ops that would each cost a host launch
            right_align(embeds, mask, seq, out=aligned)
            return self._staged_prefill(cache, *aligned, p, plan)

        capture = self.capture if self.max_prefill_graphs else eager_capture
        replay, graph_bytes = capture(run)  # type: ignore[arg-type]
        graph = PrefillGraph(embeds, mask, aligned, replay, int(graph_bytes))  # type: ignore[arg-type]
        entry.prefills[(seq, p)] = graph
        self.prefill_captures += 1
        self._fit_budget(entry)
        return graph

    def memory_report(self) -> list[dict[str, object]]:
        """Per live entry, least recently used first: bucket, cache length, plan, cache / graph / total bytes."""
        return [
            {"batch": k[0], "max_len": k[1], "plan": k[2], "cache_bytes": e.cache.nbytes, "graph_bytes": e.graph_bytes,
             "prefill_graphs": len(e.prefills), "prefill_bytes": sum(g.nbytes for g in e.prefills.values()),
             "bytes": e.nbytes}
            for k, e in self._entries.items()
        ]

    @property
    def keys(self) -> list[tuple[int, int, tuple[int, ...]]]:
        """Live keys, least recently used first."""
        return list(self._entries)


@torch.no_grad()
def static_greedy_generate(
    decoder: GraphDecoder,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    top_k_per_block: Sequence[int],
    eos_token_id: int,
    pad_token_id: int,
    max_new_tokens: int,
) -> list[list[int]]:
    """Greedy tokens per row (incl. EOS when produced) through the decoder's static path; the same
    prefill and EOS/pad rule as :func:`~model_runtime.molmoe.generation.greedy_generate`.

    Args:
        inputs_embeds: (B, S, D); attention_mask: (B, S) left-padded.
    """
    lm = decoder.lm
    plan = lm.check_plan(top_k_per_block)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    cache = decoder.prepare(inputs_embeds.shape[0], plan, positions=inputs_embeds.shape[1] + max_new_tokens - 1)
    state = lm.begin(inputs_embeds, attention_mask, cache=cache)  # type: ignore[arg-type]  # same protocol
    lm.advance(state, lm.n_layers, plan)
    next_tok = lm.logits(state).argmax(-1)
    cache.start_decode(state.attention_mask)
    generated, ended = [next_tok], next_tok == eos_token_id
    while len(generated) < max_new_tokens and not bool(ended.all()):
        feed = torch.where(ended, torch.full_like(next_tok, pad_token_id), next_tok)
        next_tok = decoder.step(cache, feed).argmax(-1)
        generated.append(next_tok)
        ended = ended | (next_tok == eos_token_id)
    out: list[list[int]] = []
    for row in torch.stack(generated, dim=1).tolist():
        out.append(row[: row.index(eos_token_id) + 1] if eos_token_id in row else row)
    return out
