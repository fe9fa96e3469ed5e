"""Answer extraction: from the model's generated text to the answer string that is scored.

Molmo's evaluation (``olmo/eval/evaluators.py``, ``VqaEval``) strips the decoded text, keeps
what follows ``"Answer:"`` when the model wrote one, and otherwise, when the text has several
lines, votes among its whitespace-normalised lines (the most frequent line, ties to the
earliest); a single line is whitespace-normalised. :func:`extract_answer` follows it with two
project rules: the ``"Answer:"`` marker is matched case-insensitively (``"answer:"``,
``"Short answer:"``), and the *first* non-empty line is kept (Molmo's vote equals the first
line unless a later line repeats more often; a 64-token generation cut short can repeat a
partial line, so the first line is the safer reading). Every metric receives this string when
it is called through :func:`model_runtime.metrics.score` (``extract=True``).
"""

from __future__ import annotations

import re

_ANSWER_MARKER = re.compile(r"answer\s*:", flags=re.IGNORECASE)


def extract_answer(text: str) -> str:
    """The answer in a generated text: after the first ``Answer:``, first non-empty line,
    whitespace collapsed and trimmed. ``""`` when nothing is left.

    >>> extract_answer("  Answer: two cats\\nBecause ...")
    'two cats'
    >>> extract_answer("\\n  the   red one \\n")
    'the red one'
    """
    text = text.strip()
    marker = _ANSWER_MARKER.search(text)
    if marker is not None:
        text = text[marker.end():]
    for line in text.splitlines():
        line = " ".join(line.split())
        if line:
            return line
    return ""
