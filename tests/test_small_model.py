"""The small MolmoE-architecture model's training pieces, on CPU with tiny widths.

Checkpoint writing round-trips through the loader, the BPE tokenizer has the layout the config
expects, dense experts equal the routed form, the recipe's random plans are valid knob plans, the
training stream is deterministic, and a few training steps lower the loss and write a checkpoint
the runtime runs.
"""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest
import torch

from model_runtime.molmoe.checkpoint import load_molmoe_checkpoint, save_molmoe_checkpoint
from model_runtime.molmoe.config import MolmoeConfig, SpecialTokens
from model_runtime.molmoe.language_model import MolmoeLanguageModel
from model_runtime.molmoe.model import MolmoeModel
from model_runtime.molmoe.tokenizer import special_tokens_from
from model_runtime.molmoe.dense_experts import dense_experts
from model_runtime.small_model.tokenizer_training import train_bpe_tokenizer
from model_runtime.small_model.trainer import TrainConfig, lr_at, sample_plan, train
from model_runtime.small_model.training_data import IGNORE, SuiteStream, TrainDataConfig

from .tiny_molmoe import torch_single_thread  # noqa: F401  (fixture)

TEXTS = [f"what color is the {c} {s}? {a}" for c in ("red", "blue", "green") for s in ("circle", "sign")
         for a in ("yes", "no", "3", "open")] * 20


def tiny_small(**kw) -> MolmoeConfig:
    """The small preset's geometry (168-px crops, 14-px patches, margins 2) at test widths."""
    base = dict(d_model=32, n_heads=2, num_experts=8, expert_hidden=8, vit_hidden=16, vit_heads=2, vit_mlp=32,
                pool_heads=2, pool_head_dim=8, projector_hidden=16, embedding_size=300,
                tokens=SpecialTokens(bos=0, eos=0, pad=1, im_start=300, im_end=301, im_patch=302, im_col=303,
                                     image_prompt=304))
    base.update(kw)
    return MolmoeConfig.small(**base)


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(TEXTS, vocab_size=300)


def test_small_preset_geometry_is_molmoe_at_half_scale():
    cfg = MolmoeConfig.small()
    assert cfg.molmoe_1b_image_scale == 2.0 and MolmoeConfig().molmoe_1b_image_scale == 1.0
    assert (cfg.n_layers, cfg.num_experts, cfg.top_k, cfg.tokens_per_crop) == (16, 64, 8, 36)
    from model_runtime.molmoe.preprocessing import MolmoImagePreprocessor

    small, big = MolmoImagePreprocessor(cfg), MolmoImagePreprocessor(MolmoeConfig())
    for h, w in ((100, 640), (333, 517), (640, 320), (64, 64)):
        for crops in (3, 6, 12):
            assert small.tiling_for(h, w, crops) == big.tiling_for(2 * h, 2 * w, crops)


def test_tokenizer_layout(tokenizer):
    tk = special_tokens_from(tokenizer)
    assert (tk.eos, tk.pad, tk.im_start, tk.image_prompt) == (0, 1, 300, 304)
    ids = tokenizer.encode(" red circle")
    assert max(ids) < 300 and tokenizer.decode(ids) == " red circle"
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe_tokenizer(TEXTS, vocab_size=100)


def test_checkpoint_round_trip(tmp_path, tokenizer):
    cfg = tiny_small(tokens=special_tokens_from(tokenizer))
    torch.manual_seed(0)
    model = MolmoeModel(cfg, experts_implementation="eager")
    save_molmoe_checkpoint(model, tokenizer, tmp_path, dtype=torch.float32, max_shard_bytes=100_000)
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    loaded, tok = load_molmoe_checkpoint(tmp_path)
    assert loaded.config == cfg
    a, b = model.state_dict(), loaded.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert tok.encode(" red sign") == tokenizer.encode(" red sign")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["projector_hidden_size"] == 16 and saved["image_feature_norm"] is True
    assert "connector.feature_norm.weight" in b


def test_image_tokens_do_not_grow_with_the_towers_features():
    """The small model normalises the ViT features before its (quadratic) SwiGLU projector: a tower
    whose residual stream grew 1000-fold gives the same image tokens; MolmoE-1B's layout has no norm."""
    from model_runtime.molmoe.connector import MolmoeConnector

    torch.manual_seed(0)
    cfg = tiny_small()
    conn = MolmoeConnector(cfg).eval()
    feats = torch.randn(2, cfg.patches_per_side ** 2, cfg.vit_feature_dim)
    masks = torch.ones(2, cfg.patches_per_side ** 2)
    with torch.no_grad():
        torch.testing.assert_close(conn(feats * 1000, masks), conn(feats, masks), rtol=1e-4, atol=1e-4)
        raw = MolmoeConnector(cfg.replace(vit_feature_norm=False)).eval()
        assert raw.feature_norm is None and MolmoeConfig().vit_feature_norm is False
        grown = raw(feats * 1000, masks).norm() / raw(feats, masks).norm()
        assert grown > 1e5  # without it the projector squares the growth
        # image_token_norm: the tokens' RMS is the norm's gain whatever the projector's weights
        normed = MolmoeConnector(cfg.replace(image_token_norm=True)).eval()
        normed.projector.w2.weight.mul_(1e4)
        rms = normed(feats, masks).pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.full_like(rms, cfg.d_model ** -0.5), rtol=1e-3, atol=1e-6)


def test_image_token_norm_round_trip(tmp_path, tokenizer):
    cfg = tiny_small(tokens=special_tokens_from(tokenizer), image_token_norm=True)
    torch.manual_seed(0)
    model = MolmoeModel(cfg, experts_implementation="eager")
    with torch.no_grad():
        model.connector.token_norm.weight.uniform_(0.5, 1.5)
    save_molmoe_checkpoint(model, tokenizer, tmp_path, dtype=torch.float32)
    loaded, _ = load_molmoe_checkpoint(tmp_path)
    assert loaded.config == cfg and json.loads((tmp_path / "config.json").read_text())["image_token_norm"] is True
    assert torch.equal(loaded.connector.token_norm.weight, model.connector.token_norm.weight)


def test_patches_to_crops_inverts_patchify():
    from model_runtime.molmoe.preprocessing import _patchify
    from model_runtime.molmoe.vision import patches_to_crops

    crops = np.random.default_rng(0).integers(0, 256, size=(2, 168, 168, 3), dtype=np.uint8)
    back = patches_to_crops(torch.from_numpy(_patchify(crops, 14)), 14)
    assert torch.equal(back.permute(0, 2, 3, 1), torch.from_numpy(crops))
    nhwc = patches_to_crops(torch.from_numpy(_patchify(crops, 14)), 14, channels_last=True)  # same values, NHWC strides
    assert torch.equal(nhwc, back) and nhwc.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("stem", ["conv", "hybrid", "fine"])
def test_conv_patch_stem_round_trip(tmp_path, tokenizer, stem):
    cfg = tiny_small(tokens=special_tokens_from(tokenizer), vit_patch_stem=stem)
    torch.manual_seed(0)
    model = MolmoeModel(cfg, experts_implementation="eager").eval()
    patches, masks = torch.randn(2, cfg.patches_per_crop, cfg.pixels_per_patch), torch.ones(2, cfg.patches_per_crop)
    with torch.no_grad():
        feats = model.image_features(patches, masks)
        model.vision.clip.embeddings.patch_embedding.weight.zero_()  # unused: the stem embeds the patches
        assert torch.equal(model.image_features(patches, masks), feats)
    save_molmoe_checkpoint(model, tokenizer, tmp_path, dtype=torch.float32)
    loaded, _ = load_molmoe_checkpoint(tmp_path)
    assert loaded.config == cfg and json.loads((tmp_path / "config.json").read_text())["image_patch_stem"] == stem
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval().image_features(patches, masks), feats)
    with pytest.raises(ValueError, match="vit_patch_stem"):
        tiny_small(vit_patch_stem="resnet")


def test_fine_stem_keeps_where_in_a_patch_the_ink_is():
    """The fine stem maps each patch's cells of features by their position: a stroke moved within
    its patch changes the patch's token."""
    from model_runtime.molmoe.preprocessing import _patchify
    from model_runtime.molmoe.vision import FineCropConvStem

    torch.manual_seed(0)
    crop = torch.zeros(1, 3, 168, 168)
    crop[:, :, 30:40, 15:17] = 1.0  # a vertical stroke in patch (2, 1), at its left
    moved = torch.zeros_like(crop)
    moved[:, :, 30:40, 19:21] = 1.0  # the same stroke 4 px to the right, same patch

    def as_patches(c):
        return torch.from_numpy(_patchify(c.permute(0, 2, 3, 1).numpy(), 14))

    fine = FineCropConvStem(14, 16)
    with torch.no_grad():
        a, b = fine(as_patches(crop)), fine(as_patches(moved))
    assert a.shape == (1, 144, 16)
    assert (a[0, 2 * 12 + 1] - b[0, 2 * 12 + 1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="even"):
        FineCropConvStem(15, 16)
    with pytest.raises(ValueError, match="even patch_size"):
        tiny_small(vit_patch_stem="fine", patch_size=15, image_size=165)


def test_dense_experts_equal_routed():
    torch.manual_seed(0)
    cfg = tiny_small()
    lm = MolmoeLanguageModel.from_config(cfg.olmoe_config(experts_implementation="eager"), n_logits=cfg.embedding_size)
    ids = torch.randint(0, 300, (2, 12))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    plan = (8, 8) + (5,) * 11 + (0, 0, 4)
    ref = lm(ids, mask, top_k_per_block=plan)
    with dense_experts(lm):
        dense = lm(ids, mask, top_k_per_block=plan)
    assert torch.allclose(ref[mask.bool()], dense[mask.bool()], atol=1e-5)
    assert "forward" not in vars(lm.backbone.layers[0].mlp.experts)  # restored


def test_recipe_plans_are_knob_plans():
    from envs.knob_space import KnobSpace

    ks = KnobSpace()
    rng = random.Random(0)
    plans = [sample_plan(rng, 1.0, 16, 8) for _ in range(300)]
    for plan in plans:
        p = next(b for b in range(16) if plan[b] != 8 or b >= 5) if any(k != 8 for k in plan) else None
        active = sum(k > 0 for k in plan)
        ks_blocks = {c.blocks for c in ks.configs}
        assert active in ks_blocks
        assert len({k for k in plan if 0 < k}) <= 2
    assert sample_plan(random.Random(0), 0.0, 16, 8) == (8,) * 16
    assert len(set(plans)) > 50
    cfg = TrainConfig(lr=1.0, warmup_steps=10, min_lr_frac=0.1)
    assert lr_at(0, cfg, 100) == pytest.approx(0.1) and lr_at(100, cfg, 100) == pytest.approx(0.1)


def test_training_stream_is_deterministic(tokenizer):
    cfg = tiny_small(tokens=special_tokens_from(tokenizer))
    data = TrainDataConfig(batch_size=3)
    a = SuiteStream(cfg, tokenizer, data).batch(5)
    b = SuiteStream(cfg, tokenizer, data).batch(5)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    labels, ids = a["labels"], a["input_ids"]
    for row in range(3):  # labels = the answer tokens shifted left, ending in EOS
        pos = (labels[row] != IGNORE).nonzero()[:, 0]
        assert labels[row, pos[-1]] == cfg.tokens.eos
        assert torch.equal(labels[row, pos[:-1]], ids[row, pos[1:]])
    c = SuiteStream(cfg, tokenizer, data).batch(6)
    assert not torch.equal(a["task"], c["task"]) or not torch.equal(a["patches"][:1], c["patches"][:1])


def test_first_example_starts_the_stream_past_the_examples_a_run_saw(tokenizer):
    cfg = tiny_small(tokens=special_tokens_from(tokenizer))
    start = SuiteStream(cfg, tokenizer, TrainDataConfig(batch_size=3))
    later = SuiteStream(cfg, tokenizer, TrainDataConfig(batch_size=3, first_example=6))
    a, b = start.batch(2), later.batch(0)  # examples 6..8 of one stream
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [list(ix) for _, ix in later.chunk_indices(1)] == [[9, 10, 11]]
    with pytest.raises(ValueError, match="first_example"):
        TrainDataConfig(first_example=-1)


def test_uint8_pixels_normalise_to_the_float_pipeline(tokenizer):
    from model_runtime.datasets.suite import render_example
    from model_runtime.molmoe.preprocessing import MolmoImagePreprocessor, normalize_patches

    cfg = tiny_small(tokens=special_tokens_from(tokenizer))
    pre = MolmoImagePreprocessor(cfg)
    image = render_example("synth_chart", "val", 3, seed=0).image
    ref = pre(image, 6)
    raw = pre(image, 6, normalize=False)
    assert raw.patches.dtype == np.uint8 and raw.patches.shape == ref.patches.shape
    assert np.array_equal(raw.image_input_idx, ref.image_input_idx) and np.array_equal(raw.image_masks, ref.image_masks)
    got = normalize_patches(torch.from_numpy(raw.patches), cfg, torch.float32).numpy()
    half_level = 0.5 / 255 / min(cfg.image_std)  # rounding to a grey level, in normalised units
    assert np.abs(got - ref.patches).max() <= half_level + 1e-6


def test_reused_examples_recur_at_the_reuse_distance(tokenizer):
    cfg = tiny_small(tokens=special_tokens_from(tokenizer))
    data = TrainDataConfig(batch_size=4, reuse=2, reuse_distance=3)
    stream = SuiteStream(cfg, tokenizer, data)
    seen: dict[int, list[int]] = {}
    for b in range(12):
        for _, indices in stream.chunk_indices(b):
            for i in indices:
                seen.setdefault(i, []).append(b)
    steady = {i: bs for i, bs in seen.items() if i < 1 << 40}
    assert steady and all(bs == [bs[0], bs[0] + 3] for i, bs in steady.items() if bs[0] + 3 < 12)
    assert all(len(bs) == 1 for i, bs in seen.items() if i >= 1 << 40)  # warm-up chunks: fresh, used once
    assert all(sum(len(ix) for _, ix in stream.chunk_indices(b)) == 4 for b in range(12))
    # two workers (3 is not a multiple of 2: some chunks are rendered twice) give the same batches
    with_cache, chunks = [], {}
    for b in (0, 2, 4, 6):
        with_cache.append(stream.batch(b, chunks=chunks))
    for b, got in zip((0, 2, 4, 6), with_cache):
        ref = SuiteStream(cfg, tokenizer, data).batch(b)
        assert all(torch.equal(got[k], ref[k]) for k in ref)
    with pytest.raises(ValueError, match="reuse"):
        TrainDataConfig(batch_size=5, reuse=2)


@pytest.mark.slow
def test_few_training_steps_write_a_runnable_checkpoint(tmp_path, tokenizer):
    cfg = TrainConfig(steps=8, batch_size=4, num_workers=0, eval_every=8, val_batches=1, warmup_steps=2, lr=3e-3,
                      recipes={"plain": 0.0, "robust": 0.5}, data=TrainDataConfig(batch_size=4))
    summary = train(cfg, tmp_path, tokenizer, device="cpu", config=tiny_small(), log=lambda s: None)
    assert summary["steps"] == 8
    log = (tmp_path / "train_log.csv").read_text().splitlines()
    assert "plain/ce" in log[0] and "robust/val_acc/easy_vqa" in log[0] or "robust/val_ce" in log[0]
    assert (tmp_path / "training_curves.png").stat().st_size > 1000
    from model_runtime.molmoe.runtime import MolmoeRuntime
    from model_runtime.datasets.suite import make_suite
    from model_runtime.datasets import load_requests

    suite = make_suite(tmp_path / "suite", seed=0, per_task=1, splits=("val",), workers=1)
    reqs = load_requests(suite / "val.jsonl")
    rt = MolmoeRuntime.from_checkpoint(tmp_path / "robust", max_new_tokens=4)
    outs = rt.run(reqs, ("low", 1, 4, 12))
    assert len(outs) == len(reqs) and all(1 <= o.output_tokens <= 4 for o in outs)
    # live mode runs the trained checkpoint on suite requests (two-stage env, both stages)
    import gymnasium as gym

    import envs  # noqa: F401  (registers the env ids)

    env = gym.make("MolmoeKnobs-v0", mode="live", runtime=rt, requests=str(suite / "val.jsonl"))
    obs, info = env.reset(seed=0)
    obs, r, term, trunc, info = env.step(np.array([0, 0, 0, 0]))
    assert not term and obs["token"].shape == (rt.model.config.d_model,)
    obs, r, term, trunc, info = env.step(np.array([0, 0, 4, 4]))
    assert term and np.isfinite(r) and info["dataset"] in {"easy_vqa", "synth_text", "synth_doc", "synth_chart",
                                                            "synth_count", "synth_diagram"}
    # the quick knob-grid look at a checkpoint
    from experiments import eval_model_grid

    assert eval_model_grid.main(["--model", str(tmp_path / "robust"), "--requests", str(suite / "val.jsonl"),
                                 "--out", str(tmp_path / "grid.json"), "--per-task", "1", "--device", "cpu",
                                 "--max-new-tokens", "3", "--dense-decode", "--per-request",
                                 "--configs", "tier=low|high,p=1,top_k=4|8,blocks=12|16"]) == 0
    grid = json.loads((tmp_path / "grid.json").read_text())
    assert len(grid["grid"]) == 8 and all(0 <= g["score/mean"] <= 1 for g in grid["grid"])
    per = grid["per_request"]  # each request's score, whose task means are the rows'
    assert len(per["ids"]) == sum(grid["n_per_task"].values()) and set(per["scores"]) == {str(g["index"]) for g in grid["grid"]}
    assert all(np.mean(per["scores"][str(g["index"])]) == pytest.approx(g["score/mean"]) for g in grid["grid"])
    assert {(g["tier"], g["top_k"], g["blocks"]) for g in grid["grid"]} >= {("high", 8, 16), ("low", 4, 12)}
    # and each request's answer, whose score by the request's own metric is the score written beside it
    from cache.live_builder import cache_score
    from model_runtime.datasets import load_requests

    by_id = {r.id: r for r in load_requests(suite / "val.jsonl")}
    assert set(per["predictions"]) == set(per["scores"])
    for c, preds in per["predictions"].items():
        assert [cache_score(by_id[i].metric, by_id[i].score(a)) for i, a in zip(per["ids"], preds)] == pytest.approx(per["scores"][c])
    # resume continues the same run, and its log continues the first call's
    from model_runtime.small_model.trainer import read_train_log

    assert [r["step"] for r in read_train_log(tmp_path / "train_log.csv")] == [7]
    cfg.steps = 10
    summary = train(cfg, tmp_path, tokenizer, device="cpu", config=tiny_small(), resume=True, log=lambda s: None)
    assert summary["steps"] == 10
    assert [r["step"] for r in read_train_log(tmp_path / "train_log.csv")] == [7, 9]
    # stop_after_s: a fixed schedule stops early with a resumable state, the next call finishes it
    cfg.steps, cfg.stop_after_s = 13, 1e-9
    summary = train(cfg, tmp_path, tokenizer, device="cpu", config=tiny_small(), resume=True, log=lambda s: None)
    assert summary["steps"] == 11 and summary["stopped_by_time"] and summary["total_steps"] == 13
    cfg.stop_after_s = 0.0
    summary = train(cfg, tmp_path, tokenizer, device="cpu", config=tiny_small(), resume=True, log=lambda s: None)
    assert summary["steps"] == 13 and not summary["stopped_by_time"]
    # stop_at_step: the schedule is cut at a given step (resumable), whatever the machine's speed
    cfg.steps, cfg.stop_at_step = 16, 14
    summary = train(cfg, tmp_path, tokenizer, device="cpu", config=tiny_small(), resume=True, log=lambda s: None)
    assert summary["steps"] == 14 and summary["stopped_at_step"] and not summary["stopped_by_time"]
    cfg.stop_at_step = 0
    summary = train(cfg, tmp_path, tokenizer, device="cpu", config=tiny_small(), resume=True, log=lambda s: None)
    assert summary["steps"] == 16 and not summary["stopped_at_step"]
    from experiments.train_model import parse_args

    assert parse_args(["--suite", "s", "--out", "o", "--stop-at-step", "14"]).stop_at_step == 14
    with pytest.raises(SystemExit):  # argparse: one line, exit code 2
        parse_args(["--suite", "s", "--out", "o", "--stop-at-step", "-1"])
    # --init-from starts every recipe from a checkpoint's weights
    from model_runtime.small_model.trainer import Run

    run = Run("plain", 0.0, tiny_small(tokens=special_tokens_from(tokenizer)), cfg, torch.device("cpu"), torch.float32)
    run.load_weights(tmp_path / "robust")
    saved, _ = load_molmoe_checkpoint(tmp_path / "robust", dtype=torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(run.model.parameters(), saved.parameters()))
    with pytest.raises(ValueError, match="do not match"):
        Run("x", 0.0, tiny_small(tokens=special_tokens_from(tokenizer), d_model=48), cfg, torch.device("cpu"),
            torch.float32).load_weights(tmp_path / "robust")


@pytest.mark.slow
def test_small_model_cache_build_stores_molmoe_1b_token_counts(tmp_path, tokenizer):
    """The build the default cache comes from, at test size: a small-geometry checkpoint, suite
    requests, the shared-prefix engine with grouped dense decoding; vision tokens are MolmoE-1B's
    for the image at twice its size (same crops), and the packed cache validates."""
    from cache.reader import OutcomeCache
    from cache.repack import repack
    from cache.validate import check
    from experiments import build_cache
    from model_runtime.datasets.suite import make_suite
    from model_runtime.molmoe.preprocessing import molmoe_1b_token_counts
    from PIL import Image

    cfg = tiny_small(tokens=special_tokens_from(tokenizer))
    torch.manual_seed(0)
    save_molmoe_checkpoint(MolmoeModel(cfg, experts_implementation="eager"), tokenizer, tmp_path / "ck",
                           dtype=torch.float32)
    suite = make_suite(tmp_path / "suite", seed=0, per_task=1, splits=("test",), workers=1)
    out = tmp_path / "c.h5"
    rc = build_cache.main(["--model", str(tmp_path / "ck"), "--dataset", str(suite / "test.jsonl"), "--out", str(out),
                           "--configs", "p=1|5,top_k=4|8", "--max-new-tokens", "3", "--dense-decode",
                           "--preprocess-threads", "2", "--importance", "default", "--no-progress", "--threads", "1"])
    assert rc == 0
    with OutcomeCache(out) as c:
        assert c.attrs["generator"] == "live" and not c.synthetic
        assert "MolmoE-1B's image tokens" in c.attrs["generator_params"]["definitions"]["vision_tokens"]
        for i in range(c.n_samples):
            from model_runtime.datasets import load_requests

            req = load_requests(suite / "test.jsonl")[i]
            with Image.open(req.image) as im:
                w, h = im.size
            for t, crops in enumerate((3, 6, 12)):
                assert (c.crops[i, t], c.vision_tokens[i, t]) == molmoe_1b_token_counts(h, w, crops, 2.0)
        done = ~np.isnan(c.score)
        assert done.sum() == 6 * 36 and set(np.unique(c.output_tokens[done])) <= {1, 2, 3}
    packed = repack(out, tmp_path / "packed.h5")
    assert check(packed)[1] == []
    from cache.info import card

    text = card(packed)
    assert "generator      live" in text and "synth_doc: stands in for DocVQA" in text
    assert "latency of MolmoE-1B at the same token counts" in text and "output tokens" in text


def test_compiled_dense_experts_equal_eager():
    """--compile's fused dense experts: the same outputs and gradients as the eager form."""
    from model_runtime.molmoe.dense_experts import dense_moe

    g = torch.Generator().manual_seed(0)
    n, d, e, f, k = 37, 16, 8, 4, 3
    x = torch.randn(n, d, generator=g, requires_grad=True)
    gate_up = torch.randn(e, 2 * f, d, generator=g, requires_grad=True)
    down = torch.randn(e, d, f, generator=g, requires_grad=True)
    w, idx = torch.randn(n, e, generator=g).softmax(-1).topk(k)
    w.requires_grad_(True)
    compiled = torch.compile(dense_moe, dynamic=True)
    outs = []
    for fn in (dense_moe, compiled):
        y = fn(x, gate_up, down, idx, w)
        grads = torch.autograd.grad(y.square().sum(), (x, gate_up, down, w))
        outs.append((y, *grads))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_task_weights_argument():
    from experiments.train_model import parse_task_weights

    assert parse_task_weights(["synth_text=1", "easy_vqa=0.5"]) == {"synth_text": 1.0, "easy_vqa": 0.5}
    for bad, msg in ((["nope=1"], "TASK one of"), (["synth_text"], "TASK=WEIGHT"), (["synth_text=x"], "not a number"),
                     (["synth_text=-1"], ">= 0"), (["synth_text=0"], "at least one")):
        with pytest.raises(ValueError, match=msg):
            parse_task_weights(bad)
    stream = SuiteStream(tiny_small(), None, TrainDataConfig(batch_size=4, task_weights={"synth_count": 1.0}))
    assert stream.tasks == ("synth_count",)


def test_model_config_argument_widens_the_tower_and_round_trips(tmp_path, tokenizer):
    """``--model-config`` sets MolmoeConfig.small's sizes (typed, validated in one line); a model
    built with them saves and loads as that config."""
    from experiments.train_model import parse_model_config

    over = parse_model_config(["vit_hidden=256", "pool_head_dim=64", "vit_mlp=1024", "vit_num_layers=8"])
    assert over == {"vit_hidden": 256, "pool_head_dim": 64, "vit_mlp": 1024, "vit_num_layers": 8}
    assert parse_model_config(["vit_feature_norm=false"]) == {"vit_feature_norm": False} and parse_model_config(None) == {}
    for bad, msg in ((["n_layers=12"], "FIELD one of"), (["num_experts=32"], "FIELD one of"), (["vit_hidden"], "FIELD=VALUE"),
                     (["vit_hidden=wide"], "expects a int"), (["vit_mlp=0"], "> 0"),
                     (["vit_hidden=200"], "not a valid model config"), (["vit_feature_norm=maybe"], "true or false")):
        with pytest.raises(ValueError, match=msg):
            parse_model_config(bad)
    cfg = MolmoeConfig.small(tokens=special_tokens_from(tokenizer), **parse_model_config(["vit_hidden=64", "pool_head_dim=16",
                                                                                           "vit_mlp=128", "vit_num_layers=5"]))
    torch.manual_seed(0)
    model = MolmoeModel(cfg, experts_implementation="eager")
    save_molmoe_checkpoint(model, tokenizer, tmp_path, dtype=torch.float32)
    loaded, _ = load_molmoe_checkpoint(tmp_path)
    assert loaded.config == cfg and loaded.config.vit_hidden == 64 and loaded.config.vit_num_layers == 5


def test_learning_rate_scale_per_module():
    """``lr_scale`` gives a parameter the multiplier of its longest matching name prefix; a step
    then moves a module at 0× not at all, and the CLI parses PREFIX=SCALE with clear errors."""
    from experiments.train_model import parse_lr_scale
    from model_runtime.small_model.trainer import Run, lr_scale_of

    scales = {"connector.": 0.1, "connector.projector.": 0.5, "vision.": 0.0}
    assert lr_scale_of("connector.pooling.wq.weight", scales) == 0.1
    assert lr_scale_of("connector.projector.w1.weight", scales) == 0.5
    assert lr_scale_of("lm.backbone.norm.weight", scales) == 1.0
    assert parse_lr_scale(["connector.=0.1", "vision.=0"]) == {"connector.": 0.1, "vision.": 0.0}
    assert parse_lr_scale(None) == {}
    for bad, msg in ((["nope.=1"], "PREFIX starting"), (["connector."], "PREFIX=SCALE"),
                     (["connector.=x"], "not a number"), (["connector.=-1"], ">= 0")):
        with pytest.raises(ValueError, match=msg):
            parse_lr_scale(bad)

    cfg = TrainConfig(lr_scale={"vision.": 0.0}, compile=False)
    run = Run("plain", 0.0, tiny_small(), cfg, torch.device("cpu"), torch.float32)
    try:
        before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
        stream = SuiteStream(run.model.config, train_bpe_tokenizer(TEXTS, vocab_size=300),
                             TrainDataConfig(batch_size=2, task_weights={"easy_vqa": 1.0}))
        from model_runtime.small_model.trainer import to_batch

        mb, labels = to_batch(stream.batch(0), torch.device("cpu"), torch.float32, run.model.config)
        run.step(mb, labels, 1e-2, cfg)
        after = dict(run.model.named_parameters())
        assert all(torch.equal(before[n], after[n]) for n in before if n.startswith("vision."))
        assert not torch.equal(before["connector.projector.w2.weight"], after["connector.projector.w2.weight"])
    finally:
        run.close()


def test_caption_rate_turns_examples_into_dense_caption_samples(tokenizer):
    cfg = tiny_small(tokens=special_tokens_from(tokenizer))
    weights = {"easy_vqa": 1.0, "synth_doc": 1.0}
    every = SuiteStream(cfg, tokenizer, TrainDataConfig(batch_size=6, task_weights=weights, caption_rate=1.0))
    plain = SuiteStream(cfg, tokenizer, TrainDataConfig(batch_size=6, task_weights=weights))
    a, b = every.batch(0), plain.batch(0)
    assert torch.equal(a["patches"], b["patches"])  # same examples, asked differently
    from model_runtime.datasets.suite import render_example
    from model_runtime.small_model.training_data import example_task

    for row in range(6):
        task = example_task(0, row, every.tasks, every.probs)
        ex = render_example(task, "train", row, seed=0)
        answer = tokenizer.decode([t for t in a["labels"][row].tolist() if t != IGNORE][:-1]).strip()
        if task == "easy_vqa":  # no caption: asked its question, counted as its task
            assert a["task"][row] == every.tasks.index(task) and answer == ex.answers[0]
        else:  # caption samples get task id n_tasks + task, so per-task accuracy counts questions only
            assert a["task"][row] == len(every.tasks) + every.tasks.index(task) and answer == ex.caption
    assert (b["task"] < len(plain.tasks)).all()
    val = SuiteStream(cfg, tokenizer, TrainDataConfig(batch_size=6, task_weights=weights, caption_rate=1.0), split="val")
    assert (val.batch(0)["task"] < 2).all()  # held-out monitoring asks questions only
    with pytest.raises(ValueError, match="caption_rate"):
        TrainDataConfig(caption_rate=1.5)


@pytest.mark.slow
def test_word_presence_targets_and_loss(tmp_path, tokenizer):
    from model_runtime.datasets.suite import render_example
    from model_runtime.small_model.training_data import example_task
    from model_runtime.small_model.word_presence import WordPresence

    cfg = tiny_small(tokens=special_tokens_from(tokenizer), vit_patch_stem="hybrid")
    weights = {"easy_vqa": 1.0, "synth_text": 1.0}
    stream = SuiteStream(cfg, tokenizer, TrainDataConfig(batch_size=3, task_weights=weights))
    b = stream.batch(0)
    assert b["caption_targets"].shape == (3, cfg.embedding_size)
    for row in range(3):  # the multi-hot of the image's caption ids, whatever the sample asks
        ex = render_example(example_task(0, row, stream.tasks, stream.probs), "train", row, seed=0)
        want = set(tokenizer.encode(" " + ex.caption)) if ex.caption else set()
        assert set(torch.nonzero(b["caption_targets"][row]).flatten().tolist()) == want
        assert bool(b["has_caption"][row]) == bool(ex.caption)
    assert b["has_caption"].any() and not b["has_caption"].all()

    torch.manual_seed(0)
    model = MolmoeModel(cfg).train()
    presence = WordPresence(model, cfg.embedding_size, ("stem", "tokens"))
    opt = torch.optim.AdamW(list(model.parameters()) + list(presence.parameters()), lr=2e-2)
    from model_runtime.small_model.trainer import to_batch

    mb, _ = to_batch(b, torch.device("cpu"), torch.float32, cfg)
    losses = []
    for _ in range(10):  # fitting one batch: the loss falls and the ids become predicted present
        model.embed(mb)
        loss, figures = presence.losses(mb.crop_rows, b["caption_targets"], b["has_caption"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0]
    assert 0 <= float(figures["recall"]) <= 1 and 0 <= float(figures["precision"]) <= 1
    # rows without a caption take no part: their targets can be anything
    model.embed(mb)
    masked = b["caption_targets"].clone()
    masked[~b["has_caption"]] = 1
    same, _ = presence.losses(mb.crop_rows, masked, b["has_caption"])
    model.embed(mb)
    again, _ = presence.losses(mb.crop_rows, b["caption_targets"], b["has_caption"])
    assert torch.allclose(same, again)
    presence.remove()
    with pytest.raises(ValueError, match="needs vit_patch_stem"):
        WordPresence(MolmoeModel(tiny_small()), 300, ("stem",))
    with pytest.raises(ValueError, match="sites"):
        WordPresence(model, 300, ("pixels",))

    # in the training loop: logged, and a resumed run continues with the heads' state
    tcfg = TrainConfig(steps=3, batch_size=4, num_workers=0, eval_every=3, val_batches=1, warmup_steps=1,
                       recipes={"plain": 0.0}, word_presence=1.0, data=TrainDataConfig(batch_size=4))
    train(tcfg, tmp_path, tokenizer, device="cpu", config=cfg, log=lambda s: None)
    header = (tmp_path / "train_log.csv").read_text().splitlines()[0]
    assert "plain/presence" in header and "plain/presence_recall" in header
    assert "presence" in torch.load(tmp_path / "train_state.pt", weights_only=False)["runs"]["plain"]
    tcfg.steps = 4
    assert train(tcfg, tmp_path, tokenizer, device="cpu", config=cfg, resume=True, log=lambda s: None)["steps"] == 4


def test_resumed_training_reuses_the_saved_tokenizer(tmp_path):
    """``--resume`` reads the tokenizer the stopped run saved (not a retrained one, which could
    give other ids), ``--init-from`` that checkpoint's, and a fresh run trains its own."""
    from experiments.train_model import saved_tokenizer

    out = tmp_path / "ckpt"
    assert saved_tokenizer(out, ["plain"], init_from=None, resume=True) is None  # nothing saved yet
    (out / "plain").mkdir(parents=True)
    (out / "plain" / "tokenizer.json").write_text("{}")
    assert saved_tokenizer(out, ["plain", "robust"], init_from=None, resume=True) == out / "plain" / "tokenizer.json"
    assert saved_tokenizer(out, ["plain"], init_from=None, resume=False) is None
    init = tmp_path / "init"
    assert saved_tokenizer(out, ["plain"], init_from=init, resume=False) == init / "tokenizer.json"


def test_the_print_size_ladder_streams_with_its_caption_targets(tokenizer):
    """A mix with the training-only ``synth_words`` streams batches whose answers are the asked
    plate's text and whose word-presence targets hold every plate's words."""
    cfg = tiny_small(tokens=special_tokens_from(tokenizer))
    stream = SuiteStream(cfg, tokenizer, TrainDataConfig(batch_size=4, task_weights={"synth_words": 1.0}))
    assert stream.tasks == ("synth_words",)
    b = stream.batch(0)
    assert (b["task"] == 0).all() and b["has_caption"].all()
    for row in range(4):
        answer = b["labels"][row][b["labels"][row] != IGNORE][:-1].tolist()  # without EOS
        assert set(answer) <= set(b["caption_targets"][row].nonzero()[:, 0].tolist())


def test_a_time_fitted_schedule_spans_two_calls(tmp_path, tokenizer, monkeypatch):
    """``steps=0`` fits the step count to ``time_budget_s`` in the first call; ``stop_after_s``
    stops that call early with the fitted total saved, and the resumed call finishes exactly that
    schedule (the way one fitted schedule spans two time-limited GPU calls). A fake clock makes
    the fitted total independent of this machine's speed."""
    import model_runtime.small_model.trainer as trainer_mod

    clock = {"t": 0.0}

    def fake_perf_counter() -> float:
        clock["t"] += 0.01
        return clock["t"]

    monkeypatch.setattr(trainer_mod.time, "perf_counter", fake_perf_counter)
    cfg = TrainConfig(steps=0, time_budget_s=1.6, stop_after_s=0.6, probe_steps=4, batch_size=2, num_workers=0,
                      eval_every=1000, val_batches=1, warmup_steps=1, recipes={"plain": 0.0},
                      data=TrainDataConfig(batch_size=2, task_weights={"easy_vqa": 1.0}))
    first = train(cfg, tmp_path, tokenizer, device="cpu", config=tiny_small(), log=lambda s: None)
    assert first["stopped_by_time"] and 4 <= first["steps"] < first["total_steps"]
    cfg.stop_after_s = 100.0  # the second call's own limit, past what the rest of the schedule needs
    second = train(cfg, tmp_path, tokenizer, device="cpu", config=tiny_small(), resume=True, log=lambda s: None)
    assert not second["stopped_by_time"]
    assert second["steps"] == second["total_steps"] == first["total_steps"]


def test_split_digits_gives_each_digit_a_token_over_the_same_ids(tokenizer, tmp_path):
    """``with_split_digits`` keeps every id (text without digits encodes as before), encodes each
    digit as its own token, decodes back to the text, survives a save/load and is idempotent; a
    tokenizer trained with the split has it too."""
    from model_runtime.molmoe.tokenizer import TextTokenizer
    from model_runtime.small_model.tokenizer_training import splits_digits, with_split_digits

    plain = train_bpe_tokenizer(TEXTS + ["invoice 4310 total 4310 zip 1010 1010 1010"] * 20, vocab_size=300)
    assert not splits_digits(plain)
    split = with_split_digits(plain)
    assert splits_digits(split) and with_split_digits(split) is split
    assert split.encode(" what colour is the shape?") == plain.encode(" what colour is the shape?")
    digits = lambda tok, text: [sum(c.isdigit() for c in tok.decode([i])) for i in tok.encode(text)]  # noqa: E731
    assert max(digits(plain, " 4310 1010")) >= 2  # BPE merged a digit pair
    assert max(digits(split, " 4310 1010")) == 1
    for text in (" 4310", " $795", " 4/17", "What value does 2021 have?"):
        assert split.decode(split.encode(text)) == text
    split.save(tmp_path / "tokenizer.json")
    assert splits_digits(TextTokenizer.from_file(tmp_path))
    trained = train_bpe_tokenizer(TEXTS + ["invoice 4310 total 4310"] * 20, vocab_size=300, split_digits=True)
    assert splits_digits(trained) and max(digits(trained, " 4310")) == 1


def test_the_training_tokenizer_takes_the_digit_split_where_it_may(tokenizer, tmp_path):
    """``--split-digits``: a new tokenizer is trained with it, an ``--init-from`` checkpoint's gets
    it over its ids, and a resumed run whose saved tokenizer lacks it is refused."""
    from experiments.train_model import training_tokenizer
    from model_runtime.small_model.tokenizer_training import splits_digits

    def train_new(split):
        return train_bpe_tokenizer(TEXTS, vocab_size=300, split_digits=split)

    quiet = lambda line: None  # noqa: E731
    new, trained = training_tokenizer(tmp_path / "a", ["plain"], init_from=None, resume=False, split_digits=True,
                                      train_new=train_new, log=quiet)
    assert trained and splits_digits(new)
    init = tmp_path / "init"
    init.mkdir()
    tokenizer.save(init / "tokenizer.json")
    got, trained = training_tokenizer(tmp_path / "b", ["plain"], init_from=init, resume=False, split_digits=True,
                                      train_new=train_new, log=quiet)
    assert not trained and splits_digits(got) and got.encode(" the shape") == tokenizer.encode(" the shape")
    kept, _ = training_tokenizer(tmp_path / "b", ["plain"], init_from=init, resume=False, split_digits=False,
                                 train_new=train_new, log=quiet)
    assert not splits_digits(kept)
    (tmp_path / "c" / "plain").mkdir(parents=True)
    tokenizer.save(tmp_path / "c" / "plain" / "tokenizer.json")
    with pytest.raises(ValueError, match="does not split digits"):
        training_tokenizer(tmp_path / "c", ["plain"], init_from=None, resume=True, split_digits=True,
                           train_new=train_new, log=quiet)


def test_a_continued_stream_is_still_scored_on_the_fixed_val_batches(tmp_path, tokenizer):
    """``first_example`` moves the train stream only: the val batches stay the first examples of
    the val split (easy-VQA's val split has fewer than 5,000, so a continuation starting its train
    stream at 10**6 once asked val for an example past its end)."""
    cfg = TrainConfig(steps=1, batch_size=2, num_workers=0, eval_every=1, val_batches=1, warmup_steps=1,
                      recipes={"plain": 0.0},
                      data=TrainDataConfig(batch_size=2, task_weights={"easy_vqa": 1.0}, first_example=10**6))
    train(cfg, tmp_path, tokenizer, device="cpu", config=tiny_small(), log=lambda s: None)
    header = (tmp_path / "train_log.csv").read_text().splitlines()[0].split(",")
    assert "plain/val_acc/easy_vqa" in header


def test_training_stops_its_rendering_workers_before_it_returns(tmp_path, tokenizer):
    """The train stream's loader workers are shut down when the loop ends, not whenever the garbage
    collector reaches the iterator: left to it, their shutdown joined each worker with a 5 s timeout
    inside whatever ran next (the importance scoring after an H200 run took 76 s with 15 workers,
    benchmarks/RESULTS.md "Eighteenth H200 run")."""
    import multiprocessing

    cfg = TrainConfig(steps=2, batch_size=2, num_workers=2, eval_every=2, val_batches=1, warmup_steps=1,
                      recipes={"plain": 0.0}, data=TrainDataConfig(batch_size=2, task_weights={"easy_vqa": 1.0}))
    before = set(multiprocessing.active_children())
    train(cfg, tmp_path, tokenizer, device="cpu", config=tiny_small(), log=lambda s: None)
    assert set(multiprocessing.active_children()) - before == set()


def test_every_training_only_task_streams(tokenizer):
    """Each training-only task has a prompt style and a metric, so a mix of it alone streams
    (``synth_digits`` once reached the GPU without them and stopped at its first batch)."""
    from model_runtime.datasets.suite import TRAIN_ONLY_TASKS

    cfg = tiny_small(tokens=special_tokens_from(tokenizer))
    for task in TRAIN_ONLY_TASKS:
        stream = SuiteStream(cfg, tokenizer, TrainDataConfig(batch_size=2, task_weights={task: 1.0}))
        b = stream.batch(0)
        assert stream.tasks == (task,) and (b["labels"] != IGNORE).any()


def test_train_model_cli_trains_a_wider_tower(tmp_path, capsys):
    """``python -m experiments.train_model --model-config ...`` end to end on the CPU: two steps of
    a model with a 256-wide tower write a checkpoint whose config has it."""
    from experiments.make_suite import main as make_suite
    from experiments.train_model import main as train_model

    suite = tmp_path / "suite"
    assert make_suite(["--out", str(suite), "--seed", "0", "--per-task", "2", "--splits", "val", "test"]) in (0, None)
    assert train_model(["--suite", str(suite), "--out", str(tmp_path / "ckpt"), "--device", "cpu", "--steps", "2",
                        "--batch-size", "2", "--workers", "1", "--recipes", "plain=0", "--importance-requests", "1",
                        "--tokenizer-corpus", "300", "--model-config", "vit_hidden=256", "pool_head_dim=64",
                        "vit_mlp=1024"]) == 0
    loaded, _ = load_molmoe_checkpoint(tmp_path / "ckpt" / "plain")
    assert (loaded.config.vit_hidden, loaded.config.vit_mlp, loaded.config.pool_head_dim) == (256, 1024, 64)
    assert loaded.config.n_layers == 16 and loaded.config.num_experts == 64
    assert json.loads((tmp_path / "ckpt" / "plain" / "train_config.json").read_text())["train"]["tokenizer_corpus"] == 300
    with pytest.raises(SystemExit):
        train_model(["--suite", str(suite), "--out", str(tmp_path / "other"), "--tokenizer-corpus", "0"])
    assert "--tokenizer-corpus must be >= 1, got 0" in capsys.readouterr().err


def test_a_channels_last_stem_trains_as_the_default_layout_does(tmp_path, tokenizer):
    # the same function in another memory format: the same losses to rounding, a checkpoint in the usual layout
    from model_runtime.molmoe.checkpoint import load_molmoe_checkpoint

    cfg = tiny_small(tokens=special_tokens_from(tokenizer), vit_patch_stem="hybrid")
    losses, weights = {}, {}
    for cl in (False, True):
        tcfg = TrainConfig(steps=2, batch_size=2, num_workers=0, eval_every=2, val_batches=1, warmup_steps=1,
                           recipes={"plain": 0.0}, channels_last=cl, data=TrainDataConfig(batch_size=2))
        out = tmp_path / f"cl{int(cl)}"
        train(tcfg, out, tokenizer, device="cpu", config=cfg, log=lambda s: None)
        rows = list(csv.DictReader(open(out / "train_log.csv")))
        losses[cl] = [float(r["plain/loss"]) for r in rows]
        model, _ = load_molmoe_checkpoint(out / "plain", dtype=torch.float32, device="cpu")
        stem = model.vision.patch_stem
        assert not stem.channels_last and stem.net[0].weight.is_contiguous()  # saved and loaded in the usual layout
        weights[cl] = stem.net[0].weight
    assert np.allclose(losses[True], losses[False], rtol=1e-4, atol=1e-5)
    assert torch.allclose(weights[True], weights[False], atol=1e-5)
