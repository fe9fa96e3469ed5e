"""The prefill's routed experts as Triton grouped GEMMs over expert-sorted (token, expert) pairs.

A 1,000-token prefill routes 8,000 (token, expert) pairs per block over all 64 experts, so every
expert's weights are read (12.9 GB over 16 blocks, ~4.5 ms at an H100's copy rate) while the
arithmetic is ~2.2 TFLOP: the expert GEMMs are bound by the weight stream, and the rest of the
block's MoE is bookkeeping. The ``grouped_mm`` form of :func:`~model_runtime.molmoe.fused_lm.routed_experts`
spends ~15 kernels per block on it (radix sort, histogram, cumsum, index gathers, inverse
permutation, a separate SiLU pass); this module does the same work in four:

1. :func:`sort_by_expert` — two kernels: per-chunk expert histograms, then each pair's place in
   expert order (stable, the order a stable argsort gives), its source token, its routing weight
   and the inverse permutation, with the per-expert end offsets;
2. :func:`grouped_gate_up_act` — gate/up GEMM over the sorted pairs, the token rows gathered in
   the GEMM's loads, SiLU(gate)·up·weight in its epilogue;
3. :func:`grouped_down` — down GEMM over the sorted pairs;
4. :func:`gather_sum` — back to token order, sum over k, residual added (:func:`gather_sum_norm`:
   and the next block's input RMSNorm of the result, in the same kernel).

The GEMM programs are (output tile, row tile) pairs; a row tile belongs to one expert, found from
the offsets inside the kernel (no padded copy of the pairs, no host sync, fixed grid), so the
whole path is capturable in a CUDA graph. Output tiles vary fastest so the programs of one row
tile run together and share its activations in L2 while each expert's weights stream once.

Each GEMM fetches its weight tiles in one of two ways (``weight_loads``, :data:`WEIGHT_LOADS`):
pointer loads, pipelined through ``cp.async`` (the default), or TMA tensor descriptors
(``"tma"``, Hopper and later; the down GEMM's activations arrive by TMA too), which the routed form
``sorted_tma`` of :func:`~model_runtime.molmoe.fused_lm.routed_experts` selects. A TMA tile that
runs past an expert's rows reads its neighbour's or zeros past the end; those outputs are never stored.

On CUDA the two GEMMs are autotuned (8 tile configurations) per (D, I, pair count rounded up to a
power of two) the first time a size class is seen, in the eager first prefill of a length (never
inside a graph capture): a process's first prefills pay the compiles and timings once (Triton keeps
the compiled kernels on disk for later processes).

Every op has the ``"triton"`` backend (CUDA, or Triton's interpreter on CPU with
``TRITON_INTERPRET=1``) and a ``"torch"`` reference of the same signature. Numerics follow the
``grouped_mm`` form: GEMMs accumulate in float32, gate/up outputs rounded to the input dtype before
SiLU·up, the routing weight applied to the down projection's input, expert outputs rounded.

Shapes: T tokens, k routed experts per token, P = T·k pairs, D ``d_model``, I expert width, E experts.

:func:`silu_mul_scale` (SiLU·up·routing weight of gate/up outputs) and :func:`gather_sum` serve
the ``grouped_mm`` form too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .common import HAVE_TRITON, Backend, _p2, triton_interpreting
from .norm_rope import rms_norm

if HAVE_TRITON:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor

    from .common import dot_acc
    from .norm_rope import rms_norm_of


@dataclass
class ExpertOrder:
    """The P = T·k (token, expert) pairs in expert order (stable within an expert).

    Attributes:
        src_token: (P,) int32, token of the sorted pair.
        weight: (P,) routing weight of the sorted pair, in the weights' dtype.
        ends: (E,) int32, end offset of each expert's group (cumulative counts).
        inverse: (P,) int32, sorted position of pair ``t·k + j``.
    """

    src_token: torch.Tensor
    weight: torch.Tensor
    ends: torch.Tensor
    inverse: torch.Tensor


# ============================================================================ kernels
if HAVE_TRITON:

    @triton.jit
    def _expert_hist_kernel(idx_ptr, counts_ptr, P, E, CHUNK: tl.constexpr, BLOCK_E: tl.constexpr):
        c = tl.program_id(0)
        p = c * CHUNK + tl.arange(0, CHUNK)
        e = tl.arange(0, BLOCK_E)
        ids = tl.load(idx_ptr + p, mask=p < P, other=-1)
        hist = tl.sum((ids[:, None] == e[None, :]).to(tl.int32), axis=0)
        tl.store(counts_ptr + c * E + e, hist, mask=e < E)

    @triton.jit
    def _expert_place_kernel(
        idx_ptr, w_ptr, counts_ptr, src_ptr, wsorted_ptr, inv_ptr, ends_ptr, P, E, NCHUNK,
        K: tl.constexpr, CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        c = tl.program_id(0)
        e = tl.arange(0, BLOCK_E)
        cc = tl.arange(0, BLOCK_C)
        me = e < E
        counts = tl.load(counts_ptr + cc[:, None] * E + e[None, :], mask=(cc[:, None] < NCHUNK) & me[None, :], other=0)
        totals = tl.sum(counts, axis=0)
        ends = tl.cumsum(totals, axis=0)
        # where this chunk's pairs of expert e start: the expert's group start + earlier chunks' pairs
        base = ends - totals + tl.sum(tl.where(cc[:, None] < c, counts, 0), axis=0)
        p = c * CHUNK + tl.arange(0, CHUNK)
        mp = p < P
        ids = tl.load(idx_ptr + p, mask=mp, other=-1)
        onehot = (ids[:, None] == e[None, :]).to(tl.int32)
        rank = tl.sum(onehot * tl.cumsum(onehot, axis=0), axis=1) - 1  # earlier pairs of its expert in the chunk
        pos = tl.sum(onehot * base[None, :], axis=1) + rank
        tl.store(src_ptr + pos, (p // K).to(tl.int32), mask=mp)
        tl.store(wsorted_ptr + pos, tl.load(w_ptr + p, mask=mp, other=0.0), mask=mp)
        tl.store(inv_ptr + p, pos.to(tl.int32), mask=mp)
        if c == 0:
            tl.store(ends_ptr + e, ends.to(tl.int32), mask=me)

    @triton.jit
    def _row_tile(ends_ptr, E, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr):
        """(expert, first row, end row) of this program's row tile; expert == E past the last tile."""
        t = tl.program_id(1)
        e = tl.arange(0, BLOCK_E)
        me = e < E
        end = tl.load(ends_ptr + e, mask=me, other=0)
        start = tl.load(ends_ptr + e - 1, mask=me & (e > 0), other=0)
        tiles = tl.where(me, (end - start + BLOCK_M - 1) // BLOCK_M, 0)
        tile_end = tl.cumsum(tiles, axis=0)
        expert = tl.sum(tl.where(me & (tile_end <= t), 1, 0), axis=0)
        sel = e == expert
        first = tl.sum(tl.where(sel, start + (t - (tile_end - tiles)) * BLOCK_M, 0), axis=0)
        last = tl.sum(tl.where(sel, end, 0), axis=0)
        return expert, first, last

    @triton.jit
    def _token_rows(x_ptr, src_ptr, first, last, D, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
        """A row tile's sorted pairs (rows, their mask) and the pointers to the first K-tile of their
        tokens' hidden states (gathered by source token), with the K offsets."""
        rows = first + tl.arange(0, BLOCK_M)
        mr = rows < last
        tok = tl.load(src_ptr + rows, mask=mr, other=0).to(tl.int64)
        kk = tl.arange(0, BLOCK_K)
        return rows, mr, x_ptr + tok[:, None] * D + kk[None, :], kk

    @triton.jit
    def _gate_up_store(acc_g, acc_u, rows, mr, n, mn, wsorted_ptr, out_ptr, I):
        """SiLU(gate)·up·routing weight of a (rows, n) tile, rounded where the ``grouped_mm`` form rounds."""
        dt = out_ptr.dtype.element_ty
        g = acc_g.to(dt).to(tl.float32)
        u = acc_u.to(dt).to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32) * u
        wr = tl.load(wsorted_ptr + rows, mask=mr, other=0.0).to(tl.float32)
        tl.store(out_ptr + rows[:, None] * I + n[None, :], (act.to(dt).to(tl.float32) * wr[:, None]).to(dt),
                 mask=mr[:, None] & mn[None, :])

    @triton.jit
    def _grouped_gate_up_kernel(
        x_ptr, src_ptr, wsorted_ptr, w_ptr, ends_ptr, out_ptr, D, I, E, P_BUCKET,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_E: tl.constexpr,
        IEEE: tl.constexpr,
    ):
        expert, first, last = _row_tile(ends_ptr, E, BLOCK_M, BLOCK_E)
        if expert >= E:
            return
        rows, mr, a_ptrs, kk = _token_rows(x_ptr, src_ptr, first, last, D, BLOCK_M, BLOCK_K)
        n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        mn = n < I
        g_ptrs = w_ptr + expert.to(tl.int64) * 2 * I * D + n[None, :] * D + kk[:, None]  # (BLOCK_K, BLOCK_N)
        u_ptrs = g_ptrs + I * D
        acc_g = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        acc_u = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(0, D, BLOCK_K):
            mk = k0 + kk < D
            a = tl.load(a_ptrs, mask=mr[:, None] & mk[None, :], other=0.0)
            bg = tl.load(g_ptrs, mask=mk[:, None] & mn[None, :], other=0.0)
            bu = tl.load(u_ptrs, mask=mk[:, None] & mn[None, :], other=0.0)
            acc_g = dot_acc(a, bg, acc_g, IEEE)
            acc_u = dot_acc(a, bu, acc_u, IEEE)
            a_ptrs += BLOCK_K
            g_ptrs += BLOCK_K
            u_ptrs += BLOCK_K
        _gate_up_store(acc_g, acc_u, rows, mr, n, mn, wsorted_ptr, out_ptr, I)

    @triton.jit
    def _grouped_down_kernel(
        act_ptr, w_ptr, ends_ptr, y_ptr, D, I, E, P_BUCKET,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_E: tl.constexpr,
        IEEE: tl.constexpr,
    ):
        expert, first, last = _row_tile(ends_ptr, E, BLOCK_M, BLOCK_E)
        if expert >= E:
            return
        rows = first + tl.arange(0, BLOCK_M)
        mr = rows < last
        n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        mn = n < D
        kk = tl.arange(0, BLOCK_K)
        a_ptrs = act_ptr + rows.to(tl.int64)[:, None] * I + kk[None, :]
        b_ptrs = w_ptr + expert.to(tl.int64) * D * I + n[None, :] * I + kk[:, None]  # (BLOCK_K, BLOCK_N)
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(0, I, BLOCK_K):
            mk = k0 + kk < I
            a = tl.load(a_ptrs, mask=mr[:, None] & mk[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=mk[:, None] & mn[None, :], other=0.0)
            acc = dot_acc(a, b, acc, IEEE)
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K
        tl.store(y_ptr + rows.to(tl.int64)[:, None] * D + n[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=mr[:, None] & mn[None, :])

    @triton.jit
    def _grouped_gate_up_tma_kernel(
        x_ptr, src_ptr, wsorted_ptr, w_desc, ends_ptr, out_ptr, D, I, E, P_BUCKET,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_E: tl.constexpr,
        IEEE: tl.constexpr,
    ):
        """:func:`_grouped_gate_up_kernel` with the weight tiles fetched by TMA (``w_desc``: the
        (E·2I, D) view of gate_up, block [BLOCK_N, BLOCK_K]). A tile that runs past an expert's
        gate or up rows reads its neighbour's (or zeros past the end): those columns are not stored."""
        expert, first, last = _row_tile(ends_ptr, E, BLOCK_M, BLOCK_E)
        if expert >= E:
            return
        rows, mr, a_ptrs, kk = _token_rows(x_ptr, src_ptr, first, last, D, BLOCK_M, BLOCK_K)
        n0 = tl.program_id(0) * BLOCK_N
        row_g = expert * 2 * I + n0
        acc_g = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        acc_u = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(0, D, BLOCK_K):
            a = tl.load(a_ptrs, mask=mr[:, None] & (k0 + kk < D)[None, :], other=0.0)
            bg = w_desc.load([row_g, k0])  # (BLOCK_N, BLOCK_K); columns past D arrive as zeros
            bu = w_desc.load([row_g + I, k0])
            acc_g = dot_acc(a, bg.T, acc_g, IEEE)
            acc_u = dot_acc(a, bu.T, acc_u, IEEE)
            a_ptrs += BLOCK_K
        n = n0 + tl.arange(0, BLOCK_N)
        _gate_up_store(acc_g, acc_u, rows, mr, n, n < I, wsorted_ptr, out_ptr, I)

    @triton.jit
    def _grouped_down_tma_kernel(
        a_desc, w_desc, ends_ptr, y_ptr, D, I, E, P_BUCKET,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_E: tl.constexpr,
        IEEE: tl.constexpr,
    ):
        """:func:`_grouped_down_kernel` with both operands fetched by TMA (``a_desc``: the (P, I)
        activations, block [BLOCK_M, BLOCK_K]; ``w_desc``: the (E·D, I) view of down, block
        [BLOCK_N, BLOCK_K]). The tile's rows past its expert's last pair are multiplied by this
        expert's weights too (rows are independent) and not stored."""
        expert, first, last = _row_tile(ends_ptr, E, BLOCK_M, BLOCK_E)
        if expert >= E:
            return
        rows = first + tl.arange(0, BLOCK_M)
        n0 = tl.program_id(0) * BLOCK_N
        row_w = expert * D + n0
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(0, I, BLOCK_K):
            a = a_desc.load([first, k0])
            b = w_desc.load([row_w, k0])
            acc = dot_acc(a, b.T, acc, IEEE)
        n = n0 + tl.arange(0, BLOCK_N)
        tl.store(y_ptr + rows.to(tl.int64)[:, None] * D + n[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=(rows < last)[:, None] & (n < D)[None, :])

    def _gemm_configs() -> list:
        # weight-stream bound: wide output tiles, deep pipelines; 64-row tiles for experts with few
        # tokens, 16-row tiles for a decode batch (one or two rows per expert). The kernels'
        # P_BUCKET argument (the pair count rounded up to a power of two) is there for the autotune
        # key only: one tuning per size class, not per prompt length.
        return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
                for bm, bn, bk, w, s in ((64, 128, 64, 4, 4), (64, 128, 128, 8, 3), (128, 128, 64, 8, 4),
                                         (128, 64, 64, 4, 4), (64, 64, 128, 4, 4), (128, 128, 128, 8, 3),
                                         (64, 256, 64, 8, 3), (128, 256, 64, 8, 3), (16, 64, 128, 4, 4),
                                         (16, 128, 64, 4, 4))]

    _gate_up_tuned = triton.autotune(configs=_gemm_configs(), key=["D", "I", "P_BUCKET"])(_grouped_gate_up_kernel)
    _down_tuned = triton.autotune(configs=_gemm_configs(), key=["D", "I", "P_BUCKET"])(_grouped_down_kernel)

    def _tma_block_shapes(nargs: dict) -> None:
        """Autotune pre-hook: a TMA descriptor's block is the tile the configuration loads."""
        nargs["w_desc"].block_shape = [nargs["BLOCK_N"], nargs["BLOCK_K"]]
        if "a_desc" in nargs:
            nargs["a_desc"].block_shape = [nargs["BLOCK_M"], nargs["BLOCK_K"]]

    def _tma_configs() -> list:
        # the pointer kernels' tiles, and deeper pipelines that TMA's shared-memory staging allows
        # (a configuration that does not fit is skipped by the autotuner)
        extra = ((64, 128, 64, 4, 5), (128, 128, 64, 8, 5), (64, 256, 64, 8, 4), (128, 64, 128, 8, 4))
        return [triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages, pre_hook=_tma_block_shapes)
                for c in _gemm_configs()] + [
            triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=st,
                          pre_hook=_tma_block_shapes) for bm, bn, bk, w, st in extra]

    _gate_up_tma_tuned = triton.autotune(configs=_tma_configs(), key=["D", "I", "P_BUCKET"])(_grouped_gate_up_tma_kernel)
    _down_tma_tuned = triton.autotune(configs=_tma_configs(), key=["D", "I", "P_BUCKET"])(_grouped_down_tma_kernel)

#: GEMM tiles where they are not autotuned (Triton's interpreter, explicit ``tiles``)
INTERPRETER_TILES: dict[str, int] = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32}
#: GEMM tiles of float32 inputs on CUDA (exact "ieee" dots; autotuned only in 16-bit dtypes)
FLOAT32_TILES: dict[str, int] = {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 32}

if HAVE_TRITON:

    @triton.jit
    def _silu_mul_scale_kernel(gu_ptr, w_ptr, out_ptr, I, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        i = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = i < I
        dt = out_ptr.dtype.element_ty
        g = tl.load(gu_ptr + row * 2 * I + i, mask=m, other=0.0).to(tl.float32)
        u = tl.load(gu_ptr + row * 2 * I + I + i, mask=m, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + row).to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32) * u
        tl.store(out_ptr + row * I + i, (act.to(dt).to(tl.float32) * w).to(dt), mask=m)

    @triton.jit
    def _gather_sum_kernel(y_ptr, inv_ptr, res_ptr, out_ptr, nw_ptr, normed_ptr, D, eps, K: tl.constexpr,
                           BLOCK: tl.constexpr, HAS_NORM: tl.constexpr):
        tok = tl.program_id(0)
        d = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = d < D
        acc = tl.load(res_ptr + tok * D + d, mask=m, other=0.0).to(tl.float32)
        moe = tl.zeros([BLOCK], tl.float32)
        for j in tl.static_range(K):
            src = tl.load(inv_ptr + tok * K + j).to(tl.int64)
            moe += tl.load(y_ptr + src * D + d, mask=m, other=0.0).to(tl.float32)
        dt = out_ptr.dtype.element_ty
        out = (acc + moe.to(dt).to(tl.float32)).to(dt)
        tl.store(out_ptr + tok * D + d, out, mask=m)
        if HAS_NORM:  # the next block's input RMSNorm of the whole row (one program per row), as rms_norm rounds it
            w = tl.load(nw_ptr + d, mask=m, other=0.0).to(tl.float32)
            tl.store(normed_ptr + tok * D + d, rms_norm_of(out.to(tl.float32), w, D, eps, dt), mask=m)


# ============================================================================ ops
def silu_mul_scale(gate_up_out: torch.Tensor, scale: torch.Tensor, backend: Backend = "torch") -> torch.Tensor:
    """SiLU(gate)·up·scale of (P, 2I) gate/up outputs (gate first) with a (P,) per-row scale → (P, I)
    (the prefill's expert activation with the routing weight folded in)."""
    n_int = gate_up_out.shape[1] // 2
    if backend == "torch":
        g, u = gate_up_out.chunk(2, dim=-1)
        return torch.nn.functional.silu(g) * u * scale[:, None]
    out = torch.empty(gate_up_out.shape[0], n_int, dtype=gate_up_out.dtype, device=gate_up_out.device)
    block = min(1024, _p2(n_int))
    _silu_mul_scale_kernel[(gate_up_out.shape[0], triton.cdiv(n_int, block))](
        gate_up_out.contiguous(), scale.contiguous(), out, n_int, BLOCK=block)
    return out


def gather_sum(y: torch.Tensor, inverse: torch.Tensor, top_k: int, residual: torch.Tensor, backend: Backend = "torch") -> torch.Tensor:
    """``residual[t] + Σ_j y[inverse[t·k + j]]``: (P, D) expert outputs in expert-sorted order back to
    (T, D) tokens, summed over each token's k experts, with the residual stream added."""
    n_tok, dim = residual.shape
    if backend == "torch":
        return residual + y[inverse].view(n_tok, top_k, dim).sum(dim=1).to(residual.dtype)
    out = torch.empty_like(residual)
    block = min(1024, _p2(dim))
    _gather_sum_kernel[(n_tok, triton.cdiv(dim, block))](
        y.contiguous(), inverse.contiguous(), residual.contiguous(), out, out, out, dim, 0.0, K=top_k, BLOCK=block,
        HAS_NORM=False)
    return out


def gather_sum_norm(
    y: torch.Tensor, inverse: torch.Tensor, top_k: int, residual: torch.Tensor, norm_weight: torch.Tensor, eps: float,
    backend: Backend = "torch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`gather_sum` and the RMSNorm of its result (the next block's input norm) in one kernel:
    (out, rms_norm(out, norm_weight, eps)), both (T, D) in residual's dtype."""
    if backend == "torch":
        out = gather_sum(y, inverse, top_k, residual, "torch")
        return out, rms_norm(out, norm_weight, eps, "torch")
    n_tok, dim = residual.shape
    out, normed = torch.empty_like(residual), torch.empty_like(residual)
    _gather_sum_kernel[(n_tok, 1)](
        y.contiguous(), inverse.contiguous(), residual.contiguous(), out, norm_weight, normed, dim, eps, K=top_k,
        BLOCK=_p2(dim), HAS_NORM=True)
    return out, normed


# ============================================================================ ops
def sort_by_expert(idx: torch.Tensor, weights: torch.Tensor, n_exp: int, backend: Backend = "torch") -> ExpertOrder:
    """Pairs of (T, k) routed expert ids ``idx`` and their (T, k) routing weights in expert order."""
    n_tok, top_k = idx.shape
    pairs = n_tok * top_k
    dev = idx.device
    if n_exp < 1:
        raise ValueError(f"n_exp must be positive, got {n_exp}")
    if backend == "torch":
        flat = idx.reshape(-1).long()  # pair p = token p // k, rank p % k
        # expert ids fit 16 bits: a 2-pass radix sort instead of 8 passes over int64 keys
        order = torch.argsort(flat.to(torch.int16) if n_exp <= 2**15 else flat, stable=True)
        counts = torch.zeros(n_exp, dtype=torch.int32, device=dev).scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(pairs, device=dev)
        return ExpertOrder((order // top_k).int(), weights.reshape(-1)[order], torch.cumsum(counts, 0, dtype=torch.int32),
                           inverse.int())
    if n_exp > 1024:  # the kernels hold a (chunk, E) one-hot tile
        raise ValueError(f"n_exp must be at most 1024 for the triton backend, got {n_exp}")
    # chunks of ~sqrt(P)/2 pairs, so that a program's (chunk, E) one-hot tile and its (chunks, E)
    # count tile grow alike and 1,000 tokens at top-8 get 125 programs (32 chunks of 256 left most
    # SMs idle); at most ~256 chunks
    chunk = max(32, _p2(math.isqrt(pairs)) // 2, _p2(-(-pairs // 256)))
    nchunk = max(1, -(-pairs // chunk))
    block_e = _p2(n_exp)
    counts = torch.empty(nchunk, n_exp, dtype=torch.int32, device=dev)
    flat, w = idx.reshape(-1).contiguous(), weights.reshape(-1).contiguous()
    _expert_hist_kernel[(nchunk,)](flat, counts, pairs, n_exp, CHUNK=chunk, BLOCK_E=block_e)
    src = torch.empty(pairs, dtype=torch.int32, device=dev)
    wsorted = torch.empty_like(w)
    inverse = torch.empty(pairs, dtype=torch.int32, device=dev)
    ends = torch.empty(n_exp, dtype=torch.int32, device=dev)
    _expert_place_kernel[(nchunk,)](flat, w, counts, src, wsorted, inverse, ends, pairs, n_exp, nchunk,
                                    K=top_k, CHUNK=chunk, BLOCK_E=block_e, BLOCK_C=_p2(nchunk))
    return ExpertOrder(src, wsorted, ends, inverse)


def _expert_of_rows(ends: torch.Tensor, pairs: int) -> torch.Tensor:
    return torch.searchsorted(ends.long(), torch.arange(pairs, device=ends.device), right=True)


#: keys an explicit ``tiles`` argument may hold (the three tile sizes are required)
TILE_KEYS: tuple[str, ...] = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages")
#: how the grouped GEMMs fetch their weight tiles: pointer loads, or TMA descriptors (Hopper and
#: later; Triton's interpreter runs both)
WEIGHT_LOADS: tuple[str, ...] = ("pointer", "tma")


def _check_tiles(tiles: dict[str, int]) -> dict[str, int]:
    bad = sorted(set(tiles) - set(TILE_KEYS))
    missing = [k for k in TILE_KEYS[:3] if k not in tiles]
    if bad or missing:
        raise ValueError(f"tiles must give BLOCK_M, BLOCK_N, BLOCK_K (and optionally num_warps, num_stages); "
                         f"unknown {bad}, missing {missing}")
    return dict(tiles)


def _launch_row_tiles(tuned: object, raw: object, args: tuple, pairs: int, n_exp: int, n_out: int,
                      tiles: dict[str, int] | None, ieee: bool, descs: tuple = ()) -> None:
    """Grid (output tiles, row tiles): at most ceil(P / BLOCK_M) + E row tiles hold rows (an expert's
    last tile may be partial); the programs past them return at once. ``descs``: (TMA descriptor,
    tile key of its rows) pairs whose block shape follows the tiles (the autotuner's pre-hook sets
    them for its configurations)."""
    meta = {"BLOCK_E": _p2(n_exp), "IEEE": ieee}
    if tiles is None and ieee:  # float32 is the tests' and references' dtype: fixed tiles, no tuning compiles
        tiles = FLOAT32_TILES
    if tiles is None and not triton_interpreting():
        tuned[lambda m: (triton.cdiv(n_out, m["BLOCK_N"]), triton.cdiv(pairs, m["BLOCK_M"]) + n_exp)](*args, **meta)  # type: ignore[index]
        return
    t = _check_tiles(INTERPRETER_TILES if tiles is None else tiles)
    for desc, rows_key in descs:
        desc.block_shape = [t[rows_key], t["BLOCK_K"]]
    raw[(triton.cdiv(n_out, t["BLOCK_N"]), triton.cdiv(pairs, t["BLOCK_M"]) + n_exp)](*args, **t, **meta)  # type: ignore[index]


def _descriptor(t: torch.Tensor) -> "TensorDescriptor":
    """A TMA descriptor of a 2-D row-major tensor; its block shape is set at launch."""
    if t.stride(1) != 1 or (t.stride(0) * t.element_size()) % 16 or t.data_ptr() % 16:
        raise ValueError(f"TMA weight loads need 16-byte aligned rows; got a {tuple(t.shape)} {t.dtype} tensor with "
                         f"strides {t.stride()}")
    return TensorDescriptor(t, list(t.shape), list(t.stride()), [16, 16])


def _check_loads(weight_loads: str) -> None:
    if weight_loads not in WEIGHT_LOADS:
        raise ValueError(f"unknown weight_loads {weight_loads!r}; choose from {WEIGHT_LOADS}")


def grouped_gate_up_act(
    x: torch.Tensor, gate_up: torch.Tensor, order: ExpertOrder, backend: Backend = "torch",
    tiles: dict[str, int] | None = None, weight_loads: str = "pointer",
) -> torch.Tensor:
    """SiLU(gate)·up·weight of every sorted pair: x (T, D), gate_up (E, 2I, D) → (P, I) in x's dtype.

    ``tiles``: explicit ``BLOCK_M``/``BLOCK_N``/``BLOCK_K`` and optionally ``num_warps``/``num_stages``
    (default: autotuned on CUDA); ``weight_loads``: ``pointer`` or ``tma`` (see :data:`WEIGHT_LOADS`)."""
    _check_loads(weight_loads)
    pairs = order.src_token.shape[0]
    n_exp, two_i, dim = gate_up.shape
    n_int = two_i // 2
    if backend == "torch":
        w = gate_up[_expert_of_rows(order.ends, pairs)]  # (P, 2I, D): a reference, not a fast path
        g, u = torch.einsum("pd,phd->ph", x[order.src_token.long()], w).chunk(2, dim=-1)
        act = torch.nn.functional.silu(g) * u
        return act * order.weight[:, None].to(act.dtype)
    out = torch.empty(pairs, n_int, dtype=x.dtype, device=x.device)
    ieee = x.dtype == torch.float32
    if weight_loads == "tma":
        w_desc = _descriptor(gate_up.reshape(n_exp * two_i, dim))
        args = (x.contiguous(), order.src_token, order.weight, w_desc, order.ends, out, dim, n_int, n_exp, _p2(max(pairs, 1024)))
        _launch_row_tiles(_gate_up_tma_tuned, _grouped_gate_up_tma_kernel, args, pairs, n_exp, n_int, tiles, ieee,
                          ((w_desc, "BLOCK_N"),))
        return out
    args = (x.contiguous(), order.src_token, order.weight, gate_up, order.ends, out, dim, n_int, n_exp, _p2(max(pairs, 1024)))
    _launch_row_tiles(_gate_up_tuned if HAVE_TRITON else None, _grouped_gate_up_kernel if HAVE_TRITON else None, args,
                      pairs, n_exp, n_int, tiles, ieee)
    return out


def grouped_down(
    act: torch.Tensor, down: torch.Tensor, order: ExpertOrder, backend: Backend = "torch",
    tiles: dict[str, int] | None = None, weight_loads: str = "pointer",
) -> torch.Tensor:
    """Each sorted pair's down projection: act (P, I), down (E, D, I) → (P, D) in act's dtype
    (``tiles`` and ``weight_loads`` as :func:`grouped_gate_up_act`'s; with ``tma`` the activations
    arrive by TMA too)."""
    _check_loads(weight_loads)
    pairs = act.shape[0]
    n_exp, dim, n_int = down.shape
    if backend == "torch":
        return torch.einsum("pi,pdi->pd", act, down[_expert_of_rows(order.ends, pairs)])
    y = torch.empty(pairs, dim, dtype=act.dtype, device=act.device)
    ieee = act.dtype == torch.float32
    if weight_loads == "tma":
        a_desc, w_desc = _descriptor(act.contiguous()), _descriptor(down.reshape(n_exp * dim, n_int))
        args = (a_desc, w_desc, order.ends, y, dim, n_int, n_exp, _p2(max(pairs, 1024)))
        _launch_row_tiles(_down_tma_tuned, _grouped_down_tma_kernel, args, pairs, n_exp, dim, tiles, ieee,
                          ((a_desc, "BLOCK_M"), (w_desc, "BLOCK_N")))
        return y
    args = (act.contiguous(), down, order.ends, y, dim, n_int, n_exp, _p2(max(pairs, 1024)))
    _launch_row_tiles(_down_tuned if HAVE_TRITON else None, _grouped_down_kernel if HAVE_TRITON else None, args,
                      pairs, n_exp, dim, tiles, ieee)
    return y


def expert_outputs(
    h: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor,
    backend: Backend = "torch", weight_loads: str = "pointer",
) -> tuple[ExpertOrder, torch.Tensor]:
    """The first three kernels of :func:`routed_experts_grouped` (sort, gate/up + activation, down):
    the pairs' order and their weighted expert outputs (P, D) in that order, for a gather-sum."""
    order = sort_by_expert(idx, weights, gate_up.shape[0], backend)
    act = grouped_gate_up_act(h, gate_up, order, backend, weight_loads=weight_loads)
    return order, grouped_down(act, down, order, backend, weight_loads=weight_loads)


def routed_experts_grouped(
    h: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor,
    residual: torch.Tensor | None = None, backend: Backend = "torch", weight_loads: str = "pointer",
) -> torch.Tensor:
    """(residual +) Σ_j weights[:, j] · expert_{idx[:, j]}(h) for (T, D) tokens in four kernels
    (sort, gate/up + activation, down, gather-sum); fixed shapes, no host sync."""
    order, y = expert_outputs(h, gate_up, down, idx, weights, backend, weight_loads)
    base = torch.zeros_like(h) if residual is None else residual
    return gather_sum(y, order.inverse, idx.shape[1], base, backend)
