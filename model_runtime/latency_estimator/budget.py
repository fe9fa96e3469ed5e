"""Predictions over a knob space's configurations and the default latency-budget range."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from model_runtime.latency_estimator.estimator import LatencyEstimator

if TYPE_CHECKING:  # pragma: no cover - typing only
    from model_runtime.knob_space import KnobSpace


def config_arrays(knob_space: "KnobSpace") -> dict[str, np.ndarray]:
    """Per-configuration ``p``, ``top_k``, ``blocks``, ``tier`` (int64, (C,)) in stable order."""
    t = knob_space.config_table()
    return {k: t[k] for k in ("tier", "p", "top_k", "blocks")}


def predict_grid(
    estimator: LatencyEstimator,
    knob_space: "KnobSpace",
    *,
    crops: Any,
    vision_tokens: Any,
    prompt_tokens: Any,
    output_tokens: Any,
    dtype: Any = np.float64,
) -> dict[str, np.ndarray]:
    """Predictions for N requests × every configuration of ``knob_space``: arrays (N, C).

    Args:
        crops, vision_tokens: (N, T) per request and tier.
        prompt_tokens: (N,).
        output_tokens: scalar, (N,) or (N, C).
    """
    crops = np.asarray(crops)
    vision_tokens = np.asarray(vision_tokens)
    prompt_tokens = np.asarray(prompt_tokens)
    T = len(knob_space.tiers)
    if crops.ndim != 2 or crops.shape[1] != T or vision_tokens.shape != crops.shape:
        raise ValueError(
            f"crops and vision_tokens must be (N, {T}) (one column per tier), got {crops.shape} and {vision_tokens.shape}"
        )
    if prompt_tokens.shape != (crops.shape[0],):
        raise ValueError(f"prompt_tokens must be ({crops.shape[0]},), got {prompt_tokens.shape}")
    cfg = config_arrays(knob_space)
    out = np.asarray(output_tokens)
    if out.ndim == 1:
        out = out[:, None]
    # cast at (N, T) before expanding tiers to configurations: one (N, C) array per input, not two
    crops = np.asarray(crops, dtype=dtype)
    vision_tokens = np.asarray(vision_tokens, dtype=dtype)
    return estimator.predict(
        crops=crops[:, cfg["tier"]],
        vision_tokens=vision_tokens[:, cfg["tier"]],
        prompt_tokens=prompt_tokens[:, None],
        p=cfg["p"],
        top_k=cfg["top_k"],
        blocks=cfg["blocks"],
        output_tokens=out,
        dtype=dtype,
    )


def budget_range(
    estimator: LatencyEstimator,
    knob_space: "KnobSpace",
    crops: Any,
    vision_tokens: Any,
    prompt_tokens: Any,
    *,
    output_tokens: Any,
    quantiles: tuple[float, float] = (0.5, 0.5),
) -> tuple[float, float]:
    """The default latency-budget range ``(lo, hi)`` in ms, as the project derives it.

    ``lo`` = the ``quantiles[0]`` quantile (default: median) over requests of the estimated total
    latency of the knob space's *cheapest* configuration (lowest tier, first ``p``, smallest
    ``top_k``, fewest blocks); ``hi`` = the ``quantiles[1]`` quantile of the *full*
    configuration's (highest tier, all blocks at ``max_top_k``). The seeds derived their
    170-380 ms range this way from their profile.

    Args:
        crops, vision_tokens: (N, T) per request and tier (crops actually used, incl. global view).
        prompt_tokens: (N,) text prompt lengths.
        output_tokens: the nominal output length (scalar) or per-request lengths (N,).
        quantiles: (q_lo, q_hi) in [0, 1].
    """
    q_lo, q_hi = (float(q) for q in quantiles)
    if not (0 <= q_lo <= 1 and 0 <= q_hi <= 1):
        raise ValueError(f"quantiles must be in [0, 1], got {quantiles}")
    crops = np.asarray(crops)
    vision_tokens = np.asarray(vision_tokens)
    if crops.ndim != 2 or crops.shape[0] == 0:
        raise ValueError(f"crops must be (N, T) with N >= 1, got {crops.shape}")
    out = np.asarray(output_tokens)
    if out.ndim == 1:
        out = out[:, None]
    cheap, full = knob_space.cheapest_config, knob_space.full_config
    idx = [knob_space.tiers.index(cheap.tier), knob_space.tiers.index(full.tier)]
    if crops.shape[1] != len(knob_space.tiers) or vision_tokens.shape != crops.shape:
        raise ValueError(
            f"crops and vision_tokens must be (N, {len(knob_space.tiers)}), got {crops.shape} and {vision_tokens.shape}"
        )
    pt = np.asarray(prompt_tokens)
    if pt.shape != (crops.shape[0],):
        raise ValueError(f"prompt_tokens must be ({crops.shape[0]},), got {pt.shape}")
    pred = estimator.predict(
        crops=crops[:, idx],
        vision_tokens=vision_tokens[:, idx],
        prompt_tokens=pt[:, None],
        p=np.array([cheap.p, full.p]),
        top_k=np.array([cheap.top_k, full.top_k]),
        blocks=np.array([cheap.blocks, full.blocks]),
        output_tokens=out,
    )["total_ms"]
    return float(np.quantile(pred[:, 0], q_lo)), float(np.quantile(pred[:, 1], q_hi))
