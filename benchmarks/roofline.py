"""Byte and FLOP floors of the language model's prefill, decode and batched generation.

A floor is the least time a piece of work can take on a device: the bytes it must move at the
device's copy rate, or its arithmetic at the device's matmul rate, whichever is longer. The fast
path's bars (issue 15) are stated as ratios to these floors, measured against ceilings of the same
run (``bench_fast_path.ceilings``: a device-to-device copy and a bf16 8192³ matmul).

What counts (weights in the model's dtype, per *active* block of a plan):

- **bytes** — attention (Q/K/V/O) and router weights; the experts the step routes to (one token:
  its k experts; ``n`` routed tokens: the expected number of distinct experts under uniform
  routing, ``E·(1 − (1 − k/E)ⁿ)``, i.e. all of them for a prefill of any length); the keys and
  values read (decode) or written (prefill); the LM head once. Activations are left out: they are
  a few MB against ~2.5 GB (decode) and ~13 GB (prefill) of weights at the MolmoE-1B shape.
- **FLOPs** — 2 per multiply-add of the projections, the router and the k routed experts for
  every token, causal attention (QKᵀ and PV over the keys each query sees), and the LM head for
  the last position only (what ``greedy_generate`` computes).

Everything here is arithmetic on the model's shape (no torch), so the tests check it by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class LMShape:
    """The sizes the floors depend on: ``d`` hidden, ``i`` expert width, ``e`` experts, ``h`` query
    heads, ``hkv`` key/value heads, ``hd`` head width, ``vocab`` LM-head rows, ``elem`` bytes per weight."""

    d: int
    i: int
    e: int
    h: int
    hkv: int
    hd: int
    vocab: int
    elem: int

    @classmethod
    def of(cls, lm: object) -> "LMShape":
        """The shape of a :class:`~model_runtime.molmoe.language_model.MolmoeLanguageModel`."""
        cfg = lm.config  # type: ignore[attr-defined]
        d = int(cfg.hidden_size)
        hd = int(getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads)
        return cls(d=d, i=int(cfg.intermediate_size), e=int(cfg.num_experts), h=int(cfg.num_attention_heads),
                   hkv=int(cfg.num_key_value_heads), hd=hd, vocab=int(lm.n_logits),  # type: ignore[attr-defined]
                   elem=int(lm.lm_head.weight.element_size()))  # type: ignore[attr-defined]

    @property
    def attn_params(self) -> int:
        """Q/K/V and output projection weights of one block."""
        return (self.h + 2 * self.hkv) * self.hd * self.d + self.d * self.h * self.hd

    @property
    def expert_params(self) -> int:
        """Gate, up and down weights of one expert."""
        return 3 * self.d * self.i

    def distinct_experts(self, top_k: int, routed_tokens: int) -> float:
        """Expected distinct experts of a block that ``routed_tokens`` tokens reach at top-``top_k``."""
        return self.e * (1 - (1 - top_k / self.e) ** routed_tokens)


@dataclass(frozen=True)
class Floor:
    """Bytes and FLOPs of a piece of work, and its floor in ms at given ceilings."""

    bytes: float
    flops: float

    def __add__(self, other: "Floor") -> "Floor":
        return Floor(self.bytes + other.bytes, self.flops + other.flops)

    def byte_ms(self, copy_tbps: float) -> float:
        return self.bytes / (copy_tbps * 1e12) * 1e3

    def flop_ms(self, matmul_tflops: float) -> float:
        return self.flops / (matmul_tflops * 1e12) * 1e3

    def ms(self, copy_tbps: float, matmul_tflops: float) -> float:
        """The floor: the longer of the byte time and the FLOP time."""
        return max(self.byte_ms(copy_tbps), self.flop_ms(matmul_tflops))

    def report(self, copy_tbps: float | None, matmul_tflops: float | None) -> dict[str, float]:
        out = {"GB": self.bytes / 1e9, "TFLOP": self.flops / 1e12}
        if copy_tbps and matmul_tflops:
            out.update(byte_ms=self.byte_ms(copy_tbps), flop_ms=self.flop_ms(matmul_tflops),
                       floor_ms=self.ms(copy_tbps, matmul_tflops))
        return out


def _active(plan: Sequence[int]) -> list[int]:
    return [int(k) for k in plan if int(k) > 0]


def decode_floor(s: LMShape, plan: Sequence[int], context: int, batch: int = 1) -> Floor:
    """One decode step of ``batch`` rows with ``context`` cached positions each."""
    nbytes = s.vocab * s.d * s.elem
    flops = 2 * batch * s.vocab * s.d
    for k in _active(plan):
        nbytes += (s.attn_params + s.e * s.d + s.distinct_experts(k, batch) * s.expert_params) * s.elem
        nbytes += 2 * batch * s.hkv * s.hd * context * s.elem
        flops += 2 * batch * (s.attn_params + s.e * s.d + k * s.expert_params)
        flops += 2 * 2 * batch * s.h * s.hd * (context + 1)
    return Floor(nbytes, flops)


def prefill_floor(s: LMShape, plan: Sequence[int], tokens: int, batch: int = 1) -> Floor:
    """A prefill of ``batch`` prompts of ``tokens`` tokens each, with the first token's logits."""
    n = batch * tokens
    nbytes = s.vocab * s.d * s.elem
    flops = 2 * batch * s.vocab * s.d
    # causal attention: query t sees t + 1 keys, for QKᵀ and for PV
    seen = batch * tokens * (tokens + 1) // 2
    for k in _active(plan):
        nbytes += (s.attn_params + s.e * s.d + s.distinct_experts(k, n) * s.expert_params) * s.elem
        nbytes += 2 * n * s.hkv * s.hd * s.elem
        flops += 2 * n * (s.attn_params + s.e * s.d + k * s.expert_params) + 2 * 2 * s.h * s.hd * seen
    return Floor(nbytes, flops)


def expert_floor(s: LMShape, top_k: int, tokens: int) -> Floor:
    """The routed experts of one block for ``tokens`` tokens (the prefill's grouped GEMMs): every
    expert reached is read once; 2·k·3·D·I FLOPs per token."""
    return Floor(s.distinct_experts(top_k, tokens) * s.expert_params * s.elem, 2 * tokens * top_k * s.expert_params)


def generate_floor(s: LMShape, plan: Sequence[int], tokens: int, new_tokens: int, batch: int = 1,
                   copy_tbps: float | None = None, matmul_tflops: float | None = None) -> dict[str, float]:
    """``greedy_generate`` of ``batch`` prompts: the prefill (first token) and ``new_tokens − 1``
    decode steps over a growing context. With ceilings, the floor in ms is the sum of each phase's
    floor (a phase is bound by bytes or by FLOPs, not both at once)."""
    pre = prefill_floor(s, plan, tokens, batch)
    steps = [decode_floor(s, plan, tokens + j, batch) for j in range(new_tokens - 1)]
    total = pre
    for st in steps:
        total = total + st
    out = {"GB": total.bytes / 1e9, "TFLOP": total.flops / 1e12}
    if copy_tbps and matmul_tflops:
        out["prefill_floor_ms"] = pre.ms(copy_tbps, matmul_tflops)
        out["decode_floor_ms"] = sum(st.ms(copy_tbps, matmul_tflops) for st in steps)
        out["floor_ms"] = out["prefill_floor_ms"] + out["decode_floor_ms"]
    return out
