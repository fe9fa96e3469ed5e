"""Multiple-choice scoring (ScienceQA, AI2D, MMBench-style): free text → option index.

:func:`select_option` maps a prediction to the index of one option, trying in order:

1. **exact option text**: the normalised prediction equals one option's normalised text
   (normalised = lower-case, whitespace collapsed, trailing ``.`` removed). This comes first
   because some option texts are letters themselves (AI2D's "which label is ..." questions
   have options ``"A"``, ``"B"``, ...), so ``"B"`` there means the option whose text is B;
2. **a letter**: ``"B"``, ``"(B)"``, ``"B."``, ``"B)"``, ``"B:"`` alone (any case), or an
   upper-case letter followed by one of ``.):`` and text (``"B. the dog"``, ``"(B) dog"``),
   or ``"answer is B"`` / ``"option (B)"``; the letter must name an existing option (A = 0);
3. **unique containment**: exactly one option's text occurs in the prediction as whole
   words; else, as Molmo's ``select_mc_option`` does, exactly one option contains the
   prediction;
4. **closest option** by Levenshtein distance between the normalised strings (ties go to the
   lowest index).

An empty prediction (after normalisation) that matches no option selects nothing (-1) rather
than the shortest option. The score is 1.0 when the selected index equals ``answer_idx``.
"""

from __future__ import annotations

import numbers
import re
import string
from typing import Sequence

from .edit_distance import levenshtein

_LETTER_ONLY = re.compile(r"^\(?([a-z])\)?[.:)]?$", flags=re.IGNORECASE)
_LETTER_WITH_TEXT = re.compile(r"^(?:\(([A-Z])\)|([A-Z])[.):])\s*\S")
_ANSWER_IS_LETTER = re.compile(r"\b(?:answer|option|choice)\s*(?:is\s*)?:?\s*\(?([A-Z])\b\)?")


def _norm(text: str) -> str:
    text = " ".join(text.lower().split())
    return text[:-1].rstrip() if text.endswith(".") else text


def _letter_index(letter: str, n_options: int) -> int | None:
    idx = ord(letter.upper()) - ord("A")
    return idx if 0 <= idx < n_options else None


def _contains_words(haystack: str, needle: str) -> bool:
    """``needle`` occurs in ``haystack`` not glued to letters/digits on either side."""
    if not needle:
        return False
    pattern = r"(?<![0-9a-z])" + re.escape(needle) + r"(?![0-9a-z])"
    return re.search(pattern, haystack) is not None


def select_option(prediction: str, options: Sequence[str]) -> int:
    """Index of the option the prediction names, or -1 for an empty prediction.

    Raises:
        ValueError: ``options`` is empty.
    """
    if len(options) == 0:
        raise ValueError("multiple choice needs at least one option, got none")
    opts = [_norm(str(o)) for o in options]
    raw = prediction.strip()
    pred = _norm(raw)
    for i, opt in enumerate(opts):
        if opt == pred:
            return i
    if not pred:
        return -1
    for match in (_LETTER_ONLY.match(raw), _LETTER_WITH_TEXT.match(raw),
                  _ANSWER_IS_LETTER.search(raw)):
        if match is not None:
            letter = next(g for g in match.groups() if g)
            idx = _letter_index(letter, len(opts))
            if idx is not None:
                return idx
    inside = [i for i, opt in enumerate(opts) if _contains_words(pred, opt)]
    if len(inside) == 1:
        return inside[0]
    stripped = pred.strip(string.punctuation + " ")
    containing = [i for i, opt in enumerate(opts) if stripped and stripped in opt]
    if len(containing) == 1:
        return containing[0]
    distances = [levenshtein(pred, opt) for opt in opts]
    return distances.index(min(distances))


def multiple_choice(
    prediction: str,
    references: Sequence[str] | str | None = None,
    *,
    options: Sequence[str] | None = None,
    answer_idx: int | None = None,
    **_: object,
) -> float:
    """1.0 if the option selected from ``prediction`` is ``answer_idx``, else 0.0.

    Args:
        prediction: the model's answer.
        references: unused when ``answer_idx`` is given; otherwise its first entry must be the
            correct option's text, whose index becomes ``answer_idx``.
        options: the option texts, in the order they were shown (A, B, ...).
        answer_idx: index of the correct option.

    Raises:
        ValueError: missing/empty options, ``answer_idx`` out of range or not derivable.
    """
    if not options:
        raise ValueError("multiple_choice needs the field 'options' (a non-empty list)")
    if answer_idx is None:
        refs = [references] if isinstance(references, str) else list(references or [])
        norm_opts = [_norm(str(o)) for o in options]
        if not refs or _norm(str(refs[0])) not in norm_opts:
            raise ValueError(
                "multiple_choice needs the field 'answer_idx' (or a reference equal to one option)"
            )
        answer_idx = norm_opts.index(_norm(str(refs[0])))
    if isinstance(answer_idx, bool) or not isinstance(answer_idx, numbers.Integral):
        raise ValueError(f"answer_idx must be an int, got {answer_idx!r}")
    answer_idx = int(answer_idx)
    if not 0 <= answer_idx < len(options):
        raise ValueError(f"answer_idx {answer_idx} out of range for {len(options)} options")
    return 1.0 if select_option(prediction, options) == answer_idx else 0.0
