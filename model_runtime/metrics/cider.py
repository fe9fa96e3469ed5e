"""CIDEr-D, as the COCO caption evaluation (``pycocoevalcap.cider``) computes it.

**Not in [0, 1].** CIDEr-D of one caption lies in [0, 10] (each n-gram cosine similarity is at
most 1 and the official scorer multiplies by 10); a good COCO captioner scores ~1.0-1.4 on
average. Every other metric of :mod:`model_runtime.metrics` is in [0, 1]; callers that need a
[0, 1] number (the outcome cache's ``score``) must rescale CIDEr explicitly (e.g. ``/ 10``).

Definition, re-stated from ``pycocoevalcap/cider/cider_scorer.py`` (n = 4, sigma = 6):

- every sentence is split on whitespace (the official pipeline feeds PTB-tokenised, lower-case
  text; :func:`coco_tokenize` approximates that tokeniser without Java);
- document frequency ``df(g)`` = number of *images* (corpus items) whose reference set contains
  the n-gram ``g``; with ``N`` items, an n-gram's weight is ``tf(g) · (log N − log max(1, df(g)))``;
- per n (1..4) the similarity between the candidate vector ``c`` and a reference vector ``r`` is
  ``Σ_g min(c_g, r_g) · r_g / (‖c‖ ‖r‖)`` (the "clipping" of CIDEr-D; 0 when a norm is 0), times
  the Gaussian length penalty ``exp(−δ² / (2 sigma²))``;
- the item's score is ``10 × mean over n of (mean over its references of the similarity)``,
  and the corpus score is the mean over items.

Kept quirk: in the official code the "length" in ``δ`` is accumulated where the n-gram index is
1, i.e. it counts **bigrams** (``max(words − 1, 0)``), not words; this module does the same so
that its numbers equal the official ones (they differ from a word-length penalty only when a
sentence has 0 or 1 word).

CIDEr is corpus-level: IDF comes from the references of the whole evaluated set.
:func:`cider_corpus` scores a set; :class:`CiderCorpus` holds the document frequencies of a
reference corpus so that single items can be scored against it (:meth:`CiderCorpus.score`),
giving the same per-item numbers as :func:`cider_corpus` on that corpus. The per-item
:func:`cider` without ``corpus=`` uses the item itself as the corpus (N = 1): then every weight
is ``log 1 − log 1 = 0`` and the score is **always 0**. It warns; pass ``corpus=`` to get real
scores.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

CIDER_N: int = 4
CIDER_SIGMA: float = 6.0

Ngram = tuple[str, ...]

# Tokens the COCO caption PTBTokenizer wrapper drops after tokenising.
_COCO_DROPPED = {"''", "'", "``", "`", "-lrb-", "-rrb-", "-lcb-", "-rcb-", ".", "?", "!", ",",
                 ":", "-", "--", "...", ";"}
_TOKEN = re.compile(r"\.\.\.|--|[^\W_]+(?:['’][^\W_]+)?|\S")


def coco_tokenize(text: str) -> str:
    """Lower-case, split punctuation off words and drop the punctuation tokens, approximating
    the Stanford PTB tokeniser used by ``pycocoevalcap`` (which needs Java). Returns the
    tokens joined by single spaces."""
    tokens = _TOKEN.findall(text.lower())
    return " ".join(t for t in tokens if t not in _COCO_DROPPED)


def _ngram_counts(sentence: str, n: int) -> dict[Ngram, int]:
    words = sentence.split()
    counts: dict[Ngram, int] = defaultdict(int)
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i:i + k])] += 1
    return counts


@dataclass
class _Vector:
    """TF-IDF vector of one sentence split by n-gram order; ``length`` = bigram count."""

    grams: list[dict[Ngram, float]]
    norms: list[float]
    length: int


@dataclass
class CiderCorpus:
    """Document frequencies of a reference corpus (one reference list per item).

    Attributes:
        n_items: number of corpus items ``N`` (images).
        document_frequency: n-gram → number of items whose references contain it.
        n, sigma: CIDEr-D parameters (4, 6.0 officially).
    """

    n_items: int
    document_frequency: dict[Ngram, float] = field(repr=False)
    n: int = CIDER_N
    sigma: float = CIDER_SIGMA

    @classmethod
    def from_references(
        cls,
        references_list: Iterable[Sequence[str]],
        *,
        n: int = CIDER_N,
        sigma: float = CIDER_SIGMA,
        tokenize: bool = True,
    ) -> "CiderCorpus":
        """Build from the reference captions of every item (``tokenize``: apply
        :func:`coco_tokenize` first; pass False for pre-tokenised lower-case text)."""
        df: dict[Ngram, float] = defaultdict(float)
        n_items = 0
        for refs in references_list:
            refs = _as_list(refs, "references")
            n_items += 1
            seen: set[Ngram] = set()
            for ref in refs:
                seen.update(_ngram_counts(coco_tokenize(ref) if tokenize else ref, n))
            for gram in seen:
                df[gram] += 1.0
        if n_items == 0:
            raise ValueError("a CIDEr corpus needs at least one item")
        return cls(n_items=n_items, document_frequency=dict(df), n=n, sigma=sigma)

    def _vector(self, sentence: str) -> _Vector:
        log_n = math.log(float(self.n_items))
        grams: list[dict[Ngram, float]] = [{} for _ in range(self.n)]
        norms = [0.0] * self.n
        length = 0
        for gram, tf in _ngram_counts(sentence, self.n).items():
            df = math.log(max(1.0, self.document_frequency.get(gram, 0.0)))
            k = len(gram) - 1
            grams[k][gram] = float(tf) * (log_n - df)
            norms[k] += grams[k][gram] ** 2
            if k == 1:  # the official scorer's length counts bigrams (see module docstring)
                length += tf
        return _Vector(grams, [math.sqrt(x) for x in norms], length)

    def _similarity(self, hyp: _Vector, ref: _Vector) -> list[float]:
        delta = float(hyp.length - ref.length)
        penalty = math.e ** (-(delta ** 2) / (2 * self.sigma ** 2))
        out = []
        for k in range(self.n):
            val = 0.0
            for gram, weight in hyp.grams[k].items():
                ref_weight = ref.grams[k].get(gram, 0.0)
                val += min(weight, ref_weight) * ref_weight
            if hyp.norms[k] != 0 and ref.norms[k] != 0:
                val /= hyp.norms[k] * ref.norms[k]
            out.append(val * penalty)
        return out

    def score(self, prediction: str, references: Sequence[str], *, tokenize: bool = True) -> float:
        """CIDEr-D of one caption against its references, IDF from this corpus; in [0, 10]."""
        refs = _as_list(references, "references")
        if tokenize:
            prediction = coco_tokenize(prediction)
            refs = [coco_tokenize(r) for r in refs]
        hyp = self._vector(prediction)
        totals = [0.0] * self.n
        for ref in refs:
            for k, v in enumerate(self._similarity(hyp, self._vector(ref))):
                totals[k] += v
        return 10.0 * (sum(totals) / self.n) / len(refs)


def _as_list(refs: Sequence[str] | str, what: str) -> list[str]:
    out = [refs] if isinstance(refs, str) else list(refs)
    if not out:
        raise ValueError(f"CIDEr needs at least one caption in {what}, got none")
    return out


def cider_corpus(
    predictions: Sequence[str],
    references_list: Sequence[Sequence[str]],
    *,
    tokenize: bool = True,
    n: int = CIDER_N,
    sigma: float = CIDER_SIGMA,
) -> tuple[float, list[float]]:
    """CIDEr-D of a set of captions: ``(mean, per_item)``; IDF from ``references_list``.

    Args:
        predictions: one caption per item.
        references_list: the reference captions of each item (same length as predictions).
        tokenize: apply :func:`coco_tokenize` (False: inputs are already tokenised, lower-case).

    Raises:
        ValueError: length mismatch, empty corpus, or an item without references.
    """
    if len(predictions) != len(references_list):
        raise ValueError(
            f"cider_corpus: {len(predictions)} predictions but {len(references_list)} reference lists"
        )
    if tokenize:
        predictions = [coco_tokenize(p) for p in predictions]
        references_list = [[coco_tokenize(r) for r in _as_list(refs, "references")]
                           for refs in references_list]
    corpus = CiderCorpus.from_references(references_list, n=n, sigma=sigma, tokenize=False)
    per_item = [corpus.score(p, refs, tokenize=False)
                for p, refs in zip(predictions, references_list)]
    return sum(per_item) / len(per_item), per_item


def cider(
    prediction: str,
    references: Sequence[str] | str,
    *,
    corpus: CiderCorpus | None = None,
    tokenize: bool = True,
    **_: object,
) -> float:
    """Per-item CIDEr-D in [0, 10] (NOT clipped to [0, 1]).

    With ``corpus`` (a :class:`CiderCorpus` built from the evaluated set's references) this is
    the item's entry of :func:`cider_corpus` on that set. Without it the item alone is the
    corpus, which makes every IDF weight 0 and the score 0.0 for any input; a warning says so.
    """
    refs = _as_list(references, "references")
    if corpus is None:
        warnings.warn(
            "cider() without corpus= uses the single item as its own IDF corpus, where CIDEr-D "
            "is identically 0; build a CiderCorpus from the evaluated set's references",
            stacklevel=2,
        )
        corpus = CiderCorpus.from_references([refs], tokenize=tokenize)
    return corpus.score(prediction, refs, tokenize=tokenize)
