"""Rewrite a finished cache compressed: ``python -m cache.repack IN OUT [--level 6]``.

The writer stores datasets uncompressed (journaled chunk writes stay cheap) and text as
variable-length strings, which HDF5 cannot compress: a 6,000-request live cache is ~110 MB, most
of it prediction/error strings. The packed copy has the same schema and content: numeric
datasets gzip-compressed (with the byte-shuffle filter), text datasets as fixed-length UTF-8
(the longest value's length, null-padded) gzip-compressed as well, attributes unchanged
(``--drop-predictions`` blanks the generated texts, the largest optional field, and says so in
the ``packed`` attribute). Readers
and ``cache.validate`` accept both forms. An unfinished cache (its build journal still exists) is
refused; OUT is never overwritten without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from cache.journal import journal_dir
from cache.schema import CacheError


def repack(src: str | Path, dst: str | Path, *, level: int = 6, overwrite: bool = False,
           drop_predictions: bool = False) -> Path:
    """Write ``src`` compressed to ``dst`` (see the module docstring); returns ``dst``."""
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise CacheError(f"{src}: no such cache file")
    if journal_dir(src).exists():
        raise CacheError(f"{src}: the build is unfinished (its journal {journal_dir(src)} exists); finish it first")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists; pass --overwrite to replace it")
    if dst.resolve() == src.resolve():
        raise ValueError("repack needs a different output path")
    tmp = dst.with_name(dst.name + ".partial")
    with h5py.File(src, "r") as fi, h5py.File(tmp, "w") as fo:
        for k, v in fi.attrs.items():
            fo.attrs[k] = v
        if drop_predictions:
            fo.attrs["packed"] = "outcomes/prediction blanked by cache.repack --drop-predictions"

        def copy(name: str, obj: object) -> None:
            if not isinstance(obj, h5py.Dataset):
                return
            chunks = obj.chunks if obj.chunks is not None and obj.size else None
            if h5py.check_string_dtype(obj.dtype) is not None:
                raw = obj.asstr()[()] if obj.size else np.zeros(obj.shape, dtype=object)
                if drop_predictions and name == "outcomes/prediction":
                    raw = np.full(obj.shape, "", dtype=object)
                enc = np.vectorize(lambda x: x.encode("utf-8"), otypes=[object])(raw) if raw.size else raw
                width = max(1, max((len(b) for b in enc.ravel()), default=1))
                dt = h5py.string_dtype("utf-8", width)
                data = np.asarray(enc.tolist() if enc.size else [], dtype=f"S{width}").reshape(obj.shape).astype(dt)
                fo.create_dataset(name, data=data, dtype=dt, chunks=chunks,
                                  compression="gzip" if obj.size else None, compression_opts=level if obj.size else None,
                                  shuffle=bool(obj.size))
            else:
                kw = dict(compression="gzip", compression_opts=level, shuffle=True) if obj.size else {}
                if obj.id.get_storage_size() == 0 and obj.size:  # never written: keep the fill value only
                    fo.create_dataset(name, shape=obj.shape, dtype=obj.dtype, chunks=chunks,
                                      fillvalue=obj.fillvalue, **kw)
                else:
                    fo.create_dataset(name, data=obj[()], chunks=chunks, fillvalue=obj.fillvalue, **kw)

        fi.visititems(copy)
    tmp.replace(dst)
    return dst


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cache.repack", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--level", type=int, default=6, choices=range(1, 10), metavar="1-9", help="gzip level")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--drop-predictions", action="store_true", help="blank the generated texts (smaller file)")
    args = ap.parse_args(argv)
    try:
        out = repack(args.src, args.dst, level=args.level, overwrite=args.overwrite,
                     drop_predictions=args.drop_predictions)
    except (CacheError, OSError, ValueError) as e:
        print(f"python -m cache.repack: error: {e}", file=sys.stderr)
        return 1
    a, b = args.src.stat().st_size, out.stat().st_size
    print(f"{args.src} ({a / 1e6:.1f} MB) -> {out} ({b / 1e6:.1f} MB, {b / max(a, 1):.0%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
