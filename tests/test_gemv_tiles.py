"""`benchmarks.gemv_tiles`: the GEMV tile sweep's bookkeeping (which tiles, how many weight copies, which is fastest),
with a stand-in clock; its timings are the GPU's."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from benchmarks import gemv_tiles as gt  # noqa: E402


def test_the_sweep_covers_the_autotuners_tiles_and_names_the_fastest(monkeypatch: pytest.MonkeyPatch) -> None:
    times = iter(range(10_000, 0, -1))  # each timing faster than the one before: the last tile wins
    from benchmarks import attention_tiles

    monkeypatch.setattr(attention_tiles, "CYCLE_BYTES", 3 * 64 * 32 * 4)  # three copies of the weights
    res = gt.sweep(((64, 32),), (1, 2), torch.device("cpu"), lambda fn: float(next(times)), torch.float32)
    auto = gt.autotune_tiles()
    extra = {gt.tile_name(*t) for t in gt.EXTRA_TILES}
    assert not extra & set(auto) and set(res["tiles"]) == set(auto) | extra  # the extra tiles are the lists' strangers
    assert any(name.endswith("_s1") for name in auto) and any(not name.endswith("_s1") for name in auto)  # both forms
    for m in (1, 2):
        case = res[f"rows{m}_n64_k32"]
        assert case["copies"] == 3 and case["weights_MB"] == 64 * 32 * 4 / 1e6
        assert case["best"] == gt.tile_name(*gt.EXTRA_TILES[-1])
        assert case["best_us"] == min(v["us"] for v in case["tiles"].values())
        assert all((v["us"] * 3).is_integer() for v in case["tiles"].values())  # the clock's time over the copies
        assert "autotuned_staged" not in case  # the autotuner's picks are timed on CUDA only


def test_the_command_needs_a_gpu() -> None:
    import subprocess
    import sys
    from pathlib import Path

    run = subprocess.run([sys.executable, "-m", "benchmarks.gemv_tiles", "--device", "cpu"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 1 and "gemv_tiles: the sweep times Triton kernels from CUDA graphs" in run.stderr
