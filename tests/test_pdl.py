"""Programmatic dependent launch of the decode step's kernels (``FusedLM(pdl=True)``): the kernels
compile for Hopper with the grid-dependency instructions where ``PDL`` is on and none where it is
off, the switch is refused where it cannot run, and on a Hopper GPU the captured decode steps give
the same tokens and logits with it as without."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from envs.knob_space import KnobSpace
from model_runtime.molmoe import kernels as dk
from model_runtime.molmoe.fused_lm import FusedLM, default_decode_gemv
from model_runtime.molmoe.generation import greedy_generate
from model_runtime.molmoe.kernels.common import pdl_options, triton_has_pdl
from model_runtime.molmoe.language_model import MolmoeLanguageModel
from model_runtime.molmoe.static_decode import GraphDecoder
from tests.tiny_molmoe import left_padded_ids, tiny_config, tiny_olmoe_hf

CFG = tiny_config()
BF = "*bf16"
ROOT = Path(__file__).resolve().parents[1]


def _kernels() -> list[tuple[object, dict[str, str], dict[str, object]]]:
    """Every Triton kernel of the decode step (``FusedLM.decode_step`` with the pair experts, the
    Triton GEMVs, either router form and either epilogue form), with argument types and constants of the
    MolmoE-1B shape (the attention's split kernel with its last-arrival merge)."""
    from model_runtime.molmoe.kernels import attention as A, decode_moe as M, norm_rope as N, projections as G, router as R

    i32, f32 = "i32", "fp32"
    return [
        (N._rms_norm_kernel, {"x_ptr": BF, "d_ptr": BF, "w_ptr": BF, "out_ptr": BF, "sum_ptr": BF, "D": i32, "eps": f32},
         {"HAS_DELTA": True, "BLOCK": 2048}),
        (N._qk_norm_rope_kernel, {"qkv_ptr": BF, "qkw_ptr": BF, "pos_ptr": "*i64", "inv_freq_ptr": "*fp32", "q_out_ptr": BF,
                                  "k_out_ptr": BF, "v_out_ptr": BF, "slot_ptr": "*i64", "H": i32, "HKV": i32,
                                  "k_row_stride": i32, "k_head_stride": i32, "eps": f32, "rope_scale": f32},
         {"DH": 128, "HALF": 64, "BLOCK": 2048}),
        (A._attn_split_kernel, {"q_ptr": BF, "k_ptr": BF, "v_ptr": BF, "valid_ptr": "*i64", "slot_ptr": "*i64", "m_ptr": "*fp32",
                                "l_ptr": "*fp32", "acc_ptr": "*fp32", "out_ptr": BF, "cnt_ptr": "*i32", "H": i32, "HKV": i32,
                                "L": i32, "NSPLIT": i32, "scale": f32},
         {"DH": 128, "CHUNK": 64, "BLOCK_N": 64, "REDUCE": True, "BLOCK_S": 16}),
        (A._attn_reduce_kernel, {"m_ptr": "*fp32", "l_ptr": "*fp32", "acc_ptr": "*fp32", "out_ptr": BF, "H": i32, "NSPLIT": i32},
         {"DH": 128, "BLOCK_S": 32}),
        (R._router_topk_kernel, {"logits_ptr": BF, "w_ptr": BF, "idx_ptr": "*i32", "E": i32},
         {"K": 8, "KMAX": 8, "NORM": False, "BLOCK_E": 64}),
        (R._router_gemm_topk_kernel, {"h_ptr": BF, "wr_ptr": BF, "w_ptr": BF, "idx_ptr": "*i32", "T": i32, "D": i32, "E": i32},
         {"K": 8, "KMAX": 8, "NORM": False, "BLOCK_T": 16, "BLOCK_E": 64, "BLOCK_D": 128, "IEEE": False}),
        (M._moe_gate_up_kernel, {"x_ptr": BF, "w_ptr": BF, "idx_ptr": "*i32", "out_ptr": BF, "K": i32, "P": i32, "D": i32, "I": i32},
         {"BLOCK_I": 32, "BLOCK_D": 256, "NS": 2}),
        (M._moe_down_kernel, {"act_ptr": BF, "w_ptr": BF, "idx_ptr": "*i32", "y_ptr": "*fp32", "P": i32, "D": i32, "I": i32},
         {"BLOCK_D": 16, "BLOCK_I": 256, "NS": 2}),
        (A._attn_qk_split_kernel, {"qkv_ptr": BF, "qkw_ptr": BF, "pos_ptr": "*i64", "inv_freq_ptr": "*fp32", "k_ptr": BF,
                                   "v_ptr": BF, "valid_ptr": "*i64", "slot_ptr": "*i64", "m_ptr": "*fp32", "l_ptr": "*fp32",
                                   "acc_ptr": "*fp32", "out_ptr": BF, "cnt_ptr": "*i32", "H": i32, "HKV": i32, "L": i32,
                                   "NSPLIT": i32, "scale": f32, "eps": f32, "rope_scale": f32},
         {"DH": 128, "HALF": 64, "BLOCK_Q": 2048, "BLOCK_K": 2048, "CHUNK": 64, "BLOCK_N": 64, "REDUCE": True,
          "BLOCK_S": 16}),
        (R._router_partials_kernel, {"h_ptr": BF, "wr_ptr": BF, "part_ptr": "*fp32", "T": i32, "D": i32, "E": i32},
         {"BLOCK_T": 16, "BLOCK_E": 64, "BLOCK_D": 128, "IEEE": False}),
        (M._moe_gate_up_routed_kernel, {"x_ptr": BF, "w_ptr": BF, "part_ptr": "*fp32", "idx_ptr": "*i32", "wt_ptr": BF,
                                        "out_ptr": BF, "n_split": i32, "K": i32, "P": i32, "D": i32, "I": i32, "E": i32},
         {"KMAX": 8, "NORM": False, "BLOCK_T": 16, "BLOCK_E": 64, "BLOCK_I": 32, "BLOCK_D": 256, "NS": 2}),
        (R._router_splitk_topk_kernel, {"h_ptr": BF, "wr_ptr": BF, "part_ptr": "*fp32", "cnt_ptr": "*i32", "w_ptr": BF,
                                        "idx_ptr": "*i32", "T": i32, "D": i32, "E": i32},
         {"K": 8, "KMAX": 8, "NORM": False, "BLOCK_T": 16, "BLOCK_E": 64, "BLOCK_D": 128, "IEEE": False}),
        (M._moe_down_combine_kernel, {"act_ptr": BF, "w_ptr": BF, "idx_ptr": "*i32", "y_ptr": "*fp32", "wt_ptr": BF,
                                      "res_ptr": BF, "nw_ptr": BF, "out_ptr": BF, "normed_ptr": BF, "cnt_ptr": "*i32",
                                      "P": i32, "D": i32, "I": i32, "K": i32, "eps": f32},
         {"BLOCK_D": 16, "BLOCK_I": 256, "NS": 2, "HAS_NORM": True, "BLOCK": 2048}),
        (G._gemv_add_norm_kernel, {"x_ptr": BF, "w_ptr": BF, "res_ptr": BF, "sum_ptr": BF, "nw_ptr": BF, "normed_ptr": BF,
                                   "cnt_ptr": "*i32", "M": i32, "N": i32, "K": i32, "eps": f32},
         {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 256, "BLOCK_ROW": 2048, "IEEE": False}),
        (M._moe_combine_kernel, {"y_ptr": "*fp32", "wt_ptr": BF, "res_ptr": BF, "nw_ptr": BF, "out_ptr": BF, "normed_ptr": BF,
                                 "D": i32, "eps": f32},
         {"K": 8, "BLOCK_K": 8, "HAS_NORM": True, "BLOCK": 2048}),
        (G._gemv_kernel, {"x_ptr": BF, "w_ptr": BF, "out_ptr": BF, "M": i32, "N": i32, "K": i32},
         {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 256, "IEEE": False}),
        # decode_gemv="triton_staged": the same kernel with its loop pipelined (reported as _gemv_kernel#2)
        (G._gemv_kernel, {"x_ptr": BF, "w_ptr": BF, "out_ptr": BF, "M": i32, "N": i32, "K": i32},
         {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 256, "IEEE": False, "NS": 3}),
        # decode_gemv="triton_staged_early": its first weight tile before the wait (reported as _gemv_kernel#3)
        (G._gemv_kernel, {"x_ptr": BF, "w_ptr": BF, "out_ptr": BF, "M": i32, "N": i32, "K": i32},
         {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 256, "IEEE": False, "NS": 3, "EARLY": True}),
        # decode_epilogues="on_load": the norm as the projection loads x and the residual add after it (both on here)
        (G._gemv_on_load_kernel, {"x_ptr": BF, "w_ptr": BF, "out_ptr": BF, "nw_ptr": BF, "sq_in_ptr": "*fp32", "res_ptr": BF,
                                  "sq_out_ptr": "*fp32", "M": i32, "N": i32, "K": i32, "NSQ_IN": i32, "NSQ_OUT": i32,
                                  "eps": f32},
         {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 256, "IEEE": False, "NORM_X": True, "ADD_RES": True, "BLOCK_SQ": 256}),
        (R._router_partials_norm_kernel, {"s_ptr": BF, "sq_ptr": "*fp32", "nw_ptr": BF, "normed_ptr": BF, "wr_ptr": BF,
                                          "part_ptr": "*fp32", "T": i32, "D": i32, "E": i32, "NSQ": i32, "eps": f32},
         {"BLOCK_T": 16, "BLOCK_E": 64, "BLOCK_D": 128, "BLOCK_SQ": 256, "IEEE": False}),
        (M._moe_down_sum_kernel, {"act_ptr": BF, "w_ptr": BF, "idx_ptr": "*i32", "wt_ptr": BF, "res_ptr": BF, "out_ptr": BF,
                                  "sq_ptr": "*fp32", "D": i32, "I": i32, "K": i32, "NSQ": i32},
         {"BLOCK_D": 8, "BLOCK_I": 256, "NS": 2}),
    ]


def compile_report(pdl: bool, only: tuple[str, ...] | None = None) -> dict[str, list]:
    """Per decode kernel compiled for sm_90 (``only``: those named): [griddepcontrol.wait count, launch_dependents
    count, launch_pdl of its metadata], keyed by the kernel's name (``#2``, ``#3`` for its later forms). Needs Triton's
    compiler, not its interpreter (run in a process without ``TRITON_INTERPRET``)."""
    report = {}
    for kernel, types, consts in _kernels():
        name = kernel.fn.__name__
        if only is not None and name not in only:
            continue
        ptx, launch_pdl = _compile_sm90(kernel, types, dict(consts, PDL=pdl), pdl)
        forms = sum(key.split("#")[0] == name for key in report)
        report[f"{name}#{forms + 1}" if forms else name] = [
            ptx.count("griddepcontrol.wait"), ptx.count("griddepcontrol.launch_dependents"), launch_pdl]
    return report


#: the decode kernels' look-ahead switches (FusedLM(decode_prefetch=...)), each kernel's own
LOOKAHEAD = {"_gemv_kernel": "PREFETCH", "_gemv_add_norm_kernel": "PREFETCH", "_attn_reduce_kernel": "RELEASE_FIRST",
             "_moe_combine_kernel": "RELEASE_FIRST", "_attn_split_kernel": "KV_EARLY"}


def lookahead_report() -> dict[str, list]:
    """Per kernel with a look-ahead switch, compiled for sm_90 with PDL and the switch on: [L2 prefetches,
    waits, releases, the first prefetch before the wait, the release before the wait, global loads before the wait]."""
    report = {}
    for kernel, types, consts in _kernels():
        switch = LOOKAHEAD.get(kernel.fn.__name__)
        if switch is None:
            continue
        ptx, _ = _compile_sm90(kernel, types, dict(consts, PDL=True, **{switch: True}), True)
        wait, release, prefetch = (ptx.find(i) for i in ("griddepcontrol.wait", "griddepcontrol.launch_dependents",
                                                          "prefetch.global.L2::evict_last"))
        report[kernel.fn.__name__] = [ptx.count("prefetch.global.L2::evict_last"), ptx.count("griddepcontrol.wait"),
                                      ptx.count("griddepcontrol.launch_dependents"), 0 <= prefetch < wait, release < wait,
                                      ptx[:wait].count("ld.global")]
    return report


def _compile_sm90(kernel, types: dict[str, str], consts: dict[str, object], pdl: bool) -> tuple[str, bool]:
    """(PTX, launch_pdl of the metadata) of ``kernel`` compiled for sm_90 with ``consts``; a switch left out of
    ``consts`` takes the kernel's default."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    consts = dict(consts)
    for name, param in zip(names, kernel.params):
        if name not in types and name not in consts and param.is_constexpr and param.default is not inspect.Parameter.empty:
            consts[name] = param.default
    if set(types) | set(consts) != set(names):
        raise ValueError(f"{kernel.fn.__name__}: arguments {names}, typed {sorted(set(types) | set(consts))}")
    src = ASTSource(fn=kernel, signature={n: "constexpr" if n in consts else types[n] for n in names},
                    constexprs={(names.index(c),): v for c, v in consts.items()},
                    attrs={(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if types.get(n, "").startswith("*")})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "launch_pdl": pdl})
    return compiled.asm["ptx"], bool(compiled.metadata.launch_pdl)


@pytest.mark.skipif(not dk.HAVE_TRITON, reason="needs triton")
def test_the_decode_kernels_compile_for_hopper_with_grid_dependency_control() -> None:
    """Compiled for sm_90 (no GPU needed): with PDL on, each kernel waits for the one before exactly
    once and lets the next launch once, and its launch asks for programmatic serialisation; with it
    off, none of that."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # (with PDL off the switch is a constant that compiles the wait and the release out: checked on one kernel of
    # each module, which keeps the test's compile time down)
    code = ("import json, sys; from tests.test_pdl import compile_report, lookahead_report; "
            "print(json.dumps([compile_report(True), compile_report(False, ('_rms_norm_kernel', '_attn_split_kernel', "
            "'_router_partials_kernel', '_moe_gate_up_routed_kernel', '_gemv_kernel')), lookahead_report()]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    on, off, ahead = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(on) == 21 and all(v == [1, 1, True] for v in on.values()), on  # the staged GEMVs' too
    assert len(off) == 7 and all(v == [0, 0, False] for v in off.values()), off  # (the GEMV in its three forms)
    # decode_prefetch: the projections' L2 prefetches come before their wait; the combine and the merge release
    # the next kernel before they wait; still one wait and one release each
    for name in ("_gemv_kernel", "_gemv_add_norm_kernel"):
        prefetches, waits, releases, prefetch_first, release_first, _ = ahead[name]
        assert prefetches > 0 and (waits, releases, prefetch_first, release_first) == (1, 1, True, False), (name, ahead)
    for name in ("_attn_reduce_kernel", "_moe_combine_kernel"):
        assert ahead[name][:5] == [0, 1, 1, False, True], (name, ahead)
    # decode_prefetch="kv": the attention's split loads its past keys and values before its one wait
    prefetches, waits, releases, _, release_first, loads_first = ahead["_attn_split_kernel"]
    assert (prefetches, waits, releases, release_first) == (0, 1, 1, False) and loads_first > 0, ahead


def test_the_switch_is_refused_where_it_cannot_run() -> None:
    assert pdl_options(False) == {} and pdl_options(True) == {"PDL": True, "launch_pdl": True}
    if dk.HAVE_TRITON:
        import triton

        if tuple(int(p) for p in triton.__version__.split(".")[:2]) >= (3, 9):  # the CPU tests' Triton has it
            assert triton_has_pdl()
    with pytest.raises(ValueError, match="on a CUDA GPU"):
        dk.check_pdl("cpu")
    lm = MolmoeLanguageModel.from_hf(tiny_olmoe_hf(CFG, seed=2))
    with pytest.raises(ValueError, match="needs backend 'triton'"):
        FusedLM(lm, backend="torch", pdl=True)
    # the default: PDL with the Triton GEMVs where PDL can run, else neither (here: a CPU)
    assert not dk.pdl_available("cpu")
    fused = FusedLM(lm)
    assert (fused.pdl, fused.decode_gemv, fused.decode_router) == (False, "cublas", "split")
    assert FusedLM(lm, backend="torch", decode_gemv="triton").decode_gemv == "triton"
    assert FusedLM(lm, backend="torch", decode_gemv="triton_staged").decode_gemv == "triton_staged"
    # with PDL the staged GEMV, but the unstaged one where the projections' weights are prefetched before the wait
    assert [default_decode_gemv(pdl, pre) for pdl, pre in ((False, "none"), (True, "none"), (True, "kv"),
                                                           (True, "weights"), (True, "weights_early"))] == [
        "cublas", "triton_staged", "triton_staged", "triton", "triton"]
    # the projections' L2 prefetch before their wait needs both
    with pytest.raises(ValueError, match="needs pdl=True and decode_gemv='triton'"):
        FusedLM(lm, decode_gemv="triton", decode_prefetch="weights")
    with pytest.raises(ValueError, match="decode_prefetch='kv' .* needs pdl=True and decode_qk_norm='kernel'"):
        FusedLM(lm, decode_prefetch="kv")
    with pytest.raises(ValueError, match="unknown decode prefetch form 'all'"):
        FusedLM(lm, decode_prefetch="all")


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                    reason="programmatic dependent launch needs a Hopper (or later) GPU")
@torch.no_grad()
def test_captured_decode_steps_give_the_same_tokens_and_logits_with_and_without_it() -> None:
    lm = MolmoeLanguageModel.from_hf(tiny_olmoe_hf(CFG, seed=2)).to("cuda")
    # on this GPU the default decode step is PDL with the Triton GEMVs and the router's top-k in the experts' kernel
    # (with the sorted experts, the split router)
    default = FusedLM(lm)
    assert dk.pdl_available("cuda") and (default.pdl, default.decode_gemv, default.decode_router) == (True, "triton_staged", "in_experts")
    assert FusedLM(lm, decode_experts="sorted").decode_router == "split"
    ids, mask = left_padded_ids((9, 5), 6, CFG.tokens.pad)
    emb = lm.embed(ids.cuda())
    for config in (("low", 1, 4, 12), ("high", 1, 8, 16)):
        kw = dict(top_k_per_block=KnobSpace().plan(config).top_k_per_block, p=1, eos_token_id=-1,
                  pad_token_id=CFG.tokens.pad, max_new_tokens=6)
        outs = {}
        for form in (("cublas", "split", "kernels"), ("triton", "split", "kernels"), ("triton", "fused", "kernels"),
                     ("triton", "splitk", "last_program"), ("triton", "in_experts", "kernels"),
                     ("triton", "in_experts", "on_load"), ("triton", "in_experts", "on_load_attention"),
                     ("triton_staged", "in_experts", "kernels"), ("triton_staged_early", "in_experts", "kernels")):
            for pdl in (False, True):
                # (the last form with the QK-norm in the attention's kernel too)
                lm.use_fast_path(pdl=pdl, decode_gemv=form[0], decode_router=form[1], decode_epilogues=form[2],
                                 decode_qk_norm="in_attention" if form[2] == "last_program" else "kernel")
                try:
                    outs[form, pdl] = greedy_generate(lm, emb, mask.cuda(), **kw, decoder=GraphDecoder(lm, len_bucket=8))
                finally:
                    lm.use_fast_path(False)
            plain, pdl_on = outs[form, False], outs[form, True]
            assert pdl_on.tokens == plain.tokens and pdl_on.decode_steps == plain.decode_steps == 5
            assert torch.equal(pdl_on.first_logits, plain.first_logits)
        # the Triton GEMVs and the one-kernel router sum in another order than cuBLAS: the same tokens (float32 model)
        ref = outs[("cublas", "split", "kernels"), False].tokens
        assert outs[("triton", "split", "kernels"), True].tokens == ref
        assert outs[("triton", "fused", "kernels"), True].tokens == ref
        # the last-arrival epilogues: the same tokens, and logits within float32 summation-order differences
        last = outs[("triton", "splitk", "last_program"), True]
        assert last.tokens == ref
        torch.testing.assert_close(last.first_logits, outs[("cublas", "split", "kernels"), False].first_logits,
                                   atol=1e-4, rtol=1e-4)
        # the router's top-k in the experts' gate/up kernel: the same tokens; and with the staged GEMV
        assert outs[("triton", "in_experts", "kernels"), True].tokens == ref
        assert outs[("triton_staged", "in_experts", "kernels"), True].tokens == ref
        assert outs[("triton_staged_early", "in_experts", "kernels"), True].tokens == ref
        # the residual adds in the kernels that produce them, the norms in the kernels that read them: the same tokens
        for epilogues in ("on_load", "on_load_attention"):
            assert outs[("triton", "in_experts", epilogues), True].tokens == ref, epilogues
            torch.testing.assert_close(outs[("triton", "in_experts", epilogues), True].first_logits,
                                       outs[("cublas", "split", "kernels"), False].first_logits, atol=1e-4, rtol=1e-4)
        # the projections' weights prefetched into L2 before their wait, and a kernel sooner, or the attention's past
        # keys and values loaded before its wait: a hint, a launch order, a load order; the default's numbers exactly
        for prefetch in ("weights", "weights_early", "kv"):
            lm.use_fast_path(decode_prefetch=prefetch, decode_gemv="triton")  # (the unstaged GEMV's numbers)
            try:
                ahead = greedy_generate(lm, emb, mask.cuda(), **kw, decoder=GraphDecoder(lm, len_bucket=8))
            finally:
                lm.use_fast_path(False)
            assert ahead.tokens == ref
            assert torch.equal(ahead.first_logits, outs[("triton", "in_experts", "kernels"), True].first_logits)
