"""The live cache builder: every request × configuration through the MolmoE runtime, into a
:class:`cache.writer.CacheWriter`.

The command line is :mod:`experiments.build_cache` (argument parsing and wiring only); this
module holds the machinery, so that lower layers (``envs.live`` for :func:`cache_score`) and
other entry points (``experiments.merge_cache_shards``, ``experiments.eval_model_grid``) use it
without importing ``experiments``. torch is imported only inside the functions that run the
model: importing this module loads numpy, the cache schema and the knob space.

What a build does (schema: :mod:`cache.schema`; writer: :class:`cache.writer.CacheWriter`):

1. **Requests** (:func:`model_runtime.datasets.load_requests`) are cut into fixed global
   *chunks* of ``--chunk-requests`` consecutive requests. Sharding assigns whole chunks
   round-robin (chunk ``k`` to rank ``k mod W``), so a shard batches exactly as a single build
   does and the merged shards equal a single build.
2. **Per chunk**, first the *sample table*: every request is validated (image loads and
   preprocesses, prompt + ``max_new_tokens`` fits ``--max-sequence-tokens`` / the model's
   positions); then, per tier, one prefill-only run (``max_new_tokens=1``) at the tier's
   cheapest plan gives the crops and vision tokens actually used, the prompt tokens (text +
   BOS) and the latency tokens of every insertion position (blocks ``0..p-1`` at the model's
   top-k, so they do not depend on the rest of the plan); the language feature is the mean
   prompt-token embedding; the uncertainty is the first generated token's entropy (nats) and
   top-1 − top-2 probability margin at the knob space's *cheapest configuration* (what the
   VoVNet threshold baseline observes). One ``write_samples`` call.
3. Then the *outcomes*, configuration by configuration (stable order), the chunk's valid
   requests as left-padded batches of ``--batch-size`` (the runtime groups by configuration):
   score (the request's metric; CIDEr stored /10), output tokens, prediction text and the
   measured vision / prefill / decode-total ms of the batch that produced the outcome (CUDA
   events on GPU, ``perf_counter`` on CPU; with ``--batch-size 1`` they are per-request
   times). One ``write_outcomes`` call per (chunk, configuration). Invalid requests get
   status FAILED with the reason (e.g. ``"bad image: FileNotFoundError: ..."``) for every
   configuration and the build goes on. A batch that raises (CUDA OOM included) is retried as
   two halves down to single requests; a single request that still fails is FAILED with the
   error text; after an OOM the batch size stays halved for the rest of the run.
4. At the end the file is closed, the default latency-budget range is derived from its samples
   (:func:`model_runtime.latency_estimator.budget_range`, median cheapest → median full
   configuration at ``--nominal-output-tokens``) and stored with the estimator's JSON
   (``--estimator`` or the packaged default) as root attributes.

**Engines** (``--engine``, recorded as ``generator_params.runtime.engine``, so a resumed build
keeps its engine). ``per-config`` is steps 2-3 as written: the prefill-only feature runs, then
``MolmoeRuntime.run`` per (chunk, configuration) in batches of ``--batch-size`` (default 8,
chunks of 32), the vision tower and blocks ``0..p-1`` recomputed for every configuration.
``shared-prefix`` (the default; batches of 512, chunks of 1,024) computes a chunk's sample table
and all its pending configurations in one
:func:`model_runtime.molmoe.shared_prefix.run_all_configs` pass: per (batch, tier) the vision
tower, the embeddings and blocks ``0..p-1`` run once (incrementally over p), and every
configuration of that (tier, p) continues from a copy of the prefix's KV cache. It always runs
transformers' blocks (the runtime with ``fast=False``, importance calibration included), which
suits small models (kernel-launch bound: large batches and shared work pay). The writes are the
same calls in the same order (FAILED rows, samples, one ``write_outcomes`` per configuration),
made after the chunk's pass, so a kill loses at most the chunk in flight; a resumed chunk reruns
its rows that have PENDING configurations under those configurations only. A batch that raises is
retried in halves as above; a request that still fails is FAILED for every configuration (with its
sample features zeroed when the sample row was still pending). On CPU with the same batch size,
both engines give the same outcomes (the cache test checks it); timings differ by design
(``prefill_ms`` of shared-prefix = the shared prefix up to block ``p-1`` + the configuration's
remaining blocks).

**Resume / crash safety.** Every write is one journaled chunk of the writer, so a SIGKILL
loses at most the (chunk, configuration) in flight. ``--resume`` reopens the file (the writer
replays its journal), checks that the stored ``generator_params`` (runtime settings, dataset
hash, selected configurations, chunking, splits, importance scores; library versions and file
locations aside) equal this run's, reuses the stored knob space, and computes only what is
still PENDING. Because chunks and batches are
fixed, a resumed build has the same content as an uninterrupted one, except ``measured_ms``
(timings are measurements, never reproducible) and ``created_at``.

**Importance scores** (``--importance``): ``auto`` uses ``<model>/importance.json`` when the
checkpoint has one, else computes ``block_influence``
(:mod:`model_runtime.molmoe.importance`) on the first ``--calibration-requests`` valid
requests; ``default`` keeps the knob space's defaults; a path loads an
``ImportanceScores`` JSON. Scores are rounded to 6 significant digits (so that shards computing
them independently agree); on GPUs, where kernels may differ run to run, pass a JSON computed
once to every shard.

Cache attributes: ``generator="live"``, ``synthetic=False``, ``model_id`` (``--model-id``,
default the checkpoint directory's name), ``generator_params`` (runtime settings, build
settings, importance, library versions), ``budget_range_ms``, ``estimator``; shard files also
carry ``shard = {"rank", "num_shards", "chunk_requests"}`` (set when the shard finishes).
"""

from __future__ import annotations

import gc
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from cache.interrupts import interruptible, raise_if_interrupted
from cache.schema import SPLITS, STATUS_FAILED, STATUS_OK
from model_runtime.knob_space import KnobConfig, KnobSpace

GENERATOR = "live"
#: Nominal output length (tokens) of the default budget range (as the synthetic generator uses).
NOMINAL_OUTPUT_TOKENS = 3
#: ``generator_params`` entries (dotted keys) that may differ between runs / shards of one build:
#: library versions and where the files lie (the dataset is identified by its hash).
UNCHECKED_PARAMS: frozenset[str] = frozenset({"versions", "build.dataset", "runtime.model"})
KNOB_KEYS = ("tier", "p", "top_k", "blocks")
#: ``--engine`` choices (see the module docstring).
ENGINES = ("shared-prefix", "per-config")
#: ``--batch-size`` / ``--chunk-requests`` defaults per engine.
ENGINE_DEFAULTS = {"per-config": (8, 32), "shared-prefix": (512, 1024)}
F16_MAX = float(np.finfo(np.float16).max)


# ---------------------------------------------------------------------------------- selection
def parse_config_selection(spec: str, ks: KnobSpace) -> np.ndarray:
    """Configuration indices (sorted int64) selected by ``spec``.

    ``spec`` is ``"all"``; a filter ``"tier=high,top_k=8"`` (keys tier, p, top_k, blocks;
    alternatives with ``|``: ``"top_k=4|8"``; inclusive ranges for numbers: ``"p=1-3"``); or
    stable indices and inclusive ranges ``"0,5,17"`` / ``"0-24,100"``.

    Raises:
        ValueError: unknown key, unparsable value, out-of-range index, empty selection.
    """
    spec = spec.strip()
    n = len(ks)
    if spec in ("", "all"):
        return np.arange(n, dtype=np.int64)
    if "=" in spec:
        table = ks.config_table()
        keep = np.ones(n, dtype=bool)
        for term in spec.split(","):
            key, sep, value = term.partition("=")
            key = key.strip()
            if not sep or key not in KNOB_KEYS:
                raise ValueError(f"--configs term {term!r}: expected KEY=VALUE with KEY in {KNOB_KEYS}")
            allowed: set[Any] = set()
            for alt in value.split("|"):
                alt = alt.strip()
                if key == "tier":
                    if alt not in ks.tiers:
                        raise ValueError(f"--configs: unknown tier {alt!r}; tiers: {list(ks.tiers)}")
                    allowed.add(ks.tiers.index(alt))
                else:
                    lo, dash, hi = alt.partition("-")
                    try:
                        a, b = int(lo), int(hi) if dash else int(lo)
                    except ValueError:
                        raise ValueError(f"--configs term {term!r}: {alt!r} is not an int or a range a-b") from None
                    allowed.update(range(a, b + 1))
            keep &= np.isin(table[key], sorted(allowed))
        out = np.flatnonzero(keep).astype(np.int64)
    else:
        idx: set[int] = set()
        for part in spec.split(","):
            lo, dash, hi = part.strip().partition("-")
            try:
                a, b = int(lo), int(hi) if dash else int(lo)
            except ValueError:
                raise ValueError(f"--configs: {part!r} is neither an index nor a range a-b (or use KEY=VALUE)") from None
            if not (0 <= a <= b < n):
                raise ValueError(f"--configs: {part!r} outside the configuration indices 0..{n - 1}")
            idx.update(range(a, b + 1))
        out = np.array(sorted(idx), dtype=np.int64)
    if out.size == 0:
        raise ValueError(f"--configs {spec!r} selects no configuration")
    return out


def assign_splits(dataset_index: np.ndarray, fractions: Sequence[float], seed: int) -> np.ndarray:
    """int8 split per request (0 train, 1 val, 2 test): per dataset a seeded permutation gets
    ``round(cumsum(fractions) · m)`` boundaries, so every dataset is split in the same proportions."""
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (len(SPLITS),) or np.any(f < 0) or not math.isclose(float(f.sum()), 1.0, abs_tol=1e-6):
        raise ValueError(f"--splits needs {len(SPLITS)} non-negative fractions summing to 1, got {list(fractions)}")
    out = np.zeros(len(dataset_index), dtype=np.int8)
    for d in np.unique(dataset_index):
        rows = np.flatnonzero(dataset_index == d)
        perm = rows[np.random.default_rng([int(seed), int(d)]).permutation(rows.size)]
        bounds = np.round(np.cumsum(f) * rows.size).astype(int)
        start = 0
        for s, end in enumerate(bounds):
            out[perm[start:end]] = s
            start = end
    return out


def chunk_rows(n: int, chunk: int, rank: int = 0, world: int = 1) -> list[np.ndarray]:
    """Global chunks ``[k·chunk, (k+1)·chunk)`` of ``n`` rows that belong to ``rank`` (``k mod world``)."""
    if chunk < 1:
        raise ValueError(f"--chunk-requests must be >= 1, got {chunk}")
    if not 0 <= rank < world:
        raise ValueError(f"shard rank {rank} outside 0..{world - 1}")
    return [np.arange(a, min(n, a + chunk)) for k, a in enumerate(range(0, n, chunk)) if k % world == rank]


def shard_path(out: Path, rank: int, world: int) -> Path:
    """``cache.h5`` → ``cache.shard3of8.h5`` (the single file itself when ``world == 1``)."""
    if world == 1:
        return out
    return out.with_name(f"{out.stem}.shard{rank}of{world}{out.suffix}")


# ---------------------------------------------------------------------------------- running
def is_oom(exc: BaseException) -> bool:
    """True for a CUDA (or other accelerator) out-of-memory error."""
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is there whenever the runtime is
        pass
    return isinstance(exc, (RuntimeError, MemoryError)) and "out of memory" in str(exc).lower()


def _free_accelerator_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


@dataclass
class BatchRunner:
    """Runs requests in batches through ``run(requests) -> outcomes``, isolating failures.

    A batch that raises is split in two halves, recursively, down to single requests; a single
    request that raises yields its error text instead of an outcome. An out-of-memory error also
    lowers :attr:`batch_size` for every later batch (halved, at least 1).

    Attributes:
        batch_size: current requests per batch.
        log: receives one line per retry.
        retries: number of batches that were split.
    """

    batch_size: int
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)
    retries: int = 0

    def __call__(self, run: Callable[[list], list], requests: Sequence[Any]) -> list[Any]:
        """Outcome or error string per request, in order."""
        return self._run(run, list(requests))

    def _run(self, run: Callable[[list], list], reqs: list) -> list[Any]:
        if len(reqs) > self.batch_size:  # in batches of the current size (it may drop on the way)
            out: list[Any] = []
            start = 0
            while start < len(reqs):
                n = self.batch_size
                out += self._run(run, reqs[start : start + n])
                start += n
            return out
        failure = None
        try:
            res = run(reqs)
        except Exception as exc:  # isolate the failing request(s); everything else goes on
            failure = (is_oom(exc), type(exc).__name__, str(exc))
        # Retried only here, after the except block: the exception's traceback holds the failed attempt's frames and
        # with them its tensors, so a retry inside the block would run with that memory still taken (and each level of
        # splitting would add its own: after one out-of-memory error every smaller batch failed too).
        if failure is not None:
            oom, name, text = failure
            if oom:
                gc.collect()  # frames the traceback held may sit in reference cycles
                _free_accelerator_memory()
                self.batch_size = min(self.batch_size, max(1, len(reqs) // 2))
            if len(reqs) == 1:
                return [f"{'out of memory: ' if oom else ''}{name}: {text}"]
            self.retries += 1
            half = len(reqs) // 2
            self.log(f"batch of {len(reqs)} failed ({name}: {text[:200]}); retrying as {half} + {len(reqs) - half}")
            return self._run(run, reqs[:half]) + self._run(run, reqs[half:])
        if len(res) != len(reqs):
            raise RuntimeError(f"runtime returned {len(res)} outcomes for {len(reqs)} requests")
        return list(res)


def cache_score(metric: str, score: float) -> float:
    """Score as stored in the cache: CIDEr (0..10) divided by 10, every other metric as is."""
    return float(score) / 10.0 if metric == "cider" else float(score)


def answers_json(request: Any) -> str:
    """``samples/answers`` text: the reference list, or for multiple choice an object with the options."""
    if request.options is not None:
        return json.dumps({"answers": list(request.answers), "options": list(request.options),
                           "answer_idx": request.answer_idx})
    return json.dumps(list(request.answers))


# ---------------------------------------------------------------------------------- builder
@dataclass
class BuildSettings:
    """What a build computes (everything here is recorded in ``generator_params``)."""

    configs: np.ndarray
    chunk_requests: int
    batch_size: int
    max_new_tokens: int
    max_sequence_tokens: int
    #: ``per-config`` (``MolmoeRuntime.run`` per chunk × configuration) or ``shared-prefix``
    #: (:func:`model_runtime.molmoe.shared_prefix.run_all_configs` per chunk)
    engine: str = "per-config"
    #: shared-prefix: decode with dense experts (:mod:`model_runtime.molmoe.dense_experts`)
    dense_decode: bool = False
    #: shared-prefix: threads preprocessing a batch's images
    preprocess_threads: int = 1
    #: shared-prefix dense decode: KV bytes of one decode group
    decode_group_bytes: int = 24 * 2**30
    #: > 1: store MolmoE-1B's image tokens for the image at this scale (see ``--vision-tokens``)
    molmoe_scale: float | None = None


@dataclass
class ChunkStats:
    outcomes_ok: int = 0
    outcomes_failed: int = 0
    invalid_requests: dict[str, str] = field(default_factory=dict)


class LiveCacheBuilder:
    """Fills a :class:`cache.writer.CacheWriter` chunk by chunk with a runtime's outcomes.

    Args:
        writer: an open writer (created or resumed) whose knob space is ``runtime.knob_space``.
        runtime: a :class:`model_runtime.molmoe.runtime.MolmoeRuntime` at ``max_new_tokens``.
        requests: all requests of the cache (row i = request i).
        dataset_index, split: (S,) int per request.
        settings: configurations, chunking, batch size, limits.
        progress: a tqdm-like object (``update(n)``, ``set_postfix_str``) or None.
        log: receives warnings and retry lines.
    """

    def __init__(self, writer: Any, runtime: Any, requests: Sequence[Any], dataset_index: np.ndarray,
                 split: np.ndarray, settings: BuildSettings, *, progress: Any = None,
                 log: Callable[[str], None] | None = None) -> None:
        from model_runtime.molmoe.runtime import MolmoeRuntime

        runtime.require_unpruned("a cache build", "a cache holds the unpruned model's outcomes")
        self.w = writer
        self.rt = runtime
        self.ks: KnobSpace = runtime.knob_space
        # prefill-only runtime for the sample table (first token only: logits, latency tokens)
        self.rt_features = MolmoeRuntime(runtime.model, runtime.tokenizer, self.ks, max_batch_size=settings.batch_size,
                                         max_new_tokens=1, template=runtime.template,
                                         fast=getattr(runtime, "fast", None))
        if settings.engine not in ENGINES:
            raise ValueError(f"unknown engine {settings.engine!r}; choose from {ENGINES}")
        self.requests = list(requests)
        self.dataset_index = np.asarray(dataset_index)
        self.split = np.asarray(split)
        self.s = settings
        self.progress = progress
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.runner = BatchRunner(settings.batch_size, log=self.log)
        self.stats = ChunkStats()
        cfg = runtime.model.config
        self.max_positions = min(int(cfg.max_position_embeddings), int(settings.max_sequence_tokens))
        self.did_write = False

    # .............................................................. work accounting
    def pending_units(self, chunks: Sequence[np.ndarray]) -> int:
        """(request, configuration) outcomes still PENDING in ``chunks`` among the selected configurations."""
        pend = self.w.pending()
        return int(sum(pend[np.ix_(rows, self.s.configs)].sum() for rows in chunks))

    def _tick(self, n: int) -> None:
        if self.progress is not None and n:
            self.progress.update(n)
            self.progress.set_postfix_str(f"ok {self.stats.outcomes_ok} failed {self.stats.outcomes_failed}")

    # .............................................................. validation
    def validate(self, request: Any) -> str | None:
        """Why ``request`` cannot run (None when it can): bad image, over-long prompt."""
        largest = max(self.ks.crops)
        try:
            prompt = self.rt.prepare(request, largest)
        except Exception as exc:  # bad inputs fail in many ways (PIL: OSError, SyntaxError, DecompressionBombError)
            return f"bad image or request: {type(exc).__name__}: {exc}"
        need = int(prompt.input_ids.shape[0]) + self.s.max_new_tokens
        if need > self.max_positions:
            return (f"prompt too long: {int(prompt.input_ids.shape[0])} tokens + {self.s.max_new_tokens} new tokens "
                    f"> {self.max_positions} positions")
        return None

    # .............................................................. sample table
    def sample_fields(self, rows: np.ndarray, bad: dict[int, str]) -> dict[str, Any]:
        """Every ``write_samples`` field of ``rows``; rows that fail here are added to ``bad``."""
        ks = self.ks
        crops, vtok, ptok, tokens, unc, lang = self._empty_sample_arrays(rows, bad)
        cheap = ks.cheapest_config
        for t, tier in enumerate(ks.tiers):
            good = [j for j, i in enumerate(rows) if int(i) not in bad]
            if not good:
                break
            cfg = KnobConfig(tier, cheap.p, cheap.top_k, cheap.blocks)
            res = self.runner(lambda reqs: self.rt_features.run(reqs, cfg, return_latency_tokens=True),
                              [self.requests[rows[j]] for j in good])
            for j, o in zip(good, res):
                if isinstance(o, str):
                    bad[int(rows[j])] = f"sample features failed at tier {tier}: {o}"
                    continue
                crops[j, t], vtok[j, t], ptok[j] = o.crops, o.vision_tokens, o.prompt_tokens
                lt = np.asarray(o.latency_tokens, dtype=np.float32)[np.asarray(ks.insertion_positions) - 1]
                tokens[j, t] = self._clip_tokens(rows[j], lt)
                if t == 0:
                    unc[j] = (o.first_token_entropy, o.first_token_margin)
        return self._sample_dict(rows, bad, crops, vtok, ptok, tokens, unc, lang)

    def _empty_sample_arrays(self, rows: np.ndarray, bad: dict[int, str]) -> tuple[np.ndarray, ...]:
        """(crops, vision tokens, prompt tokens, latency tokens, uncertainty, language feature) of
        ``rows``, zero / NaN but for the text fields (an image failure still leaves the language
        feature); rows whose text fails are added to ``bad``."""
        ks = self.ks
        n, T, P = len(rows), len(ks.tiers), len(ks.insertion_positions)
        crops = np.zeros((n, T), np.int32)
        vtok = np.zeros((n, T), np.int32)
        ptok = np.zeros(n, np.int32)
        tokens = np.zeros((n, T, P, self.w.dims.Dt), np.float32)
        unc = np.full((n, 2), np.nan, np.float32)
        lang = np.zeros((n, self.w.dims.Dl), np.float32)
        for j, i in enumerate(rows):
            try:
                lang[j] = self.rt.language_feature(self.requests[i])
                ptok[j] = len(self.rt.tokenizer.encode(self.rt.prompt_text(self.requests[i]))) + 1
            except Exception as exc:  # e.g. a dataset without a prompt template
                bad.setdefault(int(i), f"bad request text: {type(exc).__name__}: {exc}")
        return crops, vtok, ptok, tokens, unc, lang

    def _clip_tokens(self, row: int, lt: np.ndarray) -> np.ndarray:
        big = np.abs(lt) > F16_MAX
        if big.any():  # the cache stores float16; an inf would be refused by the writer
            self.log(f"{self.requests[row].id}: {int(big.sum())} latency-token values beyond float16, clipped")
            lt = np.clip(lt, -F16_MAX, F16_MAX)
        return lt

    def _sample_dict(self, rows: np.ndarray, bad: dict[int, str], crops: np.ndarray, vtok: np.ndarray,
                     ptok: np.ndarray, tokens: np.ndarray, unc: np.ndarray, lang: np.ndarray) -> dict[str, Any]:
        for j, i in enumerate(rows):  # rows that failed at a later tier keep no partial features
            if int(i) in bad:
                crops[j] = vtok[j] = 0
                tokens[j] = 0.0
                unc[j] = np.nan
        reqs = [self.requests[i] for i in rows]
        if self.s.molmoe_scale is not None:
            vtok = self._molmoe_vision_tokens(rows, crops, vtok)
        return {
            "id": [r.id for r in reqs], "dataset": self.dataset_index[rows], "split": self.split[rows],
            "question": [r.question for r in reqs], "answers": [answers_json(r) for r in reqs],
            "prompt_tokens": ptok, "crops": crops, "vision_tokens": vtok, "lang_feature": lang,
            "latency_token": tokens, "uncertainty": unc,
        }

    def _molmoe_vision_tokens(self, rows: np.ndarray, crops: np.ndarray, vtok: np.ndarray) -> np.ndarray:
        """MolmoE-1B's image tokens per tier for each row's image at ``molmoe_scale`` × its size
        (``MolmoeRuntime.vision_token_counts``, as the live env counts them; the same crop grid as
        the model's preprocessing gave, which is checked)."""
        out = vtok.copy()
        for j, i in enumerate(rows):
            if vtok[j].min() <= 0:
                continue  # a failed row keeps its zeros
            counts = self.rt.vision_token_counts(self.requests[i], molmoe_scale=self.s.molmoe_scale)
            for t, tier in enumerate(self.ks.tiers):
                n_crops, n_tok = counts[tier]
                if n_crops != crops[j, t]:
                    raise RuntimeError(f"{self.requests[i].id}: MolmoE-1B would use {n_crops} crops at tier {tier}, "
                                       f"the model {crops[j, t]}: the geometries are not scaled copies")
                out[j, t] = n_tok
        return out

    # .............................................................. outcomes
    def _write_failed(self, rows: np.ndarray, configs: np.ndarray, errors: Sequence[str]) -> None:
        ns, nc = len(rows), len(configs)
        err = np.empty((ns, nc), dtype=object)
        for j, e in enumerate(errors):
            err[j, :] = e
        pred = np.empty((ns, nc), dtype=object)
        pred[:] = ""
        self.w.write_outcomes(rows, configs, score=np.full((ns, nc), np.nan), output_tokens=np.full((ns, nc), -1),
                              measured_ms=np.full((ns, nc, 3), np.nan), prediction=pred,
                              status=np.full((ns, nc), STATUS_FAILED, np.uint8), error=err)
        self.stats.outcomes_failed += ns * nc
        self.did_write = True
        self._tick(ns * nc)

    def run_config(self, rows: np.ndarray, c: int) -> None:
        """Run configuration ``c`` on ``rows`` and write their outcomes (one journaled chunk)."""
        cfg = self.ks.config(int(c))
        res = self.runner(lambda reqs: self.rt.run(reqs, cfg), [self.requests[i] for i in rows])
        self.write_config(rows, c, res)

    def write_config(self, rows: np.ndarray, c: int, res: Sequence[Any]) -> None:
        """Write configuration ``c``'s outcomes of ``rows`` (one journaled chunk): per row an
        object with ``score``, ``output_tokens``, ``prediction`` and ``vision_ms`` / ``prefill_ms`` /
        ``decode_ms``, or the error text of a FAILED outcome."""
        n = len(rows)
        score = np.full((n, 1), np.nan)
        out_tok = np.full((n, 1), -1, np.int64)
        meas = np.full((n, 1, 3), np.nan)
        pred = np.empty((n, 1), dtype=object)
        err = np.empty((n, 1), dtype=object)
        status = np.full((n, 1), STATUS_OK, np.uint8)
        for j, (i, o) in enumerate(zip(rows, res)):
            if isinstance(o, str):
                pred[j, 0], err[j, 0], status[j, 0] = "", o, STATUS_FAILED
                continue
            req = self.requests[i]
            score[j, 0] = cache_score(req.metric, o.score)
            out_tok[j, 0] = o.output_tokens
            meas[j, 0] = (o.vision_ms, o.prefill_ms, o.decode_ms)
            pred[j, 0], err[j, 0] = o.prediction, ""
        self.w.write_outcomes(rows, np.array([c]), score=score, output_tokens=out_tok, measured_ms=meas,
                              prediction=pred, status=status, error=err)
        n_ok = int((status == STATUS_OK).sum())
        self.stats.outcomes_ok += n_ok
        self.stats.outcomes_failed += n - n_ok
        self.did_write = True
        self._tick(n)

    # .............................................................. one chunk
    def build_chunk(self, rows: np.ndarray) -> None:
        """Sample table first, then the pending outcomes of every selected configuration.

        Requests that cannot run (validation or sample features failed) get their FAILED
        outcomes *before* the sample rows are written: once a row is marked done, its failures
        are on disk too, so a resumed build needs no re-validation and runs exactly the
        (row, configuration) pairs that are still PENDING.
        """
        if self.s.engine == "shared-prefix":
            return self.build_chunk_shared(rows)
        configs = self.s.configs
        if self.w.samples_pending()[rows].any():
            bad = self._invalid_rows(rows)
            self._write_sample_table(rows, bad, self.sample_fields(rows, bad))
        # one snapshot per chunk (pending() is S x C): each write below only touches its own column
        pend = self.w.pending()[np.ix_(rows, configs)]
        for j, c in enumerate(configs):
            todo = rows[pend[:, j]]
            if todo.size:
                self.run_config(todo, int(c))

    def _invalid_rows(self, rows: np.ndarray) -> dict[int, str]:
        """Row → why it cannot run, for the rows of ``rows`` that fail :meth:`validate`."""
        bad: dict[int, str] = {}
        for i in rows:
            why = self.validate(self.requests[i])
            if why is not None:
                bad[int(i)] = why
        return bad

    def _write_sample_table(self, rows: np.ndarray, bad: dict[int, str], fields: dict[str, Any]) -> None:
        """FAILED outcomes of the ``bad`` rows first, then the chunk's sample rows (see :meth:`build_chunk`)."""
        configs = self.s.configs
        self.stats.invalid_requests.update({self.requests[i].id: e for i, e in bad.items()})
        bad_rows = np.array(sorted(bad), dtype=np.int64)
        if bad_rows.size and self.w.pending()[np.ix_(bad_rows, configs)].any():
            self._write_failed(bad_rows, configs, [bad[int(i)] for i in bad_rows])
        self.w.write_samples(rows, **fields)
        self.did_write = True

    def build_chunk_shared(self, rows: np.ndarray) -> None:
        """:meth:`build_chunk` with the shared-prefix engine: one
        :func:`~model_runtime.molmoe.shared_prefix.run_all_configs` pass over the chunk's rows that
        still need work gives the sample features and every pending configuration's outcomes
        (the rows ordered by prompt length, in batches of ``batch_size`` through
        :class:`BatchRunner`: a batch that raises is retried in halves, a single request that
        still fails is FAILED); then the same writes as the per-config engine, in the same order
        (FAILED rows, samples, one write per configuration).
        """
        from model_runtime.molmoe.shared_prefix import run_all_configs

        configs = self.s.configs
        need_samples = bool(self.w.samples_pending()[rows].any())
        bad: dict[int, str] = {}
        if need_samples:
            bad = self._invalid_rows(rows)
            arrays = self._empty_sample_arrays(rows, bad)
            run_rows = np.array([i for i in rows if int(i) not in bad], dtype=np.int64)
            run_cfgs = configs[self.w.pending()[np.ix_(run_rows, configs)].any(axis=0)] if run_rows.size else configs[:0]
        else:
            pend = self.w.pending()[np.ix_(rows, configs)]
            run_rows = rows[pend.any(axis=1)]
            run_cfgs = configs[pend.any(axis=0)]
        res: list[Any] = []
        if run_rows.size and (need_samples or run_cfgs.size):
            from model_runtime.molmoe.shared_prefix import prompt_length_order

            # batches of similar prompt length: each is padded to its longest prompt
            run_rows = run_rows[prompt_length_order(self.rt, [self.requests[i] for i in run_rows])]
            cfg_list = [int(c) for c in run_cfgs]
            res = self.runner(lambda reqs: run_all_configs(self.rt, reqs, cfg_list, batch_size=len(reqs),
                                                           return_sample_features=need_samples,
                                                           dense_decode=self.s.dense_decode,
                                                           preprocess_threads=self.s.preprocess_threads,
                                                           decode_group_bytes=self.s.decode_group_bytes,
                                                           log=self.log).per_request(),
                              [self.requests[i] for i in run_rows])
        by_row = dict(zip((int(i) for i in run_rows), res))
        if need_samples:
            crops, vtok, ptok, tokens, unc, lang = arrays
            for j, i in enumerate(rows):
                r = by_row.get(int(i))
                if r is None:
                    continue
                if isinstance(r, str):
                    bad[int(i)] = f"sample features failed: {r}"
                    continue
                f = r[1]
                crops[j], vtok[j], ptok[j] = f.crops, f.vision_tokens, f.prompt_tokens
                tokens[j] = self._clip_tokens(int(i), f.latency_tokens)
                unc[j] = (f.first_token_entropy, f.first_token_margin)
            self._write_sample_table(rows, bad, self._sample_dict(rows, bad, crops, vtok, ptok, tokens, unc, lang))
        pend = self.w.pending()[np.ix_(rows, configs)]
        for j, c in enumerate(configs):
            todo = rows[pend[:, j]]
            if todo.size:
                out = []
                for i in todo:
                    r = by_row[int(i)]
                    out.append(r if isinstance(r, str) else r[0][int(c)])
                self.write_config(todo, int(c), out)

    def build(self, chunks: Sequence[np.ndarray]) -> None:
        # a Ctrl-C swallowed inside a weakref callback or __del__ (torch and h5py run both) would
        # let the build run on; it is re-raised at the next chunk boundary instead
        with interruptible():
            for rows in chunks:
                raise_if_interrupted()
                self.build_chunk(rows)
            raise_if_interrupted()


# ---------------------------------------------------------------------------------- finishing
def budget_rows(done: np.ndarray, vision_tokens: np.ndarray) -> np.ndarray:
    """Rows that enter the budget range: sample table final and every tier has vision tokens."""
    return np.flatnonzero((done > 0) & (vision_tokens.min(axis=1) > 0))


def finalize(path: Path, estimator: Any, *, nominal_output_tokens: int = NOMINAL_OUTPUT_TOKENS,
             extra_attrs: dict[str, Any] | None = None) -> tuple[float, float] | None:
    """Derive ``budget_range_ms`` from a closed cache's samples and store it with ``estimator``.

    Reads the file, then reopens it with :meth:`CacheWriter.resume` (which snapshots it first,
    so that a kill during this last write loses nothing) for one ``set_attrs`` chunk.
    """
    import h5py

    from cache.reader import decode_attr
    from cache.writer import CacheWriter
    from model_runtime.latency_estimator import budget_range

    with h5py.File(path, "r") as f:
        ks = KnobSpace.from_dict(decode_attr("knob_space", f.attrs["knob_space"]))
        done = f["progress/samples_done"][()]
        vt = f["samples/vision_tokens"][()]
        rows = budget_rows(done, vt)
        crops = f["samples/crops"][()][rows]
        prompt = f["samples/prompt_tokens"][()][rows]
        vt = vt[rows]
    rng = None
    attrs: dict[str, Any] = {"estimator": estimator.to_dict(), **(extra_attrs or {})}
    if rows.size:
        rng = budget_range(estimator, ks, crops, vt, prompt, output_tokens=nominal_output_tokens)
        attrs["budget_range_ms"] = [float(rng[0]), float(rng[1])]
    w = CacheWriter.resume(path)
    try:
        w.set_attrs(**attrs)
    finally:
        w.close()
    return rng


def stored_identity(path: Path) -> tuple[dict | None, dict | None, bool]:
    """``(generator_params, knob_space dict, finished)`` of an existing cache or its build journal
    (``(None, None, False)`` when neither can be read). ``finished``: no journal and a budget range set."""
    from cache.unfinished import is_unfinished, json_attr, stored_attrs

    attrs = stored_attrs(path)
    if not attrs:
        return None, None, False
    gp, ksd = json_attr(attrs.get("generator_params")), json_attr(attrs.get("knob_space"))
    if gp is None or ksd is None:
        return None, None, False
    return gp, ksd, (not is_unfinished(path)) and json_attr(attrs.get("budget_range_ms", "null")) is not None


def params_mismatch(stored: dict, current: dict, prefix: str = "") -> list[str]:
    """Keys (dotted) whose values differ between two ``generator_params`` (unchecked keys skipped)."""
    out = []
    for k in sorted(set(stored) | set(current)):
        if f"{prefix}{k}" in UNCHECKED_PARAMS:
            continue
        a, b = stored.get(k, "<missing>"), current.get(k, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += params_mismatch(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: stored {json.dumps(a)[:80]} vs now {json.dumps(b)[:80]}")
    return out



# ---------------------------------------------------------------------------------- importance
def load_importance(spec: str, model_dir: Path, runtime: Any, requests: Sequence[Any], *,
                    calibration_requests: int = 16, log: Callable[[str], None] | None = None) -> dict:
    """Importance scores for a build as ``ImportanceScores.to_dict()`` (or the defaults' description).

    ``spec``: ``auto`` (``<model_dir>/importance.json`` when the checkpoint has one, else
    ``block_influence`` on the first ``calibration_requests`` valid ``requests``), ``default``
    (the knob space's hand-made defaults) or a path to an ``ImportanceScores`` JSON. Scores are
    rounded to 6 significant digits, so that shards computing them independently agree.
    """
    from model_runtime.knob_space import DEFAULT_IMPORTANCE_SCORES

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    model_dir = Path(model_dir)
    if spec == "auto" and (model_dir / "importance.json").is_file():
        spec = str(model_dir / "importance.json")
    if spec == "default":
        return {"scores": list(DEFAULT_IMPORTANCE_SCORES), "method": "default",
                "note": "envs.knob_space.DEFAULT_IMPORTANCE_SCORES (hand-made, not measured on this model)"}
    from model_runtime.molmoe.importance import ImportanceScores, compute_importance

    if spec != "auto":
        d = ImportanceScores.load(spec).to_dict()
        d["source"] = str(spec)
    else:
        # calibration: the first valid requests of the whole list (the same for every shard)
        largest = max(runtime.knob_space.crops)
        calib = []
        for r in requests:
            if len(calib) >= calibration_requests:
                break
            try:
                runtime.prepare(r, largest)
            except Exception:  # an invalid request cannot calibrate; the build fails it later
                continue
            calib.append(r)
        if not calib:
            raise ValueError("no valid calibration request for the importance scores; pass --importance default or a JSON")
        t0 = time.perf_counter()
        d = compute_importance(runtime, calib).to_dict()
        d["calibration_ids"] = [r.id for r in calib]
        log(f"importance scores (block_influence on {len(calib)} requests, {time.perf_counter() - t0:.1f} s): "
            + ", ".join(f"{s:.3g}" for s in d["scores"]))
    d["scores"] = [float(f"{float(s):.6g}") for s in d["scores"]]
    return d
