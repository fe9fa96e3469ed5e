"""Greedy generation under a block plan, with the staged prefill and the skipped-block KV cache.

One call serves one padded batch that shares a configuration:

1. prefill, blocks ``0..p-1`` → the latency token (last prompt position after block ``p-1``);
2. prefill continues from that hidden state with blocks ``p..`` (no prefix recompute); the
   logits of the last position give the first token;
3. decode steps feed each row's last token through the blocks that run; a skipped block has
   no cache entry and is skipped at every step.

EOS ends a row (its later steps are fed ``pad`` and ignored); the batch stops when every row
ended or ``max_new_tokens`` tokens were generated. Prefill and decode are timed with
:class:`~model_runtime.molmoe.timing.PhaseTimer`.

Forced output lengths (``eos_at``, off by default): a row can be made to end at a given step, EOS
suppressed before it and emitted at it (:func:`pick_tokens`), so that a model with random weights
produces answers of realistic lengths (``benchmarks/bench_build_cost.py``); every token choice of
both functions and of the shared-prefix engine's grouped decode goes through :func:`pick_tokens`.

:func:`continue_generation` runs steps 2-3 from a prefix state that stopped after block ``p-1``
(the live env keeps such states between its two stages); both functions share the decode loop,
eager or through a :class:`~model_runtime.molmoe.static_decode.GraphDecoder`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from .language_model import BlockKVCache, LMState, MolmoeLanguageModel
from .timing import PhaseTimer

if TYPE_CHECKING:  # pragma: no cover
    from .static_decode import GraphDecoder, StaticKVCache

#: Default generation length of the project (``model_runtime.datasets.prompts.DECODING``).
DEFAULT_MAX_NEW_TOKENS = 64


@dataclass
class GenerationResult:
    """Output of :func:`greedy_generate` for a batch of B rows.

    Attributes:
        tokens: per row, the generated ids including the EOS id when one was produced.
        ended_with_eos: per row, whether generation stopped at EOS (else at max_new_tokens).
        first_logits: (B, V) float32 logits that chose the first generated token.
        latency_token: (B, D) float32 hidden state of the last prompt token after block p-1.
        latency_tokens: (B, n, D) float32 hidden state of the last prompt token after blocks
            0..n-1, every block up to n-1 at the model's top-k (the latency token of p = i+1 is
            row i), or None when not asked for.
        prefill_ms: time of the whole prefill (both stages and the first token's logits).
        decode_ms: total time of the decode steps (tokens 2..).
        decode_steps: number of decode steps (forwards of one token per row).
    """

    tokens: list[list[int]]
    ended_with_eos: list[bool]
    first_logits: torch.Tensor
    latency_token: torch.Tensor
    latency_tokens: torch.Tensor | None
    prefill_ms: float
    decode_ms: float
    decode_steps: int

    @property
    def decode_ms_per_token(self) -> float:
        """Mean time of one decode step (NaN when there was none)."""
        return self.decode_ms / self.decode_steps if self.decode_steps else float("nan")


def forced_eos(eos_at: Sequence[int] | torch.Tensor | None, rows: int, device: torch.device) -> torch.Tensor | None:
    """``eos_at`` as a (rows,) int64 tensor on ``device`` (None stays None).

    Raises:
        ValueError: not one value per row, or a negative value.
    """
    if eos_at is None:
        return None
    out = torch.as_tensor(eos_at, dtype=torch.int64, device=device).reshape(-1)
    if out.numel() != rows:
        raise ValueError(f"eos_at has {out.numel()} values for {rows} rows")
    if bool((out < 0).any()):
        raise ValueError("eos_at values must be >= 0 (0: the row is not forced)")
    return out


def pick_tokens(logits: torch.Tensor, step: int, eos_at: torch.Tensor | None, eos_token_id: int) -> torch.Tensor:
    """The greedy choice of generated token number ``step`` (1 = the first) from (B, V) ``logits``.

    ``eos_at`` (B,) int64 forces lengths: a row with ``eos_at = n > 0`` cannot pick EOS before
    step ``n`` (its best other token is taken) and picks EOS at step ``n``, so it ends with exactly
    ``n`` tokens, EOS included (or runs to ``max_new_tokens`` when that is smaller); rows with 0,
    and every row when ``eos_at`` is None, take the plain argmax.
    """
    best = logits.argmax(-1)
    if eos_at is None:
        return best
    eos = torch.tensor([eos_token_id], device=logits.device)
    no_eos = logits.index_fill(-1, eos, float("-inf")).argmax(-1)
    tok = torch.where(eos_at > 0, no_eos, best)
    return torch.where(eos_at == step, eos, tok)


@torch.no_grad()
def greedy_generate(
    lm: MolmoeLanguageModel,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    top_k_per_block: Sequence[int],
    p: int,
    eos_token_id: int,
    pad_token_id: int,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    n_latency_tokens: int = 0,
    timer: PhaseTimer | None = None,
    decoder: "GraphDecoder | None" = None,
    eos_at: Sequence[int] | torch.Tensor | None = None,
) -> GenerationResult:
    """Greedy decoding of a left-padded batch under one block plan.

    Args:
        lm: the language model.
        inputs_embeds: (B, S, D) prompt embeddings (image features already added).
        attention_mask: (B, S) 1 for real tokens (left padding).
        top_k_per_block: experts per block, 0 = skip (e.g. ``KnobSpace.plan(...).top_k_per_block``).
        p: insertion position in 1..n_layers; the latency token is read after block p-1.
        eos_token_id: ends a row.
        pad_token_id: fed to rows that already ended.
        max_new_tokens: at most this many generated tokens per row (>= 1).
        n_latency_tokens: also return the latency tokens of positions 1..n (blocks 0..n-1 at the
            model's top-k; the blocks ``p..n-1`` are computed in a side branch after generation,
            outside the timed phases). Requires blocks ``0..p-1`` of the plan at the model's top-k.
        timer: phase timer (a fresh one on the embeddings' device if None).
        decoder: decode through this :class:`~model_runtime.molmoe.static_decode.GraphDecoder`
            (static KV cache, one CUDA graph per step on GPU) instead of the eager
            ``begin_decode``/``advance`` loop; the staged prefill is replayed from the decoder's
            captured prefill graph too, except with ``n_latency_tokens`` (its side branch needs
            the eager forward's states), where it runs eagerly into the decoder's cache. Must
            wrap ``lm``.
        eos_at: (B,) per row the output length (EOS included) it is forced to, 0 = not forced
            (:func:`pick_tokens`); None (default): EOS is whatever greedy decoding picks.

    Raises:
        ValueError: invalid plan, p, lengths, ``eos_at``.
    """
    plan = lm.check_plan(top_k_per_block)
    if not 1 <= p <= lm.n_layers:
        raise ValueError(f"insertion position p={p} outside 1..{lm.n_layers}")
    if plan[p - 1] == 0:
        raise ValueError(f"block p-1={p - 1} is skipped by the plan; the latency token needs it to run")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not 0 <= n_latency_tokens <= lm.n_layers:
        raise ValueError(f"n_latency_tokens={n_latency_tokens} outside 0..{lm.n_layers}")
    if n_latency_tokens and any(plan[b] != lm.max_top_k for b in range(min(p, n_latency_tokens))):
        raise ValueError("latency tokens for every position need blocks 0..p-1 at the model's top-k")
    if decoder is not None and decoder.lm is not lm:
        raise ValueError("the decoder wraps a different language model")
    timer = timer if timer is not None else PhaseTimer(inputs_embeds.device)
    eos_at = forced_eos(eos_at, inputs_embeds.shape[0], inputs_embeds.device)
    prefix_tokens: dict[int, torch.Tensor] = {}

    def record(block: int, _inp: torch.Tensor, out: torch.Tensor) -> None:
        if block < n_latency_tokens:
            prefix_tokens[block] = out[:, -1].float()

    t_prefill, t_decode = timer.get("prefill"), timer.get("decode")
    after_prefix: LMState | None = None
    with timer.phase("prefill"):
        if decoder is None:
            cache: BlockKVCache | StaticKVCache = BlockKVCache(reserve=max_new_tokens)
        else:
            cache = decoder.prepare(inputs_embeds.shape[0], plan,
                                    positions=decoder.prefill_len(inputs_embeds.shape[1]) + max_new_tokens - 1)
        if decoder is not None and not n_latency_tokens:  # the decoder's captured staged prefill
            latency, logits = decoder.prefill(cache, inputs_embeds, attention_mask, p)  # type: ignore[arg-type]
        else:
            state = lm.begin(inputs_embeds, attention_mask, cache=cache)  # type: ignore[arg-type]  # same protocol
            lm.advance(state, p, plan, on_block=record if n_latency_tokens else None)
            after_prefix = dataclasses.replace(state)  # shallow: advance() rebinds hidden, never mutates it
            latency = after_prefix.hidden[:, -1]
            lm.advance(state, lm.n_layers, plan)
            logits = lm.logits(state)
            if decoder is not None:
                cache.start_decode(state.attention_mask)  # type: ignore[union-attr]
        next_tok = pick_tokens(logits, 1, eos_at, eos_token_id)
    first_logits, latency_token = logits.float(), latency.float()

    generated, steps = _decode(
        lm, None if decoder is not None else state, cache, plan, next_tok, decoder=decoder, eos_token_id=eos_token_id,
        pad_token_id=pad_token_id, max_new_tokens=max_new_tokens, timer=timer, eos_at=eos_at,
    )
    prefill_ms = timer.get("prefill") - t_prefill
    decode_ms = timer.get("decode") - t_decode

    latency_tokens = None
    if n_latency_tokens:
        assert after_prefix is not None  # the eager prefill ran
        if n_latency_tokens > p:
            branch = dataclasses.replace(after_prefix, cache=None)
            lm.advance(branch, n_latency_tokens, lm.full_plan(), on_block=record, use_cache=False)
        latency_tokens = torch.stack([prefix_tokens[b] for b in range(n_latency_tokens)], dim=1)
    return _result(generated, eos_token_id, first_logits, latency_token, latency_tokens, prefill_ms, decode_ms, steps)


@torch.no_grad()
def continue_generation(
    lm: MolmoeLanguageModel,
    prefix: LMState,
    *,
    top_k_per_block: Sequence[int],
    eos_token_id: int,
    pad_token_id: int,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    timer: PhaseTimer | None = None,
    decoder: "GraphDecoder | None" = None,
    eos_at: Sequence[int] | torch.Tensor | None = None,
) -> GenerationResult:
    """Greedy decoding of a batch from a prefix state: steps 2-3 of :func:`greedy_generate`.

    ``prefix`` is the state of a staged prefill stopped after block ``p-1`` (``p =
    prefix.next_block``; ``lm.begin`` then ``lm.advance(state, p, ...)`` into a
    :class:`~.language_model.BlockKVCache`). The rest of the prefill (blocks ``p..`` of the plan),
    the first token and the decode steps run as in :func:`greedy_generate`, which gives the same
    tokens as ``greedy_generate`` from the prompt with the same plan. ``prefix`` is left untouched:
    its cached keys/values are copied (outside the timed phases) into a fresh cache, so the same
    prefix can be continued again under another plan.

    Args:
        lm: the language model that computed ``prefix``.
        prefix: the prefix state; its cache must hold exactly the plan's blocks before ``p``.
        top_k_per_block, eos_token_id, pad_token_id, max_new_tokens, timer, eos_at: as in
            :func:`greedy_generate`.
        decoder: decode through this :class:`~model_runtime.molmoe.static_decode.GraphDecoder`
            (the prefix is copied into its static cache, the rest of the prefill runs eagerly into
            it, then the decode steps replay its graphs); None: the eager loop.

    Returns:
        A :class:`GenerationResult` whose ``latency_token`` is the prefix's last position,
        ``latency_tokens`` None, ``prefill_ms`` the rest of the prefill and the first token.

    Raises:
        ValueError: a prefix without a block cache, a plan that disagrees with the blocks the prefix
            ran, invalid lengths, a decoder of another model.
    """
    plan = lm.check_plan(top_k_per_block)
    p = prefix.next_block
    if not 1 <= p <= lm.n_layers:
        raise ValueError(f"the prefix state stopped after block {p - 1}; continuing needs 1 <= p <= {lm.n_layers}")
    if not isinstance(prefix.cache, BlockKVCache):
        raise ValueError("the prefix state has no BlockKVCache (begin the prefill with cache=BlockKVCache(...))")
    if prefix.cache.blocks != tuple(b for b in range(p) if plan[b] > 0):
        raise ValueError(
            f"the prefix cached blocks {prefix.cache.blocks}, the plan runs {tuple(b for b in range(p) if plan[b] > 0)} "
            f"before p={p}"
        )
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if decoder is not None and decoder.lm is not lm:
        raise ValueError("the decoder wraps a different language model")
    timer = timer if timer is not None else PhaseTimer(prefix.hidden.device)
    rows, seq = prefix.attention_mask.shape
    eos_at = forced_eos(eos_at, rows, prefix.hidden.device)
    cache: BlockKVCache | StaticKVCache
    if decoder is None:
        cache = prefix.cache.copy(reserve=max_new_tokens)
    else:
        cache = decoder.prepare(rows, plan, positions=seq + max_new_tokens - 1)
        for b in prefix.cache.blocks:
            cache.update(*prefix.cache.get(b), b)
    state = dataclasses.replace(prefix, cache=cache)  # type: ignore[arg-type]  # same protocol
    t_prefill, t_decode = timer.get("prefill"), timer.get("decode")
    with timer.phase("prefill"):
        lm.advance(state, lm.n_layers, plan)
        logits = lm.logits(state)
        if decoder is not None:
            cache.start_decode(state.attention_mask)  # type: ignore[union-attr]
        next_tok = pick_tokens(logits, 1, eos_at, eos_token_id)
    first_logits = logits.float()
    generated, steps = _decode(
        lm, state, cache, plan, next_tok, decoder=decoder, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        max_new_tokens=max_new_tokens, timer=timer, eos_at=eos_at,
    )
    return _result(generated, eos_token_id, first_logits, prefix.hidden[:, -1].float(), None,
                   timer.get("prefill") - t_prefill, timer.get("decode") - t_decode, steps)


def _decode(
    lm: MolmoeLanguageModel,
    state: LMState | None,
    cache: "BlockKVCache | StaticKVCache",
    plan: Sequence[int],
    first: torch.Tensor,
    *,
    decoder: "GraphDecoder | None",
    eos_token_id: int,
    pad_token_id: int,
    max_new_tokens: int,
    timer: PhaseTimer,
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    eos_at: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], int]:
    """The decode loop after the first token ``first`` (B,): each step feeds every row's last token
    (``pad`` once the row ended) through the decoder, or eagerly from ``state`` (after the
    prefill), or through ``step(feed, ended) -> (B, V) logits`` when given (the shared-prefix
    builder's per-row plans; ``ended`` (B,) bool says which rows ended, whose logits are not
    used); stops when every row ended or ``max_new_tokens`` tokens exist. Tokens are picked by
    :func:`pick_tokens` (``eos_at``: (B,) forced lengths, or None). Timed as "decode".
    Returns (per-step (B,) tokens incl. ``first``, decode steps)."""

    def plan_step(feed: torch.Tensor, ended: torch.Tensor) -> torch.Tensor:
        nonlocal state
        if decoder is not None:
            return decoder.step(cache, feed)  # type: ignore[arg-type]
        assert state is not None
        state = lm.begin_decode(state, feed)
        lm.advance(state, lm.n_layers, plan)
        return lm.logits(state)

    step = plan_step if step is None else step

    next_tok = first
    generated = [next_tok]
    ended = next_tok == eos_token_id
    steps = 0
    with timer.phase("decode"):
        while len(generated) < max_new_tokens and not bool(ended.all()):
            logits = step(torch.where(ended, torch.full_like(next_tok, pad_token_id), next_tok), ended)
            next_tok = pick_tokens(logits, len(generated) + 1, eos_at, eos_token_id)
            generated.append(next_tok)
            ended = ended | (next_tok == eos_token_id)
            steps += 1
    return generated, steps


def _result(
    generated: list[torch.Tensor], eos_token_id: int, first_logits: torch.Tensor, latency_token: torch.Tensor,
    latency_tokens: torch.Tensor | None, prefill_ms: float, decode_ms: float, steps: int,
) -> GenerationResult:
    ids = torch.stack(generated, dim=1).tolist()
    tokens: list[list[int]] = []
    ended_with_eos: list[bool] = []
    for row in ids:
        if eos_token_id in row:
            row = row[: row.index(eos_token_id) + 1]
            ended_with_eos.append(True)
        else:
            ended_with_eos.append(False)
        tokens.append(row)
    return GenerationResult(
        tokens=tokens,
        ended_with_eos=ended_with_eos,
        first_logits=first_logits,
        latency_token=latency_token,
        latency_tokens=latency_tokens,
        prefill_ms=prefill_ms,
        decode_ms=decode_ms,
        decode_steps=steps,
    )
