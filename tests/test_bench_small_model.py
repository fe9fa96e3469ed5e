"""bench_small_model on the CPU: the training step of a recorded recipe, its figures in the JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.tiny_molmoe import tiny_config, write_tiny_molmoe_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_the_training_step_of_a_recorded_recipe(tmp_path: Path) -> None:
    ck = tmp_path / "ckpt"
    write_tiny_molmoe_checkpoint(ck, tiny_config())
    recorded = {"train": {"print_loss": 1.0, "print_sites": ["tokens"], "lr_scale": {"lm.": 0.3},
                          "data": {"caption_rate": 0.5, "task_weights": {"synth_doc": 1.0}}}}
    (ck / "train_config.json").write_text(json.dumps(recorded))
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_small_model", "--checkpoint", str(ck), "--recipe-of", str(ck),
         "--suite", str(tmp_path), "--device", "cpu", "--batch-sizes", "2", "--compile-batch-sizes", "--reuse",
         "--engine-requests", "0", "--steps", "1", "--out", str(tmp_path / "f.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "'print_loss': 1.0" in out.stdout and "'print_grids'" in out.stdout  # the recipe's loss and its targets
    assert "'task_weights': {'synth_doc': 1.0}" in out.stdout
    figures = json.loads((tmp_path / "f.json").read_text())
    assert figures["recipe_of"] == str(ck) and figures["eager_step_ms@2"] > 0
    assert figures["eager_profiled_wall_ms@2"] > 0 and "engine_s_high_tier" not in figures  # no engine with 0 requests


def test_the_profiled_kernel_time_counts_each_kernel_once() -> None:
    # an operator's row carries the device time of the kernels it launched: summing every row counted it twice
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from benchmarks.bench_small_model import device_kernels

    def event(device, us, count):
        return SimpleNamespace(device_type=device, self_device_time_total=us, count=count, is_user_annotation=False)

    events = [event(DeviceType.CPU, 3000.0, 10), event(DeviceType.CUDA, 2000.0, 10), event(DeviceType.CUDA, 1000.0, 4),
              event(DeviceType.CPU, 0.0, 7)]
    assert device_kernels(events) == (3.0, 14)
