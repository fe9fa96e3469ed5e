"""Run every CPU benchmark in turn (`make bench`); each prints its own figures.

The GPU benchmarks (the latency profiler at the MolmoE-1B shape, the small model's training and
cache build under benchmarks/gpu/) run on an H100 / H200, not here: see benchmarks/RESULTS.md for
their commands.
"""

from __future__ import annotations

import runpy
import sys
import time

SCRIPTS: tuple[str, ...] = (
    "benchmarks.bench_estimator",
    "benchmarks.bench_synthetic",
    "benchmarks.bench_cache_load",
    "benchmarks.bench_env",
    "benchmarks.bench_grpo",
    "benchmarks.bench_ppo_bandits",
)


def main() -> None:
    for name in SCRIPTS:
        print(f"\n===== {name} =====", flush=True)
        t0 = time.perf_counter()
        argv, sys.argv = sys.argv, [name]
        try:
            runpy.run_module(name, run_name="__main__")
        finally:
            sys.argv = argv
        print(f"===== {name}: {time.perf_counter() - t0:.1f} s =====", flush=True)


if __name__ == "__main__":
    main()
