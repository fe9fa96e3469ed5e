"""GRPO two-stage controller against the static and router baselines (prints figures; no asserts).

Bars (issue 13), on the committed live-built default cache (``--cache``; it was the default
SYNTHETIC cache under the earlier agents issue), reward ``hinge``, training budgets uniform over
the cache's budget range:

1. GRPO reaches its plateau in ≤ 60 s on 2 CPU cores (training wall clock, incl. the periodic
   evaluations on the val split that draw the learning curve).
2. On the held-out test split, averaged over an 8-budget grid (linspace over the budget range):
   mean reward above the best static configuration per budget (chosen per budget by mean reward
   on the train split, :class:`agents.baselines.StaticPerBudget`), with the paired bootstrap 95 %
   CI of the difference above 0 (resampling requests; each request's difference is its mean over
   the grid, so the 8 correlated budgets of one request count once).
3. Test violation rate ≤ static-per-budget's + 1 point, at a higher mean reward (the relative
   bar: an absolute one cannot hold where some (request, budget) pairs fit no configuration;
   the floors are printed).
4. ≥ 90 % of the supervised router's gain over the static baseline
   (:class:`agents.baselines.SupervisedRouter`: ridge regression per configuration of score and
   latency on the flat observation, fitted on the train split).

Also printed for orientation: the oracle (best configuration per request with hidden outcomes,
an upper bound), a per-dataset static table (the dataset is visible in the language feature:
what request-level adaptivity from ``lang`` alone buys at most, roughly), and GRPO per budget.

Plateau: the first evaluation time at which the val reward comes within ``--plateau-tol`` of the
best val reward of the run (the learning curve is printed too).

Run: ``python -m benchmarks.bench_grpo [--cache CACHE | --synthetic] [--seconds 60] [--seed 0] [--set key=value ...]``
(``--set`` overrides :class:`agents.grpo.GRPOConfig` fields, values parsed as JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from agents.baselines import Oracle, StaticPerBudget, SupervisedRouter, reward_matrix
from agents.grpo import GRPOConfig, train_grpo
from envs.replay_data import ReplayData
from envs.reward import RewardConfig
from envs.vector_env import MolmoeKnobsFlatVectorEnv, MolmoeKnobsVectorEnv
from experiments.evaluate import flat_observations, run_flat, run_two_stage
from experiments.report_metrics import bootstrap_ci


def per_dataset_static(train: ReplayData, test: ReplayData, budgets: np.ndarray, reward: RewardConfig) -> np.ndarray:
    """(n_test, n_budgets) rewards of the best static configuration per (dataset, budget) on train."""
    out = np.zeros((test.n, budgets.size))
    for j, b in enumerate(budgets):
        r_tr, r_te = reward_matrix(train, b, reward), reward_matrix(test, b, reward)
        for ds in np.unique(test.datasets):
            c = int(np.nanmean(r_tr[train.datasets == ds], axis=0).argmax())
            rows = test.datasets == ds
            out[rows, j] = r_te[rows, c]
    return out


def violation_floor(train: ReplayData, test: ReplayData, budgets: np.ndarray) -> dict[str, float]:
    """How low a violation rate can go on the test grid: ``forced`` = share of (request, budget)
    pairs where no configuration fits (needs hidden knowledge of the output length to reach);
    ``fastest_static`` / ``fastest_per_dataset`` = violation rate of the configuration with the
    lowest mean latency on train, per budget / per (dataset, budget) (what a policy that knows at
    most the dataset gets when it only minimises violations)."""
    forced = np.mean([(np.nanmin(test.total_ms, axis=1) > b).mean() for b in budgets])
    fastest = int(np.nanmean(train.total_ms, axis=0).argmin())
    fast_static = np.mean([(test.total_ms[:, fastest] > b).mean() for b in budgets])
    viol_ds = np.zeros(test.n)
    for ds in np.unique(test.datasets):
        c = int(np.nanmean(train.total_ms[train.datasets == ds], axis=0).argmin())
        rows = test.datasets == ds
        viol_ds[rows] = np.mean([test.total_ms[rows, c] > b for b in budgets], axis=0)
    return {"forced": float(forced), "fastest_static": float(fast_static), "fastest_per_dataset": float(viol_ds.mean())}


def run_policy(pol, venv, budgets: np.ndarray, two_stage: bool) -> dict[str, np.ndarray]:
    """(n_test, n_budgets) arrays of reward / violation / latency / score, rows = test requests."""
    recs = [run_two_stage(pol, venv, float(b)) if two_stage else run_flat(pol, venv, float(b)) for b in budgets]
    return {k: np.stack([r[k] for r in recs], axis=1) for k in ("reward", "violation", "latency_ms", "score")}


def parse_sets(items: list[str]) -> dict:
    out = {}
    for it in items:
        k, _, v = it.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_grpo", description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=None,
                    help="outcome cache (default: the committed live-built cache; without it in the checkout, "
                         "the SYNTHETIC default, built if missing)")
    ap.add_argument("--synthetic", action="store_true", help="run on the SYNTHETIC default cache instead")
    ap.add_argument("--seconds", type=float, default=60.0, help="GRPO training time limit (s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budgets", type=int, default=8, help="test budget grid size")
    ap.add_argument("--eval-every", type=int, default=25, help="val evaluation period (iterations)")
    ap.add_argument("--plateau-tol", type=float, default=0.003)
    ap.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                    help="GRPOConfig overrides (JSON values; repeatable)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    from experiments.demo import resolve_cache

    args.cache = str(resolve_cache(args.cache, args.synthetic, tag="bench_grpo"))
    reward = RewardConfig.make("hinge")
    train = ReplayData.from_cache(args.cache, "train")
    test = ReplayData.from_cache(args.cache, "test")
    tag = "SYNTHETIC cache" if test.synthetic else "cache"
    lo, hi = test.budget_range_ms
    budgets = np.linspace(lo, hi, args.budgets)
    print(f"[bench_grpo] {tag} {args.cache}: train {train.n} / test {test.n} requests; reward hinge "
          f"(alpha={reward.alpha}); budgets {np.round(budgets, 1).tolist()} ms")
    print(f"[bench_grpo] machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, load avg {os.getloadavg()[0]:.2f}")

    # ---- baselines on the test split, through the flat env
    flat_env = MolmoeKnobsFlatVectorEnv(num_envs=test.n, data=test, reward=reward)
    static = StaticPerBudget.fit(train, budgets, reward)
    router = SupervisedRouter.fit(train, flat_observations(train, float(hi)), reward)
    res = {name: run_policy(pol, flat_env, budgets, False)
           for name, pol in (("static", static), ("router", router), ("oracle", Oracle(test, reward)))}
    res["static_per_dataset"] = {"reward": per_dataset_static(train, test, budgets, reward)}

    # ---- GRPO: train on the train split (budgets uniform over the range), curve on val
    overrides = parse_sets(args.set)
    cfg = GRPOConfig(**{"seed": args.seed, "iterations": 1_000_000, "time_limit_s": args.seconds,
                        "eval_every": args.eval_every, "eval_split": "val", "log_every": 50, **overrides})
    env_kwargs = {"cache": args.cache, "split": "train", "reward": "hinge"}
    t0 = time.perf_counter()
    policy, hist = train_grpo(env_kwargs, cfg, progress=not args.quiet)
    train_s = time.perf_counter() - t0
    curve = [(h["time/elapsed_s"], h["iteration"], h["eval/val/reward"], h["eval/val/violation_rate"])
             for h in hist if "eval/val/reward" in h]
    best = max(c[2] for c in curve)
    t_plateau, it_plateau = next((c[0], c[1]) for c in curve if c[2] >= best - args.plateau_tol)
    two_env = MolmoeKnobsVectorEnv(num_envs=test.n, data=test, reward=reward)
    res["grpo"] = run_policy(policy, two_env, budgets, True)

    # ---- figures
    print(f"\n[bench_grpo] GRPO: {len(hist)} iterations in {train_s:.1f} s "
          f"({np.mean([h['time/iter_s'] for h in hist]) * 1e3:.0f} ms/iteration excl. evaluation); config "
          f"{json.dumps({k: v for k, v in cfg.to_dict().items() if k in overrides or k in ('group_size', 'contexts_per_iter', 'lr', 'clip_eps', 'ent_coef', 'kl_coef', 'update_epochs', 'num_minibatches', 'scale_rewards', 'torch_threads')})}")
    print("[bench_grpo] val learning curve (s, iteration, reward, violation rate): "
          + ", ".join(f"({t:.1f}, {i}, {r:.4f}, {v:.3f})" for t, i, r, v in curve[:: max(1, len(curve) // 12)]))
    print(f"[bench_grpo] plateau (val reward within {args.plateau_tol} of its best {best:.4f}) at "
          f"{t_plateau:.1f} s (iteration {it_plateau}); bar ≤ 60 s: {'MET' if t_plateau <= 60 else 'NOT MET'}")
    print(f"\n{'policy':20s} {'reward':>8s} {'viol':>6s} {'latency':>8s}   reward per budget")
    for name in ("static", "static_per_dataset", "router", "grpo", "oracle"):
        r = res[name]
        viol = f"{r['violation'].mean():6.3f}" if "violation" in r else "     -"
        lat = f"{r['latency_ms'].mean():8.1f}" if "latency_ms" in r else "       -"
        print(f"{name:20s} {r['reward'].mean():8.4f} {viol} {lat}   {np.round(r['reward'].mean(0), 3).tolist()}")
    diff = (res["grpo"]["reward"] - res["static"]["reward"]).mean(axis=1)
    est, ci_lo, ci_hi = bootstrap_ci(diff, n_boot=4000, seed=args.seed)
    gain_router = res["router"]["reward"].mean() - res["static"]["reward"].mean()
    gain_grpo = res["grpo"]["reward"].mean() - res["static"]["reward"].mean()
    gap_oracle = res["oracle"]["reward"].mean() - res["static"]["reward"].mean()
    viol = res["grpo"]["violation"].mean()
    share = gain_grpo / gain_router if gain_router > 0 else float("nan")
    print(f"\n[bench_grpo] GRPO − static: {est:+.4f} (paired bootstrap 95% CI [{ci_lo:+.4f}, {ci_hi:+.4f}]); "
          f"bar CI > 0: {'MET' if ci_lo > 0 else 'NOT MET'}")
    viol_static = res["static"]["violation"].mean()
    met = viol <= viol_static + 0.01 and gain_grpo > 0
    print(f"[bench_grpo] GRPO violation rate {viol:.3f}; bar ≤ static's {viol_static:.3f} + 0.01 at a higher "
          f"reward: {'MET' if met else 'NOT MET'}")
    floor = violation_floor(train, test, budgets)
    print(f"[bench_grpo]   violation floors on this grid: no configuration fits the budget for "
          f"{floor['forced']:.3f} of (request, budget) pairs (an oracle's floor); the fastest configuration per "
          f"budget by train mean latency violates {floor['fastest_static']:.3f} (per dataset: "
          f"{floor['fastest_per_dataset']:.3f}); static {res['static']['violation'].mean():.3f}, "
          f"oracle {res['oracle']['violation'].mean():.3f}")
    if gain_router > 0:
        print(f"[bench_grpo] share of the router's gain over static: {share:.2f} (router gain {gain_router:+.4f}); "
              f"bar ≥ 0.90: {'MET' if share >= 0.9 else 'NOT MET'}")
    else:
        print(f"[bench_grpo] the router does not beat static (gain {gain_router:+.4f}), so the ≥ 90 % bar holds "
              f"whenever GRPO ≥ static; GRPO gain {gain_grpo:+.4f}")
    print(f"[bench_grpo] share of the static → oracle gap closed: {gain_grpo / gap_oracle:.3f} (gap {gap_oracle:+.4f})")
    print(f"[bench_grpo] figures describe the {tag}, not MolmoE-1B" if test.synthetic else "")
    return {"t_plateau_s": t_plateau, "diff": est, "ci": (ci_lo, ci_hi), "violation": viol, "router_share": share,
            "rewards": {k: float(v["reward"].mean()) for k, v in res.items()}}


if __name__ == "__main__":
    main()
