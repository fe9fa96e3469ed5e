"""The sharded build as a user launches it: ``torchrun --nproc-per-node N -m experiments.build_cache``.

Through ``benchmarks.bench_sharded_build`` on CPU processes and a tiny checkpoint: a 2-process
torchrun launch, the shards merged, validated and equal to the single build (run in this process);
one rank SIGKILLed mid-build, the launch resumed with ``--resume``, and the merged result still equal.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from benchmarks import bench_sharded_build as bench
from experiments import build_cache
from tests.tiny_molmoe import tiny_config, write_tiny_dataset, write_tiny_molmoe_checkpoint

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds a rank's process through /proc")


def test_torchrun_shards_merge_and_a_killed_rank_resumes(tmp_path: Path, capsys) -> None:
    write_tiny_molmoe_checkpoint(tmp_path / "ckpt", tiny_config(image_size=224))
    data = write_tiny_dataset(tmp_path / "data", n=12)
    build = ["--model", str(tmp_path / "ckpt"), "--dataset", str(data), "--configs", "tier=low,p=1,top_k=4|8,blocks=12",
             "--batch-size", "2", "--chunk-requests", "2", "--max-new-tokens", "3", "--tier-crops", "1", "2", "4",
             "--importance", "auto", "--calibration-requests", "2", "--threads", "1"]
    # the single build, in this process (a launch costs its processes' start-up): the cache the launches must equal
    against = tmp_path / "single.h5"
    assert build_cache.main([*build, "--out", str(against), "--no-progress"]) == 0
    work = tmp_path / "work"
    # two calls, as on a time-limited machine: the 2-process launch first, then the killed one with --continue
    assert bench.main(["--work", str(work), "--nproc", "2", "--", *build]) == 0
    first = json.loads((work / "n2.json").read_text())
    with pytest.raises(SystemExit, match="earlier run"):  # without --continue an earlier run's files are kept
        bench.main(["--work", str(work), "--nproc", "2", "--kill-rank", "1", "--", *build])
    assert bench.main(["--work", str(work), "--nproc", "2", "--kill-rank", "1", "--continue", "--against", str(against),
                       "--", *build]) == 0
    printed = capsys.readouterr().out
    assert f"the 2-process cache against {against}: every score, token count, status and prediction equal" in printed
    assert "the 2-process launch: kept from an earlier call" in printed
    res = json.loads((work / "bench_sharded_build.json").read_text())
    (two,) = res["runs"]
    assert two["wall_s"] == first["wall_s"]  # the launch was not repeated
    assert two["nproc"] == 2 and two["valid"] and two["vs_against"]["mismatches"] == {}
    assert two["requests"] == 12 and two["configs"] == 225
    assert two["ok_outcomes"] == 12 * 2  # the two selected configurations
    assert all(v == 0 for v in two["vs_against"]["max_abs_diff"].values())  # same chunks, same float32 math
    assert two["slowest_rank_build_s"] > 0 and two["scaling_build"] == 1.0
    killed = res["killed"]
    assert killed["killed_launch_exit_code"] != 0 and killed["journal_writes_at_kill"] >= 3
    assert any("[rank 1/2] resumed" in ln for ln in killed["resumed_lines"])  # the killed rank's shard is resumed, not rebuilt
    assert killed["valid"] and killed["vs_reference"]["equal"]
    # an earlier run's files are never overwritten; a launch cut short is named, not timed over its leftovers
    with pytest.raises(SystemExit, match="earlier run"):
        bench.main(["--work", str(work), "--nproc", "2", "--", *build])
    (work / "n2.json").unlink()
    with pytest.raises(SystemExit, match="2-process launch .* was cut short"):
        bench.main(["--work", str(work), "--nproc", "2", "--continue", "--", *build])


def test_bad_arguments_are_named() -> None:
    with pytest.raises(SystemExit, match="--against missing.h5: no such cache file"):
        bench.main(["--work", "w", "--against", "missing.h5", "--", "--model", "m"])
    with pytest.raises(SystemExit, match="after '--'"):
        bench.main(["--work", "w"])
    with pytest.raises(SystemExit, match="leave --out out"):
        bench.main(["--work", "w", "--", "--out", "x.h5"])
    with pytest.raises(SystemExit, match="not a rank"):
        bench.main(["--work", "w", "--nproc", "2", "--kill-rank", "2", "--", "--model", "m"])
    with pytest.raises(SystemExit, match=">= 1"):
        bench.main(["--work", "w", "--nproc", "0", "--", "--model", "m"])
