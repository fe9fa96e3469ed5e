"""The router: softmax (float32) over all experts' logits, then top-k."""

from __future__ import annotations

import torch

from .common import HAVE_TRITON, Backend, _p2

if HAVE_TRITON:
    import triton
    import triton.language as tl


# ============================================================================ kernels
if HAVE_TRITON:

    @triton.jit
    def _softmax_topk(z, e, me, k, KMAX: tl.constexpr, BLOCK_E: tl.constexpr, NORM: tl.constexpr):
        # softmax (float32) over the logits z (BLOCK_E,) where me, then the k (<= KMAX) largest,
        # lowest index on ties as torch.topk on distinct values: expert ids (KMAX,) int32 and
        # float32 weights (renormalised over the k with NORM; entries past k are 0)
        p = tl.exp(z - tl.max(z, axis=0))
        p = tl.where(me, p / tl.sum(p, axis=0), -1.0)
        jj = tl.arange(0, KMAX)
        ids = tl.zeros([KMAX], tl.int32)
        wts = tl.zeros([KMAX], tl.float32)
        total = tl.sum(tl.zeros([BLOCK_E], tl.float32), axis=0)
        for j in tl.static_range(KMAX):
            v = tl.max(p, axis=0)
            i = tl.min(tl.where(p == v, e, BLOCK_E), axis=0)
            take = (jj == j) & (j < k)
            ids = tl.where(take, i, ids)
            wts = tl.where(take, v, wts)
            total += tl.where(j < k, v, 0.0)  # in descending order, one by one
            p = tl.where(e == i, -1.0, p)
        if NORM:
            wts = wts / total
        return ids, wts

    @triton.jit
    def _router_topk_kernel(logits_ptr, w_ptr, idx_ptr, E, K: tl.constexpr, KMAX: tl.constexpr, NORM: tl.constexpr,
                            BLOCK_E: tl.constexpr):
        t = tl.program_id(0)
        e = tl.arange(0, BLOCK_E)
        me = e < E
        z = tl.load(logits_ptr + t * E + e, mask=me, other=-float("inf")).to(tl.float32)
        ids, wts = _softmax_topk(z, e, me, K, KMAX, BLOCK_E, NORM)
        jj = tl.arange(0, KMAX)
        tl.store(idx_ptr + t * K + jj, ids, mask=jj < K)
        tl.store(w_ptr + t * K + jj, wts.to(w_ptr.dtype.element_ty), mask=jj < K)


# ============================================================================ ops
def router_topk(
    logits: torch.Tensor, top_k: int, norm_topk_prob: bool, backend: Backend = "torch"
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
                                  BLOCK_E=_p2(n_exp))
    return w, idx
