"""Per-block importance scores from a calibration set (higher = keep), in the JSON KnobSpace takes.

Methods:

- ``block_influence`` (default): for each block, ``1 − cos(h_in, h_out)`` between the residual
  stream entering and leaving the block, averaged over every real (non-padding) prompt token of
  the calibration requests, at the full configuration of a tier (all blocks, model top-k). A
  block that barely rotates the residual stream changes little when skipped.
- ``accuracy_drop``: mean score at the full configuration minus the mean score with only that
  block skipped (greedy generation, the requests' metrics); expensive (one run per block).

Saved as ``{"scores": [n_blocks floats], "method": ..., "n_requests": ..., ...details}``;
:meth:`ImportanceScores.apply` returns ``knob_space.with_scores(scores)``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from model_runtime.knob_space import KnobSpace

from .runtime import MolmoeRuntime, mean_score

METHODS: tuple[str, ...] = ("block_influence", "accuracy_drop")


@dataclass(frozen=True)
class ImportanceScores:
    """Scores of every block (higher = keep) and how they were measured.

    Attributes:
        scores: one finite float per block.
        method: one of :data:`METHODS`.
        n_requests: calibration requests used.
        details: extra JSON-able facts (tier, token count, baseline score, ...).
    """

    scores: tuple[float, ...]
    method: str
    n_requests: int
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scores", tuple(float(s) for s in self.scores))
        if self.method not in METHODS:
            raise ValueError(f"unknown importance method {self.method!r}; methods: {', '.join(METHODS)}")
        if not self.scores or not all(math.isfinite(s) for s in self.scores):
            raise ValueError("importance scores must be a non-empty list of finite floats")
        if self.n_requests < 1:
            raise ValueError(f"n_requests must be >= 1, got {self.n_requests}")
        reserved = {"scores", "method", "n_requests"} & set(self.details)
        if reserved:
            raise ValueError(f"details may not redefine {sorted(reserved)}")

    def to_dict(self) -> dict[str, Any]:
        return {"scores": list(self.scores), "method": self.method, "n_requests": self.n_requests, **self.details}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImportanceScores":
        missing = {"scores", "method", "n_requests"} - set(d)
        if missing:
            raise ValueError(f"importance JSON lacks {sorted(missing)}")
        details = {k: v for k, v in d.items() if k not in ("scores", "method", "n_requests")}
        return cls(tuple(d["scores"]), str(d["method"]), int(d["n_requests"]), details)

    @classmethod
    def load(cls, path: str | Path) -> "ImportanceScores":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def apply(self, knob_space: KnobSpace) -> KnobSpace:
        """The knob space with these scores (raises ValueError if the block count differs)."""
        return knob_space.with_scores(self.scores)


@torch.no_grad()
def block_influence(runtime: MolmoeRuntime, requests: Sequence[Any], *, tier: str | None = None) -> ImportanceScores:
    """``1 − cos(block input, block output)`` per block, mean over the real prompt tokens of ``requests``.

    Runs the prefill only, at the full configuration (every block at the model's top-k) with the
    crops of ``tier`` (default: the knob space's last, largest tier), in batches of the
    runtime's ``max_batch_size``.
    """
    if not requests:
        raise ValueError("block_influence needs at least one calibration request")
    ks, model = runtime.knob_space, runtime.model
    tier = ks.tiers[-1] if tier is None else tier
    max_crops = ks.crops_for(tier)
    lm = model.lm
    sums = torch.zeros(lm.n_layers, dtype=torch.float64)
    n_tokens = 0
    for start in range(0, len(requests), runtime.max_batch_size):
        chunk = requests[start : start + runtime.max_batch_size]
        batch = model.collate([runtime.prepare(r, max_crops) for r in chunk])
        real = batch.attention_mask.bool()

        def accumulate(block: int, inp: torch.Tensor, out: torch.Tensor) -> None:
            cos = F.cosine_similarity(inp.float(), out.float(), dim=-1)
            sums[block] += (1.0 - cos)[real].double().sum().cpu()

        state = lm.begin(model.embed(batch), batch.attention_mask)
        lm.advance(state, lm.n_layers, lm.full_plan(), on_block=accumulate)
        n_tokens += int(real.sum())
    scores = (sums / n_tokens).tolist()
    return ImportanceScores(tuple(scores), "block_influence", len(requests), {"tier": tier, "n_tokens": n_tokens})


def accuracy_drop(
    runtime: MolmoeRuntime, requests: Sequence[Any], *, tier: str | None = None, blocks: Sequence[int] | None = None
) -> ImportanceScores:
    """Mean score at full configuration minus the mean score with one block skipped, per block.

    ``blocks`` limits the measured blocks (default: all); unmeasured blocks get the largest
    measured drop (they are treated as never droppable). Generation uses the runtime's settings.
    """
    if not requests:
        raise ValueError("accuracy_drop needs at least one calibration request")
    lm = runtime.model.lm
    tier = runtime.knob_space.tiers[-1] if tier is None else tier
    measured = list(range(lm.n_layers)) if blocks is None else sorted(set(int(b) for b in blocks))
    if not measured or not all(0 <= b < lm.n_layers for b in measured):
        raise ValueError(f"blocks must be a non-empty subset of 0..{lm.n_layers - 1}")
    full = lm.full_plan()
    base = mean_score(runtime.run_plan(requests, tier=tier, top_k_per_block=full))
    drops: dict[int, float] = {}
    for b in measured:
        plan = tuple(0 if i == b else k for i, k in enumerate(full))
        p = 2 if b == 0 else 1  # the latency-token block must run; irrelevant to the score
        drops[b] = base - mean_score(runtime.run_plan(requests, tier=tier, top_k_per_block=plan, p=p))
    top = max(drops.values())
    scores = tuple(drops.get(b, top) for b in range(lm.n_layers))
    return ImportanceScores(scores, "accuracy_drop", len(requests), {"tier": tier, "baseline_score": base, "measured_blocks": measured})


def compute_importance(runtime: MolmoeRuntime, requests: Sequence[Any], *, method: str = "block_influence", **kwargs: Any) -> ImportanceScores:
    """Dispatch to :func:`block_influence` or :func:`accuracy_drop`."""
    if method == "block_influence":
        return block_influence(runtime, requests, **kwargs)
    if method == "accuracy_drop":
        return accuracy_drop(runtime, requests, **kwargs)
    raise ValueError(f"unknown importance method {method!r}; methods: {', '.join(METHODS)}")
