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
- ``ε(i, c) ~ N(0, 0.15²)`` per request and configuration (shared between tiers with the same
  tiling): outcomes are monotone-ish in the configuration, not perfectly monotone.

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
  (``lang_r2_output_length``, ``--lang-r2-output-length``): a signal of the request's log base
  answer length standardised within its dataset, along its own direction (what a question such
  as "what does the sign say?" reveals); with 0 the default cache is unchanged;
- ``latency_token`` (S, T, P, Dt) float16: a per-(tier, p) offset (norm 4) + dataset mean
  (norm 3) + linear signals of δ, ν, ρ whose R² rise with p (δ 0.20 → 0.60, ν 0.25 → 0.45,
  ρ 0.10 → 0.45 for p = 1 → 5; +0.03 / +0.06 at medium / high tier) + N(0, 1) noise, half of
  its variance shared by all (tier, p) of a request. Later insertion points are more
  informative: the Stage-2 trade-off of the seeds (more informative, fewer knob3 options, more
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

import argparse
import dataclasses
import json
import sys
import time
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from cache.molmo_tiling import crops_and_tokens
from cache.schema import SPLITS
from cache.synthetic_calibration import (
    CalibrationSample,
    DatasetCalibration,
    calibration_report,
    calibration_table,
    logit,
    robustness_gain,
    score_from_margin,
    sigmoid,
    solve_dataset,
)
from envs.knob_space import KnobSpace

if TYPE_CHECKING:  # pragma: no cover - typing only
    from model_runtime.latency_estimator import LatencyEstimator

__all__ = [
    "DatasetSpec", "ImageSizeSpec", "SyntheticParams", "SyntheticData", "DEFAULT_DATASETS",
    "generate", "write_synthetic_cache", "build_default_cache", "calibrate", "generator_params",
    "calibration_table", "calibration_report", "main",
]

GENERATOR_NAME = "synthetic"
MODEL_ID = "synthetic"
#: Bumped whenever the generative model changes what a (params, seed) pair produces.
GENERATOR_VERSION = 1
#: Requests per random-number block (changing it changes every generated value).
GEN_BLOCK = 512
DATASET_PREFIX = "synthetic-"

# random-number streams (SeedSequence entropy words after the seed)
_STREAM_ASSIGN, _STREAM_STRUCTURE, _STREAM_BLOCK, _STREAM_LENGTH_DIR = 1, 2, 3, 4


# ---------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class ImageSizeSpec:
    """Image-size distribution of a dataset (pixels).

    The long side is ``clip(long_side_median · exp(long_side_sigma · z), *long_side_range)``, the
    aspect ratio (long / short) ``clip(aspect_median · exp(aspect_sigma · z'), 1, 3)``, and a
    ``portrait_frac`` share of the images is taller than wide.
    """

    long_side_median: float
    long_side_sigma: float
    long_side_range: tuple[float, float]
    aspect_median: float
    aspect_sigma: float
    portrait_frac: float


@dataclass(frozen=True)
class DatasetSpec:
    """One synthetic dataset.

    Attributes:
        name: must start with ``synthetic-``.
        metric: ``vqa_score``, ``mc`` or ``anls``.
        full_target, cheapest_target: mean score at the full / cheapest configuration.
        targets_source: where the targets come from (``"measured: ..."`` or ``"ASSUMPTION: ..."``).
        weight: relative share of the requests.
        vision_need_beta: ``(a, b)`` of the Beta distribution of the vision need ν.
        difficulty_scale: ``σ_d``, logit spread of per-request difficulty.
        image: image-size distribution.
        prompt_tokens: ``(median, sigma, lo, hi)`` of the lognormal prompt length in tokens.
        output_extra_mean: λ of the ``1 + Poisson(λ)`` base output length (tokens).
        output_max: largest base output length (tokens).
        choice_probs: for ``mc``, probabilities of 2, 3, 4, 5 choices; empty otherwise.
    """

    name: str
    metric: str
    full_target: float
    cheapest_target: float
    targets_source: str
    vision_need_beta: tuple[float, float]
    image: ImageSizeSpec
    prompt_tokens: tuple[float, float, int, int]
    output_extra_mean: float
    output_max: int
    weight: float = 1.0
    difficulty_scale: float = 2.0
    choice_probs: tuple[float, ...] = ()


_COCO = ImageSizeSpec(640.0, 0.05, (320.0, 800.0), 1.33, 0.12, 0.3)
_MEASURED = "measured: MolmoE-1B marginal accuracy (seeds)"

DEFAULT_DATASETS: tuple[DatasetSpec, ...] = (
    DatasetSpec("synthetic-textvqa", "vqa_score", 0.77, 0.38, _MEASURED, (6.0, 2.0),
                ImageSizeSpec(1024.0, 0.15, (400.0, 2048.0), 1.33, 0.12, 0.3), (22.0, 0.25, 15, 50), 0.8, 6),
    DatasetSpec("synthetic-vqav2", "vqa_score", 0.83, 0.65, _MEASURED, (2.0, 4.0), _COCO, (20.0, 0.25, 14, 45), 0.3, 4),
    DatasetSpec("synthetic-okvqa", "vqa_score", 0.64, 0.37, _MEASURED, (2.0, 5.0), _COCO, (24.0, 0.25, 15, 55), 0.6, 5),
    DatasetSpec("synthetic-scienceqa", "mc", 0.88, 0.70, "ASSUMPTION: not measured on MolmoE-1B", (1.5, 3.0),
                ImageSizeSpec(500.0, 0.35, (150.0, 1200.0), 1.5, 0.3, 0.3), (60.0, 0.45, 25, 250), 0.2, 3,
                choice_probs=(0.35, 0.30, 0.25, 0.10)),
    DatasetSpec("synthetic-docvqa", "anls", 0.78, 0.30, "ASSUMPTION: not measured on MolmoE-1B", (8.0, 1.5),
                ImageSizeSpec(2100.0, 0.2, (800.0, 3500.0), 1.29, 0.08, 0.9), (28.0, 0.3, 16, 80), 2.0, 10),
)


@dataclass(frozen=True)
class SyntheticParams:
    """All parameters of the generative model (see the module docstring for their meaning).

    Costs are accuracy points at otherwise-full configuration for the reference dataset; they
    are scaled for other datasets by ``(full − cheapest target) / reference_gap``.
    """

    n_samples: int = 5000
    lang_dim: int = 64
    token_dim: int = 64
    splits: tuple[float, float, float] = (0.7, 0.1, 0.2)
    datasets: tuple[DatasetSpec, ...] = DEFAULT_DATASETS
    knob_space: KnobSpace = field(default_factory=KnobSpace)
    # knob costs (points) for the reference dataset: blocks dropped 1..4; top-k in knob order
    block_costs_pts: tuple[float, ...] = (3.1, 5.4, 7.5, 18.4)
    topk_costs_pts: tuple[float, ...] = (5.5, 3.5, 2.0, 0.8, 0.0)
    reference_gap: float = 0.77 - 0.38
    robustness_slope: float = 0.5
    jitter_sd: float = 0.15
    vqa_band: float = 0.4
    anls_band: float = 1.0
    # observable features
    lang_r2_difficulty: float = 0.10
    lang_r2_vision_need: float = 0.35
    lang_r2_output_length: float = 0.0
    lang_dataset_norm: float = 3.0
    token_r2_difficulty: tuple[float, ...] = (0.20, 0.30, 0.40, 0.50, 0.60)
    token_r2_vision_need: tuple[float, ...] = (0.25, 0.30, 0.35, 0.40, 0.45)
    token_r2_robustness: tuple[float, ...] = (0.10, 0.20, 0.30, 0.40, 0.45)
    token_r2_tier_bonus: tuple[float, ...] = (0.0, 0.03, 0.06)
    token_dataset_norm: float = 3.0
    token_offset_norm: float = 4.0
    token_shared_noise: float = 0.5
    uncertainty_noise_sd: float = 0.6
    # outcomes
    wrong_extra_tokens_prob: float = 0.5
    latency_noise_sigma: float = 0.05
    nominal_output_tokens: int = 3
    # calibration
    calibration_samples: int = 16384
    calibration_seed: int = 20240924

    def __post_init__(self) -> None:
        ks = self.knob_space
        if not isinstance(ks, KnobSpace):
            raise ValueError(f"knob_space must be a KnobSpace, got {type(ks).__name__}")
        for name in ("n_samples", "lang_dim", "token_dim", "calibration_samples", "nominal_output_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if len(self.splits) != len(SPLITS) or any(f < 0 for f in self.splits) or abs(sum(self.splits) - 1) > 1e-6:
            raise ValueError(f"splits must be {len(SPLITS)} non-negative fractions summing to 1, got {self.splits}")
        if not self.datasets:
            raise ValueError("datasets must not be empty")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate dataset names {names}")
        for d in self.datasets:
            _check_dataset(d)
        n_lat_l, n_lat_t = 2 + len(self.datasets), 3 + len(self.datasets)
        if self.lang_dim < n_lat_l or self.token_dim < n_lat_t:
            raise ValueError(
                f"lang_dim must be >= {n_lat_l} and token_dim >= {n_lat_t} (one direction per latent and dataset), "
                f"got {self.lang_dim} and {self.token_dim}"
            )
        max_drop = max(ks.num_blocks - ks.block_options(p)[0] for p in ks.insertion_positions)
        if len(self.block_costs_pts) != max_drop:
            raise ValueError(
                f"block_costs_pts needs {max_drop} entries (1..{max_drop} blocks dropped), got {self.block_costs_pts}"
            )
        if len(self.topk_costs_pts) != len(ks.top_ks):
            raise ValueError(f"topk_costs_pts needs one entry per top-k {ks.top_ks}, got {self.topk_costs_pts}")
        P, T = len(ks.insertion_positions), len(ks.tiers)
        for name in ("token_r2_difficulty", "token_r2_vision_need", "token_r2_robustness"):
            v = getattr(self, name)
            if len(v) != P or not all(0 <= r < 1 for r in v):
                raise ValueError(f"{name} needs {P} values in [0, 1) (one per insertion position), got {v}")
        if len(self.token_r2_tier_bonus) != T:
            raise ValueError(f"token_r2_tier_bonus needs {T} values (one per tier), got {self.token_r2_tier_bonus}")
        for name in ("lang_r2_difficulty", "lang_r2_vision_need", "lang_r2_output_length"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1)")
        for name in ("reference_gap", "vqa_band", "anls_band"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("robustness_slope", "jitter_sd", "uncertainty_noise_sd", "latency_noise_sigma",
                     "lang_dataset_norm", "token_dataset_norm", "token_offset_norm"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0")
        if not 0 <= self.token_shared_noise <= 1 or not 0 <= self.wrong_extra_tokens_prob <= 1:
            raise ValueError("token_shared_noise and wrong_extra_tokens_prob must be in [0, 1]")

    # ------------------------------------------------------------------ derived
    def cost_scale(self, spec: DatasetSpec) -> float:
        """Factor applied to the reference knob costs for ``spec``: its gap over the reference gap."""
        return (spec.full_target - spec.cheapest_target) / self.reference_gap

    def replace(self, **changes: Any) -> "SyntheticParams":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists; ``knob_space`` its ``to_dict()``)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["knob_space"] = self.knob_space.to_dict()
        d["datasets"] = [dataclasses.asdict(s) for s in self.datasets]
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SyntheticParams":
        """Inverse of :meth:`to_dict` (e.g. from a cache's ``generator_params["params"]``)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown SyntheticParams fields {sorted(unknown)}")
        kw: dict[str, Any] = {}
        for k, v in d.items():
            if k == "knob_space":
                kw[k] = KnobSpace.from_dict(v)
            elif k == "datasets":
                specs = []
                for s in v:
                    s = dict(s)
                    s["image"] = ImageSizeSpec(**{**s["image"], "long_side_range": tuple(s["image"]["long_side_range"])})
                    for t in ("vision_need_beta", "prompt_tokens", "choice_probs"):
                        s[t] = tuple(s[t])
                    specs.append(DatasetSpec(**s))
                kw[k] = tuple(specs)
            elif isinstance(v, list):
                kw[k] = tuple(v)
            else:
                kw[k] = v
        return cls(**kw)


def _check_dataset(d: DatasetSpec) -> None:
    if not d.name.startswith(DATASET_PREFIX):
        raise ValueError(f"synthetic dataset names must start with {DATASET_PREFIX!r}, got {d.name!r}")
    if d.metric not in ("vqa_score", "mc", "anls"):
        raise ValueError(f"{d.name}: unknown metric {d.metric!r}")
    if not 0 < d.cheapest_target < d.full_target < 1:
        raise ValueError(f"{d.name}: targets must satisfy 0 < cheapest < full < 1")
    if not d.weight > 0 or min(d.vision_need_beta) <= 0 or d.difficulty_scale <= 0:
        raise ValueError(f"{d.name}: weight, vision_need_beta and difficulty_scale must be > 0")
    med, sig, lo, hi = d.prompt_tokens
    if not (med > 0 and sig >= 0 and 1 <= lo <= hi):
        raise ValueError(f"{d.name}: bad prompt_tokens {d.prompt_tokens}")
    im = d.image
    if not (im.long_side_median > 0 and 0 < im.long_side_range[0] <= im.long_side_range[1] and im.aspect_median >= 1
            and 0 <= im.portrait_frac <= 1 and im.long_side_sigma >= 0 and im.aspect_sigma >= 0):
        raise ValueError(f"{d.name}: bad image spec {im}")
    if d.output_extra_mean < 0 or d.output_max < 1:
        raise ValueError(f"{d.name}: bad output length spec")
    if d.metric == "mc":
        if len(d.choice_probs) != 4 or any(p < 0 for p in d.choice_probs) or abs(sum(d.choice_probs) - 1) > 1e-6:
            raise ValueError(f"{d.name}: mc needs choice_probs for 2, 3, 4, 5 choices summing to 1")


def select_datasets(names: Sequence[str], base: Sequence[DatasetSpec] = DEFAULT_DATASETS) -> tuple[DatasetSpec, ...]:
    """Dataset specs by name, ``"textvqa"`` or ``"synthetic-textvqa"``, optionally ``name:weight``."""
    by_name = {s.name: s for s in base}
    out = []
    for item in names:
        name, _, w = str(item).partition(":")
        full = name if name.startswith(DATASET_PREFIX) else DATASET_PREFIX + name
        if full not in by_name:
            raise ValueError(f"unknown synthetic dataset {name!r}; known: {sorted(by_name)}")
        spec = by_name[full]
        if w:
            try:
                spec = dataclasses.replace(spec, weight=float(w))
            except ValueError:
                raise ValueError(f"bad weight in {item!r}") from None
        out.append(spec)
    return tuple(out)


# ---------------------------------------------------------------------------------- output type
@dataclass
class SyntheticData:
    """Generated rows ``rows`` of a SYNTHETIC cache: exactly the schema's fields, in memory.

    Shapes: n = ``rows.size``, T tiers, P insertion positions, C configurations.

    Sample fields: ``id`` str (n,), ``dataset`` int16 (n,), ``split`` int8 (n,), ``question`` /
    ``answers`` str (n,) (answers are JSON text), ``prompt_tokens`` int32 (n,), ``crops`` and
    ``vision_tokens`` int32 (n, T), ``lang_feature`` float32 (n, Dl), ``latency_token`` float16
    (n, T, P, Dt), ``uncertainty`` float32 (n, 2). Outcome fields: ``score`` float32 (n, C) in
    [0, 1], ``output_tokens`` int32 (n, C), ``measured_ms`` float32 (n, C, 3) (vision / prefill /
    decode total, ms; estimator prediction × noise: synthetic).

    Root-attribute material: ``knob_space``, ``datasets``, ``metrics``, ``generator_params``.
    ``latents``: the hidden ground truth (never written): ``difficulty``, ``vision_need``,
    ``robustness``, ``image_height``, ``image_width`` (n,) and ``q`` float32 (n, C), the
    correctness probability ``sigmoid(x)`` incl. jitter.
    """

    knob_space: KnobSpace
    datasets: tuple[str, ...]
    metrics: dict[str, str]
    generator_params: dict[str, Any]
    rows: np.ndarray
    id: np.ndarray
    dataset: np.ndarray
    split: np.ndarray
    question: np.ndarray
    answers: np.ndarray
    prompt_tokens: np.ndarray
    crops: np.ndarray
    vision_tokens: np.ndarray
    lang_feature: np.ndarray
    latency_token: np.ndarray
    uncertainty: np.ndarray
    score: np.ndarray
    output_tokens: np.ndarray
    measured_ms: np.ndarray
    latents: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    SAMPLE_FIELDS = ("id", "dataset", "split", "question", "answers", "prompt_tokens", "crops", "vision_tokens",
                     "lang_feature", "latency_token", "uncertainty")

    def sample_fields(self) -> dict[str, np.ndarray]:
        """The sample-table fields as ``CacheWriter.write_samples`` takes them."""
        return {k: getattr(self, k) for k in self.SAMPLE_FIELDS}


# ---------------------------------------------------------------------------------- random draws
def _rng(seed: int, *words: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *[int(w) for w in words]]))


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _draw_requests(rng: np.random.Generator, specs: Sequence[DatasetSpec], ds: np.ndarray) -> dict[str, np.ndarray]:
    """Per-request latents and sizes for requests of dataset indices ``ds`` (n,), in a fixed
    draw order (the same function serves generation and the calibration sample)."""
    n = ds.size

    def col(getter: Any) -> np.ndarray:
        return np.array([getter(s) for s in specs], dtype=np.float64)[ds]

    delta = rng.standard_normal(n)
    rho = rng.standard_normal(n)
    nu = rng.beta(col(lambda s: s.vision_need_beta[0]), col(lambda s: s.vision_need_beta[1]))
    z_long, z_aspect = rng.standard_normal(n), rng.standard_normal(n)
    portrait = rng.random(n) < col(lambda s: s.image.portrait_frac)
    long_side = np.clip(col(lambda s: s.image.long_side_median) * np.exp(col(lambda s: s.image.long_side_sigma) * z_long),
                        col(lambda s: s.image.long_side_range[0]), col(lambda s: s.image.long_side_range[1]))
    aspect = np.clip(col(lambda s: s.image.aspect_median) * np.exp(col(lambda s: s.image.aspect_sigma) * z_aspect), 1.0, 3.0)
    short_side = long_side / aspect
    height = np.rint(np.where(portrait, long_side, short_side)).astype(np.int64)
    width = np.rint(np.where(portrait, short_side, long_side)).astype(np.int64)
    z_prompt = rng.standard_normal(n)
    prompt = np.clip(np.rint(col(lambda s: s.prompt_tokens[0]) * np.exp(col(lambda s: s.prompt_tokens[1]) * z_prompt)),
                     col(lambda s: s.prompt_tokens[2]), col(lambda s: s.prompt_tokens[3])).astype(np.int64)
    base_out = 1 + np.minimum(rng.poisson(col(lambda s: s.output_extra_mean)), col(lambda s: s.output_max) - 1).astype(np.int64)
    u_choice = rng.random(n)
    n_choices = np.ones(n, dtype=np.int64)
    for j, s in enumerate(specs):
        if s.choice_probs:
            sel = ds == j
            n_choices[sel] = 2 + np.searchsorted(np.cumsum(s.choice_probs)[:-1], u_choice[sel], side="right")
    u = rng.random(n)
    v = rng.random(n)
    w_extra = rng.random(n)
    w_len = rng.random(n)
    return {"delta": delta, "rho": rho, "nu": nu, "height": height, "width": width, "prompt_tokens": prompt,
            "base_output": base_out, "n_choices": n_choices, "u": u, "v": v, "w_extra": w_extra, "w_len": w_len}


# ---------------------------------------------------------------------------------- calibration
def _cost_tables(params: SyntheticParams, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    scale = params.cost_scale(spec)
    return (np.asarray(params.block_costs_pts) * scale / 100.0, np.asarray(params.topk_costs_pts) * scale / 100.0)


@lru_cache(maxsize=16)
def calibrate(params: SyntheticParams) -> dict[str, DatasetCalibration]:
    """Solve every dataset's ``β``, block / top-k penalties and vision penalty (see the module
    docstring). Deterministic: depends on ``params`` only (not on the data seed). Cached."""
    ks = params.knob_space
    out: dict[str, DatasetCalibration] = {}
    n = params.calibration_samples
    for spec in params.datasets:
        rng = _rng(params.calibration_seed, zlib.crc32(spec.name.encode()))
        lat = _draw_requests(rng, (spec,), np.zeros(n, dtype=np.int64))
        _, tokens, _ = crops_and_tokens(lat["height"], lat["width"], ks.crops)
        tok = tokens.astype(np.float64)
        deficit = np.log(tok[:, -1:] / tok)
        jitter = params.jitter_sd * rng.standard_normal((n, 2 + len(params.block_costs_pts) + len(ks.top_ks)))
        sample = CalibrationSample(delta=lat["delta"], nu=lat["nu"], rho=lat["rho"], deficit=deficit,
                                   n_choices=lat["n_choices"].astype(np.float64), jitter=jitter)
        block_costs, topk_costs = _cost_tables(params, spec)
        out[spec.name] = solve_dataset(
            sample, name=spec.name, metric=spec.metric, sigma=spec.difficulty_scale, full_target=spec.full_target,
            cheapest_target=spec.cheapest_target, block_costs=block_costs, topk_costs=topk_costs,
            cheapest_topk_index=ks.top_ks.index(ks.cheapest_config.top_k), robustness_slope=params.robustness_slope,
            vqa_band=params.vqa_band, anls_band=params.anls_band,
        )
    return out


def generator_params(params: SyntheticParams, seed: int) -> dict[str, Any]:
    """The ``generator_params`` root attribute: parameters, seed, targets, solved calibration, notes."""
    seed = _check_seed(seed)
    cal = calibrate(params)
    return {
        "generator": GENERATOR_NAME,
        "generator_version": GENERATOR_VERSION,
        "synthetic": True,
        "seed": seed,
        "gen_block": GEN_BLOCK,
        "params": params.to_dict(),
        "targets": {s.name: {"metric": s.metric, "full": s.full_target, "cheapest": s.cheapest_target,
                             "source": s.targets_source, "knob_cost_scale": params.cost_scale(s)}
                    for s in params.datasets},
        "calibration": {
            "method": "bisection on the expected mean score of a fixed Monte-Carlo latent sample "
                      f"({params.calibration_samples} per dataset, seed {params.calibration_seed})",
            "datasets": {k: v.to_dict() for k, v in cal.items()},
        },
        "notes": [
            "SYNTHETIC: outcomes come from the generative model documented in cache/synthetic.py, not from MolmoE-1B.",
            "measured_ms is the latency estimator's prediction times lognormal(0, "
            f"{params.latency_noise_sigma}) noise per phase: synthetic, not measured.",
            "targets marked ASSUMPTION are not measured on MolmoE-1B.",
        ],
    }


# ---------------------------------------------------------------------------------- assignment
def _largest_remainder(n: int, weights: np.ndarray) -> np.ndarray:
    exact = n * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    rest = n - int(counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:rest]] += 1
    return counts


def _assign(params: SyntheticParams, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Dataset (int16) and split (int8) of every request: exact shares, seeded order, stratified splits."""
    n = params.n_samples
    rng = _rng(seed, _STREAM_ASSIGN)
    counts = _largest_remainder(n, np.array([s.weight for s in params.datasets], dtype=np.float64))
    dataset = rng.permutation(np.repeat(np.arange(len(params.datasets)), counts)).astype(np.int16)
    split = np.empty(n, dtype=np.int8)
    fracs = np.asarray(params.splits, dtype=np.float64)
    for j in range(len(params.datasets)):
        rows = rng.permutation(np.flatnonzero(dataset == j))
        bounds = np.rint(np.cumsum(fracs) * rows.size).astype(np.int64)
        bounds[-1] = rows.size
        start = 0
        for s, stop in enumerate(bounds):
            split[rows[start:stop]] = s
            start = stop
    return dataset, split


@dataclass(frozen=True)
class _Structure:
    lang_dirs: np.ndarray  # (2 + n_ds, Dl) orthonormal: difficulty, vision need, datasets
    token_dirs: np.ndarray  # (3 + n_ds, Dt) orthonormal: difficulty, vision need, robustness, datasets
    token_offsets: np.ndarray  # (T, P, Dt)


def _orthonormal(rng: np.random.Generator, dim: int, k: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((dim, k)))
    return (q * np.sign(np.diag(r))).T  # (k, dim), sign-fixed so that the result is deterministic


def _structure(params: SyntheticParams, seed: int) -> _Structure:
    rng = _rng(seed, _STREAM_STRUCTURE)
    nd = len(params.datasets)
    T, P = len(params.knob_space.tiers), len(params.knob_space.insertion_positions)
    lang_dirs = _orthonormal(rng, params.lang_dim, 2 + nd)
    token_dirs = _orthonormal(rng, params.token_dim, 3 + nd)
    off = rng.standard_normal((T, P, params.token_dim))
    off *= params.token_offset_norm / np.linalg.norm(off, axis=-1, keepdims=True)
    return _Structure(lang_dirs, token_dirs, off)


def _length_direction(lang_dirs: np.ndarray, seed: int) -> np.ndarray:
    """(Dl,) unit direction orthogonal to ``lang_dirs`` for the opt-in output-length signal, from its
    own random stream (so the default structure and draws stay exactly as they are)."""
    v = _rng(seed, _STREAM_LENGTH_DIR).standard_normal(lang_dirs.shape[1])
    v -= lang_dirs.T @ (lang_dirs @ v)
    return v / np.linalg.norm(v)


def _log_length_moments(extra_mean: float, max_len: int) -> tuple[float, float]:
    """Mean and sd of log(1 + min(Poisson(extra_mean), max_len - 1))."""
    from scipy.stats import poisson

    k = np.arange(max_len)
    pmf = poisson.pmf(k, extra_mean)
    pmf[-1] += 1.0 - pmf.sum()  # the clipped tail
    logs = np.log1p(k)
    mu = float(pmf @ logs)
    return mu, float(np.sqrt(max(pmf @ (logs - mu) ** 2, 0.0)))


def _amp(r2: np.ndarray | float) -> np.ndarray:
    """Signal amplitude giving linear-probe R² ``r2`` against unit-variance noise."""
    r2 = np.asarray(r2, dtype=np.float64)
    return np.sqrt(r2 / (1.0 - r2))


# ---------------------------------------------------------------------------------- generation
def _config_arrays(ks: KnobSpace) -> dict[str, np.ndarray]:
    t = ks.config_table()
    nontier = {}
    j_of = np.empty(len(ks), dtype=np.int64)
    for c, cfg in enumerate(ks.configs):
        j_of[c] = nontier.setdefault((cfg.p, cfg.top_k, cfg.blocks), len(nontier))
    n_drop = np.array([len(ks.plan(c).skipped) for c in range(len(ks))], dtype=np.int64)
    p_min = ks.insertion_positions[0]
    coverage = (ks.num_blocks - t["p"]) / (ks.num_blocks - p_min)
    slots = t["expert_slots"].astype(np.float64)
    s_full, s_cheap = slots.max(), slots.min()
    slot_reduction = (s_full - slots) / max(s_full - s_cheap, 1.0)
    return {"tier": t["tier"], "topk_idx": np.searchsorted(ks.top_ks, t["top_k"]), "n_drop": n_drop,
            "coverage": coverage, "nontier": j_of, "n_nontier": np.int64(len(nontier)), "slot_reduction": slot_reduction,
            "p_idx": np.searchsorted(ks.insertion_positions, t["p"])}


def _entropy_margin(conf: np.ndarray, n_alt: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Entropy (nats) and top-1 − top-2 margin of a distribution with top-1 ``conf``, 60 % of
    the rest on the runner-up and the remainder spread evenly over ``n_alt − 1`` tokens."""
    p1 = np.clip(conf, 1e-9, 1 - 1e-9)
    p2 = 0.6 * (1 - p1)
    pr = 0.4 * (1 - p1) / (n_alt - 1)
    ent = -(p1 * np.log(p1) + p2 * np.log(p2) + (n_alt - 1) * pr * np.log(pr))
    return ent, np.maximum(p1 - p2, 0.0)


def _block_data(params: SyntheticParams, seed: int, block: int, rows: np.ndarray, dataset: np.ndarray,
                split: np.ndarray, structure: _Structure, cal: Mapping[str, DatasetCalibration],
                cfg: Mapping[str, np.ndarray], estimator: "LatencyEstimator") -> dict[str, np.ndarray]:
    """All fields of the requests ``rows`` (one random-number block)."""
    from model_runtime.latency_estimator import predict_grid

    ks = params.knob_space
    specs = params.datasets
    n = rows.size
    T, P, C = len(ks.tiers), len(ks.insertion_positions), len(ks)
    ds = dataset.astype(np.int64)
    rng = _rng(seed, _STREAM_BLOCK, block)
    lat = _draw_requests(rng, specs, ds)
    jitter_nt = params.jitter_sd * rng.standard_normal((n, T, int(cfg["n_nontier"])))
    lang_noise = rng.standard_normal((n, params.lang_dim))
    tok_shared = rng.standard_normal((n, params.token_dim))
    tok_fresh = rng.standard_normal((n, T, P, params.token_dim))
    unc_noise = params.uncertainty_noise_sd * rng.standard_normal((n, 2))
    lat_noise = params.latency_noise_sigma * rng.standard_normal((n, C, 3))

    # ---- images and tokens
    crops, vtok, tiling = crops_and_tokens(lat["height"], lat["width"], ks.crops)
    tok = vtok.astype(np.float64)
    deficit_raw = np.log(tok[:, -1:] / tok)  # (n, T), 0 at the highest tier
    # identical tiling ⇒ identical input ⇒ identical jitter (from the highest tier down)
    for t in range(T - 2, -1, -1):
        same = np.all(tiling[:, t] == tiling[:, t + 1], axis=-1)
        jitter_nt[same, t] = jitter_nt[same, t + 1]

    # ---- per-request calibration values
    cal_list = [cal[s.name] for s in specs]
    beta = np.array([c.beta for c in cal_list])[ds]
    sigma = np.array([s.difficulty_scale for s in specs])[ds]
    vis_pen = np.array([c.vision_penalty for c in cal_list])[ds]
    dnorm = np.array([c.deficit_norm for c in cal_list])[ds]
    block_pen = np.array([c.block_penalty for c in cal_list])  # (nd, max_drop + 1)
    topk_pen = np.array([c.topk_penalty for c in cal_list])  # (nd, K)
    deficit = deficit_raw / dnorm[:, None]
    gain = robustness_gain(lat["rho"], params.robustness_slope)

    tier_c = cfg["tier"]
    x = (beta[:, None] - (sigma * lat["delta"])[:, None]
         - (lat["nu"] * vis_pen)[:, None] * deficit[:, tier_c]
         - gain[:, None] * (topk_pen[ds][:, cfg["topk_idx"]] * cfg["coverage"][None, :] + block_pen[ds][:, cfg["n_drop"]])
         + jitter_nt[:, tier_c, cfg["nontier"]])
    m = x - logit(lat["u"])[:, None]
    score = np.empty((n, C), dtype=np.float64)
    for j, s in enumerate(specs):
        sel = ds == j
        if not np.any(sel):
            continue
        guess = (lat["v"][sel] < 1.0 / lat["n_choices"][sel])[:, None]
        score[sel] = score_from_margin(s.metric, m[sel], vqa_band=params.vqa_band, anls_band=params.anls_band,
                                       guess_correct=guess)

    # ---- output tokens: base, +1-3 when wrong at a reduced configuration (common random numbers)
    # reduction r(i, c): half resolution deficit (0 where the tiling equals the high tier's, so an
    # identical input keeps identical outcomes), half expert-slot reduction
    reduction = 0.5 * np.minimum(deficit[:, tier_c], 1.0) + 0.5 * cfg["slot_reduction"][None, :]
    wrong = m <= 0
    extra = np.where(wrong & (lat["w_extra"][:, None] < params.wrong_extra_tokens_prob * reduction),
                     1 + np.floor(3 * lat["w_len"]).astype(np.int64)[:, None], 0)
    output_tokens = (lat["base_output"][:, None] + extra).astype(np.int32)

    # ---- latency: estimator prediction × lognormal noise (SYNTHETIC, not measured)
    pred = predict_grid(estimator, ks, crops=crops, vision_tokens=vtok, prompt_tokens=lat["prompt_tokens"],
                        output_tokens=output_tokens)
    measured = np.stack([pred["vision_ms"], pred["prefill_ms"], pred["decode_ms"]], axis=-1) * np.exp(lat_noise)

    # ---- uncertainty at the cheapest configuration (no jitter)
    c_cheap = ks.index(ks.cheapest_config)
    x_cheap = x[:, c_cheap] - jitter_nt[:, tier_c[c_cheap], cfg["nontier"][c_cheap]]
    ent, _ = _entropy_margin(sigmoid(x_cheap + unc_noise[:, 0]))
    _, margin = _entropy_margin(sigmoid(x_cheap + unc_noise[:, 1]))
    uncertainty = np.stack([ent, margin], axis=1)

    # ---- language feature
    nu_mean = np.array([s.vision_need_beta[0] / sum(s.vision_need_beta) for s in specs])[ds]
    a_, b_ = (np.array([s.vision_need_beta[i] for s in specs])[ds] for i in (0, 1))
    nu_sd = np.sqrt(a_ * b_ / ((a_ + b_) ** 2 * (a_ + b_ + 1)))
    nu_std = (lat["nu"] - nu_mean) / nu_sd
    L = structure.lang_dirs
    lang = (params.lang_dataset_norm * L[2 + ds]
            + _amp(params.lang_r2_difficulty) * lat["delta"][:, None] * L[0]
            + _amp(params.lang_r2_vision_need) * nu_std[:, None] * L[1]
            + lang_noise)
    if params.lang_r2_output_length > 0:  # opt-in question → answer-length signal (0 by default)
        # log base length standardised by its dataset's population moments (the dataset mean is
        # already visible through the dataset direction); exact moments of 1 + min(Poisson(λ), max - 1)
        z = np.zeros(len(ds))
        log_len = np.log(lat["base_output"].astype(np.float64))
        for d, spec in enumerate(specs):
            m = ds == d
            if m.any():
                mu, sd = _log_length_moments(spec.output_extra_mean, spec.output_max)
                z[m] = (log_len[m] - mu) / sd if sd > 0 else 0.0
        lang = lang + _amp(params.lang_r2_output_length) * z[:, None] * _length_direction(L, seed)

    # ---- latency tokens (n, T, P, Dt)
    D = structure.token_dirs
    bonus = np.asarray(params.token_r2_tier_bonus)[:, None]  # (T, 1)

    def amp_tp(r2_p: Sequence[float]) -> np.ndarray:
        return _amp(np.clip(np.asarray(r2_p)[None, :] + bonus, 0.0, 0.95))  # (T, P)

    a_d, a_n, a_r = amp_tp(params.token_r2_difficulty), amp_tp(params.token_r2_vision_need), amp_tp(params.token_r2_robustness)
    c_sh = params.token_shared_noise
    tokens = (structure.token_offsets[None]
              + params.token_dataset_norm * D[3 + ds][:, None, None, :]
              + (lat["delta"][:, None, None] * a_d[None])[..., None] * D[0]
              + (nu_std[:, None, None] * a_n[None])[..., None] * D[1]
              + (lat["rho"][:, None, None] * a_r[None])[..., None] * D[2]
              + np.sqrt(c_sh) * tok_shared[:, None, None, :] + np.sqrt(1 - c_sh) * tok_fresh)

    # ---- strings
    names = [s.name for s in specs]
    ids = np.array([f"syn-{r:06d}" for r in rows], dtype=object)
    question = np.array([f"[SYNTHETIC] {names[d]} request syn-{r:06d}: placeholder question, no real text"
                         for r, d in zip(rows, ds)], dtype=object)
    answers = np.array([json.dumps(["[SYNTHETIC] placeholder answer"])] * n, dtype=object)
    return {
        "id": ids, "dataset": dataset.astype(np.int16), "split": split.astype(np.int8), "question": question,
        "answers": answers, "prompt_tokens": lat["prompt_tokens"].astype(np.int32), "crops": crops.astype(np.int32),
        "vision_tokens": vtok.astype(np.int32), "lang_feature": lang.astype(np.float32),
        "latency_token": tokens.astype(np.float16), "uncertainty": uncertainty.astype(np.float32),
        "score": score.astype(np.float32), "output_tokens": output_tokens,
        "measured_ms": measured.astype(np.float32),
        "_difficulty": lat["delta"], "_vision_need": lat["nu"], "_robustness": lat["rho"],
        "_image_height": lat["height"], "_image_width": lat["width"], "_q": sigmoid(x).astype(np.float32),
    }


@dataclass(frozen=True)
class _Context:
    """What every row range of one ``(params, seed)`` shares (computed once per build)."""

    params: SyntheticParams
    seed: int
    estimator: "LatencyEstimator"
    generator_params: dict[str, Any]
    calibration: Mapping[str, DatasetCalibration]
    dataset: np.ndarray
    split: np.ndarray
    structure: _Structure
    cfg: Mapping[str, np.ndarray]


def _context(params: SyntheticParams, seed: int, estimator: "LatencyEstimator | None") -> _Context:
    seed = _check_seed(seed)
    if not isinstance(params, SyntheticParams):
        raise ValueError(f"params must be a SyntheticParams, got {type(params).__name__}")
    if estimator is None:
        from model_runtime.latency_estimator import LatencyEstimator

        estimator = LatencyEstimator.default()
    dataset, split = _assign(params, seed)
    return _Context(params, seed, estimator, generator_params(params, seed), calibrate(params), dataset, split,
                    _structure(params, seed), _config_arrays(params.knob_space))


def _generate_rows(ctx: _Context, start: int, stop: int) -> SyntheticData:
    params = ctx.params
    N = params.n_samples
    if not 0 <= start <= stop <= N:
        raise ValueError(f"row range [{start}, {stop}) outside [0, {N}]")
    parts: list[dict[str, np.ndarray]] = []
    for block in range(start // GEN_BLOCK, (stop + GEN_BLOCK - 1) // GEN_BLOCK):
        b0, b1 = block * GEN_BLOCK, min(N, (block + 1) * GEN_BLOCK)
        part = _block_data(params, ctx.seed, block, np.arange(b0, b1), ctx.dataset[b0:b1], ctx.split[b0:b1],
                           ctx.structure, ctx.calibration, ctx.cfg, ctx.estimator)
        lo, hi = max(start, b0) - b0, min(stop, b1) - b0
        parts.append({k: v[lo:hi] for k, v in part.items()})
    ks = params.knob_space
    T, P, C = len(ks.tiers), len(ks.insertion_positions), len(ks)
    empty = {"lang_feature": ((0, params.lang_dim), np.float32), "latency_token": ((0, T, P, params.token_dim), np.float16),
             "crops": ((0, T), np.int32), "vision_tokens": ((0, T), np.int32), "uncertainty": ((0, 2), np.float32),
             "score": ((0, C), np.float32), "output_tokens": ((0, C), np.int32), "measured_ms": ((0, C, 3), np.float32),
             "_q": ((0, C), np.float32), "id": ((0,), object), "question": ((0,), object), "answers": ((0,), object),
             "dataset": ((0,), np.int16), "split": ((0,), np.int8), "prompt_tokens": ((0,), np.int32)}

    def cat(k: str) -> np.ndarray:
        if parts:
            return np.concatenate([p[k] for p in parts], axis=0)
        shape, dtype = empty.get(k, ((0,), np.float64))
        return np.zeros(shape, dtype=dtype)

    fields = {k: cat(k) for k in (*SyntheticData.SAMPLE_FIELDS, "score", "output_tokens", "measured_ms")}
    latents = {k[1:]: cat(k) for k in ("_difficulty", "_vision_need", "_robustness", "_image_height", "_image_width", "_q")}
    return SyntheticData(
        knob_space=ks, datasets=tuple(s.name for s in params.datasets),
        metrics={s.name: s.metric for s in params.datasets}, generator_params=ctx.generator_params,
        rows=np.arange(start, stop, dtype=np.int64), latents=latents, **fields,
    )


def generate(params: SyntheticParams, seed: int, *, estimator: "LatencyEstimator | None" = None,
             start: int = 0, stop: int | None = None) -> SyntheticData:
    """Generate rows ``start..stop`` (default: all ``params.n_samples``) of a SYNTHETIC cache.

    Pure and deterministic: the same ``(params, seed)`` gives byte-identical arrays, and any row
    range equals the same rows of the whole (random numbers are drawn per :data:`GEN_BLOCK`
    block). ``estimator`` (default :meth:`LatencyEstimator.default`) prices the synthetic
    "measured" latencies.
    """
    ctx = _context(params, seed, estimator)
    return _generate_rows(ctx, int(start), params.n_samples if stop is None else int(stop))


# ---------------------------------------------------------------------------------- writing
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
    with writer as w:
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


# ---------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m cache.synthetic",
        description="Write a SYNTHETIC outcome cache (documented generative model, see cache/synthetic.py) "
                    "and print its calibration table.",
    )
    ap.add_argument("--out", required=True, help="HDF5 file to write")
    ap.add_argument("--samples", type=int, default=5000, help="number of requests (default 5000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lang-dim", type=int, default=64)
    ap.add_argument("--token-dim", type=int, default=64)
    ap.add_argument("--lang-r2-output-length", type=float, default=0.0,
                    help="opt-in: linear-probe R² of the request's answer length (within its dataset) in the "
                         "language feature; 0 (default) = no such signal, as calibrated")
    ap.add_argument("--splits", type=float, nargs=3, default=(0.7, 0.1, 0.2), metavar=("TRAIN", "VAL", "TEST"))
    ap.add_argument("--datasets", nargs="+", default=None,
                    help="subset of textvqa vqav2 okvqa scienceqa docvqa, optionally name:weight")
    ap.add_argument("--chunk", type=int, default=1024, help="requests per journaled chunk")
    ap.add_argument("--estimator", default=None, help="latency-estimator JSON (default: the packaged one)")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted build")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from cache.reader import OutcomeCache
    from model_runtime.latency_estimator import LatencyEstimator

    try:
        kw: dict[str, Any] = dict(n_samples=args.samples, lang_dim=args.lang_dim, token_dim=args.token_dim,
                                  splits=tuple(args.splits), lang_r2_output_length=args.lang_r2_output_length)
        if args.datasets:
            kw["datasets"] = select_datasets(args.datasets)
        params = SyntheticParams(**kw)
        est = LatencyEstimator.load(args.estimator) if args.estimator else None
        t0 = time.perf_counter()
        path = write_synthetic_cache(args.out, params, args.seed, est, overwrite=args.overwrite, chunk=args.chunk,
                                     resume=args.resume, log=None if args.quiet else (lambda s: print(s, file=sys.stderr)))
        dt = time.perf_counter() - t0
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with OutcomeCache(path, tokens="lazy") as oc:
        lo, hi = oc.budget_range_ms or (float("nan"), float("nan"))
        print(f"wrote SYNTHETIC outcome cache {path} ({params.n_samples} requests, seed {args.seed}) in {dt:.1f} s; "
              f"budget range {lo:.1f}-{hi:.1f} ms")
        print(calibration_report(oc))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
