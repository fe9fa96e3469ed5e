"""Training batches for the small model, rendered on the fly from the task suite's seed.

Global batch ``b`` holds examples ``F + b·B .. F + b·B + B − 1`` of one unbounded stream (F =
:attr:`TrainDataConfig.first_example`, 0 by default); example ``i``
draws its task from ``rng([seed, i])`` with :attr:`TrainDataConfig.task_weights` and is the
suite's ``train`` example ``i`` of that task (:func:`model_runtime.datasets.suite.render_example`),
so the suite's val/test requests (other seeds of the same renderers) are never trained on. Worker
``w`` of ``W`` builds batches ``w, w + W, ...``; PyTorch's data loader returns workers' batches
round-robin, so the batch sequence is the same for any worker count.

With ``reuse`` R > 1 a rendered example is trained on R times, ``reuse_distance`` D batches apart:
batch ``b`` is the chunks ``b, b − D, …, b − (R−1)·D`` of ``B/R`` examples each (chunk ``j`` =
examples ``j·B/R ..``; chunks before the start are fresh examples from a separate index range).
Rendering is the pipeline's cost, so R multiplies the rate at which it feeds the GPU; a worker
keeps the chunks it rendered, which are exactly the ones it needs again when D is a multiple of
the worker count (otherwise it renders them again: same batches, more work).

With ``caption_rate`` c > 0, a train example whose renderer describes its image
(``Example.caption``) is, with probability c (drawn from ``rng([seed, i, 1])``), a dense-caption
example instead of its question: :data:`DENSE_CAPTION_PROMPT` answered with the caption, the
stand-in for Molmo's caption pre-training (every sign, field, bar, object and arrow is supervised,
where a question supervises one). Its task id is ``n_tasks + task``, so per-task accuracies count
questions only. Val batches are questions only.

Each example is asked exactly as the runtime asks it (``format_question`` of the project's prompt
template, Molmo preprocessing at the full tier's ``max_crops``) and answered with
``" " + answer`` + EOS (multiple choice: the option's letter), the way the runtime decodes a
generation. Labels sit at the position *before* the token they predict.

Every sample also carries the subword ids of its image's caption (``caption_ids``, empty for
an image without one), the targets of :mod:`.word_presence`, whatever the sample asks; and,
for each grid of :attr:`TrainDataConfig.print_grids`, the per-cell character targets of
:mod:`.print_supervision` (``print_targets``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch

from model_runtime.datasets.prompts import DENSE_CAPTION_PROMPT, OPTION_LETTERS, format_prompt
from model_runtime.molmoe.config import MolmoeConfig
from model_runtime.molmoe.preprocessing import MolmoImagePreprocessor, build_prompt, format_question
from model_runtime.molmoe.tokenizer import TextTokenizer

from .print_supervision import print_targets

IGNORE = -100


@dataclass(frozen=True)
class TrainDataConfig:
    """What the training stream renders.

    Attributes:
        seed: the suite's seed.
        batch_size: examples per batch.
        max_crops: crops per image (the full tier, as MolmoE was trained).
        task_weights: sampling weight per task (normalised); tasks missing here are not trained on.
            The default gives a fifth of the stream to the training-only large-print task
            (``suite.synth_read``), where the model learns what words look like before it must
            find them in a scene.
        template: prompt template of ``model_runtime.datasets.prompts``.
        reuse: times each rendered example is trained on (see the module docstring).
        reuse_distance: batches between two uses of an example.
        caption_rate: fraction of train examples asked for their dense caption (module docstring).
        first_example: index of the stream's first example. A run continuing another model's
            training through a fresh schedule starts past the examples that model saw (the
            stream is otherwise the same from index 0 in every run of one suite seed).
        print_grids: cells per crop side for which print-supervision targets are rendered
            (none by default; the trainer sets them from its print-supervision sites).
        print_slots, print_min_px: characters per cell, and the smallest print (crop px) labelled.
    """

    seed: int = 0
    batch_size: int = 256
    max_crops: int = 12
    task_weights: dict[str, float] = field(default_factory=lambda: {
        "easy_vqa": 0.08, "synth_text": 0.16, "synth_doc": 0.16, "synth_chart": 0.16,
        "synth_count": 0.12, "synth_diagram": 0.12, "synth_read": 0.20})
    template: str = "molmo"
    reuse: int = 1
    reuse_distance: int = 15
    caption_rate: float = 0.0
    first_example: int = 0
    print_grids: tuple[int, ...] = ()
    print_slots: int = 4
    print_min_px: float = 6.0

    def __post_init__(self) -> None:
        if self.reuse < 1 or self.batch_size % self.reuse:
            raise ValueError(f"reuse must be >= 1 and divide batch_size ({self.batch_size}), got {self.reuse}")
        if self.reuse > 1 and self.reuse_distance < 1:
            raise ValueError(f"reuse_distance must be >= 1, got {self.reuse_distance}")
        if not 0.0 <= self.caption_rate <= 1.0:
            raise ValueError(f"caption_rate must be in [0, 1], got {self.caption_rate}")
        if not 0 <= self.first_example < _WARMUP_INDEX:
            raise ValueError(f"first_example must be in [0, 2**40), got {self.first_example}")
        if any(g < 1 for g in self.print_grids) or self.print_slots < 1:
            raise ValueError(f"print_grids must be >= 1 and print_slots >= 1, got {self.print_grids}, {self.print_slots}")


#: First example index of the chunks that stand in for chunks before the stream's start.
_WARMUP_INDEX = 1 << 40


def answer_text(answers: Sequence[str], options: Sequence[str] | None, answer_idx: int | None) -> str:
    """The text the model is trained to generate: the first reference, or the option's letter."""
    if options is not None and answer_idx is not None:
        return OPTION_LETTERS[int(answer_idx)]
    return str(answers[0])


@dataclass
class TrainingSample:
    input_ids: np.ndarray     # (S,) prompt + answer + EOS
    labels: np.ndarray        # (S,) next token to predict at each position, IGNORE on the prompt
    patches: np.ndarray       # (n_crops, n_patches, patch²·3) uint8 pixels (normalised on the device)
    image_masks: np.ndarray   # (n_crops, n_patches)
    image_input_idx: np.ndarray  # (n_crops, tokens_per_crop), prompt positions
    task: int
    caption_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # distinct subword ids of the caption
    print_targets: dict[int, np.ndarray] = field(default_factory=dict)  # grid → (n_crops, grid², slots) int8


def make_sample(config: MolmoeConfig, tokenizer: TextTokenizer, preprocessor: MolmoImagePreprocessor, example,
                task_index: int, *, max_crops: int, template: str = "molmo", caption: bool = False,
                print_grids: Sequence[int] = (), print_slots: int = 4, print_min_px: float = 6.0) -> TrainingSample:
    """One suite ``Example`` → a teacher-forced training sample (``caption``: its dense-caption
    sample; ``print_grids``: the grids whose print-supervision targets it carries)."""
    if caption:
        if not example.caption:
            raise ValueError(f"a {example.task} example has no caption")
        text = format_question(config, DENSE_CAPTION_PROMPT)
        answer = example.caption
    else:
        text = format_question(config, format_prompt(example.task, example.question, options=example.options,
                                                     meta=example.meta, template=template))
        answer = answer_text(example.answers, example.options, example.answer_idx)
    prompt = build_prompt(preprocessor(example.image, max_crops, normalize=False), tokenizer.encode(text),
                          config.tokens.bos)
    target = tokenizer.encode(" " + answer) + [config.tokens.eos]
    n = int(prompt.input_ids.shape[0])
    ids = np.concatenate([prompt.input_ids, np.asarray(target[:-1], dtype=np.int64)])
    labels = np.full(ids.shape[0], IGNORE, dtype=np.int64)
    labels[n - 1 :] = target
    img = prompt.image
    caption_ids = (np.unique(np.asarray(tokenizer.encode(" " + example.caption), dtype=np.int64)) if example.caption
                   else np.zeros(0, np.int64))
    prints: dict[int, np.ndarray] = {}
    if print_grids:
        h, w = example.image.shape[:2]
        transforms = preprocessor.crop_transforms(h, w, max_crops)
        for g in print_grids:
            prints[int(g)] = print_targets(transforms, example.glyph_text, example.glyph_boxes,
                                           crop_px=config.image_size, grid=int(g), slots=print_slots, min_px=print_min_px)
    return TrainingSample(ids, labels, img.patches, img.image_masks, img.image_input_idx, task_index, caption_ids, prints)


def collate(samples: Sequence[TrainingSample], pad_id: int, vocab_size: int = 1024) -> dict[str, torch.Tensor]:
    """Left-pad samples into one batch (the runtime's layout); pixels stay uint8 for the copy.

    ``caption_targets`` (B, vocab_size) is the multi-hot of each sample's caption ids (ids at or
    above ``vocab_size`` dropped) and ``has_caption`` (B,) marks the samples that have one;
    ``print_targets_<g>`` (N crops, g², slots) int8 the print-supervision targets of grid g, for
    the grids every sample carries."""
    seq = max(s.input_ids.shape[0] for s in samples)
    b = len(samples)
    ids = np.full((b, seq), pad_id, dtype=np.int64)
    mask = np.zeros((b, seq), dtype=np.int64)
    labels = np.full((b, seq), IGNORE, dtype=np.int64)
    rows, idx = [], []
    for r, s in enumerate(samples):
        off = seq - s.input_ids.shape[0]
        ids[r, off:] = s.input_ids
        mask[r, off:] = 1
        labels[r, off:] = s.labels
        rows.append(np.full(s.patches.shape[0], r, dtype=np.int64))
        idx.append(np.where(s.image_input_idx >= 0, s.image_input_idx + off, -100))
    targets = np.zeros((b, vocab_size), dtype=np.uint8)
    for r, s in enumerate(samples):
        targets[r, s.caption_ids[s.caption_ids < vocab_size]] = 1
    return {
        "input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask), "labels": torch.from_numpy(labels),
        "patches": torch.from_numpy(np.concatenate([s.patches for s in samples])),
        "image_masks": torch.from_numpy(np.concatenate([s.image_masks for s in samples])),
        "crop_rows": torch.from_numpy(np.concatenate(rows)),
        "image_input_idx": torch.from_numpy(np.concatenate(idx)),
        "task": torch.tensor([s.task for s in samples], dtype=torch.long),
        "caption_targets": torch.from_numpy(targets),
        "has_caption": torch.tensor([s.caption_ids.size > 0 for s in samples]),
        **{f"print_targets_{g}": torch.from_numpy(np.concatenate([s.print_targets[g] for s in samples]))
           for g in set.intersection(*(set(s.print_targets) for s in samples))},
    }


def example_task(seed: int, index: int, tasks: Sequence[str], probs: np.ndarray) -> str:
    return tasks[int(np.random.default_rng([seed, index]).choice(len(tasks), p=probs))]


class SuiteStream(torch.utils.data.IterableDataset):
    """Collated training batches ``start_batch, start_batch + 1, ...`` (see the module docstring).

    Args:
        config, tokenizer: the model's.
        data: what to render.
        start_batch: first batch (a resumed run continues the same stream).
        split: the suite split to draw from ("train"; "val" for held-out monitoring batches).
    """

    def __init__(self, config: MolmoeConfig, tokenizer: TextTokenizer, data: TrainDataConfig, *,
                 start_batch: int = 0, split: str = "train", n_batches: int | None = None) -> None:
        super().__init__()
        self.config, self.tokenizer, self.data = config, tokenizer, data
        self.start_batch, self.split, self.n_batches = int(start_batch), split, n_batches
        self.tasks = tuple(data.task_weights)
        w = np.asarray([data.task_weights[t] for t in self.tasks], dtype=np.float64)
        self.probs = w / w.sum()

    def chunk_indices(self, b: int) -> list[tuple[int, range]]:
        """(chunk id, example indices) of the chunks that make up batch ``b``."""
        R, D = self.data.reuse, self.data.reuse_distance
        C = self.data.batch_size // R
        out = []
        for r in range(R):
            j = b - r * D
            first = self.data.first_example + j * C if j >= 0 else _WARMUP_INDEX + (b * R + r) * C
            out.append((j if j >= 0 else -1 - (b * R + r), range(first, first + C)))
        return out

    def render_chunk(self, indices: range, preprocessor: MolmoImagePreprocessor) -> list[TrainingSample]:
        from model_runtime.datasets.suite import render_example

        samples = []
        for i in indices:
            task = example_task(self.data.seed, i, self.tasks, self.probs)
            ex = render_example(task, self.split, i, seed=self.data.seed)
            caption = (self.split == "train" and self.data.caption_rate > 0 and bool(ex.caption)
                       and np.random.default_rng([self.data.seed, i, 1]).random() < self.data.caption_rate)
            t = self.tasks.index(task) + (len(self.tasks) if caption else 0)
            samples.append(make_sample(self.config, self.tokenizer, preprocessor, ex, t,
                                       max_crops=self.data.max_crops, template=self.data.template, caption=caption,
                                       print_grids=self.data.print_grids, print_slots=self.data.print_slots,
                                       print_min_px=self.data.print_min_px))
        return samples

    def batch(self, b: int, preprocessor: MolmoImagePreprocessor | None = None,
              chunks: dict[int, list[TrainingSample]] | None = None) -> dict[str, torch.Tensor]:
        """Collated batch ``b``; ``chunks`` (chunk id → samples) is a cache the call reads and fills."""
        pre = preprocessor or MolmoImagePreprocessor(self.config)
        chunks = {} if chunks is None else chunks
        samples = []
        for cid, indices in self.chunk_indices(b):
            if cid not in chunks:
                chunks[cid] = self.render_chunk(indices, pre)
            samples.extend(chunks[cid])
        return collate(samples, self.config.tokens.pad, self.config.embedding_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        w, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        torch.set_num_threads(1)  # workers render on their own core; intra-op threads only contend
        pre = MolmoImagePreprocessor(self.config)
        b = self.start_batch + w
        end = None if self.n_batches is None else self.start_batch + self.n_batches
        chunks: dict[int, list[TrainingSample]] = {}
        horizon = (self.data.reuse - 1) * self.data.reuse_distance
        while end is None or b < end:
            yield self.batch(b, pre, chunks)
            for cid in [c for c in chunks if c < 0 or c <= b - horizon]:  # used for the last time
                del chunks[cid]
            b += n_workers
