"""Where the value of per-request adaptation lies in an outcome cache, SYNTHETIC or live (prints figures).

For each budget of the evaluation grid, the test split's mean hinge reward of:

- ``static``: the best configuration per budget on the train split;
- ``oracle``: the best configuration per request on the realised outcomes (upper bound);
- ``q+latency``: a policy told each request's hidden correctness probabilities ``q`` (the
  generator's latents) AND its realised latency per configuration (i.e. its output length);
- ``q only``: told ``q`` but not the output length: the *expected* hinge over the output-length
  distribution (per configuration, the train split's output lengths; latency = the request's
  TTFT + the configuration's median decode ms per token × (length − 1)), not the hinge at the
  mean latency (which the convex hinge underrates);
- ``latency only``: told the realised latency but only the per-configuration mean score;
- ``ridge(λ)``: the flat supervised router's regression (language feature + cheapest/full
  latency) with ridge λ, and ``ridge+tok(λ)`` with the latency tokens at (high, p=5) and
  (low, p=5) added: what the observations support;
- ``task table``: a static table per task, fit on the train split with the task label known (not an
  observation, but what the language feature all but carries): what telling the tasks apart, and
  nothing else, is worth; a one-step policy such as LinUCB, which sees no latency token, rests its
  lead over static on little more.

Then the oracle gap (oracle − static) is decomposed:

- SYNTHETIC caches: from the rows, structure = ``q only`` − static (what the requests' latent
  factors are worth without the realised length), length = ``q+latency`` − ``q only``, coin =
  oracle − ``q+latency`` (the per-request coin and the per-(request, configuration) jitter the
  latents ``q`` do not average out); and by re-generating the cache with one noise source
  switched off (``jitter_sd=0``: per-(request, configuration) jitter; ``wrong_extra_tokens_prob=0``:
  the wrong answers' extra output tokens, i.e. the realised length's configuration dependence)
  the oracle gap's change. The per-request coin has no generator switch.
- live caches (no latents): observable = the best out-of-sample router row's gain over static
  (fit on train, scored on test), not observable = the rest of the oracle gap.

Last, by task (the requests' dataset): static, oracle and the best router row, each a mean over
the budgets, so that where the gap lies and where the observations reach it can be told apart.

Run: ``python -m benchmarks.bench_adaptivity [--cache outputs/default_cache.h5]``. The ``q``
rows need a synthetic cache (its latents are regenerated from the cache's own
``generator_params``: parameters and seed, e.g. a ``--calibrate-to`` cache); live caches get the
router rows only. Every cache gets the observable decomposition.
"""

from __future__ import annotations

import argparse

import numpy as np

from agents.baselines import reward_matrix
from cache.reader import OutcomeCache
from cache.synthetic import SyntheticParams, build_default_cache, generate, write_synthetic_cache
from envs.replay_data import ReplayData
from envs.reward import RewardConfig, compute_reward


def expected_hinge(q: np.ndarray, tr: ReplayData, te: ReplayData, b: float, alpha: float,
                   n_quantiles: int = 32) -> np.ndarray:
    """(n, C) expected hinge reward of test requests told their correctness probabilities ``q``
    (n, C) but not their output length: ``q − α·E_o[max(0, L(o) − b)]/b`` with ``o`` over the
    train split's output lengths at each configuration (``n_quantiles`` quantiles) and
    ``L(o) = TTFT + median per-token decode ms of the configuration × (o − 1)``."""
    qs = (np.arange(n_quantiles) + 0.5) / n_quantiles
    lengths = np.quantile(tr.output_tokens.astype(np.float64), qs, axis=0).T  # (C, K)
    tp = np.where(tr.output_tokens > 1, tr.tpot_ms, np.nan)
    rate = np.nan_to_num(np.nanmedian(tp, axis=0))  # (C,)
    lat = te.ttft_ms[:, :, None] + (rate[:, None] * np.maximum(lengths - 1.0, 0.0))[None]
    return q - alpha * np.maximum(lat - b, 0.0).mean(axis=2) / b


def task_table_pick(train_datasets: np.ndarray, test_datasets: np.ndarray, r_train: np.ndarray) -> np.ndarray:
    """Each test request's configuration under a static table per task (the task label known): the configuration
    with the best mean train reward among its task's train requests; static's (all train requests) for a task
    the train split lacks. ``r_train``: (n_train, C) rewards at one budget. Returns (n_test,) int64."""
    pick = np.full(test_datasets.shape, np.argmax(r_train.mean(0)), dtype=np.int64)
    for t in np.unique(test_datasets):
        rows = train_datasets == t
        if rows.any():
            pick[test_datasets == t] = np.argmax(r_train[rows].mean(0))
    return pick


def oracle_gap(path: str, budgets: np.ndarray) -> float:
    """Mean over ``budgets`` of (oracle − static) test hinge reward of a cache."""
    tr, te = ReplayData.from_cache(path, "train"), ReplayData.from_cache(path, "test")
    hinge = RewardConfig.make("hinge")
    gaps = []
    for b in budgets:
        r_tr, r_te = reward_matrix(tr, b, hinge), reward_matrix(te, b, hinge)
        gaps.append(np.nanmax(r_te, 1).mean() - r_te[:, np.nanargmax(np.nanmean(r_tr, 0))].mean())
    return float(np.mean(gaps))


def by_task(datasets: np.ndarray, per_request: dict[str, np.ndarray], best: str) -> dict[str, dict[str, float]]:
    """Per dataset: requests ``n`` and the mean ``static`` / ``oracle`` / ``best`` (router row)
    reward over its requests and the budgets; ``per_request`` maps a row name to its (budgets, n)
    rewards."""
    out = {}
    for name in sorted(set(datasets.tolist())):
        m = datasets == name
        out[name] = {"n": int(m.sum())} | {k: float(per_request[h][:, m].mean())
                                            for k, h in (("static", "static"), ("oracle", "oracle"), ("best", best))}
    return out


def synthetic_params_of(path: str) -> tuple[SyntheticParams, int]:
    """The parameters and seed a synthetic cache was generated with (its ``generator_params``)."""
    with OutcomeCache(path, tokens="lazy") as oc:
        gp = oc.attrs.get("generator_params") or {}
    if "params" not in gp or "seed" not in gp:
        raise ValueError(f"{path}: a synthetic cache without generator_params.params/seed; cannot regenerate its latents")
    return SyntheticParams.from_dict(gp["params"]), int(gp["seed"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="outputs/default_cache.h5")
    ap.add_argument("--no-regenerate", action="store_true", help="skip the switched-off re-generations")
    a = ap.parse_args(argv)
    if a.cache == "outputs/default_cache.h5":
        build_default_cache(a.cache)
    tr, te = ReplayData.from_cache(a.cache, "train"), ReplayData.from_cache(a.cache, "test")
    with_q = bool(te.synthetic)
    if with_q:
        params, seed = synthetic_params_of(a.cache)
        q = generate(params, seed).latents["q"][te.cache_rows]
    hinge = RewardConfig.make("hinge")
    s = tr.latency_scale_ms

    def feats(d: ReplayData, tok: bool) -> np.ndarray:
        cols = [d.lang, (d.cheapest_ms / s)[:, None], (d.full_ms / s)[:, None]]
        if tok:
            cols += [d.tokens[:, 2, 4], d.tokens[:, 0, 4]]
        return np.concatenate(cols + [np.ones((d.n, 1))], axis=1)

    lo, hi = te.budget_range_ms
    rows = np.arange(te.n)
    kind = "SYNTHETIC" if te.synthetic else "live"
    print(f"{kind} cache {a.cache}: {tr.n} train / {te.n} test requests; mean hinge reward on test")
    head = ["budget", "static", "oracle"] + (["q+latency", "q only", "latency only"] if with_q else []) + [
        "ridge(10)", "ridge(10000)", "ridge+tok(10)", "ridge+tok(10000)", "task table"]
    print(" | ".join(f"{h:>13}" for h in head))
    rewards: dict[str, list[np.ndarray]] = {h: [] for h in head[1:]}  # row -> per budget, (n,) test rewards
    budgets = np.linspace(lo, hi, 8)
    for b in budgets:
        r_tr, r_te = reward_matrix(tr, b, hinge), reward_matrix(te, b, hinge)
        pick = {"static": np.full(te.n, np.argmax(r_tr.mean(0))), "oracle": np.argmax(r_te, 1),
                "task table": task_table_pick(tr.datasets, te.datasets, r_tr)}
        comp, full = te.complexity[None], te.full_ms[:, None]
        mean_score = np.broadcast_to(tr.score.mean(0), te.score.shape)
        if with_q:
            pick["q+latency"] = np.argmax(compute_reward(q, te.total_ms, b, comp, hinge, full), 1)
            pick["q only"] = np.argmax(expected_hinge(q, tr, te, float(b), hinge.alpha), 1)
            pick["latency only"] = np.argmax(compute_reward(mean_score, te.total_ms, b, comp, hinge, full), 1)
        for tok in (False, True):
            x, xt = feats(tr, tok), feats(te, tok)
            for lam in (10.0, 1e4):
                m = x.T @ x + lam * np.eye(x.shape[1])
                m[-1, -1] -= lam
                w = np.linalg.solve(m, x.T @ r_tr)
                pick[f"ridge{'+tok' if tok else ''}({lam:g})"] = np.argmax(xt @ w, 1)
        per_request = {h: r_te[rows, pick[h]] for h in head[1:]}
        for h, v in per_request.items():
            rewards[h].append(v)
        vals = {h: float(v.mean()) for h, v in per_request.items()}
        print(" | ".join([f"{b:13.1f}"] + [f"{vals[h]:13.3f}" for h in head[1:]]))
    per_budget = {h: np.stack(v) for h, v in rewards.items()}  # (budgets, n)
    m = {h: float(per_budget[h].mean()) for h in head[1:]}
    print(" | ".join([f"{'mean':>13}"] + [f"{m[h]:13.3f}" for h in head[1:]]))
    gap = m["oracle"] - m["static"]
    print(f"\noracle gap (oracle − static): {gap:+.3f}")
    if with_q:
        parts = {"structure (q only − static)": m["q only"] - m["static"],
                 "length (q+latency − q only)": m["q+latency"] - m["q only"],
                 "coin + jitter beyond q (oracle − q+latency)": m["oracle"] - m["q+latency"]}
        for k, v in parts.items():
            print(f"  {k:<45} {v:+.3f}  ({v / gap:6.1%} of the gap)")
        if not a.no_regenerate:
            import dataclasses
            import tempfile

            print("re-generated with one noise source off (same seed; oracle gap at the same budgets):")
            with tempfile.TemporaryDirectory() as tmp:
                for label, kw in (("jitter_sd=0 (per-(request, configuration) jitter off)", {"jitter_sd": 0.0}),
                                  ("wrong_extra_tokens_prob=0 (config-dependent length off)", {"wrong_extra_tokens_prob": 0.0})):
                    path = f"{tmp}/{next(iter(kw))}.h5"
                    write_synthetic_cache(path, dataclasses.replace(params, **kw), seed=seed)
                    g = oracle_gap(path, budgets)
                    print(f"  {label:<58} gap {g:+.3f} (change {g - gap:+.3f})")
            print("  (the per-request coin has no generator switch)")
    best = max((h for h in head if h.startswith("ridge")), key=lambda h: m[h])
    obs_gain = m[best] - m["static"]
    print(f"  observable (best out-of-sample router, {best}): {obs_gain:+.3f} ({obs_gain / gap:6.1%} of the gap)")
    print(f"  not observable (the rest):                     {gap - obs_gain:+.3f} ({(gap - obs_gain) / gap:6.1%})")
    task_gain = m["task table"] - m["static"]
    print(f"  a static table per task (the task label known): {task_gain:+.3f} ({task_gain / gap:6.1%} of the gap): what a")
    print("  policy that tells the tasks apart and nothing else gains, the most a one-step bandit's lead rests on here")
    print(f"\nby task (mean over the budgets; best router row {best}):")
    print(f"  {'task':<16} {'n':>5} {'static':>8} {'oracle':>8} {'gap':>8} {'router − static':>16} {'of the gap':>11}")
    for name, t in by_task(te.datasets, per_budget, best).items():
        g, o = t["oracle"] - t["static"], t["best"] - t["static"]
        share = f"{o / g:10.1%}" if g > 0 else f"{'–':>10}"
        print(f"  {name:<16} {t['n']:5d} {t['static']:8.3f} {t['oracle']:8.3f} {g:+8.3f} {o:+16.3f} {share:>11}")


if __name__ == "__main__":
    main()
