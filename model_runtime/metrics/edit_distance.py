"""Levenshtein distance (unit-cost insert / delete / substitute), pure Python.

Used by ANLS and by the multiple-choice option matcher. Two-row dynamic programme,
O(len(a) · len(b)) time, O(min(len(a), len(b))) memory; answers are short, so no C extension.
"""

from __future__ import annotations


def levenshtein(a: str, b: str) -> int:
    """Number of single-character edits turning ``a`` into ``b`` (``>= 0``)."""
    if a == b:
        return 0
    if len(a) < len(b):
        a, b = b, a  # keep the row over the shorter string
    if not b:
        return len(a)
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i]
        for j, cb in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]
