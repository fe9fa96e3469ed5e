"""Shared machinery of the pipeline's experiments: the run context, data subsets, running a
policy over the budget grid, the controller trainings (cached per seed), writing an
experiment's ``results.csv`` / ``summary.json`` with ``experiments.evaluate``'s columns and
metadata, paired bootstrap differences and the figure helper."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from envs.replay_data import ReplayData
from envs.reward import RewardConfig
from envs.vector_env import MolmoeKnobsFlatVectorEnv, MolmoeKnobsVectorEnv
from experiments.evaluate import EvalConfig, _write_outputs, is_two_stage, run_flat, run_two_stage
from experiments.report_metrics import bootstrap_ci

#: GRPO settings of the pipeline's controllers and the demo's. Mean-centred advantages (Dr. GRPO).
#: The learning rate annealed to 0: at a constant rate the policy kept wandering after its plateau
#: (on the v3 default one seed of three ended at 0.116 violations, static 0.081; annealed, all three
#: beat static). 1,000 iterations rather than 400: on the v4 default 69 % of router2's gain against
#: 59 %, no seed worse. On v12, noise of 0.3 on the standardised features in the update
#: (GRPOConfig.input_noise) with 2,000 iterations took seeds 1 and 2 from 50 % / 59 % of router2's
#: gain to 96 % / 97 % (seed 0 99 % → 93 %); the noise alone lifted seed 1 only
#: (benchmarks/RESULTS.md, "Agents on the live-built default").
GRPO_FULL: dict[str, Any] = {"iterations": 2000, "anneal_lr": True, "scale_rewards": "none", "input_noise": 0.3}
#: LinUCB as the demo trains it: one budget curve per group of questions (six groups of the language
#: feature, eight bumps each, in place of the shared bumps) and 4 M steps. On the v12 default it took
#: LinUCB from below static (−0.007 / −0.004 / −0.005, the plain context at 2 M steps) to above it
#: (benchmarks/RESULTS.md, "LinUCB with a budget curve per group of questions").
LINUCB_FULL: dict[str, Any] = {"total_steps": 4_000_000,
                               "features": {"lang_clusters": 6, "cluster_rbf_centers": 8, "rbf_centers": 0}}
GRPO_QUICK: dict[str, Any] = {"iterations": 25, "contexts_per_iter": 32, "group_size": 4, "hidden_sizes": (64, 64),
                              "budget_dim": 32, "num_minibatches": 1, "scale_rewards": "none"}


class NotApplicable(RuntimeError):
    """An experiment that this cache cannot support (e.g. no uncertainty features): recorded as
    finished with the reason in the report, not as a failure."""


class MissingInputs(RuntimeError):
    """An experiment that needs inputs this run was not given (``token_pruning`` without a model
    checkpoint or the cache's requests): the reason goes into the report, not as a failure, and the
    experiment is not marked finished, so that a later run given the inputs runs it."""


@dataclass
class Context:
    """What every experiment reads: the cache (both splits loaded once), the settings, the label."""

    cache: str
    out: Path
    seeds: list[int]
    quick: bool
    train: ReplayData
    test: ReplayData
    u_train: np.ndarray | None
    u_test: np.ndarray | None
    label: dict[str, Any]
    sha256: str
    budgets: np.ndarray
    reward: RewardConfig
    grpo: dict[str, Any] = field(default_factory=dict)
    verbose: bool = True
    figures: str = "all"  # "few": main draws only pareto.png and the controller's knob plot (tests)
    #: the cache's root attributes ``generator_params`` (live builds: runtime settings, model and
    #: request paths) and ``estimator`` (its latency estimator's JSON); empty / None when absent
    generator_params: dict[str, Any] = field(default_factory=dict)
    estimator_json: dict[str, Any] | None = None
    #: token_pruning's inputs: model checkpoint folder, request JSONL (None: from the cache's
    #: provenance when those files are here) and how many test requests it runs (None: its default)
    model: str | None = None
    requests: str | None = None
    pruning_requests: int | None = None

    @property
    def tag(self) -> str:
        return f"{self.label['cache_label']} cache"

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"[pipeline] {msg}", flush=True)


def load_context(cache: str, out: Path, seeds: Sequence[int], quick: bool, *, n_budgets: int | None = None,
                 grpo: dict[str, Any] | None = None, verbose: bool = True, figures: str = "all",
                 model: str | None = None, requests: str | None = None,
                 pruning_requests: int | None = None) -> Context:
    from cache.reader import OutcomeCache

    with OutcomeCache(cache) as oc:
        train = ReplayData.from_cache(oc, "train")
        test = ReplayData.from_cache(oc, "test")
        u = oc.uncertainty
        ok = u is not None and train.cache_rows is not None and np.isfinite(np.asarray(u)).any()
        u_train = np.asarray(u)[train.cache_rows] if ok else None
        u_test = np.asarray(u)[test.cache_rows] if ok else None
        label, sha = oc.label, oc.content_hash()
        gp = oc.attrs.get("generator_params")
        est_json = oc.estimator_json
    lo, hi = test.budget_range_ms
    nb = n_budgets or (4 if quick else 8)
    return Context(cache=str(cache), out=Path(out), seeds=list(seeds), quick=quick, train=train, test=test,
                   u_train=u_train, u_test=u_test, label=label, sha256=sha, budgets=np.linspace(lo, hi, nb),
                   reward=RewardConfig.make("hinge"), grpo=dict(grpo if grpo is not None else (GRPO_QUICK if quick else GRPO_FULL)),
                   verbose=verbose, figures=figures, generator_params=dict(gp) if isinstance(gp, dict) else {},
                   estimator_json=est_json, model=model, requests=requests, pruning_requests=pruning_requests)


# ----------------------------------------------------------------------------- data subsets
def subset(data: ReplayData, rows: np.ndarray, valid: np.ndarray | None = None) -> ReplayData:
    """The requests ``rows`` of ``data`` (same budget range and latency scale), optionally with a
    narrower outcome mask ``valid`` ((len(rows), C) bool, e.g. an action-space restriction)."""
    r = np.asarray(rows, dtype=np.int64)
    v = data.valid[r] if valid is None else (data.valid[r] & np.asarray(valid, dtype=bool))

    def opt(a):
        return None if a is None else np.asarray(a)[r]

    return ReplayData.from_arrays(
        score=np.where(v, data.score[r], np.nan), valid=v, output_tokens=data.output_tokens[r],
        vision_ms=data.vision_ms[r], prefill_ms=data.prefill_ms[r], decode_ms=data.decode_ms[r],
        total_ms=data.total_ms[r], measured_ms=data.measured_ms[r], lang=data.lang[r], tokens=data.tokens[r],
        knob_space=data.knob_space, sample_ids=data.sample_ids[r], datasets=data.datasets[r],
        cheapest_ms=data.cheapest_ms[r], full_ms=data.full_ms[r], budget_range_ms=data.budget_range_ms,
        latency_scale_ms=data.latency_scale_ms, synthetic=data.synthetic, split=data.split,
        nominal_output_tokens=data.nominal_output_tokens, source=data.source, cache_rows=opt(data.cache_rows),
        crops=opt(data.crops), vision_tokens=opt(data.vision_tokens), prompt_tokens=opt(data.prompt_tokens),
    )


def dataset_rows(data: ReplayData, names: Sequence[str]) -> np.ndarray:
    return np.flatnonzero(np.isin(np.asarray(data.datasets).astype(str), list(names)))


# ----------------------------------------------------------------------------- running policies
def run_policy(pol: Any, data: ReplayData, budgets: Sequence[float], reward: RewardConfig, seed: int, *,
               name: str | None = None, index_map: np.ndarray | None = None, envs: dict | None = None) -> pd.DataFrame:
    """Records (evaluate's per-request columns) of ``pol`` on every request of ``data`` at every
    budget; ``index_map`` maps ``data``'s rows to the evaluated split's (for subsets)."""
    envs = {} if envs is None else envs
    two = is_two_stage(pol)
    key = (id(data), two)
    if key not in envs:
        cls = MolmoeKnobsVectorEnv if two else MolmoeKnobsFlatVectorEnv
        envs[key] = cls(num_envs=data.n, data=data, reward=reward, incomplete="mask")
    frames = []
    for b in budgets:
        rec = run_two_stage(pol, envs[key], float(b)) if two else run_flat(pol, envs[key], float(b))
        df = pd.DataFrame({**rec, "policy": name or pol.name, "budget_ms": float(b), "seed": seed,
                           "reward_mode": reward.mode, "lambda": np.nan})
        if index_map is not None:
            df["sample_index"] = np.asarray(index_map, dtype=np.int64)[df["sample_index"].to_numpy()]
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def train_controller(ctx: Context, key: str, seed: int, data: ReplayData, *, overrides: dict[str, Any] | None = None,
                     env: dict[str, Any] | None = None) -> Any:
    """A GRPO controller trained on ``data`` (saved under ``OUT/controllers/<key>_s<seed>``,
    reused when already there, so that a resumed pipeline does not train it again)."""
    from agents.grpo import GRPOConfig, GRPOPolicy, train_grpo
    from experiments.train import apply_overrides

    d = ctx.out / "controllers" / f"{key}_s{seed}"
    if (d / "DONE").exists():
        pol = GRPOPolicy.load(d)
    else:
        cfg = apply_overrides(GRPOConfig(), {**ctx.grpo, **(overrides or {})})
        cfg = dataclasses.replace(cfg, seed=seed, eval_every=0)
        pol, _ = train_grpo({"data": data, "reward": ctx.reward, "incomplete": "mask", **(env or {})}, cfg, progress=False)
        pol.provenance = dict(ctx.label)
        pol.save(d)
        (d / "DONE").write_text(json.dumps({"key": key, "seed": seed, **ctx.label}))
    pol.name = key
    return pol


# ----------------------------------------------------------------------------- outputs
def write_experiment(ctx: Context, out: Path, records: pd.DataFrame, *, extra: dict[str, Any] | None = None,
                     plots: bool = False, eval_data: ReplayData | None = None) -> tuple[pd.DataFrame, dict]:
    """``results.csv`` / ``requests.csv.gz`` / ``summary.json`` of an experiment, written by
    ``experiments.evaluate`` (same columns and metadata); ``extra`` is merged into the summary
    under ``"experiment"``."""
    test = eval_data or ctx.test
    cfg = EvalConfig(cache=ctx.cache, out=str(out), policies=[], seeds=ctx.seeds, budgets=[float(b) for b in ctx.budgets],
                     n_budgets=len(ctx.budgets), lambdas=[], plots=plots, random_matched=False)
    import time

    results, summary = _write_outputs(cfg, out, [records], test, ctx.train, np.asarray(ctx.budgets),
                                      tuple(test.budget_range_ms), ctx.tag, ctx.sha256, time.perf_counter(), False,
                                      label=ctx.label)
    if extra:
        from experiments.evaluate import _json_default, _nan_to_none

        summary["experiment"] = extra
        (out / "summary.json").write_text(json.dumps(_nan_to_none(summary), indent=2, default=_json_default, allow_nan=False))
    return results, summary


def paired_diff(records: pd.DataFrame, a: str, b: str, n_boot: int = 1000) -> tuple[float, float, float, int]:
    """Mean reward of policy ``a`` minus policy ``b`` on the same (seed, budget, request) pairs,
    with its percentile bootstrap 95 % CI; (mean, lo, hi, n pairs)."""
    key = ["seed", "budget_ms", "sample_index"]
    ra = records[records["policy"] == a].set_index(key)["reward"]
    rb = records[records["policy"] == b].set_index(key)["reward"]
    d = (ra - rb.reindex(ra.index)).dropna().to_numpy()
    if d.size == 0:
        return float("nan"), float("nan"), float("nan"), 0
    est, lo, hi = bootstrap_ci(d, n_boot=n_boot)
    return est, lo, hi, int(d.size)


def mean_ci(values: np.ndarray, n_boot: int = 1000) -> tuple[float, float, float]:
    return bootstrap_ci(np.asarray(values, dtype=np.float64), n_boot=n_boot)


def oracle_rewards(ctx: Context, data: ReplayData, budgets: Sequence[float]) -> pd.DataFrame:
    """The oracle's (best) reward of every request of ``data`` at every budget."""
    from agents.baselines import reward_matrix

    rows = []
    for b in budgets:
        r = reward_matrix(data, float(b), ctx.reward)
        rows.append(pd.DataFrame({"sample_index": np.arange(data.n), "budget_ms": float(b),
                                  "oracle_reward": np.nanmax(np.where(np.isfinite(r), r, -np.inf), axis=1)}))
    return pd.concat(rows, ignore_index=True)


def save_fig(fig: Any, path: Path) -> str:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tight_layout with a shared colorbar
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot
