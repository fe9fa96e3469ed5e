"""VQA accuracy, exactly as the official VQA evaluation (``vqaEval.py``) computes it.

Source of truth: ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` of the GT-Vision-Lab/VQA
repository (the script behind the VQA v1/v2 challenges, also used for TextVQA and OK-VQA).
This module re-states its normalisation and its scoring rule:

Normalisation (applied to the prediction, and here to every reference too, see below):

1. newlines and tabs become spaces, then the text is stripped;
2. ``processPunctuation``: for each character ``p`` of :data:`PUNCTUATION`, if ``p`` touches a
   space in the *original* text (``"p "`` or ``" p"`` occurs) or the text contains a comma
   between two digits anywhere (``"1,000"``), ``p`` is deleted; otherwise ``p`` becomes a
   space. Then every period that is not followed by a digit is deleted (``"3.5"`` keeps its
   period, ``"cat."`` loses it). Quirk kept on purpose: the official call is
   ``periodStrip.sub("", text, re.UNICODE)``, which passes ``re.UNICODE`` (= 32) as the *count*
   argument, so at most 32 periods are removed; :func:`process_punctuation` does the same.
   Apostrophes and colons are not in the list, so ``"don't"`` keeps its apostrophe.
3. ``processDigitArticle``: lower-case, split on whitespace, map number words
   ``none/zero..ten`` to digits (``"two"`` → ``"2"``, ``"none"`` → ``"0"``), drop the articles
   ``a``, ``an``, ``the``, then map contractions written without apostrophe to their
   apostrophe form (``"dont"`` → ``"don't"``; the official map, :data:`CONTRACTIONS`), and
   re-join with single spaces.

Scoring (``evaluate``): for each of the ``n`` human answers, drop that one answer and count how
many of the remaining ``n - 1`` equal the normalised prediction; the item's accuracy is the mean
over the ``n`` subsets of ``min(matches / 3, 1)``. With the usual 10 answers and ``k`` humans
agreeing with the prediction this gives 0.3, 0.6, 0.9, 1.0 for k = 1, 2, 3, ≥4.

Choices where the official script is silent or differs (documented, deliberate):

- References: the official script applies only ``processPunctuation`` to the ground truth,
  and only when the 10 answers are not all identical, because the VQA annotations were
  already normalised by the dataset authors. The project applies the *full* normalisation to
  every reference (``reference_mode="full"``, default) so that un-normalised references
  (``"two"``, ``"The cat."``) compare as intended; on already normalised annotations both
  give the same score. ``reference_mode="official"`` reproduces the official handling exactly.
- Fewer than 10 references: the same leave-one-out average over the ``n`` references given,
  so the best reachable score is ``min((n - 1) / 3, 1)`` (e.g. 2/3 with 3 references).
- One reference: leave-one-out would leave nothing to match, so the score is the exact match
  of the normalised strings (1.0 or 0.0).
- No reference: ``ValueError``.

Pure Python, no third-party imports.
"""

from __future__ import annotations

import re
from typing import Literal, Sequence

#: The official contraction map (keys without apostrophe → apostrophe form). Keys with an
#: upper-case letter (``"Im"``) can never match because words are lower-cased first; they are
#: kept because the official map has them.
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}

#: The official ``manualMap``: number words → digits.
NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}

ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

#: The official punctuation list, in its order (order matters: replacements are cumulative).
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
    ">", "<", "@", "`", ",", "?", "!",
)

# The official pattern is "(?!<=\d)(\.)(?!\d)"; its first group is a (buggy) negative
# *lookahead* for the literal "<=" + digit, which is always true in front of a ".", so the
# effective rule is "a period not followed by a digit". The pattern is kept verbatim.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# re.UNICODE == 32, passed positionally as ``count`` by the official script.
_OFFICIAL_PERIOD_COUNT = 32

ReferenceMode = Literal["full", "official"]


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation`` (see the module docstring for the rules)."""
    out = text
    has_digit_comma = _COMMA_STRIP.search(text) is not None
    for p in PUNCTUATION:
        if (p + " " in text or " " + p in text) or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_OFFICIAL_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lower, number words → digits, drop articles,
    contractions → apostrophe form, single spaces."""
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(word)
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_vqa_answer(text: str) -> str:
    """Full official normalisation of one answer (what the script applies to predictions)."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def vqa_score(
    prediction: str,
    references: Sequence[str] | str,
    *,
    reference_mode: ReferenceMode = "full",
    **_: object,
) -> float:
    """Official VQA accuracy of one prediction against its human answers, in [0, 1].

    Args:
        prediction: the model's answer (already extracted, see ``extract_answer``).
        references: the human answers (10 for VQAv2 / TextVQA / OK-VQA; any number ≥ 1).
        reference_mode: ``"full"`` (default) normalises every reference like the prediction;
            ``"official"`` applies only ``processPunctuation`` and only when the references are
            not all identical, as ``vqaEval.py`` does.

    Returns:
        mean over the leave-one-out subsets of ``min(#matches / 3, 1)``; exact match after
        normalisation when there is a single reference.

    Raises:
        ValueError: no references.
    """
    refs = [references] if isinstance(references, str) else [str(r) for r in references]
    if not refs:
        raise ValueError("vqa_score needs at least one reference answer, got none")
    pred = normalize_vqa_answer(prediction)
    if reference_mode == "full":
        gts = [normalize_vqa_answer(r) for r in refs]
    elif reference_mode == "official":
        gts = [process_punctuation(r) for r in refs] if len(set(refs)) > 1 else list(refs)
    else:
        raise ValueError(f"reference_mode must be 'full' or 'official', got {reference_mode!r}")
    if len(gts) == 1:
        return 1.0 if gts[0] == pred else 0.0
    matches = [g == pred for g in gts]
    total = sum(matches)
    # Leaving out answer i removes one match iff answer i itself matched; answers are left out
    # by position (the official script compares whole annotation dicts, which are distinct).
    acc = sum(min(1.0, (total - m) / 3.0) for m in matches)
    return acc / len(gts)
