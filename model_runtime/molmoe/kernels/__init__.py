"""The fast path's Triton kernels, each op with a torch reference of the same signature.

Modules, by concern:

- :mod:`.common`: Triton's availability, the backends (``"triton"`` / ``"torch"``), block sizes;
- :mod:`.norm_rope`: RMSNorm (with the residual add), QK-norm + RoPE (+ KV-cache write);
- :mod:`.attention`: split-K decode attention and its reduction (and a form with the QK-norm + RoPE in it);
- :mod:`.router`: router softmax + top-k (and forms with the router GEMM in the same kernel);
- :mod:`.projections`: the decode step's dense projections as one Triton kernel (``FusedLM(decode_gemv="triton")``);
- :mod:`.decode_moe`: the decode step's routed experts (gate/up + SiLU·up, down, weighted
  combine + residual + next RMSNorm), parallel over (token, expert) pairs;
- :mod:`.prefill_moe`: the prefill's routed experts as grouped GEMMs over expert-sorted pairs
  (sort, gate/up + activation, down, gather-sum back to token order);
- :mod:`.persistent_decode`: a whole batch-1 decode token as one persistent kernel (phases
  separated by grid barriers), the alternative to the 11 kernels per block below.

The decode step's Triton kernels take ``pdl=True`` (:func:`.common.pdl_options`): launched for
programmatic dependent launch, each is scheduled while the kernel before it drains and waits on
the GPU for that kernel's writes, which shortens the gaps between the 11 kernels of a block inside
the captured graph (``FusedLM(pdl=True)``; Hopper and later, where it is the default, with the
projections as :func:`.projections.gemv` and the router's top-k taken by the experts' gate/up kernel,
:func:`.decode_moe.moe_gate_up_act_routed`: 10 kernels a block). With
``FusedLM(decode_epilogues="last_program", decode_router="splitk")`` four of a block's reductions run in
the last program of the kernel before them (:func:`.common.arrive_last`): the attention's merge, the
output projection's residual add + RMSNorm, the experts' weighted sum and (``splitk``) the router's
top-k: 7 kernels a block. With ``FusedLM(decode_epilogues="on_load")`` no kernel synchronises: each residual add
runs in the kernel that produces its term (:func:`.projections.gemv_on_load`, :func:`.decode_moe.moe_down_sum`) and
each RMSNorm in the kernel that reads its output (:func:`.router.router_partials_norm`, the next ``gemv_on_load``),
the sum of squares passed between them as partials (:func:`.norm_rope.sq_partials`): 8 kernels a block.

The old module names :mod:`model_runtime.molmoe.decode_kernels` and
:mod:`model_runtime.molmoe.prefill_moe` re-export these ops. Every public op is importable from
this package too.

The decode path
---------------
A batch-1 decode token of MolmoE-1B reads ~2.3 GB (attention weights, 8 routed experts per block,
LM head, KV cache) and does almost no arithmetic, so the step is bound by bytes and by the number
of kernels (each costs ~1-2 us even inside a CUDA graph). transformers' block runs ~70 kernels
per block; these ops cut it to 11: RMSNorm, QKV GEMV (cuBLAS), QK-norm + RoPE + KV-cache write,
split-K attention + its reduction, output GEMV (cuBLAS), residual add + RMSNorm, router GEMV
(cuBLAS), softmax + top-k, gate/up GEMV + SiLU·up over the routed experts, down GEMV per routed
expert, weighted sum + residual + the next block's input RMSNorm. The two expert kernels are
parallel over (token, expert) pairs and output tiles, which is what lets them stream the
experts' weights near the copy rate (a first version that looped over the k experts inside each
program reached ~0.6 TB/s on the down projection).

Every op has two backends with one signature:

- ``"triton"``: the kernels below (CUDA; also run by Triton's interpreter on CPU tensors when
  ``TRITON_INTERPRET=1`` is set before Triton is imported, which is how the CPU tests check them);
- ``"torch"``: plain torch, the reference and the CPU path.

Numerics follow transformers' bf16 modules where it is cheap to (RMSNorm rounds the normalised
value to the input dtype before the weight multiply; router softmax in float32 over all experts,
top-k, weights cast to the input dtype; expert outputs rounded before the weighted sum);
accumulation is float32 throughout, so results differ from the eager path only by summation order.

Shapes: T tokens (decode: one per batch row, T = B), D ``d_model``, H query heads, H_kv key/value
heads, Dh head dim, L cache positions, E experts, k top-k, I expert FFN width.
"""

from .attention import attention_scale, decode_attention, qk_norm_rope_attention
from .common import (ARRIVAL_COUNTERS, ATTN_TILES, BACKENDS, HAVE_TRITON, TUNING, AttnTile, Backend, arrival_counters,
                     attn_tile, check_backend, check_pdl, default_backend, pdl_available, triton_interpreting)
from .decode_moe import moe_combine, moe_down, moe_down_combine, moe_down_sum, moe_gate_up_act, moe_gate_up_act_routed
from .projections import BLOCK_M as GEMV_ROWS
from .projections import gemv, gemv_add_rms_norm, gemv_on_load
from .norm_rope import SQ_COLS, add_rms_norm, qk_norm_rope, qk_norm_rope_store, rms_norm, rope_cos_sin, sq_partials
from .prefill_moe import (
    FLOAT32_TILES,
    INTERPRETER_TILES,
    ExpertOrder,
    expert_outputs,
    gather_sum,
    gather_sum_norm,
    grouped_down,
    grouped_gate_up_act,
    routed_experts_grouped,
    silu_mul_scale,
    sort_by_expert,
)
from .persistent_decode import PersistentDecodeStep
from .router import router_gemm_topk, router_partials, router_partials_norm, router_splitk_topk, router_topk

__all__ = [
    "ARRIVAL_COUNTERS", "ATTN_TILES", "AttnTile", "BACKENDS", "FLOAT32_TILES", "GEMV_ROWS", "HAVE_TRITON", "INTERPRETER_TILES", "SQ_COLS", "TUNING",
    "Backend", "ExpertOrder", "PersistentDecodeStep", "add_rms_norm", "arrival_counters", "attention_scale", "attn_tile",
    "check_backend", "check_pdl", "decode_attention", "default_backend", "expert_outputs",
    "gather_sum", "gather_sum_norm", "gemv", "gemv_add_rms_norm", "gemv_on_load", "grouped_down", "grouped_gate_up_act",
    "moe_combine", "moe_down", "moe_down_combine", "moe_down_sum", "moe_gate_up_act", "moe_gate_up_act_routed", "pdl_available", "qk_norm_rope",
    "qk_norm_rope_attention", "qk_norm_rope_store",
    "rms_norm", "rope_cos_sin", "routed_experts_grouped", "router_gemm_topk", "router_partials", "router_partials_norm", "router_splitk_topk",
    "router_topk",
    "silu_mul_scale", "sort_by_expert", "sq_partials", "triton_interpreting",
]
