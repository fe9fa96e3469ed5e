"""`benchmarks.report_answer_kinds`: the committed live cache's documents and charts split by
answer kind, print size and kind of error, from requests re-rendered by their ids."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.report_answer_kinds import chart_entries, collect, doc_fields, main, value_pattern, wrong_kind
from cache.reader import OutcomeCache

DEFAULT = "cache/default/molmoe_small_suite.h5"


@pytest.fixture(scope="module")
def doc_report():
    return collect(DEFAULT, ("synth_doc",), 0)


def test_value_pattern_and_doc_fields() -> None:
    assert value_pattern("$795") == value_pattern("$757") == "$999"
    assert value_pattern("4/17") != value_pattern("10/17")
    assert value_pattern("C750") == "a999"
    assert doc_fields("invoice. total: $89. amount due: $795. city: Dover.") == ["$89", "$795", "Dover"]


def test_groups_partition_the_task_and_match_the_cache(doc_report) -> None:
    e = doc_report["tasks"]["synth_doc"]
    with OutcomeCache(DEFAULT) as c:
        ks = c.knob_space
        rows = c.dataset == c.datasets.index("synth_doc")
        full = c.score[rows, ks.index(ks.full_config)]
        cheap = c.score[rows, ks.index(ks.cheapest_config)]
    assert e["n"] == rows.sum() == 1000
    for key in ("by_answer_kind", "by_text_px"):
        groups = e[key].values()
        assert sum(g["n"] for g in groups) == 1000
        assert sum(g["n"] * g["full"] for g in groups) / 1000 == pytest.approx(float(np.mean(full)))
        assert sum(g["n"] * g["cheapest"] for g in groups) / 1000 == pytest.approx(float(np.mean(cheap)))
    assert sum(e["wrong_at_full"].values()) == int(np.sum(full < 1.0))
    assert {"name", "city", "zip_code"} <= set(e["by_answer_kind"])


def test_chart_entries_and_the_kinds_of_wrong_chart_answer() -> None:
    caption = "scores: 2018 35, 2022 25, 2020 20."
    assert chart_entries(caption) == [("2018", "35"), ("2022", "25"), ("2020", "20")]
    assert wrong_kind("synth_chart", "25", "35", caption, "number") == "other_value"
    assert wrong_kind("synth_chart", "40", "35", caption, "number") == "number_not_on_chart"
    assert wrong_kind("synth_chart", "2022", "35", caption, "number") == "neither"
    # year labels are digits: a label question's wrong year is another label, not a misread number
    assert wrong_kind("synth_chart", "2020", "2018", caption, "label") == "other_label"
    assert wrong_kind("synth_chart", "2021", "2018", caption, "label") == "neither"
    assert wrong_kind("synth_doc", "$757", "$795", "invoice. total: $89. amount due: $795.", "amount") == "in_field_format"
    assert wrong_kind("synth_doc", "$89", "$795", "invoice. total: $89. amount due: $795.", "amount") == "other_field"


def test_every_wrong_chart_answer_is_counted_once() -> None:
    e = collect(DEFAULT, ("synth_chart",), 0)["tasks"]["synth_chart"]
    with OutcomeCache(DEFAULT) as c:
        rows = c.dataset == c.datasets.index("synth_chart")
        full = c.score[rows, c.knob_space.index(c.knob_space.full_config)]
    assert set(e["wrong_at_full"]) == {"other_value", "number_not_on_chart", "other_label", "neither"}
    assert sum(e["wrong_at_full"].values()) == int(np.sum(full < 1.0))
    # the chance floor per answer kind: the mean of 1/n over the kind's charts (3-5 categories)
    assert set(e["chance_by_answer_kind"]) == set(e["by_answer_kind"]) == {"label", "number"}
    assert all(1 / 5 < c < 1 / 3 for c in e["chance_by_answer_kind"].values())


def test_a_cache_of_another_suite_seed_is_refused(capsys) -> None:
    with pytest.raises(SystemExit) as ex:
        main(["--cache", DEFAULT, "--tasks", "synth_doc", "--suite-seed", "1"])
    assert ex.value.code == 2
    assert "another suite seed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--cache", DEFAULT, "--tasks", "no_such_task"])


def test_a_grid_of_the_same_requests_gives_the_caches_report(doc_report, tmp_path, capsys) -> None:
    """--grid: eval_model_grid --per-request's scores and answers (here the cache's own, written as a grid) give the
    report the cache gives; without the cheapest configuration that column is left empty; a grid without answers
    at the full configuration is refused."""
    import json

    with OutcomeCache(DEFAULT) as c:
        ks = c.knob_space
        full, cheap = ks.index(ks.full_config), ks.index(ks.cheapest_config)
        rows = np.flatnonzero(c.dataset == c.datasets.index("synth_doc"))
        per = {"ids": [str(c.ids[i]) for i in rows],
               "scores": {str(full): c.score[rows, full].tolist(), str(cheap): c.score[rows, cheap].tolist()},
               "predictions": {str(full): [c.prediction(i, full) for i in rows]}}
    grid = tmp_path / "grid.json"
    counts = {"synth_doc": len(rows)}
    grid.write_text(json.dumps({"n_per_task": counts, "per_request": per}))
    from_grid = collect(grid, ("synth_doc",), 0)
    assert from_grid["tasks"] == doc_report["tasks"] and from_grid["source"] == str(grid)
    del per["scores"][str(cheap)]
    grid.write_text(json.dumps({"n_per_task": counts, "per_request": per}))
    assert main(["--grid", str(grid), "--tasks", "synth_doc"]) == 0
    out = capsys.readouterr().out
    assert f"| name | {doc_report['tasks']['synth_doc']['by_answer_kind']['name']['n']} |" in out and " | - |" in out
    with pytest.raises(SystemExit):
        main(["--grid", str(grid), "--tasks", "synth_chart"])
    assert "has no request of task 'synth_chart'" in capsys.readouterr().err
    del per["predictions"]
    grid.write_text(json.dumps({"n_per_task": counts, "per_request": per}))
    with pytest.raises(SystemExit):
        main(["--grid", str(grid), "--tasks", "synth_doc"])
    assert "no per-request scores and answers at the full configuration" in capsys.readouterr().err


def test_a_training_only_chart_tasks_grid_is_split_by_question_kind(tmp_path) -> None:
    """A probe of synth_chart_find's val stream (no cache holds a training-only task): one row per question kind with
    the chance of a random pick among that question's answers; synth_chart's cache gets the table too."""
    import json

    from benchmarks.report_answer_kinds import chart_chance
    from model_runtime.datasets.suite import render_example
    from model_runtime.knob_space import KnobSpace

    ks = KnobSpace()
    FULL = str(ks.index(ks.full_config))
    ids = [f"synth_chart_find-val-{i}" for i in range(12)]
    kinds = [render_example("synth_chart_find", "val", i).meta["question_kind"] for i in range(12)]
    scores = [1.0 if k == "position" else 0.0 for k in kinds]
    grid = tmp_path / "probe.json"
    grid.write_text(json.dumps({"n_per_task": {"synth_chart_find": 12}, "per_request": {
        "ids": ids, "scores": {FULL: scores}, "predictions": {FULL: ["1"] * 12}}}))
    e = collect(grid, ("synth_chart_find",), 0)["tasks"]["synth_chart_find"]
    assert set(e["by_question_kind"]) == set(kinds) and e["by_question_kind"]["position"]["full"] == 1.0
    assert sum(g["n"] for g in e["by_question_kind"].values()) == 12
    assert all(g["full"] == 0.0 for k, g in e["by_question_kind"].items() if k != "position")
    assert chart_chance("presence", 4) == chart_chance("compare", 3) == 0.5
    assert chart_chance("next", 5) == 0.25 and chart_chance("position", 4) == chart_chance("value", 4) == 0.25
    assert 1 / 5 <= e["chance_by_question_kind"]["position"] <= 1 / 3
    chart = collect(DEFAULT, ("synth_chart",), 0)["tasks"]["synth_chart"]
    assert set(chart["by_question_kind"]) == {"value", "max", "min"} and "chance_by_question_kind" in chart
