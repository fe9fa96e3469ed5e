"""Stage (d): loading checkpoints in the public MolmoE-1B layout and transformers OLMoE dirs.

The tiny public-layout checkpoint is written by ``tests/tiny_molmoe.py`` from names and shapes of
the public remote code. The loaded model is compared with a reference forward written here
directly on the raw public tensors (fused QKV, per-expert SwiGLU, ``wte.embedding`` +
``wte.new_embedding``, linear patch embedding, mean-query pooling), not with the runtime's own
modules, so a wrong mapping fails.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model_runtime.molmoe.checkpoint import (
    CheckpointError,
    load_molmoe_checkpoint,
    load_olmoe_language_model,
    molmoe_with_language_model,
)
from model_runtime.molmoe.preprocessing import build_prompt, format_question
from tests.tiny_molmoe import tiny_config, tiny_olmoe_hf, write_tiny_molmoe_checkpoint
from tests.tiny_molmoe import torch_single_thread  # noqa: F401  (autouse fixture)

CFG = tiny_config()


# ---------------------------------------------------------------------------- reference forward
def _rms(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    dh = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, dh, 2, dtype=torch.float32) / dh)
    ang = torch.cat([pos[:, None] * inv, pos[:, None] * inv], dim=-1)
    rot = torch.cat([-x[..., dh // 2 :], x[..., : dh // 2]], dim=-1)
    return x * ang.cos() + rot * ang.sin()


def reference_lm_logits(t: dict[str, torch.Tensor], embeds: torch.Tensor) -> torch.Tensor:
    """(S, D) input embeddings → (S, E) logits, Molmo's block math on the public tensors."""
    s, d = embeds.shape
    h, dh = CFG.n_heads, CFG.d_model // CFG.n_heads
    pos = torch.arange(s, dtype=torch.float32)
    causal = torch.full((s, s), float("-inf")).triu(1)
    x = embeds
    for i in range(CFG.n_layers):
        b = f"model.transformer.blocks.{i}."
        a = _rms(x, t[b + "attn.attn_norm.weight"]) @ t[b + "attn.att_proj.weight"].T
        q, k, v = a[:, :d], a[:, d : 2 * d], a[:, 2 * d :]
        q, k = _rms(q, t[b + "attn.q_norm.weight"]), _rms(k, t[b + "attn.k_norm.weight"])
        q, k, v = (z.view(s, h, dh).transpose(0, 1) for z in (q, k, v))
        q, k = _rope(q, pos, CFG.rope_theta), _rope(k, pos, CFG.rope_theta)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(dh) + causal, dim=-1) @ v
        x = x + att.transpose(0, 1).reshape(s, d) @ t[b + "attn.attn_out.weight"].T
        y = _rms(x, t[b + "mlp.ff_norm.weight"])
        probs = torch.softmax(y @ t[b + "mlp.gate.weight"].T, dim=-1)
        top_w, top_i = probs.topk(CFG.top_k, dim=-1)  # no renormalisation
        out = torch.zeros_like(y)
        for e in range(CFG.num_experts):
            e_ = f"{b}mlp.experts.{e}."
            expert = (F.silu(y @ t[e_ + "gate_proj.weight"].T) * (y @ t[e_ + "up_proj.weight"].T)) @ t[e_ + "down_proj.weight"].T
            weight = (top_w * (top_i == e)).sum(-1, keepdim=True)
            out = out + weight * expert
        x = x + out
    return _rms(x, t["model.transformer.ln_f.weight"]) @ t["lm_head.weight"].T


def reference_image_features(t: dict[str, torch.Tensor], patches: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N, 576, 588) crops → (N, 144, D): Molmo's ViT, pad embeddings, mean-query pooling, projector."""
    vit, vb = "model.vision_backbone.image_vit.", "model.vision_backbone."
    n, ev = patches.shape[0], CFG.vit_hidden
    x = patches @ t[vit + "patch_embedding.weight"].T
    x = torch.cat([t[vit + "class_embedding"].expand(n, 1, ev), x], dim=1) + t[vit + "positional_embedding"]
    x = F.layer_norm(x, (ev,), t[vit + "pre_ln.weight"], t[vit + "pre_ln.bias"])
    hidden = []
    heads, hd = CFG.vit_heads, ev // CFG.vit_heads

    def mha(prefix: str, xq: torch.Tensor, xkv: torch.Tensor) -> torch.Tensor:
        q = (xq @ t[prefix + "wq.weight"].T + t[prefix + "wq.bias"]).view(xq.shape[0], xq.shape[1], heads, hd).transpose(1, 2)
        k = (xkv @ t[prefix + "wk.weight"].T + t[prefix + "wk.bias"]).view(xkv.shape[0], xkv.shape[1], heads, hd).transpose(1, 2)
        v = (xkv @ t[prefix + "wv.weight"].T + t[prefix + "wv.bias"]).view(xkv.shape[0], xkv.shape[1], heads, hd).transpose(1, 2)
        o = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1) @ v
        return o.transpose(1, 2).reshape(xq.shape[0], xq.shape[1], -1) @ t[prefix + "wo.weight"].T + t[prefix + "wo.bias"]

    for j in range(CFG.vit_num_layers):
        r = f"{vit}transformer.resblocks.{j}."
        y = F.layer_norm(x, (ev,), t[r + "attention_norm.weight"], t[r + "attention_norm.bias"])
        x = x + mha(r + "attention.", y, y)
        y = F.layer_norm(x, (ev,), t[r + "ffn_norm.weight"], t[r + "ffn_norm.bias"])
        y = y @ t[r + "feed_forward.w1.weight"].T + t[r + "feed_forward.w1.bias"]
        y = y * torch.sigmoid(1.702 * y)
        x = x + y @ t[r + "feed_forward.w2.weight"].T + t[r + "feed_forward.w2.bias"]
        hidden.append(x)
    feats = torch.cat([hidden[layer] for layer in CFG.vit_feature_layers], dim=-1)[:, 1:]
    pad = t[vb + "pad_embed"]
    feats = feats + pad[0] * (masks == 0)[..., None] + pad[1] * ((masks < 1) & (masks != 0))[..., None]
    win = feats.view(n, 12, 2, 12, 2, -1).permute(0, 1, 3, 2, 4, 5).reshape(n * 144, 4, -1)
    pooled = mha(vb + "image_pooling_2d.", win.mean(1, keepdim=True), win)[:, 0]
    p = vb + "image_projector."
    out = (F.silu(pooled @ t[p + "w1.weight"].T) * (pooled @ t[p + "w3.weight"].T)) @ t[p + "w2.weight"].T
    return out.view(n, 144, -1)


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("molmoe_tiny")
    tensors = write_tiny_molmoe_checkpoint(path, CFG, seed=3, n_shards=3)
    return path, tensors


@pytest.fixture(scope="module")
def loaded(checkpoint):
    model, tokenizer = load_molmoe_checkpoint(checkpoint[0])
    return model, tokenizer


# ---------------------------------------------------------------------------- tests
def test_config_and_tokenizer_come_from_the_checkpoint(checkpoint, loaded):
    model, tokenizer = loaded
    assert model.config.d_model == CFG.d_model and model.config.num_experts == CFG.num_experts
    assert model.config.vit_feature_layers == (-2, -9) and model.config.expert_hidden == CFG.expert_hidden
    assert model.config.tokens == CFG.tokens
    assert tokenizer.decode(tokenizer.encode(" User: what? Assistant:")) == " User: what? Assistant:"
    idx = json.loads((checkpoint[0] / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(idx.values())) == 3


@torch.no_grad()
def test_language_model_matches_reference_on_public_tensors(checkpoint, loaded):
    model, _ = loaded
    t = checkpoint[1]
    ids = torch.tensor([[CFG.tokens.bos, 5, 200, CFG.tokens.im_patch, 40, CFG.embedding_size + 3, 17, 99]])
    table = torch.cat([t["model.transformer.wte.embedding"], t["model.transformer.wte.new_embedding"]])
    ref = reference_lm_logits(t, table[ids[0]])
    ours = model.lm(ids)[0]
    assert ours.shape == (8, CFG.embedding_size)
    assert (ours - ref).abs().max().item() <= 1e-4


@torch.no_grad()
def test_full_model_matches_reference_on_an_image_prompt(checkpoint, loaded):
    model, tokenizer = loaded
    t = checkpoint[1]
    image = np.random.default_rng(0).integers(0, 256, (70, 50, 3), dtype=np.uint8)
    text = tokenizer.encode(format_question(model.config, "What is it?"))
    prompt = build_prompt(model.preprocessor(image, 12), text, CFG.tokens.bos)
    batch = model.collate([prompt])
    feats = reference_image_features(t, batch.patches, batch.image_masks)
    assert (model.image_features(batch.patches, batch.image_masks) - feats).abs().max().item() <= 1e-4
    table = torch.cat([t["model.transformer.wte.embedding"], t["model.transformer.wte.new_embedding"]])
    emb = table[batch.input_ids[0]].clone()
    idx = batch.image_input_idx
    emb.index_add_(0, idx[idx >= 0], feats[idx >= 0])
    ref = reference_lm_logits(t, emb)[-1]
    ours = model(batch)[0, -1]
    assert (ours - ref).abs().max().item() <= 1e-4


def test_missing_or_misshapen_tensors_are_reported(tmp_path, checkpoint):
    from safetensors.torch import load_file, save_file

    src, _ = checkpoint
    for f in src.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    shard = tmp_path / "model-00001-of-00003.safetensors"
    tensors = load_file(str(shard))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name][..., :1].contiguous()
    save_file(tensors, str(shard))
    with pytest.raises(CheckpointError, match="shape"):
        load_molmoe_checkpoint(tmp_path)
    (tmp_path / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_molmoe_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="config.json|safetensors"):
        load_molmoe_checkpoint(tmp_path / "nowhere")


@torch.no_grad()
def test_transformers_olmoe_directory_loads_as_the_language_model(tmp_path):
    hf = tiny_olmoe_hf(CFG, seed=4)
    hf.save_pretrained(tmp_path)
    lm = load_olmoe_language_model(tmp_path)
    ids = torch.randint(0, 250, (1, 20), generator=torch.Generator().manual_seed(0))
    assert (lm(ids) - hf(ids).logits).abs().max().item() <= 1e-4
    model = molmoe_with_language_model(CFG, lm)
    assert model.config.embedding_size == CFG.vocab_rows and model.lm is lm


def test_public_config_keys_give_molmoe_1b_and_unsupported_options_raise():
    from model_runtime.molmoe.config import MolmoeConfig
    from tests.tiny_molmoe import public_config_json

    full = MolmoeConfig()
    raw = public_config_json(full)
    assert MolmoeConfig.from_molmo_json(raw, tokens=full.tokens) == full
    assert (full.expert_hidden, full.projector_hidden, full.vit_feature_dim, full.tokens_per_crop) == (1024, 1024, 2048, 144)
    for key, value in (("block_type", "sequential"), ("use_cls_feature", True), ("image_pooling_2d", "attention_v2"),
                       ("norm_after", True)):
        with pytest.raises(ValueError, match=key):
            MolmoeConfig.from_molmo_json({**raw, key: value})
