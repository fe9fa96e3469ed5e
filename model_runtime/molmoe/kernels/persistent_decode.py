"""The persistent decode step: one kernel walks all active blocks of a plan for a batch-1 token.

Why: the captured 11-kernel step (:meth:`FusedLM.decode_step`) pays, per active block, a launch
boundary after every kernel and each small GEMV's ramp-up and tail; RESULTS.md ("The fast path")
fits that at ~56 us of non-expert time per block against a byte floor of ~15 us, which is what
keeps the small configurations far from their floor. Here the programs stay resident for the
whole token and the blocks' work is a sequence of *phases*; between two phases the programs meet
at a grid barrier (an arrival counter in global memory; ~1.2 us on an H200), and every phase
spreads its weight rows over all programs. Measured (RESULTS.md, "A persistent decode step"):
correct on every plan, but still slower than the fused step: each program reduces its weight
tiles one round trip after another, where the separate kernels keep more loads in flight.

Phases (``n`` = index among the plan's active blocks; the residual stream is kept as a stored
part plus the routed experts' atomically summed part, each in two buffers by block parity):

0. ``init``: block 0's input = the token's embedding row; the slot is marked valid.
1. ``qkv`` (per block): ``RMSNorm(input)`` (each program recomputes it from 2 x D values in
   L2), the Q/K/V GEMV's row tiles spread over the programs; the expert sum this block will
   write is cleared.
2. ``attention``: QK-norm and RoPE (each program recomputes the two RMS), then (head, split)
   items of split-K attention over the positions ``0..slot``; the new key and value are used from
   registers at the slot and written to the KV cache by the head's first split; the last split of
   a head to finish (a per-head arrival counter) reduces the head's splits.
3. ``output``: the output GEMV's row tiles + the residual add.
4. ``router``: router GEMV of the post-attention norm.
5. ``gate_up``: softmax + top-k (each program, from the E logits), then (expert, row tile)
   items of gate/up GEMV + SiLU·up.
6. ``down``: (expert, output-row tile) items of the down GEMV, weighted and rounded as the
   eager combine, added atomically (float32) into the expert sum.

and last ``head``: the final norm and the LM head's rows. Numerics are those of
:meth:`FusedLM.decode_step` (values rounded to the model's dtype where the eager modules round,
float32 accumulation): the two differ by summation order only.

The same kernel runs *stepped* (one launch per phase, no barrier; ``SYNC=False``): that is how
Triton's CPU interpreter checks it (its programs run one after another, so a barrier could never
be met) and the GPU's fallback. Persistent launches need every program resident at once: the
number of programs comes from the compiled kernel's registers and shared memory
(:func:`resident_programs_per_sm`). A barrier that waits longer than ``MAX_SPINS`` polls gives
up and raises the kernel's error flag instead of hanging the GPU;
:meth:`PersistentDecodeStep.check` reads it.

Scratch values produced by other programs are read with ``.cg`` loads (L2, not the SM's L1,
which is not coherent across SMs and may hold the previous block's lines).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from .common import HAVE_TRITON, _p2, triton_interpreting

if HAVE_TRITON:
    import triton
    import triton.language as tl

    from .attention import _merge_splits, _online_softmax_step
    from .router import _softmax_topk

if TYPE_CHECKING:  # pragma: no cover
    from ..fused_lm import FusedLM
    from ..static_decode import StaticKVCache

#: pointer-table fields per active block, in table order
FIELDS: tuple[str, ...] = ("qkv", "o", "ln_in", "ln_post", "qk_norm", "router", "gate_up", "down", "k_cache", "v_cache")
if HAVE_TRITON:  # the fields' columns, as the kernels read them
    NF = tl.constexpr(len(FIELDS))
    F_QKV, F_O, F_LN_IN, F_LN_POST, F_QK_NORM, F_ROUTER, F_GATE_UP, F_DOWN, F_K, F_V = (
        tl.constexpr(i) for i in range(len(FIELDS)))
#: phases per active block
BLOCK_PHASES = 6
#: barrier polls before a persistent launch gives up (sets the error flag) rather than hang
MAX_SPINS = tl.constexpr(1 << 20) if HAVE_TRITON else 1 << 20


def n_phases(n_active: int) -> int:
    """Phases of one decode step over ``n_active`` blocks: init, 6 per block, the LM head."""
    return 2 + BLOCK_PHASES * int(n_active)


if HAVE_TRITON:

    @triton.jit
    def _grid_sync(bar_ptr, target, limit):
        # every program adds one arrival, then polls until all programs of this barrier arrived;
        # the counter only grows within a launch (target = programs x barriers so far). After
        # `limit` polls it gives up, raises the error flag and returns 0 (the caller then stops
        # waiting at later barriers, so a launch that cannot be met ends instead of hanging).
        tl.debug_barrier()
        tl.atomic_add(bar_ptr, 1, sem="release", scope="gpu")
        seen = tl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu")
        spins = 0
        while (seen < target) & (spins < limit):
            seen = tl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu")
            spins += 1
        met = seen >= target
        if seen < target:
            tl.atomic_max(bar_ptr + 1, 1)
        tl.debug_barrier()
        return tl.where(met, limit, 0)

    @triton.jit
    def _ptr(tab_ptr, n, f: tl.constexpr, like):
        # field f of active block n's pointer table row, as a pointer to like's element type
        return tl.load(tab_ptr + n * NF + f).to(tl.pointer_type(like.dtype.element_ty))

    @triton.jit
    def _gemv(w_ptr, row0, R, C, x, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        # rows row0..row0+BLOCK_R of the (R, C) matrix times x (BLOCK_C,) → (BLOCK_R,) float32
        r = row0 + tl.arange(0, BLOCK_R)
        c = tl.arange(0, BLOCK_C)
        m = (r < R)[:, None] & (c < C)[None, :]
        w = tl.load(w_ptr + r.to(tl.int64)[:, None] * C + c[None, :], mask=m, other=0.0, eviction_policy="evict_first")
        return tl.sum(w.to(tl.float32) * x[None, :], axis=1)

    @triton.jit
    def _gemv_rows_to(w_ptr, R, C, x, out_ptr, pid, nprog, ROUND: tl.constexpr, BLOCK_R: tl.constexpr,
                      BLOCK_C: tl.constexpr, NSTAGE: tl.constexpr):
        # out[r] = (W x)[r] for this program's row tiles, rounded to the weights' dtype (ROUND:
        # stored as float32) or stored in out's dtype. NSTAGE > 1: Triton's pipeliner copies the
        # next NSTAGE - 1 tiles into shared memory (cp.async) while this one is reduced; a prefetch
        # into registers measured slower (RESULTS.md, "A persistent decode step").
        dt = w_ptr.dtype.element_ty
        for t in tl.range(pid, tl.cdiv(R, BLOCK_R), nprog, num_stages=NSTAGE):
            y = _gemv(w_ptr, t * BLOCK_R, R, C, x, BLOCK_R, BLOCK_C)
            r = t * BLOCK_R + tl.arange(0, BLOCK_R)
            if ROUND:
                tl.store(out_ptr + r, y.to(dt).to(tl.float32), mask=r < R)
            else:
                tl.store(out_ptr + r, y.to(out_ptr.dtype.element_ty), mask=r < R)

    @triton.jit
    def _topk(rl_ptr, E, k, dt, NORM: tl.constexpr, KMAX: tl.constexpr, BLOCK_E: tl.constexpr):
        # softmax (float32) over the E router logits, the k largest (lowest index on ties):
        # expert ids (KMAX,) int32 and weights (KMAX,) float32 rounded to the model's dtype
        e = tl.arange(0, BLOCK_E)
        me = e < E
        z = tl.load(rl_ptr + e, mask=me, other=-float("inf"), cache_modifier=".cg")
        ids, wts = _softmax_topk(z, e, me, k, KMAX, BLOCK_E, NORM)
        return ids, wts.to(dt).to(tl.float32)

    @triton.jit
    def _rope_half(src_ptr, w_ptr, off, rstd, cos, sin, dt, HALF: tl.constexpr):
        # QK-norm (rounded as the eager modules) and RoPE of one head's two halves at off
        jj = tl.arange(0, HALF)
        x1 = tl.load(src_ptr + off + jj, cache_modifier=".cg")
        x2 = tl.load(src_ptr + off + HALF + jj, cache_modifier=".cg")
        x1 = ((x1 * rstd).to(dt).to(tl.float32) * tl.load(w_ptr + off + jj).to(tl.float32)).to(dt).to(tl.float32)
        x2 = ((x2 * rstd).to(dt).to(tl.float32) * tl.load(w_ptr + off + HALF + jj).to(tl.float32)).to(dt).to(tl.float32)
        return (x1 * cos - x2 * sin).to(dt).to(tl.float32), (x2 * cos + x1 * sin).to(dt).to(tl.float32)

    @triton.jit
    def _input_rows(rb, acc2, par, D, r, dt):
        # rows r of block input x = round(stored + round(experts' sum)), buffers of parity par
        m = r < D
        x = tl.load(rb + par * D + r, mask=m, other=0.0, cache_modifier=".cg")
        e = tl.load(acc2 + par * D + r, mask=m, other=0.0, cache_modifier=".cg")
        return (x + e.to(dt).to(tl.float32)).to(dt).to(tl.float32)

    @triton.jit
    def _normed_input(rb, acc2, par, w_ptr, D, eps, BLOCK_D: tl.constexpr):
        # RMSNorm of the block input (buffers of parity par) as the eager module rounds it
        d = tl.arange(0, BLOCK_D)
        dt = w_ptr.dtype.element_ty
        x = _input_rows(rb, acc2, par, D, d, dt)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
        w = tl.load(w_ptr + d, mask=d < D, other=0.0).to(tl.float32)
        return ((x * rstd).to(dt).to(tl.float32) * w).to(dt).to(tl.float32)

    @triton.jit
    def _phase_init(tok_ptr, embed_ptr, rb, acc2, valid_ptr, slot, pid, nprog, D, BLOCK_R: tl.constexpr):
        # block 0's input (parity 1) is the token's embedding; both expert sums start at 0
        tok = tl.load(tok_ptr).to(tl.int64)
        for t in range(pid, tl.cdiv(D, BLOCK_R), nprog):
            r = t * BLOCK_R + tl.arange(0, BLOCK_R)
            m = r < D
            tl.store(rb + D + r, tl.load(embed_ptr + tok * D + r, mask=m, other=0.0).to(tl.float32), mask=m)
            tl.store(acc2 + r, tl.zeros([BLOCK_R], tl.float32), mask=m)
            tl.store(acc2 + D + r, tl.zeros([BLOCK_R], tl.float32), mask=m)
        if pid == 0:
            tl.store(valid_ptr + slot, 1)

    @triton.jit
    def _phase_head(rb, acc2, par, final_w_ptr, head_ptr, logits_ptr, slot_ptr, slot, pid, nprog, D, V, final_eps,
                    BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr, NSTAGE: tl.constexpr):
        # the final norm and the LM head's rows; the slot advances
        x = _normed_input(rb, acc2, par, final_w_ptr, D, final_eps, BLOCK_D)
        _gemv_rows_to(head_ptr, V, D, x, logits_ptr, pid, nprog, False, BLOCK_R, BLOCK_D, NSTAGE)
        if pid == 0:
            tl.store(slot_ptr, slot + 1)

    @triton.jit
    def _phase_qkv(rb, acc2, par, ln_in, w, qkv_buf, pid, nprog, D, eps, NQKV: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr, NSTAGE: tl.constexpr):
        # the Q/K/V GEMV of the block's input norm; this block's expert sum (parity 1 - par,
        # last read by the previous block) is cleared for the down phase
        x = _normed_input(rb, acc2, par, ln_in, D, eps, BLOCK_D)
        _gemv_rows_to(w, NQKV, D, x, qkv_buf, pid, nprog, True, BLOCK_R, BLOCK_D, NSTAGE)
        for t in range(pid, tl.cdiv(D, BLOCK_R), nprog):
            r = t * BLOCK_R + tl.arange(0, BLOCK_R)
            tl.store(acc2 + (1 - par) * D + r, tl.zeros([BLOCK_R], tl.float32), mask=r < D)

    @triton.jit
    def _phase_attention(qkv_buf, qkw, kc, vc, valid_ptr, inv_freq_ptr, m_buf, l_buf, acc_buf, cnt_ptr, attn_buf, slot,
                         pos, pid, nprog, NS, L, eps, rope_scale, scale, H: tl.constexpr, HKV: tl.constexpr,
                         DH: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr):
        # QK-norm + RoPE, the new key/value into the cache, (head, split) items of split-K
        # attention; the last split of a head to finish (a per-head arrival counter) reduces them
        dt = qkw.dtype.element_ty
        HALF: tl.constexpr = DH // 2
        NQ: tl.constexpr = H * DH
        NK: tl.constexpr = HKV * DH
        qa = tl.arange(0, BLOCK_Q)
        xq = tl.load(qkv_buf + qa, mask=qa < NQ, other=0.0, cache_modifier=".cg")
        xk = tl.load(qkv_buf + NQ + qa, mask=qa < NK, other=0.0, cache_modifier=".cg")
        rq = 1.0 / tl.sqrt(tl.sum(xq * xq, axis=0) / NQ + eps)
        rk = 1.0 / tl.sqrt(tl.sum(xk * xk, axis=0) / NK + eps)
        jj = tl.arange(0, HALF)
        dd = tl.arange(0, DH)
        freqs = pos.to(tl.float32) * tl.load(inv_freq_ptr + jj)
        cos = (tl.cos(freqs) * rope_scale).to(dt).to(tl.float32)
        sin = (tl.sin(freqs) * rope_scale).to(dt).to(tl.float32)
        chunk = tl.cdiv(slot + 1, NS)
        for item in range(pid, H * NS, nprog):
            h = item // NS
            c = item % NS
            hk = h // (H // HKV)
            q1, q2 = _rope_half(qkv_buf, qkw, h * DH, rq, cos, sin, dt, HALF)
            k1, k2 = _rope_half(qkv_buf, qkw, NQ + hk * DH, rk, cos, sin, dt, HALF)
            vn = tl.load(qkv_buf + NQ + NK + hk * DH + dd, cache_modifier=".cg")
            kv = hk * L * DH
            if (c == 0) & (h % (H // HKV) == 0):
                tl.store(kc + kv + slot * DH + jj, k1.to(dt))
                tl.store(kc + kv + slot * DH + HALF + jj, k2.to(dt))
                tl.store(vc + kv + slot * DH + dd, vn.to(dt))
            m_i = tl.max(tl.full([BLOCK_N], -1.0e30, tl.float32), axis=0)
            l_i = tl.sum(tl.zeros([BLOCK_N], tl.float32), axis=0)
            acc = tl.zeros([DH], tl.float32)
            end = tl.minimum((c + 1) * chunk, slot + 1)
            for p0 in range(c * chunk, end, BLOCK_N):
                pp = p0 + tl.arange(0, BLOCK_N)
                here = pp == slot
                ok = (pp < end) & ((tl.load(valid_ptr + pp, mask=pp < end, other=0) != 0) | here)
                old = ok & (pp != slot)
                ka = tl.load(kc + kv + pp[:, None] * DH + jj[None, :], mask=old[:, None], other=0.0).to(tl.float32)
                kb = tl.load(kc + kv + pp[:, None] * DH + HALF + jj[None, :], mask=old[:, None], other=0.0).to(tl.float32)
                vt = tl.load(vc + kv + pp[:, None] * DH + dd[None, :], mask=old[:, None], other=0.0).to(tl.float32)
                ka = tl.where(here[:, None], k1[None, :], ka)
                kb = tl.where(here[:, None], k2[None, :], kb)
                vt = tl.where(here[:, None], vn[None, :], vt)
                sc = (tl.sum(ka * q1[None, :], axis=1) + tl.sum(kb * q2[None, :], axis=1)) * scale
                m_i, l_i, acc = _online_softmax_step(tl.where(ok, sc, -1.0e30), ok, vt, m_i, l_i, acc)
            tl.store(m_buf + item, m_i)
            tl.store(l_buf + item, l_i)
            tl.store(acc_buf + item * DH + dd, acc)
            tl.debug_barrier()
            if tl.atomic_add(cnt_ptr + h, 1, sem="acq_rel", scope="gpu") == NS - 1:
                s = tl.arange(0, BLOCK_S)
                ms = s < NS
                mm = tl.load(m_buf + h * NS + s, mask=ms, other=-1.0e30, cache_modifier=".cg")
                ll = tl.load(l_buf + h * NS + s, mask=ms, other=0.0, cache_modifier=".cg")
                aa = tl.load(acc_buf + (h * NS + s[:, None]) * DH + dd[None, :], mask=ms[:, None], other=0.0,
                             cache_modifier=".cg")
                out = _merge_splits(mm, ll, aa, ms)
                tl.store(attn_buf + h * DH + dd, out.to(dt).to(tl.float32))
                tl.store(cnt_ptr + h, 0)

    @triton.jit
    def _phase_output(attn_buf, w, rb, acc2, par, pid, nprog, D, NQ: tl.constexpr, BLOCK_Q: tl.constexpr,
                      BLOCK_R: tl.constexpr):
        # output GEMV rows + the residual add: the post-attention stream goes to parity 1 - par
        dt = w.dtype.element_ty
        j = tl.arange(0, BLOCK_Q)
        attn = tl.load(attn_buf + j, mask=j < NQ, other=0.0, cache_modifier=".cg")
        for t in range(pid, tl.cdiv(D, BLOCK_R), nprog):
            r = t * BLOCK_R + tl.arange(0, BLOCK_R)
            o = _gemv(w, t * BLOCK_R, D, NQ, attn, BLOCK_R, BLOCK_Q).to(dt).to(tl.float32)
            x0 = _input_rows(rb, acc2, par, D, r, dt)
            tl.store(rb + (1 - par) * D + r, (x0 + o).to(dt).to(tl.float32), mask=r < D)

    @triton.jit
    def _phase_router(rb, acc2, par, ln_post, w, rl_buf, pid, nprog, D, E, eps, BLOCK_D: tl.constexpr,
                      BLOCK_R: tl.constexpr, NSTAGE: tl.constexpr):
        # router logits of the post-attention norm (the stream of parity 1 - par, its expert sum 0)
        x = _normed_input(rb, acc2, 1 - par, ln_post, D, eps, BLOCK_D)
        _gemv_rows_to(w, E, D, x, rl_buf, pid, nprog, True, BLOCK_R, BLOCK_D, NSTAGE)

    @triton.jit
    def _phase_gate_up(rl_buf, rb, acc2, par, ln_post, gu, act_buf, k, pid, nprog, D, I, E, eps,
                       NORM_TOPK: tl.constexpr, KMAX: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
                       BLOCK_RI: tl.constexpr, NSTAGE: tl.constexpr):
        # top-k, then (expert, row tile) items of gate/up + SiLU·up
        dt = gu.dtype.element_ty
        ids, wts = _topk(rl_buf, E, k, dt, NORM_TOPK, KMAX, BLOCK_E)
        x = _normed_input(rb, acc2, 1 - par, ln_post, D, eps, BLOCK_D)
        kk = tl.arange(0, KMAX)
        n_it = tl.cdiv(I, BLOCK_RI)
        for item in tl.range(pid, k * n_it, nprog, num_stages=NSTAGE):
            jx = item // n_it
            t = item % n_it
            e = tl.sum(tl.where(kk == jx, ids, 0), axis=0).to(tl.int64)
            base = gu + e * 2 * I * D
            g = _gemv(base, t * BLOCK_RI, I, D, x, BLOCK_RI, BLOCK_D).to(dt).to(tl.float32)
            u = _gemv(base + I * D, t * BLOCK_RI, I, D, x, BLOCK_RI, BLOCK_D).to(dt).to(tl.float32)
            a = (g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32) * u
            r = t * BLOCK_RI + tl.arange(0, BLOCK_RI)
            tl.store(act_buf + jx * I + r, a.to(dt).to(tl.float32), mask=r < I)

    @triton.jit
    def _phase_down(rl_buf, act_buf, dn, acc2, par, k, pid, nprog, D, I, E, NORM_TOPK: tl.constexpr,
                    KMAX: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_R: tl.constexpr,
                    NSTAGE: tl.constexpr):
        # (expert, output-row tile) items: each expert's down rows, weighted and rounded as the
        # eager combine, summed atomically into the expert sum of parity 1 - par (the next
        # block's input is the post-attention stream + that sum). With NSTAGE > 1 the staged
        # copies of the activations must bypass L1 like the .cg load (the PTX Triton 3.9 emits for
        # sm_90 has cp.async.cg only; the GPU tests of the staged step check the results).
        dt = dn.dtype.element_ty
        ids, wts = _topk(rl_buf, E, k, dt, NORM_TOPK, KMAX, BLOCK_E)
        kk = tl.arange(0, KMAX)
        ia = tl.arange(0, BLOCK_I)
        n_t = tl.cdiv(D, BLOCK_R)
        for item in tl.range(pid, k * n_t, nprog, num_stages=NSTAGE):
            jx = item // n_t
            t = item % n_t
            r = t * BLOCK_R + tl.arange(0, BLOCK_R)
            e = tl.sum(tl.where(kk == jx, ids, 0), axis=0).to(tl.int64)
            wj = tl.sum(tl.where(kk == jx, wts, 0.0), axis=0)
            a = tl.load(act_buf + jx * I + ia, mask=ia < I, other=0.0, cache_modifier=".cg")
            y = _gemv(dn + e * D * I, t * BLOCK_R, D, I, a, BLOCK_R, BLOCK_I).to(dt).to(tl.float32)
            tl.atomic_add(acc2 + (1 - par) * D + r, (y * wj).to(dt).to(tl.float32), mask=r < D, sem="relaxed")

    @triton.jit
    def _persistent_decode_kernel(
        tab_ptr, topk_ptr, tok_ptr, embed_ptr, final_w_ptr, head_ptr, logits_ptr, valid_ptr, slot_ptr, inv_freq_ptr,
        rb, acc2, qkv_buf, m_buf, l_buf, acc_buf, cnt_ptr, attn_buf, rl_buf, act_buf, bar_ptr,
        ph_lo, ph_hi, n_active, nprog, NS, L, D, I, E, V, eps, final_eps, rope_scale, scale,
        H: tl.constexpr, HKV: tl.constexpr, DH: tl.constexpr, KMAX: tl.constexpr, NORM_TOPK: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_E: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_RI: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
        BLOCK_S: tl.constexpr, SYNC: tl.constexpr, WORK: tl.constexpr, NSTAGE: tl.constexpr,
    ):
        pid = tl.program_id(0)
        slot = tl.load(slot_ptr)
        # this token's position: the real tokens before the slot (prompt padding is not valid)
        pos = tl.sum(tl.zeros([BLOCK_L], tl.int64), axis=0)
        for n0 in range(0, L, BLOCK_L):
            nn = n0 + tl.arange(0, BLOCK_L)
            pos += tl.sum(tl.load(valid_ptr + nn, mask=nn < slot, other=0), axis=0)
        last = 1 + 6 * n_active
        target = 0
        limit = pid * 0 + MAX_SPINS
        for ph in range(ph_lo, ph_hi):
            if not WORK:  # the barrier skeleton alone (a benchmark's diagnostic)
                pass
            elif ph == 0:
                _phase_init(tok_ptr, embed_ptr, rb, acc2, valid_ptr, slot, pid, nprog, D, BLOCK_R)
            elif ph == last:
                _phase_head(rb, acc2, (n_active + 1) % 2, final_w_ptr, head_ptr, logits_ptr, slot_ptr, slot, pid, nprog,
                            D, V, final_eps, BLOCK_D, BLOCK_R, NSTAGE)
            else:
                n = (ph - 1) // 6
                st = (ph - 1) % 6
                par = (n + 1) % 2  # parity of this block's input buffers
                if st == 0:
                    _phase_qkv(rb, acc2, par, _ptr(tab_ptr, n, F_LN_IN, embed_ptr), _ptr(tab_ptr, n, F_QKV, embed_ptr),
                               qkv_buf, pid, nprog, D, eps, (H + 2 * HKV) * DH, BLOCK_D, BLOCK_R, NSTAGE)
                elif st == 1:
                    _phase_attention(qkv_buf, _ptr(tab_ptr, n, F_QK_NORM, embed_ptr), _ptr(tab_ptr, n, F_K, embed_ptr),
                                     _ptr(tab_ptr, n, F_V, embed_ptr), valid_ptr, inv_freq_ptr, m_buf, l_buf, acc_buf,
                                     cnt_ptr, attn_buf, slot, pos, pid, nprog, NS, L, eps, rope_scale, scale, H, HKV, DH,
                                     BLOCK_Q, BLOCK_N, BLOCK_S)
                elif st == 2:
                    _phase_output(attn_buf, _ptr(tab_ptr, n, F_O, embed_ptr), rb, acc2, par, pid, nprog, D, H * DH,
                                  BLOCK_Q, BLOCK_R)
                elif st == 3:
                    _phase_router(rb, acc2, par, _ptr(tab_ptr, n, F_LN_POST, embed_ptr),
                                  _ptr(tab_ptr, n, F_ROUTER, embed_ptr), rl_buf, pid, nprog, D, E, eps, BLOCK_D, BLOCK_R,
                                  NSTAGE)
                elif st == 4:
                    _phase_gate_up(rl_buf, rb, acc2, par, _ptr(tab_ptr, n, F_LN_POST, embed_ptr),
                                   _ptr(tab_ptr, n, F_GATE_UP, embed_ptr), act_buf, tl.load(topk_ptr + n), pid, nprog,
                                   D, I, E, eps, NORM_TOPK, KMAX, BLOCK_D, BLOCK_E, BLOCK_RI, NSTAGE)
                else:
                    _phase_down(rl_buf, act_buf, _ptr(tab_ptr, n, F_DOWN, embed_ptr), acc2, par, tl.load(topk_ptr + n),
                                pid, nprog, D, I, E, NORM_TOPK, KMAX, BLOCK_E, BLOCK_I, BLOCK_R, NSTAGE)
            if SYNC:
                if ph + 1 < ph_hi:
                    target += nprog
                    limit = _grid_sync(bar_ptr, target, limit)


def resident_programs_per_sm(n_regs: int, shared: int, num_warps: int, props: object) -> int:
    """Programs of a kernel that fit one SM at once (registers, warps, shared memory), from its
    compiled resource use and the device's properties (``torch.cuda.get_device_properties``)."""
    regs = int(getattr(props, "regs_per_multiprocessor", 65536))
    warps = int(getattr(props, "max_threads_per_multi_processor", 2048)) // 32
    smem = int(getattr(props, "shared_memory_per_multiprocessor", 233472))
    regs_per_warp = -(-max(int(n_regs), 1) * 32 // 256) * 256  # allocated per warp in units of 256
    by_smem = smem // (int(shared) + 1024) if shared else 32  # 1 KB per program reserved by the driver
    return max(0, min(regs // (regs_per_warp * num_warps), warps // num_warps, by_smem, 32))


class PersistentDecodeStep:
    """Batch-1 decode steps of one plan over one static cache, as a persistent kernel per token.

    Args:
        fused: the model's :class:`~model_runtime.molmoe.fused_lm.FusedLM` (its packed weights).
        cache: a :class:`~model_runtime.molmoe.static_decode.StaticKVCache` of batch 1 whose
            blocks are the plan's active blocks.
        top_k_per_block: the plan (0 = block skipped).
        num_programs: programs of the launch (default on CUDA: ``programs_per_sm`` x the SM count;
            4 in the interpreter). A persistent launch needs them all resident at once.
        programs_per_sm: default on CUDA: as many as fit one SM by the compiled kernel's registers
            and shared memory (:func:`resident_programs_per_sm`), at most 8.
        max_splits: attention splits per head at most (fewer when there are fewer programs).
        stepped: one launch per phase instead of one persistent launch (default: True in Triton's
            interpreter, False on CUDA).
        block_r, block_ri, num_warps: rows per GEMV tile (Q/K/V, output, router, LM head, experts'
            down; the experts' gate/up) and warps per program.
        stages: weight tiles in flight per program in the Q/K/V, router, LM-head and expert loops
            (1: each tile loaded, then reduced; n > 1: Triton's pipeliner stages the next n - 1
            tiles in shared memory, which the residency count then includes).
        tokens: the (1,) int64 input buffer the step reads (default: its own); a captured step
            reads the buffer its caller fills.

    Calling it feeds ``token_ids`` (1,) int64 (or, without, what the input buffer holds) at
    ``cache.slot``: writes the key/value, marks the slot valid, advances ``cache.slot`` on the
    device (the caller advances ``cache.position``, as for :meth:`FusedLM.decode_step`) and
    returns (1, V) logits in the model's dtype (a view of a buffer the next call overwrites). No
    host sync; capturable in a CUDA graph.
    """

    def __init__(
        self,
        fused: "FusedLM",
        cache: "StaticKVCache",
        top_k_per_block: Sequence[int],
        *,
        num_programs: int | None = None,
        programs_per_sm: int | None = None,
        max_splits: int = 8,
        stepped: bool | None = None,
        block_r: int = 8,
        block_ri: int = 4,
        num_warps: int = 4,
        stages: int = 1,
        tokens: torch.Tensor | None = None,
    ) -> None:
        if not HAVE_TRITON:
            raise ValueError("the persistent decode step needs the triton package")
        lm = fused.lm
        device = lm.lm_head.weight.device
        if device.type != "cuda" and not triton_interpreting():
            raise ValueError("the persistent decode step runs on CUDA, or on CPU with TRITON_INTERPRET=1")
        plan = tuple(int(k) for k in top_k_per_block)
        active = tuple(b for b, k in enumerate(plan) if k > 0)
        if active != tuple(cache.blocks):
            raise ValueError(f"plan's active blocks {active} differ from the cache's {tuple(cache.blocks)}")
        if cache.batch != 1:
            raise ValueError(f"the persistent decode step serves batch 1, the cache holds {cache.batch} rows")
        if fused.n_heads % fused.n_kv:
            raise ValueError("query heads must be a multiple of key/value heads")
        if tokens is not None and (tokens.shape != (1,) or tokens.dtype != torch.long or tokens.device != device):
            raise ValueError(f"tokens must be a (1,) int64 buffer on {device}, got {tuple(tokens.shape)} {tokens.dtype}")
        self.stepped = (triton_interpreting() or device.type != "cuda") if stepped is None else bool(stepped)
        if triton_interpreting() and not self.stepped:
            raise ValueError("Triton's interpreter runs programs one after another: use stepped=True")
        self.fused, self.cache, self.plan = fused, cache, plan
        cfg = lm.config
        w0 = lm.lm_head.weight
        self.d_model = int(cfg.hidden_size)
        self.n_heads, self.n_kv, self.head_dim = int(fused.n_heads), int(fused.n_kv), int(fused.head_dim)
        first = fused.blocks[active[0]]
        self.n_experts = int(first.gate_up.shape[0])
        self.expert_hidden = int(first.gate_up.shape[1] // 2)
        self.vocab = int(w0.shape[0])
        self.k_max = _p2(max(plan))
        self.block_r, self.block_ri, self.num_warps = int(block_r), int(block_ri), int(num_warps)
        self.stages = int(stages)
        if self.stages < 1:
            raise ValueError(f"stages must be >= 1, got {stages}")
        # keep every tensor the table points at alive with the step
        rows, self._keep = [], []
        for b in active:
            w = fused.blocks[b]
            named = dict(qkv=w.qkv, o=w.o, ln_in=w.ln_in, ln_post=w.ln_post, qk_norm=w.qk_norm, router=w.router,
                         gate_up=w.gate_up, down=w.down, k_cache=cache.keys[b], v_cache=cache.values[b])
            ts = tuple(named[f] for f in FIELDS)
            for t in ts:
                if not t.is_contiguous() or t.dtype != w0.dtype:
                    raise ValueError(f"block {b}: the persistent step needs contiguous {w0.dtype} weights and caches")
            self._keep.extend(ts)
            rows.append([t.data_ptr() for t in ts])
        self.table = torch.tensor(rows, dtype=torch.int64, device=device)
        self.top_k = torch.tensor([plan[b] for b in active], dtype=torch.int32, device=device)
        self.n_active = len(active)
        self.embed = lm.backbone.embed_tokens.weight
        final = lm.backbone.norm
        self.final_w, self.final_eps = final.weight, float(final.variance_epsilon)
        d, nq = self.d_model, self.n_heads * self.head_dim
        f32 = dict(dtype=torch.float32, device=device)
        self.stream = torch.zeros(2, d, **f32)  # stored residual stream, by block parity
        self.expert_sum = torch.zeros(2, d, **f32)  # routed experts' weighted sum, by block parity
        self.qkv = torch.zeros(nq + 2 * self.n_kv * self.head_dim, **f32)
        self.attn = torch.zeros(nq, **f32)
        self.head_arrivals = torch.zeros(self.n_heads, dtype=torch.int32, device=device)
        self.router_logits = torch.zeros(self.n_experts, **f32)
        self.act = torch.zeros(self.k_max * self.expert_hidden, **f32)
        self.barrier = torch.zeros(2, dtype=torch.int32, device=device)  # arrivals, error flag
        self.logits = torch.zeros(1, self.vocab, dtype=w0.dtype, device=device)
        self.tokens = torch.zeros(1, dtype=torch.long, device=device) if tokens is None else tokens
        self.max_splits = int(max_splits)
        if self.max_splits < 1:
            raise ValueError(f"max_splits must be >= 1, got {max_splits}")
        self.resident_per_sm: int | None = None
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            self._set_programs(1)
            compiled = self._launch(0, 0, not self.stepped)  # compiles; runs no phase
            self.resident_per_sm = resident_programs_per_sm(
                getattr(compiled, "n_regs", 255), getattr(compiled, "metadata").shared, self.num_warps, props)
            fit = props.multi_processor_count * self.resident_per_sm
            per_sm = self.resident_per_sm if programs_per_sm is None else int(programs_per_sm)
            want = int(num_programs) if num_programs else props.multi_processor_count * max(1, min(per_sm, 8))
            if not self.stepped and not 1 <= want <= fit:
                raise ValueError(f"{want} persistent programs: {fit} fit the GPU at once "
                                 f"({self.resident_per_sm} per SM at this kernel's registers and shared memory)")
            self._set_programs(want)
        else:
            self._set_programs(int(num_programs or 4))

    def _set_programs(self, n: int) -> None:
        self.num_programs = int(n)
        # splits per head: as many (head, split) items as programs, within max_splits
        self.n_splits = max(1, min(self.max_splits, self.num_programs // self.n_heads))
        dev, s = self.table.device, self.n_heads * self.n_splits
        self.m = torch.zeros(s, dtype=torch.float32, device=dev)
        self.l = torch.zeros_like(self.m)
        self.acc = torch.zeros(s * self.head_dim, dtype=torch.float32, device=dev)

    @property
    def phases(self) -> int:
        """Phases of one step (init, 6 per active block, the LM head)."""
        return n_phases(self.n_active)

    @property
    def nbytes(self) -> int:
        """Memory the step holds besides the model and the cache (scratch, table, logits)."""
        own = (self.table, self.top_k, self.stream, self.expert_sum, self.qkv, self.attn, self.head_arrivals, self.m,
               self.l, self.acc, self.router_logits, self.act, self.barrier, self.logits)
        return sum(t.numel() * t.element_size() for t in own)

    def _launch(self, ph_lo: int, ph_hi: int, sync: bool, work: bool = True) -> object:
        f, c = self.fused, self.cache
        return _persistent_decode_kernel[(self.num_programs,)](
            self.table, self.top_k, self.tokens, self.embed, self.final_w, self.fused.lm.lm_head.weight, self.logits,
            c.valid, c.slot, f.inv_freq,
            self.stream, self.expert_sum, self.qkv, self.m, self.l, self.acc, self.head_arrivals, self.attn,
            self.router_logits, self.act, self.barrier,
            ph_lo, ph_hi, self.n_active, self.num_programs, self.n_splits, c.max_len,
            self.d_model, self.expert_hidden, self.n_experts, self.vocab,
            f.eps, self.final_eps, f.rope_scale, f.scaling,
            H=self.n_heads, HKV=self.n_kv, DH=self.head_dim, KMAX=self.k_max, NORM_TOPK=bool(f.norm_topk_prob),
            BLOCK_D=_p2(self.d_model), BLOCK_Q=_p2(self.n_heads * self.head_dim), BLOCK_I=_p2(self.expert_hidden),
            BLOCK_E=_p2(self.n_experts), BLOCK_R=self.block_r, BLOCK_RI=self.block_ri, BLOCK_N=32, BLOCK_L=256,
            BLOCK_S=_p2(self.max_splits), SYNC=sync, WORK=work, NSTAGE=self.stages, num_warps=self.num_warps,
        )

    @torch.no_grad()
    def __call__(self, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        if token_ids is not None:
            self.tokens.copy_(token_ids.reshape(-1)[:1])
        if self.stepped:
            for ph in range(self.phases):
                self._launch(ph, ph + 1, False)
        else:
            self.barrier[0].zero_()
            self._launch(0, self.phases, True)
        return self.logits

    @torch.no_grad()
    def barriers_only(self) -> None:
        """One persistent launch with every phase's work skipped: its grid barriers alone (what a
        benchmark subtracts to see the phases' own time). CUDA only."""
        if self.stepped:
            raise ValueError("the stepped form has no grid barriers")
        self.barrier[0].zero_()
        self._launch(0, self.phases, True, work=False)

    def check(self) -> None:
        """Raise if a persistent launch gave up on a grid barrier (a host sync: call it outside timed loops)."""
        if int(self.barrier[1].item()):
            raise RuntimeError("a persistent decode launch timed out at a grid barrier: its programs were not all "
                               "resident (fewer programs, or the stepped form, avoid it)")
