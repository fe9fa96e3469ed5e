"""Can a patch stem keep the digits under each patch, and their order? Dense per-patch training (prints figures).

``python -m benchmarks.bench_stem_digits [--stems linear hybrid fine] [--min-px 10] [--max-px 24]
[--train 8000] [--val 500] [--steps 600] [--batch-size 32] [--device cpu] [--out FILE]``

Each 168-px crop (``MolmoeConfig.small()``'s) holds one to three strings of 2-5 random digits in
bands, each at a print size log-uniform over ``--min-px``..``--max-px`` crop pixels (the
documents print at 10-22 at the high tier). Every patch (14 px) is labelled by the digits whose
box is centred in it: its leftmost and its rightmost digit, or "none". A stem
(``MolmoeConfig.vit_patch_stem``: ``linear`` is CLIP's patch embedding, ``hybrid`` the committed
model's conv trunk, ``fine`` the trunk that keeps each patch's inner layout), a LayerNorm and two
linear heads on each patch's vector are trained from scratch on these labels (AdamW, cosine), and
the held-out crops are scored on the patches that hold digits:

* ``first`` / ``last``: the leftmost / rightmost digit of the patch (10 classes);
* ``both, 2+``: on patches that hold two or more digits, both right, i.e. the order kept.

Dense labels make this a fast test of what the stem can represent, without the tower, pooling or
language model that the whole model reads through (``benchmarks.probe_digit_tokens`` probes
those). Why: the committed model's image tokens hold the digits under them at document print a
third of the time (benchmarks/RESULTS.md, "Sixteenth H200 run").
"""

from __future__ import annotations

import argparse
import json
import math
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Sequence

import numpy as np

CROP, PATCH = 168, 14
SIDE = CROP // PATCH
NONE = 10


def _render_chunk(args: tuple[int, int, int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` crops of stream ``(seed, chunk)``: (n, 144, 588) uint8 patches, (n, 144, 2) first/last
    digit per patch (:data:`NONE` where none is centred), (n, 144) print size of the patch's digits (0: none)."""
    from PIL import Image, ImageDraw

    from model_runtime.datasets.suite import drawing as dr
    from model_runtime.molmoe.preprocessing import _patchify

    seed, chunk, n, min_px, max_px = args
    rng = np.random.default_rng([seed, chunk])
    imgs = np.empty((n, CROP, CROP, 3), np.uint8)
    labels = np.full((n, SIDE * SIDE, 2), NONE, np.int64)
    sizes = np.zeros((n, SIDE * SIDE), np.int64)
    for i in range(n):
        bg = (255, 255, 255) if rng.random() < 0.5 else dr.pastel(rng, 180, 256)
        img = Image.new("RGB", (CROP, CROP), bg)
        draw = ImageDraw.Draw(img)
        k = int(rng.integers(1, 4))
        band = CROP / k
        held: dict[int, list[tuple[float, int, int]]] = {}
        for b in range(k):
            digits = "".join(str(int(d)) for d in rng.integers(0, 10, size=int(rng.integers(2, 6))))
            px = min(dr.log_uniform_int(rng, min_px, max_px), int(band * 0.8))
            f = dr.font(dr.choice(rng, ("sans", "sans", "serif", "mono")), px)
            width = f.getlength(digits)
            _, top, _, bottom = f.getbbox(digits)
            x0 = float(rng.uniform(1, max(1.0, CROP - 1 - width)))
            y0 = b * band + float(rng.uniform(-top, max(-top, band - bottom)))
            draw.text((x0, y0), digits, font=f, fill=dr.ink_for(bg))
            for j, ch in enumerate(digits):
                cx = x0 + (f.getlength(digits[:j]) + f.getlength(digits[: j + 1])) / 2
                cy = y0 + (top + bottom) / 2
                r, c = min(SIDE - 1, int(cy // PATCH)), min(SIDE - 1, int(cx // PATCH))
                held.setdefault(r * SIDE + c, []).append((cx, int(ch), px))
        for p, ds in held.items():
            ds.sort()
            labels[i, p] = (ds[0][1], ds[-1][1])
            sizes[i, p] = ds[0][2]
        imgs[i] = np.asarray(img)
    return _patchify(imgs, PATCH), labels, sizes


def render(seed: int, n: int, min_px: int, max_px: int, workers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    chunk = 250
    jobs = [(seed, c, min(chunk, n - c * chunk), min_px, max_px) for c in range(math.ceil(n / chunk))]
    if workers <= 1:
        parts = [_render_chunk(j) for j in jobs]
    else:
        with Pool(workers) as pool:
            parts = pool.map(_render_chunk, jobs)
    return tuple(np.concatenate(p) for p in zip(*parts))  # type: ignore[return-value]


def build(stem: str, device):
    """(module, forward): patches (N, 144, 588) uint8 → logits (N, 144, 2, 10) of the first and last digit."""
    import torch
    from torch import nn

    from model_runtime.molmoe.config import MolmoeConfig
    from model_runtime.molmoe.preprocessing import normalize_patches
    from model_runtime.molmoe.vision import patch_stem_for

    cfg = MolmoeConfig.small(vit_patch_stem=stem)
    if (cfg.image_size, cfg.patch_size) != (CROP, PATCH):
        raise AssertionError("the benchmark renders MolmoeConfig.small()'s crops")
    body = patch_stem_for(cfg) if stem != "linear" else nn.Linear(PATCH * PATCH * 3, cfg.vit_hidden)
    model = nn.ModuleDict({"stem": body, "norm": nn.LayerNorm(cfg.vit_hidden),
                           "head": nn.Linear(cfg.vit_hidden, 2 * NONE)}).to(device)

    def forward(patches_u8: torch.Tensor) -> torch.Tensor:
        x = model["norm"](model["stem"](normalize_patches(patches_u8, cfg, torch.float32)))
        return model["head"](x).view(*x.shape[:2], 2, NONE)

    return model, forward


def run_stem(stem: str, data, val, args) -> dict:
    import torch
    import torch.nn.functional as F

    from model_runtime.small_model.trainer import TrainConfig, lr_at

    dev = torch.device(args.device)
    torch.manual_seed(0)
    model, forward = build(stem, dev)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05, betas=(0.9, 0.95))
    schedule = TrainConfig(lr=args.lr, warmup_steps=min(50, args.steps // 10), min_lr_frac=0.05)
    x_all, y_all, _ = data
    vx, vy, vsize = val
    rng = np.random.default_rng(1)

    def evaluate() -> dict:
        preds = []
        with torch.no_grad():
            for i in range(0, len(vx), 100):
                preds.append(forward(torch.from_numpy(vx[i:i + 100]).to(dev)).argmax(-1).cpu().numpy())
        pred = np.concatenate(preds)
        has = vy[..., 0] != NONE
        multi = has & (vy[..., 0] != vy[..., 1])  # two or more digits, and their order shows
        hit = pred == vy
        out = {"first": float(hit[..., 0][has].mean()), "last": float(hit[..., 1][has].mean()),
               "both_2plus": float(hit.all(-1)[multi].mean()) if multi.any() else float("nan")}
        for lo, hi in ((0, 13), (13, 17), (17, 25), (25, 99)):
            m = has & (vsize >= lo) & (vsize < hi)
            if m.any():
                out[f"first_{lo}-{hi}px"] = float(hit[..., 0][m].mean())
        return out

    curve, t0 = [], time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            ev = evaluate()
            curve.append({"step": step, **{k: round(v, 4) for k, v in ev.items()}})
            print(f"  {stem:>7} step {step:5d} first {ev['first']:.3f} last {ev['last']:.3f} "
                  f"both (2+ digits) {ev['both_2plus']:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        if step == args.steps:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, schedule, args.steps)
        idx = rng.integers(0, len(x_all), size=args.batch_size)
        logits = forward(torch.from_numpy(x_all[idx]).to(dev))
        target = torch.from_numpy(y_all[idx]).to(dev)
        has = target[..., 0] != NONE  # trained and scored where a patch holds digits
        loss = F.cross_entropy(logits[has].reshape(-1, NONE), target[has].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    final = curve[-1]
    print(f"  {stem:>7} final {json.dumps({k: v for k, v in final.items() if k != 'step'})} "
          f"({time.perf_counter() - t0:.0f} s, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters)", flush=True)
    return {"stem": stem, "curve": curve, "final": final, "wall_s": time.perf_counter() - t0}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_stem_digits", description=__doc__.split("\n")[0])
    ap.add_argument("--stems", nargs="+", default=["linear", "hybrid", "fine"], choices=("linear", "conv", "hybrid", "fine"))
    ap.add_argument("--min-px", type=int, default=10)
    ap.add_argument("--max-px", type=int, default=24)
    ap.add_argument("--train", type=int, default=8000, help="pre-rendered training crops")
    ap.add_argument("--val", type=int, default=500, help="held-out crops")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=None, help="rendering processes (default: all cores)")
    ap.add_argument("--out", type=Path, default=None, help="write the curves as JSON")
    args = ap.parse_args(argv)
    if not 6 <= args.min_px <= args.max_px <= 120:
        raise SystemExit(f"bench_stem_digits: need 6 <= --min-px <= --max-px <= 120, got {args.min_px}, {args.max_px}")
    if min(args.train, args.val, args.steps, args.batch_size, args.eval_every) < 1:
        raise SystemExit("bench_stem_digits: --train, --val, --steps, --batch-size and --eval-every must be >= 1")
    import os

    workers = args.workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    data = render(0, args.train, args.min_px, args.max_px, workers)
    val = render(1, args.val, args.min_px, args.max_px, workers)
    print(f"rendered {args.train} + {args.val} crops in {time.perf_counter() - t0:.1f} s; "
          f"{int((data[1][..., 0] != NONE).sum())} training patches hold digits", flush=True)
    results = [run_stem(s, data, val, args) for s in args.stems]
    if args.out is not None:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
