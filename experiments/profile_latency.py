"""Profile the runtime's latency and write rows in the estimator's CSV format.

Usage::

    python -m experiments.profile_latency --shape molmoe-1b --device cuda --out profile.csv \
        [--prompt-tokens 300 1000 2000] [--crops 2 4 5 7 9 13] [--repeats 10 --warmup 3] \
        [--fast | --no-fast --experts-impl eager|grouped_mm|batched_mm] [--fit estimator.json]
    python -m experiments.profile_latency --model /path/to/MolmoE-1B --device cuda --out profile.csv
    python -m experiments.profile_latency --shape tiny --device cpu --out /tmp/tiny.csv   # seconds

``--shape`` builds random weights at that shape directly in ``--dtype`` on the device (latency
depends on shape, not values); ``--model`` loads a public-layout checkpoint instead. What is
timed, the grids and the statistic: :mod:`model_runtime.profiler`. A full MolmoE-1B sweep
(6 crop counts, 3 × 39 prefill points, 12 decode points, 135 rows) with the default settings
took 85 s on one H100 on transformers' blocks with the runtime's CUDA default experts implementation (``grouped_mm``)
and 247 s with ``--experts-impl eager`` (torch 2.11, transformers 5.17, bf16, model build
included); progress lines print the elapsed time and an ETA.

With ``--fit OUT_JSON`` the estimator is fitted on the written CSV
(:meth:`model_runtime.latency_estimator.LatencyEstimator.fit`), saved, and its fit report
(train / held-out / leave-one-out MAPE per phase) printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from model_runtime.profiler import DTYPES, ProfileSettings


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    d = ProfileSettings()
    ap = argparse.ArgumentParser(prog="python -m experiments.profile_latency", description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="public-layout MolmoE checkpoint directory")
    src.add_argument("--shape", choices=("molmoe-1b", "tiny"), help="random weights at this shape")
    ap.add_argument("--out", type=Path, required=True, help="profile CSV to write")
    ap.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda when available)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default bf16 on cuda, fp32 on cpu")
    ap.add_argument("--experts-impl", default=None,
                    help="transformers experts implementation (eager, grouped_mm, batched_mm; default: transformers')")
    ap.add_argument("--prompt-tokens", type=int, nargs="+", default=list(d.prompt_tokens), help="prefill lengths S")
    ap.add_argument("--crops", type=int, nargs="+", default=list(d.crops), help="vision crop counts (incl. global view)")
    ap.add_argument("--decode-context", type=int, default=d.decode_context)
    ap.add_argument("--decode-steps", type=int, default=d.decode_steps)
    ap.add_argument("--decode-repeats", type=int, default=d.decode_repeats)
    ap.add_argument("--repeats", type=int, default=d.repeats)
    ap.add_argument("--warmup", type=int, default=d.warmup)
    ap.add_argument("--grid", choices=("full", "corners"), default=d.grid)
    ap.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                    help="the runtime's fast path (fused blocks, Triton decode ops, CUDA-graph decode); "
                         "default: on for cuda, off for cpu (--no-fast: transformers' blocks, --experts-impl)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--notes", default="", help="free text appended to every row's notes")
    ap.add_argument("--fit", type=Path, default=None, metavar="OUT_JSON", help="fit the estimator on the CSV and save it")
    ap.add_argument("--holdout-frac", type=float, default=0.25)
    ap.add_argument("--quiet", action="store_true", help="no per-point progress lines")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from envs.knob_space import KnobSpace
    from model_runtime.latency_estimator import LatencyEstimator, load_profile, write_profile
    from model_runtime.profiler import build_random_model, profile, rows_to_frame, shape_config

    if args.threads:
        torch.set_num_threads(args.threads)
    from experiments.cli_errors import CliError, torch_device

    try:
        device = torch_device(args.device)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    settings = ProfileSettings(
        prompt_tokens=tuple(args.prompt_tokens), crops=tuple(args.crops), decode_context=args.decode_context,
        decode_steps=args.decode_steps, repeats=args.repeats, warmup=args.warmup,
        decode_repeats=args.decode_repeats, grid=args.grid, seed=args.seed,
    )
    t0 = time.perf_counter()
    if args.model is not None:
        from model_runtime.molmoe.checkpoint import load_molmoe_checkpoint

        model, _ = load_molmoe_checkpoint(args.model, dtype=dtype, device=device,
                                          experts_implementation=args.experts_impl)
        source = f"checkpoint {args.model}"
    else:
        model = build_random_model(shape_config(args.shape), device=device, dtype=dtype,
                                   experts_implementation=args.experts_impl, seed=args.seed)
        source = f"random weights at the {args.shape} shape"
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    print(f"model ready in {time.perf_counter() - t0:.1f} s: {source}, {dtype}, {device}", flush=True)
    cfg = model.config
    ks = KnobSpace(num_blocks=cfg.n_layers)
    fast = device.type == "cuda" if args.fast is None else args.fast
    decoder = vision = None
    if fast:
        from model_runtime.molmoe.static_decode import GraphDecoder
        from model_runtime.molmoe.vision_graphs import VisionGraphs

        model.lm.use_fast_path()
        decoder = GraphDecoder(model.lm, max_graphs=8)
        vision = VisionGraphs(model)
    rows = profile(model, ks, settings, notes=args.notes, decoder=decoder, vision=vision,
                   progress=None if args.quiet else (lambda line: print(line, flush=True)))
    provenance = (
        f"Profiled by `python -m experiments.profile_latency` ({source}, {dtype}, batch 1) on "
        f"{rows[0]['device']}, torch {rows[0]['torch']}, transformers {rows[0]['transformers']}, "
        f"experts impl {rows[0]['impl']}.\n"
        f"ms = median of repeats after warm-up ({'CUDA events' if device.type == 'cuda' else 'perf_counter'}); "
        "decode ms is per generated token; prefill rows count all S tokens as prompt_tokens."
    )
    df = rows_to_frame(rows, provenance)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_profile(df, args.out)
    print(f"wrote {len(df)} rows to {args.out} in {time.perf_counter() - t0:.1f} s", flush=True)
    if args.fit is not None:
        prof = load_profile(args.out, max_top_k=ks.max_top_k)
        est = LatencyEstimator.fit(prof, holdout_frac=args.holdout_frac, max_top_k=ks.max_top_k,
                                   source=f"{args.out.name}: {provenance.splitlines()[0]}")
        args.fit.parent.mkdir(parents=True, exist_ok=True)
        est.save(args.fit)
        print(est.report())
        print(f"fidelity on all rows: {est.fidelity(prof)}")
        print(f"saved estimator to {args.fit}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
