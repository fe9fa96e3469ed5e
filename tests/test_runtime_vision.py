"""Stage (c): Molmo preprocessing, CLIP tower, connector and the composed model (tiny, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_runtime.molmoe.connector import MolmoeConnector
from model_runtime.molmoe.model import MolmoeModel
from model_runtime.molmoe.preprocessing import MolmoImagePreprocessor, build_prompt, resize_and_pad, select_tiling
from model_runtime.molmoe.vision import MolmoeVisionTower
from tests.tiny_molmoe import tiny_config
from tests.tiny_molmoe import torch_single_thread  # noqa: F401  (autouse fixture)

CFG = tiny_config()
TK = CFG.tokens


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------- tiling
@pytest.mark.parametrize(
    "h, w, max_crops, expected",
    [
        (10, 10, 12, (1, 1)),          # tiny image: least upscaling
        (224, 448, 12, (1, 2)),        # exact fit of a 1x2 window grid
        (448, 224, 12, (2, 1)),
        (2000, 2000, 12, (3, 3)),      # downscale needed everywhere: least downscaling, fewest crops on ties
        (2000, 2000, 3, (1, 1)),       # same min side scale for 1x1..1x3: ties go to fewer crops
        (300, 2000, 6, (1, 6)),
    ],
)
def test_select_tiling(h, w, max_crops, expected):
    assert select_tiling(h, w, 224, max_crops) == expected


def test_select_tiling_rejects_zero_crops():
    with pytest.raises(ValueError):
        select_tiling(100, 100, 224, 0)


# ---------------------------------------------------------------------------- token layout
@pytest.mark.parametrize("h, w, max_crops", [(40, 60, 12), (300, 900, 12), (700, 500, 6), (2000, 300, 12), (500, 500, 3)])
def test_image_tokens_and_patch_positions_follow_the_image_grid(h, w, max_crops):
    pp = MolmoImagePreprocessor(CFG)
    out = pp(_image(h, w), max_crops)
    rows, cols = out.tiling
    assert rows * cols <= max_crops and out.n_crops == rows * cols + 1
    assert out.patches.shape == (out.n_crops, 576, 14 * 14 * 3) and out.image_masks.shape == (out.n_crops, 576)
    assert pp.token_counts(h, w, max_crops) == (out.n_crops, out.n_tokens)
    # layout: global 12x(12 patches + col) then the joint crop grid
    wp, hp = (cols * 16 + 8) // 2, (rows * 16 + 8) // 2
    toks = out.image_tokens
    assert out.n_tokens == (2 + 12 * 13) + (2 + hp * (wp + 1))
    assert toks[0] == TK.im_start and toks[157] == TK.im_end and toks[158] == TK.im_start and toks[-1] == TK.im_end
    assert (toks == TK.im_patch).sum() == 144 + hp * wp and (toks == TK.im_col).sum() == 12 + hp
    # global view: pooled patch t goes to the t-th patch token
    glob = np.nonzero(toks[:158] == TK.im_patch)[0]
    assert np.array_equal(out.image_input_idx[0], glob)
    # crops: kept pooled patch (r, q) of crop (i, j) lies at global pooled row i*8+r, col j*8+q
    base = 159
    for i in range(rows):
        for j in range(cols):
            y0, x0 = (0 if i == 0 else 2), (0 if j == 0 else 2)
            ph = (16 + (4 if i == 0 else 0) + (4 if i == rows - 1 else 0)) // 2
            pw = (16 + (4 if j == 0 else 0) + (4 if j == cols - 1 else 0)) // 2
            idx = out.image_input_idx[1 + i * cols + j].reshape(12, 12)
            for r in range(12):
                for q in range(12):
                    if y0 <= r < y0 + ph and x0 <= q < x0 + pw:
                        assert idx[r, q] == base + (i * 8 + r) * (wp + 1) + (j * 8 + q)
                    else:
                        assert idx[r, q] == -100
    kept = out.image_input_idx[out.image_input_idx >= 0]
    assert len(np.unique(kept)) == len(kept) == (toks == TK.im_patch).sum()


def test_padding_masks_follow_the_public_processor():
    pp = MolmoImagePreprocessor(CFG)
    out = pp(_image(97, 500), 12)  # wide: rows of padding above and below
    assert np.all(out.image_masks[-1] == -1)  # appended row (public quirk)
    crop_masks = out.image_masks[:-1]
    assert crop_masks.min() == 0.0 and crop_masks.max() == 1.0
    assert np.any((crop_masks > 0) & (crop_masks < 1))  # partially padded patches at the border


def test_resize_and_pad_keeps_aspect_and_centres():
    img = np.full((50, 100, 3), 200, dtype=np.uint8)
    px, mask = resize_and_pad(img, (336, 336))
    assert px.shape == (336, 336, 3) and mask.shape == (336, 336)
    rows = np.nonzero(mask.any(axis=1))[0]
    assert mask.all(axis=0).sum() == 0 and mask.sum() == 336 * 168
    assert rows[0] == 84 and rows[-1] == 84 + 167  # centred vertically
    assert np.allclose(px[mask], 200 / 255, atol=1e-5) and np.all(px[~mask] == 0)


def test_prompt_layout_shifts_patch_positions_past_bos():
    pp = MolmoImagePreprocessor(CFG)
    img = pp(_image(64, 48), 12)
    prompt = build_prompt(img, [65, 66, 67], TK.bos)
    assert prompt.input_ids[0] == TK.bos and list(prompt.input_ids[-3:]) == [65, 66, 67]
    kept = prompt.image.image_input_idx[prompt.image.image_input_idx >= 0]
    assert np.all(prompt.input_ids[kept] == TK.im_patch)
    assert prompt.vision_tokens == img.n_tokens and prompt.prompt_tokens == 4


# ---------------------------------------------------------------------------- tower and connector
@torch.no_grad()
def test_vision_tower_equals_transformers_clip_on_pixels():
    torch.manual_seed(0)
    tower = MolmoeVisionTower(CFG).eval()
    pp = MolmoImagePreprocessor(CFG)
    patches = torch.from_numpy(pp(_image(120, 90), 12).patches)
    feats = tower(patches)
    assert feats.shape == (patches.shape[0], 576, 2 * CFG.vit_hidden)
    # rebuild (N, 3, 336, 336) pixels from (dh dw c) patches and run transformers' CLIP
    n = patches.shape[0]
    pixels = patches.view(n, 24, 24, 14, 14, 3).permute(0, 5, 1, 3, 2, 4).reshape(n, 3, 336, 336)
    hs = tower.clip(pixel_values=pixels, output_hidden_states=True).hidden_states
    ref = torch.cat([hs[-2][:, 1:], hs[-9][:, 1:]], dim=-1)
    assert (feats - ref).abs().max().item() < 1e-4
    assert tower.n_layers_run == CFG.vit_num_layers - 1  # the last layer's output is unused


@torch.no_grad()
def test_connector_pools_2x2_windows_with_mean_query():
    torch.manual_seed(1)
    con = MolmoeConnector(CFG).eval()
    with torch.no_grad():
        con.pad_embed.normal_()
    feats = torch.randn(2, 576, 2 * CFG.vit_hidden)
    masks = torch.ones(2, 576)
    masks[0, :30] = 0.0
    masks[1, 5] = 0.5
    out = con(feats, masks)
    assert out.shape == (2, 144, CFG.d_model)
    x = feats + con.pad_embed[0] * (masks == 0)[..., None] + con.pad_embed[1] * ((masks > 0) & (masks < 1))[..., None]
    grid = x.view(2, 24, 24, -1)
    heads, hd = CFG.pool_heads, CFG.pool_head_dim
    pool = con.pooling
    for c, (r, q) in [(0, (0, 0)), (0, (7, 11)), (1, (0, 2)), (1, (11, 11))]:
        win = grid[c, 2 * r : 2 * r + 2, 2 * q : 2 * q + 2].reshape(4, -1)
        qv = pool.wq(win.mean(0)).view(heads, hd)
        kv, vv = pool.wk(win).view(4, heads, hd), pool.wv(win).view(4, heads, hd)
        att = torch.softmax(torch.einsum("hd,khd->hk", qv, kv) / hd**0.5, dim=-1)
        pooled = pool.wo(torch.einsum("hk,khd->hd", att, vv).reshape(-1))
        proj = con.projector
        expect = proj.w2(torch.nn.functional.silu(proj.w1(pooled)) * proj.w3(pooled))
        assert torch.allclose(out[c, r * 12 + q], expect, atol=1e-5)


# ---------------------------------------------------------------------------- composed model
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(2)
    return MolmoeModel(CFG).eval()


def _prompt(model, h, w, text, seed=0):
    return build_prompt(model.preprocessor(_image(h, w, seed), 12), text, TK.bos)


@torch.no_grad()
def test_embed_adds_pooled_features_at_patch_tokens(model):
    prompt = _prompt(model, 60, 80, [70, 71, 72, 73])
    batch = model.collate([prompt])
    feats = model.image_features(batch.patches, batch.image_masks)
    emb = model.embed(batch, feats)
    delta = emb[0] - model.lm.embed(batch.input_ids)[0]
    idx = batch.image_input_idx
    valid = idx >= 0
    assert torch.allclose(delta[idx[valid]], feats[valid], atol=1e-6)
    others = torch.ones(delta.shape[0], dtype=torch.bool)
    others[idx[valid]] = False
    assert delta[others].abs().max().item() == 0.0


@torch.no_grad()
def test_collated_batch_equals_single_prompts(model):
    prompts = [_prompt(model, 60, 80, [70, 71, 72], seed=0), _prompt(model, 90, 200, [80, 81, 82, 83, 84], seed=1)]
    batch = model.collate(prompts)
    assert batch.patches.shape[0] == sum(p.image.n_crops for p in prompts)
    logits = model(batch)
    for b, prompt in enumerate(prompts):
        single = model(model.collate([prompt]))[0]
        n = prompt.input_ids.shape[0]
        assert torch.allclose(logits[b, -n:], single, atol=1e-4)


def test_vision_graphs_equal_image_features_and_capture_from_the_second_call():
    import torch

    from model_runtime.molmoe.config import MolmoeConfig
    from model_runtime.molmoe.vision_graphs import VisionGraphs
    from model_runtime.profiler import build_random_model

    model = build_random_model(MolmoeConfig.tiny(), device="cpu", dtype=torch.float32)
    cfg = model.config
    log: list[int] = []

    def capture(step):
        log.append(1)
        return step, 7

    vg = VisionGraphs(model, max_graphs=2, capture=capture)
    g = torch.Generator().manual_seed(0)
    for crops in (2, 2, 3, 2, 4, 3):
        patches = torch.randn(crops, cfg.patches_per_crop, cfg.pixels_per_patch, generator=g)
        masks = torch.rand(crops, cfg.patches_per_crop, generator=g)
        torch.testing.assert_close(vg(patches, masks), model.image_features(patches, masks), rtol=1e-5, atol=1e-5)
    # 2 crops: eager, captured, replayed; 3: eager, captured (evicts nothing: 2 graphs); 4: eager
    assert len(log) == vg.captures == 2 and [r["crops"] for r in vg.memory_report()] == [2, 3]
    import pytest

    with pytest.raises(ValueError, match="max_graphs"):
        VisionGraphs(model, max_graphs=0)
