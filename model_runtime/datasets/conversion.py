"""Shared pieces of the release converters: the result type, file lookup, row collection.

A converter reads one public release's files and returns a :class:`ConversionResult`: the
requests it built and, for every source row it did not turn into a request, a counted reason
(nothing is dropped silently). ``limit`` stops the conversion after that many requests; the
result says so and how many source rows were examined.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from model_runtime.metrics import metric_for_dataset

from .request_format import Request

#: Common split spellings → the project's split names (``cache.schema.SPLITS``).
SPLIT_ALIASES: dict[str, str] = {"validation": "val", "valid": "val", "dev": "val",
                                 "training": "train", "testing": "test"}


def normalize_split(split: str) -> str:
    """``"validation"`` → ``"val"`` etc.; other names are returned lower-cased."""
    s = split.strip().lower()
    return SPLIT_ALIASES.get(s, s)


@dataclass
class ConversionResult:
    """What a converter produced.

    Attributes:
        dataset: canonical dataset name.
        split: the split converted.
        requests: the requests, in source order.
        skipped: reason → number of source rows skipped for it.
        examined: source rows looked at (written + skipped).
        limit_reached: True when ``limit`` stopped the conversion before the end.
        sources: the release files read.
    """

    dataset: str
    split: str
    requests: list[Request] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    examined: int = 0
    limit_reached: bool = False
    sources: list[str] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """Human-readable counts, one line per skip reason."""
        lines = [f"{self.dataset} [{self.split}]: examined {self.examined} source rows, "
                 f"wrote {len(self.requests)}, skipped {self.n_skipped}"]
        for reason, n in sorted(self.skipped.items()):
            lines.append(f"  skipped {n}: {reason}")
        if self.limit_reached:
            lines.append("  stopped early: --limit reached (remaining rows not examined)")
        return "\n".join(lines)


class Collector:
    """Accumulates requests/skips for one conversion and enforces ``limit``."""

    def __init__(self, dataset: str, split: str, limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.result = ConversionResult(dataset=dataset, split=split)
        self.metric = metric_for_dataset(dataset)
        self.limit = limit
        self._ids: set[str] = set()

    @property
    def full(self) -> bool:
        """True once ``limit`` requests were collected (the converter should stop)."""
        if self.limit is not None and len(self.result.requests) >= self.limit:
            self.result.limit_reached = True
            return True
        return False

    def skip(self, reason: str) -> None:
        self.result.examined += 1
        self.result.skipped[reason] += 1

    def add(self, *, rid: str, image: Path, question: str, answers: Sequence[str],
            options: Sequence[str] | None = None, answer_idx: int | None = None,
            meta: dict[str, Any] | None = None) -> None:
        """Add one request, or count a skip when its image file is missing or the row is bad."""
        if not image.is_file():
            self.skip("image file missing")
            return
        if rid in self._ids:
            self.skip("duplicate id")
            return
        try:
            req = Request(
                id=rid, image=os.path.abspath(image), question=question,
                answers=[str(a) for a in answers], metric=self.metric,
                dataset=self.result.dataset, options=None if options is None else list(options),
                answer_idx=answer_idx, split=self.result.split, meta=dict(meta or {}),
            )
        except ValueError as e:
            self.skip(f"invalid row ({e})")
            return
        self._ids.add(rid)
        self.result.examined += 1
        self.result.requests.append(req)


def find_file(src: Path, names: Sequence[str], *, what: str) -> Path:
    """The first of ``names`` that exists in ``src`` or one folder level below it.

    Raises:
        FileNotFoundError: none found (the message lists every place looked at).
    """
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder not found: {src}")
    tried: list[str] = []
    for name in names:
        candidates = [src / name] + sorted(p / name for p in src.iterdir() if p.is_dir())
        for c in candidates:
            if c.is_file():
                return c
        tried.append(str(src / name))
        tried.append(str(src / "*" / name))
    raise FileNotFoundError(f"{what} not found; looked for: {', '.join(tried)}")


def find_dir(src: Path, names: Sequence[str], *, what: str) -> Path:
    """The first existing folder among ``src / name`` for ``names``.

    Raises:
        FileNotFoundError: none found.
    """
    if not Path(src).is_dir():
        raise FileNotFoundError(f"source folder not found: {src}")
    for name in names:
        if (Path(src) / name).is_dir():
            return Path(src) / name
    raise FileNotFoundError(
        f"{what} not found; looked for: {', '.join(str(Path(src) / n) for n in names)}"
    )


def read_json(path: Path) -> Any:
    """``json.load`` with the file named in the error.

    Raises:
        ValueError: the file is not valid JSON.
    """
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e.msg} (line {e.lineno})") from e


def require_keys(obj: Any, keys: Sequence[str], *, where: str) -> None:
    """Raise ValueError naming ``where`` when ``obj`` is not a dict holding ``keys``."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ValueError(f"{where}: missing key(s) {', '.join(missing)}")

