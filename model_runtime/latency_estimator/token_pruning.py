"""Cost of the vision-token pruning proxy (seed 05 §B4): how many pooled vision tokens a keep
fraction leaves, and the estimator's latency of a pruned run. numpy only (the replay path).

A pruned run keeps ``kept_pooled_tokens(n, keep)`` of an image's ``n`` pooled vision tokens (the
``<im_patch>`` tokens that receive the connector's features); the image's other tokens
(``<im_start>``, ``<im_col>``, ``<im_end>``) stay. The rule, shared with the runtime
(:mod:`model_runtime.molmoe.token_pruning`), is ``max(1, ceil(keep · n))``: the fewest tokens
that keep at least the fraction ``keep``, and never none, so that every image still reaches the
language model. ``keep = 1`` keeps all of them.

The cost is the vision tokens kept (seed 05: ``remaining_vision_tokens``). Its latency is an
*estimate*, not a measured speed-up: the estimator's value for the given LM configuration with
the prefill sequence shortened by the dropped tokens (``vision_tokens`` reduced, the text prompt
unchanged); the vision tower still runs every crop, so ``vision_ms`` is unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from model_runtime.latency_estimator.estimator import LatencyEstimator

#: Slack for ``keep · n`` landing a rounding error above an integer (0.1 · 30 = 3.0000000000000004):
#: without it ``ceil`` would keep one token more than the fraction asks for.
_CEIL_SLACK = 1e-9


def check_keep(keep: Any, name: str = "vision_keep") -> float:
    """``keep`` as a float in (0, 1]; ValueError naming ``name`` otherwise."""
    if isinstance(keep, (bool, np.bool_)):
        raise ValueError(f"{name} must be a number in (0, 1], got {keep!r}")
    try:
        value = float(keep)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1], got {keep!r}") from None
    if not (0.0 < value <= 1.0):  # also refuses NaN
        raise ValueError(f"{name} must be in (0, 1], got {keep!r}")
    return value


def kept_pooled_tokens(pooled_tokens: Any, keep: Any) -> np.ndarray:
    """int64 pooled vision tokens kept of ``pooled_tokens`` (array-like, >= 0) at fraction ``keep``:
    ``max(1, ceil(keep · n))`` where ``n > 0``, 0 where ``n = 0``."""
    k = check_keep(keep, "keep")
    n = np.asarray(pooled_tokens)
    if n.size and (not np.issubdtype(n.dtype, np.number) or float(n.min()) < 0):
        raise ValueError(f"pooled_tokens must be non-negative counts, got {pooled_tokens!r}")
    n = n.astype(np.int64)
    kept = np.ceil(k * n - _CEIL_SLACK).astype(np.int64)
    return np.where(n > 0, np.clip(kept, 1, n), 0)


def pruned_vision_tokens(vision_tokens: Any, pooled_tokens: Any, keep: Any) -> np.ndarray:
    """int64 image tokens left in the prompt: ``vision_tokens − pooled + kept`` (the non-pooled
    image tokens stay). ``pooled_tokens`` must not exceed ``vision_tokens``."""
    v = np.asarray(vision_tokens, dtype=np.int64)
    n = np.asarray(pooled_tokens, dtype=np.int64)
    if np.any(n > v):
        raise ValueError("pooled_tokens exceed vision_tokens: the pooled tokens are a part of the image tokens")
    return v - n + kept_pooled_tokens(n, keep)


def pruned_latency_ms(
    estimator: LatencyEstimator,
    *,
    keep: Any,
    crops: Any,
    vision_tokens: Any,
    pooled_tokens: Any,
    prompt_tokens: Any,
    output_tokens: Any,
    p: Any,
    top_k: Any,
    blocks: Any,
) -> dict[str, np.ndarray]:
    """The estimator's latency (ms, :meth:`LatencyEstimator.predict`'s dict) of runs that keep the
    fraction ``keep`` of their pooled vision tokens under the LM configuration ``(p, top_k,
    blocks)``: ``vision_tokens`` replaced by :func:`pruned_vision_tokens`; ``crops``,
    ``prompt_tokens`` and ``output_tokens`` (the pruned run's own) as given. Inputs broadcast as
    in ``predict``; ``keep = 1`` gives ``predict``'s values exactly."""
    return estimator.predict(
        crops=crops, vision_tokens=pruned_vision_tokens(vision_tokens, pooled_tokens, keep),
        prompt_tokens=prompt_tokens, p=p, top_k=top_k, blocks=blocks, output_tokens=output_tokens,
    )
