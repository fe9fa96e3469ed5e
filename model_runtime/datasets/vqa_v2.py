"""VQAv2 and OK-VQA official releases → requests (the same question/annotation format).

Layout (https://visualqa.org/download.html, https://okvqa.allenai.org/download.html):

- questions ``{"questions": [{question_id, image_id, question}, ...]}``:
  ``v2_OpenEnded_mscoco_<split>2014_questions.json`` (VQAv2),
  ``OpenEnded_mscoco_<split>2014_questions.json`` (OK-VQA);
- annotations ``{"annotations": [{question_id, image_id, answers: [{answer, ...}] x10,
  question_type, answer_type, ...}]}``: ``v2_mscoco_<split>2014_annotations.json`` /
  ``mscoco_<split>2014_annotations.json``;
- COCO images ``<split>2014/COCO_<split>2014_<image_id, 12 digits>.jpg`` (also looked for under
  ``images/`` and ``coco/``).

Metric: ``vqa_score``. Questions without an annotation are skipped (counted).
"""

from __future__ import annotations

from pathlib import Path

from .conversion import (Collector, ConversionResult, find_dir, find_file, normalize_split,
                         read_json, require_keys)

_COCO_SPLITS = {"train": "train", "val": "val"}


def coco_image_name(coco_split: str, image_id: int) -> str:
    """``COCO_val2014_000000000042.jpg`` for ``("val", 42)``."""
    return f"COCO_{coco_split}2014_{int(image_id):012d}.jpg"


def _convert(dataset: str, src: Path, split: str, limit: int | None,
             questions_name: str, annotations_name: str) -> ConversionResult:
    split = normalize_split(split)
    if split not in _COCO_SPLITS:
        raise ValueError(f"{dataset}: split {split!r} has no public annotations; use train or val")
    coco = _COCO_SPLITS[split]
    q_path = find_file(src, [questions_name.format(s=coco)], what=f"{dataset} questions")
    a_path = find_file(src, [annotations_name.format(s=coco)], what=f"{dataset} annotations")
    images = find_dir(src, [f"{coco}2014", f"images/{coco}2014", f"coco/{coco}2014"],
                      what=f"COCO {coco}2014 image folder")
    questions = read_json(q_path)
    require_keys(questions, ["questions"], where=str(q_path))
    annotations = read_json(a_path)
    require_keys(annotations, ["annotations"], where=str(a_path))
    by_qid = {a.get("question_id"): a for a in annotations["annotations"] if isinstance(a, dict)}
    col = Collector(dataset, split, limit)
    col.result.sources += [str(q_path), str(a_path)]
    for q in questions["questions"]:
        if col.full:
            break
        if not isinstance(q, dict) or any(k not in q for k in ("question_id", "image_id", "question")):
            col.skip("question missing question_id/image_id/question")
            continue
        ann = by_qid.get(q["question_id"])
        if ann is None or not ann.get("answers"):
            col.skip("no annotation with answers for the question")
            continue
        answers = [a["answer"] for a in ann["answers"] if isinstance(a, dict) and "answer" in a]
        if len(answers) != len(ann["answers"]):
            col.skip("annotation answer without 'answer' text")
            continue
        meta = {k: ann[k] for k in ("question_type", "answer_type") if k in ann}
        col.add(rid=f"{dataset}_{q['question_id']}",
                image=images / coco_image_name(coco, q["image_id"]),
                question=q["question"], answers=answers, meta=meta)
    return col.result


def convert_vqav2(src: str | Path, split: str = "val", *, limit: int | None = None,
                  **_: object) -> ConversionResult:
    """Convert a VQAv2 split (see the module docstring)."""
    return _convert("vqav2", Path(src), split, limit,
                    "v2_OpenEnded_mscoco_{s}2014_questions.json", "v2_mscoco_{s}2014_annotations.json")


def convert_okvqa(src: str | Path, split: str = "val", *, limit: int | None = None,
                  **_: object) -> ConversionResult:
    """Convert an OK-VQA split (see the module docstring)."""
    return _convert("okvqa", Path(src), split, limit,
                    "OpenEnded_mscoco_{s}2014_questions.json", "mscoco_{s}2014_annotations.json")
