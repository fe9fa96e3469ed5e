"""``MolmoeRuntime.run(requests, config)``: the one code path that applies a knob configuration.

For a configuration ``(tier, p, top_k, blocks)`` of a :class:`~model_runtime.knob_space.KnobSpace`:

- tier → ``max_crops = knob_space.crops_for(tier)`` → Molmo preprocessing → vision tokens;
- ``knob_space.plan(config)`` → per-block top-k (blocks ``0..p-1`` at the maximum, the chosen
  blocks of ``p..`` at ``top_k``, the others skipped, 0);
- staged prefill: blocks ``0..p-1`` → the latency token, then blocks ``p..`` from that hidden
  state; greedy decoding (``max_new_tokens`` 64, EOS honoured) with a KV cache that only the
  blocks that run own.

With ``forced_output_tokens`` (request id → length; off by default) a request's greedy decoding
ends with exactly that many tokens, EOS included (EOS suppressed before, emitted at that step:
:func:`~.generation.pick_tokens`), in :meth:`run` and in the shared-prefix engine alike; a model
with random weights then answers with realistic lengths (``benchmarks/bench_build_cost.py``).

With ``vision_keep = r < 1`` (the vision-token pruning proxy, :mod:`.token_pruning`) each image
keeps the fraction ``r`` of its pooled vision tokens (the highest feature norms) and the others are
removed from the prompt before the language model runs (inside the timed prefill); ``r = 1`` (the
default) is the unpruned path, untouched.

Requests are grouped by configuration; a group runs as left-padded batches of at most
``max_batch_size`` requests; different configurations never share a forward. Each batch is
timed per phase (vision = tower + connector; prefill = embedding + both prefill stages + the
first token's logits; decode = the remaining steps) with one :class:`PhaseTimer` (CUDA events
on GPU, ``perf_counter`` on CPU); every outcome of a batch carries its batch's times and
``batch_size``. Preprocessing (image decode, crops, tokenization) runs on the CPU before the
timed phases.

The prompt text is ``model_runtime.datasets.build_prompt(request)`` (the project's one
template) wrapped in Molmo's chat format (``" User: ... Assistant:"``); predictions are scored
with the request's metric (``Request.score``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from model_runtime.knob_space import KnobConfig, KnobSpace

from .generation import DEFAULT_MAX_NEW_TOKENS, GenerationResult, continue_generation, greedy_generate
from .language_model import BlockKVCache, LMState
from .static_decode import GraphDecoder
from .vision_graphs import VisionGraphs
from .model import MolmoeModel
from .preprocessing import PromptInputs, build_prompt as build_prompt_inputs, format_question
from .timing import PhaseTimer
from .token_pruning import check_keep, prune_prompt
from .tokenizer import TextTokenizer


@dataclass
class Outcome:
    """What one request produced under one configuration.

    Attributes:
        request_id, dataset: from the request.
        config: the configuration it ran under.
        prediction: generated text (EOS and special tokens removed).
        output_tokens: generated tokens, including EOS when one was produced.
        score: the request's metric on ``prediction``.
        vision_ms, prefill_ms: the batch's phase times (ms).
        decode_ms: the batch's total decode time (tokens 2..), ms.
        decode_ms_per_token: ``decode_ms`` / decode steps of the batch (NaN if none).
        crops: crops fed to the vision tower, incl. the global view.
        vision_tokens: image tokens in the prompt; prompt_tokens: the other tokens (text + BOS).
        vision_tokens_kept: image tokens that reached the language model (``vision_tokens`` less
            the pooled tokens the pruning proxy dropped; equal to it when ``vision_keep`` is 1).
        latency_token: (d_model,) float32 last prompt token's hidden state after block p-1.
        latency_tokens: (n_positions, d_model) float32 the same after blocks 0..n-1 (the latency
            token of every p = 1..n), or None when not asked for.
        first_token_entropy: entropy (nats) of the first generated token's softmax.
        first_token_margin: top-1 minus top-2 probability of that softmax.
        ended_with_eos: generation stopped at EOS (else at max_new_tokens).
        batch_size: requests in the batch that produced this outcome.
        token_ids: the generated ids.
    """

    request_id: str
    dataset: str
    config: KnobConfig
    prediction: str
    output_tokens: int
    score: float
    vision_ms: float
    prefill_ms: float
    decode_ms: float
    decode_ms_per_token: float
    crops: int
    vision_tokens: int
    vision_tokens_kept: int
    prompt_tokens: int
    latency_token: np.ndarray
    latency_tokens: np.ndarray | None
    first_token_entropy: float
    first_token_margin: float
    ended_with_eos: bool
    batch_size: int
    token_ids: list[int]

    @property
    def total_ms(self) -> float:
        """vision + prefill + decode (the batch's wall time in the model)."""
        return self.vision_ms + self.prefill_ms + self.decode_ms


def first_token_uncertainty(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, V) logits → (entropy in nats, top-1 − top-2 probability), each (B,) float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    prob = logp.exp()
    entropy = -(prob * logp).sum(-1)
    top2 = prob.topk(2, dim=-1).values
    return entropy, top2[:, 0] - top2[:, 1]


def _as_request(obj: Any) -> Any:
    """A ``model_runtime.datasets.Request`` (dicts are parsed with ``request_from_json``)."""
    from model_runtime.datasets import Request, request_from_json

    if isinstance(obj, Request):
        return obj
    if isinstance(obj, Mapping):
        return request_from_json(dict(obj))
    raise ValueError(f"expected a Request or its JSON dict, got {type(obj).__name__}")


def load_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of an image file (EXIF orientation applied, as Molmo does)."""
    from PIL import Image, ImageOps

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im.convert("RGB")), dtype=np.uint8)


class MolmoeRuntime:
    """Runs requests through a :class:`MolmoeModel` under knob configurations.

    Args:
        model: the model (its device and dtype are used).
        tokenizer: text tokenizer of the model's vocabulary.
        knob_space: knob semantics incl. importance scores (default ``KnobSpace()``).
        max_batch_size: requests per forward within one configuration.
        max_new_tokens: generation cap (64).
        template: prompt template of ``model_runtime.datasets.build_prompt``.
        fast: run the fast path (:meth:`MolmoeLanguageModel.use_fast_path`: fused blocks, Triton
            decode ops, a :class:`~model_runtime.molmoe.static_decode.GraphDecoder` replaying one
            CUDA graph per decode step, the vision tower from one graph per crop count). Default:
            on when the model is on CUDA. On CPU it runs the same fused blocks with torch ops (no
            graphs); False keeps transformers' blocks.
        max_graphs: live decode graphs at most (LRU) when ``fast``.
        max_graph_bytes: memory the decoder's static caches and graphs may hold together (LRU
            beyond it; default 8 GiB: a batch-8 cache of 2,300 positions at the MolmoE-1B shape
            in bf16 is 2.4 GB).
        vision_keep: fraction in (0, 1] of each image's pooled vision tokens that the language
            model sees (the pruning proxy of :mod:`.token_pruning`: ranked by the norm of the
            connector's feature, ``max(1, ceil(r · n))`` kept); 1 (default) prunes nothing.
            Applies to :meth:`run`, :meth:`run_plan` and :meth:`prefix_state`.
        forced_output_tokens: request id → the output length (tokens, EOS included) its greedy
            decoding is forced to (:meth:`eos_at`); requests not in it decode freely. None
            (default): nothing is forced. Applies to :meth:`run`, :meth:`run_plan` and
            :func:`~.shared_prefix.run_all_configs`; not to :meth:`continue_generation`, which
            gets no request.

    Raises:
        ValueError: the knob space does not fit the model (block count, top-k range); a
            ``vision_keep`` outside (0, 1]; a forced length below 1.
    """

    def __init__(
        self,
        model: MolmoeModel,
        tokenizer: TextTokenizer,
        knob_space: KnobSpace | None = None,
        *,
        max_batch_size: int = 8,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        template: str = "molmo",
        fast: bool | None = None,
        max_graphs: int = 16,
        max_graph_bytes: int | None = 8 * 2**30,
        vision_keep: float = 1.0,
        forced_output_tokens: Mapping[str, int] | None = None,
    ) -> None:
        self.vision_keep = check_keep(vision_keep)
        self.forced_output_tokens = None if forced_output_tokens is None else dict(forced_output_tokens)
        if self.forced_output_tokens and min(self.forced_output_tokens.values()) < 1:
            raise ValueError("forced_output_tokens: every length must be >= 1 (the EOS counts)")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.knob_space = KnobSpace() if knob_space is None else knob_space
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.max_batch_size = int(max_batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.template = template
        lm = model.lm
        ks = self.knob_space
        if ks.num_blocks != lm.n_layers:
            raise ValueError(f"knob space has {ks.num_blocks} blocks, the model {lm.n_layers}")
        if ks.max_top_k != lm.max_top_k:
            raise ValueError(
                f"knob space's max top-k {ks.max_top_k} != the model's top-k {lm.max_top_k} "
                "(blocks before p must run as the model was trained)"
            )
        self.fast = model.device.type == "cuda" if fast is None else bool(fast)
        self.decoder: GraphDecoder | None = None
        self.vision: VisionGraphs | None = None
        if self.fast:
            self.vision = VisionGraphs(model)
            lm.use_fast_path()
            # prompts vary in length: a 64-token length bucket lets nearby lengths share a prefill graph
            self.decoder = GraphDecoder(lm, max_graphs=max_graphs, max_bytes=max_graph_bytes, max_prefill_graphs=16,
                                        prefill_bucket=64, batch_buckets=_buckets_up_to(self.max_batch_size))
        else:
            lm.use_fast_path(False)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        knob_space: KnobSpace | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        experts_implementation: str | None = None,
        **kwargs: Any,
    ) -> "MolmoeRuntime":
        """Load a public-layout MolmoE checkpoint directory (see :mod:`.checkpoint`).

        Without ``knob_space``, the knob space is scored by the checkpoint's ``importance.json``
        when it has one (what ``train_model`` writes and the cache builder's ``--importance auto``
        reads), so that "active blocks" drops the same blocks as a cache built from it; else
        ``KnobSpace()``'s defaults.
        """
        from .checkpoint import CheckpointError, load_molmoe_checkpoint
        from .importance import ImportanceScores

        model, tokenizer = load_molmoe_checkpoint(
            path, dtype=dtype, device=device, experts_implementation=experts_implementation
        )
        if tokenizer is None:
            raise CheckpointError(f"{path}: no tokenizer.json")
        scores = Path(path) / "importance.json"
        if knob_space is None and scores.is_file():
            knob_space = KnobSpace().with_scores(ImportanceScores.load(scores).scores)
        return cls(model, tokenizer, knob_space, **kwargs)

    # ------------------------------------------------------------------ request → prompt
    def prompt_text(self, request: Any) -> str:
        """The exact text the tokenizer sees for a request (template + chat wrapping)."""
        from model_runtime.datasets import build_prompt

        return format_question(self.model.config, build_prompt(_as_request(request), template=self.template))

    def prepare(self, request: Any, max_crops: int, image: np.ndarray | None = None) -> PromptInputs:
        """Preprocess one request with up to ``max_crops`` crops (CPU only, not timed)."""
        req = _as_request(request)
        pixels = load_image(req.image) if image is None else image
        text = self.tokenizer.encode(self.prompt_text(req))
        inputs = self.model.preprocessor(pixels, max_crops)
        return build_prompt_inputs(inputs, text, self.model.config.tokens.bos)

    def vision_token_counts(self, request: Any, molmoe_scale: float | None = None) -> dict[str, tuple[int, int]]:
        """Tier → (crops incl. the global view, vision tokens), from the image size alone.

        With ``molmoe_scale`` (the config's ``molmoe_1b_image_scale``): MolmoE-1B's counts for
        the image at that scale (``preprocessing.molmoe_1b_token_counts``), checked to have the
        model's crop grid; what the cache builder stores for the MolmoE-1B latency estimator.
        """
        from PIL import Image, ImageOps

        from .preprocessing import molmoe_1b_token_counts

        req = _as_request(request)
        with Image.open(req.image) as im:
            w, h = ImageOps.exif_transpose(im).size
        own = {t: self.model.preprocessor.token_counts(h, w, self.knob_space.crops_for(t)) for t in self.knob_space.tiers}
        if molmoe_scale is None:
            return own
        out = {}
        for t, (crops, _) in own.items():
            out[t] = molmoe_1b_token_counts(h, w, self.knob_space.crops_for(t), molmoe_scale)
            if out[t][0] != crops:
                raise ValueError(f"{req.id}: MolmoE-1B would use {out[t][0]} crops at tier {t}, the model {crops}: "
                                 "the geometries are not scaled copies")
        return out

    @torch.no_grad()
    def language_feature(self, request: Any) -> np.ndarray:
        """(d_model,) float32 mean token embedding of the prompt text (the seeds' language feature)."""
        ids = torch.tensor(self.tokenizer.encode(self.prompt_text(request)), device=self.model.device)
        if ids.numel() == 0:
            raise ValueError("empty prompt")
        return self.model.lm.embed(ids[None])[0].float().mean(0).cpu().numpy()

    # ------------------------------------------------------------------ running
    def _configs_for(self, n: int, config: Any) -> list[KnobConfig]:
        ks = self.knob_space
        def one(c: Any) -> KnobConfig:  # index() validates; config() gives the canonical object
            return ks.config(c) if isinstance(c, (int, np.integer)) else ks.config(ks.index(c))

        if isinstance(config, list):
            if len(config) != n:
                raise ValueError(f"{len(config)} configurations for {n} requests")
            return [one(c) for c in config]
        return [one(config)] * n

    def run(
        self,
        requests: Sequence[Any],
        config: KnobConfig | tuple | Mapping | int | list,
        *,
        return_latency_tokens: bool = False,
    ) -> list[Outcome]:
        """Run requests under a configuration and return one :class:`Outcome` per request, in order.

        Args:
            requests: ``Request`` objects (or their JSON dicts).
            config: one configuration for all requests (``KnobConfig``, ``(tier, p, top_k,
                blocks)``, a dict, or a stable index), or a ``list`` with one per request.
            return_latency_tokens: also return the latency tokens of every insertion position
                ``1..max(knob_space.insertion_positions)`` (computed in a side branch outside
                the timed phases).

        Raises:
            ValueError: invalid configurations or requests; FileNotFoundError: missing images.
        """
        reqs = [_as_request(r) for r in requests]
        configs = self._configs_for(len(reqs), config)
        groups: dict[KnobConfig, list[int]] = {}
        for i, c in enumerate(configs):
            groups.setdefault(c, []).append(i)
        out: list[Outcome | None] = [None] * len(reqs)
        for cfg, idx in groups.items():
            for start in range(0, len(idx), self.max_batch_size):
                chunk = idx[start : start + self.max_batch_size]
                for i, o in zip(chunk, self._run_batch([reqs[i] for i in chunk], cfg, return_latency_tokens)):
                    out[i] = o
        return [o for o in out if o is not None]

    @torch.no_grad()
    def prefix_state(self, prompt: PromptInputs, p: int, *, timer: PhaseTimer | None = None) -> LMState:
        """The staged prefill of one preprocessed prompt (:meth:`prepare`) stopped after block
        ``p-1``, blocks ``0..p-1`` at the model's top-k (as in every configuration with this ``p``):
        vision tower + connector (timed as "vision"), embeddings and those blocks (timed as
        "prefill"), their keys/values in a :class:`~.language_model.BlockKVCache`. Its
        ``hidden[:, -1]`` is the latency token; :meth:`continue_generation` finishes it.

        Raises:
            ValueError: ``p`` outside 1..n_layers.
        """
        model = self.model
        lm = model.lm
        if not 1 <= p <= lm.n_layers:
            raise ValueError(f"insertion position p={p} outside 1..{lm.n_layers}")
        timer = timer if timer is not None else PhaseTimer(model.device)
        batch = model.collate([prompt])
        with timer.phase("vision"):
            feats = (self.vision or model.image_features)(batch.patches, batch.image_masks)
        with timer.phase("prefill"):
            embeds, mask, _ = self._pruned(batch, feats, model.embed(batch, feats))
            state = lm.begin(embeds, mask, cache=BlockKVCache(reserve=self.max_new_tokens))
            lm.advance(state, p, lm.full_plan())
        return state

    @torch.no_grad()
    def continue_generation(
        self, prefix: LMState, config: KnobConfig | tuple | Mapping | int, *, timer: PhaseTimer | None = None
    ) -> GenerationResult:
        """Finish a configuration from a prefix state (:meth:`prefix_state` at the configuration's
        tier and ``p``): blocks ``p..`` of its plan, then greedy decoding (``max_new_tokens``, EOS
        honoured) — the computation of :meth:`run` after the prefix, through the runtime's
        decoder when ``fast`` (:func:`~.generation.continue_generation`). ``prefix`` is left
        untouched (its cache is copied), so it can be continued under several configurations.

        Raises:
            ValueError: an invalid configuration, or one whose ``p`` is not where ``prefix`` stopped.
        """
        (cfg,) = self._configs_for(1, config)
        if prefix.next_block != cfg.p:
            raise ValueError(f"configuration {cfg} has p={cfg.p}, the prefix state stopped after block {prefix.next_block - 1}")
        tk = self.model.config.tokens
        return continue_generation(
            self.model.lm, prefix, top_k_per_block=self.knob_space.plan(cfg).top_k_per_block, eos_token_id=tk.eos,
            pad_token_id=tk.pad, max_new_tokens=self.max_new_tokens, timer=timer, decoder=self.decoder,
        )

    def run_plan(
        self,
        requests: Sequence[Any],
        *,
        tier: str,
        top_k_per_block: Sequence[int],
        p: int = 1,
    ) -> list[Outcome]:
        """Run under an explicit block plan (calibration, e.g. skipping one block), not a KnobSpace
        configuration. Outcomes carry the knob space's full configuration of ``tier`` as a label."""
        reqs = [_as_request(r) for r in requests]
        label = KnobConfig(tier, self.knob_space.insertion_positions[0], self.knob_space.max_top_k, self.knob_space.num_blocks)
        outs: list[Outcome] = []
        for start in range(0, len(reqs), self.max_batch_size):
            outs += self._run_batch(reqs[start : start + self.max_batch_size], label, False, plan=top_k_per_block, p=p)
        return outs

    def eos_at(self, requests: Sequence[Any]) -> torch.Tensor | None:
        """(B,) int64 forced output length per request (0 = not forced), the ``eos_at`` of
        :func:`~.generation.greedy_generate`; None when the runtime forces nothing."""
        if self.forced_output_tokens is None:
            return None
        n = [int(self.forced_output_tokens.get(_as_request(r).id, 0)) for r in requests]
        return torch.tensor(n, dtype=torch.int64, device=self.model.device)

    def require_unpruned(self, who: str, why: str = "") -> None:
        """Raise a one-line ValueError naming ``who`` when this runtime prunes vision tokens
        (``vision_keep`` < 1): caches and live mode hold the unpruned model's outcomes."""
        if self.vision_keep != 1.0:
            raise ValueError(f"{who} runs the unpruned model; got a runtime with vision_keep={self.vision_keep}"
                             + (f" ({why})" if why else ""))

    def _pruned(self, batch: Any, feats: torch.Tensor, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The prompt the language model sees under ``vision_keep``: (embeddings, attention mask,
        (B,) pooled tokens dropped per row); at ``vision_keep = 1`` the batch's own, untouched."""
        if self.vision_keep == 1.0:
            return embeds, batch.attention_mask, torch.zeros(batch.batch_size, dtype=torch.int64)
        pad = self.model.lm.embed(torch.tensor([self.model.config.tokens.pad], device=embeds.device))[0]
        return prune_prompt(batch, feats, embeds, self.vision_keep, pad)

    @torch.no_grad()
    def _run_batch(
        self,
        reqs: Sequence[Any],
        cfg: KnobConfig,
        return_latency_tokens: bool,
        *,
        plan: Sequence[int] | None = None,
        p: int | None = None,
    ) -> list[Outcome]:
        ks, model = self.knob_space, self.model
        max_crops = ks.crops_for(cfg.tier)
        plan = ks.plan(cfg).top_k_per_block if plan is None else tuple(plan)
        p = cfg.p if p is None else p
        prompts = [self.prepare(r, max_crops) for r in reqs]
        batch = model.collate(prompts)
        timer = PhaseTimer(model.device)
        with timer.phase("vision"):
            feats = (self.vision or model.image_features)(batch.patches, batch.image_masks)
        with timer.phase("prefill"):
            embeds, mask, dropped = self._pruned(batch, feats, model.embed(batch, feats))
        n_lat = max(ks.insertion_positions) if return_latency_tokens else 0
        tk = model.config.tokens
        gen: GenerationResult = greedy_generate(
            model.lm, embeds, mask, top_k_per_block=plan, p=p, eos_token_id=tk.eos,
            pad_token_id=tk.pad, max_new_tokens=self.max_new_tokens, n_latency_tokens=n_lat, timer=timer,
            decoder=self.decoder, eos_at=self.eos_at(reqs),
        )
        entropy, margin = first_token_uncertainty(gen.first_logits)
        outcomes = []
        for b, (req, prompt) in enumerate(zip(reqs, prompts)):
            ids = gen.tokens[b]
            text_ids = ids[:-1] if gen.ended_with_eos[b] else ids
            prediction = self.tokenizer.decode(text_ids).strip()
            outcomes.append(
                Outcome(
                    request_id=req.id,
                    dataset=req.dataset,
                    config=cfg,
                    prediction=prediction,
                    output_tokens=len(ids),
                    score=float(req.score(prediction)),
                    vision_ms=timer.get("vision"),
                    prefill_ms=timer.get("prefill"),
                    decode_ms=timer.get("decode"),
                    decode_ms_per_token=gen.decode_ms_per_token,
                    crops=prompt.image.n_crops,
                    vision_tokens=prompt.vision_tokens,
                    vision_tokens_kept=prompt.vision_tokens - int(dropped[b]),
                    prompt_tokens=prompt.prompt_tokens,
                    latency_token=gen.latency_token[b].cpu().numpy(),
                    latency_tokens=None if gen.latency_tokens is None else gen.latency_tokens[b].cpu().numpy(),
                    first_token_entropy=float(entropy[b]),
                    first_token_margin=float(margin[b]),
                    ended_with_eos=gen.ended_with_eos[b],
                    batch_size=len(reqs),
                    token_ids=list(ids),
                )
            )
        return outcomes


def _buckets_up_to(n: int) -> tuple[int, ...]:
    """Powers of two below ``n``, then ``n`` (decode graphs are captured per bucket)."""
    out, b = [], 1
    while b < n:
        out.append(b)
        b *= 2
    return (*out, n)


def mean_score(outcomes: Iterable[Outcome]) -> float:
    """Mean score of outcomes (NaN when empty)."""
    scores = [o.score for o in outcomes]
    return float(np.mean(scores)) if scores else math.nan
