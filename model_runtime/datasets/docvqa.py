"""DocVQA (Task 1, single page) release → requests.

Layout (https://rrc.cvc.uab.es/?ch=17): ``<split>_v1.0.json`` (or ``<split>_v1.0_withQT.json``)
= ``{"data": [{questionId, question, image: "documents/<name>.png", docId, answers: [str],
question_types?}, ...]}``; ``image`` is relative to the JSON file's folder. Metric: ``anls``.
Test rows have no answers and are skipped (counted).
"""

from __future__ import annotations

from pathlib import Path

from .conversion import Collector, ConversionResult, find_file, normalize_split, read_json, require_keys

DATASET = "docvqa"


def convert_docvqa(src: str | Path, split: str = "val", *, limit: int | None = None,
                   **_: object) -> ConversionResult:
    """Convert one DocVQA split found under ``src`` (or ``src/<split>/``)."""
    src, split = Path(src), normalize_split(split)
    ann = find_file(src, [f"{split}_v1.0.json", f"{split}_v1.0_withQT.json"],
                    what=f"DocVQA {split} annotations")
    data = read_json(ann)
    require_keys(data, ["data"], where=str(ann))
    col = Collector(DATASET, split, limit)
    col.result.sources.append(str(ann))
    for row in data["data"]:
        if col.full:
            break
        if not isinstance(row, dict) or any(k not in row for k in ("questionId", "question", "image")):
            col.skip("row missing questionId/question/image")
            continue
        if not row.get("answers"):
            col.skip("no answers (test split rows have none)")
            continue
        meta = {k: row[k] for k in ("docId", "question_types") if k in row}
        col.add(rid=f"{DATASET}_{row['questionId']}", image=ann.parent / row["image"],
                question=row["question"], answers=row["answers"], meta=meta)
    return col.result
