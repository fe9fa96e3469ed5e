"""Outcome-cache I/O benchmark: write a 100k-request cache of RANDOM arrays through
:class:`cache.writer.CacheWriter`, then load it with :class:`cache.reader.OutcomeCache` in a
fresh subprocess per token mode and report load time and peak memory.

The cache is synthetic-shaped but its contents are uniformly random (labelled synthetic, model
``benchmark-random``): it measures I/O only. Prints figures; asserts nothing.

    python benchmarks/bench_cache_load.py [--samples 100000] [--lang-dim 64] [--token-dim 64]
                                          [--chunk 4096] [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def write_cache(path: Path, n: int, lang_dim: int, token_dim: int, chunk: int) -> dict:
    """Write the random cache; returns timings (seconds) and sizes."""
    from cache.writer import CacheWriter
    from envs.knob_space import KnobSpace

    ks = KnobSpace()
    C, T, P = len(ks), len(ks.tiers), len(ks.insertion_positions)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    w = CacheWriter.create(
        path, knob_space=ks, n_samples=n, lang_dim=lang_dim, token_dim=token_dim, model_id="benchmark-random",
        generator="synthetic", generator_params={"benchmark": "uniformly random arrays, I/O only"},
        datasets=["vqav2", "docvqa"], metrics={"vqav2": "vqa_score", "docvqa": "anls"}, synthetic=True, overwrite=True,
    )
    t_create = time.perf_counter() - t0
    gen = 0.0
    t0 = time.perf_counter()
    for a in range(0, n, chunk):
        g0 = time.perf_counter()
        rows = np.arange(a, min(n, a + chunk))
        m = rows.size
        crops = np.sort(rng.integers(1, 13, size=(m, T)), axis=1)
        fields = dict(
            id=[f"bench-{i:07d}" for i in rows],
            dataset=rows % 2,
            split=rng.choice(3, size=m, p=[0.8, 0.1, 0.1]),
            question=[f"random question {i}?" for i in rows],
            answers=[f'["answer {i}"]' for i in rows],
            prompt_tokens=rng.integers(8, 64, size=m),
            crops=crops,
            vision_tokens=crops * 144,
            lang_feature=rng.normal(size=(m, lang_dim)).astype(np.float32),
            latency_token=rng.normal(size=(m, T, P, token_dim)).astype(np.float16),
            uncertainty=rng.random((m, 2)).astype(np.float32),
        )
        gen += time.perf_counter() - g0
        w.write_samples(rows, **fields)
    t_samples = time.perf_counter() - t0 - gen
    gen2 = 0.0
    t0 = time.perf_counter()
    for a in range(0, n, chunk):
        g0 = time.perf_counter()
        rows = np.arange(a, min(n, a + chunk))
        score = rng.random((rows.size, C), dtype=np.float32)
        tokens = rng.integers(1, 64, size=(rows.size, C), dtype=np.int32)
        gen2 += time.perf_counter() - g0
        w.write_outcomes(rows, np.arange(C), score=score, output_tokens=tokens)
    t_outcomes = time.perf_counter() - t0 - gen2
    w.set_attrs(budget_range_ms=[170.0, 380.0])
    t0 = time.perf_counter()
    w.close()
    t_close = time.perf_counter() - t0
    return {
        "create_s": t_create, "samples_s": t_samples, "outcomes_s": t_outcomes, "close_s": t_close,
        "write_total_s": t_create + t_samples + t_outcomes + t_close,
        "chunks": 2 * -(-n // chunk) + 1, "file_mib": path.stat().st_size / 2**20,
    }


def load_once(path: str, tokens: str) -> dict:
    """Run in a fresh process: load time and memory of OutcomeCache(path, tokens=tokens)."""
    import tracemalloc

    import h5py  # noqa: F401  (imported before the baseline so it is not counted as data)

    from cache.reader import OutcomeCache

    base = _maxrss_mib()
    tracemalloc.start()
    t0 = time.perf_counter()
    c = OutcomeCache(path, tokens=tokens)
    t_load = time.perf_counter() - t0
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out = {
        "tokens": tokens, "load_s": t_load, "tokens_in_memory": c.tokens_in_memory,
        "maxrss_mib": _maxrss_mib(), "maxrss_over_imports_mib": _maxrss_mib() - base,
        "tracemalloc_peak_mib": traced_peak / 2**20,
    }
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, c.n_samples, size=256) for _ in range(20)]
    t0 = time.perf_counter()
    for b in batches:
        c.latency_tokens(b)
    out["latency_tokens_256_ms"] = 1000 * (time.perf_counter() - t0) / len(batches)
    t0 = time.perf_counter()
    for i in rng.integers(0, c.n_samples, size=200):
        c.prediction(int(i), int(i) % c.n_configs)
    out["prediction_read_ms"] = 1000 * (time.perf_counter() - t0) / 200
    c.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--lang-dim", type=int, default=64)
    ap.add_argument("--token-dim", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=4096, help="samples per write_* call (one journal chunk)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the cache file")
    ap.add_argument("--load", help=argparse.SUPPRESS)
    ap.add_argument("--tokens", default="memory", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.load:  # child process
        print(json.dumps(load_once(args.load, args.tokens)))
        return 0

    tmp = tempfile.TemporaryDirectory(dir=args.dir) if not args.keep else None
    directory = Path(tmp.name) if tmp else (args.dir or Path(tempfile.mkdtemp()))
    path = directory / f"bench_random_{args.samples}.h5"
    print(f"RANDOM-array benchmark cache (synthetic label), S={args.samples}, C=225, Dl={args.lang_dim}, "
          f"Dt={args.token_dim}, {args.chunk} samples per chunk -> {path}")
    wr = write_cache(path, args.samples, args.lang_dim, args.token_dim, args.chunk)
    print(f"write: total {wr['write_total_s']:.2f} s (create {wr['create_s']:.2f}, samples {wr['samples_s']:.2f}, "
          f"outcomes {wr['outcomes_s']:.2f}, close {wr['close_s']:.2f}; {wr['chunks']} journaled chunks, "
          f"random-data generation excluded); file {wr['file_mib']:.1f} MiB")
    for tokens in ("memory", "lazy"):
        res = subprocess.run(
            [sys.executable, __file__, "--load", str(path), "--tokens", tokens],
            capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"load tokens={tokens:6s}: {r['load_s']:.2f} s, peak RSS {r['maxrss_mib']:.0f} MiB "
              f"({r['maxrss_over_imports_mib']:.0f} MiB over the imports; numpy peak {r['tracemalloc_peak_mib']:.0f} MiB), "
              f"latency_tokens(256 random) {r['latency_tokens_256_ms']:.2f} ms, prediction(i, c) {r['prediction_read_ms']:.3f} ms")
    from cache.validate import check

    t0 = time.perf_counter()
    _, problems = check(path)
    print(f"validate: {time.perf_counter() - t0:.2f} s, {len(problems)} problems")
    if tmp:
        tmp.cleanup()
    else:
        print(f"kept {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
