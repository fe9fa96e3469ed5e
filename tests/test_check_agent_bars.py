"""benchmarks.check_agent_bars: the agents' bars read from evaluation outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.check_agent_bars import check_run, main


def _policy(minus_static: float, lo: float, hi: float, viol: float, share: float | None = None, infeasible: float = 0.06) -> dict:
    p = {"reward_minus_static": {"mean": minus_static, "ci95": [lo, hi]}, "violation_rate": viol, "infeasible_share": infeasible}
    if share is not None:
        p["share_of_router2_gain"] = share
    return p


def _write_run(path: Path, policies: dict, *, seed: int = 0, reward: str = "hinge", ppo_configs: int | None = None) -> Path:
    path.mkdir(parents=True)
    static = {"violation_rate": 0.134, "infeasible_share": 0.06}
    summary = {"seeds": [seed], "config": {"reward": reward}, "policies": {"static": static, **policies}}
    (path / "summary.json").write_text(json.dumps(summary))
    if ppo_configs is not None:
        pd.DataFrame({"policy": ["ppo"] * 40 + ["static"] * 5,
                      "config_index": [i % ppo_configs for i in range(40)] + [7] * 5}).to_csv(path / "requests.csv.gz", index=False)
    return path


def test_hinge_bars_pass_and_fail_where_the_figures_say(tmp_path) -> None:
    run = _write_run(tmp_path / "s0", {
        "grpo": _policy(0.029, 0.023, 0.034, 0.104, share=1.30),
        "maskable_ppo": _policy(0.006, -0.0001, 0.012, 0.152),  # CI touches 0; violations over static + 1 point
        "linucb": _policy(0.018, 0.013, 0.024, 0.117),
        "ppo": _policy(-0.004, -0.009, 0.001, 0.140),
    }, ppo_configs=12)
    got = {v.bar: v.passed for v in check_run(run)}
    assert got["grpo: beats static (CI above 0)"] and got["grpo: >= 90 % of router2's gain"]
    assert got["maskable_ppo: beats static (CI above 0)"] is False
    assert got["maskable_ppo: violations <= static's + 1 point"] is False  # 0.152 > 0.134 + 0.01
    assert got["linucb: beats static (CI above 0)"] and got["linucb: violations <= static's + 1 point"]
    assert got["ppo: reward >= static - 0.005"] and got["ppo: >= 10 configurations used"]
    assert got["ppo: violations <= static's + 1 point"]


def test_grpo_below_ninety_percent_of_router2_fails_and_a_missing_agent_is_not_run(tmp_path) -> None:
    run = _write_run(tmp_path / "s1", {"grpo": _policy(0.009, 0.003, 0.014, 0.099, share=0.53)}, seed=1)
    verdicts = check_run(run)
    got = {v.bar: v.passed for v in verdicts}
    assert got["grpo: beats static (CI above 0)"] and got["grpo: >= 90 % of router2's gain"] is False
    assert got["linucb: the hinge bars"] is None and {v.seed for v in verdicts} == {"1"}


def test_grpo_share_is_not_judged_where_router2_gains_nothing(tmp_path) -> None:
    run = _write_run(tmp_path / "s0", {"grpo": _policy(0.01, 0.004, 0.016, 0.10),  # the evaluator wrote no share
                                       "router2": _policy(-0.002, -0.007, 0.003, 0.12)})
    got = {v.bar: (v.measured, v.passed) for v in check_run(run)}
    assert got["grpo: >= 90 % of router2's gain"] == ("undefined: router2 gains -0.0020 over static", None)
    absent = _write_run(tmp_path / "s1", {"grpo": _policy(0.01, 0.004, 0.016, 0.10)})
    assert {v.bar: v.measured for v in check_run(absent)}["grpo: >= 90 % of router2's gain"] == "router2 not in this output"


def test_flat_ppo_collapsed_onto_few_configurations_fails(tmp_path) -> None:
    run = _write_run(tmp_path / "s0", {"ppo": _policy(0.0, -0.005, 0.005, 0.13)}, ppo_configs=4)
    got = {v.bar: (v.measured, v.passed) for v in check_run(run)}
    assert got["ppo: >= 10 configurations used"] == ("4", False)


def test_hard_reward_bar_is_violations_within_the_infeasible_share_plus_two_points(tmp_path) -> None:
    run = _write_run(tmp_path / "hard", {"maskable_ppo": _policy(0.02, 0.014, 0.025, 0.068, infeasible=0.062),
                                         "linucb": _policy(0.0, -0.006, 0.006, 0.085, infeasible=0.062)}, reward="hard")
    got = {v.bar.split(":")[0]: v.passed for v in check_run(run)}
    assert got["maskable_ppo"] is True and got["linucb"] is False and got["grpo"] is None


def test_cli_strict_exit_codes_and_one_line_errors(tmp_path, capsys) -> None:
    good = _write_run(tmp_path / "good", {"grpo": _policy(0.03, 0.02, 0.04, 0.10, share=1.2)})
    bad = _write_run(tmp_path / "bad", {"grpo": _policy(0.001, -0.004, 0.006, 0.10, share=0.1)})
    assert main([str(good), "--strict"]) == 0
    assert main([str(good), str(bad)]) == 0 and main([str(good), str(bad), "--strict"]) == 1
    assert "**FAIL**" in capsys.readouterr().out
    assert main([str(tmp_path / "nowhere")]) == 2
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "summary.json").write_text("{not json")
    assert main([str(tmp_path / "junk")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no summary.json" in err[0] and "not JSON" in err[1]
    with pytest.raises(ValueError, match="no 'policies'"):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "summary.json").write_text("[]")
        check_run(tmp_path / "other")
