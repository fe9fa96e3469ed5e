"""Molmo's connector: padding embeddings, 2×2 attention pooling with a mean query, MLP projector.

For each crop the ViT features (24×24 patches × 2048 channels for MolmoE-1B) become 12×12
tokens of ``d_model``:

0. with ``config.vit_feature_norm`` (this project's small model, not MolmoE-1B) the features
   are layer-normalised first;
1. ``pad_embed[0]`` is added to patches that are all padding (mask 0), ``pad_embed[1]`` to
   partially padded ones (0 < mask < 1, and the −1 row the processor appends);
2. each 2×2 window of patches is pooled by one multi-head attention whose query is the mean
   of the 4 patches (``wq``/``wk``/``wv`` from the concatenated ViT width to ``vit_hidden``,
   ``wo`` back to ``vit_hidden``; attention in float32);
3. a SwiGLU MLP maps to ``d_model``: ``w2(silu(w1 x) * w3 x)``;
4. with ``config.image_token_norm`` (this project's option, not MolmoE-1B's) an RMSNorm bounds
   the image tokens' scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import MolmoeConfig


class AttentionPool2x2(nn.Module):
    """Attention pooling of ``pool_h × pool_w`` windows with the window mean as the query."""

    def __init__(self, config: MolmoeConfig) -> None:
        super().__init__()
        in_dim = config.vit_feature_dim
        inner = config.pool_heads * config.pool_head_dim
        self.num_heads = config.pool_heads
        self.head_dim = config.pool_head_dim
        self.wq = nn.Linear(in_dim, inner, bias=True)
        self.wk = nn.Linear(in_dim, inner, bias=True)
        self.wv = nn.Linear(in_dim, inner, bias=True)
        self.wo = nn.Linear(inner, config.vit_hidden, bias=True)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """(M, w, in_dim) patch windows → (M, vit_hidden) pooled vectors."""
        m, w, _ = windows.shape
        q = self.wq(windows.mean(dim=1, keepdim=True)).view(m, 1, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.wk(windows).view(m, w, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.wv(windows).view(m, w, self.num_heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(windows.dtype)
        return self.wo(out.transpose(1, 2).reshape(m, self.num_heads * self.head_dim))


class SwiGLUProjector(nn.Module):
    """``w2(silu(w1 x) * w3 x)``, no biases: ``vit_hidden → projector_hidden → d_model``."""

    def __init__(self, config: MolmoeConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.vit_hidden, config.projector_hidden, bias=False)
        self.w3 = nn.Linear(config.vit_hidden, config.projector_hidden, bias=False)
        self.w2 = nn.Linear(config.projector_hidden, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class MolmoeConnector(nn.Module):
    """ViT features of crops → ``d_model`` tokens (padding embeddings, pooling, projector)."""

    def __init__(self, config: MolmoeConfig) -> None:
        super().__init__()
        self.config = config
        self.feature_norm = nn.LayerNorm(config.vit_feature_dim, eps=config.vit_eps) if config.vit_feature_norm else None
        self.pad_embed = nn.Parameter(torch.zeros(2, config.vit_feature_dim)) if config.image_padding_embed else None
        self.pooling = AttentionPool2x2(config)
        self.projector = SwiGLUProjector(config)
        self.token_norm = None
        if config.image_token_norm:
            # image tokens enter the residual stream at about the text embeddings' scale (norm 1)
            self.token_norm = nn.RMSNorm(config.d_model, eps=config.layer_norm_eps)
            nn.init.constant_(self.token_norm.weight, config.d_model ** -0.5)

    def forward(self, features: torch.Tensor, image_masks: torch.Tensor | None) -> torch.Tensor:
        """Pool and project.

        Args:
            features: (N, n_patches, vit_feature_dim) ViT features of N crops.
            image_masks: (N, n_patches) fraction of real pixels per patch (required when the
                config uses padding embeddings).

        Returns:
            (N, tokens_per_crop, d_model).
        """
        cfg = self.config
        n, n_patches, dim = features.shape
        side = cfg.patches_per_side
        if n_patches != side * side:
            raise ValueError(f"expected {side * side} patches per crop, got {n_patches}")
        if self.feature_norm is not None:
            features = self.feature_norm(features)
        if self.pad_embed is not None:
            if image_masks is None or image_masks.shape != (n, n_patches):
                raise ValueError(f"image_masks of shape {(n, n_patches)} are required for the padding embeddings")
            masks = image_masks.to(features.device)
            all_pad = (masks == 0).to(features.dtype)[..., None]
            partial = ((masks < 1) & (masks != 0)).to(features.dtype)[..., None]
            features = features + self.pad_embed[0].to(features.dtype) * all_pad + self.pad_embed[1].to(features.dtype) * partial
        grid = features.view(n, side, side, dim)
        ph, pw = cfg.pool_h, cfg.pool_w
        pad_h, pad_w = (-side) % ph, (-side) % pw
        if pad_h or pad_w:
            grid = F.pad(grid, (0, 0, 0, pad_w, 0, pad_h))
        hh, ww = grid.shape[1] // ph, grid.shape[2] // pw
        windows = grid.view(n, hh, ph, ww, pw, dim).permute(0, 1, 3, 2, 4, 5).reshape(n * hh * ww, ph * pw, dim)
        pooled = self.pooling(windows).view(n, hh * ww, -1)
        out = self.projector(pooled)
        return out if self.token_norm is None else self.token_norm(out)
