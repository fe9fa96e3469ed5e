"""Writing SYNTHETIC caches: :func:`write_synthetic_cache` (chunked, journaled, resumable) and the
embedded default cache (:func:`build_default_cache`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cache.interrupts import interruptible, raise_if_interrupted
from cache.synthetic_model import _context, _generate_rows, generator_params
from cache.synthetic_params import GENERATOR_NAME, MODEL_ID, SyntheticParams, _check_seed

if TYPE_CHECKING:  # pragma: no cover - typing only
    from model_runtime.latency_estimator import LatencyEstimator


def write_synthetic_cache(path: str | Path, params: SyntheticParams, seed: int,
                          estimator: "LatencyEstimator | None" = None, overwrite: bool = False, *,
                          chunk: int = 1024, resume: bool = False, log: Any = None) -> Path:
    """Generate and write a SYNTHETIC outcome cache through :class:`cache.writer.CacheWriter`.

    One ``write_samples`` + one ``write_outcomes`` (the chunk's samples × all configurations)
    per chunk of ``chunk`` requests, then ``set_attrs(budget_range_ms=..., estimator=...)``.

    Args:
        path: the HDF5 file to write.
        params, seed: the generative model and its seed.
        estimator: prices the synthetic latencies and the budget range (default: the packaged one).
        overwrite: replace an existing file (and its journal).
        chunk: requests per journaled chunk.
        resume: continue an interrupted build of the same ``(params, seed)`` at ``path``
            (rows already written are skipped; the values are regenerated deterministically).
        log: optional callable taking one line of text (progress).

    Returns:
        ``path``. Raises FileExistsError when it exists and neither ``overwrite`` nor ``resume``.
    """
    from cache.journal import journal_dir
    from cache.writer import CacheWriter
    from model_runtime.latency_estimator import LatencyEstimator, budget_range

    path = Path(path)
    seed = _check_seed(seed)
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    est = estimator if estimator is not None else LatencyEstimator.default()
    ctx = _context(params, seed, est)
    gp = ctx.generator_params
    ks = params.knob_space
    if resume and (path.exists() or journal_dir(path).exists()):
        stored = _stored_generator_params(path)
        if stored != json.loads(json.dumps(gp)):
            raise ValueError(f"{path}: cannot resume: it was not built by this generator with these parameters and seed")
        writer = CacheWriter.resume(path)
    else:
        writer = CacheWriter.create(
            path, knob_space=ks, n_samples=params.n_samples, lang_dim=params.lang_dim, token_dim=params.token_dim,
            model_id=MODEL_ID, generator=GENERATOR_NAME, generator_params=gp,
            datasets=[s.name for s in params.datasets], metrics={s.name: s.metric for s in params.datasets},
            synthetic=True, overwrite=overwrite,
        )
    N, T, C = params.n_samples, len(ks.tiers), len(ks)
    crops_all = np.zeros((N, T), dtype=np.int32)
    vtok_all = np.zeros((N, T), dtype=np.int32)
    prompt_all = np.zeros(N, dtype=np.int32)
    configs = np.arange(C)
    t0 = time.perf_counter()
    with interruptible(), writer as w:
        todo_samples = w.samples_pending()
        todo_outcomes = w.pending().any(axis=1)
        for start in range(0, N, int(chunk)):
            stop = min(N, start + int(chunk))
            d = _generate_rows(ctx, start, stop)
            crops_all[start:stop], vtok_all[start:stop], prompt_all[start:stop] = d.crops, d.vision_tokens, d.prompt_tokens
            if todo_samples[start:stop].any():
                w.write_samples(d.rows, **d.sample_fields())
            if todo_outcomes[start:stop].any():
                w.write_outcomes(d.rows, configs, score=d.score, output_tokens=d.output_tokens, measured_ms=d.measured_ms)
            if log is not None:
                log(f"[synthetic] rows {stop}/{N} written ({time.perf_counter() - t0:.1f} s)")
            raise_if_interrupted()
        lo, hi = budget_range(est, ks, crops_all, vtok_all, prompt_all, output_tokens=params.nominal_output_tokens)
        w.set_attrs(budget_range_ms=[lo, hi], estimator=est.to_dict())
    return path


def _stored_generator_params(path: Path) -> Any:
    """``generator_params`` of an existing (possibly unfinished) cache: from its journal header
    when a build journal exists (the file itself may be broken), else from the file."""
    import h5py

    from cache.journal import Journal, journal_dir
    from cache.schema import CacheError

    jdir = journal_dir(path)
    try:
        if jdir.is_dir():
            text = Journal.open(jdir).header["attrs"]["generator_params"]
        else:
            with h5py.File(path, "r") as f:
                text = f.attrs["generator_params"]
        return json.loads(text)
    except (CacheError, OSError, KeyError, TypeError, ValueError):
        return None


def default_params() -> SyntheticParams:
    """The embedded default: 5000 requests, Dl = Dt = 64, the five default datasets."""
    return SyntheticParams()


DEFAULT_SEED = 0


def build_default_cache(path: str | Path, overwrite: bool = False) -> Path:
    """Write the embedded default SYNTHETIC cache (5000 requests, seed 0, Dl = Dt = 64) to ``path``.

    An existing file at ``path``: reused when it is a finished cache of exactly these parameters,
    seed and default estimator; an interrupted build of them is resumed; a stale synthetic cache
    (another generator version, parameters or default estimator) is rebuilt with a warning,
    since it is regenerable; any other file raises FileExistsError unless ``overwrite``.
    Returns ``path``. Takes about a second.
    """
    import warnings

    from cache.journal import journal_dir

    path = Path(path)
    params, seed = default_params(), DEFAULT_SEED
    if (path.exists() or journal_dir(path).exists()) and not overwrite:
        stored = _stored_generator_params(path)
        mine = json.loads(json.dumps(generator_params(params, seed)))
        if stored == mine and journal_dir(path).exists():
            return write_synthetic_cache(path, params, seed, resume=True)
        if stored == mine and _matches(path, params, seed):
            return path
        if not (isinstance(stored, dict) and stored.get("generator") == GENERATOR_NAME):
            raise FileExistsError(f"{path} exists and is not a synthetic cache of cache.synthetic; pass overwrite=True")
        warnings.warn(f"{path}: stale default SYNTHETIC cache (other generator version, parameters or estimator); "
                      "rebuilding it", stacklevel=2)
        overwrite = True
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_synthetic_cache(path, params, seed, overwrite=overwrite)


def _matches(path: Path, params: SyntheticParams, seed: int) -> bool:
    """True when ``path`` is a finished cache of exactly ``(params, seed)`` priced by the default
    latency estimator (a changed default estimator triggers a rebuild)."""
    from cache.reader import OutcomeCache
    from cache.schema import CacheError
    from model_runtime.latency_estimator import LatencyEstimator

    try:
        with OutcomeCache(path, tokens="lazy") as oc:
            same_gen = oc.attrs.get("generator_params") == json.loads(json.dumps(generator_params(params, seed)))
            same_est = oc.estimator_json == json.loads(json.dumps(LatencyEstimator.default().to_dict()))
            return bool(oc.synthetic) and same_gen and same_est
    except (CacheError, OSError):
        return False
