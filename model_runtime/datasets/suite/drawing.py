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
    """The cached DejaVu font ``face`` (a key of :data:`FONT_FILES`) at ``size`` px."""
    return ImageFont.truetype(os.path.join(_font_dir(), FONT_FILES[face]), int(size))


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

#: Closed vocabulary of sign words (common English words and short two-word phrases).
SIGN_WORDS: tuple[str, ...] = tuple("""
stop exit open closed push pull enter sale free new hot cold fresh daily coffee tea bread milk
pizza pasta sushi burger salad soup cake pie donut bagel juice water soda beer wine bar cafe
diner grill kitchen bakery market store shop mall bank hotel motel inn hostel school library
museum theater cinema park garden zoo farm beach lake river bridge tunnel station airport
harbor garage parking taxi bus train metro subway tram ferry bike walk run stay slow fast yield
danger caution warning notice private public office police fire hospital clinic pharmacy
doctor dentist nurse lobby elevator stairs toilet restroom men women kids baby pets dogs cats
books music games toys shoes hats bags gifts flowers plants tools paint wood metal glass paper
plastic cotton silk gold silver copper iron steel stone brick sand salt sugar honey lemon
apple orange banana grape cherry peach pear plum mango melon berry tomato potato onion garlic
pepper rice corn beans nuts cheese butter eggs chicken beef pork fish lamb north south east
west left right up down top bottom front back inside outside upstairs downstairs main side
center city town village county state union liberty freedom peace hope love joy dream star
moon sun sky rain snow wind storm cloud ocean island mountain valley forest desert road
street avenue lane drive highway route way home house room hall tower castle church temple
king queen prince royal grand great little big small tall short long wide happy lucky magic
silver moon red rose blue sky green leaf golden gate
""".split()) + (
    "no parking", "one way", "fresh fish", "hot dogs", "ice cream", "free wifi", "bus stop",
    "gas station", "car wash", "post office", "book store", "city hall", "fire exit",
    "wet floor", "keep out", "open late", "happy hour", "best price", "good food", "sale today",
    "main street", "park lane", "night club", "coffee shop", "tea house", "pet shop",
    "fruit stand", "bike lane", "dead end", "no entry", "exit only", "staff only",
    "thank you", "welcome home", "grand opening", "new york", "old town", "sea view",
    "sun valley", "green park", "blue lake", "red barn", "gold coast", "pizza place",
    "fish market", "flower shop", "art gallery", "train station", "bus depot", "slow down",
)
SIGN_WORDS = tuple(dict.fromkeys(SIGN_WORDS))  # drop repeats, keep order

FIRST_NAMES: tuple[str, ...] = tuple("""
James Mary John Patricia Robert Jennifer Michael Linda William Elizabeth David Barbara Richard
Susan Joseph Jessica Thomas Sarah Charles Karen Daniel Nancy Matthew Lisa Anthony Betty Mark
Sandra Steven Ashley Paul Emily Andrew Donna Joshua Michelle Kevin Carol Brian Amanda George
Melissa Edward Deborah Ronald Laura Timothy Rebecca Jason Sharon Ryan Cynthia Jacob Kathleen
Gary Amy Nicholas Angela Eric Anna Jonathan Ruth Larry Maria Justin Helen Scott Olivia
""".split())
LAST_NAMES: tuple[str, ...] = tuple("""
Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez
Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris
Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill
Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Chen Patel Kim
""".split())
STREETS: tuple[str, ...] = tuple("""
Oak Maple Pine Cedar Elm Main Park Lake Hill Church Washington Lincoln Jackson River Spring
Sunset Highland Forest Meadow Ridge Valley Willow Birch Chestnut Walnut Market Union Mill
""".split())
STREET_KINDS: tuple[str, ...] = ("St", "Ave", "Rd", "Blvd", "Ln", "Dr", "Way", "Ct")
CITIES: tuple[str, ...] = (
    "Springfield", "Riverside", "Franklin", "Greenville", "Bristol", "Clinton", "Fairview",
    "Salem", "Madison", "Georgetown", "Arlington", "Ashland", "Dover", "Oxford", "Jackson",
    "Burlington", "Manchester", "Milton", "Newport", "Auburn", "Dayton", "Lexington",
)
