"""Every experiment of an adaptive-inference paper from one command, with one report.

``python -m experiments.pipeline --cache PATH --out DIR [--seeds 0 1 2] [--only NAME ...] [--quick]
[--model CKPT --requests JSONL] [--pruning-requests N]``
(``make experiments``; without ``--cache``: the demo's default SYNTHETIC cache, built if missing) runs, each into ``DIR/<name>/`` with ``results.csv`` + ``summary.json``
(``experiments.evaluate``'s columns and metadata: cache path, sha256, synthetic flag, label,
versions) and its own tables and figures:

=================  ==========================================================================
``main``           every baseline and the GRPO controller over the budget grid (evaluate)
``generalization`` leave-one-dataset-out: fitted without a dataset vs with all, per dataset
``ablations``      observation features, action-space subsets, cost term, GRPO advantage
``fallback``       uncertainty-triggered fallback wrapper over a threshold sweep
``error_slices``   accuracy / violations / regret per knob bucket and dataset (needs main)
``oracle_actions`` agreement with the oracle, per-bucket regret, per-knob confusion (needs main)
``token_pruning``  the vision-token pruning proxy: the model run at the full LM configuration
                   keeping a fraction r of each image's pooled vision tokens (needs the model
                   and the requests the cache was built from)
=================  ==========================================================================

then ``DIR/main_table.csv`` (per policy of ``main``: mean reward and its difference to static
with CI, accuracy, latency, violations, AIQ), ``DIR/pareto.csv`` (every policy's (latency,
accuracy) per budget, every fixed configuration and the token-pruning points, with ``on_front``),
``DIR/action_ratio.csv``
(knob shares per policy and budget) and ``DIR/report.md`` (every figure embedded by relative
link, a paragraph per experiment naming the cache and whether it is synthetic).

Resumable: an experiment whose folder holds ``DONE`` is skipped (its figures still go into the
report; a warning when it was run with other ``--seeds`` / ``--quick``); a folder without it (a
killed run) is cleared and run again. Trained controllers are
kept under ``DIR/controllers/`` and reused. ``--only`` runs the named experiments (and the ones
they need). ``--quick``: shorter GRPO trainings, 4 budgets, fewer folds and thresholds. A
failing experiment is recorded (``FAILED.txt``, a note in the report) and the others still run;
the exit code is then 1. An experiment the cache cannot support (``fallback`` on a cache without
uncertainty features, ``token_pruning`` on a SYNTHETIC cache) is marked finished with the reason
in the report. ``token_pruning`` without its inputs (``--model`` / ``--requests``, or the files
named in a live cache's provenance) is not run, says why in the report, and runs when a later
run is given them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from experiments.cli_errors import DEBUG_HELP, run_cli

EXPERIMENTS: tuple[str, ...] = ("main", "generalization", "ablations", "fallback", "error_slices", "oracle_actions",
                                "token_pruning")
MODULES: dict[str, str] = {"main": "main_eval", "generalization": "generalization", "ablations": "ablations",
                           "fallback": "fallback", "error_slices": "error_slices", "oracle_actions": "oracle_actions",
                           "token_pruning": "token_pruning"}
MARKER = "DONE"
DEFAULT_CACHE = "outputs/default_cache.h5"  # the SYNTHETIC default (--synthetic)


def module(name: str) -> Any:
    return importlib.import_module(f"experiments.pipeline_parts.{MODULES[name]}")


def selected(only: Sequence[str] | None) -> list[str]:
    if not only:
        return list(EXPERIMENTS)
    bad = sorted(set(only) - set(EXPERIMENTS))
    if bad:
        raise ValueError(f"unknown experiment(s) {bad} in --only; experiments: {', '.join(EXPERIMENTS)}")
    want = set(only)
    for n in list(want):
        want |= set(getattr(module(n), "NEEDS", ()))
    return [n for n in EXPERIMENTS if n in want]


def run_pipeline(cache: str, out: str | Path, *, seeds: Sequence[int] = (0,), only: Sequence[str] | None = None,
                 quick: bool = False, grpo: dict | None = None, n_budgets: int | None = None,
                 verbose: bool = True, figures: str = "all", model: str | Path | None = None,
                 requests: str | Path | None = None, pruning_requests: int | None = None) -> dict[str, dict]:
    """Run the experiments (skipping finished ones) and write the tables and the report.
    Returns per experiment its status (``done`` / ``skipped`` / ``failed`` / ``not run``) and outputs.

    ``model`` (checkpoint folder), ``requests`` (request JSONL) and ``pruning_requests`` (test
    requests to run) are token_pruning's inputs; see :mod:`experiments.pipeline_parts.token_pruning`."""
    from experiments.pipeline_parts.common import MissingInputs, NotApplicable, load_context

    names = selected(only)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    if not seeds:
        raise ValueError("--seeds needs at least one seed")
    if model is not None and not Path(model).is_dir():
        raise ValueError(f"--model {model}: no such checkpoint folder")
    if requests is not None and not Path(requests).is_file():
        raise ValueError(f"--requests {requests}: no such request file")
    if pruning_requests is not None and int(pruning_requests) < 1:
        raise ValueError(f"--pruning-requests must be >= 1, got {pruning_requests}")
    ctx = load_context(cache, out, seeds, quick, n_budgets=n_budgets, grpo=grpo, verbose=verbose, figures=figures,
                       model=None if model is None else str(model), requests=None if requests is None else str(requests),
                       pruning_requests=pruning_requests)
    out.mkdir(parents=True, exist_ok=True)
    status: dict[str, dict] = {}
    for name in names:
        d = out / name
        if (d / MARKER).exists():
            status[name] = {"status": "skipped", **json.loads((d / MARKER).read_text())}
            prev = (status[name].get("seeds"), status[name].get("quick"))
            if prev != (list(seeds), quick):
                ctx.log(f"{name}: WARNING: finished before with seeds {prev[0]}, quick={prev[1]} (now {list(seeds)}, "
                        f"quick={quick}); delete {d} to run it again with these settings")
            ctx.log(f"{name}: finished before, skipped")
            continue
        if d.exists():
            shutil.rmtree(d)  # a killed run's partial folder
        d.mkdir(parents=True)
        ctx.log(f"{name}: running ...")
        t0 = time.perf_counter()
        try:
            info = module(name).run(ctx, d)
        except MissingInputs as e:  # not an error, not finished either: a run given the inputs runs it
            shutil.rmtree(d)
            status[name] = {"status": "not run", "notes": [str(e)], "figures": []}
            ctx.log(f"{name}: not run ({e})")
            continue
        except NotApplicable as e:  # this cache cannot support it: finished, with the reason in the report
            info = {"figures": [], "tables": [], "notes": [f"not applicable to this cache: {e}"]}
        except Exception as e:  # recorded; the other experiments still run
            (d / "FAILED.txt").write_text(traceback.format_exc())
            status[name] = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
            ctx.log(f"{name}: FAILED ({type(e).__name__}: {e}); traceback in {d / 'FAILED.txt'}")
            continue
        info = {**info, "wall_s": round(time.perf_counter() - t0, 2), "seeds": list(seeds), "quick": quick}
        (d / MARKER).write_text(json.dumps(info, indent=2))
        status[name] = {"status": "done", **info}
        ctx.log(f"{name}: done in {info['wall_s']} s")
    for name in EXPERIMENTS:  # experiments finished by earlier runs (e.g. outside --only) stay in the report
        if name not in status and (out / name / MARKER).exists():
            status[name] = {"status": "skipped", **json.loads((out / name / MARKER).read_text())}
    status = {n: status[n] for n in EXPERIMENTS if n in status}
    write_tables(ctx)
    write_report(ctx, status)
    (out / "pipeline_status.json").write_text(json.dumps(status, indent=2, default=str))
    return status


# ----------------------------------------------------------------------------- top-level tables
def write_tables(ctx) -> list[str]:
    """main_table.csv, pareto.csv and action_ratio.csv from the main experiment (when it ran); the
    token-pruning points join pareto.csv when that experiment ran."""
    main = ctx.out / "main"
    pruning = pruning_points(ctx)
    if not (main / MARKER).exists():
        if pruning is None:
            return []
        pruning.assign(on_front=on_front(pruning["mean_latency_ms"].to_numpy(), pruning["accuracy"].to_numpy()),
                       **_meta(ctx)).to_csv(ctx.out / "pareto.csv", index=False)
        return ["pareto.csv"]
    from experiments.evaluate import static_points

    summary = json.loads((main / "summary.json").read_text())
    rows = []
    for pol, s in summary["policies"].items():
        d = s.get("reward_minus_static") or {}
        ci = d.get("ci95") or [None, None]
        rows.append({"policy": pol, "mean_reward": s["mean_reward"], "reward_minus_static": d.get("mean"),
                     "ci95_lo": ci[0], "ci95_hi": ci[1], "accuracy": s["accuracy"],
                     "mean_latency_ms": s["mean_latency_ms"], "violation_rate": s["violation_rate"],
                     "violation_rate_feasible": s.get("violation_rate_feasible"), "aiq": s.get("aiq"),
                     "share_of_static_to_oracle_gap": s.get("share_of_static_to_oracle_gap")})
    meta = {"synthetic": summary["synthetic"], "cache_label": summary["cache_label"]}
    pd.DataFrame(rows).sort_values("mean_reward", ascending=False).assign(**meta).to_csv(ctx.out / "main_table.csv", index=False)
    res = pd.read_csv(main / "results.csv")
    res = res[res["lambda"].isna() & (res["dataset"] == "all")]
    mean_cols = ["mean_latency_ms", "accuracy", "mean_reward", "violation_rate"]
    pts = res.groupby(["policy", "budget_ms"], as_index=False)[mean_cols].mean().assign(kind="policy")
    st = static_points(ctx.test).rename(columns={"config": "policy"}).assign(kind="fixed configuration", budget_ms=np.nan)
    frames = [pts, st[["policy", "budget_ms", "mean_latency_ms", "accuracy", "kind"]]]
    pareto = pd.concat(frames, ignore_index=True).assign(n_requests=ctx.test.n)
    if pruning is not None:
        pareto = pd.concat([pareto, pruning], ignore_index=True)
    pareto["on_front"] = on_front(pareto["mean_latency_ms"].to_numpy(), pareto["accuracy"].to_numpy())
    pareto.assign(**meta).to_csv(ctx.out / "pareto.csv", index=False)
    ratio_cols = [c for c in res.columns if c.startswith("ratio_")]
    res.groupby(["policy", "budget_ms"], as_index=False)[ratio_cols].mean().assign(**meta).to_csv(
        ctx.out / "action_ratio.csv", index=False)
    return ["main_table.csv", "pareto.csv", "action_ratio.csv"]


def _meta(ctx) -> dict[str, Any]:
    return {"synthetic": bool(ctx.label.get("synthetic")), "cache_label": ctx.label["cache_label"]}


def pruning_points(ctx) -> pd.DataFrame | None:
    """token_pruning's (latency, accuracy) points in pareto.csv's columns (kind ``token pruning
    (proxy)``, ``n_requests`` = the test requests it ran), or None when it has not run."""
    d = ctx.out / "token_pruning"
    if not (d / MARKER).exists() or not (d / "token_pruning.csv").exists():
        return None
    t = pd.read_csv(d / "token_pruning.csv")
    return pd.DataFrame({"policy": t["policy"], "budget_ms": np.nan, "mean_latency_ms": t["mean_latency_ms"],
                         "accuracy": t["accuracy"], "kind": "token pruning (proxy)", "n_requests": t["n_requests"]})


def on_front(latency: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """bool: no other point has lower-or-equal latency and higher-or-equal accuracy with one strict."""
    lat, acc = np.asarray(latency, float), np.asarray(accuracy, float)
    ok = np.isfinite(lat) & np.isfinite(acc)
    out = np.zeros(lat.shape, dtype=bool)
    for i in np.flatnonzero(ok):
        dom = ok & (lat <= lat[i]) & (acc >= acc[i]) & ((lat < lat[i]) | (acc > acc[i]))
        out[i] = not dom.any()
    return out


# ----------------------------------------------------------------------------- report
def _md_table(df: pd.DataFrame, max_rows: int = 20) -> str:
    df = df.head(max_rows)

    def fmt(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "" if not np.isfinite(v) else f"{v:.4g}"
        return str(v).replace("|", "/")

    head = "| " + " | ".join(map(str, df.columns)) + " |\n| " + " | ".join("---" for _ in df.columns) + " |\n"
    return head + "".join("| " + " | ".join(fmt(v) for v in r) + " |\n" for r in df.itertuples(index=False))


KEY_COLUMNS: dict[str, tuple[str, list[str]]] = {
    "main": ("../main_table.csv", ["policy", "mean_reward", "reward_minus_static", "ci95_lo", "ci95_hi", "accuracy",
                                   "mean_latency_ms", "violation_rate"]),
    "generalization": ("generalization.csv", ["heldout_dataset", "policy", "reward_in_dist", "reward_heldout",
                                              "reward_heldout_minus_in_dist", "diff_ci_lo", "diff_ci_hi"]),
    "ablations": ("ablations.csv", ["row", "group", "mean_reward", "compared_to", "reward_diff", "diff_ci_lo", "diff_ci_hi",
                                    "accuracy", "mean_latency_ms", "why_not"]),
    "fallback": ("fallback_sweep.csv", ["policy", "feature", "quantile", "trigger_rate", "reward_diff", "diff_ci_lo",
                                        "diff_ci_hi", "accuracy_diff", "latency_diff_ms"]),
    "error_slices": ("slices.csv", ["policy", "slice", "value", "share", "accuracy", "violation_rate", "mean_regret"]),
    "oracle_actions": ("agreement.csv", ["policy", "share_equal_oracle", "share_within_0.01", "share_within_0.05",
                                         "share_equal_tier", "share_equal_top_k", "mean_regret"]),
    "token_pruning": ("token_pruning.csv", ["tier", "keep_ratio", "n_requests", "accuracy", "mean_latency_ms",
                                            "remaining_vision_tokens", "cache_accuracy", "share_score_equal_cache"]),
}


def write_report(ctx, status: dict[str, dict]) -> Path:
    lab = ctx.label
    kind = ("SYNTHETIC (generated by cache.synthetic: the figures describe the generative model, not MolmoE-1B)"
            if lab.get("synthetic") else f"live-built ({lab.get('cache_label')})")
    lines = [f"# Experiment report ({lab['cache_label']} cache)", "",
             f"- cache: `{Path(ctx.cache).resolve()}` (sha256 `{ctx.sha256[:16]}…`), **{kind}**; generator "
             f"`{lab.get('generator')}`, model `{lab.get('model_id')}`",
             f"- seeds: {ctx.seeds}; {'--quick (short trainings, smaller sweeps)' if ctx.quick else 'full settings'}; "
             f"budgets (ms): {', '.join(f'{b:.1f}' for b in ctx.budgets)}; reward: hinge; "
             f"{ctx.test.n} test / {ctx.train.n} train requests",
             "- top-level tables: [main_table.csv](main_table.csv), [pareto.csv](pareto.csv), "
             "[action_ratio.csv](action_ratio.csv)", ""]
    for name in EXPERIMENTS:
        if name not in status:
            continue
        s, mod = status[name], module(name)
        lines += [f"## {name}", "", mod.DESCRIPTION + f" Ran on the {lab['cache_label']} cache "
                  f"`{Path(ctx.cache).name}` ({'synthetic' if lab.get('synthetic') else 'live-built'}); "
                  f"outputs in [{name}/]({name}/).", ""]
        if s["status"] == "failed":
            lines += [f"**FAILED**: {s.get('error')} (traceback in `{name}/FAILED.txt`).", ""]
            continue
        if s["status"] == "not run":
            lines += [f"**Not run**: {note}" for note in s.get("notes", [])] + [""]
            continue
        if s["status"] == "skipped":
            lines += ["_(finished by an earlier run; reused.)_", ""]
        table, cols = KEY_COLUMNS[name]
        p = (ctx.out / name / table).resolve()
        if p.exists() and p.stat().st_size:
            df = pd.read_csv(p)
            if name == "error_slices":
                df = df[df["slice"] == "tier"]
            lines += [_md_table(df[[c for c in cols if c in df.columns]]), ""]
        for note in s.get("notes", []):
            lines += [f"- note: {note}"]
        for fig in s.get("figures", []):
            lines += ["", f"![{name}: {fig}]({name}/{fig})"]
        lines += [""]
    path = ctx.out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------- CLI
def _main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.pipeline", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=None,
                    help="outcome cache (HDF5); default: the committed live-built cache (cache/default/), "
                         f"else the demo's SYNTHETIC one ({DEFAULT_CACHE}, built if missing)")
    ap.add_argument("--synthetic", action="store_true",
                    help=f"run on the demo's SYNTHETIC cache ({DEFAULT_CACHE}, built if missing) instead")
    ap.add_argument("--out", required=True, help="output folder (re-runs resume in it)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--only", nargs="+", default=None, metavar="NAME", help=f"any of {', '.join(EXPERIMENTS)}")
    ap.add_argument("--quick", action="store_true", help="short trainings and smaller sweeps (same outputs)")
    ap.add_argument("--model", default=None, metavar="CKPT",
                    help="token_pruning: the model checkpoint folder the cache was built from (default: the one a "
                         "live cache names in its provenance, when it is on this machine)")
    ap.add_argument("--requests", default=None, metavar="JSONL",
                    help="token_pruning: the request JSONL the cache was built from (default: the one a live cache "
                         "names, when it is here and unchanged)")
    ap.add_argument("--pruning-requests", type=int, default=None, metavar="N",
                    help="token_pruning: test requests to run (default 40, --quick 16; CPU minutes grow with it)")
    ap.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    a = ap.parse_args(argv)
    if a.synthetic or a.cache is None:
        from experiments.demo import resolve_cache

        a.cache = str(resolve_cache(a.cache, a.synthetic, tag="pipeline"))
    status = run_pipeline(a.cache, a.out, seeds=a.seeds, only=a.only, quick=a.quick, model=a.model,
                          requests=a.requests, pruning_requests=a.pruning_requests)
    failed = [n for n, s in status.items() if s["status"] == "failed"]
    print(f"[pipeline] report: {Path(a.out) / 'report.md'}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv, prog="python -m experiments.pipeline")


if __name__ == "__main__":
    raise SystemExit(main())
