"""Loading checkpoints: the public MolmoE-1B layout and transformers OLMoE ``save_pretrained`` dirs.

Public MolmoE-1B layout (``allenai/MolmoE-1B-0924``): ``config.json`` (keys of
``config_molmoe.MolmoConfig``), ``model.safetensors.index.json`` (``weight_map``: tensor name →
shard file) with ``model-0000k-of-0000n.safetensors`` shards (or one ``model.safetensors``),
``tokenizer.json``, optionally ``generation_config.json`` (``eos_token_id``). Tensor names are the
module paths of the public remote code (``modeling_molmoe.py``); the mapping to this runtime is:

=============================================================  ==================  ==================================================
public tensor (``model.`` prefix; i = block, e = expert,      shape               runtime parameter (``MolmoeModel``)
j = ViT layer)
=============================================================  ==================  ==================================================
transformer.wte.embedding                                      (E, D)              lm.backbone.embed_tokens.weight[:E]
transformer.wte.new_embedding                                  (A, D)              lm.backbone.embed_tokens.weight[E:]
transformer.blocks.i.attn.attn_norm.weight                     (D,)                lm.backbone.layers.i.input_layernorm.weight
transformer.blocks.i.attn.att_proj.weight (fused QKV)          (D+2·Hkv·Dh, D)     rows [:D] → self_attn.q_proj.weight, next Hkv·Dh →
                                                                                   k_proj.weight, last Hkv·Dh → v_proj.weight
transformer.blocks.i.attn.q_norm.weight / k_norm.weight        (D,) / (Hkv·Dh,)    self_attn.q_norm.weight / self_attn.k_norm.weight
transformer.blocks.i.attn.attn_out.weight                      (D, D)              self_attn.o_proj.weight
transformer.blocks.i.mlp.ff_norm.weight                        (D,)                post_attention_layernorm.weight
transformer.blocks.i.mlp.gate.weight (router)                  (X, D)              mlp.gate.weight
transformer.blocks.i.mlp.experts.e.gate_proj.weight            (F, D)              mlp.experts.gate_up_proj[e, :F]
transformer.blocks.i.mlp.experts.e.up_proj.weight              (F, D)              mlp.experts.gate_up_proj[e, F:]
transformer.blocks.i.mlp.experts.e.down_proj.weight            (D, F)              mlp.experts.down_proj[e]
transformer.ln_f.weight                                        (D,)                lm.backbone.norm.weight
lm_head.weight (no ``model.`` prefix)                          (E, D)              lm.lm_head.weight
vision_backbone.image_vit.class_embedding                      (Ev,)               vision.clip.embeddings.class_embedding
vision_backbone.image_vit.positional_embedding                 (1+P, Ev)           vision.clip.embeddings.position_embedding.weight
vision_backbone.image_vit.patch_embedding.weight (linear on    (Ev, p·p·3)         vision.clip.embeddings.patch_embedding.weight
  ``(dh dw c)`` patch vectors, no bias)                                            (Ev, 3, p, p) = w.view(Ev, p, p, 3).permute(0,3,1,2)
vision_backbone.image_vit.pre_ln.{weight,bias}                 (Ev,)               vision.clip.pre_layrnorm.{weight,bias}
...image_vit.transformer.resblocks.j.attention.w{q,k,v}.*      (Ev, Ev), (Ev,)     vision.clip.encoder.layers.j.self_attn.{q,k,v}_proj.*
...image_vit.transformer.resblocks.j.attention.wo.*            (Ev, Ev), (Ev,)     ...layers.j.self_attn.out_proj.*
...image_vit.transformer.resblocks.j.attention_norm.*          (Ev,)               ...layers.j.layer_norm1.*
...image_vit.transformer.resblocks.j.feed_forward.w1.*         (Fv, Ev), (Fv,)     ...layers.j.mlp.fc1.*
...image_vit.transformer.resblocks.j.feed_forward.w2.*         (Ev, Fv), (Ev,)     ...layers.j.mlp.fc2.*
...image_vit.transformer.resblocks.j.ffn_norm.*                (Ev,)               ...layers.j.layer_norm2.*
vision_backbone.image_pooling_2d.w{q,k,v}.{weight,bias}        (Ev, L·Ev), (Ev,)   connector.pooling.w{q,k,v}.*
vision_backbone.image_pooling_2d.wo.{weight,bias}              (Ev, Ev), (Ev,)     connector.pooling.wo.*
vision_backbone.image_projector.w1/w3.weight                   (Fp, Ev)            connector.projector.w1/w3.weight
vision_backbone.image_projector.w2.weight                      (D, Fp)             connector.projector.w2.weight
vision_backbone.pad_embed                                      (2, L·Ev)           connector.pad_embed
vision_backbone.image_feature_norm.{weight,bias}               (L·Ev,)             connector.feature_norm.* (small model)
vision_backbone.image_token_norm.weight                        (D,)                connector.token_norm.weight (option)
...image_vit.patch_stem.net.i.{weight,bias}                    conv kernels        vision.patch_stem.net.i.* (option)
=============================================================  ==================  ==================================================

E = ``embedding_size`` (50304), A = ``additional_vocab_size`` (128), D = ``d_model`` (2048),
Hkv·Dh = D for MolmoE-1B, X = experts (64), F = expert FFN (1024), Ev = ViT width (1024), Fv =
ViT MLP (4096), P = patches per crop (576), L = ViT feature layers (2), Fp = projector hidden
(1024). CLIP's ``post_layernorm`` has no counterpart (Molmo reads hidden states) and stays at
identity; :class:`MolmoeVisionTower` never applies it. Names without the ``attn.`` / ``mlp.``
level inside a block (``blocks.i.att_proj.weight``, ``blocks.i.ff_norm.weight``, the layout of
Molmo's training code) are accepted as aliases.

transformers OLMoE directories (``OlmoeForCausalLM.save_pretrained``) load through
``from_pretrained`` as the language model (:func:`load_olmoe_language_model`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from .config import MolmoeConfig, SpecialTokens
from .connector import MolmoeConnector
from .language_model import MolmoeLanguageModel, default_experts_implementation
from .model import MolmoeModel
from .tokenizer import TextTokenizer, special_tokens_from
from .vision import MolmoeVisionTower, patch_stem_for

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

_ALIASES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^(model\.transformer\.blocks\.\d+\.)(att_proj|attn_out|attn_norm|q_norm|k_norm)\."), r"\1attn.\2."),
    (re.compile(r"^(model\.transformer\.blocks\.\d+\.)(ff_norm)\."), r"\1mlp.\2."),
)


class CheckpointError(ValueError):
    """A checkpoint directory is missing files or tensors, or has tensors of the wrong shape."""


# ---------------------------------------------------------------------------- reading tensors
def _canonical(name: str) -> str:
    for pattern, repl in _ALIASES:
        name = pattern.sub(repl, name)
    return name


def checkpoint_tensor_files(path: Path) -> dict[str, Path]:
    """Tensor name (canonical) → shard file, from the index json or a single ``model.safetensors``."""
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index ({exc})") from exc
        files = {_canonical(k): path / v for k, v in weight_map.items()}
        for f in set(files.values()):
            if not f.is_file():
                raise CheckpointError(f"{index} names shard {f.name}, which is missing")
        return files
    single = path / SINGLE_FILE
    if single.is_file():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as f:
            return {_canonical(k): single for k in f.keys()}
    raise CheckpointError(f"{path}: neither {INDEX_FILE} nor {SINGLE_FILE} found")


class _TensorReader:
    """Reads named tensors from safetensors shards, one open handle per shard."""

    def __init__(self, files: Mapping[str, Path]) -> None:
        self.files = dict(files)
        self._handles: dict[Path, Any] = {}
        self._original: dict[str, str] = {}
        self.used: set[str] = set()

    def _handle(self, f: Path) -> Any:
        if f not in self._handles:
            from safetensors import safe_open

            handle = safe_open(str(f), framework="pt")
            self._handles[f] = handle
            for k in handle.keys():
                self._original[_canonical(k)] = k
        return self._handles[f]

    def get(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in self.files:
            raise CheckpointError(f"checkpoint has no tensor {name!r}")
        handle = self._handle(self.files[name])
        t = handle.get_tensor(self._original.get(name, name))
        if tuple(t.shape) != tuple(shape):
            raise CheckpointError(f"tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        self.used.add(name)
        return t

    def unused(self) -> list[str]:
        return sorted(set(self.files) - self.used)


# ---------------------------------------------------------------------------- the mapping
def _molmo_tensors(cfg: MolmoeConfig, read: _TensorReader) -> Iterator[tuple[str, torch.Tensor]]:
    """(runtime state-dict key, tensor) pairs from the public layout; see the module table."""
    d, hd = cfg.d_model, cfg.kv_heads * cfg.head_dim
    f, x = cfg.expert_hidden, cfg.num_experts
    t = "model.transformer."
    yield "lm.backbone.embed_tokens.weight", torch.cat(
        [read.get(t + "wte.embedding", (cfg.embedding_size, d)), read.get(t + "wte.new_embedding", (cfg.additional_vocab_size, d))]
    ) if cfg.additional_vocab_size else read.get(t + "wte.embedding", (cfg.embedding_size, d))
    for i in range(cfg.n_layers):
        b, r = f"{t}blocks.{i}.", f"lm.backbone.layers.{i}."
        q, k, v = read.get(b + "attn.att_proj.weight", (d + 2 * hd, d)).split([d, hd, hd], dim=0)
        yield r + "self_attn.q_proj.weight", q
        yield r + "self_attn.k_proj.weight", k
        yield r + "self_attn.v_proj.weight", v
        yield r + "self_attn.o_proj.weight", read.get(b + "attn.attn_out.weight", (d, d))
        yield r + "self_attn.q_norm.weight", read.get(b + "attn.q_norm.weight", (d,))
        yield r + "self_attn.k_norm.weight", read.get(b + "attn.k_norm.weight", (hd,))
        yield r + "input_layernorm.weight", read.get(b + "attn.attn_norm.weight", (d,))
        yield r + "post_attention_layernorm.weight", read.get(b + "mlp.ff_norm.weight", (d,))
        yield r + "mlp.gate.weight", read.get(b + "mlp.gate.weight", (x, d))
        e = b + "mlp.experts."
        yield r + "mlp.experts.gate_up_proj", torch.stack(
            [torch.cat([read.get(f"{e}{j}.gate_proj.weight", (f, d)), read.get(f"{e}{j}.up_proj.weight", (f, d))]) for j in range(x)]
        )
        yield r + "mlp.experts.down_proj", torch.stack([read.get(f"{e}{j}.down_proj.weight", (d, f)) for j in range(x)])
    yield "lm.backbone.norm.weight", read.get(t + "ln_f.weight", (d,))
    yield "lm.lm_head.weight", read.get("lm_head.weight", (cfg.embedding_size, d))

    ev, p = cfg.vit_hidden, cfg.patch_size
    vb, vit, c = "model.vision_backbone.", "model.vision_backbone.image_vit.", "vision.clip."
    yield c + "embeddings.class_embedding", read.get(vit + "class_embedding", (ev,))
    yield c + "embeddings.position_embedding.weight", read.get(vit + "positional_embedding", (cfg.patches_per_crop + 1, ev))
    w = read.get(vit + "patch_embedding.weight", (ev, cfg.pixels_per_patch))
    yield c + "embeddings.patch_embedding.weight", w.view(ev, p, p, 3).permute(0, 3, 1, 2).contiguous()
    for name in ("weight", "bias"):
        yield c + f"pre_layrnorm.{name}", read.get(vit + f"pre_ln.{name}", (ev,))
    vit_map = {
        "attention.wq": ("self_attn.q_proj", (ev, ev)),
        "attention.wk": ("self_attn.k_proj", (ev, ev)),
        "attention.wv": ("self_attn.v_proj", (ev, ev)),
        "attention.wo": ("self_attn.out_proj", (ev, ev)),
        "feed_forward.w1": ("mlp.fc1", (cfg.vit_mlp, ev)),
        "feed_forward.w2": ("mlp.fc2", (ev, cfg.vit_mlp)),
        "attention_norm": ("layer_norm1", None),
        "ffn_norm": ("layer_norm2", None),
    }
    for j in range(cfg.vit_num_layers):
        src, dst = f"{vit}transformer.resblocks.{j}.", f"{c}encoder.layers.{j}."
        for theirs, (ours, wshape) in vit_map.items():
            out_dim = ev if wshape is None else wshape[0]
            yield dst + ours + ".weight", read.get(src + theirs + ".weight", (out_dim,) if wshape is None else wshape)
            yield dst + ours + ".bias", read.get(src + theirs + ".bias", (out_dim,))
    # the CLIP post-layernorm has no Molmo tensor; identity keeps the state dict complete
    yield c + "post_layernorm.weight", torch.ones(ev)
    yield c + "post_layernorm.bias", torch.zeros(ev)

    lf, inner = cfg.vit_feature_dim, cfg.pool_heads * cfg.pool_head_dim
    for name, shape in (("wq", (inner, lf)), ("wk", (inner, lf)), ("wv", (inner, lf)), ("wo", (ev, inner))):
        yield f"connector.pooling.{name}.weight", read.get(f"{vb}image_pooling_2d.{name}.weight", shape)
        yield f"connector.pooling.{name}.bias", read.get(f"{vb}image_pooling_2d.{name}.bias", (shape[0],))
    fp = cfg.projector_hidden
    for name, shape in (("w1", (fp, ev)), ("w3", (fp, ev)), ("w2", (d, fp))):
        yield f"connector.projector.{name}.weight", read.get(f"{vb}image_projector.{name}.weight", shape)
    if cfg.image_padding_embed:
        yield "connector.pad_embed", read.get(vb + "pad_embed", (2, lf))
    if cfg.vit_feature_norm:
        yield "connector.feature_norm.weight", read.get(vb + "image_feature_norm.weight", (lf,))
        yield "connector.feature_norm.bias", read.get(vb + "image_feature_norm.bias", (lf,))
    if cfg.image_token_norm:
        yield "connector.token_norm.weight", read.get(vb + "image_token_norm.weight", (d,))
    stem = patch_stem_for(cfg)
    for name, t in ({} if stem is None else stem.state_dict()).items():
        yield f"vision.patch_stem.{name}", read.get(f"{vit}patch_stem.{name}", tuple(t.shape))


def _reset_buffers(model: MolmoeModel) -> None:
    """Recompute the non-persistent buffers that ``to_empty`` left uninitialised."""
    from transformers.models.olmoe.modeling_olmoe import OlmoeRotaryEmbedding

    dev = model.device
    model.lm.backbone.rotary_emb = OlmoeRotaryEmbedding(model.lm.backbone.config).to(dev)
    emb = model.vision.clip.embeddings
    emb.position_ids = torch.arange(emb.num_positions, device=dev).expand((1, -1))


# ---------------------------------------------------------------------------- public entry points
def read_molmo_config(path: str | Path, tokenizer: TextTokenizer | None = None) -> MolmoeConfig:
    """:class:`MolmoeConfig` of a public-layout checkpoint dir (special ids from its tokenizer)."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path}: no config.json")
    raw = json.loads(cfg_file.read_text())
    tokens: SpecialTokens | None = None
    if tokenizer is None and (path / "tokenizer.json").is_file():
        tokenizer = TextTokenizer.from_file(path / "tokenizer.json")
    if tokenizer is not None:
        eos = None
        gen = path / "generation_config.json"
        if gen.is_file():
            eos = json.loads(gen.read_text()).get("eos_token_id")
        tokens = special_tokens_from(tokenizer, eos_token_id=eos, pad_token_id=raw.get("pad_token_id"))
    return MolmoeConfig.from_molmo_json(raw, tokens=tokens)


def load_molmoe_checkpoint(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    experts_implementation: str | None = None,
    strict: bool = True,
) -> tuple[MolmoeModel, TextTokenizer | None]:
    """Load a public-layout MolmoE checkpoint directory.

    ``experts_implementation`` (transformers': eager / grouped_mm / batched_mm) defaults to
    :func:`~.language_model.default_experts_implementation` of ``device``. Modules are built
    on the meta device and materialised directly in ``dtype`` on ``device`` (no random
    initialisation of 7 B parameters).

    Returns:
        (model in eval mode, its tokenizer or None when the dir has no tokenizer.json).

    Raises:
        CheckpointError: missing files or tensors, wrong shapes, or (``strict``) tensors the
            mapping does not use.
    """
    path = Path(path)
    tokenizer = TextTokenizer.from_file(path / "tokenizer.json") if (path / "tokenizer.json").is_file() else None
    cfg = read_molmo_config(path, tokenizer)
    reader = _TensorReader(checkpoint_tensor_files(path))
    if experts_implementation is None:
        experts_implementation = default_experts_implementation(device)
    with torch.device("meta"):
        model = MolmoeModel(cfg, experts_implementation=experts_implementation)
    model = model.to(dtype).to_empty(device=device)
    state = dict(_molmo_tensors(cfg, reader))
    if strict and reader.unused():
        raise CheckpointError(f"{path}: tensors not mapped by the runtime: {reader.unused()[:10]}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"state dict mismatch: missing {missing[:10]}, unexpected {unexpected[:10]}")
    _reset_buffers(model)
    return model.eval(), tokenizer


def load_olmoe_language_model(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    experts_implementation: str | None = None,
) -> MolmoeLanguageModel:
    """A transformers OLMoE directory (``OlmoeForCausalLM.save_pretrained``) as the language model."""
    from transformers import OlmoeForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: no config.json")
    if experts_implementation is None:
        experts_implementation = default_experts_implementation(device)
    hf = OlmoeForCausalLM.from_pretrained(str(path), dtype=dtype, experts_implementation=experts_implementation)
    return MolmoeLanguageModel.from_hf(hf.to(device).eval())


def molmoe_with_language_model(config: MolmoeConfig, lm: MolmoeLanguageModel, *, vision: MolmoeVisionTower | None = None,
                               connector: MolmoeConnector | None = None) -> MolmoeModel:
    """A MolmoE model around an existing language model (e.g. from :func:`load_olmoe_language_model`).

    The config's LM sizes are taken from the language model; vision/connector are random when
    not given (their ``d_model`` follows the LM).
    """
    lm_cfg = lm.config
    cfg = config.replace(
        d_model=lm.d_model, n_layers=lm.n_layers, n_heads=int(lm_cfg.num_attention_heads),
        n_kv_heads=int(lm_cfg.num_key_value_heads), num_experts=lm.num_experts, top_k=lm.max_top_k,
        expert_hidden=int(lm_cfg.intermediate_size), embedding_size=lm.n_logits,
        additional_vocab_size=int(lm.backbone.embed_tokens.num_embeddings) - lm.n_logits,
    )
    return MolmoeModel(cfg, vision=vision, connector=connector, lm=lm)



# ---------------------------------------------------------------------------- writing
def _public_tensors(model: MolmoeModel) -> Iterator[tuple[str, torch.Tensor]]:
    """(public tensor name, tensor) pairs of a runtime model: the inverse of :func:`_molmo_tensors`."""
    cfg, sd = model.config, model.state_dict()
    d, x = cfg.d_model, cfg.num_experts
    f = cfg.expert_hidden
    t = "model.transformer."
    emb = sd["lm.backbone.embed_tokens.weight"]
    yield t + "wte.embedding", emb[: cfg.embedding_size]
    if cfg.additional_vocab_size:
        yield t + "wte.new_embedding", emb[cfg.embedding_size :]
    for i in range(cfg.n_layers):
        b, r = f"{t}blocks.{i}.", f"lm.backbone.layers.{i}."
        yield b + "attn.att_proj.weight", torch.cat(
            [sd[r + "self_attn.q_proj.weight"], sd[r + "self_attn.k_proj.weight"], sd[r + "self_attn.v_proj.weight"]])
        yield b + "attn.attn_out.weight", sd[r + "self_attn.o_proj.weight"]
        yield b + "attn.q_norm.weight", sd[r + "self_attn.q_norm.weight"]
        yield b + "attn.k_norm.weight", sd[r + "self_attn.k_norm.weight"]
        yield b + "attn.attn_norm.weight", sd[r + "input_layernorm.weight"]
        yield b + "mlp.ff_norm.weight", sd[r + "post_attention_layernorm.weight"]
        yield b + "mlp.gate.weight", sd[r + "mlp.gate.weight"]
        gate_up, down = sd[r + "mlp.experts.gate_up_proj"], sd[r + "mlp.experts.down_proj"]
        if tuple(gate_up.shape) != (x, 2 * f, d) or tuple(down.shape) != (x, d, f):
            raise CheckpointError(f"block {i}: expert tensors of shape {tuple(gate_up.shape)}/{tuple(down.shape)} "
                                  "are not transformers' (experts, 2F, D)/(experts, D, F) layout")
        for j in range(x):
            e = f"{b}mlp.experts.{j}."
            yield e + "gate_proj.weight", gate_up[j, :f]
            yield e + "up_proj.weight", gate_up[j, f:]
            yield e + "down_proj.weight", down[j]
    yield t + "ln_f.weight", sd["lm.backbone.norm.weight"]
    yield "lm_head.weight", sd["lm.lm_head.weight"]

    ev = cfg.vit_hidden
    vb, vit, c = "model.vision_backbone.", "model.vision_backbone.image_vit.", "vision.clip."
    yield vit + "class_embedding", sd[c + "embeddings.class_embedding"]
    yield vit + "positional_embedding", sd[c + "embeddings.position_embedding.weight"]
    yield vit + "patch_embedding.weight", sd[c + "embeddings.patch_embedding.weight"].permute(0, 2, 3, 1).reshape(ev, -1)
    for name in ("weight", "bias"):
        yield vit + f"pre_ln.{name}", sd[c + f"pre_layrnorm.{name}"]
    vit_map = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
               "attention.wo": "self_attn.out_proj", "feed_forward.w1": "mlp.fc1", "feed_forward.w2": "mlp.fc2",
               "attention_norm": "layer_norm1", "ffn_norm": "layer_norm2"}
    for j in range(cfg.vit_num_layers):
        src, dst = f"{vit}transformer.resblocks.{j}.", f"{c}encoder.layers.{j}."
        for theirs, ours in vit_map.items():
            for name in ("weight", "bias"):
                yield src + theirs + f".{name}", sd[dst + ours + f".{name}"]
    for name in ("wq", "wk", "wv", "wo"):
        for part in ("weight", "bias"):
            yield f"{vb}image_pooling_2d.{name}.{part}", sd[f"connector.pooling.{name}.{part}"]
    for name in ("w1", "w3", "w2"):
        yield f"{vb}image_projector.{name}.weight", sd[f"connector.projector.{name}.weight"]
    if cfg.image_padding_embed:
        yield vb + "pad_embed", sd["connector.pad_embed"]
    if cfg.vit_feature_norm:
        for part in ("weight", "bias"):
            yield f"{vb}image_feature_norm.{part}", sd[f"connector.feature_norm.{part}"]
    if cfg.image_token_norm:
        yield f"{vb}image_token_norm.weight", sd["connector.token_norm.weight"]
    for name in sd:
        if name.startswith("vision.patch_stem."):
            yield f"{vit}{name[len('vision.'):]}", sd[name]


def save_molmoe_checkpoint(
    model: MolmoeModel,
    tokenizer: TextTokenizer,
    path: str | Path,
    *,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_bytes: int = 15 * 2**20,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``model`` in the public MolmoE-1B layout that :func:`load_molmoe_checkpoint` reads.

    Tensors are stored in ``dtype`` in safetensors shards of at most ``max_shard_bytes`` (plus
    ``model.safetensors.index.json``), with ``config.json`` (:meth:`MolmoeConfig.to_molmo_json`),
    ``generation_config.json`` (EOS / pad ids) and ``tokenizer.json``. Existing shard files in
    ``path`` are replaced; other files (importance scores, training logs) are left alone.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to("cpu", dtype).contiguous() for name, t in _public_tensors(model)}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    for old in path.glob("model-*-of-*.safetensors"):
        old.unlink()
    weight_map: dict[str, str] = {}
    meta = {"format": "pt", **{str(k): str(v) for k, v in (metadata or {}).items()}}
    for k, chunk in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(chunk, str(path / name), metadata=meta)
        weight_map.update({n: name for n in chunk})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (path / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    (path / "config.json").write_text(json.dumps(model.config.to_molmo_json(), indent=1))
    tk = model.config.tokens
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": tk.eos, "pad_token_id": tk.pad}))
    tokenizer.save(path / "tokenizer.json")
    return path
