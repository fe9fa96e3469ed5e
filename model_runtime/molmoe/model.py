"""MolmoE as one module: preprocessing → CLIP tower → connector → OLMoE language model.

:class:`MolmoeModel` owns the three parts and turns preprocessed prompts into a left-padded
batch and its input embeddings: token embeddings of ``[BOS] + image tokens + text`` with each
crop's pooled image features *added* to the embeddings of its ``<im_patch>`` tokens (Molmo's
``x[batch, image_input_idx] += features``). The language model then runs any block plan (see
:mod:`.language_model` and :mod:`.generation`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .config import MolmoeConfig
from .connector import MolmoeConnector
from .language_model import MolmoeLanguageModel, default_experts_implementation
from .preprocessing import MolmoImagePreprocessor, PromptInputs
from .vision import MolmoeVisionTower


@dataclass
class MolmoeBatch:
    """A left-padded batch of B prompts with N crops in total.

    Attributes:
        input_ids: (B, S) int64, left-padded with the pad id.
        attention_mask: (B, S) int64, 1 for real tokens.
        patches: (N, n_patches, patch²·3) float pixels of every crop, prompt by prompt.
        image_masks: (N, n_patches) float32 fraction of real pixels per patch.
        crop_rows: (N,) int64 batch row of each crop.
        image_input_idx: (N, tokens_per_crop) int64 position in the padded row that receives
            each pooled patch (−100: discarded).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    patches: torch.Tensor
    image_masks: torch.Tensor
    crop_rows: torch.Tensor
    image_input_idx: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])


class MolmoeModel(nn.Module):
    """Vision tower + connector + language model of one :class:`MolmoeConfig`.

    Args:
        config: sizes and options.
        vision, connector, lm: parts to use (randomly initialised ones when None).
        experts_implementation: for a new language model (default: by the default device,
            see :func:`~.language_model.default_experts_implementation`).
    """

    def __init__(
        self,
        config: MolmoeConfig,
        vision: MolmoeVisionTower | None = None,
        connector: MolmoeConnector | None = None,
        lm: MolmoeLanguageModel | None = None,
        *,
        experts_implementation: str | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.vision = vision if vision is not None else MolmoeVisionTower(config)
        self.connector = connector if connector is not None else MolmoeConnector(config)
        if lm is None:
            if experts_implementation is None:
                experts_implementation = default_experts_implementation(torch.get_default_device())
            lm = MolmoeLanguageModel.from_config(
                config.olmoe_config(experts_implementation=experts_implementation), n_logits=config.embedding_size
            )
        self.lm = lm
        if lm.d_model != config.d_model:
            raise ValueError(f"language model d_model={lm.d_model} != config d_model={config.d_model}")
        rows = lm.backbone.embed_tokens.num_embeddings
        for name, tok in vars(config.tokens).items():
            if tok >= rows:
                raise ValueError(f"special token {name}={tok} outside the language model's {rows} embedding rows")
        self.preprocessor = MolmoImagePreprocessor(config)

    @property
    def device(self) -> torch.device:
        return self.lm.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.lm_head.weight.dtype

    # ------------------------------------------------------------------ batching
    def collate(self, prompts: Sequence[PromptInputs]) -> MolmoeBatch:
        """Left-pad prompts into one batch on the model's device (pixels in the model's dtype)."""
        if not prompts:
            raise ValueError("collate needs at least one prompt")
        lengths = [int(p.input_ids.shape[0]) for p in prompts]
        seq = max(lengths)
        pad = self.config.tokens.pad
        ids = np.full((len(prompts), seq), pad, dtype=np.int64)
        mask = np.zeros((len(prompts), seq), dtype=np.int64)
        patches, masks, rows, idx = [], [], [], []
        for b, (prompt, n) in enumerate(zip(prompts, lengths)):
            off = seq - n
            ids[b, off:] = prompt.input_ids
            mask[b, off:] = 1
            img = prompt.image
            patches.append(img.patches)
            masks.append(img.image_masks)
            rows.append(np.full(img.n_crops, b, dtype=np.int64))
            idx.append(np.where(img.image_input_idx >= 0, img.image_input_idx + off, -100))
        dev = self.device
        return MolmoeBatch(
            input_ids=torch.from_numpy(ids).to(dev),
            attention_mask=torch.from_numpy(mask).to(dev),
            patches=torch.from_numpy(np.concatenate(patches)).to(device=dev, dtype=self.dtype),
            image_masks=torch.from_numpy(np.concatenate(masks)).to(dev),
            crop_rows=torch.from_numpy(np.concatenate(rows)).to(dev),
            image_input_idx=torch.from_numpy(np.concatenate(idx)).to(dev),
        )

    # ------------------------------------------------------------------ forward parts
    def image_features(self, patches: torch.Tensor, image_masks: torch.Tensor) -> torch.Tensor:
        """(N, n_patches, patch²·3) crops → (N, tokens_per_crop, d_model) image tokens."""
        return self.connector(self.vision(patches), image_masks)

    def embed(self, batch: MolmoeBatch, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S, D) input embeddings: token embeddings + pooled image features at their tokens.

        ``image_features`` (N, tokens_per_crop, D) are computed when not given.
        """
        if image_features is None:
            image_features = self.image_features(batch.patches, batch.image_masks)
        x = self.lm.embed(batch.input_ids)
        bsz, seq, dim = x.shape
        valid = batch.image_input_idx >= 0
        flat = (batch.crop_rows[:, None] * seq + batch.image_input_idx)[valid]
        feats = image_features.to(x.dtype)[valid]
        x = x.reshape(bsz * seq, dim).index_add(0, flat, feats)
        return x.view(bsz, seq, dim)

    @torch.no_grad()
    def forward(self, batch: MolmoeBatch, top_k_per_block: Sequence[int] | None = None) -> torch.Tensor:
        """(B, S, V) logits of a whole batch under a plan (default: every block at max top-k)."""
        return self.lm(inputs_embeds=self.embed(batch), attention_mask=batch.attention_mask, top_k_per_block=top_k_per_block)
