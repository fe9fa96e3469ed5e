"""The print-supervision benchmark on a tiny checkpoint: it trains the tower only and reports its figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import bench_print_supervision as bench
from model_runtime.molmoe.checkpoint import load_molmoe_checkpoint
from tests.tiny_molmoe import tiny_config, write_tiny_molmoe_checkpoint


def test_the_figures_on_a_tiny_checkpoint(tmp_path: Path, capsys) -> None:
    write_tiny_molmoe_checkpoint(tmp_path / "ckpt", tiny_config(image_size=224))
    before, _ = load_molmoe_checkpoint(tmp_path / "ckpt", dtype=torch.float32)
    out = tmp_path / "b.json"
    assert bench.main(["--model", str(tmp_path / "ckpt"), "--steps", "3", "--head-steps", "2", "--batch-size", "2",
                       "--val-images", "2", "--probe-images", "10", "--sizes", "24", "--workers", "0",
                       "--tasks", "synth_doc=1", "synth_count=1", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert set(rep["held_out"]) == {"synth_doc", "synth_count"}
    for row in rep["held_out"].values():  # the tokens moved; both accuracies are shares
        assert row["drift"] > 0 and 0 <= row["print_acc"] <= 1 and 0 <= row["print_acc_heads_only"] <= 1
    assert [h["heads_only"] for h in rep["history"]][0] and not rep["history"][-1]["heads_only"]
    assert set(rep["probes"]["accuracy"]) == {"before", "after"}
    assert "token drift" in capsys.readouterr().out
    # the checkpoint itself is not written to
    again, _ = load_molmoe_checkpoint(tmp_path / "ckpt", dtype=torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(before.state_dict().values(), again.state_dict().values()))
    with pytest.raises(SystemExit, match="probe-images"):
        bench.main(["--model", str(tmp_path / "ckpt"), "--probe-images", "2"])
