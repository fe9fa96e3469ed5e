"""Where the value of per-request adaptation lies in a SYNTHETIC cache (prints figures).

For each budget of the evaluation grid, the test split's mean hinge reward of:

- ``static``: the best configuration per budget on the train split;
- ``oracle``: the best configuration per request on the realised outcomes (upper bound);
- ``q+latency``: a policy told each request's hidden correctness probabilities ``q`` (the
  generator's latents) AND its realised latency per configuration (i.e. its output length);
- ``q only``: told ``q`` but only the per-configuration mean latency;
- ``latency only``: told the realised latency but only the per-configuration mean score;
- ``ridge(λ)``: the flat supervised router's regression (language feature + cheapest/full
  latency) with ridge λ, and ``ridge+tok(λ)`` with the latency tokens at (high, p=5) and
  (low, p=5) added: what the observations support.

Run: ``python -m benchmarks.bench_adaptivity [--cache outputs/default_cache.h5]`` (the cache must
be the default synthetic one, whose latents ``cache.synthetic.generate`` regenerates).
"""

from __future__ import annotations

import argparse

import numpy as np

from agents.baselines import reward_matrix
from cache.synthetic import build_default_cache, default_params, generate
from envs.replay_data import ReplayData
from envs.reward import RewardConfig, compute_reward


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="outputs/default_cache.h5")
    a = ap.parse_args()
    build_default_cache(a.cache)
    tr, te = ReplayData.from_cache(a.cache, "train"), ReplayData.from_cache(a.cache, "test")
    q = generate(default_params(), 0).latents["q"][te.cache_rows]
    hinge = RewardConfig.make("hinge")
    s = tr.latency_scale_ms

    def feats(d: ReplayData, tok: bool) -> np.ndarray:
        cols = [d.lang, (d.cheapest_ms / s)[:, None], (d.full_ms / s)[:, None]]
        if tok:
            cols += [d.tokens[:, 2, 4], d.tokens[:, 0, 4]]
        return np.concatenate(cols + [np.ones((d.n, 1))], axis=1)

    lo, hi = te.budget_range_ms
    rows = np.arange(te.n)
    print(f"SYNTHETIC cache {a.cache}: {tr.n} train / {te.n} test requests; mean hinge reward on test")
    head = ["budget", "static", "oracle", "q+latency", "q only", "latency only",
            "ridge(10)", "ridge(10000)", "ridge+tok(10)", "ridge+tok(10000)"]
    print(" | ".join(f"{h:>13}" for h in head))
    acc = {h: [] for h in head[1:]}
    for b in np.linspace(lo, hi, 8):
        r_tr, r_te = reward_matrix(tr, b, hinge), reward_matrix(te, b, hinge)
        pick = {"static": np.full(te.n, np.argmax(r_tr.mean(0))), "oracle": np.argmax(r_te, 1)}
        comp, full = te.complexity[None], te.full_ms[:, None]
        mean_lat = np.broadcast_to(tr.total_ms.mean(0), te.total_ms.shape)
        mean_score = np.broadcast_to(tr.score.mean(0), te.score.shape)
        pick["q+latency"] = np.argmax(compute_reward(q, te.total_ms, b, comp, hinge, full), 1)
        pick["q only"] = np.argmax(compute_reward(q, mean_lat, b, comp, hinge, full), 1)
        pick["latency only"] = np.argmax(compute_reward(mean_score, te.total_ms, b, comp, hinge, full), 1)
        for tok in (False, True):
            x, xt = feats(tr, tok), feats(te, tok)
            for lam in (10.0, 1e4):
                m = x.T @ x + lam * np.eye(x.shape[1])
                m[-1, -1] -= lam
                w = np.linalg.solve(m, x.T @ r_tr)
                pick[f"ridge{'+tok' if tok else ''}({lam:g})"] = np.argmax(xt @ w, 1)
        vals = {h: float(r_te[rows, pick[h]].mean()) for h in head[1:]}
        for h, v in vals.items():
            acc[h].append(v)
        print(" | ".join([f"{b:13.1f}"] + [f"{vals[h]:13.3f}" for h in head[1:]]))
    print(" | ".join([f"{'mean':>13}"] + [f"{np.mean(acc[h]):13.3f}" for h in head[1:]]))


if __name__ == "__main__":
    main()
