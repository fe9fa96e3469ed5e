"""Prompt templates and decoding settings: the one place that defines how a request is asked.

One-template rule: every policy and baseline is evaluated with the *same* prompt template
and the *same* decoding settings, so accuracy differences come from the knobs alone. Runtime
code builds its text input with :func:`build_prompt` and decodes with :data:`DECODING`; nothing
else formats prompts.

Template ``"molmo"`` (default) reproduces Molmo's evaluation prompts (``DataFormatter`` with
``system_prompt="demo_or_style"``): the user text is ``"<style>: <question>"`` where ``style``
is the dataset's Molmo style tag (:data:`MOLMO_STYLE`), which asks the model for the dataset's
answer format (short answers for VQA-style sets). Multiple-choice questions list the options
one per line with letters, as Molmo's ``format_options`` does::

    science_qa: <hint>
    <question>
    A: <option 0>
    B: <option 1>

(ScienceQA's hint, when present, goes before the question, as in Molmo.) Captioning uses
``"coco_captioning: Caption the image with 1 or two sentences"``. The chat wrapping
(``" User: ... Assistant:"``) is added by the model's processor, not here.

Template ``"plain"`` is for models without Molmo's style tags: short-answer questions get
``"\\nAnswer the question using a single word or phrase."`` appended; multiple-choice ones list
``"A. option"`` lines and end with ``"Answer with the option's letter from the given choices
directly."`` (LLaVA's evaluation prompts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

from model_runtime.metrics import canonical_dataset

from .request_format import Request

#: Molmo style tag per canonical dataset name.
MOLMO_STYLE: dict[str, str] = {
    "textvqa": "text_vqa", "okvqa": "okvqa", "vqav2": "vqa2", "coco_vqa": "vqa2",
    "scienceqa": "science_qa", "ai2d": "ai2_diagram", "mmbench": "a_okvqa_mc",
    "tallyqa": "tally_qa", "gqa": "gqa", "st_vqa": "st_qa", "docvqa": "doc_qa",
    "infovqa": "info_qa", "chartqa": "chart_qa", "coco_caption": "coco_captioning",
    # the procedural task suite asks in the style of the set each task stands in for
    "easy_vqa": "vqa2", "synth_text": "text_vqa", "synth_doc": "doc_qa",
    "synth_chart": "chart_qa", "synth_count": "tally_qa", "synth_diagram": "ai2_diagram",
    "synth_read": "st_qa",  # the training-only large-print task (suite.synth_read)
    "synth_words": "st_qa",  # training-only print from large to scene size (suite.synth_words)
    "synth_digits": "st_qa",  # training-only large-print form values (suite.synth_digits)
    "synth_numbers": "st_qa",  # training-only numbers from large to document print (suite.synth_numbers)
    "synth_chart_bind": "chart_qa",  # training-only chart binding questions (suite.synth_chart_bind)
    "synth_chart_find": "chart_qa",  # training-only chart finding questions (suite.synth_chart_find)
}
CAPTION_PROMPT = "Caption the image with 1 or two sentences"
#: The prompt of a dense-caption training example (Molmo pre-trains on PixMo-Cap's long captions
#: under a ``long_caption`` style tag); training text only, no request is asked this.
DENSE_CAPTION_PROMPT = "long_caption: Describe everything in the image."
PLAIN_SHORT_ANSWER = "Answer the question using a single word or phrase."
PLAIN_MULTIPLE_CHOICE = "Answer with the option's letter from the given choices directly."
OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

Template = Literal["molmo", "plain"]
TEMPLATES: tuple[str, ...] = ("molmo", "plain")
DEFAULT_TEMPLATE: Template = "molmo"


@dataclass(frozen=True)
class DecodingSettings:
    """Generation settings shared by every policy/baseline.

    Attributes:
        max_new_tokens: generation cap in tokens (64).
        do_sample: False = greedy decoding (deterministic).
        num_beams: 1 (no beam search: the latency model assumes one sequence).
        temperature: unused when greedy; recorded for completeness.
    """

    max_new_tokens: int = 64
    do_sample: bool = False
    num_beams: int = 1
    temperature: float = 0.0

    def as_generate_kwargs(self) -> dict[str, object]:
        """Keyword arguments for a ``generate`` call (temperature only when sampling)."""
        out: dict[str, object] = {"max_new_tokens": self.max_new_tokens,
                                  "do_sample": self.do_sample, "num_beams": self.num_beams}
        if self.do_sample:
            out["temperature"] = self.temperature
        return out


DECODING = DecodingSettings()


def _options_block(options: Sequence[str], sep: str) -> str:
    if len(options) > len(OPTION_LETTERS):
        raise ValueError(f"at most {len(OPTION_LETTERS)} options can be lettered, got {len(options)}")
    return "\n".join(f"{OPTION_LETTERS[i]}{sep} {opt}" for i, opt in enumerate(options))


def format_prompt(dataset: str, question: str, *, options: Sequence[str] | None = None,
                  meta: Mapping[str, object] | None = None,
                  template: Template = DEFAULT_TEMPLATE) -> str:
    """The prompt text for one question (see the module docstring for the formats).

    Raises:
        ValueError: unknown dataset or template, or too many options.
    """
    key = canonical_dataset(dataset)
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; templates: {', '.join(TEMPLATES)}")
    hint = str((meta or {}).get("hint") or "").strip()
    body = f"{hint}\n{question}" if hint else question
    if key == "coco_caption":
        return f"{MOLMO_STYLE[key]}: {CAPTION_PROMPT}" if template == "molmo" else CAPTION_PROMPT
    if template == "molmo":
        text = f"{MOLMO_STYLE[key]}: {body}"
        if options:
            text += "\n" + _options_block(options, ":") + "\n"
        return text
    if options:
        return f"{body}\n{_options_block(options, '.')}\n{PLAIN_MULTIPLE_CHOICE}"
    return f"{body}\n{PLAIN_SHORT_ANSWER}"


def build_prompt(request: Request, *, template: Template = DEFAULT_TEMPLATE) -> str:
    """The prompt text for a :class:`Request` (its dataset, question, options and hint)."""
    return format_prompt(request.dataset, request.question, options=request.options,
                         meta=request.meta, template=template)
