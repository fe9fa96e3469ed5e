"""The decode GEMV's tiles timed from CUDA graphs, against the tiles Triton's autotuner picks for it.

The decode step's Q/K/V and output projections (:func:`model_runtime.molmoe.kernels.gemv`) are autotuned on first use
over ``model_runtime.molmoe.kernels.projections._gemv_tuned`` / ``_gemv_staged_tuned``'s configurations. The
autotuner times each configuration with ``triton.testing.do_bench``, launched from Python one call at a time; a
projection takes 6-13 µs on an H100, near what a launch costs the host, and the decode attention's first tile sweep,
timed that way, measured the host instead of the kernel (benchmarks/RESULTS.md, "The Triton GEMV's loop pipelined").
Here each configuration is replayed from a CUDA graph over enough copies of the weights
(``attention_tiles.CYCLE_BYTES``) that every call reads them from memory, as in a decode step, beside the autotuner's
own picks timed the same way. (On an H100 the autotuner's staged picks came within 2-6 % of the fastest tile:
RESULTS, "The decode attention at 2 warps".)

    python -m benchmarks.gemv_tiles --out gemv_tiles.json         # one GPU, random weights (SYNTHETIC values)
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable

import torch

from benchmarks.attention_tiles import cuda_graph_us, cycle_copies
from model_runtime.molmoe import kernels as dk
from model_runtime.molmoe.kernels import projections

#: configurations beyond the autotuner's lists: 2 warps (as the decode attention prefers), deeper pipelines, longer
#: reduction tiles; (BLOCK_N, BLOCK_K, num_warps, NS), NS 1 being the unstaged form. (The first H100 sweep also had
#: n16_k128_w2_s4, n16_k256_w2_s4 and n16_k512_w2_s3 here, the fastest three, since moved into the staged list.)
EXTRA_TILES: tuple[tuple[int, int, int, int], ...] = (
    (16, 256, 2, 3), (16, 256, 4, 6), (16, 512, 4, 4), (16, 1024, 4, 2), (16, 1024, 4, 3), (32, 512, 4, 3),
    (32, 128, 2, 4), (16, 256, 2, 1), (16, 512, 2, 1),
)


def tile_name(block_n: int, block_k: int, warps: int, stages: int) -> str:
    return f"n{block_n}_k{block_k}_w{warps}_s{stages}"


def _tile_of(c: Any) -> tuple[int, int, int, int]:
    """An autotune configuration as (BLOCK_N, BLOCK_K, num_warps, NS); the unstaged form's have no NS: 1."""
    return c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.kwargs.get("NS", 1)


def autotune_tiles() -> dict[str, tuple[int, int, int, int]]:
    """The autotuner's configurations of both forms, by name (unstaged: ``s1``)."""
    return {tile_name(*_tile_of(c)): _tile_of(c)
            for tuned in (projections._gemv_tuned, projections._gemv_staged_tuned) for c in tuned.configs}


def _picked(staged: bool) -> str:
    return tile_name(*_tile_of((projections._gemv_staged_tuned if staged else projections._gemv_tuned).best_config))


@torch.no_grad()
def sweep(shapes: tuple[tuple[int, int], ...], rows: tuple[int, ...], dev: torch.device,
          time_us: Callable[[Callable[[], Any]], float], dtype: torch.dtype = torch.bfloat16,
          autotuned: bool | None = None) -> dict[str, Any]:
    """µs of one GEMV ``x (rows, K) @ w.T`` for each (N, K) of ``shapes``, each tile of :func:`autotune_tiles` and
    :data:`EXTRA_TILES`, and (``autotuned``, default on CUDA) the autotuner's picks of both forms; per case the
    fastest tile and, for each form, how much slower its pick is.

    ``time_us(fn)`` times ``fn``, which runs the GEMV once over each of ``copies`` weights (together at least
    :data:`~benchmarks.attention_tiles.CYCLE_BYTES`); a call's time is that over ``copies``. On a GPU,
    :func:`~benchmarks.attention_tiles.cuda_graph_us`."""
    import triton

    autotuned = dev.type == "cuda" if autotuned is None else autotuned
    tiles = {**autotune_tiles(), **{tile_name(*t): t for t in EXTRA_TILES}}
    out: dict[str, Any] = {"tiles": sorted(tiles)}
    for n, k in shapes:
        g = torch.Generator(device="cpu").manual_seed(n + k)
        one = n * k * torch.finfo(dtype).bits // 8
        copies = cycle_copies(one)
        ws = [(torch.randn(n, k, generator=g) / k**0.5).to(dev, dtype) for _ in range(copies)]
        for m in rows:
            x = torch.randn(m, k, generator=g).to(dev, dtype)
            res = torch.empty(m, n, device=dev, dtype=dtype)
            case: dict[str, Any] = {"weights_MB": one / 1e6, "copies": copies, "tiles": {}}
            for name, (bn, bk, warps, ns) in tiles.items():

                def calls(bn: int = bn, bk: int = bk, warps: int = warps, ns: int = ns) -> None:
                    for w in ws:
                        projections._gemv_kernel[(triton.cdiv(n, bn),)](
                            x, w, res, m, n, k, BLOCK_M=projections.BLOCK_M, BLOCK_N=bn, BLOCK_K=bk, IEEE=False, NS=ns,
                            num_warps=warps)

                try:
                    us = time_us(calls) / copies
                except Exception as exc:  # e.g. out of shared memory: the tile cannot run here
                    case["tiles"][name] = {"error": repr(exc)[:160]}
                    continue
                case["tiles"][name] = {"us": us, "GBps": one / us / 1e3}
            timed = {key: v["us"] for key, v in case["tiles"].items() if "us" in v}
            case["best"] = min(timed, key=timed.get)
            case["best_us"] = timed[case["best"]]
            if autotuned:
                for form, staged in (("staged", True), ("unstaged", False)):
                    dk.gemv(x, ws[0], "triton", staged=staged)  # tuned here, eagerly, as a decode step's warm-up does
                    torch.cuda.synchronize(dev)
                    us = time_us(lambda staged=staged: [dk.gemv(x, w, "triton", staged=staged) for w in ws]) / copies
                    case[f"autotuned_{form}"] = {"tile": _picked(staged), "us": us, "x_best": us / case["best_us"]}
            out[f"rows{m}_n{n}_k{k}"] = case
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--rows", default="1,8", help="decode rows (batch sizes), comma-separated")
    ap.add_argument("--shapes", default="6144x2048,2048x2048",
                    help="(N x K) of the projections: the MolmoE-1B shape's Q/K/V and output")
    ap.add_argument("--out", default=None, help="JSON with every figure")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type != "cuda":
        raise SystemExit("gemv_tiles: the sweep times Triton kernels from CUDA graphs: it needs --device cuda")
    try:
        shapes = tuple(tuple(int(v) for v in s.split("x")) for s in args.shapes.split(","))
        rows = tuple(int(r) for r in args.rows.split(","))
        if any(len(s) != 2 for s in shapes) or not all(1 <= r <= projections.BLOCK_M for r in rows):
            raise ValueError
    except ValueError:
        raise SystemExit(f"gemv_tiles: --shapes takes NxK,... and --rows 1-{projections.BLOCK_M},...; "
                         f"got {args.shapes!r} and {args.rows!r}") from None
    res = {"device": torch.cuda.get_device_name(dev), "synthetic": "random weights"}
    print(f"gemv_tiles on {res['device']}: random weights (SYNTHETIC values, real shapes)", flush=True)
    res.update(sweep(shapes, rows, dev, cuda_graph_us))
    for key, case in res.items():
        if key.startswith("rows"):
            line = f"{key}: best {case['best']} {case['best_us']:.2f} us ({case['weights_MB'] / case['best_us'] * 1e3:.0f} GB/s)"
            for form in ("staged", "unstaged"):
                a = case[f"autotuned_{form}"]
                line += f"; autotuned {form} {a['tile']} {a['us']:.2f} us (x{a['x_best']:.3f})"
            print(line, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
