"""The shared-prefix engine (``model_runtime.molmoe.shared_prefix.run_all_configs``) on a tiny
MolmoE checkpoint (CPU, float32): the same outcomes and sample features as the per-config runtime,
and a cache built with ``--engine shared-prefix`` equal to one built with ``--engine per-config``,
also after an interrupted build is resumed."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from cache.journal import journal_dir
from cache.schema import DATASETS
from envs.knob_space import KnobConfig, KnobSpace
from experiments import build_cache
from model_runtime.datasets import load_requests
from model_runtime.molmoe.runtime import MolmoeRuntime
from model_runtime.molmoe.shared_prefix import prompt_length_order, run_all_configs
from tests.build_cache_worker import blocking_build
from tests.cache_compare import assert_same_content
from tests.tiny_molmoe import tiny_config, write_tiny_dataset, write_tiny_molmoe_checkpoint
from tests.tiny_molmoe import torch_single_thread  # noqa: F401  (autouse fixture)

MAX_NEW = 4
KS = KnobSpace(crops=(1, 2, 4))


def _subset(ks: KnobSpace) -> list[int]:
    """Every p, top-k 4..8 and block counts from the fewest to all, two tiers; the cheapest
    configuration among them."""
    low = [("low", p, 4, p + ks.min_blocks_after) for p in ks.insertion_positions]
    low += [("low", p, 8, ks.num_blocks) for p in ks.insertion_positions]
    high = [("high", 1, 6, 16), ("high", 2, 5, 14), ("high", 3, 7, 15), ("high", 5, 8, 16)]
    return [ks.index(c) for c in low + high]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("shared")
    write_tiny_molmoe_checkpoint(d / "ckpt", tiny_config(image_size=224), seed=5)
    reqs = load_requests(write_tiny_dataset(d / "data", n=6, seed=1))  # 6 image sizes
    rt = MolmoeRuntime.from_checkpoint(d / "ckpt", KS, max_new_tokens=MAX_NEW, max_batch_size=6, fast=False)
    return d, rt, reqs


def test_run_all_configs_equals_the_per_config_runtime(setup) -> None:
    _, rt, reqs = setup
    ks = rt.knob_space
    sel = _subset(ks)
    assert {ks.config(c).p for c in sel} == set(ks.insertion_positions) and ks.index(ks.cheapest_config) in sel
    res = run_all_configs(rt, reqs, sel, batch_size=4)  # two batches: 4 + 2, by prompt length
    assert res.configs == sorted(sel) and len(res.outcomes) == len(reqs)
    order = prompt_length_order(rt, reqs)
    assert sorted(order) == list(range(6)) and order != list(range(6))  # the tiny set's sizes are not sorted
    first_batch = set(order[:4])
    n_tok = [rt.prepare(r, max(ks.crops)).vision_tokens for r in reqs]
    assert max(n_tok[i] for i in first_batch) <= min(n_tok[i] for i in order[4:])
    for c in sel:
        ref = rt.run(reqs, c)  # one batch of 6: a different padding, the same answers
        for i, o in enumerate(ref):
            got = res.outcomes[i][c]
            assert got.config == o.config and got.request_id == o.request_id
            assert (got.prediction, got.output_tokens, got.score, got.token_ids, got.ended_with_eos) == (
                o.prediction, o.output_tokens, o.score, o.token_ids, o.ended_with_eos), (i, str(ks.config(c)))
            assert got.first_token_entropy == pytest.approx(o.first_token_entropy, abs=1e-4)
            assert got.vision_ms > 0 and got.prefill_ms > 0 and got.decode_ms >= 0
            assert got.batch_size == (4 if i in first_batch else 2)
    # sample features: what LiveCacheBuilder.sample_fields computes with prefill-only runs
    feats = res.features
    rt1 = MolmoeRuntime(rt.model, rt.tokenizer, ks, max_new_tokens=1, max_batch_size=6, fast=False)
    cheap = ks.cheapest_config
    pos = np.asarray(ks.insertion_positions) - 1
    for t, tier in enumerate(ks.tiers):
        outs = rt1.run(reqs, KnobConfig(tier, cheap.p, cheap.top_k, cheap.blocks), return_latency_tokens=True)
        for f, o in zip(feats, outs):
            assert (f.crops[t], f.vision_tokens[t], f.prompt_tokens) == (o.crops, o.vision_tokens, o.prompt_tokens)
            np.testing.assert_allclose(f.latency_tokens[t], o.latency_tokens[pos], atol=1e-4, rtol=1e-4)
            if t == 0:
                assert f.first_token_entropy == pytest.approx(o.first_token_entropy, abs=1e-4)
                assert f.first_token_margin == pytest.approx(o.first_token_margin, abs=1e-4)
    assert len({tuple(f.crops) for f in feats}) > 1  # the image sizes give different crops
    for f, r in zip(feats, reqs):
        np.testing.assert_allclose(f.lang_feature, rt.language_feature(r), atol=1e-6)
    # without the cheapest configuration, the uncertainty comes from a prefill-only branch
    other = [c for c in sel if c != ks.index(cheap)][:3]
    res2 = run_all_configs(rt, reqs[:3], other, batch_size=8)
    for f2, f in zip(res2.features, feats):
        assert f2.first_token_entropy == pytest.approx(f.first_token_entropy, abs=1e-4)
        np.testing.assert_allclose(f2.latency_tokens, f.latency_tokens, atol=1e-4)
    # on_config: every configuration once, with the outcomes of every request
    seen: dict[int, list] = {}
    res3 = run_all_configs(rt, reqs[:3], other, batch_size=2, return_sample_features=False,
                           on_config=lambda c, outs: seen.setdefault(c, outs))
    assert res3.features is None and sorted(seen) == sorted(other)
    assert all(len(v) == 3 and v[0] is res3.outcomes[0][c] for c, v in seen.items())


def _assert_outcomes_equal(res, ref: dict, ks: KnobSpace, label: object) -> None:
    """Every request's tokens, output length, score and first-token entropy under every
    configuration of ``ref`` (the per-config runtime's outcomes) are what ``res`` holds."""
    for c, outs in ref.items():
        for i, o in enumerate(outs):
            got = res.outcomes[i][c]
            assert (got.token_ids, got.output_tokens, got.score) == (o.token_ids, o.output_tokens, o.score), (
                label, i, str(ks.config(c)))
            assert got.first_token_entropy == pytest.approx(o.first_token_entropy, abs=1e-4)


def test_grouped_dense_decode_equals_the_per_config_runtime(setup) -> None:
    """dense_decode: configurations of a tier decode together, per-row top-k and skipped blocks;
    a tiny group budget forces several groups of different sizes."""
    _, rt, reqs = setup
    ks = rt.knob_space
    sel = _subset(ks)
    ref = {c: rt.run(reqs, c) for c in sel}
    for group_bytes in (1, 2**40):  # one configuration per group / the whole tier in one group
        res = run_all_configs(rt, reqs, sel, batch_size=6, dense_decode=True, decode_group_bytes=group_bytes,
                              preprocess_threads=2, return_sample_features=False)
        _assert_outcomes_equal(res, ref, ks, group_bytes)


def test_configurations_sharing_block_passes_give_the_per_config_outcomes(setup) -> None:
    """Plans that agree on their first blocks (one p and top-k over every block count; top-8 over
    several p) start where they part from the plan prefilled before them; the outcomes and the
    first-token uncertainty stay the per-config runtime's, in one group or one group each."""
    _, rt, reqs = setup
    ks = rt.knob_space
    sel = [ks.index(("low", p, k, b)) for p, k in ((1, 6), (2, 6), (1, 8), (2, 8), (3, 8))
           for b in range(p + ks.min_blocks_after, ks.num_blocks + 1)]
    ref = {c: rt.run(reqs[:4], c) for c in sel}
    for group_bytes in (1, 2**40):
        lines: list[str] = []
        res = run_all_configs(rt, reqs[:4], sel, batch_size=4, dense_decode=True, decode_group_bytes=group_bytes,
                              return_sample_features=False, log=lines.append)
        _assert_outcomes_equal(res, ref, ks, group_bytes)
        (line,) = lines
        run_, shared = (int(line.split(" block passes")[0].split("(")[-1]),
                        int(line.split(" shared;")[0].split(", ")[-1]))
        unshared = sum(sum(k > 0 for k in ks.plan(ks.config(c)).top_k_per_block[ks.config(c).p:]) for c in sel)
        assert run_ + shared == unshared and shared > unshared / 3, line


def test_grouped_decode_drops_finished_rows_without_changing_outcomes(setup, monkeypatch) -> None:
    """With an end-of-sequence id the tiny model often emits after its first token, rows end at
    different steps; compacting the group whenever a row ended (and trimming the left padding no
    unfinished row needs) gives the per-config runtime's outcomes."""
    import dataclasses
    from collections import Counter

    from model_runtime.molmoe import shared_prefix

    d, _, reqs = setup
    rt = MolmoeRuntime.from_checkpoint(d / "ckpt", KS, max_new_tokens=MAX_NEW, max_batch_size=6, fast=False)
    sel = _subset(rt.knob_space)
    second = Counter(o.token_ids[1] for c in sel for o in rt.run(reqs, c) if len(o.token_ids) > 1)
    eos = second.most_common(1)[0][0]
    cfg = rt.model.config
    rt.model.config = cfg.replace(tokens=dataclasses.replace(cfg.tokens, eos=eos))
    ref = {c: rt.run(reqs, c) for c in sel}
    lengths = {o.output_tokens for outs in ref.values() for o in outs}
    assert len(lengths) > 1 and min(lengths) < MAX_NEW  # rows do end at different steps
    calls = []
    original = rt.model.lm.__class__.begin_decode

    def counting(self, state, token_ids):
        calls.append(token_ids.shape[0])
        return original(self, state, token_ids)

    monkeypatch.setattr(rt.model.lm.__class__, "begin_decode", counting)
    monkeypatch.setattr(shared_prefix, "COMPACT_BELOW", 1.0)
    lines: list[str] = []
    res = run_all_configs(rt, reqs, sel, batch_size=6, dense_decode=True, decode_group_bytes=2**40,
                          return_sample_features=False, log=lines.append)
    for c in sel:
        for i, o in enumerate(ref[c]):
            got = res.outcomes[i][c]
            assert (got.token_ids, got.output_tokens, got.score) == (o.token_ids, o.output_tokens, o.score)
    assert min(calls) < max(calls)  # later steps ran fewer rows
    # one line per (batch, tier) says where the time went
    assert [ln.split("tier ")[1].split(":")[0] for ln in lines] == ["low", "high"]
    assert all("1 decode groups" in ln and "vision + prefixes" in ln for ln in lines)


# ------------------------------------------------------------------------------ the builder
CONFIGS = "tier=low|high,p=1|5,top_k=4|8,blocks=16"


def _args(d: Path, out: Path, engine: str, *extra: str) -> list[str]:
    return ["--model", str(d / "ckpt"), "--dataset", str(d / "data" / "data.jsonl"), "--out", str(out),
            "--configs", CONFIGS, "--batch-size", "2", "--chunk-requests", "3", "--max-new-tokens", "3",
            "--tier-crops", "1", "2", "4", "--importance", "default", "--threads", "1", "--no-progress",
            "--engine", engine, *extra]


def assert_same_cache(a: Path, b: Path) -> None:
    """Same content but for the engine (generator_params.runtime.engine), the timings (NaN pattern
    only) and the latency tokens / uncertainty / language features (allclose)."""
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        attrs_a = {k: v for k, v in fa.attrs.items() if k not in ("created_at", "generator_params")}
        attrs_b = {k: v for k, v in fb.attrs.items() if k not in ("created_at", "generator_params")}
        assert attrs_a == attrs_b
        ga, gb = json.loads(fa.attrs["generator_params"]), json.loads(fb.attrs["generator_params"])
        assert {ga["runtime"].pop("engine"), gb["runtime"].pop("engine")} == {"shared-prefix", "per-config"}
        assert ga == gb
        for name, (_, spec) in DATASETS.items():
            da, db = fa[name], fb[name]
            assert da.shape == db.shape and da.dtype == db.dtype, name
            if spec == "str":
                assert np.array_equal(da.asstr()[()], db.asstr()[()]), name
            elif name == "outcomes/measured_ms":
                assert np.array_equal(np.isnan(da[()]), np.isnan(db[()])), name
            elif da.dtype.kind == "f":
                np.testing.assert_allclose(da[()], db[()], atol=2e-3, rtol=2e-3, err_msg=name)  # float16 storage
            else:
                assert np.array_equal(da[()], db[()]), name


@pytest.fixture(scope="module")
def data(setup):
    d = setup[0]
    jl = d / "data" / "data.jsonl"
    lines = jl.read_text().splitlines()
    base = json.loads(lines[0])
    lines.insert(2, json.dumps({**base, "id": "bad-missing", "image": "images/missing.png"}))
    jl.write_text("\n".join(lines) + "\n")  # 7 requests: chunks 0-2 (row 2 bad), 3-5, 6
    return d


def test_shared_prefix_cache_equals_per_config_cache_and_resumes(data: Path) -> None:
    d = data
    # a killed shared-prefix build (forked; SIGKILLed after chunk 0's FAILED, samples and 2 of its
    # 8 configuration writes), started first so that it overlaps the two reference builds
    marker = d / "killed.marker"
    proc = multiprocessing.get_context("fork").Process(
        target=blocking_build, args=(_args(d, d / "killed.h5", "shared-prefix"), 4, marker))
    proc.start()
    try:
        assert build_cache.main(_args(d, d / "shared.h5", "shared-prefix")) == 0
        assert build_cache.main(_args(d, d / "per_config.h5", "per-config")) == 0
        assert_same_cache(d / "shared.h5", d / "per_config.h5")
        with h5py.File(d / "shared.h5", "r") as f:
            status = f["outcomes/status"][()]
            assert (status == 1).sum() == 6 * 8 and (status == 2).sum() == 8  # OK / FAILED: 6 good, 1 bad
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout=30)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=30)
    assert journal_dir(d / "killed.h5").is_dir()
    assert build_cache.main(_args(d, d / "killed.h5", "shared-prefix", "--resume")) == 0
    assert_same_content(d / "killed.h5", d / "shared.h5", timings_by_nan_pattern=True)
    # the engine is part of the build's identity
    with pytest.raises(ValueError, match="engine"):
        build_cache.main(_args(d, d / "killed.h5", "per-config", "--resume"))
