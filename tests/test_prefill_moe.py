"""The prefill's sorted grouped-GEMM experts (Triton, run by Triton's CPU interpreter here) equal
their torch references and, independently, a per-pair loop over the routed experts."""

from __future__ import annotations

import pytest
import torch

from model_runtime.molmoe import kernels as dk
from model_runtime.molmoe.kernels import prefill_moe as pm
from tests.kernel_testing import DEV, seeded, triton_ok

_g = seeded


def _routing(n_tok: int, top_k: int, n_exp: int, seed: int, skew: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    if skew:  # a few experts take most pairs, several get none (empty groups, multi-tile groups)
        idx = torch.stack([torch.randperm(min(n_exp, top_k + 2), generator=_g(seed + t))[:top_k] for t in range(n_tok)])
    else:
        idx = torch.stack([torch.randperm(n_exp, generator=_g(seed + t))[:top_k] for t in range(n_tok)])
    return idx.int().to(DEV), torch.rand(n_tok, top_k, generator=_g(seed)).to(DEV)


def _loop_reference(x, gate_up, down, idx, w, residual):
    n_int = gate_up.shape[1] // 2
    out = residual.clone()
    for t in range(x.shape[0]):
        for j in range(idx.shape[1]):
            e = int(idx[t, j])
            act = torch.nn.functional.silu(gate_up[e, :n_int] @ x[t]) * (gate_up[e, n_int:] @ x[t])
            out[t] += w[t, j] * (down[e] @ act)
    return out


@triton_ok
@pytest.mark.parametrize("n_tok,top_k,n_exp,skew", [(1, 1, 4, False), (13, 3, 8, False), (300, 8, 16, False), (40, 4, 8, True),
                                                  (1000, 8, 64, False)])  # the last: MolmoE-1B at 1,000 tokens, 125 chunks
def test_sort_by_expert_is_a_stable_sort(n_tok, top_k, n_exp, skew):
    idx, w = _routing(n_tok, top_k, n_exp, seed=n_tok, skew=skew)
    a, b = pm.sort_by_expert(idx, w, n_exp, "triton"), pm.sort_by_expert(idx, w, n_exp, "torch")
    for field in ("src_token", "weight", "ends", "inverse"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    flat = idx.reshape(-1).long()
    order = torch.argsort(flat, stable=True)
    assert torch.equal(a.src_token.long(), order // top_k)
    assert torch.equal(a.ends.long(), torch.bincount(flat, minlength=n_exp).cumsum(0))
    assert torch.equal(a.inverse.long()[order], torch.arange(flat.numel(), device=flat.device))


def _experts(n_tok: int, n_exp: int, dim: int, n_int: int) -> tuple[torch.Tensor, ...]:
    x = torch.randn(n_tok, dim, generator=_g(0)).to(DEV)
    gate_up = (torch.randn(n_exp, 2 * n_int, dim, generator=_g(1)) / dim**0.5).to(DEV)
    down = (torch.randn(n_exp, dim, n_int, generator=_g(2)) / n_int**0.5).to(DEV)
    return x, gate_up, down, torch.randn(n_tok, dim, generator=_g(4)).to(DEV)


@triton_ok
@pytest.mark.parametrize("loads", pm.WEIGHT_LOADS)
@pytest.mark.parametrize("n_tok,top_k,n_exp,dim,n_int,skew", [(13, 3, 8, 40, 24, False), (37, 8, 8, 64, 32, False),
                                                            (45, 4, 8, 32, 48, True)])
def test_grouped_gemms_equal_references(n_tok, top_k, n_exp, dim, n_int, skew, loads):
    """Both weight-load forms; with TMA, the tiles that run past an expert's rows (I, D not
    multiples of the tile) or past the last column read neighbours or zeros that are never stored."""
    idx, w = _routing(n_tok, top_k, n_exp, seed=3, skew=skew)
    x, gate_up, down, res = _experts(n_tok, n_exp, dim, n_int)
    order = pm.sort_by_expert(idx, w, n_exp, "torch")
    act = pm.grouped_gate_up_act(x, gate_up, order, "torch")
    for tiles in (None, {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}):  # several row tiles per expert
        torch.testing.assert_close(pm.grouped_gate_up_act(x, gate_up, order, "triton", tiles=tiles, weight_loads=loads),
                                   act, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pm.grouped_down(act, down, order, "triton", tiles=tiles, weight_loads=loads),
                                   pm.grouped_down(act, down, order, "torch"), atol=1e-5, rtol=1e-5)
    ref = _loop_reference(x, gate_up, down, idx, w, res)
    for backend in ("triton", "torch"):
        torch.testing.assert_close(pm.routed_experts_grouped(x, gate_up, down, idx, w, res, backend, weight_loads=loads),
                                   ref, atol=1e-4, rtol=1e-4)


@triton_ok
def test_grouped_gemms_reject_bad_tiles_and_loads():
    idx, w = _routing(5, 2, 4, seed=0)
    x, gate_up, down, _ = _experts(5, 4, 32, 16)
    order = pm.sort_by_expert(idx, w, 4, "torch")
    with pytest.raises(ValueError, match="unknown weight_loads 'cp.async'"):
        pm.grouped_gate_up_act(x, gate_up, order, "triton", weight_loads="cp.async")
    with pytest.raises(ValueError, match=r"unknown \['BLOCK_Q'\], missing \['BLOCK_K'\]"):
        pm.grouped_gate_up_act(x, gate_up, order, "triton", tiles={"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_Q": 16})
    with pytest.raises(ValueError, match="16-byte aligned rows"):  # 6 float32 columns: 24-byte rows
        pm.grouped_down(torch.randn(10, 6).to(DEV), torch.randn(4, 32, 6).to(DEV), order, "triton", weight_loads="tma")


def test_sort_rejects_bad_expert_count():
    idx, w = _routing(3, 2, 4, seed=0)
    with pytest.raises(ValueError, match="n_exp"):
        pm.sort_by_expert(idx, w, 0, "torch")
    with pytest.raises(ValueError, match="at most 1024"):  # the kernels' one-hot tile; the reference has no limit
        pm.sort_by_expert(idx, w, 2048, "triton")


@triton_ok
def test_qk_norm_rope_rows_kernel_with_grouped_heads():
    """The prefill's row kernel (all heads per program) = the torch reference, H_kv < H and a
    head count that is not a power of two."""
    dh = 16
    inv_freq = (1.0 / (10000 ** (torch.arange(0, dh, 2).float() / dh))).to(DEV)
    for n_heads, n_kv in ((3, 3), (4, 2)):
        qkv = torch.randn(7, (n_heads + 2 * n_kv) * dh, generator=_g(0)).to(DEV)
        qkw = torch.randn((n_heads + n_kv) * dh, generator=_g(1)).to(DEV)
        pos = torch.tensor([0, 1, 2, 9, 30, 31, 500]).to(DEV)
        for a, b in zip(dk.qk_norm_rope(qkv, qkw, 1e-5, pos, inv_freq, 1.0, n_heads, n_kv, "triton"),
                        dk.qk_norm_rope(qkv, qkw, 1e-5, pos, inv_freq, 1.0, n_heads, n_kv, "torch")):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@triton_ok
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_qk_norm_rope_writes_keys_and_values_into_cache_slots(backend):
    """With ``kv_out`` the row kernel writes keys and copies values straight into strided cache
    slots (rows, H_kv, S, Dh) at an offset; queries and keys equal the plain form's."""
    dh, n_heads, n_kv, bsz, seq, length, start = 16, 4, 2, 2, 5, 12, 3
    inv_freq = (1.0 / (10000 ** (torch.arange(0, dh, 2).float() / dh))).to(DEV)
    qkv = torch.randn(bsz * seq, (n_heads + 2 * n_kv) * dh, generator=_g(0)).to(DEV)
    qkw = torch.randn((n_heads + n_kv) * dh, generator=_g(1)).to(DEV)
    pos = torch.arange(seq).repeat(bsz).to(DEV)
    kc, vc = torch.zeros(bsz + 1, n_kv, length, dh).to(DEV), torch.zeros(bsz + 1, n_kv, length, dh).to(DEV)
    q_ref, k_ref = dk.qk_norm_rope(qkv, qkw, 1e-5, pos, inv_freq, 1.0, n_heads, n_kv, "torch")
    q, k = dk.qk_norm_rope(qkv, qkw, 1e-5, pos, inv_freq, 1.0, n_heads, n_kv, backend,
                           kv_out=(kc[:bsz, :, start : start + seq], vc[:bsz, :, start : start + seq]))
    torch.testing.assert_close(q, q_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kc[:bsz, :, start : start + seq], k_ref.view(bsz, seq, n_kv, dh).transpose(1, 2), atol=1e-5, rtol=1e-5)
    v_ref = qkv[:, (n_heads + n_kv) * dh :].reshape(bsz, seq, n_kv, dh).transpose(1, 2)
    assert torch.equal(vc[:bsz, :, start : start + seq], v_ref)
    untouched = torch.ones_like(kc, dtype=torch.bool)
    untouched[:bsz, :, start : start + seq] = False
    assert kc[untouched].abs().sum() == 0 and vc[untouched].abs().sum() == 0
    with pytest.raises(ValueError, match="kv_out"):
        dk.qk_norm_rope(qkv, qkw, 1e-5, pos, inv_freq, 1.0, n_heads, n_kv, "triton",
                        kv_out=(kc[:bsz, :, :seq], vc[:bsz, :, :seq + 1]))
