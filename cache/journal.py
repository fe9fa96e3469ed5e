"""The write-ahead journal of an outcome-cache build: ``<path>.journal/``.

Layout of the journal directory:

- ``header.json``: everything :meth:`cache.writer.CacheWriter.create` needs to rebuild an empty
  cache file (knob space, sizes, root attributes, ``created_at``), plus ``base``: ``"empty"``
  when the journal was started by ``create`` (replaying it onto an empty file reproduces the
  cache), or ``"snapshot"`` when it was started on an existing, finished cache (then
  ``base.h5`` is a copy of that file taken before the first chunk, and a rebuild starts from it).
- ``NNNNNNNN.npz`` (8 digits, consecutive from 00000000): one chunk each, i.e. one
  ``write_samples`` / ``write_outcomes`` / ``set_attrs`` call, as numpy arrays (no pickle).
  Entry ``__kind__`` names the call; strings are stored as UTF-8 bytes plus offsets (see
  :func:`encode_strings`), so a chunk never needs ``allow_pickle``.
- ``applied.json``: ``{"applied": N}``: chunks up to ``N`` have been applied to the HDF5 file
  and the file was flushed and fsynced after chunk ``N`` (-1 / missing: none since the base).
  When ``N`` is the last chunk, the file on disk is consistent; otherwise a kill hit the file
  mid-write, and since HDF5 files are not crash-consistent (a half-written B-tree or global
  heap can pass any cheap structural check), the file is rebuilt from the base.

Every file is written atomically: a temporary file in the same directory, ``flush``,
``os.fsync``, ``os.replace`` onto the final name, then ``fsync`` of the directory. A chunk file
with a final name is therefore always complete; stray temporary files (a kill while writing the
journal) are ignored and removed on the next open.

Only numpy is imported here (replay path).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from cache.schema import CacheError

HEADER_NAME = "header.json"
APPLIED_NAME = "applied.json"
SNAPSHOT_NAME = "base.h5"
JOURNAL_FORMAT = "molmoe-gym-cache-journal"
_CHUNK_RE = re.compile(r"^(\d{8})\.npz$")
_TMP_PREFIX = ".tmp-"
_STR_SUFFIXES = ("__utf8", "__offsets", "__shape")


def journal_dir(cache_path: str | os.PathLike) -> Path:
    """``<path>.journal`` beside the cache file."""
    p = Path(cache_path)
    return p.with_name(p.name + ".journal")


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename / unlink inside ``directory`` durable (no-op where directories can't be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. platforms without O_RDONLY directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a closed file's data to disk (used before the journal that protects it is deleted)."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _atomic_write(final: Path, write: Any, *, durable: bool = True) -> None:
    """Write ``final`` via a temporary sibling: ``write(fileobj)``, flush, fsync, rename, fsync dir.

    ``durable=False`` skips both fsyncs (the rename stays atomic): for files where losing the
    newest version in a power cut only makes recovery more conservative.
    """
    tmp = final.with_name(f"{_TMP_PREFIX}{final.name}")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        if durable:
            os.fsync(fh.fileno())
    os.replace(tmp, final)
    if durable:
        fsync_dir(final.parent)


def remove_journal_dir(directory: str | os.PathLike) -> None:
    """Atomically retire a journal directory (rename to ``*.trash``), then delete it."""
    d = Path(directory)
    trash = d.with_name(d.name + ".trash")
    if trash.exists():
        shutil.rmtree(trash)
    if d.exists():
        os.rename(d, trash)
        fsync_dir(d.parent)
        shutil.rmtree(trash)


# ---------------------------------------------------------------------- string packing
def encode_strings(values: np.ndarray) -> dict[str, np.ndarray]:
    """Pack an array of ``str`` (any shape) as ``utf8`` (uint8 bytes), ``offsets`` (int64, n+1)
    and ``shape`` (int64), so that it can live in an ``.npz`` without pickling."""
    arr = np.asarray(values, dtype=object)
    encoded = [s.encode("utf-8") for s in arr.reshape(-1)]
    lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    return {"utf8": blob, "offsets": offsets, "shape": np.asarray(arr.shape, dtype=np.int64)}


def decode_strings(utf8: np.ndarray, offsets: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_strings`: an object array of ``str`` of the stored shape."""
    raw = utf8.tobytes()
    out = np.empty(len(offsets) - 1, dtype=object)
    out[:] = [raw[a:b].decode("utf-8") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    return out.reshape(tuple(int(s) for s in shape))


# ---------------------------------------------------------------------- the journal
class Journal:
    """A journal directory: a header plus numbered chunks. Use :meth:`create` or :meth:`open`."""

    def __init__(self, directory: Path, header: dict) -> None:
        self.directory = Path(directory)
        self.header = header
        self._next = self._scan_next()

    # .................................................................. lifecycle
    @classmethod
    def create(cls, directory: str | os.PathLike, header: Mapping[str, Any]) -> "Journal":
        """Create ``directory`` (must not exist) and write ``header`` atomically."""
        d = Path(directory)
        d.mkdir(parents=False, exist_ok=False)
        fsync_dir(d.parent)
        full = {"journal_format": JOURNAL_FORMAT, **dict(header)}
        text = json.dumps(full, sort_keys=True, indent=1).encode("utf-8")
        _atomic_write(d / HEADER_NAME, lambda fh: fh.write(text))
        return cls(d, full)

    @classmethod
    def open(cls, directory: str | os.PathLike) -> "Journal":
        """Open an existing journal; stray temporary files of a killed write are removed."""
        d = Path(directory)
        if not d.is_dir():
            raise CacheError(f"{d}: no journal directory")
        for stray in d.glob(f"{_TMP_PREFIX}*"):
            stray.unlink(missing_ok=True)
        hp = d / HEADER_NAME
        if not hp.is_file():
            raise CacheError(
                f"{d}: journal has no {HEADER_NAME} (the build was killed during create); "
                "recreate the cache with CacheWriter.create(..., overwrite=True)"
            )
        try:
            header = json.loads(hp.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CacheError(f"{hp}: unreadable journal header: {e}") from e
        if header.get("journal_format") != JOURNAL_FORMAT:
            raise CacheError(f"{hp}: not a molmoe-gym cache journal header")
        return cls(d, header)

    def remove(self) -> None:
        """Delete the journal (after the cache file it protects is durable).

        The directory is first renamed away in one atomic step: a kill while deleting its files
        one by one must not leave a journal that lost its header or some chunks.
        """
        remove_journal_dir(self.directory)

    # .................................................................. chunks
    def _scan_next(self) -> int:
        nums = [int(m.group(1)) for m in map(_CHUNK_RE.match, os.listdir(self.directory)) if m]
        return max(nums) + 1 if nums else 0

    def chunk_paths(self) -> list[Path]:
        """Chunk files in write order."""
        names = sorted(n for n in os.listdir(self.directory) if _CHUNK_RE.match(n))
        return [self.directory / n for n in names]

    @property
    def last_chunk(self) -> int:
        """Number of the newest chunk (-1 when there is none)."""
        return self._next - 1

    def applied(self) -> int:
        """The newest chunk known to be applied to the file and fsynced (-1: none)."""
        try:
            return int(json.loads((self.directory / APPLIED_NAME).read_text(encoding="utf-8"))["applied"])
        except FileNotFoundError:
            return -1
        except (OSError, ValueError, KeyError, TypeError):
            return -2  # unreadable: treat the file as inconsistent

    def set_applied(self, n: int) -> None:
        """Record (atomically) that chunks up to ``n`` are in the file and the file is durable."""
        text = json.dumps({"applied": int(n)}).encode("utf-8")
        # not fsynced: after a power cut an older (or unreadable) marker only causes a rebuild;
        # the HDF5 file itself was fsynced before this is called
        _atomic_write(self.directory / APPLIED_NAME, lambda fh: fh.write(text), durable=False)

    @property
    def snapshot_path(self) -> Path:
        return self.directory / SNAPSHOT_NAME

    def write_snapshot(self, source: str | os.PathLike) -> None:
        """Copy the finished cache file ``source`` to ``base.h5`` atomically (rebuild base)."""
        def copy(fh: Any) -> None:
            with open(source, "rb") as src:
                shutil.copyfileobj(src, fh, length=16 * 2**20)
        _atomic_write(self.snapshot_path, copy)

    def append(self, kind: str, arrays: Mapping[str, np.ndarray], strings: Mapping[str, np.ndarray] | None = None) -> int:
        """Write one chunk atomically and return its number.

        Args:
            kind: the call it records (``"samples"``, ``"outcomes"``, ``"attrs"``).
            arrays: numeric numpy arrays, stored as they are.
            strings: arrays of ``str`` (any shape), packed with :func:`encode_strings`.
        """
        payload: dict[str, np.ndarray] = {"__kind__": np.asarray(kind)}
        for name, arr in arrays.items():
            if name.startswith("__") or name.endswith(_STR_SUFFIXES):
                raise ValueError(f"reserved journal entry name {name!r}")
            payload[name] = np.ascontiguousarray(arr)
        for name, arr in (strings or {}).items():
            for suffix, packed in encode_strings(arr).items():
                payload[f"{name}__{suffix}"] = packed
        number = self._next
        _atomic_write(self.directory / f"{number:08d}.npz", lambda fh: np.savez(fh, **payload))
        self._next += 1
        return number

    @staticmethod
    def sample_fields(path: str | os.PathLike) -> tuple[np.ndarray, list[str]] | None:
        """``(index, field names)`` of a ``samples`` chunk without reading its data; else None."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["__kind__"]) != "samples":
                    return None
                names = {n[: -len("__utf8")] for n in z.files if n.endswith("__utf8")}
                names |= {n for n in z.files if "__" not in n and n != "index"}
                return z["index"], sorted(names)
        except Exception as e:
            raise CacheError(f"{path}: damaged journal chunk: {e}") from e

    @staticmethod
    def read(path: str | os.PathLike) -> tuple[str, dict[str, np.ndarray]]:
        """``(kind, entries)`` of one chunk; string entries come back as object arrays of ``str``."""
        try:
            with np.load(path, allow_pickle=False) as z:
                raw = {k: z[k] for k in z.files}
        except Exception as e:  # zipfile / ValueError / OSError: the chunk is damaged
            raise CacheError(f"{path}: damaged journal chunk: {e}") from e
        kind = str(raw.pop("__kind__"))
        out: dict[str, np.ndarray] = {}
        string_names = {k[: -len("__utf8")] for k in raw if k.endswith("__utf8")}
        for name in string_names:
            out[name] = decode_strings(raw.pop(f"{name}__utf8"), raw.pop(f"{name}__offsets"), raw.pop(f"{name}__shape"))
        out.update(raw)
        return kind, out
