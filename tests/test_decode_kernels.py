"""The fused decode path's Triton kernels (run by Triton's CPU interpreter here) equal their torch
references, which are what the fused step runs on CPU."""

from __future__ import annotations

import pytest
import torch

from model_runtime.molmoe import kernels as dk
from tests.kernel_testing import DEV, seeded, triton_ok

_g = seeded


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol)


@triton_ok
@pytest.mark.parametrize("rows,dim", [(1, 64), (3, 48)])
def test_rms_norms(rows: int, dim: int) -> None:
    x = torch.randn(rows, dim, generator=_g(0)).to(DEV)
    d = torch.randn(rows, dim, generator=_g(1)).to(DEV)
    w = torch.randn(dim, generator=_g(2)).to(DEV)
    _close(dk.rms_norm(x, w, 1e-5, "triton"), dk.rms_norm(x, w, 1e-5, "torch"))
    for a, b in zip(dk.add_rms_norm(x, d, w, 1e-5, "triton"), dk.add_rms_norm(x, d, w, 1e-5, "torch")):
        _close(a, b)


@triton_ok
@pytest.mark.parametrize("n_heads,n_kv", [(4, 4), (4, 2)])
def test_qk_norm_rope_store(n_heads: int, n_kv: int) -> None:
    bsz, dh, length = 3, 16, 10
    qkv = torch.randn(bsz, (n_heads + 2 * n_kv) * dh, generator=_g(0)).to(DEV)
    qkw = torch.randn((n_heads + n_kv) * dh, generator=_g(1)).to(DEV)
    pos = torch.tensor([5, 0, 7]).to(DEV)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dh, 2).float() / dh)).to(DEV)
    slot = torch.tensor([6]).to(DEV)
    outs = []
    for backend in ("triton", "torch"):
        kc = torch.zeros(bsz, n_kv, length, dh).to(DEV)
        vc = torch.zeros_like(kc)
        q = dk.qk_norm_rope_store(qkv, qkw, 1e-5, pos, inv_freq, 1.0, kc, vc, slot, n_heads, backend)
        outs.append((q, kc, vc))
    for a, b in zip(*outs):
        _close(a, b)
    assert outs[0][1][:, :, 6].abs().sum() > 0 and outs[0][1][:, :, :6].abs().sum() == 0  # only the slot written
    assert torch.equal(outs[0][2][:, :, 6], qkv[:, (n_heads + n_kv) * dh :].reshape(bsz, n_kv, dh))  # values as given
    # the row form (prefill) gives the same queries/keys
    for backend in ("triton", "torch"):
        q, k = dk.qk_norm_rope(qkv, qkw, 1e-5, pos, inv_freq, 1.0, n_heads, n_kv, backend)
        _close(q, outs[1][0])
        _close(k, outs[1][1][:, :, 6])


@triton_ok
@pytest.mark.parametrize("slot_pos,chunk", [(0, 4), (9, 4), (22, 8), (22, 64)])
def test_decode_attention(slot_pos: int, chunk: int) -> None:
    bsz, n_heads, n_kv, dh, length = 3, 4, 2, 16, 24
    q = torch.randn(bsz, n_heads, dh, generator=_g(0)).to(DEV)
    k = torch.randn(bsz, n_kv, length, dh, generator=_g(1)).to(DEV)
    v = torch.randn(bsz, n_kv, length, dh, generator=_g(2)).to(DEV)
    valid = torch.zeros(bsz, length, dtype=torch.long)
    valid[:, : slot_pos + 1] = 1
    valid[1, : min(3, slot_pos)] = 0  # left padding
    valid[2, slot_pos + 1 :] = 1  # positions after the slot never count, whatever valid says
    valid = valid.to(DEV)
    slot = torch.tensor([slot_pos]).to(DEV)
    ref = dk.decode_attention(q, k, v, valid, slot, 0.25, "torch")
    got = dk.decode_attention(q, k, v, valid, slot, 0.25, "triton", chunk=chunk)
    _close(got, ref)
    # the past keys and values loaded before the (PDL) wait, the slot's after it: the same output, bit for bit
    assert torch.equal(dk.decode_attention(q, k, v, valid, slot, 0.25, "triton", chunk=chunk, kv_early=True), got)
    # whatever the positions that do not count hold (here NaN), they take no part
    unseen = (valid == 0) | (torch.arange(length, device=valid.device) > slot_pos)[None]
    k[unseen[:, None, :, None].expand_as(k)] = float("nan")
    v[unseen[:, None, :, None].expand_as(v)] = float("nan")
    _close(dk.decode_attention(q, k, v, valid, slot, 0.25, "triton", chunk=chunk), ref)
    _close(dk.decode_attention(q, k, v, valid, slot, 0.25, "triton", chunk=chunk, kv_early=True), ref)
    with pytest.raises(ValueError, match="chunk must be at most 64"):  # (a split of two tiles)
        dk.decode_attention(q, k, v, valid, slot, 0.25, "triton", chunk=128, kv_early=True)


@triton_ok
@pytest.mark.parametrize("tile", [dk.AttnTile(16, 4, num_warps=2, num_stages=1), dk.AttnTile(32, 8, num_warps=8, num_stages=4)])
def test_decode_attention_tiles(tile: dk.AttnTile, monkeypatch: pytest.MonkeyPatch) -> None:
    """A split that loops over several steps, with other launch options, gives the one-step tile's output;
    ATTN_TILES gives a batch the entry of the largest rows at most its own."""
    bsz, n_heads, n_kv, dh, length = 3, 4, 2, 16, 40
    q = torch.randn(bsz, n_heads, dh, generator=_g(0)).to(DEV)
    k = torch.randn(bsz, n_kv, length, dh, generator=_g(1)).to(DEV)
    v = torch.randn(bsz, n_kv, length, dh, generator=_g(2)).to(DEV)
    valid = torch.ones(bsz, length, dtype=torch.long)
    valid[1, :5] = 0  # left padding
    valid, slot = valid.to(DEV), torch.tensor([33]).to(DEV)
    ref = dk.decode_attention(q, k, v, valid, slot, 0.25, "torch")
    _close(dk.decode_attention(q, k, v, valid, slot, 0.25, "triton", tile=tile), ref)
    monkeypatch.setitem(dk.ATTN_TILES, 2, tile)
    assert dk.attn_tile(1) == dk.AttnTile(dk.TUNING["attn_chunk"], min(dk.TUNING["attn_chunk"], 64), dk.TUNING["attn_warps"])
    assert dk.attn_tile(2) == dk.attn_tile(16) == tile
    assert dk.attn_tile(16, chunk=8) == dk.AttnTile(8, 8, 2)  # an explicit chunk wins over the table
    _close(dk.decode_attention(q, k, v, valid, slot, 0.25, "triton"), ref)  # three rows: the table's tile


@triton_ok
def test_block_configs_name_each_value_and_give_the_warps_to_the_launch() -> None:
    from model_runtime.molmoe.kernels.common import block_configs

    (c,) = block_configs(("BLOCK_N", "num_warps", "NS"), ((16, 8, 3),))
    assert c.kwargs == {"BLOCK_N": 16, "NS": 3} and c.num_warps == 8
    with pytest.raises(ValueError):  # a row with a value too few
        block_configs(("BLOCK_N", "num_warps", "NS"), ((16, 8),))


def test_attn_tile_refuses_a_bad_tile() -> None:
    with pytest.raises(ValueError, match="block_n .* exceeds its chunk"):
        dk.AttnTile(16, 32)
    with pytest.raises(ValueError, match="chunk must be a power of two"):
        dk.AttnTile(48, 16)
    with pytest.raises(ValueError, match="num_stages must be >= 1"):
        dk.AttnTile(64, 64, num_stages=0)


@triton_ok
@pytest.mark.parametrize("top_k,norm", [(1, False), (4, False), (3, True)])
def test_router_topk(top_k: int, norm: bool) -> None:
    logits = torch.randn(5, 12, generator=_g(0)).to(DEV)
    (wa, ia), (wb, ib) = dk.router_topk(logits, top_k, norm, "triton"), dk.router_topk(logits, top_k, norm, "torch")
    assert torch.equal(ia, ib)
    _close(wa, wb)


@triton_ok
@pytest.mark.parametrize("n_tok,n_exp,dim,top_k,norm,block_t,block_d", [(5, 12, 40, 3, True, 64, 16), (70, 64, 96, 8, False, 32, 64),
                                                                        (1, 8, 16, 8, False, 64, 256)])
def test_router_gemm_topk_equals_gemm_then_topk(n_tok, n_exp, dim, top_k, norm, block_t, block_d) -> None:
    """The prefill's router in one kernel (tiles of tokens, several tiles and a partial one, an
    expert count that is not a power of two, a hidden size that is not a multiple of the tile)."""
    h = torch.randn(n_tok, dim, generator=_g(0)).to(DEV)
    router = torch.randn(n_exp, dim, generator=_g(1)).to(DEV)
    (wa, ia) = dk.router_gemm_topk(h, router, top_k, norm, "triton", block_t=block_t, block_d=block_d)
    (wb, ib) = dk.router_topk(h @ router.T, top_k, norm, "torch")
    assert torch.equal(ia, ib)
    _close(wa, wb)
    assert [t.equal(u) for t, u in zip(dk.router_gemm_topk(h, router, top_k, norm, "torch"), (wb, ib))] == [True, True]


@triton_ok
@pytest.mark.parametrize("n_tok,top_k,dim,n_int", [(1, 8, 64, 32), (3, 2, 40, 24)])
def test_moe_ops(n_tok: int, top_k: int, dim: int, n_int: int) -> None:
    n_exp = 8
    x = torch.randn(n_tok, dim, generator=_g(0)).to(DEV)
    gate_up = torch.randn(n_exp, 2 * n_int, dim, generator=_g(1)).to(DEV) / dim**0.5
    down = torch.randn(n_exp, dim, n_int, generator=_g(2)).to(DEV) / n_int**0.5
    idx = torch.stack([torch.randperm(n_exp, generator=_g(10 + t))[:top_k] for t in range(n_tok)]).int().to(DEV)
    w = torch.rand(n_tok, top_k, generator=_g(3)).to(DEV)
    res = torch.randn(n_tok, dim, generator=_g(4)).to(DEV)
    act_t = dk.moe_gate_up_act(x, gate_up, idx, "triton", block_i=8)
    act_r = dk.moe_gate_up_act(x, gate_up, idx, "torch")
    _close(act_t, act_r, 1e-4)
    y_t, y_r = dk.moe_down(act_r, down, idx, "triton", block_d=8), dk.moe_down(act_r, down, idx, "torch")
    _close(y_t, y_r, 1e-4)
    nw = torch.rand(dim, generator=_g(5)).to(DEV)
    for norm in (None, nw):
        (o_t, n_t), (o_r, n_r) = dk.moe_combine(y_r, w, res, norm, 1e-5, "triton"), dk.moe_combine(y_r, w, res, norm, 1e-5, "torch")
        _close(o_t, o_r, 1e-5)
        assert (n_t is None) == (n_r is None) == (norm is None)
        if norm is not None:
            _close(n_t, n_r, 1e-5)
    # the combined result is the weighted sum of the experts, checked independently
    ref = res + sum(w[:, j, None] * torch.stack([down[int(idx[t, j])] @ act_r[t * top_k + j] for t in range(n_tok)])
                    for j in range(top_k))
    _close(dk.moe_combine(y_t, w, res, None, 1e-5, "triton")[0], ref, 1e-4)


@triton_ok
@pytest.mark.parametrize("rows,n_out,dim", [(1, 48, 32), (3, 64, 96), (8, 200, 40), (16, 17, 64)])
def test_gemv_equals_the_matmul(rows: int, n_out: int, dim: int) -> None:
    """x @ w.T for a decode batch: autotuned (GPU) or the interpreter's tiles, and explicit tiles
    whose reduction overruns the width (masked)."""
    x = torch.randn(rows, dim, generator=_g(0)).to(DEV)
    w = torch.randn(n_out, dim, generator=_g(1)).to(DEV)
    ref = x @ w.T
    _close(dk.gemv(x, w, "triton"), ref, 1e-4)
    _close(dk.gemv(x, w, "triton", block_n=32, block_k=128), ref, 1e-4)
    assert dk.gemv(x, w, "torch").equal(ref)
    # the staged form (the loop pipelined by Triton): the same tiles summed in the same order
    _close(dk.gemv(x, w, "triton", staged=True), ref, 1e-4)
    staged = dk.gemv(x, w, "triton", block_n=32, block_k=128, staged=True)
    # and with its first weight tile loaded before the wait: still the same tiles in the same order
    early = dk.gemv(x, w, "triton", block_n=32, block_k=128, staged=True, early=True)
    if DEV == "cpu":
        assert staged.equal(dk.gemv(x, w, "triton", block_n=32, block_k=128)) and early.equal(staged)
    _close(staged, ref, 1e-4)
    _close(early, ref, 1e-4)


@triton_ok
def test_gemv_prefetch_is_a_hint_on_the_gpu_and_refused_in_the_interpreter() -> None:
    """prefetch=True (inline PTX L2 prefetches of each program's weight rows): the same products on a GPU; the
    interpreter cannot run PTX, and says so."""
    x = torch.randn(2, 64, generator=_g(0)).to(DEV)
    w = torch.randn(40, 64, generator=_g(1)).to(DEV)
    if DEV == "cpu":
        with pytest.raises(ValueError, match="gemv: prefetch=True issues PTX L2 prefetches"):
            dk.gemv(x, w, "triton", prefetch=True)
        with pytest.raises(ValueError, match="gemv_add_rms_norm: prefetch=True"):
            dk.gemv_add_rms_norm(x, w, torch.zeros(2, 40), torch.ones(40), 1e-5, dk.arrival_counters(DEV), "triton",
                                 prefetch=True)
    else:
        assert dk.gemv(x, w, "triton", prefetch=True, block_n=16, block_k=32).equal(dk.gemv(x, w, "triton", block_n=16,
                                                                                             block_k=32))
    assert dk.gemv(x, w, "torch", prefetch=True).equal(x @ w.T)  # the reference ignores it


@triton_ok
@pytest.mark.parametrize("slot_pos,chunk", [(0, 4), (22, 8)])
def test_decode_attention_merged_by_its_last_split(slot_pos: int, chunk: int) -> None:
    """counters= (the last-arrival form): the splits' merge in the split kernel equals the two-kernel
    form, and every counter is back at zero for the next launch."""
    bsz, n_heads, n_kv, dh, length = 3, 4, 2, 16, 24
    q = torch.randn(bsz, n_heads, dh, generator=_g(0)).to(DEV)
    k = torch.randn(bsz, n_kv, length, dh, generator=_g(1)).to(DEV)
    v = torch.randn(bsz, n_kv, length, dh, generator=_g(2)).to(DEV)
    valid = torch.ones(bsz, length, dtype=torch.long).to(DEV)
    slot = torch.tensor([slot_pos]).to(DEV)
    counters = dk.arrival_counters(DEV)
    ref = dk.decode_attention(q, k, v, valid, slot, 0.25, "torch")
    for _ in range(2):  # a second launch finds its counters reset
        _close(dk.decode_attention(q, k, v, valid, slot, 0.25, "triton", chunk=chunk, counters=counters), ref)
        assert int(counters.abs().sum()) == 0
    with pytest.raises(ValueError, match="2 counters for 12"):
        dk.decode_attention(q, k, v, valid, slot, 0.25, "triton", counters=counters[:2])


@triton_ok
@pytest.mark.parametrize("n_heads,n_kv,slot_pos,merged", [(4, 2, 9, False), (4, 4, 0, True), (4, 2, 22, True)])
def test_qk_norm_rope_attention_equals_the_two_ops(n_heads: int, n_kv: int, slot_pos: int, merged: bool) -> None:
    """The QK-norm + RoPE + cache write inside the attention's split kernel (several splits, the slot in the
    first, a middle and the last; grouped heads; the merge in a second kernel or the last split) equals
    qk_norm_rope_store then decode_attention: the output, and the caches (only the slot written)."""
    bsz, dh, length, chunk = 3, 16, 24, 8
    qkv = torch.randn(bsz, (n_heads + 2 * n_kv) * dh, generator=_g(0)).to(DEV)
    qkw = torch.randn((n_heads + n_kv) * dh, generator=_g(1)).to(DEV)
    pos = torch.tensor([slot_pos, max(slot_pos - 3, 0), slot_pos]).to(DEV)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dh, 2).float() / dh)).to(DEV)
    slot = torch.tensor([slot_pos]).to(DEV)
    valid = torch.zeros(bsz, length, dtype=torch.long)
    valid[:, : slot_pos + 1] = 1
    valid[1, : min(3, slot_pos)] = 0  # left padding
    valid = valid.to(DEV)
    k0 = torch.randn(bsz, n_kv, length, dh, generator=_g(2)).to(DEV)
    v0 = torch.randn(bsz, n_kv, length, dh, generator=_g(3)).to(DEV)
    caches, outs = [], []
    for backend in ("triton", "torch"):
        kc, vc = k0.clone(), v0.clone()
        counters = dk.arrival_counters(DEV) if merged and backend == "triton" else None
        outs.append(dk.qk_norm_rope_attention(qkv, qkw, 1e-5, pos, inv_freq, 1.0, kc, vc, valid, slot, n_heads, 0.25,
                                              backend, chunk=chunk, counters=counters))
        caches.append((kc, vc))
        if counters is not None:
            assert int(counters.abs().sum()) == 0
    kr, vr = k0.clone(), v0.clone()
    q = dk.qk_norm_rope_store(qkv, qkw, 1e-5, pos, inv_freq, 1.0, kr, vr, slot, n_heads, "triton")
    ref = dk.decode_attention(q, kr, vr, valid, slot, 0.25, "triton", chunk=chunk)
    _close(outs[0], ref)
    _close(outs[1], ref)
    for kc, vc in caches:
        _close(kc, kr)
        _close(vc, vr)
    unchanged = torch.ones(length, dtype=torch.bool)
    unchanged[slot_pos] = False
    assert torch.equal(caches[0][0][:, :, unchanged], k0[:, :, unchanged])


@triton_ok
@pytest.mark.parametrize("n_tok,n_exp,dim,top_k,norm,block_d", [(1, 64, 96, 8, False, 32), (5, 12, 40, 3, True, 16),
                                                                (16, 8, 64, 4, False, 128)])
def test_router_splitk_topk_equals_gemm_then_topk(n_tok, n_exp, dim, top_k, norm, block_d) -> None:
    """The decode router split over the hidden columns (several splits, a partial one, a single one), the
    top-k in the last program; counters back at zero."""
    h = torch.randn(n_tok, dim, generator=_g(0)).to(DEV)
    router = torch.randn(n_exp, dim, generator=_g(1)).to(DEV)
    counters = dk.arrival_counters(DEV)
    (wb, ib) = dk.router_topk(h @ router.T, top_k, norm, "torch")
    for _ in range(2):
        (wa, ia) = dk.router_splitk_topk(h, router, top_k, norm, counters, "triton", block_d=block_d)
        assert torch.equal(ia, ib)
        _close(wa, wb)
        assert int(counters.abs().sum()) == 0
    assert [t.equal(u) for t, u in zip(dk.router_splitk_topk(h, router, top_k, norm, None, "torch"), (wb, ib))] == [True, True]
    with pytest.raises(ValueError, match="up to 16 rows"):
        dk.router_splitk_topk(torch.zeros(17, dim).to(DEV), router, top_k, norm, counters, "triton")
    with pytest.raises(ValueError, match="needs arrival counters"):
        dk.router_splitk_topk(h, router, top_k, norm, None, "triton")


@triton_ok
@pytest.mark.parametrize("rows,dim,block_n", [(1, 64, 16), (3, 40, 16), (16, 96, 32)])
def test_gemv_add_rms_norm_equals_the_matmul_then_add_rms_norm(rows: int, dim: int, block_n: int) -> None:
    x = torch.randn(rows, dim, generator=_g(0)).to(DEV)
    w = torch.randn(dim, dim, generator=_g(1)).to(DEV)
    res = torch.randn(rows, dim, generator=_g(2)).to(DEV)
    nw = torch.rand(dim, generator=_g(3)).to(DEV)
    counters = dk.arrival_counters(DEV)
    ref = dk.add_rms_norm(res, x @ w.T, nw, 1e-5, "torch")
    for _ in range(2):
        for got, want in zip(dk.gemv_add_rms_norm(x, w, res, nw, 1e-5, counters, "triton", block_n=block_n), ref):
            _close(got, want, 1e-4)
        assert int(counters.abs().sum()) == 0
    assert all(a.equal(b) for a, b in zip(dk.gemv_add_rms_norm(x, w, res, nw, 1e-5, None, "torch"), ref))
    with pytest.raises(ValueError, match="needs arrival counters"):
        dk.gemv_add_rms_norm(x, w, res, nw, 1e-5, None, "triton")


@triton_ok
@pytest.mark.parametrize("n_tok,top_k,dim,n_int", [(1, 8, 64, 32), (3, 2, 40, 24)])
def test_moe_down_combine_equals_down_then_combine(n_tok: int, top_k: int, dim: int, n_int: int) -> None:
    n_exp = 8
    act = torch.randn(n_tok * top_k, n_int, generator=_g(0)).to(DEV)
    down = torch.randn(n_exp, dim, n_int, generator=_g(2)).to(DEV) / n_int**0.5
    idx = torch.stack([torch.randperm(n_exp, generator=_g(10 + t))[:top_k] for t in range(n_tok)]).int().to(DEV)
    w = torch.rand(n_tok, top_k, generator=_g(3)).to(DEV)
    res = torch.randn(n_tok, dim, generator=_g(4)).to(DEV)
    nw = torch.rand(dim, generator=_g(5)).to(DEV)
    counters = dk.arrival_counters(DEV)
    for norm in (None, nw):
        ref = dk.moe_combine(dk.moe_down(act, down, idx, "torch"), w, res, norm, 1e-5, "torch")
        got = dk.moe_down_combine(act, down, idx, w, res, norm, 1e-5, counters, "triton", block_d=8)
        _close(got[0], ref[0], 1e-4)
        assert (got[1] is None) == (norm is None)
        if norm is not None:
            _close(got[1], ref[1], 1e-4)
        assert int(counters.abs().sum()) == 0
    with pytest.raises(ValueError, match="one per row"):
        dk.moe_down_combine(act, down, idx, w, res, nw, 1e-5, None, "triton")


@triton_ok
@pytest.mark.parametrize("n_tok,n_exp,top_k,norm", [(1, 8, 8, False), (3, 12, 3, True)])
def test_gate_up_taking_the_routers_top_k_equals_router_then_gate_up(n_tok: int, n_exp: int, top_k: int, norm: bool) -> None:
    """decode_router="in_experts": the router's partial logits (split over the hidden columns), then the gate/up
    kernel whose programs take their row's top-k themselves = router_topk then moe_gate_up_act (activations,
    weights and expert ids, which the down projection and the combine read)."""
    dim, n_int = 40, 24
    h = torch.randn(n_tok, dim, generator=_g(0)).to(DEV)
    router = torch.randn(n_exp, dim, generator=_g(1)).to(DEV)
    gate_up = torch.randn(n_exp, 2 * n_int, dim, generator=_g(2)).to(DEV) / dim**0.5
    wb, ib = dk.router_topk(h @ router.T, top_k, norm, "torch")
    ref = dk.moe_gate_up_act(h, gate_up, ib, "torch")
    for backend in ("triton", "torch"):
        part = dk.router_partials(h, router, backend, block_d=16)
        assert part.shape[0] == (3 if backend == "triton" else 1)  # 40 columns in splits of 16, or the logits
        act, w, idx = dk.moe_gate_up_act_routed(h, gate_up, part, n_exp, top_k, norm, backend, block_i=8)
        assert torch.equal(idx, ib)
        _close(w, wb)
        _close(act, ref, 1e-4)
    with pytest.raises(ValueError, match="up to 16 rows"):
        dk.router_partials(torch.zeros(17, dim).to(DEV), router, "triton")


@triton_ok
@pytest.mark.parametrize("rows,dim,n_out,block_n", [(1, 64, 48, 16), (3, 40, 20, 16), (16, 96, 64, 32)])
def test_the_on_load_epilogues_equal_the_separate_norm_and_add(rows: int, dim: int, n_out: int, block_n: int) -> None:
    """decode_epilogues="on_load": the projection norming x as it loads it (the reciprocal RMS from x's sums-of-squares
    partials) and adding the residual after it, the router's projection norming its input, and the down projection
    summing a row's experts with the residual, each = the separate ops; the partials = the result's."""
    x = torch.randn(rows, dim, generator=_g(0)).to(DEV)
    w = torch.randn(n_out, dim, generator=_g(1)).to(DEV) / dim**0.5
    nw = torch.rand(dim, generator=_g(2)).to(DEV) + 0.5
    res = torch.randn(rows, n_out, generator=_g(3)).to(DEV)
    sq = dk.sq_partials(x)
    assert sq.shape == (rows, -(-dim // dk.SQ_COLS)) and torch.allclose(sq.sum(-1), (x * x).sum(-1))
    normed = dk.rms_norm(x, nw, 1e-5, "torch")
    for norm in (None, (sq, nw, 1e-5)):
        for residual in (None, res):
            out, sq_out = dk.gemv_on_load(x, w, norm=norm, residual=residual, backend="triton", block_n=block_n)
            ref = (x if norm is None else normed) @ w.T + (0 if residual is None else residual)
            _close(out, ref, 1e-4)
            assert (sq_out is None) == (residual is None)
            if residual is not None:
                _close(sq_out, dk.sq_partials(out), 1e-4)
    # the router's projection of the norm of a residual stream, the norm written for the experts
    router = torch.randn(12, dim, generator=_g(4)).to(DEV)
    part, h = dk.router_partials_norm(x, sq, nw, 1e-5, router, "triton", block_d=16)
    _close(h, normed, 1e-5)
    _close(part.sum(0)[:rows, :12], normed @ router.T, 1e-4)
    # the down projection over a row's experts, their weighted sum and the residual
    top_k, n_int, n_exp = 3, 24, 6
    act = torch.randn(rows * top_k, n_int, generator=_g(5)).to(DEV)
    down = torch.randn(n_exp, dim, n_int, generator=_g(6)).to(DEV) / n_int**0.5
    idx = torch.stack([torch.randperm(n_exp, generator=_g(10 + t))[:top_k] for t in range(rows)]).int().to(DEV)
    wts = torch.rand(rows, top_k, generator=_g(7)).to(DEV)
    out, sq_out = dk.moe_down_sum(act, down, idx, wts, x, "triton", block_d=8)
    ref, _ = dk.moe_combine(dk.moe_down(act, down, idx, "torch"), wts, x, None, backend="torch")
    _close(out, ref, 1e-4)
    _close(sq_out, dk.sq_partials(ref), 1e-4)
    with pytest.raises(ValueError, match="multiple of 8"):
        dk.moe_down_sum(act, down, idx, wts, x, "triton", block_d=4)
    with pytest.raises(ValueError, match="multiple of 8"):
        dk.gemv_on_load(x, w, residual=res, backend="triton", block_n=4)
    with pytest.raises(ValueError, match="sums-of-squares partials must be float32"):
        dk.gemv_on_load(x, w, norm=(sq[:, :2], nw, 1e-5), backend="triton")


def test_gemv_refuses_what_it_cannot_serve() -> None:
    with pytest.raises(ValueError, match="up to 16 rows"):
        dk.gemv(torch.zeros(17, 8), torch.zeros(4, 8), "triton")
    with pytest.raises(ValueError, match="x has 8 features"):
        dk.gemv(torch.zeros(2, 8), torch.zeros(4, 6), "triton")
    with pytest.raises(ValueError, match="staged and prefetch are two forms of early weight loads"):
        dk.gemv(torch.zeros(2, 8), torch.zeros(4, 8), "triton", staged=True, prefetch=True)
    with pytest.raises(ValueError, match="gemv: early is the staged form's"):
        dk.gemv(torch.zeros(2, 8), torch.zeros(4, 8), "triton", early=True)


def test_backend_errors() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        dk.check_backend("cuda-magic", "cpu")
    assert dk.default_backend("cpu") == "torch"


@triton_ok
def test_prefill_moe_helpers() -> None:
    """SiLU·up·weight and the gather back to token order + sum over k + residual."""
    n_tok, top_k, dim, n_int = 5, 3, 40, 24
    gu = torch.randn(n_tok * top_k, 2 * n_int, generator=_g(0)).to(DEV)
    w = torch.rand(n_tok * top_k, generator=_g(1)).to(DEV)
    _close(dk.silu_mul_scale(gu, w, "triton"), dk.silu_mul_scale(gu, w, "torch"))
    y = torch.randn(n_tok * top_k, dim, generator=_g(2)).to(DEV)
    inverse = torch.randperm(n_tok * top_k, generator=_g(3)).to(DEV)
    res = torch.randn(n_tok, dim, generator=_g(4)).to(DEV)
    ref = res + torch.stack([sum(y[int(inverse[t * top_k + j])] for j in range(top_k)) for t in range(n_tok)])
    _close(dk.gather_sum(y, inverse, top_k, res, "triton"), ref, 1e-5)
    _close(dk.gather_sum(y, inverse, top_k, res, "torch"), ref, 1e-5)
    # with the next block's input norm in the same kernel (one program per row of 40, not a power of two)
    nw = torch.randn(dim, generator=_g(5)).to(DEV)
    for backend in ("triton", "torch"):
        out, normed = dk.gather_sum_norm(y, inverse, top_k, res, nw, 1e-5, backend)
        _close(out, ref, 1e-5)
        _close(normed, dk.rms_norm(ref, nw, 1e-5, "torch"), 1e-5)


def test_old_module_names_reexport_the_kernels_package() -> None:
    """``decode_kernels`` and ``prefill_moe`` stay importable as thin re-exports of ``kernels``."""
    from model_runtime.molmoe import decode_kernels, prefill_moe
    from model_runtime.molmoe.kernels import prefill_moe as kpm

    for name in decode_kernels.__all__:
        assert getattr(decode_kernels, name) is getattr(dk, name), name
    for name in prefill_moe.__all__:
        assert getattr(prefill_moe, name) is getattr(kpm, name), name
    assert decode_kernels.TUNING is dk.common.TUNING  # tuning through the old name reaches the kernels
