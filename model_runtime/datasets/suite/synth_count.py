"""synth_count: TallyQA-like counting of colored shapes among distractors.

1–6 target objects (a color + shape, a shape of any color, or a color of any shape) among
0–10 distractors that do not match, with object size (5–48 px) and clutter varying per image:
small, crowded objects need a fine crop tier to be counted. Objects never overlap (rejection
sampling); when the page is too full the count is what was actually placed. Answer: the count
as a digit string ("3"), scored with ``exact_match``. Counts stop at 6 (TallyQA's go higher)
because the small model this suite trains counted no better than its prior over 0–12 after
270 k examples (benchmarks/RESULTS.md, "Second H200 run").
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from . import drawing as dr
from .example import Example

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles",
          "diamond": "diamonds", "star": "stars"}
OBJ_COLORS: tuple[str, ...] = ("red", "blue", "green", "yellow", "orange", "purple", "black")
TEMPLATES = ("How many {what} are there?", "How many {what} are in the image?",
             "Count the {what}.", "How many {what} can you see?")


def _polygon(shape: str, x: float, y: float, r: float, rot: float) -> list[tuple[float, float]]:
    if shape == "square":
        k, off = 4, math.pi / 4 + rot
    elif shape == "diamond":
        k, off = 4, 0.0
    elif shape == "triangle":
        k, off = 3, -math.pi / 2 + rot
    else:  # star: 10 points, alternating radii
        return [(x + (r if i % 2 == 0 else r * 0.45) * math.cos(-math.pi / 2 + rot + i * math.pi / 5),
                 y + (r if i % 2 == 0 else r * 0.45) * math.sin(-math.pi / 2 + rot + i * math.pi / 5))
                for i in range(10)]
    return [(x + r * math.cos(off + i * 2 * math.pi / k), y + r * math.sin(off + i * 2 * math.pi / k))
            for i in range(k)]


def render(rng: np.random.Generator, *, split: str, index: int, seed: int) -> Example:
    w, h = dr.image_size(rng, min_side=100, max_side=640, aspect=(0.5, 2.0))
    mode = dr.choice(rng, ("both", "both", "shape", "color"))
    t_shape, t_color = dr.choice(rng, SHAPES), dr.choice(rng, OBJ_COLORS)

    def matches(shape: str, color: str) -> bool:
        return ((mode == "color" or shape == t_shape) and (mode == "shape" or color == t_color))

    k = int(rng.integers(1, 7))
    n_distract = int(rng.integers(0, 11))
    size = dr.log_uniform_int(rng, 5, 48) * min(w, h) / 320  # object radius scales with the image
    size = float(np.clip(size, 3, min(w, h) / 6))
    bg = dr.pastel(rng, 215, 256)
    img = Image.new("RGB", (w, h), bg)
    draw = dr.GlyphDraw(img)
    for _ in range(int(rng.integers(0, 6))):  # background clutter lines
        draw.line([tuple(rng.uniform(0, [w, h])) for _ in range(2)], fill=dr.pastel(rng, 160, 220), width=1)

    placed: list[tuple[float, float, float]] = []
    kinds: list[tuple[str, str]] = []
    n_target = 0
    wanted = [True] * k + [False] * n_distract
    for is_target in wanted:
        if is_target:
            shape = t_shape if mode != "color" else dr.choice(rng, SHAPES)
            color = t_color if mode != "shape" else dr.choice(rng, OBJ_COLORS)
        else:
            for _ in range(20):
                shape, color = dr.choice(rng, SHAPES), dr.choice(rng, OBJ_COLORS)
                if not matches(shape, color):
                    break
            else:
                continue
        r = size * rng.uniform(0.75, 1.25)
        for _ in range(30):
            x, y = rng.uniform(r + 1, w - r - 1), rng.uniform(r + 1, h - r - 1)
            if all((x - px) ** 2 + (y - py) ** 2 > (r + pr + 2) ** 2 for px, py, pr in placed):
                break
        else:
            continue
        placed.append((x, y, r))
        kinds.append((shape, color))
        fill = dr.COLORS[color]
        if shape == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        else:
            draw.polygon(_polygon(shape, x, y, r, float(rng.uniform(-0.3, 0.3))), fill=fill)
        n_target += is_target

    if mode == "both":
        what = f"{t_color} {PLURAL[t_shape]}"
    elif mode == "shape":
        what = PLURAL[t_shape]
    else:
        what = f"{t_color} {dr.choice(rng, ('shapes', 'objects'))}"
    question = dr.choice(rng, TEMPLATES).format(what=what)
    return Example(
        task="synth_count", image=np.asarray(img), question=question, answers=[str(n_target)],
        meta={"image_w": w, "image_h": h, "n_objects": len(placed), "n_targets": n_target,
              "object_px": round(2 * size, 1), "answer_kind": "count", "question_kind": mode},
        caption=caption(kinds),
        glyph_text="".join(draw.glyph_chars), glyph_boxes=draw.glyph_boxes(),
    )


def caption(kinds: list[tuple[str, str]]) -> str:
    """How many of each colored shape: "5 shapes: 3 red circles, 1 blue star, 1 green star." """
    counts = {k: kinds.count(k) for k in sorted(set(kinds), key=lambda k: (SHAPES.index(k[0]), OBJ_COLORS.index(k[1])))}
    parts = [f"{n} {color} {PLURAL[shape] if n > 1 else shape}" for (shape, color), n in counts.items()]
    return f"{len(kinds)} shapes: " + ", ".join(parts) + "."
