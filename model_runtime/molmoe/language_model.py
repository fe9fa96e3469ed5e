"""The OLMoE language model of MolmoE with the runtime's knobs: per-block top-k, block skipping,
a staged forward and a KV cache that only the blocks that run own.

The blocks are transformers' own ``OlmoeDecoderLayer`` modules (attention with QK-norm and RoPE,
``OlmoeSparseMoeBlock`` with router softmax over all experts then top-k, without
renormalisation when ``norm_topk_prob=False``, and transformers' experts implementation). This
module only drives them: it builds the padding-aware causal mask and the position ids, sets each
block's ``mlp.gate.top_k`` right before it runs, and skips the blocks a plan drops (the residual
stream passes through unchanged).

A forward is a sequence of calls on one :class:`LMState`::

    state = lm.begin(lm.embed(input_ids), attention_mask, cache=BlockKVCache(reserve=64))
    lm.advance(state, until=p, top_k_per_block=plan)        # blocks 0..p-1
    latency_token = state.hidden[:, -1]                     # the Stage-2 controller's input
    lm.advance(state, until=lm.n_layers, top_k_per_block=plan)  # blocks p..15, no recompute
    logits = lm.logits(state)                               # (B, V) at the last position
    state = lm.begin_decode(state, next_tokens)             # then advance + logits again

Shapes: B batch, S tokens in the current call, K tokens in the cache incl. the current ones,
D ``d_model``, V logits (``embedding_size``). Prompts are left-padded; ``attention_mask`` is
(B, K) with 1 for real tokens. Position ids count real tokens only (Molmo's
``cumsum(mask) - 1``), so a left-padded row gets the same positions as the row alone.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from .fused_lm import FusedLM

#: ``on_block(block, input, output)`` hook signature (hidden states (B, S, D)). Hooks read the
#: states and never modify them: the fast path has already normed ``output`` for the next block.
BlockHook = Callable[[int, torch.Tensor, torch.Tensor], None]

#: transformers' experts implementations (``config._experts_implementation``).
EXPERTS_IMPLEMENTATIONS: tuple[str, ...] = ("eager", "grouped_mm", "batched_mm")


def default_experts_implementation(device: torch.device | str) -> str:
    """``grouped_mm`` on CUDA; ``eager`` elsewhere: on CPU ``torch._grouped_mm`` is an order of
    magnitude slower than the per-expert loop for prefill-sized inputs."""
    return "grouped_mm" if torch.device(device).type == "cuda" else "eager"


@functools.lru_cache(maxsize=None)
def _cache_kwarg(layer_cls: type) -> str:
    """Name of the KV-cache argument of a transformers decoder layer: ``cache`` (transformers
    >= 5.2x) or ``past_key_values`` (earlier 5.x)."""
    params = inspect.signature(layer_cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class BlockKVCache:
    """Keys and values of the blocks that ran. A skipped block owns no entry.

    Implements the ``update(key, value, layer_idx, ...)`` protocol that transformers' attention
    modules call. Storage per block is preallocated for ``reserve`` more positions after the
    first (prefill) update, so decode steps write in place instead of concatenating.

    Args:
        reserve: extra positions to allocate after the prefill (max_new_tokens).
    """

    def __init__(self, reserve: int = 0) -> None:
        if reserve < 0:
            raise ValueError(f"reserve must be >= 0, got {reserve}")
        self.reserve = int(reserve)
        self._keys: dict[int, torch.Tensor] = {}
        self._values: dict[int, torch.Tensor] = {}
        self._length: dict[int, int] = {}

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (B, H, S, Dh) keys/values of block ``layer_idx``; return all of its keys/values."""
        n = key_states.shape[2]
        if layer_idx not in self._keys:
            shape = list(key_states.shape)
            shape[2] = n + self.reserve
            self._keys[layer_idx] = key_states.new_empty(shape)
            self._values[layer_idx] = value_states.new_empty(shape)
            self._length[layer_idx] = 0
        start = self._length[layer_idx]
        keys, values = self._keys[layer_idx], self._values[layer_idx]
        if start + n > keys.shape[2]:
            # past the reserve: reallocate with room for another reserve (rare; decode beyond plan)
            shape = list(keys.shape)
            shape[2] = start + n + max(self.reserve, 16)
            new_k, new_v = keys.new_empty(shape), values.new_empty(shape)
            new_k[:, :, :start], new_v[:, :, :start] = keys[:, :, :start], values[:, :, :start]
            keys, values = new_k, new_v
            self._keys[layer_idx], self._values[layer_idx] = keys, values
        keys[:, :, start : start + n] = key_states
        values[:, :, start : start + n] = value_states
        self._length[layer_idx] = start + n
        return keys[:, :, : start + n], values[:, :, : start + n]

    @property
    def blocks(self) -> tuple[int, ...]:
        """Blocks that own an entry, in model order."""
        return tuple(sorted(self._keys))

    def length(self, block: int) -> int:
        """Cached positions of ``block`` (0 if it owns no entry)."""
        return self._length.get(block, 0)

    def get(self, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, K, Dh) keys and values cached for ``block`` (views; KeyError if it owns no entry)."""
        n = self._length[block]
        return self._keys[block][:, :, :n], self._values[block][:, :, :n]

    def truncated(self, n_blocks: int) -> "BlockKVCache":
        """A cache that shares (does not copy) this cache's entries of blocks ``0..n_blocks-1``:
        the prefix of a staged forward that ran past ``n_blocks``, to :meth:`copy` or continue from."""
        out = BlockKVCache(self.reserve)
        for b in self.blocks:
            if b < n_blocks:
                out._keys[b], out._values[b], out._length[b] = self._keys[b], self._values[b], self._length[b]
        return out

    def select_rows(self, rows: torch.Tensor, drop_front: int = 0) -> None:
        """Keep only batch rows ``rows`` (in that order) and drop the first ``drop_front`` cached
        positions (columns that are padding in every kept row), in place: a decode batch shrinks
        to its unfinished rows and their common length."""
        for b in self.blocks:
            n = self._length[b]
            if not 0 <= drop_front <= n:
                raise ValueError(f"cannot drop {drop_front} of block {b}'s {n} cached positions")
            self._keys[b] = self._keys[b][rows, :, drop_front:].contiguous()
            self._values[b] = self._values[b][rows, :, drop_front:].contiguous()
            self._length[b] = n - drop_front

    def copy(self, reserve: int | None = None) -> "BlockKVCache":
        """An independent copy of the cached positions (``reserve`` decode room, default this
        cache's), so that continuing from it never writes into this cache."""
        out = BlockKVCache(self.reserve if reserve is None else reserve)
        for b in self.blocks:
            out.update(*self.get(b), b)
        return out


@dataclass
class LMState:
    """Everything a staged forward carries between calls.

    Attributes:
        hidden: (B, S, D) hidden states of the tokens of the current call, after the blocks
            ``< next_block`` that ran.
        attention_mask: (B, K) int64, 1 = real token; covers cached and current tokens.
        position_ids: (B, S) int64 positions of the current tokens.
        mask: (B, 1, S, K) additive float mask (0 or the dtype's min), causal and padding.
        position_embeddings: RoPE (cos, sin), each (B, S, head_dim).
        cache: KV cache (None: attention over the current tokens only).
        next_block: the first block that has not been considered yet.
        causal_only: whether the forward has no past and no padding (the fast path's SDPA then
            uses its causal kernel); None until the fast path first asks.
    """

    hidden: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    mask: torch.Tensor
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    cache: BlockKVCache | None
    next_block: int = 0
    causal_only: bool | None = None


def additive_mask(attention_mask: torch.Tensor, n_new: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, n_new, K) additive mask: query i (the i-th of the last ``n_new`` tokens) may see key j
    iff j is a real token and j <= its own index. Masked entries hold ``finfo(dtype).min`` (not
    -inf, so that the all-masked query rows of left padding give finite, ignored outputs)."""
    bsz, kv_len = attention_mask.shape
    past = kv_len - n_new
    q_idx = torch.arange(past, kv_len, device=attention_mask.device)[:, None]
    k_idx = torch.arange(kv_len, device=attention_mask.device)[None, :]
    allowed = (k_idx <= q_idx)[None, None] & attention_mask.bool()[:, None, None, :]
    out = torch.zeros(bsz, 1, n_new, kv_len, dtype=dtype, device=attention_mask.device)
    return out.masked_fill(~allowed, torch.finfo(dtype).min)


class MolmoeLanguageModel(nn.Module):
    """OLMoE decoder (transformers ``OlmoeModel``) + an LM head with its own output size.

    Args:
        backbone: a transformers ``OlmoeModel`` (``embed_tokens`` has the input vocabulary incl.
            Molmo's additional rows; ``layers``; ``norm``; ``rotary_emb``).
        lm_head: ``nn.Linear(d_model, n_logits, bias=False)``.
    """

    def __init__(self, backbone: nn.Module, lm_head: nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.lm_head = lm_head
        self.fused: "FusedLM | None" = None  # the fast path, see use_fast_path()
        if lm_head.in_features != backbone.config.hidden_size:
            raise ValueError(
                f"lm_head takes {lm_head.in_features} features, the backbone has hidden_size {backbone.config.hidden_size}"
            )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, olmoe_config: object, n_logits: int | None = None) -> "MolmoeLanguageModel":
        """Randomly initialised model of a transformers ``OlmoeConfig`` (``n_logits`` defaults to its vocab)."""
        from transformers import OlmoeModel

        backbone = OlmoeModel(olmoe_config)
        n = olmoe_config.vocab_size if n_logits is None else int(n_logits)
        return cls(backbone, nn.Linear(olmoe_config.hidden_size, n, bias=False))

    @classmethod
    def from_hf(cls, model: nn.Module) -> "MolmoeLanguageModel":
        """Wrap a transformers ``OlmoeForCausalLM`` (its modules are shared, not copied)."""
        return cls(model.model, model.lm_head)

    # ------------------------------------------------------------------ fast path
    def use_fast_path(self, enabled: bool = True, *, backend: str | None = None, routed_form: str | None = None,
                      decode_experts: str = "pairs", pdl: bool | None = None, decode_gemv: str | None = None,
                      decode_router: str | None = None, decode_epilogues: str = "kernels",
                      decode_qk_norm: str = "kernel", decode_prefetch: str = "none") -> "FusedLM | None":
        """Run blocks through :class:`~model_runtime.molmoe.fused_lm.FusedLM` (packed Q/K/V, fused
        norms, SDPA, grouped-GEMM experts; Triton ops on CUDA) instead of transformers' modules. The
        keywords are :class:`~model_runtime.molmoe.fused_lm.FusedLM`'s (None: its defaults for the device).

        ``enabled=False`` goes back to transformers' blocks (the reference path). Returns the
        FusedLM (None when disabled)."""
        if not enabled:
            self.fused = None
            return None
        from .fused_lm import FusedLM

        self.fused = FusedLM(self, backend=backend, routed_form=routed_form, decode_experts=decode_experts, pdl=pdl,
                             decode_gemv=decode_gemv, decode_router=decode_router, decode_epilogues=decode_epilogues,
                             decode_qk_norm=decode_qk_norm, decode_prefetch=decode_prefetch)
        return self.fused

    # ------------------------------------------------------------------ sizes
    @property
    def config(self) -> object:
        return self.backbone.config

    @property
    def n_layers(self) -> int:
        return len(self.backbone.layers)

    @property
    def max_top_k(self) -> int:
        return int(self.backbone.config.num_experts_per_tok)

    @property
    def num_experts(self) -> int:
        return int(self.backbone.config.num_experts)

    @property
    def d_model(self) -> int:
        return int(self.backbone.config.hidden_size)

    @property
    def n_logits(self) -> int:
        return int(self.lm_head.out_features)

    @property
    def experts_implementation(self) -> str:
        return str(self.backbone.config._experts_implementation)

    @experts_implementation.setter
    def experts_implementation(self, value: str) -> None:
        if value not in EXPERTS_IMPLEMENTATIONS:
            raise ValueError(f"unknown experts implementation {value!r}; choose from {EXPERTS_IMPLEMENTATIONS}")
        # every OlmoeExperts module reads this shared config object at call time
        self.backbone.config._experts_implementation = value

    def full_plan(self) -> tuple[int, ...]:
        """Every block at the model's top-k."""
        return (self.max_top_k,) * self.n_layers

    def check_plan(self, top_k_per_block: Sequence[int]) -> tuple[int, ...]:
        """Validate a per-block top-k plan (0 = skip); returns it as a tuple of ints."""
        plan = tuple(int(k) for k in top_k_per_block)
        if len(plan) != self.n_layers:
            raise ValueError(f"plan has {len(plan)} entries, the model has {self.n_layers} blocks")
        for b, k in enumerate(plan):
            if not 0 <= k <= self.num_experts:
                raise ValueError(f"block {b}: top_k={k} outside [0, num_experts={self.num_experts}]")
        return plan

    # ------------------------------------------------------------------ staged forward
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, S) int64 → (B, S, D) input embeddings."""
        return self.backbone.embed_tokens(input_ids)

    def begin(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        cache: BlockKVCache | None = None,
    ) -> LMState:
        """Start a prefill over (B, S, D) embeddings; ``attention_mask`` (B, S) (default all ones)."""
        bsz, seq, _ = inputs_embeds.shape
        if attention_mask is None:
            attention_mask = torch.ones(bsz, seq, dtype=torch.long, device=inputs_embeds.device)
        if attention_mask.shape != (bsz, seq):
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != {(bsz, seq)}")
        attention_mask = attention_mask.to(device=inputs_embeds.device, dtype=torch.long)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return self._state(inputs_embeds, attention_mask, position_ids, cache)

    def begin_decode(self, state: LMState, token_ids: torch.Tensor) -> LMState:
        """Next decode step after a finished forward: (B,) new tokens, attending to the cache."""
        if state.cache is None:
            raise ValueError("decoding needs a KV cache; begin() the prefill with cache=BlockKVCache(...)")
        if state.next_block != self.n_layers:
            raise ValueError(f"the previous forward stopped at block {state.next_block}; finish it first")
        token_ids = token_ids.reshape(-1, 1).to(state.attention_mask.device)
        mask = torch.cat([state.attention_mask, torch.ones_like(token_ids)], dim=1)
        position_ids = mask.sum(-1, keepdim=True) - 1
        return self._state(self.embed(token_ids), mask, position_ids, state.cache)

    def _state(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, cache: BlockKVCache | None
    ) -> LMState:
        cos_sin = self.backbone.rotary_emb(hidden, position_ids)
        mask = additive_mask(attention_mask, hidden.shape[1], hidden.dtype)
        return LMState(hidden, attention_mask, position_ids, mask, cos_sin, cache, 0)

    def advance(
        self,
        state: LMState,
        until: int,
        top_k_per_block: Sequence[int],
        *,
        on_block: BlockHook | None = None,
        use_cache: bool = True,
    ) -> LMState:
        """Run blocks ``state.next_block .. until-1`` with ``top_k_per_block[b]`` experts (0 = skip).

        The state is updated in place (and returned). ``use_cache=False`` runs the blocks without
        reading or writing the cache (for side branches during a prefill without past).
        """
        plan = self.check_plan(top_k_per_block)
        if not state.next_block <= until <= self.n_layers:
            raise ValueError(f"cannot advance from block {state.next_block} to {until} (model has {self.n_layers})")
        cache = state.cache if use_cache else None
        if cache is None and state.mask.shape[-1] != state.hidden.shape[1]:
            raise ValueError("running without the cache needs a forward without past tokens")
        hidden = state.hidden
        cache_kw = {_cache_kwarg(type(self.backbone.layers[0])): cache}
        normed = None  # the fast path's input norm of the next block, computed by the block before it
        for b in range(state.next_block, until):
            if plan[b] == 0:
                continue
            if self.fused is not None:
                nxt = next((c for c in range(b + 1, until) if plan[c] > 0), None)
                out, normed = self.fused.prefill_block(b, hidden, state, cache, plan[b], normed=normed, next_block=nxt)
            else:
                layer = self.backbone.layers[b]
                layer.mlp.gate.top_k = plan[b]
                out = layer(
                    hidden,
                    attention_mask=state.mask,
                    position_ids=state.position_ids,
                    position_embeddings=state.position_embeddings,
                    **cache_kw,
                )
            if on_block is not None:
                on_block(b, hidden, out)
            hidden = out
        state.hidden = hidden
        state.next_block = until
        return state

    def logits(self, state: LMState, *, last_only: bool = True, at: torch.Tensor | None = None) -> torch.Tensor:
        """Final norm + LM head: (B, V) at the last position (or at each row's position ``at``, (B,)
        int64, for right-padded rows), or (B, S, V) with ``last_only=False``."""
        if state.next_block != self.n_layers:
            raise ValueError(f"forward stopped at block {state.next_block}; advance to {self.n_layers} first")
        if at is not None:
            h = state.hidden[torch.arange(at.shape[0], device=at.device), at][:, None]
            return self.lm_head(self.backbone.norm(h))[:, 0]
        h = state.hidden[:, -1:] if last_only else state.hidden
        out = self.lm_head(self.backbone.norm(h))
        return out[:, 0] if last_only else out

    # ------------------------------------------------------------------ one-shot forward
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        top_k_per_block: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """(B, S, V) logits of a whole sequence under a plan (default: every block at max top-k)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        embeds = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        plan = self.full_plan() if top_k_per_block is None else top_k_per_block
        state = self.begin(embeds, attention_mask)
        self.advance(state, self.n_layers, plan)
        return self.logits(state, last_only=False)
