"""Replay recorded episodes and report any that do not reproduce.

``python -m experiments.validate_records FILE --cache PATH [--json OUT] [--show N]`` replays every
episode of a records file (``python -m experiments.evaluate ... --records`` writes
``records.npz``; :mod:`experiments.records`) through the env it was recorded in, on the cache
given, and compares the reset observation's hash, the outcome (configuration, score, latency,
violation, output tokens) and the reward bit for bit. A cache whose sha256 differs from the
recorded one, a request missing from the cache or an episode that differs is reported, not
raised. Exit code 0 when every episode reproduces on the recorded cache, 1 otherwise (and for an
unreadable records file or cache), 2 for a bad argument.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from experiments.cli_errors import DEBUG_HELP, CliError, run_cli
from experiments.records import validate


def _main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.validate_records", description=__doc__.split("\n\n")[0])
    ap.add_argument("file", help="records file (records.npz)")
    ap.add_argument("--cache", required=True, help="outcome cache (HDF5) to replay on")
    ap.add_argument("--json", default=None, help="also write the full report as JSON here")
    ap.add_argument("--show", type=int, default=20, help="episodes listed on the terminal (default 20)")
    ap.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    a = ap.parse_args(argv)
    try:
        rep = validate(a.file, a.cache)
    except ValueError as e:  # an unusable records file: exit 1 like an unusable cache
        raise CliError(str(e), code=1) from e
    for p in rep.problems:
        print(f"[validate_records] PROBLEM: {p}")
    for m in rep.mismatches[: a.show]:
        print(f"[validate_records] episode {m['episode']} ({m['policy']}, request {m['request_id']}, "
              f"budget {m['budget_ms']:.3f} ms) differs: {', '.join(m['fields'])}")
    if len(rep.mismatches) > a.show:
        print(f"[validate_records] ... and {len(rep.mismatches) - a.show} more episodes")
    pct = 100.0 * rep.n_reproduced / rep.n_episodes if rep.n_episodes else 100.0
    print(f"[validate_records] {rep.n_reproduced}/{rep.n_episodes} episodes reproduce ({pct:.2f} %)"
          f"{'' if rep.cache_sha256 == rep.recorded_cache_sha256 else ' on a DIFFERENT cache'}: "
          f"{'OK' if rep.ok else 'FAILED'}")
    if a.json:
        Path(a.json).write_text(json.dumps(rep.to_dict(), indent=2))
    return 0 if rep.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv, prog="python -m experiments.validate_records")


if __name__ == "__main__":
    raise SystemExit(main())
