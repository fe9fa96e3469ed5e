"""Crash-safe, resumable writer of HDF5 outcome caches (layout: :mod:`cache.schema`).

A build is a sequence of *chunks*: every :meth:`CacheWriter.write_samples`,
:meth:`CacheWriter.write_outcomes` and :meth:`CacheWriter.set_attrs` call is one. Each chunk
is validated, written atomically to the journal ``<path>.journal/`` (:mod:`cache.journal`) and
only then applied to the HDF5 file (data first and flushed, then ``outcomes/status`` /
``progress/samples_done`` and flushed); the file is then fsynced and the journal records the
chunk as applied. :meth:`CacheWriter.resume` opens the file as it is when every journaled chunk
was applied; when a kill hit the file mid-write (HDF5 files are not crash-consistent: a kill
inside a write can leave a damaged B-tree or string heap that still opens), or the file cannot
be opened or fails the structural check, it rebuilds the file beside it from the journal's
base (empty file or snapshot) by replaying every chunk in order, then swaps it in atomically.
:meth:`CacheWriter.close` makes the file durable and deletes the journal. So a SIGKILL loses at
most the chunk in flight.

Typical build loop::

    w = CacheWriter.create(path, knob_space=ks, n_samples=S, lang_dim=Dl, token_dim=Dt, ...)
    # or, after a crash: w = CacheWriter.resume(path)
    todo = np.flatnonzero(w.samples_pending())
    w.write_samples(rows, id=..., dataset=..., ...)
    w.write_outcomes(rows, configs, score=..., output_tokens=...)   # skip where ~w.pending()
    w.close()

Only numpy and h5py are imported (replay path).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from cache.journal import Journal, fsync_dir, fsync_file, journal_dir, remove_journal_dir
from cache.reader import (
    JSON_ATTRS,
    CacheDims,
    check_identity,
    contiguous_runs,
    decode_attr,
    expected_shapes,
    open_h5,
    read_dims,
    storage_dtype,
    structure_problems,
)
from cache.schema import (
    DATASETS,
    FILL_VALUES,
    FORMAT_NAME,
    SCHEMA_VERSION,
    SPLITS,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_PENDING,
    CacheError,
)
from model_runtime.knob_space import KnobSpace

#: ``write_samples`` field → dataset.
SAMPLE_FIELDS: dict[str, str] = {n.split("/", 1)[1]: n for n in DATASETS if n.startswith("samples/")}
#: Fields a row needs before ``progress/samples_done`` is set (all but ``uncertainty``).
REQUIRED_SAMPLE_FIELDS: tuple[str, ...] = tuple(f for f in SAMPLE_FIELDS if f != "uncertainty")
STRING_SAMPLE_FIELDS = frozenset({"id", "question", "answers"})
#: Outcome payload entries in apply order (``status`` always last).
OUTCOME_FIELDS: tuple[str, ...] = ("score", "output_tokens", "measured_ms", "prediction", "error", "status")
STRING_OUTCOME_FIELDS = frozenset({"prediction", "error"})
#: Root attributes fixed at creation (they define the layout or the file's identity).
FIXED_ATTRS = frozenset({"schema_version", "format", "knob_space", "datasets", "created_at", "created_by"})

#: Bytes per HDF5 chunk. Latency tokens get small chunks so that lazy random reads of one
#: sample do not pull in many others; everything else targets ~256 KiB.
TOKEN_CHUNK_BYTES = 64 * 2**10
TABLE_CHUNK_BYTES = 256 * 2**10
#: h5py stores a variable-length string as a 16-byte heap reference inside the chunk.
VLEN_ITEMSIZE = 16
#: More contiguous runs than this in an index → one h5py point selection instead of a loop.
MAX_SLICE_RUNS = 32


def package_version() -> str:
    """``"molmoe-gym <version>"`` from the installed metadata (``unknown`` when not installed)."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return f"molmoe-gym {version('molmoe-gym')}"
    except (ImportError, PackageNotFoundError):
        return "molmoe-gym unknown"


def chunk_shape(name: str, shape: tuple[int, ...], spec: str) -> tuple[int, ...]:
    """Chunk of ``rows × (all trailing dims)``: whole rows, ``rows`` sized to the byte target."""
    item = VLEN_ITEMSIZE if spec == "str" else np.dtype(spec).itemsize
    row_bytes = item * math.prod(shape[1:])
    target = TOKEN_CHUNK_BYTES if name == "samples/latency_token" else TABLE_CHUNK_BYTES
    rows = max(1, min(shape[0], target // max(1, row_bytes)))
    return (rows,) + tuple(shape[1:])


def build_empty_file(target: Path, dims: CacheDims, attrs: Mapping[str, Any]) -> None:
    """Write a new cache file at ``target``: root ``attrs`` and every dataset of the schema at
    full size with its fill value (chunks are allocated when first written)."""
    shapes = expected_shapes(dims)
    with h5py.File(target, "w") as f:
        for k, v in attrs.items():
            f.attrs[k] = v
        for name, (_, spec) in DATASETS.items():
            kwargs: dict[str, Any] = {}
            if name in FILL_VALUES:
                kwargs["fillvalue"] = FILL_VALUES[name]
            f.create_dataset(
                name, shape=shapes[name], dtype=storage_dtype(spec), chunks=chunk_shape(name, shapes[name], spec), **kwargs
            )
    fsync_file(target)


# ---------------------------------------------------------------------- input validation
def _as_index(value: Any, n: int, what: str) -> np.ndarray:
    """1-D unique int64 indices in ``[0, n)``."""
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D array of indices, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{what}: indices must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= n:
        raise ValueError(f"{what}: indices must lie in [0, {n}), got values in [{lo}, {hi}]")
    if np.unique(arr).size != arr.size:
        raise ValueError(f"{what}: indices must be unique (repeated rows would make the write ambiguous)")
    return arr


def _check_shape(name: str, arr: np.ndarray, shape: tuple[int, ...]) -> None:
    if arr.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {arr.shape}")


def _as_int(name: str, value: Any, shape: tuple[int, ...], dtype: str, lo: int | None = None, hi: int | None = None) -> np.ndarray:
    """Integer array of ``shape`` castable to ``dtype`` without loss, values in ``[lo, hi]``."""
    arr = np.asarray(value)
    _check_shape(name, arr, shape)
    if arr.dtype.kind == "f":
        if arr.size and not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
            raise ValueError(f"{name}: expected integers, got non-integral floats")
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"{name}: dtype {arr.dtype} cannot be cast to {dtype}")
    info = np.iinfo(dtype)
    lo = info.min if lo is None else max(lo, info.min)
    hi = info.max if hi is None else min(hi, info.max)
    if arr.size:
        amin, amax = arr.min(), arr.max()
        if amin < lo or amax > hi:
            raise ValueError(f"{name}: values must lie in [{lo}, {hi}], got values in [{amin}, {amax}]")
    return arr.astype(dtype)


def _as_float(
    name: str, value: Any, shape: tuple[int, ...], dtype: str, *, allow_nan: bool, lo: float | None = None, hi: float | None = None
) -> np.ndarray:
    """Float array of ``shape`` cast to ``dtype``; no inf (NaN only when ``allow_nan``), finite values in ``[lo, hi]``."""
    arr = np.asarray(value)
    _check_shape(name, arr, shape)
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{name}: dtype {arr.dtype} cannot be cast to {dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(dtype)
    nan = np.isnan(out)
    if np.isinf(out).any():
        raise ValueError(f"{name}: infinite values (or values beyond the {dtype} range)")
    if not allow_nan and nan.any():
        raise ValueError(f"{name}: NaN values are not allowed")
    finite = out[~nan]
    if finite.size and ((lo is not None and finite.min() < lo) or (hi is not None and finite.max() > hi)):
        rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise ValueError(f"{name}: values must lie in {rng}{' or be NaN' if allow_nan else ''}, got [{finite.min()}, {finite.max()}]")
    return out


def _as_str(name: str, value: Any, shape: tuple[int, ...], *, json_text: bool = False, nonempty: bool = False) -> np.ndarray:
    """Object array of ``str`` of ``shape``. With ``json_text`` every entry must be JSON; lists,
    tuples and dicts are serialised."""
    if isinstance(value, np.ndarray):
        arr = value.astype(object)
    elif len(shape) == 1:
        items = list(value)
        arr = np.empty(len(items), dtype=object)
        for j, v in enumerate(items):  # element-wise: a list entry must not become an array axis
            arr[j] = json.dumps(v) if json_text and isinstance(v, (list, tuple, dict)) else v
    else:
        arr = np.asarray(value, dtype=object)
    _check_shape(name, arr, shape)
    flat = arr.reshape(-1)
    for j, s in enumerate(flat):
        if not isinstance(s, str):
            raise ValueError(f"{name}: entry {j} is {type(s).__name__}, expected str")
    if nonempty and any(s == "" for s in flat):
        raise ValueError(f"{name}: empty strings are not allowed")
    if json_text:
        for j, s in enumerate(flat):
            try:
                json.loads(s)
            except ValueError as e:
                raise ValueError(f"{name}: entry {j} is not valid JSON ({e}): {s[:60]!r}") from None
    return arr


def _json_text(name: str, value: Any) -> str:
    """A JSON attribute's text; ``value`` may be JSON text already."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError as e:
            raise ValueError(f"attribute {name!r}: not valid JSON text: {e}") from None
        return value
    try:
        return json.dumps(value, sort_keys=True)
    except TypeError as e:
        raise ValueError(f"attribute {name!r}: not JSON-serialisable: {e}") from None


# ---------------------------------------------------------------------- h5py selections
def _write_rows(ds: h5py.Dataset, rows: np.ndarray, runs: list, values: np.ndarray, cols: np.ndarray | None = None) -> None:
    """``ds[rows, cols] = values`` for sorted unique ``rows`` (and ``cols``), with slices where
    the indices are contiguous. h5py allows one point-selected axis per write, so when both
    axes are scattered the write goes run by run (few runs) or column by column."""
    if cols is None or (cols.size == ds.shape[1] and cols[0] == 0 and cols[-1] == ds.shape[1] - 1):
        ckey: tuple = ()  # all columns (or a 1-D dataset)
    elif cols[-1] - cols[0] + 1 == cols.size:
        ckey = (slice(int(cols[0]), int(cols[-1]) + 1),)
    else:
        ckey = (cols,)
    if len(runs) <= MAX_SLICE_RUNS:
        for a, b, lo, hi in runs:
            ds[(slice(a, b),) + ckey] = values[lo:hi]
    elif not ckey or isinstance(ckey[0], slice):
        ds[(rows,) + ckey] = values
    else:
        for j, c in enumerate(cols.tolist()):
            ds[rows, c] = values[:, j]


class CacheWriter:
    """Writer of one cache file; obtain it with :meth:`create` or :meth:`resume`.

    Attributes:
        path: the cache file. knob_space: its knob space. dims: its sizes.
        datasets: dataset names (``write_samples(dataset=...)`` indexes them).
    """

    def __init__(self, path: Path, f: h5py.File, journal: Journal | None, *, snapshot: bool = True) -> None:
        self.path = path
        self._f = f
        self._journal = journal
        self._snapshot = snapshot
        self._closed = False
        self._broken: str | None = None
        check_identity(f, path)
        self.knob_space, self.dims = read_dims(f, path)
        self.datasets: list[str] = list(decode_attr("datasets", f.attrs["datasets"]))
        # in-memory mirrors: pending() / samples_pending() without touching the file
        self._status: np.ndarray = f["outcomes/status"][()]
        self._done: np.ndarray = f["progress/samples_done"][()]
        # which required fields each row received during this journal's lifetime (a row may
        # get its fields over several calls; rebuilt by replay, so it survives a crash)
        self._fields = np.zeros((self.dims.S, len(REQUIRED_SAMPLE_FIELDS)), dtype=bool)

    # .................................................................. construction
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        knob_space: KnobSpace,
        n_samples: int,
        lang_dim: int,
        token_dim: int,
        model_id: str,
        generator: str,
        generator_params: dict,
        datasets: list[str],
        metrics: dict[str, str],
        synthetic: bool,
        overwrite: bool = False,
    ) -> "CacheWriter":
        """Create a new cache file with every dataset preallocated (fill values) and its journal.

        Raises:
            FileExistsError: ``path`` (or its journal) exists and ``overwrite`` is False.
            ValueError: invalid sizes, names or metadata.
        """
        path = Path(path)
        if not isinstance(knob_space, KnobSpace):
            raise ValueError(f"knob_space must be a KnobSpace, got {type(knob_space).__name__}")
        for name, v in (("n_samples", n_samples), ("lang_dim", lang_dim), ("token_dim", token_dim)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(model_id, str) or not model_id:
            raise ValueError("model_id must be a non-empty string")
        if not isinstance(generator, str) or not generator:
            raise ValueError("generator must be a non-empty string ('synthetic' or 'live')")
        if generator == "synthetic" and not synthetic:
            raise ValueError("generator 'synthetic' requires synthetic=True (synthetic data is always labelled)")
        if not isinstance(generator_params, dict):
            raise ValueError("generator_params must be a dict")
        datasets = list(datasets)
        if not datasets or not all(isinstance(d, str) and d for d in datasets) or len(set(datasets)) != len(datasets):
            raise ValueError(f"datasets must be a non-empty list of unique non-empty names, got {datasets!r}")
        if len(datasets) > np.iinfo(np.int16).max:
            raise ValueError("too many datasets for the int16 samples/dataset column")
        if not isinstance(metrics, dict) or set(metrics) != set(datasets):
            raise ValueError(f"metrics must map every dataset {datasets} to a metric name, got {metrics!r}")
        jdir = journal_dir(path)
        if path.exists() or jdir.exists():
            if not overwrite:
                what = "the file" if path.exists() else f"its build journal {jdir}"
                raise FileExistsError(
                    f"{path}: {what} already exists; pass overwrite=True to replace it "
                    f"or use CacheWriter.resume() to continue its build"
                )
            remove_journal_dir(jdir)
            path.unlink(missing_ok=True)
        if not path.parent.is_dir():
            raise FileNotFoundError(f"{path.parent}: directory does not exist")
        dims = CacheDims.from_knob_space(knob_space, n_samples, lang_dim, token_dim)
        attrs: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "format": FORMAT_NAME,
            "model_id": model_id,
            "knob_space": knob_space.to_json(),
            "generator": generator,
            "generator_params": _json_text("generator_params", generator_params),
            "synthetic": bool(synthetic),
            "datasets": json.dumps(datasets),
            "metrics": json.dumps(metrics, sort_keys=True),
            "budget_range_ms": "null",
            "estimator": "null",
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "created_by": package_version(),
        }
        # header first: a kill during the HDF5 creation below is then repaired by resume()
        journal = Journal.create(jdir, {"base": "empty", "dims": asdict(dims), "attrs": attrs})
        tmp = path.with_name(path.name + ".tmp")
        build_empty_file(tmp, dims, attrs)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        return cls(path, open_h5(path, "r+"), journal)

    @classmethod
    def resume(cls, path: str | os.PathLike, *, snapshot: bool = True) -> "CacheWriter":
        """Reopen a cache for writing.

        With a journal beside the file (an unfinished or killed build): when the journal says
        every chunk was applied and fsynced, the file is consistent and is opened as it is;
        when a kill hit the file mid-write (or the file cannot be opened / its structure is
        broken) the file is rebuilt from the journal's base (an empty file from the header, or
        the snapshot) by replaying every chunk in order. Without a journal (a finished cache,
        e.g. to add configurations): open the file and start a new journal at the first write;
        with ``snapshot`` the file is first copied into the journal (``base.h5``), so that a
        crash while extending it loses nothing either (costs one file copy).

        Raises:
            CacheError: no file and no journal, or a broken file without a journal to repair it.
        """
        path = Path(path)
        jdir = journal_dir(path)
        stale = jdir.with_name(jdir.name + ".trash")  # a kill while deleting a finished journal
        if stale.is_dir():
            shutil.rmtree(stale)
        if not jdir.is_dir():
            f = open_h5(path, "r+")
            try:
                check_identity(f, path)
                _, dims = read_dims(f, path)
                problems = structure_problems(f, dims)
                if problems:
                    raise CacheError(f"{path}: cannot resume a structurally broken cache: " + "; ".join(problems))
                return cls(path, f, None, snapshot=snapshot)
            except BaseException:
                f.close()
                raise
        journal = Journal.open(jdir)
        if journal.applied() == journal.last_chunk:
            try:
                writer = cls._open_checked(path, journal)
            except (CacheError, OSError, KeyError, ValueError, TypeError):
                pass  # damaged after its last clean chunk (or never created): rebuild
            else:
                writer._restore_field_progress()
                return writer
        return cls._rebuild(path, journal)

    @classmethod
    def _open_checked(cls, path: Path, journal: Journal) -> "CacheWriter":
        """Open ``path`` r+ and check it against the journal header (raises when broken)."""
        f = open_h5(path, "r+")
        try:
            check_identity(f, path)
            dims = CacheDims(**journal.header["dims"])
            problems = structure_problems(f, dims)
            if problems:
                raise CacheError("; ".join(problems))
            for name in DATASETS:  # touch every dataset's chunk index
                f[name][(0,) * f[name].ndim]
            return cls(path, f, journal)
        except BaseException:
            f.close()
            raise

    @classmethod
    def _rebuild(cls, path: Path, journal: Journal) -> "CacheWriter":
        """Rebuild ``path`` beside it from the journal's base plus every chunk, swap it in
        atomically, mark the journal applied and return a writer on it."""
        base = journal.header.get("base")
        tmp = path.with_name(path.name + ".rebuild")
        if base == "empty":
            build_empty_file(tmp, CacheDims(**journal.header["dims"]), journal.header["attrs"])
        elif base == "snapshot" and journal.snapshot_path.is_file():
            shutil.copyfile(journal.snapshot_path, tmp)
        else:
            raise CacheError(
                f"{path}: the file is damaged or was killed mid-write, and its journal {journal.directory} has no "
                "base to rebuild it from (no base to rebuild: it was started on an existing cache without a snapshot)"
            )
        staging = cls(tmp, open_h5(tmp, "r+"), journal)
        for chunk in journal.chunk_paths():
            kind, entries = Journal.read(chunk)
            staging._apply(kind, entries)
        staging._f.close()
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        journal.set_applied(journal.last_chunk)
        writer = cls._open_checked(path, journal)
        writer._fields = staging._fields
        return writer

    def _restore_field_progress(self) -> None:
        """Rebuild the per-row field mask from the journal's sample chunks (no data read)."""
        assert self._journal is not None
        for chunk in self._journal.chunk_paths():
            info = Journal.sample_fields(chunk)
            if info is not None:
                idx, names = info
                for j, name in enumerate(REQUIRED_SAMPLE_FIELDS):
                    if name in names:
                        self._fields[idx, j] = True

    # .................................................................. state
    @property
    def n_samples(self) -> int:
        return self.dims.S

    @property
    def n_configs(self) -> int:
        return self.dims.C

    def pending(self) -> np.ndarray:
        """(S, C) bool: outcomes whose status is still PENDING."""
        return self._status == STATUS_PENDING

    def samples_pending(self) -> np.ndarray:
        """(S,) bool: sample rows not yet marked done in ``progress/samples_done``."""
        return self._done == 0

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: the writer is closed")
        if self._broken:
            raise CacheError(f"{self.path}: an earlier write failed ({self._broken}); reopen with CacheWriter.resume()")

    def _ensure_journal(self) -> Journal:
        """The journal, started on first write when resuming a finished cache."""
        if self._journal is None:
            # the file's root attributes as stored (JSON attributes as text), like create()'s header
            attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self._f.attrs.items()}
            attrs = {k: (v.decode("utf-8") if isinstance(v, bytes) else v) for k, v in attrs.items()}
            header = {"base": "snapshot" if self._snapshot else "none", "dims": asdict(self.dims), "attrs": attrs}
            jdir = journal_dir(self.path)
            if self._snapshot:
                # copy the closed, consistent file before the first chunk touches it
                self._f.close()
                journal = Journal.create(jdir, header)
                journal.write_snapshot(self.path)
                self._f = open_h5(self.path, "r+")
            else:
                journal = Journal.create(jdir, header)
            self._journal = journal
        return self._journal

    # .................................................................. writes
    def write_samples(self, index: np.ndarray, **fields: Any) -> None:
        """Write sample-table rows ``index`` ((n,) int, unique) as one journaled chunk.

        Fields (any subset, leading dim n): ``id`` str (non-empty), ``dataset`` int (index into
        ``datasets``), ``split`` int 0/1/2 or name, ``question`` str, ``answers`` JSON str (lists
        / dicts are serialised), ``prompt_tokens`` int, ``crops`` (n, T) int, ``vision_tokens``
        (n, T) int, ``lang_feature`` (n, Dl) float, ``latency_token`` (n, T, P, Dt) float
        (stored float16), ``uncertainty`` (n, 2) float (NaN = unknown). A row is marked done
        once it has received every field but ``uncertainty`` (over one or several calls).

        Raises:
            ValueError: unknown field, wrong shape, uncastable dtype, out-of-range value.
        """
        self._check_open()
        unknown = sorted(set(fields) - set(SAMPLE_FIELDS))
        if unknown:
            raise ValueError(f"unknown sample fields {unknown}; expected a subset of {sorted(SAMPLE_FIELDS)}")
        if not fields:
            raise ValueError("write_samples needs at least one field")
        idx = _as_index(index, self.dims.S, "index")
        n, d = idx.size, self.dims
        arrays: dict[str, np.ndarray] = {}
        for name, value in fields.items():
            if name == "id":
                arr = _as_str(name, value, (n,), nonempty=True)
                if len(set(arr.tolist())) != n:
                    raise ValueError("id: ids must be unique")
            elif name == "question":
                arr = _as_str(name, value, (n,))
            elif name == "answers":
                arr = _as_str(name, value, (n,), json_text=True)
            elif name == "dataset":
                arr = _as_int(name, value, (n,), "int16", 0, len(self.datasets) - 1)
            elif name == "split":
                v = np.asarray(value)
                if v.dtype.kind in "USO" and v.shape == (n,):
                    bad = sorted({str(s) for s in v.tolist()} - set(SPLITS))
                    if bad:
                        raise ValueError(f"split: unknown split names {bad}; expected {SPLITS}")
                    v = np.array([SPLITS.index(str(s)) for s in v.tolist()], dtype=np.int64).reshape(n)
                arr = _as_int(name, v, (n,), "int8", 0, len(SPLITS) - 1)
            elif name == "prompt_tokens":
                arr = _as_int(name, value, (n,), "int32", 0)
            elif name in ("crops", "vision_tokens"):
                arr = _as_int(name, value, (n, d.T), "int32", 0)
            elif name == "lang_feature":
                arr = _as_float(name, value, (n, d.Dl), "float32", allow_nan=False)
            elif name == "latency_token":
                arr = _as_float(name, value, (n, d.T, d.P, d.Dt), "float16", allow_nan=False)
            else:  # uncertainty
                arr = _as_float(name, value, (n, 2), "float32", allow_nan=True)
            arrays[name] = arr
        if n == 0:
            return
        order = np.argsort(idx, kind="stable")
        payload = {"index": idx[order], **{k: v[order] for k, v in arrays.items()}}
        self._journal_and_apply("samples", payload, STRING_SAMPLE_FIELDS)

    def write_outcomes(
        self,
        samples: np.ndarray,
        configs: np.ndarray,
        *,
        score: Any,
        output_tokens: Any,
        measured_ms: Any = None,
        prediction: Any = None,
        status: Any = None,
        error: Any = None,
    ) -> None:
        """Write a ``len(samples) × len(configs)`` block of outcomes as one journaled chunk.

        Args:
            samples: (ns,) unique sample rows. configs: (nc,) unique configuration indices.
            score: (ns, nc) float in [0, 1], NaN = not computed.
            output_tokens: (ns, nc) int, generated tokens (>= 1 where OK; -1 = unknown).
            measured_ms: (ns, nc, 3) vision / prefill / decode-total ms (NaN = not measured);
                None leaves the stored values alone.
            prediction, error: (ns, nc) str; None leaves the stored values alone.
            status: (ns, nc) PENDING / OK / FAILED; default OK where score is finite, else PENDING.

        Raises:
            ValueError: bad shapes, dtypes, ranges, or OK entries without a finite score /
                with output_tokens < 1.
        """
        self._check_open()
        rows = _as_index(samples, self.dims.S, "samples")
        cols = _as_index(configs, self.dims.C, "configs")
        shape = (rows.size, cols.size)
        arrays: dict[str, np.ndarray] = {
            "score": _as_float("score", score, shape, "float32", allow_nan=True, lo=0.0, hi=1.0),
            "output_tokens": _as_int("output_tokens", output_tokens, shape, "int32", -1),
        }
        if status is None:
            arrays["status"] = np.where(np.isfinite(arrays["score"]), STATUS_OK, STATUS_PENDING).astype(np.uint8)
        else:
            arrays["status"] = _as_int("status", status, shape, "uint8", STATUS_PENDING, max(STATUS_OK, STATUS_FAILED))
        ok = arrays["status"] == STATUS_OK
        if np.any(ok & np.isnan(arrays["score"])):
            raise ValueError(f"score: {int(np.sum(ok & np.isnan(arrays['score'])))} entries have status OK but a NaN score")
        if np.any(ok & (arrays["output_tokens"] < 1)):
            raise ValueError("output_tokens: must be >= 1 wherever status is OK")
        if measured_ms is not None:
            arrays["measured_ms"] = _as_float("measured_ms", measured_ms, shape + (3,), "float32", allow_nan=True, lo=0.0)
        if prediction is not None:
            arrays["prediction"] = _as_str("prediction", prediction, shape)
        if error is not None:
            arrays["error"] = _as_str("error", error, shape)
        if rows.size == 0 or cols.size == 0:
            return
        ro, co = np.argsort(rows, kind="stable"), np.argsort(cols, kind="stable")
        payload = {"samples": rows[ro], "configs": cols[co], **{k: v[ro][:, co] for k, v in arrays.items()}}
        self._journal_and_apply("outcomes", payload, STRING_OUTCOME_FIELDS)

    def set_attrs(self, **attrs: Any) -> None:
        """Set root attributes as one journaled chunk, e.g. ``budget_range_ms=[lo, hi]``,
        ``estimator={...}``. JSON attributes (:data:`cache.reader.JSON_ATTRS`) take Python values
        or JSON text; other new attributes take str / int / float / bool (anything else is
        stored as JSON text). Attributes in :data:`FIXED_ATTRS` cannot change.
        """
        self._check_open()
        encoded: dict[str, Any] = {}
        for k, v in attrs.items():
            if k in FIXED_ATTRS:
                raise ValueError(f"attribute {k!r} is fixed when the cache is created")
            if k == "budget_range_ms" and v is not None:
                try:
                    vals = json.loads(v) if isinstance(v, str) else v
                    lo, hi = (float(x) for x in vals)
                except (TypeError, ValueError):
                    raise ValueError(f"budget_range_ms must be [lo, hi] in ms, got {v!r}") from None
                if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
                    raise ValueError(f"budget_range_ms must satisfy 0 <= lo <= hi (finite), got {v!r}")
                v = [lo, hi]
            if k == "metrics":
                try:
                    m = json.loads(v) if isinstance(v, str) else v
                except ValueError:
                    m = None
                if not isinstance(m, dict) or set(m) != set(self.datasets):
                    raise ValueError(f"metrics must map every dataset {self.datasets} to a metric name, got {v!r}")
            if k == "synthetic":
                if not isinstance(v, (bool, np.bool_)):
                    raise ValueError("synthetic must be a bool")
                if not v and bool(self._f.attrs.get("synthetic", False)):
                    raise ValueError("a synthetic cache cannot be relabelled as non-synthetic")
                encoded[k] = bool(v)
            elif k in JSON_ATTRS:
                encoded[k] = _json_text(k, v)
            elif isinstance(v, (str, bool, int, float)) and not isinstance(v, np.generic):
                encoded[k] = v
            else:
                encoded[k] = _json_text(k, v)
        if not encoded:
            return
        text = np.empty(1, dtype=object)
        text[0] = json.dumps(encoded)
        self._journal_and_apply("attrs", {"attrs_json": text}, frozenset({"attrs_json"}))

    def _journal_and_apply(self, kind: str, payload: dict[str, np.ndarray], string_names: frozenset) -> None:
        journal = self._ensure_journal()
        number = journal.append(
            kind,
            {k: v for k, v in payload.items() if k not in string_names},
            {k: v for k, v in payload.items() if k in string_names},
        )
        try:
            self._apply(kind, payload)
            os.fsync(self._f.id.get_vfd_handle())
        except BaseException as e:  # the file may be half-written: only resume() (rebuild) can repair it
            self._broken = f"{type(e).__name__}: {e}"
            raise
        journal.set_applied(number)

    # .................................................................. apply (also replay)
    def _apply(self, kind: str, p: Mapping[str, np.ndarray]) -> None:
        f = self._f
        if kind == "samples":
            idx = np.asarray(p["index"], dtype=np.int64)
            runs = contiguous_runs(idx)
            for name in SAMPLE_FIELDS:
                if name in p:
                    _write_rows(f[SAMPLE_FIELDS[name]], idx, runs, p[name])
            f.flush()
            for j, name in enumerate(REQUIRED_SAMPLE_FIELDS):
                if name in p:
                    self._fields[idx, j] = True
            done = idx[self._fields[idx].all(axis=1) & (self._done[idx] == 0)]
            if done.size:
                _write_rows(f["progress/samples_done"], done, contiguous_runs(done), np.ones(done.size, np.uint8))
                self._done[done] = 1
            f.flush()
        elif kind == "outcomes":
            rows = np.asarray(p["samples"], dtype=np.int64)
            cols = np.asarray(p["configs"], dtype=np.int64)
            runs = contiguous_runs(rows)
            for name in OUTCOME_FIELDS[:-1]:
                if name in p:
                    _write_rows(f[f"outcomes/{name}"], rows, runs, p[name], cols)
            f.flush()
            _write_rows(f["outcomes/status"], rows, runs, p["status"], cols)
            self._status[np.ix_(rows, cols)] = p["status"]
            f.flush()
        elif kind == "attrs":
            for k, v in json.loads(str(p["attrs_json"][0])).items():
                f.attrs[k] = v
            f.flush()
        else:
            raise CacheError(f"{self.path}: unknown journal chunk kind {kind!r}")

    # .................................................................. lifecycle
    def close(self) -> None:
        """Flush and close the file, make it durable, then delete the journal. Idempotent.

        A writer whose last write failed keeps its journal (resume() repairs the file).
        """
        if self._closed:
            return
        self._closed = True
        if self._f.id.valid:
            self._f.flush()
            self._f.close()
        if self._broken or self._journal is None:
            return
        fsync_file(self.path)
        self._journal.remove()
        self._journal = None

    def _abort(self) -> None:
        """Close the file but keep the journal (what a crash leaves behind, minus the damage)."""
        self._closed = True
        if self._f.id.valid:
            self._f.close()

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        # on an exception keep the journal: the build is unfinished and resume() continues it
        if exc_type is None:
            self.close()
        else:
            self._abort()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"CacheWriter({str(self.path)!r}, S={self.dims.S}, C={self.dims.C}, {state})"
