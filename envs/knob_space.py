"""The knob space, re-exported for the envs' users: ``from envs.knob_space import KnobSpace``.

The definitions live in :mod:`model_runtime.knob_space`, at the bottom of the layers
(``model_runtime`` → ``cache`` → ``envs`` → ``agents`` → ``experiments``), because the runtime
and the cache use them too and may not import ``envs``. This module only re-exports them, so
the names are the same objects under both paths (numpy only, no torch).
"""

from model_runtime.knob_space import (
    DEFAULT_CROPS,
    DEFAULT_IMPORTANCE_SCORES,
    DEFAULT_TIERS,
    BlockPlan,
    KnobConfig,
    KnobSpace,
)

__all__ = ["DEFAULT_CROPS", "DEFAULT_IMPORTANCE_SCORES", "DEFAULT_TIERS", "BlockPlan", "KnobConfig", "KnobSpace"]
