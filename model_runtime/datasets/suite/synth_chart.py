"""synth_chart: ChartQA-like reading of bar and line charts.

Vertical bars, horizontal bars or a line chart of 3–5 categories (from one small vocabulary per
chart, e.g. fruits or months) with distinct values 5–100 in steps of 5, axis ticks, and (mostly)
the values printed on or near the bars/points. Charts are landscape-leaning, text 8–16 px.
Questions: a category's value (number) or the highest/lowest category (label). Scored with
``relaxed_accuracy`` (5% tolerance on numbers).

ChartQA's arithmetic questions (differences) and free values 0–100 are left out: the small
model this suite trains read no chart value after 270 k examples (benchmarks/RESULTS.md,
"Second H200 run"), and value lookup is the part a crop tier can help or hurt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from . import drawing as dr
from .example import Example

CATEGORY_SETS: tuple[tuple[str, ...], ...] = (
    ("Apples", "Bananas", "Cherries", "Grapes", "Lemons", "Mangos", "Oranges", "Pears"),
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
    ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
    ("USA", "China", "India", "Brazil", "Japan", "France", "Kenya", "Mexico", "Canada"),
    ("Cars", "Buses", "Bikes", "Trains", "Planes", "Boats"),
    ("North", "South", "East", "West", "Central"),
    ("Alpha", "Beta", "Gamma", "Delta", "Omega", "Sigma", "Theta"),
    ("Cats", "Dogs", "Birds", "Fish", "Horses", "Rabbits"),
    ("2017", "2018", "2019", "2020", "2021", "2022", "2023"),
)
TITLES = ("Sales", "Votes", "Survey results", "Scores", "Usage share", "Visitors", "Production")
VALUE_TEMPLATES = ("What is the value of {a}?", "What value does {a} have?",
                   "How much is {a} in the chart?", "What is the value for {a}?")
MAX_TEMPLATES = ("Which category has the highest value?", "Which {noun} is the largest?",
                 "What is the label of the highest {mark}?")
MIN_TEMPLATES = ("Which category has the lowest value?", "Which {noun} is the smallest?",
                 "What is the label of the lowest {mark}?")
KINDS = ("vbar", "hbar", "line")


@dataclass
class Chart:
    """One drawn chart: the image, what it shows (categories in drawing order: left to right, or top
    to bottom for ``hbar``) and the drawing's print, before any question is asked of it."""

    image: Image.Image
    draw: dr.GlyphDraw
    kind: str
    title: str
    labels: list[str]
    values: list[int]
    text_px: int
    show_values: bool
    vocabulary: tuple[str, ...]  # the category set the labels were drawn from

    def caption(self) -> str:
        return f"{self.title.lower()}: " + ", ".join(f"{lab} {v}" for lab, v in zip(self.labels, self.values)) + "."

    @property
    def mark(self) -> str:
        """What a question calls one category's mark: a line chart's point, else a bar."""
        return "point" if self.kind == "line" else "bar"

    @property
    def side(self) -> str:
        """Where counting the marks starts: the top of a horizontal bar chart, else the left."""
        return "top" if self.kind == "hbar" else "left"


def draw_chart(rng: np.random.Generator) -> Chart:
    """Draw one chart (every random draw of the picture, in the order ``render`` has always made them)."""
    w, h = dr.image_size(rng, min_side=140, max_side=640, aspect=(0.9, 2.0))
    kind = dr.choice(rng, KINDS)
    n = int(rng.integers(3, 6))
    cats = dr.choice(rng, CATEGORY_SETS)
    n = min(n, len(cats))
    start = int(rng.integers(0, len(cats) - n + 1))
    labels = list(cats[start:start + n]) if rng.random() < 0.5 else dr.sample(rng, cats, n)
    values = [5 * int(v) for v in rng.choice(np.arange(1, 21), size=n, replace=False)]
    px = dr.log_uniform_int(rng, 8, 16)
    f = dr.font("sans", px)
    show_values = rng.random() < 0.9
    img = Image.new("RGB", (w, h), (255, 255, 255) if rng.random() < 0.7 else dr.pastel(rng, 230, 256))
    draw = dr.GlyphDraw(img)
    bar_color = dr.COLORS[dr.choice(rng, ("blue", "green", "orange", "purple", "red", "gray"))]
    ink = (30, 30, 30)

    title = dr.choice(rng, TITLES)
    tf = dr.fit_font("sans_bold", title, int(px * 1.3), w * 0.9)
    draw.text((w / 2, 2), title, font=tf, fill=ink, anchor="ma")
    top = 4 + tf.size * 1.4
    ticks = (0, 25, 50, 75, 100) if rng.random() < 0.5 else (0, 20, 40, 60, 80, 100)
    if kind == "hbar" and (w * 0.7) / len(ticks) < f.getlength("100") + 6:
        ticks = (0, 50, 100)  # keep tick labels apart on narrow charts
    if kind == "hbar":
        label_w = max(f.getlength(s) for s in labels) + 6
        x0, x1 = label_w + 4, w - 8 - f.getlength("100")
        y0, y1 = top + 2, h - px * 1.6 - 4
        draw.line((x0, y0, x0, y1), fill=ink)
        draw.line((x0, y1, x1, y1), fill=ink)
        for t in ticks:
            x = x0 + (x1 - x0) * t / 100
            draw.line((x, y1, x, y1 + 3), fill=ink)
            draw.text((x, y1 + 3), str(t), font=f, fill=ink, anchor="ma")
        slot = (y1 - y0) / n
        for i, (lab, v) in enumerate(zip(labels, values)):
            yc = y0 + slot * (i + 0.5)
            bh = slot * 0.7 / 2
            xe = x0 + (x1 - x0) * v / 100
            draw.rectangle((x0, yc - bh, max(x0 + 1, xe), yc + bh), fill=bar_color)
            draw.text((x0 - 4, yc), lab, font=f, fill=ink, anchor="rm")
            if show_values:
                draw.text((xe + 3, yc), str(v), font=f, fill=ink, anchor="lm")
    else:
        y_label_w = f.getlength("100") + 6
        x0, x1 = y_label_w + 4, w - 6
        y0, y1 = top + px * 1.4, h - px * 1.6 - 4
        slot = (x1 - x0) / n
        lf = dr.fit_font("sans", max(labels, key=f.getlength), px, slot * 0.95, min_size=5)
        draw.line((x0, y0, x0, y1), fill=ink)
        draw.line((x0, y1, x1, y1), fill=ink)
        for t in ticks:
            y = y1 - (y1 - y0) * t / 100
            draw.line((x0 - 3, y, x0, y), fill=ink)
            draw.text((x0 - 5, y), str(t), font=f, fill=ink, anchor="rm")
            if t and rng.random() < 0.5:
                draw.line((x0 + 1, y, x1, y), fill=(225, 225, 225))
        points = []
        for i, (lab, v) in enumerate(zip(labels, values)):
            xc = x0 + slot * (i + 0.5)
            yt = y1 - (y1 - y0) * v / 100
            draw.text((xc, y1 + 3), lab, font=lf, fill=ink, anchor="ma")
            if kind == "vbar":
                bw = slot * 0.7 / 2
                draw.rectangle((xc - bw, yt, xc + bw, y1), fill=bar_color)
            points.append((xc, yt))
            if show_values:
                draw.text((xc, yt - 3), str(v), font=f, fill=ink, anchor="md")
        if kind == "line":
            draw.line(points, fill=bar_color, width=2)
            r = max(2, px // 4)
            for xc, yt in points:
                draw.ellipse((xc - r, yt - r, xc + r, yt + r), fill=bar_color)
    return Chart(image=img, draw=draw, kind=kind, title=title, labels=labels, values=values, text_px=px,
                 show_values=show_values, vocabulary=cats)


def render(rng: np.random.Generator, *, split: str, index: int, seed: int) -> Example:
    chart = draw_chart(rng)
    labels, values, n = chart.labels, chart.values, len(chart.labels)
    qk = dr.choice(rng, ("value", "value", "max", "min"))
    noun = "category"
    if qk == "value":
        i = int(rng.integers(n))
        question, answer = dr.choice(rng, VALUE_TEMPLATES).format(a=labels[i]), str(values[i])
    else:
        i = int(np.argmax(values) if qk == "max" else np.argmin(values))
        tpl = dr.choice(rng, MAX_TEMPLATES if qk == "max" else MIN_TEMPLATES)
        question, answer = tpl.format(noun=noun, mark=chart.mark), labels[i]
    return example_of(chart, "synth_chart", question, answer, qk, "label" if qk in ("max", "min") else "number")


def example_of(chart: Chart, task: str, question: str, answer: str, question_kind: str, answer_kind: str) -> Example:
    """The :class:`Example` of a question asked of ``chart``."""
    w, h = chart.image.size
    return Example(
        task=task, image=np.asarray(chart.image), question=question, answers=[answer],
        meta={"image_w": w, "image_h": h, "text_px": chart.text_px, "n_objects": len(chart.labels),
              "chart_kind": chart.kind, "values_printed": chart.show_values,
              "answer_kind": answer_kind, "question_kind": question_kind},
        caption=chart.caption(),
        glyph_text="".join(chart.draw.glyph_chars), glyph_boxes=chart.draw.glyph_boxes(),
    )


def question_example(chart: Chart, task: str, question: str, answer: str, question_kind: str,
                     answer_kind: str) -> Example:
    """A training-only question about ``chart`` (``synth_chart_bind``, ``synth_chart_find``): no caption
    (synth_chart teaches the same charts' captions), and the chart's categories and values in ``meta`` (what the
    answers follow from; never written to a suite, whose synth_chart requests keep ``example_of``'s meta)."""
    ex = example_of(chart, task, question, answer, question_kind, answer_kind)
    ex.caption = None
    ex.meta.update(categories=list(chart.labels), values=list(chart.values))
    return ex
