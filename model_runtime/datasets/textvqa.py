"""TextVQA 0.5.1 release → requests.

Layout (https://textvqa.org/dataset): ``TextVQA_0.5.1_<split>.json`` = ``{"data": [row, ...]}``
with rows ``{question_id, image_id, question, answers: [10 str], ...}``; images are
``train_images/<image_id>.jpg`` for train *and* val (``test_images/`` for test), possibly under
``train_val_images/``. Metric: ``vqa_score``. Test rows have no answers and are skipped
(counted).
"""

from __future__ import annotations

from pathlib import Path

from .conversion import (Collector, ConversionResult, find_dir, find_file, normalize_split,
                         read_json, require_keys)

DATASET = "textvqa"


def convert_textvqa(src: str | Path, split: str = "val", *, limit: int | None = None,
                    **_: object) -> ConversionResult:
    """Convert one TextVQA split found under ``src`` (see the module docstring)."""
    src, split = Path(src), normalize_split(split)
    ann = find_file(src, [f"TextVQA_0.5.1_{split}.json"], what=f"TextVQA {split} annotations")
    folder = "test_images" if split == "test" else "train_images"
    images = find_dir(src, [folder, f"train_val_images/{folder}", f"images/{folder}"],
                      what="TextVQA image folder")
    data = read_json(ann)
    require_keys(data, ["data"], where=str(ann))
    col = Collector(DATASET, split, limit)
    col.result.sources.append(str(ann))
    for row in data["data"]:
        if col.full:
            break
        if not isinstance(row, dict) or any(k not in row for k in ("question_id", "image_id", "question")):
            col.skip("row missing question_id/image_id/question")
            continue
        if not row.get("answers"):
            col.skip("no answers (test split rows have none)")
            continue
        col.add(rid=f"{DATASET}_{row['question_id']}", image=images / f"{row['image_id']}.jpg",
                question=row["question"], answers=row["answers"])
    return col.result
