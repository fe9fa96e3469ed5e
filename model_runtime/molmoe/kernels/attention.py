"""Decode attention: one query per row over the KV cache, split over positions (split-K) and reduced;
optionally with the QK-norm + RoPE + cache write of the new token in the split kernel
(:func:`qk_norm_rope_attention`)."""

from __future__ import annotations

import math

import torch

from typing import Callable

from .common import HAVE_TRITON, AttnTile, Backend, _p2, attn_tile, check_counters, pdl_options
from .norm_rope import qk_norm_rope_store

if HAVE_TRITON:
    import triton
    import triton.language as tl

    from .common import arrive_last, pdl_enter
    from .norm_rope import norm_rope_head, rope_cos_sin_row


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
        BLOCK_S: tl.constexpr = 1, PDL: tl.constexpr = False, KV_EARLY: tl.constexpr = False,
    ):
        # REDUCE: the last split of each (row, head) to finish merges them (arrive_last), the
        # reduction kernel's work without its launch. KV_EARLY (one tile a split, CHUNK == BLOCK_N): the split's
        # past keys and values are loaded before the PDL wait, since the kernel before writes only the slot's
        # (qk_norm_rope_store), which is loaded after it
        b = tl.program_id(0)
        h = tl.program_id(1)
        s = tl.program_id(2)
        hk = h // (H // HKV)
        d = tl.arange(0, DH)
        kv = (b * HKV + hk) * L * DH
        m_i = tl.max(tl.full([BLOCK_N], -1.0e30, tl.float32), axis=0)
        l_i = tl.sum(tl.zeros([BLOCK_N], tl.float32), axis=0)
        acc = tl.zeros([DH], tl.float32)
        if KV_EARLY:
            slot = tl.load(slot_ptr)  # advanced by the step's last op: not written by the kernel before
            n = s * CHUNK + tl.arange(0, BLOCK_N)
            inb = n < tl.minimum((s + 1) * CHUNK, slot + 1)  # positions after the slot are empty
            past = inb & (n != slot)
            ok = past & (tl.load(valid_ptr + b * L + n, mask=past, other=0) != 0)
            kt = tl.load(k_ptr + kv + n[:, None] * DH + d[None, :], mask=past[:, None], other=0.0)
            vt = tl.load(v_ptr + kv + n[:, None] * DH + d[None, :], mask=past[:, None], other=0.0)
            pdl_enter(PDL)
            q = tl.load(q_ptr + (b * H + h) * DH + d).to(tl.float32)
            # the slot's key and value (and its validity), written for this step, in the split that holds it
            at = (n == slot) & inb
            has = (s * CHUNK <= slot) & (slot < (s + 1) * CHUNK)
            dm = d < tl.where(has, DH, 0)  # (a comparison: Triton's interpreter mis-types a vector & a scalar mask)
            k_new = tl.load(k_ptr + kv + slot * DH + d, mask=dm, other=0.0)
            v_new = tl.load(v_ptr + kv + slot * DH + d, mask=dm, other=0.0)
            ok = ok | (at & (tl.load(valid_ptr + b * L + n, mask=at, other=0) != 0))
            kt = tl.where(at[:, None], k_new[None, :], kt).to(tl.float32)
            vt = tl.where(ok[:, None], tl.where(at[:, None], v_new[None, :], vt).to(tl.float32), 0.0)
            sc = tl.where(ok, tl.sum(kt * q[None, :], axis=1) * scale, -1.0e30)
            m_i, l_i, acc = _online_softmax_step(sc, ok, vt, m_i, l_i, acc)
        else:
            pdl_enter(PDL)
            q = tl.load(q_ptr + (b * H + h) * DH + d).to(tl.float32)
            end = tl.minimum((s + 1) * CHUNK, tl.load(slot_ptr) + 1)  # positions after the slot are empty
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
    def _attn_qk_split_kernel(
        qkv_ptr, qkw_ptr, pos_ptr, inv_freq_ptr, k_ptr, v_ptr, valid_ptr, slot_ptr, m_ptr, l_ptr, acc_ptr, out_ptr,
        cnt_ptr, H, HKV, L, NSPLIT, scale, eps, rope_scale,
        DH: tl.constexpr, HALF: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, CHUNK: tl.constexpr,
        BLOCK_N: tl.constexpr, REDUCE: tl.constexpr = False, BLOCK_S: tl.constexpr = 1, PDL: tl.constexpr = False,
    ):
        # _attn_split_kernel with qk_norm_rope_store's work in it: each program norms and rotates its head's query
        # from the QKV projection's row (and the new key of its key/value head), so that no kernel runs between
        # the projection and the attention. The new key and value take part from registers at the slot position;
        # the split holding the slot of each key/value head's first query head writes them to the cache.
        pdl_enter(PDL)
        b = tl.program_id(0)
        h = tl.program_id(1)
        s = tl.program_id(2)
        group = H // HKV
        hk = h // group
        row = qkv_ptr + b * (H + 2 * HKV) * DH
        jj = tl.arange(0, HALF)
        dt = k_ptr.dtype.element_ty
        cos, sin = rope_cos_sin_row(tl.load(pos_ptr + b), inv_freq_ptr, rope_scale, dt, HALF)
        q1, q2 = norm_rope_head(row, qkw_ptr, h, H * DH, cos, sin, eps, DH, HALF, BLOCK_Q)
        k1, k2 = norm_rope_head(row + H * DH, qkw_ptr + H * DH, hk, HKV * DH, cos, sin, eps, DH, HALF, BLOCK_K)
        vrow = row + (H + HKV) * DH + hk * DH
        v1 = tl.load(vrow + jj).to(tl.float32)
        v2 = tl.load(vrow + HALF + jj).to(tl.float32)
        slot = tl.load(slot_ptr)
        kv = (b * HKV + hk) * L * DH
        writer = (s * CHUNK <= slot) & (slot < (s + 1) * CHUNK) & (h % group == 0)
        wm = jj < tl.where(writer, HALF, 0)  # (a comparison: Triton's interpreter mis-types a vector & a scalar mask)
        tl.store(k_ptr + kv + slot * DH + jj, k1.to(dt), mask=wm)
        tl.store(k_ptr + kv + slot * DH + HALF + jj, k2.to(dt), mask=wm)
        tl.store(v_ptr + kv + slot * DH + jj, v1.to(dt), mask=wm)
        tl.store(v_ptr + kv + slot * DH + HALF + jj, v2.to(dt), mask=wm)
        end = tl.minimum((s + 1) * CHUNK, slot + 1)  # positions after the slot are empty
        m_i = tl.max(tl.full([BLOCK_N], -1.0e30, tl.float32), axis=0)
        l_i = tl.sum(tl.zeros([BLOCK_N], tl.float32), axis=0)
        acc1 = tl.zeros([HALF], tl.float32)
        acc2 = tl.zeros([HALF], tl.float32)
        for n0 in range(s * CHUNK, end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            inb = n < end
            new = (n == slot)[:, None]
            ok = inb & (tl.load(valid_ptr + b * L + n, mask=inb, other=0) != 0)
            rd = inb[:, None] & (n != slot)[:, None]  # the cache's positions before the slot
            t = kv + n[:, None] * DH + jj[None, :]
            kt1 = tl.where(new, k1[None, :], tl.load(k_ptr + t, mask=rd, other=0.0).to(tl.float32))
            kt2 = tl.where(new, k2[None, :], tl.load(k_ptr + t + HALF, mask=rd, other=0.0).to(tl.float32))
            vt1 = tl.where(new, v1[None, :], tl.load(v_ptr + t, mask=rd, other=0.0).to(tl.float32))
            vt2 = tl.where(new, v2[None, :], tl.load(v_ptr + t + HALF, mask=rd, other=0.0).to(tl.float32))
            sc = tl.where(ok, (tl.sum(kt1 * q1[None, :], axis=1) + tl.sum(kt2 * q2[None, :], axis=1)) * scale, -1.0e30)
            # the two halves of the values take the same step (the second's running max and sum are the first's)
            m_new, l_new, acc1 = _online_softmax_step(sc, ok, tl.where(ok[:, None], vt1, 0.0), m_i, l_i, acc1)
            _, _, acc2 = _online_softmax_step(sc, ok, tl.where(ok[:, None], vt2, 0.0), m_i, l_i, acc2)
            m_i, l_i = m_new, l_new
        o = (b * H + h) * NSPLIT + s
        tl.store(m_ptr + o, m_i)
        tl.store(l_ptr + o, l_i)
        tl.store(acc_ptr + o * DH + jj, acc1)
        tl.store(acc_ptr + o * DH + HALF + jj, acc2)
        if REDUCE:
            if arrive_last(cnt_ptr + b * H + h, NSPLIT):
                _reduce_splits(m_ptr, l_ptr, acc_ptr, out_ptr, b, h, H, NSPLIT, DH, BLOCK_S)

    @triton.jit
    def _attn_reduce_kernel(m_ptr, l_ptr, acc_ptr, out_ptr, H, NSPLIT, DH: tl.constexpr, BLOCK_S: tl.constexpr,
                            PDL: tl.constexpr = False, RELEASE_FIRST: tl.constexpr = False):
        pdl_enter(PDL, RELEASE_FIRST)  # (RELEASE_FIRST: the output projection after it prefetches sooner)
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
    release_first: bool = False,
    kv_early: bool = False,
    tile: AttnTile | None = None,
) -> torch.Tensor:
    """One query per row over the cache positions ``0..slot`` marked valid.

    Args:
        q: (B, H, Dh); k_cache, v_cache: (B, H_kv, L, Dh); valid: (B, L) int64 (1 = attend);
        slot: (1,) int64, the last position written.
        counters: :func:`~.common.arrival_counters` (at least B·H): the splits are merged by the
            last of each head's splits to finish, not by a second kernel.
        release_first: with ``pdl``, the merge kernel lets the next kernel launch before it waits
            (:func:`~.common.pdl_enter`'s ``RELEASE_FIRST``).
        kv_early: each split loads its past keys and values (every position but the slot's, which the kernel
            before writes) before its PDL wait, so that with ``pdl`` the cache streams while the QK-norm kernel
            runs (``FusedLM(decode_prefetch="kv")``; splits of one tile, ``chunk`` ≤ 64). Same results.
        chunk: positions a split (default: :func:`~.common.attn_tile` of the batch's rows); ``tile``: the whole
            tile, which wins over ``chunk``. Same results up to the order of float32 sums.

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
    q = q.contiguous()

    def split(grid: tuple[int, int, int], merged: tuple, meta: dict) -> None:
        if kv_early and meta["CHUNK"] != meta["BLOCK_N"]:
            raise ValueError(f"decode_attention: kv_early loads a split's one tile before the wait: chunk must be at "
                             f"most {meta['BLOCK_N']}, got {meta['CHUNK']}")
        _attn_split_kernel[grid](q, k_cache, v_cache, valid, slot, *merged, n_heads, n_kv, length, grid[2], float(scale),
                                 DH=dh, KV_EARLY=kv_early, **meta)

    return _split_and_merge(split, "decode_attention", bsz, n_heads, dh, length, q.dtype, q.device,
                            tile or attn_tile(bsz, chunk), pdl, counters, release_first)


def attention_scale(head_dim: int) -> float:
    """Softmax scale of the attention (1/sqrt(Dh), as transformers' ``scaling``)."""
    return 1.0 / math.sqrt(head_dim)


def qk_norm_rope_attention(
    qkv: torch.Tensor,
    qk_weight: torch.Tensor,
    eps: float,
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    rope_scale: float,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    valid: torch.Tensor,
    slot: torch.Tensor,
    n_heads: int,
    scale: float,
    backend: Backend = "torch",
    chunk: int | None = None,
    pdl: bool = False,
    counters: torch.Tensor | None = None,
    tile: AttnTile | None = None,
) -> torch.Tensor:
    """:func:`~.norm_rope.qk_norm_rope_store` then :func:`decode_attention`, with the first's work in the
    attention's split kernel (``FusedLM(decode_qk_norm="in_attention")``): one kernel boundary fewer a block.

    Args as the two ops' (qkv (B, (H + 2 H_kv) Dh) the QKV projection's rows; the new key and value are
    written to the caches at ``slot``). Returns (B, H Dh) attention output in qkv's dtype."""
    if backend == "torch":
        q = qk_norm_rope_store(qkv, qk_weight, eps, positions, inv_freq, rope_scale, k_cache, v_cache, slot, n_heads,
                               "torch")
        return decode_attention(q, k_cache, v_cache, valid, slot, scale, "torch")
    bsz = qkv.shape[0]
    n_kv, length, dh = k_cache.shape[1], k_cache.shape[2], k_cache.shape[3]
    qkv = qkv.contiguous()

    def split(grid: tuple[int, int, int], merged: tuple, meta: dict) -> None:
        _attn_qk_split_kernel[grid](qkv, qk_weight, positions, inv_freq, k_cache, v_cache, valid, slot, *merged,
                                    n_heads, n_kv, length, grid[2], float(scale), float(eps), float(rope_scale), DH=dh,
                                    HALF=dh // 2, BLOCK_Q=_p2(n_heads * dh), BLOCK_K=_p2(n_kv * dh), **meta)

    return _split_and_merge(split, "qk_norm_rope_attention", bsz, n_heads, dh, length, qkv.dtype, qkv.device,
                            tile or attn_tile(bsz, chunk), pdl, counters)


def _split_and_merge(split: Callable[[tuple[int, int, int], tuple, dict], None], op: str, bsz: int, n_heads: int,
                     dh: int, length: int, dtype: torch.dtype, device: torch.device, tile: AttnTile, pdl: bool,
                     counters: torch.Tensor | None, release_first: bool = False) -> torch.Tensor:
    """The split-K attention's launches: the (B, H, ceil(L / tile.chunk)) grid of a split kernel (``split(grid,
    merged, meta)`` launches it with the splits' buffers and output ``merged`` = (m, l, acc, out, counters) and the
    block constants and launch options ``meta``), then the merge, in the last split of each (row, head) with
    ``counters`` or in :func:`_attn_reduce_kernel`. Returns the (B, H Dh) output in ``dtype``."""
    chunk = tile.chunk
    nsplit = triton.cdiv(length, chunk)
    m = torch.empty(bsz, n_heads, nsplit, dtype=torch.float32, device=device)
    lse = torch.empty_like(m)
    acc = torch.empty(bsz, n_heads, nsplit, dh, dtype=torch.float32, device=device)
    out = torch.empty(bsz, n_heads * dh, dtype=dtype, device=device)
    if counters is not None:
        check_counters(op, counters, bsz * n_heads, "(row, head) merge")
    # without counters the kernel's REDUCE branch is compiled out and any pointer stands in for them
    merged = (m, lse, acc, out, counters if counters is not None else m)
    split((bsz, n_heads, nsplit), merged, dict(CHUNK=chunk, BLOCK_N=tile.block_n, REDUCE=counters is not None,
                                               BLOCK_S=_p2(nsplit), num_warps=tile.num_warps,
                                               num_stages=tile.num_stages, **pdl_options(pdl)))
    if counters is None:
        _attn_reduce_kernel[(bsz, n_heads)](m, lse, acc, out, n_heads, nsplit, DH=dh, BLOCK_S=_p2(nsplit),
                                            RELEASE_FIRST=release_first, **pdl_options(pdl))
    return out
