"""The fast path of the language model: packed weights and fused block forwards (prefill and decode).

:class:`FusedLM` holds, per block, the weights the fused forwards read (Q/K/V packed into one
matrix whose rows the original ``q_proj``/``k_proj``/``v_proj`` parameters become views of, so
packing costs no memory and the eager modules keep working) and runs:

- :meth:`FusedLM.prefill_block`: one block over the S tokens of a staged forward
  (:meth:`MolmoeLanguageModel.advance` calls it when the fast path is on): fused RMSNorms, one
  QKV GEMM, FlashAttention-style SDPA (``is_causal`` when the prompt has no padding and no past,
  the padding mask otherwise), router softmax + top-k, and the routed experts as grouped GEMMs over
  expert-sorted tokens (:func:`routed_experts`; on CUDA the Triton kernels of
  :mod:`~model_runtime.molmoe.kernels.prefill_moe`) — no per-expert Python loop, no host sync; keys and
  values go straight into a static cache's slots (:meth:`StaticKVCache.append_slots`);
- :meth:`FusedLM.decode_step`: one token for every row of a
  :class:`~model_runtime.molmoe.static_decode.StaticKVCache` with fixed shapes and no host sync,
  11 kernels per block with ``decode_router="split"`` (10 with ``"in_experts"``, the default where PDL runs; 8
  with ``decode_epilogues="last_program"``, 7 with ``decode_router="splitk"`` too, one fewer again with
  ``decode_qk_norm="in_attention"``; :mod:`~model_runtime.molmoe.kernels`), which
  :class:`~model_runtime.molmoe.static_decode.GraphDecoder` captures in a CUDA graph.

Both run the ``"triton"`` ops on CUDA and their torch references on CPU (the CPU tests check both
against transformers' blocks). Numerics equal the eager path up to summation order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from . import kernels as dk
from .kernels.prefill_moe import expert_outputs, sort_by_expert

if TYPE_CHECKING:  # pragma: no cover
    from .language_model import BlockKVCache, LMState, MolmoeLanguageModel
    from .static_decode import StaticKVCache

#: routed-expert forms without data-dependent shapes
ROUTED_FORMS: tuple[str, ...] = ("grouped_mm", "gather", "sorted_gemm", "sorted_tma")
#: the decode step's routed experts: GEMVs parallel over (row, expert) pairs, or the prefill's
#: grouped GEMMs over the pairs sorted by expert (each expert's weights read once per step however
#: many rows route to it, which only a batch can gain from)
DECODE_EXPERT_FORMS: tuple[str, ...] = ("pairs", "sorted")
#: The decode step's dense projections: torch's matmul (cuBLAS on a GPU; the default where programmatic dependent
#: launch does not run) or the Triton GEMV kernel, which takes part in it (``pdl``), its first weight tile loaded
#: before the wait (``triton``) or its loop pipelined over several tiles (``triton_staged``; the default with ``pdl``),
#: also with its first weight tile before the wait (``triton_staged_early``)
DECODE_GEMV_FORMS: tuple[str, ...] = ("cublas", "triton", "triton_staged", "triton_staged_early")
#: The decode step's router: its projection (as ``decode_gemv`` says) then the top-k kernel (``split``), both
#: in one kernel (``fused``: :func:`~model_runtime.molmoe.kernels.router.router_gemm_topk`, one program per tile
#: of rows), or both in one kernel whose projection is split over the hidden columns and whose last program
#: takes the top-k (``splitk``: :func:`~model_runtime.molmoe.kernels.router.router_splitk_topk`), or the projection
#: split over the hidden columns and the top-k taken by every program of the experts' gate/up kernel itself
#: (``in_experts``: :func:`~model_runtime.molmoe.kernels.decode_moe.moe_gate_up_act_routed`, no synchronisation; with
#: the pair experts; the default with ``pdl``, ``split`` otherwise). The last two serve decode batches of up to 16
#: rows; larger ones take ``split``.
DECODE_ROUTER_FORMS: tuple[str, ...] = ("split", "fused", "splitk", "in_experts")
#: hidden columns per step of the fused router at decode (a row's 64 router logits in one program)
DECODE_ROUTER_BLOCK_D = 128
#: Where the decode step's reductions run: each in its own kernel (the default), or in the last program of
#: the kernel before it to finish (:func:`~model_runtime.molmoe.kernels.common.arrive_last`; decode
#: batches of up to 16 rows): the attention's merge of its splits, the output projection's residual add +
#: RMSNorm (with the projection as the Triton GEMV) and the experts' weighted sum + the next norm, 8 kernels
#: a block instead of 11 (the router's top-k moves the same way with ``decode_router="splitk"``); or, with no
#: synchronisation (``on_load``; with ``decode_router="in_experts"``, decode batches of up to 16 rows), the residual
#: adds in the epilogues of the kernels that produce them and each RMSNorm in the kernels that read its input:
#: the output projection adds the residual (:func:`~model_runtime.molmoe.kernels.projections.gemv_on_load`), the
#: router's projection norms it as it loads it (:func:`~model_runtime.molmoe.kernels.router.router_partials_norm`),
#: the down projection sums the row's experts and adds the residual in each output tile
#: (:func:`~model_runtime.molmoe.kernels.decode_moe.moe_down_sum`) and the next Q/K/V projection norms as it loads;
#: the norms' sums of squares travel as partials (:func:`~model_runtime.molmoe.kernels.norm_rope.sq_partials`).
#: 8 kernels a block. ``on_load_attention`` does the first two only (the experts' down and combine kernels as in
#: ``kernels``): 9.
DECODE_EPILOGUE_FORMS: tuple[str, ...] = ("kernels", "last_program", "on_load", "on_load_attention")
#: Where the decode step's QK-norm + RoPE + KV-cache write runs: its own kernel between the QKV projection and the
#: attention (the default), or in the attention's split kernel (``in_attention``:
#: :func:`~model_runtime.molmoe.kernels.attention.qk_norm_rope_attention`, one kernel fewer a block; each split
#: recomputes its row's norm, a 4 KB read)
DECODE_QK_NORM_FORMS: tuple[str, ...] = ("kernel", "in_attention")
#: Whether the decode step's dense projections (the Triton GEMV, with ``pdl``) ask for their weight rows in L2 before
#: they wait for the kernel before them (:func:`~model_runtime.molmoe.kernels.common.prefetch_l2`): ``none`` (the
#: default), ``weights``, or ``weights_early``, where the kernels before the Q/K/V and output projections (the
#: experts' combine and the attention's merge) also let them launch before they wait themselves
#: (:func:`~model_runtime.molmoe.kernels.common.pdl_enter`'s ``RELEASE_FIRST``), so the prefetch starts a kernel sooner. The
#: projections' weights do not depend on the step; the kernels before them are small and latency-bound, and leave
#: the memory system idle. Measured slower on an H100 all the same (6-7 % and 8-11 % a token; benchmarks/RESULTS.md,
#: "The router's top-k in the experts' kernel, the default decode form"), so opt-in, for re-timing on other GPUs.
#: ``kv`` is another read ahead: the attention's split kernel loads the cache's past keys and values (all but the new
#: token's, which the kernel before writes) before its PDL wait (:func:`~model_runtime.molmoe.kernels.attention.decode_attention`'s
#: ``kv_early``), into registers, not L2. Its split kernel gets faster, but a whole step gets slower on an H100, more so for
#: a batch (benchmarks/RESULTS.md, "The attention's cache loaded before its wait, timed"), so it is opt-in too.
DECODE_PREFETCH_FORMS: tuple[str, ...] = ("none", "weights", "weights_early", "kv")


def default_routed_form(device: torch.device | str, dtype: torch.dtype = torch.bfloat16) -> str:
    """``sorted_gemm`` on CUDA in bf16/fp16 with Triton (the faster prefill; figures in
    benchmarks/RESULTS.md, "The fast path"), ``grouped_mm`` on CUDA in bf16 without Triton, ``gather`` elsewhere (torch's CUDA grouped GEMM is a bf16 kernel; other dtypes take a
    fallback with host copies, which a CUDA graph cannot capture)."""
    if torch.device(device).type != "cuda":
        return "gather"
    if dk.HAVE_TRITON and dtype in (torch.bfloat16, torch.float16):
        return "sorted_gemm"
    return "grouped_mm" if dtype == torch.bfloat16 else "gather"


def _grouped_mm(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """(M, Din) x (E, Din, Dout) over expert groups ending at ``offs`` (E,) int32 → (M, Dout)."""
    fn = getattr(torch.nn.functional, "grouped_mm", None) or torch._grouped_mm
    return fn(x, w, offs=offs)


def routed_experts(
    h: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    idx: torch.Tensor,
    weights: torch.Tensor,
    form: str,
    residual: torch.Tensor | None = None,
    backend: str = "torch",
    next_norm: tuple[torch.Tensor, float] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """(residual +) Σ_j weights[:, j] · expert_{idx[:, j]}(h) for (T, D) tokens, fixed shapes (no host sync).

    Args:
        h: (T, D); gate_up: (E, 2I, D); down: (E, D, I); idx: (T, k) int; weights: (T, k) in h's dtype.
        form: ``grouped_mm`` (the T·k token-expert pairs sorted by expert, per-expert counts from a
            ``scatter_add`` into a fixed (E,) vector, gate/up and down as torch's grouped GEMMs),
            ``sorted_gemm`` (the same in four kernels of :mod:`~model_runtime.molmoe.kernels.prefill_moe`:
            sort, gate/up GEMM with the token gather and SiLU·up·weight fused, down GEMM,
            gather-sum), ``sorted_tma`` (the same with the GEMMs' weight tiles fetched by TMA, Hopper
            and later) or ``gather`` (the routed experts' weights gathered per token, batched
            matmuls; copies the weights, fine for tiny models and CPU).
        residual: (T, D) added to the result (fused into the last kernel of ``grouped_mm``).
        backend: ops around the grouped GEMMs (``triton``: one kernel for SiLU·up·weight, one for
            the gather back to token order + sum over k + residual).
        next_norm: (weight, eps) of the next block's input RMSNorm, applied to the result in the
            gather-sum's kernel (the sorted and ``grouped_mm`` forms; ``gather`` calls the norm).

    Returns:
        (T, D) in h's dtype; with ``next_norm``, (that, its RMSNorm).
    """
    if form not in ROUTED_FORMS:
        raise ValueError(f"unknown routed-expert form {form!r}; choose from {ROUTED_FORMS}")
    top_k = idx.shape[1]
    if form == "gather":
        idx = idx.long()
        g, u = torch.einsum("td,tkhd->tkh", h, gate_up[idx]).chunk(2, dim=-1)
        y = torch.einsum("tki,tkdi->tkd", nn.functional.silu(g) * u, down[idx])  # (T, k, D)
        out = (y * weights[..., None]).sum(dim=1)
        out = out if residual is None else residual + out
        return out if next_norm is None else (out, dk.rms_norm(out, next_norm[0], next_norm[1], backend))  # type: ignore[arg-type]
    if form == "grouped_mm":
        # the pairs in expert order through torch ops (sort_by_expert's reference: this form stays
        # the torch-grouped-GEMM baseline that sorted_gemm is measured against)
        order = sort_by_expert(idx.long(), weights, gate_up.shape[0], "torch")
        gu = _grouped_mm(h[order.src_token.long()], gate_up.transpose(1, 2), order.ends)
        # the routing weight scales the (linear) down projection's input: I instead of D columns
        act = dk.silu_mul_scale(gu, order.weight, backend)  # type: ignore[arg-type]
        y = _grouped_mm(act, down.transpose(1, 2), order.ends)  # (T·k, D), expert-sorted
    else:
        order, y = expert_outputs(h, gate_up, down, idx, weights, backend,  # type: ignore[arg-type]
                                  "tma" if form == "sorted_tma" else "pointer")
    # back to (token, rank) order with the inverse permutation: a gather and a sum over k, no
    # atomics (index_add_ on bf16 serialises on colliding rows)
    base = torch.zeros_like(h) if residual is None else residual
    if next_norm is None:
        return dk.gather_sum(y, order.inverse, top_k, base, backend)  # type: ignore[arg-type]
    return dk.gather_sum_norm(y, order.inverse, top_k, base, next_norm[0], next_norm[1], backend)  # type: ignore[arg-type]


@dataclass
class FusedBlockWeights:
    """The tensors one block's fused forwards read (views of the model's parameters).

    Shapes: qkv ((H + 2 H_kv) Dh, D), o (D, H Dh), ln_in / ln_post (D,), qk_norm (H Dh + H_kv Dh,)
    (the q and k RMSNorm weights concatenated: a copy, the one tensor that is not a view; a
    FusedLM built before the weights are loaded would keep stale norms), router (E, D),
    gate_up (E, 2I, D), down (E, D, I).
    """

    qkv: torch.Tensor
    o: torch.Tensor
    ln_in: torch.Tensor
    ln_post: torch.Tensor
    qk_norm: torch.Tensor
    router: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


def _pack_qkv(attn: nn.Module) -> torch.Tensor:
    """One (q;k;v) weight; the three projections' parameters become views of its rows."""
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        if proj.bias is not None:
            raise ValueError("the fused path supports attention projections without bias (OLMoE has none)")
    packed = getattr(attn, "_fused_qkv", None)
    q, k, v = attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight
    if packed is not None and q.data_ptr() == packed.data_ptr() and q.shape[0] + k.shape[0] + v.shape[0] == packed.shape[0]:
        return packed  # packed by an earlier FusedLM and still shared
    packed = torch.cat([q.detach(), k.detach(), v.detach()])
    nq, nk = q.shape[0], k.shape[0]
    q.data, k.data, v.data = packed[:nq], packed[nq : nq + nk], packed[nq + nk :]
    attn._fused_qkv = packed
    return packed


class FusedLM:
    """Packed weights and fused forwards of a :class:`MolmoeLanguageModel`.

    Args:
        lm: the model (its parameters are shared: Q/K/V become views of one packed matrix).
        backend: ``"triton"`` or ``"torch"`` for the decode ops (default: Triton on CUDA).
        routed_form: expert form of the prefill, see :func:`routed_experts` (default by device).
        decode_experts: the decode step's expert form, see :data:`DECODE_EXPERT_FORMS`.
        pdl: launch the decode step's Triton kernels for programmatic dependent launch
            (:func:`~model_runtime.molmoe.kernels.common.pdl_options`; CUDA, compute capability 9.0+,
            Triton backend). The kernels and their results are the same; only when each starts changes.
            Default (None): on wherever it can run (:func:`~model_runtime.molmoe.kernels.common.pdl_available`).
        decode_gemv: the decode step's Q/K/V, output and router projections, see
            :data:`DECODE_GEMV_FORMS`: ``"cublas"`` (torch's matmul) or ``"triton"``
            (:func:`~model_runtime.molmoe.kernels.projections.gemv`, which joins the ``pdl`` chain; batches of
            more than 16 rows keep the matmul), or ``"triton_staged"`` (the same GEMV with its loop pipelined
            over several tiles, ``gemv(staged=True)``; the output projection's other fused forms stay unstaged),
            or ``"triton_staged_early"`` (that, with the first weight tile loaded before the PDL wait,
            ``gemv(staged=True, early=True)``).
            Default (None): :func:`default_decode_gemv`, a Triton GEMV with ``pdl``, else ``"cublas"``: the two pay
            only together (3-5 % a decode token on an H100 and an H200, benchmarks/RESULTS.md, "The decode variants
            on one H100"), and apart each is slower than the plain launch of cuBLAS's GEMVs.
        decode_router: the decode step's router, see :data:`DECODE_ROUTER_FORMS`: ``"split"`` (the
            projection, then the top-k kernel), ``"fused"`` (both in one kernel), ``"splitk"`` (both in one
            kernel, the projection spread over programs, the top-k in the last) or ``"in_experts"`` (the
            projection spread over programs, the top-k in the gate/up kernel); in every form the logits
            are rounded to the model's dtype before the float32 softmax, as the router's linear layer returns them.
            Default (None): ``"in_experts"`` with ``pdl`` and the pair experts, else ``"split"`` (with PDL and the
            Triton GEMVs it was 2.9-5.5 % faster a decode token at the four corners on an H100, with the same tokens,
            benchmarks/RESULTS.md, "The router's top-k in the experts' kernel, the default decode form").
        decode_epilogues: see :data:`DECODE_EPILOGUE_FORMS`: ``"kernels"``, ``"last_program"``, ``"on_load"`` or
            ``"on_load_attention"`` (batches of up to 16 rows; larger batches take the separate kernels). The
            others run the output projection as the Triton GEMV whatever ``decode_gemv`` says; the two ``on_load``
            forms need ``decode_router="in_experts"`` and measured slower or no faster on an H100 (benchmarks/RESULTS.md,
            "Residual adds and norms moved into the kernels beside them").
        decode_qk_norm: see :data:`DECODE_QK_NORM_FORMS`: ``"kernel"`` or ``"in_attention"``.
        decode_prefetch: see :data:`DECODE_PREFETCH_FORMS`: ``"none"``, ``"weights"`` or ``"weights_early"`` (with
            ``pdl`` and ``decode_gemv="triton"``), or ``"kv"`` (with ``pdl``); results unchanged, only when the weights
            or the cache are read.
    """

    def __init__(self, lm: "MolmoeLanguageModel", *, backend: str | None = None, routed_form: str | None = None,
                 decode_experts: str = "pairs", pdl: bool | None = None, decode_gemv: str | None = None,
                 decode_router: str | None = None, decode_epilogues: str = "kernels",
                 decode_qk_norm: str = "kernel", decode_prefetch: str = "none") -> None:
        device = lm.lm_head.weight.device
        self.lm = lm
        self.backend = dk.check_backend(dk.default_backend(device) if backend is None else backend, device)
        self.routed_form = default_routed_form(device, lm.lm_head.weight.dtype) if routed_form is None else routed_form
        if self.routed_form not in ROUTED_FORMS:
            raise ValueError(f"unknown routed-expert form {self.routed_form!r}; choose from {ROUTED_FORMS}")
        if decode_experts not in DECODE_EXPERT_FORMS:
            raise ValueError(f"unknown decode expert form {decode_experts!r}; choose from {DECODE_EXPERT_FORMS}")
        self.decode_experts = decode_experts
        if pdl is None:
            pdl = self.backend == "triton" and dk.pdl_available(device)
        if pdl:
            if self.backend != "triton":
                raise ValueError("pdl=True launches the Triton kernels: it needs backend 'triton'")
            dk.check_pdl(device)
        self.pdl = bool(pdl)
        if decode_gemv is None:
            decode_gemv = default_decode_gemv(self.pdl, decode_prefetch)
        if decode_gemv not in DECODE_GEMV_FORMS:
            raise ValueError(f"unknown decode GEMV form {decode_gemv!r}; choose from {DECODE_GEMV_FORMS}")
        self.decode_gemv = decode_gemv
        if decode_router is None:
            decode_router = "in_experts" if self.pdl and decode_experts == "pairs" else "split"
        if decode_router not in DECODE_ROUTER_FORMS:
            raise ValueError(f"unknown decode router form {decode_router!r}; choose from {DECODE_ROUTER_FORMS}")
        if decode_router == "in_experts" and decode_experts != "pairs":
            raise ValueError("decode_router='in_experts' takes the top-k in the pair experts' kernel: it needs "
                             "decode_experts='pairs'")
        self.decode_router = decode_router
        if decode_epilogues not in DECODE_EPILOGUE_FORMS:
            raise ValueError(f"unknown decode epilogue form {decode_epilogues!r}; choose from {DECODE_EPILOGUE_FORMS}")
        if decode_epilogues.startswith("on_load") and decode_router != "in_experts":
            raise ValueError(f"decode_epilogues={decode_epilogues!r} norms the router's input in its projection's "
                             f"kernel: it needs decode_router='in_experts' (got {decode_router!r})")
        self.decode_epilogues = decode_epilogues
        if decode_qk_norm not in DECODE_QK_NORM_FORMS:
            raise ValueError(f"unknown decode QK-norm form {decode_qk_norm!r}; choose from {DECODE_QK_NORM_FORMS}")
        self.decode_qk_norm = decode_qk_norm
        if decode_prefetch not in DECODE_PREFETCH_FORMS:
            raise ValueError(f"unknown decode prefetch form {decode_prefetch!r}; choose from {DECODE_PREFETCH_FORMS}")
        if decode_prefetch == "kv" and not (self.pdl and decode_qk_norm == "kernel"):
            raise ValueError("decode_prefetch='kv' loads the cache in the attention's split kernel before its PDL wait: "
                             f"it needs pdl=True and decode_qk_norm='kernel' (got pdl={self.pdl}, "
                             f"decode_qk_norm={decode_qk_norm!r})")
        if decode_prefetch in ("weights", "weights_early") and not (self.pdl and self.decode_gemv == "triton"):
            raise ValueError(f"decode_prefetch={decode_prefetch!r} prefetches in the Triton GEMV before its PDL wait: it "
                             f"needs pdl=True and decode_gemv='triton' (got pdl={self.pdl}, decode_gemv={self.decode_gemv!r})")
        self.decode_prefetch = decode_prefetch
        # the last-arrival counters live with this object, outside any captured graph that uses them
        arrivals = decode_epilogues == "last_program" or decode_router == "splitk"
        self.counters = dk.arrival_counters(device) if arrivals and self.backend == "triton" else None
        cfg = lm.config
        self.n_heads = int(cfg.num_attention_heads)
        self.n_kv = int(cfg.num_key_value_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.eps = float(cfg.rms_norm_eps)
        self.norm_topk_prob = bool(cfg.norm_topk_prob)
        if getattr(cfg, "clip_qkv", None) is not None:
            raise ValueError("the fused path does not implement clip_qkv (MolmoE-1B has none)")
        rot = lm.backbone.rotary_emb
        self.inv_freq = rot.inv_freq.to(device=device, dtype=torch.float32)
        self.rope_scale = float(getattr(rot, "attention_scaling", 1.0))
        self.scaling = float(lm.backbone.layers[0].self_attn.scaling)
        self.blocks: list[FusedBlockWeights] = []
        for layer in lm.backbone.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.blocks.append(FusedBlockWeights(
                qkv=_pack_qkv(attn), o=attn.o_proj.weight, ln_in=layer.input_layernorm.weight,
                ln_post=layer.post_attention_layernorm.weight, qk_norm=torch.cat([attn.q_norm.weight.detach(), attn.k_norm.weight.detach()]),
                router=mlp.gate.weight, gate_up=mlp.experts.gate_up_proj, down=mlp.experts.down_proj,
            ))

    # ------------------------------------------------------------------ prefill
    def prefill_block(
        self, b: int, hidden: torch.Tensor, state: "LMState", cache: "BlockKVCache | StaticKVCache | None", top_k: int,
        *, normed: torch.Tensor | None = None, next_block: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Block ``b`` over (B, S, D) hidden states of a staged forward: (B, S, D) out, and with
        ``next_block`` that block's input RMSNorm of it (computed in the experts' last kernel),
        which the next call takes as ``normed`` instead of norming ``hidden`` itself.

        Keys/values go through ``cache.update`` (either cache type); ``state`` gives the mask,
        RoPE tables and the padding flag."""
        w, be = self.blocks[b], self.backend
        bsz, seq, dim = hidden.shape
        x = hidden.reshape(-1, dim)
        h = dk.rms_norm(x, w.ln_in, self.eps, be) if normed is None else normed.reshape(-1, dim)
        nq, nk = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        qkv = h @ w.qkv.T
        positions = state.position_ids.reshape(-1)
        # RoPE from the state's position ids (the same float32 tables transformers' rotary builds)
        if cache is not None and hasattr(cache, "append_slots"):  # static cache: keys/values written in place
            k_slots, v_slots, k, v = cache.append_slots(b, bsz, seq)
            q, _ = dk.qk_norm_rope(qkv, w.qk_norm, self.eps, positions, self.inv_freq, self.rope_scale, self.n_heads,
                                   self.n_kv, be, kv_out=(k_slots, v_slots))
        else:
            q, k = dk.qk_norm_rope(qkv, w.qk_norm, self.eps, positions, self.inv_freq, self.rope_scale, self.n_heads,
                                   self.n_kv, be)
            k = k.view(bsz, seq, self.n_kv, self.head_dim).transpose(1, 2)
            v = qkv[:, nq + nk :].reshape(bsz, seq, self.n_kv, self.head_dim).transpose(1, 2)
            if cache is not None:
                k, v = cache.update(k, v, b)
        q = q.view(bsz, seq, self.n_heads, self.head_dim).transpose(1, 2)
        if self.n_kv != self.n_heads:
            k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)
        if _causal_only(state):
            attn = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scaling)
        else:
            attn = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=state.mask, scale=self.scaling)
        o = attn.transpose(1, 2).reshape(bsz * seq, nq) @ w.o.T
        x, h2 = dk.add_rms_norm(x, o, w.ln_post, self.eps, be)
        # the router as a GEMM then the top-k kernel: the one-kernel form (kernels.router_gemm_topk)
        # measured slower in a prefill (benchmarks/RESULTS.md, "Issue 15 on one H100")
        weights, idx = dk.router_topk(h2 @ w.router.T, top_k, self.norm_topk_prob, be)
        if next_block is None:
            out = routed_experts(h2, w.gate_up, w.down, idx, weights, self.routed_form, residual=x, backend=be)
            return out.view(bsz, seq, dim), None
        out, h_next = routed_experts(h2, w.gate_up, w.down, idx, weights, self.routed_form, residual=x, backend=be,
                                     next_norm=(self.blocks[next_block].ln_in, self.eps))
        return out.view(bsz, seq, dim), h_next

    # ------------------------------------------------------------------ decode
    def decode_step(self, cache: "StaticKVCache", token_ids: torch.Tensor, top_k_per_block: Sequence[int]) -> torch.Tensor:
        """One decode token for all B cache rows: fixed shapes, no host sync, capturable.

        Writes keys/values at ``cache.slot``, marks it valid and advances it on the device (the
        caller advances ``cache.position``). Args: token_ids (B,) int64; the plan's active blocks
        must be the cache's. Returns (B, V) logits in the model's dtype."""
        plan = tuple(int(k) for k in top_k_per_block)
        active = tuple(b for b, k in enumerate(plan) if k > 0)
        if active != cache.blocks:
            raise ValueError(f"plan's active blocks {active} differ from the cache's {cache.blocks}")
        be, lm = self.backend, self.lm
        cache.valid.index_fill_(1, cache.slot, 1)
        positions = cache.valid.sum(-1) - 1  # real tokens before this one, as begin_decode
        hidden = lm.embed(token_ids.reshape(-1))  # (B, D)
        final = lm.backbone.norm
        pdl = self.pdl
        rows = hidden.shape[0]
        last = self.decode_epilogues == "last_program" and rows <= dk.GEMV_ROWS
        # on_load: the residual adds in the kernels that produce them, the norms in those that read them; sq holds
        # the residual stream's sums-of-squares partials while the norm is pending
        on_load = self.decode_epilogues.startswith("on_load") and rows <= dk.GEMV_ROWS
        down_sum = on_load and self.decode_epilogues == "on_load"
        sq = None
        router = "split" if self.decode_router in ("splitk", "in_experts") and rows > dk.GEMV_ROWS else self.decode_router
        counters = self.counters
        merge_counters = counters if last else None  # the attention's splits merged by the last of them
        gemv_rows = self.decode_gemv.startswith("triton") and rows <= dk.GEMV_ROWS
        staged = self.decode_gemv.startswith("triton_staged")
        early_tile = self.decode_gemv == "triton_staged_early"
        prefetch = gemv_rows and self.decode_prefetch in ("weights", "weights_early")
        kv_early = self.decode_prefetch == "kv"
        early = gemv_rows and self.decode_prefetch == "weights_early"  # the combine and the merge release first
        if gemv_rows:
            def proj(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
                return dk.gemv(a, w, be, pdl=pdl, prefetch=prefetch, staged=staged, early=early_tile)
        else:
            def proj(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
                return a @ w.T
        h = dk.rms_norm(hidden, self.blocks[active[0]].ln_in, self.eps, be, pdl=pdl)
        for n, b in enumerate(active):
            w = self.blocks[b]
            if sq is not None:  # the input norm taken by the projection (the experts' last kernel left the partials)
                qkv, _ = dk.gemv_on_load(hidden, w.qkv, norm=(sq, w.ln_in, self.eps), backend=be, pdl=pdl)
            else:
                qkv = proj(h, w.qkv)
            if self.decode_qk_norm == "in_attention":
                attn = dk.qk_norm_rope_attention(
                    qkv, w.qk_norm, self.eps, positions, self.inv_freq, self.rope_scale, cache.keys[b],
                    cache.values[b], cache.valid, cache.slot, self.n_heads, self.scaling, be, pdl=pdl,
                    counters=merge_counters,
                )
            else:
                q = dk.qk_norm_rope_store(
                    qkv, w.qk_norm, self.eps, positions, self.inv_freq, self.rope_scale,
                    cache.keys[b], cache.values[b], cache.slot, self.n_heads, be, pdl=pdl,
                )
                attn = dk.decode_attention(q, cache.keys[b], cache.values[b], cache.valid, cache.slot, self.scaling, be,
                                           pdl=pdl, counters=merge_counters, release_first=early, kv_early=kv_early)
            if on_load:  # the residual add in the output projection, the norm in the router's projection
                hidden, sq = dk.gemv_on_load(attn, w.o, residual=hidden, backend=be, pdl=pdl)
                partials, h2 = dk.router_partials_norm(hidden, sq, w.ln_post, self.eps, w.router, be, pdl=pdl)
            else:
                if last:
                    hidden, h2 = dk.gemv_add_rms_norm(attn, w.o, hidden, w.ln_post, self.eps, counters, be, pdl=pdl,
                                                      prefetch=prefetch)
                else:
                    hidden, h2 = dk.add_rms_norm(hidden, proj(attn, w.o), w.ln_post, self.eps, be, pdl=pdl)
                if router == "in_experts":  # the top-k is taken by the experts' first kernel, below
                    partials = dk.router_partials(h2, w.router, be, pdl=pdl)
                elif router == "splitk":
                    weights, idx = dk.router_splitk_topk(h2, w.router, plan[b], self.norm_topk_prob, counters, be,
                                                         pdl=pdl)
                elif router == "fused":
                    weights, idx = dk.router_gemm_topk(h2, w.router, plan[b], self.norm_topk_prob, be,
                                                       block_d=DECODE_ROUTER_BLOCK_D, pdl=pdl)
                else:
                    weights, idx = dk.router_topk(proj(h2, w.router), plan[b], self.norm_topk_prob, be, pdl=pdl)
            final_block = n + 1 == len(active)
            # the combine also applies the next block's input norm (the final norm after the last)
            norm_w = final.weight if final_block else self.blocks[active[n + 1]].ln_in
            norm_eps = float(final.variance_epsilon) if final_block else self.eps
            if self.decode_experts == "sorted":
                order, y = expert_outputs(h2, w.gate_up, w.down, idx, weights, be)  # type: ignore[arg-type]
                hidden, h = dk.gather_sum_norm(y, order.inverse, plan[b], hidden, norm_w, norm_eps, be)  # type: ignore[arg-type]
            else:
                if router == "in_experts":
                    act, weights, idx = dk.moe_gate_up_act_routed(h2, w.gate_up, partials, w.router.shape[0], plan[b],
                                                                  self.norm_topk_prob, be, pdl=pdl)
                else:
                    act = dk.moe_gate_up_act(h2, w.gate_up, idx, be, pdl=pdl)
                sq = None
                if down_sum:  # the experts' sum and the residual in the down projection; the next norm left to its reader
                    hidden, sq = dk.moe_down_sum(act, w.down, idx, weights, hidden, be, pdl=pdl)
                    if final_block:
                        h = dk.rms_norm(hidden, norm_w, norm_eps, be, pdl=pdl)
                elif last:
                    hidden, h = dk.moe_down_combine(act, w.down, idx, weights, hidden, norm_w, norm_eps, counters, be,
                                                    pdl=pdl)
                else:
                    hidden, h = dk.moe_combine(dk.moe_down(act, w.down, idx, be, pdl=pdl), weights, hidden, norm_w,
                                               norm_eps, be, pdl=pdl, release_first=early)
        cache.slot.add_(1)
        return lm.lm_head(h)


def default_decode_gemv(pdl: bool, decode_prefetch: str = "none") -> str:
    """The decode step's projections when ``FusedLM`` is given none: with PDL the staged Triton GEMV (1.3-3.1 % a
    decode token faster than the unstaged one at the four corners on an H100, same tokens; benchmarks/RESULTS.md,
    "The Triton GEMV's loop pipelined"), or the unstaged one where the projections' weights are prefetched before
    the wait (``decode_prefetch`` "weights"/"weights_early" prefetch its tiles); without PDL cuBLAS's GEMVs."""
    if not pdl:
        return "cublas"
    return "triton" if decode_prefetch in ("weights", "weights_early") else "triton_staged"


def _causal_only(state: "LMState") -> bool:
    """True when the forward has no past and no padding (SDPA's ``is_causal`` fast kernel applies).

    Decided once per forward (one host sync at its first block) and kept on the state."""
    if state.causal_only is None:
        state.causal_only = state.mask.shape[-1] == state.hidden.shape[1] and bool(state.attention_mask.all())
    return state.causal_only
