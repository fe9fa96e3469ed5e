"""`benchmarks.report_live_cache`: the per-task knob tables read the cache's own scores."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks.report_live_cache import knob_report, load, main
from cache.synthetic import default_params, write_synthetic_cache


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / "small.h5"
    params = dataclasses.replace(default_params(), n_samples=300, lang_dim=8, token_dim=8)
    return str(write_synthetic_cache(path, params, seed=4))


def test_knob_report_matches_direct_means(small_cache, capsys):
    parts = load(small_cache, "all")
    rep = knob_report(parts)
    ks = parts[0].knob_space
    score = np.concatenate([d.score for d in parts])
    ds = np.concatenate([d.datasets for d in parts])
    assert rep["n_requests"] == 300 and rep["coverage"] == pytest.approx(np.isfinite(score).mean())
    for task, row in rep["tasks"].items():
        m = ds == task
        assert row["full"] == pytest.approx(np.nanmean(score[m, ks.index(ks.full_config)]))
        assert row["cheapest"] == pytest.approx(np.nanmean(score[m, ks.index(ks.cheapest_config)]))
        assert row["tier"]["low"] == pytest.approx(np.nanmean(score[m, ks.index(("low", 1, 8, 16))]))
        assert row["blocks"][12] == pytest.approx(np.nanmean(score[m, ks.index(("high", 1, 8, 12))]))
        assert row["costliest_knob"] == max(row["drop_alone"], key=row["drop_alone"].get)
        assert row["tier"]["high"] == row["top_k"][8] == row["blocks"][16] == row["full"]
    assert set(rep["block_removal_points"]) == {1, 2, 3, 4}
    assert main(["--cache", small_cache, "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "costliest knob" in out and "MolmoE-1B | 3.1 | 5.4 | 7.5 | 18.4" in out


def test_against_a_reference_compares_every_tasks_full_score(small_cache, tmp_path, capsys):
    from benchmarks.report_live_cache import full_accuracy_against

    # the same cache is within any bar; another seed's draw of the generator is not within 0 points
    assert main(["--cache", small_cache, "--against", small_cache, "--points", "0"]) == 0
    assert "largest difference 0.0 points: within 0" in capsys.readouterr().out
    other = str(write_synthetic_cache(tmp_path / "other.h5", dataclasses.replace(default_params(), n_samples=300, lang_dim=8,
                                                                                 token_dim=8), seed=5))
    assert main(["--cache", other, "--against", small_cache, "--points", "0"]) == 1
    assert "NOT within 0" in capsys.readouterr().out
    a = {"tasks": {"doc": {"full": 0.10}, "text": {"full": 0.61}}}
    b = {"tasks": {"doc": {"full": 0.12}, "text": {"full": 0.60}, "count": {"full": 0.4}}}
    cmp = full_accuracy_against(a, b, 2.0)
    assert cmp["tasks"]["doc"]["points"] == pytest.approx(-2.0) and cmp["tasks"]["text"]["points"] == pytest.approx(1.0)
    assert cmp["tasks"]["count"]["points"] is None and not cmp["within"]  # a task the rebuilt cache lacks fails
    del b["tasks"]["count"]
    assert full_accuracy_against(a, b, 2.0)["within"] and not full_accuracy_against(a, b, 1.9)["within"]


def test_every_config_against_compares_every_configuration_by_request_id(small_cache, capsys):
    from benchmarks.report_live_cache import every_config_against

    parts = load(small_cache, "all")
    same = every_config_against(parts, parts)
    assert same["requests"] == 300 and same["configurations"] == len(parts[0].knob_space)
    for row in same["tasks"].values():
        assert row["largest_points"] == 0 and row["equal_cells"] == 1 and row["oracle"]["this"] == row["oracle"]["reference"]
    churn = same["full_churn"]
    assert churn["miss_chance"] == 0 and churn["bar_points"] == 2.0
    assert all(r["changed"] == 0 and r["paired_se_points"] == 0 and r["beyond_bar"] == 0 for r in churn["tasks"].values())
    # the reference's requests in another order, one task's scores at one configuration lowered by 0.1: that task's
    # largest difference is 10 points at that configuration, its equal cells fall by one configuration's share
    ref = [dataclasses.replace(d) for d in parts[::-1]]
    task = sorted(same["tasks"])[0]
    c = 7
    for d in ref:
        score = d.score.copy()
        m = (d.datasets == task) & np.isfinite(score[:, c])
        score[m, c] -= 0.1
        d.score = score
    g = every_config_against(parts, ref)
    row = g["tasks"][task]
    assert row["largest_points"] == pytest.approx(10.0)
    assert row["mean_abs_points"] == pytest.approx(10.0 / g["configurations"])
    assert row["equal_cells"] == pytest.approx(1 - 1 / g["configurations"], abs=1e-3)
    assert all(r["largest_points"] == 0 for t, r in g["tasks"].items() if t != task)
    # every other request of the task 0.3 lower at the full configuration: half its requests changed, the paired
    # standard error that of the differences (0 or 30 points), and a chance of missing the bar from that task alone
    full = parts[0].knob_space.index(parts[0].knob_space.full_config)
    changed = 0
    for d in ref:
        score = d.score.copy()
        rows = np.flatnonzero(d.datasets == task)[::2]
        score[rows, full] -= 0.3
        d.score, changed = score, changed + len(rows)
    churn = every_config_against(parts, ref, points=1.0)["full_churn"]
    row, n = churn["tasks"][task], int(sum(np.sum(d.datasets == task) for d in parts))
    diffs = np.r_[np.full(changed, 30.0), np.zeros(n - changed)]
    assert row["changed"] == pytest.approx(changed / n)
    assert row["paired_se_points"] == pytest.approx(diffs.std(ddof=1) / np.sqrt(n))
    assert row["beyond_bar"] == pytest.approx(math.erfc(1.0 / (row["paired_se_points"] * math.sqrt(2))))
    assert churn["miss_chance"] == pytest.approx(row["beyond_bar"]) and 0 < churn["miss_chance"] < 1
    main(["--cache", small_cache, "--against", small_cache])
    out = capsys.readouterr().out
    assert "equal cells 100.0%" in out and "(+0.0) on " in out and "; 0.0% changed, SE 0.00 points" in out and "some task beyond 2 points: 0%" in out
    ks = parts[0].knob_space  # (only the knob space is read before the refusal)
    with pytest.raises(ValueError, match="knob spaces differ"):
        every_config_against(parts, [SimpleNamespace(knob_space=dataclasses.replace(ks, top_ks=ks.top_ks[1:]))])
