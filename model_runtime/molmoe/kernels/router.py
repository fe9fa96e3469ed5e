"""The router: softmax (float32) over all experts' logits, then top-k; optionally with the logits'
GEMM in the same kernel (:func:`router_gemm_topk`: one program per tile of rows; :func:`router_splitk_topk`:
the decode step's few rows, the GEMM split over the hidden columns and the top-k in the last program)."""

from __future__ import annotations

import torch

from .common import HAVE_TRITON, Backend, _p2, check_counters, check_decode_rows, pdl_options
from .norm_rope import check_sq_partials, rms_norm

if HAVE_TRITON:
    import triton
    import triton.language as tl

    from .common import arrive_last, dot_acc, pdl_enter
    from .norm_rope import rms_scaled, rstd_of_sq_partials


# ============================================================================ kernels
if HAVE_TRITON:

    @triton.jit
    def _softmax_topk_rows(z, e, me, k, KMAX: tl.constexpr, BLOCK_E: tl.constexpr, NORM: tl.constexpr):
        # per row of the logits z (R, BLOCK_E): softmax (float32) where me, then the k (<= KMAX)
        # largest, lowest index on ties as torch.topk on distinct values: expert ids (R, KMAX) int32
        # and float32 weights (renormalised over the k with NORM; entries past k are 0)
        p = tl.exp(z - tl.max(z, axis=1)[:, None])
        p = tl.where(me[None, :], p / tl.sum(p, axis=1)[:, None], -1.0)
        jj = tl.arange(0, KMAX)[None, :]
        ids = tl.zeros([z.shape[0], KMAX], tl.int32)
        wts = tl.zeros([z.shape[0], KMAX], tl.float32)
        total = tl.sum(tl.zeros([z.shape[0], BLOCK_E], tl.float32), axis=1)
        for j in tl.static_range(KMAX):
            v = tl.max(p, axis=1)
            i = tl.min(tl.where(p == v[:, None], e[None, :], BLOCK_E), axis=1)
            take = (jj == j) & (j < k)
            ids = tl.where(take, i[:, None], ids)
            wts = tl.where(take, v[:, None], wts)
            total += tl.where(j < k, v, 0.0)  # in descending order, one by one
            p = tl.where(e[None, :] == i[:, None], -1.0, p)
        if NORM:
            wts = wts / total[:, None]
        return ids, wts

    @triton.jit
    def _softmax_topk(z, e, me, k, KMAX: tl.constexpr, BLOCK_E: tl.constexpr, NORM: tl.constexpr):
        # _softmax_topk_rows of one row of logits z (BLOCK_E,): ids (KMAX,) int32, weights (KMAX,)
        ids, wts = _softmax_topk_rows(z[None, :], e, me, k, KMAX, BLOCK_E, NORM)
        return tl.sum(ids, axis=0), tl.sum(wts, axis=0)

    @triton.jit
    def _router_topk_kernel(logits_ptr, w_ptr, idx_ptr, E, K: tl.constexpr, KMAX: tl.constexpr, NORM: tl.constexpr,
                            BLOCK_E: tl.constexpr, PDL: tl.constexpr = False):
        pdl_enter(PDL)
        t = tl.program_id(0)
        e = tl.arange(0, BLOCK_E)
        me = e < E
        z = tl.load(logits_ptr + t * E + e, mask=me, other=-float("inf")).to(tl.float32)
        ids, wts = _softmax_topk(z, e, me, K, KMAX, BLOCK_E, NORM)
        jj = tl.arange(0, KMAX)
        tl.store(idx_ptr + t * K + jj, ids, mask=jj < K)
        tl.store(w_ptr + t * K + jj, wts.to(w_ptr.dtype.element_ty), mask=jj < K)


    @triton.jit
    def _router_gemm_topk_kernel(h_ptr, wr_ptr, w_ptr, idx_ptr, T, D, E, K: tl.constexpr, KMAX: tl.constexpr,
                                 NORM: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
                                 BLOCK_D: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr = False):
        pdl_enter(PDL)
        rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        mt = rows < T
        e = tl.arange(0, BLOCK_E)
        me = e < E
        dd = tl.arange(0, BLOCK_D)
        a_ptrs = h_ptr + rows.to(tl.int64)[:, None] * D + dd[None, :]
        b_ptrs = wr_ptr + e[None, :] * D + dd[:, None]  # (BLOCK_D, BLOCK_E): the router weight transposed
        acc = tl.zeros([BLOCK_T, BLOCK_E], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            md = d0 + dd < D
            a = tl.load(a_ptrs, mask=mt[:, None] & md[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=md[:, None] & me[None, :], other=0.0)
            acc = dot_acc(a, b, acc, IEEE)
            a_ptrs += BLOCK_D
            b_ptrs += BLOCK_D
        # the logits in the model's dtype, as the router's linear layer returns them
        z = tl.where(me[None, :], acc.to(w_ptr.dtype.element_ty).to(tl.float32), -float("inf"))
        ids, wts = _softmax_topk_rows(z, e, me, K, KMAX, BLOCK_E, NORM)
        jj = tl.arange(0, KMAX)[None, :]
        out = rows.to(tl.int64)[:, None] * K + jj
        tl.store(idx_ptr + out, ids, mask=mt[:, None] & (jj < K))
        tl.store(w_ptr + out, wts.to(w_ptr.dtype.element_ty), mask=mt[:, None] & (jj < K))


    @triton.jit
    def _router_partial_tile(h_ptr, wr_ptr, part_ptr, T, D, E, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
                             BLOCK_D: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr, sq_ptr=None, nw_ptr=None,
                             normed_ptr=None, NSQ=1, eps=1e-5, NORM_IN: tl.constexpr = False,
                             BLOCK_SQ: tl.constexpr = 1):
        # program s: the logits' partial sums over hidden columns s*BLOCK_D.. for every row (<= BLOCK_T),
        # float32 into part (S, BLOCK_T, BLOCK_E); returns the tile's offsets in a split's (BLOCK_T, BLOCK_E).
        # NORM_IN: h is a residual stream and the logits are of its RMSNorm (weight nw): the program norms its
        # columns (the reciprocal RMS from h's sums-of-squares partials sq) and writes them to normed
        s = tl.program_id(0)
        rows = tl.arange(0, BLOCK_T)
        mt = rows < T
        e = tl.arange(0, BLOCK_E)
        me = e < E
        dd = s * BLOCK_D + tl.arange(0, BLOCK_D)
        md = dd < D
        # the weights' columns before the wait: the kernel before does not write them
        b = tl.load(wr_ptr + e[None, :] * D + dd[:, None], mask=md[:, None] & me[None, :], other=0.0)
        if NORM_IN:
            nw = tl.load(nw_ptr + dd, mask=md, other=0.0).to(tl.float32)[None, :]
        pdl_enter(PDL)
        a = tl.load(h_ptr + rows[:, None] * D + dd[None, :], mask=mt[:, None] & md[None, :], other=0.0)
        if NORM_IN:
            rstd = rstd_of_sq_partials(sq_ptr, rows, mt, NSQ, D, eps, BLOCK_SQ)[:, None]
            a = rms_scaled(a.to(tl.float32), rstd, nw, h_ptr.dtype.element_ty)
            tl.store(normed_ptr + rows[:, None] * D + dd[None, :], a, mask=mt[:, None] & md[None, :])
        acc = dot_acc(a, b, tl.zeros([BLOCK_T, BLOCK_E], tl.float32), IEEE)
        tile = rows[:, None] * BLOCK_E + e[None, :]
        tl.store(part_ptr + s * BLOCK_T * BLOCK_E + tile, acc)
        return tile

    @triton.jit
    def _router_partials_kernel(h_ptr, wr_ptr, part_ptr, T, D, E, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
                                BLOCK_D: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr = False):
        _router_partial_tile(h_ptr, wr_ptr, part_ptr, T, D, E, BLOCK_T, BLOCK_E, BLOCK_D, IEEE, PDL)

    @triton.jit
    def _router_partials_norm_kernel(s_ptr, sq_ptr, nw_ptr, normed_ptr, wr_ptr, part_ptr, T, D, E, NSQ, eps,
                                     BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
                                     BLOCK_SQ: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr = False):
        # _router_partials_kernel of the RMSNorm of the residual stream s, the normed columns written for the experts
        _router_partial_tile(s_ptr, wr_ptr, part_ptr, T, D, E, BLOCK_T, BLOCK_E, BLOCK_D, IEEE, PDL, sq_ptr, nw_ptr,
                             normed_ptr, NSQ, eps, True, BLOCK_SQ)

    @triton.jit
    def routed_rank(part_ptr, n_split, tok, j, E, K, wt_ptr, KMAX: tl.constexpr, NORM: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):
        """Expert id (int32) and float32 weight of rank ``j`` of row ``tok``'s top-``K``, from the router's
        ``n_split`` partial logits (:func:`router_partials`): summed in order, rounded to ``wt_ptr``'s dtype
        (the model's, as the router's linear layer returns them), softmax in float32, top-k (:func:`router_topk`'s)."""
        e = tl.arange(0, BLOCK_E)
        me = e < E
        z = tl.zeros([BLOCK_E], tl.float32)
        for s in range(0, n_split):
            z += tl.load(part_ptr + (s * BLOCK_T + tok) * BLOCK_E + e)
        z = tl.where(me, z.to(wt_ptr.dtype.element_ty).to(tl.float32), -float("inf"))
        ids, wts = _softmax_topk(z, e, me, K, KMAX, BLOCK_E, NORM)
        jj = tl.arange(0, KMAX)
        return tl.sum(tl.where(jj == j, ids, 0), axis=0), tl.sum(tl.where(jj == j, wts, 0.0), axis=0)

    @triton.jit
    def _router_splitk_topk_kernel(h_ptr, wr_ptr, part_ptr, cnt_ptr, w_ptr, idx_ptr, T, D, E, K: tl.constexpr,
                                   KMAX: tl.constexpr, NORM: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
                                   BLOCK_D: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr = False):
        # the partial logits (_router_partial_tile); the last program to finish adds the S partials in
        # order, rounds the logits to the model's dtype and takes softmax + top-k
        n_split = tl.num_programs(0)
        rows = tl.arange(0, BLOCK_T)
        mt = rows < T
        e = tl.arange(0, BLOCK_E)
        me = e < E
        tile = _router_partial_tile(h_ptr, wr_ptr, part_ptr, T, D, E, BLOCK_T, BLOCK_E, BLOCK_D, IEEE, PDL)
        if arrive_last(cnt_ptr, n_split):
            z = tl.zeros([BLOCK_T, BLOCK_E], tl.float32)
            for j in range(0, n_split):
                z += tl.load(part_ptr + j * BLOCK_T * BLOCK_E + tile, cache_modifier=".cg")
            z = tl.where(me[None, :], z.to(w_ptr.dtype.element_ty).to(tl.float32), -float("inf"))
            ids, wts = _softmax_topk_rows(z, e, me, K, KMAX, BLOCK_E, NORM)
            jj = tl.arange(0, KMAX)[None, :]
            out = rows[:, None] * K + jj
            tl.store(idx_ptr + out, ids, mask=mt[:, None] & (jj < K))
            tl.store(w_ptr + out, wts.to(w_ptr.dtype.element_ty), mask=mt[:, None] & (jj < K))


# ============================================================================ ops
def router_topk(
    logits: torch.Tensor, top_k: int, norm_topk_prob: bool, backend: Backend = "torch", pdl: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax (float32) over all E router logits (T, E), top-k; (weights (T, k) in logits' dtype,
    expert ids (T, k) int32)."""
    if backend == "torch":
        probs = torch.softmax(logits, dim=-1, dtype=torch.float)
        w, idx = torch.topk(probs, top_k, dim=-1)
        if norm_topk_prob:
            w = w / w.sum(dim=-1, keepdim=True)
        return w.to(logits.dtype), idx.to(torch.int32)
    n_tok, n_exp = logits.shape
    w = torch.empty(n_tok, top_k, dtype=logits.dtype, device=logits.device)
    idx = torch.empty(n_tok, top_k, dtype=torch.int32, device=logits.device)
    _router_topk_kernel[(n_tok,)](logits.contiguous(), w, idx, n_exp, K=top_k, KMAX=_p2(top_k), NORM=bool(norm_topk_prob),
                                  BLOCK_E=_p2(n_exp), **pdl_options(pdl))
    return w, idx


def router_gemm_topk(
    h: torch.Tensor, router_weight: torch.Tensor, top_k: int, norm_topk_prob: bool, backend: Backend = "torch",
    block_t: int = 64, block_d: int = 64, pdl: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`router_topk` of the router logits ``h @ router_weight.T`` for (T, D) hidden states and
    an (E, D) router weight, in one kernel (a tile of ``block_t`` tokens per program, ``block_d``
    hidden columns per step) instead of a GEMM with 64 output columns and a second kernel. The
    logits are rounded to h's dtype before the float32 softmax, as the router's linear layer
    returns them. Not the prefill's form: with 64-token tiles a 1,000-token prefill's 16 programs took
    longer than the GEMM and the top-k kernel (benchmarks/RESULTS.md). The decode step uses it with
    ``FusedLM(decode_router="fused")``. ``pdl``: launched for programmatic dependent launch."""
    if backend == "torch":
        return router_topk(h @ router_weight.T, top_k, norm_topk_prob, backend)
    n_tok, dim = h.shape
    n_exp = router_weight.shape[0]
    w = torch.empty(n_tok, top_k, dtype=h.dtype, device=h.device)
    idx = torch.empty(n_tok, top_k, dtype=torch.int32, device=h.device)
    block_t = max(16, _p2(min(block_t, n_tok)))
    _router_gemm_topk_kernel[(triton.cdiv(n_tok, block_t),)](
        h.contiguous(), router_weight.contiguous(), w, idx, n_tok, dim, n_exp, K=top_k, KMAX=_p2(top_k),
        NORM=bool(norm_topk_prob), BLOCK_T=block_t, BLOCK_E=max(16, _p2(n_exp)), BLOCK_D=max(16, min(_p2(block_d), _p2(dim))),
        IEEE=h.dtype == torch.float32, **pdl_options(pdl))
    return w, idx


#: rows :func:`router_splitk_topk` serves (one tl.dot tile: a decode batch)
SPLITK_ROWS = 16


def router_splitk_topk(
    h: torch.Tensor, router_weight: torch.Tensor, top_k: int, norm_topk_prob: bool, counters: torch.Tensor | None,
    backend: Backend = "torch", block_d: int = 128, pdl: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`router_topk` of ``h @ router_weight.T`` for the decode step's few rows (≤ :data:`SPLITK_ROWS`):
    one program per ``block_d`` hidden columns (the 64 × 2,048 weight's read spread over D / block_d
    programs, where :func:`router_gemm_topk` gives one program per tile of rows), float32 partial
    logits, and the softmax + top-k in the program that finishes last
    (:func:`~.common.arrive_last` on ``counters[0]``). Logits rounded to h's dtype as the router's
    linear layer returns them (``FusedLM(decode_router="splitk")``). ``pdl``: launched for programmatic
    dependent launch."""
    if backend == "torch":
        return router_topk(h @ router_weight.T, top_k, norm_topk_prob, backend)
    check_counters("router_splitk_topk", counters)
    part, (h, wr, _, n_tok, dim, n_exp), meta = _partials_launch("router_splitk_topk", h, router_weight, block_d, pdl)
    w = torch.empty(n_tok, top_k, dtype=h.dtype, device=h.device)
    idx = torch.empty(n_tok, top_k, dtype=torch.int32, device=h.device)
    _router_splitk_topk_kernel[(part.shape[0],)](h, wr, part, counters, w, idx, n_tok, dim, n_exp, K=top_k,
                                                 KMAX=_p2(top_k), NORM=bool(norm_topk_prob), **meta)
    return w, idx


def _partials_launch(op: str, h: torch.Tensor, router_weight: torch.Tensor, block_d: int,
                     pdl: bool) -> tuple[torch.Tensor, tuple, dict]:
    """What the split-K router kernels share: the rows check, the float32 partials buffer (S, :data:`SPLITK_ROWS`,
    E'), the arguments (h, weight, partials, rows, D, E) and the block constants of a (S,) grid."""
    n_tok, dim = h.shape
    check_decode_rows(op, n_tok, SPLITK_ROWS)
    n_exp = router_weight.shape[0]
    block_e, block_d = max(16, _p2(n_exp)), max(16, min(_p2(block_d), _p2(dim)))
    part = torch.empty(triton.cdiv(dim, block_d), SPLITK_ROWS, block_e, dtype=torch.float32, device=h.device)
    meta = dict(BLOCK_T=SPLITK_ROWS, BLOCK_E=block_e, BLOCK_D=block_d, IEEE=h.dtype == torch.float32, **pdl_options(pdl))
    return part, (h.contiguous(), router_weight.contiguous(), part, n_tok, dim, n_exp), meta


def router_partials(h: torch.Tensor, router_weight: torch.Tensor, backend: Backend = "torch", block_d: int = 128,
                    pdl: bool = False) -> torch.Tensor:
    """The router's logits as float32 partial sums over ``block_d`` hidden columns each, one program per
    split: (S, :data:`SPLITK_ROWS`, E') for the decode step's rows (≤ 16; E' the experts rounded up to a
    power of two). Their ordered sum, rounded to h's dtype, is ``h @ router_weight.T``; the experts' first
    kernel takes the top-k from them (:func:`~.decode_moe.moe_gate_up_act_routed`). The torch backend
    returns those logits as one split (rows and experts unpadded)."""
    if backend == "torch":
        return (h @ router_weight.T).float()[None]
    part, args, meta = _partials_launch("router_partials", h, router_weight, block_d, pdl)
    _router_partials_kernel[(part.shape[0],)](*args, **meta)
    return part


def router_partials_norm(s: torch.Tensor, sq: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                         router_weight: torch.Tensor, backend: Backend = "torch", block_d: int = 128,
                         pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`router_partials` of ``h = rms_norm(s, norm_weight, eps)``, the norm in the same kernel: each program
    norms its ``block_d`` columns of the residual stream ``s`` (the reciprocal RMS from ``sq``, s's sums-of-squares
    partials, :func:`~.norm_rope.sq_partials`) and writes them to ``h``, which the experts then read
    (``FusedLM(decode_epilogues="on_load")``: no kernel of its own for the post-attention norm).

    Returns (partials (S, :data:`SPLITK_ROWS`, E'), h (T, D) in s's dtype)."""
    check_sq_partials("router_partials_norm", sq, s.shape[0], s.shape[-1])
    if backend == "torch":
        h = rms_norm(s, norm_weight, eps, "torch")
        return router_partials(h, router_weight, "torch"), h
    part, (s, wr, _, n_tok, dim, n_exp), meta = _partials_launch("router_partials_norm", s, router_weight, block_d, pdl)
    h = torch.empty_like(s)
    _router_partials_norm_kernel[(part.shape[0],)](s, sq, norm_weight, h, wr, part, n_tok, dim, n_exp, sq.shape[-1],
                                                   float(eps), BLOCK_SQ=_p2(sq.shape[-1]), **meta)
    return part, h
