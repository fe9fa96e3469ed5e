"""ANLS: Average Normalised Levenshtein Similarity (ST-VQA, DocVQA, InfographicVQA).

Definition (Biten et al. 2019, ST-VQA; the DocVQA / InfoVQA challenges use the same): for a
prediction ``p`` and a reference ``g``, both lower-cased and whitespace-normalised (stripped,
runs of whitespace collapsed to one space),

    NL(p, g) = levenshtein(p, g) / max(len(p), len(g))
    s(p, g)  = 1 - NL(p, g)   if NL(p, g) < tau   else 0,      tau = 0.5

and the item's score is the maximum of ``s`` over its references. A normalised distance of
exactly ``tau`` scores 0. Two empty strings are identical and score 1 (the formula divides by
zero there). The dataset-level ANLS is the mean of these per-item scores.
"""

from __future__ import annotations

from typing import Sequence

from .edit_distance import levenshtein

ANLS_THRESHOLD: float = 0.5


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def anls_single(prediction: str, reference: str, *, threshold: float = ANLS_THRESHOLD) -> float:
    """``s(p, g)`` above for one reference, in [0, 1]."""
    p, g = _norm(prediction), _norm(reference)
    longest = max(len(p), len(g))
    if longest == 0:
        return 1.0
    nl = levenshtein(p, g) / longest
    return 1.0 - nl if nl < threshold else 0.0


def anls(
    prediction: str,
    references: Sequence[str] | str,
    *,
    threshold: float = ANLS_THRESHOLD,
    **_: object,
) -> float:
    """Max over references of the thresholded normalised Levenshtein similarity, in [0, 1].

    Raises:
        ValueError: no references, or ``threshold`` outside (0, 1].
    """
    refs = [references] if isinstance(references, str) else [str(r) for r in references]
    if not refs:
        raise ValueError("anls needs at least one reference answer, got none")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"anls threshold must be in (0, 1], got {threshold}")
    return max(anls_single(prediction, r, threshold=threshold) for r in refs)
