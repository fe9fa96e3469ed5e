"""``python -m model_runtime.latency_estimator {fit,report,convert-reference}``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model_runtime.latency_estimator",
                                 description="Fit, inspect and convert latency profiles.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit", help="fit an estimator on a profile CSV, write JSON, print the fidelity report")
    f.add_argument("--profile", required=True, type=Path)
    f.add_argument("--out", required=True, type=Path)
    f.add_argument("--holdout-frac", type=float, default=0.25)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--ridge", type=float, default=1e-4)
    f.add_argument("--attention-quadratic", action="store_true")
    f.add_argument("--max-top-k", type=int, default=8)
    f.add_argument("--source", default=None, help="provenance text (default: the profile path)")
    r = sub.add_parser("report", help="print an estimator's coefficients and fit report")
    r.add_argument("json", help="a packaged estimator's name (h100-fast, h100-eager, ...) or an estimator JSON file")
    c = sub.add_parser("convert-reference", help="reference CSV → profile CSV for one impl")
    c.add_argument("--reference", required=True, type=Path)
    c.add_argument("--out", required=True, type=Path)
    c.add_argument("--impl", default="eager")
    args = ap.parse_args(argv)
    from model_runtime.latency_estimator.estimator import LatencyEstimator
    from model_runtime.latency_estimator.profiles import from_reference_csv, load_profile, write_profile

    try:
        if args.cmd == "fit":
            rows = load_profile(args.profile, max_top_k=args.max_top_k)
            source = args.source
            if source is None:
                prov = rows.attrs.get("provenance", "")
                source = f"{args.profile.name}" + (f": {prov}" if prov else "")
            est = LatencyEstimator.fit(rows, holdout_frac=args.holdout_frac, seed=args.seed, ridge=args.ridge,
                                       attention_quadratic=args.attention_quadratic, max_top_k=args.max_top_k,
                                       source=source)
            est.save(args.out)
            print(est.report())
            print(f"wrote {args.out}")
        elif args.cmd == "report":
            print(LatencyEstimator.resolve(args.json).report())
        else:
            df = from_reference_csv(args.reference, impl=args.impl)
            write_profile(df, args.out)
            print(f"wrote {len(df)} rows to {args.out}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0



if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
