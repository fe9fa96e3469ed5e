"""The live cache builder on a tiny MolmoE checkpoint and a tiny JSONL dataset (CPU).

One uninterrupted build is the reference. Against it: the replay env runs on it; bad inputs are
FAILED outcomes with their reasons while the rest completes; a real build process SIGKILLed
mid-build and resumed ends with identical content; two shard processes merged equal it. Content
is compared dataset by dataset, every root attribute but ``created_at``; ``measured_ms`` only by
its NaN pattern (timings are measurements, never reproducible).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cache.journal import journal_dir
from cache.reader import OutcomeCache
from cache.schema import STATUS_FAILED, STATUS_OK, STATUS_PENDING
from envs.knob_space import DEFAULT_IMPORTANCE_SCORES, KnobSpace
from experiments import build_cache, merge_cache_shards
from experiments.build_cache import BatchRunner, assign_splits, chunk_rows, parse_config_selection
from model_runtime.metrics import score as metric_score
from tests.build_cache_worker import blocking_build
from tests.cache_compare import assert_same_content
from tests.tiny_molmoe import tiny_config, write_tiny_dataset, write_tiny_molmoe_checkpoint

CONFIGS = "tier=low,p=1,top_k=4|8,blocks=12"  # a product set: the env's per-component masks are exact
BAD = {"bad-missing": "FileNotFoundError", "bad-corrupt": "UnidentifiedImageError", "too-long": "prompt too long"}
# chunk 0 = rows 0-2 (row 2 bad): FAILED write, samples, 2 configurations; chunk 1 = rows 3-5 (row 4
# bad): FAILED write, samples (write 6) -> killed with chunk 1's outcomes and chunk 2 pending
KILL_AFTER_WRITES = 6


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny checkpoint (224 px crops: fewer tokens, faster) and 7 requests, 3 of them bad."""
    d = tmp_path_factory.mktemp("live")
    write_tiny_molmoe_checkpoint(d / "ckpt", tiny_config(image_size=224))
    jl = write_tiny_dataset(d / "data", n=4)
    (d / "data" / "images" / "corrupt.png").write_bytes(b"this is not a PNG file")
    lines = jl.read_text().splitlines()
    base = json.loads(lines[0])

    def req(rid: str, image: str, question: str = "What color is the shape?") -> str:
        return json.dumps({**base, "id": rid, "image": image, "question": question})

    lines.insert(2, req("bad-missing", "images/missing.png"))
    lines.insert(4, req("bad-corrupt", "images/corrupt.png"))
    lines.append(req("too-long", "images/000.png", "x" * 5000))  # > 4096 positions with a byte tokenizer
    jl.write_text("\n".join(lines) + "\n")
    return d


def build_args(d: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(d / "ckpt"), "--dataset", str(d / "data" / "data.jsonl"), "--out", str(out),
            "--configs", CONFIGS, "--batch-size", "2", "--chunk-requests", "3", "--max-new-tokens", "3",
            "--tier-crops", "1", "2", "4", "--importance", "auto", "--calibration-requests", "2",
            "--threads", "1", "--no-progress", *extra]


@pytest.fixture(scope="module")
def background(workdir: Path) -> dict[str, multiprocessing.process.BaseProcess]:
    """Start the other build processes first, so that they overlap the in-process reference build.

    They are forked: real processes (SIGKILL ends them like any other) that inherit the imported
    torch / transformers instead of importing them again. Both run with one torch thread.
    """
    ctx = multiprocessing.get_context("fork")
    procs = {
        "killed": ctx.Process(target=blocking_build, args=(
            build_args(workdir, workdir / "killed.h5"), KILL_AFTER_WRITES, workdir / "killed.marker")),
        "shard1": ctx.Process(target=build_cache.main, args=(
            build_args(workdir, workdir / "sharded.h5", "--shard-rank", "1", "--num-shards", "2"),)),
    }
    for p in procs.values():
        p.start()
    yield procs
    for p in procs.values():
        if p.is_alive():
            p.kill()
        p.join(timeout=30)


@pytest.fixture(scope="module")
def reference(workdir: Path, background: dict) -> Path:
    out = workdir / "reference.h5"
    assert build_cache.main(build_args(workdir, out)) == 0
    return out


# ------------------------------------------------------------------------------ the reference build
def test_live_build_content_and_failed_inputs(reference: Path) -> None:
    with OutcomeCache(reference) as oc:
        assert oc.attrs["generator"] == "live" and oc.synthetic is False and oc.attrs["model_id"] == "ckpt"
        ks = oc.knob_space
        selected = parse_config_selection(CONFIGS, ks)
        assert [str(ks.config(c)) for c in selected] == ["low/p1/k4/b12", "low/p1/k8/b12"]
        gp = oc.attrs["generator_params"]
        # importance measured on the calibration requests (not the defaults) and stored in the knob space
        assert gp["importance"]["method"] == "block_influence"
        assert gp["importance"]["calibration_ids"] == ["synthetic-000", "synthetic-001"]
        assert list(ks.importance_scores) == gp["importance"]["scores"] != list(DEFAULT_IMPORTANCE_SCORES)
        lo, hi = oc.budget_range_ms
        assert 0 < lo < hi and oc.estimator_json["format"] == "molmoe-gym-latency-estimator"
        ids = list(oc.ids)
        bad = np.array([i for i, r in enumerate(ids) if r in BAD])
        good = np.array([i for i, r in enumerate(ids) if r not in BAD])
        others = np.setdiff1d(np.arange(len(ks)), selected)
        # every sample row is final; bad ones without vision tokens or uncertainty
        assert np.all(oc.status[:, others] == STATUS_PENDING)
        assert np.all(oc.status[np.ix_(good, selected)] == STATUS_OK)
        assert np.all(oc.status[np.ix_(bad, selected)] == STATUS_FAILED)
        for i in bad:
            for c in selected:
                assert BAD[ids[i]] in oc.error(int(i), int(c))
            assert np.all(oc.vision_tokens[i] == 0) and np.all(np.isnan(oc.uncertainty[i]))
            assert np.isnan(oc.score[i, selected]).all() and np.all(oc.output_tokens[i, selected] == -1)
        assert oc.prompt_tokens[ids.index("too-long")] > 4096
        # good rows: real features, more crops for higher tiers, scores = the metric of the stored text
        assert np.all(oc.vision_tokens[good] > 0) and np.all(np.diff(oc.crops[good], axis=1) >= 0)
        assert np.all(np.isfinite(oc.uncertainty[good])) and np.all(oc.uncertainty[good, 0] > 0)
        tokens = oc.latency_tokens(good)
        assert np.all(np.isfinite(tokens)) and np.all(np.abs(tokens).reshape(len(good), -1).max(axis=1) > 0)
        for i in good:
            answers = oc.answers(int(i))
            for c in selected:
                pred = oc.prediction(int(i), int(c))
                assert oc.score[i, c] == pytest.approx(metric_score("vqa_score", pred, answers))
                assert 1 <= oc.output_tokens[i, c] <= 3 and oc.error(int(i), int(c)) == ""
        assert np.all(np.isfinite(oc.measured_ms[np.ix_(good, selected)]))
        assert np.all(oc.measured_ms[np.ix_(good, selected)] > 0)


def test_live_cache_replays_in_the_two_stage_env(reference: Path) -> None:
    import gymnasium as gym

    import envs  # noqa: F401  (registers the envs)

    with OutcomeCache(reference) as oc:
        score, ids = oc.score.copy(), list(oc.ids)
    env = gym.make("MolmoeKnobs-v0", cache=str(reference), split="train", incomplete="mask")
    ks = KnobSpace()
    rng = np.random.default_rng(0)
    for ep in range(4):
        obs, info = env.reset(seed=ep)
        assert obs["lang"].shape == (64,) and np.all(np.isfinite(obs["lang"]))
        masks = env.unwrapped.action_masks()
        tier_mask, p_mask = masks[:3], masks[3:8]
        assert tier_mask.tolist() == [True, False, False] and p_mask.tolist() == [True] + [False] * 4
        obs, r, term, trunc, info = env.step(np.array([0, 0, 0, 0]))
        assert not term and obs["token"].shape == (64,) and np.abs(obs["token"]).max() > 0
        m = env.unwrapped.action_masks()
        k = int(rng.choice(np.flatnonzero(m[8:13])))
        b = int(rng.choice(np.flatnonzero(m[13:18])))
        assert m[8:13].tolist() == [True, False, False, False, True] and b == 0
        obs, r, term, trunc, info = env.step(np.array([0, 0, k, b]))
        assert term and np.isfinite(r)
        c = ks.index(("low", 1, 4 + k, 12 + b))
        assert info["score"] == score[ids.index(str(info["sample_id"])), c]
    env.close()


# ------------------------------------------------------------------------------ crash safety
def test_sigkilled_build_resumes_to_identical_content(workdir: Path, background: dict, reference: Path) -> None:
    proc, marker, out = background["killed"], workdir / "killed.marker", workdir / "killed.h5"
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.is_alive(), f"the build worker exited early (exit code {proc.exitcode})"
        assert time.monotonic() < deadline, "the build worker made no progress"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=30)
    assert proc.exitcode == -signal.SIGKILL
    assert journal_dir(out).is_dir(), "a killed build leaves its journal"
    with pytest.raises(FileExistsError, match="--resume"):
        build_cache.main(build_args(workdir, out))
    assert build_cache.main(build_args(workdir, out, "--resume")) == 0
    assert not journal_dir(out).exists()
    assert_same_content(out, reference, timings_by_nan_pattern=True)
    # resuming a finished cache changes nothing; changed settings are refused
    assert build_cache.main(build_args(workdir, out, "--resume")) == 0
    assert_same_content(out, reference, timings_by_nan_pattern=True)
    argv = build_args(workdir, out, "--resume")
    argv[argv.index("--max-new-tokens") + 1] = "4"
    with pytest.raises(ValueError, match="max_new_tokens"):
        build_cache.main(argv)


# ------------------------------------------------------------------------------ sharding
def test_two_process_shards_merge_to_the_single_build(workdir: Path, background: dict, reference: Path) -> None:
    assert build_cache.main(build_args(workdir, workdir / "sharded.h5", "--shard-rank", "0", "--num-shards", "2")) == 0
    proc = background["shard1"]
    proc.join(timeout=120)
    assert proc.exitcode == 0
    shards = [workdir / "sharded.shard0of2.h5", workdir / "sharded.shard1of2.h5"]
    with OutcomeCache(shards[1]) as oc:  # rank 1 owns chunk 1 (rows 3-5) only
        assert json.loads(oc.attrs["shard"]) == {"rank": 1, "num_shards": 2, "chunk_requests": 3}
        done = np.flatnonzero((oc.status != STATUS_PENDING).any(axis=1))
        assert done.tolist() == [3, 4, 5]
    with pytest.raises(Exception, match="missing"):
        merge_cache_shards.main(["--out", str(workdir / "half.h5"), str(shards[0])])
    out = workdir / "merged.h5"
    assert merge_cache_shards.main(["--out", str(out), *map(str, shards)]) == 0
    assert_same_content(out, reference, timings_by_nan_pattern=True)


# ------------------------------------------------------------------------------ pieces
def test_batch_runner_halves_on_oom_and_isolates_failures() -> None:
    calls: list[list[int]] = []

    def run(reqs: list[int]) -> list[str]:
        calls.append(list(reqs))
        if len(reqs) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if 5 in reqs:
            raise ValueError("request 5 is broken")
        return [f"out{r}" for r in reqs]

    runner = BatchRunner(batch_size=8, log=lambda line: None)
    res = runner(run, list(range(10)))
    assert res[:5] == [f"out{r}" for r in range(5)] and res[6:] == [f"out{r}" for r in range(6, 10)]
    assert res[5].startswith("ValueError: request 5 is broken")
    assert runner.batch_size == 2 and runner.retries >= 3  # halved for the rest of the run after OOMs
    assert all(len(c) <= 2 for c in calls[-3:])


def test_batch_runner_retries_with_the_failed_attempts_memory_released() -> None:
    """What an out-of-memory batch allocated is gone before its halves run: on one H100 a batch of 500 that ran out of
    memory left its tensors alive through the exception's traceback while the retries ran, so every smaller batch ran
    out too, down to single requests."""
    import weakref

    class Blob:  # stands for the tensors a failed batch allocated
        pass

    held: list[weakref.ref] = []
    alive_at_retry: list[int] = []

    def run(reqs: list[int]) -> list[str]:
        alive_at_retry.append(sum(r() is not None for r in held))
        blob = Blob()
        held.append(weakref.ref(blob))
        if len(reqs) > 1:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory ({blob!r} in this frame)")
        return [f"out{r}" for r in reqs]

    runner = BatchRunner(batch_size=4, log=lambda line: None)
    assert runner(run, list(range(4))) == [f"out{r}" for r in range(4)]
    assert alive_at_retry == [0] * 6  # 4, then 2 (the size drops to 1 for the rest), then 1 + 1 + 1 + 1


def test_config_selection_splits_and_chunks() -> None:
    ks = KnobSpace()
    assert parse_config_selection("all", ks).tolist() == list(range(225))
    sel = parse_config_selection("tier=high,top_k=8", ks)
    assert len(sel) == 15 and all(ks.config(c).tier == "high" and ks.config(c).top_k == 8 for c in sel)
    assert len(parse_config_selection("p=1-2,blocks=16", ks)) == 3 * 5 * 2
    assert parse_config_selection("0,5,7-9", ks).tolist() == [0, 5, 7, 8, 9]
    for bad in ("tier=huge", "depth=3", "300", "top_k=9", "x-y"):
        with pytest.raises(ValueError):
            parse_config_selection(bad, ks)
    ds = np.array([0] * 10 + [1] * 20)
    split = assign_splits(ds, [0.7, 0.1, 0.2], seed=0)
    assert np.bincount(split[ds == 1], minlength=3).tolist() == [14, 2, 4]
    assert np.array_equal(split, assign_splits(ds, [0.7, 0.1, 0.2], seed=0))
    with pytest.raises(ValueError):
        assign_splits(ds, [0.5, 0.1], seed=0)
    parts = [chunk_rows(23, 4, r, 3) for r in range(3)]
    rows = np.sort(np.concatenate([c for p in parts for c in p]))
    assert rows.tolist() == list(range(23))  # ranks partition the requests by whole chunks
    assert [c.tolist() for c in parts[1]] == [[4, 5, 6, 7], [16, 17, 18, 19]]
