"""SYNTHETIC outcome caches: a documented, seeded generative model in the cache schema.

Everything this module writes is **synthetic** and says so: root attribute ``synthetic=True``,
``model_id="synthetic"``, ``generator="synthetic"``, ``generator_params`` = the full parameters
(incl. the seed, the calibration targets, the solved calibration and notes), dataset names
prefixed ``synthetic-``, questions and answers that are placeholder strings saying they are
synthetic, and "measured" latencies that are the latency estimator's predictions with noise.
It is the embedded default cache of the project (:func:`build_default_cache`, used by
``make demo``) until a cache of real MolmoE-1B outcomes exists, and the way to test at scale.

Entry points: :func:`generate` (pure: params + seed → in-memory arrays, :class:`SyntheticData`),
:func:`write_synthetic_cache` (writes through :class:`cache.writer.CacheWriter` in chunks,
resumable), :func:`build_default_cache`, and the CLI
``python -m cache.synthetic --out PATH --samples N --seed S`` (prints the calibration table).

This module is the documentation of the model and the public face of the generator: every name
below is importable from ``cache.synthetic``. The code lives in modules by concern:

- :mod:`cache.synthetic_params`: the parameters (:class:`SyntheticParams`, :class:`DatasetSpec`,
  the default datasets) and the seeded per-request draws;
- :mod:`cache.synthetic_model`: the generative model (:func:`generate`, :class:`SyntheticData`,
  :func:`generator_params`);
- :mod:`cache.synthetic_calibration`: the score model, the calibration solver
  (:func:`calibrate`) and the calibration table / report;
- :mod:`cache.synthetic_writer`: :func:`write_synthetic_cache` and :func:`build_default_cache`;
- :mod:`cache.synthetic_cli`: the command line (``python -m cache.synthetic`` runs it);
- :mod:`cache.synthetic_fit`: ``--calibrate-to CACHE``, the datasets, their marginals and the
  knob costs fitted to another cache (e.g. a live-built one) instead of the defaults below.

Generative model
================
Datasets (default: five, mixed evenly; ``DatasetSpec.weight`` changes the mix). Targets are the
mean score at the full configuration (high, p1, k8, 16 blocks) and at the cheapest one
(low, p1, k4, 12 blocks):

=========================  ==========  ===============  ==============================================
name                       metric      full → cheapest  source of the targets
=========================  ==========  ===============  ==============================================
``synthetic-textvqa``      vqa_score   0.77 → 0.38      measured MolmoE-1B marginals; high vision need
``synthetic-vqav2``        vqa_score   0.83 → 0.65      measured MolmoE-1B marginals; lower vision need
``synthetic-okvqa``        vqa_score   0.64 → 0.37      measured MolmoE-1B marginals; knowledge-heavy
``synthetic-scienceqa``    mc          0.88 → 0.70      ASSUMPTION (not measured); 2-5 choices, guessing
``synthetic-docvqa``       anls        0.78 → 0.30      ASSUMPTION (not measured); documents, tall images
=========================  ==========  ===============  ==============================================

Per request ``i`` of dataset ``d``, latents (never written to the cache; kept in
:attr:`SyntheticData.latents`):

- difficulty ``δ ~ N(0, 1)``; vision need ``ν ~ Beta(a_d, b_d)`` in [0, 1] (TextVQA-like (6, 2),
  VQAv2-like (2, 4), OK-VQA-like (2, 5), ScienceQA-like (1.5, 3), DocVQA-like (8, 1.5));
  sparsity robustness ``ρ ~ N(0, 1)``;
- an image size (``DatasetSpec.image``: lognormal long side and aspect ratio, portrait share;
  COCO-like ≈ 640 × 480 for VQAv2/OK-VQA, ≈ 1024 px OpenImages-like for TextVQA, small diagrams
  for ScienceQA, tall ≈ 1700 × 2200 pages for DocVQA; aspect ratio clipped to [1, 3]). Molmo's
  tiling per tier (:mod:`cache.molmo_tiling`, max crops = ``KnobSpace.crops``) gives
  ``crops`` (incl. the global view) and ``vision_tokens`` per tier, ≈ 316-1250;
- prompt tokens (lognormal, per dataset: VQA 14-55, ScienceQA 25-250 with its choices and
  hint, DocVQA 16-80), a base output length (``1 + Poisson(λ_d)`` clipped: VQA answers 1-5
  tokens, DocVQA longer), and for multiple choice the number of choices (2-5).

Correctness probability of request ``i`` at configuration ``c = (tier t, p, top_k k, blocks)``::

    x(i, c) = β_d − σ_d·δ − ν·V_d·a(i, t) − g(ρ)·(K_d[k]·cov(p) + B_d[16 − blocks]) + ε(i, c)
    q(i, c) = sigmoid(x(i, c))

- ``σ_d = 2`` (spread of per-request difficulty: items are mostly always-right or always-wrong,
  as real VQA items are); ``g(ρ) = exp(−0.5·ρ)``, positive and decreasing: fragile requests
  (ρ < 0) lose more from sparsity;
- ``B_d[n]``: penalty of ``n`` dropped blocks (the KnobSpace plan drops the ``n`` least important
  blocks of ``p..15``; ``n = 16 − blocks`` for every ``p``); ``K_d[k]``: penalty of top-k ``k``;
  both ≥ 0, 0 at full, monotone;
- ``cov(p) = (16 − p)/15``: the share of blocks whose top-k the knob reduces (blocks ``0..p-1``
  always run at top-8). This is the only way ``p`` enters accuracy: it has no direct effect;
  later insertion keeps more blocks at top-8 and fewer block sets possible;
- vision: ``a(i, t) = ln(tokens_high(i) / tokens_t(i)) / E_d[ln(tokens_high / tokens_low)]``,
  the request's resolution deficit at tier ``t`` relative to the dataset's average low-tier
  deficit. DELIBERATE DEVIATION from a fixed per-tier penalty: a request whose tiling at tier
  ``t`` equals the high tier's (a 640 × 480 photo gets 2 × 3 crops at both medium and high) feeds
  the model an identical input, so its penalty and its outcome are identical (the jitter is
  shared too). The medium tier's average penalty relative to the low tier's is then emergent
  from the tiling, not a fixed 40 % (``medium_share`` in ``generator_params``): ≈ 0.44 for
  TextVQA-like and 0.45 for DocVQA-like images (close to the 40 % of the design notes), 0.20
  for ScienceQA-like and 0.06 for COCO-like photos, whose medium and high tilings mostly
  coincide;
- ``ε(i, c)``, marginally ``N(0, 0.15²)`` (shared between tiers with the same tiling): outcomes
  are monotone-ish in the configuration, not perfectly monotone. Low-rank, as a real model's
  outcome noise is smooth across neighbouring configurations: a share ``jitter_iid_share = 0.25``
  of its variance is independent per (request, configuration), the rest is
  ``(f_tier(i, t) + f_p(i, p) + f_k(i, k) + f_blocks(i, b)) / 2``, per-request unit-variance
  factors of each knob's value, correlated ``jitter_knob_corr = 0.7`` between neighbouring values
  (a stationary AR(1) along the knob). The full configuration's jitter correlates 0.69 with its
  one-knob neighbours, 0.60 with top-k 4 and 0.36 with the cheapest configuration; the full and
  top-7 outcomes differ for 5.7 % of requests instead of 7.9 % with independent jitter
  (``jitter_iid_share=1``, generator version 1, from the same random numbers).

Common random numbers: one ``u_i ~ U(0, 1)`` per request; the request is correct at ``c`` iff
``u_i < q(i, c)``, i.e. the margin ``m = x − logit(u_i) > 0``. Scores
(:func:`cache.synthetic_calibration.score_from_margin`):

- ``vqa_score`` (levels 0, 0.3, 0.6, 0.9, 1.0 of the 10-annotator VQA accuracy):
  ``0.3·[m > −b] + 0.3·[m > 0] + 0.3·[m > b] + 0.1·[m > 2b]``, ``b = 0.4``: 1.0 well inside the
  correct region, 0.9 / 0.6 close to the boundary, 0.3 just outside it, 0 beyond. At a typical
  ``q = 0.88`` this gives 1.0 / 0.9 / 0.6 / 0.3 / 0 with probability ≈ 0.77 / 0.06 / 0.05 /
  0.04 / 0.08 (≈ 15 % partial credit, as on VQAv2);
- ``mc``: 1 if correct, else a guess that is right iff ``v_i < 1/n_choices`` (``v_i`` a second
  per-request uniform, so the guessing floor is common across configurations);
- ``anls``: 0 when wrong (ANLS zeroes similarities < 0.5), ``0.5 + 0.5·min(m, 1)`` when right
  (near-miss strings close to the boundary, exact answers far inside).

Calibration (:func:`calibrate`, :func:`cache.synthetic_calibration.solve_dataset`): on a fixed
Monte-Carlo sample of 16384 latent draws per dataset (seed ``calibration_seed``, independent
of the data seed, so the solved values are a function of the parameters only), with the score's
expectation over ``u`` in closed form, bracketed 1-D root finding (bisection-safe regula falsi)
on the population mean score solves in order: ``β_d`` (full target);
``B_d[n]`` so that dropping 1-4 blocks costs 3.1, 5.4, 7.5, 18.4 points (the cliff at 12 blocks,
measured on one MolmoE-1B mix); ``K_d[k]`` so that top-k 7/6/5/4 cost 0.8/2.0/3.5/5.5 points
(measured: k6 ≈ 1-3, k4 ≈ 3-8, k7 and k5 in between), both at otherwise-full configuration;
then ``V_d`` so that the cheapest configuration hits its target. The knob costs are applied as
given for the TextVQA-like dataset and scaled for the others by their full → cheapest gap over
TextVQA's (0.39): VQAv2-like ×0.46, OK-VQA-like ×0.69, ScienceQA-like ×0.46, DocVQA-like ×1.23.
It takes ≈ 0.2 s and the solved values go into ``generator_params["calibration"]``. A generated
cache then hits its targets up to sampling noise (≈ ±0.015 per dataset at 1000 requests).

Observable features (noisy functions of the latents; "R²" = population R² of the best linear
probe for the latent, within a dataset):

- ``lang_feature`` (S, Dl) float32: a dataset-specific mean (norm 3) + a weak linear signal of
  difficulty (R² 0.10) and vision need (R² 0.35: questions hint whether reading text is
  needed) along orthonormal directions + N(0, 1) noise per dimension. Opt-in, off by default
  (``lang_r2_output_length``, ``--lang-r2-output-length``; ``--calibrate-to`` fits it to the
  source, :func:`cache.synthetic_fit.fit_length_signal`): a signal of the request's log base
  answer length standardised within its dataset, along its own direction (what a question such
  as "what does the sign say?" reveals); with 0 the default cache is unchanged;
- ``latency_token`` (S, T, P, Dt) float16: a per-(tier, p) offset (norm 4) + dataset mean
  (norm 3) + linear signals of δ, ν, ρ whose R² rise with p (δ 0.20 → 0.60, ν 0.25 → 0.45,
  ρ 0.10 → 0.45 for p = 1 → 5; +0.03 / +0.06 at medium / high tier) + N(0, 1) noise, half of
  its variance shared by all (tier, p) of a request. Later insertion points are more
  informative: the Stage-2 trade-off of the seeds (more informative, fewer active-blocks options, more
  blocks forced at top-8). Moderate on purpose, not tuned to make agents look good;
- ``uncertainty`` (S, 2) float32: first-token entropy (nats) and top-1 − top-2 margin of a
  10-way output distribution whose top-1 probability is ``sigmoid(x_cheapest + η)``,
  ``η ~ N(0, 0.6²)`` drawn separately for each feature: noisy monotone functions of ``q`` at the
  cheapest configuration (for the VoVNet uncertainty-threshold baseline).

Outcomes per (request, configuration): ``score`` as above; ``output_tokens`` = the base length,
+1-3 tokens when wrong with probability ``0.5·r(i, c)`` (``r`` in [0, 1]: how reduced ``c`` is
for ``i``, half resolution deficit ``min(a(i, t), 1)``, half expert-slot reduction; common
random numbers again); ``measured_ms`` (vision, prefill,
decode total) = the latency estimator's prediction (:meth:`LatencyEstimator.default` unless
given) × independent lognormal(0, 0.05) noise per phase. These are NOT measurements.
Root attribute ``budget_range_ms`` = :func:`model_runtime.latency_estimator.budget_range` over
the generated requests (median cheapest → median full configuration at the nominal output
length, 3 tokens), recorded with the estimator's JSON (attribute ``estimator``).

Splits: per dataset a seeded permutation assigns fractions 0.7 / 0.1 / 0.2 (train/val/test)
exactly (stratified); ids ``syn-000000`` …

Determinism: the same ``(params, seed)`` gives byte-identical arrays. Random numbers come in
blocks of :data:`GEN_BLOCK` requests, each block from its own ``SeedSequence([seed, stream,
block])``, so any row range (the writer's chunks) regenerates exactly the same values.

Only numpy (and the project's numpy/h5py modules) is imported at module import: this module is
on the replay path. pandas is used by the calibration table only.
"""

from __future__ import annotations

import sys

from cache.synthetic_calibration import calibrate, calibration_report, calibration_table
from cache.synthetic_cli import _parser, main  # noqa: F401  (_parser: cache.unfinished rebuilds resume commands)
from cache.synthetic_model import SyntheticData, generate, generator_params
from cache.synthetic_params import (
    DATASET_PREFIX,
    DEFAULT_DATASETS,
    GEN_BLOCK,
    GENERATOR_NAME,
    GENERATOR_VERSION,
    MODEL_ID,
    DatasetSpec,
    ImageSizeSpec,
    SyntheticParams,
    select_datasets,
)
from cache.synthetic_writer import DEFAULT_SEED, build_default_cache, default_params, write_synthetic_cache

__all__ = [
    "DatasetSpec", "ImageSizeSpec", "SyntheticParams", "SyntheticData", "DEFAULT_DATASETS",
    "generate", "write_synthetic_cache", "build_default_cache", "calibrate", "generator_params",
    "calibration_table", "calibration_report", "main",
    "DATASET_PREFIX", "DEFAULT_SEED", "GEN_BLOCK", "GENERATOR_NAME", "GENERATOR_VERSION", "MODEL_ID",
    "default_params", "select_datasets",
]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
