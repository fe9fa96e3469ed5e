"""Relaxed accuracy (ChartQA; Methani et al. 2020, as used by ChartQA / Pix2Struct / Molmo).

A prediction is correct for a reference when

- both parse as numbers (see below) and ``|pred - ref| / |ref| <= 0.05``; a reference of 0
  needs the prediction to be exactly 0;
- otherwise, when the two strings are equal case-insensitively (after stripping).

The item's score is the maximum over its references (1.0 or 0.0).

Number parsing (:func:`parse_number`): optional sign, optional leading ``$``, digits with
optional thousands separators (``"1,000"`` = 1000; separators must be in groups of three),
optional decimals, optional trailing ``%``. ``nan`` / ``inf`` / scientific notation are not
numbers here (they fall back to string comparison).

Percentages: Pix2Struct's ``relaxed_correctness`` reads ``"12%"`` only as 0.12, so ``"12%"``
against the label ``"12"`` is wrong there. ChartQA labels are written in the chart's own units
(a percentage chart's label is ``"12"``), so here a number with ``%`` stands for both 12 and
0.12 and matches a reference if either value does. ``percent_mode="fraction"`` restores the
Pix2Struct reading (only 0.12).
"""

from __future__ import annotations

import re
from typing import Literal, Sequence

RELATIVE_TOLERANCE: float = 0.05

_NUMBER = re.compile(
    r"^(?P<sign>[-+]?)\$?(?P<sign2>[-+]?)"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d*)?|\d+(?:\.\d*)?|\.\d+)"
    r"(?P<pct>%?)$"
)

PercentMode = Literal["both", "fraction"]


def parse_number(text: str, *, percent_mode: PercentMode = "both") -> tuple[float, ...] | None:
    """The numeric readings of ``text``, or None when it is not a number.

    Returns one value, or two (``x`` and ``x / 100``) for a percentage in ``"both"`` mode.
    """
    m = _NUMBER.match(text.strip())
    if m is None or (m.group("sign") and m.group("sign2")):
        return None
    value = float(m.group("num").replace(",", ""))
    if "-" in (m.group("sign") + m.group("sign2")):
        value = -value
    if not m.group("pct"):
        return (value,)
    if percent_mode == "fraction":
        return (value / 100.0,)
    if percent_mode == "both":
        return (value, value / 100.0)
    raise ValueError(f"percent_mode must be 'both' or 'fraction', got {percent_mode!r}")


def relaxed_match(
    prediction: str,
    reference: str,
    *,
    tolerance: float = RELATIVE_TOLERANCE,
    percent_mode: PercentMode = "both",
) -> bool:
    """Whether ``prediction`` is relaxed-correct for one ``reference``."""
    preds = parse_number(prediction, percent_mode=percent_mode)
    refs = parse_number(reference, percent_mode=percent_mode)
    if preds is not None and refs is not None:
        for r in refs:
            for p in preds:
                if r == 0.0:
                    if p == 0.0:
                        return True
                elif abs(p - r) / abs(r) <= tolerance:
                    return True
        return False
    return prediction.strip().lower() == reference.strip().lower()


def relaxed_accuracy(
    prediction: str,
    references: Sequence[str] | str,
    *,
    tolerance: float = RELATIVE_TOLERANCE,
    percent_mode: PercentMode = "both",
    **_: object,
) -> float:
    """1.0 if the prediction is relaxed-correct for any reference, else 0.0.

    Raises:
        ValueError: no references or a negative tolerance.
    """
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("relaxed_accuracy needs at least one reference answer, got none")
    if tolerance < 0:
        raise ValueError(f"relaxed_accuracy tolerance must be >= 0, got {tolerance}")
    hit = any(
        relaxed_match(prediction, str(r), tolerance=tolerance, percent_mode=percent_mode)
        for r in refs
    )
    return 1.0 if hit else 0.0
