"""synth_doc: DocVQA-like key–value extraction from forms, receipts and invoices.

A white page (mostly portrait) carries a title and 3–5 ``Key: value`` fields (invoice and
order numbers, amounts, quantities, short dates, a city or a first name) in one of three
layouts: inline (``Key: value``), two columns (key left, value right-aligned) or stacked (key
above value). Body text is drawn log-uniform over 9–24 px (shrunk if the page is too small), so
the high crop tier is needed for small print. Question: "What is the <key>?"; answer: the value,
scored with ``anls``.

Values are short (2–5 characters, mostly digits, names and cities from closed lists of 12):
the small model this suite trains read none of the long open-vocabulary values (names,
addresses, e-mails, phone numbers) after 270 k examples (benchmarks/RESULTS.md, "Second H200
run"), and a field it can learn to read keeps the task's signal, print size against crop tier.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

from . import drawing as dr
from .example import Example

TITLES = ("INVOICE", "RECEIPT", "ORDER FORM", "STATEMENT", "PURCHASE ORDER", "REGISTRATION FORM",
          "SHIPPING LABEL", "BILL", "APPLICATION")
TEMPLATES = (
    "What is the {key}?",
    "What is the {key} on this document?",
    "What {key} is written on the form?",
    "According to the document, what is the {key}?",
)


def _digits(rng: np.random.Generator, n: int) -> str:
    return "".join(str(int(d)) for d in rng.integers(0, 10, size=n))


def _date(rng: np.random.Generator) -> str:
    return f"{int(rng.integers(1, 13))}/{int(rng.integers(1, 29))}"


def _money(rng: np.random.Generator) -> str:
    return f"${int(rng.integers(1, 1000))}"


_CITIES: tuple[str, ...] = ("Salem", "Dover", "Oxford", "Milton", "Dayton", "Auburn", "Newport",
                            "Clinton", "Bristol", "Madison", "Ashland", "Franklin")
_NAMES: tuple[str, ...] = ("James", "Mary", "John", "Linda", "David", "Susan", "Paul", "Emily",
                           "Mark", "Laura", "Kevin", "Anna")


#: Field key → value generator. Each document uses distinct keys, so "What is the <key>?" has one answer.
FIELDS: dict[str, Callable[[np.random.Generator], str]] = {
    "Invoice Number": lambda r: _digits(r, 4),
    "Order Number": lambda r: _digits(r, 3),
    "Account Number": lambda r: _digits(r, 4),
    "Customer ID": lambda r: f"C{_digits(r, 3)}",
    "Reference": lambda r: _digits(r, 2),
    "Date": _date,
    "Due Date": _date,
    "Total": _money,
    "Tax": _money,
    "Amount Due": _money,
    "Name": lambda r: dr.choice(r, _NAMES),
    "City": lambda r: dr.choice(r, _CITIES),
    "Zip Code": lambda r: _digits(r, 5),
    "Room": lambda r: str(int(r.integers(1, 500))),
    "Quantity": lambda r: str(int(r.integers(1, 100))),
}
FIELD_KEYS: tuple[str, ...] = tuple(FIELDS)
LAYOUTS: tuple[str, ...] = ("inline", "columns", "stacked")


def _fits(fields: list[tuple[str, str]], layout: str, face: str, px: int, w: int, h: int,
          margin: int) -> bool:
    f = dr.font(face, px)
    line = px * 1.45
    lines = len(fields) * (2 if layout == "stacked" else 1) + 2.5  # + title
    if margin * 2 + lines * line > h:
        return False
    avail = w - 2 * margin
    for k, v in fields:
        if layout == "inline" and f.getlength(f"{k}: {v}") > avail:
            return False
        if layout == "columns" and f.getlength(f"{k}:") + f.getlength(v) + px > avail:
            return False
        if layout == "stacked" and max(f.getlength(f"{k}:"), f.getlength(v)) > avail:
            return False
    return True


def render(rng: np.random.Generator, *, split: str, index: int, seed: int) -> Example:
    w, h = dr.image_size(rng, min_side=100, max_side=640, aspect=(0.5, 1.1))
    n = int(rng.integers(3, 6))
    keys = dr.sample(rng, FIELD_KEYS, n)
    fields = [(k, FIELDS[k](rng)) for k in keys]
    face = dr.choice(rng, ("sans", "sans", "serif", "mono"))
    layout = dr.choice(rng, LAYOUTS)
    px = dr.log_uniform_int(rng, 9, 24)
    margin = max(4, int(min(w, h) * rng.uniform(0.03, 0.08)))
    # half the pages grow to hold their print (keeps large print on big pages); the others
    # shrink the print until it fits, then go stacked, then drop fields
    grow = rng.random() < 0.5
    while not _fits(fields, layout, face, px, w, h, margin):
        if grow and (w < 640 and h < 640):
            w, h = min(640, int(w * 1.1) + 1), min(640, int(h * 1.1) + 1)
        elif px > 8:
            px -= 1
        elif layout != "stacked" and _fits(fields, "stacked", face, px, w, h, margin):
            layout = "stacked"
        elif len(fields) > 3:
            fields.pop()
        elif px > 6:
            px -= 1
        else:
            # the fields still do not fit: widen the page (the widest line at 6 px)
            f = dr.font(face, px)
            need = max(f.getlength(f"{k}: {v}") for k, v in fields) + 2 * margin + 2
            w = min(640, int(need) + 1)
            h = max(h, int(margin * 2 + (len(fields) * 2 + 3) * px * 1.45) + 1)
            layout = "inline" if w < 640 else "stacked"
            break
    n = len(fields)
    img = Image.new("RGB", (w, h), (255, 255, 255) if rng.random() < 0.7 else dr.pastel(rng, 235, 256))
    draw = dr.GlyphDraw(img)
    f = dr.font(face, px)
    line = px * 1.45
    title = dr.choice(rng, TITLES)
    tf = dr.fit_font("sans_bold", title, int(px * rng.uniform(1.2, 1.8)), w - 2 * margin)
    y = float(margin)
    draw.text((margin, y), title, font=tf, fill=(10, 10, 10))
    y += line * 1.6
    if rng.random() < 0.5:
        draw.line((margin, y - line * 0.3, w - margin, y - line * 0.3), fill=(90, 90, 90), width=1)
    ink = (20, 20, 20)
    for k, v in fields:
        if layout == "inline":
            draw.text((margin, y), f"{k}: {v}", font=f, fill=ink)
        elif layout == "columns":
            draw.text((margin, y), f"{k}:", font=f, fill=ink)
            draw.text((w - margin, y), v, font=f, fill=ink, anchor="ra")
        else:
            draw.text((margin, y), f"{k}:", font=f, fill=(90, 90, 90))
            y += line
            draw.text((margin + px, y), v, font=f, fill=ink)
        y += line
    target = int(rng.integers(n))
    key, value = fields[target]
    question = dr.choice(rng, TEMPLATES).format(key=key.lower() if key not in ("Customer ID",) else key)
    return Example(
        task="synth_doc", image=np.asarray(img), question=question, answers=[value],
        meta={"image_w": w, "image_h": h, "text_px": px, "n_fields": n, "layout": layout,
              "answer_kind": key.lower().replace(" ", "_"), "answer_chars": len(value)},
        caption=" ".join([f"{title.lower()}."] + [f"{k.lower()}: {v}." for k, v in fields]),
        glyph_text="".join(draw.glyph_chars), glyph_boxes=draw.glyph_boxes(),
    )
