"""Render the procedural VQA task suite (``model_runtime.datasets.suite``) to disk.

Usage::

    python -m experiments.make_suite --out DIR --seed S [--per-task N] [--first-index K] [--splits val test]
        [--workers W] [--overwrite]

Writes ``DIR/images/<task>/<split>/<index>.png``, ``DIR/<split>.jsonl`` (request format) and
``DIR/manifest.json``. Exit status 0 on success, 2 on bad arguments or a non-empty ``DIR``
without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from model_runtime.datasets.suite import SPLITS, TASKS, make_suite


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m experiments.make_suite",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-task", type=int, default=1000, help="examples per task and split")
    ap.add_argument("--first-index", type=int, default=0, help="render indices K to K+N-1 of each task and split: "
                    "requests in no suite of --per-task K (same seed), e.g. fresh ones beside a cache built from it")
    ap.add_argument("--splits", nargs="+", default=["val", "test"], help=f"of {', '.join(SPLITS)}")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), help="default: the six evaluation tasks; a training-only task may be named "
                    "for its val split (e.g. --tasks synth_chart_find --splits val)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="rendering processes")
    ap.add_argument("--overwrite", action="store_true", help="replace a previous suite in --out")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        out = make_suite(args.out, seed=args.seed, per_task=args.per_task, splits=args.splits,
                         overwrite=args.overwrite, workers=args.workers, tasks=args.tasks,
                         first_index=args.first_index)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = args.per_task * len(args.tasks) * len(args.splits)
    print(f"wrote {n} examples ({', '.join(args.splits)}) to {out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
