"""Answer metrics matching the official definitions, one module per metric family.

========================  =================================  ==========================
name (aliases)            module                             range
========================  =================================  ==========================
vqa_score                 :mod:`.vqa` (official vqaEval.py)  [0, 1]
anls (ansl)               :mod:`.anls`                       [0, 1]
relaxed_accuracy          :mod:`.relaxed`                    {0, 1}
exact_match (em)          :mod:`.exact_match`                {0, 1}
multiple_choice (mc)      :mod:`.multiple_choice`            {0, 1}
cider (cider_d)           :mod:`.cider` (CIDEr-D)            [0, 10], **not** [0, 1]
========================  =================================  ==========================

Every metric is a pure function ``f(prediction: str, references: list[str], **fields) -> float``;
fields a metric does not use are ignored (``multiple_choice`` needs ``options`` and
``answer_idx``; ``cider`` takes ``corpus``). :func:`score` is the one entry point: it resolves
aliases, runs :func:`extract_answer` on the raw generated text (``extract=True``) and calls the
metric. :data:`METRIC_FOR_DATASET` / :func:`metric_for_dataset` give the metric of a dataset.

No torch, no numpy: importable anywhere, including the replay path.
"""

from __future__ import annotations

from typing import Callable, Sequence

from .anls import anls
from .cider import CiderCorpus, cider, cider_corpus, coco_tokenize
from .dataset_metrics import METRIC_FOR_DATASET, canonical_dataset, metric_for_dataset
from .exact_match import exact_match, normalize_exact
from .extraction import extract_answer
from .multiple_choice import multiple_choice, select_option
from .relaxed import parse_number, relaxed_accuracy
from .vqa import normalize_vqa_answer, vqa_score

MetricFn = Callable[..., float]

#: Canonical metric name → metric function ``f(prediction, references, **fields) -> float``.
METRICS: dict[str, MetricFn] = {
    "vqa_score": vqa_score,
    "anls": anls,
    "relaxed_accuracy": relaxed_accuracy,
    "exact_match": exact_match,
    "multiple_choice": multiple_choice,
    "cider": cider,
}

#: Other names in use for the same metrics (seed notes, Molmo's evaluator, the cache schema).
METRIC_ALIASES: dict[str, str] = {
    "mc": "multiple_choice",
    "em": "exact_match",
    "ansl": "anls",
    "relaxed_correctness": "relaxed_accuracy",
    "cider_score": "cider",
    "cider_d": "cider",
}

#: Metrics whose scores lie in [0, 1] (all but CIDEr).
UNIT_INTERVAL_METRICS: frozenset[str] = frozenset(METRICS) - {"cider"}


def canonical_metric(name: str) -> str:
    """Canonical metric name for ``name`` or an alias.

    Raises:
        ValueError: unknown metric (the message lists the known names).
    """
    key = str(name).strip().lower()
    key = METRIC_ALIASES.get(key, key)
    if key not in METRICS:
        known = sorted(set(METRICS) | set(METRIC_ALIASES))
        raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(known)}")
    return key


def score(
    metric_name: str,
    prediction: str,
    references: Sequence[str] | str | None,
    *,
    extract: bool = True,
    **fields: object,
) -> float:
    """Score one generated text with a metric.

    Args:
        metric_name: a key of :data:`METRICS` or an alias (``"mc"``, ``"em"``, ...).
        prediction: the model's generated text (raw, when ``extract`` is True).
        references: the reference answers (may be None / empty for ``multiple_choice`` with
            ``answer_idx``).
        extract: apply :func:`extract_answer` to ``prediction`` first.
        **fields: metric-specific fields (``options``, ``answer_idx``, ``corpus``, ...).

    Returns:
        the score as a float; in [0, 1] for every metric but ``cider`` ([0, 10]).

    Raises:
        ValueError: unknown metric, or invalid references / fields for the metric.
    """
    fn = METRICS[canonical_metric(metric_name)]
    if not isinstance(prediction, str):
        raise ValueError(f"prediction must be a str, got {type(prediction).__name__}")
    text = extract_answer(prediction) if extract else prediction
    refs: Sequence[str] | str = [] if references is None else references
    return float(fn(text, refs, **fields))


__all__ = [
    "METRICS", "METRIC_ALIASES", "METRIC_FOR_DATASET", "UNIT_INTERVAL_METRICS", "CiderCorpus",
    "anls", "canonical_dataset", "canonical_metric", "cider", "cider_corpus", "coco_tokenize",
    "exact_match", "extract_answer", "metric_for_dataset", "multiple_choice",
    "normalize_exact", "normalize_vqa_answer", "parse_number", "relaxed_accuracy", "score",
    "select_option", "vqa_score",
]
