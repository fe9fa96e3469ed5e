"""The fused decode path's operations, re-exported from :mod:`model_runtime.molmoe.kernels`.

The kernels live in the ``kernels`` package by concern (``common``, ``norm_rope``,
``attention``, ``router``, ``decode_moe``, ``prefill_moe``); this module keeps the old name
importable (``from model_runtime.molmoe import decode_kernels as dk``). The names are the same
objects: mutating ``dk.TUNING`` tunes the kernels.
"""

from .kernels.attention import attention_scale, decode_attention
from .kernels.common import BACKENDS, HAVE_TRITON, TUNING, Backend, check_backend, default_backend, triton_interpreting
from .kernels.decode_moe import moe_combine, moe_down, moe_gate_up_act
from .kernels.norm_rope import add_rms_norm, qk_norm_rope, qk_norm_rope_store, rms_norm, rope_cos_sin
from .kernels.prefill_moe import gather_sum, silu_mul_scale
from .kernels.router import router_topk

__all__ = [
    "BACKENDS", "HAVE_TRITON", "TUNING", "Backend", "add_rms_norm", "attention_scale", "check_backend",
    "decode_attention", "default_backend", "gather_sum", "moe_combine", "moe_down", "moe_gate_up_act",
    "qk_norm_rope", "qk_norm_rope_store", "rms_norm", "rope_cos_sin", "router_topk", "silu_mul_scale",
    "triton_interpreting",
]
