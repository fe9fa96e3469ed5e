"""A byte-level BPE tokenizer trained on the task suite's text, so that answer lengths are counted
in real subword tokens (as MolmoE-1B counts them with OLMoE's GPT-NeoX BPE).

Layout (what :meth:`model_runtime.molmoe.config.MolmoeConfig.small` expects): ``<|endoftext|>``
id 0 (EOS, and BOS as in Molmo for OLMo), ``<|padding|>`` id 1, the learned vocabulary up to
``vocab_size - 1``, then Molmo's five image tokens at ``vocab_size ..`` (rows of the additional
embedding, never produced by the LM head).
"""

from __future__ import annotations

from typing import Iterable

from model_runtime.molmoe.tokenizer import EOS_TEXT, IMAGE_TOKEN_NAMES, TextTokenizer

SPECIAL_TEXTS: tuple[str, ...] = (EOS_TEXT, "<|padding|>")


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> TextTokenizer:
    """Train a GPT-2-style byte-level BPE on ``texts``; ids as in the module docstring.

    Raises:
        ValueError: ``vocab_size`` leaves no room for the 256 byte symbols.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(SPECIAL_TEXTS):
        raise ValueError(f"vocab_size {vocab_size} < 256 byte symbols + {len(SPECIAL_TEXTS)} special tokens")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
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
