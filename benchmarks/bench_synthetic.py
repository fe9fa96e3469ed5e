"""Speed and calibration figures of the SYNTHETIC outcome-cache generator (prints; asserts nothing).

Run: ``.venv/bin/python -m benchmarks.bench_synthetic [--samples 5000] [--large 50000] [--repeats 3]``.

Prints: the calibration solve time (cold), the generation time of ``--samples`` requests × 225
configurations with 64-wide features (best of ``--repeats``) and of ``--large`` requests (once),
the time to write the default cache (5000 requests, seed 0) through the journaled writer, the
default cache's calibration report (marginals, full/cheapest and knob costs vs targets), and a
few realised properties of the generative model (partial-credit share, medium-tier penalty
share, linear-probe R² of difficulty from the latency tokens per insertion position).
Everything it reports is SYNTHETIC.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from cache.synthetic import SyntheticParams, build_default_cache, calibrate, generate
from cache.synthetic_calibration import calibration_report


def _best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _probe_r2(X: np.ndarray, y: np.ndarray, n_train: int) -> float:
    X = np.c_[X.astype(np.float64), np.ones(len(X))]
    w = np.linalg.solve(X[:n_train].T @ X[:n_train], X[:n_train].T @ y[:n_train])
    r = y[n_train:] - X[n_train:] @ w
    return float(1 - r.var() / y[n_train:].var())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--large", type=int, default=50_000, help="0 to skip")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    params = SyntheticParams(n_samples=args.samples)
    calibrate.cache_clear()
    t0 = time.perf_counter()
    calibrate(params)
    print(f"calibration solve (5 datasets, {params.calibration_samples} MC draws each, cold): "
          f"{1e3 * (time.perf_counter() - t0):.0f} ms")
    generate(SyntheticParams(n_samples=8), 0)  # warm: estimator load, imports
    secs, data = _best_of(lambda: generate(params, 0), args.repeats)
    print(f"generate {args.samples} requests x 225 configs, Dl=Dt=64 (calibration cached): {secs:.2f} s "
          f"(best of {args.repeats})")
    if args.large:
        big = SyntheticParams(n_samples=args.large)
        t0 = time.perf_counter()
        generate(big, 0)
        print(f"generate {args.large} requests (incl. calibration): {time.perf_counter() - t0:.2f} s")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "default.h5"
        t0 = time.perf_counter()
        build_default_cache(path)
        mb = path.stat().st_size / 2**20
        print(f"build_default_cache (5000 requests, seed 0, journaled writer): {time.perf_counter() - t0:.2f} s, "
              f"{mb:.1f} MiB")
        from cache.reader import OutcomeCache

        with OutcomeCache(path) as oc:
            lo, hi = oc.budget_range_ms
            print(f"default cache budget range (estimator medians cheapest→full, 3 output tokens): {lo:.1f}-{hi:.1f} ms")
            print()
            print(calibration_report(oc))

    d = data
    print("\nRealised properties (SYNTHETIC, default model, seed 0):")
    vqa = np.isin(d.dataset, [d.datasets.index(n) for n, m in d.metrics.items() if m == "vqa_score"])
    s = d.score[vqa]
    print("  vqa_score level shares over all (request, config): "
          + ", ".join(f"{lv:.1f}: {np.mean(np.isclose(s, lv)):.3f}" for lv in (0.0, 0.3, 0.6, 0.9, 1.0)))
    cal = d.generator_params["calibration"]["datasets"]
    print("  medium-tier mean penalty / low-tier (emergent from tiling): "
          + ", ".join(f"{k.removeprefix('synthetic-')} {v['medium_share'][1]:.2f}" for k, v in cal.items()))
    same = np.mean(d.vision_tokens[:, 1] == d.vision_tokens[:, 2])
    print(f"  requests whose medium and high tilings coincide: {same:.1%}")
    n_train = int(0.7 * len(d.score))
    for t, tier in enumerate(d.knob_space.tiers):
        r2 = [_probe_r2(d.latency_token[:, t, j], d.latents["difficulty"], n_train) for j in range(d.latency_token.shape[2])]
        r2r = [_probe_r2(d.latency_token[:, t, j], d.latents["robustness"], n_train) for j in range(d.latency_token.shape[2])]
        print(f"  held-out linear-probe R² from latency tokens, tier {tier:6s} p=1..5: difficulty "
              + " ".join(f"{v:.2f}" for v in r2) + " | robustness " + " ".join(f"{v:.2f}" for v in r2r))
    print(f"  held-out linear-probe R² of difficulty from the language feature: "
          f"{_probe_r2(d.lang_feature, d.latents['difficulty'], n_train):.2f}")
    print("  vision tokens per tier (min-median-max): "
          + ", ".join(f"{tier} {np.min(d.vision_tokens[:, t])}-{int(np.median(d.vision_tokens[:, t]))}-{np.max(d.vision_tokens[:, t])}"
                      for t, tier in enumerate(d.knob_space.tiers)))


if __name__ == "__main__":
    main()
