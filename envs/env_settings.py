"""Constructor arguments shared by the envs (replay and live mode): :class:`EnvConfig`,
resolved once into :class:`ReplaySettings` by :func:`resolve_settings`.

Every env (two-stage / flat, scalar / vector) takes the same arguments (:class:`EnvConfig`
documents them) and returns the same ``info`` keys (:data:`INFO_DOC`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from envs.budgets import BUDGET_MODES, BUDGET_MODES_DOC, DEFAULT_BUDGET_MODE, BudgetSampler, EpisodeBudgets
from envs.replay_data import INCOMPLETE_MODES, Outcome, ReplayData, as_replay_data
from envs.reward import RewardConfig

if TYPE_CHECKING:
    from cache.reader import OutcomeCache
    from model_runtime.latency_estimator import LatencyEstimator

INVALID_ACTION_MODES: tuple[str, ...] = ("raise", "penalty")
#: Reward of a masked action under ``invalid_action="penalty"`` (the episode then ends).
INVALID_ACTION_REWARD: float = -1.0
ENV_MODES: tuple[str, ...] = ("replay", "live")
#: Keys options of ``reset`` accepts.
RESET_OPTIONS: tuple[str, ...] = ("sample_index", "sample_id", "budget_ms", "budget_u", "ttft_budget_ms", "tpot_budget_ms")

#: Keys of every ``info`` (after ``reset`` and every ``step``).
INFO_KEYS_ALWAYS: tuple[str, ...] = (
    "budget_ms", "config", "config_index", "sample_id", "sample_index", "dataset", "synthetic",
    "action_mask", "stage", "invalid_action",
)
#: Keys present only in the ``info`` of the step that produced an outcome (a valid final action).
INFO_KEYS_OUTCOME: tuple[str, ...] = (
    "score", "latency_ms", "vision_ms", "prefill_ms", "decode_ms", "violation", "output_tokens",
)
#: Present with the outcome only when the cache holds a measurement (always in live mode).
INFO_KEY_MEASURED = "measured_ms"
INFO_KEYS: tuple[str, ...] = INFO_KEYS_ALWAYS + INFO_KEYS_OUTCOME + (INFO_KEY_MEASURED,)
#: Extra keys in ``budget_mode="slo"``: always / with the outcome.
INFO_KEYS_SLO_ALWAYS: tuple[str, ...] = ("ttft_budget_ms", "tpot_budget_ms")
INFO_KEYS_SLO_OUTCOME: tuple[str, ...] = ("ttft_ms", "tpot_ms")

INFO_DOC = """
    ``info`` keys, present after ``reset`` and every ``step``:

    - ``budget_ms`` (float): the episode's budget.
    - ``config`` (dict): ``{"tier": str, "p": int, "top_k": int, "blocks": int}``; what is not
      chosen yet is ``""`` / -1. ``config_index`` (int): stable KnobSpace index, -1 until chosen.
    - ``sample_id`` (str), ``sample_index`` (int: row in the split's ReplayData),
      ``dataset`` (str): the request.
    - ``synthetic`` (bool): the outcomes come from a synthetic generator.
    - ``action_mask`` (bool array): the mask of the returned observation (= ``action_masks()``).
    - ``stage`` (int): decisions taken in this episode so far (0 after ``reset``).
    - ``invalid_action`` (bool): this step's action was masked (``invalid_action="penalty"``).

    Outcome keys, present only in the ``info`` of the step that ends an episode with a valid
    configuration (absent rather than NaN before that: gymnasium's checker compares infos
    with ``==``, under which NaN never equals itself):

    - ``score`` (float): metric score of the chosen configuration, in [0, 1].
    - ``latency_ms`` (float): the estimator's total latency of the configuration for this
      request at its own output length (the latency the reward uses).
    - ``vision_ms``, ``prefill_ms``, ``decode_ms`` (float): its components (``decode_ms`` is
      the whole decode, not per token).
    - ``violation`` (bool): ``latency_ms > budget_ms``.
    - ``output_tokens`` (int): generated tokens at the chosen configuration.
    - ``measured_ms`` (float): measured total latency from the cache, only when measured; in
      live mode always (the model time of this request at this configuration, see
      :mod:`envs.live`).

    In ``budget_mode="slo"`` only: ``ttft_budget_ms``, ``tpot_budget_ms`` (float) always, and
    with the outcome ``ttft_ms`` (vision + prefill) and ``tpot_ms`` (decode ms per token after
    the first; 0 for one token); ``budget_ms`` is the equivalent total budget and
    ``violation`` means TTFT or TPOT over its budget.

    The vector envs return the same keys as dicts of arrays the gymnasium way (``info[k]`` of
    shape (num_envs, ...) with a bool mask ``info["_" + k]``; masked-out rows hold NaN / -1 /
    False / ``""``, so a float array reads NaN where unknown).
"""


def outcome_tpot(decode_ms: float, output_tokens: int) -> float:
    """Decode ms per output token after the first (0 for one token or fewer)."""
    return decode_ms / (output_tokens - 1) if output_tokens > 1 else 0.0


def add_outcome(info: dict[str, Any], outcome: Outcome, budget_ms: float, slo: tuple[float, float] | None = None) -> None:
    """Add the outcome keys to a scalar env's ``info``; ``slo`` = (TTFT budget, TPOT budget) in
    ``budget_mode="slo"``."""
    info["score"] = outcome.score
    info["latency_ms"] = lat = outcome.latency_ms
    info["vision_ms"] = vis = outcome.vision_ms
    info["prefill_ms"] = pre = outcome.prefill_ms
    info["decode_ms"] = dec = outcome.decode_ms
    out = outcome.output_tokens
    if slo is None:
        info["violation"] = lat > budget_ms
    else:
        ttft, tpot = vis + pre, outcome_tpot(dec, out)
        info["violation"] = ttft > slo[0] or tpot > slo[1]
        info["ttft_ms"] = ttft
        info["tpot_ms"] = tpot
    info["output_tokens"] = out
    meas = outcome.measured_ms
    if meas == meas:  # not NaN
        info["measured_ms"] = meas


@dataclass
class EnvConfig:
    """Every constructor argument of the envs (two-stage / flat, scalar / vector, replay / live), documented once.

    The envs take an ``EnvConfig`` (``MolmoeKnobsEnv(EnvConfig(cache=path))``) or its fields as
    keyword arguments (``gym.make("MolmoeKnobs-v0", cache=path, reward="hinge")``), or both
    (the keywords replace the config's fields). :func:`resolve_settings` validates them and
    loads the data.

    Attributes:
        cache: outcome-cache path or open ``OutcomeCache``; or ``data``: a ready
            :class:`ReplayData` (exactly one of the two, in replay mode).
        data: see ``cache``.
        split: split of the cache to replay (``"train"``, ``"val"``, ``"test"``).
        reward: reward mode (``hinge`` / ``hard`` / ``lagrangian`` / ``shaped``) or a
            :class:`RewardConfig`.
        reward_kwargs: the reward's parameters (``alpha``, ``c``, ``lam``, ``beta``, ``gamma``,
            ``delta``, ``epsilon``; see :mod:`envs.reward`).
        budget_range: ``(lo, hi)`` ms budgets are drawn from (uniform), default
            ``data.budget_range_ms``; or ``budgets``: a fixed list drawn from (not both).
        budgets: see ``budget_range``.
        budget_bounds: accepted range of budgets pinned with ``reset(options={"budget_ms": b})``.
        budget_mode: ``"absolute"``, ``"relative"`` or ``"slo"`` (None: the default,
            :data:`envs.budgets.DEFAULT_BUDGET_MODE`); see below.
        budget_u_range: ``relative`` mode's ``(u_lo, u_hi)``, default (0, 1).
        slo_ttft_range: ``slo`` mode's TTFT budget range (ms); default: median cheapest →
            median full-configuration TTFT.
        slo_tpot_range: ``slo`` mode's per-token budget range (ms); default: median cheapest →
            median full-configuration decode ms per token at the nominal length.
        estimator: the latency estimator (``model_runtime.latency_estimator.LatencyEstimator``)
            of the latencies; default: the cache's stored one, else the packaged default.
        nominal_output_tokens: output length of the budget features' cheapest / full latencies.
        incomplete: ``"skip"`` (only requests with every outcome) or ``"mask"`` (requests with
            any outcome; masks hide the values without an outcome).
        strict: ``False`` (default): a stage ignores the action components it does not read
            (two-stage env: top-k and active-blocks index at stage 0, tier and p at stage 1; the
            masks still pin them, so masked policies' log-probabilities stay exact).
            ``True``: every component must respect the mask, for debugging agents.
        invalid_action: what a masked action does: ``"raise"`` (ValueError naming the action
            and the valid sets) or ``"penalty"`` (reward :data:`INVALID_ACTION_REWARD`, the
            episode ends, ``info["invalid_action"]``); ``None`` (default): ``"raise"`` if
            ``strict`` else ``"penalty"``, so that random actions (gymnasium's and SB3's
            ``check_env``) run on the defaults. An action outside the action space always raises.
        mode: ``"replay"`` (outcomes from ``cache`` / ``data``) or ``"live"`` (outcomes from
            running the model, :mod:`envs.live`; scalar envs only): then ``runtime`` (a
            ``model_runtime.molmoe.runtime.MolmoeRuntime``) and ``requests`` (a request JSONL
            path or a list of ``model_runtime.datasets.Request``) replace ``cache`` / ``data``,
            ``split`` and ``incomplete`` do not apply (all requests, all configurations),
            ``estimator`` defaults to ``LatencyEstimator.default()`` and the budget range to its
            (median cheapest, median full) over the requests.
        runtime: live mode's model runtime (see ``mode``).
        requests: live mode's requests (see ``mode``).
        live_options: live mode's ``envs.live.LiveOptions`` or its dict (memoisation).
    """

    cache: "str | Path | OutcomeCache | None" = None
    data: ReplayData | None = None
    split: str = "train"
    reward: "str | RewardConfig" = "hinge"
    reward_kwargs: dict | None = None
    budget_range: Sequence[float] | None = None
    budgets: Sequence[float] | None = None
    budget_bounds: Sequence[float] | None = None
    budget_mode: str | None = None
    budget_u_range: Sequence[float] | None = None
    slo_ttft_range: Sequence[float] | None = None
    slo_tpot_range: Sequence[float] | None = None
    estimator: "LatencyEstimator | None" = None
    nominal_output_tokens: int = 3
    incomplete: str = "skip"
    strict: bool = False
    invalid_action: str | None = None
    mode: str = "replay"
    runtime: Any = None
    requests: Any = None
    live_options: Any = None

    @classmethod
    def build(cls, config: "EnvConfig | None" = None, /, **kwargs: Any) -> "EnvConfig":
        """``config`` with the keyword arguments replacing its fields (a fresh config if None);
        TypeError naming an unknown argument and the valid ones."""
        if config is not None and not isinstance(config, EnvConfig):
            raise TypeError(
                f"the envs' positional argument is an EnvConfig, got {type(config).__name__}; "
                f"pass the cache as cache=... (or data=...)"
            )
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise TypeError(f"unknown env argument(s) {unknown}; valid arguments: {names}")
        return replace(config, **kwargs) if config is not None else cls(**kwargs)

    @property
    def resolved_invalid_action(self) -> str:
        """``invalid_action`` with its default applied (``"raise"`` if ``strict`` else ``"penalty"``)."""
        if self.invalid_action is None:
            return "raise" if self.strict else "penalty"
        return self.invalid_action


EnvConfig.__doc__ = (EnvConfig.__doc__ or "") + BUDGET_MODES_DOC


@dataclass
class ReplaySettings:
    """Resolved constructor arguments of a replay env (see :func:`resolve_settings`)."""

    data: ReplayData
    reward: RewardConfig
    budgets: BudgetSampler
    incomplete: str
    invalid_action: str
    #: check the action components a stage does not read against the mask too (EnvConfig.strict)
    strict: bool = False
    #: live mode's outcome source (``envs.live.LiveOutcomes``); None in replay mode
    live: Any = None
    #: the budget mode's draws and pins (EnvConfig.budget_mode)
    episode_budgets: EpisodeBudgets | None = None
    eligible: np.ndarray = field(init=False)  # int64 (E,) requests episodes draw from
    eligible_mask: np.ndarray = field(init=False)  # bool (n,)

    def __post_init__(self) -> None:
        self.eligible = self.data.eligible(self.incomplete)
        self.eligible_mask = np.zeros(self.data.n, dtype=bool)
        self.eligible_mask[self.eligible] = True

    @property
    def scale_ms(self) -> float:
        return self.data.latency_scale_ms


def resolve_settings(config: EnvConfig, *, allow_live: bool = False) -> ReplaySettings:
    """Validate an :class:`EnvConfig` and load its data (cheap checks first).

    ``allow_live`` is set by the scalar envs; the vector envs leave it False, so
    ``mode="live"`` raises NotImplementedError there.
    """
    if not isinstance(config, EnvConfig):
        raise TypeError(f"resolve_settings takes an EnvConfig, got {type(config).__name__}")
    cache, data, split, mode = config.cache, config.data, config.split, config.mode
    runtime, requests, live_options = config.runtime, config.requests, config.live_options
    incomplete, estimator, nominal_output_tokens = config.incomplete, config.estimator, config.nominal_output_tokens
    budget_range, budgets, budget_bounds = config.budget_range, config.budgets, config.budget_bounds
    if not isinstance(config.strict, (bool, np.bool_)):
        raise ValueError(f"strict={config.strict!r}; valid values: True, False")
    invalid_action = config.resolved_invalid_action
    if mode not in ENV_MODES:
        raise ValueError(f"mode={mode!r}; valid modes: {list(ENV_MODES)}")
    if mode == "live" and not allow_live:
        raise NotImplementedError(
            "mode='live' is implemented for the scalar envs only (gym.make('MolmoeKnobs-v0' / "
            "'MolmoeKnobsFlat-v0', mode='live', runtime=..., requests=...)); the vector envs replay a cache"
        )
    if mode == "replay" and (runtime is not None or requests is not None or live_options is not None):
        raise ValueError("runtime=, requests= and live_options= only apply to mode='live'")
    if mode == "live" and (cache is not None or data is not None):
        raise ValueError("mode='live' takes runtime= (the model runtime) and requests=, not cache= / data=")
    if incomplete not in INCOMPLETE_MODES:
        raise ValueError(f"incomplete={incomplete!r}; valid values: {list(INCOMPLETE_MODES)}")
    if invalid_action not in INVALID_ACTION_MODES:
        raise ValueError(f"invalid_action={invalid_action!r}; valid values: {list(INVALID_ACTION_MODES)}")
    rcfg = RewardConfig.make(config.reward, config.reward_kwargs)
    bmode = DEFAULT_BUDGET_MODE if config.budget_mode is None else config.budget_mode
    if bmode not in BUDGET_MODES:
        raise ValueError(f"budget_mode={bmode!r}; valid modes: {list(BUDGET_MODES)}")
    if budget_range is not None and budgets is not None:
        raise ValueError("give budget_range=(lo, hi) or budgets=[...], not both")
    if mode == "live":
        from envs.live import LiveData  # lazy: the live path imports the model runtime (torch)

        rd: ReplayData = LiveData.build(runtime, requests, estimator=estimator,
                                        nominal_output_tokens=nominal_output_tokens, options=live_options)
    else:
        rd = as_replay_data(cache, data, split, estimator, nominal_output_tokens)
    if budgets is not None:
        sampler = BudgetSampler(budgets=budgets, bounds=budget_bounds)
    else:
        sampler = BudgetSampler(range_ms=rd.budget_range_ms if budget_range is None else budget_range, bounds=budget_bounds)
    ttft_range, tpot_range = config.slo_ttft_range, config.slo_tpot_range
    if bmode == "slo":
        if ttft_range is None:
            ttft_range = (float(np.median(rd.ttft_tier_ms[:, 0, 0])), float(np.median(rd.ttft_tier_ms[:, 1, -1])))
        if tpot_range is None:
            tpot_range = (float(np.median(rd.tpot_nominal_ms[:, 0])), float(np.median(rd.tpot_nominal_ms[:, 1])))
    elif ttft_range is not None or tpot_range is not None:
        raise ValueError("slo_ttft_range= / slo_tpot_range= only apply to budget_mode='slo'")
    if bmode != "relative" and config.budget_u_range is not None:
        raise ValueError("budget_u_range= only applies to budget_mode='relative'")
    if bmode != "absolute" and (budget_range is not None or budgets is not None):
        raise ValueError(f"budget_range= / budgets= only apply to budget_mode='absolute' (got budget_mode={bmode!r})")
    eb = EpisodeBudgets(bmode, sampler, rd.cheapest_ms, rd.full_ms, u_range=config.budget_u_range,
                        ttft_range=ttft_range, tpot_range=tpot_range, nominal_output_tokens=rd.nominal_output_tokens)
    return ReplaySettings(data=rd, reward=rcfg, budgets=sampler, incomplete=incomplete, invalid_action=invalid_action,
                          strict=bool(config.strict), live=getattr(rd, "live", None), episode_budgets=eb)


def check_reset_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """``reset`` options as a dict; ValueError naming unknown keys."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ValueError(f"reset options must be a dict, got {type(options).__name__}")
    unknown = sorted(set(options) - set(RESET_OPTIONS))
    if unknown:
        raise ValueError(f"unknown reset option(s) {unknown}; valid options: {list(RESET_OPTIONS)}")
    return options
