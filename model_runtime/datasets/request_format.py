"""The project's request format: one JSON object per line (JSONL), one request per object.

=============  ========  ==================================================================
field          required  meaning
=============  ========  ==================================================================
``id``         yes       unique request id (str; an int is accepted and read as str)
``image``      yes       image path, relative to the JSONL file's folder, or absolute
``question``   yes       the question text as the dataset gives it (no prompt template)
``answers``    yes       list of reference answers (str); may be empty only for
                         ``multiple_choice`` (the converters write the correct option text)
``metric``     yes       metric name or alias (``model_runtime.metrics.METRICS``); stored
                         canonical (``"mc"`` → ``"multiple_choice"``)
``dataset``    yes       dataset name, e.g. ``"textvqa"``
``options``    mc only   option texts in display order (A, B, ...)
``answer_idx`` mc only   index of the correct option
``split``      no        ``"train"`` / ``"val"`` / ``"test"`` (``cache.schema.SPLITS``) or
                         a release-specific split name
``meta``       no        JSON object of dataset-specific extras (e.g. ScienceQA's ``hint``)
=============  ========  ==================================================================

Blank lines are ignored; any other line that is not a JSON object with these fields, an unknown
field, a duplicate id or an unknown metric raises ``ValueError`` naming the file and the 1-based
line number. :func:`load_requests` resolves ``image`` to an absolute path.
"""

from __future__ import annotations

import json
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from model_runtime.metrics import canonical_metric, score as score_metric

REQUIRED_FIELDS: tuple[str, ...] = ("id", "image", "question", "answers", "metric", "dataset")
OPTIONAL_FIELDS: tuple[str, ...] = ("options", "answer_idx", "split", "meta")


@dataclass(frozen=True)
class Request:
    """One evaluation request (see the module docstring for the fields).

    ``image`` is an absolute path once loaded by :func:`load_requests`.
    """

    id: str
    image: str
    question: str
    answers: list[str]
    metric: str
    dataset: str
    options: list[str] | None = None
    answer_idx: int | None = None
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _validate(self)

    def score(self, prediction: str, *, extract: bool = True, **fields: Any) -> float:
        """Score a generated text with this request's metric and references."""
        extra: dict[str, Any] = {}
        if self.options is not None:
            extra["options"] = self.options
        if self.answer_idx is not None:
            extra["answer_idx"] = self.answer_idx
        extra.update(fields)
        return score_metric(self.metric, prediction, self.answers, extract=extract, **extra)

    def to_json_dict(self, base_dir: str | os.PathLike | None = None) -> dict[str, Any]:
        """The JSON object of this request; ``image`` made relative to ``base_dir`` when the
        image lies inside it (absolute otherwise)."""
        image = self.image
        if base_dir is not None and os.path.isabs(image):
            base = os.path.abspath(base_dir)
            if os.path.commonpath([base, os.path.abspath(image)]) == base:
                image = os.path.relpath(image, base)
        out: dict[str, Any] = {
            "id": self.id, "image": image, "question": self.question,
            "answers": list(self.answers), "metric": self.metric, "dataset": self.dataset,
        }
        if self.options is not None:
            out["options"] = list(self.options)
        if self.answer_idx is not None:
            out["answer_idx"] = self.answer_idx
        if self.split is not None:
            out["split"] = self.split
        if self.meta:
            out["meta"] = dict(self.meta)
        return out


def _validate(r: Request) -> None:
    """Field checks shared by the constructor and the loader (raises ValueError)."""
    for name in ("id", "image", "dataset"):
        value = getattr(r, name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"field {name!r} must be a non-empty string, got {value!r}")
    if not isinstance(r.question, str):
        raise ValueError(f"field 'question' must be a string, got {type(r.question).__name__}")
    if not isinstance(r.answers, list) or not all(isinstance(a, str) for a in r.answers):
        raise ValueError(f"field 'answers' must be a list of strings, got {r.answers!r}")
    metric = canonical_metric(r.metric)
    if metric != r.metric:
        raise ValueError(f"metric {r.metric!r} is not canonical; use {metric!r}")
    if r.options is not None and (
        not isinstance(r.options, list) or not r.options
        or not all(isinstance(o, str) for o in r.options)
    ):
        raise ValueError(f"field 'options' must be a non-empty list of strings, got {r.options!r}")
    if r.answer_idx is not None:
        if isinstance(r.answer_idx, bool) or not isinstance(r.answer_idx, numbers.Integral):
            raise ValueError(f"field 'answer_idx' must be an int, got {r.answer_idx!r}")
        if r.options is None or not 0 <= r.answer_idx < len(r.options):
            n = 0 if r.options is None else len(r.options)
            raise ValueError(f"field 'answer_idx' {r.answer_idx} out of range for {n} options")
    if metric == "multiple_choice":
        if r.options is None or r.answer_idx is None:
            raise ValueError("metric 'multiple_choice' needs the fields 'options' and 'answer_idx'")
    elif not r.answers:
        raise ValueError(f"field 'answers' is empty; metric {metric!r} needs at least one answer")
    if r.split is not None and (not isinstance(r.split, str) or not r.split):
        raise ValueError(f"field 'split' must be a non-empty string, got {r.split!r}")
    if not isinstance(r.meta, dict):
        raise ValueError(f"field 'meta' must be a JSON object, got {type(r.meta).__name__}")


def request_from_json(obj: Any, *, base_dir: str | os.PathLike | None = None) -> Request:
    """Build a :class:`Request` from one decoded JSON object.

    ``image`` is resolved against ``base_dir`` when relative; ``metric`` is canonicalised.

    Raises:
        ValueError: not an object, missing/unknown field, wrong type, unknown metric.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in REQUIRED_FIELDS if k not in obj]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    unknown = sorted(set(obj) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise ValueError(
            f"unknown field(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(REQUIRED_FIELDS + OPTIONAL_FIELDS)}"
        )
    rid = obj["id"]
    if isinstance(rid, numbers.Integral) and not isinstance(rid, bool):
        rid = str(rid)
    image = obj["image"]
    if isinstance(image, str) and image and base_dir is not None and not os.path.isabs(image):
        image = os.path.normpath(os.path.join(os.path.abspath(base_dir), image))
    if not isinstance(obj["metric"], str):
        raise ValueError(f"field 'metric' must be a string, got {obj['metric']!r}")
    return Request(
        id=rid, image=image, question=obj["question"], answers=obj["answers"],
        metric=canonical_metric(obj["metric"]), dataset=obj["dataset"],
        options=obj.get("options"), answer_idx=obj.get("answer_idx"), split=obj.get("split"),
        meta=obj.get("meta", {}),
    )


def load_requests(path: str | os.PathLike, *, check_images: bool = False) -> list[Request]:
    """Read a request JSONL file.

    Args:
        path: the JSONL file.
        check_images: also require every image file to exist.

    Returns:
        the requests in file order, ``image`` resolved to absolute paths.

    Raises:
        FileNotFoundError: ``path`` does not exist (or is not a file).
        ValueError: a malformed line (message: ``"<path>:<line>: <problem>"``), duplicate ids,
            a missing image (with ``check_images``), or a file without any request.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"request file not found: {path}")
    base_dir = path.parent
    out: list[Request] = []
    first_row: dict[str, int] = {}
    with path.open("r", encoding="utf-8") as f:
        for row, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{row}: malformed JSON: {e.msg} (column {e.colno})") from e
            try:
                req = request_from_json(obj, base_dir=base_dir)
            except ValueError as e:
                raise ValueError(f"{path}:{row}: {e}") from e
            if req.id in first_row:
                raise ValueError(
                    f"{path}:{row}: duplicate id {req.id!r} (first on line {first_row[req.id]})"
                )
            if check_images and not os.path.isfile(req.image):
                raise ValueError(f"{path}:{row}: image file not found: {req.image}")
            first_row[req.id] = row
            out.append(req)
    if not out:
        raise ValueError(f"{path}: no requests in file")
    return out


def write_requests(path: str | os.PathLike, requests: Iterable[Request]) -> int:
    """Write requests as JSONL (images relative to the file's folder where inside it).

    The file is written to ``<path>.tmp`` and renamed, so a crash never leaves half a file.
    Returns the number of requests written.

    Raises:
        ValueError: duplicate ids.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    seen: set[str] = set()
    n = 0
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for req in requests:
                if req.id in seen:
                    raise ValueError(f"duplicate request id {req.id!r}")
                seen.add(req.id)
                f.write(json.dumps(req.to_json_dict(path.parent), ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n

