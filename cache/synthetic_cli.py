"""``python -m cache.synthetic --out PATH --samples N --seed S [--calibrate-to CACHE]``: write a
SYNTHETIC cache and print its calibration table, and with ``--calibrate-to`` its marginals next to
those of the cache it was fitted to (:mod:`cache.synthetic_fit`). The entry point
:mod:`cache.synthetic` runs."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Sequence

from cache.schema import CacheError
from cache.synthetic_calibration import calibration_report
from cache.synthetic_params import SyntheticParams, select_datasets
from cache.synthetic_writer import write_synthetic_cache


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m cache.synthetic",
        description="Write a SYNTHETIC outcome cache (documented generative model, see cache/synthetic.py) "
                    "and print its calibration table.",
    )
    ap.add_argument("--out", required=True, help="HDF5 file to write")
    ap.add_argument("--samples", type=int, default=None,
                    help="number of requests (default 5000; with --calibrate-to, the source cache's)")
    ap.add_argument("--calibrate-to", default=None, metavar="CACHE",
                    help="fit the datasets, their marginals and the knob costs to this outcome cache (e.g. a "
                         "live-built one; cache/synthetic_fit.py says what is fitted) instead of the default datasets")
    ap.add_argument("--no-fit-noise", dest="fit_noise", action="store_false",
                    help="with --calibrate-to: keep the generator's default jitter and answer-length variation "
                         "instead of fitting them to the source's oracle gap and neighbour agreement "
                         "(cache.synthetic_fit.fit_noise) and its length variation (fit_length_variation)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lang-dim", type=int, default=64)
    ap.add_argument("--token-dim", type=int, default=64)
    ap.add_argument("--lang-r2-output-length", type=float, default=0.0,
                    help="opt-in: linear-probe R² of the request's answer length (within its dataset) in the "
                         "language feature; 0 (default) = no such signal, as calibrated; with --calibrate-to "
                         "and 0 it is fitted to the source (cache.synthetic_fit.fit_length_signal)")
    ap.add_argument("--splits", type=float, nargs=3, default=(0.7, 0.1, 0.2), metavar=("TRAIN", "VAL", "TEST"))
    ap.add_argument("--datasets", nargs="+", default=None,
                    help="subset of textvqa vqav2 okvqa scienceqa docvqa, optionally name:weight")
    ap.add_argument("--chunk", type=int, default=1024, help="requests per journaled chunk")
    ap.add_argument("--estimator", default=None,
                    help="latency estimator: a packaged name (h100-fast, ...) or a JSON file (default: h100-fast)")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted build")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from cache.reader import OutcomeCache
    from model_runtime.latency_estimator import LatencyEstimator

    try:
        kw: dict[str, Any] = dict(lang_dim=args.lang_dim, token_dim=args.token_dim,
                                  splits=tuple(args.splits), lang_r2_output_length=args.lang_r2_output_length)
        if args.samples is not None:
            kw["n_samples"] = args.samples
        if args.calibrate_to:
            if args.datasets:
                raise ValueError("--datasets and --calibrate-to exclude each other (the source cache names the datasets)")
            from cache.synthetic_fit import fit_length_signal, fit_length_variation, fit_noise, fit_params

            params = fit_params(args.calibrate_to, **kw)
            if args.fit_noise:
                params, noise = fit_noise(args.calibrate_to, params, seed=args.seed,
                                          log=None if args.quiet else (lambda s: print(s, file=sys.stderr)))
                print(f"noise fitted: jitter_sd {params.jitter_sd}, jitter_iid_share {params.jitter_iid_share} "
                      f"(oracle score gap {noise['picked']['gap']} vs the source's {noise['source_gap']}, neighbour "
                      f"agreement {noise['picked']['agreement']} vs {noise['source_agreement']})")
                params, length = fit_length_variation(args.calibrate_to, params, seed=args.seed)
                print(f"length variation fitted: wrong_extra_tokens_prob {length['wrong_extra_tokens_prob']} (mean |output "
                      f"tokens - the full configuration's| {length['fitted']} vs the source's {length['source']})")
            if args.lang_r2_output_length == 0.0:  # a value given on the command line is kept
                params, link = fit_length_signal(args.calibrate_to, params, seed=args.seed)
                print(f"question -> answer-length link fitted: lang_r2_output_length {link['lang_r2_output_length']} "
                      f"(held-out probe R² {link['probe_r2']} vs the source's {link['source_probe_r2']})")
        else:
            if args.datasets:
                kw["datasets"] = select_datasets(args.datasets)
            params = SyntheticParams(**kw)
        est = LatencyEstimator.resolve(args.estimator) if args.estimator else None
        t0 = time.perf_counter()
        path = write_synthetic_cache(args.out, params, args.seed, est, overwrite=args.overwrite, chunk=args.chunk,
                                     resume=args.resume, log=None if args.quiet else (lambda s: print(s, file=sys.stderr)))
        dt = time.perf_counter() - t0
    except (ValueError, FileExistsError, FileNotFoundError, CacheError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with OutcomeCache(path, tokens="lazy") as oc:
        lo, hi = oc.budget_range_ms or (float("nan"), float("nan"))
        print(f"wrote SYNTHETIC outcome cache {path} ({params.n_samples} requests, seed {args.seed}) in {dt:.1f} s; "
              f"budget range {lo:.1f}-{hi:.1f} ms")
        print(calibration_report(oc))
    if args.calibrate_to:
        import pandas as pd

        from cache.synthetic_fit import fidelity_table

        table, gaps = fidelity_table(args.calibrate_to, path)
        with pd.option_context("display.width", 250, "display.max_columns", None):
            print(f"\nfitted to {args.calibrate_to}: per dataset, source vs synthetic")
            print(table.to_string(index=False))
        print("  ".join(f"{k} {v}" for k, v in gaps.items()))
    return 0
