"""ChartQA release → requests.

Layout (https://github.com/vis-nlp/ChartQA, "ChartQA Dataset/"): per split a folder
``<split>/`` with ``<split>_human.json`` and ``<split>_augmented.json``, each a list of
``{imgname, query, label}``, and the chart images in ``<split>/png/<imgname>``. Both files are
converted (the ChartQA score is reported over their union; ``meta.source`` says which one).
Metric: ``relaxed_accuracy``. Ids are ``chartqa_<split>_<source>_<row index in file>``.
"""

from __future__ import annotations

from pathlib import Path

from .conversion import Collector, ConversionResult, find_dir, normalize_split, read_json

DATASET = "chartqa"
SOURCES: tuple[str, ...] = ("human", "augmented")


def convert_chartqa(src: str | Path, split: str = "val", *, limit: int | None = None,
                    **_: object) -> ConversionResult:
    """Convert one ChartQA split (both the human and the augmented file)."""
    src, split = Path(src), normalize_split(split)
    folder = find_dir(src, [split, f"ChartQA Dataset/{split}", f"data/{split}"],
                      what=f"ChartQA {split} folder")
    files = [(s, folder / f"{split}_{s}.json") for s in SOURCES]
    files = [(s, f) for s, f in files if f.is_file()]
    if not files:
        raise FileNotFoundError(
            f"no ChartQA annotation file in {folder}; expected {split}_human.json and/or "
            f"{split}_augmented.json"
        )
    col = Collector(DATASET, split, limit)
    for source, path in files:
        rows = read_json(path)
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of {{imgname, query, label}}")
        col.result.sources.append(str(path))
        for i, row in enumerate(rows):
            if col.full:
                return col.result
            if not isinstance(row, dict) or any(k not in row for k in ("imgname", "query", "label")):
                col.skip("row missing imgname/query/label")
                continue
            col.add(rid=f"{DATASET}_{split}_{source}_{i}", image=folder / "png" / row["imgname"],
                    question=row["query"], answers=[str(row["label"])], meta={"source": source})
    return col.result
