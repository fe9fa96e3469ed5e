"""synth_chart_find: find a category on a chart by its printed name, a training-only task.

The charts of :mod:`.synth_chart` (``synth_chart.draw_chart``), asked where a named category is:

==================  =========================================================  =======
question kind       example                                                    answer
==================  =========================================================  =======
``position``        "Counting from the left, which bar is Pears?"              3
``presence``        "Is there a bar for Lemons?" (half of them not drawn)      yes/no
``next``            "Counting from the left, which bar comes right after Pears?"  a label
==================  =========================================================  =======

Why it exists: the twenty-second run's checkpoint reads a bar by its place (the value of the n-th
bar: 0.55 on :mod:`.synth_chart_bind`'s questions, chance 0.26) but not by its printed name (a named
category's value: 0.24, chance 0.27), so synth_chart's value questions score what a random pick
among the chart's printed values would (benchmarks/RESULTS.md, "Twenty-second run"). What is
missing is the match between a word of the question and the same word printed in the image; these
questions ask for that match alone, with the place as the answer (what the model can already use),
or ask whether the word is printed at all (the absent name from the chart's own vocabulary, so the
answer turns on the word and not on its kind). Train and val streams only; no caption (as
:mod:`.synth_chart_bind`).
"""

from __future__ import annotations

import numpy as np

from . import drawing as dr
from .example import Example
from .synth_chart import draw_chart, question_example

QUESTION_KINDS = ("position", "position", "presence", "next")
POSITION_TEMPLATES = ("Counting from the {side}, which {mark} is {a}?", "What is the position of {a} from the {side}?")
PRESENCE_TEMPLATES = ("Is there a {mark} for {a}?", "Does the chart show {a}?")
NEXT_TEMPLATES = ("Counting from the {side}, which {mark} comes right after {a}?",)


def render(rng: np.random.Generator, *, split: str, index: int, seed: int) -> Example:
    chart = draw_chart(rng)
    labels, n = chart.labels, len(chart.labels)  # n >= 3: every chart has a category after its first
    mark, side = chart.mark, chart.side
    qk = dr.choice(rng, QUESTION_KINDS)
    if qk == "position":
        i = int(rng.integers(n))
        question, answer = dr.choice(rng, POSITION_TEMPLATES).format(side=side, mark=mark, a=labels[i]), str(i + 1)
    elif qk == "presence":
        absent = [c for c in chart.vocabulary if c not in labels]
        if absent and rng.random() < 0.5:
            name, answer = dr.choice(rng, tuple(absent)), "no"
        else:
            name, answer = labels[int(rng.integers(n))], "yes"
        question = dr.choice(rng, PRESENCE_TEMPLATES).format(mark=mark, a=name)
    else:
        i = int(rng.integers(n - 1))
        question = dr.choice(rng, NEXT_TEMPLATES).format(side=side, mark=mark, a=labels[i])
        answer = labels[i + 1]
    return question_example(chart, "synth_chart_find", question, answer, qk, "number" if qk == "position" else "label")
