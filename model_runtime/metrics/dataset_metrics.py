"""Which metric scores which dataset.

=================  ===========================================
metric             datasets
=================  ===========================================
vqa_score          TextVQA, OK-VQA, COCO-VQA / VQAv2
multiple_choice    ScienceQA, AI2D, MMBench
exact_match        TallyQA, GQA
anls               ST-VQA, DocVQA, InfoVQA
relaxed_accuracy   ChartQA
cider              COCO Caption
=================  ===========================================

The task suite's stand-ins (``model_runtime.datasets.suite``) use their real sets' metrics:
``easy_vqa`` and ``synth_count`` exact_match (easy-VQA has one answer per question), ``synth_text``
vqa_score, ``synth_doc`` anls, ``synth_chart`` relaxed_accuracy, ``synth_diagram`` multiple_choice.

Seed 03 listed ``ansl_em`` (ANLS + EM) for ST-VQA/DocVQA; ANLS alone is the official metric of
both challenges and equals 1 exactly when EM would, so ANLS is the single score here.
Dataset names are matched case-insensitively ignoring ``-``, ``_``, spaces and dots, so
``"TextVQA"``, ``"text_vqa"`` and ``"OK-VQA"`` all work; :data:`METRIC_FOR_DATASET` is keyed by
the canonical names the dataset converters write.
"""

from __future__ import annotations

import re

METRIC_FOR_DATASET: dict[str, str] = {
    "textvqa": "vqa_score",
    "okvqa": "vqa_score",
    "vqav2": "vqa_score",
    "coco_vqa": "vqa_score",
    "scienceqa": "multiple_choice",
    "ai2d": "multiple_choice",
    "mmbench": "multiple_choice",
    "tallyqa": "exact_match",
    "gqa": "exact_match",
    "st_vqa": "anls",
    "docvqa": "anls",
    "infovqa": "anls",
    "chartqa": "relaxed_accuracy",
    "coco_caption": "cider",
    # the procedural task suite (model_runtime.datasets.suite), one stand-in per family above
    "easy_vqa": "exact_match",
    "synth_text": "vqa_score",
    "synth_doc": "anls",
    "synth_chart": "relaxed_accuracy",
    "synth_count": "exact_match",
    "synth_diagram": "multiple_choice",
    "synth_read": "vqa_score",  # training-only large print (model_runtime.datasets.suite.synth_read)
    "synth_words": "vqa_score",  # training-only print from large to scene size (suite.synth_words)
    "synth_digits": "vqa_score",  # training-only large-print form values (suite.synth_digits)
    "synth_numbers": "vqa_score",  # training-only numbers from large to document print (suite.synth_numbers)
    "synth_chart_bind": "relaxed_accuracy",  # training-only chart binding questions (suite.synth_chart_bind)
    "synth_chart_find": "relaxed_accuracy",  # training-only chart finding questions (suite.synth_chart_find)
}

# Extra spellings (after squashing) that name the same dataset.
_ALIASES: dict[str, str] = {
    "vqa2": "vqav2", "vqa": "vqav2", "cocovqa": "coco_vqa", "stvqa": "st_vqa",
    "docqa": "docvqa", "infographicvqa": "infovqa", "infoqa": "infovqa",
    "ai2diagram": "ai2d", "sqa": "scienceqa", "scienceqaimg": "scienceqa",
    "cococaption": "coco_caption", "cococaptions": "coco_caption",
    "cococaptioning": "coco_caption",
}


def _squash(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", name.lower())


_BY_SQUASHED: dict[str, str] = {_squash(k): k for k in METRIC_FOR_DATASET}
_BY_SQUASHED.update(_ALIASES)


def canonical_dataset(name: str) -> str:
    """The canonical key of :data:`METRIC_FOR_DATASET` for a dataset name.

    Raises:
        ValueError: the dataset is unknown (the message lists the known ones).
    """
    key = _BY_SQUASHED.get(_squash(str(name)))
    if key is None:
        raise ValueError(
            f"unknown dataset {name!r}: no metric is defined for it; known datasets: "
            f"{', '.join(sorted(METRIC_FOR_DATASET))}"
        )
    return key


def metric_for_dataset(name: str) -> str:
    """Metric name (a key of ``METRICS``) for a dataset; ``ValueError`` for unknown datasets."""
    return METRIC_FOR_DATASET[canonical_dataset(name)]
