"""Vision-token pruning proxy (seed 05 §B4): keep a fraction of each image's pooled vision tokens.

Of each image (all its crops, the global view included) the ``<im_patch>`` tokens — the positions
that receive the connector's pooled features — are ranked by a score, and only the best
``max(1, ceil(keep · n))`` of its ``n`` stay (the rounding rule of
:func:`model_runtime.latency_estimator.kept_pooled_tokens`, which the cost accounting shares).

**Score: the L2 norm of the connector's output feature of the token.** It is free (the features
exist before the language model runs, whereas attention-based scores such as FastV's need a
partial LM forward first), and it is the size of what the image adds to that token's input
embedding (Molmo adds the pooled feature to the ``<im_patch>`` embedding), so the tokens dropped
are the ones whose input the image changes least. Ties go to the earlier position. (A model
built with ``image_token_norm`` gives every image token about the same norm, so this score
ranks nothing there; no trained model of this project uses that option.)

**Dropping.** The dropped positions are removed from the prompt before the language model runs:
each row keeps its other tokens in order and the batch is left-padded again to its new longest
row. Positions are renumbered over the kept tokens, which is also exactly what masking the dropped
positions out of attention would give here, because the language model's position ids count real
(mask 1) tokens. The ``<im_start>`` / ``<im_col>`` / ``<im_end>`` tokens stay.

It is a *proxy*: it measures the accuracy effect of feeding the language model fewer vision
tokens, with nothing trained for it; its cost is accounted as the vision tokens kept (the
latency estimator at the shortened prompt, :func:`model_runtime.latency_estimator.pruned_latency_ms`),
not as a measured speed-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from model_runtime.latency_estimator.token_pruning import check_keep, kept_pooled_tokens

if TYPE_CHECKING:  # pragma: no cover
    from .model import MolmoeBatch

__all__ = ["check_keep", "drop_positions", "pooled_token_scores", "prune_prompt", "vision_drop_mask"]


def pooled_token_scores(image_features: torch.Tensor) -> torch.Tensor:
    """(N, tokens_per_crop) float32 score of every pooled token: the L2 norm of its feature."""
    return image_features.float().norm(dim=-1)


def vision_drop_mask(batch: "MolmoeBatch", image_features: torch.Tensor, keep: float) -> torch.Tensor:
    """(B, S) bool: the ``<im_patch>`` positions of ``batch`` to drop when each row's image keeps
    the fraction ``keep`` of its pooled tokens, the highest-scored ones (:func:`pooled_token_scores`;
    ties to the earlier position)."""
    keep = check_keep(keep)
    bsz, seq = batch.input_ids.shape
    drop = torch.zeros(bsz, seq, dtype=torch.bool, device=batch.input_ids.device)
    if keep == 1.0:
        return drop
    valid = batch.image_input_idx >= 0
    rows = batch.crop_rows[:, None].expand_as(valid)[valid]
    positions = batch.image_input_idx[valid]
    scores = pooled_token_scores(image_features).to(positions.device)[valid]
    for b in range(bsz):
        mine = rows == b
        pos, sc = positions[mine], scores[mine]
        n = int(pos.numel())
        if n == 0:
            continue
        by_pos = torch.argsort(pos)
        pos, sc = pos[by_pos], sc[by_pos]
        ranked = torch.argsort(sc, descending=True, stable=True)  # stable: ties keep position order
        kept = int(kept_pooled_tokens(n, keep))
        drop[b, pos[ranked[kept:]]] = True
    return drop


def drop_positions(
    embeds: torch.Tensor, attention_mask: torch.Tensor, drop: torch.Tensor, pad_embedding: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove the ``drop`` positions (B, S) of a left-padded batch: (B, S', D) embeddings and their
    (B, S') mask, every row's remaining real tokens in order, left-padded with ``pad_embedding`` (D,)
    to the longest row."""
    keep = attention_mask.bool() & ~drop
    lengths = keep.sum(dim=1)
    new_len = int(lengths.max())
    bsz, _, dim = embeds.shape
    out = pad_embedding.to(embeds.dtype).expand(bsz, new_len, dim).clone()
    mask = torch.zeros(bsz, new_len, dtype=attention_mask.dtype, device=attention_mask.device)
    for b in range(bsz):
        n = int(lengths[b])
        out[b, new_len - n :] = embeds[b, keep[b]]
        mask[b, new_len - n :] = 1
    return out, mask


def prune_prompt(
    batch: "MolmoeBatch", image_features: torch.Tensor, embeds: torch.Tensor, keep: float, pad_embedding: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The prompt of ``batch`` with each image keeping the fraction ``keep`` of its pooled tokens:
    (embeddings, attention mask, (B,) int64 pooled tokens dropped per row). ``keep = 1`` returns
    ``embeds`` and ``batch.attention_mask`` themselves."""
    drop = vision_drop_mask(batch, image_features, keep)
    dropped = drop.sum(dim=1)
    if not bool(drop.any()):
        return embeds, batch.attention_mask, dropped
    out, mask = drop_positions(embeds, batch.attention_mask, drop, pad_embedding)
    return out, mask, dropped
