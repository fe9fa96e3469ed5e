"""Request JSONL format, release converters (tiny releases written here), prompts, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from experiments.prepare_dataset import main as prepare_main
from model_runtime.datasets import (
    CONVERTERS, DECODING, Request, build_prompt, convert, format_prompt, load_requests,
    write_requests,
)
from model_runtime.datasets.ai2d import N_VAL_IMAGES, clean_options
from model_runtime.datasets.vqa_v2 import coco_image_name


def _image(path: Path, size: tuple[int, int] = (8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 30, 200)).save(path)
    return path


def _json(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _row(**over: object) -> dict:
    row = {"id": "q1", "image": "img/a.png", "question": "What?", "answers": ["cat"],
           "metric": "vqa_score", "dataset": "textvqa"}
    row.update(over)
    return row


def _jsonl(path: Path, lines: list[object]) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


# ------------------------------------------------------------------------- request format


def test_load_requests_resolves_images_and_canonicalises_metric(tmp_path: Path) -> None:
    _image(tmp_path / "img" / "a.png")
    abs_img = _image(tmp_path / "elsewhere" / "b.png")
    path = _jsonl(tmp_path / "reqs.jsonl", [
        _row(),
        "",  # blank lines are ignored
        _row(id=7, image=str(abs_img), metric="mc", dataset="ai2d", answers=[],
             options=["x", "y"], answer_idx=1, split="test", meta={"abc_label": False}),
    ])
    reqs = load_requests(path, check_images=True)
    assert [r.id for r in reqs] == ["q1", "7"]
    assert reqs[0].image == str(tmp_path / "img" / "a.png")
    assert reqs[1].image == str(abs_img) and reqs[1].metric == "multiple_choice"
    assert reqs[1].score("Answer: B") == 1.0 and reqs[0].score("a cat.") == 1.0


def test_write_then_load_roundtrip(tmp_path: Path) -> None:
    img = _image(tmp_path / "data" / "x.png")
    reqs = [Request(id="a", image=str(img), question="Q?", answers=["1", "2"], metric="anls",
                    dataset="docvqa", split="val"),
            Request(id="b", image=str(img), question="Q2?", answers=["y"], metric="multiple_choice",
                    dataset="scienceqa", options=["x", "y"], answer_idx=1, meta={"hint": "h"})]
    out = tmp_path / "data" / "out.jsonl"
    assert write_requests(out, reqs) == 2
    first = json.loads(out.read_text().splitlines()[0])
    assert first["image"] == "x.png"  # relative to the JSONL's folder
    assert load_requests(out) == reqs
    with pytest.raises(ValueError, match="duplicate request id 'a'"):
        write_requests(tmp_path / "dup.jsonl", [reqs[0], reqs[0]])
    assert not (tmp_path / "dup.jsonl").exists() and not (tmp_path / "dup.jsonl.tmp").exists()


def test_load_requests_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="request file not found"):
        load_requests(tmp_path / "nope.jsonl")


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"id": "q9", "image": ', r":3: malformed JSON"),
        (json.dumps({k: v for k, v in _row(id="q9").items() if k != "answers"}), r":3: missing field\(s\) answers"),
        (json.dumps(_row(id="q9", metric="bleu")), r":3: unknown metric 'bleu'"),
        (json.dumps(_row(id="q9", answer="x")), r":3: unknown field\(s\) answer"),
        (json.dumps(_row(id="q9", answers="cat")), r":3: field 'answers' must be a list"),
        (json.dumps(_row(id="q9", answers=[])), r":3: field 'answers' is empty"),
        (json.dumps(_row(id="q9", metric="mc")), r":3: metric 'multiple_choice' needs"),
        (json.dumps(_row(id="q9", metric="mc", options=["a"], answer_idx=1)), r":3: .*out of range"),
        (json.dumps(_row(id="q1")), r":3: duplicate id 'q1' \(first on line 1\)"),
        ("[1, 2]", r":3: expected a JSON object"),
    ],
)
def test_load_requests_bad_row_names_the_line(tmp_path: Path, bad: str, message: str) -> None:
    path = _jsonl(tmp_path / "r.jsonl", [_row(), _row(id="q2"), bad])
    with pytest.raises(ValueError, match=message):
        load_requests(path)


def test_load_requests_empty_and_missing_image(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no requests"):
        load_requests(_jsonl(tmp_path / "e.jsonl", ["", "  "]))
    with pytest.raises(ValueError, match=":1: image file not found"):
        load_requests(_jsonl(tmp_path / "r.jsonl", [_row()]), check_images=True)


# ----------------------------------------------------------------------------- converters


def _check(result, *, dataset: str, written: int, skipped: dict[str, int]) -> None:
    assert result.dataset == dataset
    assert len(result.requests) == written
    assert dict(result.skipped) == skipped
    assert result.examined == written + sum(skipped.values())
    for r in result.requests:
        assert Path(r.image).is_file() and r.dataset == dataset


def test_textvqa(tmp_path: Path) -> None:
    _image(tmp_path / "train_images" / "abc1.jpg")
    _json(tmp_path / "TextVQA_0.5.1_val.json", {"dataset_name": "textvqa", "data": [
        {"question_id": 34602, "image_id": "abc1", "question": "what brand?", "answers": ["nokia"] * 10},
        {"question_id": 34603, "image_id": "missing", "question": "q", "answers": ["x"] * 10},
        {"question_id": 34604, "image_id": "abc1", "question": "q"},
    ]})
    res = convert("textvqa", tmp_path, "val")
    _check(res, dataset="textvqa", written=1, skipped={
        "image file missing": 1, "no answers (test split rows have none)": 1})
    r = res.requests[0]
    assert (r.id, r.metric, r.split, len(r.answers)) == ("textvqa_34602", "vqa_score", "val", 10)


@pytest.mark.parametrize(
    "name, q_file, a_file",
    [("vqav2", "v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json"),
     ("okvqa", "OpenEnded_mscoco_val2014_questions.json", "mscoco_val2014_annotations.json")],
)
def test_vqav2_and_okvqa(tmp_path: Path, name: str, q_file: str, a_file: str) -> None:
    assert coco_image_name("val", 42) == "COCO_val2014_000000000042.jpg"
    _image(tmp_path / "val2014" / coco_image_name("val", 42))
    _json(tmp_path / q_file, {"questions": [
        {"question_id": 420, "image_id": 42, "question": "How many?"},
        {"question_id": 421, "image_id": 42, "question": "No annotation?"},
        {"question_id": 422, "image_id": 43, "question": "Missing image?"},
    ]})
    answers = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
               for i, a in enumerate(["2"] * 7 + ["two"] * 3)]
    _json(tmp_path / a_file, {"annotations": [
        {"question_id": 420, "image_id": 42, "answers": answers, "question_type": "how many",
         "answer_type": "number"},
        {"question_id": 422, "image_id": 43, "answers": answers},
    ]})
    res = convert(name, tmp_path, "validation")
    _check(res, dataset=name, written=1, skipped={
        "no annotation with answers for the question": 1, "image file missing": 1})
    r = res.requests[0]
    assert r.id == f"{name}_420" and r.answers == ["2"] * 7 + ["two"] * 3
    assert r.meta == {"question_type": "how many", "answer_type": "number"}
    assert r.score("two") == 1.0
    with pytest.raises(ValueError, match="no public annotations"):
        convert(name, tmp_path, "test")


def test_docvqa(tmp_path: Path) -> None:
    _image(tmp_path / "val" / "documents" / "doc1.png")
    _json(tmp_path / "val" / "val_v1.0.json", {"dataset_split": "val", "data": [
        {"questionId": 1, "question": "What is the date?", "image": "documents/doc1.png",
         "docId": 5, "answers": ["1/8/93", "January 8, 1993"]},
        {"questionId": 2, "question": "Title?", "image": "documents/doc2.png", "answers": ["x"]},
        {"questionId": 3, "question": "Bad row"},
    ]})
    res = convert("docvqa", tmp_path, "val")
    _check(res, dataset="docvqa", written=1, skipped={
        "image file missing": 1, "row missing questionId/question/image": 1})
    assert res.requests[0].metric == "anls" and res.requests[0].score("1/8/93") == 1.0


def test_chartqa_human_and_augmented(tmp_path: Path) -> None:
    _image(tmp_path / "val" / "png" / "c1.png")
    _json(tmp_path / "val" / "val_human.json", [
        {"imgname": "c1.png", "query": "What is the max?", "label": "12"},
        {"imgname": "c9.png", "query": "Missing?", "label": "1"}])
    _json(tmp_path / "val" / "val_augmented.json", [
        {"imgname": "c1.png", "query": "Which is highest?", "label": "Brazil"}])
    res = convert("chartqa", tmp_path, "val")
    _check(res, dataset="chartqa", written=2, skipped={"image file missing": 1})
    assert [r.id for r in res.requests] == ["chartqa_val_human_0", "chartqa_val_augmented_0"]
    assert [r.meta["source"] for r in res.requests] == ["human", "augmented"]
    assert res.requests[0].score("12%") == 1.0
    limited = convert("chartqa", tmp_path, "val", limit=1)
    assert len(limited.requests) == 1 and limited.limit_reached


def test_scienceqa_skips_text_only(tmp_path: Path) -> None:
    root = tmp_path / "data" / "scienceqa"
    _image(root / "images" / "val" / "11" / "image.png")
    problem = {"question": "Which animal?", "choices": ["cat", "dog"], "answer": 1,
               "hint": "Look at the picture.", "image": "image.png", "split": "val",
               "subject": "natural science"}
    _json(root / "problems.json", {
        "11": problem, "12": dict(problem, image=None), "13": dict(problem, answer=5)})
    _json(root / "pid_splits.json", {"train": [], "val": ["11", "12", "13", "99"], "test": []})
    res = convert("scienceqa", tmp_path / "data", "val")
    _check(res, dataset="scienceqa", written=1, skipped={
        "no image (text-only problem)": 1, "answer index not within choices": 1,
        "pid listed in pid_splits.json but not in problems.json": 1})
    r = res.requests[0]
    assert (r.options, r.answer_idx, r.answers) == (["cat", "dog"], 1, ["dog"])
    assert r.meta["hint"] == "Look at the picture."
    with pytest.raises(ValueError, match="no split 'dev'"):
        convert("scienceqa", tmp_path / "data", "dev")


def _ai2d_release(tmp_path: Path, n_images: int) -> Path:
    root = tmp_path / "ai2d"
    for i in range(n_images):
        _image(root / "images" / f"{i}.png")
        _json(root / "questions" / f"{i}.png.json", {"imageName": f"{i}.png", "questions": {
            f"What eats grass {i}?": {"abcLabel": False, "answerTexts": ["cow", "{}", "lion", "cow"],
                                      "correctAnswer": 2, "questionId": f"{i}.png-0"},
            f"What is A in the diagram {i}?": {"abcLabel": True, "answerTexts": ["leaf", "root"],
                                                "correctAnswer": 0, "questionId": f"{i}.png-1"},
        }})
    return root


def test_ai2d_options_abc_and_splits(tmp_path: Path) -> None:
    assert clean_options(["cow", "{}", "lion", "cow"], 2) == (["cow", "lion"], 1)
    _ai2d_release(tmp_path, 3)
    res = convert("ai2d", tmp_path, "all")
    _check(res, dataset="ai2d", written=3, skipped={
        "abcLabel question (needs the letter-overlay image, not rendered)": 3})
    r = res.requests[0]
    assert (r.id, r.options, r.answer_idx, r.answers) == ("ai2d_0.png-0", ["cow", "lion"], 1, ["lion"])
    kept = convert("ai2d", tmp_path, "all", keep_abc_label=True)
    assert len(kept.requests) == 6 and not kept.skipped
    with pytest.raises(FileNotFoundError, match="ai2d_test_ids.csv"):
        convert("ai2d", tmp_path, "test")
    (tmp_path / "ai2d_test_ids.csv").write_text("1\n")
    test = convert("ai2d", tmp_path, "test")
    assert [r.meta["image_id"] for r in test.requests] == [1]
    train, val = convert("ai2d", tmp_path, "train"), convert("ai2d", tmp_path, "val")
    # with fewer than N_VAL_IMAGES non-test images every one of them is held out for val
    assert N_VAL_IMAGES > 2 and sorted(r.meta["image_id"] for r in val.requests) == [0, 2]
    assert train.requests == []


def test_converter_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="source folder not found"):
        convert("textvqa", tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="TextVQA_0.5.1_val.json"):
        convert("textvqa", tmp_path)
    _json(tmp_path / "TextVQA_0.5.1_val.json", {"rows": []})
    (tmp_path / "train_images").mkdir()
    with pytest.raises(ValueError, match="missing key\\(s\\) data"):
        convert("textvqa", tmp_path)
    (tmp_path / "TextVQA_0.5.1_val.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        convert("textvqa", tmp_path)
    with pytest.raises(ValueError, match="no converter for dataset 'mnist'"):
        convert("mnist", tmp_path)
    with pytest.raises(ValueError, match="limit must be >= 1"):
        convert("chartqa", tmp_path, limit=0)
    assert set(CONVERTERS) == {"textvqa", "vqav2", "okvqa", "docvqa", "chartqa", "scienceqa", "ai2d"}


def test_prepare_dataset_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _image(tmp_path / "rel" / "val" / "png" / "c1.png")
    _json(tmp_path / "rel" / "val" / "val_human.json", [
        {"imgname": "c1.png", "query": "Max?", "label": "12"},
        {"imgname": "gone.png", "query": "Min?", "label": "3"}])
    out = tmp_path / "rel" / "chartqa_val.jsonl"
    rc = prepare_main(["chartqa", "--src", str(tmp_path / "rel"), "--out", str(out), "--split", "val"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "wrote 1" in printed and "skipped 1: image file missing" in printed
    reqs = load_requests(out, check_images=True)
    assert [r.id for r in reqs] == ["chartqa_val_human_0"]
    assert json.loads(out.read_text())["image"] == "val/png/c1.png"
    assert prepare_main(["chartqa", "--src", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "source folder not found" in capsys.readouterr().err
    assert prepare_main(["chartqa", "--src", str(tmp_path / "rel"), "--out", str(out),
                         "--keep-abc-label"]) == 2


# -------------------------------------------------------------------------------- prompts


def test_prompts_molmo_and_plain() -> None:
    assert format_prompt("TextVQA", "What brand?") == "text_vqa: What brand?"
    assert format_prompt("vqa_v2", "How many?") == "vqa2: How many?"
    mc = format_prompt("scienceqa", "Which animal?", options=["cat", "dog"], meta={"hint": "Look."})
    assert mc == "science_qa: Look.\nWhich animal?\nA: cat\nB: dog\n"
    assert format_prompt("docvqa", "Date?", template="plain") == (
        "Date?\nAnswer the question using a single word or phrase.")
    assert format_prompt("ai2d", "Eats grass?", options=["cow", "lion"], template="plain") == (
        "Eats grass?\nA. cow\nB. lion\nAnswer with the option's letter from the given choices directly.")
    assert format_prompt("coco_caption", "") == (
        "coco_captioning: Caption the image with 1 or two sentences")
    req = Request(id="x", image="/i.png", question="Max?", answers=["1"],
                  metric="relaxed_accuracy", dataset="chartqa")
    assert build_prompt(req) == "chart_qa: Max?"
    with pytest.raises(ValueError, match="unknown prompt template"):
        format_prompt("chartqa", "q", template="fancy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown dataset"):
        format_prompt("mnist", "q")
    assert DECODING.as_generate_kwargs() == {"max_new_tokens": 64, "do_sample": False, "num_beams": 1}
