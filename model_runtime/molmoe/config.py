"""Configuration of the MolmoE runtime: one frozen dataclass for the whole model.

The defaults are MolmoE-1B (``allenai/MolmoE-1B-0924``), read from the public ``config.json``
and ``preprocessor_config.json`` of that checkpoint:

- image preprocessing: overlap-and-resize crops of 336 px, 14 px patches, overlap margins
  (4, 4) patches, up to ``max_crops`` crops plus one global view, 2×2 pooling → 12×12 tokens per
  crop, one ``<im_col>`` token per pooled row;
- vision: CLIP ViT-L/14-336 truncated to 23 layers, features of layers −2 and −9 concatenated;
- connector: 2×2 attention pooling with the mean of the 4 patches as query, SwiGLU MLP
  projector (hidden ``mlp_ratio · d_model / 2`` = 1024) to ``d_model``;
- language model: OLMoE-1B-7B (16 blocks, d_model 2048, 16 heads, 64 experts, top-8, expert
  FFN 1024, QK-norm over the full width, router softmax over all experts then top-k without
  renormalisation).

:meth:`MolmoeConfig.tiny` is the same architecture at tiny widths (tests): 336/14 geometry and
the 12×12 pooled-token layout are kept, 16 blocks, 8 experts.

This module imports no torch at import time (``olmoe_config`` / ``clip_config`` import
transformers lazily).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

#: OpenAI CLIP pixel statistics, used by Molmo's image preprocessing.
OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
#: The tower's patch embeddings (``MolmoeConfig.vit_patch_stem``; model_runtime.molmoe.vision).
PATCH_STEMS: tuple[str, ...] = ("linear", "conv", "hybrid", "fine")


@dataclass(frozen=True)
class SpecialTokens:
    """Token ids of the prompt layout (MolmoE-1B: the OLMoE GPT-NeoX tokenizer + 5 added tokens).

    ``bos`` is prepended to every prompt; OLMo tokenizers have no BOS, so Molmo uses EOS as a
    generic separator there.
    """

    bos: int = 50279
    eos: int = 50279
    pad: int = 1
    im_start: int = 50280
    im_end: int = 50281
    im_patch: int = 50282
    im_col: int = 50283
    image_prompt: int = 50284


@dataclass(frozen=True)
class MolmoeConfig:
    """Every size and option of the MolmoE runtime (defaults: MolmoE-1B).

    Language model:
        d_model, n_layers, n_heads, n_kv_heads (None = n_heads), num_experts, top_k (the
        model's routed experts per token, the maximum of the knob), expert_hidden (expert FFN
        width), embedding_size (rows of the base embedding = logits), additional_vocab_size
        (extra embedding rows, ``wte.new_embedding``), rope_theta, layer_norm_eps,
        max_position_embeddings, norm_topk_prob (False for OLMoE: top-k weights are the raw
        softmax probabilities), clip_qkv.
    Vision (CLIP ViT):
        image_size (px, square crops), patch_size (px), vit_hidden, vit_num_layers, vit_heads,
        vit_mlp, vit_eps, vit_feature_layers (hidden-state indices, negative = from the end,
        concatenated in this order), vit_patch_stem ("linear": CLIP's patch embedding, one
        linear map of the patch; this project's own, for towers trained from scratch: "conv", a
        per-patch convolutional stem, :class:`~model_runtime.molmoe.vision.PatchConvStem`;
        "hybrid", a convolutional trunk over the crop, :class:`~model_runtime.molmoe.vision.CropConvStem`;
        "fine", a trunk over the crop that keeps each patch's inner layout,
        :class:`~model_runtime.molmoe.vision.FineCropConvStem`).
    Connector:
        pool_h, pool_w (pooling window in patches), pool_heads, pool_head_dim,
        projector_hidden, image_padding_embed (Molmo's "pad_and_partial_pad"),
        vit_feature_norm (this project's own: a LayerNorm over the concatenated ViT features
        before pooling, for towers trained from scratch; MolmoE-1B has none), image_token_norm
        (also its own: an RMSNorm on the image tokens, gain initialised to 1/sqrt(d_model), so
        that they enter the residual stream at the text embeddings' scale).
    Preprocessing:
        max_crops (crops besides the global view), overlap_margins (patches discarded
        left/top and right/bottom of inner crop borders), image_mean, image_std.
    Prompt:
        tokens (special ids), prompt_template (``{question}`` is replaced),
        always_start_with_space.
    """

    # language model
    d_model: int = 2048
    n_layers: int = 16
    n_heads: int = 16
    n_kv_heads: int | None = None
    num_experts: int = 64
    top_k: int = 8
    expert_hidden: int = 1024
    embedding_size: int = 50304
    additional_vocab_size: int = 128
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-5
    max_position_embeddings: int = 32768
    norm_topk_prob: bool = False
    clip_qkv: float | None = None
    # vision
    image_size: int = 336
    patch_size: int = 14
    vit_hidden: int = 1024
    vit_num_layers: int = 23
    vit_heads: int = 16
    vit_mlp: int = 4096
    vit_eps: float = 1e-5
    vit_feature_layers: tuple[int, ...] = (-2, -9)
    # connector
    pool_h: int = 2
    pool_w: int = 2
    pool_heads: int = 16
    pool_head_dim: int = 64
    projector_hidden: int = 1024
    image_padding_embed: bool = True
    vit_feature_norm: bool = False
    image_token_norm: bool = False
    vit_patch_stem: str = "linear"
    # preprocessing
    max_crops: int = 12
    overlap_margins: tuple[int, int] = (4, 4)
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    # prompt
    tokens: SpecialTokens = field(default_factory=SpecialTokens)
    prompt_template: str = "User: {question} Assistant:"
    always_start_with_space: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "vit_feature_layers", tuple(int(x) for x in self.vit_feature_layers))
        object.__setattr__(self, "overlap_margins", tuple(int(x) for x in self.overlap_margins))
        object.__setattr__(self, "image_mean", tuple(float(x) for x in self.image_mean))
        object.__setattr__(self, "image_std", tuple(float(x) for x in self.image_std))
        if isinstance(self.tokens, Mapping):
            object.__setattr__(self, "tokens", SpecialTokens(**self.tokens))
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.kv_heads < 1 or self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.kv_heads}")
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k={self.top_k} must lie in [1, num_experts={self.num_experts}]")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        if not self.vit_feature_layers:
            raise ValueError("vit_feature_layers must name at least one ViT layer")
        for layer in self.vit_feature_layers:
            if not -self.vit_num_layers <= layer < self.vit_num_layers:
                raise ValueError(f"vit_feature_layers entry {layer} outside a {self.vit_num_layers}-layer ViT")
        left, right = self.overlap_margins
        if left % 2 or left < 0 or right < 0:
            raise ValueError(f"overlap_margins {self.overlap_margins}: left margin must be even and both >= 0")
        if self.patches_per_side - (left + right) < 1:
            raise ValueError(f"overlap_margins {self.overlap_margins} leave no patches in a crop")
        if self.pool_heads * self.pool_head_dim != self.vit_hidden:
            raise ValueError(
                f"pool_heads*pool_head_dim={self.pool_heads * self.pool_head_dim} must equal vit_hidden={self.vit_hidden}"
            )
        if self.max_crops < 1:
            raise ValueError(f"max_crops must be >= 1, got {self.max_crops}")
        if self.vit_patch_stem not in PATCH_STEMS:
            raise ValueError(f"vit_patch_stem must be one of {', '.join(PATCH_STEMS)}, got {self.vit_patch_stem!r}")
        if self.vit_patch_stem == "fine" and self.patch_size % 2:
            raise ValueError(f"vit_patch_stem 'fine' needs an even patch_size, got {self.patch_size}")
        max_id = self.vocab_rows - 1
        for name, tok in dataclasses.asdict(self.tokens).items():
            if not 0 <= tok <= max_id:
                raise ValueError(f"special token {name}={tok} outside the embedding (0..{max_id})")
        if "{question}" not in self.prompt_template:
            raise ValueError("prompt_template must contain '{question}'")

    # ------------------------------------------------------------------ derived sizes
    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def vocab_rows(self) -> int:
        """Rows of the input embedding: base vocabulary + additional (image) vocabulary."""
        return self.embedding_size + self.additional_vocab_size

    @property
    def patches_per_side(self) -> int:
        """ViT patches per crop side (24 at 336/14)."""
        return self.image_size // self.patch_size

    @property
    def patches_per_crop(self) -> int:
        return self.patches_per_side**2

    @property
    def pixels_per_patch(self) -> int:
        return self.patch_size * self.patch_size * 3

    @property
    def tokens_per_side(self) -> int:
        """Pooled tokens per crop side (12 at 336/14 with 2×2 pooling)."""
        return (self.patches_per_side + self.pool_h - 1) // self.pool_h

    @property
    def tokens_per_crop(self) -> int:
        return self.tokens_per_side * ((self.patches_per_side + self.pool_w - 1) // self.pool_w)

    @property
    def vit_feature_dim(self) -> int:
        return self.vit_hidden * len(self.vit_feature_layers)

    # ------------------------------------------------------------------ presets
    @classmethod
    def molmoe_1b(cls) -> "MolmoeConfig":
        """MolmoE-1B-0924 (the defaults)."""
        return cls()

    @classmethod
    def tiny(cls, **overrides: Any) -> "MolmoeConfig":
        """Same architecture at tiny widths, for tests on CPU.

        Kept from MolmoE-1B: 336 px crops, 14 px patches, 2×2 pooling to 12×12 tokens per
        crop, overlap margins (4, 4), 16 blocks, features of ViT layers −2 and −9. Shrunk:
        d_model 64, 4 heads, 8 experts at top-8 (so top-k 4..8 is legal), expert FFN 32,
        ViT width 32 with 10 layers (layer −9 must exist), a byte-level vocabulary of 320 ids
        + 16 additional rows.
        """
        params: dict[str, Any] = dict(
            d_model=64,
            n_layers=16,
            n_heads=4,
            num_experts=8,
            top_k=8,
            expert_hidden=32,
            embedding_size=320,
            additional_vocab_size=16,
            max_position_embeddings=4096,
            vit_hidden=32,
            vit_num_layers=10,
            vit_heads=2,
            vit_mlp=64,
            pool_heads=2,
            pool_head_dim=16,
            projector_hidden=32,
            tokens=SpecialTokens(bos=256, eos=256, pad=257, im_start=258, im_end=259, im_patch=260, im_col=261, image_prompt=262),
        )
        params.update(overrides)
        return cls(**params)

    @classmethod
    def small(cls, **overrides: Any) -> "MolmoeConfig":
        """The small MolmoE-architecture model this project trains on its VQA task suite.

        Kept from MolmoE-1B where the knobs act: 16 LM blocks, 64 experts routed top-8 (softmax
        over all experts, then top-k without renormalisation), QK-norm, Molmo's overlapping
        crops + global view with 2×2-pooled vision tokens, a CLIP-style tower whose features
        come from two layers (−2 and −5 of 6), normalised before pooling (``vit_feature_norm``:
        a tower trained from scratch grows its residual stream layer by layer, and the SwiGLU
        projector squares what it is given; without the norm the image tokens of the third
        H200 run reached a norm of ~1e11, benchmarks/RESULTS.md). Shrunk: d_model 128 (4 heads),
        experts of width 32, a 1,024-token BPE vocabulary (+ 8 rows for the image tokens), ViT
        width 128.

        Image geometry is MolmoE-1B's at half scale: 168-px crops of 14-px patches (12×12
        patches → 6×6 pooled tokens), 2-patch overlap margins, so windows of 112 px and margins
        of 56 px against MolmoE-1B's 224 / 112. An image of W×H px therefore gets the same crop
        grid here as a 2W×2H image gets in MolmoE-1B (see :attr:`molmoe_1b_image_scale`).
        Special ids follow the tokenizer of :mod:`model_runtime.small_model.tokenizer_training`
        (``<|endoftext|>`` 0, ``<|padding|>`` 1, image tokens 1024..1028).
        """
        params: dict[str, Any] = dict(
            d_model=128,
            n_layers=16,
            n_heads=4,
            num_experts=64,
            top_k=8,
            expert_hidden=32,
            embedding_size=1024,
            additional_vocab_size=8,
            max_position_embeddings=1024,
            image_size=168,
            patch_size=14,
            vit_hidden=128,
            vit_num_layers=6,
            vit_heads=4,
            vit_mlp=512,
            vit_feature_layers=(-2, -5),
            pool_heads=4,
            pool_head_dim=32,
            projector_hidden=256,
            vit_feature_norm=True,
            overlap_margins=(2, 2),
            tokens=SpecialTokens(bos=0, eos=0, pad=1, im_start=1024, im_end=1025, im_patch=1026, im_col=1027,
                                 image_prompt=1028),
        )
        params.update(overrides)
        return cls(**params)

    @property
    def molmoe_1b_image_scale(self) -> float | None:
        """How many times larger MolmoE-1B's crop geometry is than this config's (2.0 for
        :meth:`small`, 1.0 for MolmoE-1B), or None when the two are not scaled copies (window
        and margin in pixels must scale by the same factor for the crop grids to agree)."""
        ref = MolmoeConfig()
        window = (self.patches_per_side - sum(self.overlap_margins)) * self.patch_size
        margin = sum(self.overlap_margins) * self.patch_size
        ref_window = (ref.patches_per_side - sum(ref.overlap_margins)) * ref.patch_size
        ref_margin = sum(ref.overlap_margins) * ref.patch_size
        scale = ref_window / window
        return scale if abs(ref_margin / margin - scale) < 1e-9 else None

    def replace(self, **changes: Any) -> "MolmoeConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ public config.json
    @classmethod
    def from_molmo_json(cls, d: Mapping[str, Any], *, tokens: SpecialTokens | None = None) -> "MolmoeConfig":
        """Build from the public Molmo ``config.json`` (keys of ``config_molmoe.MolmoConfig``).

        Raises:
            ValueError: options this runtime does not implement (other block types, pooling,
                projector or padding-embed variants, ``use_cls_feature``, ``norm_after``...).
        """
        def get(key: str, default: Any = None) -> Any:
            return d.get(key, default) if d.get(key) is not None else default

        unsupported = {
            "block_type": ("moe", get("block_type", "moe")),
            "image_pooling_2d": ("attention-meanq", get("image_pooling_2d", "attention-meanq")),
            "image_projector": ("mlp", get("image_projector", "mlp")),
            "layer_norm_type": ("rms", get("layer_norm_type", "rms")),
            "activation_type": ("swiglu", get("activation_type", "swiglu")),
            "rope_impl": ("llama", get("rope_impl", "llama")),
        }
        for key, (want, got) in unsupported.items():
            if str(got).lower() != want:
                raise ValueError(f"config.json {key}={got!r} is not supported (only {want!r})")
        for key in ("use_cls_feature", "norm_after", "moe_shared_expert", "weight_tying", "alibi",
                    "scale_logits", "normalize_input_embeds", "include_bias", "qkv_bias"):
            if get(key, False):
                raise ValueError(f"config.json {key}=true is not supported by this runtime")
        if get("final_logit_softcapping") is not None:
            raise ValueError("config.json final_logit_softcapping is not supported")
        if not get("attention_layer_norm", True):
            raise ValueError("config.json attention_layer_norm=false is not supported (MolmoE has QK-norm)")
        if get("image_padding_embed") not in (None, "pad_and_partial_pad"):
            raise ValueError(f"config.json image_padding_embed={get('image_padding_embed')!r} is not supported")
        d_model = int(d["d_model"])
        mlp_hidden = get("mlp_hidden_size") or int(get("mlp_ratio", 4)) * d_model
        v = dict(d.get("vision_backbone") or {})
        if v.get("image_model_type", "openai") != "openai":
            raise ValueError(f"vision image_model_type={v.get('image_model_type')!r} is not supported (only 'openai' CLIP)")
        if v.get("image_mlp_activations", "quick_gelu") != "quick_gelu":
            raise ValueError("vision image_mlp_activations must be 'quick_gelu'")
        size = v.get("image_default_input_size", [336, 336])
        if int(size[0]) != int(size[1]):
            raise ValueError(f"non-square image_default_input_size {size} is not supported")
        vit_hidden = int(v.get("image_emb_dim", 1024))
        vit_heads = int(v.get("image_num_heads", 16))
        if int(v.get("image_num_key_value_heads", vit_heads)) != vit_heads:
            raise ValueError("vision grouped-query attention is not supported")
        head_dim = int(v.get("image_head_dim", vit_hidden // vit_heads))
        if head_dim * vit_heads != vit_hidden:
            raise ValueError("vision image_head_dim * image_num_heads must equal image_emb_dim")
        if (int(get("image_pooling_h", 2)), int(get("image_pooling_w", 2))) != (2, 2):
            raise ValueError("only 2x2 image pooling is supported")
        params: dict[str, Any] = dict(
            d_model=d_model,
            n_layers=int(d["n_layers"]),
            n_heads=int(d["n_heads"]),
            n_kv_heads=get("n_kv_heads"),
            num_experts=int(d["moe_num_experts"]),
            top_k=int(d["moe_top_k"]),
            expert_hidden=int(mlp_hidden) // 2,
            embedding_size=int(get("embedding_size") or d["vocab_size"]),
            additional_vocab_size=int(get("additional_vocab_size", 0) or 0),
            rope_theta=float(get("rope_theta", 10000.0)),
            layer_norm_eps=float(get("layer_norm_eps", 1e-5)),
            max_position_embeddings=int(get("max_position_embeddings") or get("max_sequence_length", 4096)),
            clip_qkv=get("clip_qkv"),
            image_size=int(size[0]),
            patch_size=int(v.get("image_patch_size", 14)),
            vit_hidden=vit_hidden,
            vit_num_layers=int(v.get("image_num_layers", 23)),
            vit_heads=vit_heads,
            vit_mlp=int(v.get("image_mlp_dim", 4096)),
            vit_eps=float(v.get("image_norm_eps", 1e-5)),
            vit_feature_layers=tuple(get("vit_layers", (-1,))),
            pool_heads=vit_heads,
            pool_head_dim=head_dim,
            projector_hidden=int(get("projector_hidden_size") or int(mlp_hidden) // 2),
            image_padding_embed=get("image_padding_embed") == "pad_and_partial_pad",
            vit_feature_norm=bool(get("image_feature_norm", False)),
            image_token_norm=bool(get("image_token_norm", False)),
            vit_patch_stem=str(get("image_patch_stem", "linear")),
            max_crops=int(get("max_crops", 12)),
            overlap_margins=tuple(get("overlap_margins", (4, 4))),
        )
        if tokens is not None:
            params["tokens"] = tokens
        return cls(**params)

    def to_molmo_json(self) -> dict[str, Any]:
        """The public ``config.json`` of this config (inverse of :meth:`from_molmo_json`).

        Four keys are this project's own: ``projector_hidden_size`` (MolmoE-1B ties the projector's
        hidden width to ``mlp_hidden_size / 2``; :meth:`small` does not), ``image_feature_norm``,
        ``image_token_norm`` and ``image_patch_stem`` (see ``vit_feature_norm``, ``image_token_norm``
        and ``vit_patch_stem``). Special ids are not
        part of it: they come from the checkpoint's tokenizer.
        """
        return {
            "architectures": ["MolmoForCausalLM"], "model_type": "molmo", "activation_type": "swiglu",
            "additional_vocab_size": self.additional_vocab_size, "attention_layer_norm": True,
            "attention_type": "sdpa", "block_type": "moe", "clip_qkv": self.clip_qkv,
            "crop_mode": "overlap-and-resize-c2", "d_model": self.d_model, "embedding_size": self.embedding_size,
            "image_padding_embed": "pad_and_partial_pad" if self.image_padding_embed else None,
            "image_feature_norm": self.vit_feature_norm, "image_token_norm": self.image_token_norm,
            "image_patch_stem": self.vit_patch_stem,
            "image_pooling_2d": "attention-meanq", "image_pooling_h": self.pool_h, "image_pooling_w": self.pool_w,
            "image_projector": "mlp", "include_bias": False, "layer_norm_eps": self.layer_norm_eps,
            "layer_norm_type": "rms", "max_crops": self.max_crops,
            "max_position_embeddings": self.max_position_embeddings, "mlp_hidden_size": 2 * self.expert_hidden,
            "projector_hidden_size": self.projector_hidden, "moe_num_experts": self.num_experts,
            "moe_top_k": self.top_k, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads, "n_layers": self.n_layers,
            "norm_after": False, "overlap_margins": list(self.overlap_margins), "pad_token_id": self.tokens.pad,
            "qkv_bias": False, "rope": True, "rope_impl": "llama", "rope_theta": self.rope_theta,
            "use_cls_feature": False, "use_position_ids": True, "vit_layers": list(self.vit_feature_layers),
            "vocab_size": self.embedding_size, "weight_tying": False,
            "vision_backbone": {
                "image_default_input_size": [self.image_size, self.image_size], "image_emb_dim": self.vit_hidden,
                "image_head_dim": self.vit_hidden // self.vit_heads, "image_mlp_activations": "quick_gelu",
                "image_mlp_dim": self.vit_mlp, "image_model_type": "openai", "image_norm_eps": self.vit_eps,
                "image_num_heads": self.vit_heads, "image_num_key_value_heads": self.vit_heads,
                "image_num_layers": self.vit_num_layers, "image_num_pos": self.patches_per_crop + 1,
                "image_patch_size": self.patch_size,
            },
        }

    # ------------------------------------------------------------------ transformers configs
    def olmoe_config(self, *, experts_implementation: str | None = None, attn_implementation: str = "sdpa") -> Any:
        """The transformers ``OlmoeConfig`` of the language model.

        Its ``vocab_size`` is :attr:`vocab_rows` (the input embedding incl. the additional
        rows); the LM head of the runtime has :attr:`embedding_size` outputs.
        """
        from transformers import OlmoeConfig

        return OlmoeConfig(
            vocab_size=self.vocab_rows,
            hidden_size=self.d_model,
            intermediate_size=self.expert_hidden,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            num_key_value_heads=self.kv_heads,
            num_experts=self.num_experts,
            num_experts_per_tok=self.top_k,
            norm_topk_prob=self.norm_topk_prob,
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.layer_norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            clip_qkv=self.clip_qkv,
            tie_word_embeddings=False,
            pad_token_id=self.tokens.pad,
            eos_token_id=self.tokens.eos,
            bos_token_id=None,
            attn_implementation=attn_implementation,
            experts_implementation=experts_implementation,
        )

    def clip_config(self, *, attn_implementation: str = "sdpa") -> Any:
        """The transformers ``CLIPVisionConfig`` of the vision tower (``quick_gelu``, no projection)."""
        from transformers import CLIPVisionConfig

        return CLIPVisionConfig(
            hidden_size=self.vit_hidden,
            intermediate_size=self.vit_mlp,
            num_hidden_layers=self.vit_num_layers,
            num_attention_heads=self.vit_heads,
            image_size=self.image_size,
            patch_size=self.patch_size,
            hidden_act="quick_gelu",
            layer_norm_eps=self.vit_eps,
            attn_implementation=attn_implementation,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MolmoeConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown MolmoeConfig fields {sorted(unknown)}")
        return cls(**dict(d))
