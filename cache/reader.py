"""Read-only access to an HDF5 outcome cache (layout: :mod:`cache.schema`).

:class:`OutcomeCache` opens a cache once, checks it (format, schema version, datasets, shapes
against the knob space) and loads the sample tables and outcome matrices into memory as numpy
arrays. Latency tokens (the only large per-sample tensor) are held in memory or read lazily.
Prediction texts (``S × C`` strings) are always read on demand.

Also here: the layout helpers shared by the writer and the validator (:class:`CacheDims`,
:func:`expected_shapes`, :func:`dtype_matches`, :func:`contiguous_runs`).

Only numpy and h5py are imported (replay path).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import h5py
import numpy as np

from cache.schema import DATASETS, FORMAT_NAME, LABEL_KEYS, SCHEMA_VERSION, SPLITS, STATUS_OK, CacheError  # noqa: F401
from model_runtime.knob_space import KnobSpace

#: Root attributes stored as JSON text (decoded by the reader; ``null`` = not set yet).
JSON_ATTRS: frozenset[str] = frozenset(
    {"knob_space", "generator_params", "datasets", "metrics", "budget_range_ms", "estimator"}
)

#: HDF5 raw-data chunk cache per open dataset: big enough that partial-chunk writes and
#: neighbouring lazy token reads do not re-read chunks from disk.
CHUNK_CACHE_BYTES = 64 * 2**20


# ---------------------------------------------------------------------- layout helpers
@dataclass(frozen=True)
class CacheDims:
    """The symbolic sizes of :data:`cache.schema.DATASETS`.

    ``S`` requests, ``C`` configurations, ``T`` tiers, ``P`` insertion positions,
    ``Dl`` language-feature width, ``Dt`` latency-token width.
    """

    S: int
    C: int
    T: int
    P: int
    Dl: int
    Dt: int

    @classmethod
    def from_knob_space(cls, ks: KnobSpace, n_samples: int, lang_dim: int, token_dim: int) -> "CacheDims":
        return cls(int(n_samples), len(ks), len(ks.tiers), len(ks.insertion_positions), int(lang_dim), int(token_dim))


def expected_shapes(dims: CacheDims) -> dict[str, tuple[int, ...]]:
    """Concrete shape of every dataset of :data:`cache.schema.DATASETS` for ``dims``."""
    sym = {"S": dims.S, "C": dims.C, "T": dims.T, "P": dims.P, "Dl": dims.Dl, "Dt": dims.Dt}
    return {name: tuple(sym[s] if isinstance(s, str) else int(s) for s in tmpl) for name, (tmpl, _) in DATASETS.items()}


def storage_dtype(spec: str) -> np.dtype:
    """The HDF5 dtype of a schema dtype name (``"str"`` = variable-length UTF-8)."""
    return h5py.string_dtype("utf-8") if spec == "str" else np.dtype(spec)


def dtype_matches(actual: np.dtype, spec: str) -> bool:
    """True when a dataset's dtype is the schema's ``spec`` (``"str"``: variable-length, or the
    fixed-length UTF-8 that ``python -m cache.repack`` stores because it compresses)."""
    if spec == "str":
        return h5py.check_string_dtype(actual) is not None
    return np.dtype(actual) == np.dtype(spec)


def contiguous_runs(sorted_rows: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Split sorted unique ``rows`` into runs of consecutive values.

    Returns ``(first_row, stop_row, lo, hi)`` per run, with ``rows[lo:hi] == range(first_row, stop_row)``.
    """
    r = np.asarray(sorted_rows, dtype=np.int64)
    if r.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(r) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [r.size]))
    return [(int(r[a]), int(r[b - 1]) + 1, int(a), int(b)) for a, b in zip(starts, ends)]


def decode_attr(name: str, value: Any) -> Any:
    """Root attribute value → Python: JSON attrs decoded, numpy scalars → Python scalars."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, np.generic):
        value = value.item()
    if name in JSON_ATTRS and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError as e:
            raise CacheError(f"root attribute {name!r} is not valid JSON: {e}") from e
    return value


def open_h5(path: str | os.PathLike, mode: str = "r") -> h5py.File:
    """Open an HDF5 file, turning a missing / truncated / non-HDF5 file into a :class:`CacheError`."""
    p = Path(path)
    if not p.exists():
        raise CacheError(f"{p}: no such cache file")
    if not p.is_file():
        raise CacheError(f"{p}: not a regular file")
    try:
        return h5py.File(p, mode, rdcc_nbytes=CHUNK_CACHE_BYTES, rdcc_nslots=10007)
    except OSError as e:
        raise CacheError(
            f"{p}: cannot be opened as HDF5: the file is truncated, corrupt or not an HDF5 file ({e})"
        ) from e


def check_identity(f: h5py.File, path: str | os.PathLike) -> None:
    """Raise :class:`CacheError` unless ``f`` is a molmoe-gym outcome cache of this schema version."""
    fmt = decode_attr("format", f.attrs["format"]) if "format" in f.attrs else None
    if fmt != FORMAT_NAME:
        what = "has no 'format' attribute" if fmt is None else f"has format {fmt!r}"
        raise CacheError(f"{path}: not a molmoe-gym outcome cache (the file {what}, expected {FORMAT_NAME!r})")
    if "schema_version" not in f.attrs:
        raise CacheError(f"{path}: no 'schema_version' attribute")
    version = decode_attr("schema_version", f.attrs["schema_version"])
    if version != SCHEMA_VERSION:
        raise CacheError(
            f"{path}: schema version {version} is not supported (this reader reads schema version {SCHEMA_VERSION})"
        )


def read_dims(f: h5py.File, path: str | os.PathLike) -> tuple[KnobSpace, CacheDims]:
    """Knob space and sizes of an identified cache (``S``, ``Dl``, ``Dt`` from the datasets)."""
    if "knob_space" not in f.attrs:
        raise CacheError(f"{path}: no 'knob_space' attribute")
    try:
        ks = KnobSpace.from_dict(decode_attr("knob_space", f.attrs["knob_space"]))
    except (TypeError, ValueError, KeyError) as e:
        raise CacheError(f"{path}: attribute 'knob_space' does not describe a valid knob space: {e}") from e
    for name in ("samples/id", "samples/lang_feature", "samples/latency_token"):
        if name not in f:
            raise CacheError(f"{path}: dataset {name!r} is missing")
    S = int(f["samples/id"].shape[0]) if f["samples/id"].ndim == 1 else -1
    lf, lt = f["samples/lang_feature"].shape, f["samples/latency_token"].shape
    Dl = int(lf[1]) if len(lf) == 2 else -1
    Dt = int(lt[3]) if len(lt) == 4 else -1
    return ks, CacheDims(S, len(ks), len(ks.tiers), len(ks.insertion_positions), Dl, Dt)


def structure_problems(f: h5py.File, dims: CacheDims) -> list[str]:
    """Missing datasets, shape and dtype mismatches of ``f`` against ``dims`` (empty = fine)."""
    problems = []
    shapes = expected_shapes(dims)
    for name, (_, spec) in DATASETS.items():
        if name not in f or not isinstance(f[name], h5py.Dataset):
            problems.append(f"dataset {name!r} is missing")
            continue
        ds = f[name]
        if ds.shape != shapes[name]:
            problems.append(f"dataset {name!r} has shape {ds.shape}, expected {shapes[name]}")
        if not dtype_matches(ds.dtype, spec):
            problems.append(f"dataset {name!r} has dtype {ds.dtype}, expected {spec}")
    return problems


def read_all(ds: h5py.Dataset) -> np.ndarray:
    """The whole numeric dataset. A dataset with no chunk written yet (e.g. ``measured_ms`` of a
    synthetic cache: 270 MB at 100k requests) comes back as a read-only broadcast view of its
    fill value, which costs no memory and no read."""
    if ds.id.get_storage_size() == 0:
        return np.broadcast_to(np.asarray(ds.fillvalue, dtype=ds.dtype), ds.shape)
    return ds[()]


def iter_row_blocks(n: int, block: int) -> Iterator[slice]:
    for a in range(0, n, block):
        yield slice(a, min(n, a + block))


# ---------------------------------------------------------------------- provenance labels
def cache_label(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The provenance label of a cache from its root attributes.

    Returns ``{"cache_label", "synthetic", "generator", "model_id"}``: ``cache_label`` is
    ``"SYNTHETIC"`` for a cache of ``cache.synthetic`` (``"SYNTHETIC (generator X)"`` for
    another synthetic generator), ``"live <model_id>"`` for a cache the MolmoE runtime built
    (``experiments.build_cache``), else ``"<generator> <model_id>"``.
    """
    synthetic = bool(attrs.get("synthetic", False))
    generator = attrs.get("generator")
    model_id = attrs.get("model_id")
    generator = None if generator is None else str(decode_attr("generator", generator))
    model_id = None if model_id is None else str(decode_attr("model_id", model_id))
    if synthetic:
        text = "SYNTHETIC" if generator in (None, "synthetic") else f"SYNTHETIC (generator {generator})"
    else:
        text = " ".join(x for x in (generator or "unknown-generator", model_id or "unknown-model"))
    return {"cache_label": text, "synthetic": synthetic, "generator": generator, "model_id": model_id}


def read_cache_label(path: str | os.PathLike) -> dict[str, Any]:
    """:func:`cache_label` of the cache file at ``path``, reading only its root attributes
    (CacheError for a missing or unreadable file)."""
    with open_h5(path, "r") as f:
        attrs = {k: f.attrs[k] for k in ("synthetic", "generator", "model_id") if k in f.attrs}
    return cache_label(attrs)


#: How a target's source begins when ``--calibrate-to`` fitted it to another cache (:func:`read_targets_origin`).
FITTED_TARGETS_PREFIX = "fitted to "


def read_targets_origin(path: str | os.PathLike) -> str | None:
    """Where a SYNTHETIC cache's per-dataset targets come from, when one source cache gave them all.

    ``python -m cache.synthetic --calibrate-to SOURCE`` fits every dataset to SOURCE and records
    ``"fitted to <model_id> cache (<generator>)"`` (plus a per-dataset note after ``;``) as each
    target's source in ``generator_params``; this returns that common origin, and ``None`` for a
    cache whose targets are the generator's own datasets (MolmoE-1B marginals and assumptions), a
    mix, or no ``generator_params`` at all (live caches)."""
    with open_h5(path, "r") as f:
        raw = f.attrs.get("generator_params")
        params = decode_attr("generator_params", raw) if raw is not None else None
    targets = params.get("targets", {}) if isinstance(params, dict) else {}
    origins = {str(t.get("source", "")).split(";")[0] for t in targets.values() if isinstance(t, dict)}
    if len(origins) == 1 and next(iter(origins)).startswith(FITTED_TARGETS_PREFIX):
        return origins.pop()
    return None


def data_label(source: Any, synthetic: bool) -> dict[str, Any]:
    """The label of in-memory replay data (``ReplayData.source`` and ``.synthetic``): the cache
    file's own label when ``source`` is a readable cache, else ``"SYNTHETIC (arrays)"`` /
    ``"arrays"`` (data built from arrays, e.g. in tests)."""
    if isinstance(source, (str, os.PathLike)) and Path(source).is_file():
        try:
            return read_cache_label(source)
        except (CacheError, OSError):
            pass
    synthetic = bool(synthetic)
    return {"cache_label": "SYNTHETIC (arrays)" if synthetic else "arrays", "synthetic": synthetic,
            "generator": None, "model_id": None}


# ---------------------------------------------------------------------- reader
def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes, streamed in 8 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(8 * 2**20), b""):
            h.update(block)
    return h.hexdigest()


class OutcomeCache:
    """An outcome cache opened read-only, its tables in memory.

    Args:
        path: the ``.h5`` file.
        tokens: ``"memory"`` loads all latency tokens (float16, ``S·T·P·Dt·2`` bytes),
            ``"lazy"`` reads them on demand, ``"auto"`` loads them when they fit in
            ``max_token_bytes``.
        max_token_bytes: memory bound of ``"auto"`` (bytes of the float16 token tensor).
        allow_unfinished: open a cache whose build journal still exists (an interrupted or
            running build: unwritten rows have empty ids, outcomes PENDING) with a warning;
            by default that is a :class:`CacheError` naming the command that finishes the
            build (:func:`cache.unfinished.unfinished_message`).

    Attributes (in memory; ``S`` samples, ``C`` configurations, ``T`` tiers):
        ids: ``<U`` (S,) request ids. dataset: int16 (S,) index into ``datasets``.
        split: int8 (S,) 0 train / 1 val / 2 test. prompt_tokens: int32 (S,).
        crops, vision_tokens: int32 (S, T). lang_feature: float32 (S, Dl).
        uncertainty: float32 (S, 2) first-token entropy and margin (NaN = unknown).
        score: float32 (S, C) in [0, 1], NaN wherever ``status != STATUS_OK``.
        output_tokens: int32 (S, C) (-1 unknown). measured_ms: float32 (S, C, 3) vision /
        prefill / decode-total milliseconds (NaN = not measured). status: uint8 (S, C).
        samples_done: uint8 (S,).
        A dataset that was never written (often ``measured_ms``) is a read-only broadcast view
        of its fill value; copy it before modifying.

    Raises:
        CacheError: missing, truncated / non-HDF5, foreign, wrong-version or inconsistent
            file, or an unfinished build (unless ``allow_unfinished``).
    """

    def __init__(self, path: str | os.PathLike, *, tokens: str = "auto", max_token_bytes: int = 2**31,
                 allow_unfinished: bool = False) -> None:
        if tokens not in ("auto", "memory", "lazy"):
            raise ValueError(f"tokens must be 'auto', 'memory' or 'lazy', got {tokens!r}")
        self.path = Path(path)
        journal = self.path.with_name(self.path.name + ".journal")
        if journal.is_dir() and not allow_unfinished:
            from cache.unfinished import unfinished_message

            raise CacheError(unfinished_message(self.path))
        try:
            self._f = open_h5(self.path, "r")
        except CacheError as e:
            if journal.is_dir():
                from cache.unfinished import finish_command

                raise CacheError(f"{e}; a build journal exists at {journal}: the build is unfinished, finish it with "
                                 f"{finish_command(self.path)}") from e
            raise
        try:
            self._load(tokens, max_token_bytes)
        except CacheError:
            self._f.close()
            raise
        except (OSError, KeyError, ValueError, TypeError) as e:
            self._f.close()
            raise CacheError(f"{self.path}: cannot read the cache (truncated or corrupt?): {e}") from e
        if journal.is_dir():
            from cache.unfinished import finish_command

            warnings.warn(
                f"{self.path}: a build journal exists at {journal}: the build is unfinished (or was killed); "
                f"outcomes not yet written have status PENDING and score NaN; finish it with {finish_command(self.path)}",
                stacklevel=2,
            )

    # .................................................................. loading
    def _load(self, tokens: str, max_token_bytes: int) -> None:
        f = self._f
        check_identity(f, self.path)
        self.knob_space, self.dims = read_dims(f, self.path)
        problems = structure_problems(f, self.dims)
        if problems:
            raise CacheError(f"{self.path}: inconsistent with its knob space / sizes: " + "; ".join(problems))
        self.attrs: dict[str, Any] = {k: decode_attr(k, v) for k, v in f.attrs.items()}
        self.synthetic: bool = bool(self.attrs.get("synthetic", False))
        self.datasets: list[str] = list(self.attrs.get("datasets") or [])
        self.metrics: dict[str, str] = dict(self.attrs.get("metrics") or {})
        br = self.attrs.get("budget_range_ms")
        self.budget_range_ms: tuple[float, float] | None = None if br is None else (float(br[0]), float(br[1]))
        self.estimator_json: dict | None = self.attrs.get("estimator")

        # one h5py call per dataset: vlen strings decoded in bulk, no per-row Python loop
        self.ids: np.ndarray = np.asarray(f["samples/id"].asstr()[()], dtype=str)
        self._questions: np.ndarray = f["samples/question"].asstr()[()]
        self._answers: np.ndarray = f["samples/answers"].asstr()[()]
        self.dataset: np.ndarray = read_all(f["samples/dataset"])
        self.split: np.ndarray = read_all(f["samples/split"])
        self.prompt_tokens: np.ndarray = read_all(f["samples/prompt_tokens"])
        self.crops: np.ndarray = read_all(f["samples/crops"])
        self.vision_tokens: np.ndarray = read_all(f["samples/vision_tokens"])
        self.lang_feature: np.ndarray = read_all(f["samples/lang_feature"])
        self.uncertainty: np.ndarray = read_all(f["samples/uncertainty"])
        self.samples_done: np.ndarray = read_all(f["progress/samples_done"])
        self.status: np.ndarray = read_all(f["outcomes/status"])
        self.score: np.ndarray = read_all(f["outcomes/score"])
        if self.score.flags.writeable:  # else never written: all NaN already
            self.score[self.status != STATUS_OK] = np.nan
        self.output_tokens: np.ndarray = read_all(f["outcomes/output_tokens"])
        self.measured_ms: np.ndarray = read_all(f["outcomes/measured_ms"])

        self._token_ds: h5py.Dataset = f["samples/latency_token"]
        token_bytes = int(np.prod(self._token_ds.shape)) * self._token_ds.dtype.itemsize
        load = tokens == "memory" or (tokens == "auto" and token_bytes <= max_token_bytes)
        self._tokens: np.ndarray | None = read_all(self._token_ds) if load else None

    # .................................................................. properties
    @property
    def n_samples(self) -> int:
        return self.dims.S

    @property
    def n_configs(self) -> int:
        return self.dims.C

    @property
    def lang_dim(self) -> int:
        return self.dims.Dl

    @property
    def token_dim(self) -> int:
        return self.dims.Dt

    @property
    def label(self) -> dict[str, Any]:
        """Provenance label (:func:`cache_label`): ``cache_label``, ``synthetic``, ``generator``, ``model_id``."""
        return cache_label(self.attrs)

    @property
    def tokens_in_memory(self) -> bool:
        return self._tokens is not None

    # .................................................................. per-sample access
    def _row(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self.dims.S:
            raise IndexError(f"sample index {i} out of range [0, {self.dims.S})")
        return i

    def question(self, i: int) -> str:
        return str(self._questions[self._row(i)])

    def answers(self, i: int) -> list | dict:
        """Reference answers of sample ``i`` (the stored JSON decoded; ``[]`` when never written)."""
        text = self._answers[self._row(i)]
        return json.loads(text) if text else []

    def prediction(self, i: int, c: int) -> str:
        """Prediction text of sample ``i`` at configuration ``c`` (``""`` = none), read from the file."""
        return self._cell("outcomes/prediction", i, c)

    def error(self, i: int, c: int) -> str:
        """Failure reason of sample ``i`` at configuration ``c`` (``""`` unless status is FAILED)."""
        return self._cell("outcomes/error", i, c)

    def _cell(self, name: str, i: int, c: int) -> str:
        c = int(c)
        if not 0 <= c < self.dims.C:
            raise IndexError(f"configuration index {c} out of range [0, {self.dims.C})")
        return str(self._f[name].asstr()[self._row(i), c])

    def latency_tokens(self, samples: np.ndarray) -> np.ndarray:
        """Latency tokens of ``samples`` (any order, repeats allowed): float32 (n, T, P, Dt)."""
        idx = np.asarray(samples, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.dims.S):
            raise IndexError(f"sample indices out of range [0, {self.dims.S})")
        if self._tokens is not None:
            return self._tokens[idx].astype(np.float32)
        if idx.size == 0:
            return np.zeros((0,) + self._token_ds.shape[1:], dtype=np.float32)
        uniq, inverse = np.unique(idx, return_inverse=True)
        # one slice read per run of consecutive rows: h5py point selections are ~10x slower
        block = np.empty((uniq.size,) + self._token_ds.shape[1:], dtype=self._token_ds.dtype)
        for a, b, lo, hi in contiguous_runs(uniq):
            block[lo:hi] = self._token_ds[a:b]
        return block[inverse.reshape(-1)].astype(np.float32)

    def split_indices(self, split: str | int) -> np.ndarray:
        """Rows of ``split`` (``"train"``/``"val"``/``"test"`` or 0/1/2), sorted int64."""
        if isinstance(split, str):
            if split not in SPLITS:
                raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
            code = SPLITS.index(split)
        else:
            code = int(split)
            if not 0 <= code < len(SPLITS):
                raise ValueError(f"split code {split} out of range [0, {len(SPLITS)})")
        return np.flatnonzero(self.split == code).astype(np.int64)

    def content_hash(self) -> str:
        """sha256 (hex) of the file's bytes, streamed; cached after the first call."""
        if getattr(self, "_hash", None) is None:
            self._hash = file_sha256(self.path)
        return self._hash

    # .................................................................. lifecycle
    def close(self) -> None:
        if self._f.id.valid:
            self._f.close()

    def __enter__(self) -> "OutcomeCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        tag = " SYNTHETIC" if self.synthetic else ""
        return f"OutcomeCache({str(self.path)!r}, S={self.dims.S}, C={self.dims.C}{tag})"
