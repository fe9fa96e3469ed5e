"""Parameters of the SYNTHETIC generative model and the per-request draws they define.

The model is documented in :mod:`cache.synthetic`; this module holds its parameters
(:class:`SyntheticParams`, :class:`DatasetSpec`, :class:`ImageSizeSpec`, the five default
datasets), the constants that identify the generator, and the seeded random draws of a request's
latents and sizes (:func:`_draw_requests`), which generation (:mod:`cache.synthetic_model`) and
calibration (:mod:`cache.synthetic_calibration`) share. numpy only.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from cache.schema import SPLITS
from model_runtime.knob_space import KnobSpace

GENERATOR_NAME = "synthetic"
MODEL_ID = "synthetic"
#: Bumped whenever the generative model changes what a (params, seed) pair produces.
GENERATOR_VERSION = 2  # 2: low-rank jitter (jitter_iid_share < 1)
#: Requests per random-number block (changing it changes every generated value).
GEN_BLOCK = 512
DATASET_PREFIX = "synthetic-"
#: the score models of :func:`cache.synthetic_calibration.score_from_margin`
METRICS: tuple[str, ...] = ("vqa_score", "mc", "anls", "exact")

# random-number streams (SeedSequence entropy words after the seed)
_STREAM_ASSIGN, _STREAM_STRUCTURE, _STREAM_BLOCK, _STREAM_LENGTH_DIR, _STREAM_JITTER = 1, 2, 3, 4, 5

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
        metric: ``vqa_score``, ``mc``, ``anls`` or ``exact`` (no partial credit).
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
        output_pmf: probabilities of base output lengths 1, 2, ..., ``output_max`` (an empirical
            length distribution, e.g. fitted to a live cache whose tasks answer in a fixed number
            of tokens); empty (default): ``1 + Poisson(output_extra_mean)`` capped at ``output_max``.
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
    output_pmf: tuple[float, ...] = ()


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
    # share of the jitter's variance drawn independently per (request, configuration); the rest
    # is per-request factors of each knob's value, correlated ``jitter_knob_corr`` between
    # neighbouring values (1.0: every configuration independent, the generator before this option)
    jitter_iid_share: float = 0.25
    jitter_knob_corr: float = 0.7
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
        for name in ("jitter_iid_share", "jitter_knob_corr"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
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
                    for t in ("vision_need_beta", "prompt_tokens", "choice_probs", "output_pmf"):
                        if t in s:  # output_pmf is absent from caches written before it existed
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
    if d.metric not in METRICS:
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
    if d.output_pmf and (len(d.output_pmf) != d.output_max or any(p < 0 for p in d.output_pmf)
                         or abs(sum(d.output_pmf) - 1) > 1e-6):
        raise ValueError(f"{d.name}: output_pmf must hold output_max ({d.output_max}) probabilities >= 0 summing to 1")
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


# ---------------------------------------------------------------------------------- random draws
def _rng(seed: int, *words: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *[int(w) for w in words]]))


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def image_sizes(z_long: np.ndarray, z_aspect: np.ndarray, u_portrait: np.ndarray, *, long_side_median: Any,
                long_side_sigma: Any, long_side_lo: Any, long_side_hi: Any, aspect_median: Any, aspect_sigma: Any,
                portrait_frac: Any) -> tuple[np.ndarray, np.ndarray]:
    """(height, width) int64 pixels of images drawn from :class:`ImageSizeSpec` parameters (scalars or
    per-request arrays) with standard normals ``z_long``, ``z_aspect`` and uniforms ``u_portrait``."""
    portrait = u_portrait < portrait_frac
    long_side = np.clip(long_side_median * np.exp(long_side_sigma * z_long), long_side_lo, long_side_hi)
    aspect = np.clip(aspect_median * np.exp(aspect_sigma * z_aspect), 1.0, 3.0)
    short_side = long_side / aspect
    height = np.rint(np.where(portrait, long_side, short_side)).astype(np.int64)
    width = np.rint(np.where(portrait, short_side, long_side)).astype(np.int64)
    return height, width


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
    u_portrait = rng.random(n)
    height, width = image_sizes(
        z_long, z_aspect, u_portrait, long_side_median=col(lambda s: s.image.long_side_median),
        long_side_sigma=col(lambda s: s.image.long_side_sigma), long_side_lo=col(lambda s: s.image.long_side_range[0]),
        long_side_hi=col(lambda s: s.image.long_side_range[1]), aspect_median=col(lambda s: s.image.aspect_median),
        aspect_sigma=col(lambda s: s.image.aspect_sigma), portrait_frac=col(lambda s: s.image.portrait_frac))
    z_prompt = rng.standard_normal(n)
    prompt = np.clip(np.rint(col(lambda s: s.prompt_tokens[0]) * np.exp(col(lambda s: s.prompt_tokens[1]) * z_prompt)),
                     col(lambda s: s.prompt_tokens[2]), col(lambda s: s.prompt_tokens[3])).astype(np.int64)
    base_out = 1 + np.minimum(rng.poisson(col(lambda s: s.output_extra_mean)), col(lambda s: s.output_max) - 1).astype(np.int64)
    if any(s.output_pmf for s in specs):
        # empirical length distributions draw from a child stream, so that every other draw (and
        # every cache without one) stays exactly as it was
        u_len = np.random.default_rng(rng.bit_generator.seed_seq.spawn(1)[0]).random(n)
        for j, s in enumerate(specs):
            if s.output_pmf:
                sel = ds == j
                base_out[sel] = 1 + np.searchsorted(np.cumsum(s.output_pmf)[:-1], u_len[sel], side="right")
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
