"""Latency estimator of MolmoE-1B adaptive inference: physically shaped, linear in its parameters.

The estimator predicts, in **milliseconds**, the latency of one request served with one
configuration (docs/DESIGN.md §6, docs/INTERFACES.md). It is fitted on profiling rows measured by
the runtime's profiler (or converted from ``model_runtime/profiles/reference_h100_hf_transformers_molmoe1b_shape.csv``) and extrapolates across all
225 configurations of the default :class:`model_runtime.knob_space.KnobSpace` because every term is a
physical work count.

Inputs (per request × configuration; all broadcast against each other):

- ``crops``: image crops fed to the vision tower, incl. the global view;
- ``vision_tokens``: image tokens entering the language model;
- ``prompt_tokens``: text tokens of the prompt;
- ``p``: insertion position (blocks ``0..p-1`` run at ``max_top_k`` experts);
- ``top_k``: routed experts per token for the active blocks ``p..``;
- ``blocks``: total active blocks (counting ``0..p-1``);
- ``output_tokens``: generated tokens (the first one comes out of prefill).

Derived quantities:

- ``S = vision_tokens + prompt_tokens`` (prefill sequence length, tokens);
- ``expert_slots = max_top_k·p + top_k·(blocks − p)`` (routed expert FFNs per token, summed over
  the active blocks; ``max_top_k`` = 8 for MolmoE-1B);
- ``ctx = S + output_tokens / 2`` (mean KV-cache length during decode, tokens).

Model (all coefficients ≥ 0; units in brackets):

- ``vision_ms = v0 [ms] + v1 [ms/crop]·crops``
- ``prefill_ms = a0 [ms] + S·(a1 [ms/token] + a2 [ms/(token·block)]·blocks
  + a3 [ms/(token·slot)]·expert_slots) + a4 [ms/block]·blocks + a5 [ms/slot]·expert_slots``
  ``(+ a6 [ms/(block·token²)]·blocks·S²`` when ``attention_quadratic``; off by default because
  the reference profile cannot identify it)
- ``decode_ms_per_token = d0 [ms] + d1 [ms/block]·blocks + d2 [ms/slot]·expert_slots
  + d3 [ms/(block·token)]·blocks·ctx``
- ``decode_ms = decode_ms_per_token · max(output_tokens − 1, 0)`` (total decode time)
- ``total_ms = vision_ms + prefill_ms + decode_ms``

Because every feature is non-negative and non-decreasing in ``crops``, tokens, ``top_k``,
``blocks`` and ``p`` (``top_k ≤ max_top_k``), non-negative coefficients make every prediction
monotone non-decreasing in each input.

Fitting (:meth:`LatencyEstimator.fit`): each phase separately by non-negative least squares on the
*relative* error (rows weighted by 1/ms, so the fit minimises squared percentage error, the
quantity MAPE reports), with the design columns scaled to unit norm and a small ridge penalty
``ridge·‖θ_scaled‖²``. With fewer (independent) rows than coefficients a phase is
*underdetermined*; the ridge term then selects the minimum-norm (in column-scaled units) exact
fit. That is a prior, not a measurement: the fit report flags it (``underdetermined``,
``warnings``). Phases with at least 4 rows keep a random held-out split (``holdout_frac``) that
the coefficients never see; smaller phases report in-sample fidelity and say so.

Profile CSV (:func:`load_profile`): columns ``phase, crops, vision_tokens, prompt_tokens, p,
top_k, blocks, output_tokens, ms`` plus optional ``impl, device, notes``. ``phase`` is
``vision`` (``ms`` = vision tower incl. connector; needs ``crops``), ``prefill`` (``ms`` = one
forward over ``S`` tokens; needs the token counts, ``p``, ``top_k``, ``blocks``) or ``decode``
(``ms`` = milliseconds **per decode token**; needs everything but ``crops``). Columns a phase
does not use may be empty.

Only numpy (and the standard library) is imported at module import: this module is on the replay
path. pandas and scipy are imported inside :func:`load_profile`, :func:`from_reference_csv` and
:meth:`LatencyEstimator.fit`.

Modules, by concern (every public name is importable from ``model_runtime.latency_estimator``):

- :mod:`~model_runtime.latency_estimator.features`: constants, input validation, the design
  matrices of the formulas above;
- :mod:`~model_runtime.latency_estimator.estimator`: :class:`LatencyEstimator` (prediction,
  JSON serialisation, the packaged default);
- :mod:`~model_runtime.latency_estimator.fitting`: the relative-error NNLS fit and its report;
- :mod:`~model_runtime.latency_estimator.budget`: predictions over a knob space and the default
  budget range;
- :mod:`~model_runtime.latency_estimator.profiles`: profile CSV I/O;
- :mod:`~model_runtime.latency_estimator.report`: fidelity metrics and the text report;
- :mod:`~model_runtime.latency_estimator.token_pruning`: the vision-token pruning proxy's cost
  (pooled tokens kept at a keep fraction, the estimated latency of a pruned run);
- :mod:`~model_runtime.latency_estimator.cli`: ``python -m model_runtime.latency_estimator``
  (``fit``, ``report``, ``convert-reference``).
"""

from model_runtime.latency_estimator.budget import budget_range, config_arrays, predict_grid
from model_runtime.latency_estimator.cli import main
from model_runtime.latency_estimator.estimator import (DEFAULT_ESTIMATOR_NAME, DEFAULT_ESTIMATOR_PATH, DEFAULT_PROFILE_DIR,
                                                       NAMED_ESTIMATORS, LatencyEstimator)
from model_runtime.latency_estimator.features import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MIN_ROWS_FOR_HOLDOUT,
    OPTIONAL_PROFILE_COLUMNS,
    PHASE_INPUTS,
    PHASES,
    PROFILE_COLUMNS,
    coefficient_names,
    expert_slots,
)
from model_runtime.latency_estimator.profiles import from_reference_csv, load_profile, write_profile
from model_runtime.latency_estimator.report import fidelity_metrics, format_report, spearman
from model_runtime.latency_estimator.token_pruning import (
    check_keep,
    kept_pooled_tokens,
    pruned_latency_ms,
    pruned_vision_tokens,
)

__all__ = [
    "DEFAULT_ESTIMATOR_NAME", "DEFAULT_ESTIMATOR_PATH", "DEFAULT_PROFILE_DIR", "NAMED_ESTIMATORS", "FORMAT_NAME",
    "FORMAT_VERSION", "MIN_ROWS_FOR_HOLDOUT",
    "OPTIONAL_PROFILE_COLUMNS", "PHASE_INPUTS", "PHASES", "PROFILE_COLUMNS", "LatencyEstimator", "budget_range",
    "check_keep", "coefficient_names", "config_arrays", "expert_slots", "fidelity_metrics", "format_report",
    "from_reference_csv", "kept_pooled_tokens", "load_profile", "main", "predict_grid", "pruned_latency_ms",
    "pruned_vision_tokens", "spearman", "write_profile",
]
