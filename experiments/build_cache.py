"""Build a *live* outcome cache: every request × configuration through the MolmoE runtime.

Usage::

    python -m experiments.build_cache --model PATH --dataset requests.jsonl --out cache.h5 \\
        [--configs all|SUBSET] [--resume] [--engine shared-prefix|per-config] \\
        [--batch-size N] [--chunk-requests N] \\
        [--shard-rank R --num-shards W] [--device cpu|cuda] [--splits 0.7 0.1 0.2 --split-seed 0]
    torchrun --nproc-per-node 8 -m experiments.build_cache ... --device cuda   # one shard per GPU
    python -m experiments.merge_cache_shards --out cache.h5 cache.shard0of8.h5 ...

This module is the command line only: it parses the arguments, loads the requests and the
model, assembles ``generator_params`` and wires :class:`cache.live_builder.LiveCacheBuilder`
to a :class:`cache.writer.CacheWriter`. What a build computes (chunks and sharding, the sample
table, the outcomes, the engines, resume and crash safety, importance scores, the cache's
attributes) is documented in :mod:`cache.live_builder`. The machinery's names
(:class:`~cache.live_builder.BatchRunner`, :func:`~cache.live_builder.chunk_rows`,
:func:`~cache.live_builder.finalize`, ...) stay importable from here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from cache.live_builder import (  # re-exported (__all__): the machinery lives in cache/
    ENGINE_DEFAULTS,
    ENGINES,
    F16_MAX,
    GENERATOR,
    KNOB_KEYS,
    NOMINAL_OUTPUT_TOKENS,
    UNCHECKED_PARAMS,
    BatchRunner,
    BuildSettings,
    ChunkStats,
    LiveCacheBuilder,
    answers_json,
    assign_splits,
    budget_rows,
    cache_score,
    chunk_rows,
    finalize,
    is_oom,
    load_importance,
    params_mismatch,
    parse_config_selection,
    shard_path,
    stored_identity,
)
from cache.reader import file_sha256
from cache.schema import SPLITS
from model_runtime.knob_space import KnobSpace

#: The CLI's own names and the machinery it re-exports from :mod:`cache.live_builder`.
__all__ = [
    "ENGINE_DEFAULTS", "ENGINES", "F16_MAX", "GENERATOR", "KNOB_KEYS", "NOMINAL_OUTPUT_TOKENS", "UNCHECKED_PARAMS",
    "BatchRunner", "BuildSettings", "ChunkStats", "LiveCacheBuilder", "answers_json", "assign_splits", "budget_rows",
    "cache_score", "chunk_rows", "finalize", "is_oom", "load_importance", "main", "params_mismatch",
    "parse_args", "parse_config_selection", "shard_path", "stored_identity",
]


# ---------------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m experiments.build_cache",
                                 description="Build a live outcome cache with the MolmoE runtime.")
    ap.add_argument("--model", type=Path, required=True, help="public-layout MolmoE checkpoint directory")
    ap.add_argument("--dataset", type=Path, required=True, help="request JSONL (model_runtime.datasets format)")
    ap.add_argument("--out", type=Path, required=True, help="cache file (shards: <stem>.shard<R>of<W><suffix>)")
    ap.add_argument("--configs", default="all", help="all | tier=high,top_k=8 | 0,5,17 | 0-24")
    ap.add_argument("--resume", action="store_true", help="continue an existing (unfinished) build")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing file")
    ap.add_argument("--engine", choices=ENGINES, default="shared-prefix",
                    help="shared-prefix: every configuration of a chunk from shared vision/prefix passes "
                         "(transformers' blocks, large batches); per-config: MolmoeRuntime.run per configuration")
    ap.add_argument("--batch-size", type=int, default=None,
                    help=f"requests per batch (default {ENGINE_DEFAULTS['shared-prefix'][0]} shared-prefix, "
                         f"{ENGINE_DEFAULTS['per-config'][0]} per-config)")
    ap.add_argument("--chunk-requests", type=int, default=None,
                    help="requests per chunk, the unit of resumption (default "
                         f"{ENGINE_DEFAULTS['shared-prefix'][1]} shared-prefix, {ENGINE_DEFAULTS['per-config'][1]} per-config)")
    ap.add_argument("--dense-decode", action="store_true",
                    help="shared-prefix: decode with the experts computed densely (same function; fewer kernels "
                         "for small models)")
    ap.add_argument("--preprocess-threads", type=int, default=1, help="shared-prefix: image preprocessing threads")
    ap.add_argument("--decode-group-gib", type=float, default=24.0,
                    help="shared-prefix --dense-decode: KV-cache memory of one decode group (GiB)")
    ap.add_argument("--vision-tokens", choices=("auto", "model", "molmoe-1b"), default="auto",
                    help="samples/vision_tokens: the model's own image tokens, or MolmoE-1B's for the same image "
                         "(auto: MolmoE-1B's when the model's crop geometry is MolmoE-1B's scaled down, as for "
                         "MolmoeConfig.small(); the latency estimator is MolmoE-1B's)")
    ap.add_argument("--shard-rank", type=int, default=None, help="default: $RANK or 0")
    ap.add_argument("--num-shards", type=int, default=None, help="default: $WORLD_SIZE or 1")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (torchrun: cuda:$LOCAL_RANK)")
    ap.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None, help="default bf16 on cuda, fp32 on cpu")
    ap.add_argument("--experts-impl", default=None, help="transformers experts implementation (default: transformers')")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--max-sequence-tokens", type=int, default=None,
                    help="reject requests whose prompt + max_new_tokens exceeds this (default: the model's positions)")
    ap.add_argument("--splits", nargs="+", default=["0.7", "0.1", "0.2"],
                    help="train/val/test fractions, or 'requests' to use each request's split field")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--tier-crops", type=int, nargs="+", default=None, help="max crops per tier (default 3 6 12)")
    ap.add_argument("--importance", default="auto", help="auto | default | PATH to an ImportanceScores JSON")
    ap.add_argument("--calibration-requests", type=int, default=16)
    ap.add_argument("--estimator", default=None,
                    help="latency estimator: a packaged name (h100-fast, ...) or a JSON file (default: h100-fast)")
    ap.add_argument("--nominal-output-tokens", type=int, default=NOMINAL_OUTPUT_TOKENS)
    ap.add_argument("--model-id", default=None, help="default: the checkpoint directory's name")
    ap.add_argument("--template", default="molmo", help="prompt template (model_runtime.datasets.prompts)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N requests")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    batch, chunk = ENGINE_DEFAULTS[args.engine]
    args.batch_size = batch if args.batch_size is None else args.batch_size
    args.chunk_requests = chunk if args.chunk_requests is None else args.chunk_requests
    return args


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else default


def _load_importance(args: argparse.Namespace, runtime: Any, requests: Sequence[Any], log: Callable[[str], None]) -> dict:
    """Importance scores of ``--importance`` (:func:`cache.live_builder.load_importance`)."""
    return load_importance(args.importance, args.model, runtime, requests,
                           calibration_requests=args.calibration_requests, log=log)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    import torch

    rank = args.shard_rank if args.shard_rank is not None else _env_int("RANK", 0)
    world = args.num_shards if args.num_shards is not None else _env_int("WORLD_SIZE", 1)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard rank {rank} / num shards {world}: need 0 <= rank < num_shards")
    from experiments.cli_errors import torch_device

    device = torch_device(args.device)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", _env_int("LOCAL_RANK", 0))
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[
        args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _build(args, rank, world, device, dtype, log)
    finally:
        if args.threads:  # an in-process caller (tests) gets its thread count back
            torch.set_num_threads(threads_before)


def _build(args: argparse.Namespace, rank: int, world: int, device: Any, dtype: Any, log: Callable[[str], None]) -> int:
    import torch
    import transformers

    from cache.writer import CacheWriter
    from model_runtime.datasets import load_requests
    from model_runtime.latency_estimator import LatencyEstimator
    from model_runtime.molmoe.runtime import MolmoeRuntime

    out = shard_path(args.out, rank, world)
    requests = load_requests(args.dataset)
    if args.limit is not None:
        requests = requests[: args.limit]
    S = len(requests)
    datasets: list[str] = []
    metrics: dict[str, str] = {}
    for r in requests:
        if r.dataset not in metrics:
            datasets.append(r.dataset)
            metrics[r.dataset] = r.metric
        elif metrics[r.dataset] != r.metric:
            raise ValueError(f"dataset {r.dataset!r} mixes metrics {metrics[r.dataset]!r} and {r.metric!r}")
    dataset_index = np.array([datasets.index(r.dataset) for r in requests], dtype=np.int64)
    if args.splits == ["requests"]:
        bad = sorted({str(r.split) for r in requests if r.split not in SPLITS})
        if bad:
            raise ValueError(f"--splits requests: requests have split values {bad}, expected {list(SPLITS)}")
        split = np.array([SPLITS.index(r.split) for r in requests], dtype=np.int8)
        split_desc: Any = "requests"
    else:
        fractions = [float(x) for x in args.splits]
        split = assign_splits(dataset_index, fractions, args.split_seed)
        split_desc = fractions

    stored_gp, stored_ks, finished = stored_identity(out)
    exists = stored_gp is not None or out.exists()
    if exists and not args.resume and not args.overwrite:
        raise FileExistsError(f"{out} exists (or its build journal does); pass --resume to continue it or --overwrite")

    base_ks = KnobSpace() if args.tier_crops is None else KnobSpace(crops=tuple(args.tier_crops))
    t0 = time.perf_counter()
    # shared-prefix runs transformers' blocks (fast=False) throughout: importance, features, outcomes
    fast = False if args.engine == "shared-prefix" else None
    rt = MolmoeRuntime.from_checkpoint(args.model, base_ks, dtype=dtype, device=device,
                                       experts_implementation=args.experts_impl, max_batch_size=args.batch_size,
                                       max_new_tokens=args.max_new_tokens, template=args.template, fast=fast)
    log(f"[rank {rank}/{world}] model loaded in {time.perf_counter() - t0:.1f} s ({dtype}, {device})")
    resuming = args.resume and stored_gp is not None
    if resuming and stored_ks is not None:
        ks = KnobSpace.from_dict(stored_ks)  # the importance scores this build started with
        importance = stored_gp.get("importance", {"scores": list(ks.importance_scores)})
    else:
        importance = _load_importance(args, rt, requests, log)
        ks = base_ks.with_scores(importance["scores"])
    rt = MolmoeRuntime(rt.model, rt.tokenizer, ks, max_batch_size=args.batch_size,
                       max_new_tokens=args.max_new_tokens, template=args.template, fast=fast)
    configs = parse_config_selection(args.configs, ks)
    max_seq = args.max_sequence_tokens or int(rt.model.config.max_position_embeddings)
    scale = rt.model.config.molmoe_1b_image_scale
    if args.vision_tokens == "molmoe-1b" and scale is None:
        raise ValueError("--vision-tokens molmoe-1b: the model's crop geometry is not MolmoE-1B's scaled down")
    molmoe_scale = scale if (args.vision_tokens != "model" and scale not in (None, 1.0)) else None
    lm_cfg = rt.model.lm.config
    impl = getattr(lm_cfg, "_experts_implementation_internal", None) or getattr(lm_cfg, "_experts_implementation", None)
    gp = {
        "runtime": {
            "model": str(args.model.resolve()), "dtype": str(dtype).replace("torch.", ""), "device": device.type,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "experts_implementation": str(impl), "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
            "template": args.template, "max_sequence_tokens": max_seq, "engine": args.engine,
            "dense_decode": bool(args.dense_decode),
        },
        "build": {
            "dataset": str(args.dataset.resolve()), "dataset_sha256": file_sha256(args.dataset), "n_requests": S,
            "configs": "all" if configs.size == len(ks) else [int(c) for c in configs], "config_spec": args.configs,
            "chunk_requests": args.chunk_requests, "splits": split_desc, "split_seed": args.split_seed,
            "tier_crops": list(ks.crops),
        },
        "importance": importance,
        "definitions": {
            "measured_ms": "vision / prefill / decode-total ms of the batch that produced the outcome "
                           "(CUDA events on GPU, perf_counter on CPU); per request only with batch_size 1",
            "uncertainty": "first generated token's entropy (nats) and top-1 minus top-2 probability at the "
                           "cheapest configuration",
            "lang_feature": "mean prompt-token input embedding (d_model)",
            "latency_token": "last prompt token's hidden state after block p-1, blocks 0..p-1 at the model's top-k",
            "prompt_tokens": "text tokens + BOS (the prefill length is prompt_tokens + vision_tokens)",
            "vision_tokens": ("the model's own image tokens" if molmoe_scale is None else
                              f"MolmoE-1B's image tokens for the image at {molmoe_scale:g}x its size (the model sees "
                              f"it at 1/{molmoe_scale:g} of MolmoE-1B's crop geometry: the same crop grid, "
                              f"{rt.model.config.tokens_per_crop} pooled tokens per crop instead of 144); what the "
                              "MolmoE-1B latency estimator takes"),
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    if resuming:
        diff = params_mismatch(stored_gp, gp)
        if diff:
            raise ValueError(f"{out}: cannot resume, this run's settings differ from the stored build: " + "; ".join(diff))
        w = CacheWriter.resume(out)
        log(f"[rank {rank}/{world}] resumed {out}: {int(w.samples_pending().sum())} sample rows and "
            f"{int(w.pending()[:, configs].sum())} outcomes pending")
    else:
        model_id = args.model_id or args.model.resolve().name
        w = CacheWriter.create(out, knob_space=ks, n_samples=S, lang_dim=rt.model.config.d_model,
                               token_dim=rt.model.config.d_model, model_id=model_id, generator=GENERATOR,
                               generator_params=gp, datasets=datasets, metrics=metrics, synthetic=False,
                               overwrite=args.overwrite)
    chunks = chunk_rows(S, args.chunk_requests, rank, world)
    settings = BuildSettings(configs=configs, chunk_requests=args.chunk_requests, batch_size=args.batch_size,
                             max_new_tokens=args.max_new_tokens, max_sequence_tokens=max_seq, engine=args.engine,
                             dense_decode=args.dense_decode, preprocess_threads=args.preprocess_threads,
                             decode_group_bytes=int(args.decode_group_gib * 2**30),
                             molmoe_scale=molmoe_scale)
    progress = None
    try:
        builder = LiveCacheBuilder(w, rt, requests, dataset_index, split, settings, log=log)
        total = builder.pending_units(chunks)
        if not args.no_progress:
            from tqdm import tqdm

            progress = tqdm(total=total, unit="outcome", desc=f"rank {rank}/{world}", smoothing=0.05, dynamic_ncols=True)
            builder.progress = progress
        t0 = time.perf_counter()
        builder.build(chunks)
        elapsed = time.perf_counter() - t0
    except BaseException:
        w.__exit__(*sys.exc_info())  # keep the journal: --resume continues
        raise
    finally:
        if progress is not None:
            progress.close()
    w.close()
    st = builder.stats
    if builder.did_write or not finished:
        est = LatencyEstimator.resolve(args.estimator) if args.estimator else LatencyEstimator.default()
        shard = {"shard": {"rank": rank, "num_shards": world, "chunk_requests": args.chunk_requests}} if world > 1 else {}
        rng = finalize(out, est, nominal_output_tokens=args.nominal_output_tokens, extra_attrs=shard)
        log(f"[rank {rank}/{world}] budget range {rng} ms from the estimator ({est.source[:60]!r})")
    log(f"[rank {rank}/{world}] wrote {out}: {st.outcomes_ok} OK and {st.outcomes_failed} FAILED outcomes in "
        f"{elapsed:.1f} s, {len(st.invalid_requests)} invalid requests, {builder.runner.retries} batch retries")
    for rid, why in list(st.invalid_requests.items())[:20]:
        log(f"  invalid {rid}: {why}")
    return 0


if __name__ == "__main__":
    from experiments.cli_errors import run_cli  # one-line errors for user mistakes; --debug: traceback

    raise SystemExit(run_cli(main, prog="python -m experiments.build_cache"))
