"""Answer metrics: hand-checked cases against the official definitions, plus property tests."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_runtime.metrics import (
    METRIC_FOR_DATASET, METRICS, UNIT_INTERVAL_METRICS, CiderCorpus, anls, canonical_metric,
    cider, cider_corpus, coco_tokenize, exact_match, extract_answer, metric_for_dataset,
    multiple_choice, normalize_exact, normalize_vqa_answer, parse_number, relaxed_accuracy,
    score, select_option, vqa_score,
)
from model_runtime.metrics.vqa import process_digit_article, process_punctuation

# --------------------------------------------------------------------------------- VQA score


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("two", "2"),
        ("Two Dogs", "2 dogs"),
        ("none", "0"),
        ("the cat.", "cat"),
        ("A dog", "dog"),
        ("dont", "don't"),
        ("don't", "don't"),  # apostrophe is not in the punctuation list
        ("1,000", "1000"),  # comma between digits: every punctuation mark is deleted
        ("yes, sir", "yes sir"),  # ", " touches a space: deleted
        ("red,blue", "red blue"),  # touches no space and no digit comma: becomes a space
        ("3.5", "3.5"),  # period followed by a digit is kept
        ("end.", "end"),  # period not followed by a digit is removed
        ("left-hand", "left hand"),
        ("  hello\tworld\n", "hello world"),
        ("oclock", "o'clock"),
    ],
)
def test_vqa_normalisation_official_rules(raw: str, expected: str) -> None:
    assert normalize_vqa_answer(raw) == expected


def test_vqa_period_strip_keeps_the_official_count_quirk() -> None:
    # vqaEval passes re.UNICODE (32) as the count of periodStrip.sub: 40 periods → 8 remain.
    assert process_punctuation("x." * 40).count(".") == 8


def test_vqa_digit_comma_deletes_all_punctuation_in_text() -> None:
    # With a digit comma anywhere, "/" is deleted instead of becoming a space (official rule).
    assert process_punctuation("1,000 a/b") == "1000 ab"
    assert process_punctuation("a/b") == "a b"
    assert process_digit_article("The Two cats") == "2 cats"


@pytest.mark.parametrize("k, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_ten_answer_leave_one_out(k: int, expected: float) -> None:
    refs = ["cat"] * k + [f"other{i}" for i in range(10 - k)]
    assert vqa_score("cat", refs) == pytest.approx(expected, abs=1e-12)


def _official_loop(pred: str, refs: list[str]) -> float:
    """The official evaluate() loop with annotation dicts (distinct by answer_id)."""
    gts = [{"answer": normalize_vqa_answer(r), "answer_id": i} for i, r in enumerate(refs)]
    res = normalize_vqa_answer(pred)
    accs = []
    for gt in gts:
        others = [item for item in gts if item != gt]
        accs.append(min(1, len([item for item in others if item["answer"] == res]) / 3))
    return sum(accs) / len(accs)


@pytest.mark.parametrize(
    "pred, refs",
    [
        ("two", ["2", "2", "two", "3", "3", "3", "2", "4", "none", "2"]),
        ("The Cat.", ["cat", "a cat", "cats", "cat", "dog", "dog", "dog", "dog", "dog", "kitten"]),
        ("dont know", ["don't know"] * 2 + ["no"] * 8),
    ],
)
def test_vqa_matches_official_loop(pred: str, refs: list[str]) -> None:
    assert vqa_score(pred, refs) == pytest.approx(_official_loop(pred, refs), abs=1e-12)


def test_vqa_tricky_pairs_match() -> None:
    assert vqa_score("two", ["2"]) == 1.0
    assert vqa_score("2", ["two"]) == 1.0  # references get the full normalisation
    assert vqa_score("the cat.", ["cat"]) == 1.0
    assert vqa_score("dont", ["don't"]) == 1.0
    assert vqa_score("1,000", ["1000"]) == 1.0
    assert vqa_score("cat", ["dog"]) == 0.0


def test_vqa_fewer_references() -> None:
    assert vqa_score("cat", ["cat"]) == 1.0  # one reference: exact match after normalisation
    assert vqa_score("cat", "cat") == 1.0
    # three references, all agreeing: each subset has 2 matches → 2/3 (documented ceiling)
    assert vqa_score("cat", ["cat", "cat", "cat"]) == pytest.approx(2 / 3)
    # two references, one agreeing: subsets {cat} and {dog} → (1/3 + 0) / 2
    assert vqa_score("cat", ["cat", "dog"]) == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="at least one reference"):
        vqa_score("cat", [])


def test_vqa_official_reference_mode() -> None:
    # Identical un-normalised references are not processed at all by the official script.
    assert vqa_score("two", ["Two"] * 10, reference_mode="official") == 0.0
    assert vqa_score("two", ["Two"] * 10) == 1.0
    # Differing references get processPunctuation only: "cat." loses its period, "Cat" keeps case.
    refs = ["cat."] * 4 + ["Cat"] * 6
    assert vqa_score("cat", refs, reference_mode="official") == 1.0
    assert vqa_score("dog", refs, reference_mode="official") == 0.0
    with pytest.raises(ValueError, match="reference_mode"):
        vqa_score("cat", ["cat"], reference_mode="bogus")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- ANLS


def test_anls_threshold_exactly_half() -> None:
    ref = "abcdefghij"  # 10 characters
    assert anls("abcdexxxxx", [ref]) == 0.0  # NL = 5/10 = 0.5, not < 0.5
    assert anls("abcdefxxxx", [ref]) == pytest.approx(0.6)  # NL = 0.4
    assert anls("abcdefghix", [ref]) == pytest.approx(0.9)


def test_anls_normalisation_length_and_max() -> None:
    assert anls("  Hello   WORLD ", ["hello world"]) == 1.0
    assert anls("abc", ["abcd"]) == pytest.approx(0.75)  # 1 edit / max(3, 4)
    assert anls("abcd", ["zzzz", "abcx"]) == pytest.approx(0.75)  # max over references
    assert anls("", [""]) == 1.0
    assert anls("", ["abc"]) == 0.0
    with pytest.raises(ValueError):
        anls("a", [])


# -------------------------------------------------------------------------- relaxed accuracy


def test_relaxed_accuracy_numbers() -> None:
    assert relaxed_accuracy("1,000", ["1000"]) == 1.0
    assert relaxed_accuracy("$1,049", ["1000"]) == 1.0  # 4.9 % off
    assert relaxed_accuracy("105", ["100"]) == 1.0  # exactly 5 %
    assert relaxed_accuracy("105.1", ["100"]) == 0.0
    assert relaxed_accuracy("-95", ["-100"]) == 1.0
    assert relaxed_accuracy("0", ["0"]) == 1.0  # reference 0: exact
    assert relaxed_accuracy("0.001", ["0"]) == 0.0
    assert relaxed_accuracy("7", ["9", "7.2"]) == 1.0  # max over references


def test_relaxed_accuracy_percent() -> None:
    assert relaxed_accuracy("12%", ["12"]) == 1.0  # chart units
    assert relaxed_accuracy("12", ["12%"]) == 1.0
    assert relaxed_accuracy("0.12", ["12%"]) == 1.0  # fraction reading
    assert relaxed_accuracy("12%", ["12"], percent_mode="fraction") == 0.0  # Pix2Struct reading
    assert relaxed_accuracy("13%", ["12"]) == 0.0


def test_relaxed_accuracy_text_and_parsing() -> None:
    assert relaxed_accuracy("Yes", ["yes"]) == 1.0
    assert relaxed_accuracy(" Brazil ", ["brazil"]) == 1.0
    assert relaxed_accuracy("Brazil", ["Chile"]) == 0.0
    assert parse_number("nan") is None and parse_number("inf") is None
    assert parse_number("1,00") is None  # malformed thousands separator
    assert parse_number("$1,234.5") == (1234.5,)
    assert parse_number("-$3") == (-3.0,)
    assert parse_number("12.5%") == (12.5, 0.125)
    assert relaxed_accuracy("1,00", ["1,00"]) == 1.0  # not a number: string comparison


# ------------------------------------------------------------------------------ exact match


def test_exact_match_normalisation() -> None:
    assert exact_match("The cat.", ["cat"]) == 1.0
    assert exact_match("  LEFT ", ["left"]) == 1.0
    assert exact_match("1,000", ["1000"]) == 1.0
    assert exact_match("3.5", ["35"]) == 0.0  # decimals keep their point
    assert exact_match("two", ["2"]) == 0.0  # no number-word mapping (documented)
    assert exact_match("dog", ["cat", "a dog"]) == 1.0
    assert normalize_exact("An apple, the pie!") == "apple pie"


# ------------------------------------------------------------------------- multiple choice

OPTS = ["a red ball", "a blue cube", "a green cone"]


@pytest.mark.parametrize(
    "pred, idx",
    [
        ("B", 1), ("(B)", 1), ("B.", 1), ("b", 1), ("B) a blue cube", 1), ("(C) cone", 2),
        ("The answer is C.", 2), ("Answer: A", 0), ("a blue cube", 1), ("A Blue Cube.", 1),
        ("It is the green cone, clearly", 2), ("blue", 1), ("a gren con", 2),
    ],
)
def test_select_option(pred: str, idx: int) -> None:
    assert select_option(pred, OPTS) == idx


def test_select_option_letters_as_option_text() -> None:
    # AI2D "which label" questions: option texts are letters; exact option text wins.
    assert select_option("A", ["C", "A", "B", "D"]) == 1
    # a letter beyond the options is not a letter answer; falls through to edit distance
    assert select_option("E", ["x", "y", "zz"]) in (0, 1)
    # ambiguous containment ("cat" and "cat food" both occur) → edit distance decides
    assert select_option("cat food", ["cat", "cat food"]) == 1
    assert select_option("", OPTS) == -1


def test_multiple_choice_scoring_and_errors() -> None:
    assert multiple_choice("B", options=OPTS, answer_idx=1) == 1.0
    assert multiple_choice("A", options=OPTS, answer_idx=1) == 0.0
    assert multiple_choice("", options=OPTS, answer_idx=0) == 0.0
    assert multiple_choice("B", ["a blue cube"], options=OPTS) == 1.0  # idx from the reference
    with pytest.raises(ValueError, match="options"):
        multiple_choice("B", answer_idx=1)
    with pytest.raises(ValueError, match="out of range"):
        multiple_choice("B", options=OPTS, answer_idx=3)
    with pytest.raises(ValueError, match="answer_idx"):
        multiple_choice("B", ["nothing like it"], options=OPTS)


# ----------------------------------------------------------------------------------- CIDEr

CAPTION_REFS = [
    ["a man riding a horse on a beach", "a person rides a horse near the ocean"],
    ["two dogs playing with a red ball", "dogs chase a ball in the park"],
    ["a plate of food with broccoli and rice", "a dinner plate with rice and vegetables"],
    ["a red bus driving down a city street", "a double decker bus on the road"],
]
CAPTION_PREDS = ["a man rides a horse on the beach", "a dog playing with a ball",
                 "a plate with rice", "a bus"]


def test_cider_matches_pycocoevalcap() -> None:
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.cider.cider import Cider

    gts = {i: refs for i, refs in enumerate(CAPTION_REFS)}
    res = {i: [p] for i, p in enumerate(CAPTION_PREDS)}
    ref_mean, ref_items = Cider().compute_score(gts, res)
    mean, items = cider_corpus(CAPTION_PREDS, CAPTION_REFS, tokenize=False)
    assert mean == pytest.approx(float(ref_mean), abs=1e-9)
    assert items == pytest.approx([float(x) for x in ref_items], abs=1e-9)
    assert max(items) > 1.0  # CIDEr is not in [0, 1]


def test_cider_identical_caption_scores_ten() -> None:
    # Two items with disjoint words: every n-gram of item 0 has df = 1 < N = 2, so the
    # candidate equal to its single reference has cosine 1 for n = 1..4 and no length penalty.
    refs = [["one two three four five"], ["six seven eight nine ten"]]
    _, items = cider_corpus(["one two three four five", "six seven"], refs, tokenize=False)
    assert items[0] == pytest.approx(10.0)
    assert 0.0 < items[1] < 10.0


def test_cider_corpus_object_gives_the_corpus_scores_per_item() -> None:
    corpus = CiderCorpus.from_references(CAPTION_REFS)
    _, items = cider_corpus(CAPTION_PREDS, CAPTION_REFS)
    for pred, refs, expected in zip(CAPTION_PREDS, CAPTION_REFS, items):
        assert cider(pred, refs, corpus=corpus) == pytest.approx(expected)
        assert score("cider", pred, refs, corpus=corpus) == pytest.approx(expected)


def test_cider_single_item_is_its_own_corpus_and_warns() -> None:
    with pytest.warns(UserWarning, match="identically 0"):
        assert cider("a man riding a horse", ["a man riding a horse"]) == 0.0


def test_coco_tokenize_and_cider_errors() -> None:
    assert coco_tokenize("A man, riding a Horse.") == "a man riding a horse"
    assert coco_tokenize("don't stop...") == "don't stop"
    with pytest.raises(ValueError, match="predictions"):
        cider_corpus(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError):
        CiderCorpus.from_references([])


# --------------------------------------------------------------- extraction, registry, map


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Answer: two cats\nBecause I see them", "two cats"),
        ("  answer:   Yes ", "Yes"),
        ("Short answer: 12", "12"),
        ("\n\n  the red   one \nsecond line", "the red one"),
        ("plain", "plain"),
        ("Answer:", ""),
        ("", ""),
    ],
)
def test_extract_answer(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


def test_score_registry_aliases_and_extraction() -> None:
    assert canonical_metric("mc") == "multiple_choice" and canonical_metric("EM") == "exact_match"
    assert score("vqa_score", "Answer: Two\nexplanation", ["2"] * 10) == 1.0
    assert score("vqa_score", "Answer: Two\nexplanation", ["2"] * 10, extract=False) == 0.0
    assert score("mc", "Answer: (B)", None, options=OPTS, answer_idx=1) == 1.0
    assert score("ansl", "abcd", ["abce"]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        score("bleu", "a", ["a"])
    with pytest.raises(ValueError, match="str"):
        score("anls", None, ["a"])  # type: ignore[arg-type]
    assert set(UNIT_INTERVAL_METRICS) == set(METRICS) - {"cider"}


def test_metric_for_dataset() -> None:
    expected = {
        "TextVQA": "vqa_score", "OK-VQA": "vqa_score", "COCO-VQA": "vqa_score",
        "VQAv2": "vqa_score", "vqa_v2": "vqa_score", "ScienceQA": "multiple_choice",
        "AI2D": "multiple_choice", "TallyQA": "exact_match", "GQA": "exact_match",
        "ST-VQA": "anls", "DocVQA": "anls", "InfoVQA": "anls", "ChartQA": "relaxed_accuracy",
        "COCO Caption": "cider", "coco_caption": "cider",
    }
    for name, metric in expected.items():
        assert metric_for_dataset(name) == metric, name
    assert set(METRIC_FOR_DATASET.values()) <= set(METRICS)
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*known datasets"):
        metric_for_dataset("mnist")


def test_metrics_and_datasets_do_not_import_torch() -> None:
    code = ("import sys, model_runtime.metrics, model_runtime.datasets, experiments.prepare_dataset; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------ property tests

text = st.text(max_size=30)
words = st.text(alphabet="abcdexyz019 .,'-%$", max_size=20)


@settings(max_examples=150, deadline=None)
@given(pred=text, refs=st.lists(text, min_size=1, max_size=10))
def test_unit_metrics_are_in_unit_interval(pred: str, refs: list[str]) -> None:
    for name in ("vqa_score", "anls", "relaxed_accuracy", "exact_match"):
        value = METRICS[name](pred, refs)
        assert 0.0 <= value <= 1.0 and not math.isnan(value), name


@settings(max_examples=150, deadline=None)
@given(ref=st.one_of(text, words))
def test_prediction_equal_to_reference_scores_one(ref: str) -> None:
    assert vqa_score(ref, [ref]) == 1.0
    assert vqa_score(ref, [ref] * 10) == 1.0
    assert anls(ref, [ref]) == 1.0
    assert relaxed_accuracy(ref, [ref]) == 1.0
    assert exact_match(ref, [ref]) == 1.0


@settings(max_examples=100, deadline=None)
@given(options=st.lists(text, min_size=1, max_size=6), data=st.data())
def test_multiple_choice_option_text_scores_one(options: list[str], data: st.DataObject) -> None:
    normed = [" ".join(o.lower().split()).removesuffix(".").rstrip() for o in options]
    if len(set(normed)) != len(normed):
        return  # options indistinguishable after normalisation: no unique answer exists
    idx = data.draw(st.integers(0, len(options) - 1))
    assert multiple_choice(options[idx], options=options, answer_idx=idx) == 1.0
    pred = data.draw(text)
    assert multiple_choice(pred, options=options, answer_idx=idx) in (0.0, 1.0)


@settings(max_examples=40, deadline=None)
@given(preds=st.lists(words, min_size=1, max_size=4), data=st.data())
def test_cider_is_within_zero_and_ten(preds: list[str], data: st.DataObject) -> None:
    refs = [data.draw(st.lists(words, min_size=1, max_size=3)) for _ in preds]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the corpus path must not warn
        _, items = cider_corpus(preds, refs)
    assert all(0.0 <= x <= 10.0 + 1e-9 for x in items)
