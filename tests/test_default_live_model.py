"""The committed default: the small MolmoE-architecture checkpoint and the cache built live from it.

The cache (``cache/default/molmoe_small_suite.h5``) was built on an H200 in bf16; here the
committed checkpoint runs on the CPU in float32 through the live env, on the suite's first test
request of every task (``make_suite --seed 0`` is prefix-stable, so these are the cache's own
requests), and must reproduce what the cache stores for them.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from cache.default import LIVE_DEFAULT_CACHE, LIVE_DEFAULT_MODEL
from cache.schema import STATUS_OK

MIB = 2**20


def test_committed_default_files_and_card() -> None:
    assert LIVE_DEFAULT_CACHE.is_file() and LIVE_DEFAULT_MODEL.is_dir()
    # the size limits for what is committed
    assert LIVE_DEFAULT_CACHE.stat().st_size <= 64 * MIB
    assert sum(f.stat().st_size for f in LIVE_DEFAULT_MODEL.iterdir()) <= 48 * MIB
    with h5py.File(LIVE_DEFAULT_CACHE, "r") as f:
        assert f.attrs["generator"] == "live" and not f.attrs["synthetic"]
        assert str(f.attrs["model_id"]).startswith("molmoe-small-suite")
        status = f["outcomes/status"][:]
        n_tasks = len(np.unique(f["samples/dataset"][:]))
        imp = json.loads(f.attrs["generator_params"])["importance"]["scores"]
    assert n_tasks >= 6 and status.shape == (6000, 225)
    assert np.mean(status == STATUS_OK) >= 0.999
    # the checkpoint is the one the cache was built from: its importance scores are the cache's
    saved = json.loads((LIVE_DEFAULT_MODEL / "importance.json").read_text())["scores"]
    np.testing.assert_allclose(saved, imp, rtol=1e-5)


# the earlier checkpoints kept beside the default (their CARD.md files), their caches and model ids: v7, the default
# before it, and v11
CANDIDATES_DIR = LIVE_DEFAULT_MODEL.parents[1] / "candidates"
CANDIDATES = {"v7": (CANDIDATES_DIR / "molmoe_small_suite_run14", CANDIDATES_DIR / "molmoe_small_suite_v7.h5"),
              "v11": (CANDIDATES_DIR / "molmoe_small_suite_run21", CANDIDATES_DIR / "molmoe_small_suite_v11.h5")}


@pytest.mark.parametrize("candidate", [ckpt for ckpt, _ in CANDIDATES.values()], ids=lambda d: d.name)
def test_the_committed_candidates_load_as_the_defaults_architecture(candidate: Path) -> None:
    """The checkpoints in cache/candidates/: loadable by the runtime, the default's config, tokenizer and tensors,
    within the checkpoint size limit, and their own block-importance scores for the knob space."""
    import torch

    from model_runtime.molmoe.checkpoint import load_molmoe_checkpoint

    assert sum(f.stat().st_size for f in candidate.iterdir()) <= 48 * MIB
    for name in ("config.json", "tokenizer.json"):
        assert (candidate / name).read_bytes() == (LIVE_DEFAULT_MODEL / name).read_bytes(), name
    index = [json.loads((d / "model.safetensors.index.json").read_text())["weight_map"] for d in (candidate, LIVE_DEFAULT_MODEL)]
    assert sorted(index[0]) == sorted(index[1])
    scores = json.loads((candidate / "importance.json").read_text())["scores"]
    assert len(scores) == 16 and min(scores) > 0
    assert scores != json.loads((LIVE_DEFAULT_MODEL / "importance.json").read_text())["scores"]
    model, tokenizer = load_molmoe_checkpoint(candidate)  # strict: every tensor mapped, every shape right
    assert tokenizer is not None and all(torch.isfinite(t).all() for t in model.state_dict().values())


@pytest.mark.parametrize("version", sorted(CANDIDATES))
def test_the_candidates_cache_is_built_from_it_over_the_defaults_requests(version: str) -> None:
    """A candidate's cache (its CARD.md): live, every outcome OK, the default cache's 6,000 requests in the same order,
    and the knob space of the candidate's own importance scores."""
    candidate, cache = CANDIDATES[version]
    model_id = f"molmoe-small-suite-{version}"
    assert cache.stat().st_size <= 64 * MIB
    with h5py.File(cache, "r") as f, h5py.File(LIVE_DEFAULT_CACHE, "r") as d:
        assert f.attrs["generator"] == "live" and not f.attrs["synthetic"]
        assert f.attrs["model_id"] == model_id
        assert f["outcomes/status"].shape == (6000, 225) and np.all(f["outcomes/status"][:] == STATUS_OK)
        assert np.array_equal(f["samples/id"][:], d["samples/id"][:])
        imp = json.loads(f.attrs["generator_params"])["importance"]["scores"]
    np.testing.assert_allclose(json.loads((candidate / "importance.json").read_text())["scores"], imp, rtol=1e-5)


@pytest.fixture(scope="module")
def first_requests(tmp_path_factory):
    from model_runtime.datasets import load_requests
    from model_runtime.datasets.suite import make_suite

    suite = make_suite(tmp_path_factory.mktemp("suite"), seed=0, per_task=1, splits=("test",), workers=1)
    return suite / "test.jsonl", load_requests(suite / "test.jsonl")


@pytest.mark.slow
def test_live_env_runs_the_committed_checkpoint_like_the_cache(first_requests) -> None:
    import gymnasium as gym
    import torch

    import envs  # noqa: F401  (registers the env ids)
    from model_runtime.molmoe.runtime import MolmoeRuntime

    path, requests = first_requests
    torch.set_num_threads(1)
    rt = MolmoeRuntime.from_checkpoint(LIVE_DEFAULT_MODEL, max_new_tokens=16)
    with h5py.File(LIVE_DEFAULT_CACHE, "r") as f:  # the cache's own split of each request
        split_of = dict(zip((x.decode() for x in f["samples/id"][:]), f["samples/split"][:].tolist()))
    replays = {k: gym.make("MolmoeKnobsFlat-v0", cache=str(LIVE_DEFAULT_CACHE), split=name, budget_mode="absolute")
               for k, name in enumerate(("train", "val", "test"))}
    rng = replays[0].unwrapped.data.budget_range_ms
    live = gym.make("MolmoeKnobsFlat-v0", mode="live", runtime=rt, requests=str(path), budget_mode="absolute",
                    budget_range=rng)
    ld, rd = live.unwrapped.data, replays[0].unwrapped.data
    # the knob space follows the checkpoint's importance scores, as the build did
    np.testing.assert_allclose(ld.knob_space.importance_scores, rd.knob_space.importance_scores, rtol=1e-5)
    budget = float(sum(rng) / 2)
    same = total = 0
    for i, r in enumerate(requests):
        replay = replays[split_of[r.id]]
        j = replay.unwrapped.data.sample_id_list.index(r.id)
        for config in (("high", 1, 8, 16), ("low", 1, 4, 12), ("medium", 3, 6, 14)):
            c = ld.knob_space.index(config)
            lo, _ = live.reset(options={"sample_index": i, "budget_ms": budget})
            ro, _ = replay.reset(options={"sample_id": r.id, "budget_ms": budget})
            # what is known before running (tiling, token counts, estimated latencies) is the cache's
            # (the TTFT / per-token features are normalised by each data's median full latency: compared in ms)
            rd_ = replay.unwrapped.data
            lreq, rreq = lo["request"].astype(np.float64), ro["request"].astype(np.float64)
            np.testing.assert_allclose(lreq[:7], rreq[:7], rtol=1e-6)
            np.testing.assert_allclose(lreq[7:13] * ld.latency_scale_ms, rreq[7:13] * rd_.latency_scale_ms, rtol=1e-5)
            np.testing.assert_allclose(lreq[13:] * ld.tpot_scale_ms, rreq[13:] * rd_.tpot_scale_ms, rtol=1e-5)
            np.testing.assert_allclose(lo["lang"], ro["lang"], rtol=1e-2, atol=1e-2)  # bf16 build vs fp32 here
            _, lr, lt, _, linfo = live.step(c)
            _, rr, rt_, _, rinfo = replay.step(c)
            assert lt and rt_ and linfo["sample_id"] == rinfo["sample_id"] == r.id and rinfo["sample_index"] == j
            total += 1
            if linfo["score"] == rinfo["score"] and linfo["output_tokens"] == rinfo["output_tokens"]:
                same += 1
                # the same outcome earns the same (estimated-latency) reward as in replay
                assert lr == pytest.approx(rr, rel=1e-6, abs=1e-6)
                assert linfo["latency_ms"] == pytest.approx(rinfo["latency_ms"], rel=1e-6)
    # GPU bf16 (the build) vs CPU float32 (here) may flip a near-tied greedy token: over the first
    # five test requests per task, 27-28 of 30 predictions per configuration were the cache's
    assert same >= total - 3, f"{same} of {total} outcomes as in the cache"
    for e in (live, *replays.values()):
        e.close()


def test_live_vision_tokens_option(first_requests) -> None:
    """The estimator's image tokens: MolmoE-1B's for the scaled-down geometry (auto, as the cache
    builder), or the model's own."""
    from envs.live import LiveOptions, LiveOutcomes
    from model_runtime.molmoe.preprocessing import molmoe_1b_token_counts
    from model_runtime.molmoe.runtime import MolmoeRuntime

    _, requests = first_requests
    rt = MolmoeRuntime.from_checkpoint(LIVE_DEFAULT_MODEL)
    assert rt.model.config.molmoe_1b_image_scale == 2.0
    auto = LiveOutcomes(rt, requests)
    own = LiveOutcomes(rt, requests, options={"vision_tokens": "model"})
    np.testing.assert_array_equal(auto.crops, own.crops)
    np.testing.assert_array_equal(own.vision_tokens, own.model_vision_tokens)
    np.testing.assert_array_equal(auto.model_vision_tokens, own.model_vision_tokens)
    assert (auto.vision_tokens > own.vision_tokens).all()  # 144 pooled tokens per crop instead of 36
    from PIL import Image

    with Image.open(requests[0].image) as im:
        w, h = im.size
    ks = rt.knob_space
    assert auto.vision_tokens[0, -1] == molmoe_1b_token_counts(h, w, ks.crops_for(ks.tiers[-1]), 2.0)[1]
    # full latencies follow the tokens the estimator is fed
    assert (auto.full_ms > own.full_ms).all()
    with pytest.raises(ValueError, match="vision_tokens must be"):
        LiveOptions(vision_tokens="molmoe")


@pytest.mark.slow
def test_the_suite_regenerates_the_default_cache_requests(tmp_path) -> None:
    """``make_suite --seed 0 --per-task 1000 --splits test`` here writes the very request file the
    committed cache was built from on the GPU machine (its sha256), whatever text layout engine
    this machine's Pillow has (the suite pins BASIC)."""
    from PIL import ImageFont

    from cache.reader import file_sha256
    from model_runtime.datasets.suite import make_suite
    from model_runtime.datasets.suite.drawing import font

    assert font("sans", 12).layout_engine == ImageFont.Layout.BASIC
    with h5py.File(LIVE_DEFAULT_CACHE, "r") as f:
        build = json.loads(f.attrs["generator_params"])["build"]
    suite = make_suite(tmp_path / "suite", seed=0, per_task=build["n_requests"] // 6, splits=("test",), workers=2)
    assert file_sha256(suite / "test.jsonl") == build["dataset_sha256"]
