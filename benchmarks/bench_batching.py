"""Batched-by-configuration vs per-request generation throughput of the MolmoE runtime (issue 5).

Run::

    .venv/bin/python -m benchmarks.bench_batching --shape tiny --device cpu --seq-len 48 --spread 8 \
        --new-tokens 4 --repeats 1 --warmup 1                                    # CPU smoke, ~1-4 min
    python -m benchmarks.bench_batching --shape molmoe-1b --device cuda --experts-impl grouped_mm eager \
        --deadline-s 345 --out bench_batching.txt                                # H100, ~6 min

On the H100 (torch 2.11, transformers 5.17, bf16) the runtime's path (``grouped_mm``) gave 7.8×
(full) and 8.0× (p1/k4/b12) more tokens/s batched than per request; ``eager`` 2.6× (p1/k4/b12):
figures for the lead to record in benchmarks/RESULTS.md.

What is compared, per configuration (default: full ``high/p1/k8/b16`` and the cheapest LM plan
``p1/k4/b12``; the tier only changes the vision crops, which run per request either way and are
left out here):

(a) **per request**: ``--requests`` (8) requests one after another at batch 1, each a prefill of
    about ``--seq-len`` (1000) random token embeddings followed by greedy decoding of
    ``--new-tokens`` (64) tokens with EOS disabled, i.e. 1 prefill token + 63 decode steps;
(b) **batched**: the same requests left-padded into ONE batch (what ``MolmoeRuntime.run`` does
    for requests that share a configuration) through the same code path.

Both go through :func:`model_runtime.molmoe.generation.greedy_generate`, the function
``MolmoeRuntime._run_batch`` calls, with the runtime's experts implementation for the device
(``grouped_mm`` on CUDA; ``--experts-impl`` adds others). Prompt lengths are spread over
``seq_len - spread .. seq_len`` so that the batch carries real left padding, as the runtime's
batches do. The model has random weights at the requested shape (latency depends on shape, not
values), built with :func:`model_runtime.profiler.build_random_model` in bf16 on CUDA.

Figures (median over ``--repeats`` timed repeats, after ``--warmup`` untimed ones per mode):
wall time of the whole of (a) and of (b) from :class:`~model_runtime.molmoe.timing.PhaseTimer`
(CUDA events on a GPU), generated tokens/s = requests × new_tokens / wall, their ratio, prefill ms
and ms per decode step (from ``GenerationResult``) at batch 1 and batch B. A diagnostic then
runs decode steps by hand (the same ``begin_decode`` / ``advance`` / ``logits`` calls) with and
without the runtime's per-step EOS host check and reports the step time, the host time to enqueue
one step, its GPU time, and (CUDA only, ``torch.profiler``) the kernels launched per step and
their summed GPU time: if kernel time is much below the step's wall time, the step is bound by
launches / host work, not by the GPU's arithmetic. On the H100 these absolute step times
varied up to 2× between runs and between the two measurements of one run (host-bound work on a
shared virtual CPU); the batched / per-request ratio, measured in interleaved repeats, did not.

The inputs are random (SYNTHETIC); the figures describe this runtime's speed at the model's shape,
not MolmoE-1B's answers.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Sequence

import numpy as np
import torch

from envs.knob_space import KnobConfig, KnobSpace
from model_runtime.molmoe.generation import GenerationResult, greedy_generate
from model_runtime.molmoe.language_model import BlockKVCache, default_experts_implementation
from model_runtime.molmoe.model import MolmoeModel
from model_runtime.molmoe.timing import PhaseTimer
from model_runtime.profiler import DTYPES, _random_embeds, build_random_model, device_name, shape_config


# ---------------------------------------------------------------------------------- output
class Out:
    """Prints lines (flushed) and appends them to an optional file as they come, so that a run
    stopped at its time limit still leaves what it measured."""

    def __init__(self, path: Path | None) -> None:
        self._file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("w", buffering=1)

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        if self._file is not None:
            self._file.write(line + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


# ---------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Workload:
    """The requests of one comparison.

    Attributes:
        embeds: per request, (1, S_i, D) prompt embeddings in the model's dtype on its device.
        batch_embeds: (B, max S_i, D) the same, left-padded with the pad token's embedding.
        batch_mask: (B, max S_i) int64, 1 = real token (left padding), as ``MolmoeModel.collate``.
        new_tokens: generated tokens per request (1 from the prefill + new_tokens-1 decode steps).
    """

    embeds: list[torch.Tensor]
    batch_embeds: torch.Tensor
    batch_mask: torch.Tensor
    new_tokens: int

    @property
    def requests(self) -> int:
        return len(self.embeds)

    @property
    def lengths(self) -> list[int]:
        return [int(e.shape[1]) for e in self.embeds]


def seq_lengths(requests: int, seq_len: int, spread: int) -> list[int]:
    """``requests`` prompt lengths evenly spread over ``seq_len - spread .. seq_len`` (longest first)."""
    if requests < 1 or seq_len < 1 or not 0 <= spread < seq_len:
        raise ValueError(f"need requests >= 1, seq_len >= 1, 0 <= spread < seq_len; got {requests}, {seq_len}, {spread}")
    if requests == 1:
        return [seq_len]
    return [seq_len - round(spread * i / (requests - 1)) for i in range(requests)]


@torch.no_grad()
def make_workload(model: MolmoeModel, lengths: Sequence[int], new_tokens: int, seed: int = 0) -> Workload:
    """Random prompts of the given lengths (the profiler's ``_random_embeds``), alone and left-padded."""
    if new_tokens < 2:
        raise ValueError(f"new_tokens must be >= 2 (at least one decode step), got {new_tokens}")
    embeds = [_random_embeds(model, int(s), seed + i)[0] for i, s in enumerate(lengths)]
    longest = max(lengths)
    pad = model.lm.embed(torch.tensor([[model.config.tokens.pad]], device=model.device))  # (1, 1, D)
    rows, masks = [], []
    for e in embeds:
        n_pad = longest - e.shape[1]
        rows.append(torch.cat([pad.expand(1, n_pad, -1), e], dim=1))
        masks.append(torch.cat([torch.zeros(1, n_pad, dtype=torch.long), torch.ones(1, e.shape[1], dtype=torch.long)], 1))
    return Workload(embeds, torch.cat(rows), torch.cat(masks).to(model.device), new_tokens)


# ---------------------------------------------------------------------------------- timing
@dataclass
class ModeTiming:
    """One timed execution of a mode (all requests once).

    Attributes:
        wall_ms: PhaseTimer time of the whole mode (all its greedy_generate calls), ms.
        prefill_ms: summed prefill time of its calls, ms.
        decode_ms: summed decode time of its calls, ms.
        decode_steps: summed decode steps of its calls (each step serves a whole batch).
        tokens: generated tokens over all requests.
    """

    wall_ms: float
    prefill_ms: float
    decode_ms: float
    decode_steps: int
    tokens: int

    @property
    def tokens_per_s(self) -> float:
        return 1000.0 * self.tokens / self.wall_ms

    @property
    def ms_per_step(self) -> float:
        return self.decode_ms / self.decode_steps


def _generate(model: MolmoeModel, embeds: torch.Tensor, mask: torch.Tensor, plan: Sequence[int], p: int,
              new_tokens: int) -> GenerationResult:
    res = greedy_generate(
        model.lm, embeds, mask, top_k_per_block=plan, p=p, eos_token_id=-1,  # EOS disabled: every step runs
        pad_token_id=model.config.tokens.pad, max_new_tokens=new_tokens,
    )
    if res.decode_steps != new_tokens - 1 or any(len(t) != new_tokens for t in res.tokens):
        raise RuntimeError(f"expected {new_tokens} tokens per row, got {res.decode_steps + 1} steps")
    return res


@torch.no_grad()
def run_per_request(model: MolmoeModel, work: Workload, plan: Sequence[int], p: int) -> ModeTiming:
    """(a): every request alone at batch 1, one after another."""
    timer = PhaseTimer(model.device)
    prefill = decode = 0.0
    steps = tokens = 0
    with timer.phase("total"):
        for e in work.embeds:
            res = _generate(model, e, torch.ones(e.shape[:2], dtype=torch.long, device=model.device), plan, p,
                            work.new_tokens)
            prefill, decode = prefill + res.prefill_ms, decode + res.decode_ms
            steps, tokens = steps + res.decode_steps, tokens + sum(len(t) for t in res.tokens)
    return ModeTiming(timer.get("total"), prefill, decode, steps, tokens)


@torch.no_grad()
def run_batched(model: MolmoeModel, work: Workload, plan: Sequence[int], p: int) -> ModeTiming:
    """(b): all requests as one left-padded batch."""
    timer = PhaseTimer(model.device)
    with timer.phase("total"):
        res = _generate(model, work.batch_embeds, work.batch_mask, plan, p, work.new_tokens)
    return ModeTiming(timer.get("total"), res.prefill_ms, res.decode_ms, res.decode_steps,
                      sum(len(t) for t in res.tokens))


@dataclass
class StepDiagnostic:
    """One decode step's anatomy at one batch size (medians over ``rounds`` rounds of ``steps`` steps).

    Attributes:
        synced_ms: wall time of one step issued as ``greedy_generate`` issues it (a host check of
            the EOS state after every step, so the host waits for the GPU each step).
        enqueue_ms: host time to issue one step back to back without that check (Python +
            launches; includes any synchronisation inside the step itself).
        gpu_ms: device time of one step of the back-to-back run (CUDA events; perf_counter on CPU).
        kernels: CUDA kernels (incl. memcpy/memset) per step, or None without CUDA profiling.
        kernel_ms: their summed GPU time per step, or None.
    """

    synced_ms: float
    enqueue_ms: float
    gpu_ms: float
    kernels: float | None = None
    kernel_ms: float | None = None


@torch.no_grad()
def diagnose_decode_step(model: MolmoeModel, embeds: torch.Tensor, mask: torch.Tensor, plan: Sequence[int], p: int,
                         steps: int = 8, rounds: int = 3) -> StepDiagnostic:
    """Prefill, then rounds of ``steps`` decode steps with the runtime's own calls
    (``begin_decode`` / ``advance`` / ``logits``), timed with and without greedy_generate's
    per-step host check; on CUDA one more round under ``torch.profiler`` counts the kernels."""
    lm, dev = model.lm, model.device
    reserve = (2 * rounds + 2) * steps + 2

    def prefill() -> tuple[object, torch.Tensor]:
        state = lm.begin(embeds, mask, cache=BlockKVCache(reserve=reserve))
        lm.advance(state, lm.n_layers, plan)
        return state, lm.logits(state).argmax(-1)

    def decode(state: object, tok: torch.Tensor, synced: bool) -> tuple[object, torch.Tensor]:
        for _ in range(steps):
            state = lm.begin_decode(state, tok)
            lm.advance(state, lm.n_layers, plan)
            tok = lm.logits(state).argmax(-1)
            if synced:
                bool((tok == -1).all())  # greedy_generate's EOS check: a host read every step
        return state, tok

    state, tok = prefill()
    state, tok = decode(state, tok, True)  # warm-up of this batch size's step
    synced, enqueue, gpu = [], [], []
    for _ in range(rounds):
        timer = PhaseTimer(dev)
        with timer.phase("synced"):
            state, tok = decode(state, tok, True)
        synced.append(timer.get("synced") / steps)
        t0 = time.perf_counter()
        with timer.phase("free"):
            state, tok = decode(state, tok, False)
            enqueue.append((time.perf_counter() - t0) * 1000.0 / steps)
        gpu.append(timer.get("free") / steps)
    out = StepDiagnostic(float(np.median(synced)), float(np.median(enqueue)), float(np.median(gpu)))
    if dev.type != "cuda":
        return out
    try:
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                decode(state, tok, True)
                torch.cuda.synchronize(dev)
            n, us = 0, 0.0
            for e in prof.key_averages():
                if e.device_type == DeviceType.CUDA:
                    n += e.count
                    us += float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))
        out.kernels, out.kernel_ms = n / steps, us / 1000.0 / steps
    except Exception as exc:  # the profiler is a diagnostic; its absence must not lose the figures
        print(f"  (torch.profiler unavailable: {type(exc).__name__}: {exc})", flush=True)
    return out


# ---------------------------------------------------------------------------------- driver
@dataclass
class Comparison:
    """Timed repeats of both modes for one (experts implementation, configuration)."""

    impl: str
    label: str
    per_request: list[ModeTiming] = field(default_factory=list)
    batched: list[ModeTiming] = field(default_factory=list)
    diag: dict[int, StepDiagnostic] = field(default_factory=dict)

    def median(self, mode: str, attr: str) -> float:
        return float(np.median([getattr(t, attr) for t in getattr(self, mode)]))

    @property
    def speedup(self) -> float:
        """Median over repeats of batched tokens/s ÷ per-request tokens/s (same repeat index)."""
        return float(np.median([b.tokens_per_s / a.tokens_per_s for a, b in zip(self.per_request, self.batched)]))


def compare(model: MolmoeModel, ks: KnobSpace, cfg: KnobConfig, work: Workload, *, impl: str, repeats: int,
            warmup: int, deadline: float, out: Out) -> Comparison | None:
    """Warm up, estimate the cost, then time ``repeats`` rounds of (a) and (b); None if it would pass the deadline."""
    model.lm.experts_implementation = impl
    plan = ks.plan(cfg).top_k_per_block
    label = f"p{cfg.p}/k{cfg.top_k}/b{cfg.blocks}"
    one = Workload(work.embeds[:1], work.batch_embeds[:1, -work.lengths[0]:], work.batch_mask[:1, -work.lengths[0]:],
                   work.new_tokens)
    for _ in range(max(warmup, 1)):  # first calls pick kernels, grow the allocator, initialise libraries
        t0 = time.perf_counter()
        w1 = run_per_request(model, one, plan, cfg.p)
        wb = run_batched(model, work, plan, cfg.p)
        last = time.perf_counter() - t0
    # the cost estimate uses the last warm-up round only: the first absorbs one-time start-up costs
    est = repeats * (work.requests * w1.wall_ms + wb.wall_ms) / 1000.0 + 2 * last
    if time.perf_counter() + est > deadline:
        out(f"  [{impl} {label}] skipped: about {est:.0f} s more would pass --deadline-s")
        return None
    out(f"  [{impl} {label}] warm-up done; timing {repeats} repeats (about {est:.0f} s)")
    comp = Comparison(impl, label)
    for _ in range(repeats):
        comp.per_request.append(run_per_request(model, work, plan, cfg.p))
        comp.batched.append(run_batched(model, work, plan, cfg.p))
    for b, (e, m) in {1: (one.batch_embeds, one.batch_mask), work.requests: (work.batch_embeds, work.batch_mask)}.items():
        comp.diag[b] = diagnose_decode_step(model, e, m, plan, cfg.p)
    return comp


def table(comps: Sequence[Comparison], requests: int) -> list[str]:
    b = requests
    head = (f"| experts impl | config | per-request tok/s | batch-{b} tok/s | ratio | wall ms (a / b) | "
            f"prefill ms (a, sum / b) | decode ms/step b=1 | decode ms/step b={b} | step ratio |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for c in comps:
        s1, sb = c.median("per_request", "ms_per_step"), c.median("batched", "ms_per_step")
        lines.append(
            f"| {c.impl} | {c.label} | {c.median('per_request', 'tokens_per_s'):.1f} | "
            f"{c.median('batched', 'tokens_per_s'):.1f} | **{c.speedup:.2f}×** | "
            f"{c.median('per_request', 'wall_ms'):.0f} / {c.median('batched', 'wall_ms'):.0f} | "
            f"{c.median('per_request', 'prefill_ms'):.1f} / {c.median('batched', 'prefill_ms'):.1f} | "
            f"{s1:.2f} | {sb:.2f} | {sb / s1:.2f} |"
        )
    return lines


def diag_table(comps: Sequence[Comparison]) -> list[str]:
    lines = ["| experts impl | config | batch | ms/step as greedy_generate | back-to-back: host enqueue ms/step | "
             "GPU ms/step | kernels/step | kernel ms/step | GPU busy |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in comps:
        for b, d in sorted(c.diag.items()):
            k = "n/a" if d.kernels is None else f"{d.kernels:.0f}"
            km = "n/a" if d.kernel_ms is None else f"{d.kernel_ms:.2f}"
            busy = "n/a" if d.kernel_ms is None else f"{100 * d.kernel_ms / d.gpu_ms:.0f} %"
            lines.append(f"| {c.impl} | {c.label} | {b} | {d.synced_ms:.2f} | {d.enqueue_ms:.2f} | {d.gpu_ms:.2f} | {k} | {km} | {busy} |")
    return lines


def _host_cpu() -> str:
    """CPU model and count of this host (the step is host-bound, so the host matters)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_batching", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=("molmoe-1b", "tiny"), default="tiny")
    ap.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda when available)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default bf16 on cuda, fp32 on cpu")
    ap.add_argument("--experts-impl", nargs="+", default=None,
                    help="experts implementations to compare, in order (default: the runtime's for the device)")
    ap.add_argument("--configs", nargs="+", default=["full", "cheapest"],
                    help="'full', 'cheapest', or TIER/pP/kK/bB (e.g. high/p1/k8/b16)")
    ap.add_argument("--requests", type=int, default=8, help="requests; also the batch size of (b)")
    ap.add_argument("--seq-len", type=int, default=1000, help="longest prompt (tokens)")
    ap.add_argument("--spread", type=int, default=56, help="prompt lengths spread over seq_len-spread..seq_len")
    ap.add_argument("--new-tokens", type=int, default=64, help="generated tokens per request (EOS disabled)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds of both modes (the last one sizes --deadline-s)")
    ap.add_argument("--deadline-s", type=float, default=float("inf"),
                    help="skip a comparison whose estimated end passes this many seconds after start")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="also write the output to this file")
    return ap.parse_args(argv)


def parse_config(ks: KnobSpace, text: str) -> KnobConfig:
    if text == "full":
        return ks.full_config
    if text == "cheapest":
        return ks.cheapest_config
    try:
        tier, p, k, b = text.split("/")
        cfg = KnobConfig(tier, int(p.lstrip("p")), int(k.lstrip("k")), int(b.lstrip("b")))
    except ValueError:
        raise ValueError(f"configuration {text!r} is not 'full', 'cheapest' or TIER/pP/kK/bB") from None
    ks.index(cfg)  # raises ValueError naming the configuration when it is not in the knob space
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import transformers

    start = time.perf_counter()
    deadline = start + args.deadline_s
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    ks = KnobSpace()
    configs = [parse_config(ks, c) for c in args.configs]
    impls = args.experts_impl or [default_experts_implementation(device)]
    out = Out(args.out)
    try:
        model = build_random_model(shape_config(args.shape), device=device, dtype=dtype, seed=args.seed)
        lengths = seq_lengths(args.requests, args.seq_len, args.spread)
        work = make_workload(model, lengths, args.new_tokens, args.seed)
        out("# bench_batching: batched-by-configuration vs per-request generation (SYNTHETIC random inputs)")
        out(f"device: {device_name(device)}; torch {torch.__version__}; transformers {transformers.__version__}; "
            f"python {platform.python_version()}; dtype {str(dtype).replace('torch.', '')}")
        out(f"host: {_host_cpu()}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        out(f"model: random weights at the {args.shape} shape, built in {time.perf_counter() - start:.1f} s")
        out(f"workload: {args.requests} requests, prompt lengths {lengths} (batch left-padded to {max(lengths)}), "
            f"{args.new_tokens} new tokens each (EOS disabled: 1 prefill token + {args.new_tokens - 1} decode steps); "
            f"path: greedy_generate (MolmoeRuntime._run_batch's call); median of {args.repeats} repeats after "
            f"{args.warmup} warm-up")
        comps: list[Comparison] = []
        for impl in impls:
            for cfg in configs:
                c = compare(model, ks, cfg, work, impl=impl, repeats=args.repeats, warmup=args.warmup,
                            deadline=deadline, out=out)
                if c is not None:
                    comps.append(c)
                    out("\n".join(table([c], args.requests)[2:]))
        out("")
        out(f"tokens/s = {args.requests} × {args.new_tokens} generated tokens / wall time of the mode "
            f"(a: {args.requests} sequential batch-1 calls, b: one batch-{args.requests} call)")
        for line in table(comps, args.requests):
            out(line)
        out("")
        out("decode step anatomy (median of 3 rounds of 8 steps after a warm-up; host enqueue ≈ GPU time and "
            "kernel time ≪ GPU time mean the step is bound by host work and launches, not by GPU arithmetic):")
        for line in diag_table(comps):
            out(line)
        if device.type == "cuda":
            out(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
        out(f"total wall: {time.perf_counter() - start:.1f} s")
    finally:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
