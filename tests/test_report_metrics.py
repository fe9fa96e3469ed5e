"""AIQ hull, kept-accuracy share and bootstrap CIs on hand-checkable cases."""

import numpy as np
import pandas as pd
import pytest

from experiments.report_metrics import (
    accuracy_at_latency,
    aggregate_seeds,
    aiq,
    bootstrap_ci,
    kept_share,
    nondecreasing_convex_hull,
)


def test_hull_drops_dominated_and_concave_points():
    # (2, 0.4) lies below the segment (1, 0.5)-(3, 0.9)? line at x=2 is 0.7 -> dropped;
    # (4, 0.8) is worse than (3, 0.9) at a higher cost -> carried forward at 0.9
    hx, hy = nondecreasing_convex_hull(np.array([1, 2, 3, 4.0]), np.array([0.5, 0.4, 0.9, 0.8]))
    assert hx.tolist() == [1.0, 3.0, 4.0]
    assert hy.tolist() == [0.5, 0.9, 0.9]


def test_aiq_of_a_constant_and_a_ramp():
    assert aiq(np.array([0.0, 10.0]), np.array([0.6, 0.6]), (0.0, 10.0)) == pytest.approx(0.6)
    # ramp from (0, 0) to (10, 1): area 0.5
    assert aiq(np.array([0.0, 10.0]), np.array([0.0, 1.0]), (0.0, 10.0)) == pytest.approx(0.5, abs=1e-3)
    # a policy that only exists above cost 5 scores 0 below it
    assert aiq(np.array([5.0]), np.array([1.0]), (0.0, 10.0)) == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ValueError):
        aiq(np.array([1.0]), np.array([1.0]), (1.0, 1.0))


def test_kept_share_interpolates_on_hull():
    cost, acc = np.array([50.0, 100.0]), np.array([0.4, 0.8])
    assert accuracy_at_latency(cost, acc, 75.0) == pytest.approx(0.6)
    assert kept_share(cost, acc, 100.0, 0.8, 0.75) == pytest.approx(0.75)
    assert np.isnan(accuracy_at_latency(cost, acc, 10.0))


def test_bootstrap_ci_covers_mean_and_aggregate():
    x = np.random.default_rng(0).normal(1.0, 1.0, size=400)
    est, lo, hi = bootstrap_ci(x)
    assert lo < est < hi and lo < 1.0 < hi and hi - lo < 0.3
    df = pd.DataFrame({"policy": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2, "r": [1, 2, 3, 5, 5, 5.0]})
    agg = aggregate_seeds(df, ["policy"], ["r"]).set_index("policy")
    assert agg.loc["a", "r_mean"] == pytest.approx(2.0) and agg.loc["a", "r_std"] == pytest.approx(1.0)
    assert agg.loc["b", "r_std"] == 0.0 and agg.loc["a", "n_seeds"] == 3
