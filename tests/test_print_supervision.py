"""Print supervision: where the suite prints each character, carried through Molmo's crops onto
the patches and image tokens, and the loss that asks the tokens for it (on CPU, tiny widths)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from model_runtime.datasets.suite import drawing as dr
from model_runtime.datasets.suite import render_example
from model_runtime.molmoe.model import MolmoeModel
from model_runtime.molmoe.preprocessing import MolmoImagePreprocessor
from model_runtime.molmoe.tokenizer import special_tokens_from
from model_runtime.small_model.print_supervision import (IGNORE, N_CLASSES, OTHER, PrintLoss, glyph_class,
                                                         print_targets)
from model_runtime.small_model.trainer import TrainConfig, to_batch, train
from model_runtime.small_model.training_data import SuiteStream, TrainDataConfig

from .test_small_model import tiny_small, tokenizer  # noqa: F401  (fixture)
from .tiny_molmoe import torch_single_thread  # noqa: F401  (fixture)

PRINTING_TASKS = ("synth_text", "synth_doc", "synth_chart", "synth_diagram", "synth_read", "synth_words",
                  "synth_digits", "synth_numbers")


def _draw_both(calls):
    a, b = Image.new("RGB", (220, 90), (240, 240, 230)), Image.new("RGB", (220, 90), (240, 240, 230))
    plain, recording = ImageDraw.Draw(a), dr.GlyphDraw(b)
    for xy, text, face, size, anchor in calls:
        plain.text(xy, text, font=dr.font(face, size), fill=(20, 20, 20), anchor=anchor)
        recording.text(xy, text, font=dr.font(face, size), fill=(20, 20, 20), anchor=anchor)
    return np.asarray(a), np.asarray(b), recording


def test_glyph_draw_draws_pil_pixels_and_records_each_character_where_its_ink_is():
    calls = [((10, 8), "Total: 4821", "sans", 14, None), ((200, 40), "07", "mono", 18, "ra"),
             ((110, 70), "x 9", "serif", 12, "mm"), ((60, 40), "15", "sans_bold", 11, "lm")]
    a, b, rec = _draw_both(calls)
    assert np.array_equal(a, b)
    assert "".join(rec.glyph_chars) == "Total:482107x915"  # spaces are not recorded
    boxes = rec.glyph_boxes()
    assert boxes.shape == (16, 4) and (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    # each character's box holds that character's ink: drawn alone at its box, it lands inside
    for i, ch in zip(range(6, 10), "4821"):
        img = Image.new("L", (220, 90), 0)
        x0, y0, x1, y1 = boxes[i]
        ImageDraw.Draw(img).text(((x0 + x1) / 2, (y0 + y1) / 2), ch, font=dr.font("sans", 14), fill=255, anchor="mm")
        ys, xs = np.nonzero(np.asarray(img) > 128)
        cx, cy = xs.mean(), ys.mean()
        assert x0 - 1 <= cx <= x1 + 1 and y0 - 1 <= cy <= y1 + 1
    # the boxes of one line run left to right without gaps wider than a character
    line = boxes[6:10]
    assert (np.diff(line[:, 0]) > 0).all() and (line[1:, 0] - line[:-1, 2] < 1).all()


@pytest.mark.parametrize("task", PRINTING_TASKS)
def test_printing_tasks_record_their_print(task):
    ex = render_example(task, "train", 11, seed=0)
    assert ex.glyph_text and len(ex.glyph_text) == len(ex.glyph_boxes)
    h, w = ex.image.shape[:2]
    centre = (ex.glyph_boxes[:, :2] + ex.glyph_boxes[:, 2:]) / 2
    assert ((centre >= 0) & (centre <= [w, h])).all()
    answer = ex.answers[0] if ex.options is None else ex.meta.get("answer_text", "")
    if task != "synth_diagram":  # the answer is printed somewhere in the image (case folded, spaces dropped)
        assert answer.replace(" ", "").lower() in ex.glyph_text.lower()


def test_images_without_print_are_all_none_and_easy_vqa_is_not_recorded():
    count = render_example("synth_count", "train", 0, seed=0)
    assert count.glyph_text == "" and count.glyph_boxes.shape == (0, 4)
    easy = render_example("easy_vqa", "train", 0, seed=0)
    assert easy.glyph_text is None and easy.glyph_boxes is None


def test_crop_transforms_place_an_image_point_where_the_preprocessing_puts_it():
    cfg = tiny_small()
    pre = MolmoImagePreprocessor(cfg)
    rng = np.random.default_rng(0)
    side = cfg.patches_per_side * cfg.patch_size
    checked = 0
    for _ in range(25):
        h, w = (int(v) for v in rng.integers(60, 700, size=2))
        x, y = int(rng.integers(5, w - 5)), int(rng.integers(5, h - 5))
        img = np.zeros((h, w, 3), np.uint8)
        img[y - 3:y + 4, x - 3:x + 4] = 255
        max_crops = int(rng.choice([1, 3, 6, 12]))
        out = pre(img, max_crops, normalize=False)
        transforms = pre.crop_transforms(h, w, max_crops)
        assert transforms.shape == (out.patches.shape[0], 4)
        p, n = cfg.patch_size, cfg.patches_per_side
        for c, (sx, sy, ox, oy) in enumerate(transforms):
            crop = out.patches[c].reshape(n, n, p, p, 3).transpose(0, 2, 1, 3, 4).reshape(side, side, 3).sum(-1)
            if crop.max() <= 100:
                continue
            ys, xs = np.nonzero(crop > crop.max() / 2)
            assert abs(xs.mean() - (x * sx + ox)) < 1.5 and abs(ys.mean() - (y * sy + oy)) < 1.5
            checked += 1
    assert checked >= 25


def test_print_targets_put_each_character_in_its_cell_in_reading_order():
    # identity map, one 56-px crop of 2×2 cells of 28 px: two lines in the top-left cell, one in the right
    chars = "ab1" + "zq" + "7"
    boxes = np.asarray([[2, 3, 8, 13], [8, 3, 14, 13], [14, 3, 20, 13],   # line 1 of cell 0
                        [9, 15, 15, 25], [2, 15, 8, 25],                   # line 2 of cell 0, drawn right first
                        [40, 5, 46, 15]], np.float32)                       # cell 1
    t = print_targets(np.asarray([[1.0, 1.0, 0.0, 0.0]]), chars, boxes, crop_px=56, grid=2, slots=4, min_px=6)
    assert t.shape == (1, 4, 4) and t.dtype == np.int8
    assert t[0, 0].tolist() == [glyph_class("a"), glyph_class("b"), glyph_class("1"), glyph_class("q")]
    assert t[0, 1].tolist() == [glyph_class("7"), 0, 0, 0]
    assert (t[0, 2:] == 0).all()
    # print below min_px at this scale: its cell is ignored, not taught as none
    small = print_targets(np.asarray([[0.5, 0.5, 0.0, 0.0]]), chars, boxes, crop_px=56, grid=2, slots=4, min_px=6)
    assert (small[0, 0] == IGNORE).all() and (small[0, 1:] == 0).all()
    # not recorded: ignored everywhere; classes fold case and keep digits apart from the rest
    assert (print_targets(np.zeros((2, 4)), None, None, crop_px=56, grid=2, slots=4, min_px=6) == IGNORE).all()
    assert glyph_class("A") == glyph_class("a") and glyph_class("0") == 1 and glyph_class("$") == OTHER < N_CLASSES
    with pytest.raises(ValueError, match="boxes"):
        print_targets(np.zeros((1, 4)), "ab", boxes[:1], crop_px=56, grid=2, slots=4, min_px=6)


def test_stream_targets_and_the_loss_teach_the_tokens_where_the_digits_are(tmp_path, tokenizer):  # noqa: F811
    cfg = tiny_small(tokens=special_tokens_from(tokenizer), vit_patch_stem="fine")
    grids = (cfg.patches_per_side, cfg.tokens_per_side)
    data = TrainDataConfig(batch_size=3, task_weights={"synth_numbers": 1.0, "easy_vqa": 1.0}, print_grids=grids)
    b = SuiteStream(cfg, tokenizer, data).batch(0)
    for g in grids:
        t = b[f"print_targets_{g}"]
        assert t.shape == (b["patches"].shape[0], g * g, data.print_slots)
        digits = (t >= 1) & (t <= 10)
        assert digits.any() and (t == IGNORE).any()  # numbers are labelled, easy-VQA crops are not
    assert "print_targets_12" not in SuiteStream(cfg, tokenizer, TrainDataConfig(batch_size=2)).batch(0)

    torch.manual_seed(0)
    model = MolmoeModel(cfg).train()
    prints = PrintLoss(model, ("stem", "tokens"), slots=data.print_slots)
    opt = torch.optim.AdamW(list(model.parameters()) + list(prints.parameters()), lr=1e-2)
    mb, _ = to_batch(b, torch.device("cpu"), torch.float32, cfg)
    targets = {g: b[f"print_targets_{g}"] for g in grids}
    losses = []
    for _ in range(50):  # fitting one batch: the loss falls and printed characters get placed
        model.embed(mb)
        loss, figures = prints.losses(targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0]
    assert float(figures["acc"]) > 0.5
    # the heads' warm-up: the loss trains the heads and leaves the model's weights without a gradient
    opt.zero_grad()
    model.embed(mb)
    loss, _ = prints.losses(targets, heads_only=True)
    loss.backward()
    assert all(p.grad is None for p in model.parameters()) and all(p.grad is not None for p in prints.parameters())
    prints.remove()
    with pytest.raises(ValueError, match="needs vit_patch_stem"):
        PrintLoss(MolmoeModel(tiny_small()), ("stem",))
    with pytest.raises(ValueError, match="sites"):
        PrintLoss(model, ("pixels",))

    # in the training loop: the stream renders the sites' targets, the loss is logged, a resume keeps the heads
    tcfg = TrainConfig(steps=3, batch_size=4, num_workers=0, eval_every=3, val_batches=1, warmup_steps=1,
                       recipes={"plain": 0.0}, print_loss=1.0, print_sites=("tokens",), print_head_warmup=2,
                       data=TrainDataConfig(batch_size=4, task_weights={"synth_doc": 1.0, "synth_count": 1.0}))
    train(tcfg, tmp_path, tokenizer, device="cpu", config=cfg, log=lambda s: None)
    header = (tmp_path / "train_log.csv").read_text().splitlines()[0]
    assert "plain/print" in header and "plain/print_acc" in header
    assert "print" in torch.load(tmp_path / "train_state.pt", weights_only=False)["runs"]["plain"]
    tcfg.steps = 4
    assert train(tcfg, tmp_path, tokenizer, device="cpu", config=cfg, resume=True, log=lambda s: None)["steps"] == 4
