"""Word-presence loss: which caption subwords appear in an image, read by a per-channel max.

Molmo starts from a CLIP tower pre-trained on image-level text; this project's tower starts from
scratch, and the language model's attention is a slow teacher for it: to learn *where* to look,
attention needs tokens that already say *what* is there, and the tokens learn that only once
attention looks (benchmarks/RESULTS.md, "Fifth and sixth H200 runs": every attention readout of
the tower's tokens stayed at chance while a per-channel max over the convolutional stem's tokens
read the sign words from 3,200 examples). This loss is the image-level text supervision in the
form that learns quickly: multi-label classification of the bag of subword ids of the image's
dense caption (``Example.caption``: its words, values, colours, positions) from a per-channel max
over every token of every crop of the image (multiple-instance learning: small print counts where
a high-resolution crop makes it legible), the weakly supervised "bag of words" pre-training of
Joulin et al. (2016, "Learning Visual Features from Large Weakly Supervised Data").

Each site (``stem``: the conv/hybrid patch stem's tokens, before any normalisation; ``tokens``:
the image tokens the language model receives) has its own linear head over the vocabulary. The
heads are training-only (not part of the checkpoint). Examples without a caption (easy-VQA) are
left out. Loss per example: binary cross-entropy summed over the vocabulary, divided by the
example's number of positive ids (so a long caption weighs as much as a short one), averaged
over examples, summed over sites.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from model_runtime.molmoe.model import MolmoeModel

from .token_sites import SITES, SiteTap  # noqa: F401  (SITES: word_presence.SITES, as the trainer documents it)


class WordPresence(nn.Module):
    """Heads and forward hooks of the word-presence loss on ``model`` (float32 heads).

    Args:
        model: the model being trained (its ``vision.patch_stem`` must exist for site ``stem``).
        vocab_size: number of subword ids a target may hold.
        sites: where the per-channel max is taken (:data:`SITES`).
    """

    def __init__(self, model: MolmoeModel, vocab_size: int, sites: Sequence[str] = ("stem",)) -> None:
        super().__init__()
        self.tap = SiteTap(model, sites, "word-presence")
        self.sites = self.tap.sites
        self.heads = nn.ModuleDict({s: nn.Linear(self.tap.widths[s], vocab_size) for s in self.sites})

    def losses(self, crop_rows: torch.Tensor, targets: torch.Tensor, has_caption: torch.Tensor
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, figures) from the tokens the last forward pass produced.

        crop_rows: (N,) batch row of each crop; targets: (B, V) multi-hot caption ids;
        has_caption: (B,) rows that take part. Figures (detached): ``recall`` and ``precision``
        of the ids predicted present (logit > 0), over the stem's head when it exists.
        """
        rows = targets.shape[0]
        targets = targets.float()
        keep = has_caption.float()
        n_pos = targets.sum(-1).clamp(min=1)
        total = targets.new_zeros(())
        figures: dict[str, torch.Tensor] = {}
        for site in self.sites:
            tokens = self.tap.outputs[site].float().amax(1)  # (N, width): per-channel max over each crop's tokens
            width = tokens.shape[-1]
            image = tokens.new_full((rows, width), float("-inf")).scatter_reduce(
                0, crop_rows[:, None].expand(-1, width), tokens, "amax", include_self=True)
            image = torch.where(torch.isfinite(image), image, torch.zeros_like(image))  # rows without crops
            logits = self.heads[site](image)
            bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1) / n_pos
            total = total + (bce * keep).sum() / keep.sum().clamp(min=1)
            if site == self.sites[0]:
                pred = (logits > 0).float() * keep[:, None]
                hit = (pred * targets).sum()
                figures["recall"] = (hit / (targets * keep[:, None]).sum().clamp(min=1)).detach()
                figures["precision"] = (hit / pred.sum().clamp(min=1)).detach()
        self.tap.outputs.clear()
        return total, figures

    def remove(self) -> None:
        self.tap.remove()
