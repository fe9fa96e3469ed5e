"""ScienceQA release → requests (image problems only).

Layout (https://github.com/lupantech/ScienceQA, ``data/scienceqa/``): ``problems.json`` = dict
``pid → {question, choices: [str], answer: int, hint, image: "image.png" | null, split,
subject, ...}``, ``pid_splits.json`` = ``{"train": [pid], "val": [...], "test": [...],
"minival": ...}``; images at ``images/<problem split>/<pid>/<image>`` (next to
``problems.json`` or in ``src``). Problems without an image are skipped (counted), as Molmo's
``ScienceQAImageOnly`` does. Molmo puts the hint (context) before the question; the hint is kept
in ``meta.hint`` and the prompt template adds it. Metric: ``multiple_choice``.
"""

from __future__ import annotations

from pathlib import Path

from .conversion import Collector, ConversionResult, find_file, read_json

DATASET = "scienceqa"


def convert_scienceqa(src: str | Path, split: str = "val", *, limit: int | None = None,
                      **_: object) -> ConversionResult:
    """Convert the image problems of one ScienceQA split (a key of ``pid_splits.json``)."""
    src, split = Path(src), split.strip().lower()
    problems_path = find_file(src, ["problems.json", "data/scienceqa/problems.json"],
                              what="ScienceQA problems.json")
    splits_path = find_file(src, ["pid_splits.json", "data/scienceqa/pid_splits.json"],
                            what="ScienceQA pid_splits.json")
    problems, pid_splits = read_json(problems_path), read_json(splits_path)
    if not isinstance(problems, dict):
        raise ValueError(f"{problems_path}: expected a JSON object pid -> problem")
    if not isinstance(pid_splits, dict) or split not in pid_splits:
        known = sorted(pid_splits) if isinstance(pid_splits, dict) else []
        raise ValueError(f"{splits_path}: no split {split!r}; splits: {', '.join(known)}")
    image_roots = [problems_path.parent / "images", src / "images", src / "data" / "images"]
    col = Collector(DATASET, "val" if split == "validation" else split, limit)
    col.result.sources += [str(problems_path), str(splits_path)]
    for pid in pid_splits[split]:
        if col.full:
            break
        prob = problems.get(str(pid))
        if not isinstance(prob, dict):
            col.skip("pid listed in pid_splits.json but not in problems.json")
            continue
        if any(k not in prob for k in ("question", "choices", "answer")):
            col.skip("problem missing question/choices/answer")
            continue
        if not prob.get("image"):
            col.skip("no image (text-only problem)")
            continue
        rel = Path(str(prob.get("split", split))) / str(pid) / str(prob["image"])
        image = next((r / rel for r in image_roots if (r / rel).is_file()), image_roots[0] / rel)
        choices, answer = prob["choices"], prob["answer"]
        if not isinstance(choices, list) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            col.skip("answer index not within choices")
            continue
        meta = {"hint": prob["hint"]} if prob.get("hint") else {}
        if prob.get("subject"):
            meta["subject"] = prob["subject"]
        col.add(rid=f"{DATASET}_{pid}", image=image, question=prob["question"],
                answers=[choices[answer]], options=choices, answer_idx=answer, meta=meta)
    return col.result
