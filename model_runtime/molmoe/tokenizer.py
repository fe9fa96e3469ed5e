"""Text tokenizer of the runtime: a ``tokenizers.Tokenizer`` read from a checkpoint's ``tokenizer.json``.

MolmoE-1B ships the OLMoE (GPT-NeoX BPE) tokenizer with five added tokens (``<im_start>``,
``<im_end>``, ``<im_patch>``, ``<im_col>``, ``<|image|>``); :func:`special_tokens_from` reads
their ids, so the prompt layout follows whatever tokenizer the checkpoint has (tiny test
checkpoints use a byte-level BPE without merges).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .config import SpecialTokens

#: Added-token strings of the Molmo prompt layout → ``SpecialTokens`` field.
IMAGE_TOKEN_NAMES: dict[str, str] = {
    "<im_start>": "im_start",
    "<im_end>": "im_end",
    "<im_patch>": "im_patch",
    "<im_col>": "im_col",
    "<|image|>": "image_prompt",
}
EOS_TEXT = "<|endoftext|>"
PAD_TEXTS = ("<|padding|>", "<|pad|>")


class TextTokenizer:
    """Encode/decode text with a ``tokenizers.Tokenizer`` (no special tokens are added on encode)."""

    def __init__(self, tokenizer: object) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def from_file(cls, path: str | Path) -> "TextTokenizer":
        from tokenizers import Tokenizer

        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer.json at {path}")
        return cls(Tokenizer.from_file(str(path)))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(path))


def special_tokens_from(tokenizer: TextTokenizer, *, eos_token_id: int | None = None, pad_token_id: int | None = None) -> SpecialTokens:
    """Special ids from the tokenizer's added tokens (EOS doubles as BOS, as in Molmo for OLMo).

    Raises:
        ValueError: an image token or EOS is missing from the tokenizer.
    """
    ids: dict[str, int] = {}
    for text, name in IMAGE_TOKEN_NAMES.items():
        tid = tokenizer.token_to_id(text)
        if tid is None:
            raise ValueError(f"tokenizer has no {text!r} token")
        ids[name] = int(tid)
    if eos_token_id is None:
        tid = tokenizer.token_to_id(EOS_TEXT)
        if tid is None:
            raise ValueError(f"tokenizer has no {EOS_TEXT!r} token and no eos_token_id was given")
        eos_token_id = int(tid)
    if pad_token_id is None:
        for text in PAD_TEXTS:
            tid = tokenizer.token_to_id(text)
            if tid is not None:
                pad_token_id = int(tid)
                break
        else:
            pad_token_id = eos_token_id
    return SpecialTokens(bos=eos_token_id, eos=eos_token_id, pad=pad_token_id, **ids)
