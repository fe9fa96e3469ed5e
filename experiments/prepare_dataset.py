"""Convert a public dataset release into the project's request JSONL.

Usage::

    python -m experiments.prepare_dataset NAME --src DIR --out JSONL [--split val] [--limit N]
        [--keep-abc-label]

``NAME`` is one of ``model_runtime.datasets.CONVERTERS`` (textvqa, vqav2, okvqa, docvqa,
chartqa, scienceqa, ai2d). Prints how many source rows were examined, written and skipped (with
each reason). Image paths in the JSONL are relative to its folder when the images lie inside
it, absolute otherwise. Exit status 0 on success, 2 on bad arguments / missing release files /
malformed release files, 1 when no request could be written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model_runtime.datasets import CONVERTERS, convert, write_requests


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m experiments.prepare_dataset",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("name", help=f"dataset: {', '.join(CONVERTERS)}")
    ap.add_argument("--src", required=True, type=Path, help="folder of the public release")
    ap.add_argument("--out", required=True, type=Path, help="request JSONL to write")
    ap.add_argument("--split", default=None, help="split to convert (default: val; ai2d: test)")
    ap.add_argument("--limit", type=int, default=None, help="stop after N requests")
    ap.add_argument("--keep-abc-label", action="store_true",
                    help="ai2d only: keep abcLabel questions on the raw image")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = {"keep_abc_label": True} if args.keep_abc_label else {}
    if args.keep_abc_label and args.name.strip().lower() != "ai2d":
        print("error: --keep-abc-label applies to ai2d only", file=sys.stderr)
        return 2
    try:
        result = convert(args.name, args.src, args.split, limit=args.limit, **options)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.summary())
    if not result.requests:
        print("error: no request written", file=sys.stderr)
        return 1
    n = write_requests(args.out, result.requests)
    print(f"wrote {n} requests to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
