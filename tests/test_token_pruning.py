"""Issue 14, item 7: the vision-token pruning proxy. The runtime's ``vision_keep`` (r = 1 is the
unpruned path bit for bit; r < 1 keeps ``max(1, ceil(r·n))`` of each image's pooled tokens, the
highest feature norms, and equals masking the others out), its cost (the estimator's latency
falls with r) and the pipeline's ``token_pruning`` experiment on a tiny live-built cache (CPU)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from experiments import build_cache
from model_runtime.datasets import load_requests, write_requests
from model_runtime.knob_space import KnobSpace
from model_runtime.latency_estimator import LatencyEstimator, kept_pooled_tokens, pruned_latency_ms, pruned_vision_tokens
from model_runtime.molmoe.generation import greedy_generate
from model_runtime.molmoe.runtime import MolmoeRuntime, first_token_uncertainty
from model_runtime.molmoe.token_pruning import pooled_token_scores, prune_prompt, vision_drop_mask
from tests.tiny_molmoe import tiny_config, write_tiny_dataset, write_tiny_molmoe_checkpoint
from tests.tiny_molmoe import torch_single_thread  # noqa: F401  (autouse fixture)

MAX_NEW = 3
CROPS = ("1", "2", "4")  # tier crops: few vision tokens, fast
KS = KnobSpace(crops=tuple(int(c) for c in CROPS))
FULL_HIGH = ("high", 1, 8, 16)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny checkpoint, 6 requests answered with the unpruned model's own high-tier predictions
    (so that pruning changes scores), the runtime, and a cache built live from them."""
    d = tmp_path_factory.mktemp("pruning")
    write_tiny_molmoe_checkpoint(d / "ckpt", tiny_config(image_size=224), seed=0)
    reqs = load_requests(write_tiny_dataset(d / "data", n=6))
    rt = MolmoeRuntime.from_checkpoint(d / "ckpt", KS, max_new_tokens=MAX_NEW, max_batch_size=4)
    reqs = [dataclasses.replace(r, answers=[o.prediction] * 10) for r, o in zip(reqs, rt.run(reqs, FULL_HIGH))]
    jl = d / "data" / "answered.jsonl"
    write_requests(jl, reqs)
    cache = d / "live.h5"
    assert build_cache.main([
        "--model", str(d / "ckpt"), "--dataset", str(jl), "--out", str(cache), "--configs", "p=1,top_k=8,blocks=16",
        "--engine", "per-config", "--batch-size", "4", "--chunk-requests", "8", "--max-new-tokens", str(MAX_NEW),
        "--tier-crops", *CROPS, "--importance", "default", "--splits", "0.34", "0", "0.66", "--threads", "1",
        "--no-progress",
    ]) == 0
    return {"dir": d, "jsonl": jl, "requests": load_requests(jl), "runtime": rt, "cache": cache}


def pruned(world: dict, keep: float) -> MolmoeRuntime:
    rt = world["runtime"]
    return MolmoeRuntime(rt.model, rt.tokenizer, KS, max_new_tokens=MAX_NEW, max_batch_size=4, vision_keep=keep)


# ------------------------------------------------------------------------------ the runtime
@torch.no_grad()
def test_keep_one_is_the_unpruned_path_exactly(world: dict) -> None:
    rt, reqs = world["runtime"], world["requests"]
    outs = rt.run(reqs[:4], FULL_HIGH, return_latency_tokens=True)
    same = pruned(world, 1.0).run(reqs[:4], FULL_HIGH, return_latency_tokens=True)
    for a, b in zip(outs, same):
        assert a.token_ids == b.token_ids and a.first_token_entropy == b.first_token_entropy
        assert a.first_token_margin == b.first_token_margin
        np.testing.assert_array_equal(a.latency_tokens, b.latency_tokens)
        assert a.vision_tokens_kept == a.vision_tokens == b.vision_tokens_kept
    # and the same as the computation written out without any pruning code
    model = rt.model
    prompts = [rt.prepare(r, KS.crops_for("high")) for r in reqs[:4]]
    batch = model.collate(prompts)
    feats = model.image_features(batch.patches, batch.image_masks)
    embeds = model.embed(batch, feats)
    tk = model.config.tokens
    gen = greedy_generate(model.lm, embeds, batch.attention_mask, top_k_per_block=KS.plan(KS.config(KS.index(
        FULL_HIGH))).top_k_per_block, p=1, eos_token_id=tk.eos, pad_token_id=tk.pad, max_new_tokens=MAX_NEW)
    assert gen.tokens == [o.token_ids for o in same]
    # r = 1 leaves the prompt's tensors themselves
    pad = model.lm.embed(torch.tensor([tk.pad]))[0]
    e2, m2, dropped = prune_prompt(batch, feats, embeds, 1.0, pad)
    assert e2 is embeds and m2 is batch.attention_mask and int(dropped.sum()) == 0


@pytest.mark.parametrize("keep", [0.25, 0.3, 0.5, 0.75])
@torch.no_grad()
def test_kept_counts_and_the_kept_tokens_are_the_top_scored(world: dict, keep: float) -> None:
    rt, reqs = world["runtime"], world["requests"]
    model = rt.model
    prompts = [rt.prepare(r, KS.crops_for("high")) for r in reqs[2:5]]  # different crop counts
    batch = model.collate(prompts)
    feats = model.image_features(batch.patches, batch.image_masks)
    drop = vision_drop_mask(batch, feats, keep)
    scores = pooled_token_scores(feats)
    torch.testing.assert_close(scores, feats.float().pow(2).sum(-1).sqrt())
    for b, prompt in enumerate(prompts):
        mine = (batch.crop_rows[:, None] == b) & (batch.image_input_idx >= 0)
        pos, sc = batch.image_input_idx[mine], scores[mine]
        n = int(pos.numel())
        assert n == prompt.image.image_input_idx[prompt.image.image_input_idx >= 0].size
        assert set(torch.nonzero(drop[b]).flatten().tolist()) <= set(pos.tolist())  # only <im_patch> positions
        kept = n - int(drop[b].sum())
        assert kept == max(1, math.ceil(keep * n - 1e-9)) and kept < n
        dropped = drop[b, pos]
        assert float(sc[~dropped].min()) >= float(sc[dropped].max())
    outs = pruned(world, keep).run(reqs[2:5], FULL_HIGH)
    assert [o.vision_tokens - o.vision_tokens_kept for o in outs] == drop.sum(1).tolist()


def test_rounding_rule() -> None:
    assert kept_pooled_tokens([0, 1, 3, 4, 30, 144], 0.1).tolist() == [0, 1, 1, 1, 3, 15]
    assert kept_pooled_tokens([3, 4, 144], 0.5).tolist() == [2, 2, 72]
    assert kept_pooled_tokens([3, 4, 144], 1.0).tolist() == [3, 4, 144]
    assert pruned_vision_tokens([158, 100], [144, 90], 0.25).tolist() == [158 - 144 + 36, 100 - 90 + 23]


@torch.no_grad()
def test_pruned_run_equals_masking_the_dropped_tokens_out(world: dict) -> None:
    """Removing the dropped positions (the runtime) gives what masking them out of attention gives:
    the language model's positions count real tokens, so both are the same computation."""
    rt, (req,) = world["runtime"], world["requests"][4:5]
    model, tk = rt.model, rt.model.config.tokens
    batch = model.collate([rt.prepare(req, KS.crops_for("high"))])
    feats = model.image_features(batch.patches, batch.image_masks)
    drop = vision_drop_mask(batch, feats, 0.5)
    masked = batch.attention_mask.masked_fill(drop, 0)
    plan = KS.plan(KS.config(KS.index(FULL_HIGH))).top_k_per_block
    ref = greedy_generate(model.lm, model.embed(batch, feats), masked, top_k_per_block=plan, p=1, eos_token_id=tk.eos,
                          pad_token_id=tk.pad, max_new_tokens=MAX_NEW)
    (out,) = pruned(world, 0.5).run([req], FULL_HIGH)
    assert out.token_ids == ref.tokens[0]
    entropy, _ = first_token_uncertainty(ref.first_logits)
    assert out.first_token_entropy == pytest.approx(float(entropy[0]), rel=1e-4, abs=1e-5)
    assert out.first_token_entropy != rt.run([req], FULL_HIGH)[0].first_token_entropy  # pruning changed the input


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.5, float("nan"), "half", None, True])
def test_bad_keep_raises(world: dict, bad: object) -> None:
    rt = world["runtime"]
    with pytest.raises(ValueError, match=r"^vision_keep must be"):
        MolmoeRuntime(rt.model, rt.tokenizer, KS, vision_keep=bad)
    with pytest.raises(ValueError, match="keep"):
        kept_pooled_tokens(10, bad)


def test_unpruned_consumers_refuse_a_pruning_runtime(world: dict) -> None:
    import gymnasium as gym

    import envs  # noqa: F401  (registers the ids)
    from model_runtime.molmoe.shared_prefix import run_all_configs

    rt = pruned(world, 0.5)
    with pytest.raises(ValueError, match="vision_keep=0.5"):
        run_all_configs(rt, world["requests"][:1], [0])
    with pytest.raises(ValueError, match="vision_keep=0.5"):
        gym.make("MolmoeKnobs-v0", mode="live", runtime=rt, requests=str(world["jsonl"]))


# ------------------------------------------------------------------------------ cost
def test_estimated_latency_falls_with_keep() -> None:
    est = LatencyEstimator.default()
    # a MolmoE-1B request at the high tier: 13 crops, 1,900 image tokens of which 1,728 pooled
    kw = dict(crops=13, vision_tokens=1900, pooled_tokens=1728, prompt_tokens=20, output_tokens=4, p=1, top_k=8,
              blocks=16)
    lat = {k: pruned_latency_ms(est, keep=k, **kw) for k in (0.25, 0.5, 0.75, 1.0)}
    totals = [float(lat[k]["total_ms"]) for k in (0.25, 0.5, 0.75, 1.0)]
    assert all(a < b for a, b in zip(totals, totals[1:]))
    prefill = [float(lat[k]["prefill_ms"]) for k in (0.25, 0.5, 0.75, 1.0)]
    assert all(a < b for a, b in zip(prefill, prefill[1:]))
    assert len({float(lat[k]["vision_ms"]) for k in lat}) == 1  # the tower still runs every crop
    full = est.predict(crops=13, vision_tokens=1900, prompt_tokens=20, output_tokens=4, p=1, top_k=8, blocks=16)
    assert float(lat[1.0]["total_ms"]) == float(full["total_ms"])
    half = est.predict(crops=13, vision_tokens=1900 - 1728 + 864, prompt_tokens=20, output_tokens=4, p=1, top_k=8,
                       blocks=16)
    assert float(lat[0.5]["total_ms"]) == float(half["total_ms"])


# ------------------------------------------------------------------------------ the pipeline experiment
def test_pipeline_token_pruning_on_a_live_cache(world: dict, tmp_path: Path) -> None:
    from envs.replay_data import ReplayData
    from experiments.pipeline import run_pipeline

    out = tmp_path / "exp"
    st = run_pipeline(str(world["cache"]), out, only=["token_pruning"], verbose=False, figures="few", pruning_requests=3)
    assert st["token_pruning"]["status"] == "done", st
    d = out / "token_pruning"
    table = pd.read_csv(d / "token_pruning.csv")
    assert len(table) == len(KS.tiers) * 4 and set(table["keep_ratio"]) == {0.25, 0.5, 0.75, 1.0}
    assert (table["n_requests"] == 3).all()
    for tier, g in table.groupby("tier"):
        g = g.sort_values("keep_ratio")
        assert g["remaining_vision_tokens"].is_monotonic_increasing and g["mean_latency_ms"].is_monotonic_increasing
        r1 = g[g["keep_ratio"] == 1.0].iloc[0]
        # r = 1 reproduces the cache: its score, and its latency is the cache's full configuration's
        assert r1["share_score_equal_cache"] == 1.0 and r1["accuracy"] == pytest.approx(r1["cache_accuracy"])
        assert r1["remaining_vision_tokens"] == r1["vision_tokens"]
    high = table[table["tier"] == "high"].set_index("keep_ratio")
    assert high.loc[1.0, "accuracy"] == 1.0  # the answers are the unpruned model's predictions
    assert high.loc[0.25, "accuracy"] < 1.0  # pruning changed some of them
    reqs = pd.read_csv(d / "requests.csv.gz")
    assert len(reqs) == 3 * len(KS.tiers) * 4
    test = ReplayData.from_cache(str(world["cache"]), "test")
    c = KS.index(FULL_HIGH)
    r1 = reqs[(reqs["tier"] == "high") & (reqs["keep_ratio"] == 1.0)]
    np.testing.assert_allclose(r1["latency_ms"], test.total_ms[r1["sample_index"].to_numpy(), c], rtol=1e-6)
    res = pd.read_csv(d / "results.csv")
    assert {"all", "vqav2"} <= set(res["dataset"]) and (res["cache_label"] == "live ckpt").all()
    s = json.loads((d / "summary.json").read_text())
    assert s["synthetic"] is False and len(s["cache"]["sha256"]) == 64 and s["n_requests"]["run"] == 3
    assert "not a measured speed-up" in s["definitions"]["latency_ms"]
    pareto = pd.read_csv(out / "pareto.csv")
    pts = pareto[pareto["kind"] == "token pruning (proxy)"]
    assert len(pts) == len(table) and set(pts["policy"]) == set(table["policy"])
    report = (out / "report.md").read_text()
    assert "## token_pruning" in report and "(token_pruning/pareto_pruning.png)" in report
    assert (d / "pareto_pruning.png").stat().st_size > 0


def test_pipeline_token_pruning_skips_without_its_inputs(world: dict, toy_synthetic_cache: str, tmp_path: Path) -> None:
    from experiments.pipeline import main, run_pipeline

    # a SYNTHETIC cache: not applicable, finished with the reason
    st = run_pipeline(toy_synthetic_cache, tmp_path / "syn", only=["token_pruning"], verbose=False, figures="few")
    assert st["token_pruning"]["status"] == "done" and "SYNTHETIC" in st["token_pruning"]["notes"][0]
    assert "SYNTHETIC: its outcomes come from a generative model" in (tmp_path / "syn" / "report.md").read_text()
    # a live cache whose checkpoint is not where it was: not run, the report names --model, nothing marked finished
    cache = tmp_path / "moved.h5"
    shutil.copy(world["cache"], cache)
    moved = world["dir"] / "ckpt_moved"
    shutil.move(world["dir"] / "ckpt", moved)
    try:
        out = tmp_path / "exp"
        st = run_pipeline(str(cache), out, only=["token_pruning"], verbose=False, figures="few", pruning_requests=2)
        assert st["token_pruning"]["status"] == "not run" and not (out / "token_pruning").exists()
        report = (out / "report.md").read_text()
        assert "**Not run**" in report and "pass --model CKPT" in report
        # given the model, the next run runs it
        st = run_pipeline(str(cache), out, only=["token_pruning"], verbose=False, figures="few", pruning_requests=2,
                          model=moved, requests=world["jsonl"])
        assert st["token_pruning"]["status"] == "done" and (out / "token_pruning" / "DONE").exists()
        assert (pd.read_csv(out / "token_pruning" / "token_pruning.csv")["n_requests"] == 2).all()
    finally:
        shutil.move(moved, world["dir"] / "ckpt")
    # the CLI: a --model that is not a folder is a one-line user error
    assert main(["--cache", str(cache), "--out", str(tmp_path / "x"), "--only", "token_pruning",
                 "--model", str(tmp_path / "nowhere")]) == 2


@pytest.fixture(scope="module")
def toy_synthetic_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    from cache.synthetic import default_params, write_synthetic_cache

    params = dataclasses.replace(default_params(), n_samples=60, lang_dim=8, token_dim=8)
    return str(write_synthetic_cache(tmp_path_factory.mktemp("syn") / "toy.h5", params, seed=5))


def test_committed_default_falls_back_to_its_checkpoint_and_a_regenerated_suite(
        world: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """The committed default cache's provenance names the build machine's paths: its committed
    checkpoint (when its importance.json is the cache's scores) and its suite rendered again from
    the seed (when the JSONL's sha256 is the build's) stand in, for that cache only."""
    import copy

    from cache.reader import file_sha256
    from experiments.pipeline_parts import token_pruning as tp
    from experiments.pipeline_parts.common import MissingInputs, load_context
    from model_runtime.datasets.suite import TASKS, make_suite

    ref = make_suite(tmp_path / "ref", seed=0, per_task=1, splits=("test",), workers=1) / "test.jsonl"
    default = tmp_path / "default.h5"  # the "committed default": a copy of the tiny cache
    shutil.copy(world["cache"], default)
    ckpt = tmp_path / "committed_model"  # the "committed checkpoint": only its importance.json is read
    ckpt.mkdir()
    scores = np.linspace(0.2, 0.01, 16) / 3
    (ckpt / "importance.json").write_text(json.dumps({"scores": scores.tolist(), "method": "block_influence"}))
    monkeypatch.setattr(tp, "LIVE_DEFAULT_CACHE", default)
    monkeypatch.setattr(tp, "LIVE_DEFAULT_MODEL", ckpt)
    base = load_context(str(default), tmp_path / "exp", [0], True)
    gp = copy.deepcopy(base.generator_params)
    gone = tmp_path / "build_machine"
    gp["runtime"]["model"] = str(gone / "ckpt" / "plain")
    gp["build"].update(dataset=str(gone / "suite" / "test.jsonl"), dataset_sha256=file_sha256(ref),
                       n_requests=len(TASKS))
    gp["importance"] = {"scores": [float(f"{s:.6g}") for s in scores], "method": "block_influence"}
    ctx = dataclasses.replace(base, generator_params=gp)

    model, req, notes = tp.resolve_inputs(ctx)
    assert model == ckpt and req == tmp_path / "exp" / "suite" / "test.jsonl"
    assert "model: the committed checkpoint of the default cache" in notes
    assert any(n.startswith("requests: regenerated with make_suite --seed 0 (sha256 equal to the build's)")
               for n in notes)
    assert req.read_bytes() == ref.read_bytes()
    reqs = load_requests(req, check_images=True)
    assert [r.dataset for r in reqs] == list(TASKS)
    assert "rendering the default cache's requests again" in capsys.readouterr().out
    # resumable: the suite already there is reused, not rendered again
    assert tp.resolve_inputs(ctx)[1] == req and "rendering" not in capsys.readouterr().out
    # given inputs win over the fallback
    given = tp.resolve_inputs(dataclasses.replace(ctx, model=str(world["dir"] / "ckpt"), requests=str(world["jsonl"])))
    assert given[:2] == (world["dir"] / "ckpt", world["jsonl"]) and not any("committed" in n for n in given[2])

    # another cache with the same provenance: no fallback, the report names --model / --requests
    other = dataclasses.replace(ctx, cache=str(world["cache"]), out=tmp_path / "other")
    with pytest.raises(MissingInputs, match=r"build_machine/ckpt/plain, which is not on this machine.*pass --model"):
        tp.resolve_inputs(other)
    with pytest.raises(MissingInputs, match=r"build_machine/suite/test.jsonl, which is not on this machine.*"
                                            r"pass --requests"):
        tp.resolve_inputs(dataclasses.replace(other, model=str(ckpt)))
    assert not (tmp_path / "other").exists()  # nothing rendered for it
    # the committed checkpoint is not the one the cache was built from (other importance scores)
    gp_other = copy.deepcopy(gp)
    gp_other["importance"]["scores"] = [s * 1.001 for s in gp["importance"]["scores"]]
    with pytest.raises(MissingInputs, match=r"importance scores of the committed checkpoint .* pass --model CKPT"):
        tp.resolve_inputs(dataclasses.replace(ctx, generator_params=gp_other))
    # the regenerated suite differs from the build's request file: not used, the report says to pass --requests
    gp_sha = copy.deepcopy(gp)
    gp_sha["build"]["dataset_sha256"] = "0" * 64
    for out in (tmp_path / "exp", tmp_path / "fresh"):  # the suite already there, and one rendered anew
        with pytest.raises(MissingInputs, match=r"regenerated with make_suite --seed 0 --per-task 1 .* differs .*"
                                                r"pass --requests JSONL"):
            tp.resolve_inputs(dataclasses.replace(ctx, out=out, generator_params=gp_sha))
    assert file_sha256(tmp_path / "fresh" / "suite" / "test.jsonl") == file_sha256(ref)
