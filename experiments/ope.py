"""Off-policy evaluation checked against the truth the full-information cache gives exactly.

A stochastic behaviour policy (softmax over the supervised router's predicted rewards at
temperature ``--temperature``, mixed with ``--epsilon`` uniform exploration) logs ``--rounds``
rounds of the flat env (``MolmoeKnobsFlat-v0``: context = (request, budget), action =
configuration index) with its propensities, in the Open Bandit Pipeline's format
(:func:`agents.ope.bandit_feedback`). Contexts are drawn uniformly, with replacement, from the
held-out requests × a budget grid (``--n-budgets`` budgets over the cache's budget range), so the
target policy's value is the mean of its reward over that finite set of pairs, which the cache
gives exactly (every configuration's outcome of every request is stored): ``truth`` below is
computed by running the target policy on every pair through the env, not estimated.

IPS, SNIPS and DR (:mod:`agents.ope`; DR's reward model cross-fitted on the logs) estimate the
deterministic target policy's value (``--target``, default the router's greedy choice) with
normal and bootstrap 95 % intervals, once per logging seed.

Outputs in ``--out``: ``ope_results.csv`` (one row per seed × estimator: estimate, std error,
both intervals, truth, error, covered), ``summary.json`` (truth, per-estimator coverage over the
seeds, mean absolute error and bias, settings, cache path + sha256, synthetic label) and
``bandit_feedback_seed<first>.npz`` (the first seed's logs with the target's action
distribution and the reward model's predictions, the inputs to ``obp``'s estimators).

CLI: ``python -m experiments.ope --cache PATH --out DIR [--seeds 20] [--rounds 5000]``
(``--seeds N`` runs seeds 0..N-1).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from agents.baselines import SupervisedRouter
from agents.ope import (
    ESTIMATORS,
    bandit_feedback,
    estimate_all,
    fit_reward_model,
    one_hot,
    sample_actions,
    softmax_epsilon_probs,
)
from cache.reader import OutcomeCache
from envs.replay_data import ReplayData
from envs.reward import RewardConfig
from envs.vector_env import MolmoeKnobsFlatVectorEnv
from experiments.cli_errors import DEBUG_HELP, output_dir, run_cli

TARGETS: tuple[str, ...] = ("router", "static", "always_full", "always_cheapest")


@dataclass
class OPEConfig:
    cache: str
    out: str
    seeds: int = 20
    rounds: int = 5000
    n_budgets: int = 8
    target: str = "router"
    temperature: float = 0.02
    epsilon: float = 0.1
    reward: str = "hinge"
    split: str = "test"
    train_split: str = "train"
    n_folds: int = 5
    n_boot: int = 1000


def context_features(obs: dict[str, np.ndarray]) -> np.ndarray:
    """The logged context: the flat observation's budget and request features and a bias column
    (the language feature is left out: it is wide and the reward model overfits it per action)."""
    cols = [np.asarray(obs["budget"], dtype=np.float64)]
    if "request" in obs:
        cols.append(np.asarray(obs["request"], dtype=np.float64))
    n = cols[0].shape[0]
    return np.concatenate(cols + [np.ones((n, 1))], axis=1)


class OPESetup:
    """The fitted behaviour scorer, the target policy, the budget grid and the exact truth."""

    def __init__(self, cfg: OPEConfig) -> None:
        from experiments.evaluate import build_baselines, flat_observations, run_flat

        if cfg.target not in TARGETS:
            raise ValueError(f"unknown --target {cfg.target!r}; targets: {', '.join(TARGETS)}")
        self.cfg = cfg
        self.reward = RewardConfig.make(cfg.reward)
        with OutcomeCache(cfg.cache) as oc:
            self.test = ReplayData.from_cache(oc, cfg.split)
            self.train = ReplayData.from_cache(oc, cfg.train_split)
            self.cache_sha256 = oc.content_hash()
            self.label = oc.label
        lo, hi = self.test.budget_range_ms
        self.budgets = np.linspace(lo, hi, cfg.n_budgets)
        train_obs = flat_observations(self.train, float(hi))
        self.scorer = SupervisedRouter.fit(self.train, train_obs, self.reward)
        if cfg.target == "router":
            self.target = self.scorer
        else:
            self.target = build_baselines([cfg.target], self.train, self.test, train_obs, self.reward,
                                          self.budgets, None, (), 0)[0]
        self.n_actions = self.test.n_configs
        # exact truth: the target on every (request, budget) pair of the context distribution
        venv = MolmoeKnobsFlatVectorEnv(num_envs=self.test.n, data=self.test, reward=self.reward)
        self.truth = float(np.mean([run_flat(self.target, venv, float(b))["reward"].mean() for b in self.budgets]))

    def log(self, seed: int) -> tuple[dict[str, Any], np.ndarray]:
        """One logging run: (bandit feedback, the target's action distribution on its contexts)."""
        cfg, n = self.cfg, self.cfg.rounds
        rng = np.random.default_rng([seed, 9173])
        s = rng.integers(0, self.test.n, n)
        b = self.budgets[rng.integers(0, self.budgets.size, n)]
        venv = MolmoeKnobsFlatVectorEnv(num_envs=n, data=self.test, reward=self.reward)
        obs, info = venv.reset(options={"sample_index": s, "budget_ms": b})
        mask = np.asarray(obs["action_mask"]).astype(bool)
        scores = self.scorer.predict(obs, b)
        probs = softmax_epsilon_probs(scores, mask, cfg.temperature, cfg.epsilon)
        action, pscore = sample_actions(probs, rng)
        _, reward, _, _, _ = venv.step(action)
        if self.target is self.scorer:  # the router's greedy choice: SupervisedRouter.act on the same scores
            target_action = np.argmax(np.where(mask & np.isfinite(scores), scores, -np.inf), axis=1)
        else:
            target_action = np.asarray(self.target.act(obs, info), dtype=np.int64)
        fb = bandit_feedback(action=action, reward=reward, pscore=pscore, context=context_features(obs),
                             n_actions=self.n_actions, sample_index=s, budget_ms=b)
        return fb, one_hot(target_action, self.n_actions)


def run_ope(cfg: OPEConfig, *, verbose: bool = True) -> tuple[pd.DataFrame, dict]:
    t0 = time.perf_counter()
    setup = OPESetup(cfg)
    rows = []
    first: dict[str, np.ndarray] | None = None
    for seed in range(cfg.seeds):
        fb, pi = setup.log(seed)
        q = fit_reward_model(fb["context"], fb["action"], fb["reward"], fb["n_actions"], n_folds=cfg.n_folds,
                             groups=fb["sample_index"], seed=seed)
        for name, e in estimate_all(fb, pi, q, n_boot=cfg.n_boot, seed=seed).items():
            rows.append({"seed": seed, **e.to_dict(), "truth": setup.truth, "error": e.value - setup.truth,
                         "covered": e.covers(setup.truth), "covered_boot": e.covers(setup.truth, "bootstrap")})
        if first is None:
            first = {k: v for k, v in fb.items() if isinstance(v, np.ndarray)}
            first.update(n_rounds=np.int64(fb["n_rounds"]), n_actions=np.int64(fb["n_actions"]),
                         action_dist=pi, estimated_rewards_by_reg_model=q)
    df = pd.DataFrame(rows)
    df.insert(1, "synthetic", bool(setup.test.synthetic))
    per = {}
    for name in ESTIMATORS:
        g = df[df["estimator"] == name]
        per[name] = {"coverage": float(g["covered"].mean()), "coverage_boot": float(g["covered_boot"].mean()),
                     "n_covered": int(g["covered"].sum()), "n_seeds": int(len(g)),
                     "mean_estimate": float(g["value"].mean()), "bias": float(g["error"].mean()),
                     "mean_abs_error": float(g["error"].abs().mean()), "mean_ci_width": float((g["ci_hi"] - g["ci_lo"]).mean())}
    summary = {
        "synthetic": bool(setup.test.synthetic), "cache_label": setup.label["cache_label"],
        "cache": {"path": str(Path(cfg.cache).resolve()), "sha256": setup.cache_sha256},
        "config": asdict(cfg), "truth": setup.truth,
        "target": cfg.target, "behaviour": f"softmax(router scores / {cfg.temperature}) mixed with {cfg.epsilon} uniform",
        "context_distribution": f"uniform over {setup.test.n} {cfg.split} requests x {setup.budgets.size} budgets "
                                f"{np.round(setup.budgets, 3).tolist()} ms",
        "estimators": per, "wall_time_s": round(time.perf_counter() - t0, 2),
    }
    out = Path(cfg.out)
    with output_dir(out):
        df.to_csv(out / "ope_results.csv", index=False)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        np.savez_compressed(out / "bandit_feedback_seed0.npz", **first)
    if verbose:
        print(f"[ope] {setup.label['cache_label']} cache: truth {setup.truth:.4f} ({cfg.target}), {cfg.seeds} seeds x {cfg.rounds} rounds")
        for name, s in per.items():
            print(f"[ope] {name:5s} mean {s['mean_estimate']:.4f} bias {s['bias']:+.4f} MAE {s['mean_abs_error']:.4f} "
                  f"95% CI covers truth in {s['n_covered']}/{s['n_seeds']} (bootstrap {s['coverage_boot']:.2f})")
        print(f"[ope] wrote ope_results.csv, summary.json, bandit_feedback_seed0.npz to {out}")
    return df, summary


def parse_args(argv: Sequence[str] | None = None) -> OPEConfig:
    ap = argparse.ArgumentParser(prog="python -m experiments.ope", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, default=20, help="number of logging seeds (0..N-1)")
    ap.add_argument("--rounds", type=int, default=5000, help="logged rounds per seed")
    ap.add_argument("--n-budgets", type=int, default=8)
    ap.add_argument("--target", default="router", choices=TARGETS)
    ap.add_argument("--temperature", type=float, default=0.02)
    ap.add_argument("--epsilon", type=float, default=0.1)
    ap.add_argument("--reward", default="hinge", choices=["hinge", "hard", "lagrangian", "shaped"])
    ap.add_argument("--split", default="test")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    a = ap.parse_args(argv)
    if a.seeds < 1 or a.rounds < 2:
        ap.error("--seeds must be >= 1 and --rounds >= 2")
    return OPEConfig(cache=a.cache, out=a.out, seeds=a.seeds, rounds=a.rounds, n_budgets=a.n_budgets, target=a.target,
                     temperature=a.temperature, epsilon=a.epsilon, reward=a.reward, split=a.split, n_boot=a.n_boot)


def _main(argv: Sequence[str]) -> int:
    run_ope(parse_args(argv))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv, prog="python -m experiments.ope")


if __name__ == "__main__":
    raise SystemExit(main())
