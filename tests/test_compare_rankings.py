"""benchmarks.compare_rankings: Kendall τ between two evaluate summaries' policy orders."""

from __future__ import annotations

import json

import pytest

from benchmarks import compare_rankings as cr


def summary(tmp_path, name: str, rewards: dict[str, float], label: str = "live x") -> str:
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps({"cache_label": label, "policies": {k: {"mean_reward": v} for k, v in rewards.items()}}))
    return str(p)


def test_same_order_is_tau_one_and_one_swap_lowers_it(tmp_path, capsys) -> None:
    live = {"oracle": 0.5, "router2": 0.36, "grpo": 0.35, "static": 0.34, "random": 0.06}
    a = summary(tmp_path, "a", live)
    same = summary(tmp_path, "b", {k: v - 0.02 for k, v in live.items()}, "SYNTHETIC")
    swapped = summary(tmp_path, "c", {**live, "grpo": 0.37, "only_here": 0.1}, "SYNTHETIC")
    r = cr.compare(cr.load_summary(a), cr.load_summary(same))
    assert r["tau"] == pytest.approx(1.0) and r["tau_rest"] == pytest.approx(1.0)
    assert (r["n"], r["n_rest"], sorted(r["excluded"])) == (5, 3, ["oracle", "random"])
    r = cr.compare(cr.load_summary(a), cr.load_summary(swapped))
    # 5 common policies (only_here is not in the first), one discordant pair of 10: tau = (9 - 1) / 10
    assert r["n"] == 5 and r["tau"] == pytest.approx(0.8)
    # rest = router2, grpo, static with router2/grpo swapped: (2 - 1) / 3
    assert r["tau_rest"] == pytest.approx(1 / 3)
    assert cr.main([a, swapped]) == 0
    out = capsys.readouterr().out
    assert "second = SYNTHETIC" in out and "over the 5 common policies: 0.800" in out


def test_bad_input_is_one_clear_error(tmp_path) -> None:
    good = summary(tmp_path, "a", {"static": 0.3, "grpo": 0.31})
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "empty.json").write_text(json.dumps({"policies": {}}))
    for path, match in ((str(tmp_path / "missing.json"), "no such summary"), (str(tmp_path / "bad.json"), "not a JSON"),
                        (str(tmp_path / "empty.json"), "no 'policies'")):
        with pytest.raises(SystemExit) as e:
            cr.main([good, path])
        assert e.value.code == 2
        with pytest.raises((OSError, ValueError), match=match):
            cr.load_summary(path)
    lone = summary(tmp_path, "lone", {"static": 0.3, "other": 0.1})
    with pytest.raises(ValueError, match="share 1 policies"):
        cr.compare(cr.load_summary(good), cr.load_summary(lone))
    with pytest.raises(ValueError, match="metric 'accuracy' missing"):
        cr.compare(cr.load_summary(good), cr.load_summary(good), metric="accuracy")
