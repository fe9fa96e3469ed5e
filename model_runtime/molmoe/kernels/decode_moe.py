"""The decode step's routed experts: gate/up + SiLU·up and down GEMVs parallel over (token,
expert) pairs and output tiles, then the weighted sum + residual + the next block's RMSNorm (a third
kernel, or with :func:`moe_down_combine` the last program of each row's down projection); the gate/up
kernel can take the router's top-k itself (:func:`moe_gate_up_act_routed`)."""

from __future__ import annotations

import torch

from .common import (HAVE_TRITON, TUNING, Backend, _p2, block_configs, check_counters, pdl_options,
                     triton_interpreting)

if HAVE_TRITON:
    import triton
    import triton.language as tl

    from .common import arrive_last, pdl_enter
    from .norm_rope import rms_norm_of, store_sq_partials
    from .router import routed_rank

from .norm_rope import SQ_COLS, rms_norm, sq_partials, sq_partials_shape

# ============================================================================ kernels
if HAVE_TRITON:

    @triton.jit
    def _moe_gate_up_kernel(
        x_ptr, w_ptr, idx_ptr, out_ptr, K, P, D, I,
        BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr, NS: tl.constexpr, PDL: tl.constexpr = False,
    ):
        pdl_enter(PDL)
        pair = tl.program_id(0)  # token pair // K, rank pair % K
        e = tl.load(idx_ptr + pair).to(tl.int64)
        _gate_up_tile(x_ptr, w_ptr, out_ptr, pair, tl.program_id(1), e, pair // K, D, I, BLOCK_I, BLOCK_D, NS)

    @triton.jit
    def _moe_gate_up_routed_kernel(
        x_ptr, w_ptr, part_ptr, idx_ptr, wt_ptr, out_ptr, n_split, K, P, D, I, E,
        KMAX: tl.constexpr, NORM: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
        BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr, NS: tl.constexpr, PDL: tl.constexpr = False,
    ):
        # the router's top-k in every program (its row's partial logits, 64 values): each (pair, tile) finds its own
        # expert, and the first tile of each pair records it (and its weight) for the down projection and the combine
        pdl_enter(PDL)
        pair = tl.program_id(0)
        ib = tl.program_id(1)
        tok = pair // K
        e, wt = routed_rank(part_ptr, n_split, tok, pair % K, E, K, wt_ptr, KMAX, NORM, BLOCK_T, BLOCK_E)
        tl.store(idx_ptr + pair, e, mask=ib == 0)
        tl.store(wt_ptr + pair, wt.to(wt_ptr.dtype.element_ty), mask=ib == 0)
        _gate_up_tile(x_ptr, w_ptr, out_ptr, pair, ib, e.to(tl.int64), tok, D, I, BLOCK_I, BLOCK_D, NS)

    @triton.jit
    def _gate_up_tile(x_ptr, w_ptr, out_ptr, pair, ib, e, tok, D, I, BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr,
                      NS: tl.constexpr):
        # SiLU(gate)·up of expert e's rows ib*BLOCK_I.. for token tok, into pair's row of out
        i = ib * BLOCK_I + tl.arange(0, BLOCK_I)
        mi = i < I
        wg = w_ptr + e * 2 * I * D + i[:, None] * D
        wu = wg + I * D
        g = tl.zeros([BLOCK_I], tl.float32)
        u = tl.zeros([BLOCK_I], tl.float32)
        # NS > 1: the next NS - 1 weight tiles are staged in shared memory while this one is reduced
        for d0 in tl.range(0, D, BLOCK_D, num_stages=NS):
            d = d0 + tl.arange(0, BLOCK_D)
            md = d < D
            x = tl.load(x_ptr + tok * D + d, mask=md, other=0.0).to(tl.float32)[None, :]
            m2 = mi[:, None] & md[None, :]
            g += tl.sum(tl.load(wg + d[None, :], mask=m2, other=0.0).to(tl.float32) * x, axis=1)
            u += tl.sum(tl.load(wu + d[None, :], mask=m2, other=0.0).to(tl.float32) * x, axis=1)
        dt = out_ptr.dtype.element_ty
        g = g.to(dt).to(tl.float32)
        u = u.to(dt).to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32) * u
        tl.store(out_ptr + pair * I + i, act.to(dt), mask=mi)

    @triton.jit
    def _combine_row(y_ptr, wt_ptr, res_ptr, nw_ptr, out_ptr, normed_ptr, tok, D, eps, K, HAS_NORM: tl.constexpr,
                     BLOCK: tl.constexpr):
        # row tok: out = res + sum_j wt[j] * y[tok * K + j] (each term rounded to the dtype, as the eager
        # experts), and with HAS_NORM its RMSNorm * nw; y float32 (T*K, D)
        d = tl.arange(0, BLOCK)
        md = d < D
        dt = out_ptr.dtype.element_ty
        acc = tl.zeros([BLOCK], tl.float32)
        for j in range(0, K):
            yj = tl.load(y_ptr + (tok * K + j) * D + d, mask=md, other=0.0, cache_modifier=".cg")
            acc += (yj * tl.load(wt_ptr + tok * K + j).to(tl.float32)).to(dt).to(tl.float32)
        _combined_row_out(acc, res_ptr, nw_ptr, out_ptr, normed_ptr, tok, d, md, D, eps, HAS_NORM)

    @triton.jit
    def _combined_row_out(acc, res_ptr, nw_ptr, out_ptr, normed_ptr, tok, d, md, D, eps, HAS_NORM: tl.constexpr):
        # a row's weighted expert sum acc (float32): out = res + acc (rounded as the eager add), and with
        # HAS_NORM the next block's input RMSNorm (or the final norm) of it
        dt = out_ptr.dtype.element_ty
        r = tl.load(res_ptr + tok * D + d, mask=md, other=0.0).to(tl.float32)
        out = (r + acc.to(dt).to(tl.float32)).to(dt)
        tl.store(out_ptr + tok * D + d, out, mask=md)
        if HAS_NORM:
            w = tl.load(nw_ptr + d, mask=md, other=0.0).to(tl.float32)
            tl.store(normed_ptr + tok * D + d, rms_norm_of(out.to(tl.float32), w, D, eps, dt), mask=md)

    @triton.jit
    def _moe_down_kernel(act_ptr, w_ptr, idx_ptr, y_ptr, P, D, I, BLOCK_D: tl.constexpr, BLOCK_I: tl.constexpr,
                         NS: tl.constexpr, PDL: tl.constexpr = False):
        _moe_down_tile(act_ptr, w_ptr, idx_ptr, y_ptr, D, I, BLOCK_D, BLOCK_I, NS, PDL)

    @triton.jit
    def _moe_down_combine_kernel(act_ptr, w_ptr, idx_ptr, y_ptr, wt_ptr, res_ptr, nw_ptr, out_ptr, normed_ptr, cnt_ptr,
                                 P, D, I, K, eps, BLOCK_D: tl.constexpr, BLOCK_I: tl.constexpr, NS: tl.constexpr,
                                 HAS_NORM: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
        # the down projection's tiles; the last of a row's K pairs x D tiles to finish combines the row
        _moe_down_tile(act_ptr, w_ptr, idx_ptr, y_ptr, D, I, BLOCK_D, BLOCK_I, NS, PDL)
        tok = tl.program_id(0) // K
        if arrive_last(cnt_ptr + tok, K * tl.num_programs(1)):
            _combine_row(y_ptr, wt_ptr, res_ptr, nw_ptr, out_ptr, normed_ptr, tok, D, eps, K, HAS_NORM, BLOCK)

    @triton.jit
    def _moe_down_tile(act_ptr, w_ptr, idx_ptr, y_ptr, D, I, BLOCK_D: tl.constexpr, BLOCK_I: tl.constexpr,
                       NS: tl.constexpr, PDL: tl.constexpr):
        pdl_enter(PDL)
        pair = tl.program_id(0)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        md = d < D
        y = _down_pair_rows(act_ptr, w_ptr, idx_ptr, pair, d, md, D, I, BLOCK_D, BLOCK_I, NS)
        tl.store(y_ptr + pair * D + d, y.to(act_ptr.dtype.element_ty).to(tl.float32), mask=md)

    @triton.jit
    def _down_pair_rows(act_ptr, w_ptr, idx_ptr, pair, d, md, D, I, BLOCK_D: tl.constexpr, BLOCK_I: tl.constexpr,
                        NS: tl.constexpr):
        # pair's expert's down-projection rows d (mask md) times its activations: float32 (BLOCK_D,)
        wd = w_ptr + tl.load(idx_ptr + pair).to(tl.int64) * D * I + d[:, None] * I
        y = tl.zeros([BLOCK_D], tl.float32)
        for i0 in tl.range(0, I, BLOCK_I, num_stages=NS):
            i = i0 + tl.arange(0, BLOCK_I)
            mi = i < I
            a = tl.load(act_ptr + pair * I + i, mask=mi, other=0.0).to(tl.float32)[None, :]
            y += tl.sum(tl.load(wd + i[None, :], mask=md[:, None] & mi[None, :], other=0.0).to(tl.float32) * a, axis=1)
        return y

    @triton.jit
    def _moe_down_sum_kernel(act_ptr, w_ptr, idx_ptr, wt_ptr, res_ptr, out_ptr, sq_ptr, D, I, K, NSQ,
                             BLOCK_D: tl.constexpr, BLOCK_I: tl.constexpr, NS: tl.constexpr, PDL: tl.constexpr = False):
        # program (row, tile): the row's k experts' down projections for output columns tile*BLOCK_D.., each
        # rounded to the dtype and weighted as the eager experts (_moe_combine_kernel's arithmetic, summed over
        # the experts in rank order), plus the residual; and the result's sums-of-squares partials for the next norm
        pdl_enter(PDL)
        tok = tl.program_id(0)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        md = d < D
        dt = out_ptr.dtype.element_ty
        acc = tl.zeros([BLOCK_D], tl.float32)
        for j in range(0, K):
            y = _down_pair_rows(act_ptr, w_ptr, idx_ptr, tok * K + j, d, md, D, I, BLOCK_D, BLOCK_I, NS)
            acc += (y.to(dt).to(tl.float32) * tl.load(wt_ptr + tok * K + j).to(tl.float32)).to(dt).to(tl.float32)
        r = tl.load(res_ptr + tok * D + d, mask=md, other=0.0).to(tl.float32)
        out = (r + acc.to(dt).to(tl.float32)).to(dt)
        tl.store(out_ptr + tok * D + d, out, mask=md)
        rows = tok + tl.arange(0, 1)
        store_sq_partials(sq_ptr, out.to(tl.float32)[None, :], rows, rows == tok, tl.program_id(1) * BLOCK_D, NSQ, BLOCK_D)

    @triton.jit
    def _moe_combine_kernel(
        y_ptr, wt_ptr, res_ptr, nw_ptr, out_ptr, normed_ptr, D, eps,
        K: tl.constexpr, BLOCK_K: tl.constexpr, HAS_NORM: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False,
        RELEASE_FIRST: tl.constexpr = False,
    ):
        pdl_enter(PDL, RELEASE_FIRST)  # (RELEASE_FIRST: the next block's Q/K/V projection prefetches sooner)
        tok = tl.program_id(0)
        d = tl.arange(0, BLOCK)
        kk = tl.arange(0, BLOCK_K)
        md = d < D
        mk = kk < K
        dt = out_ptr.dtype.element_ty
        # the k expert outputs in one (K, D) tile, weighted as the eager experts (rounded to the dtype)
        y = tl.load(y_ptr + (tok * K + kk[:, None]) * D + d[None, :], mask=mk[:, None] & md[None, :], other=0.0)
        wj = tl.load(wt_ptr + tok * K + kk, mask=mk, other=0.0).to(tl.float32)
        acc = tl.sum((y * wj[:, None]).to(dt).to(tl.float32), axis=0)
        _combined_row_out(acc, res_ptr, nw_ptr, out_ptr, normed_ptr, tok, d, md, D, eps, HAS_NORM)

    # Tuned variants (CUDA): the best block sizes per (pairs, D, I), measured on first use
    # (warm-up, before any graph capture). The interpreter and explicit block sizes use the raw
    # kernels, unstaged. NS: weight tiles in flight per program (staged configurations added after
    # the H100 tuning; the autotuner keeps whichever measures fastest on the device).
    _gate_up_tuned = triton.autotune(
        configs=block_configs(("BLOCK_I", "BLOCK_D", "num_warps", "NS"),
                              ((8, 256, 4, 1), (8, 512, 4, 1), (16, 256, 4, 1), (16, 512, 8, 1), (32, 256, 4, 1),
                               (32, 512, 8, 1), (64, 128, 4, 1), (64, 256, 8, 1), (8, 512, 4, 2), (16, 256, 4, 2),
                               (16, 256, 4, 3), (32, 256, 4, 2))),
        key=["P", "D", "I"],
    )(_moe_gate_up_kernel)
    _gate_up_routed_tuned = triton.autotune(configs=_gate_up_tuned.configs, key=["P", "D", "I"])(_moe_gate_up_routed_kernel)
    _down_tuned = triton.autotune(
        configs=block_configs(("BLOCK_D", "BLOCK_I", "num_warps", "NS"),
                              ((4, 512, 4, 1), (4, 1024, 4, 1), (8, 512, 4, 1), (8, 1024, 8, 1), (16, 256, 4, 1),
                               (16, 512, 8, 1), (32, 256, 4, 1), (32, 256, 8, 1), (8, 256, 4, 2), (16, 256, 4, 2),
                               (16, 256, 4, 3), (8, 512, 4, 2))),
        key=["P", "D", "I"],
    )(_moe_down_kernel)
    _down_combine_tuned = triton.autotune(configs=_down_tuned.configs, key=["P", "D", "I"])(_moe_down_combine_kernel)
    # (one program per (row, output tile) loops over the row's k experts: fewer, longer programs than the pair
    # kernels', so deeper staging is tried; tiles are multiples of SQ_COLS, the partials' width)
    _down_sum_tuned = triton.autotune(
        configs=block_configs(("BLOCK_D", "BLOCK_I", "num_warps", "NS"),
                              ((8, 256, 4, 1), (8, 256, 4, 2), (8, 256, 4, 3), (8, 512, 4, 2), (8, 1024, 4, 1),
                               (8, 512, 8, 2), (16, 256, 4, 2), (16, 256, 8, 3), (16, 512, 8, 2), (16, 1024, 8, 1))),
        key=["D", "I", "K"],
    )(_moe_down_sum_kernel)


# ============================================================================ ops
def _launch_pair_tiles(
    tuned: object, raw: object, args: tuple, pairs: int, n: int, block_name: str, block: int | None, tuning_key: str,
    pdl: bool = False, consts: dict | None = None, **raw_meta: int,
) -> None:
    """Launch an expert kernel over a (token-expert pairs, ceil(n / block)) grid: the autotuned
    variant on CUDA, the raw kernel with ``block`` (or ``TUNING[tuning_key]``) otherwise; ``consts``
    go to either, ``raw_meta`` to the raw kernel only (the tuned one's configurations set them)."""
    consts = dict(consts or {}, **pdl_options(pdl))
    if block is None and not triton_interpreting():
        tuned[lambda meta: (pairs, triton.cdiv(n, meta[block_name]))](*args, **consts)  # type: ignore[index]
    else:
        b = min(TUNING[tuning_key] if block is None else int(block), _p2(n))
        raw[(pairs, triton.cdiv(n, b))](*args, **{block_name: b}, **raw_meta, NS=1, **consts)  # type: ignore[index]


def moe_gate_up_act(
    x: torch.Tensor, gate_up: torch.Tensor, idx: torch.Tensor, backend: Backend = "torch", block_i: int | None = None,
    pdl: bool = False,
) -> torch.Tensor:
    """SiLU(gate)·up of each (token, routed expert) pair: x (T, D), gate_up (E, 2I, D), idx (T, k)
    → (T·k, I), pair p = token p // k, rank p % k. ``block_i``: expert rows per program (default:
    autotuned on CUDA, ``TUNING`` in the interpreter)."""
    n_tok, top_k = idx.shape
    n_int = gate_up.shape[1] // 2
    if backend == "torch":
        g, u = torch.einsum("td,tkhd->tkh", x, gate_up[idx.long()]).chunk(2, dim=-1)
        return (torch.nn.functional.silu(g) * u).reshape(n_tok * top_k, n_int)
    dim, pairs = x.shape[-1], n_tok * top_k
    out = torch.empty(pairs, n_int, dtype=x.dtype, device=x.device)
    _launch_pair_tiles(_gate_up_tuned, _moe_gate_up_kernel, (x.contiguous(), gate_up, idx.contiguous(), out, top_k, pairs, dim, n_int),
                       pairs, n_int, "BLOCK_I", block_i, "gate_up_block_i", pdl, BLOCK_D=min(256, _p2(dim)))
    return out


def moe_gate_up_act_routed(
    x: torch.Tensor, gate_up: torch.Tensor, partials: torch.Tensor, n_exp: int, top_k: int, norm_topk_prob: bool,
    backend: Backend = "torch", block_i: int | None = None, pdl: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`~.router.router_topk` then :func:`moe_gate_up_act` in one kernel, from the router's partial logits
    (:func:`~.router.router_partials`): every (pair, tile) program takes its row's top-k itself (64 logits), so
    no kernel runs between the router's projection and the experts (``FusedLM(decode_router="in_experts")``).

    Returns (act (T·k, I), weights (T, k) in x's dtype, expert ids (T, k) int32), as the two ops'."""
    n_tok = x.shape[0]
    if backend == "torch":
        from .router import router_topk

        weights, idx = router_topk(partials.sum(0)[:n_tok, :n_exp].to(x.dtype), top_k, norm_topk_prob, "torch")
        return moe_gate_up_act(x, gate_up, idx, "torch"), weights, idx
    n_int, dim = gate_up.shape[1] // 2, x.shape[-1]
    pairs = n_tok * top_k
    out = torch.empty(pairs, n_int, dtype=x.dtype, device=x.device)
    weights = torch.empty(n_tok, top_k, dtype=x.dtype, device=x.device)
    idx = torch.empty(n_tok, top_k, dtype=torch.int32, device=x.device)
    n_split, rows, block_e = partials.shape
    args = (x.contiguous(), gate_up, partials, idx, weights, out, n_split, top_k, pairs, dim, n_int, n_exp)
    _launch_pair_tiles(_gate_up_routed_tuned, _moe_gate_up_routed_kernel, args, pairs, n_int, "BLOCK_I", block_i,
                       "gate_up_block_i", pdl,
                       consts={"KMAX": _p2(top_k), "NORM": bool(norm_topk_prob), "BLOCK_T": rows, "BLOCK_E": block_e},
                       BLOCK_D=min(256, _p2(dim)))
    return out, weights, idx


def moe_down(
    act: torch.Tensor, down: torch.Tensor, idx: torch.Tensor, backend: Backend = "torch", block_d: int | None = None,
    pdl: bool = False,
) -> torch.Tensor:
    """Each pair's expert output ``down[idx] @ act`` → (T·k, D) float32 (values rounded to act's
    dtype, as the eager experts' output). act (T·k, I), down (E, D, I), idx (T, k)."""
    n_tok, top_k = idx.shape
    dim, n_int = down.shape[1], down.shape[2]
    pairs = n_tok * top_k
    if backend == "torch":
        y = torch.einsum("pi,pdi->pd", act, down[idx.long().reshape(-1)])
        return y.float()
    y = torch.empty(pairs, dim, dtype=torch.float32, device=act.device)
    _launch_pair_tiles(_down_tuned, _moe_down_kernel, (act.contiguous(), down, idx.contiguous(), y, pairs, dim, n_int),
                       pairs, dim, "BLOCK_D", block_d, "down_block_d", pdl, BLOCK_I=min(256, _p2(n_int)))
    return y


def moe_combine(
    y: torch.Tensor,
    weights: torch.Tensor,
    residual: torch.Tensor,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-5,
    backend: Backend = "torch",
    pdl: bool = False,
    release_first: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``out = residual + Σ_j weights[:, j] · y[t·k + j]`` and, with ``norm_weight``, the RMSNorm of
    ``out`` (the next block's input norm or the final norm, fused here to save a launch).

    Args:
        y: (T·k, D) float32 from :func:`moe_down`; weights: (T, k); residual: (T, D).
        release_first: with ``pdl``, the kernel lets the next one launch before it waits
            (:func:`~.common.pdl_enter`'s ``RELEASE_FIRST``).

    Returns:
        (out (T, D), normed (T, D) or None), in residual's dtype.
    """
    n_tok, top_k = weights.shape
    dim = residual.shape[-1]
    if backend == "torch":
        moe = (y.to(residual.dtype).reshape(n_tok, top_k, dim) * weights[..., None]).sum(dim=1)
        out = residual + moe.to(residual.dtype)
        return out, None if norm_weight is None else rms_norm(out, norm_weight, eps, "torch")
    out = torch.empty_like(residual)
    normed = torch.empty_like(residual) if norm_weight is not None else out
    _moe_combine_kernel[(n_tok,)](
        y, weights.contiguous(), residual.contiguous(), norm_weight if norm_weight is not None else residual, out, normed,
        dim, eps, K=top_k, BLOCK_K=_p2(top_k), HAS_NORM=norm_weight is not None, BLOCK=_p2(dim), num_warps=8,
        RELEASE_FIRST=release_first, **pdl_options(pdl),
    )
    return out, normed if norm_weight is not None else None


def moe_down_combine(
    act: torch.Tensor,
    down: torch.Tensor,
    idx: torch.Tensor,
    weights: torch.Tensor,
    residual: torch.Tensor,
    norm_weight: torch.Tensor | None,
    eps: float,
    counters: torch.Tensor | None,
    backend: Backend = "torch",
    block_d: int | None = None,
    pdl: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`moe_down` then :func:`moe_combine` in one kernel: the last of each row's (expert, tile)
    programs to finish (:func:`~.common.arrive_last` on ``counters[row]``) does the row's weighted sum,
    residual add and RMSNorm. Arguments and results as the two ops'."""
    if backend == "torch":
        return moe_combine(moe_down(act, down, idx, "torch"), weights, residual, norm_weight, eps, "torch")
    n_tok, top_k = idx.shape
    dim, n_int = down.shape[1], down.shape[2]
    check_counters("moe_down_combine", counters, n_tok, "row")
    pairs = n_tok * top_k
    y = torch.empty(pairs, dim, dtype=torch.float32, device=act.device)
    out = torch.empty_like(residual)
    normed = torch.empty_like(residual) if norm_weight is not None else out
    args = (act.contiguous(), down, idx.contiguous(), y, weights.contiguous(), residual.contiguous(),
            norm_weight if norm_weight is not None else residual, out, normed, counters, pairs, dim, n_int, top_k, float(eps))
    _launch_pair_tiles(_down_combine_tuned, _moe_down_combine_kernel, args, pairs, dim, "BLOCK_D", block_d,
                       "down_block_d", pdl, consts={"HAS_NORM": norm_weight is not None, "BLOCK": _p2(dim)},
                       BLOCK_I=min(256, _p2(n_int)))
    return out, normed if norm_weight is not None else None


def moe_down_sum(
    act: torch.Tensor, down: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor, residual: torch.Tensor,
    backend: Backend = "torch", block_d: int | None = None, pdl: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`moe_down` then :func:`moe_combine` without the norm, in one kernel: each program takes one row's
    output tile over all its k experts, so the weighted sum needs no second kernel
    (``FusedLM(decode_epilogues="on_load")``); the next RMSNorm is left to the kernel that reads the result, with
    the sum of squares as partials (:func:`~.norm_rope.sq_partials`).

    Returns (out = residual + Σ_j weights[:, j] · down[idx[:, j]] @ act (T, D), its partials (T, D / SQ_COLS))."""
    if backend == "torch":
        out, _ = moe_combine(moe_down(act, down, idx, "torch"), weights, residual, None, backend="torch")
        return out, sq_partials(out)
    n_tok, top_k = idx.shape
    dim, n_int = down.shape[1], down.shape[2]
    out = torch.empty_like(residual)
    sq = torch.empty(sq_partials_shape(n_tok, dim), dtype=torch.float32, device=act.device)
    args = (act.contiguous(), down, idx.contiguous(), weights.contiguous(), residual.contiguous(), out, sq, dim, n_int,
            top_k, sq.shape[1])
    if block_d is None and not triton_interpreting():
        _down_sum_tuned[lambda meta: (n_tok, triton.cdiv(dim, meta["BLOCK_D"]))](*args, **pdl_options(pdl))
    else:
        bd = int(block_d or SQ_COLS)
        if bd % SQ_COLS:
            raise ValueError(f"moe_down_sum: block_d must be a multiple of {SQ_COLS}, got {bd}")
        _moe_down_sum_kernel[(n_tok, triton.cdiv(dim, bd))](*args, BLOCK_D=bd, BLOCK_I=min(256, _p2(n_int)), NS=1,
                                                             **pdl_options(pdl))
    return out, sq
