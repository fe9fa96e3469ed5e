"""synth_numbers: numbers from large down to document print, a training-only task (never in val/test requests).

:mod:`.synth_words`' plates and questions (one to three plates on a plain backdrop, the print's
height log-uniform over 4-50 % of the image's; "what does the text say?" or the text on the plate
of a named colour) with every plate's text a number: a document field's value other than the
names and cities (:data:`.synth_doc.FIELDS`: invoice, order, account and customer numbers, zip
codes, rooms, quantities, dates, amounts), a chart value (5-100 in steps of 5), or a string of
2-5 random digits.

Why it exists: the committed checkpoint reads a sign word of its 32-word vocabulary at 0.82 when
the word is 5 % of the image height, and a string of 2-5 random digits at 0.05 there and at 0.40
when it is 40 % of the height, where most of its wrong readings are the right digits in another
order (``168`` read as ``186``, ``07138`` as ``01783``; ``python -m benchmarks.bench_print_size --text
digits``, benchmarks/RESULTS.md, "Sixteenth H200 run"). A word is recognised whole; a number
must be read glyph by glyph, left to right, and :mod:`.synth_digits` shows digits only in large
print (20-60 % of the height, 49-146 crop pixels at the high tier, where documents print 10-22).
This task puts the same reading at every size down to the documents'. Like :mod:`.synth_words`
it renders the ``train`` and ``val`` streams only.
"""

from __future__ import annotations

import numpy as np

from . import drawing as dr
from . import synth_words
from .example import Example
from .synth_doc import FIELDS, _digits

#: Document fields whose values are numbers (the names and cities are closed word lists).
NUMBER_FIELDS: tuple[str, ...] = tuple(k for k in FIELDS if k not in ("Name", "City"))


def _number(rng: np.random.Generator) -> tuple[str, str]:
    """(text, source): a numeric document value, a chart value or a random digit string."""
    source = dr.choice(rng, ("form", "form", "chart_value", "digits"))
    if source == "form":
        return FIELDS[dr.choice(rng, NUMBER_FIELDS)](rng), source
    if source == "chart_value":
        return str(5 * int(rng.integers(1, 21))), source
    return _digits(rng, int(rng.integers(2, 6))), source


def render(rng: np.random.Generator, *, split: str, index: int, seed: int) -> Example:
    return synth_words.render(rng, split=split, index=index, seed=seed, pick=_number, task="synth_numbers")
