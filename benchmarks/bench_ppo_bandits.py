"""PPO / MaskablePPO / contextual-bandit benchmark on the default SYNTHETIC cache.

Prints (asserts nothing):

1. SB3 vector-env throughput: :class:`agents.sb3_vec_adapter.SB3VecEnvAdapter` over the native
   vector env vs ``DummyVecEnv`` over ``gym.make`` copies — env-only steps/s through the SB3
   ``VecEnv`` API (random valid actions, masks fetched the way MaskablePPO does), and
   MaskablePPO ``learn`` steps/s with each.
2. Per agent: training wall time, then on the held-out **test** split averaged over an 8-budget
   grid (``linspace`` over the cache's budget range): mean reward, accuracy (mean score),
   violation rate, next to the best static configuration per budget (chosen on **train**,
   :class:`agents.baselines.StaticPerBudget`) and the oracle (best in-budget configuration per
   request, :class:`agents.baselines.Oracle`), and each policy's share of the static → oracle gap.
3. ``--diagnose``: the ceiling of per-configuration *linear* reward models fitted with full
   information (every configuration's reward on every train (request, budget) pair) on the
   bandit context — the asymptote a disjoint-linear bandit could reach with infinite data —
   and of the same with the exact latency known (not observable), to locate the gap.

The cache is synthetic: every figure describes the generative model of ``cache.synthetic``, not
MolmoE-1B.

    python benchmarks/bench_ppo_bandits.py [--cache outputs/default_cache.h5] [--out outputs/bench_ppo_bandits]
        [--agents maskable_ppo ppo linucb lin_ts eps_greedy] [--ppo-steps N] [--bandit-steps N]
        [--skip-vec-bench] [--diagnose] [--threads 1] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: ``linucb_nolang``: LinUCB without the language feature's PCA components in its context (an
#: ablation: the default context has 4, see ``agents.bandits.FeaturizerConfig``).
AGENTS = ("maskable_ppo", "ppo", "linucb", "lin_ts", "eps_greedy", "linucb_nolang")


# ----------------------------------------------------------------------------- evaluation
def eval_flat(policy: Any, venv: Any, budget: float) -> dict[str, np.ndarray]:
    n = venv.num_envs
    obs, info = venv.reset(options={"sample_index": np.arange(n), "budget_ms": np.full(n, budget)})
    _, reward, _, _, info2 = venv.step(np.asarray(policy.act(obs, info), dtype=np.int64))
    fin = info2["final_info"]
    return {"reward": reward, "score": fin["score"], "violation": fin["violation"], "config": fin["config_index"]}


def eval_two_stage(policy: Any, venv: Any, budget: float) -> dict[str, np.ndarray]:
    n = venv.num_envs
    obs, info = venv.reset(options={"sample_index": np.arange(n), "budget_ms": np.full(n, budget)})
    obs, _, _, _, info = venv.step(np.asarray(policy.act_stage1(obs, info), dtype=np.int64))
    _, reward, _, _, info2 = venv.step(np.asarray(policy.act_stage2(obs, info), dtype=np.int64))
    fin = info2["final_info"]
    return {"reward": reward, "score": fin["score"], "violation": fin["violation"], "config": fin["config_index"]}


def evaluate(policy: Any, flat_env: Any, two_env: Any, budgets: np.ndarray) -> dict[str, float]:
    two = hasattr(policy, "act_stage1")
    recs = [eval_two_stage(policy, two_env, b) if two else eval_flat(policy, flat_env, b) for b in budgets]
    cat = {k: np.concatenate([r[k] for r in recs]) for k in recs[0]}
    return {"reward": float(cat["reward"].mean()), "accuracy": float(np.nanmean(cat["score"])),
            "violation": float(cat["violation"].mean()), "distinct_configs": int(np.unique(cat["config"]).size)}


# ----------------------------------------------------------------------------- vec env throughput
def bench_vec_envs(cache: str, n_envs: int, steps: int) -> None:
    import torch
    from sb3_contrib import MaskablePPO

    from agents.ppo import _random_valid_multidiscrete, make_sb3_vec_env

    kw = {"cache": cache, "split": "train"}
    print(f"\n== SB3 VecEnv over MolmoeKnobs-v0, {n_envs} sub-envs ==")
    rng = np.random.default_rng(0)
    for kind in ("native", "dummy"):
        vec = make_sb3_vec_env("MolmoeKnobs-v0", kw, n_envs, kind, seed=0)
        vec.reset()
        nvec = (3, 5, 5, 5)
        t0 = time.perf_counter()
        for _ in range(steps // n_envs):
            masks = np.stack(vec.env_method("action_masks"))
            vec.step(_random_valid_multidiscrete(masks, nvec, rng))
        dt = time.perf_counter() - t0
        print(f"  {kind:6s}: env only {steps / dt:10.0f} steps/s")
        vec.close()
    for kind in ("native", "dummy"):
        vec = make_sb3_vec_env("MolmoeKnobs-v0", kw, n_envs, kind, seed=0)
        model = MaskablePPO("MultiInputPolicy", vec, n_steps=32, batch_size=512, n_epochs=4, device="cpu", seed=0,
                            policy_kwargs={"net_arch": [64, 64]})
        model.learn(n_envs * 32)  # warm-up (lazy imports, allocations)
        t0 = time.perf_counter()
        model.learn(steps, reset_num_timesteps=False)
        dt = time.perf_counter() - t0
        print(f"  {kind:6s}: MaskablePPO.learn {steps / dt:8.0f} steps/s (torch threads {torch.get_num_threads()})")
        vec.close()


# ----------------------------------------------------------------------------- diagnosis
def diagnose(train: Any, test: Any, budgets: np.ndarray, reward: Any, static_r: float, n_uniform: int = 1_000_000) -> None:
    from agents.bandits import ContextFeaturizer, FeaturizerConfig
    from envs.reward import compute_reward
    from envs.vector_env import MolmoeKnobsFlatVectorEnv

    rng = np.random.default_rng(0)
    lo, hi = train.budget_range_ms

    def pairs(d: Any, s: np.ndarray, b: np.ndarray) -> tuple[dict, np.ndarray]:
        venv = MolmoeKnobsFlatVectorEnv(num_envs=s.size, data=d)
        obs, _ = venv.reset(options={"sample_index": s, "budget_ms": b})
        R = compute_reward(d.score[s], d.total_ms[s], b[:, None], d.complexity[None], reward, latency_ref_ms=d.full_ms[s, None])
        return obs, R

    s_tr = np.repeat(np.arange(train.n), 4)
    b_tr = rng.uniform(lo, hi, s_tr.size)
    s_te, b_te = np.repeat(np.arange(test.n), budgets.size), np.tile(budgets, test.n)
    obs_tr, R_tr = pairs(train, s_tr, b_tr)
    obs_te, R_te = pairs(test, s_te, b_te)
    print("\n== diagnosis: full-information ceilings (test, 8 budgets; static = %.4f, oracle = %.4f) ==" % (static_r, R_te.max(1).mean()))
    for fc in (FeaturizerConfig(lang_components=0), FeaturizerConfig(lang_components=4), FeaturizerConfig(lang_components=16)):
        f = ContextFeaturizer(fc).fit(obs_tr)
        X, Xt = f.transform(obs_tr), f.transform(obs_te)
        W = np.linalg.solve(X.T @ X + np.eye(f.dim), X.T @ R_tr)
        a, a_tr = np.argmax(Xt @ W, 1), np.argmax(X @ W, 1)
        fit_r2 = 1 - ((X @ W - R_tr) ** 2).mean() / R_tr.var()
        print(f"  per-config ridge on the bandit context (lang PCA {fc.lang_components}, RBF {fc.rbf_centers}, d={f.dim}): "
              f"test reward {R_te[np.arange(a.size), a].mean():.4f} (on its own train pairs "
              f"{R_tr[np.arange(a_tr.size), a_tr].mean():.4f}), train R² {fit_r2:.3f}")
    # the same models from bandit-sized data: n_uniform (request, budget, uniformly random configuration)
    # triples, no adaptivity: separates finite-sample variance from adaptive-sampling bias
    from agents.bandits import LinearBandit, LinearBanditConfig

    for fc in (FeaturizerConfig(lang_components=0), FeaturizerConfig(lang_components=4)):
        f = ContextFeaturizer(fc).fit(obs_tr)
        lb = LinearBandit(R_te.shape[1], f.dim, LinearBanditConfig(update_method="refactor"))
        venv = MolmoeKnobsFlatVectorEnv(num_envs=50_000, data=train)
        for k in range(max(1, n_uniform // 50_000)):
            obs, info = venv.reset(seed=1000 + k)
            arms = rng.integers(0, R_te.shape[1], size=50_000)
            _, r, _, _, _ = venv.step(arms)
            lb.update(arms, f.transform(obs), r)
        a = np.argmax(lb.mean(f.transform(obs_te)), 1)
        print(f"  same models from {max(1, n_uniform // 50_000) * 50_000} uniformly explored bandit samples "
              f"(lang PCA {fc.lang_components}): test reward {R_te[np.arange(a.size), a].mean():.4f}")
    # latency: how well the context predicts each configuration's latency, and what knowing it is worth
    f = ContextFeaturizer(FeaturizerConfig()).fit(obs_tr)
    X, Xt = f.transform(obs_tr), f.transform(obs_te)
    L_tr = train.total_ms[s_tr] / train.full_ms[s_tr, None]
    Wl = np.linalg.solve(X.T @ X + np.eye(f.dim), X.T @ L_tr)
    L_hat = (Xt @ Wl) * test.full_ms[s_te, None]
    mape = float(np.mean(np.abs(L_hat - test.total_ms[s_te]) / test.total_ms[s_te]))
    s_mean = np.broadcast_to(train.score.mean(0), R_te.shape)
    exact = compute_reward(s_mean, test.total_ms[s_te], b_te[:, None], test.complexity[None], reward, latency_ref_ms=test.full_ms[s_te, None])
    a = np.argmax(exact, 1)
    c_full = train.knob_space.index(train.knob_space.full_config)
    out = test.output_tokens[:, c_full]
    print(f"  latency predicted from the context: MAPE {mape:.3f} over all (request, config); output tokens at the full "
          f"config: mean {out.mean():.2f}, sd {out.std():.2f}; decode share of latency "
          f"{np.mean(test.decode_ms[:, c_full] / test.total_ms[:, c_full]):.3f}")
    print(f"  train-mean score per config + EXACT per-request latency (not observable): test reward "
          f"{R_te[np.arange(a.size), a].mean():.4f}")


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default="outputs/default_cache.h5")
    ap.add_argument("--out", default="outputs/bench_ppo_bandits")
    ap.add_argument("--agents", nargs="+", default=list(AGENTS), choices=AGENTS)
    ap.add_argument("--ppo-steps", type=int, default=None, help="override total_timesteps of both PPO agents")
    ap.add_argument("--bandit-steps", type=int, default=None, help="override total_steps of the bandits")
    ap.add_argument("--vec-steps", type=int, default=16384)
    ap.add_argument("--skip-vec-bench", action="store_true")
    ap.add_argument("--diagnose", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    ap.add_argument("--seed", type=int, default=0, help="training seed of every agent")
    args = ap.parse_args(argv)

    import torch

    from agents.bandits import blas_threads

    torch.set_num_threads(args.threads)
    with blas_threads(args.threads):  # small matrices: extra BLAS threads only spin on shared cores
        run(args)


def run(args: argparse.Namespace) -> None:
    from agents.bandits import BanditTrainConfig, FeaturizerConfig, train_bandit
    from agents.baselines import Oracle, StaticPerBudget
    from agents.ppo import MaskablePPOConfig, PPOConfig, train_maskable_ppo, train_ppo_flat
    from cache.synthetic import build_default_cache
    from envs.replay_data import ReplayData
    from envs.reward import RewardConfig
    from envs.vector_env import MolmoeKnobsFlatVectorEnv, MolmoeKnobsVectorEnv

    if not Path(args.cache).exists():
        build_default_cache(args.cache)
    out = Path(args.out)
    train, test = ReplayData.from_cache(args.cache, "train"), ReplayData.from_cache(args.cache, "test")
    tag = "SYNTHETIC cache" if test.synthetic else "cache"
    lo, hi = test.budget_range_ms
    budgets = np.linspace(lo, hi, 8)
    reward = RewardConfig.make("hinge", None)
    print(f"[bench_ppo_bandits] {tag} {args.cache}: train {train.n}, test {test.n} requests; budgets "
          f"{np.round(budgets, 1).tolist()} ms; reward {reward.mode}; torch threads {args.threads}")
    if not args.skip_vec_bench:
        bench_vec_envs(args.cache, 64, args.vec_steps)

    flat_env = MolmoeKnobsFlatVectorEnv(num_envs=test.n, data=test)
    two_env = MolmoeKnobsVectorEnv(num_envs=test.n, data=test)
    static = StaticPerBudget.fit(train, budgets, reward)
    rows: dict[str, dict[str, float]] = {"static": evaluate(static, flat_env, two_env, budgets),
                                         "oracle": evaluate(Oracle(test, reward), flat_env, two_env, budgets)}
    env_kwargs = {"cache": args.cache, "split": "train"}
    for agent in args.agents:
        t0 = time.perf_counter()
        if agent == "maskable_ppo":
            cfg = MaskablePPOConfig(torch_threads=args.threads, seed=args.seed)
            if args.ppo_steps:
                cfg.total_timesteps = args.ppo_steps
            res = train_maskable_ppo(env_kwargs, cfg, out / agent)
            steps = res.timesteps
        elif agent == "ppo":
            cfg = PPOConfig(torch_threads=args.threads, seed=args.seed)
            if args.ppo_steps:
                cfg.total_timesteps = args.ppo_steps
            res = train_ppo_flat(env_kwargs, cfg, out / agent)
            steps = res.timesteps
        else:
            bcfg = BanditTrainConfig(seed=args.seed)
            if agent == "linucb_nolang":
                bcfg.features = FeaturizerConfig(lang_components=0)
            if args.bandit_steps:
                bcfg.total_steps = args.bandit_steps
            res = train_bandit(agent.removesuffix("_lang"), env_kwargs, bcfg, out / agent)
            steps = res.steps
        wall = time.perf_counter() - t0
        rows[agent] = {**evaluate(res.policy, flat_env, two_env, budgets), "train_s": wall, "steps": steps}
        print(f"  trained {agent}: {steps} env steps in {wall:.1f} s ({steps / wall:.0f} steps/s incl. setup)", flush=True)

    gap = rows["oracle"]["reward"] - rows["static"]["reward"]
    print(f"\n== test split, mean over 8 budgets ({tag}) ==")
    print(f"  {'policy':14s} {'reward':>8s} {'accuracy':>9s} {'violation':>10s} {'gap share':>10s} {'configs':>8s} {'train s':>8s} {'steps':>8s}")
    for name, r in rows.items():
        share = (r["reward"] - rows["static"]["reward"]) / gap if gap > 0 else float("nan")
        extra = f"{r['train_s']:8.1f} {r['steps']:8d}" if "train_s" in r else f"{'':8s} {'':8s}"
        print(f"  {name:14s} {r['reward']:8.4f} {r['accuracy']:9.4f} {r['violation']:10.4f} {share:10.3f} "
              f"{r['distinct_configs']:8d} {extra}")
    if args.diagnose:
        diagnose(train, test, budgets, reward, rows["static"]["reward"])


if __name__ == "__main__":
    main()
