"""Print supervision: the characters under each image token, in reading order, as a training loss.

The committed model's image tokens lose the digits of a page: a linear probe recovers the digit
under a token a third of the time at document print, 0.13 above an untrained tower
(benchmarks/RESULTS.md, "Sixteenth H200 run"), and nothing in the recipe asks for more. The
answer loss reaches the tower only through the language model; the word-presence loss
(:mod:`.word_presence`) asks which subwords the image holds, a bag without places. MolmoE's CLIP
tower came with text-reading features from its pre-training; this project's tower is trained
here, and the suite knows where it printed every character (``Example.glyph_text`` /
``glyph_boxes``, recorded by ``drawing.GlyphDraw``), so it can ask for them where they are: the
dense, position-level supervision of OCR pre-training (character maps as in CRAFT, Baek et al.
2019; the per-position reading of PARSeq-style recognisers), at the granularity of the tokens.

Targets (:func:`print_targets`): for every crop of the preprocessed image (global view first)
and every cell of a ``grid`` × ``grid`` partition of the crop (the patches for ``grid`` =
``patches_per_side``, the pooled image tokens for ``tokens_per_side``), the classes of up to
``slots`` characters whose box centres fall in the cell, in reading order (line, then x), then
``0`` (none) for the unused slots. A character printed below ``min_px`` crop pixels is unreadable
at that scale: its cell is ignored (−100) rather than taught. Images whose renderer records no
print (easy-VQA) are ignored; images without print (counting) are all ``none``, which is true.

Loss (:class:`PrintLoss`): per site (``stem``: the patch stem's tokens; ``tokens``: the image
tokens the language model receives, after the connector), a linear head reads ``slots`` ×
:data:`N_CLASSES` logits from each token; cross-entropy over the labelled (cell, slot) entries,
``none`` weighted by ``none_weight`` (most entries are none), summed over sites. The heads are
training-only (not part of the checkpoint). A random head's first gradients would move a
trained tower's tokens far from what the language model learned to read (the feature distortion
of fine-tuning under a random head, Kumar et al. 2022, "Fine-Tuning can Distort Pretrained
Features"; the tokens' scale makes a random head's logits large, so its loss and gradients are
too). So the heads start at zero (uniform logits, no gradient into the model until they have
learned something), and ``losses(..., heads_only=True)`` trains them on detached tokens, the
linear-probe warm-up the trainer runs first (``TrainConfig.print_head_warmup``, at the heads'
own rate ``print_head_lr``).
"""

from __future__ import annotations

import string
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model_runtime.molmoe.config import MolmoeConfig
from model_runtime.molmoe.model import MolmoeModel

from .token_sites import SITES, SiteTap

IGNORE = -100
#: class 0: no character; then digits, letters (case folded), then any other printed character
CHARACTERS: str = string.digits + string.ascii_lowercase
N_CLASSES: int = len(CHARACTERS) + 2
_CLASS_OF = {c: i + 1 for i, c in enumerate(CHARACTERS)}
OTHER = N_CLASSES - 1


def glyph_class(ch: str) -> int:
    """The class of one printed character (1-10 digits, 11-36 letters, :data:`OTHER` the rest)."""
    return _CLASS_OF.get(ch.lower(), OTHER)


def site_grid(config: MolmoeConfig, site: str) -> int:
    """Cells per crop side that ``site``'s tokens cover."""
    if site == "stem":
        return config.patches_per_side
    if site == "tokens":
        return config.tokens_per_side
    raise ValueError(f"print-supervision site {site!r}: expected one of {', '.join(SITES)}")


def target_grids(config: MolmoeConfig, sites: Sequence[str]) -> tuple[int, ...]:
    """The grids (cells per crop side) whose targets the batches of ``sites`` must carry."""
    return tuple(sorted({site_grid(config, s) for s in sites}))


def print_targets(transforms: np.ndarray, chars: str | None, boxes: np.ndarray | None, *, crop_px: int, grid: int,
                  slots: int, min_px: float) -> np.ndarray:
    """(n_crops, grid², slots) int8 class targets of one image (see the module docstring).

    transforms: (n_crops, 4) image px → crop px maps (``MolmoImagePreprocessor.crop_transforms``);
    chars, boxes: the image's ``glyph_text`` and ``glyph_boxes`` (None: not recorded → all ignored).
    """
    n_crops = len(transforms)
    if chars is None or boxes is None:
        return np.full((n_crops, grid * grid, slots), IGNORE, dtype=np.int8)
    out = np.zeros((n_crops, grid * grid, slots), dtype=np.int8)
    if len(chars) == 0:
        return out
    if len(chars) != len(boxes):
        raise ValueError(f"{len(chars)} glyph characters but {len(boxes)} boxes")
    cls = np.fromiter((glyph_class(c) for c in chars), dtype=np.int8, count=len(chars))
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    top, height = boxes[:, 1], boxes[:, 3] - boxes[:, 1]
    cell_px = crop_px / grid
    for c, (sx, sy, ox, oy) in enumerate(transforms):
        x, y = cx * sx + ox, cy * sy + oy
        inside = (x >= 0) & (x < crop_px) & (y >= 0) & (y < crop_px)
        if not inside.any():
            continue
        cell = (np.floor(y / cell_px) * grid + np.floor(x / cell_px)).astype(np.int64)
        readable = height * sy >= min_px
        tiny = np.unique(cell[inside & ~readable])
        keep = np.nonzero(inside & readable)[0]
        order = keep[np.lexsort((x[keep], top[keep] * sy, cell[keep]))]  # by cell, then line, then x
        cells = cell[order]
        first = np.searchsorted(cells, cells, side="left")
        rank = np.arange(len(order)) - first
        sel = rank < slots
        out[c, cells[sel], rank[sel]] = cls[order[sel]]
        out[c, tiny] = IGNORE  # a cell holding print too small to read teaches nothing either way
    return out


class PrintLoss(nn.Module):
    """Heads and forward hooks of the print-supervision loss on ``model`` (float32 heads).

    Args:
        model: the model being trained (its ``vision.patch_stem`` must exist for site ``stem``).
        sites: where the tokens are read (:data:`SITES`).
        slots: characters per cell (as in the targets).
        none_weight: weight of the ``none`` class in the cross-entropy.
    """

    def __init__(self, model: MolmoeModel, sites: Sequence[str] = ("tokens",), slots: int = 4,
                 none_weight: float = 0.1) -> None:
        super().__init__()
        self.tap = SiteTap(model, sites, "print-supervision")
        if slots < 1 or not none_weight > 0:
            self.tap.remove()
            raise ValueError(f"print supervision needs slots >= 1 and none_weight > 0, got {slots}, {none_weight}")
        self.sites = self.tap.sites
        self.grids = {s: site_grid(model.config, s) for s in self.sites}
        self.slots = int(slots)
        self.heads = nn.ModuleDict({s: nn.Linear(self.tap.widths[s], self.slots * N_CLASSES) for s in self.sites})
        for head in self.heads.values():
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        weight = torch.ones(N_CLASSES)
        weight[0] = float(none_weight)
        self.register_buffer("class_weight", weight, persistent=False)

    def losses(self, targets: dict[int, torch.Tensor], heads_only: bool = False
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, figures) from the tokens the last forward pass produced.

        targets: grid → (N crops, grid², slots) class targets of the batch's crops; heads_only:
        no gradient reaches the model (the heads' warm-up). Figures
        (detached): ``acc``, the share of labelled characters (not ``none``) predicted right at
        the first site.
        """
        total: torch.Tensor | None = None
        figures: dict[str, torch.Tensor] = {}
        for site in self.sites:
            grid = self.grids[site]
            if grid not in targets:
                raise ValueError(f"print supervision at {site!r} needs the batch's {grid}x{grid} targets")
            t = targets[grid].long().flatten()
            tokens = self.tap.outputs[site].float()  # (N, grid², width)
            if heads_only:
                tokens = tokens.detach()
            logits = self.heads[site](tokens).reshape(-1, N_CLASSES)
            if logits.shape[0] != t.shape[0]:
                raise ValueError(f"print targets for {t.shape[0]} entries, {logits.shape[0]} from site {site!r}")
            ce = F.cross_entropy(logits, t, weight=self.class_weight, ignore_index=IGNORE, reduction="sum")
            norm = self.class_weight[t.clamp(min=0)].mul((t != IGNORE).float()).sum().clamp(min=1e-6)
            total = ce / norm if total is None else total + ce / norm
            if site == self.sites[0]:
                glyph = t > 0
                hit = (logits.argmax(-1) == t) & glyph
                figures["acc"] = (hit.sum() / glyph.sum().clamp(min=1)).detach()
        self.tap.outputs.clear()
        assert total is not None
        return total, figures

    def remove(self) -> None:
        self.tap.remove()
