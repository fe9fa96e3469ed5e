"""Can the small model's vision tower learn to read, and how many examples does it take? (prints figures)

``python -m benchmarks.bench_tower_reading [--device cuda] [--variants linear@1e-3 conv@1e-3 cnn@1e-3 ...]
[--task words|digits] [--train 100000] [--val 2000] [--words 32] [--steps 1500] [--batch-size 256] [--readout attn|max|chanmax]
[--stem-aux W] [--stem-only] [--out FILE]``

The reading tasks of the suite stayed at chance in every H200 run while colour questions were
learned (benchmarks/RESULTS.md, "Fifth and sixth H200 runs"). This isolates the tower: one 168-px
crop (the small model's crop) holds one sign with one of the 32 sign words of
``drawing.SIGN_WORDS`` at a text height drawn log-uniform over ``--min-px``..``--max-px``,
anywhere in the crop; the tower (``MolmoeConfig.small()``'s, from scratch) and the connector
(2×2 attention pooling + projector) feed a readout (``--readout``: learned-query attention,
max of per-token logits, or per-channel max) and a linear layer over the 32 words; ``--stem-only``
reads the conv/hybrid stem's tokens directly, ``--stem-aux W`` adds the word-presence loss on the
stem (a per-channel max over its tokens, a linear layer, cross-entropy). No language model: this is the most direct signal the tower can get, so an
example count at which it stays at chance here is a lower bound for the whole model.

``--task digits`` puts a string of 2-5 random digits (the documents' numbers) on the sign instead, and
the readout has one learned query per place in the string (five, the unused ones read a blank): a
string is read when every place is. It asks the tower what the documents ask of the whole model,
the digits under each image token and their order (benchmarks/RESULTS.md, "Sixteenth H200 run").

Variants ``STEM@LR``: ``linear`` is CLIP's patch embedding (one linear map of the 14×14×3 patch);
``conv``, ``hybrid`` and ``fine`` are ``MolmoeConfig.vit_patch_stem`` (a per-patch convolutional stem, the
"early convolutions" remedy for ViTs that learn slowly from scratch, and a convolutional trunk over
the whole crop, ``model_runtime.molmoe.vision``); ``cnn`` is a baseline that is not the model's tower (four 3×3 conv layers
with max pooling on the crop's pixels), which shows what the data allow. ``--words N`` keeps the
first N words (an easier task). Each variant trains for ``--steps`` batches drawn from ``--train``
pre-rendered examples (AdamW, 50 warm-up steps, cosine to 5 %), and the script prints val
accuracy on ``--val`` held-out crops every ``--eval-every`` steps, then per text-height bucket.
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

CROP = 168  # MolmoeConfig.small()'s crop and patch
PATCH = 14


DIGITS_MAX = 5  # --task digits: strings of 2-5 digits, targets padded with BLANK
BLANK = 10


def _render_chunk(args: tuple[int, int, int, int, int, int, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` crops of stream ``(seed, chunk)``: (n, 144, 14·14·3) uint8 patches (Molmo's layout),
    word ids (``task="digits"``: (n, 5) digits padded with :data:`BLANK`), text heights."""
    from PIL import Image, ImageDraw

    from model_runtime.datasets.suite import drawing as dr
    from model_runtime.molmoe.preprocessing import _patchify

    seed, chunk, n, min_px, max_px, n_words, task = args
    rng = np.random.default_rng([seed, chunk])
    imgs = np.empty((n, CROP, CROP, 3), np.uint8)
    ys = np.full((n, DIGITS_MAX), BLANK, np.int64) if task == "digits" else np.empty(n, np.int64)
    pxs = np.empty(n, np.int64)
    words = dr.SIGN_WORDS[:n_words]
    for i in range(n):
        img = Image.new("RGB", (CROP, CROP), dr.pastel(rng, 120, 250))
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(0, 3))):  # clutter, as in synth_text
            x0, y0 = rng.integers(0, CROP, size=2)
            d.rectangle((int(x0), int(y0), int(x0 + rng.integers(10, 84)), int(y0 + rng.integers(10, 84))),
                        fill=dr.pastel(rng, 60, 240))
        if task == "digits":
            digits = rng.integers(0, 10, size=int(rng.integers(2, DIGITS_MAX + 1)))
            text = "".join(str(int(d)) for d in digits)
        else:
            wi = int(rng.integers(len(words)))
            text = words[wi]
        f = dr.fit_font(dr.choice(rng, ("sans", "sans_bold")), text, dr.log_uniform_int(rng, min_px, max_px), CROP - 12)
        tw, th = f.getlength(text), f.size
        pad = max(2, th // 3)
        x0 = rng.uniform(0, max(0.0, CROP - tw - 2 * pad))
        y0 = rng.uniform(0, max(0.0, CROP - th - 2 * pad))
        fill = dr.COLORS[dr.choice(rng, tuple(dr.COLORS))]
        d.rectangle((x0, y0, x0 + tw + 2 * pad, y0 + th + 2 * pad), fill=fill)
        dr.draw_centered(d, (x0 + tw / 2 + pad, y0 + th / 2 + pad), text, f, dr.ink_for(fill))
        if task == "digits":
            ys[i, :len(digits)] = digits
        else:
            ys[i] = wi
        imgs[i], pxs[i] = np.asarray(img), th
    return _patchify(imgs, PATCH), ys, pxs


def render(seed: int, n: int, min_px: int, max_px: int, workers: int, n_words: int = 32,
           task: str = "words") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    chunk = 500
    jobs = [(seed, c, min(chunk, n - c * chunk), min_px, max_px, n_words, task) for c in range(math.ceil(n / chunk))]
    with Pool(workers) as pool:
        parts = pool.map(_render_chunk, jobs)
    return tuple(np.concatenate(p) for p in zip(*parts))  # type: ignore[return-value]


def build(stem: str, device, n_words: int = 32, readout: str = "attn", stem_aux: bool = False, stem_only: bool = False,
          task: str = "words"):
    """(trainable modules, forward) of one variant: tower + connector + attention readout, or for
    ``stem="cnn"`` a small CNN on the crop's pixels (a baseline that is not the model's tower).

    ``stem_aux``: forward returns (logits, logits of a per-channel max over the stem's tokens), the
    word-presence loss of ``model_runtime.small_model.word_presence`` on this one-word crop.
    ``stem_only``: the readout reads the stem's tokens (plus the tower's position embeddings)
    directly, without the tower and connector. ``task="digits"``: the attention readout has one
    learned query per place in the string and 11 classes (the digits and :data:`BLANK`), logits
    (B, 5, 11)."""
    import torch
    from torch import nn

    from model_runtime.molmoe.config import MolmoeConfig
    from model_runtime.molmoe.connector import MolmoeConnector
    from model_runtime.molmoe.preprocessing import normalize_patches
    from model_runtime.molmoe.vision import MolmoeVisionTower, patches_to_crops

    cfg = MolmoeConfig.small()
    if (cfg.image_size, cfg.patch_size) != (CROP, PATCH):
        raise AssertionError("the benchmark renders MolmoeConfig.small()'s crops")
    if task == "digits" and (stem == "cnn" or readout != "attn" or stem_aux):
        raise ValueError("--task digits reads with --readout attn, without --stem-aux, through the model's tower")
    if stem == "cnn":
        cnn = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(128, n_words),
        ).to(device)
        return cnn, lambda patches: cnn(patches_to_crops(normalize_patches(patches, cfg, torch.float32), cfg.patch_size))
    cfg = cfg.replace(vit_patch_stem=stem)
    tower, conn = MolmoeVisionTower(cfg), MolmoeConnector(cfg)

    class Readout(nn.Module):
        """Over the crop's tokens: a learned-query attention, a max over tokens of per-token logits
        (both after a LayerNorm), or a max over tokens per channel, then a linear map (a CNN's readout)."""

        def __init__(self, d: int, k: int, places: int = 0) -> None:
            super().__init__()
            self.places = places
            self.norm, self.out = nn.LayerNorm(d), nn.Linear(d, k)
            self.q = nn.Parameter(torch.randn(places, d) * 0.02 if places else torch.randn(d) * 0.02)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            if readout == "chanmax":
                return self.out(t.amax(1))
            t = self.norm(t)
            if readout == "max":
                return self.out(t).amax(1)
            if self.places:  # one query per place: (B, T, D) @ (D, places) → weights over tokens per place
                w = torch.softmax(t @ self.q.T * t.shape[-1] ** 0.5 / 4, dim=1)
                return self.out(torch.einsum("btp,btd->bpd", w, t))
            w = torch.softmax(t @ self.q * t.shape[-1] ** 0.5 / 4, dim=1)
            return self.out((w[..., None] * t).sum(1))

    digits = task == "digits"
    head = Readout(cfg.vit_hidden if stem_only else cfg.d_model, BLANK + 1 if digits else n_words,
                   DIGITS_MAX if digits else 0)
    aux_head = nn.Linear(cfg.vit_hidden, n_words)
    if (stem_aux or stem_only) and tower.patch_stem is None:
        raise ValueError("--stem-aux and --stem-only need a conv or hybrid stem")
    mods = nn.ModuleList([tower, conn, head] + ([aux_head] if stem_aux else [])).to(device)
    stem_out: list[torch.Tensor] = []
    if stem_aux:
        tower.patch_stem.register_forward_hook(lambda m, i, o: stem_out.append(o))

    def image_tokens(patches: torch.Tensor) -> torch.Tensor:
        n, n_patches, _ = patches.shape
        if stem_only:
            return tower.patch_stem(patches) + tower.clip.embeddings.position_embedding.weight[1:]
        return conn(tower(patches), torch.ones(n, n_patches, device=device))

    def forward(patches_u8: torch.Tensor):
        patches = normalize_patches(patches_u8, cfg, torch.float32)
        stem_out.clear()
        logits = head(image_tokens(patches))
        return (logits, aux_head(stem_out[0].amax(1))) if stem_aux else logits

    return mods, forward


def run_variant(spec: str, data, val, args) -> dict:
    import torch
    import torch.nn.functional as F

    from model_runtime.small_model.trainer import TrainConfig, lr_at

    stem, _, lr = spec.partition("@")
    lr = float(lr or 1e-3)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    mods, forward = build(stem, dev, args.words, args.readout, stem_aux=args.stem_aux > 0, stem_only=args.stem_only,
                          task=args.task)
    if args.stem_aux > 0:
        main_forward = forward
        forward = lambda x: main_forward(x)[0]  # noqa: E731  (evaluation reads the main readout)
    opt = torch.optim.AdamW(mods.parameters(), lr=lr, weight_decay=0.05, betas=(0.9, 0.95))
    x_all, y_all = data
    vx, vy, vpx = val
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    rng = np.random.default_rng(1)
    schedule = TrainConfig(lr=lr, warmup_steps=50, min_lr_frac=0.05)
    curve = []

    def evaluate() -> tuple[float, np.ndarray, float]:
        """(accuracy, hit per crop, share of the digits read right: places of real digits, digits task only)."""
        preds = []
        with torch.no_grad(), amp:
            for i in range(0, len(vx), 250):
                preds.append(forward(torch.from_numpy(vx[i:i + 250]).to(dev)).argmax(-1).cpu().numpy())
        hit = np.concatenate(preds) == vy
        place = float(hit[vy != BLANK].mean()) if hit.ndim == 2 else float("nan")
        if hit.ndim == 2:  # a digit string is read when every place is (digits and blanks)
            hit = hit.all(1)
        return float(hit.mean()), hit, place

    t0 = time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            acc, hit, place = evaluate()
            curve.append({"step": step, "examples": step * args.batch_size, "val_acc": round(acc, 4)}
                         | ({"digit_acc": round(place, 4)} if args.task == "digits" else {}))
            print(f"  {spec:>12} step {step:5d} examples {step * args.batch_size:8d} val_acc {acc:.3f} "
                  + (f"digit_acc {place:.3f} " if args.task == "digits" else "")
                  + f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if step == args.steps:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, schedule, args.steps)
        idx = rng.integers(0, len(x_all), size=args.batch_size)
        x = torch.from_numpy(x_all[idx]).to(dev, non_blocking=True)
        y = torch.from_numpy(y_all[idx]).to(dev)
        with amp:
            if args.stem_aux > 0:
                logits, aux_logits = main_forward(x)
                loss = F.cross_entropy(logits.float(), y) + args.stem_aux * F.cross_entropy(aux_logits.float(), y)
            else:
                logits = forward(x).float()
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(mods.parameters(), 1.0)
        opt.step()
    buckets = {}
    for lo, hi in ((0, 12), (12, 18), (18, 26), (26, 99)):
        m = (vpx >= lo) & (vpx < hi)
        if m.any():
            buckets[f"{lo}-{hi}px"] = round(float(hit[m].mean()), 3)
    print(f"  {spec:>12} final val_acc {acc:.3f} by text height {buckets} "
          f"({time.perf_counter() - t0:.0f} s, {sum(p.numel() for p in mods.parameters()) / 1e6:.2f} M parameters)", flush=True)
    return {"variant": spec, "curve": curve, "final_val_acc": acc, "by_text_height": buckets,
            "wall_s": time.perf_counter() - t0}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_tower_reading", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", nargs="+", default=["linear@1e-3", "conv@1e-3"], metavar="STEM@LR")
    ap.add_argument("--train", type=int, default=100_000, help="pre-rendered training crops")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--readout", choices=("attn", "max", "chanmax"), default="attn",
                    help="over the crop's image tokens: learned-query attention, max of per-token logits, "
                         "or per-channel max then linear")
    ap.add_argument("--stem-aux", type=float, default=0.0,
                    help="weight of a second loss on a per-channel max over the stem's own tokens (conv/hybrid), "
                         "the word-presence loss; val accuracy is still the --readout's")
    ap.add_argument("--stem-only", action="store_true",
                    help="the readout reads the (conv/hybrid) stem's tokens directly: no tower, no connector")
    ap.add_argument("--val", type=int, default=2000, help="held-out crops")
    ap.add_argument("--task", choices=("words", "digits"), default="words",
                    help="what each crop holds: one of the sign words, or a string of 2-5 random digits read place by place")
    ap.add_argument("--words", type=int, default=32, help="the first N sign words only (an easier task)")
    ap.add_argument("--min-px", type=int, default=8)
    ap.add_argument("--max-px", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="rendering processes (default: all cores)")
    ap.add_argument("--out", type=Path, default=None, help="write the curves as JSON")
    args = ap.parse_args(argv)
    import os

    workers = args.workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    x, y, _ = render(0, args.train, args.min_px, args.max_px, workers, args.words, args.task)
    val = render(1, args.val, args.min_px, args.max_px, workers, args.words, args.task)
    print(f"rendered {args.train} + {args.val} crops in {time.perf_counter() - t0:.1f} s on {workers} processes", flush=True)
    results = [run_variant(v, (x, y), val, args) for v in args.variants]
    if args.out is not None:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
