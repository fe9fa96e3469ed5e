"""Writing the suite to disk (:func:`make_suite`) and the text corpus for a tokenizer.

``make_suite`` renders every (task, split, index) with a process pool and writes PNGs, one
request JSONL per split and a manifest. Results are gathered in submission order, so the files
are byte-identical whatever the worker count.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from multiprocessing import Pool
from pathlib import Path
from typing import Iterator, Sequence

from PIL import Image

from model_runtime.datasets.request_format import write_requests

from . import SPLITS, TASK_INFO, TASKS, TRAIN_ONLY_TASKS, example_to_request, render_example

#: Task held out of the controller's training tasks in generalization experiments.
HELDOUT_TASKS: tuple[str, ...] = ("synth_diagram",)


def _render_one(job: tuple[str, str, int, int, str]) -> dict:
    """Render, save the PNG, return the request as a JSON dict (absolute image path)."""
    task, split, index, seed, out_dir = job
    ex = render_example(task, split, index, seed)
    path = Path(out_dir) / "images" / task / split / f"{index}.png"
    Image.fromarray(ex.image).save(path, format="PNG")
    req = example_to_request(ex, request_id=f"{task}-{split}-{index}", image_path=str(path), split=split)
    return req.to_json_dict()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make_suite(out_dir: str | os.PathLike, seed: int = 0, per_task: int = 1000,
               splits: Sequence[str] = ("val", "test"), *, overwrite: bool = False,
               workers: int | None = None, tasks: Sequence[str] = TASKS, first_index: int = 0) -> Path:
    """Render ``per_task`` examples of every task for each split into ``out_dir``.

    The examples are indices ``first_index`` to ``first_index + per_task - 1`` of each (task, split)
    stream. A suite from ``first_index=K`` holds none of the requests of a suite of ``per_task=K``
    (same seed): fresh requests of the same distribution, e.g. to score two checkpoints beside a
    cache built from the first ``K`` (benchmarks/RESULTS.md, the fresh-request checks).

    Writes ``images/<task>/<split>/<index>.png``, ``<split>.jsonl`` (ids
    ``"<task>-<split>-<index>"``, images relative to ``out_dir``) and ``manifest.json`` (seed,
    per_task, first_index, task infos, counts, the seen/held-out task split, each JSONL's sha256).

    A training-only task (``TRAIN_ONLY_TASKS``) may be named for its train or val stream, to score a
    checkpoint on the skill it drills; it has no test split.

    Raises:
        ValueError: unknown split/task, a training-only task with the test split, ``per_task < 1``,
            ``first_index < 0``, or a non-empty ``out_dir`` without ``overwrite``.
    """
    from model_runtime.datasets.request_format import request_from_json

    out = Path(out_dir)
    for s in splits:
        if s not in SPLITS:
            raise ValueError(f"unknown split {s!r}; splits: {', '.join(SPLITS)}")
    for t in tasks:
        if t not in TASKS + TRAIN_ONLY_TASKS:
            raise ValueError(f"unknown task {t!r}; tasks: {', '.join(TASKS + TRAIN_ONLY_TASKS)}")
        if t in TRAIN_ONLY_TASKS and "test" in splits:
            raise ValueError(f"{t} is a training-only task: it has train and val streams, no test split")
    if per_task < 1:
        raise ValueError(f"per_task must be >= 1, got {per_task}")
    if first_index < 0:
        raise ValueError(f"first_index must be >= 0, got {first_index}")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"output folder {out} is not empty (pass overwrite=True / --overwrite)")
        shutil.rmtree(out / "images", ignore_errors=True)
        for p in [out / "manifest.json", *(out / f"{s}.jsonl" for s in SPLITS)]:
            p.unlink(missing_ok=True)
    for t in tasks:
        for s in splits:
            (out / "images" / t / s).mkdir(parents=True, exist_ok=True)
    indices = range(first_index, first_index + per_task)
    jobs = [(t, s, i, int(seed), str(out.resolve())) for s in splits for t in tasks for i in indices]
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        rows = [_render_one(j) for j in jobs]
    else:
        with Pool(processes=workers) as pool:
            rows = pool.map(_render_one, jobs, chunksize=max(1, len(jobs) // (workers * 8)))
    counts: dict[str, dict[str, int]] = {}
    hashes: dict[str, str] = {}
    for s in splits:
        reqs = [request_from_json(r) for r in rows if r["split"] == s]
        write_requests(out / f"{s}.jsonl", reqs)
        hashes[f"{s}.jsonl"] = _sha256(out / f"{s}.jsonl")
        counts[s] = {t: sum(1 for r in reqs if r.dataset == t) for t in tasks}
    manifest = {
        "seed": int(seed), "per_task": int(per_task), "first_index": int(first_index), "splits": list(splits),
        "tasks": {t: {"name": TASK_INFO[t].name, "metric": TASK_INFO[t].metric,
                      "stands_in_for": TASK_INFO[t].stands_in_for,
                      "description": TASK_INFO[t].description} for t in tasks},
        "counts": counts,
        "task_splits": {"seen": [t for t in tasks if t not in HELDOUT_TASKS],
                        "heldout": [t for t in tasks if t in HELDOUT_TASKS]},
        "sha256": hashes,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out


def question_corpus(seed: int = 0, n: int = 20000) -> Iterator[str]:
    """Text of ``n`` train examples (tasks interleaved): question, answer, options and dense caption per string.

    For training a BPE tokenizer on the suite's vocabulary. Each example is rendered in full
    (a few ms each), so 20000 strings take about a minute on one core.
    """
    for k in range(n):
        task = TASKS[k % len(TASKS)]
        ex = render_example(task, "train", k // len(TASKS), seed)
        parts = [ex.question, ex.answers[0] if ex.answers else ""]
        if ex.options:
            parts += ex.options
        if ex.caption:
            parts.append(ex.caption)
        yield "\n".join(p for p in parts if p)
