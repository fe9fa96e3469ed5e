"""Accuracy of a checkpoint over the knob grid on suite requests: ``python -m experiments.eval_model_grid``.

``python -m experiments.eval_model_grid --model CKPT --requests val.jsonl --out grid.json
[--per-task N] [--configs all|SPEC] [--device cuda] [--batch-size 512] [--max-new-tokens 32] [--per-request]``

Runs every selected configuration on the first ``--per-task`` requests of each task (the shared
prefix engine, ``model_runtime.molmoe.shared_prefix``) and writes, per configuration, the mean
score and mean output tokens per task (``grid.json``), with the knob space (importance scores
from ``CKPT/importance.json`` when present). It is the quick look at a model's knob effects
before a full cache build; ``cache.info`` reports the same tables for a built cache.
``--per-request`` also writes each request's score and answer (``per_request``: the request ids,
and the scores and predictions in that order by configuration index), which
``benchmarks.reproduction_check --grid`` pairs with a cache's requests and
``benchmarks.report_answer_kinds --grid`` splits by kind of answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m experiments.eval_model_grid", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--requests", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-task", type=int, default=100)
    ap.add_argument("--configs", default="all")
    ap.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda when available)")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--dense-decode", action="store_true", help="decode configurations in groups (see shared_prefix)")
    ap.add_argument("--per-request", action="store_true",
                    help="also write each request's score and prediction at every selected configuration (per_request)")
    return ap.parse_args(argv)


def checkpoint_runtime(model: Path, device: str, max_new_tokens: int):
    """The runtime of checkpoint folder ``model`` on ``device`` (bf16 on CUDA, float32 elsewhere;
    transformers' blocks, ``fast=False``), its knob space scored by the checkpoint's
    ``importance.json`` when it has one (``MolmoeRuntime.from_checkpoint``)."""
    import torch

    from model_runtime.molmoe.runtime import MolmoeRuntime

    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return MolmoeRuntime.from_checkpoint(model, dtype=dtype, device=device, fast=False,
                                         max_new_tokens=max_new_tokens)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from cache.live_builder import cache_score, parse_config_selection
    from model_runtime.datasets import load_requests
    from model_runtime.molmoe.shared_prefix import run_all_configs

    from experiments.cli_errors import torch_device

    rt = checkpoint_runtime(args.model, str(torch_device(args.device)), args.max_new_tokens)
    ks = rt.knob_space
    per_task: dict[str, list] = defaultdict(list)
    for r in load_requests(args.requests):
        if len(per_task[r.dataset]) < args.per_task:
            per_task[r.dataset].append(r)
    reqs = [r for rs in per_task.values() for r in rs]
    configs = parse_config_selection(args.configs, ks)
    t0 = time.perf_counter()
    res = run_all_configs(rt, reqs, [int(c) for c in configs], batch_size=args.batch_size, return_sample_features=False,
                          dense_decode=args.dense_decode)
    elapsed = time.perf_counter() - t0
    tasks = list(per_task)
    task_rows = {t: [i for i, r in enumerate(reqs) if r.dataset == t] for t in tasks}
    grid, scores = [], {}
    for c in res.configs:
        cfg = ks.config(c)
        row = {"index": c, "tier": cfg.tier, "p": cfg.p, "top_k": cfg.top_k, "blocks": cfg.blocks}
        scores[c] = np.array([cache_score(r.metric, res.outcomes[i][c].score) for i, r in enumerate(reqs)])
        for t, rows in task_rows.items():
            row[f"score/{t}"] = float(np.mean(scores[c][rows]))
            row[f"tokens/{t}"] = float(np.mean([res.outcomes[i][c].output_tokens for i in rows]))
        row["score/mean"] = float(np.mean([row[f"score/{t}"] for t in tasks]))
        grid.append(row)
    out = {"model": str(args.model), "requests": str(args.requests), "n_per_task": {t: len(v) for t, v in per_task.items()},
           "importance": list(ks.importance_scores), "elapsed_s": elapsed, "grid": grid}
    if args.per_request:
        out["per_request"] = {"ids": [r.id for r in reqs], "scores": {str(c): v.tolist() for c, v in scores.items()},
                              "predictions": {str(c): [o[c].prediction for o in res.outcomes] for c in res.configs}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    for name, cfg in (("full", ks.full_config), ("cheapest", ks.cheapest_config)):
        g = next((g for g in grid if g["index"] == ks.index(cfg)), None)
        if g:
            print(f"{name:9s} " + " ".join(f"{t} {g[f'score/{t}']:.3f}" for t in tasks) + f" | mean {g['score/mean']:.3f}",
                  file=sys.stderr)
    print(f"{len(reqs)} requests x {len(res.configs)} configurations in {elapsed:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from experiments.cli_errors import run_cli

    raise SystemExit(run_cli(main, prog="python -m experiments.eval_model_grid"))
