"""The SYNTHETIC generative model: params + seed → the schema's arrays (:func:`generate`).

The model is documented in :mod:`cache.synthetic`. Generation is pure and deterministic: random
numbers come per block of :data:`~cache.synthetic_params.GEN_BLOCK` requests, so any row range
regenerates the same values as the whole. numpy only (the latency estimator is imported inside
the functions that price configurations).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from cache.molmo_tiling import crops_and_tokens
from cache.synthetic_calibration import (
    DatasetCalibration,
    calibrate,
    logit,
    robustness_gain,
    score_from_margin,
    sigmoid,
)
from cache.synthetic_params import (
    _STREAM_ASSIGN,
    _STREAM_BLOCK,
    _STREAM_JITTER,
    _STREAM_LENGTH_DIR,
    _STREAM_STRUCTURE,
    GEN_BLOCK,
    GENERATOR_NAME,
    GENERATOR_VERSION,
    SyntheticParams,
    _check_seed,
    _draw_requests,
    _rng,
)
from model_runtime.knob_space import KnobSpace

if TYPE_CHECKING:  # pragma: no cover - typing only
    from model_runtime.latency_estimator import LatencyEstimator


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


def _log_length_moments(extra_mean: float, max_len: int, output_pmf: Sequence[float] = ()) -> tuple[float, float]:
    """Mean and sd of log(1 + min(Poisson(extra_mean), max_len - 1)), or of log L for L drawn from
    ``output_pmf`` over 1..max_len when given."""
    from scipy.stats import poisson

    k = np.arange(max_len)
    if output_pmf:
        pmf = np.asarray(output_pmf, dtype=np.float64)
    else:
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
    p_idx = np.searchsorted(ks.insertion_positions, t["p"])
    topk_idx = np.searchsorted(ks.top_ks, t["top_k"])
    _, blocks_idx = np.unique(t["blocks"], return_inverse=True)
    # each non-tier configuration's (p, top-k, blocks) value indices, for the knob factors of the jitter
    nontier_knobs = np.empty((len(nontier), 3), dtype=np.int64)
    nontier_knobs[j_of] = np.stack([p_idx, topk_idx, blocks_idx], axis=1)
    return {"tier": t["tier"], "topk_idx": topk_idx, "n_drop": n_drop,
            "coverage": coverage, "nontier": j_of, "n_nontier": np.int64(len(nontier)), "slot_reduction": slot_reduction,
            "p_idx": p_idx, "nontier_knobs": nontier_knobs}


def _ar1_factors(rng: np.random.Generator, n: int, n_values: int, corr: float) -> np.ndarray:
    """(n, n_values) unit-variance factors along a knob's ordered values, correlation ``corr`` between
    neighbours (a stationary AR(1)): a request that gains from top-k 6 tends to gain from 5 and 7."""
    z = rng.standard_normal((n, n_values))
    for j in range(1, n_values):
        z[:, j] = corr * z[:, j - 1] + np.sqrt(1.0 - corr * corr) * z[:, j]
    return z


def _jitter(params: SyntheticParams, seed: int, block: int, iid: np.ndarray,
            cfg: Mapping[str, np.ndarray]) -> np.ndarray:
    """(n, T, n_nontier) logit jitter: ``jitter_iid_share`` of the variance from ``iid`` (unit normal,
    one per request and configuration), the rest the sum of a per-request factor of each knob's value
    (tier, p, top-k, blocks; :func:`_ar1_factors`), so that neighbouring configurations' outcomes
    move together as a real model's do. Its marginal is N(0, jitter_sd²) either way, which is what
    the calibration assumes."""
    share = params.jitter_iid_share
    if share >= 1.0:
        return params.jitter_sd * iid
    ks = params.knob_space
    n, T, _ = iid.shape
    rng = _rng(seed, _STREAM_JITTER, block)
    rho = params.jitter_knob_corr
    tier_f = _ar1_factors(rng, n, T, rho)
    p_f, k_f, b_f = (_ar1_factors(rng, n, m, rho)
                     for m in (len(ks.insertion_positions), len(ks.top_ks), int(cfg["nontier_knobs"][:, 2].max()) + 1))
    knobs = cfg["nontier_knobs"]
    structured = (tier_f[:, :, None] + (p_f[:, knobs[:, 0]] + k_f[:, knobs[:, 1]] + b_f[:, knobs[:, 2]])[:, None, :]) / 2.0
    return params.jitter_sd * (np.sqrt(share) * iid + np.sqrt(1.0 - share) * structured)


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
    jitter_nt = _jitter(params, seed, block, rng.standard_normal((n, T, int(cfg["n_nontier"]))), cfg)
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
                mu, sd = _log_length_moments(spec.output_extra_mean, spec.output_max, spec.output_pmf)
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
