"""synth_chart_bind: questions that bind a chart's values to its categories, a training-only task.

The charts of :mod:`.synth_chart` (the same drawing, ``synth_chart.draw_chart``), asked questions
that each tie one value to one category or one place:

==================  =======================================================  ======
question kind       example                                                  answer
==================  =======================================================  ======
``value``           "What is the value of Pears?" (synth_chart's own)        number
``reverse``         "Which category has the value 35?"                       label
``ordinal_value``   "What is the value of the second bar from the left?"     number
``ordinal_label``   "What is the label of the third point from the left?"    label
``compare``         "Which is larger, Pears or Apples?"                      label
==================  =======================================================  ======

Why it exists: the small model reads a chart's numbers and labels but, asked for one category's
value, answers another category's value or label: of v11's wrong chart answers 44 % were another
category's value and 41 % another category's label (benchmarks/RESULTS.md, "Twenty-first run").
synth_chart asks mostly one kind of binding (label → value); the reverse lookup, the ordinal
questions and the pairwise comparison ask the same tie from its other ends and through the bars'
places, the way ChartQA's human-written questions do. It renders in the ``train`` and ``val``
streams only; ``make_suite`` never writes it. Its examples carry no caption: the dense caption
of the same charts is taught through synth_chart, and every example here is a question.
"""

from __future__ import annotations

import numpy as np

from . import drawing as dr
from .example import Example
from .synth_chart import VALUE_TEMPLATES, draw_chart, question_example

QUESTION_KINDS = ("value", "reverse", "reverse", "ordinal_value", "ordinal_label", "compare")
ORDINALS = ("first", "second", "third", "fourth", "fifth")
REVERSE_TEMPLATES = ("Which category has the value {v}?", "Which {mark} shows {v}?",
                     "Which category has a value of {v}?")
ORDINAL_VALUE_TEMPLATES = ("What is the value of the {o} {mark} from the {side}?",)
ORDINAL_LABEL_TEMPLATES = ("What is the label of the {o} {mark} from the {side}?",
                           "Which category is the {o} {mark} from the {side}?")
COMPARE_TEMPLATES = ("Which is larger, {a} or {b}?", "Which has the higher value, {a} or {b}?",
                     "Which is smaller, {a} or {b}?", "Which has the lower value, {a} or {b}?")


def render(rng: np.random.Generator, *, split: str, index: int, seed: int) -> Example:
    chart = draw_chart(rng)
    labels, values, n = chart.labels, chart.values, len(chart.labels)
    mark, side = chart.mark, chart.side
    qk = dr.choice(rng, QUESTION_KINDS)
    i = int(rng.integers(n))
    if qk == "value":
        question, answer = dr.choice(rng, VALUE_TEMPLATES).format(a=labels[i]), str(values[i])
    elif qk == "reverse":
        question, answer = dr.choice(rng, REVERSE_TEMPLATES).format(v=values[i], mark=mark), labels[i]
    elif qk == "ordinal_value":
        question = dr.choice(rng, ORDINAL_VALUE_TEMPLATES).format(o=ORDINALS[i], mark=mark, side=side)
        answer = str(values[i])
    elif qk == "ordinal_label":
        question, answer = dr.choice(rng, ORDINAL_LABEL_TEMPLATES).format(o=ORDINALS[i], mark=mark, side=side), labels[i]
    else:
        j = int(rng.integers(n - 1))
        j += j >= i  # another category than i
        tpl = dr.choice(rng, COMPARE_TEMPLATES)
        larger = "larger" in tpl or "higher" in tpl
        pick = i if (values[i] > values[j]) == larger else j  # values are distinct
        question, answer = tpl.format(a=labels[i], b=labels[j]), labels[pick]
    return question_example(chart, "synth_chart_bind", question, answer, qk,
                            "number" if qk in ("value", "ordinal_value") else "label")
