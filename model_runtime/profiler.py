"""Latency profiler of the MolmoE runtime: timing sweeps at one model shape, rows for the estimator.

What is timed (batch 1, after warm-up, with :class:`~model_runtime.molmoe.timing.PhaseTimer`:
CUDA events on a GPU, ``perf_counter`` on CPU), through the runtime's own code paths so that the
profile describes exactly what the runtime measures:

- **vision** (per crop count, incl. the global view): ``MolmoeModel.image_features`` = CLIP
  tower + connector on ``crops`` random crops. Row: ``crops``, ``ms``.
- **prefill** (per sequence length ``S`` × ``(p, top_k, blocks)``): the prefill of
  :func:`~model_runtime.molmoe.generation.greedy_generate` (``max_new_tokens=1``: staged forward
  through blocks ``0..p-1`` at the model's top-k, then the rest of the plan, final norm, LM head,
  argmax) over ``S`` token embeddings. Rows: ``vision_tokens=0``, ``prompt_tokens=S`` (prefill
  cost depends on the total length only; the estimator uses ``S = vision + prompt tokens``).
- **decode** (ms per generated token): ``greedy_generate`` with ``1 + decode_steps`` new tokens
  after a ``decode_context``-token prompt, EOS disabled so that every step runs; ``ms`` =
  decode time / steps (the runtime's decode loop with its KV cache, skipped blocks skipped).
  Rows: ``prompt_tokens`` = context, ``output_tokens = 1 + decode_steps``.

Statistic: the median over ``repeats`` timed calls, each point after ``warmup`` untimed calls
(decode uses ``decode_repeats`` calls of ``decode_steps`` steps each); ``ms_min`` / ``ms_max``
travel with each row.

Grids (:func:`prefill_grid`, :func:`decode_grid`): prefill runs the knob corners of every ``p``
(smallest / largest top-k × fewest / most blocks; 18 points) plus the full top-k × blocks grid at the
first ``p`` (5 × 5 for MolmoE-1B): 39 ``(p, top_k, blocks)`` points. Which blocks a plan skips
does not change its latency (all blocks have one shape), so plans use the knob space's default
importance scores. Decode runs 8 points at ``decode_context`` (the first ``p``'s corners and
centre, the last ``p`` at both top-k ends, one middle ``p``) and the cheapest / full plan at
every other sequence length (so that the estimator's ``blocks·ctx`` term is identified).

Latency depends on shape, not on weight values, so :func:`build_random_model` builds the model
on the ``meta`` device and materialises it directly in the requested dtype on the target
device (no slow CPU initialisation of 7 B parameters), then fills it with scaled random values
there. Rows carry ``impl`` (the transformers experts implementation actually in use), ``device``,
``torch``, ``transformers``, ``dtype`` and ``notes``.

Command line: ``python -m experiments.profile_latency`` (see there).
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from model_runtime.knob_space import KnobSpace
from model_runtime.latency_estimator import OPTIONAL_PROFILE_COLUMNS, PROFILE_COLUMNS
from model_runtime.molmoe.config import MolmoeConfig
from model_runtime.molmoe.generation import greedy_generate
from model_runtime.molmoe.language_model import default_experts_implementation
from model_runtime.molmoe.static_decode import GraphDecoder
from model_runtime.molmoe.model import MolmoeModel
from model_runtime.molmoe.timing import PhaseTimer

#: Columns of a profile CSV written by this module, in order.
EXTRA_COLUMNS: tuple[str, ...] = ("ms_min", "ms_max", "repeats", "torch", "transformers", "dtype")
CSV_COLUMNS: tuple[str, ...] = PROFILE_COLUMNS + EXTRA_COLUMNS + OPTIONAL_PROFILE_COLUMNS

#: Knob triple ``(p, top_k, blocks)`` (tier does not enter the language model's latency).
Point = tuple[int, int, int]

DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class ProfileSettings:
    """What to sweep and how often.

    Attributes:
        prompt_tokens: prefill sequence lengths S (tokens).
        crops: crop counts of the vision rows (incl. the global view).
        decode_context: prompt length (tokens) before the decode steps of the main decode grid.
        decode_steps: timed decode steps per decode call (>= 1).
        repeats: timed calls per vision / prefill point (median reported).
        warmup: untimed calls before each point.
        decode_repeats: timed decode calls per decode point.
        grid: ``"full"`` (corners of every p + full top-k × blocks grid at the first p) or
            ``"corners"`` (corners only, for quick checks).
        seed: seed of the random inputs.
    """

    prompt_tokens: tuple[int, ...] = (300, 1000, 2000)
    crops: tuple[int, ...] = (2, 4, 5, 7, 9, 13)
    decode_context: int = 1000
    decode_steps: int = 16
    repeats: int = 10
    warmup: int = 3
    decode_repeats: int = 3
    grid: str = "full"
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt_tokens", tuple(int(s) for s in self.prompt_tokens))
        object.__setattr__(self, "crops", tuple(int(c) for c in self.crops))
        if not self.prompt_tokens or min(self.prompt_tokens) < 1:
            raise ValueError(f"prompt_tokens must be positive token counts, got {self.prompt_tokens}")
        if not self.crops or min(self.crops) < 1:
            raise ValueError(f"crops must be positive crop counts, got {self.crops}")
        for name in ("decode_context", "decode_steps", "repeats", "decode_repeats"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.grid not in ("full", "corners"):
            raise ValueError(f"grid must be 'full' or 'corners', got {self.grid!r}")


@dataclass
class Timing:
    """Milliseconds of the timed calls of one point (per call; decode: per token)."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def min(self) -> float:
        return float(np.min(self.samples))

    @property
    def max(self) -> float:
        return float(np.max(self.samples))


# ---------------------------------------------------------------------------------- grids
def _corners(ks: KnobSpace, p: int) -> list[Point]:
    opts = ks.block_options(p)
    return sorted({(p, k, b) for k in (ks.top_ks[0], ks.top_ks[-1]) for b in (opts[0], opts[-1])})


def prefill_grid(ks: KnobSpace, grid: str = "full") -> list[Point]:
    """``(p, top_k, blocks)`` points of the prefill sweep, sorted.

    ``"full"``: the corners of every ``p`` plus every ``(top_k, blocks)`` at the first ``p``
    (39 points for the default knob space); ``"corners"``: the corners only (18 points: p=5 has one
    block option).
    """
    pts: set[Point] = set()
    for p in ks.insertion_positions:
        pts.update(_corners(ks, p))
    if grid == "full":
        p0 = ks.insertion_positions[0]
        pts.update((p0, k, b) for k in ks.top_ks for b in ks.block_options(p0))
    return sorted(pts)


def decode_grid(ks: KnobSpace) -> list[Point]:
    """``(p, top_k, blocks)`` points of the decode sweep at the main context (8 for the default space)."""
    p0, p_last = ks.insertion_positions[0], ks.insertion_positions[-1]
    p_mid = ks.insertion_positions[len(ks.insertion_positions) // 2]
    k_lo, k_mid, k_hi = ks.top_ks[0], ks.top_ks[len(ks.top_ks) // 2], ks.top_ks[-1]
    o0, om = ks.block_options(p0), ks.block_options(p_mid)
    pts = set(_corners(ks, p0))
    pts.add((p0, k_mid, o0[len(o0) // 2]))
    pts.update({(p_last, k_lo, ks.block_options(p_last)[-1]), (p_last, k_hi, ks.block_options(p_last)[-1])})
    pts.add((p_mid, k_mid, om[0]))
    return sorted(pts)


def cheapest_full_points(ks: KnobSpace) -> list[Point]:
    c, f = ks.cheapest_config, ks.full_config
    return sorted({(c.p, c.top_k, c.blocks), (f.p, f.top_k, f.blocks)})


def plan_for(ks: KnobSpace, point: Point) -> tuple[int, ...]:
    """Per-block top-k plan (0 = skipped) of a ``(p, top_k, blocks)`` point (any tier)."""
    p, k, b = point
    return ks.plan((ks.tiers[0], p, k, b)).top_k_per_block


# ---------------------------------------------------------------------------------- model
def shape_config(shape: str) -> MolmoeConfig:
    """``"molmoe-1b"`` → MolmoE-1B sizes; ``"tiny"`` → :meth:`MolmoeConfig.tiny`."""
    if shape == "molmoe-1b":
        return MolmoeConfig.molmoe_1b()
    if shape == "tiny":
        return MolmoeConfig.tiny()
    raise ValueError(f"unknown shape {shape!r}; expected 'molmoe-1b' or 'tiny'")


@torch.no_grad()
def build_random_model(
    config: MolmoeConfig,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    experts_implementation: str | None = None,
    seed: int = 0,
) -> MolmoeModel:
    """A MolmoE model of ``config``'s shape with random weights, built in ``dtype`` on ``device``.

    The modules are created on the meta device (no initialisation), materialised on ``device``
    and filled there: matrices N(0, 1/fan_in), norm weights 1, biases 0, so that activations
    stay O(1) and routing is spread over the experts (as in a trained model; a degenerate router
    would time a different expert load).
    """
    from model_runtime.molmoe.checkpoint import _reset_buffers  # the loader's own buffer reset

    device = torch.device(device)
    if experts_implementation is None:  # the runtime's choice for the target device, not for "meta"
        experts_implementation = default_experts_implementation(device)
    with torch.device("meta"):
        model = MolmoeModel(config, experts_implementation=experts_implementation)
    model = model.to(dtype).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim == 1:
            p.fill_(1.0 if "norm" in name or "layrnorm" in name else 0.0)
        else:
            p.normal_(0.0, 1.0 / math.sqrt(p.shape[-1]), generator=gen)
    _reset_buffers(model)
    return model.eval()


def experts_impl(model: MolmoeModel) -> str:
    """The experts implementation transformers resolved for the language model (e.g. ``grouped_mm``)."""
    cfg = model.lm.config
    impl = getattr(cfg, "_experts_implementation_internal", None) or getattr(cfg, "_experts_implementation", None)
    return str(impl) if impl else "default"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# ---------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_vision(model: MolmoeModel, crops: int, *, repeats: int, warmup: int, seed: int = 0,
                vision: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> Timing:
    """ms of ``image_features`` (CLIP tower + connector) on ``crops`` random crops, or of ``vision``
    (e.g. :class:`~model_runtime.molmoe.vision_graphs.VisionGraphs`) when given."""
    cfg, dev = model.config, model.device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    patches = torch.randn(crops, cfg.patches_per_crop, cfg.pixels_per_patch, generator=gen).to(dev, model.dtype)
    masks = torch.ones(crops, cfg.patches_per_crop, dtype=torch.float32, device=dev)
    timer = PhaseTimer(dev)
    out = Timing()
    for i in range(warmup + repeats):
        before = timer.get("vision")
        with timer.phase("vision"):
            (vision or model.image_features)(patches, masks)
        if i >= warmup:
            out.samples.append(timer.get("vision") - before)
    return out


def _random_embeds(model: MolmoeModel, seq_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(0, model.config.embedding_size, (1, seq_len), generator=gen).to(model.device)
    return model.lm.embed(ids), torch.ones(1, seq_len, dtype=torch.long, device=model.device)


@torch.no_grad()
def time_prefill(
    model: MolmoeModel, plan: Sequence[int], p: int, seq_len: int, *, repeats: int, warmup: int, seed: int = 0,
    decoder: GraphDecoder | None = None,
) -> Timing:
    """ms of the runtime's prefill (``greedy_generate(max_new_tokens=1)``) over ``seq_len`` tokens
    (the decoder's captured prefill when ``decoder`` is given)."""
    embeds, mask = _random_embeds(model, seq_len, seed)
    out = Timing()
    for i in range(warmup + repeats):
        res = greedy_generate(
            model.lm, embeds, mask, top_k_per_block=plan, p=p, eos_token_id=-1,
            pad_token_id=model.config.tokens.pad, max_new_tokens=1, decoder=decoder,
        )
        if i >= warmup:
            out.samples.append(res.prefill_ms)
    return out


@torch.no_grad()
def time_decode(
    model: MolmoeModel, plan: Sequence[int], p: int, context: int, *, steps: int, repeats: int, warmup: int,
    seed: int = 0, decoder: GraphDecoder | None = None,
) -> Timing:
    """ms per decode token of ``greedy_generate`` after a ``context``-token prompt (``steps`` steps
    per call), through ``decoder`` when given (the runtime's fast path)."""
    embeds, mask = _random_embeds(model, context, seed)
    out = Timing()
    for i in range(warmup + repeats):
        res = greedy_generate(
            model.lm, embeds, mask, top_k_per_block=plan, p=p, eos_token_id=-1,
            pad_token_id=model.config.tokens.pad, max_new_tokens=1 + steps, decoder=decoder,
        )
        if res.decode_steps != steps:  # EOS is disabled: every step must run
            raise RuntimeError(f"decode ran {res.decode_steps} steps, expected {steps}")
        if i >= warmup:
            out.samples.append(res.decode_ms_per_token)
    return out


# ---------------------------------------------------------------------------------- sweep
@dataclass(frozen=True)
class Job:
    """One profiled point: ``phase`` with its shape and knobs."""

    phase: str
    crops: int = 0
    seq_len: int = 0
    point: Point = (0, 0, 0)


def plan_jobs(ks: KnobSpace, settings: ProfileSettings) -> list[Job]:
    """Every point of the sweep, in execution order (vision, prefill by S, decode)."""
    jobs = [Job("vision", crops=c) for c in settings.crops]
    for s in settings.prompt_tokens:
        jobs += [Job("prefill", seq_len=s, point=pt) for pt in prefill_grid(ks, settings.grid)]
    jobs += [Job("decode", seq_len=settings.decode_context, point=pt) for pt in decode_grid(ks)]
    for s in settings.prompt_tokens:
        if s != settings.decode_context:
            jobs += [Job("decode", seq_len=s, point=pt) for pt in cheapest_full_points(ks)]
    return jobs


def _job_cost(job: Job, settings: ProfileSettings) -> float:
    """Rough relative cost of a job (for the ETA only)."""
    if job.phase == "vision":
        return (settings.warmup + settings.repeats) * 0.3 * job.crops
    slots = job.point[1] * (job.point[2] - job.point[0]) + 8 * job.point[0]
    if job.phase == "prefill":
        return (settings.warmup + settings.repeats) * job.seq_len * slots / 1e4
    n = 1 + settings.decode_repeats
    return n * (job.seq_len * slots / 1e4 + settings.decode_steps * slots / 10)


def profile(
    model: MolmoeModel,
    ks: KnobSpace,
    settings: ProfileSettings,
    *,
    notes: str = "",
    progress: Callable[[str], None] | None = print,
    decoder: GraphDecoder | None = None,
    vision: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> list[dict[str, Any]]:
    """Run the sweep; returns one dict per row with the columns of :data:`CSV_COLUMNS`.

    With ``decoder`` (and ``model.lm.use_fast_path()``) and ``vision`` the rows time the runtime's
    fast path (vision tower graphs, captured staged prefill, CUDA-graph decode steps).

    ``progress`` receives one line per point (with the elapsed time and an ETA).
    """
    import transformers

    if ks.num_blocks != model.lm.n_layers:
        raise ValueError(f"knob space has {ks.num_blocks} blocks, the model has {model.lm.n_layers}")
    if ks.max_top_k > model.lm.num_experts:
        raise ValueError(f"knob space top-k up to {ks.max_top_k}, the model has {model.lm.num_experts} experts")
    dev = model.device
    fused = model.lm.fused
    impl = (f"fast({fused.backend} ops, {fused.routed_form} prefill experts"
            + (", cuda-graph vision, prefill and decode)" if decoder is not None and dev.type == "cuda" else ", eager)")
            if fused is not None else experts_impl(model))
    common = {
        "impl": impl, "device": device_name(dev), "torch": torch.__version__,
        "transformers": transformers.__version__, "dtype": str(model.dtype).replace("torch.", ""),
    }
    nan = float("nan")
    jobs = plan_jobs(ks, settings)
    costs = np.array([_job_cost(j, settings) for j in jobs])
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    full = (ks.full_config.p, ks.full_config.top_k, ks.full_config.blocks)
    warmed: set[tuple[str, int]] = set()
    for i, job in enumerate(jobs):
        group = (job.phase, job.seq_len)
        if group not in warmed and settings.warmup:
            # first point of a shape: kernel selection, allocator growth and caches settle here
            warmed.add(group)
            if job.phase == "prefill":
                time_prefill(model, plan_for(ks, full), full[0], job.seq_len, repeats=1, warmup=settings.warmup,
                             decoder=decoder)
            elif job.phase == "decode":
                time_decode(model, plan_for(ks, full), full[0], job.seq_len, steps=2, repeats=1, warmup=settings.warmup,
                            decoder=decoder)
        base: dict[str, Any] = {c: nan for c in PROFILE_COLUMNS[1:]}
        if job.phase == "vision":
            t = time_vision(model, job.crops, repeats=settings.repeats, warmup=settings.warmup, seed=settings.seed,
                            vision=vision)
            base.update(crops=job.crops)
            what, note, reps = f"vision crops={job.crops}", "CLIP tower + connector, random crops", settings.repeats
        else:
            p, k, b = job.point
            plan = plan_for(ks, job.point)
            base.update(vision_tokens=0, prompt_tokens=job.seq_len, p=p, top_k=k, blocks=b)
            if job.phase == "prefill":
                t = time_prefill(model, plan, p, job.seq_len, repeats=settings.repeats, warmup=settings.warmup,
                                 seed=settings.seed, decoder=decoder)
                note, reps = f"greedy_generate prefill over S={job.seq_len} random token embeddings", settings.repeats
            else:
                t = time_decode(model, plan, p, job.seq_len, steps=settings.decode_steps,
                                repeats=settings.decode_repeats, warmup=1, seed=settings.seed, decoder=decoder)
                base.update(output_tokens=1 + settings.decode_steps)
                note = (f"ms per token: greedy_generate decode of {settings.decode_steps} steps after "
                        f"{job.seq_len} tokens, EOS disabled")
                reps = settings.decode_repeats
            what = f"{job.phase} S={job.seq_len} p={p} k={k} blocks={b}"
        base.update(ms=t.median)
        row = {"phase": job.phase, **base, "ms_min": t.min, "ms_max": t.max, "repeats": reps, **common,
               "notes": f"{note}; batch 1; median of {reps}" + (f"; {notes}" if notes else "")}
        rows.append(row)
        if progress is not None:
            elapsed = time.perf_counter() - t0
            done = costs[: i + 1].sum()
            eta = elapsed * (costs.sum() - done) / max(done, 1e-9)
            progress(f"[{i + 1}/{len(jobs)}] {what}: {t.median:.3f} ms  (elapsed {elapsed:.0f} s, eta {eta:.0f} s)")
    _sync(dev)
    return rows


def rows_to_frame(rows: list[dict[str, Any]], provenance: str = "") -> "Any":
    """Rows → pandas DataFrame with :data:`CSV_COLUMNS` (integer knob columns, blanks where unused)."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    for c in ("crops", "vision_tokens", "prompt_tokens", "p", "top_k", "blocks", "output_tokens", "repeats"):
        df[c] = df[c].astype("Int64")
    df.attrs["provenance"] = provenance
    return df
