"""A reproduced training stage against the original run's log (prints figures; reproduce_default.sh runs it).

``python -m benchmarks.reproduction_check --stage STAGE --log WORK/chain/STAGE/train_log.csv [--json OUT]``
``python -m benchmarks.reproduction_check --grid full_scores.json --against CACHE|OTHER.json [--points 2] [--json OUT]
[--by-kind REQUESTS.jsonl]``

The chain behind the committed default (``benchmarks/gpu/reproduce_default.sh``) takes over two hours
of one GPU, in 10-minute calls; the reproduction bar is judged on the built cache at its end.
This says after each stage whether the stage follows the original: the val loss at every step both
logs evaluated, and the val exact match per task at the last such step, next to the original
run's (its ``train_log.csv`` in ``benchmarks/logs``), and the training batches' exact match per task
(full configuration) averaged over the stage's last ``--window`` steps in both logs. The val set is
4 batches (about 40 examples a task), so single evaluations differ by a few hundredths between two
runs of one recipe; the training window holds hundreds to thousands of answers a task (300 steps of 64
with half asked for captions: 480-2,400), so it is the per-task figure to read.

With ``--grid``, the chain's end instead (``reproduce_default.sh`` with ``CHECK=score``): the last stage's
full-configuration scores per task (``experiments.eval_model_grid`` over the cache's requests) against the
committed cache's (``--against``), the reproduction bar's comparison without building a cache; exit 1 when a task
differs by more than ``--points``. ``--against`` may also name another ``eval_model_grid`` JSON of the same requests
(``--against OTHER.json``): two retrainings side by side, which says how far a stage's rerun moves on its own.
``--by-kind`` (the requests' JSONL) splits each task's difference by the kind of question (the request's
``meta`` fields named ``*_kind``, e.g. a diagram's ``food_web/arrow``): where a retraining's difference lies, say one
skill learned sooner.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

LOGS = Path(__file__).resolve().parent / "logs"

#: the original run's train log of each stage (run11a's log was not kept: its stage has none)
ORIGINAL_LOGS: dict[str, str | None] = {
    "run9": "h200_small_model_run9_train_log.csv",
    "run10": "h200_small_model_run10_train_log.csv",
    "run11a": None,
    "run11b": "h200_small_model_run11_train_log.csv",
    "run12": "h200_small_model_run12_train_log.csv",
    "run13a": "h200_small_model_run13_call1_train_log.csv",
    "run13b": "h200_small_model_run13_call3_train_log.csv",
    "run14": "h200_small_model_run14_call2_train_log.csv",
    # the print-supervised cycles of the nineteenth to twenty-second runs (the candidates in cache/candidates)
    "run19u": "h100_print_run19_u_train_log.csv",
    "run19w": "h100_print_run19_w_train_log.csv",
    "run19x": "h100_print_run19_x_train_log.csv",
    "run19y": "h100_print_run19_y_train_log.csv",
    "run20a": "h100_print_run20_a_train_log.csv",
    "run21b": "h100_print_run21_b_train_log.csv",
    "run21c": "h100_print_run21_c_train_log.csv",
    "run21d": "h100_print_run21_d_train_log.csv",
    "run22e": "h100_print_run22_e_train_log.csv",
    "run22f": "h100_print_run22_f_train_log.csv",
}


def figures(rows: list[dict[str, str]], prefix: str) -> dict[int, dict[str, float]]:
    """step → the figures named ``prefix...`` of a train log's rows (the prefix taken off), for the rows that have any:
    ``plain/val_`` the evaluation rows (``ce``, ``acc/<task>``), ``plain/acc/`` the training batches' exact match."""
    out: dict[int, dict[str, float]] = {}
    for row in rows:
        found = {k.removeprefix(prefix): float(v) for k, v in row.items() if k.startswith(prefix) and v}
        if found:
            out[int(row["step"])] = found
    return out


def window_means(rows: dict[int, dict[str, float]], steps: list[int]) -> dict[str, float]:
    """Each task's mean over ``steps`` (the rows that have it)."""
    tasks = sorted({t for s in steps for t in rows[s]})
    return {t: sum(rows[s][t] for s in steps if t in rows[s]) / sum(t in rows[s] for s in steps) for t in tasks}


def compare(stage: str, log: Path, logs_dir: Path = LOGS, window: int = 300) -> dict:
    """The stage's val figures against the original's at the steps both evaluated, and the training
    batches' exact match per task over the last ``window`` steps both logged."""
    if stage not in ORIGINAL_LOGS:
        raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(ORIGINAL_LOGS)}")
    name = ORIGINAL_LOGS[stage]
    if name is None:
        return {"stage": stage, "original": None, "note": "the original run's log of this stage was not kept"}
    with open(log, newline="") as f:
        our_log = list(csv.DictReader(f))
    with open(logs_dir / name, newline="") as f:
        their_log = list(csv.DictReader(f))
    ours, theirs = figures(our_log, "plain/val_"), figures(their_log, "plain/val_")
    steps = sorted(s for s in set(ours) & set(theirs) if "ce" in ours[s] and "ce" in theirs[s])
    if not steps:
        raise ValueError(f"{log} and {name} share no evaluated step")
    rows = [{"step": s, "original_val_ce": theirs[s]["ce"], "val_ce": ours[s]["ce"], "diff": ours[s]["ce"] - theirs[s]["ce"]}
            for s in steps]
    last = steps[-1]
    tasks = sorted(k.removeprefix("acc/") for k in set(ours[last]) & set(theirs[last]) if k.startswith("acc/"))
    acc = {t: {"original": theirs[last][f"acc/{t}"], "this": ours[last][f"acc/{t}"]} for t in tasks}
    ours_tr, theirs_tr = figures(our_log, "plain/acc/"), figures(their_log, "plain/acc/")
    shared = sorted(set(ours_tr) & set(theirs_tr))
    in_window = [s for s in shared if s > shared[-1] - window] if shared else []
    mine, orig = window_means(ours_tr, in_window), window_means(theirs_tr, in_window)
    train = {t: {"original": orig[t], "this": mine[t], "diff": mine[t] - orig[t]} for t in sorted(set(mine) & set(orig))}
    return {"stage": stage, "original": name, "rows": rows, "last_step": last, "val_acc_at_last_step": acc,
            "max_abs_val_ce_diff": max(abs(r["diff"]) for r in rows), "last_val_ce_diff": rows[-1]["diff"],
            "train_acc_window": [in_window[0], in_window[-1]] if in_window else None, "train_acc": train}


def full_row(grid: dict, want: tuple, name: str = "the grid") -> dict:
    """The row of ``eval_model_grid``'s JSON at the configuration ``want`` (tier, p, top_k, blocks); ValueError when
    it has none."""
    row = next((r for r in grid.get("grid", []) if (r.get("tier"), r.get("p"), r.get("top_k"), r.get("blocks")) == want), None)
    if row is None:
        raise ValueError(f"{name} has no row of the full configuration {want}")
    return row


def row_tasks(row: dict) -> dict:
    """A grid row's per-task scores as ``knob_report``'s ``tasks`` (``{task: {"full": score}}``)."""
    return {"tasks": {k.removeprefix("score/"): {"full": v} for k, v in row.items() if k.startswith("score/") and k != "score/mean"}}


def request_tasks(grid: dict) -> np.ndarray:
    """The task of each of ``--per-request``'s requests: eval_model_grid takes each task's requests in turn, in the
    order of its ``n_per_task``; ValueError when those counts do not add up to the requests scored."""
    tasks = np.asarray([t for t, n in (grid.get("n_per_task") or {}).items() for _ in range(n)])
    if len(tasks) != len(grid["per_request"]["ids"]):
        raise ValueError(f"the grid's n_per_task counts {len(tasks)} requests, its per-request scores "
                         f"{len(grid['per_request']['ids'])}")
    return tasks


def request_kinds(path: Path) -> dict[str, str]:
    """Each request's kind of question in a suite's JSONL, by id: the values of its ``meta`` fields named ``*_kind``
    joined by "/" (``answer_kind`` only where it is the only one: it is one value for most tasks), or "-";
    ValueError on a line that is not a request."""
    kinds = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            meta, rid = req.get("meta") or {}, req["id"]
        except (json.JSONDecodeError, KeyError, AttributeError) as exc:
            raise ValueError(f"{path}:{n} is not a request with an id ({exc})") from None
        keys = sorted(k for k in meta if k.endswith("_kind") and k != "answer_kind") or \
            [k for k in ("answer_kind",) if k in meta]
        kinds[rid] = "/".join(str(meta[k]) for k in keys) or "-"
    return kinds


def kind_breakdown(ids: list[str], this: np.ndarray, ref: np.ndarray, datasets: np.ndarray,
                   kinds: dict[str, str]) -> dict:
    """Per task and kind of question (:func:`request_kinds`), over the requests both scored: how many, both means,
    their difference in points of the kind (``points``) and its share of the task's difference (``task_points``: the
    kind's differences summed over the task's requests, so a task's kinds add up to its difference); ValueError when
    a request has no kind."""
    missing = [i for i in ids if i not in kinds]
    if missing:
        raise ValueError(f"{len(missing)} of the scored requests are not in the --by-kind requests (first: {missing[0]})")
    kind = np.asarray([kinds[i] for i in ids])
    both = np.isfinite(this) & np.isfinite(ref)
    out = {}
    for t in sorted(set(datasets.tolist())):
        in_task = (datasets == t) & both
        n_task = int(in_task.sum())
        groups = {}
        for k in sorted(set(kind[in_task].tolist())):
            sel = in_task & (kind == k)
            d = this[sel] - ref[sel]
            groups[k] = {"n": int(sel.sum()), "this": float(this[sel].mean()), "reference": float(ref[sel].mean()),
                         "points": 100 * float(d.mean()), "task_points": 100 * float(d.sum()) / n_task}
        out[t] = groups
    return out


def print_kinds(by_kind: dict) -> None:
    """:func:`kind_breakdown`, a line per kind of question, the largest share of its task's difference first."""
    print("By kind of question: both means, the difference in points of the kind, and its share of the task's")
    for t, groups in by_kind.items():
        print(f"  {t}:")
        for k, g in sorted(groups.items(), key=lambda kv: -abs(kv[1]["task_points"])):
            print(f"    {k:32s} {g['this']:.3f} vs {g['reference']:.3f} ({g['points']:+.1f} on {g['n']}; "
                  f"{g['task_points']:+.1f} of the task)")


def grid_against_grid(grid: dict, other: dict, points: float, kinds: dict[str, str] | None = None) -> dict:
    """Two ``eval_model_grid`` results of the same requests (two retrainings of one stage) at the full configuration:
    per task the difference, and where both hold per-request scores, the requests that changed and the paired
    standard error (``churn_against``); ValueError when either lacks the full-configuration row or the requests
    differ."""
    from benchmarks.report_live_cache import churn_against, full_accuracy_against
    from model_runtime.knob_space import KnobSpace

    full = KnobSpace().full_config
    want = (full.tier, full.p, full.top_k, full.blocks)
    row, theirs = full_row(grid, want), full_row(other, want, "the reference grid")
    out = full_accuracy_against(row_tasks(row), row_tasks(theirs), points)
    out["n_per_task"] = {"grid": grid.get("n_per_task"), "reference": other.get("n_per_task") or {}}
    a, b = grid.get("per_request"), other.get("per_request")
    if a and b and str(row.get("index")) in a.get("scores", {}) and str(theirs.get("index")) in b.get("scores", {}):
        if a["ids"] != b["ids"]:
            raise ValueError("the two grids' per-request scores are not of the same requests in the same order")
        mine = np.asarray(a["scores"][str(row["index"])], dtype=float)
        ref = np.asarray(b["scores"][str(theirs["index"])], dtype=float)
        tasks = request_tasks(grid)
        out["churn"] = churn_against(mine, ref, tasks, points)
        if kinds is not None:
            out["by_kind"] = kind_breakdown(a["ids"], mine, ref, tasks, kinds)
    elif kinds is not None:
        raise ValueError("--by-kind needs both grids' per-request scores (eval_model_grid --per-request)")
    return out


def grid_against(grid: dict, reference: str | Path, points: float, kinds: dict[str, str] | None = None) -> dict:
    """An ``eval_model_grid`` result's full-configuration scores per task against the full-configuration scores of
    the cache ``reference`` over all its requests (``report_live_cache``'s comparison), with how many requests a
    task has in each; ValueError when the grid has no full-configuration row."""
    from benchmarks.report_live_cache import by_request, churn_against, full_accuracy_against, knob_report, load

    parts = load(reference, "all")
    full = parts[0].knob_space.full_config
    row = full_row(grid, (full.tier, full.p, full.top_k, full.blocks))
    ref = knob_report(parts)
    out = full_accuracy_against(row_tasks(row), ref, points)
    out["n_per_task"] = {"grid": grid.get("n_per_task"), "reference": {t: r["n"] for t, r in ref["tasks"].items()}}
    per_request = grid.get("per_request")
    if per_request and str(row.get("index")) in per_request.get("scores", {}):  # (eval_model_grid --per-request)
        at, theirs, datasets = by_request(parts)
        mine = np.asarray(per_request["scores"][str(row["index"])], dtype=float)
        rows = [at.get(i, -1) for i in per_request["ids"]]
        if min(rows, default=-1) < 0:
            raise ValueError(f"{sum(r < 0 for r in rows)} of the grid's requests are not in the reference cache")
        full_column = theirs[rows, parts[0].knob_space.index(full)]
        out["churn"] = churn_against(mine, full_column, datasets[rows], points)
        if kinds is not None:
            out["by_kind"] = kind_breakdown(per_request["ids"], mine, full_column, datasets[rows], kinds)
    elif kinds is not None:
        raise ValueError("--by-kind needs the grid's per-request scores (eval_model_grid --per-request)")
    return out


def main_grid(args: argparse.Namespace) -> int:
    try:
        grid = json.loads(args.grid.read_text())
        kinds = request_kinds(args.by_kind) if args.by_kind else None
        if Path(args.against).suffix == ".json":
            res = grid_against_grid(grid, json.loads(Path(args.against).read_text()), args.points, kinds)
        else:
            res = grid_against(grid, args.against, args.points, kinds)
    except (ValueError, OSError) as exc:
        print(f"reproduction_check: {exc}", file=sys.stderr)
        return 2
    from benchmarks.report_live_cache import print_against, print_churn

    counts = {t: f"{(res['n_per_task']['grid'] or {}).get(t)} / {res['n_per_task']['reference'].get(t)} requests"
              for t in res["tasks"]}
    print_against(res, f"full configuration, {args.grid} against {args.against} (points):", counts)
    if "churn" in res:
        print_churn(res["churn"], "Request by request")
    if "by_kind" in res:
        print_kinds(res["by_kind"])
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0 if res["within"] else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", help=f"one of {', '.join(ORIGINAL_LOGS)}")
    ap.add_argument("--log", type=Path, help="the reproduced stage's train_log.csv")
    ap.add_argument("--grid", type=Path, help="eval_model_grid's JSON of the chain's last checkpoint (with --against)")
    ap.add_argument("--against", help="the cache whose full-configuration scores --grid's must match, or another "
                    "eval_model_grid JSON of the same requests")
    ap.add_argument("--points", type=float, default=2.0, help="the largest difference --grid accepts, in points")
    ap.add_argument("--json", type=Path, default=None, help="write the comparison here too")
    ap.add_argument("--by-kind", type=Path, default=None, metavar="REQUESTS",
                    help="with --grid: the requests' JSONL; each task's difference split by kind of question")
    ap.add_argument("--window", type=int, default=300, help="steps at the stage's end whose training exact match is compared")
    args = ap.parse_args(argv)
    if bool(args.grid) == bool(args.stage) or bool(args.grid) != bool(args.against) or bool(args.stage) != bool(args.log):
        ap.error("give --stage and --log (a training stage), or --grid and --against (the chain's end)")
    if args.by_kind and not args.grid:
        ap.error("--by-kind goes with --grid")
    if args.grid:
        return main_grid(args)
    try:
        res = compare(args.stage, args.log, window=args.window)
    except (ValueError, FileNotFoundError) as exc:
        print(f"reproduction_check: {exc}", file=sys.stderr)
        return 2
    if res["original"] is None:
        print(f"{args.stage}: {res['note']}")
    else:
        print(f"{args.stage} against {res['original']} (val loss at the steps both evaluated):")
        print("  step  original  this   diff")
        for r in res["rows"]:
            print(f"  {r['step']:>5} {r['original_val_ce']:8.3f} {r['val_ce']:6.3f} {r['diff']:+7.3f}")
        accs = ", ".join(f"{t} {a['original']:.2f}/{a['this']:.2f}" for t, a in res["val_acc_at_last_step"].items())
        print(f"  val exact match at step {res['last_step']} (original/this): {accs}")
        if res["train_acc"]:
            lo, hi = res["train_acc_window"]
            accs = ", ".join(f"{t} {a['original']:.3f}/{a['this']:.3f}" for t, a in res["train_acc"].items())
            print(f"  training exact match, mean of steps {lo}-{hi} (original/this): {accs}")
        print(f"  largest |diff| {res['max_abs_val_ce_diff']:.3f}, at the last step {res['last_val_ce_diff']:+.3f}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
