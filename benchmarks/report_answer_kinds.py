"""Where a live-built suite cache's tasks fail: accuracy per kind of answer and per print size.

``python -m benchmarks.report_answer_kinds --cache PATH [--suite-seed 0] [--tasks T ...] [--json OUT]``
``python -m benchmarks.report_answer_kinds --grid GRID.json ...`` reads a checkpoint's scores and answers from
``experiments.eval_model_grid --per-request`` instead (the full configuration among its ``--configs``; the
cheapest too for that column), so a checkpoint is split the same way before any cache is built from it.

The suite's requests are a pure function of ``(seed, task, split, index)``
(``model_runtime.datasets.suite.render_example``), so every request of a cache built from
``python -m experiments.make_suite --seed S`` can be rendered again with its metadata
(``answer_kind``, ``text_px``, ...) and, for ``synth_doc``, the page's other fields (its dense
caption). Each rendered question must equal the cache's (else: a one-line error naming the first
request that does not match, i.e. a cache of another seed or suite); a grid stores no questions, so its
requests are taken by id alone.

Prints markdown, per task: mean score at the full and at the cheapest configuration per
``answer_kind`` and per print-size bin (``text_px``, where the task records it); for ``synth_doc``
how the full configuration's wrong answers relate to the page: *in the asked field's format*
(the same pattern of digits / letters / symbols as the true value, i.e. the right field was found
and read wrongly), *another field's value* (the wrong field was read), or neither; for
``synth_chart`` likewise: a value question answered with *another category's value* (a value was
read, the wrong one) or with *a number not on the chart* (neither a value nor a label of it), a
highest/lowest question with *another category's label*, or neither; and, per answer kind, the chance
of a random pick among the chart's own n values (or labels), the mean of 1/n: a model that reads a
chart's print but not which bar is which scores that (the twenty-second run's value questions did,
benchmarks/RESULTS.md). Where a task records its ``question_kind`` (the charts, and the training-only chart tasks
``synth_chart_bind`` / ``synth_chart_find``, whose val requests ``make_suite --tasks ... --splits val`` writes), a
table per question kind as well, for the chart tasks with the chance of a random pick among that question's
candidate answers (:func:`chart_chance`).

Scores are the cache's (or the grid's); the metadata is re-rendered, nothing is estimated.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cache.reader import OutcomeCache

DEFAULT_TASKS: tuple[str, ...] = ("synth_doc", "synth_chart")
#: Print-size bins (px, half-open) for tasks whose metadata records ``text_px``.
PX_BINS: tuple[tuple[int, int], ...] = ((0, 9), (9, 12), (12, 16), (16, 20), (20, 64))
_ID = re.compile(r"^(?P<task>[a-z_]+)-(?P<split>train|val|test)-(?P<index>\d+)$")


def value_pattern(text: str) -> str:
    """The shape of an answer: each digit → ``9``, each letter → ``a``, other characters kept."""
    return re.sub(r"[A-Za-z]", "a", re.sub(r"\d", "9", text.strip()))


def doc_fields(caption: str) -> list[str]:
    """The field values of a ``synth_doc`` page from its caption (``"title. key: value. ..."``)."""
    return [m.strip() for m in re.findall(r": ([^.]*)\.", caption)]


def chart_entries(caption: str) -> list[tuple[str, str]]:
    """The (label, value) pairs of a ``synth_chart`` chart from its caption (``"title: A 10, B 25."``)."""
    body = caption.split(": ", 1)[-1].rstrip(".")
    return [tuple(item.rsplit(" ", 1)) for item in body.split(", ") if " " in item]


#: The kinds of wrong answer at the full configuration, per task that has them.
WRONG_KINDS: dict[str, tuple[str, ...]] = {
    "synth_doc": ("in_field_format", "other_field", "neither"),
    "synth_chart": ("other_value", "number_not_on_chart", "other_label", "neither"),
}


def wrong_kind(task: str, pred: str, gold: str, caption: str, answer_kind: str) -> str:
    """How a wrong answer relates to the image (one of ``WRONG_KINDS[task]``); ``answer_kind`` is
    the request's (a chart's ``number`` or ``label``: year labels are digits too)."""
    if task == "synth_doc":
        if pred in [v for v in doc_fields(caption) if v != gold]:
            return "other_field"
        return "in_field_format" if value_pattern(pred) == value_pattern(gold) else "neither"
    entries = chart_entries(caption)
    others = [m for m in entries if gold not in m]
    if answer_kind == "number":
        if pred in [v for _, v in others]:
            return "other_value"
        return "number_not_on_chart" if pred.isdigit() and pred not in [lab for lab, _ in entries] else "neither"
    return "other_label" if pred in [lab for lab, _ in others] else "neither"


#: The tasks whose questions are asked of synth_chart's charts.
CHART_TASKS: tuple[str, ...] = ("synth_chart", "synth_chart_bind", "synth_chart_find")


def chart_chance(question_kind: str, n: int) -> float:
    """The score of a random pick among a chart question's candidate answers, for a chart of ``n`` categories: one of
    two for the two-way questions (which of two named bars is larger or smaller; is a name drawn), one of the other
    n − 1 labels for the bar after a named one, else one of the chart's n values, labels or places."""
    if question_kind in ("compare", "presence"):
        return 0.5
    return 1.0 / (n - 1) if question_kind == "next" else 1.0 / n


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else float("nan")


@dataclass
class ScoredRequests:
    """What the report reads of each request: its id and task, its scores at the full and the cheapest configuration
    (NaN where the source did not run the cheapest), its answer at the full configuration, and its question
    (None for a grid, which stores none)."""

    source: str
    ids: list[str]
    tasks: np.ndarray
    full: np.ndarray
    cheapest: np.ndarray
    predictions: list[str]
    questions: list[str] | None

    def task_rows(self, task: str) -> np.ndarray:
        return np.flatnonzero(self.tasks == task)


def from_cache(path: str | Path, tasks: tuple[str, ...]) -> ScoredRequests:
    """The requests of ``tasks`` in a built cache; ValueError naming a task the cache does not have."""
    with OutcomeCache(path) as cache:
        ks = cache.knob_space
        full, cheap = ks.index(ks.full_config), ks.index(ks.cheapest_config)
        for task in tasks:
            if task not in cache.datasets:
                raise ValueError(f"{path} has no task {task!r} (tasks: {', '.join(cache.datasets)})")
        rows = np.flatnonzero(np.isin(cache.dataset, [cache.datasets.index(t) for t in tasks]))
        return ScoredRequests(str(path), [str(cache.ids[i]) for i in rows],
                              np.asarray([cache.datasets[d] for d in cache.dataset[rows]]),
                              cache.score[rows, full].astype(float), cache.score[rows, cheap].astype(float),
                              [cache.prediction(i, full) for i in rows], [cache.question(i) for i in rows])


def from_grid(path: str | Path, tasks: tuple[str, ...]) -> ScoredRequests:
    """``eval_model_grid --per-request``'s requests of ``tasks``, each request's task from the grid's ``n_per_task``
    (:func:`benchmarks.reproduction_check.request_tasks`, as that check pairs them); ValueError when it has no
    per-request scores and answers at the full configuration, counts that do not add up, or none of a task's requests."""
    from benchmarks.reproduction_check import request_tasks
    from model_runtime.knob_space import KnobSpace

    grid = json.loads(Path(path).read_text())
    per = grid.get("per_request") or {}
    ks = KnobSpace()
    full, cheap = str(ks.index(ks.full_config)), str(ks.index(ks.cheapest_config))
    if full not in per.get("scores", {}) or full not in per.get("predictions", {}):
        raise ValueError(f"{path} has no per-request scores and answers at the full configuration "
                         f"(eval_model_grid --per-request with --configs including {full})")
    ids = list(per["ids"])
    of_task = request_tasks(grid)
    missing = [t for t in tasks if t not in of_task]
    if missing:
        raise ValueError(f"{path} has no request of task {missing[0]!r}")
    nan = [float("nan")] * len(ids)
    return ScoredRequests(str(path), ids, of_task, np.asarray(per["scores"][full], float),
                          np.asarray(per["scores"].get(cheap, nan), float), list(per["predictions"][full]), None)


def collect(source: str | Path, tasks: tuple[str, ...], suite_seed: int) -> dict:
    """The report of ``tasks`` from a cache, or from an ``eval_model_grid --per-request`` JSON (a ``.json`` path)."""
    from model_runtime.datasets.suite import render_example  # lazy: PIL and the fonts

    scored = from_grid(source, tasks) if str(source).endswith(".json") else from_cache(source, tasks)
    report: dict = {"source": scored.source, "suite_seed": suite_seed, "tasks": {}}
    for task in tasks:
        rows = scored.task_rows(task)
        by_kind: dict[str, list[tuple[float, float]]] = defaultdict(list)
        by_question: dict[str, list[tuple[float, float]]] = defaultdict(list)
        by_px: dict[str, list[tuple[float, float]]] = defaultdict(list)
        chance: dict[str, list[float]] = defaultdict(list)  # synth_chart: chart_chance (1/n) per request
        question_chance: dict[str, list[float]] = defaultdict(list)  # chart tasks: chart_chance per request
        wrong = dict.fromkeys(WRONG_KINDS.get(task, ()), 0)
        for i in rows:
            m = _ID.match(scored.ids[i])
            if m is None or m["task"] != task:
                raise ValueError(f"request id {scored.ids[i]!r} is not a suite id ('{task}-SPLIT-INDEX')")
            ex = render_example(task, m["split"], int(m["index"]), suite_seed)
            if scored.questions is not None and ex.question != scored.questions[i]:
                raise ValueError(f"request {scored.ids[i]!r}: re-rendered question {ex.question!r} != the cache's "
                                 f"{scored.questions[i]!r} (a cache of another suite seed than --suite-seed {suite_seed}?)")
            pair = (float(scored.full[i]), float(scored.cheapest[i]))
            by_kind[str(ex.meta.get("answer_kind", "?"))].append(pair)
            qk = ex.meta.get("question_kind")
            if qk is not None:
                by_question[str(qk)].append(pair)
            if task in CHART_TASKS:
                pick = chart_chance(str(qk), int(ex.meta["n_objects"]))
                question_chance[str(qk)].append(pick)
                if task == "synth_chart":  # its questions are all one-of-n: by answer kind too
                    chance[str(ex.meta["answer_kind"])].append(pick)
            px = ex.meta.get("text_px")
            if px is not None:
                lo, hi = next(b for b in PX_BINS if b[0] <= int(px) < b[1])
                by_px[f"[{lo}, {hi})"].append(pair)
            if wrong and pair[0] < 1.0:
                wrong[wrong_kind(task, scored.predictions[i].strip(), str(ex.answers[0]), ex.caption or "",
                                 str(ex.meta.get("answer_kind", "")))] += 1

        def table(groups: dict[str, list[tuple[float, float]]], order: list[str]) -> dict:
            return {k: {"n": len(groups[k]), "full": _mean([a for a, _ in groups[k]]),
                        "cheapest": _mean([b for _, b in groups[k]])} for k in order if k in groups}

        px_order = [f"[{lo}, {hi})" for lo, hi in PX_BINS]
        entry = {"n": int(rows.size), "by_answer_kind": table(by_kind, sorted(by_kind)),
                 "by_question_kind": table(by_question, sorted(by_question)), "by_text_px": table(by_px, px_order)}
        if chance:
            entry["chance_by_answer_kind"] = {k: _mean(v) for k, v in sorted(chance.items())}
        if question_chance:
            entry["chance_by_question_kind"] = {k: _mean(v) for k, v in sorted(question_chance.items())}
        if wrong:
            entry["wrong_at_full"] = wrong
        report["tasks"][task] = entry
    return report


_WRONG_NAMES = {"in_field_format": "in the asked field's format", "other_field": "another field's value",
                "other_value": "another category's value", "number_not_on_chart": "a number not on the chart",
                "other_label": "another category's label",
                "neither": "neither"}


def markdown(report: dict) -> str:
    out = []
    for task, e in report["tasks"].items():
        out.append(f"### {task} ({e['n']} requests)\n")
        for title, key, chance_key, pick in (
                ("answer kind", "by_answer_kind", "chance_by_answer_kind", "a random pick among the chart's"),
                ("question kind", "by_question_kind", "chance_by_question_kind", "a random pick among its answers"),
                ("text px", "by_text_px", None, "")):
            if not e.get(key):
                continue
            chance = e.get(chance_key) if chance_key else None
            extra = (f" {pick} |", " --- |") if chance else ("", "")
            out.append(f"| {title} | n | full | cheapest |{extra[0]}\n| --- | --- | --- | --- |{extra[1]}")
            out += [f"| {k} | {v['n']} | {v['full']:.3f} | {'-' if np.isnan(v['cheapest']) else format(v['cheapest'], '.3f')} |"
                    + (f" {chance[k]:.3f} |" if chance else "") for k, v in e[key].items()]
            out.append("")
        if "wrong_at_full" in e:
            w = e["wrong_at_full"]
            tot = max(sum(w.values()), 1)
            kinds = ", ".join(f"{_WRONG_NAMES[k]} {v / tot:.1%}" for k, v in w.items())
            out.append(f"Wrong at the full configuration: {sum(w.values())}; {kinds}.\n")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report_answer_kinds", description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--cache", help="a live-built suite cache")
    src.add_argument("--grid", help="an eval_model_grid --per-request JSON of suite requests")
    ap.add_argument("--suite-seed", type=int, default=0, help="the make_suite --seed the cache's requests came from")
    ap.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS))
    ap.add_argument("--json", default=None, help="also write the figures as JSON")
    args = ap.parse_args(argv)
    try:
        rep = collect(args.cache or args.grid, tuple(args.tasks), args.suite_seed)
    except (ValueError, OSError) as e:
        ap.exit(2, f"{ap.prog}: error: {e}\n")
    print(markdown(rep))
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
