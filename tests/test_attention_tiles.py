"""The decode attention's tile sweep (`benchmarks.attention_tiles`): its grid, the table a sweep earns, and the
names ``--attn-tiles`` takes. The kernels themselves are checked tile by tile in `tests/test_decode_kernels.py`."""

from __future__ import annotations

import pytest
import torch

from benchmarks import attention_tiles as at
from model_runtime.molmoe import kernels as dk


def test_the_grid_holds_valid_distinct_tiles_with_stages_only_where_a_split_loops() -> None:
    grid = at.tile_grid()
    names = [at.tile_name(t) for t in grid]
    assert len(names) == len(set(names)) == 40
    assert all(t.num_stages == 3 for t in grid if t.chunk == t.block_n)
    assert {t.num_stages for t in grid if t.chunk > t.block_n} == {1, 3}
    assert all(at.parse_tile(at.tile_name(t)) == t for t in grid)


def test_the_sweep_times_the_default_first_and_names_the_fastest(monkeypatch: pytest.MonkeyPatch) -> None:
    # a stand-in clock: each timing is faster than the one before, so the last tile of the grid wins;
    # the attention itself is not run (its arithmetic is the kernel tests')
    times = iter(range(1000, 0, -1))
    calls = []

    def clock(fn) -> float:
        calls.append(fn)
        return float(next(times))

    monkeypatch.setattr(at, "CYCLE_BYTES", 3 * 2 * 4 * 104 * 16 * 4)  # three caches of one row
    res = at.sweep(4, 4, 16, 40, (1, 8), torch.device("cpu"), clock, torch.float32)
    last = at.tile_name(at.tile_grid()[-1])
    for b in (1, 8):
        row = res[f"rows{b}"]
        assert row["default"] == "c64_n64_w2_s3" and row["best"] == last
        assert row["tiles"][row["default"]]["us"] > row["best_us"] == row["tiles"][last]["us"]
        assert row["cache_MB"] == 2 * b * 4 * 41 * 16 * 4 / 1e6  # keys and values of the 41 positions up to the slot
        # the timing cycles through enough caches to fill CYCLE_BYTES, and a call's time is the cycle's over them
        assert row["copies"] == (3 if b == 1 else 1)
        assert row["best_us"] == min(v["us"] for v in row["tiles"].values())
    assert len(calls) == 2 * 40  # the default tile is in the grid: timed once a batch size


def test_a_tile_earns_its_batch_size_only_past_the_margin() -> None:
    res = {"rows1": {"default_us": 10.0, "best_us": 9.8, "best": "c32_n32_w2_s3"},
           "rows8": {"default_us": 40.0, "best_us": 30.0, "best": "c256_n64_w8_s3"},
           "rows16": {"default_us": None, "best_us": 5.0, "best": "c64_n64_w4_s3"}, "context": 1000}
    assert at.earned_tiles(res) == {8: dk.AttnTile(256, 64, 8, 3)}
    assert at.earned_tiles(res, margin=0.99) == {1: dk.AttnTile(32, 32, 2, 3), 8: dk.AttnTile(256, 64, 8, 3)}


@pytest.mark.parametrize("text,problem", [
    ("[1]", "must map batch rows to tile names"),
    ('{"0": "c64_n64_w4_s3"}', "batch rows must be a positive integer"),
    ('{"8": "c64_n128_w4_s3"}', "block_n \\(128\\) exceeds its chunk"),
    ("{8:", "is not JSON"),
])
def test_a_malformed_table_is_refused_naming_the_problem(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        at.tiles_from_json(text)
    assert at.tiles_from_json('{"8": "c256_n64_w8_s1"}') == {8: dk.AttnTile(256, 64, 8, 1)}
