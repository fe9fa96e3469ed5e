"""Where a captured decode step's time goes: the intervals of its kernels on the GPU, read from the
profiler while the CUDA graph replays.

The decode step runs 7-11 kernels a block inside one graph. Kernel times measured one by one
(``bench_fast_path``'s kernels section) include each launch, and an uncaptured step's kernels
include the host's gaps; neither says how the replayed step's span splits between kernels that run
and the GPU waiting between them. :func:`timeline_summary` answers that from (name, start, end)
intervals: the span from the first kernel's start to the last one's end, the union of the
intervals (the time some kernel of the step was on the GPU), the idle rest, and each kernel's
share. With programmatic dependent launch a kernel starts while the one before drains and waits on
the GPU, so intervals overlap and their sum exceeds the union; the union is what counts, and each
kernel's own part of it (:func:`own_us`: from the later of its start and the end of every kernel
before it, to its end) is what the step pays for that kernel: under PDL an interval includes the
wait for the kernel before, its own part does not.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable, Sequence

#: one kernel's (name, start µs, end µs)
Interval = tuple[str, float, float]


def union_us(intervals: Sequence[Interval]) -> float:
    """Length of the union of the intervals (µs): the time at least one of them was running."""
    total, end = 0.0, float("-inf")
    for _, start, stop in sorted(intervals, key=lambda iv: iv[1]):
        if start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def own_us(intervals: Sequence[Interval]) -> list[float]:
    """Each interval's own part of the union (µs), in the given order: what it adds past the end of every interval
    that started before it. They sum to :func:`union_us`; for a chain of kernels whose intervals overlap only
    because each starts early and waits (PDL), a kernel's own part runs from the one before's end to its own."""
    order = sorted(range(len(intervals)), key=lambda i: intervals[i][1])
    own = [0.0] * len(intervals)
    frontier = float("-inf")
    for i in order:
        _, start, stop = intervals[i]
        own[i] = max(0.0, stop - max(start, frontier))
        frontier = max(frontier, stop)
    return own


def span_us(intervals: Sequence[Interval]) -> float:
    """From the first interval's start to the last one's end (µs)."""
    return max(iv[2] for iv in intervals) - min(iv[1] for iv in intervals)


def timeline_summary(intervals: Sequence[Interval], blocks: int | None = None, top: int = 16) -> dict[str, Any]:
    """Span, busy (union) and idle time of a step's kernel intervals, and time by kernel name.

    Args:
        intervals: the step's kernels as (name, start µs, end µs), any order.
        blocks: active blocks of the step: adds each figure per block.
        top: kernel names listed, by total time.

    Returns:
        ``kernels`` (count), ``span_us``, ``busy_us``, ``idle_us``, ``sum_kernel_us`` (the intervals'
        plain sum: above ``busy_us`` where kernels overlap), ``by_kernel`` (name, count, total and
        median µs of the intervals, and of their own parts, :func:`own_us`; by own time, largest first),
        with ``blocks`` also ``*_per_block_us``.
    """
    if not intervals:
        raise ValueError("timeline_summary: no kernel intervals (did the profiler record the graph's kernels?)")
    bad = [iv for iv in intervals if iv[2] < iv[1]]
    if bad:
        raise ValueError(f"timeline_summary: {len(bad)} intervals end before they start, e.g. {bad[0]}")
    span = span_us(intervals)
    busy = union_us(intervals)
    by_name: dict[str, tuple[list[float], list[float]]] = {}
    for (name, start, stop), own in zip(intervals, own_us(intervals)):
        d, o = by_name.setdefault(name, ([], []))
        d.append(stop - start)
        o.append(own)
    rows = sorted(({"kernel": name[:80], "n": len(d), "us": sum(d), "median_us": statistics.median(d),
                    "own_us": sum(o), "own_median_us": statistics.median(o)}
                   for name, (d, o) in by_name.items()), key=lambda r: (-r["own_us"], -r["us"]))
    out: dict[str, Any] = {"kernels": len(intervals), "span_us": span, "busy_us": busy, "idle_us": span - busy,
                           "sum_kernel_us": sum(iv[2] - iv[1] for iv in intervals), "by_kernel": rows[:top]}
    if blocks:
        for key in ("span_us", "busy_us", "idle_us"):
            out[key.replace("_us", "_per_block_us")] = out[key] / blocks
    return out


def profiled_intervals(fn: Callable[[], Any]) -> list[Interval]:
    """The CUDA kernels one call of ``fn`` runs, as (name, start µs, end µs) from torch's profiler
    (kernels inside a replayed CUDA graph included). Call ``fn`` once before, to leave compiles out."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    out = []
    for ev in prof.events():
        if ev.device_type.name == "CUDA" and "memcpy" not in ev.name.lower() and "memset" not in ev.name.lower():
            out.append((ev.name, float(ev.time_range.start), float(ev.time_range.end)))
    return out


def step_intervals(lm: Any, dec: Any, plan: tuple[int, ...], emb: Any, mask: Any, repeats: int = 5) -> list[Interval]:
    """The kernels of one decode step replayed from ``dec`` (a :class:`GraphDecoder`) under ``plan``
    after a prefill of ``emb`` / ``mask``: of ``repeats`` profiled steps, the one with the median span."""
    import torch

    with torch.no_grad():
        cache = dec.prepare(emb.shape[0], plan, positions=emb.shape[1] + repeats + 4)
        st = lm.begin(emb, mask, cache=cache)
        lm.advance(st, lm.n_layers, plan)
        tok = lm.logits(st).argmax(-1)
        cache.start_decode(mask)
        dec.step(cache, tok)  # capture and first replay outside the profile
        runs = [profiled_intervals(lambda: dec.step(cache, tok)) for _ in range(repeats)]
    runs.sort(key=lambda ivs: span_us(ivs) if ivs else 0.0)
    return runs[len(runs) // 2]
