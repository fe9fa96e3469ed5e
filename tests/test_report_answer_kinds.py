"""`benchmarks.report_answer_kinds`: the committed live cache's documents split by answer kind,
print size and kind of error, from requests re-rendered by their ids."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.report_answer_kinds import collect, doc_fields, main, value_pattern
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


def test_a_cache_of_another_suite_seed_is_refused(capsys) -> None:
    with pytest.raises(SystemExit) as ex:
        main(["--cache", DEFAULT, "--tasks", "synth_doc", "--suite-seed", "1"])
    assert ex.value.code == 2
    assert "another suite seed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--cache", DEFAULT, "--tasks", "no_such_task"])
