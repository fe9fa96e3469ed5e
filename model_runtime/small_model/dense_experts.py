"""Routed experts computed densely, for training a small MoE fast.

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
from typing import Iterator

import torch
from torch import nn


def dense_experts_forward(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                          top_k_weights: torch.Tensor) -> torch.Tensor:
    """(N, D) tokens, (N, k) chosen experts and their weights → (N, D), for an ``OlmoeExperts``."""
    n, d = hidden_states.shape
    e, two_f, _ = self.gate_up_proj.shape
    f = two_f // 2
    weights = hidden_states.new_zeros(n, e).scatter(1, top_k_index, top_k_weights.to(hidden_states.dtype))
    gate_up = (hidden_states @ self.gate_up_proj.reshape(e * two_f, d).t()).view(n, e, two_f)
    gate, up = gate_up[..., :f], gate_up[..., f:]
    inner = self.act_fn(gate) * up * weights[..., None]  # (N, E, F)
    down = self.down_proj.permute(0, 2, 1).reshape(e * f, d)  # (E·F, D)
    return inner.reshape(n, e * f) @ down


@contextmanager
def dense_experts(lm: nn.Module) -> Iterator[None]:
    """Within the block, every ``OlmoeExperts`` of ``lm`` computes densely (see the module docstring)."""
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
