"""synth_diagram: AI2D/ScienceQA-like multiple choice over labeled arrow diagrams.

Three diagram families: a food web (organisms in trophic rows, arrows from food to eater, as
science textbooks draw energy flow), a life cycle (stages on a circle, arrows to the next stage)
and a process flow (steps left to right, wrapping into rows). Node labels are 8–20 px. Questions
ask what an arrow points to, which organism eats X / what X eats, or which stage comes after
or before X; four options (the correct one and three nodes that are wrong for the question).
The answer is the option letter (``multiple_choice`` also accepts the option text).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from . import drawing as dr
from .example import Example

LETTERS = "ABCD"
PRODUCERS = ("grass", "algae", "shrub", "oak tree", "seaweed", "wheat", "clover")
PRIMARY = ("rabbit", "grasshopper", "deer", "mouse", "caterpillar", "snail", "squirrel", "cricket")
SECONDARY = ("frog", "fox", "snake", "sparrow", "spider", "lizard", "raccoon", "toad")
TERTIARY = ("hawk", "owl", "wolf", "eagle", "bear", "coyote")
LIFE_CYCLES = (
    ("egg", "larva", "pupa", "adult"),
    ("egg", "caterpillar", "chrysalis", "butterfly"),
    ("egg", "tadpole", "froglet", "frog"),
    ("seed", "sprout", "seedling", "young plant", "flower"),
    ("egg", "nymph", "adult"),
    ("egg", "chick", "hen"),
    ("spore", "prothallus", "young fern", "mature fern"),
)
PROCESSES = (
    ("mix", "knead", "rise", "bake", "cool"),
    ("collect", "sort", "clean", "melt", "reshape"),
    ("mouth", "esophagus", "stomach", "small intestine", "large intestine"),
    ("evaporation", "condensation", "precipitation", "collection"),
    ("plant", "water", "grow", "harvest", "sell"),
    ("mining", "smelting", "casting", "rolling", "shipping"),
    ("weathering", "erosion", "deposition", "compaction", "cementation"),
)


def _clip(c: tuple[float, float], d: tuple[float, float], half: tuple[float, float]) -> float:
    """Distance along unit direction ``d`` from box centre ``c`` to the box edge."""
    tx = half[0] / abs(d[0]) if abs(d[0]) > 1e-6 else math.inf
    ty = half[1] / abs(d[1]) if abs(d[1]) > 1e-6 else math.inf
    return min(tx, ty)


def _arrow(draw: ImageDraw.ImageDraw, a, b, ha, hb, width: int, color) -> None:
    """An arrow from box a (centre, half-size ha) to box b, clipped to the boxes' edges."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    L = math.hypot(dx, dy) or 1.0
    ux, uy = dx / L, dy / L
    s = _clip(a, (ux, uy), ha) + 2
    e = L - _clip(b, (ux, uy), hb) - 2
    if e <= s:
        return
    p0 = (a[0] + ux * s, a[1] + uy * s)
    p1 = (a[0] + ux * e, a[1] + uy * e)
    draw.line((p0, p1), fill=color, width=width)
    head = 3 + 2.5 * width
    left = (p1[0] - ux * head - uy * head * 0.5, p1[1] - uy * head + ux * head * 0.5)
    right = (p1[0] - ux * head + uy * head * 0.5, p1[1] - uy * head - ux * head * 0.5)
    draw.polygon((p1, left, right), fill=color)


def _food_web(rng: np.random.Generator):
    levels = [dr.sample(rng, PRODUCERS, int(rng.integers(1, 3))),
              dr.sample(rng, PRIMARY, int(rng.integers(2, 4))),
              dr.sample(rng, SECONDARY, int(rng.integers(1, 3))),
              dr.sample(rng, TERTIARY, 1)]
    edges = []
    for lo, hi in zip(levels, levels[1:]):
        fed = set()
        for eater in hi:
            foods = dr.sample(rng, lo, int(rng.integers(1, min(2, len(lo)) + 1)))
            edges += [(food, eater) for food in foods]
            fed.update(foods)
        for food in lo:  # every organism below the top is eaten by something
            if food not in fed:
                edges.append((food, dr.choice(rng, hi)))
    return levels, edges


def _positions_rows(rows: list[list[str]], w: int, h: int, bottom_up: bool):
    pos = {}
    for r, row in enumerate(rows):
        y = h * (r + 0.5) / len(rows)
        if bottom_up:
            y = h - y
        for i, name in enumerate(row):
            pos[name] = (w * (i + 0.5) / len(row), y)
    return pos


def _options(rng: np.random.Generator, correct: str, wrong: list[str], pool: tuple[str, ...]):
    wrong = list(dict.fromkeys(x for x in wrong if x != correct))
    extra = list(dict.fromkeys(x for x in pool if x != correct and x not in wrong))
    picks = dr.sample(rng, wrong, min(3, len(wrong)))
    if len(picks) < 3:
        picks += dr.sample(rng, extra, 3 - len(picks))
    options = picks + [correct]
    order = rng.permutation(4)
    options = [options[int(i)] for i in order]
    return options, options.index(correct)


def render(rng: np.random.Generator, *, split: str, index: int, seed: int) -> Example:
    family = dr.choice(rng, ("food_web", "life_cycle", "process"))
    w, h = dr.image_size(rng, min_side=160, max_side=640, aspect=(0.6, 2.0))
    px = dr.log_uniform_int(rng, 8, 20)
    face = dr.choice(rng, ("sans", "sans_bold", "serif"))
    if family == "food_web":
        levels, edges = _food_web(rng)
        nodes = [n for lv in levels for n in lv]
        pos = _positions_rows(levels, w, h, bottom_up=True)
        pool = PRODUCERS + PRIMARY + SECONDARY + TERTIARY
    elif family == "life_cycle":
        nodes = list(dr.choice(rng, LIFE_CYCLES))
        edges = [(nodes[i], nodes[(i + 1) % len(nodes)]) for i in range(len(nodes))]
        rot = rng.uniform(0, 2 * math.pi)
        pos = {n: (w / 2 + w * 0.32 * math.cos(rot + 2 * math.pi * i / len(nodes)),
                   h / 2 + h * 0.32 * math.sin(rot + 2 * math.pi * i / len(nodes)))
               for i, n in enumerate(nodes)}
        pool = tuple(s for c in LIFE_CYCLES for s in c)
    else:
        nodes = list(dr.choice(rng, PROCESSES))
        edges = list(zip(nodes, nodes[1:]))
        per_row = len(nodes) if w >= 1.3 * h else int(rng.integers(2, 4))
        rows = [nodes[i:i + per_row] for i in range(0, len(nodes), per_row)]
        pos = _positions_rows(rows, w, h, bottom_up=False)
        for r, row in enumerate(rows):  # snake layout: odd rows run right to left
            if r % 2:
                for i, name in enumerate(row):
                    pos[name] = (w * (per_row - i - 0.5) / per_row, pos[name][1])
        pool = tuple(s for c in PROCESSES for s in c)

    # one font for all labels, shrunk so the widest label fits its share of the width
    n_cols = max(sum(1 for p in pos.values() if abs(p[1] - y) < 1) for y in {p[1] for p in pos.values()})
    if family == "life_cycle":
        n_cols = 3  # labels on a circle: about a third of the width each
    n_rows = 3 if family == "life_cycle" else len({round(p[1]) for p in pos.values()})
    px = max(6, min(px, int(h / n_rows * 0.3)))  # leave room between rows for the arrows
    widest = max(nodes, key=lambda s: dr.font(face, px).getlength(s))
    f = dr.fit_font(face, widest, px, w / max(n_cols, 1) * 0.85 - 8, min_size=6)
    px = f.size
    bg = (255, 255, 255) if rng.random() < 0.6 else dr.pastel(rng, 225, 256)
    img = Image.new("RGB", (w, h), bg)
    draw = dr.GlyphDraw(img)
    box_fill = dr.COLORS[dr.choice(rng, ("yellow", "green", "blue", "orange", "pink", "white"))]
    box_fill = tuple(int(0.35 * c + 0.65 * 255) for c in box_fill)
    half = {n: (f.getlength(n) / 2 + px * 0.5, px * 0.9) for n in nodes}
    width = max(1, px // 8)
    for a, b in edges:
        _arrow(draw, pos[a], pos[b], half[a], half[b], width, (40, 40, 40))
    for n in nodes:
        x, y = pos[n]
        hw, hh = half[n]
        draw.rounded_rectangle((x - hw, y - hh, x + hw, y + hh), radius=int(hh / 2), fill=box_fill,
                               outline=(60, 60, 60))
        dr.draw_centered(draw, (x, y), n, f, (15, 15, 15))

    succ = {n: [b for a, b in edges if a == n] for n in nodes}
    pred = {n: [a for a, b in edges if b == n] for n in nodes}
    kinds = ["arrow"]
    if family == "food_web":
        kinds += ["eats", "eaten_by"]
    else:
        kinds += ["after", "before"]
    # keep only question kinds with a node whose answer is unique
    candidates = []
    for kind in kinds:
        for n in nodes:
            rel = pred[n] if kind in ("before", "eaten_by") else succ[n]
            if len(rel) == 1:
                candidates.append((kind, n, rel[0]))
    kind, x, correct = candidates[int(rng.integers(len(candidates)))]
    stage = "organism" if family == "food_web" else ("stage" if family == "life_cycle" else "step")
    if kind == "arrow":
        question = dr.choice(rng, ("What does the arrow from {x} point to?",
                                   "The arrow starting at {x} leads to which {s}?",
                                   "Where does the arrow from {x} go?")).format(x=x, s=stage)
        wrong = [n for n in nodes if n != x and n not in succ[x]]
    elif kind == "eats":  # succ[x] = the one organism that eats x
        question = dr.choice(rng, ("Which organism eats {x}?", "What eats {x} in this food web?",
                                   "According to the diagram, which animal feeds on {x}?")).format(x=x)
        wrong = [n for n in nodes if n != x and n not in succ[x]]
    elif kind == "eaten_by":  # pred[x] = the one food of x
        question = dr.choice(rng, ("What does {x} eat?", "Which organism is eaten by {x}?",
                                   "In this food web, what is the food of {x}?")).format(x=x)
        wrong = [n for n in nodes if n != x and n not in pred[x]]
    elif kind == "after":
        question = dr.choice(rng, ("What comes after {x}?", "Which {s} follows {x}?",
                                   "What is the next {s} after {x}?")).format(x=x, s=stage)
        wrong = [n for n in nodes if n != x and n not in succ[x]]
    else:
        question = dr.choice(rng, ("What comes before {x}?", "Which {s} comes just before {x}?",
                                   "What is the {s} before {x}?")).format(x=x, s=stage)
        wrong = [n for n in nodes if n != x and n not in pred[x]]
    options, answer_idx = _options(rng, correct, wrong, pool)
    return Example(
        task="synth_diagram", image=np.asarray(img), question=question,
        answers=[LETTERS[answer_idx]], options=options, answer_idx=answer_idx,
        meta={"image_w": w, "image_h": h, "text_px": px, "n_objects": len(nodes),
              "n_arrows": len(edges), "diagram_kind": family, "question_kind": kind,
              "answer_kind": "option", "answer_text": correct},
        caption=f"a {family.replace('_', ' ')} diagram. " + " ".join(f"{a} points to {b}." for a, b in edges),
        glyph_text="".join(draw.glyph_chars), glyph_boxes=draw.glyph_boxes(),
    )
