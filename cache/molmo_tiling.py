"""Molmo's overlapping-crop tiling and image-token count, as pure numpy (no PIL, no torch).

This re-derives, for image *sizes* only, what Molmo's (v1, MolmoE-1B) image preprocessor does
with an image before the vision tower (read from the public ``preprocessing_molmo.py`` /
``image_preprocessing_molmo.py`` of the HF checkpoints; re-implemented here, not copied):

1. A crop is ``base = 336`` px = 24 × 24 patches of 14 px. Neighbouring crops overlap: each crop
   discards ``margins = (4, 4)`` patches at its inner borders, so a crop contributes a *window*
   of ``24 − 8 = 16`` patches = 224 px, and a ``rows × cols`` tiling covers
   ``rows·224 + 112`` × ``cols·224 + 112`` px.
2. ``select_tiling(h − 112, w − 112, 224, max_crops)``: among all ``(rows, cols)`` with
   ``rows·cols ≤ max_crops`` (sorted by ``(rows·cols, rows)`` so ties favour fewer crops), the
   scale each tiling needs to fit the image is ``min(rows·224 / h', cols·224 / w')``. If every
   tiling needs downscaling (scale < 1), pick the largest scale (least downscaling); otherwise
   pick the smallest scale ≥ 1 (least upscaling). ``max_crops`` is the knob's tier (3/6/12).
3. The language model sees, for the global view (the whole image resized to 336 × 336, pooled
   2 × 2 to 12 × 12): ``1 + 12·(12 + 1) + 1 = 158`` tokens (start, 12 rows of 12 patch tokens +
   1 column token, end); and for the tiled image of ``(rows·16 + 8) × (cols·16 + 8)`` patches
   pooled 2 × 2: ``1 + (8·rows + 4)·(8·cols + 4 + 1) + 1`` tokens.

So ``crops = rows·cols + 1`` (the global view counts) and
``vision_tokens = 158 + 2 + (8·rows + 4)·(8·cols + 5)``: 316 for a 1 × 1 tiling, 740 for the
2 × 3 tiling of a 640 × 480 photo, ≈ 1200 for 12 crops. Differences from the real preprocessor:
none in these counts as far as the source shows (the tiling rule and token layout are exact);
image sizes smaller than the margins (< 112 px) are clipped to 1 px, where Molmo relies on
floating-point infinities to the same effect.

Only numpy is imported: this module is on the replay path (``cache/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class MolmoImageGeometry:
    """Molmo (v1) image-preprocessing constants; the defaults are MolmoE-1B's.

    Attributes:
        base_size: crop side in pixels fed to the ViT (336 for ViT-L/14-336).
        patch_size: ViT patch side in pixels (14).
        margins: patches discarded at the (left/top, right/bottom) inner border of each crop.
        pooling: pooling window side in patches (2 × 2 attention pooling in the connector).
    """

    base_size: int = 336
    patch_size: int = 14
    margins: tuple[int, int] = (4, 4)
    pooling: int = 2

    def __post_init__(self) -> None:
        if self.base_size % self.patch_size:
            raise ValueError(f"base_size {self.base_size} is not a multiple of patch_size {self.patch_size}")
        if self.window_patches <= 0:
            raise ValueError(f"margins {self.margins} leave no window in a {self.crop_patches}-patch crop")

    @property
    def crop_patches(self) -> int:
        """Patches per crop side (24)."""
        return self.base_size // self.patch_size

    @property
    def margin_patches(self) -> int:
        return int(sum(self.margins))

    @property
    def window_patches(self) -> int:
        """Patches per crop side that a crop contributes to the tiled image (16)."""
        return self.crop_patches - self.margin_patches

    @property
    def window_px(self) -> int:
        """Pixels per crop side contributed to the tiled image (224)."""
        return self.window_patches * self.patch_size

    @property
    def margin_px(self) -> int:
        """Pixels removed per image side before tiling (112)."""
        return self.margin_patches * self.patch_size

    def pooled(self, patches: int | np.ndarray) -> int | np.ndarray:
        """Tokens per side after pooling ``patches`` patches (ceil division)."""
        return (patches + self.pooling - 1) // self.pooling

    @property
    def global_tokens(self) -> int:
        """Tokens of the global view: start + rows × (cols + column token) + end (158)."""
        side = self.pooled(self.crop_patches)
        return 2 + side * (side + 1)


DEFAULT_GEOMETRY = MolmoImageGeometry()


@lru_cache(maxsize=64)
def candidate_tilings(max_crops: int) -> np.ndarray:
    """All ``(rows, cols)`` with ``rows·cols ≤ max_crops``, sorted by ``(rows·cols, rows)``:
    int64 (n, 2). Molmo's argmin/argmax then favour fewer crops on ties."""
    if int(max_crops) < 1:
        raise ValueError(f"max_crops must be >= 1, got {max_crops}")
    m = int(max_crops)
    tilings = sorted(((i, j) for i in range(1, m + 1) for j in range(1, m + 1) if i * j <= m), key=lambda t: (t[0] * t[1], t[0]))
    out = np.array(tilings, dtype=np.int64)
    out.setflags(write=False)
    return out


def select_tiling(height: np.ndarray | int, width: np.ndarray | int, max_crops: int,
                  geometry: MolmoImageGeometry = DEFAULT_GEOMETRY) -> np.ndarray:
    """Molmo's tiling choice for images of ``height × width`` px (vectorised).

    Args:
        height, width: image sizes in pixels, scalars or arrays of one shape (n,) (> 0).
        max_crops: the tier's crop limit (crops of the tiled grid, the global view excluded).
        geometry: preprocessing constants.

    Returns:
        int64 array (n, 2) of ``(rows, cols)`` (or (2,) for scalar input).
    """
    h = np.asarray(height, dtype=np.float64)
    w = np.asarray(width, dtype=np.float64)
    if h.shape != w.shape:
        raise ValueError(f"height {h.shape} and width {w.shape} differ in shape")
    if not (np.all(np.isfinite(h)) and np.all(np.isfinite(w)) and np.all(h > 0) and np.all(w > 0)):
        raise ValueError("image height and width must be finite and > 0")
    scalar = h.ndim == 0
    h, w = np.atleast_1d(h), np.atleast_1d(w)
    # sizes without the margins, as Molmo tiles them; clipped for images smaller than the margins
    hh = np.maximum(h - geometry.margin_px, 1.0)
    ww = np.maximum(w - geometry.margin_px, 1.0)
    cand = candidate_tilings(max_crops)
    res = (cand * geometry.window_px).astype(np.float64)  # (n_cand, 2) px
    scale = np.minimum(res[None, :, 0] / hh[:, None], res[None, :, 1] / ww[:, None])  # (n, n_cand)
    all_down = np.all(scale < 1.0, axis=1)
    ix_down = np.argmax(scale, axis=1)  # first maximum = fewest crops on ties
    ix_up = np.argmin(np.where(scale < 1.0, np.inf, scale), axis=1)
    ix = np.where(all_down, ix_down, ix_up)
    out = cand[ix]
    return out[0] if scalar else out


def vision_token_count(rows: np.ndarray | int, cols: np.ndarray | int,
                       geometry: MolmoImageGeometry = DEFAULT_GEOMETRY) -> np.ndarray:
    """Image tokens in the language model's sequence for a ``rows × cols`` tiling plus the global
    view: ``global_tokens + 2 + pooled(rows·16 + 8)·(pooled(cols·16 + 8) + 1)`` (int64)."""
    r = np.asarray(rows, dtype=np.int64)
    c = np.asarray(cols, dtype=np.int64)
    ph = geometry.pooled(r * geometry.window_patches + geometry.margin_patches)
    pw = geometry.pooled(c * geometry.window_patches + geometry.margin_patches)
    return geometry.global_tokens + 2 + ph * (pw + 1)


def crops_and_tokens(height: np.ndarray, width: np.ndarray, max_crops: tuple[int, ...] | list[int],
                     geometry: MolmoImageGeometry = DEFAULT_GEOMETRY) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image and tier: crops (incl. the global view), vision tokens and the tiling.

    Args:
        height, width: (n,) image sizes in px.
        max_crops: one crop limit per tier, e.g. ``KnobSpace.crops`` = (3, 6, 12).

    Returns:
        ``crops`` int32 (n, T), ``vision_tokens`` int32 (n, T), ``tiling`` int64 (n, T, 2).
    """
    h = np.atleast_1d(np.asarray(height))
    w = np.atleast_1d(np.asarray(width))
    tiling = np.stack([select_tiling(h, w, int(m), geometry) for m in max_crops], axis=1)  # (n, T, 2)
    crops = (tiling[..., 0] * tiling[..., 1] + 1).astype(np.int32)
    tokens = vision_token_count(tiling[..., 0], tiling[..., 1], geometry).astype(np.int32)
    return crops, tokens, tiling
