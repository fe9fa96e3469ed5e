"""Where the small model's GPU time goes: a training step, the data pipeline, the cache build.

``python -m benchmarks.bench_small_model --checkpoint CKPT --suite DIR [--batch-sizes 256 512]
[--compile-batch-sizes 512] [--reuse 1 4] [--data-seconds 15] [--engine-requests 150] [--recipe-of CKPT]`` prints:

1. training step time of one model (bf16, dense experts, foreach AdamW on float32 masters) per
   batch size, on a fixed rendered batch (no data loader), eager, with ``--compile`` and, for a crop
   stem (hybrid, fine), eager with the stem in channels-last memory format (``--channels-last``); peak
   memory; one profiled eager step (GPU kernel time, launch count, and the share of the step's
   wall time the GPU was busy: well under 1 means the host's launches set the pace, not the GPU).
   ``--recipe-of CKPT`` times the recipe a trained checkpoint was made with: its model config
   (patch stem, sizes), and the losses and training mix of its ``train_config.json`` (word presence,
   print supervision, captions, per-module rates, task weights) instead of ``MolmoeConfig.small()``
   with the answer loss and the default mix;
2. the data pipeline's rate (samples/s) with the training's worker count, per reuse factor;
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


def device_kernels(events) -> tuple[float, int]:
    """(ms of GPU kernel time, kernel launches) of a profile's ``key_averages()``: the device-side events only,
    as the profiler's own table totals them (an operator's row repeats the time of the kernels it launched)."""
    from torch.autograd import DeviceType

    kernels = [e for e in events if e.device_type != DeviceType.CPU and not e.is_user_annotation]
    return sum(e.self_device_time_total for e in kernels) / 1e3, sum(e.count for e in kernels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--suite", type=Path, required=True, help="make_suite folder with test.jsonl")
    ap.add_argument("--batch-sizes", type=int, nargs="*", default=[256, 512])
    ap.add_argument("--compile-batch-sizes", type=int, nargs="*", default=[512],
                    help="batch sizes to time with --compile (torch.compile of the blocks); none to skip")
    ap.add_argument("--reuse", type=int, nargs="*", default=[1, 4], help="data reuse factors to time")
    ap.add_argument("--data-batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--data-seconds", type=float, default=15.0)
    ap.add_argument("--workers", type=int, default=15)
    ap.add_argument("--engine-requests", type=int, default=150, help="0 skips the build engine")
    ap.add_argument("--engine-batch", type=int, default=500, help="requests per engine batch (by prompt length)")
    ap.add_argument("--out", type=Path, default=None, help="JSON of the figures")
    ap.add_argument("--device", default="cuda", help="cuda (what it is for) or cpu (a smoke run)")
    ap.add_argument("--recipe-of", type=Path, default=None,
                    help="a trained checkpoint whose config and train_config.json losses the training step uses")
    args = ap.parse_args()

    from model_runtime.molmoe.config import MolmoeConfig
    from model_runtime.molmoe.tokenizer import TextTokenizer, special_tokens_from
    from model_runtime.small_model.trainer import Run, TrainConfig, to_batch
    from model_runtime.small_model.training_data import SuiteStream, TrainDataConfig

    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    dtype = torch.bfloat16 if cuda else torch.float32
    tok = TextTokenizer.from_file(args.checkpoint / "tokenizer.json")
    config = MolmoeConfig.small().replace(tokens=special_tokens_from(tok))
    figures: dict = {"device": torch.cuda.get_device_name(dev) if cuda else "cpu"}
    losses: dict = {}  # TrainConfig fields of the recipe's extra losses
    data_kw: dict = {}
    if args.recipe_of is not None:
        from model_runtime.molmoe.checkpoint import read_molmo_config
        from model_runtime.small_model.print_supervision import target_grids

        tok = TextTokenizer.from_file(args.recipe_of / "tokenizer.json")
        config = read_molmo_config(args.recipe_of, tok)
        recorded = json.loads((args.recipe_of / "train_config.json").read_text())["train"]
        for key in ("word_presence", "print_loss", "lr_scale", "aux_coef", "z_coef"):
            if key in recorded:
                losses[key] = recorded[key]
        for key in ("word_presence_sites", "print_sites"):
            if key in recorded:
                losses[key] = tuple(recorded[key])
        data_kw["caption_rate"] = recorded.get("data", {}).get("caption_rate", 0.0)
        if recorded.get("data", {}).get("task_weights"):  # the mix sets what is rendered and how long prompts are
            data_kw["task_weights"] = dict(recorded["data"]["task_weights"])
        if losses.get("print_loss", 0) > 0:
            data_kw["print_grids"] = target_grids(config, losses.get("print_sites", ("tokens",)))
        figures["recipe_of"] = str(args.recipe_of)
        print(f"recipe of {args.recipe_of}: patch stem {config.vit_patch_stem}, {losses}, {data_kw}", flush=True)

    # 1. training step
    base_bs = min([128, *args.batch_sizes, *args.compile_batch_sizes])
    base = SuiteStream(config, tok, TrainDataConfig(batch_size=base_bs, **data_kw)).batch(0)

    def replicated(bs: int) -> dict:  # the rendered batch repeated: the step's cost without rendering it
        reps = max(1, bs // base_bs)
        b = {k: torch.cat([v] * reps) for k, v in base.items() if k not in ("crop_rows", "image_input_idx")}
        n_rows = base["input_ids"].shape[0]
        b["crop_rows"] = torch.cat([base["crop_rows"] + r * n_rows for r in range(reps)])
        b["image_input_idx"] = torch.cat([base["image_input_idx"]] * reps)
        return b

    def time_steps(run, bs: int, label: str) -> None:
        b = replicated(bs)
        mb, labels = to_batch(b, dev, dtype, config)
        captions = (b["caption_targets"].to(dev), b["has_caption"].to(dev))
        prints = {int(k.rsplit("_", 1)[1]): v.to(dev) for k, v in b.items() if k.startswith("print_targets_")}

        def step() -> None:  # past the print heads' warm-up: the whole model trains
            run.step(mb, labels, 1e-4, cfg, captions, prints, step=cfg.print_head_warmup)

        t0 = time.perf_counter()
        for _ in range(2):
            step()
        sync()
        warm = time.perf_counter() - t0
        torch.cuda.reset_peak_memory_stats() if cuda else None
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        ms = (time.perf_counter() - t0) / args.steps * 1e3
        tokens = int(mb.attention_mask.sum())
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        figures[f"{label}_step_ms@{bs}"] = ms
        figures[f"{label}_samples_per_s@{bs}"] = bs / ms * 1e3
        figures[f"{label}_first_two_steps_s@{bs}"] = warm
        figures[f"{label}_peak_gib@{bs}"] = peak
        print(f"{label} train step batch {bs}: {ms:.0f} ms ({bs / ms * 1e3:.0f} samples/s, {tokens} real of "
              f"{mb.attention_mask.numel()} tokens, {mb.patches.shape[0]} crops, peak {peak:.1f} GiB; "
              f"first two steps {warm:.1f} s)", flush=True)
        if label != "eager":
            return
        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        with torch.profiler.profile(activities=activities) as prof:
            t0 = time.perf_counter()
            step()
            sync()
            wall = (time.perf_counter() - t0) * 1e3
        ev = prof.key_averages()
        cuda_total, n_kernels = device_kernels(ev)
        busy = cuda_total / wall if cuda else float("nan")
        print(f"  profiled step: {wall:.0f} ms wall, {cuda_total:.0f} ms of GPU kernels in {n_kernels} kernel launches "
              f"(GPU busy {busy:.2f} of the wall time; the profiler's own overhead included)", flush=True)
        print(prof.key_averages().table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=12),
              flush=True)
        figures[f"{label}_gpu_ms@{bs}"] = cuda_total
        figures[f"{label}_kernels@{bs}"] = n_kernels
        figures[f"{label}_profiled_wall_ms@{bs}"] = wall
        figures[f"{label}_gpu_busy@{bs}"] = busy

    # a crop stem (hybrid, fine) is timed eager in channels-last memory format too (train_model --channels-last)
    crop_stem = config.vit_patch_stem in ("hybrid", "fine")
    for label, batch_sizes in (("eager", args.batch_sizes), ("compiled", args.compile_batch_sizes),
                               ("eager_channels_last", args.batch_sizes if crop_stem else [])):
        if not batch_sizes:
            continue
        cfg = TrainConfig(recipes={"plain": 0.0}, compile=label == "compiled", channels_last=label == "eager_channels_last",
                          **losses)
        run = Run("plain", 0.0, config, cfg, dev, dtype)
        for bs in batch_sizes:
            try:
                time_steps(run, bs, label)
            except torch.OutOfMemoryError:
                print(f"{label} train step batch {bs}: out of GPU memory", flush=True)
                figures[f"{label}_step_ms@{bs}"] = None
            torch.cuda.empty_cache() if cuda else None
        del run
        torch.cuda.empty_cache() if cuda else None

    # 2. data pipeline
    for reuse in args.reuse:
        data = TrainDataConfig(batch_size=args.data_batch, reuse=reuse, reuse_distance=args.workers, **data_kw)
        loader = torch.utils.data.DataLoader(SuiteStream(config, tok, data), batch_size=None,
                                             num_workers=args.workers, prefetch_factor=4, pin_memory=cuda)
        it = iter(loader)
        for _ in range(args.workers * reuse):  # past every worker's first batches (nothing to reuse yet)
            next(it)
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < args.data_seconds:
            b = next(it)
            b["patches"].to(dev, non_blocking=True)
            n += args.data_batch
        rate = n / (time.perf_counter() - t0)
        figures[f"data_samples_per_s@reuse{reuse}"] = rate
        print(f"data pipeline ({args.workers} workers, batch {args.data_batch}, reuse {reuse}): {rate:.0f} samples/s "
              f"(uint8 pixels, copied to the GPU)", flush=True)
        del it, loader

    # 3. build engine
    if args.engine_requests <= 0:
        if args.out:
            args.out.write_text(json.dumps(figures, indent=1))
        return
    from envs.knob_space import KnobSpace
    from model_runtime.datasets import load_requests
    from model_runtime.molmoe.importance import ImportanceScores
    from model_runtime.molmoe.runtime import MolmoeRuntime
    from model_runtime.molmoe.shared_prefix import run_all_configs

    ks = KnobSpace().with_scores(ImportanceScores.load(args.checkpoint / "importance.json").scores)
    rt = MolmoeRuntime.from_checkpoint(args.checkpoint, ks, dtype=dtype, device=dev, fast=False,
                                       max_new_tokens=24)
    pool = load_requests(args.suite / "test.jsonl")
    reqs = pool[:: max(1, len(pool) // args.engine_requests)][: args.engine_requests]
    high = [c for c in range(len(ks)) if ks.config(c).tier == "high"]
    run_all_configs(rt, reqs[:8], high[:2], batch_size=8, dense_decode=True, return_sample_features=False)
    sync()
    t0 = time.perf_counter()
    res = run_all_configs(rt, reqs, high, batch_size=args.engine_batch, dense_decode=True, preprocess_threads=12,
                          decode_group_bytes=64 * 2**30, log=lambda line: print(line, flush=True))
    sync()
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
