"""The procedural VQA task suite: determinism, split separation, scoring, geometry, writing."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from experiments import make_suite as make_suite_cli
from model_runtime.datasets import build_prompt, load_requests
from model_runtime.datasets.suite import (
    TASK_INFO, TASKS, TRAIN_ONLY_TASKS, example_to_request, make_suite, question_corpus, render_example,
)
from model_runtime.molmoe.preprocessing import select_tiling

SYNTH = [t for t in TASKS if t != "easy_vqa"]


def _same(a, b) -> bool:
    return (np.array_equal(a.image, b.image) and a.question == b.question and a.answers == b.answers
            and a.options == b.options and a.answer_idx == b.answer_idx and a.meta == b.meta)


def test_tasks_and_info():
    assert TASKS == ("easy_vqa", "synth_text", "synth_doc", "synth_chart", "synth_count", "synth_diagram")
    assert set(TASK_INFO) == set(TASKS + TRAIN_ONLY_TASKS)
    assert TASK_INFO["synth_diagram"].metric == "multiple_choice"
    assert "MIT" in TASK_INFO["easy_vqa"].description


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_and_seeded(task):
    for split in ("train", "val", "test"):
        a = render_example(task, split, 3, seed=1)
        b = render_example(task, split, 3, seed=1)
        assert _same(a, b)
        assert a.image.dtype == np.uint8 and a.image.ndim == 3 and a.image.shape[2] == 3
    diff = [not _same(render_example(task, "val", i, seed=0), render_example(task, "val", i, seed=1))
            for i in range(4)]
    assert any(diff)


@pytest.mark.parametrize("task", SYNTH)
def test_synthetic_streams_differ(task):
    for i in range(3):
        tr, va, te = (render_example(task, s, i) for s in ("train", "val", "test"))
        assert not _same(tr, va) and not _same(tr, te) and not _same(va, te)


def test_easy_vqa_train_and_eval_disjoint():
    train = [render_example("easy_vqa", "train", i) for i in range(200)]
    val = [render_example("easy_vqa", "val", i) for i in range(200)]
    test = [render_example("easy_vqa", "test", i) for i in range(200)]
    assert {e.meta["source_split"] for e in train} == {"train"}
    assert {e.meta["source_split"] for e in val + test} == {"test"}
    # val and test split easy-VQA's test images, so they share no image
    assert not {e.meta["source_image_id"] for e in val} & {e.meta["source_image_id"] for e in test}
    assert all(e.image.shape == (64, 64, 3) for e in train[:5])
    with pytest.raises(ValueError, match="past its end"):
        render_example("easy_vqa", "val", 10**7)


@pytest.mark.parametrize("task", TASKS)
def test_gold_answer_scores_one(task, tmp_path):
    for i in range(12):
        ex = render_example(task, "val", i)
        req = example_to_request(ex, request_id=f"{task}-{i}", image_path=str(tmp_path / "x.png"), split="val")
        assert req.metric == TASK_INFO[task].metric and req.dataset == task
        assert req.score(ex.answers[0]) == 1.0, (ex.question, ex.answers)
        wrong = "ABCD"[(ex.answer_idx + 1) % 4] if ex.options is not None else "zzqx wrong 987654"
        assert req.score(wrong) < 1.0
        assert ex.answers[0] == ex.answers[0].strip() and not ex.answers[0].endswith(".")
        assert build_prompt(req)  # the task has a Molmo style tag
        if ex.options is not None:
            assert len(ex.options) == 4 and len(set(ex.options)) == 4
            assert req.score(ex.options[ex.answer_idx]) == 1.0
        json.dumps(ex.meta)


@pytest.mark.parametrize("task", SYNTH)
def test_image_sizes_within_spec(task):
    for i in range(30):
        h, w, _ = render_example(task, "train", i).image.shape
        assert 100 <= h <= 640 and 100 <= w <= 640
        assert 0.45 <= w / h <= 2.2


@pytest.mark.parametrize("task", ["synth_doc", "synth_text"])
def test_tiling_spread_per_tier(task):
    shapes = [render_example(task, "val", i).image.shape[:2] for i in range(50)]
    for max_crops in (3, 6, 12):
        counts = {int(np.prod(select_tiling(h - 56, w - 56, 112, max_crops))) for h, w in shapes}
        assert len(counts) >= 2, (max_crops, counts)
    px = [render_example(task, "val", i).meta["text_px"] for i in range(50)]
    assert min(px) <= 10 and max(px) >= 18


def test_bad_names_raise():
    with pytest.raises(ValueError, match="'nope'"):
        render_example("nope", "val", 0)
    with pytest.raises(ValueError, match="'dev'"):
        render_example("synth_doc", "dev", 0)
    with pytest.raises(ValueError, match="'dev'"):
        make_suite("/nonexistent-never-written", per_task=1, splits=("dev",))


def test_make_suite_and_cli(tmp_path):
    out = tmp_path / "suite"
    make_suite(out, seed=0, per_task=3, workers=2)
    for split in ("val", "test"):
        reqs = load_requests(out / f"{split}.jsonl", check_images=True)
        assert len(reqs) == 3 * len(TASKS)
        assert reqs[0].id == "easy_vqa-%s-0" % split
        assert {r.dataset for r in reqs} == set(TASKS)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task_splits"] == {"seen": list(TASKS[:5]), "heldout": ["synth_diagram"]}
    assert manifest["counts"]["val"]["synth_doc"] == 3 and set(manifest["sha256"]) == {"val.jsonl", "test.jsonl"}
    with pytest.raises(ValueError, match="not empty"):
        make_suite(out, per_task=3)
    # one worker writes byte-identical files
    out1 = tmp_path / "suite1"
    make_suite(out1, seed=0, per_task=3, workers=1)
    assert json.loads((out1 / "manifest.json").read_text())["sha256"] == manifest["sha256"]
    assert (out1 / "images/synth_chart/val/2.png").read_bytes() == (out / "images/synth_chart/val/2.png").read_bytes()

    assert make_suite_cli.main(["--out", str(out), "--per-task", "2", "--splits", "val",
                                "--workers", "1", "--tasks", "synth_count", "synth_doc"]) == 2
    assert make_suite_cli.main(["--out", str(out), "--per-task", "2", "--splits", "val",
                                "--workers", "1", "--tasks", "synth_count", "synth_doc", "--overwrite"]) == 0
    assert len(load_requests(out / "val.jsonl", check_images=True)) == 4
    assert not (out / "test.jsonl").exists()


def test_make_suite_from_a_first_index_writes_the_later_requests_of_the_same_streams(tmp_path):
    """--first-index K renders indices K.. of each stream: fresh requests beside a suite of the first K."""
    whole, later = tmp_path / "whole", tmp_path / "later"
    make_suite(whole, seed=0, per_task=4, splits=("test",), workers=1, tasks=("synth_count", "synth_diagram"))
    assert make_suite_cli.main(["--out", str(later), "--per-task", "2", "--first-index", "2", "--splits", "test",
                                "--workers", "1", "--tasks", "synth_count", "synth_diagram"]) == 0
    reqs = load_requests(later / "test.jsonl", check_images=True)
    assert [r.id for r in reqs] == ["synth_count-test-2", "synth_count-test-3", "synth_diagram-test-2",
                                    "synth_diagram-test-3"]
    same = {r.id: r for r in load_requests(whole / "test.jsonl")}
    for r in reqs:
        assert (r.question, list(r.answers)) == (same[r.id].question, list(same[r.id].answers))
    assert (later / "images/synth_diagram/test/3.png").read_bytes() == \
        (whole / "images/synth_diagram/test/3.png").read_bytes()
    manifest = json.loads((later / "manifest.json").read_text())
    assert (manifest["first_index"], manifest["per_task"]) == (2, 2)
    assert json.loads((whole / "manifest.json").read_text())["first_index"] == 0
    with pytest.raises(ValueError, match="first_index must be >= 0"):
        make_suite(tmp_path / "never", per_task=1, first_index=-1)
    assert not (tmp_path / "never").exists()


def test_make_suite_writes_a_training_only_tasks_val_stream(tmp_path):
    """A training-only task's val requests score a checkpoint on the skill it drills; no test split exists."""
    out = tmp_path / "probe"
    assert make_suite_cli.main(["--out", str(out), "--per-task", "2", "--splits", "val", "--workers", "1",
                                "--tasks", "synth_chart_find"]) == 0
    reqs = load_requests(out / "val.jsonl", check_images=True)
    ex = render_example("synth_chart_find", "val", 1, seed=0)
    assert [r.id for r in reqs] == ["synth_chart_find-val-0", "synth_chart_find-val-1"]
    assert reqs[1].question == ex.question and list(reqs[1].answers) == list(ex.answers)
    with pytest.raises(ValueError, match="training-only"):
        make_suite(tmp_path / "never", per_task=1, splits=("val", "test"), tasks=("synth_chart_find",))
    assert not (tmp_path / "never").exists()


def test_question_corpus():
    texts = list(question_corpus(seed=0, n=12))
    assert len(texts) == 12 and all(isinstance(t, str) and t for t in texts)
    assert texts == list(question_corpus(seed=0, n=12))


@pytest.mark.parametrize("task", SYNTH)
def test_dense_caption_describes_the_gold_answer(task):
    """Every procedural example carries a caption that names what its question asks about."""
    for i in range(6):
        ex = render_example(task, "train", i, seed=0)
        assert ex.caption and ex.caption == render_example(task, "train", i, seed=0).caption
        if task == "synth_count":  # every placed object is counted, by color and shape
            head, body = ex.caption.rstrip(".").split(" shapes: ")
            assert int(head) == ex.meta["n_objects"] == sum(int(p.split()[0]) for p in body.split(", "))
        elif task == "synth_diagram":
            assert ex.caption.count(" points to ") == ex.meta["n_arrows"]
            assert ex.meta["answer_text"] in ex.caption
        elif task == "synth_chart" and ex.meta["question_kind"] != "value":
            assert f"{ex.answers[0]} " in ex.caption  # the max/min label, with its value
        else:
            assert ex.answers[0] in ex.caption
    assert render_example("easy_vqa", "train", 0, seed=0).caption is None  # its source does not describe images


def test_training_only_large_print_task():
    from model_runtime.datasets.suite import TASKS, TRAIN_ONLY_TASKS, render_example

    assert "synth_read" in TRAIN_ONLY_TASKS and "synth_read" not in TASKS  # never in a suite's requests
    for i in range(6):
        ex = render_example("synth_read", "train", i, seed=0)
        h, w, _ = ex.image.shape
        assert (w, h) == (ex.meta["image_w"], ex.meta["image_h"])
        assert ex.meta["text_px"] >= 0.1 * h or ex.meta["text_px"] >= 8  # large print (shrunk only to fit the width)
        assert ex.answers[0] in ex.caption and ex.question.endswith(("?", "."))
    a, b = render_example("synth_read", "val", 0, seed=0), render_example("synth_read", "val", 0, seed=0)
    assert np.array_equal(a.image, b.image) and a.answers == b.answers
    assert not np.array_equal(render_example("synth_read", "train", 0).image, a.image)
    with pytest.raises(ValueError, match="training-only"):
        render_example("synth_read", "test", 0)


def test_training_only_print_size_ladder():
    """synth_words: deterministic, train/val only, print from 4 % to 50 % of the image height (at
    least 8 px where the band allows), one word asked plainly or several asked by plate colour."""
    from model_runtime.datasets.suite import TASKS, TRAIN_ONLY_TASKS, render_example
    from model_runtime.datasets.suite.synth_words import HEIGHT_FRACTION

    assert "synth_words" in TRAIN_ONLY_TASKS and "synth_words" not in TASKS
    assert TRAIN_ONLY_TASKS.index("synth_read") == 0  # appended after it: synth_read's stream is unchanged
    fracs, counts = [], set()
    for i in range(40):
        ex = render_example("synth_words", "train", i, seed=0)
        h, w, _ = ex.image.shape
        assert (w, h) == (ex.meta["image_w"], ex.meta["image_h"])
        assert HEIGHT_FRACTION[0] <= ex.meta["text_frac"] <= HEIGHT_FRACTION[1]
        assert ex.meta["text_px"] <= h
        assert f"says {ex.answers[0]}." in ex.caption
        n = ex.meta["n_objects"]
        counts.add(n)
        assert ex.caption.count(" says ") == n
        if n > 1:  # a colour question names the target's plate, and the answer is unique
            color = next(c for c in ex.question.split() if f"the {c} sign says {ex.answers[0]}." in ex.caption)
            assert ex.caption.count(f"the {color} sign") == 1
        fracs.append(ex.meta["text_frac"])
    assert counts == {1, 2, 3} and min(fracs) < 0.1 < 0.25 < max(fracs)  # the ladder spans scene to large print
    a, b = render_example("synth_words", "val", 3), render_example("synth_words", "val", 3)
    assert np.array_equal(a.image, b.image) and a.question == b.question
    with pytest.raises(ValueError, match="training-only"):
        render_example("synth_words", "test", 0)


def test_training_only_digit_strings():
    """synth_digits: synth_read's large print with a document field's value every time (mostly
    digit strings); deterministic, train/val only; synth_read's own stream is unchanged by it."""
    from model_runtime.datasets.suite import TASKS, TRAIN_ONLY_TASKS, render_example

    assert "synth_digits" in TRAIN_ONLY_TASKS and "synth_digits" not in TASKS
    assert TRAIN_ONLY_TASKS[:2] == ("synth_read", "synth_words")  # appended: their streams keep their keys
    with_digit = 0
    for i in range(30):
        ex = render_example("synth_digits", "train", i, seed=0)
        assert ex.task == "synth_digits" and ex.meta["source"] == "form"
        h = ex.image.shape[0]
        assert ex.meta["text_px"] >= min(8, h) and f"says {ex.answers[0]}." in ex.caption
        with_digit += any(c.isdigit() for c in ex.answers[0])
    assert with_digit >= 20  # names and cities are 2 of the 15 fields
    a, b = render_example("synth_digits", "val", 5), render_example("synth_digits", "val", 5)
    assert np.array_equal(a.image, b.image) and a.answers == b.answers
    with pytest.raises(ValueError, match="training-only"):
        render_example("synth_digits", "test", 0)


def test_training_only_numbers_ladder():
    """synth_numbers: synth_words' plates with numbers only, print from 4 % to 50 % of the image
    height; deterministic, train/val only; synth_words' own stream is unchanged by sharing its renderer."""
    import hashlib

    from model_runtime.datasets.suite import TASKS, TRAIN_ONLY_TASKS, render_example
    from model_runtime.datasets.suite.synth_words import HEIGHT_FRACTION

    assert "synth_numbers" in TRAIN_ONLY_TASKS and "synth_numbers" not in TASKS
    assert TRAIN_ONLY_TASKS[:3] == ("synth_read", "synth_words", "synth_digits")  # appended: their keys hold
    # synth_words' train example 7 as it rendered before its renderer took a ``pick``
    words = render_example("synth_words", "train", 7, seed=0)
    assert hashlib.sha256(words.image.tobytes()).hexdigest()[:16] == "e776a85a1e0da593"
    assert (words.question, words.answers[0]) == ("what word is written on the black sign?", "farm")
    fracs = []
    for i in range(40):
        ex = render_example("synth_numbers", "train", i, seed=0)
        assert ex.task == "synth_numbers"
        assert HEIGHT_FRACTION[0] <= ex.meta["text_frac"] <= HEIGHT_FRACTION[1]
        plates = re.findall(r"says ([^ ]+)\.", ex.caption)
        assert len(plates) == ex.meta["n_objects"] and ex.answers[0] in plates
        assert all(re.fullmatch(r"[C$]?\d+(/\d+)?", t) for t in plates)  # every plate a number
        fracs.append(ex.meta["text_frac"])
    assert min(fracs) < 0.1 < 0.25 < max(fracs)
    a, b = render_example("synth_numbers", "val", 2), render_example("synth_numbers", "val", 2)
    assert np.array_equal(a.image, b.image) and a.answers == b.answers
    with pytest.raises(ValueError, match="training-only"):
        render_example("synth_numbers", "test", 0)


def test_training_only_chart_binding():
    """synth_chart_bind: synth_chart's drawing asked binding questions whose answers follow from the
    chart's categories and values; train/val only, deterministic, no caption; synth_chart's own test
    stream is unchanged by sharing its drawing."""
    import hashlib

    from model_runtime.datasets.suite import TASKS, TRAIN_ONLY_TASKS, render_example
    from model_runtime.datasets.suite.synth_chart_bind import ORDINALS
    from model_runtime.metrics.dataset_metrics import metric_for_dataset

    assert "synth_chart_bind" in TRAIN_ONLY_TASKS and "synth_chart_bind" not in TASKS
    assert TRAIN_ONLY_TASKS[:4] == ("synth_read", "synth_words", "synth_digits", "synth_numbers")  # appended
    assert metric_for_dataset("synth_chart_bind") == "relaxed_accuracy"
    # synth_chart's test example 3 as it rendered before its drawing became draw_chart()
    chart = render_example("synth_chart", "test", 3, seed=0)
    assert hashlib.sha256(chart.image.tobytes()).hexdigest()[:16] == "0304f0f3a2f1bbb4"
    assert (chart.question, chart.answers, chart.caption) == (
        "What is the value for Alpha?", ["45"], "visitors: Alpha 45, Omega 80, Gamma 85, Delta 95.")
    kinds = set()
    for i in range(60):
        ex = render_example("synth_chart_bind", "train", i, seed=0)
        assert ex.task == "synth_chart_bind" and ex.caption is None and ex.glyph_text
        labels, values = ex.meta["categories"], ex.meta["values"]
        assert len(labels) == len(values) == ex.meta["n_objects"] and all(lab in ex.glyph_text for lab in labels)
        qk, q, a = ex.meta["question_kind"], ex.question, ex.answers[0]
        kinds.add(qk)
        if qk == "value":
            assert a == str(values[next(k for k, lab in enumerate(labels) if lab in q)])
        elif qk == "reverse":
            assert a == labels[values.index(int(re.search(r"(\d+)\?$", q).group(1)))]
        elif qk in ("ordinal_value", "ordinal_label"):
            k = next(k for k, o in enumerate(ORDINALS) if f" {o} " in q)
            assert a == (str(values[k]) if qk == "ordinal_value" else labels[k])
        else:
            x, y = re.search(r", (\S+) or (\S+)\?$", q).groups()
            vx, vy = values[labels.index(x)], values[labels.index(y)]
            larger = "larger" in q or "higher" in q
            assert a == (x if (vx > vy) == larger else y)
    assert kinds == {"value", "reverse", "ordinal_value", "ordinal_label", "compare"}
    a, b = render_example("synth_chart_bind", "val", 4), render_example("synth_chart_bind", "val", 4)
    assert np.array_equal(a.image, b.image) and a.answers == b.answers
    with pytest.raises(ValueError, match="training-only"):
        render_example("synth_chart_bind", "test", 0)


def test_training_only_chart_finding():
    """synth_chart_find: synth_chart's drawing asked where a named category is; the answers follow from the chart's
    categories in drawing order, an absent name comes from the chart's own vocabulary; train/val only, deterministic."""
    from model_runtime.datasets.suite import TASKS, TRAIN_ONLY_TASKS, render_example
    from model_runtime.datasets.suite.synth_chart import CATEGORY_SETS

    assert TRAIN_ONLY_TASKS[-2:] == ("synth_chart_bind", "synth_chart_find") and "synth_chart_find" not in TASKS
    seen = set()
    for i in range(80):
        ex = render_example("synth_chart_find", "train", i, seed=0)
        labels, qk, q, a = ex.meta["categories"], ex.meta["question_kind"], ex.question, ex.answers[0]
        assert ex.caption is None and all(lab in ex.glyph_text for lab in labels)
        if qk == "position":
            name = re.search(r"(?:is|of) (\S+?)(?: from the \w+)?\?$", q).group(1)
            assert a == str(labels.index(name) + 1)
        elif qk == "presence":
            name = re.search(r"(?:for|show) (\S+)\?$", q).group(1)
            assert a == ("yes" if name in labels else "no")
            assert any(name in s and set(labels) <= set(s) for s in CATEGORY_SETS)  # the same vocabulary
        else:
            name = re.search(r"after (\S+)\?$", q).group(1)
            assert a == labels[labels.index(name) + 1]
        seen.add((qk, a) if qk == "presence" else qk)
    assert seen == {"position", "next", ("presence", "yes"), ("presence", "no")}
    a, b = render_example("synth_chart_find", "val", 5), render_example("synth_chart_find", "val", 5)
    assert np.array_equal(a.image, b.image) and a.question == b.question and a.answers == b.answers
    with pytest.raises(ValueError, match="training-only"):
        render_example("synth_chart_find", "test", 0)
