"""HDF5 outcome-cache schema (version 1): names, shapes and dtypes in one place.

One file = one model × dataset split(s) × knob space. ``S`` = number of requests, ``C`` = number
of configurations of the knob space (225 by default, stable order of ``KnobSpace.configs``),
``T`` = number of tiers, ``P`` = number of insertion positions, ``Dl`` = language-feature width,
``Dt`` = latency-token width (2048 for MolmoE-1B).

Root attributes (``ROOT_ATTRS``; JSON strings where noted):

=====================  =====================================================================
``schema_version``     int, :data:`SCHEMA_VERSION`
``format``             ``"molmoe-gym-outcome-cache"`` (rejects foreign HDF5 files)
``model_id``           e.g. ``"allenai/MolmoE-1B-0924"`` or ``"synthetic"``
``knob_space``         JSON of ``KnobSpace.to_dict()`` (incl. importance scores and crops/tier)
``generator``          ``"synthetic"`` or ``"live"``
``generator_params``   JSON dict (seed, generative-model parameters, or runtime settings)
``synthetic``          bool; True for every file written by ``cache.synthetic``
``datasets``           JSON list of dataset names; ``samples/dataset`` indexes it
``metrics``            JSON dict dataset name → metric name (``vqa_score``, ``mc``, ``anls`` ...)
``budget_range_ms``    JSON ``[lo, hi]``: default latency-budget range (cheapest → full config
                       over the cache, by the estimator stored in ``estimator``)
``estimator``          JSON of the latency estimator the budget range was derived from
``created_at``         ISO-8601 UTC time; ``created_by``: package name and version
=====================  =====================================================================

Datasets (all preallocated at creation with their fill values and never resized; a build
only overwrites entries in place):

========================  ============  =========  ====================================================
path                      shape         dtype      meaning
========================  ============  =========  ====================================================
samples/id                (S,)          str        request id (unique)
samples/dataset           (S,)          int16      index into attr ``datasets``
samples/split             (S,)          int8       0 train, 1 val, 2 test (:data:`SPLITS`)
samples/question          (S,)          str        prompt text
samples/answers           (S,)          str        JSON list of reference answers (or JSON object)
samples/prompt_tokens     (S,)          int32      text prompt length in tokens
samples/crops             (S, T)        int32      crops actually used per tier (incl. global view)
samples/vision_tokens     (S, T)        int32      vision tokens per tier
samples/lang_feature      (S, Dl)       float32    mean prompt-token embedding (LanguageFeatureExtractor)
samples/latency_token     (S, T, P, Dt) float16    last prompt token's hidden state after block p-1
samples/uncertainty       (S, 2)        float32    first-token entropy, margin (NaN = unknown)
outcomes/score            (S, C)        float32    metric score in [0, 1] (CIDEr stored /10); NaN = not computed
outcomes/output_tokens    (S, C)        int32      generated tokens; -1 = unknown
outcomes/measured_ms      (S, C, 3)     float32    measured vision / prefill / decode-total ms; NaN
outcomes/prediction       (S, C)        str        prediction text ("" = none)
outcomes/status           (S, C)        uint8      :data:`STATUS_PENDING` / _OK / _FAILED
outcomes/error            (S, C)        str        failure reason when status is FAILED
progress/samples_done     (S,)          uint8      1 once the sample table row is final
========================  ============  =========  ====================================================

Crash safety (the writer's protocol): every finished chunk is first written atomically
(temporary file + fsync + rename) to the journal directory ``<path>.journal/`` and only then
applied to the HDF5 file, with ``status`` / ``samples_done`` written after the data of a chunk;
after the file is flushed and fsynced the journal records the chunk as applied. The journal is
deleted once the writer is closed cleanly. A writer reopened on a file with a journal
(``resume``) uses the file as it is when every journaled chunk was applied; if a kill hit the
file mid-write (HDF5 is not crash-consistent: a damaged B-tree or string heap can still open),
or the file cannot be opened, it is rebuilt from the journal's header (or a snapshot of the
finished file the journal was started on) and chunks. So a SIGKILL loses at most the chunk in
flight, and nothing already written is lost. A reader refuses a file that still has a
journal beside it only when it cannot be opened; otherwise it warns that a build is unfinished.
A reader trusts an outcome only where ``status == STATUS_OK``.

Only numpy/h5py-free constants live here; readers and writers import h5py themselves.
"""

from __future__ import annotations

SCHEMA_VERSION = 1
FORMAT_NAME = "molmoe-gym-outcome-cache"

SPLITS: tuple[str, ...] = ("train", "val", "test")

STATUS_PENDING = 0
STATUS_OK = 1
STATUS_FAILED = 2

MEASURED_PHASES: tuple[str, ...] = ("vision", "prefill", "decode")

ROOT_ATTRS: tuple[str, ...] = (
    "schema_version",
    "format",
    "model_id",
    "knob_space",
    "generator",
    "generator_params",
    "synthetic",
    "datasets",
    "metrics",
    "budget_range_ms",
    "estimator",
    "created_at",
    "created_by",
)

# name -> (shape template, dtype); shape symbols: S, C, T, P, Dl, Dt, or ints.
DATASETS: dict[str, tuple[tuple, str]] = {
    "samples/id": (("S",), "str"),
    "samples/dataset": (("S",), "int16"),
    "samples/split": (("S",), "int8"),
    "samples/question": (("S",), "str"),
    "samples/answers": (("S",), "str"),
    "samples/prompt_tokens": (("S",), "int32"),
    "samples/crops": (("S", "T"), "int32"),
    "samples/vision_tokens": (("S", "T"), "int32"),
    "samples/lang_feature": (("S", "Dl"), "float32"),
    "samples/latency_token": (("S", "T", "P", "Dt"), "float16"),
    "samples/uncertainty": (("S", 2), "float32"),
    "outcomes/score": (("S", "C"), "float32"),
    "outcomes/output_tokens": (("S", "C"), "int32"),
    "outcomes/measured_ms": (("S", "C", 3), "float32"),
    "outcomes/prediction": (("S", "C"), "str"),
    "outcomes/status": (("S", "C"), "uint8"),
    "outcomes/error": (("S", "C"), "str"),
    "progress/samples_done": (("S",), "uint8"),
}

# Fill values the writer preallocates with ("missing").
FILL_VALUES: dict[str, object] = {
    "samples/uncertainty": float("nan"),
    "outcomes/score": float("nan"),
    "outcomes/output_tokens": -1,
    "outcomes/measured_ms": float("nan"),
    "outcomes/status": STATUS_PENDING,
    "progress/samples_done": 0,
}


#: Keys of the provenance label that every artefact made from a cache carries (train
#: summaries, policy configs, evaluation outputs; :func:`cache.reader.cache_label`):
#: ``cache_label`` (text, e.g. ``"SYNTHETIC"`` or ``"live molmoe-1b"``), ``synthetic`` (bool),
#: and the cache's ``generator`` / ``model_id`` root attributes.
LABEL_KEYS: tuple[str, ...] = ("cache_label", "synthetic", "generator", "model_id")


class CacheError(Exception):
    """A cache file is missing, corrupt, truncated, of another schema version, or inconsistent."""
