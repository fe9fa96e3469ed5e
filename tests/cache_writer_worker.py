"""A small deterministic cache build, chunk by chunk: the cache tests' reference data and the
subprocess the kill test SIGKILLs.

As a script: ``python tests/cache_writer_worker.py PATH [--sleep SECONDS]`` creates ``PATH``
(overwriting it) and runs :func:`plan` with a sleep after every chunk, printing ``chunk k``
after each, then closes the writer.

As a module: :func:`make_data` (the arrays a full build writes), :func:`plan` (the chunks),
:func:`create_writer` and :func:`build` (skips chunks that ``pending()`` /
``samples_pending()`` report finished, returns how many it ran).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the project importable from its root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cache.schema import STATUS_FAILED, STATUS_OK
from cache.writer import CacheWriter
from envs.knob_space import KnobSpace

S, DL, DT = 40, 8, 8
DATASETS = ["vqav2", "docvqa"]
METRICS = {"vqav2": "vqa_score", "docvqa": "anls"}
SAMPLE_CHUNK = 5


def make_data(seed: int = 0, knob_space: KnobSpace | None = None) -> dict[str, np.ndarray]:
    """Every field of a full build (S=40, Dl=8, Dt=8); latency tokens exact in float16."""
    ks = knob_space or KnobSpace()
    C, T, P = len(ks), len(ks.tiers), len(ks.insertion_positions)
    rng = np.random.default_rng(seed)
    crops = np.sort(rng.integers(1, 13, size=(S, T)), axis=1).astype(np.int32)
    status = np.full((S, C), STATUS_OK, dtype=np.uint8)
    status[rng.random((S, C)) < 0.02] = STATUS_FAILED
    score = rng.random((S, C)).astype(np.float32)
    score[status == STATUS_FAILED] = np.nan
    unc = rng.random((S, 2)).astype(np.float32)
    unc[::7] = np.nan
    return {
        "id": np.array([f"req-{i:04d}-é" for i in range(S)], dtype=object),
        "dataset": (np.arange(S) % len(DATASETS)).astype(np.int16),
        "split": np.array([0, 0, 1, 2] * (S // 4), dtype=np.int8),
        "question": np.array([f"What is shown in image {i}? ünïcode ✓" for i in range(S)], dtype=object),
        "answers": np.array([f'["ans{i}", "alt {i}"]' for i in range(S)], dtype=object),
        "prompt_tokens": rng.integers(5, 60, size=S).astype(np.int32),
        "crops": crops,
        "vision_tokens": (crops * 144).astype(np.int32),
        "lang_feature": rng.normal(size=(S, DL)).astype(np.float32),
        "latency_token": rng.normal(size=(S, T, P, DT)).astype(np.float16),
        "uncertainty": unc,
        "score": score,
        "output_tokens": rng.integers(1, 64, size=(S, C)).astype(np.int32),
        "measured_ms": rng.uniform(1, 300, size=(S, C, 3)).astype(np.float32),
        "prediction": np.array([[f"p{i}.{c}" for c in range(C)] for i in range(S)], dtype=object),
        "status": status,
        "error": np.where(status == STATUS_FAILED, "CUDA OOM", "").astype(object),
    }


def plan(n_configs: int = 225) -> list[tuple]:
    """The chunks of a build: 8 sample chunks, 8 outcome blocks (even / odd configurations,
    i.e. scattered columns, and one block with shuffled rows), then the attributes."""
    ops: list[tuple] = [("samples", np.arange(a, a + SAMPLE_CHUNK)) for a in range(0, S, SAMPLE_CHUNK)]
    for cols in (np.arange(0, n_configs, 2), np.arange(1, n_configs, 2)):
        for a in range(0, S, 10):
            rows = np.arange(a, a + 10)
            if a == 20:
                rows = rows[::-1].copy()  # unsorted rows: the writer must sort them with the data
            ops.append(("outcomes", rows, cols))
    ops.append(("attrs",))
    return ops


def create_writer(path: str | Path, *, overwrite: bool = True, knob_space: KnobSpace | None = None) -> CacheWriter:
    return CacheWriter.create(
        path, knob_space=knob_space or KnobSpace(), n_samples=S, lang_dim=DL, token_dim=DT,
        model_id="synthetic", generator="synthetic", generator_params={"seed": 0, "note": "test data"},
        datasets=DATASETS, metrics=METRICS, synthetic=True, overwrite=overwrite,
    )


def op_done(w: CacheWriter, op: tuple) -> bool:
    if op[0] == "samples":
        return not w.samples_pending()[op[1]].any()
    if op[0] == "outcomes":
        return not w.pending()[np.ix_(op[1], op[2])].any()
    return False  # attributes are cheap and idempotent


def run_op(w: CacheWriter, data: dict[str, np.ndarray], op: tuple) -> None:
    if op[0] == "samples":
        rows = op[1]
        fields = ("id", "dataset", "split", "question", "answers", "prompt_tokens", "crops",
                  "vision_tokens", "lang_feature", "latency_token", "uncertainty")
        w.write_samples(rows, **{k: data[k][rows] for k in fields})
    elif op[0] == "outcomes":
        rows, cols = op[1], op[2]
        block = {k: data[k][np.ix_(rows, cols)] for k in ("score", "output_tokens", "measured_ms", "prediction", "status", "error")}
        w.write_outcomes(rows, cols, **block)
    else:
        w.set_attrs(budget_range_ms=[120.5, 380.0], estimator={"kind": "test", "mape": 0.05})


def build(w: CacheWriter, data: dict[str, np.ndarray], ops: list[tuple] | None = None, sleep: float = 0.0) -> int:
    """Run the chunks of ``ops`` (default :func:`plan`) not yet finished; returns how many ran."""
    ran = 0
    for k, op in enumerate(plan(w.n_configs) if ops is None else ops):
        if op_done(w, op):
            continue
        run_op(w, data, op)
        ran += 1
        print(f"chunk {k}", flush=True)
        if sleep:
            time.sleep(sleep)
    return ran


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--sleep", type=float, default=0.0)
    args = ap.parse_args(argv)
    w = create_writer(args.path)
    build(w, make_data(), sleep=args.sleep)
    w.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
