"""synth_digits: large-print form values only, a training-only task (never in val/test requests).

:mod:`.synth_read`'s images, text and questions with the text always one of the document
fields' values (:data:`.synth_doc.FIELDS`: invoice, order and account numbers, zip codes, dates,
amounts, customer ids, and the names and cities of its closed lists), i.e. mostly strings of
2-5 random digits.

Why it exists: the document task waits on reading such strings exactly. The twelfth H200 run's
checkpoint read large-print sign words at 0.98 and chart values at 0.99, but form values at 0.17
(benchmarks/RESULTS.md, "Twelfth H200 run"), with a fifth of ``synth_read`` on them; this task
puts a whole stream on them, to measure how fast a targeted stream teaches them. Like
:mod:`.synth_read` it renders the ``train`` and ``val`` streams only.
"""

from __future__ import annotations

import numpy as np

from . import drawing as dr
from . import synth_read
from .example import Example
from .synth_doc import FIELDS


def _form_value(rng: np.random.Generator) -> tuple[str, str]:
    return FIELDS[dr.choice(rng, tuple(FIELDS))](rng), "form"


def render(rng: np.random.Generator, *, split: str, index: int, seed: int) -> Example:
    return synth_read.render(rng, split=split, index=index, seed=seed, pick=_form_value, task="synth_digits")
