"""The decode step's dense projections (Q/K/V, output, router) as one Triton kernel: ``x @ w.T``
for a few token rows (a decode batch, ≤ 16), so that with programmatic dependent launch the
whole block is a chain of Triton kernels (cuBLAS's GEMVs do not take part in it) and each
projection's first weight tile is loaded before the kernel waits for the one before: the weights
do not depend on it, only the activations do.

:func:`gemv_add_rms_norm` is the output projection with the residual add and the next RMSNorm in the same
kernel: each program adds its tile to the residual stream, and the last to finish
(:func:`~.common.arrive_last`) norms the rows (``FusedLM(decode_epilogues="last_program")``)."""

from __future__ import annotations

import torch

from .common import (HAVE_TRITON, Backend, _p2, block_configs, check_counters, check_decode_rows, pdl_options,
                     triton_interpreting)
from .norm_rope import SQ_COLS, check_sq_partials, rms_norm, sq_partials, sq_partials_shape

if HAVE_TRITON:
    import triton
    import triton.language as tl

    from .common import arrive_last, dot_acc, pdl_enter, prefetch_l2
    from .norm_rope import rms_norm_of, rms_scaled, rstd_of_sq_partials, store_sq_partials

#: Rows a program multiplies at once: tl.dot's smallest tile; a decode batch of up to this many
#: rows is one tile (the rows past the batch are masked, their products never stored).
BLOCK_M = 16

# ============================================================================ kernels
if HAVE_TRITON:

    @triton.jit
    def _gemv_tile(x_ptr, w_ptr, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   IEEE: tl.constexpr, PDL: tl.constexpr, PREFETCH: tl.constexpr = False, nw_ptr=None, sq_ptr=None,
                   NSQ=1, eps=1e-5, NORM_X: tl.constexpr = False, BLOCK_SQ: tl.constexpr = 1, NS: tl.constexpr = 1,
                   EARLY: tl.constexpr = False):
        # program n: output features n*BLOCK_N.. of every row; w (N, K) row-major, x (M, K); returns the
        # float32 (BLOCK_M, BLOCK_N) tile, its rows and features and their masks. NORM_X: x is a residual stream
        # and the product is of its RMSNorm (weight nw), normed as it is loaded, the reciprocal RMS from the
        # sums-of-squares partials sq (M, NSQ) that the kernel which wrote x left. NS = 1: two weight tiles in
        # registers, the first loaded before the PDL wait; NS > 1: the loop pipelined by Triton, NS - 1 tiles of
        # weights and activations in flight in shared memory, all loaded after the wait (same products, same order);
        # with EARLY the first weight tile is loaded before the wait, as in the unstaged form, and the rest pipelined
        n0 = tl.program_id(0) * BLOCK_N
        if PREFETCH:  # this program's weight rows, contiguous, into L2 while the kernel before runs
            prefetch_l2(w_ptr + n0.to(tl.int64) * K, tl.minimum(BLOCK_N, N - n0) * K,
                        1024 // w_ptr.dtype.element_ty.primitive_bitwidth, 256)
        n = n0 + tl.arange(0, BLOCK_N)
        mn = n < N
        m = tl.arange(0, BLOCK_M)
        mm = m < M
        kk = tl.arange(0, BLOCK_K)
        w_ptrs = w_ptr + n.to(tl.int64)[:, None] * K + kk[None, :]
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        if NS > 1:  # (NORM_X is the unstaged form's only)
            k_start = 0
            if EARLY:
                w = tl.load(w_ptrs, mask=mn[:, None] & (kk[None, :] < K), other=0.0)
            pdl_enter(PDL)
            if EARLY:
                xk = tl.load(x_ptr + m[:, None] * K + kk[None, :], mask=mm[:, None] & (kk[None, :] < K), other=0.0)
                acc = dot_acc(xk, tl.trans(w), acc, IEEE)
                k_start = BLOCK_K
            for k0 in tl.range(k_start, K, BLOCK_K, num_stages=NS):
                k = k0 + kk
                xk = tl.load(x_ptr + m[:, None] * K + k[None, :], mask=mm[:, None] & (k[None, :] < K), other=0.0)
                w = tl.load(w_ptrs + k0, mask=mn[:, None] & (k[None, :] < K), other=0.0)
                acc = dot_acc(xk, tl.trans(w), acc, IEEE)
        else:
            # the first weight tile before the wait: weights are not written by the kernel before
            w = tl.load(w_ptrs, mask=mn[:, None] & (kk[None, :] < K), other=0.0)
            pdl_enter(PDL)
            if NORM_X:
                rstd = rstd_of_sq_partials(sq_ptr, m, mm, NSQ, K, eps, BLOCK_SQ)[:, None]
            for k0 in range(0, K, BLOCK_K):
                k = k0 + kk
                xk = tl.load(x_ptr + m[:, None] * K + k[None, :], mask=mm[:, None] & (k[None, :] < K), other=0.0)
                if NORM_X:
                    nwk = tl.load(nw_ptr + k, mask=k < K, other=0.0).to(tl.float32)[None, :]
                    xk = rms_scaled(xk.to(tl.float32), rstd, nwk, x_ptr.dtype.element_ty)
                w_next = tl.load(w_ptrs + (k0 + BLOCK_K), mask=mn[:, None] & (k[None, :] + BLOCK_K < K), other=0.0)
                acc = dot_acc(xk, tl.trans(w), acc, IEEE)
                w = w_next
        return acc, m, n, mm, mn

    @triton.jit
    def _gemv_kernel(x_ptr, w_ptr, out_ptr, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     IEEE: tl.constexpr, PDL: tl.constexpr = False, PREFETCH: tl.constexpr = False, NS: tl.constexpr = 1,
                     EARLY: tl.constexpr = False):
        acc, m, n, mm, mn = _gemv_tile(x_ptr, w_ptr, M, N, K, BLOCK_M, BLOCK_N, BLOCK_K, IEEE, PDL, PREFETCH, NS=NS,
                                       EARLY=EARLY)
        tl.store(out_ptr + m[:, None] * N + n[None, :], acc.to(out_ptr.dtype.element_ty), mask=mm[:, None] & mn[None, :])

    @triton.jit
    def _gemv_on_load_kernel(x_ptr, w_ptr, out_ptr, nw_ptr, sq_in_ptr, res_ptr, sq_out_ptr, M, N, K, NSQ_IN, NSQ_OUT,
                             eps, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr,
                             NORM_X: tl.constexpr, ADD_RES: tl.constexpr, BLOCK_SQ: tl.constexpr,
                             PDL: tl.constexpr = False):
        # _gemv_kernel with the RMSNorm of x taken as it is loaded (NORM_X) and/or the residual added to the
        # product (ADD_RES: out = res + x @ w.T, the product rounded to the dtype first, as the eager add), whose
        # sums-of-squares partials go to sq_out for the next norm
        acc, m, n, mm, mn = _gemv_tile(x_ptr, w_ptr, M, N, K, BLOCK_M, BLOCK_N, BLOCK_K, IEEE, PDL, False, nw_ptr,
                                       sq_in_ptr, NSQ_IN, eps, NORM_X, BLOCK_SQ)
        dt = out_ptr.dtype.element_ty
        o = m[:, None] * N + n[None, :]
        mo = mm[:, None] & mn[None, :]
        if ADD_RES:
            out = (tl.load(res_ptr + o, mask=mo, other=0.0).to(tl.float32) + acc.to(dt).to(tl.float32)).to(dt)
            tl.store(out_ptr + o, out, mask=mo)
            store_sq_partials(sq_out_ptr, tl.where(mo, out.to(tl.float32), 0.0), m, mm, tl.program_id(0) * BLOCK_N,
                              NSQ_OUT, BLOCK_N)
        else:
            tl.store(out_ptr + o, acc.to(dt), mask=mo)

    @triton.jit
    def _gemv_add_norm_kernel(x_ptr, w_ptr, res_ptr, sum_ptr, nw_ptr, normed_ptr, cnt_ptr, M, N, K, eps,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_ROW: tl.constexpr,
                              IEEE: tl.constexpr, PDL: tl.constexpr = False, PREFETCH: tl.constexpr = False):
        # sum = res + x @ w.T (the projection rounded to the dtype, then the add, as the eager path), and the
        # last program to finish writes normed = RMSNorm(sum) * nw for every row (add_rms_norm's arithmetic)
        acc, m, n, mm, mn = _gemv_tile(x_ptr, w_ptr, M, N, K, BLOCK_M, BLOCK_N, BLOCK_K, IEEE, PDL, PREFETCH)
        dt = sum_ptr.dtype.element_ty
        o = m[:, None] * N + n[None, :]
        mo = mm[:, None] & mn[None, :]
        r = tl.load(res_ptr + o, mask=mo, other=0.0).to(tl.float32)
        tl.store(sum_ptr + o, (r + acc.to(dt).to(tl.float32)).to(dt), mask=mo)
        if arrive_last(cnt_ptr, tl.num_programs(0)):
            d = tl.arange(0, BLOCK_ROW)
            md = d < N
            nw = tl.load(nw_ptr + d, mask=md, other=0.0).to(tl.float32)
            for row in range(0, M):
                xf = tl.load(sum_ptr + row * N + d, mask=md, other=0.0, cache_modifier=".cg").to(tl.float32)
                tl.store(normed_ptr + row * N + d, rms_norm_of(xf, nw, N, eps, dt), mask=md)

    # Tuned variant (CUDA): output features per program and the reduction tile, per (M, N, K), measured on first
    # use (warm-up, before any graph capture). Narrow programs keep a 2048-wide projection's weights spread
    # over every SM (6,144 Q/K/V features / 16 = 384 programs).
    _gemv_tuned = triton.autotune(
        configs=block_configs(("BLOCK_N", "BLOCK_K", "num_warps"),
                              ((16, 128, 4), (16, 256, 4), (16, 512, 4), (32, 128, 4), (32, 256, 4), (32, 256, 8),
                               (64, 128, 4), (64, 256, 8))),
        key=["M", "N", "K"],
    )(_gemv_kernel)
    # the staged form (FusedLM(decode_gemv="triton_staged")): deeper loads in flight, none before the PDL wait. The
    # 2-warp tiles were the fastest at both projections' shapes timed from CUDA graphs on an H100, 2-6 % ahead of the
    # autotuner's pick from the 4-warp ones (benchmarks/gemv_tiles.py; RESULTS, "The decode attention at 2 warps")
    _gemv_staged_tuned = triton.autotune(
        configs=block_configs(("BLOCK_N", "BLOCK_K", "num_warps", "NS"),
                              ((16, 128, 4, 3), (16, 128, 4, 5), (16, 256, 4, 3), (16, 256, 4, 4), (16, 512, 4, 2),
                               (16, 512, 4, 3), (32, 128, 4, 4), (32, 256, 4, 3), (32, 256, 8, 3), (64, 128, 4, 3),
                               (16, 128, 2, 4), (16, 256, 2, 4), (16, 512, 2, 3))),
        key=["M", "N", "K"],
    )(_gemv_kernel)
    # its form with the first weight tile loaded before the wait (decode_gemv="triton_staged_early"), tuned apart
    _gemv_staged_early_tuned = triton.autotune(configs=_gemv_staged_tuned.configs, key=["M", "N", "K"])(_gemv_kernel)
    _gemv_add_norm_tuned = triton.autotune(configs=_gemv_tuned.configs, key=["M", "N", "K"])(_gemv_add_norm_kernel)
    _gemv_on_load_tuned = triton.autotune(configs=_gemv_tuned.configs, key=["M", "N", "K", "NORM_X", "ADD_RES"])(
        _gemv_on_load_kernel)


# ============================================================================ op
def gemv(x: torch.Tensor, w: torch.Tensor, backend: Backend = "torch", pdl: bool = False,
         block_n: int | None = None, block_k: int | None = None, prefetch: bool = False,
         staged: bool = False, early: bool = False) -> torch.Tensor:
    """``x @ w.T`` for x (M, K), M ≤ :data:`BLOCK_M` rows, and w (N, K) → (M, N) in x's dtype
    (float32 accumulation, as cuBLAS). ``block_n`` / ``block_k``: explicit tiles (default:
    autotuned on CUDA, 16 × 32 in the interpreter); ``pdl``: launched for programmatic dependent
    launch (:func:`~.common.pdl_options`); ``prefetch``: each program first asks for its weight rows
    in L2 (:func:`~.common.prefetch_l2`; CUDA only), which with ``pdl`` happens before it waits; ``staged``: the
    loop pipelined over several tiles in shared memory (autotuned over staged tiles on CUDA; 2 stages with
    explicit tiles and in the interpreter), none loaded before the wait, or with ``early`` the first weight tile
    before it (as the unstaged form). Same products, summed in the same order."""
    if backend == "torch":
        return x @ w.T
    if staged and prefetch:
        raise ValueError("gemv: staged and prefetch are two forms of early weight loads; take one")
    if early and not staged:
        raise ValueError("gemv: early is the staged form's (the unstaged form always loads its first tile early)")
    _check_prefetch("gemv", prefetch)
    n_rows, k = x.shape
    check_decode_rows("gemv", n_rows, BLOCK_M)
    if w.shape[1] != k:
        raise ValueError(f"gemv: x has {k} features, w {tuple(w.shape)}")
    n = w.shape[0]
    out = torch.empty(n_rows, n, dtype=x.dtype, device=x.device)
    args = (x.contiguous(), w.contiguous(), out, n_rows, n, k)
    ieee = x.dtype == torch.float32
    opts = dict(PREFETCH=prefetch, EARLY=early, **pdl_options(pdl))
    if block_n is None and block_k is None and not triton_interpreting():
        tuned = (_gemv_staged_early_tuned if early else _gemv_staged_tuned) if staged else _gemv_tuned
        tuned[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](*args, BLOCK_M=BLOCK_M, IEEE=ieee, **opts)
    else:
        bn, bk = int(block_n or 16), int(block_k or min(32, _p2(k)))
        _gemv_kernel[(triton.cdiv(n, bn),)](*args, BLOCK_M=BLOCK_M, BLOCK_N=bn, BLOCK_K=max(16, bk), IEEE=ieee,
                                            NS=2 if staged else 1, **opts)
    return out


def gemv_add_rms_norm(x: torch.Tensor, w: torch.Tensor, residual: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                      counters: torch.Tensor | None, backend: Backend = "torch", pdl: bool = False,
                      block_n: int | None = None, block_k: int | None = None,
                      prefetch: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``add_rms_norm(residual, x @ w.T, norm_weight, eps)`` in one kernel: (sum (M, N), its RMSNorm (M, N)).

    x (M, K) with M ≤ :data:`BLOCK_M`, w (N, K), residual (M, N). The programs of :func:`gemv` add
    their tiles to the residual; the one that finishes last (:func:`~.common.arrive_last` on
    ``counters[0]``) norms the rows. Tiles, ``pdl`` and ``prefetch`` as :func:`gemv`."""
    if backend == "torch":
        from .norm_rope import add_rms_norm

        return add_rms_norm(residual, x @ w.T, norm_weight, eps, "torch")
    _check_prefetch("gemv_add_rms_norm", prefetch)
    n_rows, k = x.shape
    check_decode_rows("gemv_add_rms_norm", n_rows, BLOCK_M)
    check_counters("gemv_add_rms_norm", counters)
    n = w.shape[0]
    if w.shape[1] != k or residual.shape != (n_rows, n):
        raise ValueError(f"gemv_add_rms_norm: x {tuple(x.shape)}, w {tuple(w.shape)}, residual {tuple(residual.shape)}")
    total, normed = torch.empty_like(residual), torch.empty_like(residual)
    args = (x.contiguous(), w.contiguous(), residual.contiguous(), total, norm_weight, normed, counters, n_rows, n, k, float(eps))
    meta = dict(BLOCK_M=BLOCK_M, BLOCK_ROW=_p2(n), IEEE=x.dtype == torch.float32, PREFETCH=prefetch, **pdl_options(pdl))
    if block_n is None and block_k is None and not triton_interpreting():
        _gemv_add_norm_tuned[lambda m: (triton.cdiv(n, m["BLOCK_N"]),)](*args, **meta)
    else:
        bn, bk = int(block_n or 16), int(block_k or min(32, _p2(k)))
        _gemv_add_norm_kernel[(triton.cdiv(n, bn),)](*args, BLOCK_N=bn, BLOCK_K=max(16, bk), **meta)
    return total, normed


def gemv_on_load(x: torch.Tensor, w: torch.Tensor, *, norm: tuple[torch.Tensor, torch.Tensor, float] | None = None,
                 residual: torch.Tensor | None = None, backend: Backend = "torch", pdl: bool = False,
                 block_n: int | None = None, block_k: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`gemv` with the RMSNorm before it and/or the residual add after it in the same kernel
    (``FusedLM(decode_epilogues="on_load")``), the norm's sum of squares carried between kernels as partials
    (:func:`~.norm_rope.sq_partials`, (M, ceil(N / SQ_COLS)) float32):

    - ``norm=(sq, nw, eps)``: the product is of ``rms_norm(x, nw, eps)``, each program norming x as it loads it,
      with the reciprocal RMS from ``sq``, x's partials (left by the kernel that wrote x);
    - ``residual`` (M, N): returns ``residual + product`` (the product rounded to the dtype first, as the eager
      add) and that sum's partials, for the next norm.

    Returns (out (M, N), its partials or None). x (M, K), M ≤ :data:`BLOCK_M`; tiles and ``pdl`` as :func:`gemv`."""
    n_rows, k = x.shape
    n = w.shape[0]
    if w.shape[1] != k or (residual is not None and tuple(residual.shape) != (n_rows, n)):
        raise ValueError(f"gemv_on_load: x {tuple(x.shape)}, w {tuple(w.shape)}, "
                         f"residual {None if residual is None else tuple(residual.shape)}")
    if norm is not None:
        check_sq_partials("gemv_on_load", norm[0], n_rows, k)
    if backend == "torch":
        xin = x if norm is None else rms_norm(x, norm[1], norm[2], "torch")
        out = xin @ w.T
        if residual is None:
            return out, None
        out = residual + out
        return out, sq_partials(out)
    check_decode_rows("gemv_on_load", n_rows, BLOCK_M)
    out = torch.empty(n_rows, n, dtype=x.dtype, device=x.device)
    sq_shape = sq_partials_shape(n_rows, n)
    sq_out = torch.empty(sq_shape, dtype=torch.float32, device=x.device) if residual is not None else None
    sq_in, nw, eps = norm if norm is not None else (out, w, 0.0)
    args = (x.contiguous(), w.contiguous(), out, nw, sq_in, out if residual is None else residual.contiguous(),
            out if sq_out is None else sq_out, n_rows, n, k, sq_in.shape[-1], sq_shape[1], float(eps))
    meta = dict(BLOCK_M=BLOCK_M, IEEE=x.dtype == torch.float32, NORM_X=norm is not None, ADD_RES=residual is not None,
                BLOCK_SQ=_p2(sq_in.shape[-1]) if norm is not None else 1, **pdl_options(pdl))
    if block_n is None and block_k is None and not triton_interpreting():
        _gemv_on_load_tuned[lambda m: (triton.cdiv(n, m["BLOCK_N"]),)](*args, **meta)
    else:
        bn, bk = int(block_n or 16), int(block_k or min(32, _p2(k)))
        if bn % SQ_COLS:
            raise ValueError(f"gemv_on_load: block_n must be a multiple of {SQ_COLS}, got {bn}")
        _gemv_on_load_kernel[(triton.cdiv(n, bn),)](*args, BLOCK_N=bn, BLOCK_K=max(16, bk), **meta)
    return out, sq_out


def _check_prefetch(op: str, prefetch: bool) -> None:
    if prefetch and triton_interpreting():
        raise ValueError(f"{op}: prefetch=True issues PTX L2 prefetches: a CUDA GPU only, not Triton's interpreter")
