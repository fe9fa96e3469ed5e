"""The tower-reading benchmark's data and model variants (the benchmark itself is a GPU/CPU script)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.bench_tower_reading import BLANK, DIGITS_MAX, PATCH, build, render


@pytest.fixture(scope="module")
def crops():
    return render(seed=0, n=6, min_px=16, max_px=32, workers=1, n_words=4)


def test_render_is_deterministic_and_in_molmo_patch_layout(crops):
    x, y, px = crops
    assert x.shape == (6, 144, PATCH * PATCH * 3) and x.dtype == np.uint8
    assert set(y.tolist()) <= set(range(4)) and np.all((px >= 14) & (px <= 34))
    again = render(seed=0, n=6, min_px=16, max_px=32, workers=1, n_words=4)
    assert all(np.array_equal(a, b) for a, b in zip(crops, again))


@pytest.mark.parametrize("stem_only", [False, True])
def test_variants_give_word_logits_and_the_stem_aux_head(crops, stem_only):
    torch.manual_seed(0)
    mods, forward = build("hybrid", torch.device("cpu"), n_words=4, readout="attn", stem_aux=True, stem_only=stem_only)
    logits, aux = forward(torch.from_numpy(crops[0]))
    assert logits.shape == aux.shape == (6, 4)
    (logits.sum() + aux.sum()).backward()
    stem_grad = [p.grad for n, p in mods.named_parameters() if "patch_stem" in n]
    assert stem_grad and all(g is not None for g in stem_grad)
    tower_layers = [p.grad for n, p in mods.named_parameters() if "encoder.layers" in n]
    # stem-only: the readout skips the tower and connector
    assert all(g is None for g in tower_layers) == stem_only


def test_stem_readouts_need_a_conv_stem():
    with pytest.raises(ValueError, match="conv or hybrid stem"):
        build("linear", torch.device("cpu"), n_words=4, stem_only=True)


def test_digit_strings_are_read_place_by_place():
    x, y, px = render(seed=0, n=6, min_px=10, max_px=40, workers=1, task="digits")
    assert x.shape == (6, 144, PATCH * PATCH * 3) and y.shape == (6, DIGITS_MAX)
    for row in y:  # 2-5 digits, then blanks
        n = int((row != BLANK).sum())
        assert 2 <= n <= DIGITS_MAX and np.all(row[:n] < 10) and np.all(row[n:] == BLANK)
    torch.manual_seed(0)
    mods, forward = build("fine", torch.device("cpu"), readout="attn", task="digits")
    logits = forward(torch.from_numpy(x))
    assert logits.shape == (6, DIGITS_MAX, BLANK + 1)
    logits.sum().backward()
    assert all(p.grad is not None for n, p in mods.named_parameters() if "patch_stem" in n)
    with pytest.raises(ValueError, match="digits"):
        build("cnn", torch.device("cpu"), task="digits")
