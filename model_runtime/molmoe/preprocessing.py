"""Molmo image preprocessing (overlap-and-resize crops) and the prompt's token layout.

Re-implemented from the public MolmoE-1B processor (``image_preprocessing_molmo.py``):

1. **Tiling.** With ``m`` = margin patches (left + right = 8), a crop of 24 patches keeps a
   window of ``24 - m = 16`` patches (224 px at 336/14). ``select_tiling`` picks (rows, cols),
   rows·cols ≤ ``max_crops``, for the image minus the margin pixels: the tiling that needs the
   least upscaling, or, when every tiling needs downscaling, the least downscaling (ties go to
   fewer crops, then fewer rows).
2. **Resize and pad.** The image is resized (bilinear, antialiased, float32 in [0, 1], aspect
   kept) into ``rows·224 + 112 × cols·224 + 112`` px, centred, zero-padded, then normalised with
   the CLIP mean/std. Crops of 336 px start every 224 px, so neighbours overlap by 112 px.
3. **Patch bookkeeping.** After 2×2 pooling a crop gives 12×12 tokens; of an inner crop only
   the pooled patches not in the (halved) margins are kept, so the kept pooled patches tile
   the resized image exactly: ``(rows·16 + 8)/2 × (cols·16 + 8)/2`` pooled patches.
4. **Global view.** The whole image resized and padded to 336×336 comes first (12×12 tokens).
5. **Tokens.** ``<im_start>`` + rows of ``<im_patch>``×w + ``<im_col>`` + ``<im_end>``, global
   view first (12 rows of 12), then the crops' joint grid. ``image_input_idx[c, t]`` is the
   position of the ``<im_patch>`` token that receives pooled patch t of crop c (−100 where the
   patch is discarded).
6. **Padding masks.** Fraction of real (non-padding) pixels per patch, per crop. As in the
   public processor, the mask array is computed for the crops only and padded with one row of
   −1 *at the end* while the global view is prepended, so mask row i belongs to image row i
   only up to an off-by-one; the model (trained that way) is fed exactly that.

The prompt is ``[BOS] + image tokens + text tokens`` (image at the start, BOS = EOS for OLMo).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import MolmoeConfig


@dataclass(frozen=True)
class ImageInputs:
    """One preprocessed image.

    Attributes:
        patches: (n_crops, n_patches, patch_size²·3) float32 normalised pixels, Molmo's
            ``(dh dw c)`` patch layout; crop 0 is the global view.
        image_masks: (n_crops, n_patches) float32 fraction of real pixels per patch (see the
            module docstring for the public processor's row offset).
        image_tokens: (n_image_tokens,) int64 token ids of the image.
        image_input_idx: (n_crops, tokens_per_crop) int64 positions in ``image_tokens`` of the
            pooled patches, −100 where a patch is discarded.
        tiling: (rows, cols) of the crops besides the global view.
    """

    patches: np.ndarray
    image_masks: np.ndarray
    image_tokens: np.ndarray
    image_input_idx: np.ndarray
    tiling: tuple[int, int]

    @property
    def n_crops(self) -> int:
        """Crops fed to the vision tower, including the global view."""
        return int(self.patches.shape[0])

    @property
    def n_tokens(self) -> int:
        """Tokens the image adds to the prompt (``<im_start>``, patches, ``<im_col>``, ``<im_end>``)."""
        return int(self.image_tokens.shape[0])


@dataclass(frozen=True)
class PromptInputs:
    """A full prompt: ``[BOS] + image tokens + text tokens``.

    Attributes:
        input_ids: (S,) int64.
        image: the image's inputs; ``image_input_idx`` here is already shifted to prompt positions.
        n_text_tokens: tokens of the text (excluding BOS).
    """

    input_ids: np.ndarray
    image: ImageInputs
    n_text_tokens: int

    @property
    def vision_tokens(self) -> int:
        return self.image.n_tokens

    @property
    def prompt_tokens(self) -> int:
        """Text tokens + BOS: the sequence minus the vision tokens."""
        return int(self.input_ids.shape[0]) - self.image.n_tokens


def select_tiling(h: float, w: float, patch_size: int, max_num_crops: int) -> tuple[int, int]:
    """(rows, cols) of crops of ``patch_size`` px for an (h, w) image, rows·cols ≤ max_num_crops.

    Picks the tiling that needs the least upscaling to cover the image; if every tiling needs
    downscaling, the one that needs the least. Ties favour fewer crops, then fewer rows.
    """
    if max_num_crops < 1:
        raise ValueError(f"max_num_crops must be >= 1, got {max_num_crops}")
    tilings = [(i, j) for i in range(1, max_num_crops + 1) for j in range(1, max_num_crops + 1) if i * j <= max_num_crops]
    tilings.sort(key=lambda x: (x[0] * x[1], x[0]))
    candidates = np.array(tilings, dtype=np.int32)
    resolutions = candidates * patch_size
    size = np.array([h, w], dtype=np.float32)
    # an image smaller than the margins has size <= 0: infinite scale lets the other side decide
    with np.errstate(divide="ignore"):
        scale = np.min(resolutions.astype(np.float32) / size, axis=-1)
    if np.all(scale < 1):
        ix = int(np.argmax(scale))
    else:
        ix = int(np.argmin(np.where(scale < 1.0, 10e9, scale)))
    return int(candidates[ix][0]), int(candidates[ix][1])


def resize_and_pad(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize a (H, W, 3) uint8 image into ``size`` = (h, w) keeping its aspect, centred, zero-padded.

    Bilinear with antialiasing in float32 on [0, 1] (what ``torchvision.transforms.Resize`` does
    for tensors), clipped to [0, 1]. Returns (h, w, 3) float32 pixels and an (h, w) bool mask of
    real pixels.
    """
    out_h, out_w = size
    height, width = image.shape[:2]
    scale = min(np.float32(out_w) / np.float32(width), np.float32(out_h) / np.float32(height))
    scaled_h = int(np.float32(height) * scale)
    scaled_w = int(np.float32(width) * scale)
    pixels = torch.tensor(image).permute(2, 0, 1).float().div_(255.0)
    pixels = F.interpolate(pixels[None], size=(scaled_h, scaled_w), mode="bilinear", align_corners=False, antialias=True)[0]
    pixels = pixels.clamp_(0.0, 1.0).permute(1, 2, 0).numpy()
    top = (out_h - scaled_h) // 2
    left = (out_w - scaled_w) // 2
    pad = [(top, out_h - scaled_h - top), (left, out_w - scaled_w - left)]
    mask = np.pad(np.ones((scaled_h, scaled_w), dtype=bool), pad)
    return np.pad(pixels, pad + [(0, 0)]), mask


def _resize_transform(height: int, width: int, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """(sx, sy, ox, oy) of :func:`resize_and_pad` into ``size`` = (h, w): image px → output px."""
    out_h, out_w = size
    scale = min(np.float32(out_w) / np.float32(width), np.float32(out_h) / np.float32(height))
    scaled_h, scaled_w = int(np.float32(height) * scale), int(np.float32(width) * scale)
    return scaled_w / width, scaled_h / height, float((out_w - scaled_w) // 2), float((out_h - scaled_h) // 2)


def _patchify(arr: np.ndarray, patch: int) -> np.ndarray:
    """(n, H, W[, C]) → (n, (H/p)·(W/p), p·p[·C]): row-major patches, ``(dh dw c)`` inside a patch."""
    n, h, w = arr.shape[:3]
    rest = arr.shape[3:]
    arr = arr.reshape(n, h // patch, patch, w // patch, patch, *rest)
    arr = np.moveaxis(arr, 3, 2)  # (n, hp, wp, dh, dw, ...)
    return arr.reshape(n, (h // patch) * (w // patch), -1)


class MolmoImagePreprocessor:
    """Molmo's overlap-and-resize preprocessing with the geometry of a :class:`MolmoeConfig`."""

    def __init__(self, config: MolmoeConfig) -> None:
        self.config = config
        if config.tokens_per_side != (config.patches_per_side + 1) // 2 or (config.pool_h, config.pool_w) != (2, 2):
            raise ValueError("Molmo preprocessing assumes 2x2 pooling")
        left, right = config.overlap_margins
        self.margin_patches = left + right
        self.window_patches = config.patches_per_side - self.margin_patches  # 16 at 336/14
        self.window_px = self.window_patches * config.patch_size  # 224
        self.margin_px = self.margin_patches * config.patch_size  # 112

    # ------------------------------------------------------------------ counting only
    def tiling_for(self, height: int, width: int, max_crops: int) -> tuple[int, int]:
        """(rows, cols) for an image of (height, width) px under ``max_crops``."""
        return select_tiling(height - self.margin_px, width - self.margin_px, self.window_px, max_crops)

    def token_counts(self, height: int, width: int, max_crops: int) -> tuple[int, int]:
        """(crops incl. the global view, image tokens) for an image size, without any pixels."""
        rows, cols = self.tiling_for(height, width, max_crops)
        t = self.config.tokens_per_side
        h = rows * self.window_patches + self.margin_patches
        w = cols * self.window_patches + self.margin_patches
        global_tokens = t * (t + 1) + 2
        crop_tokens = ((h + 1) // 2) * ((w + 1) // 2 + 1) + 2
        return rows * cols + 1, global_tokens + crop_tokens

    def pooled_token_count(self, height: int, width: int, max_crops: int) -> int:
        """``<im_patch>`` tokens (pooled vision tokens) of an image size: the global view's and the
        crops' joint grid's, without the ``<im_start>`` / ``<im_col>`` / ``<im_end>`` tokens."""
        rows, cols = self.tiling_for(height, width, max_crops)
        t = self.config.tokens_per_side
        h = rows * self.window_patches + self.margin_patches
        w = cols * self.window_patches + self.margin_patches
        return t * t + ((h + 1) // 2) * ((w + 1) // 2)

    def crop_transforms(self, height: int, width: int, max_crops: int) -> np.ndarray:
        """(n_crops, 4) per crop of ``__call__``'s output (global view first): (sx, sy, ox, oy) that
        map an image point (x, y) in px to (x·sx + ox, y·sy + oy) in that crop's px, the
        resize-and-pad and the crop's window of the preprocessing (for targets placed on patches)."""
        out = [_resize_transform(height, width, (self.config.image_size,) * 2)]
        rows, cols = self.tiling_for(height, width, max_crops)
        sx, sy, ox, oy = _resize_transform(
            height, width, (rows * self.window_px + self.margin_px, cols * self.window_px + self.margin_px))
        for i in range(rows):
            for j in range(cols):
                out.append((sx, sy, ox - j * self.window_px, oy - i * self.window_px))
        return np.asarray(out, dtype=np.float64)

    # ------------------------------------------------------------------ full preprocessing
    def __call__(self, image: np.ndarray, max_crops: int | None = None, *, normalize: bool = True) -> ImageInputs:
        """Preprocess one (H, W, 3) uint8 RGB image with up to ``max_crops`` crops (config default).

        ``normalize=False`` returns the resized pixels as uint8 (rounded; padding 0) instead of
        normalised float32: a quarter of the bytes for a data loader to move, normalised on the
        device by :func:`normalize_patches` (the two differ by at most half a grey level).
        """
        cfg = self.config
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
            raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"expected uint8 pixels, got {image.dtype}")
        max_crops = cfg.max_crops if max_crops is None else int(max_crops)
        left, right = cfg.overlap_margins
        n_side = cfg.patches_per_side
        t = cfg.tokens_per_side
        crop_px = cfg.image_size
        mean = np.asarray(cfg.image_mean, dtype=np.float32)
        std = np.asarray(cfg.image_std, dtype=np.float32)

        rows, cols = self.tiling_for(image.shape[0], image.shape[1], max_crops)
        src, img_mask = resize_and_pad(
            image, (rows * self.window_px + self.margin_px, cols * self.window_px + self.margin_px)
        )
        pixels = (lambda px: (px - mean) / std) if normalize else (lambda px: px)
        src = pixels(src)

        crops, masks, orderings = [], [], []
        on = 0
        for i in range(rows):
            y0 = i * self.window_px
            crop_y0 = 0 if i == 0 else left // 2
            crop_h = n_side - self.margin_patches + (left if i == 0 else 0) + (right if i == rows - 1 else 0)
            for j in range(cols):
                x0 = j * self.window_px
                crop_x0 = 0 if j == 0 else left // 2
                crop_w = n_side - self.margin_patches + (left if j == 0 else 0) + (right if j == cols - 1 else 0)
                pooled_h, pooled_w = (crop_h + 1) // 2, (crop_w + 1) // 2
                order = np.full((t, t), -1, dtype=np.int64)
                order[crop_y0 : crop_y0 + pooled_h, crop_x0 : crop_x0 + pooled_w] = np.arange(
                    on, on + pooled_h * pooled_w
                ).reshape(pooled_h, pooled_w)
                orderings.append(order)
                crops.append(src[y0 : y0 + crop_px, x0 : x0 + crop_px])
                masks.append(img_mask[y0 : y0 + crop_px, x0 : x0 + crop_px])
                on += pooled_h * pooled_w

        patches = _patchify(np.stack(crops), cfg.patch_size)
        patch_mask = _patchify(np.stack(masks), cfg.patch_size).astype(np.float32).mean(axis=-1)

        # crop-by-crop numbering → left-to-right over the whole image, kept sparse as in ``ordering``
        ordering = np.stack(orderings).reshape(-1)
        valid = ordering >= 0
        by_rows = np.stack(orderings).reshape(rows, cols, t, t).transpose(0, 2, 1, 3).reshape(-1)
        ordering[valid] = by_rows[by_rows >= 0]

        h = rows * self.window_patches + self.margin_patches
        w = cols * self.window_patches + self.margin_patches
        tk = cfg.tokens
        crop_row = np.concatenate([np.full((w + 1) // 2, tk.im_patch), [tk.im_col]])
        global_row = np.concatenate([np.full(t, tk.im_patch), [tk.im_col]])
        image_tokens = np.concatenate(
            [[tk.im_start], np.tile(global_row, t), [tk.im_end], [tk.im_start], np.tile(crop_row, (h + 1) // 2), [tk.im_end]]
        ).astype(np.int64)

        global_px, _ = resize_and_pad(image, (crop_px, crop_px))
        global_patches = _patchify(pixels(global_px)[None], cfg.patch_size)
        patches = np.concatenate([global_patches, patches], axis=0)
        patches = patches.astype(np.float32) if normalize else np.rint(patches * 255.0).astype(np.uint8)
        tokens_per_crop = t * t
        ordering = np.where(ordering >= 0, ordering + tokens_per_crop, -1)
        ordering = np.concatenate([np.arange(tokens_per_crop), ordering])
        image_masks = np.pad(patch_mask, [(0, 1), (0, 0)], constant_values=-1).astype(np.float32)

        image_input_idx = self._input_idx(image_tokens, ordering, tk.im_patch, tokens_per_crop)
        return ImageInputs(patches, image_masks, image_tokens, image_input_idx, (rows, cols))

    @staticmethod
    def _input_idx(image_tokens: np.ndarray, ordering: np.ndarray, patch_id: int, tokens_per_crop: int) -> np.ndarray:
        """Pooled patch (crop, t) → position of its ``<im_patch>`` token; −100 if discarded.

        ``ordering`` lists, for the k-th kept patch in token (row-major) order, the kept patch's
        index in array order; the token of kept patch i is therefore the inverse permutation's
        entry i (as ``build_image_input_idx`` of the public processor computes it).
        """
        positions = np.nonzero(image_tokens == patch_id)[0]
        valid = ordering >= 0
        n_valid = int(valid.sum())
        if positions.shape[0] != n_valid:
            raise AssertionError("patch tokens and kept pooled patches differ in number")
        inverse = np.empty(n_valid, dtype=np.int64)
        inverse[ordering[valid]] = np.arange(n_valid)
        out = np.full(ordering.shape, -100, dtype=np.int64)
        out[valid] = positions[inverse]
        return out.reshape(-1, tokens_per_crop)


def normalize_patches(patches: torch.Tensor, config: MolmoeConfig, dtype: torch.dtype) -> torch.Tensor:
    """uint8 patches of ``MolmoImagePreprocessor(normalize=False)`` → normalised ``dtype`` patches
    (the patch layout is ``(dh dw c)``, so channels are the fastest axis)."""
    mean = torch.tensor(config.image_mean, dtype=torch.float32, device=patches.device)
    std = torch.tensor(config.image_std, dtype=torch.float32, device=patches.device)
    shape = patches.shape
    px = patches.float().div_(255.0).reshape(*shape[:-1], -1, 3)
    return px.sub_(mean).div_(std).reshape(shape).to(dtype)


def molmoe_1b_token_counts(height: int, width: int, max_crops: int, scale: float) -> tuple[int, int]:
    """(crops, image tokens) MolmoE-1B's preprocessing gives an image of ``scale`` × (height, width).

    For a model whose crop geometry is MolmoE-1B's shrunk by ``scale``
    (:attr:`MolmoeConfig.molmoe_1b_image_scale`), this is what MolmoE-1B would run for the same
    picture at its resolution: the same crop grid, MolmoE-1B's token count (the input of the
    MolmoE-1B latency estimator).
    """
    pre = _molmoe_1b_preprocessor()
    return pre.token_counts(int(round(height * scale)), int(round(width * scale)), max_crops)


def molmoe_1b_pooled_token_count(height: int, width: int, max_crops: int, scale: float) -> int:
    """MolmoE-1B's pooled vision tokens for the image at ``scale`` × (height, width), as
    :func:`molmoe_1b_token_counts` counts its image tokens."""
    pre = _molmoe_1b_preprocessor()
    return pre.pooled_token_count(int(round(height * scale)), int(round(width * scale)), max_crops)


def _molmoe_1b_preprocessor() -> "MolmoImagePreprocessor":
    global _MOLMOE_1B_PRE
    if _MOLMOE_1B_PRE is None:
        _MOLMOE_1B_PRE = MolmoImagePreprocessor(MolmoeConfig())
    return _MOLMOE_1B_PRE


_MOLMOE_1B_PRE: "MolmoImagePreprocessor | None" = None


def build_prompt(
    image: ImageInputs, text_tokens: Sequence[int], bos_token_id: int
) -> PromptInputs:
    """``[BOS] + image tokens + text tokens``, with ``image_input_idx`` moved to prompt positions."""
    text = np.asarray(list(text_tokens), dtype=np.int64)
    input_ids = np.concatenate([[bos_token_id], image.image_tokens, text]).astype(np.int64)
    shifted = np.where(image.image_input_idx < 0, image.image_input_idx, image.image_input_idx + 1)
    moved = ImageInputs(image.patches, image.image_masks, image.image_tokens, shifted, image.tiling)
    return PromptInputs(input_ids=input_ids, image=moved, n_text_tokens=int(text.shape[0]))


def format_question(config: MolmoeConfig, question: str) -> str:
    """The text the tokenizer sees: Molmo's ``role`` message format (``" User: ... Assistant:"``)."""
    text = config.prompt_template.replace("{question}", question)
    return (" " + text) if config.always_start_with_space else text
