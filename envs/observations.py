"""Observation spaces and encoders shared by the replay envs (scalar and vector) and live mode.

Layout (docs/INTERFACES.md, "Observations of the envs"), ``T`` tiers, ``P`` insertion
positions, ``K`` top-k values, ``B`` active-blocks options (3, 5, 5, 5 by default):

Two-stage ``MolmoeKnobs-v0`` (``Dict``):

- ``lang``: float32 (Dl,) language feature of the prompt (both stages).
- ``token``: float32 (Dt,) latency token at the chosen (tier, p) at stage 1; zeros at stage 0.
- ``budget``: float32 (4,) ``[budget/scale, cheapest/scale, full/scale, budget/full]``:
  the budget, the request's cheapest- and full-configuration latency (estimator, nominal
  output length) in units of ``scale`` = the env's ``latency_scale_ms``, and the budget
  relative to the full configuration.
- ``context``: float32 (1+T+P,) ``[stage, one-hot tier, one-hot p]`` (one-hots zero at stage 0).
- ``action_mask``: int8 (T+P+K+B,) per-component masks (1 = allowed), the same as
  ``action_masks()``.

- ``request``: float32 (4T+3,) the request's features known before running (token counts per
  tier, prompt tokens, estimated TTFT per tier, decode ms per token), fixed per episode; layout
  in :data:`envs.replay_data.REQUEST_FEATURE_DOC`.
- ``slo`` (``budget_mode="slo"`` only): float32 (2,) ``[B_ttft/scale, B_tpot/tpot_scale]``,
  the TTFT budget in units of ``scale`` and the per-token budget in units of the data's
  ``tpot_scale_ms`` (median full-configuration decode ms per token).

Flat ``MolmoeKnobsFlat-v0`` (``Dict``): ``lang``, ``budget``, ``request`` (and ``slo``) as
above, ``action_mask`` int8 (C,).
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from envs.replay_data import ReplayData


def _extra(data: ReplayData, slo: bool) -> dict[str, spaces.Space]:
    out: dict[str, spaces.Space] = {"request": spaces.Box(0.0, np.inf, (data.request_dim,), np.float32)}
    if slo:
        out["slo"] = spaces.Box(0.0, np.inf, (2,), np.float32)
    return out


def two_stage_observation_space(data: ReplayData, slo: bool = False) -> spaces.Dict:
    t_, p_, k_, b_ = data.nvec
    return spaces.Dict(
        {
            "lang": spaces.Box(-np.inf, np.inf, (data.lang_dim,), np.float32),
            "token": spaces.Box(-np.inf, np.inf, (data.token_dim,), np.float32),
            "budget": spaces.Box(0.0, np.inf, (4,), np.float32),
            "context": spaces.Box(0.0, 1.0, (1 + t_ + p_,), np.float32),
            "action_mask": spaces.MultiBinary(t_ + p_ + k_ + b_),
            **_extra(data, slo),
        }
    )


def flat_observation_space(data: ReplayData, slo: bool = False) -> spaces.Dict:
    return spaces.Dict(
        {
            "lang": spaces.Box(-np.inf, np.inf, (data.lang_dim,), np.float32),
            "budget": spaces.Box(0.0, np.inf, (4,), np.float32),
            "action_mask": spaces.MultiBinary(data.n_configs),
            **_extra(data, slo),
        }
    )
