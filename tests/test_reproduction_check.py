"""reproduction_check: a reproduced stage's val figures against the original run's log."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.reproduction_check import ORIGINAL_LOGS, compare, main


def _log(path: Path, rows: list[tuple[int, float | None, float]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "plain/loss", "plain/val_ce", "plain/val_acc/easy_vqa"])
        for step, val, acc in rows:  # training rows have no val figures
            w.writerow([step, 1.0, "" if val is None else val, "" if val is None else acc])
    return path


def test_the_stage_against_its_original(tmp_path: Path, capsys) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    _log(logs / ORIGINAL_LOGS["run10"], [(24, None, 0), (249, 1.5, 0.6), (499, 1.3, 0.7), (749, 1.2, 0.8)])
    ours = _log(tmp_path / "ours.csv", [(249, 1.52, 0.5), (499, 1.25, 0.75), (600, 1.1, 0.9)])
    res = compare("run10", ours, logs)
    assert [r["step"] for r in res["rows"]] == [249, 499]  # the steps both evaluated
    assert res["rows"][1]["diff"] == pytest.approx(-0.05) and res["max_abs_val_ce_diff"] == pytest.approx(0.05)
    assert res["last_step"] == 499 and res["val_acc_at_last_step"] == {"easy_vqa": {"original": 0.7, "this": 0.75}}
    assert compare("run11a", ours, logs)["original"] is None  # its original log was not kept
    with pytest.raises(ValueError, match="unknown stage 'run15'"):
        compare("run15", ours, logs)
    # the committed logs: every original stage's log is there; the H100's run9 against the ninth H200 run
    root = Path(__file__).resolve().parents[1]
    assert all((root / "benchmarks/logs" / name).is_file() for name in ORIGINAL_LOGS.values() if name)
    out = tmp_path / "check.json"
    assert main(["--stage", "run9", "--log", str(root / "benchmarks/logs/h100_reproduce_run9_train_log.csv"), "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["last_step"] == 2999 and saved["last_val_ce_diff"] == pytest.approx(1.0718534 - 1.0881233, abs=1e-4)
    assert "largest |diff| 0.045" in capsys.readouterr().out
    assert main(["--stage", "run15", "--log", str(ours)]) == 2


def test_the_training_exact_match_over_the_stage_end(tmp_path: Path, capsys) -> None:
    # thousands of examples a task: the per-task figure to read, over the last --window steps both logs have
    def log(path: Path, acc: dict[int, float]) -> Path:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "plain/val_ce", "plain/acc/synth_count", "plain/acc/caption"])
            for step, a in acc.items():
                w.writerow([step, 1.0 if step % 100 == 99 else "", a, "" if step == 299 else 0.1])
        return path

    logs = tmp_path / "logs"
    logs.mkdir()
    log(logs / ORIGINAL_LOGS["run10"], {24: 0.0, 99: 0.1, 199: 0.3, 299: 0.5})
    ours = log(tmp_path / "ours.csv", {24: 0.9, 99: 0.2, 199: 0.2, 299: 0.2, 324: 0.9})
    res = compare("run10", ours, logs, window=200)
    assert res["train_acc_window"] == [199, 299]  # 324 is ours only; 99 is outside the window
    assert res["train_acc"]["synth_count"] == pytest.approx({"original": 0.4, "this": 0.2, "diff": -0.2})
    assert res["train_acc"]["caption"] == pytest.approx({"original": 0.1, "this": 0.1, "diff": 0.0})  # rows that have it
    root = Path(__file__).resolve().parents[1]
    assert main(["--stage", "run10", "--log", str(root / "benchmarks/logs/h200_reproduce_run10_train_log.csv")]) == 0
    assert "training exact match, mean of steps 2899-3185 (original/this):" in capsys.readouterr().out


def test_the_chains_end_scored_against_the_committed_cache(tmp_path: Path, capsys) -> None:
    """--grid: eval_model_grid's full-configuration row against the committed cache's full-configuration scores;
    within the points exits 0, beyond them 1, and a grid without the full configuration is refused."""
    from benchmarks.report_live_cache import knob_report, load
    from cache.default import LIVE_DEFAULT_CACHE

    ref = knob_report(load(LIVE_DEFAULT_CACHE, "all"))
    tasks = sorted(ref["tasks"])
    full = {"index": 0, "tier": "high", "p": 1, "top_k": 8, "blocks": 16}
    cheap = {"index": 1, "tier": "low", "p": 1, "top_k": 4, "blocks": 12, **{f"score/{t}": 0.0 for t in tasks}}
    shifted = {f"score/{t}": ref["tasks"][t]["full"] + (0.015 if i == 0 else -0.005) for i, t in enumerate(tasks)}
    grid = {"n_per_task": {t: 1000 for t in tasks}, "grid": [cheap, {**full, **shifted, "score/mean": 0.5}]}
    path = tmp_path / "full_scores.json"
    path.write_text(json.dumps(grid))
    out = tmp_path / "reproduction.json"
    assert main(["--grid", str(path), "--against", str(LIVE_DEFAULT_CACHE), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["largest_points"] == pytest.approx(1.5) and res["within"] and set(res["tasks"]) == set(tasks)
    assert res["n_per_task"]["reference"] == {t: 1000 for t in tasks}
    assert "largest difference 1.5 points: within 2" in capsys.readouterr().out
    assert main(["--grid", str(path), "--against", str(LIVE_DEFAULT_CACHE), "--points", "1"]) == 1
    # --per-request scores (eval_model_grid --per-request), paired with the cache's by request id: the cache's own
    # full-configuration scores, in reverse order, with ten requests of one task flipped between 0 and 1
    parts = load(LIVE_DEFAULT_CACHE, "all")
    ids = np.concatenate([d.sample_ids for d in parts])
    datasets = np.concatenate([d.datasets for d in parts])
    scores = np.concatenate([d.score for d in parts])[:, parts[0].knob_space.index(parts[0].knob_space.full_config)]
    flipped = np.flatnonzero(datasets == tasks[0])[:10]
    mine = scores.copy()
    mine[flipped] = 1.0 - np.round(mine[flipped])
    grid["per_request"] = {"ids": ids[::-1].tolist(), "scores": {"0": mine[::-1].tolist()}}
    path.write_text(json.dumps(grid))
    assert main(["--grid", str(path), "--against", str(LIVE_DEFAULT_CACHE), "--json", str(out)]) == 0
    churn = json.loads(out.read_text())["churn"]
    assert churn["tasks"][tasks[0]]["changed"] == pytest.approx(10 / 1000) and churn["tasks"][tasks[0]]["paired_se_points"] > 0
    assert all(churn["tasks"][t]["changed"] == 0 for t in tasks[1:]) and 0 < churn["miss_chance"] < 1
    ref1 = ref["tasks"][tasks[1]]["full"]
    assert f"{tasks[1]}: {ref1:.3f} vs {ref1:.3f} (+0.0) on 1000; 0.0% changed, SE 0.00 points" in capsys.readouterr().out
    # a subset of the cache's requests (eval_model_grid --per-task 10): compared with the cache's scores of the same
    # requests, not with its whole-task mean
    first = np.concatenate([np.flatnonzero(datasets == t)[:10] for t in tasks])
    grid["per_request"] = {"ids": ids[first].tolist(), "scores": {"0": mine[first].tolist()}}
    path.write_text(json.dumps(grid))
    main(["--grid", str(path), "--against", str(LIVE_DEFAULT_CACHE), "--json", str(out)])
    sub = json.loads(out.read_text())["churn"]["tasks"]
    for t in tasks:
        rows = first[datasets[first] == t]
        assert sub[t]["n"] == 10 and sub[t]["reference"] == pytest.approx(scores[rows].mean())
        assert sub[t]["points"] == pytest.approx(100 * (mine[rows] - scores[rows]).mean())
    assert sub[tasks[0]]["changed"] == 1.0 and sub[tasks[1]]["points"] == 0  # the ten flipped requests
    grid["per_request"]["ids"][0] = "not-a-request"
    path.write_text(json.dumps(grid))
    assert main(["--grid", str(path), "--against", str(LIVE_DEFAULT_CACHE)]) == 2
    assert "1 of the grid's requests are not in the reference cache" in capsys.readouterr().err
    path.write_text(json.dumps({"grid": [cheap]}))
    assert main(["--grid", str(path), "--against", str(LIVE_DEFAULT_CACHE)]) == 2
    assert "no row of the full configuration ('high', 1, 8, 16)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one mode at a time
        main(["--grid", str(path), "--stage", "run10", "--log", str(path), "--against", str(LIVE_DEFAULT_CACHE)])


def test_two_retrainings_scored_side_by_side(tmp_path: Path, capsys) -> None:
    """--grid A --against B.json: two eval_model_grid results of the same requests, per task and request by request
    (each request's task from n_per_task's order); requests that differ, or counts that do not add up, are refused."""
    full = {"index": 174, "tier": "high", "p": 1, "top_k": 8, "blocks": 16}
    a = np.array([1, 0, 1, 1, 0, 0.5, 0.25, 1.0])  # 4 requests of "count", then 4 of "doc"
    b = a.copy()
    b[0] = 0  # one count request answered otherwise: count 3/4 against 2/4
    ids = [f"r{i}" for i in range(8)]

    def grid(s: np.ndarray) -> dict:
        return {"n_per_task": {"count": 4, "doc": 4},
                "grid": [{**full, "score/count": s[:4].mean(), "score/doc": s[4:].mean()}],
                "per_request": {"ids": ids, "scores": {"174": s.tolist()}}}

    pa, pb, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "res.json"
    pa.write_text(json.dumps(grid(a)))
    pb.write_text(json.dumps(grid(b)))
    assert main(["--grid", str(pa), "--against", str(pb), "--points", "30", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["tasks"]["count"]["points"] == pytest.approx(25.0) and res["tasks"]["doc"]["points"] == pytest.approx(0.0)
    assert res["churn"]["tasks"]["count"]["changed"] == pytest.approx(0.25) and res["churn"]["tasks"]["doc"]["changed"] == 0
    assert res["churn"]["tasks"]["count"]["paired_se_points"] == pytest.approx(100 * np.std([1, 0, 0, 0], ddof=1) / 2)
    assert "count: 0.750 vs 0.500 (+25.0)" in capsys.readouterr().out
    assert main(["--grid", str(pa), "--against", str(pb)]) == 1  # beyond the default 2 points
    other = grid(b)
    other["per_request"]["ids"] = ids[::-1]
    pb.write_text(json.dumps(other))
    assert main(["--grid", str(pa), "--against", str(pb)]) == 2
    assert "not of the same requests in the same order" in capsys.readouterr().err
    short = grid(a)
    short["n_per_task"] = {"count": 4, "doc": 3}
    pa.write_text(json.dumps(short))
    pb.write_text(json.dumps(grid(b)))
    assert main(["--grid", str(pa), "--against", str(pb)]) == 2
    assert "n_per_task counts 7 requests, its per-request scores 8" in capsys.readouterr().err


def test_a_difference_split_by_kind_of_question(tmp_path: Path, capsys) -> None:
    """--by-kind REQUESTS: each task's difference per kind of question (the requests' ``*_kind`` meta fields), the
    kinds' shares adding up to the task's difference; against another grid and against the committed cache."""
    full = {"index": 174, "tier": "high", "p": 1, "top_k": 8, "blocks": 16}
    kinds = [("arrow", "food_web"), ("arrow", "food_web"), ("after", "process"), ("after", "process")]
    a, b = np.array([1.0, 1.0, 0.0, 1.0, 1.0, 0.0]), np.array([0.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    ids = [f"r{i}" for i in range(6)]  # four diagram requests, then two easy_vqa ones (answer_kind alone)
    requests = tmp_path / "test.jsonl"
    lines = [{"id": ids[i], "meta": {"question_kind": q, "diagram_kind": d, "answer_kind": "option"}} for i, (q, d) in enumerate(kinds)]
    lines += [{"id": ids[4], "meta": {"answer_kind": "yes/no"}}, {"id": ids[5], "meta": {}}]
    requests.write_text("\n".join(json.dumps(r) for r in lines) + "\n")

    def grid(s: np.ndarray) -> dict:
        return {"n_per_task": {"diagram": 4, "easy": 2}, "grid": [{**full, "score/diagram": s[:4].mean(), "score/easy": s[4:].mean()}],
                "per_request": {"ids": ids, "scores": {"174": s.tolist()}}}

    pa, pb, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "res.json"
    pa.write_text(json.dumps(grid(a)))
    pb.write_text(json.dumps(grid(b)))
    assert main(["--grid", str(pa), "--against", str(pb), "--points", "100", "--by-kind", str(requests), "--json", str(out)]) == 0
    by_kind = json.loads(out.read_text())["by_kind"]
    arrow, after = by_kind["diagram"]["food_web/arrow"], by_kind["diagram"]["process/after"]
    assert (arrow["n"], arrow["this"], arrow["reference"], arrow["points"], arrow["task_points"]) == (2, 1.0, 0.5, 50.0, 25.0)
    assert after["points"] == -50.0 and after["task_points"] == -25.0  # the task's +0.0 is +25 and -25
    assert set(by_kind["easy"]) == {"yes/no", "-"}  # answer_kind where it is the only kind; "-" without one
    assert "food_web/arrow                   1.000 vs 0.500 (+50.0 on 2; +25.0 of the task)" in capsys.readouterr().out
    lines[3]["id"] = "elsewhere"  # a scored request the file lacks
    requests.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    assert main(["--grid", str(pa), "--against", str(pb), "--by-kind", str(requests)]) == 2
    assert "1 of the scored requests are not in the --by-kind requests (first: r3)" in capsys.readouterr().err
    requests.write_text("not json\n")
    assert main(["--grid", str(pa), "--against", str(pb), "--by-kind", str(requests)]) == 2
    assert "test.jsonl:1 is not a request with an id" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a training stage's check has no requests to split
        main(["--stage", "run10", "--log", str(pa), "--by-kind", str(requests)])


def test_a_difference_from_the_committed_cache_split_by_kind(tmp_path: Path, capsys) -> None:
    """--by-kind against a cache: the committed default cache's own full-configuration scores with one task's requests of
    one kind flipped; the whole task's difference lies in that kind."""
    from benchmarks.report_live_cache import load
    from cache.default import LIVE_DEFAULT_CACHE

    parts = load(LIVE_DEFAULT_CACHE, "all")
    ids = np.concatenate([d.sample_ids for d in parts]).tolist()
    datasets = np.concatenate([d.datasets for d in parts])
    scores = np.concatenate([d.score for d in parts])[:, parts[0].knob_space.index(parts[0].knob_space.full_config)]
    task = sorted(set(datasets.tolist()))[0]
    in_task = np.flatnonzero(datasets == task)
    requests = tmp_path / "test.jsonl"  # the task's first 100 requests of kind "one", the rest "other"
    first = set(in_task[:100].tolist())
    requests.write_text("\n".join(json.dumps({"id": i, "meta": {"question_kind": "one" if r in first else "other"}})
                                  for r, i in enumerate(ids)) + "\n")
    mine = scores.copy()
    mine[in_task[:100]] = 1.0 - np.round(mine[in_task[:100]])
    full = {"index": 0, "tier": "high", "p": 1, "top_k": 8, "blocks": 16}
    tasks = sorted(set(datasets.tolist()))
    grid = {"n_per_task": {t: int((datasets == t).sum()) for t in tasks},
            "grid": [{**full, **{f"score/{t}": float(mine[datasets == t].mean()) for t in tasks}}],
            "per_request": {"ids": ids, "scores": {"0": mine.tolist()}}}
    path, out = tmp_path / "grid.json", tmp_path / "res.json"
    path.write_text(json.dumps(grid))
    main(["--grid", str(path), "--against", str(LIVE_DEFAULT_CACHE), "--points", "100", "--by-kind", str(requests), "--json", str(out)])
    res = json.loads(out.read_text())
    one, other = res["by_kind"][task]["one"], res["by_kind"][task]["other"]
    assert one["n"] == 100 and other["points"] == 0.0
    assert one["task_points"] == pytest.approx(res["churn"]["tasks"][task]["points"])
    del grid["per_request"]
    path.write_text(json.dumps(grid))
    assert main(["--grid", str(path), "--against", str(LIVE_DEFAULT_CACHE), "--by-kind", str(requests)]) == 2
    assert "--by-kind needs the grid's per-request scores" in capsys.readouterr().err
