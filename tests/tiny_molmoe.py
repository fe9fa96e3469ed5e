"""Fixture builders for the MolmoE runtime tests: tiny configs, tiny checkpoints in the public
MolmoE-1B naming scheme, a byte-level tokenizer, and a tiny JSONL dataset of generated images.

The checkpoint writer is deliberately independent of ``model_runtime.molmoe.checkpoint``: tensor
names and shapes below are derived from the public remote code (``modeling_molmoe.py``:
``MolmoModel.transformer`` = {wte: Embedding(embedding, new_embedding), blocks[i]: {attn:
{att_proj, attn_out, attn_norm, q_norm, k_norm}, mlp: {gate, experts[e]: {gate_proj, up_proj,
down_proj}, ff_norm}}, ln_f}, ``lm_head``; ``vision_backbone`` = {image_vit: {class_embedding,
positional_embedding, patch_embedding, pre_ln, transformer.resblocks[j]: {attention: {wq, wk,
wv, wo}, feed_forward: {w1, w2}, attention_norm, ffn_norm}}, image_pooling_2d: {wq, wk, wv,
wo}, image_projector: {w1, w2, w3}, pad_embed}), so that loading them tests the runtime's
mapping rather than its inverse. Everything here is synthetic.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from typing import Iterator

import numpy as np
import pytest
import torch

from model_runtime.molmoe.config import MolmoeConfig


@pytest.fixture(autouse=True, scope="module")
def torch_single_thread() -> Iterator[None]:
    """Run a test module's tiny-model work on one intra-op thread, restoring the count after.

    The tensors here are tiny, so thread synchronisation dominates; on a shared 2-core machine a
    descheduled OpenMP sibling made the runtime tests ~10x slower with 2 threads (16 s vs 180 s
    for all runtime tests, measured). Import this fixture into a test module to use it.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)

#: Tiny byte-level tokenizer: 256 byte symbols (ids 0..255), then these added tokens.
TINY_ADDED_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<|padding|>", "<im_start>", "<im_end>", "<im_patch>", "<im_col>", "<|image|>",
)


def tiny_config(**overrides: object) -> MolmoeConfig:
    """MolmoE at tiny widths (its special ids match :func:`write_tiny_tokenizer`)."""
    return MolmoeConfig.tiny(**overrides)


# ---------------------------------------------------------------------------- tokenizer
def tiny_tokenizer():
    """A byte-level BPE ``tokenizers.Tokenizer`` without merges: one id per byte + added tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda ch: ord(ch))
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(TINY_ADDED_TOKENS))
    return tok


def write_tiny_tokenizer(path: Path) -> Path:
    out = Path(path) / "tokenizer.json"
    tiny_tokenizer().save(str(out))
    return out


# ---------------------------------------------------------------------------- public checkpoint
def public_tensor_shapes(cfg: MolmoeConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a public-layout MolmoE checkpoint with its shape, for ``cfg``'s sizes."""
    d, e, f = cfg.d_model, cfg.num_experts, cfg.expert_hidden
    shapes: dict[str, tuple[int, ...]] = {
        "model.transformer.wte.embedding": (cfg.embedding_size, d),
        "model.transformer.wte.new_embedding": (cfg.additional_vocab_size, d),
        "model.transformer.ln_f.weight": (d,),
        "lm_head.weight": (cfg.embedding_size, d),
    }
    for i in range(cfg.n_layers):
        b = f"model.transformer.blocks.{i}."
        shapes[b + "attn.att_proj.weight"] = (3 * d, d)
        shapes[b + "attn.attn_out.weight"] = (d, d)
        for n in ("attn_norm", "q_norm", "k_norm"):
            shapes[b + f"attn.{n}.weight"] = (d,)
        shapes[b + "mlp.gate.weight"] = (e, d)
        shapes[b + "mlp.ff_norm.weight"] = (d,)
        for j in range(e):
            shapes[b + f"mlp.experts.{j}.gate_proj.weight"] = (f, d)
            shapes[b + f"mlp.experts.{j}.up_proj.weight"] = (f, d)
            shapes[b + f"mlp.experts.{j}.down_proj.weight"] = (d, f)
    ev, lf = cfg.vit_hidden, cfg.vit_hidden * len(cfg.vit_feature_layers)
    vit = "model.vision_backbone.image_vit."
    shapes[vit + "class_embedding"] = (ev,)
    shapes[vit + "positional_embedding"] = ((cfg.image_size // cfg.patch_size) ** 2 + 1, ev)
    shapes[vit + "patch_embedding.weight"] = (ev, cfg.patch_size * cfg.patch_size * 3)
    shapes[vit + "pre_ln.weight"] = (ev,)
    shapes[vit + "pre_ln.bias"] = (ev,)
    for j in range(cfg.vit_num_layers):
        r = f"{vit}transformer.resblocks.{j}."
        for n in ("wq", "wk", "wv", "wo"):
            shapes[r + f"attention.{n}.weight"] = (ev, ev)
            shapes[r + f"attention.{n}.bias"] = (ev,)
        shapes[r + "feed_forward.w1.weight"] = (cfg.vit_mlp, ev)
        shapes[r + "feed_forward.w1.bias"] = (cfg.vit_mlp,)
        shapes[r + "feed_forward.w2.weight"] = (ev, cfg.vit_mlp)
        shapes[r + "feed_forward.w2.bias"] = (ev,)
        for n in ("attention_norm", "ffn_norm"):
            shapes[r + f"{n}.weight"] = (ev,)
            shapes[r + f"{n}.bias"] = (ev,)
    vb = "model.vision_backbone."
    for n in ("wq", "wk", "wv"):
        shapes[vb + f"image_pooling_2d.{n}.weight"] = (ev, lf)
        shapes[vb + f"image_pooling_2d.{n}.bias"] = (ev,)
    shapes[vb + "image_pooling_2d.wo.weight"] = (ev, ev)
    shapes[vb + "image_pooling_2d.wo.bias"] = (ev,)
    hidden = cfg.projector_hidden
    shapes[vb + "image_projector.w1.weight"] = (hidden, ev)
    shapes[vb + "image_projector.w3.weight"] = (hidden, ev)
    shapes[vb + "image_projector.w2.weight"] = (d, hidden)
    shapes[vb + "pad_embed"] = (2, lf)
    return shapes


def random_public_tensors(cfg: MolmoeConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Synthetic float32 weights for every public tensor, scaled so activations stay O(1) and
    routing is far from uniform (norm weights around 1, biases small, embeddings N(0, 1))."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, shape in public_tensor_shapes(cfg).items():
        if name.endswith(("norm.weight", "pre_ln.weight")):
            t = 1.0 + 0.2 * torch.rand(shape, generator=gen) - 0.1
        elif name.endswith(".bias") or name.endswith("pad_embed"):
            t = 0.1 * torch.randn(shape, generator=gen)
        elif "wte." in name or name.endswith(("class_embedding", "positional_embedding")):
            t = torch.randn(shape, generator=gen) * (1.0 if "wte." in name else 0.5)
        elif name.endswith("mlp.gate.weight"):
            t = 3.0 * torch.randn(shape, generator=gen) / math.sqrt(shape[1])
        else:
            t = torch.randn(shape, generator=gen) / math.sqrt(shape[-1])
        out[name] = t.float()
    return out


def public_config_json(cfg: MolmoeConfig) -> dict:
    """``config.json`` of a public-layout checkpoint with ``cfg``'s sizes (public key names)."""
    return {
        "architectures": ["OLMoForCausalLM"], "model_type": "molmo", "activation_type": "swiglu",
        "additional_vocab_size": cfg.additional_vocab_size, "attention_layer_norm": True,
        "attention_type": "sdpa", "bias_for_layer_norm": False, "block_type": "moe", "clip_qkv": None,
        "crop_mode": "overlap-and-resize-c2", "d_model": cfg.d_model, "embedding_size": cfg.embedding_size,
        "image_padding_embed": "pad_and_partial_pad", "image_pooling_2d": "attention-meanq",
        "image_pooling_h": 2, "image_pooling_w": 2, "image_projector": "mlp", "include_bias": False,
        "layer_norm_eps": 1e-5, "layer_norm_type": "rms", "max_crops": cfg.max_crops,
        "max_position_embeddings": cfg.max_position_embeddings, "mlp_hidden_size": None,
        "mlp_ratio": 2 * cfg.expert_hidden // cfg.d_model, "moe_num_experts": cfg.num_experts,
        "moe_top_k": cfg.top_k, "n_heads": cfg.n_heads, "n_kv_heads": None, "n_layers": cfg.n_layers,
        "norm_after": False, "overlap_margins": list(cfg.overlap_margins), "pad_token_id": cfg.tokens.pad,
        "qkv_bias": False, "rope": True, "rope_impl": "llama", "rope_theta": cfg.rope_theta,
        "use_cls_feature": False, "use_position_ids": True, "vit_layers": list(cfg.vit_feature_layers),
        "vocab_size": 256 + len(TINY_ADDED_TOKENS), "weight_tying": False,
        "vision_backbone": {
            "image_default_input_size": [cfg.image_size, cfg.image_size], "image_emb_dim": cfg.vit_hidden,
            "image_head_dim": cfg.vit_hidden // cfg.vit_heads, "image_mlp_activations": "quick_gelu",
            "image_mlp_dim": cfg.vit_mlp, "image_model_type": "openai", "image_norm_eps": 1e-5,
            "image_num_heads": cfg.vit_heads, "image_num_key_value_heads": cfg.vit_heads,
            "image_num_layers": cfg.vit_num_layers, "image_num_pos": (cfg.image_size // cfg.patch_size) ** 2 + 1,
            "image_patch_size": cfg.patch_size,
        },
    }


def write_tiny_molmoe_checkpoint(path: Path, cfg: MolmoeConfig | None = None, *, seed: int = 0, n_shards: int = 2) -> dict[str, torch.Tensor]:
    """Write a synthetic public-layout checkpoint (shards + index + config + tokenizer); return its tensors."""
    from safetensors.torch import save_file

    cfg = tiny_config() if cfg is None else cfg
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = random_public_tensors(cfg, seed)
    names = list(tensors)
    weight_map: dict[str, str] = {}
    per = math.ceil(len(names) / n_shards)
    for k in range(n_shards):
        shard = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        chunk = {n: tensors[n].contiguous() for n in names[k * per : (k + 1) * per]}
        save_file(chunk, str(path / shard), metadata={"format": "pt", "synthetic": "true"})
        weight_map.update({n: shard for n in chunk})
    total = sum(t.numel() * 4 for t in tensors.values())
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps(public_config_json(cfg), indent=1))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": cfg.tokens.eos, "pad_token_id": cfg.tokens.pad}))
    write_tiny_tokenizer(path)
    return tensors


# ---------------------------------------------------------------------------- dataset
_COLORS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 220, 40)}
#: (h, w) per request index: the first three need the fewest crops (2 crops, 316 image tokens).
_SIZES = ((48, 64), (120, 120), (90, 200), (300, 900), (500, 260), (640, 480))


def write_tiny_dataset(path: Path, n: int = 6, *, seed: int = 0) -> Path:
    """Synthetic VQA set: PNG images of a coloured rectangle on grey, "What color is the shape?".

    Writes ``images/*.png`` and ``data.jsonl`` in the project's request format
    (``model_runtime.datasets.request_format``; dataset ``vqav2`` so that the prompt template
    and the ``vqa_score`` metric apply, ids ``synthetic-*``, ``meta.synthetic = true``) under
    ``path``; returns the JSONL path.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    path = Path(path)
    (path / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    names = sorted(_COLORS)
    for i in range(n):
        h, w = _SIZES[i % len(_SIZES)]
        color = names[int(rng.integers(len(names)))]
        arr = np.full((h, w, 3), 128, dtype=np.uint8)
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        arr[y0 : y0 + h // 3 + 1, x0 : x0 + w // 3 + 1] = _COLORS[color]
        arr = np.clip(arr.astype(np.int16) + rng.integers(-10, 11, arr.shape), 0, 255).astype(np.uint8)
        rel = f"images/{i:03d}.png"
        Image.fromarray(arr).save(path / rel)
        lines.append({
            "id": f"synthetic-{i:03d}", "image": rel, "question": "What color is the shape?",
            "answers": [color] * 10, "metric": "vqa_score", "dataset": "vqav2", "split": "val",
            "meta": {"synthetic": True},
        })
    out = path / "data.jsonl"
    out.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return out


# ---------------------------------------------------------------------------- transformers OLMoE
def tiny_olmoe_hf(cfg: MolmoeConfig | None = None, *, seed: int = 0, experts_implementation: str = "eager"):
    """A transformers ``OlmoeForCausalLM`` of ``cfg``'s LM sizes with O(1)-scaled synthetic weights."""
    from transformers import OlmoeForCausalLM

    cfg = tiny_config() if cfg is None else cfg
    torch.manual_seed(seed)
    model = OlmoeForCausalLM(cfg.olmoe_config(experts_implementation=experts_implementation)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.rand(p.shape, generator=gen) - 0.1)
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            elif name.endswith("gate.weight"):
                p.copy_(3.0 * torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
    return model


def pruned_hf_copy(model, top_k_per_block):
    """A deep copy of an ``OlmoeForCausalLM`` with ``mlp.gate.top_k`` set per block and the blocks
    with top-k 0 removed (remaining attention layers renumbered for transformers' cache)."""
    import copy

    pruned = copy.deepcopy(model)
    keep = [i for i, k in enumerate(top_k_per_block) if k > 0]
    for i, layer in enumerate(pruned.model.layers):
        layer.mlp.gate.top_k = max(int(top_k_per_block[i]), 1)
    pruned.model.layers = torch.nn.ModuleList([pruned.model.layers[i] for i in keep])
    for j, layer in enumerate(pruned.model.layers):
        layer.self_attn.layer_idx = j
    pruned.config.num_hidden_layers = len(keep)
    return pruned


def left_padded_ids(lengths: tuple[int, ...], seed: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, max(lengths)) random token ids (< 250) left-padded with ``pad``, and their (B, S) mask."""
    g = torch.Generator().manual_seed(seed)
    seq = max(lengths)
    ids = torch.full((len(lengths), seq), pad)
    mask = torch.zeros(len(lengths), seq, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, seq - n:] = torch.randint(0, 250, (n,), generator=g)
        mask[i, seq - n:] = 1
    return ids, mask


def prefilled_static_cache(lm, fused, plan, ids: torch.Tensor, mask: torch.Tensor, max_len: int = 16):
    """A prompt prefilled through ``fused`` into a fresh static cache sized for a plan (one row per
    prompt), ready to decode: (cache, the first greedy token per row). The decode step under test
    then runs from the same state whichever prefill ops filled it."""
    from model_runtime.molmoe.static_decode import StaticKVCache

    cache = StaticKVCache.for_plan(lm, plan, batch=ids.shape[0], max_len=max_len)
    lm.fused = fused
    st = lm.begin(lm.embed(ids), mask, cache=cache)
    lm.advance(st, lm.n_layers, plan)
    lm.fused = None
    cache.start_decode(mask)
    return cache, lm.logits(st).argmax(-1)
