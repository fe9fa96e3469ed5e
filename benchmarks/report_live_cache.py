"""What the knobs do on an outcome cache, per task (prints markdown tables; ``--json`` saves them).

``python -m benchmarks.report_live_cache --cache PATH [--split all|train|val|test] [--json OUT] [--against REF]``

Over the cache's requests (every split by default), per dataset (task):

1. mean score at the full configuration and at the cheapest, and their ratio;
2. the score per vision tier (top-8, all 16 blocks), per top-k (highest tier, p = 1, 16 blocks)
   and per active-block count (highest tier, p = 1, top-8): one knob moved at a time;
3. the block-removal curve (points lost with 1-4 blocks removed at the highest tier and top-8,
   mean over tasks) next to MolmoE-1B's (3.1 / 5.4 / 7.5 / 18.4 points; the knob space's
   calibration anchors) and the corner (high, k8, 16) → (low, k4, 12) per task;
4. which knob costs each task most: the score lost when that knob alone goes to its cheapest
   value (tier low / top-k 4 at p = 1 / 12 blocks);
5. output tokens at the full configuration (mean, median, 90th percentile, max) per task;
6. the share of (request, configuration) cells with an outcome.

Scores are the tasks' own metrics as stored by the builder; nothing here is estimated.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from cache.reader import OutcomeCache
from cache.schema import SPLITS
from envs.replay_data import ReplayData

#: MolmoE-1B: points lost with 1-4 blocks removed (the knob space's importance anchors).
MOLMOE_1B_BLOCK_REMOVAL = (3.1, 5.4, 7.5, 18.4)


def load(path: str | Path, split: str) -> list[ReplayData]:
    with OutcomeCache(path) as cache:
        splits = [s for s in SPLITS if len(cache.split_indices(s))] if split == "all" else [split]
        return [ReplayData.from_cache(cache, split=s) for s in splits]


def knob_report(parts: list[ReplayData]) -> dict:
    ks = parts[0].knob_space
    score = np.concatenate([d.score for d in parts])
    out_tok = np.concatenate([d.output_tokens for d in parts])
    datasets = np.concatenate([d.datasets for d in parts])
    tasks = sorted(set(datasets.tolist()))
    full, cheap = ks.index(ks.full_config), ks.index(ks.cheapest_config)
    hi, lo, p1 = ks.tiers[-1], ks.tiers[0], ks.insertion_positions[0]
    kmax, kmin, nb = ks.max_top_k, ks.top_ks[0], ks.num_blocks
    bmin = ks.block_options(p1)[0]

    def cfg(tier: str = hi, k: int = kmax, blocks: int = nb) -> int:
        return ks.index((tier, p1, k, blocks))

    def mean(c: int, m: np.ndarray) -> float:
        return float(np.nanmean(score[m, c]))

    rep: dict = {"n_requests": int(score.shape[0]), "tasks": {}, "coverage": float(np.isfinite(score).mean())}
    for t in tasks + ["mean over tasks"]:
        if t == "mean over tasks":
            continue
        m = datasets == t
        row = {
            "n": int(m.sum()),
            "full": mean(full, m), "cheapest": mean(cheap, m),
            "tier": {tier: mean(cfg(tier=tier), m) for tier in ks.tiers},
            "top_k": {k: mean(cfg(k=k), m) for k in ks.top_ks},
            "blocks": {b: mean(cfg(blocks=b), m) for b in ks.block_options(p1)},
            "corner_low_k4_b12": mean(cfg(lo, kmin, bmin), m),
        }
        row["ratio"] = row["cheapest"] / row["full"] if row["full"] > 0 else float("nan")
        drops = {"tier": row["full"] - row["tier"][lo], "top_k": row["full"] - row["top_k"][kmin],
                 "blocks": row["full"] - row["blocks"][bmin]}
        row["drop_alone"] = drops
        row["costliest_knob"] = max(drops, key=drops.get)
        ot = out_tok[m, full]
        ot = ot[ot >= 0]
        row["output_tokens"] = {"mean": float(ot.mean()), "median": float(np.median(ot)),
                                "p90": float(np.percentile(ot, 90)), "max": int(ot.max())} if ot.size else {}
        rep["tasks"][t] = row
    rows = list(rep["tasks"].values())
    rep["mean"] = {"full": float(np.mean([r["full"] for r in rows])),
                   "cheapest": float(np.mean([r["cheapest"] for r in rows])),
                   "min_task_full": float(min(r["full"] for r in rows))}
    rep["mean"]["ratio"] = rep["mean"]["cheapest"] / rep["mean"]["full"]
    rep["block_removal_points"] = {
        r: 100 * float(np.mean([row["full"] - row["blocks"][nb - r] for row in rows]))
        for r in range(1, nb - bmin + 1)}
    rep["molmoe_1b_block_removal_points"] = dict(zip(range(1, 5), MOLMOE_1B_BLOCK_REMOVAL))
    rep["costliest_knobs"] = sorted({r["costliest_knob"] for r in rows})
    return rep


def markdown(rep: dict, ks_tiers: tuple[str, ...]) -> str:
    tasks = rep["tasks"]
    lines = [f"{rep['n_requests']} requests; outcomes for {rep['coverage']:.2%} of (request, configuration) cells", ""]
    lines += ["| task | n | full | cheapest | cheapest/full | " + " | ".join(f"tier {t}" for t in ks_tiers)
              + " | k4 | k5 | k6 | k7 | b12 | b13 | b14 | b15 | (low,k4,12) | costliest knob (drop alone) |",
              "|" + " --- |" * (18 + len(ks_tiers) - 3)]
    for t, r in tasks.items():
        d = r["drop_alone"]
        lines.append(
            f"| {t} | {r['n']} | {r['full']:.3f} | {r['cheapest']:.3f} | {r['ratio']:.2f} | "
            + " | ".join(f"{r['tier'][x]:.3f}" for x in ks_tiers) + " | "
            + " | ".join(f"{r['top_k'][k]:.3f}" for k in sorted(r["top_k"])[:-1]) + " | "
            + " | ".join(f"{r['blocks'][b]:.3f}" for b in sorted(r["blocks"])[:-1]) + " | "
            + f"{r['corner_low_k4_b12']:.3f} | {r['costliest_knob']} "
            + f"(tier {d['tier']:+.3f}, top-k {d['top_k']:+.3f}, blocks {d['blocks']:+.3f}) |")
    m = rep["mean"]
    lines += ["", f"mean over tasks: full {m['full']:.3f}, cheapest {m['cheapest']:.3f} (ratio {m['ratio']:.2f}); "
              f"lowest task at full {m['min_task_full']:.3f}; costliest knobs: {', '.join(rep['costliest_knobs'])}", ""]
    br, ref = rep["block_removal_points"], rep["molmoe_1b_block_removal_points"]
    lines += ["| blocks removed | " + " | ".join(str(r) for r in br) + " |", "|" + " --- |" * (len(br) + 1),
              "| this cache, points lost (mean over tasks) | " + " | ".join(f"{v:.1f}" for v in br.values()) + " |",
              "| MolmoE-1B | " + " | ".join(f"{ref.get(r, float('nan')):.1f}" for r in br) + " |", ""]
    lines += ["| task | output tokens at full: mean | median | p90 | max |", "| --- | --- | --- | --- | --- |"]
    for t, r in tasks.items():
        o = r["output_tokens"]
        lines.append(f"| {t} | {o.get('mean', float('nan')):.1f} | {o.get('median', float('nan')):.0f} | "
                     f"{o.get('p90', float('nan')):.0f} | {o.get('max', '')} |")
    return "\n".join(lines)


def full_accuracy_against(rep: dict, ref: dict, points: float) -> dict:
    """Per-task full-configuration score of a report next to a reference report's (points = 100 ×
    score): the differences, the largest, and whether every task is within ``points`` (the
    reproduction bar of a rebuilt default: 2 points). A task only one of them has fails."""
    tasks = sorted(set(rep["tasks"]) | set(ref["tasks"]))
    rows = {t: {"this": rep["tasks"].get(t, {}).get("full"), "reference": ref["tasks"].get(t, {}).get("full")} for t in tasks}
    for r in rows.values():
        r["points"] = None if r["this"] is None or r["reference"] is None else 100 * (r["this"] - r["reference"])
    diffs = [abs(r["points"]) if r["points"] is not None else float("inf") for r in rows.values()]
    return {"tasks": rows, "largest_points": max(diffs), "bar_points": points, "within": max(diffs) <= points}


def by_request(parts: list[ReplayData]) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """A cache's splits as one table: each request id's row, the scores (requests × configurations), the tasks."""
    ids = np.concatenate([d.sample_ids for d in parts])
    return ({i: n for n, i in enumerate(ids.tolist())}, np.concatenate([d.score for d in parts]),
            np.concatenate([d.datasets for d in parts]))


def churn_against(this: np.ndarray, ref: np.ndarray, datasets: np.ndarray, points: float) -> dict:
    """How far per-request churn alone moves each task's mean score, next to a ``points`` bar: two score vectors of the
    same requests (one configuration; NaN where either has no outcome), per task both means over the requests both
    scored (``this``, ``reference``) and their difference in points (``points``: on a subset of a cache's requests this
    is the comparison, not the cache's whole-task mean), the share of requests whose score
    changed and the paired standard error of the mean difference in points (sd/sqrt(n) of the differences), the
    chance that churn of that size alone takes the task beyond the bar (each request's change independent, the mean
    normal), and ``miss_chance``: beyond it on at least one task. A model retrained with other rounding answers some
    requests otherwise; this says how much of a reproduction bar that alone uses up."""
    tasks, inside = {}, 1.0
    for t in sorted(set(datasets.tolist())):
        both = (datasets == t) & np.isfinite(this) & np.isfinite(ref)
        d = (this - ref)[both]
        n = len(d)
        se = 100 * float(d.std(ddof=1)) / math.sqrt(n) if n > 1 else 0.0
        beyond = math.erfc(points / (se * math.sqrt(2))) if se > 0 else 0.0  # P(|N(0, se)| > points)
        inside *= 1 - beyond
        tasks[t] = {"n": n, "this": float(this[both].mean()) if n else math.nan,
                    "reference": float(ref[both].mean()) if n else math.nan, "points": 100 * float(d.mean()) if n else math.nan,
                    "changed": float(np.mean(d != 0)) if n else 0.0, "paired_se_points": se, "beyond_bar": beyond}
    return {"bar_points": points, "tasks": tasks, "miss_chance": 1 - inside}


def print_churn(c: dict, title: str) -> None:
    """:func:`churn_against`, a line per task and the chance of missing the bar."""
    print(f"{title}: both means over the same requests, the requests that changed, the paired standard error of the "
          f"difference, and the chance that changes like these alone take a task beyond {c['bar_points']:g} points")
    for t, r in c["tasks"].items():
        print(f"  {t}: {r['this']:.3f} vs {r['reference']:.3f} ({r['points']:+.1f}) on {r['n']}; {r['changed']:.1%} "
              f"changed, SE {r['paired_se_points']:.2f} points, beyond {r['beyond_bar']:.1%}")
    print(f"  some task beyond {c['bar_points']:g} points: {c['miss_chance']:.0%}")


def every_config_against(this: list[ReplayData], ref: list[ReplayData], points: float = 2.0) -> dict:
    """Beyond the full configuration, how two caches of the same requests (matched by id) compare everywhere: per task
    the difference of each configuration's mean score in points (the largest over the grid, and the mean of its
    absolute value), the share of (request, configuration) cells whose scores are equal, and each cache's
    per-request oracle (best score over configurations, mean over requests). Information beside the bar, not part of
    it: a model retrained from other random draws answers some requests otherwise while its knob effects stay;
    ``full_churn`` (:func:`churn_against` at the full configuration) says how much of the ``points`` bar that uses."""
    ka, kb = this[0].knob_space, ref[0].knob_space
    if ka.configs != kb.configs:  # (not ka != kb: the block importance scores differ between two models)
        raise ValueError("the two caches' knob spaces differ: no configuration-by-configuration comparison")
    ia, sa, da = by_request(this)
    ib, sb, _ = by_request(ref)
    common = sorted(set(ia) & set(ib))
    rows_a, rows_b = [ia[i] for i in common], [ib[i] for i in common]
    a, b, ds = sa[rows_a], sb[rows_b], da[rows_a]
    tasks = {}
    for t in sorted(set(ds.tolist())):
        m = ds == t
        diff = 100 * (np.nanmean(a[m], axis=0) - np.nanmean(b[m], axis=0))
        both = np.isfinite(a[m]) & np.isfinite(b[m])
        tasks[t] = {"largest_points": float(np.nanmax(np.abs(diff))), "mean_abs_points": float(np.nanmean(np.abs(diff))),
                    "equal_cells": float(np.mean(a[m][both] == b[m][both])),
                    "oracle": {"this": float(np.nanmean(np.nanmax(a[m], axis=1))),
                               "reference": float(np.nanmean(np.nanmax(b[m], axis=1)))}}
    full = ka.index(ka.full_config)
    return {"requests": len(common), "configurations": int(a.shape[1]), "tasks": tasks,
            "full_churn": churn_against(a[:, full], b[:, full], ds, points)}


def print_every_config_against(g: dict) -> None:
    """:func:`every_config_against`, a line per task."""
    print(f"\nEvery configuration ({g['requests']} requests in both caches, {g['configurations']} configurations): "
          "per task the configurations' mean scores against the reference's, the cells with equal scores, the oracle")
    for t, r in g["tasks"].items():
        o = r["oracle"]
        print(f"  {t}: largest {r['largest_points']:.1f} points, mean |diff| {r['mean_abs_points']:.1f}; equal cells "
              f"{r['equal_cells']:.1%}; oracle {o['this']:.3f} vs {o['reference']:.3f}")
    print_churn(g["full_churn"], "Full configuration")


def print_against(cmp: dict, title: str, counts: dict[str, str] | None = None) -> None:
    """:func:`full_accuracy_against`'s comparison, a line per task (``counts``: a note after a task's line) and the
    verdict."""
    print(title)
    for t, r in cmp["tasks"].items():
        this, ref = (f"{v:.3f}" if v is not None else "-" for v in (r["this"], r["reference"]))
        print(f"  {t}: {this} vs {ref}" + (f" ({r['points']:+.1f})" if r["points"] is not None else " (missing)")
              + (f"  [{counts[t]}]" if counts and t in counts else ""))
    print(f"largest difference {cmp['largest_points']:.1f} points: "
          + ("within" if cmp["within"] else "NOT within") + f" {cmp['bar_points']:g}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report_live_cache", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", required=True)
    ap.add_argument("--split", default="all", choices=["all", *SPLITS])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--against", default=None, metavar="REFERENCE",
                    help="another cache (e.g. the committed default): compare every task's full-configuration score; "
                         "exit 1 when one differs by more than --points")
    ap.add_argument("--points", type=float, default=2.0, help="the largest difference --against accepts, in points")
    args = ap.parse_args(argv)
    parts = load(args.cache, args.split)
    rep = knob_report(parts)
    print(markdown(rep, parts[0].knob_space.tiers))
    rc = 0
    if args.against:
        ref = load(args.against, args.split)
        cmp = rep["against"] = full_accuracy_against(rep, knob_report(ref), args.points)
        print_against(cmp, f"\nFull configuration against {args.against} (points):")
        try:
            rep["every_config_against"] = every_config_against(parts, ref, args.points)
            print_every_config_against(rep["every_config_against"])
        except ValueError as exc:
            print(f"\nEvery configuration: {exc}")
        rc = 0 if cmp["within"] else 1
    if args.json:
        args.json.write_text(json.dumps(rep, indent=1, default=str))
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
