"""The two records of the task suite: one rendered example and one task's description."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TaskInfo:
    """What a task is: its name, metric, the real dataset it stands in for, one line of prose."""

    name: str
    metric: str
    stands_in_for: str
    description: str


@dataclass
class Example:
    """One rendered example.

    ``image`` is (H, W, 3) uint8 RGB. ``answers`` are the reference answers as a VQA model
    would write them (short, no trailing period); multiple-choice tasks also carry ``options``
    and ``answer_idx``. ``meta`` holds difficulty descriptors (``image_w``, ``image_h``,
    ``text_px``, ``n_objects``, ``answer_kind``, ...), JSON-serialisable.

    ``caption`` is a dense description of everything drawn (every sign's word, every field,
    every bar's value, every object's kind and number, every arrow), in reading order, built from
    the scene without drawing more random numbers (so it changes no image or question). It is
    training text only, the stand-in for Molmo's dense-caption pre-training (PixMo-Cap): it
    supervises every element of the image where a question supervises one. None where the
    source does not describe its images (easy-VQA).

    ``glyph_text`` and ``glyph_boxes`` ((n, 4) float32 x0, y0, x1, y1 in image px) are every
    printed character and its place (``drawing.GlyphDraw``), training targets only; ``""`` and an
    empty array for an image without print, None where the source does not record them (easy-VQA).
    """

    task: str
    image: np.ndarray
    question: str
    answers: list[str]
    options: list[str] | None = None
    answer_idx: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    caption: str | None = None
    glyph_text: str | None = None
    glyph_boxes: np.ndarray | None = None
