"""Evaluation requests: the JSONL request format, converters from public releases, prompts.

- :mod:`.request_format`: :class:`Request`, :func:`load_requests`, :func:`write_requests`.
- release converters, one small module each: :mod:`.textvqa`, :mod:`.vqa_v2` (VQAv2, OK-VQA),
  :mod:`.docvqa`, :mod:`.chartqa`, :mod:`.scienceqa`, :mod:`.ai2d`; registry :data:`CONVERTERS`
  and :func:`convert`. ``python -m experiments.prepare_dataset`` is the command line.
- :mod:`.prompts`: the one prompt template and decoding settings every baseline uses.

No torch: importable on the replay path (numpy only for AI2D's split shuffle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .ai2d import convert_ai2d
from .chartqa import convert_chartqa
from .conversion import ConversionResult
from .docvqa import convert_docvqa
from .prompts import DECODING, DEFAULT_TEMPLATE, DecodingSettings, build_prompt, format_prompt
from .request_format import Request, load_requests, request_from_json, write_requests
from .scienceqa import convert_scienceqa
from .textvqa import convert_textvqa
from .vqa_v2 import convert_okvqa, convert_vqav2

Converter = Callable[..., ConversionResult]

#: Dataset name → converter ``f(src, split, *, limit=None, **options) -> ConversionResult``.
CONVERTERS: dict[str, Converter] = {
    "textvqa": convert_textvqa,
    "vqav2": convert_vqav2,
    "okvqa": convert_okvqa,
    "docvqa": convert_docvqa,
    "chartqa": convert_chartqa,
    "scienceqa": convert_scienceqa,
    "ai2d": convert_ai2d,
}

#: Split used when none is given.
DEFAULT_SPLIT: dict[str, str] = {name: "val" for name in CONVERTERS} | {"ai2d": "test"}


def convert(name: str, src: str | Path, split: str | None = None, *, limit: int | None = None,
            **options: object) -> ConversionResult:
    """Run the converter of dataset ``name`` on the release folder ``src``.

    Raises:
        ValueError: no converter for ``name`` (the message lists them).
        FileNotFoundError: the release files are not under ``src``.
    """
    key = name.strip().lower().replace("-", "").replace("_", "")
    key = {"vqa2": "vqav2", "sqa": "scienceqa"}.get(key, key)
    if key not in CONVERTERS:
        raise ValueError(f"no converter for dataset {name!r}; converters: {', '.join(CONVERTERS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if not Path(src).is_dir():
        raise FileNotFoundError(f"source folder not found: {src}")
    return CONVERTERS[key](Path(src), split or DEFAULT_SPLIT[key], limit=limit, **options)


__all__ = [
    "CONVERTERS", "DECODING", "DEFAULT_SPLIT", "DEFAULT_TEMPLATE", "ConversionResult",
    "DecodingSettings", "Request", "build_prompt", "convert", "format_prompt", "load_requests",
    "request_from_json", "write_requests",
]
