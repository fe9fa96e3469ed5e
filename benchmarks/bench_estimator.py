"""Speed and fidelity figures of the latency estimator (prints; asserts nothing).

Run: ``.venv/bin/python -m benchmarks.bench_estimator [--requests 100000] [--repeats 3]``.

Prints: the default estimator's fidelity report, its predictions for the cheapest and full
configuration of a typical request, the default budget range over synthetic request sizes
(labelled synthetic), and the wall time of predicting a (requests × 225) grid.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from envs.knob_space import KnobSpace
from model_runtime.latency_estimator import LatencyEstimator, budget_range, predict_grid


def _best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    est = LatencyEstimator.default()
    print(f"default estimator loaded in {1e3 * (time.perf_counter() - t0):.1f} ms")
    print(est.report())

    ks = KnobSpace()
    print("\nTypical request: 600 vision tokens + 50 prompt tokens, 3 output tokens")
    for name, cfg in (("cheapest", ks.cheapest_config), ("full", ks.full_config)):
        r = est.predict(crops=ks.crops_for(cfg.tier), vision_tokens=600, prompt_tokens=50, p=cfg.p,
                        top_k=cfg.top_k, blocks=cfg.blocks, output_tokens=3)
        print(f"  {name:8s} {cfg}: " + ", ".join(f"{k} {float(v):.1f}" for k, v in r.items()))

    n = args.requests
    rng = np.random.default_rng(0)
    # SYNTHETIC request sizes: crops capped by tier, 144 vision tokens per crop, short prompts
    crops = np.minimum(np.array(ks.crops), rng.integers(2, 14, n)[:, None])
    vt = crops * 144
    pt = rng.integers(5, 120, n)
    lo, hi = budget_range(est, ks, crops, vt, pt, output_tokens=3)
    print(f"\nbudget range (SYNTHETIC request sizes, n={n}, output_tokens=3, medians): {lo:.0f}-{hi:.0f} ms")

    for dtype in (np.float64, np.float32):
        secs = _best_of(lambda: predict_grid(est, ks, crops=crops, vision_tokens=vt, prompt_tokens=pt,
                                             output_tokens=3, dtype=dtype), args.repeats)
        print(f"predict_grid ({n} x {len(ks)}, {np.dtype(dtype).name}): {1e3 * secs:.0f} ms "
              f"({1e9 * secs / (n * len(ks)):.1f} ns per request-configuration)")
    secs = _best_of(lambda: budget_range(est, ks, crops, vt, pt, output_tokens=3), args.repeats)
    print(f"budget_range ({n} requests): {1e3 * secs:.1f} ms")
    one = dict(crops=3, vision_tokens=432, prompt_tokens=40, p=1, top_k=4, blocks=12, output_tokens=3)
    secs = _best_of(lambda: [est.predict(**one) for _ in range(1000)], args.repeats)
    print(f"predict (scalar request): {1e6 * secs / 1000:.1f} us per call")


if __name__ == "__main__":
    main()
