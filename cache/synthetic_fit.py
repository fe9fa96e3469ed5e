"""Fit the SYNTHETIC generator's marginals to an existing outcome cache (``--calibrate-to``).

``python -m cache.synthetic --calibrate-to LIVE.h5 --out PATH [--samples N] [--seed S]`` writes a
synthetic cache whose per-dataset marginals are read from ``LIVE.h5`` (a live-built cache, or
any cache in the schema) and prints the two side by side (:func:`fidelity_table`).

What is fitted, per dataset of the source (:func:`fit_params`):

- the mix (``weight`` = the dataset's share of the requests) and the metric (``vqa_score``,
  ``anls`` and multiple choice keep their score models; ``exact_match``, ``relaxed_accuracy`` and
  any other metric map to ``exact``, no partial credit);
- the mean score at the full and at the cheapest configuration (the calibration's two targets);
- the prompt length (lognormal: median, log-spread, min, max of ``prompt_tokens``);
- the base output length: the empirical distribution of the full configuration's output tokens
  (``DatasetSpec.output_pmf``; λ = their mean − 1 is kept for the record);
- the image size: the median long side is solved (bisection) so that the mean vision-token count
  at the top tier matches the source's under Molmo's tiling (:mod:`cache.molmo_tiling`), and the
  spreads of the long side and of the aspect ratio are picked from a grid so that every tier's
  token quantiles come nearest the source's (:func:`fit_image_spec`; the schema stores no image
  sizes, only what tiling made of them); the median aspect and the portrait share keep fixed,
  documented values;
- multiple choice: every request has the modal number of options in the source's answers
  when they are stored as choices, else 4.

and, pooled over the source's datasets, the knob costs at otherwise-full configuration: the points
lost by dropping 1..4 blocks and by each top-k below the largest (made non-negative and monotone),
with ``reference_gap`` the pooled full → cheapest gap, so that each dataset's costs scale by its
own gap as in the hand-calibrated generator. The knob space (crops per tier, importance scores)
is the source's.

and the outcome noise (:func:`fit_noise`, on by default in the CLI, ``--no-fit-noise`` keeps the
defaults): ``jitter_sd`` and ``jitter_iid_share`` so that the score oracle gap of the test split
is the source's and neighbouring configurations agree about as often as in the source.

and the output length's variation across configurations (:func:`fit_length_variation`, with the
noise): ``wrong_extra_tokens_prob`` so that a request's output length differs from its length at
the full configuration by as much, on average, as in the source.

and the question → answer-length link (:func:`fit_length_signal`, unless
``--lang-r2-output-length`` is given): ``lang_r2_output_length`` so that a ridge probe from the
language feature to the answer length, within each dataset, predicts held-out requests as well as
on the source (:func:`length_probe_r2`).

Not fitted (the generator's documented defaults stay): difficulty spread, vision need, the
robustness factor and the other observable signals (difficulty, vision need and robustness in the
language feature and the latency tokens), so the share of the oracle gap a router on the
observations captures is not the source's (benchmarks/RESULTS.md, "The generator fitted to the
live default"); the table reports the oracle gap of both caches so that their distance is visible.

numpy and the cache reader only (replay path).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from cache.molmo_tiling import crops_and_tokens
from cache.reader import FITTED_TARGETS_PREFIX, OutcomeCache
from cache.synthetic_params import DATASET_PREFIX, DatasetSpec, ImageSizeSpec, SyntheticParams, image_sizes
from model_runtime.knob_space import KnobConfig, KnobSpace

#: source metric → the generator's score model
METRIC_MAP: dict[str, str] = {"vqa_score": "vqa_score", "anls": "anls", "mc": "mc", "multiple_choice": "mc"}
#: image-size shape parameters that are not identifiable from token counts
_LONG_SIGMA, _ASPECT_MEDIAN, _ASPECT_SIGMA, _PORTRAIT = 0.25, 1.33, 0.2, 0.3
_LONG_RANGE = (32.0, 4096.0)
_CHOICES_4 = (0.0, 0.0, 1.0, 0.0)
#: smallest full − cheapest gap a fitted dataset gets: a source dataset whose cheapest configuration
#: scores within this of the full one (or above it: noise, e.g. a task the model is at chance on)
#: is fitted with this gap, i.e. knobs that hardly matter for it
MIN_KNOB_GAP = 0.005


def _synthetic_name(name: str) -> str:
    base = name[len(DATASET_PREFIX):] if name.startswith(DATASET_PREFIX) else name
    return DATASET_PREFIX + base


def _tier_tokens(spec: ImageSizeSpec, ks: KnobSpace, z: np.ndarray) -> np.ndarray:
    """(n, T) vision tokens per tier of images drawn from ``spec`` with fixed draws ``z`` (3, n): two
    standard normals and a uniform, as :func:`cache.synthetic_params.image_sizes` takes them."""
    h, w = image_sizes(z[0], z[1], z[2], long_side_median=spec.long_side_median, long_side_sigma=spec.long_side_sigma,
                       long_side_lo=spec.long_side_range[0], long_side_hi=spec.long_side_range[1],
                       aspect_median=spec.aspect_median, aspect_sigma=spec.aspect_sigma, portrait_frac=spec.portrait_frac)
    _, vtok, _ = crops_and_tokens(h, w, ks.crops)
    return vtok.astype(np.float64)


def _top_tier_tokens(spec: ImageSizeSpec, ks: KnobSpace, z: np.ndarray) -> float:
    """Mean top-tier vision tokens of images drawn from ``spec`` with fixed draws ``z``."""
    return float(_tier_tokens(spec, ks, z)[:, -1].mean())


#: spreads tried by :func:`fit_image_spec` when the source's per-tier tokens are given
_LONG_SIGMAS: tuple[float, ...] = (0.1, 0.25, 0.45, 0.7)
_ASPECT_SIGMAS: tuple[float, ...] = (0.08, 0.2, 0.4)
_TOKEN_QUANTILES: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)


def fit_image_spec(target_tokens: float, ks: KnobSpace, n: int = 2000, seed: int = 0,
                   source_tokens: np.ndarray | None = None) -> ImageSizeSpec:
    """The image-size spec whose mean top-tier vision tokens match ``target_tokens`` (bisection on the
    median long side, in log space; token counts grow with the image until the tier's crop cap).

    With ``source_tokens`` ((n, T) vision tokens per tier of the source's requests), the spreads
    of the long side and of the aspect ratio are chosen too, from a small grid: the pair whose
    per-tier token quantiles (10/25/50/75/90 %) are nearest the source's (mean absolute difference),
    each with its median solved as above. Without it they keep fixed, documented values."""
    rng = np.random.default_rng(seed)
    z = np.stack([rng.standard_normal(n), rng.standard_normal(n), rng.random(n)])

    def solve(spec: ImageSizeSpec) -> ImageSizeSpec:
        lo, hi = np.log(_LONG_RANGE[0]), np.log(_LONG_RANGE[1])
        for _ in range(30):  # 4.8 / 2^30 in log space: far below the 0.1-px rounding
            mid = 0.5 * (lo + hi)
            if _top_tier_tokens(dataclasses.replace(spec, long_side_median=float(np.exp(mid))), ks, z) < target_tokens:
                lo = mid
            else:
                hi = mid
        return dataclasses.replace(spec, long_side_median=round(float(np.exp(0.5 * (lo + hi))), 1))

    base = ImageSizeSpec(100.0, _LONG_SIGMA, _LONG_RANGE, _ASPECT_MEDIAN, _ASPECT_SIGMA, _PORTRAIT)
    if source_tokens is None:
        return solve(base)
    q = np.asarray(_TOKEN_QUANTILES)
    want = np.quantile(np.asarray(source_tokens, dtype=np.float64), q, axis=0)  # (Q, T)
    best, best_d = base, np.inf
    for ls in _LONG_SIGMAS:
        for asg in _ASPECT_SIGMAS:
            spec = solve(dataclasses.replace(base, long_side_sigma=ls, aspect_sigma=asg))
            d = float(np.abs(np.quantile(_tier_tokens(spec, ks, z), q, axis=0) - want).mean())
            if d < best_d:
                best, best_d = spec, d
    return best


def _modal_choices(answers: list[Any]) -> tuple[float, ...]:
    counts = [len(a["choices"]) for a in answers if isinstance(a, dict) and isinstance(a.get("choices"), list)]
    k = int(np.bincount(counts).argmax()) if counts else 4
    if not 2 <= k <= 5:
        k = 4
    probs = [0.0] * 4
    probs[k - 2] = 1.0
    return tuple(probs)


def _knob_costs(score: np.ndarray, ks: KnobSpace) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Pooled points lost by dropping 1..4 blocks and by each top-k (knob order), otherwise full;
    non-negative and monotone (more removed never costs less)."""
    full = ks.full_config
    base = float(np.nanmean(score[:, ks.index(full)]))
    counts = sorted({c.blocks for c in ks.configs}, reverse=True)
    block = [max(0.0, 100 * (base - float(np.nanmean(score[:, ks.index(KnobConfig(full.tier, full.p, full.top_k, b))]))))
             for b in counts[1:]]
    topk = [max(0.0, 100 * (base - float(np.nanmean(score[:, ks.index(KnobConfig(full.tier, full.p, k, full.blocks))]))))
            for k in ks.top_ks]
    block = np.maximum.accumulate(np.asarray(block))  # 1, 2, ... dropped: non-decreasing
    topk = np.maximum.accumulate(np.asarray(topk)[::-1])[::-1]  # smaller k never cheaper
    topk[-1] = 0.0
    return tuple(round(float(x), 3) for x in block), tuple(round(float(x), 3) for x in topk)


def source_marginals(oc: OutcomeCache) -> dict[str, dict[str, float]]:
    """Per dataset: share, mean score at the full and cheapest configuration, mean full-configuration
    output tokens, mean top-tier vision tokens, mean prompt tokens."""
    ks = oc.knob_space
    c_full, c_cheap = ks.index(ks.full_config), ks.index(ks.cheapest_config)
    out = {}
    for j, name in enumerate(oc.datasets):
        sel = oc.dataset == j
        if not sel.any():
            continue
        out[name] = {
            "share": float(sel.mean()),
            "full": float(np.nanmean(oc.score[sel, c_full])),
            "cheapest": float(np.nanmean(oc.score[sel, c_cheap])),
            "output_tokens_full": float(oc.output_tokens[sel, c_full].mean()),
            "vision_tokens_top": float(oc.vision_tokens[sel, -1].mean()),
            "prompt_tokens": float(oc.prompt_tokens[sel].mean()),
        }
    return out


def fit_params(source: str, n_samples: int | None = None, **overrides: Any) -> SyntheticParams:
    """:class:`SyntheticParams` whose marginals are fitted to the cache at ``source`` (module docstring).

    ``n_samples`` defaults to the source's request count; ``overrides`` replace any other field.
    A dataset whose cheapest configuration scores within :data:`MIN_KNOB_GAP` of the full one (or
    above it) is fitted with that smallest gap. Raises ValueError (one line) when a dataset's targets
    cannot be calibrated (a mean score of 0 or 1, or a full score of at most the smallest gap)."""
    with OutcomeCache(source, tokens="lazy") as oc:
        ks = oc.knob_space
        marg = source_marginals(oc)
        specs = []
        for name, m in marg.items():
            j = oc.datasets.index(name)
            sel = oc.dataset == j
            metric = METRIC_MAP.get(oc.metrics.get(name, ""), "exact")
            full, cheap = round(m["full"], 4), round(m["cheapest"], 4)
            note = ""
            if MIN_KNOB_GAP < full < 1 and full - MIN_KNOB_GAP <= cheap < 1:
                # no knob effect beyond noise (a task the model is at chance on): the generator's
                # smallest one, rather than refusing the whole cache
                cheap, note = round(full - MIN_KNOB_GAP, 4), (f"; cheapest {m['cheapest']:.3f} ≥ full − "
                                                              f"{MIN_KNOB_GAP} in the source, set to full − {MIN_KNOB_GAP}")
            if not 0 < cheap < full < 1:
                raise ValueError(f"--calibrate-to {source}: dataset {name!r} has full {full:.3f} and cheapest "
                                 f"{cheap:.3f}; the generator needs 0 < cheapest < full < 1")
            prompt = oc.prompt_tokens[sel].astype(np.float64)
            out_full = oc.output_tokens[sel, ks.index(ks.full_config)]
            out_full = out_full[out_full > 0]
            lam = max(0.0, float(out_full.mean()) - 1.0) if out_full.size else 0.0
            out_max = int(max(1, out_full.max() if out_full.size else 1))
            # the empirical length distribution: a task that always answers in 2 tokens is not 1 + Poisson
            pmf = np.bincount(out_full, minlength=out_max + 1)[1:out_max + 1].astype(np.float64) if out_full.size else np.ones(1)
            pmf = tuple(float(v) for v in np.round(pmf / pmf.sum(), 6))
            pmf = pmf[:-1] + (round(1.0 - sum(pmf[:-1]), 6),)
            specs.append(DatasetSpec(
                name=_synthetic_name(name), metric=metric, full_target=full, cheapest_target=cheap,
                targets_source=f"{FITTED_TARGETS_PREFIX}{oc.attrs.get('model_id', '?')} cache ({oc.attrs.get('generator', '?')}){note}",
                vision_need_beta=(2.0, 2.0),
                image=fit_image_spec(m["vision_tokens_top"], ks, source_tokens=oc.vision_tokens[sel]),
                prompt_tokens=(float(np.median(prompt)), round(float(np.log(prompt).std()), 3), int(prompt.min()),
                               int(prompt.max())),
                output_extra_mean=round(lam, 3), output_max=out_max, output_pmf=pmf,
                weight=m["share"],
                choice_probs=_modal_choices([oc.answers(int(i)) for i in np.flatnonzero(sel)[:200]]) if metric == "mc" else (),
            ))
        block, topk = _knob_costs(oc.score, ks)
        pooled = oc.score[:, [ks.index(ks.full_config), ks.index(ks.cheapest_config)]]
        gap = float(np.nanmean(pooled[:, 0]) - np.nanmean(pooled[:, 1]))
        n = oc.n_samples if n_samples is None else n_samples
    if gap <= 0:
        raise ValueError(f"--calibrate-to {source}: the full configuration does not beat the cheapest (gap {gap:.3f})")
    return SyntheticParams(n_samples=n, datasets=tuple(specs), knob_space=ks, block_costs_pts=block,
                           topk_costs_pts=topk, reference_gap=gap, **overrides)


def _score_gap(score: np.ndarray) -> float:
    """Mean best score per request (row) minus the best single configuration's (column's) mean
    score; a NaN (no outcome) counts 0."""
    s = np.nan_to_num(score, nan=0.0)
    return float(s.max(axis=1).mean() - s.mean(axis=0).max())


def _oracle_gap(oc: OutcomeCache) -> float:
    """:func:`_score_gap` of the test split."""
    return _score_gap(oc.score[oc.split_indices("test")])


def fidelity_table(source: str, synthetic: str):
    """Per dataset, source vs synthetic: share, full and cheapest mean score, mean full-configuration
    output tokens, mean top-tier vision tokens; and the score oracle gap of each cache (pandas)."""
    import pandas as pd

    with OutcomeCache(source, tokens="lazy") as a, OutcomeCache(synthetic, tokens="lazy") as b:
        ma, mb = source_marginals(a), source_marginals(b)
        rows = []
        for name, x in ma.items():
            y = mb.get(_synthetic_name(name), {})
            rows.append({"dataset": name, **{f"{k} (source)": round(v, 3) for k, v in x.items()},
                         **{f"{k} (synthetic)": round(v, 3) for k, v in y.items()}})
        gaps = {"oracle score gap (source)": round(_oracle_gap(a), 4), "oracle score gap (synthetic)": round(_oracle_gap(b), 4)}
    cols = ["dataset"] + [f"{k} ({w})" for k in ("share", "full", "cheapest", "output_tokens_full", "vision_tokens_top",
                                                  "prompt_tokens") for w in ("source", "synthetic")]
    return pd.DataFrame(rows)[cols], gaps


# ---------------------------------------------------------------------------------- the outcome noise
#: candidate shares of the jitter's variance drawn per (request, configuration) (the rest is
#: per-request knob factors, smooth across neighbouring configurations)
NOISE_IID_SHARES: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


def neighbour_agreement(score: np.ndarray, ks: KnobSpace) -> float:
    """Share of (request, pair of configurations one knob step apart) with equal scores: how
    smooth the outcomes are across neighbouring configurations (NaN scores skipped)."""
    t = ks.config_table()
    step = {k: np.searchsorted(np.unique(t[k]), t[k]) for k in ("tier", "p", "top_k", "blocks")}
    idx = np.stack([step[k] for k in step], axis=1)  # (C, 4) knob steps
    pairs = []
    for a in range(idx.shape[0]):
        diff = np.abs(idx - idx[a]).sum(axis=1)
        pairs += [(a, int(b)) for b in np.flatnonzero(diff == 1) if b > a]
    a, b = np.asarray(pairs).T
    x, y = score[:, a], score[:, b]
    ok = ~(np.isnan(x) | np.isnan(y))
    return float((x == y)[ok].mean())


def _noise_stats(score: np.ndarray, test: np.ndarray, ks: KnobSpace) -> tuple[float, float]:
    return _score_gap(score[test]), neighbour_agreement(score[test], ks)


def fit_noise(source: str, params: SyntheticParams, *, seed: int = 0, gap_tol: float = 0.005,
              max_iter: int = 12, log: Any = None) -> tuple[SyntheticParams, dict[str, Any]]:
    """Fit the jitter (``jitter_sd``, ``jitter_iid_share``) so that the synthetic cache has the
    source's score oracle gap (best configuration per test request vs the best single one) and,
    among the :data:`NOISE_IID_SHARES` that reach it, the source's :func:`neighbour_agreement`.

    For each share, ``jitter_sd`` is bisected on the gap (it grows with the noise); a ``jitter_sd``
    the calibration cannot meet its targets with counts as too large. Returns the fitted params and
    a report (source and fitted gap / agreement, and every candidate)."""
    from cache.synthetic_model import generate

    with OutcomeCache(source, tokens="lazy") as oc:
        target_gap, target_agree = _noise_stats(oc.score, oc.split_indices("test"), oc.knob_space)

    def stats(p: SyntheticParams) -> tuple[float, float] | None:
        try:
            d = generate(p, seed)
        except ValueError:  # the calibration cannot meet the accuracy targets at this noise
            return None
        return _noise_stats(d.score.astype(np.float64), np.flatnonzero(d.split == 2), p.knob_space)

    candidates = []
    for share in NOISE_IID_SHARES:
        lo, hi, best = 0.0, 4.0, None
        for _ in range(max_iter):
            sd = 0.5 * (lo + hi)
            p = dataclasses.replace(params, jitter_sd=round(sd, 4), jitter_iid_share=share)
            st = stats(p)
            if st is None or st[0] > target_gap:
                hi = sd
            else:
                lo = sd
            if st is not None and (best is None or abs(st[0] - target_gap) < abs(best[1] - target_gap)):
                best = (round(sd, 4), st[0], st[1])
            if best is not None and abs(best[1] - target_gap) <= gap_tol:
                break
        if best is not None:
            candidates.append({"jitter_iid_share": share, "jitter_sd": best[0], "gap": round(best[1], 4),
                               "agreement": round(best[2], 4)})
            if log:
                log(f"[fit-noise] iid share {share}: jitter_sd {best[0]} → gap {best[1]:.4f} (source {target_gap:.4f}), "
                    f"neighbour agreement {best[2]:.3f} (source {target_agree:.3f})")
    reaching = [c for c in candidates if abs(c["gap"] - target_gap) <= gap_tol] or candidates
    if not reaching:
        raise ValueError(f"--calibrate-to {source}: no jitter reaches the source's oracle gap {target_gap:.3f}")
    pick = min(reaching, key=lambda c: abs(c["agreement"] - target_agree))
    fitted = dataclasses.replace(params, jitter_sd=pick["jitter_sd"], jitter_iid_share=pick["jitter_iid_share"])
    return fitted, {"source_gap": round(target_gap, 4), "source_agreement": round(target_agree, 4),
                    "picked": pick, "candidates": candidates}


def _bisect_increasing(f: Any, target: float, lo: float, hi: float, tol: float, max_iter: int,
                       start: tuple[float, float] | None = None) -> tuple[float, float]:
    """``(x, f(x))`` nearest ``target`` found by bisecting ``x`` in [lo, hi] for a function that grows
    with ``x`` (stops within ``tol``); ``start``: a point already evaluated (default: ``lo``)."""
    best = start if start is not None else (lo, f(lo))
    for _ in range(max_iter):
        mid = round(0.5 * (lo + hi), 6)
        v = f(mid)
        if abs(v - target) < abs(best[1] - target):
            best = (mid, v)
        if abs(v - target) <= tol:
            break
        lo, hi = (mid, hi) if v < target else (lo, mid)
    return best


def length_variation(output_tokens: np.ndarray, ks: KnobSpace) -> float:
    """Mean |output tokens − the request's output tokens at the full configuration| over
    (request, configuration): how much a request's answer length depends on the configuration
    (the part of the latency a controller cannot know before running). Negative counts (no
    outcome) are skipped."""
    out = np.asarray(output_tokens, dtype=np.float64)
    full = out[:, [ks.index(ks.full_config)]]
    ok = (out >= 0) & (full >= 0)
    return float(np.abs(out - full)[ok].mean())


def fit_length_variation(source: str, params: SyntheticParams, *, seed: int = 0, tol: float = 0.005,
                         max_iter: int = 14) -> tuple[SyntheticParams, dict[str, Any]]:
    """Fit ``wrong_extra_tokens_prob`` so that the synthetic cache's :func:`length_variation` is the
    source's. A wrong answer at a reduced configuration gets 1-3 extra tokens with probability
    ``wrong_extra_tokens_prob × reduction``, drawn against one uniform per request (common random
    numbers), so the variation grows monotonically with the probability and bisection on [0, 1]
    finds it; 1 is the most the generator can give. Fit after :func:`fit_noise`: the jitter decides
    which answers are wrong. Returns the fitted params and a report."""
    from cache.synthetic_model import generate

    with OutcomeCache(source, tokens="lazy") as oc:
        target = length_variation(oc.output_tokens, oc.knob_space)

    def stat(prob: float) -> float:
        d = generate(dataclasses.replace(params, wrong_extra_tokens_prob=prob), seed)
        return length_variation(d.output_tokens, params.knob_space)

    best = (1.0, stat(1.0))
    if best[1] > target:
        best = _bisect_increasing(stat, target, 0.0, 1.0, tol, max_iter)
    fitted = dataclasses.replace(params, wrong_extra_tokens_prob=best[0])
    return fitted, {"source": round(target, 4), "fitted": round(best[1], 4), "wrong_extra_tokens_prob": best[0],
                    "default": params.wrong_extra_tokens_prob}


def length_probe_r2(lang: np.ndarray, output_tokens_full: np.ndarray, dataset: np.ndarray, split: np.ndarray,
                    ridge: float = 10.0) -> float:
    """Out-of-sample R² of a ridge probe from the language feature (plus the dataset, one-hot) to
    the log answer length at the full configuration standardised within its dataset: fitted on the
    train split (0), scored on the test split (2). Datasets whose answers all have one length carry
    no such link and are left out; 0 when none is left."""
    logl = np.log(np.maximum(np.asarray(output_tokens_full, np.float64), 1.0))
    ds = np.asarray(dataset, np.int64)
    split = np.asarray(split)
    tr, te = split == 0, split == 2
    z, keep = np.zeros(logl.size), np.zeros(logl.size, bool)
    for d in np.unique(ds):
        m = ds == d
        sd = logl[m & tr].std() if (m & tr).any() else 0.0
        if sd > 1e-9:
            z[m] = (logl[m] - logl[m & tr].mean()) / sd
            keep |= m
    a, b = keep & tr, keep & te
    if a.sum() < 2 or b.sum() < 2:
        return 0.0
    x = np.c_[np.asarray(lang, np.float64), np.eye(int(ds.max()) + 1)[ds]]
    x = (x - x[tr].mean(0)) / (x[tr].std(0) + 1e-9)
    w = np.linalg.solve(x[a].T @ x[a] + ridge * np.eye(x.shape[1]), x[a].T @ z[a])
    return float(1.0 - ((z[b] - x[b] @ w) ** 2).sum() / ((z[b] - z[a].mean()) ** 2).sum())


def fit_length_signal(source: str, params: SyntheticParams, *, seed: int = 0, tol: float = 0.01,
                      max_iter: int = 12) -> tuple[SyntheticParams, dict[str, Any]]:
    """Fit ``lang_r2_output_length`` (the generator's question → answer-length signal, a population
    R²) so that :func:`length_probe_r2` on the synthetic cache is the source's: bisection on
    [0, 0.95], the probe's R² growing with the signal. A source without the link (probe R² ≤ 0)
    gets 0. Returns the fitted params and a report."""
    from cache.synthetic_model import generate

    with OutcomeCache(source, tokens="lazy") as oc:
        fi = oc.knob_space.index(oc.knob_space.full_config)
        target = length_probe_r2(oc.lang_feature, np.asarray(oc.output_tokens)[:, fi], oc.dataset, oc.split)

    def probe(r2: float) -> float:
        d = generate(dataclasses.replace(params, lang_r2_output_length=r2), seed)
        full = params.knob_space.index(params.knob_space.full_config)
        return length_probe_r2(d.lang_feature, d.output_tokens[:, full], d.dataset, d.split)

    best = (0.0, probe(0.0))
    if target > best[1] + tol:
        best = _bisect_increasing(probe, target, 0.0, 0.95, tol, max_iter, start=best)
    fitted = dataclasses.replace(params, lang_r2_output_length=best[0])
    return fitted, {"source_probe_r2": round(target, 4), "probe_r2": round(best[1], 4), "lang_r2_output_length": best[0]}
