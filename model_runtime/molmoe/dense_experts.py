"""Routed experts computed densely: the fast form for a *small* MoE (training, batched decode).

A routed MoE layer outputs ``Σ_{e ∈ top-k(x)} w_e(x) · expert_e(x)``. For a small model the
gather/sort/grouped-GEMM machinery of the routed form costs more kernel launches than the
arithmetic it saves, so training computes every expert for every token as two large GEMMs and
multiplies by a weight matrix that is zero outside each token's top-k: the same function and the
same gradients (an expert a token did not choose gets weight 0, hence no gradient from it; the
router's gradient flows through the chosen weights exactly as in the routed form). Inference keeps
transformers' routed implementations.
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


def dense_moe(hidden_states: torch.Tensor, gate_up_proj: torch.Tensor, down_proj: torch.Tensor,
              top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
    """The dense form on plain tensors: (N, D) tokens, (E, 2F, D) gate/up and (E, D, F) down
    weights, (N, k) chosen experts and weights → (N, D), with SiLU gating (OLMoE's)."""
    n, d = hidden_states.shape
    e, two_f, _ = gate_up_proj.shape
    f = two_f // 2
    weights = hidden_states.new_zeros(n, e).scatter(1, top_k_index, top_k_weights.to(hidden_states.dtype))
    gate_up = (hidden_states @ gate_up_proj.reshape(e * two_f, d).t()).view(n, e, two_f)
    gate, up = gate_up[..., :f], gate_up[..., f:]
    inner = F.silu(gate) * up * weights[..., None]  # (N, E, F)
    down = down_proj.permute(0, 2, 1).reshape(e * f, d)  # (E·F, D)
    return inner.reshape(n, e * f) @ down


#: :func:`dense_moe` through ``torch.compile`` (set by :func:`compile_dense_moe`): its elementwise
#: work on (N, E, F) activations, eight times the routed form's, is what a training step spends
#: most of its GPU time on, and fusion removes most of those passes.
_compiled_moe: Callable[..., torch.Tensor] | None = None


def compile_dense_moe() -> None:
    """Route every dense expert forward through one ``torch.compile``d :func:`dense_moe` (dynamic
    shapes: token counts differ from batch to batch)."""
    global _compiled_moe
    if _compiled_moe is None:
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        _compiled_moe = torch.compile(dense_moe, dynamic=True)


def dense_experts_forward(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                          top_k_weights: torch.Tensor) -> torch.Tensor:
    """(N, D) tokens, (N, k) chosen experts and their weights → (N, D), for an ``OlmoeExperts``."""
    row_k = getattr(self, "row_top_k", None)
    if row_k is not None:  # per-token top-k <= the router's: keep each token's first row_k (sorted) choices
        rank = torch.arange(top_k_weights.shape[-1], device=top_k_weights.device)
        top_k_weights = top_k_weights * (rank[None, :] < row_k[:, None]).to(top_k_weights.dtype)
    fn = _compiled_moe if _compiled_moe is not None and hidden_states.requires_grad else dense_moe
    return fn(hidden_states, self.gate_up_proj, self.down_proj, top_k_index, top_k_weights)


def set_row_top_k(experts: nn.Module, row_top_k: torch.Tensor | None) -> None:
    """Give each token its own top-k (≤ the router's ``top_k``; 0 = no expert) for the next dense
    forward of ``experts``: the router's top-k are sorted, so a token's top-k' ⊂ top-k are its
    first k' choices (softmax over all experts first, so the weights are unchanged)."""
    experts.row_top_k = row_top_k


@contextmanager
def dense_experts(lm: nn.Module) -> Iterator[None]:
    """Within the block, every ``OlmoeExperts`` of ``lm`` computes densely (see the module docstring)."""
    for layer in lm.backbone.layers:  # checked before anything is patched
        act = layer.mlp.experts.act_fn
        if "silu" not in type(act).__name__.lower() and getattr(act, "__name__", "") != "silu":
            raise ValueError(f"dense experts assume SiLU gating (OLMoE's), got {act}")
    patched = []
    for layer in lm.backbone.layers:
        experts = layer.mlp.experts
        experts.forward = types.MethodType(dense_experts_forward, experts)
        patched.append(experts)
    try:
        yield
    finally:
        for experts in patched:
            del experts.forward
            experts.__dict__.pop("row_top_k", None)
