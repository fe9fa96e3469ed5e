"""The digit-token probe: labels from the digits' boxes, and the table on a tiny checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import probe_digit_tokens as probe
from tests.tiny_molmoe import tiny_config, write_tiny_molmoe_checkpoint


def test_a_token_is_labelled_by_the_digits_centred_in_it():
    # tokens of 28 px, 3 per side; "4071": 4 and 0 centred in token (0, 0), 7 in (0, 1), 1 in (1, 1)
    boxes = [(2, 2, 10, 20), (12, 2, 20, 20), (30, 2, 38, 20), (40, 30, 48, 50)]
    labels = probe.token_labels("4071", boxes, tokens_per_side=3, token_px=28)
    assert labels == [(0, 4, 0, 0, 10), (1, 7, 7, 2, 0), (4, 1, 1, 3, 7)]


def test_renders_follow_the_seed_and_the_boxes_hold_the_ink():
    a = probe.render_digits(np.random.default_rng(3), 168, 24)
    b = probe.render_digits(np.random.default_rng(3), 168, 24)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    img, digits, boxes = a
    assert 3 <= len(digits) <= 5 and len(boxes) == len(digits)
    dark = np.argwhere(img.min(axis=2) < 100)  # the ink: (y, x)
    x0, y0 = min(bx[0] for bx in boxes), min(bx[1] for bx in boxes)
    x1, y1 = max(bx[2] for bx in boxes), max(bx[3] for bx in boxes)
    assert dark[:, 1].min() >= x0 - 1 and dark[:, 1].max() <= x1 + 1
    assert dark[:, 0].min() >= y0 - 1 and dark[:, 0].max() <= y1 + 1


def test_ridge_probe_reads_a_linearly_coded_label():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=400)
    x = np.eye(4)[y] * 3 + rng.normal(size=(400, 4)) * 0.3
    groups = np.arange(400)
    train = groups < 300
    acc = probe.ridge_probe(x[train], y[train], x[~train], y[~train], groups[train], 4)
    noise = probe.ridge_probe(rng.normal(size=(300, 4)), y[train], rng.normal(size=(100, 4)), y[~train], groups[train], 4)
    assert acc > 0.95 and noise < 0.5


def test_the_table_on_a_tiny_checkpoint(tmp_path: Path, capsys) -> None:
    write_tiny_molmoe_checkpoint(tmp_path / "ckpt", tiny_config(image_size=224))
    out = tmp_path / "p.json"
    assert probe.main(["--model", str(tmp_path / "ckpt"), "--images", "20", "--sizes", "24", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert set(rep["accuracy"]) == {"trained tokens", "untrained tokens", "token pixels"}
    row = rep["accuracy"]["trained tokens"]["24"]
    assert set(row) == set(probe.TARGETS) and all(0.0 <= v <= 1.0 for v in row.values())
    assert rep["tokens"]["24"] > 0 and "labelled tokens" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="sizes"):
        probe.main(["--model", str(tmp_path / "ckpt"), "--sizes", "2"])
