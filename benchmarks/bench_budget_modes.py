"""Which budget mode lets every knob matter? The reward-maximising oracle's knob shares per mode.

For the test split of a cache and each budget mode (``envs.budgets.BUDGET_MODES``) over an
evaluation grid (absolute: 8 budgets over the data's ``budget_range_ms``; relative: u in
linspace(0, 1, 8); slo: the 4 × 4 grid of TTFT × TPOT budgets over their default ranges), prints
the share of (request, budget) pairs on which the oracle (argmax of the realised reward) picks
each value of each knob (tier, p, top-k, blocks), the oracle's and static-per-budget's mean
reward and violation rate, and the share of infeasible pairs (no configuration fits). A knob
"matters" in a mode when every one of its values is picked for a non-trivial share.

Run: ``python -m benchmarks.bench_budget_modes [--cache outputs/default_cache.h5] [--reward hinge]``.
"""

from __future__ import annotations

import argparse

import numpy as np

from envs.budgets import BUDGET_MODES, slo_ratio
from envs.env_settings import EnvConfig, resolve_settings
from envs.replay_data import ReplayData
from envs.reward import RewardConfig, compute_reward


def mode_grid(data: ReplayData, mode: str, n: int = 8) -> list[dict]:
    """Pinned-budget options of the evaluation grid of ``mode`` (``reset(options=...)`` keys)."""
    st = resolve_settings(EnvConfig(data=data, budget_mode=mode))
    eb = st.episode_budgets
    if mode == "absolute":
        lo, hi = data.budget_range_ms
        return [{"budget_ms": float(b)} for b in np.linspace(lo, hi, n)]
    if mode == "relative":
        lo, hi = eb.u_range
        return [{"budget_u": float(u)} for u in np.linspace(lo, hi, n)]
    k = max(2, int(round(np.sqrt(n * 2))))
    (t0, t1), (p0, p1) = eb.ttft_range, eb.tpot_range
    return [{"ttft_budget_ms": float(t), "tpot_budget_ms": float(p)}
            for t in np.linspace(t0, t1, k) for p in np.linspace(p0, p1, k)]


def mode_rewards(data: ReplayData, mode: str, opts: dict, reward: RewardConfig) -> tuple[np.ndarray, np.ndarray]:
    """(rewards, violations) of every (request, configuration) under pinned budgets ``opts``:
    float64 / bool (n, C) (NaN / False where no outcome), the envs' formulas."""
    st = resolve_settings(EnvConfig(data=data, budget_mode=mode))
    b, bt, bp = st.episode_budgets.pinned(opts, np.arange(data.n))
    ref = data.full_ms[:, None]
    if mode == "slo":
        rho = slo_ratio(data.ttft_ms, data.tpot_ms, bt[:, None], bp[:, None])
        r = compute_reward(data.score, rho, 1.0, data.complexity[None], reward, ref)
        viol = rho > 1.0
    else:
        r = compute_reward(data.score, data.total_ms, b[:, None], data.complexity[None], reward, ref)
        viol = data.total_ms > b[:, None]
    return np.where(data.valid, r, np.nan), viol & data.valid


def main(argv: list[str] | None = None) -> None:
    from cache.synthetic import build_default_cache

    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="outputs/default_cache.h5")
    ap.add_argument("--reward", default="hinge")
    a = ap.parse_args(argv)
    if a.cache == "outputs/default_cache.h5":
        build_default_cache(a.cache)
    tr, te = ReplayData.from_cache(a.cache, "train"), ReplayData.from_cache(a.cache, "test")
    reward = RewardConfig.make(a.reward)
    ks = te.knob_space
    t = ks.config_table()
    knobs = {"tier": (np.asarray(ks.tiers)[t["tier"]], list(ks.tiers)), "p": (t["p"], list(ks.insertion_positions)),
             "top_k": (t["top_k"], list(ks.top_ks)), "blocks": (t["blocks"], sorted(set(t["blocks"].tolist())))}
    print(f"{'SYNTHETIC ' if te.synthetic else ''}cache {a.cache}: {te.n} test requests, reward {reward.mode}")
    for mode in BUDGET_MODES:
        picks, r_or, r_st, v_or, v_st, infeasible = [], [], [], [], [], []
        for opts in mode_grid(te, mode):
            r, v = mode_rewards(te, mode, opts, reward)
            rt, _ = mode_rewards(tr, mode, opts, reward)
            best = np.nanargmax(r, axis=1)
            stat = int(np.nanargmax(np.nanmean(rt, axis=0)))
            rows = np.arange(te.n)
            picks.append(best)
            r_or.append(r[rows, best]); v_or.append(v[rows, best])
            r_st.append(r[:, stat]); v_st.append(v[:, stat])
            infeasible.append(~(~v & te.valid).any(axis=1))
        best = np.concatenate(picks)
        print(f"\n== budget_mode={mode!r}: {len(picks)} budgets; oracle reward {np.mean(r_or):.3f} "
              f"(violations {np.mean(v_or):.3f}), static {np.mean(r_st):.3f} (violations {np.mean(v_st):.3f}), "
              f"infeasible pairs {np.mean(infeasible):.3f}")
        for name, (col, values) in knobs.items():
            shares = [float(np.mean(col[best] == v)) for v in values]
            print(f"  oracle {name:>6}: " + "  ".join(f"{v}={s:.3f}" for v, s in zip(values, shares))
                  + f"   (min share {min(shares):.3f})")


if __name__ == "__main__":
    main()
