"""AI2D (``ai2d`` release, Kembhavi et al. 2016) → requests.

Layout (``ai2d-all.zip`` → ``ai2d/``): ``questions/<image>.json`` =
``{"imageName": "12.png", "questions": {question text: {answerTexts: [str], correctAnswer: int,
abcLabel: bool, questionId}}}``; images in ``images/<imageName>``. The release has no split
file; the standard test split is the image-id list ``ai2d_test_ids.csv`` (one id per line,
published beside the release and used by Molmo), looked for in ``src`` and ``src/ai2d``.

Splits: ``all`` (no split file needed), ``test`` (ids in the file), ``train`` and ``val``: as
Molmo's ``Ai2dDatasetBuilder`` holds out a validation set, the non-test image ids that have
questions are sorted, shuffled with ``numpy.random.RandomState(5961)`` and the first 384 form
``val``; the rest is ``train``.

Options are cleaned as Molmo does: the null option ``"{}"`` and repeated option texts are
removed, and ``answer_idx`` points into the cleaned list.

``abcLabel`` questions ask about letters that Molmo draws over the diagram's text boxes (from
``annotations/<image>.json``); this converter does not render those images, so these questions
are skipped and counted by default (``keep_abc_label=True`` keeps them on the raw image, with
``meta.abc_label = true``). Metric: ``multiple_choice``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .conversion import Collector, ConversionResult, find_dir, read_json

DATASET = "ai2d"
TEST_IDS_FILE = "ai2d_test_ids.csv"
VAL_SEED = 5961
N_VAL_IMAGES = 384
NULL_OPTION = "{}"


def _image_id(name: str) -> int:
    return int(Path(name).stem)


def _test_ids(src: Path, root: Path) -> set[int] | None:
    for folder in (src, root):
        path = folder / TEST_IDS_FILE
        if path.is_file():
            lines = [x.strip() for x in path.read_text(encoding="utf-8").splitlines()]
            try:
                return {int(x) for x in lines if x}
            except ValueError as e:
                raise ValueError(f"{path}: expected one integer image id per line ({e})") from e
    return None


def clean_options(options: list[str], correct: int) -> tuple[list[str], int]:
    """Drop ``"{}"`` and repeated options (Molmo's rule); the new index of the correct text."""
    answer = options[correct]
    kept: list[str] = []
    for opt in options:
        if opt == NULL_OPTION or opt in kept:
            continue
        kept.append(opt)
    return kept, kept.index(answer)


def convert_ai2d(src: str | Path, split: str = "test", *, limit: int | None = None,
                 keep_abc_label: bool = False, **_: object) -> ConversionResult:
    """Convert AI2D questions of ``split`` (``all`` / ``train`` / ``val`` / ``test``)."""
    src, split = Path(src), split.strip().lower()
    split = {"validation": "val"}.get(split, split)
    if split not in ("all", "train", "val", "test"):
        raise ValueError(f"ai2d: unknown split {split!r}; use all, train, val or test")
    root = src if (src / "questions").is_dir() else src / "ai2d"
    questions_dir = find_dir(root, ["questions"], what="AI2D questions folder")
    images_dir = find_dir(root, ["images"], what="AI2D images folder")
    files = sorted(questions_dir.glob("*.json"), key=lambda p: (len(p.name), p.name))
    loaded = []
    for path in files:
        data = read_json(path)
        if not isinstance(data, dict) or "imageName" not in data or not isinstance(data.get("questions"), dict):
            raise ValueError(f"{path}: expected {{imageName, questions: {{...}}}}")
        loaded.append((path, data))

    wanted: set[int] | None = None
    if split != "all":
        test_ids = _test_ids(src, root)
        if test_ids is None:
            raise FileNotFoundError(
                f"ai2d split {split!r} needs {TEST_IDS_FILE} in {src} or {root} "
                "(the published AI2D test image ids); use --split all without it"
            )
        if split == "test":
            wanted = test_ids
        else:
            keys = sorted({_image_id(d["imageName"]) for _, d in loaded
                           if d["questions"] and _image_id(d["imageName"]) not in test_ids})
            order = np.array(keys, dtype=np.int64)
            np.random.RandomState(VAL_SEED).shuffle(order)
            val = set(order[:N_VAL_IMAGES].tolist())
            wanted = val if split == "val" else set(keys) - val

    col = Collector(DATASET, split, limit)
    col.result.sources.append(str(questions_dir))
    for path, data in loaded:
        image_id = _image_id(data["imageName"])
        if wanted is not None and image_id not in wanted:
            continue  # another split's image: not part of this conversion, not a skip
        for question, qd in data["questions"].items():
            if col.full:
                return col.result
            if not isinstance(qd, dict) or any(k not in qd for k in ("answerTexts", "correctAnswer")):
                col.skip("question missing answerTexts/correctAnswer")
                continue
            if qd.get("abcLabel") and not keep_abc_label:
                col.skip("abcLabel question (needs the letter-overlay image, not rendered)")
                continue
            texts, correct = qd["answerTexts"], qd["correctAnswer"]
            if not isinstance(correct, int) or not 0 <= correct < len(texts) or texts[correct] == NULL_OPTION:
                col.skip("correctAnswer not a valid option")
                continue
            options, answer_idx = clean_options([str(t) for t in texts], correct)
            qid = qd.get("questionId", f"{data['imageName']}-{question}")
            col.add(rid=f"{DATASET}_{qid}", image=images_dir / data["imageName"], question=question,
                    answers=[options[answer_idx]], options=options, answer_idx=answer_idx,
                    meta={"abc_label": bool(qd.get("abcLabel", False)), "image_id": image_id})
    return col.result
