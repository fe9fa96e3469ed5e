"""The CLIP ViT tower of MolmoE: transformers' ``CLIPVisionModel`` modules, driven on Molmo patches.

Molmo feeds crops as (n_crops, 576, 588) patch vectors (``(dh dw c)`` pixel order) to a linear
patch embedding; transformers' CLIP has the same embedding as a 14×14 stride-14 convolution. The
tower applies the convolution's weight to the patch vectors directly (``weight`` permuted to
``(out, dh, dw, c)``), which is the same map, then the class token, position embeddings,
``pre_layrnorm`` and the encoder layers. ``post_layernorm`` is unused (Molmo reads hidden states).

With ``vit_patch_stem="conv"``, ``"hybrid"`` or ``"fine"`` (this project's own, for towers trained
from scratch) a convolutional stem replaces the linear patch embedding: per patch
(:class:`PatchConvStem`) or over the whole crop (:class:`CropConvStem`, :class:`FineCropConvStem`); the patch vectors, tokens
and everything after them are unchanged, so no knob and no preprocessing sees the difference.

Features are the hidden states after the layers named by ``vit_feature_layers`` (−2 and −9 of
23 for MolmoE-1B; negative = from the end, indexing the per-layer outputs), concatenated on the
channel axis in that order, CLS token dropped. Layers after the deepest one used are not run:
their output would be discarded (MolmoE-1B reads layer −2, so its last layer is skipped).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import MolmoeConfig


def patches_to_crops(patches: torch.Tensor, patch: int, channels_last: bool = False) -> torch.Tensor:
    """(N, s·s, p·p·3) patch vectors in ``(dh dw c)`` order → (N, 3, s·p, s·p) crops (channels first), in one copy:
    laid out (N, C, H, W), or with ``channels_last`` (N, H, W, C) (the same values, channels-last strides)."""
    n, n_patches, _ = patches.shape
    s = int(round(n_patches ** 0.5))
    grid = patches.reshape(n, s, s, patch, patch, 3)
    if channels_last:
        return grid.permute(0, 1, 3, 2, 4, 5).reshape(n, s * patch, s * patch, 3).permute(0, 3, 1, 2)
    return grid.permute(0, 5, 1, 3, 2, 4).reshape(n, 3, s * patch, s * patch)


def set_channels_last(model: nn.Module, on: bool = True) -> int:
    """Run the crop stems of ``model`` (:class:`CropConvStem`, :class:`FineCropConvStem`) in channels-last
    memory format: their conv weights and the crops they read (the same values and function; cuDNN's
    NHWC kernels instead of NCHW). Returns how many stems were switched."""
    n = 0
    for m in model.modules():
        if isinstance(m, _CropStem):
            m.net.to(memory_format=torch.channels_last if on else torch.contiguous_format)
            m.channels_last = on
            n += 1
    return n


def patch_stem_for(config: MolmoeConfig) -> nn.Module | None:
    """The module that replaces the linear patch embedding under ``config.vit_patch_stem`` (None: linear)."""
    if config.vit_patch_stem == "conv":
        return PatchConvStem(config.patch_size, config.vit_hidden)
    if config.vit_patch_stem == "hybrid":
        return CropConvStem(config.patch_size, config.patches_per_side, config.vit_hidden)
    if config.vit_patch_stem == "fine":
        return FineCropConvStem(config.patch_size, config.vit_hidden)
    return None


class PatchConvStem(nn.Module):
    """Per-patch convolutions in place of the linear patch embedding: (N, P, p·p·3) patch vectors in
    ``(dh dw c)`` order → (N, P, width).

    3×3 conv to 32 channels, 3×3 stride-2 conv to 64, then a conv over the whole half-size patch to
    ``width`` (GELU between). Early convolutions are the usual remedy for ViTs that learn slowly
    from scratch (Xiao et al., 2021, "Early Convolutions Help Transformers See Better"); on the
    suite's sign words it read no better than the linear map (benchmarks/RESULTS.md, "Fifth and
    sixth H200 runs"). Each patch is convolved on its own, so the tower still sees one token per patch.
    """

    def __init__(self, patch: int, width: int) -> None:
        super().__init__()
        self.patch = patch
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.GELU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(64, width, (patch + 1) // 2),
        )

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        n, p, _ = patches.shape
        x = patches.reshape(n * p, self.patch, self.patch, 3).permute(0, 3, 1, 2)
        return self.net(x).reshape(n, p, -1)


class _CropStem(nn.Module):
    """A trunk ``self.net`` over the whole crop rebuilt from its patches (``self.patch`` pixels a side): (N, P, p·p·3)
    patch vectors in ``(dh dw c)`` order → (N, P, width), one token per patch."""

    #: channels-last memory format (:func:`set_channels_last`)
    channels_last = False
    patch: int
    net: nn.Sequential

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.net(patches_to_crops(patches, self.patch, self.channels_last)).flatten(2).transpose(1, 2)


class CropConvStem(_CropStem):
    """A convolutional trunk over the whole crop (a hybrid CNN-ViT, as ViT's R50+ViT): (N, P, p·p·3)
    patch vectors in ``(dh dw c)`` order → the crop → (N, P, width), one token per patch.

    Four 3×3 convs (32, 64, 128, ``width`` channels, ReLU) with 2× max pooling after the first
    three, then an adaptive max pool to the patch grid: each token sees about 50 px around its
    patch, a short word at the suite's sizes. This trunk with a max pool and a linear layer reads
    the suite's sign words from 3,200 examples where the ViT tower does not
    (``benchmarks.bench_tower_reading``, benchmarks/RESULTS.md "Fifth and sixth H200 runs").
    """

    def __init__(self, patch: int, side: int, width: int) -> None:
        super().__init__()
        self.patch = patch
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(128, width, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(side),
        )


class FineCropConvStem(_CropStem):
    """A convolutional trunk over the whole crop that keeps each patch's inner layout: (N, P, p·p·3)
    patch vectors in ``(dh dw c)`` order → the crop → (N, P, width), one token per patch.

    Three 3×3 convs (32, 64, 64 channels, ReLU) with one 2× max pool after the first, then a
    (p/2)×(p/2) convolution of stride p/2 onto the patch grid: each patch's (p/2)² cells of
    features are mapped by position-specific weights, as CLIP's linear patch embedding maps its
    pixels, where :class:`CropConvStem` max-pools three times (an 8-pixel stride for 14-pixel
    patches) and then takes a maximum per patch, which keeps what is in a patch but not where.
    Each token sees a 24-px window centred on its patch (the patch and 5 px on each side). Why:
    the hybrid stem's model reads the suite's sign words at 14 px but strings of digits at that
    size almost never, and its image tokens at document print hold the digits under them barely
    better than an untrained tower's (``benchmarks.probe_digit_tokens``); trained on the digits
    under each patch, this stem keeps two digits' order in a patch 0.91 of the time and the hybrid
    one 0.57 (``benchmarks.bench_stem_digits``; benchmarks/RESULTS.md "Sixteenth H200 run").
    """

    def __init__(self, patch: int, width: int) -> None:
        super().__init__()
        if patch % 2:
            raise ValueError(f"FineCropConvStem needs an even patch size, got {patch}")
        self.patch = patch
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, width, patch // 2, stride=patch // 2),
        )


class MolmoeVisionTower(nn.Module):
    """CLIP ViT features of Molmo crops.

    Args:
        config: model configuration (ViT sizes, patch geometry, feature layers).
        clip: an existing transformers ``CLIPVisionModel`` to use (random init if None).
    """

    def __init__(self, config: MolmoeConfig, clip: nn.Module | None = None) -> None:
        super().__init__()
        if clip is None:
            from transformers import CLIPVisionModel

            clip = CLIPVisionModel(config.clip_config())
        self.clip = clip
        self.feature_layers = tuple(
            (layer if layer >= 0 else config.vit_num_layers + layer) for layer in config.vit_feature_layers
        )
        n = len(self.clip.encoder.layers)
        if n != config.vit_num_layers:
            raise ValueError(f"CLIP model has {n} layers, config says {config.vit_num_layers}")
        self.patch_size = config.patch_size
        self.out_dim = config.vit_feature_dim
        #: replaces the linear patch embedding when set (``vit_patch_stem`` "conv" or "hybrid"; the CLIP weight is then unused)
        self.patch_stem = patch_stem_for(config)

    @property
    def n_layers_run(self) -> int:
        """Encoder layers that run: up to the deepest feature layer."""
        return max(self.feature_layers) + 1

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, n_patches, patch²·3) normalised patch pixels → (N, n_patches, vit_hidden · n_feature_layers)."""
        emb = self.clip.embeddings
        n, n_patches, n_pixels = patches.shape
        weight = emb.patch_embedding.weight  # (E, 3, p, p)
        if n_pixels != weight.shape[1] * weight.shape[2] * weight.shape[3]:
            raise ValueError(f"patch vectors have {n_pixels} values, the tower expects {weight[0].numel()}")
        if n_patches + 1 != emb.position_embedding.num_embeddings:
            raise ValueError(f"{n_patches} patches per crop, the tower has {emb.position_embedding.num_embeddings - 1} positions")
        if self.patch_stem is not None:
            x = self.patch_stem(patches.to(weight.dtype))
        else:
            w = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)
            x = F.linear(patches.to(w.dtype), w)
        cls = emb.class_embedding.to(x.dtype).expand(n, 1, -1)
        x = torch.cat([cls, x], dim=1) + emb.position_embedding.weight[None].to(x.dtype)
        x = self.clip.pre_layrnorm(x)
        wanted = set(self.feature_layers)
        outputs: dict[int, torch.Tensor] = {}
        for i in range(self.n_layers_run):
            x = self.clip.encoder.layers[i](x, None)
            if i in wanted:
                outputs[i] = x
        return torch.cat([outputs[i][:, 1:] for i in self.feature_layers], dim=-1)
