"""Content comparison of two outcome caches of the same requests (builds by other engines, devices
or process counts).

Imports numpy and h5py only (replay path).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cache.schema import DATASETS

#: Float features of the sample table, compared within a tolerance: computed by other kernels
#: they may differ in the last bits (bf16 arithmetic, the float16 storage of latency tokens).
FEATURES = frozenset({"samples/lang_feature", "samples/latency_token", "samples/uncertainty"})


def compare_caches(a: str | Path, b: str | Path, tol: float) -> dict[str, Any]:
    """Field-by-field comparison of two caches: per schema dataset (and the budget range) the
    number of mismatching entries, and the largest absolute difference of each :data:`FEATURES`
    dataset. Scores, output tokens, statuses, predictions and every other integer or string field
    must be equal (a NaN equals a NaN); :data:`FEATURES` within ``atol = rtol = tol``;
    ``outcomes/measured_ms`` only by which entries are measured (timings differ run to run); a
    dataset whose shapes differ counts all its entries. ``identical``: no mismatch."""
    import h5py

    mismatches: dict[str, int] = {}
    max_diff: dict[str, float] = {}
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        for name, (_, spec) in DATASETS.items():
            if fa[name].shape != fb[name].shape:
                mismatches[name] = max(fa[name].size, fb[name].size)
                continue
            if spec == "str":
                x, y = fa[name].asstr()[()], fb[name].asstr()[()]
                bad = x != y
            else:
                x, y = fa[name][()], fb[name][()]
                if name == "outcomes/measured_ms":
                    bad = np.isnan(x) != np.isnan(y)
                elif name in FEATURES:
                    x, y = x.astype(np.float64), y.astype(np.float64)
                    both = ~(np.isnan(x) & np.isnan(y))
                    diff = np.abs(x - y)[both]
                    max_diff[name] = float(diff.max()) if diff.size else 0.0
                    bad = ~np.isclose(x, y, atol=tol, rtol=tol, equal_nan=True)
                else:
                    bad = ~((x == y) | (np.isnan(x) & np.isnan(y))) if x.dtype.kind == "f" else x != y
            mismatches[name] = int(np.sum(bad))
        ranges = [json.loads(f.attrs.get("budget_range_ms", "null")) for f in (fa, fb)]
        mismatches["budget_range_ms"] = int(ranges[0] != ranges[1])
    return {"identical": not any(mismatches.values()), "tolerance": tol, "mismatches": mismatches,
            "max_abs_diff": max_diff}
