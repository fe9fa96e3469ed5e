"""synth_words: print from large down to scene size, a training-only task (never in val/test requests).

One to three words, values or labels of the suite's own vocabularies (those of
:mod:`.synth_read`), each on a plate of its own colour, stacked in bands on a plain backdrop.
The print's height is drawn log-uniform from 4 % to 50 % of the image's (at least 8 px), so the
stream runs from :mod:`.synth_read`'s large print down to the 8–32-px signs of
:mod:`.synth_text`. One word: "what does the text say?"; several: the word on the plate of a
named colour, the way the scene-text questions name a sign.

Why it exists: a model trained on large print reads it and nothing smaller. The ninth run's
checkpoint read a sign word at 0.38-0.62 when it was 20-40 % of the image height, at 0.10-0.23 at
10 % and at 0.02 at 5 % (``benchmarks.bench_print_size``), and no scene text (benchmarks/RESULTS.md,
"Ninth H200 run"): what it learned is tied to words that span many image tokens. This task
links that to the one- or two-token words of the suite's scenes, and the colour questions
to finding one word among several. Like :mod:`.synth_read` it renders the ``train`` and ``val``
streams only (``render_example`` refuses ``test``).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from PIL import Image

from . import drawing as dr
from .example import Example
from .synth_read import TEMPLATES as SINGLE_TEMPLATES
from .synth_read import _text

PLATE_COLORS: tuple[str, ...] = ("red", "blue", "green", "yellow", "orange", "purple", "pink", "brown",
                                 "black", "white", "gray")
COLOR_TEMPLATES = (
    "what does the {color} sign say?",
    "what word is written on the {color} sign?",
    "what is written on the {color} sign?",
)
#: The print's height as a fraction of the image's: log-uniform over this range.
HEIGHT_FRACTION: tuple[float, float] = (0.04, 0.5)


def render(rng: np.random.Generator, *, split: str, index: int, seed: int,
           pick: Callable[[np.random.Generator], tuple[str, str]] = _text, task: str = "synth_words") -> Example:
    """One example; ``pick`` draws each plate's (text, source) (``synth_numbers`` passes its own)."""
    w, h = dr.image_size(rng, min_side=100, max_side=640, aspect=(0.5, 2.0))
    bg = dr.pastel(rng, 150, 250)
    img = Image.new("RGB", (w, h), bg)
    draw = dr.GlyphDraw(img)
    n = 1 if rng.random() < 0.4 else int(rng.integers(2, 4))
    frac = math.exp(rng.uniform(math.log(HEIGHT_FRACTION[0]), math.log(HEIGHT_FRACTION[1])))
    texts: list[str] = []
    while len(texts) < n:  # distinct texts, so a colour question has one answer
        t, _ = pick(rng)
        if t not in texts:
            texts.append(t)
    colors = dr.sample(rng, PLATE_COLORS, n)
    band = h / n
    plates = []
    for k, (text, color) in enumerate(zip(texts, colors)):
        pad_frac = 0.2
        px = max(8, int(round(h * frac * rng.uniform(0.8, 1.25))))
        px = min(px, max(8, int(band / (1 + 2 * pad_frac)) - 2))  # the plate fits its band
        pad = max(2, int(px * pad_frac))
        f = dr.fit_font(dr.choice(rng, ("sans", "sans_bold", "serif", "mono")), text, px, w * 0.9 - 2 * pad, min_size=6)
        sw, sh = f.getlength(text) + 2 * pad, f.size + 2 * pad
        x0 = rng.uniform(0, max(0.0, w - sw))
        y0 = k * band + rng.uniform(0, max(0.0, band - sh))
        fill = dr.COLORS[color]
        draw.rectangle((x0, y0, x0 + sw, y0 + sh), fill=fill)
        dr.draw_centered(draw, (x0 + sw / 2, y0 + sh / 2), text, f, dr.ink_for(fill))
        plates.append({"text": text, "color": color, "px": f.size})
    target = int(rng.integers(n))
    if n == 1:
        question = dr.choice(rng, SINGLE_TEMPLATES)
    else:
        question = dr.choice(rng, COLOR_TEMPLATES).format(color=plates[target]["color"])
    return Example(
        task=task, image=np.asarray(img), question=question, answers=[plates[target]["text"]] * 10,
        meta={"image_w": w, "image_h": h, "text_px": plates[target]["px"], "text_frac": round(frac, 4), "n_objects": n},
        caption=" ".join(f"the {p['color']} sign says {p['text']}." for p in plates),
        glyph_text="".join(draw.glyph_chars), glyph_boxes=draw.glyph_boxes(),
    )
