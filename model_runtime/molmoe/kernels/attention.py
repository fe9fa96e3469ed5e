"""Decode attention: one query per row over the KV cache, split over positions (split-K) and reduced."""

from __future__ import annotations

import math

import torch

from .common import HAVE_TRITON, TUNING, Backend, _p2, pdl_options

if HAVE_TRITON:
    import triton
    import triton.language as tl

    from .common import arrive_last, pdl_enter


# ============================================================================ kernels
if HAVE_TRITON:

    @triton.jit
    def _online_softmax_step(sc, ok, vt, m_i, l_i, acc):
        # one tile of positions into the running (max, sum, weighted values) of split-K attention:
        # sc (N,) scores (-1e30 where not ok), vt (N, Dh) values; returns the updated (m_i, l_i, acc)
        m_new = tl.maximum(m_i, tl.max(sc, axis=0))
        p = tl.where(ok, tl.exp(sc - m_new), 0.0)
        alpha = tl.exp(m_i - m_new)
        return m_new, l_i * alpha + tl.sum(p, axis=0), acc * alpha + tl.sum(p[:, None] * vt, axis=0)

    @triton.jit
    def _merge_splits(m, lse, acc, ms):
        # one head's attention output from its splits' (S,) maxima and sums and (S, Dh) weighted
        # values (splits where ms is False take no part)
        w = tl.where(ms, tl.exp(m - tl.max(m, axis=0)), 0.0)
        return tl.sum(w[:, None] * acc, axis=0) / tl.sum(w * lse, axis=0)

    @triton.jit
    def _reduce_splits(m_ptr, l_ptr, acc_ptr, out_ptr, b, h, H, NSPLIT, DH: tl.constexpr, BLOCK_S: tl.constexpr):
        # head h of row b: its splits' (max, sum, weighted values) merged into the output (B, H Dh)
        s = tl.arange(0, BLOCK_S)
        d = tl.arange(0, DH)
        base = (b * H + h) * NSPLIT
        ms = s < NSPLIT
        m = tl.load(m_ptr + base + s, mask=ms, other=-1.0e30, cache_modifier=".cg")
        lse = tl.load(l_ptr + base + s, mask=ms, other=0.0, cache_modifier=".cg")
        acc = tl.load(acc_ptr + (base + s[:, None]) * DH + d[None, :], mask=ms[:, None], other=0.0, cache_modifier=".cg")
        out = _merge_splits(m, lse, acc, ms)
        tl.store(out_ptr + (b * H + h) * DH + d, out.to(out_ptr.dtype.element_ty))

    @triton.jit
    def _attn_split_kernel(
        q_ptr, k_ptr, v_ptr, valid_ptr, slot_ptr, m_ptr, l_ptr, acc_ptr, out_ptr, cnt_ptr,
        H, HKV, L, NSPLIT, scale,
        DH: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, REDUCE: tl.constexpr = False,
        BLOCK_S: tl.constexpr = 1, PDL: tl.constexpr = False,
    ):
        # REDUCE: the last split of each (row, head) to finish merges them (arrive_last), the
        # reduction kernel's work without its launch
        pdl_enter(PDL)
        b = tl.program_id(0)
        h = tl.program_id(1)
        s = tl.program_id(2)
        hk = h // (H // HKV)
        d = tl.arange(0, DH)
        q = tl.load(q_ptr + (b * H + h) * DH + d).to(tl.float32)
        end = tl.minimum((s + 1) * CHUNK, tl.load(slot_ptr) + 1)  # positions after the slot are empty
        kv = (b * HKV + hk) * L * DH
        m_i = tl.max(tl.full([BLOCK_N], -1.0e30, tl.float32), axis=0)
        l_i = tl.sum(tl.zeros([BLOCK_N], tl.float32), axis=0)
        acc = tl.zeros([DH], tl.float32)
        for n0 in range(s * CHUNK, end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            inb = n < end
            # validity, keys and values issued together (none waits for another); positions that are
            # not valid are selected away below, whatever their keys and values hold
            ok = inb & (tl.load(valid_ptr + b * L + n, mask=inb, other=0) != 0)
            kt = tl.load(k_ptr + kv + n[:, None] * DH + d[None, :], mask=inb[:, None], other=0.0).to(tl.float32)
            vt = tl.load(v_ptr + kv + n[:, None] * DH + d[None, :], mask=inb[:, None], other=0.0).to(tl.float32)
            vt = tl.where(ok[:, None], vt, 0.0)
            sc = tl.where(ok, tl.sum(kt * q[None, :], axis=1) * scale, -1.0e30)
            m_i, l_i, acc = _online_softmax_step(sc, ok, vt, m_i, l_i, acc)
        o = (b * H + h) * NSPLIT + s
        tl.store(m_ptr + o, m_i)
        tl.store(l_ptr + o, l_i)
        tl.store(acc_ptr + o * DH + d, acc)
        if REDUCE:
            if arrive_last(cnt_ptr + b * H + h, NSPLIT):
                _reduce_splits(m_ptr, l_ptr, acc_ptr, out_ptr, b, h, H, NSPLIT, DH, BLOCK_S)

    @triton.jit
    def _attn_reduce_kernel(m_ptr, l_ptr, acc_ptr, out_ptr, H, NSPLIT, DH: tl.constexpr, BLOCK_S: tl.constexpr,
                            PDL: tl.constexpr = False):
        pdl_enter(PDL)
        _reduce_splits(m_ptr, l_ptr, acc_ptr, out_ptr, tl.program_id(0), tl.program_id(1), H, NSPLIT, DH, BLOCK_S)


# ============================================================================ ops
def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    valid: torch.Tensor,
    slot: torch.Tensor,
    scale: float,
    backend: Backend = "torch",
    chunk: int | None = None,
    pdl: bool = False,
    counters: torch.Tensor | None = None,
) -> torch.Tensor:
    """One query per row over the cache positions ``0..slot`` marked valid.

    Args:
        q: (B, H, Dh); k_cache, v_cache: (B, H_kv, L, Dh); valid: (B, L) int64 (1 = attend);
        slot: (1,) int64, the last position written.
        counters: :func:`~.common.arrival_counters` (at least B·H): the splits are merged by the
            last of each head's splits to finish, not by a second kernel.

    Returns:
        (B, H Dh) attention output in q's dtype.
    """
    bsz, n_heads, dh = q.shape
    n_kv, length = k_cache.shape[1], k_cache.shape[2]
    if backend == "torch":
        group = n_heads // n_kv
        k = k_cache.repeat_interleave(group, dim=1).float()
        v = v_cache.repeat_interleave(group, dim=1).float()
        scores = torch.einsum("bhd,bhld->bhl", q.float(), k) * scale
        keep = (valid != 0) & (torch.arange(length, device=q.device) <= slot)[None]
        scores = scores.masked_fill(~keep[:, None], float("-inf"))
        out = torch.einsum("bhl,bhld->bhd", torch.softmax(scores, dim=-1), v)
        return out.to(q.dtype).reshape(bsz, n_heads * dh)
    chunk = TUNING["attn_chunk"] if chunk is None else int(chunk)
    nsplit = triton.cdiv(length, chunk)
    m = torch.empty(bsz, n_heads, nsplit, dtype=torch.float32, device=q.device)
    lse = torch.empty_like(m)
    acc = torch.empty(bsz, n_heads, nsplit, dh, dtype=torch.float32, device=q.device)
    out = torch.empty(bsz, n_heads * dh, dtype=q.dtype, device=q.device)
    if counters is not None and counters.numel() < bsz * n_heads:
        raise ValueError(f"decode_attention: {counters.numel()} counters for {bsz * n_heads} (row, head) merges")
    _attn_split_kernel[(bsz, n_heads, nsplit)](
        q.contiguous(), k_cache, v_cache, valid, slot, m, lse, acc, out, counters if counters is not None else slot,
        n_heads, n_kv, length, nsplit, float(scale), DH=dh, CHUNK=chunk, BLOCK_N=min(chunk, 64),
        REDUCE=counters is not None, BLOCK_S=_p2(nsplit), **pdl_options(pdl),
    )
    if counters is not None:
        return out
    _attn_reduce_kernel[(bsz, n_heads)](m, lse, acc, out, n_heads, nsplit, DH=dh, BLOCK_S=_p2(nsplit), **pdl_options(pdl))
    return out


def attention_scale(head_dim: int) -> float:
    """Softmax scale of the attention (1/sqrt(Dh), as transformers' ``scaling``)."""
    return 1.0 / math.sqrt(head_dim)
