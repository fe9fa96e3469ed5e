"""`benchmarks.step_timeline`: a captured decode step's kernel intervals summarised into span, busy
(their union), idle and time by kernel (the GPU collection itself runs in bench_fast_path's timeline
section on a GPU)."""

from __future__ import annotations

import pytest

from benchmarks.step_timeline import own_us, timeline_summary, union_us


def test_the_union_counts_overlapping_kernels_once_and_leaves_the_gaps_out() -> None:
    # a 0-10 kernel, one overlapping it (PDL: launched while the first drains), a gap, one inside another
    ivs = [("a", 0.0, 10.0), ("b", 8.0, 15.0), ("c", 20.0, 30.0), ("d", 22.0, 25.0)]
    assert union_us(ivs) == 25.0
    assert union_us(list(reversed(ivs))) == 25.0  # any order
    assert union_us([("a", 1.0, 1.0)]) == 0.0


def test_the_summary_splits_the_span_into_busy_and_idle_per_block() -> None:
    ivs = [("gemv", 0.0, 4.0), ("attn", 5.0, 8.0), ("gemv", 9.0, 12.0), ("attn", 11.0, 14.0)]
    s = timeline_summary(ivs, blocks=2)
    assert (s["kernels"], s["span_us"], s["busy_us"], s["idle_us"], s["sum_kernel_us"]) == (4, 14.0, 12.0, 2.0, 13.0)
    assert (s["busy_per_block_us"], s["idle_per_block_us"], s["span_per_block_us"]) == (6.0, 1.0, 7.0)
    # the second attn starts inside the second gemv: its own part is from the gemv's end (12) to its end (14)
    assert s["by_kernel"] == [{"kernel": "gemv", "n": 2, "us": 7.0, "median_us": 3.5, "own_us": 7.0, "own_median_us": 3.5},
                              {"kernel": "attn", "n": 2, "us": 6.0, "median_us": 3.0, "own_us": 5.0, "own_median_us": 2.5}]
    assert "busy_per_block_us" not in timeline_summary(ivs)


def test_no_intervals_or_a_reversed_one_is_refused() -> None:
    with pytest.raises(ValueError, match="no kernel intervals"):
        timeline_summary([])
    with pytest.raises(ValueError, match="1 intervals end before they start"):
        timeline_summary([("a", 0.0, 1.0), ("b", 3.0, 2.0)])


def test_own_parts_attribute_a_pdl_chain_from_each_kernels_predecessor_end() -> None:
    # PDL: each kernel starts early and waits; b's interval (2-9) holds its wait for a (to 6); c lies inside b
    ivs = [("a", 0.0, 6.0), ("b", 2.0, 9.0), ("c", 3.0, 8.0), ("d", 10.0, 12.0)]
    assert own_us(ivs) == [6.0, 3.0, 0.0, 2.0]
    assert sum(own_us(ivs)) == union_us(ivs)
    assert own_us(list(reversed(ivs))) == [2.0, 0.0, 3.0, 6.0]  # in the order given
