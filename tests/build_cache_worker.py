"""The subprocess the kill test SIGKILLs: ``experiments.build_cache`` that stops mid-build.

Usage: ``python tests/build_cache_worker.py --block-after N --marker PATH -- <build_cache args>``,
or :func:`blocking_build` as the target of a forked process (what the tests do: a fork inherits
the imported torch/transformers and starts in well under a second).

Runs :func:`experiments.build_cache.main` with the cache writer's ``write_samples`` /
``write_outcomes`` counted; right after the ``N``-th of them has been journaled and applied it
creates ``PATH`` and sleeps until it is killed. So the test kills a real build at a known,
mid-build point (samples of one chunk written, outcomes of others still pending) without
racing it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable from its root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cache.writer import CacheWriter


def blocking_build(build_args: list[str], block_after: int, marker: Path) -> int:
    """``experiments.build_cache.main(build_args)`` that blocks forever after ``block_after`` writes
    (after creating ``marker``). Patches the writer class: call it in a process of its own."""
    count = 0

    def counted(method):
        def wrapper(self, *a, **kw):
            nonlocal count
            out = method(self, *a, **kw)
            count += 1
            if count == block_after:
                Path(marker).write_text(str(count))
                while True:  # wait for SIGKILL
                    time.sleep(1.0)
            return out
        return wrapper

    CacheWriter.write_samples = counted(CacheWriter.write_samples)
    CacheWriter.write_outcomes = counted(CacheWriter.write_outcomes)
    from experiments.build_cache import main as build_main

    return build_main(build_args)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--block-after", type=int, required=True)
    ap.add_argument("--marker", type=Path, required=True)
    ap.add_argument("build_args", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    build_args = args.build_args[1:] if args.build_args[:1] == ["--"] else args.build_args
    return blocking_build(build_args, args.block_after, args.marker)


if __name__ == "__main__":
    raise SystemExit(main())
