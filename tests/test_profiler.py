"""The latency profiler: its grids, the random-weight model builder, and a CPU sweep at the tiny
shape whose CSV the latency estimator loads and fits. Timing values are not asserted beyond
being positive and ordered (min <= median <= max): they are measurements on a shared CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from envs.knob_space import KnobSpace
from experiments import profile_latency
from model_runtime.latency_estimator import LatencyEstimator, load_profile
from model_runtime.profiler import (
    CSV_COLUMNS,
    ProfileSettings,
    build_random_model,
    decode_grid,
    plan_for,
    plan_jobs,
    prefill_grid,
)
from model_runtime.molmoe.config import MolmoeConfig


def test_grids_cover_the_corners_and_the_full_grid_at_the_first_position() -> None:
    ks = KnobSpace()
    full = prefill_grid(ks, "full")
    assert len(full) == len(set(full)) == 39
    assert {(1, k, b) for k in range(4, 9) for b in range(12, 17)} <= set(full)
    for p in range(2, 6):
        corners = {(p, k, b) for k in (4, 8) for b in (p + 11, 16)}
        assert corners <= set(full) and {pt for pt in full if pt[0] == p} == corners
    assert len(prefill_grid(ks, "corners")) == 4 * 4 + 2  # p=5 has one block option
    dec = decode_grid(ks)
    assert len(dec) == 8 and (1, 4, 12) in dec and (1, 8, 16) in dec and {pt[0] for pt in dec} == {1, 3, 5}
    for pt in full + dec:
        plan = plan_for(ks, pt)
        p, k, b = pt
        assert plan[:p] == (8,) * p and sum(x > 0 for x in plan) == b and set(plan[p:]) <= {0, k}
    jobs = plan_jobs(ks, ProfileSettings())
    phases = [j.phase for j in jobs]
    assert phases.count("vision") == 6 and phases.count("prefill") == 3 * 39 and phases.count("decode") == 8 + 2 * 2
    with pytest.raises(ValueError):
        ProfileSettings(grid="huge")
    with pytest.raises(ValueError):
        ProfileSettings(prompt_tokens=(0,))


def test_random_model_is_built_in_place_in_the_requested_dtype() -> None:
    cfg = MolmoeConfig.tiny()
    model = build_random_model(cfg, device="cpu", dtype=torch.bfloat16, seed=1)
    params = dict(model.named_parameters())
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in params.values())
    assert all(torch.isfinite(p.float()).all() for p in params.values())
    assert torch.all(params["lm.backbone.layers.0.input_layernorm.weight"] == 1)
    assert model.lm.config._experts_implementation == "eager"  # the runtime's CPU choice, not meta's
    # same seed, same weights; a float32 build runs to finite logits (bf16 matmuls are slow on CPU)
    fp32 = build_random_model(cfg, device="cpu", dtype=torch.float32, seed=1)
    assert torch.equal(fp32.lm.lm_head.weight.to(torch.bfloat16), model.lm.lm_head.weight)
    ids = torch.randint(0, cfg.embedding_size, (1, 12))
    with torch.no_grad():
        logits = fp32.lm(ids)
    assert logits.shape == (1, 12, cfg.embedding_size) and torch.isfinite(logits).all()


def test_tiny_cpu_sweep_writes_rows_the_estimator_fits(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    csv, est_json = tmp_path / "tiny.csv", tmp_path / "est.json"
    rc = profile_latency.main([
        "--shape", "tiny", "--device", "cpu", "--out", str(csv), "--prompt-tokens", "16", "40", "--crops", "1", "2",
        "--repeats", "2", "--warmup", "0", "--decode-steps", "2", "--decode-repeats", "1", "--decode-context", "24",
        "--grid", "corners", "--threads", "1", "--notes", "unit test", "--fit", str(est_json),
    ])
    assert rc == 0
    out = capsys.readouterr().out
    assert "[1/" in out and "eta" in out and "prefill:" in out  # progress lines and the fit report
    df = load_profile(csv)
    assert list(df.columns) == list(CSV_COLUMNS)
    assert df.attrs["provenance"].startswith("Profiled by")
    counts = df["phase"].value_counts().to_dict()
    assert counts == {"vision": 2, "prefill": 2 * 18, "decode": 8 + 2 * 2}
    assert (df["ms"] > 0).all() and (df["ms_min"] <= df["ms"]).all() and (df["ms"] <= df["ms_max"]).all()
    assert set(df["impl"]) == {"eager"} and set(df["dtype"]) == {"float32"} and df["device"].str.startswith("cpu").all()
    assert df["notes"].str.contains("unit test").all()
    pre = df[df["phase"] == "prefill"]
    assert set(pre["prompt_tokens"]) == {16, 40} and (pre["vision_tokens"] == 0).all()
    dec = df[df["phase"] == "decode"]
    assert (dec["output_tokens"] == 3).all() and set(dec["prompt_tokens"]) == {16, 24, 40}
    assert sorted(df[df["phase"] == "vision"]["crops"]) == [1, 2]
    est = LatencyEstimator.load(est_json)
    assert json.loads(est_json.read_text())["fit_report"]["phases"]["prefill"]["n_rows"] == 36
    pred = est.predict(crops=3, vision_tokens=100, prompt_tokens=20, p=1, top_k=np.array([4, 8]),
                       blocks=np.array([12, 16]), output_tokens=3)
    assert np.all(np.isfinite(pred["total_ms"])) and np.all(pred["total_ms"] > 0)
    fid = est.fidelity(df)
    assert set(fid) == {"vision", "prefill", "decode"} and all(f["n"] > 0 for f in fid.values())


def test_profiles_a_checkpoint_directory(tmp_path: Path) -> None:
    from tests.tiny_molmoe import write_tiny_molmoe_checkpoint

    write_tiny_molmoe_checkpoint(tmp_path / "ckpt")
    csv = tmp_path / "ckpt.csv"
    assert profile_latency.main([
        "--model", str(tmp_path / "ckpt"), "--device", "cpu", "--out", str(csv), "--prompt-tokens", "8",
        "--crops", "1", "--repeats", "1", "--warmup", "0", "--decode-steps", "1", "--decode-repeats", "1",
        "--decode-context", "8", "--grid", "corners", "--threads", "1", "--quiet",
    ]) == 0
    df = load_profile(csv)
    assert len(df) == 1 + 18 + 8 and "checkpoint" in df.attrs["provenance"]
