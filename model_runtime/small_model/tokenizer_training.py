"""A byte-level BPE tokenizer trained on the task suite's text, so that answer lengths are counted
in real subword tokens (as MolmoE-1B counts them with OLMoE's GPT-NeoX BPE).

Layout (what :meth:`model_runtime.molmoe.config.MolmoeConfig.small` expects): ``<|endoftext|>``
id 0 (EOS, and BOS as in Molmo for OLMo), ``<|padding|>`` id 1, the learned vocabulary up to
``vocab_size - 1``, then Molmo's five image tokens at ``vocab_size ..`` (rows of the additional
embedding, never produced by the LM head).

Digits: with ``split_digits`` every digit is its own piece (the first one of a number keeps the space
before it, ``" 4310"`` → ``Ġ4 3 1 0``), as LLaMA's and PaLM's tokenizers split numbers. A byte-level BPE
learns merges of whatever digit pairs its corpus happens to repeat (``" 4310"`` → ``Ġ4 3 10`` but
``" 4317"`` → ``Ġ4 3 1 7``), so the same glyph maps to different tokens by its neighbours; the suite's
model read chart values (a closed set of 20) at 0.76 in large print and the forms' digit strings at
0.06 (benchmarks/RESULTS.md, "Twelfth H200 run").
"""

from __future__ import annotations

from typing import Iterable

from model_runtime.molmoe.tokenizer import EOS_TEXT, IMAGE_TOKEN_NAMES, TextTokenizer

SPECIAL_TEXTS: tuple[str, ...] = (EOS_TEXT, "<|padding|>")
#: One piece per digit, a leading space kept with the digit after it (a ``Split`` pre-tokenizer, run before the byte level).
DIGIT_PIECE = r" ?[0-9]"


def _digit_split():
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Split(Regex(DIGIT_PIECE), behavior="isolated")


def splits_digits(tokenizer: TextTokenizer) -> bool:
    """Whether ``tokenizer`` encodes every digit as its own piece (see the module docstring)."""
    pre = tokenizer.tokenizer.pre_tokenizer
    return pre is not None and [p for p, _ in pre.pre_tokenize_str(" 4310")] == ["Ġ4", "3", "1", "0"]


def with_split_digits(tokenizer: TextTokenizer) -> TextTokenizer:
    """``tokenizer`` with the digit split put before its pre-tokenizer; same vocabulary, same ids.

    The ids of every token stay those the weights were trained with: multi-digit tokens merely stop
    being produced by ``encode`` (decoding them still works). A tokenizer that already splits digits
    comes back unchanged.
    """
    from tokenizers import Tokenizer, pre_tokenizers

    if splits_digits(tokenizer):
        return tokenizer
    tok = Tokenizer.from_str(tokenizer.tokenizer.to_str())
    tok.pre_tokenizer = pre_tokenizers.Sequence([_digit_split(), tok.pre_tokenizer])
    return TextTokenizer(tok)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1024, *, split_digits: bool = False) -> TextTokenizer:
    """Train a GPT-2-style byte-level BPE on ``texts``; ids as in the module docstring.

    ``split_digits``: digits are pieces of their own while training too, so no merge is spent on
    digit pairs.

    Raises:
        ValueError: ``vocab_size`` leaves no room for the 256 byte symbols.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(SPECIAL_TEXTS):
        raise ValueError(f"vocab_size {vocab_size} < 256 byte symbols + {len(SPECIAL_TEXTS)} special tokens")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_digits:
        tok.pre_tokenizer = pre_tokenizers.Sequence([_digit_split(), tok.pre_tokenizer])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TEXTS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    if tok.get_vocab_size() > vocab_size:  # pragma: no cover - the trainer honours vocab_size
        raise RuntimeError(f"trained vocabulary has {tok.get_vocab_size()} entries > {vocab_size}")
    # the image tokens go after the learned vocabulary: the LM head (vocab_size rows) never emits them
    while tok.get_vocab_size() < vocab_size:  # small corpora learn fewer merges; keep ids stable
        tok.add_tokens([f"<|unused{tok.get_vocab_size()}|>"])
    tok.add_special_tokens(list(IMAGE_TOKEN_NAMES))
    return TextTokenizer(tok)
