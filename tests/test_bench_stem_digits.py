"""The stem-digits benchmark: per-patch labels from the drawn digits, and each stem's logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks import bench_stem_digits as bench


def test_labels_mark_the_patches_that_hold_ink():
    x, y, size = bench.render(seed=0, n=4, min_px=16, max_px=24, workers=1)
    assert x.shape == (4, 144, 588) and y.shape == (4, 144, 2) and size.shape == (4, 144)
    has = y[..., 0] != bench.NONE
    assert has.any(axis=1).all() and np.all((y[has] >= 0) & (y[has] < 10))
    assert np.all(size[has] >= 8) and np.all(size[~has] == 0)
    again = bench.render(seed=0, n=4, min_px=16, max_px=24, workers=1)
    assert all(np.array_equal(a, b) for a, b in zip((x, y, size), again))
    # a labelled patch holds ink (a digit's centre lies inside it): its pixels vary
    spread = x.reshape(4, 144, -1).astype(np.int64).std(axis=-1)
    assert np.all(spread[has] > 5)


@pytest.mark.parametrize("stem", ["linear", "hybrid", "fine"])
def test_each_stem_gives_first_and_last_logits(stem):
    x, _, _ = bench.render(seed=1, n=2, min_px=12, max_px=16, workers=1)
    torch.manual_seed(0)
    model, forward = bench.build(stem, torch.device("cpu"))
    logits = forward(torch.from_numpy(x))
    assert logits.shape == (2, 144, 2, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_bad_sizes_are_refused():
    with pytest.raises(SystemExit, match="min-px"):
        bench.main(["--min-px", "30", "--max-px", "20"])
