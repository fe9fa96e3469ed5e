"""Do a checkpoint's image tokens carry the digits under them? Linear probes on what the language model receives (prints figures).

``python -m benchmarks.probe_digit_tokens --model CKPT [--sizes 12 16 24 40] [--images 400] [--seed 0] [--out JSON]``

Each image is exactly one crop (``image_size`` px square, 168 for ``MolmoeConfig.small``), so
the global view holds it unresized: a string of 3-5 random digits in a sans face at a print size
from ``--sizes`` (crop pixels; the documents' median at the high tier is about 15), on a white or
pastel backdrop. Each digit's box is known from the font's advance widths. The global view's
image tokens (``tokens_per_side``², each pooling 2 × 2 patches) are taken where the language
model receives them (after the connector); a token is labelled by the digits whose boxes have
their centre in it (at small print a token holds several).

Ridge probes (standardised features, one-hot targets, closed form; the penalty chosen on a fifth
of the training images) are fitted on 80 % of the images and scored on the rest, per print size:

* ``first`` / ``last``: the token's leftmost / rightmost digit (10 classes, chance ≈ 0.1; the two
  differ where a token holds several digits, so both right means the token keeps their order);
* ``index``: the leftmost digit's place in the string (first, second, ...);
* ``left``: the digit left of it, or none for the first digit of the string (11 classes), the
  context a reader needs to go on from one digit to the next.

The same probes on the token's raw pixels (its 2p × 2p × 3 block) and on the same architecture at
its initial weights (``--init-seed``) are the baselines: above them, the trained tower has learned
the feature. Why: the small model reads a 32-word sign vocabulary at 5 % of the image height but a
2-5-digit string at that height 0.05 of the time (``benchmarks.bench_print_size --text digits``);
this says whether the digits are lost in the tower or in the language model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

TARGETS: tuple[str, ...] = ("first", "last", "index", "left")


def render_digits(rng: np.random.Generator, side: int, px: int):
    """(image (side, side, 3) uint8, digits, boxes [(x0, y0, x1, y1)] per digit) of one string at ``px``."""
    from PIL import Image, ImageDraw

    from model_runtime.datasets.suite import drawing as dr

    n = int(rng.integers(3, 6))
    digits = "".join(str(int(d)) for d in rng.integers(0, 10, size=n))
    f = dr.font("sans", px)
    while f.getlength(digits) > side - 4 and px > 6:
        px -= 1
        f = dr.font("sans", px)
    bg = (255, 255, 255) if rng.random() < 0.5 else dr.pastel(rng, 200, 256)
    img = Image.new("RGB", (side, side), bg)
    width = f.getlength(digits)
    _, top, _, bottom = f.getbbox(digits)
    x0 = float(rng.uniform(2, max(2.0, side - 2 - width)))
    y0 = float(rng.uniform(2 - top, max(2.0 - top, side - 2 - bottom)))
    ImageDraw.Draw(img).text((x0, y0), digits, font=f, fill=(20, 20, 20))
    boxes = [(x0 + f.getlength(digits[:i]), y0 + top, x0 + f.getlength(digits[: i + 1]), y0 + bottom)
             for i in range(n)]
    return np.asarray(img), digits, boxes


def token_labels(digits: str, boxes, tokens_per_side: int, token_px: int) -> list[tuple[int, int, int, int, int]]:
    """(token, first, last, index, left) for each token holding the centre of at least one digit's box:
    the leftmost and rightmost of its digits, the leftmost one's place in the string, and the digit
    to that one's left (10 for none)."""
    held: dict[int, list[int]] = {}
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        r = min(tokens_per_side - 1, int((y0 + y1) / 2 // token_px))
        c = min(tokens_per_side - 1, int((x0 + x1) / 2 // token_px))
        held.setdefault(r * tokens_per_side + c, []).append(i)
    return [(tok, int(digits[ix[0]]), int(digits[ix[-1]]), ix[0], int(digits[ix[0] - 1]) if ix[0] else 10)
            for tok, ix in sorted(held.items())]


def ridge_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                groups: np.ndarray, n_classes: int) -> float:
    """Test accuracy of a one-hot ridge classifier; the penalty picked on the last fifth of the training groups."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    xtr, xte = (x_train - mu) / sd, (x_test - mu) / sd
    xtr, xte = np.hstack([xtr, np.ones((len(xtr), 1))]), np.hstack([xte, np.ones((len(xte), 1))])
    cut = np.quantile(groups, 0.8)
    fit, val = groups < cut, groups >= cut

    def solve(x, y, lam):
        t = np.eye(n_classes)[y]
        return np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ t)

    lams = (1e-1, 1.0, 10.0, 100.0, 1000.0)
    best = max(lams, key=lambda lam: float(np.mean((xtr[val] @ solve(xtr[fit], y_train[fit], lam)).argmax(1) == y_train[val])))
    return float(np.mean((xte @ solve(xtr, y_train, best)).argmax(1) == y_test))


def collect(models: dict[str, torch.nn.Module], sizes: Sequence[int], images: int,
            seed: int) -> dict[int, dict[str, np.ndarray]]:
    """Per print size: each model's token features (under its name), the raw token pixels
    (``pixels``), the labels and the image each token came from. The images are rendered once and
    fed to every model (all of one config)."""
    import torch

    first = next(iter(models.values()))
    cfg = first.config
    side, t = cfg.image_size, cfg.tokens_per_side
    token_px = 2 * cfg.patch_size
    pre = first.preprocessor
    data = {}
    for px in sizes:
        rng = np.random.default_rng([seed, px])
        patches, masks, pixels, rows = [], [], [], []
        for k in range(images):
            img, digits, boxes = render_digits(rng, side, px)
            inputs = pre(img, 1)
            patches.append(inputs.patches[0])
            masks.append(inputs.image_masks[0])
            pixels.append(img.astype(np.float32) / 255.0)
            rows += [(k, *lab) for lab in token_labels(digits, boxes, t, token_px)]
        lab = np.asarray(rows)
        img_idx, tok = lab[:, 0], lab[:, 1]

        def token_pixels(k: int, j: int) -> np.ndarray:
            r, c = divmod(int(j), t)
            return pixels[k][r * token_px:(r + 1) * token_px, c * token_px:(c + 1) * token_px].reshape(-1)

        data[px] = {"pixels": np.stack([token_pixels(k, j) for k, j in zip(img_idx, tok)]), "image": img_idx,
                    "first": lab[:, 2], "last": lab[:, 3], "index": lab[:, 4], "left": lab[:, 5]}
        for name, model in models.items():
            feats = []
            with torch.no_grad():
                for i in range(0, images, 64):
                    p = torch.from_numpy(np.stack(patches[i: i + 64])).to(model.device, model.dtype)
                    m = torch.from_numpy(np.stack(masks[i: i + 64])).to(model.device, model.dtype)
                    feats.append(model.image_features(p, m).float().cpu().numpy())
            data[px][name] = np.concatenate(feats)[img_idx, tok]
    return data


def probe_table(data: dict[int, dict[str, np.ndarray]], images: int, sources: dict[str, str]) -> dict:
    """{source: {size: {target: accuracy}}} plus the labelled-token counts."""
    n_classes = {"first": 10, "last": 10, "index": 5, "left": 11}
    table: dict = {name: {} for name in sources}
    counts = {}
    for px, d in data.items():
        train = d["image"] < int(images * 0.8)
        counts[px] = int(len(d["image"]))
        for name, key in sources.items():
            x = d[key]
            table[name][px] = {target: ridge_probe(x[train], d[target][train], x[~train], d[target][~train],
                                                   d["image"][train], n_classes[target]) for target in TARGETS}
    return {"accuracy": table, "tokens": counts}


def print_probe_rows(accuracy: dict, sizes: Sequence[int], header: str, width: int) -> None:
    """Print a probe table ({source: {size: {target: accuracy}}}): a header line, then one row per source and target."""
    print(f"{header:>{width}} {'target':>6} | " + " | ".join(f"{px:>4d} px" for px in sizes))
    for name, by_px in accuracy.items():
        for target in TARGETS:
            print(f"{name:>{width}} {target:>6} | " + " | ".join(f"{by_px[px][target]:>7.2f}" for px in sizes))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.probe_digit_tokens", description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="checkpoint folder")
    ap.add_argument("--sizes", type=int, nargs="+", default=[12, 16, 24, 40], help="print sizes, crop pixels")
    ap.add_argument("--images", type=int, default=400, help="images per size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init-seed", type=int, default=0, help="seed of the untrained baseline's weights")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None, help="JSON of the table")
    args = ap.parse_args(argv)
    if args.images < 10:
        raise SystemExit(f"probe_digit_tokens: --images must be >= 10, got {args.images}")
    if not all(6 <= s <= 160 for s in args.sizes):
        raise SystemExit(f"probe_digit_tokens: --sizes must be in 6..160 crop pixels, got {args.sizes}")

    import torch

    from model_runtime.molmoe.checkpoint import load_molmoe_checkpoint
    from model_runtime.molmoe.model import MolmoeModel

    trained, _ = load_molmoe_checkpoint(args.model, device=args.device, dtype=torch.float32)
    torch.manual_seed(args.init_seed)
    untrained = MolmoeModel(trained.config).to(args.device).eval()
    data = collect({"features": trained, "untrained": untrained}, args.sizes, args.images, args.seed)
    rep = probe_table(data, args.images, {"trained tokens": "features", "untrained tokens": "untrained",
                                          "token pixels": "pixels"})
    rep.update(model=str(args.model), images=args.images, seed=args.seed)
    print(f"linear probes on the global view's image tokens ({args.images} images per size, 80/20 by image; model {args.model})")
    print_probe_rows(rep["accuracy"], args.sizes, "source", 17)
    print(f"{'labelled tokens':>24} | " + " | ".join(f"{rep['tokens'][px]:>7d}" for px in args.sizes))
    if args.out:
        args.out.write_text(json.dumps(rep, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
