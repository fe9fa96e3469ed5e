"""Do two caches rank the same policies in the same order? (issue 13, item 6: a synthetic cache
calibrated to a live one should rank agents and baselines as the live one does).

``python -m benchmarks.compare_rankings LIVE/summary.json SYNTHETIC/summary.json [--metric mean_reward]
[--exclude oracle random always_full ...]``

Reads two ``summary.json`` files of ``experiments.evaluate`` (or ``make demo`` / ``experiments.demo``),
prints the policies both evaluated side by side (sorted by the first), and Kendall's τ-b between the
two orders over every common policy and over the ones left after ``--exclude`` (default: the oracle
and the two policies far from the rest, ``random`` and ``always_full``, whose places no cache
disputes). Each summary's cache label is printed with it, so a SYNTHETIC cache says so.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from scipy.stats import kendalltau

DEFAULT_EXCLUDE = ("oracle", "random", "always_full")


def load_summary(path: str | Path) -> dict:
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: no such summary (experiments.evaluate writes summary.json)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not a JSON summary ({e})") from None
    if not isinstance(d.get("policies"), dict) or not d["policies"]:
        raise ValueError(f"{p}: no 'policies' in this summary (is it an experiments.evaluate summary.json?)")
    return d


def compare(a: dict, b: dict, metric: str = "mean_reward", exclude: Sequence[str] = DEFAULT_EXCLUDE) -> dict:
    """Rows of the policies both summaries hold, and τ over all of them and over the rest after
    ``exclude``."""
    common = [k for k in a["policies"] if k in b["policies"]]
    missing = [k for k in common if metric not in a["policies"][k] or metric not in b["policies"][k]]
    if missing:
        raise ValueError(f"metric {metric!r} missing for {missing}")
    if len(common) < 2:
        raise ValueError(f"the summaries share {len(common)} policies; a ranking needs two or more")
    rows = sorted(((k, float(a["policies"][k][metric]), float(b["policies"][k][metric])) for k in common),
                  key=lambda r: -r[1])

    def tau(keys: list[str]) -> float | None:
        if len(keys) < 2:
            return None
        x = [a["policies"][k][metric] for k in keys]
        y = [b["policies"][k][metric] for k in keys]
        return float(kendalltau(x, y).statistic)

    rest = [k for k in common if k not in set(exclude)]
    return {"metric": metric, "rows": rows, "n": len(common), "tau": tau(common),
            "n_rest": len(rest), "tau_rest": tau(rest), "excluded": [k for k in common if k in set(exclude)]}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.compare_rankings", description=__doc__.split("\n\n")[0])
    ap.add_argument("first", help="summary.json of the reference cache (e.g. the live one)")
    ap.add_argument("second", help="summary.json of the other cache (e.g. the synthetic one calibrated to it)")
    ap.add_argument("--metric", default="mean_reward", help="per-policy summary field to rank by")
    ap.add_argument("--exclude", nargs="*", default=list(DEFAULT_EXCLUDE),
                    help="policies left out of the second τ (default: %(default)s)")
    a = ap.parse_args(argv)
    try:
        s1, s2 = load_summary(a.first), load_summary(a.second)
        r = compare(s1, s2, a.metric, a.exclude)
    except (OSError, ValueError) as e:
        ap.exit(2, f"{ap.prog}: error: {e}\n")
    l1, l2 = s1.get("cache_label", "?"), s2.get("cache_label", "?")
    print(f"{a.metric}: first = {l1} ({a.first}), second = {l2} ({a.second})")
    w = max(len(k) for k, _, _ in r["rows"])
    print(f"{'policy':<{w}}  {'first':>8}  {'second':>8}")
    for k, x, y in r["rows"]:
        print(f"{k:<{w}}  {x:8.3f}  {y:8.3f}")
    print(f"Kendall tau over the {r['n']} common policies: {r['tau']:.3f}")
    if r["tau_rest"] is not None:
        print(f"Kendall tau without {', '.join(r['excluded']) or 'none'} ({r['n_rest']} policies): {r['tau_rest']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
