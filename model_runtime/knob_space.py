"""The knob space of MolmoE-1B adaptive inference: the one place that owns knob semantics.

A *configuration* is ``(tier, p, top_k, blocks)`` (docs/DESIGN.md §2):

- ``tier`` in ``("low", "medium", "high")``: the vision budget, i.e. the maximum number of image
  crops Molmo's overlapping-crop preprocessing may produce (default 3 / 6 / 12).
- ``p`` (insertion position) in 1..5: blocks ``0..p-1`` run in full (top-8, always kept); after
  block ``p-1`` the last prompt token's hidden state (the *latency token*) is read by the
  Stage-2 controller.
- ``top_k`` in 4..8: experts per token for the blocks ``p..15`` that run.
- ``blocks`` in ``p+11..16``: total number of blocks that run, counting blocks ``0..p-1``; of
  blocks ``p..15`` the ``blocks - p`` with the highest importance score run (in model order),
  the others are skipped (the residual stream passes through).

Valid ``(p, blocks)`` pairs: p=1: 12-16, p=2: 13-16, p=3: 14-16, p=4: 15-16, p=5: 16 (15 pairs),
× 3 tiers × 5 top-k values = 225 configurations. Their *stable order* is lexicographic in
``(tier index, p, top_k, blocks)``; ``index`` and ``config`` map between the two.

The two-stage env's ``MultiDiscrete([3, 5, 5, 5])`` action is
``(tier index, p - 1, top_k - 4, blocks - p - 11)``; :meth:`KnobSpace.from_multidiscrete` and
:meth:`KnobSpace.to_multidiscrete` convert.

It lives at the bottom of the layers (``model_runtime`` → ``cache`` → ``envs`` → ``agents`` →
``experiments``) because the runtime, the cache and the envs all use it;
:mod:`envs.knob_space` re-exports it. Only numpy is imported here: this module is on the replay
path, which must not load torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

#: Default per-block importance scores (higher = keep), from the seeds' fork's recommended file.
#: They were constructed by hand so that the removal order of the droppable blocks is
#: 4 → 13 → 10 → 2, which is the greedy removal path measured on MolmoE-1B (accuracy drop of
#: 3.1, 5.4, 7.5 and 18.4 points with 1-4 blocks removed). The other values are rough
#: magnitudes, not measurements. The runtime (model_runtime) computes measured scores on a
#: calibration set and stores them in the cache, which then overrides these.
DEFAULT_IMPORTANCE_SCORES: tuple[float, ...] = (
    0.56, 0.08, 0.004, 0.03, 0.001, 0.08, 0.04, 0.05,
    0.07, 0.06, 0.003, 0.04, 0.06, 0.002, 0.06, 0.06,
)

DEFAULT_TIERS: tuple[str, ...] = ("low", "medium", "high")
DEFAULT_CROPS: tuple[int, ...] = (3, 6, 12)


@dataclass(frozen=True, order=True)
class KnobConfig:
    """One configuration. ``blocks`` is the total number of blocks that run (incl. ``0..p-1``)."""

    tier: str
    p: int
    top_k: int
    blocks: int

    def as_dict(self) -> dict:
        return {"tier": self.tier, "p": self.p, "top_k": self.top_k, "blocks": self.blocks}

    def __str__(self) -> str:  # e.g. "high/p1/k8/b16"
        return f"{self.tier}/p{self.p}/k{self.top_k}/b{self.blocks}"


@dataclass(frozen=True)
class BlockPlan:
    """The exact per-block execution plan of a configuration.

    ``top_k_per_block[b]`` is the number of routed experts block ``b`` runs with, or 0 when the
    block is skipped. ``active`` lists the blocks that run, in model order.
    """

    top_k_per_block: tuple[int, ...]

    @property
    def active(self) -> tuple[int, ...]:
        return tuple(b for b, k in enumerate(self.top_k_per_block) if k > 0)

    @property
    def skipped(self) -> tuple[int, ...]:
        return tuple(b for b, k in enumerate(self.top_k_per_block) if k == 0)

    @property
    def expert_slots(self) -> int:
        """Σ over active blocks of their top-k: routed expert FFNs evaluated per token."""
        return int(sum(self.top_k_per_block))


@dataclass(frozen=True)
class KnobSpace:
    """Knob options, their valid combinations and the block plan of each configuration.

    Args:
        tiers: tier names, cheapest first.
        crops: maximum image crops per tier (same length as ``tiers``).
        insertion_positions: allowed insertion positions ``p`` (blocks ``0..p-1`` run in full).
        top_ks: allowed routed-expert counts for blocks ``p..`` (the model's default is the max).
        num_blocks: transformer blocks of the language model.
        min_blocks_after: minimum number of blocks among ``p..num_blocks-1`` that must run
            (11 in the seeds, which gives the valid totals ``p+11..16``).
        importance_scores: one score per block, higher = keep.
    """

    tiers: tuple[str, ...] = DEFAULT_TIERS
    crops: tuple[int, ...] = DEFAULT_CROPS
    insertion_positions: tuple[int, ...] = (1, 2, 3, 4, 5)
    top_ks: tuple[int, ...] = (4, 5, 6, 7, 8)
    num_blocks: int = 16
    min_blocks_after: int = 11
    importance_scores: tuple[float, ...] = DEFAULT_IMPORTANCE_SCORES
    _configs: tuple[KnobConfig, ...] = field(init=False, repr=False, compare=False)
    _index: Mapping[KnobConfig, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tiers", tuple(str(t) for t in self.tiers))
        object.__setattr__(self, "crops", tuple(int(c) for c in self.crops))
        object.__setattr__(self, "insertion_positions", tuple(int(p) for p in self.insertion_positions))
        object.__setattr__(self, "top_ks", tuple(int(k) for k in self.top_ks))
        object.__setattr__(self, "importance_scores", tuple(float(s) for s in self.importance_scores))
        if len(self.tiers) != len(self.crops):
            raise ValueError(f"tiers {self.tiers} and crops {self.crops} differ in length")
        if len(set(self.tiers)) != len(self.tiers):
            raise ValueError(f"duplicate tier names in {self.tiers}")
        if list(self.insertion_positions) != sorted(set(self.insertion_positions)):
            raise ValueError(f"insertion_positions must be strictly increasing, got {self.insertion_positions}")
        if list(self.top_ks) != sorted(set(self.top_ks)) or self.top_ks[0] < 1:
            raise ValueError(f"top_ks must be strictly increasing positive ints, got {self.top_ks}")
        if len(self.importance_scores) != self.num_blocks:
            raise ValueError(
                f"importance_scores has {len(self.importance_scores)} entries, expected num_blocks={self.num_blocks}"
            )
        if not np.all(np.isfinite(self.importance_scores)):
            raise ValueError("importance_scores must be finite")
        for p in self.insertion_positions:
            if not 1 <= p <= self.num_blocks - self.min_blocks_after:
                raise ValueError(
                    f"insertion position {p} leaves fewer than min_blocks_after={self.min_blocks_after} blocks"
                )
        configs = tuple(
            KnobConfig(tier, p, k, b)
            for tier in self.tiers
            for p in self.insertion_positions
            for k in self.top_ks
            for b in self.block_options(p)
        )
        object.__setattr__(self, "_configs", configs)
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(configs)})

    # ------------------------------------------------------------------ enumeration
    @property
    def max_top_k(self) -> int:
        return self.top_ks[-1]

    def block_options(self, p: int) -> tuple[int, ...]:
        """Valid total block counts for insertion position ``p``: ``p + min_blocks_after .. num_blocks``."""
        return tuple(range(p + self.min_blocks_after, self.num_blocks + 1))

    @property
    def max_block_options(self) -> int:
        return max(len(self.block_options(p)) for p in self.insertion_positions)

    @property
    def configs(self) -> tuple[KnobConfig, ...]:
        return self._configs

    def __len__(self) -> int:
        return len(self._configs)

    def config(self, index: int) -> KnobConfig:
        if not 0 <= int(index) < len(self._configs):
            raise ValueError(f"configuration index {index} out of range [0, {len(self._configs)})")
        return self._configs[int(index)]

    def index(self, config: KnobConfig | tuple | Mapping) -> int:
        cfg = self._coerce(config)
        try:
            return self._index[cfg]
        except KeyError:
            raise ValueError(f"{cfg} is not a valid configuration of this knob space") from None

    def _coerce(self, config: KnobConfig | tuple | Mapping) -> KnobConfig:
        if isinstance(config, KnobConfig):
            return config
        if isinstance(config, Mapping):
            return KnobConfig(str(config["tier"]), int(config["p"]), int(config["top_k"]), int(config["blocks"]))
        tier, p, k, b = config
        return KnobConfig(str(tier), int(p), int(k), int(b))

    @property
    def full_config(self) -> KnobConfig:
        return KnobConfig(self.tiers[-1], self.insertion_positions[0], self.max_top_k, self.num_blocks)

    @property
    def cheapest_config(self) -> KnobConfig:
        p = self.insertion_positions[0]
        return KnobConfig(self.tiers[0], p, self.top_ks[0], self.block_options(p)[0])

    def crops_for(self, tier: str) -> int:
        return self.crops[self.tiers.index(tier)]

    # ------------------------------------------------------------------ array views
    def config_table(self) -> dict[str, np.ndarray]:
        """Per-configuration arrays in stable order: ``tier`` (tier index), ``p``, ``top_k``,
        ``blocks``, ``crops``, ``expert_slots`` (Σ top-k over active blocks), ``blocks_index``
        (the active-blocks index of the action, ``blocks - p - min_blocks_after``). All int64 of shape (n_configs,)."""
        tier = np.array([self.tiers.index(c.tier) for c in self._configs], dtype=np.int64)
        p = np.array([c.p for c in self._configs], dtype=np.int64)
        k = np.array([c.top_k for c in self._configs], dtype=np.int64)
        b = np.array([c.blocks for c in self._configs], dtype=np.int64)
        return {
            "tier": tier,
            "p": p,
            "top_k": k,
            "blocks": b,
            "crops": np.array(self.crops, dtype=np.int64)[tier],
            "expert_slots": np.array([self.plan(c).expert_slots for c in self._configs], dtype=np.int64),
            "blocks_index": b - p - self.min_blocks_after,
        }

    # ------------------------------------------------------------------ block plan
    def plan(self, config: KnobConfig | tuple | Mapping | int, scores: Sequence[float] | None = None) -> BlockPlan:
        """Which blocks run, with which top-k, for ``config`` under ``scores``.

        Blocks ``0..p-1`` run at the maximum top-k. Of blocks ``p..num_blocks-1`` the
        ``blocks - p`` with the highest score run at ``top_k``; ties break towards the earlier
        block. ``scores`` defaults to this knob space's importance scores.
        """
        cfg = self.config(config) if isinstance(config, (int, np.integer)) else self._coerce(config)
        if cfg not in self._index:
            raise ValueError(f"{cfg} is not a valid configuration of this knob space")
        s = np.asarray(self.importance_scores if scores is None else scores, dtype=np.float64)
        if s.shape != (self.num_blocks,):
            raise ValueError(f"scores must have shape ({self.num_blocks},), got {s.shape}")
        tail = np.arange(cfg.p, self.num_blocks)
        # stable sort on -score: equal scores keep model order, so the earlier block wins a tie
        keep = tail[np.argsort(-s[tail], kind="stable")[: cfg.blocks - cfg.p]]
        ks = [0] * self.num_blocks
        for b in range(cfg.p):
            ks[b] = self.max_top_k
        for b in keep:
            ks[int(b)] = cfg.top_k
        return BlockPlan(tuple(ks))

    # ------------------------------------------------------------------ action encodings
    @property
    def multidiscrete_nvec(self) -> tuple[int, int, int, int]:
        """``(n_tiers, n_positions, n_top_ks, max block options)``, i.e. (3, 5, 5, 5) by default."""
        return (len(self.tiers), len(self.insertion_positions), len(self.top_ks), self.max_block_options)

    def from_multidiscrete(self, action: Sequence[int]) -> KnobConfig:
        """``(tier index, p index, top-k index, active-blocks index)`` → configuration; ValueError if invalid."""
        a = [int(x) for x in np.asarray(action).reshape(-1)]
        nvec = self.multidiscrete_nvec
        if len(a) != 4 or any(not 0 <= x < n for x, n in zip(a, nvec)):
            raise ValueError(f"action {a} outside MultiDiscrete{list(nvec)}")
        p = self.insertion_positions[a[1]]
        options = self.block_options(p)
        if a[3] >= len(options):
            raise ValueError(
                f"action {a}: active-blocks index {a[3]} invalid for p={p}; valid indices 0..{len(options) - 1} "
                f"(total blocks {options[0]}..{options[-1]})"
            )
        return KnobConfig(self.tiers[a[0]], p, self.top_ks[a[2]], options[a[3]])

    def to_multidiscrete(self, config: KnobConfig | tuple | Mapping | int) -> np.ndarray:
        cfg = self.config(config) if isinstance(config, (int, np.integer)) else self._coerce(config)
        self.index(cfg)  # validates
        return np.array(
            [
                self.tiers.index(cfg.tier),
                self.insertion_positions.index(cfg.p),
                self.top_ks.index(cfg.top_k),
                self.block_options(cfg.p).index(cfg.blocks),
            ],
            dtype=np.int64,
        )

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        return {
            "tiers": list(self.tiers),
            "crops": list(self.crops),
            "insertion_positions": list(self.insertion_positions),
            "top_ks": list(self.top_ks),
            "num_blocks": self.num_blocks,
            "min_blocks_after": self.min_blocks_after,
            "importance_scores": list(self.importance_scores),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping) -> "KnobSpace":
        known = {"tiers", "crops", "insertion_positions", "top_ks", "num_blocks", "min_blocks_after", "importance_scores"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown KnobSpace fields {sorted(unknown)}")
        return cls(**{k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in d.items()})

    @classmethod
    def from_json(cls, s: str) -> "KnobSpace":
        return cls.from_dict(json.loads(s))

    def with_scores(self, scores: Iterable[float]) -> "KnobSpace":
        d = self.to_dict()
        d["importance_scores"] = [float(x) for x in scores]
        return KnobSpace.from_dict(d)

    def same_configs(self, other: "KnobSpace") -> bool:
        """True when both spaces enumerate the same configurations in the same order."""
        return self._configs == other._configs
