"""The agents' bars (issue 13) checked on evaluation outputs: is a cache one the learned agents still beat static on?

    python -m benchmarks.check_agent_bars DIR [DIR ...] [--strict]

Each DIR is one seed's evaluation output (``summary.json``, and ``requests.csv.gz`` for flat PPO's
configuration count), e.g. of ``python -m experiments.demo --cache CACHE --out DIR --seed S --agents grpo
maskable_ppo linucb ppo`` or of ``python -m experiments.evaluate ... --records``. Under the hinge reward the bars
are, per seed:

- GRPO beats static (paired 95 % CI above 0) and gains ≥ 90 % of the cross-fitted router2's gain over static;
- MaskablePPO and LinUCB each beat static (CI above 0);
- flat PPO does not collapse: ≥ 10 distinct configurations used, reward ≥ static − 0.005;
- every learned agent's violation rate ≤ static's + 1 point.

Under ``reward="hard"`` (an evaluation with ``--reward hard`` of agents trained on it): every learned agent's
violation rate ≤ the infeasible share + 2 points. An agent missing from a DIR is reported as not run, not as
failed. ``--strict`` exits 1 when any bar that was run fails (for scripts that promote a cache).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

LEARNED: tuple[str, ...] = ("grpo", "maskable_ppo", "linucb", "ppo")
GRPO_SHARE_OF_ROUTER2 = 0.90
VIOLATION_SLACK_HINGE = 0.01
VIOLATION_SLACK_HARD = 0.02
FLAT_PPO_MIN_CONFIGS = 10
FLAT_PPO_SLACK = 0.005


@dataclass(frozen=True)
class Verdict:
    seed: str
    bar: str
    measured: str
    passed: bool | None  # None: the agent was not in this output


def _configs_used(run: Path, policy: str) -> int | None:
    path = run / "requests.csv.gz"
    if not path.is_file():
        return None
    records = pd.read_csv(path, usecols=["policy", "config_index"])
    return int(records.loc[records["policy"] == policy, "config_index"].nunique())


def check_run(run: Path) -> list[Verdict]:
    """The bars of one seed's evaluation output ``run``."""
    path = run / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run}: no summary.json (not an evaluation output)")
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    policies = summary.get("policies") if isinstance(summary, dict) else None
    if not isinstance(policies, dict):
        raise ValueError(f"{path}: no 'policies' table (not an evaluation summary)")
    if "static" not in policies:
        raise ValueError(f"{run}: the evaluation has no static baseline to compare with")
    seed = ",".join(str(s) for s in summary.get("seeds", [])) or run.name
    reward = summary.get("config", {}).get("reward", "hinge")
    static = policies["static"]
    out: list[Verdict] = []

    def missing(agent: str, bar: str) -> None:
        out.append(Verdict(seed, bar, f"{agent} not in this output", None))

    for agent in LEARNED:
        p = policies.get(agent)
        if reward == "hard":
            bar = f"{agent}: violations <= infeasible share + {VIOLATION_SLACK_HARD:.2f} (hard)"
            if p is None:
                missing(agent, bar)
                continue
            limit = p["infeasible_share"] + VIOLATION_SLACK_HARD
            out.append(Verdict(seed, bar, f"{p['violation_rate']:.3f} (limit {limit:.3f})", p["violation_rate"] <= limit))
            continue
        if p is None:
            missing(agent, f"{agent}: the hinge bars")
            continue
        d = p["reward_minus_static"]
        lo, hi = d["ci95"]
        ci = f"{d['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}]"
        if agent == "ppo":
            used = _configs_used(run, agent)
            out.append(Verdict(seed, f"ppo: reward >= static - {FLAT_PPO_SLACK}", ci, d["mean"] >= -FLAT_PPO_SLACK))
            out.append(Verdict(seed, f"ppo: >= {FLAT_PPO_MIN_CONFIGS} configurations used",
                               "no requests.csv.gz" if used is None else str(used),
                               None if used is None else used >= FLAT_PPO_MIN_CONFIGS))
        else:
            out.append(Verdict(seed, f"{agent}: beats static (CI above 0)", ci, lo > 0))
        if agent == "grpo":
            bar = "grpo: >= 90 % of router2's gain"
            share = p.get("share_of_router2_gain")
            if share is not None:
                out.append(Verdict(seed, bar, f"{share:.0%}", share >= GRPO_SHARE_OF_ROUTER2))
            elif "router2" in policies:  # the evaluator leaves the share undefined where router2 gains nothing
                gain = policies["router2"]["reward_minus_static"]["mean"]
                out.append(Verdict(seed, bar, f"undefined: router2 gains {gain:+.4f} over static", None))
            else:
                out.append(Verdict(seed, bar, "router2 not in this output", None))
        limit = static["violation_rate"] + VIOLATION_SLACK_HINGE
        out.append(Verdict(seed, f"{agent}: violations <= static's + 1 point", f"{p['violation_rate']:.3f} (limit {limit:.3f})",
                           p["violation_rate"] <= limit))
    return out


def render(verdicts: Sequence[Verdict]) -> str:
    rows = ["| seed | bar | measured | verdict |", "| --- | --- | --- | --- |"]
    for v in verdicts:
        mark = "not run" if v.passed is None else ("pass" if v.passed else "**FAIL**")
        rows.append(f"| {v.seed} | {v.bar} | {v.measured} | {mark} |")
    run = [v for v in verdicts if v.passed is not None]
    rows.append("")
    rows.append(f"{sum(v.passed for v in run)} of {len(run)} bars that were run hold"
                + (f"; {len(verdicts) - len(run)} not run" if len(run) < len(verdicts) else ""))
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="evaluation output folders, one seed each")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a bar that was run fails")
    a = ap.parse_args(argv)
    try:
        verdicts = [v for run in a.runs for v in check_run(Path(run))]
    except (FileNotFoundError, ValueError) as e:
        print(f"check_agent_bars: {e}", file=sys.stderr)
        return 2
    print(render(verdicts))
    return 1 if a.strict and any(v.passed is False for v in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
