"""RMSNorm (optionally fused with the residual add) and QK-norm + RoPE, the latter for the
prefill's token rows (optionally writing keys/values into the KV cache) and for the decode step
(one token per row, key and value written at the cache slot)."""

from __future__ import annotations

import torch

from .common import HAVE_TRITON, Backend, _p2, pdl_options

if HAVE_TRITON:
    import triton
    import triton.language as tl

    from .common import pdl_enter


#: Columns per float32 partial of a row's sum of squares (:func:`sq_partials`): the decode step's kernels that write a
#: residual stream leave (rows, D / SQ_COLS) of them, and the kernels that read it for an RMSNorm sum them instead
#: of re-reading the row (``FusedLM(decode_epilogues="on_load")``). Tiles that write them are multiples of it.
SQ_COLS = 8

# ============================================================================ kernels
if HAVE_TRITON:
    SQ_COLS_C = tl.constexpr(SQ_COLS)

    @triton.jit
    def rms_norm_of(xf, w, n, eps, dt):
        """transformers' OlmoeRMSNorm of a float32 row ``xf`` of ``n`` features with the float32 weight ``w``:
        normalised, rounded to ``dt``, weighted, rounded to ``dt`` (every RMSNorm of the kernels computes it so)."""
        return rms_scaled(xf, 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / n + eps), w, dt)

    @triton.jit
    def rms_scaled(xf, rstd, w, dt):
        """The RMSNorm's output from its reciprocal RMS ``rstd`` (broadcast against ``xf``): ``xf`` normalised,
        rounded to ``dt``, times the float32 weight ``w``, rounded to ``dt``."""
        return ((xf * rstd).to(dt).to(tl.float32) * w).to(dt)

    @triton.jit
    def store_sq_partials(sq_ptr, xf, rows, mrows, n0, NSQ, BLOCK_N: tl.constexpr):
        """Write the sums of squares of a float32 tile ``xf`` (R, BLOCK_N) of ``rows`` (mask ``mrows``) at columns
        ``n0``.. as one partial per :data:`SQ_COLS` columns into ``sq`` (rows, NSQ), at ``n0 // SQ_COLS``.. A kernel
        that writes a residual stream leaves these for the kernel that norms it (:func:`rstd_of_sq_partials`)."""
        G: tl.constexpr = BLOCK_N // SQ_COLS_C
        s = tl.sum(tl.reshape(xf * xf, [xf.shape[0], G, SQ_COLS_C]), axis=2)
        g = n0 // SQ_COLS_C + tl.arange(0, G)
        tl.store(sq_ptr + rows[:, None] * NSQ + g[None, :], s, mask=mrows[:, None] & (g[None, :] < NSQ))

    @triton.jit
    def rstd_of_sq_partials(sq_ptr, rows, mrows, NSQ, n, eps, BLOCK_SQ: tl.constexpr):
        """The reciprocal RMS (R,) of ``rows`` of ``n`` features from their :func:`store_sq_partials` partials
        (rows, NSQ; ``BLOCK_SQ`` ≥ NSQ), as :func:`rms_norm_of` computes it from the row."""
        g = tl.arange(0, BLOCK_SQ)
        s = tl.load(sq_ptr + rows[:, None] * NSQ + g[None, :], mask=mrows[:, None] & (g[None, :] < NSQ), other=0.0)
        return 1.0 / tl.sqrt(tl.sum(s, axis=1) / n + eps)

    @triton.jit
    def _rms_norm_kernel(x_ptr, d_ptr, w_ptr, out_ptr, sum_ptr, D, eps, HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr,
                         PDL: tl.constexpr = False):
        pdl_enter(PDL)
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        m = offs < D
        x = tl.load(x_ptr + row * D + offs, mask=m, other=0.0)
        if HAS_DELTA:  # residual stream: s = x + delta, rounded as the eager add
            x = (x.to(tl.float32) + tl.load(d_ptr + row * D + offs, mask=m, other=0.0).to(tl.float32)).to(
                x_ptr.dtype.element_ty
            )
            tl.store(sum_ptr + row * D + offs, x, mask=m)
        w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
        y = rms_norm_of(x.to(tl.float32), w, D, eps, x_ptr.dtype.element_ty)
        tl.store(out_ptr + row * D + offs, y.to(out_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def rope_cos_sin_row(position, inv_freq_ptr, rope_scale, dt, HALF: tl.constexpr):
        """RoPE's cos and sin (HALF,) at one position: float32 of the dtype's values, as transformers' rotary
        embedding (float32 products, cast to the model's dtype)."""
        freqs = position.to(tl.float32) * tl.load(inv_freq_ptr + tl.arange(0, HALF))
        return (tl.cos(freqs) * rope_scale).to(dt).to(tl.float32), (tl.sin(freqs) * rope_scale).to(dt).to(tl.float32)

    @triton.jit
    def norm_rope_head(row, w, head, n_feat, cos, sin, eps, DH: tl.constexpr, HALF: tl.constexpr, BLOCK: tl.constexpr):
        """One head of a token row's queries (or keys): RMSNorm over all ``n_feat`` query (key) features of the
        row (each caller recomputes the row's RMS, a 4 KB re-read from L1/L2, so that heads run in parallel),
        the norm weight ``w``, RoPE. Returns the two halves (HALF,) as float32 of the row dtype's values."""
        offs = tl.arange(0, BLOCK)
        x = tl.load(row + offs, mask=offs < n_feat, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_feat + eps)
        dt = row.dtype.element_ty
        o = head * DH + tl.arange(0, HALF)
        x1 = (tl.load(row + o).to(tl.float32) * rstd).to(dt).to(tl.float32) * tl.load(w + o).to(tl.float32)
        x2 = (tl.load(row + o + HALF).to(tl.float32) * rstd).to(dt).to(tl.float32) * tl.load(w + o + HALF).to(tl.float32)
        x1 = x1.to(dt).to(tl.float32)
        x2 = x2.to(dt).to(tl.float32)
        return (x1 * cos - x2 * sin).to(dt).to(tl.float32), (x2 * cos + x1 * sin).to(dt).to(tl.float32)

    @triton.jit
    def _qk_norm_rope_kernel(
        qkv_ptr, qkw_ptr, pos_ptr, inv_freq_ptr, q_out_ptr, k_out_ptr, v_out_ptr, slot_ptr,
        H, HKV, k_row_stride, k_head_stride, eps, rope_scale,
        DH: tl.constexpr, HALF: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False,
    ):
        pdl_enter(PDL)
        # the decode form: program (t, j) is query head j (j < H) or key head j - H of token row t,
        # the key and the value written to the cache at the slot
        t = tl.program_id(0)
        j = tl.program_id(1)
        is_k = j >= H
        head = tl.where(is_k, j - H, j)
        part = tl.where(is_k, H * DH, 0)  # offset of the queries or keys in the row (and in qkw)
        n = tl.where(is_k, HKV * DH, H * DH)
        row = qkv_ptr + t * (H + 2 * HKV) * DH + part
        dt = q_out_ptr.dtype.element_ty
        jj = tl.arange(0, HALF)
        cos, sin = rope_cos_sin_row(tl.load(pos_ptr + t), inv_freq_ptr, rope_scale, dt, HALF)
        r1, r2 = norm_rope_head(row, qkw_ptr + part, head, n, cos, sin, eps, DH, HALF, BLOCK)
        r1 = r1.to(dt)
        r2 = r2.to(dt)
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
        # _qk_norm_rope_kernel re-reads each row H + H_kv times).
        # Keys (and with STORE_V the values) go to a strided (rows, H_kv, S, Dh) destination: the
        # static KV cache directly, which saves the prefill two copies per block.
        t = tl.program_id(0).to(tl.int64)
        cos, sin = rope_cos_sin_row(tl.load(pos_ptr + t), inv_freq_ptr, rope_scale, q_out_ptr.dtype.element_ty, HALF)
        cos, sin = cos[None, :], sin[None, :]
        row = qkv_ptr + t * (H + 2 * HKV) * DH
        kv = (t // SEQ) * kv_row_stride + (t % SEQ) * kv_pos_stride
        _norm_rope_heads(row, qkw_ptr, q_out_ptr + t * H * DH, H, DH, cos, sin, eps, DH, HALF, BLOCK_H)
        _norm_rope_heads(row + H * DH, qkw_ptr + H * DH, k_out_ptr + kv, HKV, kv_head_stride, cos, sin, eps, DH, HALF, BLOCK_H)
        if STORE_V:
            hh = tl.arange(0, BLOCK_H)[:, None]
            dd = tl.arange(0, DH)[None, :]
            v = tl.load(row + (H + HKV) * DH + hh * DH + dd, mask=hh < HKV, other=0.0)
            tl.store(v_out_ptr + kv + hh * kv_head_stride + dd, v, mask=hh < HKV)


# ============================================================================ ops
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, backend: Backend = "torch", pdl: bool = False) -> torch.Tensor:
    """transformers' OlmoeRMSNorm of (T, D) rows → (T, D) in x's dtype (``pdl``: launched for
    programmatic dependent launch, :data:`~.common.pdl_options`; the Triton backend on a GPU)."""
    if backend == "torch":
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        return weight * y.to(x.dtype)
    x = x.contiguous()
    out = torch.empty_like(x)
    d = x.shape[-1]
    _rms_norm_kernel[(x.numel() // d,)](x, x, weight, out, x, d, eps, HAS_DELTA=False, BLOCK=_p2(d), **pdl_options(pdl))
    return out


def add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float, backend: Backend = "torch", pdl: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add then RMSNorm: returns (x + delta, rms_norm(x + delta)), both (T, D)."""
    if backend == "torch":
        s = x + delta
        return s, rms_norm(s, weight, eps, "torch")
    x, delta = x.contiguous(), delta.contiguous()
    s, out = torch.empty_like(x), torch.empty_like(x)
    d = x.shape[-1]
    _rms_norm_kernel[(x.numel() // d,)](x, delta, weight, out, s, d, eps, HAS_DELTA=True, BLOCK=_p2(d), **pdl_options(pdl))
    return s, out


def sq_partials(x: torch.Tensor) -> torch.Tensor:
    """The float32 sums of squares of (T, D) rows per :data:`SQ_COLS` columns: (T, ceil(D / SQ_COLS)), what the
    kernels' ``store_sq_partials`` writes (the torch reference, and the buffer's shape)."""
    xf = x.float()
    pad = -xf.shape[-1] % SQ_COLS
    if pad:
        xf = torch.nn.functional.pad(xf, (0, pad))
    return (xf * xf).reshape(xf.shape[0], -1, SQ_COLS).sum(-1)


def sq_partials_shape(rows: int, dim: int) -> tuple[int, int]:
    """Shape of the sums-of-squares partials of (rows, dim): (rows, ceil(dim / SQ_COLS))."""
    return rows, -(-dim // SQ_COLS)


def check_sq_partials(op: str, sq: torch.Tensor, rows: int, dim: int) -> None:
    """Raise ValueError naming ``op`` unless ``sq`` is float32 (rows, ceil(dim / SQ_COLS)) partials."""
    want = sq_partials_shape(rows, dim)
    if sq.dtype != torch.float32 or tuple(sq.shape) != want:
        raise ValueError(f"{op}: sums-of-squares partials must be float32 {want}, got {sq.dtype} {tuple(sq.shape)}")


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
    pdl: bool = False,
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
        DH=dh, HALF=dh // 2, BLOCK=_p2(max(n_heads, n_kv) * dh), **pdl_options(pdl),
    )
    return q_out
