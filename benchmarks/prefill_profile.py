"""Where a prefill's GPU time goes, and how fast its routed-expert GEMMs stream their weights.

Measurements for issue 15's prefill item (``bench_fast_path --sections prefill_kernels,experts``):

- :func:`prefill_breakdown` — the kernels of one uncaptured prefill (the fused blocks, the same
  kernels the captured graph replays) grouped by :data:`KERNEL_KINDS`, each kind's ms and share,
  and the expert GEMMs' weight rate against the run's copy rate and their FLOP rate against its
  matmul rate (the item's bar: expert GEMMs at ≥ 85 % of the copy rate for the weights they read).
- :func:`expert_sweep` — one block's expert GEMMs alone for a prompt's routed pairs, for each
  weight-load form (:data:`~model_runtime.molmoe.kernels.prefill_moe.WEIGHT_LOADS`) autotuned and
  for explicit tile configurations, with the configuration the autotuner chose;
- :func:`attention_backends` — one block's causal attention with each SDPA backend.

The timings come from the caller (``timer``: a callable's median µs), so the same code runs on a
GPU (``triton.testing.do_bench``) and in Triton's CPU interpreter (the tests).
"""

from __future__ import annotations

import re
from typing import Any, Callable

import torch

from benchmarks.roofline import LMShape, expert_floor

#: (kind, kernel-name pattern), first match wins; kernels that match none are "other" (copies,
#: fills, the LM head's argmax, embedding)
KERNEL_KINDS: tuple[tuple[str, str], ...] = (
    ("experts gate/up", r"_grouped_gate_up|grouped_mm|_silu_mul"),
    ("experts down", r"_grouped_down"),
    ("expert sort", r"_expert_(hist|place)"),
    ("gather-sum", r"_gather_sum"),
    ("attention", r"flash|fmha|sdpa|attention"),
    ("router", r"_router_(gemm_)?topk"),
    ("norms, QK-norm, RoPE", r"rms_norm|qk_norm|rope"),
    ("dense GEMMs", r"gemm|nvjet|xmma|cutlass|sm90_|sm80_|ampere_"),
)


def kernel_kind(name: str) -> str:
    """The :data:`KERNEL_KINDS` kind of a kernel name."""
    return next((kind for kind, pat in KERNEL_KINDS if re.search(pat, name)), "other")


def kernel_times(fn: Callable[[], Any]) -> dict[str, list[float]]:
    """µs of every CUDA kernel one call of ``fn`` launches, by kernel name (called once before, to
    leave compiles and autotuning out)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels: dict[str, list[float]] = {}
    for ev in prof.events():
        if ev.device_type.name == "CUDA":
            kernels.setdefault(ev.name, []).append(float(getattr(ev, "device_time_total", 0.0)))
    return kernels


def by_kind(kernels: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Kernel times grouped by kind: count, ms and share of the total, largest first."""
    total = sum(sum(v) for v in kernels.values()) or 1.0
    kinds: dict[str, dict[str, float]] = {}
    for name, times in kernels.items():
        k = kinds.setdefault(kernel_kind(name), {"n": 0, "ms": 0.0})
        k["n"] += len(times)
        k["ms"] += sum(times) / 1e3
    for k in kinds.values():
        k["share"] = k["ms"] * 1e3 / total
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]["ms"]))


def expert_rates(kinds: dict[str, dict[str, float]], shape: LMShape, top_k: int, tokens: int, blocks: int,
                 copy_tbps: float | None, matmul_tflops: float | None) -> dict[str, float]:
    """Weight TB/s and TFLOP/s of the expert GEMMs of a prefill (``blocks`` active blocks at
    top-``top_k``) from their kernel ms; gate/up carries two thirds of the bytes and FLOPs."""
    fl = expert_floor(shape, top_k, tokens)
    out: dict[str, float] = {}
    for kind, part in (("experts gate/up", 2 / 3), ("experts down", 1 / 3)):
        ms = kinds.get(kind, {}).get("ms", 0.0)
        if not ms:
            continue
        key = kind.split()[1].replace("/", "_")
        out[f"{key}_TBps"] = blocks * part * fl.bytes / ms / 1e9
        out[f"{key}_TFLOPs"] = blocks * part * fl.flops / ms / 1e9
        if copy_tbps:
            out[f"{key}_x_copy_rate"] = out[f"{key}_TBps"] / copy_tbps
        if matmul_tflops:
            out[f"{key}_x_matmul_rate"] = out[f"{key}_TFLOPs"] / matmul_tflops
    ms = sum(kinds.get(k, {}).get("ms", 0.0) for k in ("experts gate/up", "experts down"))
    if ms:
        out["experts_ms"] = ms
        out["experts_floor_ms"] = blocks * fl.ms(copy_tbps, matmul_tflops) if copy_tbps and matmul_tflops else float("nan")
        out["experts_TBps"] = blocks * fl.bytes / ms / 1e9
        if copy_tbps:
            out["experts_x_copy_rate"] = out["experts_TBps"] / copy_tbps
    return out


def _routed(lm: torch.nn.Module, tokens: int, top_k: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Hidden states and a uniform random routing of ``tokens`` tokens over the model's experts."""
    blk = lm.fused.blocks[min(1, len(lm.fused.blocks) - 1)]  # type: ignore[attr-defined]
    n_exp, _, dim = blk.gate_up.shape
    dev, dt = blk.gate_up.device, blk.gate_up.dtype
    g = torch.Generator(device=dev).manual_seed(seed)
    idx = torch.rand(tokens, n_exp, device=dev, generator=g).topk(top_k, dim=-1).indices.int()
    w = torch.rand(tokens, top_k, device=dev, generator=g).to(dt)
    x = torch.randn(tokens, dim, device=dev, generator=g).to(dt)
    return blk.gate_up, blk.down, x, idx, w


@torch.no_grad()
def expert_sweep(lm: torch.nn.Module, tokens: int, top_k: int, configs: list[dict[str, int]],
                 timer: Callable[[Callable[[], Any]], float], copy_tbps: float | None = None,
                 matmul_tflops: float | None = None) -> dict[str, Any]:
    """One block's expert GEMMs for ``tokens`` tokens at top-``top_k`` (uniform random routing):
    for each weight-load form, autotuned (``tiles`` None) and at each of ``configs``, the µs of
    gate/up and of down, their weight TB/s and TFLOP/s (and × the ceilings when given). A
    configuration that fails to compile or fit is recorded with its error; the rest go on."""
    from model_runtime.molmoe.kernels import prefill_moe as pm

    gate_up, down, x, idx, w = _routed(lm, tokens, top_k, seed=0)
    order = pm.sort_by_expert(idx, w, gate_up.shape[0], "triton")
    act = pm.grouped_gate_up_act(x, gate_up, order, "triton")
    fl = expert_floor(LMShape.of(lm), top_k, tokens)
    rows: list[dict[str, Any]] = []
    for loads in pm.WEIGHT_LOADS:
        for tiles in [None, *configs]:
            ops = (("gate_up", 2 / 3, lambda: pm.grouped_gate_up_act(x, gate_up, order, "triton", tiles=tiles, weight_loads=loads)),
                   ("down", 1 / 3, lambda: pm.grouped_down(act, down, order, "triton", tiles=tiles, weight_loads=loads)))
            for name, part, fn in ops:
                row: dict[str, Any] = {"gemm": name, "weight_loads": loads, "tiles": tiles or "autotuned"}
                try:
                    us = timer(fn)
                except Exception as exc:  # a tile that does not fit shared memory or registers: keep the others
                    row["error"] = repr(exc)[:200]
                    rows.append(row)
                    continue
                row.update(us=us, TBps=part * fl.bytes / us / 1e6, TFLOPs=part * fl.flops / us / 1e6)
                if copy_tbps:
                    row["x_copy_rate"] = row["TBps"] / copy_tbps
                if matmul_tflops:
                    row["x_matmul_rate"] = row["TFLOPs"] / matmul_tflops
                rows.append(row)
    out: dict[str, Any] = {"tokens": tokens, "top_k": top_k, "pairs": tokens * top_k, "rows": rows,
                           "floor": fl.report(copy_tbps, matmul_tflops)}
    for name in ("gate_up", "down"):
        ok = [r for r in rows if r["gemm"] == name and "us" in r]
        if ok:
            best = min(ok, key=lambda r: r["us"])
            out[f"best_{name}"] = {k: best[k] for k in ("weight_loads", "tiles", "us", "TBps") if k in best}
    out["autotuned_choice"] = autotuned_choice()
    return out


def autotuned_choice() -> dict[str, str]:
    """The configuration each autotuned expert GEMM chose, per size class it has seen."""
    from model_runtime.molmoe.kernels import prefill_moe as pm

    out: dict[str, str] = {}
    for name in ("_gate_up_tuned", "_down_tuned", "_gate_up_tma_tuned", "_down_tma_tuned"):
        tuner = getattr(pm, name, None)
        for key, cfg in (getattr(tuner, "cache", None) or {}).items():
            out[f"{name.strip('_')}{list(key)[:3]}"] = str(cfg)
    return out


@torch.no_grad()
def prefill_breakdown(lm: torch.nn.Module, run: Callable[[], Any], top_k: int, tokens: int, blocks: int,
                      copy_tbps: float | None, matmul_tflops: float | None) -> dict[str, Any]:
    """Kernel time of one ``run`` (a prefill of ``tokens`` tokens, ``blocks`` active blocks at
    top-``top_k``) by kind, the largest kernels, and the expert GEMMs' rates (CUDA)."""
    kernels = kernel_times(run)
    kinds = by_kind(kernels)
    top = sorted(kernels.items(), key=lambda kv: -sum(kv[1]))[:16]
    return {"kernels": sum(len(v) for v in kernels.values()),
            "kernel_ms": sum(sum(v) for v in kernels.values()) / 1e3,
            "by_kind": kinds,
            "experts": expert_rates(kinds, LMShape.of(lm), top_k, tokens, blocks, copy_tbps, matmul_tflops),
            "top": [{"kernel": k[:80], "kind": kernel_kind(k), "n": len(v), "us": round(sum(v), 1)} for k, v in top]}


#: SDPA backends a prefill's causal attention can take on CUDA (the fused blocks let torch choose)
SDPA_BACKENDS: tuple[str, ...] = ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION")


@torch.no_grad()
def attention_backends(lm: torch.nn.Module, tokens: int, timer: Callable[[Callable[[], Any]], float],
                       backends: tuple[str, ...] = SDPA_BACKENDS) -> dict[str, Any]:
    """µs of one block's causal prefill attention over ``tokens`` tokens with each SDPA backend, in
    the fused blocks' layout (queries a transposed (1, S, H, Dh) view, keys and values slices of a
    static cache's (1, H_kv, L, Dh) buffers), and the backend torch picks by itself. A backend
    that refuses the inputs is recorded with its error."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cfg = lm.config  # type: ignore[attr-defined]
    fused = lm.fused  # type: ignore[attr-defined]
    dev, dt = fused.blocks[0].o.device, fused.blocks[0].o.dtype
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(1, tokens, fused.n_heads, fused.head_dim, device=dev, generator=g).to(dt).transpose(1, 2)
    kc = torch.randn(2, 1, cfg.num_key_value_heads, tokens + 64, fused.head_dim, device=dev, generator=g).to(dt)
    k, v = kc[0, :, :, :tokens], kc[1, :, :, :tokens]

    def attn() -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=fused.scaling)

    out: dict[str, Any] = {"tokens": tokens, "default_us": timer(attn)}
    for name in backends:
        try:
            with sdpa_kernel(getattr(SDPBackend, name)):
                out[f"{name.lower()}_us"] = timer(attn)
        except Exception as exc:  # not built, or not for these inputs: keep the others
            out[f"{name.lower()}_error"] = repr(exc)[:160]
    return out
