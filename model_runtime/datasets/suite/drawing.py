"""Shared drawing vocabulary of the task suite: fonts, named colors, word lists, sizes.

Every renderer draws with PIL only, using the DejaVu TTFs that matplotlib ships (so no system
font and no network is needed, and every machine renders the same pixels). Font objects are
cached per (face, size) because FreeType loading costs far more than drawing a word; images are
rendered on the fly in data-loader workers, so the per-example budget is a few milliseconds.

The random helpers take a ``numpy.random.Generator`` and nothing else, so a renderer stays a
pure function of the generator it is handed.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Sequence, TypeVar

import numpy as np
from PIL import ImageDraw, ImageFont

T = TypeVar("T")

#: Font face name → DejaVu file inside matplotlib's data folder.
FONT_FILES: dict[str, str] = {
    "sans": "DejaVuSans.ttf",
    "sans_bold": "DejaVuSans-Bold.ttf",
    "serif": "DejaVuSerif.ttf",
    "mono": "DejaVuSansMono.ttf",
}
FACES: tuple[str, ...] = tuple(FONT_FILES)


@functools.lru_cache(maxsize=1)
def _font_dir() -> str:
    import matplotlib  # only for the path of its bundled fonts; nothing is plotted

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


@functools.lru_cache(maxsize=512)
def font(face: str, size: int) -> ImageFont.FreeTypeFont:
    """The cached DejaVu font ``face`` (a key of :data:`FONT_FILES`) at ``size`` px.

    Pillow's BASIC layout engine always: with libraqm installed Pillow would default to RAQM,
    whose text widths differ slightly, so the same seed would render other image sizes on
    another machine (three of the 1,000 ``synth_doc`` test images did) and a suite would no
    longer match the cache built from it (its JSONL's sha256)."""
    return ImageFont.truetype(os.path.join(_font_dir(), FONT_FILES[face]), int(size),
                              layout_engine=ImageFont.Layout.BASIC)


def text_width(f: ImageFont.FreeTypeFont, text: str) -> float:
    """Advance width of ``text`` in px (cheaper than a bounding box)."""
    return f.getlength(text)


def fit_font(face: str, text: str, size: int, max_width: float, min_size: int = 6) -> ImageFont.FreeTypeFont:
    """The largest font of ``face`` at most ``size`` px whose rendering of ``text`` fits ``max_width``."""
    size = int(size)
    f = font(face, size)
    w = f.getlength(text)
    if w > max_width and size > min_size:
        size = max(min_size, int(size * max_width / w))
        f = font(face, size)
        while size > min_size and f.getlength(text) > max_width:
            size -= 1
            f = font(face, size)
    return f


def draw_centered(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str,
                  f: ImageFont.FreeTypeFont, fill: tuple[int, int, int]) -> None:
    """Draw ``text`` centred on ``xy`` (PIL's middle-middle anchor)."""
    draw.text(xy, text, font=f, fill=fill, anchor="mm")


def draw_anywhere(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: tuple[int, int], text: str,
                  f: ImageFont.FreeTypeFont, fill: tuple[int, int, int]) -> None:
    """Draw ``text`` at a uniformly random position of a ``size`` = (w, h) image, whole and 2 px
    from the edges where it fits (the centre's x, then y, from ``rng``)."""
    w, h = size
    tw, th = f.getlength(text), f.size
    cx = rng.uniform(tw / 2 + 2, max(tw / 2 + 3, w - tw / 2 - 2))
    cy = rng.uniform(th / 2 + 2, max(th / 2 + 3, h - th / 2 - 2))
    draw_centered(draw, (cx, cy), text, f, fill)


class GlyphDraw(ImageDraw.ImageDraw):
    """``ImageDraw.Draw`` that also records where each character it draws lies.

    The pixels are PIL's own (``text`` calls the base class unchanged); the record is training
    text only, the targets of ``model_runtime.small_model.print_supervision``: the suite knows
    the place of every glyph it prints, the dense supervision an OCR-pretrained tower is given.
    Single-line text only (every renderer draws one line per call). A character's box spans its
    advance width (``getlength`` of the prefixes, laid out from the drawn text's left edge) and
    the line's ink height; spaces are not recorded.
    """

    def __init__(self, im, mode: str | None = None) -> None:
        super().__init__(im, mode)
        self.glyph_chars: list[str] = []
        self._boxes: list[tuple[float, float, float, float]] = []

    def text(self, xy, text, fill=None, font=None, anchor=None, *args, **kwargs) -> None:  # type: ignore[override]
        super().text(xy, text, fill, font, anchor, *args, **kwargs)
        if not isinstance(text, str) or "\n" in text or font is None:
            return
        left, top, right, bottom = self.textbbox(xy, text, font=font, anchor=anchor)
        x = left - font.getbbox(text)[0]  # bbox starts at the first glyph's ink, the layout at its origin
        for i, ch in enumerate(text):
            x1 = left if i == 0 else x + font.getlength(text[:i])
            x2 = x + font.getlength(text[: i + 1])
            if not ch.isspace():
                self.glyph_chars.append(ch)
                self._boxes.append((x1, top, max(x1 + 1.0, x2), bottom))

    def glyph_boxes(self) -> np.ndarray:
        """(n, 4) float32 boxes (x0, y0, x1, y1) in image px of ``glyph_chars``, in drawing order."""
        return np.asarray(self._boxes, dtype=np.float32).reshape(-1, 4)


# ----------------------------------------------------------------------------- colors

#: Named colors questions may refer to (distinct at a glance, also when downscaled).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "blue": (40, 80, 220),
    "green": (40, 160, 60),
    "yellow": (240, 210, 40),
    "orange": (245, 140, 30),
    "purple": (140, 60, 180),
    "pink": (240, 120, 180),
    "brown": (130, 80, 40),
    "black": (20, 20, 20),
    "white": (250, 250, 250),
    "gray": (128, 128, 128),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)


def ink_for(bg: Sequence[int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``bg`` (luma threshold)."""
    luma = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]
    return (15, 15, 15) if luma > 140 else (250, 250, 250)


def pastel(rng: np.random.Generator, lo: int = 200, hi: int = 250) -> tuple[int, int, int]:
    """A random light background color."""
    return tuple(int(v) for v in rng.integers(lo, hi, size=3))  # type: ignore[return-value]


# ----------------------------------------------------------------------------- random helpers

def choice(rng: np.random.Generator, seq: Sequence[T]) -> T:
    """One element of ``seq``, uniformly."""
    return seq[int(rng.integers(len(seq)))]


def sample(rng: np.random.Generator, seq: Sequence[T], k: int) -> list[T]:
    """``k`` distinct elements of ``seq`` in random order."""
    return [seq[int(i)] for i in rng.choice(len(seq), size=k, replace=False)]


def log_uniform_int(rng: np.random.Generator, lo: float, hi: float) -> int:
    """An integer spread evenly in log scale over [lo, hi]: small sizes as common as large ones."""
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def image_size(rng: np.random.Generator, *, min_side: int = 100, max_side: int = 640,
               aspect: tuple[float, float] = (0.5, 2.0)) -> tuple[int, int]:
    """(width, height) with width/height log-uniform in ``aspect`` and sides in [min, max].

    The long side is drawn log-uniform so the Molmo tiling of the image spreads over small and
    large crop counts at every tier.
    """
    ratio = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
    long_side = log_uniform_int(rng, max(min_side, min_side * max(ratio, 1 / ratio)), max_side)
    if ratio >= 1:
        w, h = long_side, long_side / ratio
    else:
        w, h = long_side * ratio, long_side
    w = int(min(max(w, min_side), max_side))
    h = int(min(max(h, min_side), max_side))
    return w, h


# ----------------------------------------------------------------------------- vocabularies

#: Closed vocabulary of sign words: 32 short, common, visually distinct words. Sized for the
#: small model's training budget: with ~300 words and two-word phrases in four faces the model
#: read none of them after 270 k examples (benchmarks/RESULTS.md, "Second H200 run"); a closed
#: set it can learn keeps the task's real signal, text size against crop tier.
SIGN_WORDS: tuple[str, ...] = tuple("""
stop exit open sale free hot cold tea milk cake bar cafe bank hotel park zoo bus taxi fire
pizza shop school beach farm lake city star moon sun rain snow gold
""".split())
