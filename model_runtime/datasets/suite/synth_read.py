"""synth_read: large-print reading, a training-only task (never in the suite's val/test requests).

One word, value or label of the suite's own vocabularies (sign words, form values, chart numbers
and categories) printed large on a plain or coloured backdrop: the text's height is 20–60 % of
the image's, so every crop and the global view hold a legible part of it. Question: "what does
the text say?" (and variants); answer: the text.

Why it exists: the suite's reading questions ask for small print in a cluttered scene, where a
model trained from scratch must learn *where* to look and *what* a word is at once, and a model
learns neither while the other is missing (benchmarks/RESULTS.md, "Where reading fails"). When
the text fills the image, any readout of the image tokens sees the word, so the model learns
what words look like first; Molmo's own data mix has the counterpart in PixMo-Docs and its other
synthetic text-rich images. It is a training-stream task only: ``make_suite`` writes the six
evaluation tasks, and ``render_example`` refuses it outside the ``train`` and ``val`` splits.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

from . import drawing as dr
from .example import Example
from .synth_chart import CATEGORY_SETS
from .synth_doc import FIELDS

TEMPLATES = ("what does the text say?", "what is written in the image?", "what word is shown?",
             "read the text in the image.")


def _text(rng: np.random.Generator) -> tuple[str, str]:
    """(text, source): a sign word, a form value, a chart value or a chart category."""
    source = dr.choice(rng, ("sign", "sign", "form", "chart_value", "chart_label"))
    if source == "sign":
        return dr.choice(rng, dr.SIGN_WORDS), source
    if source == "form":
        return FIELDS[dr.choice(rng, tuple(FIELDS))](rng), source
    if source == "chart_value":
        return str(5 * int(rng.integers(1, 21))), source
    return dr.choice(rng, dr.choice(rng, CATEGORY_SETS)), source


def render(rng: np.random.Generator, *, split: str, index: int, seed: int,
           pick: Callable[[np.random.Generator], tuple[str, str]] = _text, task: str = "synth_read") -> Example:
    """One large-print example; ``pick`` draws (text, source) after the image size (``synth_digits`` passes its own)."""
    w, h = dr.image_size(rng, min_side=100, max_side=640, aspect=(0.5, 2.0))
    text, source = pick(rng)
    if rng.random() < 0.5:
        bg = dr.pastel(rng, 120, 250)
    else:
        bg = dr.COLORS[dr.choice(rng, dr.COLOR_NAMES)]
    img = Image.new("RGB", (w, h), bg)
    draw = dr.GlyphDraw(img)
    px = int(h * rng.uniform(0.2, 0.6))
    f = dr.fit_font(dr.choice(rng, ("sans", "sans_bold", "serif", "mono")), text, px, w * 0.9, min_size=8)
    dr.draw_anywhere(draw, rng, (w, h), text, f, dr.ink_for(bg))
    return Example(
        task=task, image=np.asarray(img), question=dr.choice(rng, TEMPLATES), answers=[text] * 10,
        meta={"image_w": w, "image_h": h, "text_px": f.size, "n_objects": 1, "source": source},
        caption=f"the image says {text}.",
        glyph_text="".join(draw.glyph_chars), glyph_boxes=draw.glyph_boxes(),
    )
