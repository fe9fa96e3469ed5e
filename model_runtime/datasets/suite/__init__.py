"""A deterministic procedural VQA task suite for training a small MolmoE-architecture model.

Six tasks, one renderer module each, every one standing in for a real benchmark:

=================  ==================  ===================================================
task               metric              stands in for
=================  ==================  ===================================================
``easy_vqa``       exact_match         VQAv2 (short answers); **real** easy-VQA images
``synth_text``     vqa_score           TextVQA (scene text of 8–32 px)
``synth_doc``      anls                DocVQA (key–value forms, 9–24 px print)
``synth_chart``    relaxed_accuracy    ChartQA (bar and line charts)
``synth_count``    exact_match         TallyQA (counting among distractors)
``synth_diagram``  multiple_choice     AI2D / ScienceQA (arrow diagrams, 4 options)
=================  ==================  ===================================================

Every example is a pure function of ``(task, split, index, seed)``: the renderer is handed
``np.random.default_rng([seed, task_id, split_id, index])``, so training can render on the fly
in data-loader workers while the outcome cache renders the same val/test pixels from the JSONL
written by :func:`make_suite`. Train indices are an unbounded stream; the val/test streams use
other generator keys (and, for easy-VQA, its test split divided by image), so they never reuse
train examples. Image sizes (100–640 px sides, aspect 1:2 to 2:1) and text sizes vary within
each task so the Molmo tiling tiers (3 / 6 / 12 crops) matter; ``meta`` records the
difficulty descriptors (``image_w``, ``image_h``, ``text_px``, ``n_objects``, ...).

Training-only tasks (:data:`TRAIN_ONLY_TASKS`: ``synth_read``, large print of the suite's own
vocabularies, see :mod:`.synth_read`; ``synth_words``, the same print from large down to scene
size, one to three words on coloured plates, see :mod:`.synth_words`; ``synth_digits``, large-print
form values only, see :mod:`.synth_digits`; ``synth_numbers``, numbers from large down to document
print, see :mod:`.synth_numbers`; ``synth_chart_bind``, synth_chart's charts asked questions that
tie a value to its category or place, see :mod:`.synth_chart_bind`; ``synth_chart_find``, the same charts asked
where a named category is, see :mod:`.synth_chart_find`) render in the ``train`` and ``val`` streams for the
training mix and its monitoring; they are never written to a suite's requests.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from model_runtime.datasets.request_format import Request

from . import easy_vqa, synth_chart, synth_chart_bind, synth_chart_find, synth_count, synth_diagram, synth_digits, synth_doc, synth_numbers, synth_read, synth_text, synth_words
from .example import Example, TaskInfo

TASKS: tuple[str, ...] = ("easy_vqa", "synth_text", "synth_doc", "synth_chart", "synth_count",
                          "synth_diagram")
TRAIN_ONLY_TASKS: tuple[str, ...] = ("synth_read", "synth_words", "synth_digits", "synth_numbers", "synth_chart_bind",
                                      "synth_chart_find")  # append only: a task's position keys its stream
SPLITS: tuple[str, ...] = ("train", "val", "test")

TASK_INFO: dict[str, TaskInfo] = {
    "easy_vqa": TaskInfo(
        "easy_vqa", "exact_match", "VQAv2",
        "Real images: easy-VQA (Victor Zhou, MIT license, PyPI easy-vqa), 64x64 PNGs of one "
        "colored shape; color/shape/yes-no questions."),
    "synth_text": TaskInfo(
        "synth_text", "vqa_score", "TextVQA",
        "Procedural scenes of 1-3 colored signs, labels and boxes with words (32-word "
        "vocabulary) of 8-32 px; read the word on a sign named by color or position."),
    "synth_doc": TaskInfo(
        "synth_doc", "anls", "DocVQA",
        "Procedural forms/receipts/invoices with 3-5 key: value fields (short numbers, "
        "amounts, dates, names) in 9-24 px print; 'What is the <key>?'."),
    "synth_chart": TaskInfo(
        "synth_chart", "relaxed_accuracy", "ChartQA",
        "Procedural bar and line charts of 3-5 categories with values 5-100 (steps of "
        "5); value and highest/lowest questions."),
    "synth_count": TaskInfo(
        "synth_count", "exact_match", "TallyQA",
        "Procedural images of 1-6 target shapes among 0-10 distractors with varied size and "
        "clutter; 'How many red triangles are there?'."),
    "synth_diagram": TaskInfo(
        "synth_diagram", "multiple_choice", "AI2D / ScienceQA",
        "Procedural food webs, life cycles and process flows of labeled nodes and arrows; "
        "4-option multiple choice answered by letter."),
    "synth_read": TaskInfo(
        "synth_read", "vqa_score", "PixMo-Docs-style synthetic text (training only)",
        "Training only: one sign word, form value or chart number/label printed at 20-60% of the "
        "image height; 'what does the text say?'."),
    "synth_words": TaskInfo(
        "synth_words", "vqa_score", "PixMo-Docs-style synthetic text (training only)",
        "Training only: one to three sign words, form values or chart numbers/labels on coloured plates, "
        "printed at 4-50% of the image height; the text, or the word on the plate of a named color."),
    "synth_digits": TaskInfo(
        "synth_digits", "vqa_score", "PixMo-Docs-style synthetic text (training only)",
        "Training only: one document field value (mostly 2-5 digits) printed at 20-60% of the image "
        "height; 'what does the text say?'."),
    "synth_numbers": TaskInfo(
        "synth_numbers", "vqa_score", "PixMo-Docs-style synthetic text (training only)",
        "Training only: one to three numbers (document values, chart values, 2-5 random digits) on coloured "
        "plates, printed at 4-50% of the image height; the number, or the one on the plate of a named color."),
    "synth_chart_bind": TaskInfo(
        "synth_chart_bind", "relaxed_accuracy", "ChartQA (training only)",
        "Training only: synth_chart's charts asked a category's value, the category of a value, the value or "
        "label of the n-th bar, or the larger/smaller of two categories."),
    "synth_chart_find": TaskInfo(
        "synth_chart_find", "relaxed_accuracy", "ChartQA (training only)",
        "Training only: synth_chart's charts asked where a named category is (its place from the left or top), "
        "whether a named category is drawn, or which category follows a named one."),
}

_RENDERERS: dict[str, ModuleType] = {
    "easy_vqa": easy_vqa, "synth_text": synth_text, "synth_doc": synth_doc,
    "synth_chart": synth_chart, "synth_count": synth_count, "synth_diagram": synth_diagram,
    "synth_read": synth_read, "synth_words": synth_words, "synth_digits": synth_digits,
    "synth_numbers": synth_numbers, "synth_chart_bind": synth_chart_bind,
    "synth_chart_find": synth_chart_find,
}


def _check(task: str, split: str) -> None:
    if task not in _RENDERERS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS + TRAIN_ONLY_TASKS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
    if task in TRAIN_ONLY_TASKS and split == "test":
        raise ValueError(f"{task} is a training-only task: it has train and val streams, no test split")


def render_example(task: str, split: str, index: int, seed: int = 0) -> Example:
    """Render example ``index`` of ``task``'s ``split`` stream under ``seed`` (a pure function).

    Raises:
        ValueError: unknown task or split, a negative index, or (easy_vqa val/test) an index
            past the end of the finite split.
    """
    _check(task, split)
    if int(index) < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    rng = np.random.default_rng([int(seed), (TASKS + TRAIN_ONLY_TASKS).index(task), SPLITS.index(split), int(index)])
    return _RENDERERS[task].render(rng, split=split, index=int(index), seed=int(seed))


def example_to_request(ex: Example, *, request_id: str, image_path: str, split: str) -> Request:
    """The :class:`Request` of a rendered example whose image was saved at ``image_path``.

    The dataset is the task name and the metric comes from :data:`TASK_INFO`.
    """
    return Request(id=request_id, image=str(image_path), question=ex.question,
                   answers=list(ex.answers), metric=TASK_INFO[ex.task].metric, dataset=ex.task,
                   options=None if ex.options is None else list(ex.options),
                   answer_idx=ex.answer_idx, split=split, meta=dict(ex.meta))


from .build import make_suite, question_corpus  # noqa: E402  (build uses render_example)

__all__ = ["TASKS", "TRAIN_ONLY_TASKS", "SPLITS", "TASK_INFO", "TaskInfo", "Example", "render_example",
           "example_to_request", "make_suite", "question_corpus"]
