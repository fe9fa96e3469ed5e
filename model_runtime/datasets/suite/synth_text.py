"""synth_text: TextVQA-like scene text reading.

A scene (solid backdrop with clutter rectangles) holds 1–3 colored signs, labels or boxes laid
out on a grid, each carrying one word of the closed vocabulary :data:`drawing.SIGN_WORDS` in a
sans or bold sans face. The question names one sign by its color or its grid position ("what
does the sign in the top left say?"). Text height is drawn log-uniform over 8–32 px, so small
text is legible only at the high crop tier while large text reads at every tier; that spread is
the task's difficulty.
Answers are the gold word repeated 10 times (VQA sets have 10 annotators; ``vqa_score``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from . import drawing as dr
from .example import Example

KINDS: tuple[str, ...] = ("sign", "label", "box")
SIGN_COLORS: tuple[str, ...] = ("red", "blue", "green", "yellow", "orange", "purple", "pink",
                                "brown", "black", "white", "gray")
_ROW_NAMES = {1: ("",), 2: ("top", "bottom"), 3: ("top", "middle", "bottom")}
_COL_NAMES = {1: ("",), 2: ("left", "right"), 3: ("left", "center", "right")}

COLOR_TEMPLATES = (
    "what word is written on the {color} {kind}?",
    "what does the {color} {kind} say?",
    "what is written on the {color} {kind}?",
    "what text appears on the {color} {kind}?",
)
POSITION_TEMPLATES = (
    "what does the {kind} {pos} say?",
    "what word is on the {kind} {pos}?",
    "what is written on the {kind} {pos}?",
)


def _grid(rng: np.random.Generator, w: int, h: int) -> tuple[int, int]:
    """Rows and columns of the sign grid, following the image's aspect (at least two cells)."""
    if w >= 1.4 * h:
        return int(dr.choice(rng, (1, 2))), int(dr.choice(rng, (2, 3)))
    if h >= 1.4 * w:
        return int(dr.choice(rng, (2, 3))), int(dr.choice(rng, (1, 2)))
    return dr.choice(rng, ((2, 2), (1, 2), (2, 1), (2, 3), (3, 2)))


def _position(r: int, c: int, rows: int, cols: int) -> str:
    """How a question names grid cell (r, c): "on the left", "at the top", "in the top left"."""
    words = [w for w in (_ROW_NAMES[rows][r], _COL_NAMES[cols][c]) if w]
    if words in (["middle", "center"], ["center"], ["middle"]):
        return "in the center" if words != ["middle"] else "in the middle"
    if len(words) == 1:
        return ("on the " if words[0] in ("left", "right") else "at the ") + words[0]
    return "in the " + " ".join(words)


def render(rng: np.random.Generator, *, split: str, index: int, seed: int) -> Example:
    w, h = dr.image_size(rng, min_side=100, max_side=640, aspect=(0.5, 2.0))
    bg = dr.pastel(rng, 120, 250)
    img = Image.new("RGB", (w, h), bg)
    draw = dr.GlyphDraw(img)
    for _ in range(int(rng.integers(0, 5))):  # clutter: buildings, windows, shadows
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(10, max(11, w // 2))), y0 + int(rng.integers(10, max(11, h // 2)))
        draw.rectangle((x0, y0, x1, y1), fill=dr.pastel(rng, 60, 240))

    rows, cols = _grid(rng, w, h)
    cells = [(r, c) for r in range(rows) for c in range(cols)]
    n = int(rng.integers(1, min(3, len(cells)) + 1))
    used = dr.sample(rng, cells, n)
    colors = dr.sample(rng, SIGN_COLORS, n)
    words = dr.sample(rng, dr.SIGN_WORDS, n)
    base_px = dr.log_uniform_int(rng, 8, 32)
    cw, ch = w / cols, h / rows

    signs = []
    for (r, c), color, word in zip(used, colors, words):
        kind = dr.choice(rng, KINDS)
        face = dr.choice(rng, ("sans", "sans_bold"))
        px = int(np.clip(round(base_px * rng.uniform(0.8, 1.25)), 8, 32))
        pad = max(2, px // 3)
        f = dr.fit_font(face, word, min(px, int(ch * 0.7) - 2 * pad), cw * 0.9 - 2 * pad, min_size=6)
        tw = f.getlength(word)
        th = f.size
        sw, sh = tw + 2 * pad, th + 2 * pad
        x0 = c * cw + rng.uniform(0, max(0.0, cw - sw))
        y0 = r * ch + rng.uniform(0, max(0.0, ch - sh))
        box = (x0, y0, x0 + sw, y0 + sh)
        fill = dr.COLORS[color]
        if kind == "label":
            draw.rounded_rectangle(box, radius=pad, fill=fill, outline=(30, 30, 30))
        elif kind == "box":
            draw.rectangle(box, fill=fill, outline=(30, 30, 30), width=max(1, pad // 2))
        else:
            draw.rectangle(box, fill=fill)
            post_x = (box[0] + box[2]) / 2
            if box[3] + 2 < h:
                draw.line((post_x, box[3], post_x, min(h, box[3] + sh)), fill=(70, 70, 70), width=2)
        dr.draw_centered(draw, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), word, f, dr.ink_for(fill))
        signs.append({"word": word, "color": color, "kind": kind, "px": f.size, "pos": _position(r, c, rows, cols),
                      "cell": (r, c)})

    target = int(rng.integers(n))
    s = signs[target]
    positional = bool(s["pos"]) and rng.random() < 0.45
    if positional:
        question = dr.choice(rng, POSITION_TEMPLATES).format(kind=s["kind"], pos=s["pos"])
    else:
        question = dr.choice(rng, COLOR_TEMPLATES).format(color=s["color"], kind=s["kind"])
    return Example(
        task="synth_text", image=np.asarray(img), question=question, answers=[s["word"]] * 10,
        meta={"image_w": w, "image_h": h, "text_px": s["px"], "n_objects": n,
              "answer_kind": "word" if " " not in s["word"] else "phrase",
              "question_kind": "position" if positional else "color"},
        caption=caption(signs),
        glyph_text="".join(draw.glyph_chars), glyph_boxes=draw.glyph_boxes(),
    )


def caption(signs: list[dict]) -> str:
    """Every sign in reading order: "the red sign in the top left says apple. ..." """
    return " ".join(f"the {s['color']} {s['kind']} {s['pos']} says {s['word']}."
                    for s in sorted(signs, key=lambda s: s["cell"]))
