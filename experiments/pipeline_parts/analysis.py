"""Per-request analyses against the oracle (pure pandas; the error-slices and oracle-action
experiments call them on the main experiment's ``requests.csv.gz``).

``records``: evaluate's per-request rows (``seed, policy, budget_ms, sample_index, dataset,
config_index, score, latency_ms, violation, reward``; rows with a ``lambda`` are ignored), one
policy named ``oracle`` among them. ``knobs``: a DataFrame indexed by configuration index with
one column per knob (``tier``, ``p``, ``top_k``, ``blocks``: :func:`knob_frame`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

KNOBS: tuple[str, ...] = ("tier", "p", "top_k", "blocks")
KEY: list[str] = ["seed", "budget_ms", "sample_index"]


def knob_frame(knob_space) -> pd.DataFrame:
    t = knob_space.config_table()
    return pd.DataFrame({"tier": np.asarray(knob_space.tiers)[t["tier"]], "p": t["p"], "top_k": t["top_k"],
                         "blocks": t["blocks"]})


def with_oracle(records: pd.DataFrame, knobs: pd.DataFrame, oracle: str = "oracle") -> pd.DataFrame:
    """Every non-oracle row with the oracle's configuration / reward on the same (seed, budget,
    request), the regret (oracle reward − reward) and both sides' knob values
    (``<knob>`` and ``oracle_<knob>``)."""
    r = records[records["lambda"].isna()] if "lambda" in records else records
    o = r[r["policy"] == oracle][KEY + ["config_index", "reward"]].rename(
        columns={"config_index": "oracle_config", "reward": "oracle_reward"})
    if o.empty:
        raise ValueError(f"no {oracle!r} rows in the records: the oracle analysis needs the oracle's picks")
    j = r[r["policy"] != oracle].merge(o, on=KEY, how="inner")
    j["regret"] = j["oracle_reward"] - j["reward"]
    for k in KNOBS:
        j[k] = knobs[k].to_numpy()[j["config_index"].to_numpy()]
        j[f"oracle_{k}"] = knobs[k].to_numpy()[j["oracle_config"].to_numpy()]
    return j


def error_slices(joined: pd.DataFrame, by: Sequence[str] = (*KNOBS, "dataset")) -> pd.DataFrame:
    """Accuracy, violation rate and regret per action bucket of the policy's pick (each knob's
    value) and per dataset, for every policy. ``share``: the bucket's share of the policy's rows."""
    rows = []
    for pol, g in joined.groupby("policy", sort=True):
        for s in by:
            for v, gv in g.groupby(s, sort=True):
                rows.append({"policy": pol, "slice": s, "value": v, "n": len(gv), "share": len(gv) / len(g),
                             "accuracy": gv["score"].mean(), "violation_rate": gv["violation"].astype(float).mean(),
                             "mean_reward": gv["reward"].mean(), "mean_regret": gv["regret"].mean()})
    return pd.DataFrame(rows)


def oracle_agreement(joined: pd.DataFrame, eps: Sequence[float] = (0.01, 0.05)) -> pd.DataFrame:
    """Per policy: share of picks equal to the oracle's configuration, within ε reward of the
    oracle's reward (for each ε), equal per knob, and the mean regret."""
    rows = []
    for pol, g in joined.groupby("policy", sort=True):
        row = {"policy": pol, "n": len(g), "share_equal_oracle": float((g["config_index"] == g["oracle_config"]).mean())}
        for e in eps:
            row[f"share_within_{e:g}"] = float((g["regret"] <= e + 1e-12).mean())
        for k in KNOBS:
            row[f"share_equal_{k}"] = float((g[k] == g[f"oracle_{k}"]).mean())
        row["mean_regret"] = float(g["regret"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def regret_by_oracle_bucket(joined: pd.DataFrame) -> pd.DataFrame:
    """Mean regret per bucket of the oracle's pick (each knob's value), for every policy."""
    rows = []
    for pol, g in joined.groupby("policy", sort=True):
        for k in KNOBS:
            for v, gv in g.groupby(f"oracle_{k}", sort=True):
                rows.append({"policy": pol, "knob": k, "oracle_value": v, "n": len(gv),
                             "mean_regret": gv["regret"].mean(), "share_equal_knob": float((gv[k] == v).mean())})
    return pd.DataFrame(rows)


def confusion(joined: pd.DataFrame) -> pd.DataFrame:
    """Long confusion tables per policy and knob: count of (oracle value, policy value) and its
    share among the oracle value's rows (rows of a table sum to 1)."""
    rows = []
    for pol, g in joined.groupby("policy", sort=True):
        for k in KNOBS:
            c = g.groupby([f"oracle_{k}", k]).size()
            tot = c.groupby(level=0).transform("sum")
            for (ov, pv), n in c.items():
                rows.append({"policy": pol, "knob": k, "oracle_value": ov, "policy_value": pv, "count": int(n),
                             "share_of_oracle_value": float(n / tot[(ov, pv)])})
    return pd.DataFrame(rows)
