"""The fused decode path's operations: Triton kernels, each with a torch reference of the same signature.

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

from __future__ import annotations

import math
import os
from typing import Literal

import torch

try:  # Triton ships with CUDA builds of torch; CPU machines may lack it (then only "torch" exists)
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - depends on the install
    HAVE_TRITON = False

Backend = Literal["triton", "torch"]
BACKENDS: tuple[str, ...] = ("triton", "torch")

#: Block sizes of the kernels: positions per split of the decode attention (a (B, H, ceil(L / chunk))
#: grid; inside a decode step on an H100 64 took 9.6 us per block, 128 15.9 us), and the expert
#: rows / output features per program of the MoE kernels where they are not autotuned (Triton's
#: interpreter, or explicit block sizes).
TUNING: dict[str, int] = {"attn_chunk": 64, "gate_up_block_i": 32, "down_block_d": 16}


def triton_interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def default_backend(device: torch.device | str) -> Backend:
    """``triton`` on CUDA when Triton is installed, else ``torch``."""
    return "triton" if HAVE_TRITON and torch.device(device).type == "cuda" else "torch"


def check_backend(backend: str, device: torch.device | str) -> Backend:
    """Validate a backend for tensors on ``device``; raises ValueError naming the problem."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    if backend == "triton":
        if not HAVE_TRITON:
            raise ValueError("backend 'triton' needs the triton package (pip install triton)")
        if torch.device(device).type != "cuda" and not triton_interpreting():
            raise ValueError("backend 'triton' on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported")
    return backend  # type: ignore[return-value]


def _p2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


# ============================================================================ kernels
if HAVE_TRITON:

    @triton.jit
    def _rms_norm_kernel(x_ptr, d_ptr, w_ptr, out_ptr, sum_ptr, D, eps, HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        m = offs < D
        x = tl.load(x_ptr + row * D + offs, mask=m, other=0.0)
        if HAS_DELTA:  # residual stream: s = x + delta, rounded as the eager add
            x = (x.to(tl.float32) + tl.load(d_ptr + row * D + offs, mask=m, other=0.0).to(tl.float32)).to(
                x_ptr.dtype.element_ty
            )
            tl.store(sum_ptr + row * D + offs, x, mask=m)
        xf = x.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / D + eps)
        w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
        y = (xf * rstd).to(x_ptr.dtype.element_ty).to(tl.float32) * w
        tl.store(out_ptr + row * D + offs, y.to(out_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _qk_norm_rope_kernel(
        qkv_ptr, qkw_ptr, pos_ptr, inv_freq_ptr, q_out_ptr, k_out_ptr, v_out_ptr, slot_ptr,
        H, HKV, k_row_stride, k_head_stride, eps, rope_scale,
        DH: tl.constexpr, HALF: tl.constexpr, BLOCK: tl.constexpr,
    ):
        # the decode form: program (t, j) is query head j (j < H) or key head j - H of token row t,
        # the key and the value written to the cache at the slot. Each program recomputes its row's
        # RMS (all H*Dh query or H_kv*Dh key features; a 4 KB re-read from L1/L2) so that the heads
        # run in parallel.
        t = tl.program_id(0)
        j = tl.program_id(1)
        is_k = j >= H
        head = tl.where(is_k, j - H, j)
        part = tl.where(is_k, H * DH, 0)  # offset of the queries or keys in the row (and in qkw)
        n = tl.where(is_k, HKV * DH, H * DH)
        row = qkv_ptr + t * (H + 2 * HKV) * DH + part
        offs = tl.arange(0, BLOCK)
        x = tl.load(row + offs, mask=offs < n, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n + eps)
        dt = q_out_ptr.dtype.element_ty
        jj = tl.arange(0, HALF)
        o = head * DH + jj
        x1 = (tl.load(row + o).to(tl.float32) * rstd).to(dt).to(tl.float32) * tl.load(qkw_ptr + part + o).to(tl.float32)
        x2 = (tl.load(row + o + HALF).to(tl.float32) * rstd).to(dt).to(tl.float32) * tl.load(qkw_ptr + part + o + HALF).to(tl.float32)
        x1 = x1.to(dt).to(tl.float32)
        x2 = x2.to(dt).to(tl.float32)
        freqs = tl.load(pos_ptr + t).to(tl.float32) * tl.load(inv_freq_ptr + jj)
        cos = (tl.cos(freqs) * rope_scale).to(dt).to(tl.float32)
        sin = (tl.sin(freqs) * rope_scale).to(dt).to(tl.float32)
        r1 = (x1 * cos - x2 * sin).to(dt)
        r2 = (x2 * cos + x1 * sin).to(dt)
        if is_k:
            koff = t * k_row_stride + head * k_head_stride + tl.load(slot_ptr) * DH + jj
            tl.store(k_out_ptr + koff, r1)
            tl.store(k_out_ptr + koff + HALF, r2)
            vdst = v_out_ptr + koff
            vsrc = qkv_ptr + t * (H + 2 * HKV) * DH + (H + HKV) * DH + head * DH + jj
            tl.store(vdst, tl.load(vsrc))
            tl.store(vdst + HALF, tl.load(vsrc + HALF))
        else:
            qo = q_out_ptr + t * H * DH + head * DH + jj
            tl.store(qo, r1)
            tl.store(qo + HALF, r2)

    @triton.jit
    def _norm_rope_heads(src, w, dst, n_heads, head_stride, cos, sin, eps,
                         DH: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr):
        # RMSNorm over all n_heads * DH features of a row, then RoPE per head: (BLOCK_H, HALF) tiles
        hh = tl.arange(0, BLOCK_H)[:, None]
        jj = tl.arange(0, HALF)[None, :]
        o = hh * DH + jj
        m = hh < n_heads
        x1 = tl.load(src + o, mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(src + o + HALF, mask=m, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt((tl.sum(tl.sum(x1 * x1, axis=1), axis=0) + tl.sum(tl.sum(x2 * x2, axis=1), axis=0))
                             / (n_heads * DH) + eps)
        dt = dst.dtype.element_ty
        x1 = ((x1 * rstd).to(dt).to(tl.float32) * tl.load(w + o, mask=m, other=0.0).to(tl.float32)).to(dt).to(tl.float32)
        x2 = ((x2 * rstd).to(dt).to(tl.float32) * tl.load(w + o + HALF, mask=m, other=0.0).to(tl.float32)).to(dt).to(tl.float32)
        d = hh * head_stride + jj
        tl.store(dst + d, (x1 * cos - x2 * sin).to(dt), mask=m)
        tl.store(dst + d + HALF, (x2 * cos + x1 * sin).to(dt), mask=m)

    @triton.jit
    def _qk_norm_rope_rows_kernel(
        qkv_ptr, qkw_ptr, pos_ptr, inv_freq_ptr, q_out_ptr, k_out_ptr, v_out_ptr, H, HKV, SEQ,
        kv_row_stride, kv_pos_stride, kv_head_stride, eps, rope_scale,
        DH: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr, STORE_V: tl.constexpr,
    ):
        # the prefill's form: one program per token row does all its heads (the per-head grid of
        # _qk_norm_rope_kernel re-read each row H + H_kv times: 35 us per block at S=1000 on an H100).
        # Keys (and with STORE_V the values) go to a strided (rows, H_kv, S, Dh) destination: the
        # static KV cache directly, which saves the prefill two copies per block.
        t = tl.program_id(0).to(tl.int64)
        dt = q_out_ptr.dtype.element_ty
        freqs = tl.load(pos_ptr + t).to(tl.float32) * tl.load(inv_freq_ptr + tl.arange(0, HALF))
        cos = (tl.cos(freqs) * rope_scale).to(dt).to(tl.float32)[None, :]
        sin = (tl.sin(freqs) * rope_scale).to(dt).to(tl.float32)[None, :]
        row = qkv_ptr + t * (H + 2 * HKV) * DH
        kv = (t // SEQ) * kv_row_stride + (t % SEQ) * kv_pos_stride
        _norm_rope_heads(row, qkw_ptr, q_out_ptr + t * H * DH, H, DH, cos, sin, eps, DH, HALF, BLOCK_H)
        _norm_rope_heads(row + H * DH, qkw_ptr + H * DH, k_out_ptr + kv, HKV, kv_head_stride, cos, sin, eps, DH, HALF, BLOCK_H)
        if STORE_V:
            hh = tl.arange(0, BLOCK_H)[:, None]
            dd = tl.arange(0, DH)[None, :]
            v = tl.load(row + (H + HKV) * DH + hh * DH + dd, mask=hh < HKV, other=0.0)
            tl.store(v_out_ptr + kv + hh * kv_head_stride + dd, v, mask=hh < HKV)

    @triton.jit
    def _attn_split_kernel(
        q_ptr, k_ptr, v_ptr, valid_ptr, slot_ptr, m_ptr, l_ptr, acc_ptr,
        H, HKV, L, NSPLIT, scale,
        DH: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
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
            ok = (n < end) & (tl.load(valid_ptr + b * L + n, mask=n < end, other=0) != 0)
            # keys and values issued together: the tile's two loads overlap instead of V waiting for the scores
            kt = tl.load(k_ptr + kv + n[:, None] * DH + d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
            vt = tl.load(v_ptr + kv + n[:, None] * DH + d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
            sc = tl.where(ok, tl.sum(kt * q[None, :], axis=1) * scale, -1.0e30)
            m_new = tl.maximum(m_i, tl.max(sc, axis=0))
            p = tl.where(ok, tl.exp(sc - m_new), 0.0)
            alpha = tl.exp(m_i - m_new)
            acc = acc * alpha + tl.sum(p[:, None] * vt, axis=0)
            l_i = l_i * alpha + tl.sum(p, axis=0)
            m_i = m_new
        o = (b * H + h) * NSPLIT + s
        tl.store(m_ptr + o, m_i)
        tl.store(l_ptr + o, l_i)
        tl.store(acc_ptr + o * DH + d, acc)

    @triton.jit
    def _attn_reduce_kernel(m_ptr, l_ptr, acc_ptr, out_ptr, H, NSPLIT, DH: tl.constexpr, BLOCK_S: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)
        s = tl.arange(0, BLOCK_S)
        d = tl.arange(0, DH)
        base = (b * H + h) * NSPLIT
        ms = s < NSPLIT
        m = tl.load(m_ptr + base + s, mask=ms, other=-1.0e30)
        lse = tl.load(l_ptr + base + s, mask=ms, other=0.0)
        w = tl.where(ms, tl.exp(m - tl.max(m, axis=0)), 0.0)
        acc = tl.load(acc_ptr + (base + s[:, None]) * DH + d[None, :], mask=ms[:, None], other=0.0)
        out = tl.sum(w[:, None] * acc, axis=0) / tl.sum(w * lse, axis=0)
        tl.store(out_ptr + (b * H + h) * DH + d, out.to(out_ptr.dtype.element_ty))

    @triton.jit
    def _router_topk_kernel(logits_ptr, w_ptr, idx_ptr, E, K: tl.constexpr, NORM: tl.constexpr, BLOCK_E: tl.constexpr):
        t = tl.program_id(0)
        e = tl.arange(0, BLOCK_E)
        me = e < E
        z = tl.load(logits_ptr + t * E + e, mask=me, other=-float("inf")).to(tl.float32)
        p = tl.exp(z - tl.max(z, axis=0))
        p = tl.where(me, p / tl.sum(p, axis=0), -1.0)
        q = p
        total = tl.sum(tl.zeros([BLOCK_E], tl.float32), axis=0)
        if NORM:  # a first pass sums the k largest
            for j in tl.static_range(K):
                v = tl.max(q, axis=0)
                total += v
                q = tl.where(e == tl.min(tl.where(q == v, e, BLOCK_E), axis=0), -1.0, q)
        # the k largest (lowest index on ties, as torch.topk on distinct values), stored in w's dtype
        for j in tl.static_range(K):
            v = tl.max(p, axis=0)
            i = tl.min(tl.where(p == v, e, BLOCK_E), axis=0)
            tl.store(idx_ptr + t * K + j, i.to(tl.int32))
            if NORM:
                tl.store(w_ptr + t * K + j, (v / total).to(w_ptr.dtype.element_ty))
            else:
                tl.store(w_ptr + t * K + j, v.to(w_ptr.dtype.element_ty))
            p = tl.where(e == i, -1.0, p)

    @triton.jit
    def _moe_gate_up_kernel(
        x_ptr, w_ptr, idx_ptr, out_ptr, K, P, D, I,
        BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        pair = tl.program_id(0)  # token pair // K, rank pair % K
        ib = tl.program_id(1)
        e = tl.load(idx_ptr + pair).to(tl.int64)
        tok = pair // K
        i = ib * BLOCK_I + tl.arange(0, BLOCK_I)
        mi = i < I
        wg = w_ptr + e * 2 * I * D + i[:, None] * D
        wu = wg + I * D
        g = tl.zeros([BLOCK_I], tl.float32)
        u = tl.zeros([BLOCK_I], tl.float32)
        for d0 in range(0, D, BLOCK_D):
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
    def _moe_down_kernel(act_ptr, w_ptr, idx_ptr, y_ptr, P, D, I, BLOCK_D: tl.constexpr, BLOCK_I: tl.constexpr):
        pair = tl.program_id(0)
        db = tl.program_id(1)
        e = tl.load(idx_ptr + pair).to(tl.int64)
        d = db * BLOCK_D + tl.arange(0, BLOCK_D)
        md = d < D
        wd = w_ptr + e * D * I + d[:, None] * I
        y = tl.zeros([BLOCK_D], tl.float32)
        for i0 in range(0, I, BLOCK_I):
            i = i0 + tl.arange(0, BLOCK_I)
            mi = i < I
            a = tl.load(act_ptr + pair * I + i, mask=mi, other=0.0).to(tl.float32)[None, :]
            y += tl.sum(tl.load(wd + i[None, :], mask=md[:, None] & mi[None, :], other=0.0).to(tl.float32) * a, axis=1)
        tl.store(y_ptr + pair * D + d, y.to(act_ptr.dtype.element_ty).to(tl.float32), mask=md)

    @triton.jit
    def _moe_combine_kernel(
        y_ptr, wt_ptr, res_ptr, nw_ptr, out_ptr, normed_ptr, D, eps,
        K: tl.constexpr, BLOCK_K: tl.constexpr, HAS_NORM: tl.constexpr, BLOCK: tl.constexpr,
    ):
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
        r = tl.load(res_ptr + tok * D + d, mask=md, other=0.0).to(tl.float32)
        out = (r + acc.to(dt).to(tl.float32)).to(dt)
        tl.store(out_ptr + tok * D + d, out, mask=md)
        if HAS_NORM:  # the next block's input RMSNorm (or the final norm) on the new residual stream
            xf = out.to(tl.float32)
            rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / D + eps)
            w = tl.load(nw_ptr + d, mask=md, other=0.0).to(tl.float32)
            tl.store(normed_ptr + tok * D + d, ((xf * rstd).to(dt).to(tl.float32) * w).to(dt), mask=md)

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
    def _gather_sum_kernel(y_ptr, inv_ptr, res_ptr, out_ptr, D, K: tl.constexpr, BLOCK: tl.constexpr):
        tok = tl.program_id(0)
        d = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = d < D
        acc = tl.load(res_ptr + tok * D + d, mask=m, other=0.0).to(tl.float32)
        moe = tl.zeros([BLOCK], tl.float32)
        for j in tl.static_range(K):
            src = tl.load(inv_ptr + tok * K + j).to(tl.int64)
            moe += tl.load(y_ptr + src * D + d, mask=m, other=0.0).to(tl.float32)
        dt = out_ptr.dtype.element_ty
        tl.store(out_ptr + tok * D + d, (acc + moe.to(dt).to(tl.float32)).to(dt), mask=m)

    # Tuned variants (CUDA): the best block sizes per (pairs, D, I), measured on first use
    # (warm-up, before any graph capture). The interpreter and explicit block sizes use the raw kernels.
    _gate_up_tuned = triton.autotune(
        configs=[triton.Config({"BLOCK_I": bi, "BLOCK_D": bd}, num_warps=w)
                 for bi, bd, w in ((8, 256, 4), (8, 512, 4), (16, 256, 4), (16, 512, 8), (32, 256, 4), (32, 512, 8),
                                   (64, 128, 4), (64, 256, 8))],
        key=["P", "D", "I"],
    )(_moe_gate_up_kernel)
    _down_tuned = triton.autotune(
        configs=[triton.Config({"BLOCK_D": bd, "BLOCK_I": bi}, num_warps=w)
                 for bd, bi, w in ((4, 512, 4), (4, 1024, 4), (8, 512, 4), (8, 1024, 8), (16, 256, 4), (16, 512, 8),
                                   (32, 256, 4), (32, 256, 8))],
        key=["P", "D", "I"],
    )(_moe_down_kernel)


# ============================================================================ ops
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, backend: Backend = "torch") -> torch.Tensor:
    """transformers' OlmoeRMSNorm of (T, D) rows → (T, D) in x's dtype."""
    if backend == "torch":
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        return weight * y.to(x.dtype)
    x = x.contiguous()
    out = torch.empty_like(x)
    d = x.shape[-1]
    _rms_norm_kernel[(x.numel() // d,)](x, x, weight, out, x, d, eps, HAS_DELTA=False, BLOCK=_p2(d))
    return out


def add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float, backend: Backend = "torch"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add then RMSNorm: returns (x + delta, rms_norm(x + delta)), both (T, D)."""
    if backend == "torch":
        s = x + delta
        return s, rms_norm(s, weight, eps, "torch")
    x, delta = x.contiguous(), delta.contiguous()
    s, out = torch.empty_like(x), torch.empty_like(x)
    d = x.shape[-1]
    _rms_norm_kernel[(x.numel() // d,)](x, delta, weight, out, s, d, eps, HAS_DELTA=True, BLOCK=_p2(d))
    return s, out


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, scale: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(T,) positions → cos, sin (T, Dh) as transformers' rotary embedding (float32 then ``dtype``)."""
    freqs = positions.float()[:, None] * inv_freq.float()[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return (emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def _qk_norm_rope_torch(
    qkv: torch.Tensor, qk_weight: torch.Tensor, eps: float, positions: torch.Tensor, inv_freq: torch.Tensor,
    rope_scale: float, n_heads: int, n_kv: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dh = inv_freq.shape[0] * 2
    rows = qkv.shape[0]
    q, k, v = qkv.split([n_heads * dh, n_kv * dh, n_kv * dh], dim=-1)
    qw, kw = qk_weight.split([n_heads * dh, n_kv * dh])
    q = rms_norm(q, qw, eps).view(rows, n_heads, dh)
    k = rms_norm(k, kw, eps).view(rows, n_kv, dh)
    cos, sin = rope_cos_sin(positions, inv_freq, rope_scale, qkv.dtype)
    cos, sin = cos[:, None], sin[:, None]
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v.reshape(rows, n_kv, dh)


def qk_norm_rope(
    qkv: torch.Tensor,
    qk_weight: torch.Tensor,
    eps: float,
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    rope_scale: float,
    n_heads: int,
    n_kv: int,
    backend: Backend = "torch",
    kv_out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """QK-norm (over all heads' features of a row) and RoPE of T = B·S token rows (the prefill's form).

    Args:
        qkv: (T, (H + 2 H_kv) Dh) fused projection output; qk_weight: (H Dh + H_kv Dh,) the q and k
            RMSNorm weights concatenated; positions: (T,) int64; inv_freq: (Dh / 2,) float32.
        kv_out: (keys, values) destinations of shape (B, H_kv, S, Dh), any strides with a
            contiguous last dim (the static KV cache's slots): the keys are written there and the
            values copied there from ``qkv``, in the same kernel.

    Returns:
        q (T, H, Dh) and k: (T, H_kv, Dh) in qkv's dtype, or ``kv_out[0]`` when given (the values
        are ``qkv``'s last H_kv Dh columns).
    """
    if backend == "torch":
        q, k, v = _qk_norm_rope_torch(qkv, qk_weight, eps, positions, inv_freq, rope_scale, n_heads, n_kv)
        if kv_out is None:
            return q, k
        bsz, _, seq, dh = kv_out[0].shape
        kv_out[0].copy_(k.view(bsz, seq, n_kv, dh).transpose(1, 2))
        kv_out[1].copy_(v.reshape(bsz, seq, n_kv, dh).transpose(1, 2))
        return q, kv_out[0]
    rows, dh = qkv.shape[0], inv_freq.shape[0] * 2
    q = torch.empty(rows, n_heads, dh, dtype=qkv.dtype, device=qkv.device)
    if kv_out is None:
        k = torch.empty(rows, n_kv, dh, dtype=qkv.dtype, device=qkv.device)
        dst_k, dst_v, seq, strides = k, k, rows, (0, n_kv * dh, dh)
    else:
        dst_k, dst_v = kv_out
        if dst_k.shape != dst_v.shape or dst_k.stride() != dst_v.stride() or dst_k.stride(-1) != 1:
            raise ValueError("kv_out keys and values need the same shape and strides, contiguous in Dh")
        if dst_k.shape[0] * dst_k.shape[2] != rows or dst_k.shape[1] != n_kv:
            raise ValueError(f"kv_out shape {tuple(dst_k.shape)} does not hold {rows} rows of {n_kv} heads")
        seq, strides = dst_k.shape[2], (dst_k.stride(0), dst_k.stride(2), dst_k.stride(1))
    _qk_norm_rope_rows_kernel[(rows,)](
        qkv.contiguous(), qk_weight, positions.contiguous(), inv_freq, q, dst_k, dst_v, n_heads, n_kv, seq,
        *strides, eps, float(rope_scale),
        DH=dh, HALF=dh // 2, BLOCK_H=_p2(max(n_heads, n_kv)), STORE_V=kv_out is not None,
    )
    return q, dst_k


def qk_norm_rope_store(
    qkv: torch.Tensor,
    qk_weight: torch.Tensor,
    eps: float,
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    rope_scale: float,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot: torch.Tensor,
    n_heads: int,
    backend: Backend = "torch",
) -> torch.Tensor:
    """The decode form of :func:`qk_norm_rope`: one token per row, the new key and value written to
    the cache at ``slot``.

    Args:
        qkv: (B, (H + 2 H_kv) Dh); qk_weight: (H Dh + H_kv Dh,); positions: (B,) int64;
        k_cache, v_cache: (B, H_kv, L, Dh); slot: (1,) int64, the position written.

    Returns:
        (B, H, Dh) queries.
    """
    bsz = qkv.shape[0]
    n_kv, length, dh = k_cache.shape[1], k_cache.shape[2], k_cache.shape[3]
    if backend == "torch":
        q, k, v = _qk_norm_rope_torch(qkv, qk_weight, eps, positions, inv_freq, rope_scale, n_heads, n_kv)
        k_cache.index_copy_(2, slot, k[:, :, None])
        v_cache.index_copy_(2, slot, v[:, :, None])
        return q
    q_out = torch.empty(bsz, n_heads, dh, dtype=qkv.dtype, device=qkv.device)
    _qk_norm_rope_kernel[(bsz, n_heads + n_kv)](
        qkv.contiguous(), qk_weight, positions, inv_freq, q_out, k_cache, v_cache, slot,
        n_heads, n_kv, n_kv * length * dh, length * dh, eps, float(rope_scale),
        DH=dh, HALF=dh // 2, BLOCK=_p2(max(n_heads, n_kv) * dh),
    )
    return q_out


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    valid: torch.Tensor,
    slot: torch.Tensor,
    scale: float,
    backend: Backend = "torch",
    chunk: int | None = None,
) -> torch.Tensor:
    """One query per row over the cache positions ``0..slot`` marked valid.

    Args:
        q: (B, H, Dh); k_cache, v_cache: (B, H_kv, L, Dh); valid: (B, L) int64 (1 = attend);
        slot: (1,) int64, the last position written.

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
    _attn_split_kernel[(bsz, n_heads, nsplit)](
        q.contiguous(), k_cache, v_cache, valid, slot, m, lse, acc, n_heads, n_kv, length, nsplit, float(scale),
        DH=dh, CHUNK=chunk, BLOCK_N=min(chunk, 64),
    )
    out = torch.empty(bsz, n_heads * dh, dtype=q.dtype, device=q.device)
    _attn_reduce_kernel[(bsz, n_heads)](m, lse, acc, out, n_heads, nsplit, DH=dh, BLOCK_S=_p2(nsplit))
    return out


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
    _router_topk_kernel[(n_tok,)](logits.contiguous(), w, idx, n_exp, K=top_k, NORM=bool(norm_topk_prob), BLOCK_E=_p2(n_exp))
    return w, idx


def _launch_pair_tiles(
    tuned: object, raw: object, args: tuple, pairs: int, n: int, block_name: str, block: int | None, tuning_key: str,
    **raw_meta: int,
) -> None:
    """Launch an expert kernel over a (token-expert pairs, ceil(n / block)) grid: the autotuned
    variant on CUDA, the raw kernel with ``block`` (or ``TUNING[tuning_key]``) otherwise."""
    if block is None and not triton_interpreting():
        tuned[lambda meta: (pairs, triton.cdiv(n, meta[block_name]))](*args)  # type: ignore[index]
    else:
        b = min(TUNING[tuning_key] if block is None else int(block), _p2(n))
        raw[(pairs, triton.cdiv(n, b))](*args, **{block_name: b}, **raw_meta)  # type: ignore[index]


def moe_gate_up_act(
    x: torch.Tensor, gate_up: torch.Tensor, idx: torch.Tensor, backend: Backend = "torch", block_i: int | None = None
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
                       pairs, n_int, "BLOCK_I", block_i, "gate_up_block_i", BLOCK_D=min(256, _p2(dim)))
    return out


def moe_down(
    act: torch.Tensor, down: torch.Tensor, idx: torch.Tensor, backend: Backend = "torch", block_d: int | None = None
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
                       pairs, dim, "BLOCK_D", block_d, "down_block_d", BLOCK_I=min(256, _p2(n_int)))
    return y


def moe_combine(
    y: torch.Tensor,
    weights: torch.Tensor,
    residual: torch.Tensor,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-5,
    backend: Backend = "torch",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``out = residual + Σ_j weights[:, j] · y[t·k + j]`` and, with ``norm_weight``, the RMSNorm of
    ``out`` (the next block's input norm or the final norm, fused here to save a launch).

    Args:
        y: (T·k, D) float32 from :func:`moe_down`; weights: (T, k); residual: (T, D).

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
    )
    return out, normed if norm_weight is not None else None


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
        y.contiguous(), inverse.contiguous(), residual.contiguous(), out, dim, K=top_k, BLOCK=block)
    return out


def attention_scale(head_dim: int) -> float:
    """Softmax scale of the attention (1/sqrt(Dh), as transformers' ``scaling``)."""
    return 1.0 / math.sqrt(head_dim)
