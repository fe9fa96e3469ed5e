"""The print-size benchmark: the same images for every run, one accuracy per (configuration, height)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench_print_size as bench
from tests.tiny_molmoe import tiny_config, write_tiny_molmoe_checkpoint


def test_word_images_follow_the_height_fraction_and_repeat(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = bench.make_requests(tmp_path / "a", [0.1, 0.4], 3, seed=7)
    b = bench.make_requests(tmp_path / "b", [0.1, 0.4], 3, seed=7)
    assert [r.answers for r in a] == [r.answers for r in b]
    assert all(Path(x.image).read_bytes() == Path(y.image).read_bytes() for x, y in zip(a, b))
    small = [r.meta["text_px"] for r in a if r.meta["frac"] == 0.1]
    large = [r.meta["text_px"] for r in a if r.meta["frac"] == 0.4]
    assert np.median(small) < np.median(large)
    for r in a:  # at least 8 px, at most the fraction of the height (shrunk only to fit the width)
        assert 8 <= r.meta["text_px"] <= max(8, int(r.meta["frac"] * r.meta["image_h"]))


def test_the_table_on_a_tiny_checkpoint(tmp_path: Path, capsys) -> None:
    write_tiny_molmoe_checkpoint(tmp_path / "ckpt", tiny_config(image_size=224))
    out = tmp_path / "t.json"
    assert bench.main(["--model", str(tmp_path / "ckpt"), "--fractions", "0.1", "0.4", "--per-fraction", "2",
                       "--configs", "tier=low,p=1,top_k=8,blocks=16", "--out", str(out)]) == 0
    table = json.loads(out.read_text())["accuracy"]
    assert list(table) == ["low/p1/k8/b16"] and set(table["low/p1/k8/b16"]) == {"0.1", "0.4"}
    assert all(0.0 <= v <= 1.0 for v in table["low/p1/k8/b16"].values())
    assert "median word height, px" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="fractions"):
        bench.main(["--model", str(tmp_path / "ckpt"), "--fractions", "0"])


def test_digit_strings_follow_the_same_heights(tmp_path: Path) -> None:
    reqs = bench.make_requests(tmp_path, [0.1, 0.4], 4, seed=7, text="digits")
    assert all(r.answers[0].isdigit() and 2 <= len(r.answers[0]) <= 5 for r in reqs)
    words = bench.make_requests(tmp_path, [0.1], 4, seed=7)
    assert not any(r.answers[0].isdigit() for r in words)
    with pytest.raises(SystemExit):
        bench.main(["--model", str(tmp_path), "--text", "letters"])


def test_a_reordering_is_the_right_characters_in_another_order() -> None:
    assert bench.is_reordering("0168", "8606") is False  # a 1 for a 6: not the same characters
    assert bench.is_reordering("0686", "8606") and bench.is_reordering(" 6860 ", "8606")
    assert not bench.is_reordering("8606", "8606") and not bench.is_reordering("860", "8606")
