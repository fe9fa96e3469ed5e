"""Offline replay evaluation of policies on held-out requests over a budget grid (and over λ).

Every held-out request is pinned at every budget of the grid in the native vector envs
(``MolmoeKnobsFlat-v0`` for flat policies, ``MolmoeKnobs-v0`` for two-stage ones), so each
policy sees exactly the same (request, budget) pairs and acts through the env API.

Outputs in ``--out``:

- ``results.csv``: one row per seed × policy × budget (or λ) × dataset (``all`` = every
  dataset): ``accuracy`` (mean metric score), ``mean_latency_ms`` (estimated), ``violation_rate``,
  ``mean_reward``, ``n``, and the share of requests per knob value (``ratio_tier_low`` ...
  ``ratio_p1`` ... ``ratio_k4`` ... ``ratio_b12`` ...). ``reward_mode`` and ``lambda`` say
  which reward the row was scored with. Violations restated: ``infeasible_share`` (share of the
  row's (request, budget) pairs where no configuration fits the budget),
  ``violation_rate_feasible`` (violation rate on the feasible pairs only; NaN if none), and for
  reference the same (request, budget) pairs' ``oracle_violation_rate`` /
  ``oracle_violation_rate_feasible`` (the reward-maximising oracle) and
  ``static_violation_rate`` / ``static_violation_rate_feasible`` (static-per-budget), NaN
  when that policy was not evaluated. Under ``reward="hard"`` a policy can do no better than
  ``infeasible_share`` overall.
- ``requests.csv.gz``: the per-request records behind it.
- Every row of both CSVs carries ``synthetic`` and ``cache_label`` (``"SYNTHETIC"``, or
  ``"live <model_id>"`` for a cache the runtime built: :func:`cache.reader.cache_label`), and so
  do ``summary.json`` (with ``generator`` and ``model_id``), the log lines and the plot titles.
- ``summary.json`` (strict JSON; undefined figures are ``null``): seed(s), config, cache path + sha256, synthetic flag, versions, wall time,
  and per policy: mean reward over the grid with its paired bootstrap 95% CI of the difference
  to the static baseline, violation rate, AIQ (area under the non-decreasing convex hull of
  (latency, accuracy), normalised over the budget range), accuracy share of the full
  configuration kept at 50/70/90% of its latency, share of the static → oracle gap and of the
  router's gain over static.
- ``results_agg.csv`` (several seeds): mean ± std and bootstrap 95% CI over seeds.
- ``pareto.png`` (+ one per dataset) and ``knobs_<policy>.png``.
- ``records.npz`` (``--records``): every episode (request id, budget, observation hash, action,
  outcome, reward, env settings, cache sha256); ``python -m experiments.validate_records`` replays it.

CLI: ``python -m experiments.evaluate --cache PATH --out DIR --policies static router oracle
grpo:outputs/run/grpo ...`` (``--seeds 0 1 2``; ``{seed}`` in a checkpoint path is replaced).
Every ``--policies`` name and every checkpoint of every seed is checked (loaded) before anything
runs; a user mistake (bad or truncated cache, missing checkpoint, unknown policy) prints one line
and exits with code 1 or 2, leaving no empty ``--out`` folder; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from agents.baselines import (
    FixedConfig,
    Oracle,
    RandomMatched,
    RandomPolicy,
    StaticPerBudget,
    SupervisedRouter,
    TwoStageRouter,
    UncertaintyThreshold,
)
from agents.registry import LEARNED_AGENTS
from cache.reader import OutcomeCache
from envs.replay_data import ReplayData
from envs.reward import RewardConfig
from envs.vector_env import MolmoeKnobsFlatVectorEnv, MolmoeKnobsVectorEnv
from experiments.cli_errors import DEBUG_HELP, output_dir, run_cli
from experiments.report_metrics import aggregate_seeds, aiq, bootstrap_ci, kept_share

BASELINES: tuple[str, ...] = (
    "always_full", "always_cheapest", "random", "static", "uncertainty", "router", "router2", "oracle",
)
KEPT_FRACS: tuple[float, ...] = (0.5, 0.7, 0.9)


@dataclass
class EvalConfig:
    """Evaluation settings (every field is a CLI flag of the same name)."""

    cache: str
    out: str
    policies: list[str] = field(default_factory=lambda: list(BASELINES))
    split: str = "test"
    train_split: str = "train"
    seeds: list[int] = field(default_factory=lambda: [0])
    n_budgets: int = 8  # budgets evenly spanning the cache's budget range
    budgets: list[float] | None = None  # explicit grid (overrides n_budgets)
    reward: str = "hinge"
    reward_kwargs: dict = field(default_factory=dict)
    lambdas: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5, 1.0])  # lagrangian sweep
    uncertainty_quantiles: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    random_matched: bool = True  # add random_matched[<policy>] for every learned policy
    plots: bool = True
    records: bool = False  # write records.npz: every episode, for experiments.validate_records


# ----------------------------------------------------------------------------- running policies
def _final(info: dict[str, Any]) -> dict[str, Any]:
    return info["final_info"]


def run_flat(policy, venv: MolmoeKnobsFlatVectorEnv, budget_ms: float, recorder=None) -> dict[str, np.ndarray]:
    n = venv.num_envs
    obs, info = venv.reset(options={"sample_index": np.arange(n), "budget_ms": np.full(n, budget_ms)})
    actions = np.asarray(policy.act(obs, info), dtype=np.int64)
    _, reward, _, _, info2 = venv.step(actions)
    if recorder is not None:  # experiments.records.EpisodeRecorder
        recorder.add(venv, policy.name, obs, actions, _final(info2), reward)
    return _records(_final(info2), reward)


def run_two_stage(policy, venv: MolmoeKnobsVectorEnv, budget_ms: float, recorder=None) -> dict[str, np.ndarray]:
    n = venv.num_envs
    obs0, info = venv.reset(options={"sample_index": np.arange(n), "budget_ms": np.full(n, budget_ms)})
    a1 = np.asarray(policy.act_stage1(obs0, info), dtype=np.int64)
    obs, _, _, _, info = venv.step(a1)
    a2 = np.asarray(policy.act_stage2(obs, info), dtype=np.int64)
    _, reward, _, _, info2 = venv.step(a2)
    if recorder is not None:
        recorder.add(venv, policy.name, obs0, np.concatenate([a1, a2], axis=1), _final(info2), reward)
    return _records(_final(info2), reward)


def _records(fin: dict[str, Any], reward: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "sample_index": np.asarray(fin["sample_index"], dtype=np.int64),
        "dataset": np.asarray(fin["dataset"]).astype(str),
        "config_index": np.asarray(fin["config_index"], dtype=np.int64),
        "score": np.asarray(fin["score"], dtype=np.float64),
        "latency_ms": np.asarray(fin["latency_ms"], dtype=np.float64),
        "violation": np.asarray(fin["violation"], dtype=bool),
        "reward": np.asarray(reward, dtype=np.float64),
    }


def is_two_stage(policy) -> bool:
    return hasattr(policy, "act_stage1") and hasattr(policy, "act_stage2")


# ----------------------------------------------------------------------------- aggregation
def knob_columns(data: ReplayData) -> dict[str, np.ndarray]:
    """Per-configuration one-hot tables for the action-ratio columns: name → bool (C,)."""
    ks = data.knob_space
    t = ks.config_table()
    cols: dict[str, np.ndarray] = {}
    for i, tier in enumerate(ks.tiers):
        cols[f"ratio_tier_{tier}"] = t["tier"] == i
    for p in ks.insertion_positions:
        cols[f"ratio_p{p}"] = t["p"] == p
    for k in ks.top_ks:
        cols[f"ratio_k{k}"] = t["top_k"] == k
    for b in sorted(set(t["blocks"].tolist())):
        cols[f"ratio_b{b}"] = t["blocks"] == b
    return cols


def feasible_pairs(data: ReplayData, sample_index: np.ndarray, budget_ms: np.ndarray) -> np.ndarray:
    """bool: some configuration with an outcome fits ``budget_ms`` for request ``sample_index``
    (its estimated total latency ≤ the budget); True where the budget is NaN (budget-free rows)."""
    s = np.asarray(sample_index, dtype=np.int64)
    b = np.asarray(budget_ms, dtype=np.float64)
    lat = np.where(data.valid, data.total_ms, np.inf)
    out = np.ones(s.shape, dtype=bool)
    for bv in np.unique(b[np.isfinite(b)]):
        rows = b == bv
        out[rows] = (lat[s[rows]] <= bv).any(axis=1)
    return out


def _violation_rate_feasible(g: pd.DataFrame) -> float:
    f = g["feasible"].to_numpy(dtype=bool)
    return float(g["violation"].to_numpy(dtype=bool)[f].mean()) if f.any() else float("nan")


def aggregate(records: pd.DataFrame, data: ReplayData) -> pd.DataFrame:
    """results.csv rows from per-request records (one row per group × dataset, plus 'all')."""
    kc = knob_columns(data)
    keys = ["seed", "policy", "reward_mode", "lambda", "budget_ms"]
    if "feasible" not in records:
        records = records.assign(feasible=feasible_pairs(data, records["sample_index"].to_numpy(),
                                                         records["budget_ms"].to_numpy()))
    rows = []
    for key, g in records.groupby(keys, dropna=False, sort=True):
        for ds, gd in [("all", g), *sorted(g.groupby("dataset"))]:
            ci = gd["config_index"].to_numpy()
            row = dict(zip(keys, key))
            row.update(
                dataset=ds,
                accuracy=float(gd["score"].mean()),
                mean_latency_ms=float(gd["latency_ms"].mean()),
                violation_rate=float(gd["violation"].mean()),
                violation_rate_feasible=_violation_rate_feasible(gd),
                infeasible_share=float(1.0 - gd["feasible"].mean()),
                mean_reward=float(gd["reward"].mean()),
                n=int(len(gd)),
            )
            for name, onehot in kc.items():
                row[name] = float(onehot[ci].mean())
            rows.append(row)
    res = pd.DataFrame(rows)
    on = ["seed", "reward_mode", "lambda", "budget_ms", "dataset"]
    for ref in ("oracle", "static"):
        cols = {"violation_rate": f"{ref}_violation_rate", "violation_rate_feasible": f"{ref}_violation_rate_feasible"}
        sub = res.loc[res["policy"] == ref, on + list(cols)].rename(columns=cols)
        res = res.merge(sub, on=on, how="left") if len(sub) else res.assign(**{c: np.nan for c in cols.values()})
    return res


def static_points(data: ReplayData, dataset: str = "all") -> pd.DataFrame:
    """Every fixed configuration's (mean latency, accuracy) on the evaluated requests (of one
    ``dataset``, or ``"all"``)."""
    ks = data.knob_space
    rows = np.ones(data.n, dtype=bool) if dataset == "all" else np.asarray(data.datasets).astype(str) == dataset
    valid = data.valid[rows]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a configuration without outcomes: NaN
        acc = np.nanmean(np.where(valid, data.score[rows], np.nan), axis=0)
        lat = np.nanmean(np.where(valid, data.total_ms[rows], np.nan), axis=0)
    labels = [""] * len(ks)
    labels[ks.index(ks.full_config)] = "full"
    labels[ks.index(ks.cheapest_config)] = "cheapest"
    return pd.DataFrame({"config": [str(c) for c in ks.configs], "mean_latency_ms": lat, "accuracy": acc, "label": labels})


def policy_summary(records: pd.DataFrame, results: pd.DataFrame, data: ReplayData, budget_range: tuple[float, float]) -> dict:
    """Per-policy figures over the budget grid of the main reward (see the module docstring)."""
    main = records[records["lambda"].isna()]
    res = results[(results["lambda"].isna()) & (results["dataset"] == "all")]
    full_idx = data.knob_space.index(data.knob_space.full_config)
    full_lat = float(np.nanmean(data.total_ms[:, full_idx]))
    full_acc = float(np.nanmean(data.score[:, full_idx]))
    key = ["seed", "budget_ms", "sample_index"]
    by_policy = {p: g.set_index(key)["reward"] for p, g in main.groupby("policy")}
    mean_r = {p: float(r.mean()) for p, r in by_policy.items()}
    out: dict[str, dict] = {}
    for p, r in by_policy.items():
        g = res[res["policy"] == p]
        s: dict[str, Any] = {
            "mean_reward": mean_r[p],
            "accuracy": float(main.loc[main["policy"] == p, "score"].mean()),
            "mean_latency_ms": float(main.loc[main["policy"] == p, "latency_ms"].mean()),
            "violation_rate": float(main.loc[main["policy"] == p, "violation"].mean()),
            "violation_rate_feasible": _violation_rate_feasible(main[main["policy"] == p]),
            "infeasible_share": float(1.0 - main.loc[main["policy"] == p, "feasible"].mean()),
            "aiq": aiq(g["mean_latency_ms"].to_numpy(), g["accuracy"].to_numpy(), budget_range),
        }
        for f in KEPT_FRACS:
            s[f"kept_share_at_{int(f * 100)}pct_latency"] = kept_share(
                g["mean_latency_ms"].to_numpy(), g["accuracy"].to_numpy(), full_lat, full_acc, f
            )
        if "static" in by_policy and p != "static":
            diff = (r - by_policy["static"].reindex(r.index)).to_numpy()
            est, lo, hi = bootstrap_ci(diff, n_boot=2000)
            s["reward_minus_static"] = {"mean": est, "ci95": [lo, hi]}
        if {"static", "oracle"} <= by_policy.keys():
            gap = mean_r["oracle"] - mean_r["static"]
            s["share_of_static_to_oracle_gap"] = (mean_r[p] - mean_r["static"]) / gap if gap > 0 else float("nan")
        for router in ("router", "router2"):
            if {"static", router} <= by_policy.keys():
                gain = mean_r[router] - mean_r["static"]
                s[f"share_of_{router}_gain"] = (mean_r[p] - mean_r["static"]) / gain if gain > 0 else float("nan")
        out[p] = s
    return out


# ----------------------------------------------------------------------------- the run
def build_baselines(
    names: Sequence[str], train: ReplayData, test: ReplayData, train_obs: dict, reward: RewardConfig,
    budgets: np.ndarray, uncertainty: tuple[np.ndarray, np.ndarray] | None, quantiles: Sequence[float], seed: int,
) -> list:
    ks = test.knob_space
    static = StaticPerBudget.fit(train, budgets, reward)
    out: list = []
    for name in names:
        if name == "always_full":
            out.append(FixedConfig("always_full", ks.index(ks.full_config)))
        elif name == "always_cheapest":
            out.append(FixedConfig("always_cheapest", ks.index(ks.cheapest_config)))
        elif name == "random":
            out.append(RandomPolicy(seed))
        elif name == "static":
            out.append(static)
        elif name == "router":
            out.append(SupervisedRouter.fit(train, train_obs, reward))
        elif name == "router2":
            out.append(TwoStageRouter.fit(train, reward))
        elif name == "oracle":
            out.append(Oracle(test, reward))
        elif name == "uncertainty":
            if uncertainty is None or not np.isfinite(uncertainty[0]).any():
                print("[evaluate] uncertainty baseline skipped: the cache has no uncertainty features")
                continue
            u_train, u_test = uncertainty
            for q, tau in zip(quantiles, UncertaintyThreshold.thresholds(u_train, "entropy", quantiles)):
                out.append(UncertaintyThreshold(u_test, tau, static, ks.index(ks.cheapest_config),
                                                name=f"uncertainty@q{q:g}"))
        else:
            raise ValueError(f"unknown baseline {name!r}; baselines: {', '.join(BASELINES)}")
    return out


def _uncertainty(oc: "OutcomeCache", train: ReplayData, test: ReplayData) -> tuple[np.ndarray, np.ndarray] | None:
    u = oc.uncertainty
    if u is None or train.cache_rows is None or test.cache_rows is None:
        return None
    return u[train.cache_rows], u[test.cache_rows]


def split_label(spec: str) -> tuple[str, str]:
    """(name, ``agent:DIR``) of a checkpoint spec ``[NAME=]agent:DIR``; the name defaults to the agent."""
    head, sep, rest = spec.partition("=")
    if sep and ":" not in head:
        return head, rest
    return spec.partition(":")[0], spec


def check_policy_names(policies: Sequence[str]) -> None:
    """ValueError naming the valid names for a ``--policies`` entry that is neither a baseline
    nor an ``[NAME=]agent:DIR`` checkpoint spec of a known agent, or when two entries would be
    reported under one name (two checkpoints of one agent need a NAME each)."""
    valid = (f"baselines {', '.join(BASELINES)}, or a checkpoint [NAME=]AGENT:DIR with AGENT one of "
             f"{', '.join(LEARNED_AGENTS)}")
    names: dict[str, str] = {}
    for p in policies:
        if p in BASELINES:
            name = p
        else:
            name, spec = split_label(p)
            agent, sep, directory = spec.partition(":")
            if not sep:
                raise ValueError(f"unknown policy {p!r} in --policies; valid: {valid}")
            if agent not in LEARNED_AGENTS or not directory or not name:
                raise ValueError(f"bad checkpoint spec {p!r} in --policies; valid: {valid}")
            if name in BASELINES:
                raise ValueError(f"checkpoint name {name!r} of {p!r} in --policies is a baseline's name")
        if name in names:
            raise ValueError(f"--policies {names[name]!r} and {p!r} would both be reported as {name!r}; "
                             "name checkpoints NAME=agent:DIR")
        names[name] = p


def load_checkpoints(specs: Sequence[str], seeds: Sequence[int]) -> dict[int, list[Any]]:
    """Every ``agent:DIR`` spec loaded for every seed (``{seed}`` replaced), before anything
    runs; ValueError naming the spec, the seed and what is missing."""
    from agents.registry import load_policy  # torch-backed agents load only when asked

    loaded: dict[int, list[Any]] = {}
    problems: list[str] = []
    for seed in seeds:
        loaded[seed] = []
        for labelled in specs:
            name, spec = split_label(labelled)
            resolved = spec.replace("{seed}", str(seed))
            agent, _, directory = resolved.partition(":")
            if not Path(directory).is_dir():
                problems.append(f"{resolved} (seed {seed}): no such checkpoint folder")
                continue
            try:
                pol = load_policy(resolved)
                pol.name = name
                loaded[seed].append(pol)
            except (OSError, ValueError, KeyError) as e:
                problems.append(f"{resolved} (seed {seed}): cannot load the checkpoint ({' '.join(str(e).split())})")
    if problems:
        raise ValueError(f"{len(problems)} checkpoint(s) of --policies missing or unreadable: " + "; ".join(problems))
    return loaded


def flat_observations(data: ReplayData, budget_ms: float) -> dict[str, np.ndarray]:
    """Flat observations of every request of ``data`` (row i ↔ request i) at one budget."""
    venv = MolmoeKnobsFlatVectorEnv(num_envs=data.n, data=data)
    obs, _ = venv.reset(options={"sample_index": np.arange(data.n), "budget_ms": np.full(data.n, budget_ms)})
    return obs


def evaluate(cfg: EvalConfig, learned: dict[str, Any] | None = None, *, verbose: bool = True) -> tuple[pd.DataFrame, dict]:
    """Run the evaluation and write its outputs. ``learned`` maps names to policy objects (used
    besides the ``cfg.policies`` specs, e.g. from the demo); returns (results, summary)."""
    t0 = time.perf_counter()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    check_policy_names(cfg.policies)
    if not cfg.seeds:
        raise ValueError("--seeds needs at least one seed")
    reward = RewardConfig.make(cfg.reward, cfg.reward_kwargs)
    # one open cache serves both splits, the uncertainty features and the content hash
    with OutcomeCache(cfg.cache) as oc:
        test = ReplayData.from_cache(oc, cfg.split)
        train = ReplayData.from_cache(oc, cfg.train_split)
        unc = _uncertainty(oc, train, test)
        cache_sha256 = oc.content_hash()
        label = oc.label
    lo, hi = test.budget_range_ms
    budgets = np.asarray(cfg.budgets if cfg.budgets else np.linspace(lo, hi, cfg.n_budgets), dtype=np.float64)
    tag = f"{label['cache_label']} cache"  # "SYNTHETIC cache" / "live <model_id> cache": logs and plot titles
    if verbose:
        print(f"[evaluate] {tag} {cfg.cache}: {test.n} {cfg.split} / {train.n} {cfg.train_split} requests, "
              f"budgets {np.round(budgets, 1).tolist()} ms, reward {reward.mode}")
    env_kw = {"reward": reward}
    flat_env = MolmoeKnobsFlatVectorEnv(num_envs=test.n, data=test, **env_kw)
    two_env = MolmoeKnobsVectorEnv(num_envs=test.n, data=test, **env_kw)
    train_obs = flat_observations(train, float(hi))
    baseline_names = [p for p in cfg.policies if p in BASELINES]
    specs = [p for p in cfg.policies if p not in BASELINES]
    checkpoints = load_checkpoints(specs, cfg.seeds)  # every checkpoint of every seed, before any run
    from experiments.records import EpisodeRecorder

    recorder = EpisodeRecorder(cfg.cache, cache_sha256) if cfg.records else None

    frames = []
    for seed in cfg.seeds:
        if recorder is not None:
            recorder.seed = seed
        policies = build_baselines(baseline_names, train, test, train_obs, reward, budgets, unc,
                                   cfg.uncertainty_quantiles, seed)
        learned_here = dict(learned or {})
        for spec, pol in zip(specs, checkpoints[seed]):
            learned_here[getattr(pol, "name", spec)] = pol
        for name, pol in learned_here.items():
            pol.name = name
            policies.append(pol)
        for pol in policies:
            for b in budgets:
                rec = (run_two_stage(pol, two_env, b, recorder) if is_two_stage(pol)
                       else run_flat(pol, flat_env, b, recorder))
                frames.append(pd.DataFrame({**rec, "policy": pol.name, "budget_ms": b, "seed": seed,
                                            "reward_mode": reward.mode, "lambda": np.nan}))
        if cfg.random_matched:
            done = pd.concat(frames)
            for name in learned_here:
                g = done[(done["policy"] == name) & (done["seed"] == seed)]
                rm = RandomMatched.from_choices(g["budget_ms"].to_numpy(), g["config_index"].to_numpy(),
                                                len(test.knob_space), seed, name=f"random_matched[{name}]")
                for b in budgets:
                    frames.append(pd.DataFrame({**run_flat(rm, flat_env, b, recorder), "policy": rm.name, "budget_ms": b,
                                                "seed": seed, "reward_mode": reward.mode, "lambda": np.nan}))
        # λ sweep of the lagrangian reward for the reward-aware baselines (budget-free: pinned at hi)
        for lam in cfg.lambdas:
            lag = RewardConfig.make("lagrangian", {"lam": lam})
            venv = MolmoeKnobsFlatVectorEnv(num_envs=test.n, data=test, reward=lag)
            lag_two = MolmoeKnobsVectorEnv(num_envs=test.n, data=test, reward=lag)
            for pol in build_baselines([n for n in ("always_full", "always_cheapest", "static", "router", "router2", "oracle")
                                        if n in baseline_names], train, test, train_obs, lag,
                                       np.array([hi]), None, (), seed):
                run = (run_two_stage(pol, lag_two, float(hi), recorder) if is_two_stage(pol)
                       else run_flat(pol, venv, float(hi), recorder))
                frames.append(pd.DataFrame({**run, "policy": pol.name, "budget_ms": np.nan,
                                            "seed": seed, "reward_mode": "lagrangian", "lambda": lam}))

    with output_dir(out):
        res = _write_outputs(cfg, out, frames, test, train, budgets, (lo, hi), tag, cache_sha256, t0, verbose,
                             label=label)
        if recorder is not None:
            recorder.save(out / "records.npz")
            if verbose:
                print(f"[evaluate] wrote {len(recorder)} episodes to {out / 'records.npz'} "
                      f"(check: python -m experiments.validate_records {out / 'records.npz'} --cache {cfg.cache})")
        return res


def _write_outputs(cfg: EvalConfig, out: Path, frames: list[pd.DataFrame], test: ReplayData, train: ReplayData,
                   budgets: np.ndarray, budget_range: tuple[float, float], tag: str, cache_sha256: str, t0: float,
                   verbose: bool, *, label: dict[str, Any] | None = None) -> tuple[pd.DataFrame, dict]:
    lo, hi = budget_range
    if label is None:
        label = {"cache_label": "SYNTHETIC" if test.synthetic else "unlabelled", "synthetic": bool(test.synthetic),
                 "generator": None, "model_id": None}
    records = pd.concat(frames, ignore_index=True)
    records["feasible"] = feasible_pairs(test, records["sample_index"].to_numpy(), records["budget_ms"].to_numpy())
    results = aggregate(records, test)
    results.insert(0, "synthetic", bool(test.synthetic))
    results.insert(1, "cache_label", label["cache_label"])
    results.to_csv(out / "results.csv", index=False)
    # every per-request row says which kind of cache it comes from (constant columns: gzip makes them free)
    records.assign(synthetic=bool(test.synthetic), cache_label=label["cache_label"]).to_csv(out / "requests.csv.gz", index=False)
    if len(cfg.seeds) > 1:
        per_seed = results[results["lambda"].isna()]
        aggregate_seeds(per_seed, ["policy", "budget_ms", "dataset"],
                        ["accuracy", "mean_latency_ms", "violation_rate", "mean_reward"]).to_csv(out / "results_agg.csv", index=False)

    summary = {
        "synthetic": bool(test.synthetic),
        "cache_label": label["cache_label"],
        "generator": label["generator"],
        "model_id": label["model_id"],
        "note": "SYNTHETIC outcome cache: figures describe the generative model, not MolmoE-1B" if test.synthetic else "",
        "seeds": cfg.seeds,
        "config": asdict(cfg),
        "cache": {"path": str(Path(cfg.cache).resolve()), "sha256": cache_sha256},
        "budgets_ms": budgets.tolist(),
        "budget_range_ms": [lo, hi],
        "n_requests": {"eval": test.n, "train": train.n},
        "versions": _versions(),
        "policies": policy_summary(records, results, test, (lo, hi)),
        "wall_time_s": round(time.perf_counter() - t0, 2),
    }
    (out / "summary.json").write_text(json.dumps(_nan_to_none(summary), indent=2, default=_json_default, allow_nan=False))
    written = ["results.csv", "requests.csv.gz", "summary.json"] + (["results_agg.csv"] if len(cfg.seeds) > 1 else [])
    if cfg.plots:
        from experiments.plots import knob_distribution_plot, pareto_plot

        main = results[results["seed"] == cfg.seeds[0]]
        pareto_plot(main, static_points(test), out / "pareto.png", title=f"{tag}: accuracy vs latency ({cfg.split} split)")
        n_plots = 1
        for ds in sorted(set(main["dataset"]) - {"all"}):
            pareto_plot(main, static_points(test, dataset=ds), out / f"pareto_{_safe(ds)}.png",
                        title=f"{tag}: {ds} ({cfg.split} split)", dataset=ds)
            n_plots += 1
        for p in sorted(set(main["policy"])):
            if p in ("oracle", "always_full", "always_cheapest"):
                continue
            knob_distribution_plot(main, p, out / f"knobs_{_safe(p)}.png", title=f"{p}: knob shares per budget ({tag})")
            n_plots += 1
        written.append(f"{n_plots} plots")
    if verbose:
        print_table(summary)
        print(f"[evaluate] wrote {', '.join(written)} to {out} in {summary['wall_time_s']} s")
    return results, summary


def print_table(summary: dict) -> None:
    rows = []
    for name, s in summary["policies"].items():
        d = s.get("reward_minus_static")
        rows.append({
            "policy": name,
            "reward": s["mean_reward"],
            "vs static [95% CI]": f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d else "",
            "accuracy": s["accuracy"],
            "latency_ms": s["mean_latency_ms"],
            "violations": s["violation_rate"],
            "AIQ": s["aiq"],
            "gap share": s.get("share_of_static_to_oracle_gap", float("nan")),
        })
    df = pd.DataFrame(rows).sort_values("reward", ascending=False)
    banner = f" ({summary['cache_label']} cache)" if summary.get("cache_label") else (
        " (SYNTHETIC cache)" if summary.get("synthetic") else "")
    print(f"\nMean over the budget grid{banner}:")
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(df.to_string(index=False))


def _versions() -> dict:
    import gymnasium
    import h5py

    v = {"python": sys.version.split()[0], "platform": platform.platform(), "numpy": np.__version__,
         "pandas": pd.__version__, "gymnasium": gymnasium.__version__, "h5py": h5py.__version__}
    try:
        from importlib.metadata import version

        v["molmoe-gym"] = version("molmoe-gym")
    except Exception:  # not installed (running from a checkout)
        v["molmoe-gym"] = "checkout"
    if "torch" in sys.modules:
        v["torch"] = sys.modules["torch"].__version__
    return v


def _nan_to_none(o: Any) -> Any:
    """Strict JSON: undefined figures (e.g. a kept share below the cheapest latency) become null."""
    if isinstance(o, dict):
        return {k: _nan_to_none(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_nan_to_none(v) for v in o]
    if isinstance(o, (float, np.floating)) and not np.isfinite(o):
        return None
    return o


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _safe(name: str) -> str:
    """``name`` as a file-name part: runs of other characters become one ``_``, none at the ends
    (``random_matched[grpo]`` → ``random_matched_grpo``)."""
    out = re.sub(r"[^0-9A-Za-z.-]+", "_", name).strip("_.")
    return out or "policy"


def parse_args(argv: Sequence[str] | None = None) -> EvalConfig:
    ap = argparse.ArgumentParser(prog="python -m experiments.evaluate", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True, help="outcome cache (HDF5)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--policies", nargs="+", default=list(BASELINES),
                    help=f"baseline names ({', '.join(BASELINES)}) and checkpoints 'agent:DIR' or 'NAME=agent:DIR' "
                         "(NAME: how results.csv names it; two checkpoints of one agent need one each)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--train-split", default="train")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--n-budgets", type=int, default=8)
    ap.add_argument("--budgets", nargs="+", type=float, default=None)
    ap.add_argument("--reward", default="hinge", choices=["hinge", "hard", "lagrangian", "shaped"])
    ap.add_argument("--reward-kwargs", type=json.loads, default={}, help='JSON, e.g. \'{"alpha": 2.0}\'')
    ap.add_argument("--lambdas", nargs="*", type=float, default=[0.1, 0.25, 0.5, 1.0])
    ap.add_argument("--no-plots", action="store_true", help="write no plots")
    ap.add_argument("--records", action="store_true",
                    help="write records.npz (every episode; replay with python -m experiments.validate_records)")
    ap.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    a = ap.parse_args(argv)
    return EvalConfig(cache=a.cache, out=a.out, policies=a.policies, split=a.split, train_split=a.train_split,
                      seeds=a.seeds, n_budgets=a.n_budgets, budgets=a.budgets, reward=a.reward,
                      reward_kwargs=a.reward_kwargs, lambdas=a.lambdas, plots=not a.no_plots,
                      records=a.records)


def _main(argv: Sequence[str]) -> int:
    evaluate(parse_args(argv))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; user mistakes are one-line errors (exit 1 / 2), ``--debug`` shows the traceback."""
    return run_cli(_main, argv, prog="python -m experiments.evaluate")


if __name__ == "__main__":
    raise SystemExit(main())
