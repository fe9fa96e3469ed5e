"""Where the small model's GPU time goes: a training step, the data pipeline, the cache build.

``python -m benchmarks.bench_small_model --checkpoint CKPT --suite DIR [--batch-sizes 128 512]
[--data-seconds 20] [--engine-requests 300]`` prints:

1. training step time of one model (bf16, dense experts, AdamW on float32 masters) per batch
   size, on a fixed rendered batch (no data loader), split into forward / backward / optimiser
   by CUDA events;
2. the data pipeline's rate (samples/s) with the training's worker count;
3. the shared-prefix build engine (grouped dense decode) on ``--engine-requests`` suite requests
   under the high tier's 75 configurations (the longest prompts), and the projected time of a
   6,000-request × 225-configuration build (the high tier's rate for all three tiers: an upper
   bound).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--suite", type=Path, required=True, help="make_suite folder with test.jsonl")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--data-seconds", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=15)
    ap.add_argument("--engine-requests", type=int, default=300)
    ap.add_argument("--out", type=Path, default=None, help="JSON of the figures")
    args = ap.parse_args()

    from model_runtime.molmoe.config import MolmoeConfig
    from model_runtime.molmoe.tokenizer import TextTokenizer, special_tokens_from
    from model_runtime.small_model.trainer import Run, TrainConfig, to_batch
    from model_runtime.small_model.training_data import SuiteStream, TrainDataConfig, collate, make_sample

    dev = torch.device("cuda")
    tok = TextTokenizer.from_file(args.checkpoint / "tokenizer.json")
    config = MolmoeConfig.small().replace(tokens=special_tokens_from(tok))
    figures: dict = {"device": torch.cuda.get_device_name(dev)}

    # 1. training step
    stream = SuiteStream(config, tok, TrainDataConfig(batch_size=128))
    base = stream.batch(0)
    cfg = TrainConfig(recipes={"plain": 0.0})
    run = Run("plain", 0.0, config, cfg, dev, torch.bfloat16)
    for bs in args.batch_sizes:
        reps = max(1, bs // 128)
        b = {k: torch.cat([v] * reps) for k, v in base.items() if k not in ("crop_rows", "image_input_idx")}
        rows, idx = [], []
        n_rows = base["input_ids"].shape[0]
        for r in range(reps):
            rows.append(base["crop_rows"] + r * n_rows)
            idx.append(base["image_input_idx"])
        b["crop_rows"], b["image_input_idx"] = torch.cat(rows), torch.cat(idx)
        mb, labels = to_batch(b, dev, torch.bfloat16)
        for _ in range(2):
            run.step(mb, labels, 1e-4, cfg)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            run.step(mb, labels, 1e-4, cfg)
        torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) / args.steps * 1e3
        tokens = int(mb.attention_mask.sum())
        figures[f"train_step_ms@{bs}"] = ms
        figures[f"train_samples_per_s@{bs}"] = bs / ms * 1e3
        print(f"train step batch {bs}: {ms:.0f} ms ({bs / ms * 1e3:.0f} samples/s, {tokens} tokens, "
              f"{mb.patches.shape[0]} crops)", flush=True)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            run.step(mb, labels, 1e-4, cfg)
            torch.cuda.synchronize()
        ev = prof.key_averages()
        cuda_total = sum(e.self_device_time_total for e in ev) / 1e3
        n_kernels = sum(e.count for e in ev if e.self_device_time_total > 0)
        print(f"  profiled step: {cuda_total:.0f} ms of GPU kernels in {n_kernels} kernel launches", flush=True)
        print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=8), flush=True)
        figures[f"train_gpu_ms@{bs}"] = cuda_total
        figures[f"train_kernels@{bs}"] = n_kernels
    del run
    torch.cuda.empty_cache()

    # 2. data pipeline
    loader = torch.utils.data.DataLoader(SuiteStream(config, tok, TrainDataConfig(batch_size=128)), batch_size=None,
                                         num_workers=args.workers, prefetch_factor=4)
    it = iter(loader)
    next(it)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < args.data_seconds:
        next(it)
        n += 128
    rate = n / (time.perf_counter() - t0)
    figures["data_samples_per_s"] = rate
    print(f"data pipeline ({args.workers} workers): {rate:.0f} samples/s", flush=True)
    del it, loader

    # 3. build engine
    from envs.knob_space import KnobSpace
    from model_runtime.datasets import load_requests
    from model_runtime.molmoe.importance import ImportanceScores
    from model_runtime.molmoe.runtime import MolmoeRuntime
    from model_runtime.molmoe.shared_prefix import run_all_configs

    ks = KnobSpace().with_scores(ImportanceScores.load(args.checkpoint / "importance.json").scores)
    rt = MolmoeRuntime.from_checkpoint(args.checkpoint, ks, dtype=torch.bfloat16, device="cuda", fast=False,
                                       max_new_tokens=24)
    reqs = load_requests(args.suite / "test.jsonl")[:: max(1, 6000 // args.engine_requests)][: args.engine_requests]
    high = [c for c in range(len(ks)) if ks.config(c).tier == "high"]
    run_all_configs(rt, reqs[:8], high[:2], batch_size=8, dense_decode=True, return_sample_features=False)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = run_all_configs(rt, reqs, high, batch_size=len(reqs), dense_decode=True, preprocess_threads=12,
                          decode_group_bytes=64 * 2**30)
    torch.cuda.synchronize()
    el = time.perf_counter() - t0
    steps = [o.output_tokens for outs in res.outcomes for o in outs.values()]
    proj = el * (6000 / len(reqs)) * 3
    figures.update({"engine_s_high_tier": el, "engine_requests": len(reqs), "projected_build_s_upper": proj,
                    "mean_output_tokens": sum(steps) / len(steps)})
    print(f"engine: {len(reqs)} requests x 75 high-tier configurations in {el:.1f} s "
          f"(mean output {sum(steps) / len(steps):.1f} tokens); 6,000 x 225 projected <= {proj:.0f} s", flush=True)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
