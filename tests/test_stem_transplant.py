"""A stem transplant keeps every other weight, fits the new stem to the old one's tokens, and round-trips."""

from __future__ import annotations

import json

import pytest
import torch

from experiments import transplant_stem as cli
from model_runtime.molmoe.checkpoint import load_molmoe_checkpoint, save_molmoe_checkpoint
from model_runtime.molmoe.model import MolmoeModel
from model_runtime.molmoe.tokenizer import special_tokens_from
from model_runtime.molmoe.vision import CropConvStem, FineCropConvStem
from model_runtime.small_model.stem_transplant import StemTransplantConfig, carried_weights_equal, transplant_stem
from model_runtime.small_model.tokenizer_training import train_bpe_tokenizer
from tests.test_small_model import TEXTS, tiny_small


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(TEXTS, vocab_size=300)


def _hybrid_model(tok) -> MolmoeModel:
    torch.manual_seed(0)
    return MolmoeModel(tiny_small(tokens=special_tokens_from(tok), vit_patch_stem="hybrid"),
                       experts_implementation="eager").eval()


def test_the_new_stem_learns_the_old_tokens_and_nothing_else_changes(tokenizer):
    model = _hybrid_model(tokenizer)
    logs: list[str] = []
    tc = StemTransplantConfig(steps=20, images=16, batch_size=8, lr=3e-3, warmup_steps=5, held_out=0.25)
    new, record = transplant_stem(model, tc, log=logs.append)
    assert isinstance(model.vision.patch_stem, CropConvStem) and isinstance(new.vision.patch_stem, FineCropConvStem)
    assert new.config == model.config.replace(vit_patch_stem="fine")
    assert carried_weights_equal(model, new)
    losses = [h["loss"] for h in record["history"]]
    assert losses[-1] < losses[0]  # the fit goes down
    assert 0.0 <= record["held_out_unexplained"] < 1.0  # better than predicting the old tokens' mean
    assert record["train_crops"] > 0 and record["held_out_crops"] > 0 and any("held-out" in m for m in logs)


def test_refuses_a_linear_stem_or_the_same_stem(tokenizer):
    model = _hybrid_model(tokenizer)
    with pytest.raises(ValueError, match="already"):
        transplant_stem(model, StemTransplantConfig(stem="hybrid", steps=1, images=10))
    torch.manual_seed(0)
    linear = MolmoeModel(tiny_small(tokens=special_tokens_from(tokenizer)), experts_implementation="eager")
    with pytest.raises(ValueError, match="linear"):
        transplant_stem(linear, StemTransplantConfig(steps=1, images=10))


def test_cli_writes_a_loadable_checkpoint_and_refuses_to_overwrite(tmp_path, tokenizer):
    src, out = tmp_path / "src", tmp_path / "new"
    model = _hybrid_model(tokenizer)
    save_molmoe_checkpoint(model, tokenizer, src, dtype=torch.float32)
    (src / "importance.json").write_text(json.dumps({"scores": [1.0] * 16}))
    assert cli.main(["--from", str(src), "--out", str(out), "--steps", "2", "--images", "10", "--batch-size", "4"]) == 0
    loaded, tok = load_molmoe_checkpoint(out)
    assert loaded.config.vit_patch_stem == "fine" and tok is not None
    assert isinstance(loaded.vision.patch_stem, FineCropConvStem)
    assert json.loads((out / "importance.json").read_text()) == {"scores": [1.0] * 16}
    assert json.loads((out / "transplant.json").read_text())["from_stem"] == "hybrid"
    # bf16 shards: the carried weights are the source's rounded to bf16
    src_bf16 = {k: v.to(torch.bfloat16).float() for k, v in model.state_dict().items()}
    assert all(torch.equal(src_bf16[k], v.float()) for k, v in loaded.state_dict().items() if ".patch_stem." not in k)
    with pytest.raises(SystemExit, match="not empty"):
        cli.main(["--from", str(src), "--out", str(out), "--steps", "1", "--images", "10"])
    with pytest.raises(SystemExit, match="not a checkpoint"):
        cli.main(["--from", str(tmp_path), "--out", str(tmp_path / "x")])
