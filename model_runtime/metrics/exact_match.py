"""Normalised exact match (TallyQA, GQA).

Both prediction and references are normalised by :func:`normalize_exact` and compared for
equality; the score is 1.0 if any reference matches, else 0.0. Normalisation:

1. lower-case and strip;
2. a comma between two digits is deleted (``"1,000"`` → ``"1000"``);
3. every other ASCII punctuation character (``string.punctuation``) is deleted, except a
   period between two digits (``"3.5"`` keeps its period, ``"cat."`` loses it), so decimals
   do not collapse into integers;
4. the articles ``a``, ``an``, ``the`` are dropped as whole words;
5. whitespace runs collapse to one space.

Number words are *not* mapped to digits (``"two"`` ≠ ``"2"``), unlike VQA accuracy: GQA and
TallyQA answers are compared as their official scripts do, by string equality; the prompt
asks for a number for TallyQA.
"""

from __future__ import annotations

import re
import string
from typing import Sequence

_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d)")
_DIGIT_PERIOD = re.compile(r"(?<=\d)\.(?=\d)")
_PUNCT_EXCEPT_PERIOD = re.compile("[" + re.escape(string.punctuation.replace(".", "")) + "]")
_ARTICLES = frozenset({"a", "an", "the"})
_PLACEHOLDER = "\x00"  # protects decimal points while other periods are removed


def normalize_exact(text: str) -> str:
    """The normalisation described in the module docstring."""
    text = _DIGIT_COMMA.sub("", text.lower().strip())
    text = _DIGIT_PERIOD.sub(_PLACEHOLDER, text)
    text = _PUNCT_EXCEPT_PERIOD.sub("", text).replace(".", "").replace(_PLACEHOLDER, ".")
    return " ".join(w for w in text.split() if w not in _ARTICLES)


def exact_match(prediction: str, references: Sequence[str] | str, **_: object) -> float:
    """1.0 if the normalised prediction equals any normalised reference, else 0.0.

    Raises:
        ValueError: no references.
    """
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("exact_match needs at least one reference answer, got none")
    pred = normalize_exact(prediction)
    return 1.0 if any(normalize_exact(str(r)) == pred for r in refs) else 0.0
