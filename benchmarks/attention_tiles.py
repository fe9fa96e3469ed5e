"""The decode attention's tiles by batch rows: a sweep on the GPU, and the table it earns.

The split-K decode attention (:func:`model_runtime.molmoe.kernels.decode_attention`) runs one program per
(row, head, split). One row has 16 (row, head) pairs at the MolmoE-1B shape and needs many short splits
to fill the GPU; a batch of 8 has 128, so fewer, longer splits that loop over the cache (and pipeline
their loads) may stream it faster. ``bench_fast_path --sections ceilings,attention`` times every tile of
:func:`tile_grid` at several batch sizes; ``--attn-tune`` puts the winners in
:data:`~model_runtime.molmoe.kernels.ATTN_TILES` for the run's later sections.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from model_runtime.molmoe import kernels as dk
from model_runtime.molmoe.static_decode import cuda_graph_capture

#: a tile must beat the row's default by this factor to earn a table entry (a sweep's timings of one
#: tile spread by about this much)
MARGIN = 0.97


def tile_grid() -> list[dk.AttnTile]:
    """Chunks 32-512 positions a split, steps of 32-128 positions, 2-8 warps; pipeline stages 1 and 3 where
    a split loops (one step: the stages do not matter)."""
    tiles = []
    for chunk in (32, 64, 128, 256, 512):
        for block_n in (32, 64, 128):
            if block_n > chunk or (block_n == 128 and chunk == 128):
                continue
            warps = (2, 4, 8) if chunk <= 64 else (8,) if block_n == 128 else (4, 8)
            stages = (3,) if block_n == chunk else (1, 3)
            tiles += [dk.AttnTile(chunk, block_n, w, s) for w in warps for s in stages]
    return tiles


def tile_name(t: dk.AttnTile) -> str:
    return f"c{t.chunk}_n{t.block_n}_w{t.num_warps}_s{t.num_stages}"


#: bytes of caches a timing cycles through, so that each call reads its cache from memory and not from the L2 (as
#: in a decode step, where the experts' weights stream between two blocks' attention)
CYCLE_BYTES = 256 * 2**20


def cycle_copies(nbytes: int) -> int:
    """How many copies of an operand of ``nbytes`` a timing cycles through to read at least :data:`CYCLE_BYTES`
    (1 to 64)."""
    return max(1, min(64, -(-CYCLE_BYTES // nbytes)))


def event_times_ms(fn: Callable[[], Any], repeats: int) -> list[float]:
    """GPU ms of each of ``repeats`` calls of ``fn`` (one replay of a captured graph, say), timed by CUDA events with
    the device idle before each."""
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


@torch.no_grad()
def sweep(n_heads: int, n_kv: int, head_dim: int, context: int, rows: tuple[int, ...], dev: torch.device,
          time_us: Callable[[Callable[[], Any]], float], dtype: torch.dtype = torch.bfloat16) -> dict[str, Any]:
    """µs of one decode attention (split + merge) over ``context`` positions for each tile of :func:`tile_grid` and
    each batch size of ``rows``, with the cache bytes' rate; per batch size the default tile's time
    (:func:`~model_runtime.molmoe.kernels.attn_tile`) and the fastest tile.

    ``time_us(fn)`` times ``fn``, which runs the attention once over each of ``copies`` caches (together at least
    :data:`CYCLE_BYTES`); a call's time is that over ``copies``. On a GPU, :func:`cuda_graph_us`: the calls are
    replayed from a CUDA graph, since launched one by one from Python they measure the host, not the kernels."""
    length = context + 64
    out: dict[str, Any] = {"context": context, "tiles": [tile_name(t) for t in tile_grid()]}
    for b in rows:
        g = torch.Generator(device="cpu").manual_seed(b)
        copies = cycle_copies(b * n_kv * length * head_dim * torch.finfo(dtype).bits // 8 * 2)
        kv = [(torch.randn(b, n_kv, length, head_dim, generator=g).to(dev, dtype),
               torch.randn(b, n_kv, length, head_dim, generator=g).to(dev, dtype)) for _ in range(copies)]
        q = torch.randn(b, n_heads, head_dim, generator=g).to(dev, dtype)
        valid = torch.ones(b, length, dtype=torch.long, device=dev)
        slot = torch.tensor([context], device=dev)
        scale = head_dim ** -0.5
        nbytes = 2 * kv[0][0][:, :, : context + 1].numel() * kv[0][0].element_size()
        row: dict[str, Any] = {}
        for t in [dk.attn_tile(b), *tile_grid()]:
            name = tile_name(t)
            if name in row:
                continue

            def calls(t: dk.AttnTile = t) -> None:
                for kc, vc in kv:
                    dk.decode_attention(q, kc, vc, valid, slot, scale, "triton", tile=t)

            try:
                us = time_us(calls) / copies
            except Exception as exc:  # e.g. out of shared memory or registers: the tile cannot run here
                row[name] = {"error": repr(exc)[:160]}
                continue
            row[name] = {"us": us, "GBps": nbytes / us / 1e3}
        default = tile_name(dk.attn_tile(b))
        timed = {k: v["us"] for k, v in row.items() if "us" in v}
        best = min(timed, key=timed.get)
        out[f"rows{b}"] = {"default": default, "default_us": timed.get(default), "best": best,
                           "best_us": timed[best], "cache_MB": nbytes / 1e6, "copies": copies, "tiles": row}
    return out


def cuda_graph_us(fn: Callable[[], Any], replays: int = 10) -> float:
    """µs of one ``fn()`` replayed from a CUDA graph (captured by the decoder's own
    :func:`~model_runtime.molmoe.static_decode.cuda_graph_capture`, whose eager warm-up runs also compile and tune
    what ``fn`` launches): the median of ``replays`` replays, each timed by CUDA events."""
    replay, _ = cuda_graph_capture(fn)
    replay()
    times = event_times_ms(replay, replays)
    return sorted(times)[len(times) // 2] * 1e3


def parse_tile(name: str) -> dk.AttnTile:
    """The tile :func:`tile_name` named (``c64_n64_w4_s3``); ValueError naming a malformed name."""
    parts = name.split("_")
    if len(parts) != 4 or any(p[:1] != c or not p[1:].isdigit() for p, c in zip(parts, "cnws")):
        raise ValueError(f"not an attention tile name (c<chunk>_n<block_n>_w<warps>_s<stages>): {name!r}")
    return dk.AttnTile(*(int(p[1:]) for p in parts))  # (AttnTile names a bad value)


def earned_tiles(result: dict[str, Any], margin: float = MARGIN) -> dict[int, dk.AttnTile]:
    """From :func:`sweep`'s result: the batch sizes whose fastest tile beats their default by ``margin`` or more,
    with that tile (what ``ATTN_TILES`` should hold for them)."""
    earned = {}
    for key, row in result.items():
        if not key.startswith("rows") or not isinstance(row, dict) or row.get("default_us") is None:
            continue
        if row["best_us"] <= margin * row["default_us"]:
            earned[int(key[4:])] = parse_tile(row["best"])
    return earned


def tiles_from_json(text: str, option: str = "--attn-tiles") -> dict[int, dk.AttnTile]:
    """``{"8": "c256_n64_w8_s3", ...}`` (the form ``--attn-tiles`` takes) as a table; ValueError naming the problem
    and the ``option`` it came from."""
    import json

    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{option} is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{option} must map batch rows to tile names, got {type(raw).__name__}")
    table = {}
    for rows, name in raw.items():
        if not str(rows).isdigit() or int(rows) < 1:
            raise ValueError(f"{option}: batch rows must be a positive integer, got {rows!r}")
        table[int(rows)] = parse_tile(str(name))
    return table
