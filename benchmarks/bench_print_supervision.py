"""How fast does print supervision put the digits into a checkpoint's image tokens? (prints figures)

``python -m benchmarks.bench_print_supervision --model CKPT [--steps 300] [--head-steps 100]
[--batch-size 8] [--sites tokens] [--lr 3e-4] [--head-lr 1e-3] [--tasks synth_doc=0.3 ...]
[--sizes 12 16 24 40] [--probe-images 400] [--device cpu] [--out JSON]``

After ``--head-steps`` steps that train the print heads alone on the frozen tokens (a linear
probe: a random head's gradients would scramble the tokens first), the tower and connector of
``CKPT`` (the language model is neither run nor changed) are trained
with the print-supervision loss alone (``model_runtime.small_model.print_supervision``: the
characters under each image token, in reading order) on the suite's training stream (a
print-heavy mix by default, past the examples the committed model saw), at the full tier.
Before and after, it reports:

* the linear probes of ``benchmarks.probe_digit_tokens`` on the image tokens (the digit under a
  token at each print size; the committed model: 0.28 / 0.33 / 0.51 / 0.75 at 12 / 16 / 24 / 40
  crop px, an untrained tower 0.15-0.60);
* the print head's accuracy on held-out ``val`` images per task (the share of printed characters
  placed right, ``print_acc``; the head is trained with the tower, so "before" has none);
* the tokens' drift: on those held-out images, the squared change of the image tokens over their
  variance (0: unchanged; 1: as far as their spread). The language model was trained on the old
  tokens, so a large drift is what a joint continuation has to repair.

This isolates the question a GPU continuation with ``train_model --print-loss`` answers slowly:
whether the tower can be taught to carry document-size digits at all, and at what cost to the
tokens the language model reads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

DEFAULT_TASKS = {"synth_doc": 0.3, "synth_numbers": 0.25, "synth_chart": 0.2, "synth_digits": 0.1, "synth_text": 0.15}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_print_supervision", description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="checkpoint folder")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=8, help="images per step (each gives its crops at the full tier)")
    ap.add_argument("--sites", nargs="+", choices=("stem", "tokens"), default=["tokens"])
    ap.add_argument("--head-steps", type=int, default=100, help="steps training the heads alone first")
    ap.add_argument("--lr", type=float, default=3e-4, help="peak rate of the tower and connector")
    ap.add_argument("--head-lr", type=float, default=1e-3, help="rate of the print heads")
    ap.add_argument("--none-weight", type=float, default=0.1)
    ap.add_argument("--tasks", nargs="+", default=None, metavar="TASK=W", help="training mix (default: print-heavy)")
    ap.add_argument("--first-example", type=int, default=4_000_000, help="first index of the training stream")
    ap.add_argument("--val-images", type=int, default=48, help="held-out val images per task for print_acc and the drift")
    ap.add_argument("--sizes", type=int, nargs="+", default=[12, 16, 24, 40], help="probe print sizes, crop pixels")
    ap.add_argument("--probe-images", type=int, default=400)
    ap.add_argument("--workers", type=int, default=1, help="data-loader workers rendering the stream")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="JSON of the figures")
    args = ap.parse_args(argv)
    if min(args.steps, args.batch_size, args.val_images) < 1 or args.probe_images < 10 or args.head_steps < 0:
        raise SystemExit("bench_print_supervision: --steps, --batch-size, --val-images must be >= 1, --probe-images >= 10")

    import copy

    import torch

    from benchmarks.probe_digit_tokens import collect, print_probe_rows, probe_table
    from model_runtime.molmoe.checkpoint import load_molmoe_checkpoint
    from model_runtime.small_model.print_supervision import PrintLoss, target_grids
    from model_runtime.small_model.trainer import TrainConfig, lr_at, to_batch
    from model_runtime.small_model.training_data import SuiteStream, TrainDataConfig

    from experiments.train_model import parse_task_weights

    weights = parse_task_weights(args.tasks) if args.tasks else DEFAULT_TASKS
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    before, tokenizer = load_molmoe_checkpoint(args.model, device=args.device, dtype=torch.float32)
    if tokenizer is None:
        raise SystemExit(f"bench_print_supervision: {args.model} has no tokenizer.json")
    cfg = before.config
    before.eval()
    model = copy.deepcopy(before).train()
    model.lm.requires_grad_(False)
    prints = PrintLoss(model, args.sites, none_weight=args.none_weight).to(device)
    grids = target_grids(cfg, args.sites)
    data = TrainDataConfig(seed=0, batch_size=args.batch_size, task_weights=weights, first_example=args.first_example,
                           print_grids=grids)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    head_opt = torch.optim.AdamW(prints.parameters(), lr=args.head_lr, betas=(0.9, 0.95), weight_decay=0.0)
    schedule = TrainConfig(lr=args.lr, warmup_steps=max(1, args.steps // 10))

    def held_out(task: str):
        stream = SuiteStream(cfg, tokenizer, TrainDataConfig(seed=0, batch_size=args.val_images, task_weights={task: 1.0},
                                                             print_grids=grids), split="val")
        return stream.batch(0)

    val = {}  # task -> (batch on the device, its print targets, the committed tokens, their spread)
    with torch.no_grad():
        for task in weights:
            b = held_out(task)
            mb, _ = to_batch(b, device, torch.float32, cfg)
            ref = before.image_features(mb.patches, mb.image_masks)
            val[task] = (mb, {g: b[f"print_targets_{g}"].to(device) for g in grids}, ref,
                         ((ref - ref.mean((0, 1))) ** 2).sum())

    def measure(m) -> dict:
        out = {}
        m.eval()
        with torch.no_grad():
            for task, (mb, targets, ref, spread) in val.items():
                feats = m.image_features(mb.patches, mb.image_masks)
                _, figures = prints.losses(targets)
                out[task] = {"drift": round(float(((feats - ref) ** 2).sum() / spread), 4),
                             "print_acc": round(float(figures["acc"]), 4)}
        m.train()
        return out

    loader = torch.utils.data.DataLoader(SuiteStream(cfg, tokenizer, data), batch_size=None, num_workers=args.workers)
    it = iter(loader)
    history = []
    t0 = time.perf_counter()
    total = args.head_steps + args.steps
    probe_only: dict = {}
    for step in range(total):
        heads_only = step < args.head_steps
        b = next(it)
        mb, _ = to_batch(b, device, torch.float32, cfg)
        with torch.no_grad() if heads_only else torch.enable_grad():
            model.image_features(mb.patches, mb.image_masks)
        loss, figures = prints.losses({g: b[f"print_targets_{g}"].to(device) for g in grids}, heads_only=heads_only)
        opt.zero_grad(set_to_none=True)
        head_opt.zero_grad(set_to_none=True)
        loss.backward()
        head_opt.step()
        if not heads_only:
            for g in opt.param_groups:
                g["lr"] = lr_at(step - args.head_steps, schedule, args.steps)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        if (step + 1) % max(1, total // 10) == 0 or step + 1 in (args.head_steps, total):
            history.append({"step": step + 1, "heads_only": heads_only, "loss": round(loss.item(), 4),
                            "print_acc": round(float(figures["acc"]), 4), "elapsed_s": round(time.perf_counter() - t0, 1)})
            print(f"step {step + 1}/{total}{' (heads only)' if heads_only else ''} loss {loss.item():.4f} "
                  f"print_acc {float(figures['acc']):.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        if step + 1 == args.head_steps:  # the linear probe of the committed tokens: what the head reads unaided
            probe_only = measure(model)
    train_s = time.perf_counter() - t0
    del it  # the rendering workers stop here, not while the probes below render their own images
    after = measure(model)
    for task in after:
        after[task]["print_acc_heads_only"] = probe_only.get(task, {}).get("print_acc")
    prints.remove()
    model.eval()
    data_probe = collect({"before": before, "after": model}, args.sizes, args.probe_images, args.seed)
    probes = probe_table(data_probe, args.probe_images, {"before": "before", "after": "after"})
    rep = {"model": str(args.model), "sites": args.sites, "steps": args.steps, "head_steps": args.head_steps,
           "batch_size": args.batch_size, "lr": args.lr, "head_lr": args.head_lr, "tasks": weights, "train_s": round(train_s, 1), "history": history,
           "held_out": after, "probes": probes, "device": str(device)}
    print(f"print supervision on {args.model}'s tower and connector: {args.head_steps} steps of the heads alone, then "
          f"{args.steps} of {args.batch_size} images, "
          f"sites {' '.join(args.sites)}, {train_s:.0f} s")
    print(f"{'held-out task':>14} | print_acc, heads only | print_acc, after | token drift")
    for task, row in after.items():
        first = row["print_acc_heads_only"]
        print(f"{task:>14} | {'' if first is None else f'{first:.3f}':>20} | {row['print_acc']:>16.3f} | {row['drift']:>11.3f}")
    print(f"linear probes on the global view's image tokens ({args.probe_images} images per size)")
    print_probe_rows(probes["accuracy"], args.sizes, "tokens", 7)
    if args.out:
        args.out.write_text(json.dumps(rep, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
