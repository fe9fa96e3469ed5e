"""At which print size does a checkpoint read? Greedy accuracy on one word per image, by the word's height (prints figures).

``python -m benchmarks.bench_print_size --model CKPT [--fractions 0.05 0.1 0.2 0.4] [--per-fraction 48]
[--text words|digits] [--configs "tier=low|high,p=1,top_k=8,blocks=16"] [--device cpu]``

Each image (100-640-px sides, aspect 1:2-2:1, as in the task suite) holds one word of the suite's
sign vocabulary (``--text digits``: a string of 2-5 random digits, the documents' numbers) on a
pastel backdrop, its height a fixed fraction of the image's (at least 8 px;
shrunk only to fit the width), in a sans face; the question is the large-print task's ("what does
the text say?", ``suite.synth_read``). The same seed gives the same images for every checkpoint,
so two checkpoints' rows compare. The scene-text task asks about words of 8-32 px, i.e. a few
per cent of the image height: a model that reads only the upper rows reads no scene text
(benchmarks/RESULTS.md, "Ninth H200 run"). Images are written under ``--work`` (default: a
temporary folder).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

QUESTION = "what does the text say?"


TEXTS: tuple[str, ...] = ("words", "digits")


def render_word(rng: np.random.Generator, frac: float, text: str = "words"):
    """(image, word, text px): one sign word (or digit string) at ``frac`` of the image height."""
    from PIL import Image, ImageDraw

    from model_runtime.datasets.suite import drawing as dr

    w, h = dr.image_size(rng, min_side=100, max_side=640, aspect=(0.5, 2.0))
    bg = dr.pastel(rng, 120, 250)
    img = Image.new("RGB", (w, h), bg)
    if text == "digits":
        word = "".join(str(int(d)) for d in rng.integers(0, 10, size=int(rng.integers(2, 6))))
    else:
        word = dr.choice(rng, dr.SIGN_WORDS)
    f = dr.fit_font(dr.choice(rng, ("sans", "sans_bold")), word, max(8, int(h * frac)), w * 0.9, min_size=8)
    dr.draw_anywhere(ImageDraw.Draw(img), rng, (w, h), word, f, dr.ink_for(bg))
    return img, word, f.size


def is_reordering(prediction: str, answer: str) -> bool:
    """True when ``prediction`` holds exactly ``answer``'s characters in another order (``0686`` for ``8606``)."""
    pred = prediction.strip()
    return pred != answer and sorted(pred) == sorted(answer)


def make_requests(work: Path, fractions: Sequence[float], n: int, seed: int, text: str = "words") -> list:
    """Requests (dataset ``synth_read``, metric vqa_score) whose ids say their fraction: ``f0.10-i``."""
    from model_runtime.datasets.request_format import Request

    reqs = []
    for frac in fractions:
        for i in range(n):
            img, word, px = render_word(np.random.default_rng([seed, round(frac * 1000), i]), frac, text)
            path = work / f"f{frac:.2f}_{i}.png"
            img.save(path)
            reqs.append(Request(id=f"f{frac:.2f}-{i}", image=str(path), question=QUESTION, answers=[word] * 10,
                                metric="vqa_score", dataset="synth_read", split="val",
                                meta={"frac": frac, "text_px": px, "image_w": img.width, "image_h": img.height}))
    return reqs


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_print_size", description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="checkpoint folder")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4])
    ap.add_argument("--per-fraction", type=int, default=48)
    ap.add_argument("--text", choices=TEXTS, default="words", help="what is printed: a sign word or 2-5 digits")
    ap.add_argument("--configs", default="tier=low|high,p=1,top_k=8,blocks=16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--work", type=Path, default=None, help="folder for the images (default: temporary)")
    ap.add_argument("--out", type=Path, default=None, help="JSON of the table")
    args = ap.parse_args(argv)
    if not all(0 < f <= 1 for f in args.fractions):
        raise SystemExit(f"bench_print_size: --fractions must be in (0, 1], got {args.fractions}")
    if args.per_fraction < 1:
        raise SystemExit(f"bench_print_size: --per-fraction must be >= 1, got {args.per_fraction}")

    from cache.live_builder import cache_score, parse_config_selection
    from experiments.eval_model_grid import checkpoint_runtime
    from model_runtime.molmoe.shared_prefix import run_all_configs

    rt = checkpoint_runtime(args.model, args.device, max_new_tokens=8)
    ks = rt.knob_space
    configs = [int(c) for c in parse_config_selection(args.configs, ks)]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        reqs = make_requests(work, args.fractions, args.per_fraction, args.seed, args.text)
        res = run_all_configs(rt, reqs, configs, batch_size=64, return_sample_features=False, dense_decode=True)
    table, reordered = {}, {}
    for c in res.configs:
        name = str(ks.config(c))
        table[name], reordered[name] = {}, {}
        for frac in args.fractions:
            rows = [i for i, r in enumerate(reqs) if r.meta["frac"] == frac]
            table[name][f"{frac:g}"] = float(np.mean([cache_score("vqa_score", res.outcomes[i][c].score) for i in rows]))
            reordered[name][f"{frac:g}"] = float(np.mean(
                [is_reordering(res.outcomes[i][c].prediction, reqs[i].answers[0]) for i in rows]))
    px = {f"{frac:g}": float(np.median([r.meta["text_px"] for r in reqs if r.meta["frac"] == frac])) for frac in args.fractions}
    what = "one sign word" if args.text == "words" else "one 2-5-digit string"
    print(f"greedy accuracy, {what} per image ({args.per_fraction} images per height; model {args.model})")
    print(f"{'word height / image height':>28} | " + " | ".join(f"{f:>6g}" for f in args.fractions))
    print(f"{'median word height, px':>28} | " + " | ".join(f"{px[f'{f:g}']:>6.0f}" for f in args.fractions))
    for name, row in table.items():
        print(f"{name:>28} | " + " | ".join(f"{row[f'{f:g}']:>6.2f}" for f in args.fractions))
    if args.text == "digits":
        print("share read with the right digits in a wrong order:")
        for name, row in reordered.items():
            print(f"{name:>28} | " + " | ".join(f"{row[f'{f:g}']:>6.2f}" for f in args.fractions))
    if args.out:
        args.out.write_text(json.dumps({"model": str(args.model), "per_fraction": args.per_fraction, "text": args.text,
                                        "median_px": px, "accuracy": table,
                                        "right_digits_wrong_order": reordered}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
