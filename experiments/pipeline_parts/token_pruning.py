"""Vision-token pruning proxy (seed 05 §B4), a cost-matched baseline on the real model's requests.

The model the cache was built from runs at the full LM configuration (every block at the model's
top-k) of each tier on test-split requests of the cache, keeping a fraction ``r`` of each image's
pooled vision tokens (:mod:`model_runtime.molmoe.token_pruning`: ranked by the L2 norm of the
connector's feature, ``max(1, ceil(r · n))`` kept, the others removed from the prompt);
``r = 1`` is the unpruned reference, which should reproduce the cache's own outcomes.

- **score**: the request's metric on the prediction, stored as the cache stores it (CIDEr / 10),
  so accuracy is the cache's accuracy;
- **cost**: the vision tokens kept (seed 05: ``remaining_vision_tokens``) in the cache's units
  (``samples/vision_tokens``: MolmoE-1B's image tokens for a model of MolmoE-1B's geometry scaled
  down, else the model's own): the image's tokens with its pooled tokens cut to
  ``max(1, ceil(r · n))`` of that geometry's ``n``;
- **latency**: the cache's latency estimator at the full configuration of the tier, with that
  cost as the vision tokens and the pruned run's own output length
  (:func:`model_runtime.latency_estimator.pruned_latency_ms`): an estimate in the same units as
  every other point of the Pareto plot, not a measured speed-up.

It is a *proxy*: nothing is trained for pruning, and the tokens are dropped before the language
model, so it measures what fewer vision tokens cost in accuracy.

Inputs: ``--model CKPT`` and ``--requests JSONL``, or, when not given, the checkpoint and request
file a live cache names in ``generator_params`` (``runtime.model``, ``build.dataset``) if they
are on this machine (the request file only if its sha256 is the recorded one). For the committed
default cache (:data:`cache.default.LIVE_DEFAULT_CACHE`), whose provenance names the build
machine's paths, they fall back to the committed checkpoint (:data:`cache.default.LIVE_DEFAULT_MODEL`,
when its ``importance.json`` is the cache's importance scores) and to the task suite rendered
again from its seed into ``DIR/suite/`` (``make_suite``, the checkpoint's ``suite_seed``; reused
when already there; accepted only when the JSONL's sha256 is the build's). Without them the
experiment is not run (the report says why); on a SYNTHETIC cache it does not apply.
``max_new_tokens`` and the prompt template are the cache build's. The requests run are a seeded
uniform sample (seed 0) of the test split's requests found in the request file, at most
``--pruning-requests`` (default 40; ``--quick``: 16, high tier only); CPU, float32, batches of 8.

Outputs: ``requests.csv.gz`` (per request, tier and r), ``results.csv`` (per tier, r and dataset,
``"all"`` included), ``token_pruning.csv`` (the ``"all"`` rows: the points that join
``DIR/pareto.csv`` as kind ``token pruning (proxy)``), ``summary.json`` and
``pareto_pruning.png`` (the points next to every fixed configuration on the same requests).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cache.default import LIVE_DEFAULT_CACHE, LIVE_DEFAULT_MODEL
from experiments.pipeline_parts.common import Context, MissingInputs, NotApplicable, mean_ci, subset

NAME = "token_pruning"
DESCRIPTION = ("Vision-token pruning proxy (a cost-matched baseline): the model run at the full LM configuration of "
               "each tier keeping a fraction r of each image's pooled vision tokens (highest connector-feature norm; "
               "max(1, ceil(r·n)) kept, the rest removed before the language model). Score: the request's metric "
               "(accuracy as the cache stores it); cost: the vision tokens kept, in the cache's units; latency: the "
               "cache's estimator at that token count, an estimate, not a measured speed-up. r = 1 is the unpruned "
               "reference (`share_score_equal_cache`: how often it reproduces the cache's score).")

KEEP_RATIOS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
DEFAULT_REQUESTS = 40
QUICK_REQUESTS = 16
BATCH_SIZE = 8
SAMPLE_SEED = 0
#: the committed default's request file, rendered again when its provenance path is not here: ``DIR/<SUITE_DIR>/``
SUITE_DIR = "suite"


def run(ctx: Context, out: Path) -> dict:
    if ctx.label.get("synthetic"):
        raise NotApplicable("the cache is SYNTHETIC: its outcomes come from a generative model, so there is no model "
                            "whose vision tokens could be pruned")
    t0 = time.perf_counter()
    model_dir, req_path, notes = resolve_inputs(ctx)
    from model_runtime.datasets import load_requests

    by_id = {r.id: r for r in load_requests(req_path)}
    ids = np.asarray(ctx.test.sample_ids).astype(str)
    found = np.flatnonzero(np.isin(ids, list(by_id)))
    if found.size == 0:
        raise ValueError(f"none of the cache's {ctx.test.n} test requests is in {req_path}: not the requests the "
                         "cache was built from")
    if found.size < ctx.test.n:
        notes.append(f"{ctx.test.n - found.size} of the {ctx.test.n} test requests are not in {req_path}")
    cap = ctx.pruning_requests or (QUICK_REQUESTS if ctx.quick else DEFAULT_REQUESTS)
    rng = np.random.default_rng(SAMPLE_SEED)
    rows = np.sort(rng.choice(found, size=min(cap, found.size), replace=False))
    ks = ctx.test.knob_space
    tiers = (ks.tiers[-1],) if ctx.quick else tuple(ks.tiers)
    ctx.log(f"token_pruning: {rows.size} test requests x tiers {list(tiers)} x r {list(KEEP_RATIOS)} on {model_dir}")
    records, run_info = run_proxy(ctx, model_dir, [by_id[i] for i in ids[rows]], rows, tiers)
    records.assign(synthetic=False, cache_label=ctx.label["cache_label"]).to_csv(out / "requests.csv.gz", index=False)
    results = aggregate(records)
    results.insert(0, "synthetic", False)
    results.insert(1, "cache_label", ctx.label["cache_label"])
    results.to_csv(out / "results.csv", index=False)
    table = results[results["dataset"] == "all"].drop(columns=["dataset"])
    table.to_csv(out / "token_pruning.csv", index=False)
    r1 = table[table["keep_ratio"] == 1.0]
    for _, row in r1.iterrows():
        if row["share_score_equal_cache"] < 1:
            notes.append(f"tier {row['tier']}: the unpruned run (r = 1) reproduces the cache's score on "
                         f"{row['share_score_equal_cache']:.0%} of the requests (another device, dtype or batch "
                         "composition changes some predictions)")
    notes.append(f"{rows.size} of the {ctx.test.n} test requests (seeded sample); the fixed configurations in "
                 "pareto_pruning.png are over the same requests, pareto.csv's other points over the whole test split")
    _write_summary(ctx, out, model_dir, req_path, rows, tiers, run_info, table, time.perf_counter() - t0)
    return {"figures": [_plot(ctx, out, table, rows)], "tables": ["token_pruning.csv", "results.csv"], "notes": notes,
            "inputs": {"model": str(model_dir), "requests": str(req_path), "n_requests": int(rows.size)}}


# ----------------------------------------------------------------------------- inputs
def resolve_inputs(ctx: Context) -> tuple[Path, Path, list[str]]:
    """(checkpoint folder, request JSONL, notes): the given ones, else the live cache's own when
    they are here (the request file unchanged), else, for the committed default cache only, its
    committed checkpoint and its task suite rendered again (:func:`default_suite`); MissingInputs
    saying what to pass otherwise."""
    from cache.reader import file_sha256

    gp = ctx.generator_params
    built_model = (gp.get("runtime") or {}).get("model")
    build = gp.get("build") or {}
    default = is_committed_default(ctx)
    notes: list[str] = []
    if ctx.model is not None:
        model = Path(ctx.model)
    elif built_model and Path(built_model).is_dir():
        model = Path(built_model)
        notes.append(f"model from the cache's provenance: {model}")
    else:
        where = f"the cache names {built_model}, which is not on this machine" if built_model else \
            "the cache does not name its model"
        if default:
            why = committed_model_mismatch(gp)
            if why is None:
                model = Path(LIVE_DEFAULT_MODEL)
                notes.append("model: the committed checkpoint of the default cache")
            else:
                raise MissingInputs(f"no model checkpoint ({where}; {why}); pass --model CKPT, the checkpoint the "
                                    "cache was built from")
        else:
            raise MissingInputs(f"no model checkpoint ({where}); pass --model CKPT, the checkpoint the cache was "
                                "built from")
    recorded_sha = build.get("dataset_sha256")
    if ctx.requests is not None:
        requests = Path(ctx.requests)
        if recorded_sha and file_sha256(requests) != recorded_sha:
            notes.append(f"{requests} differs from the request file the cache was built from (sha256); requests "
                         "are matched to the cache's by id")
    else:
        built = build.get("dataset")
        if built and Path(built).is_file():
            if recorded_sha and file_sha256(built) != recorded_sha:
                raise MissingInputs(f"the cache's request file {built} changed since the build (sha256 differs); pass "
                                    "--requests JSONL")
            requests = Path(built)
            notes.append(f"requests from the cache's provenance: {requests}")
        elif default and built and recorded_sha:
            requests, seed = default_suite(ctx, build)
            notes.append(f"requests: regenerated with make_suite --seed {seed} (sha256 equal to the build's): "
                         f"{requests}")
        else:
            where = f"the cache names {built}, which is not on this machine" if built else \
                "the cache does not name its request file"
            raise MissingInputs(f"no requests ({where}); pass --requests JSONL, the requests the cache was built from")
    return model, requests, notes


def is_committed_default(ctx: Context) -> bool:
    """Whether the context's cache is the committed live default (the same file, paths resolved)."""
    return Path(ctx.cache).resolve() == Path(LIVE_DEFAULT_CACHE).resolve()


def committed_model_mismatch(gp: dict[str, Any]) -> str | None:
    """None when the committed checkpoint's ``importance.json`` holds the cache's importance scores
    (the cache stores them rounded to 6 significant digits: rtol 1e-5), else why it is not taken."""
    path = Path(LIVE_DEFAULT_MODEL) / "importance.json"
    if not path.is_file():
        return f"the committed checkpoint {LIVE_DEFAULT_MODEL} has no importance.json"
    cached = (gp.get("importance") or {}).get("scores")
    if not cached:
        return "the cache does not record its importance scores"
    try:
        scores = np.asarray(json.loads(path.read_text())["scores"], dtype=float)
    except (ValueError, KeyError, TypeError) as e:
        return f"{path} is not readable ({e})"
    cached = np.asarray(cached, dtype=float)
    if scores.shape != cached.shape or not np.allclose(scores, cached, rtol=1e-5, atol=0):
        return f"the importance scores of the committed checkpoint {LIVE_DEFAULT_MODEL} are not the cache's"
    return None


def default_suite(ctx: Context, build: dict[str, Any]) -> tuple[Path, int]:
    """(request JSONL, seed): the committed default's request file rendered again into
    ``ctx.out / SUITE_DIR`` with ``make_suite`` (the suite is a pure function of its seed: the
    committed checkpoint's ``suite_seed``, 0 when it records none; ``per_task``: the build's
    requests over the suite's tasks; the split: the recorded file's name), or the one already
    there. MissingInputs unless its sha256 is the build's ``dataset_sha256``."""
    from cache.reader import file_sha256
    from model_runtime.datasets.suite import SPLITS, TASKS, make_suite

    built, recorded = Path(build["dataset"]), str(build["dataset_sha256"])
    n = build.get("n_requests")
    split = built.stem
    if built.suffix != ".jsonl" or split not in SPLITS or not isinstance(n, int) or n < 1 or n % len(TASKS):
        raise MissingInputs(f"no requests (the cache names {built}, which is not on this machine, and is not a task "
                            "suite's split file of whole tasks); pass --requests JSONL, the requests the cache was "
                            "built from")
    per_task, seed = n // len(TASKS), suite_seed()
    out = Path(ctx.out) / SUITE_DIR
    jsonl, manifest = out / f"{split}.jsonl", out / "manifest.json"
    try:
        m = json.loads(manifest.read_text()) if manifest.is_file() else {}
    except ValueError:
        m = {}
    if not (jsonl.is_file() and m.get("seed") == seed and m.get("per_task") == per_task
            and m.get("first_index", 0) == 0
            and split in m.get("splits", ()) and list(m.get("tasks", {})) == list(TASKS)):
        ctx.log(f"token_pruning: rendering the default cache's requests again (make_suite --seed {seed} --per-task "
                f"{per_task} --splits {split}: {n} requests) into {out}; about a minute on one core")
        t0 = time.perf_counter()
        make_suite(out, seed=seed, per_task=per_task, splits=(split,), overwrite=True,
                   workers=max(1, min(os.cpu_count() or 1, n // 250)))
        ctx.log(f"token_pruning: rendered in {time.perf_counter() - t0:.0f} s")
    sha = file_sha256(jsonl)
    if sha != recorded:
        raise MissingInputs(f"no requests: the cache names {built}, which is not on this machine, and the suite "
                            f"regenerated with make_suite --seed {seed} --per-task {per_task} ({jsonl}) differs from "
                            f"it (sha256 {sha[:12]}, the build's {recorded[:12]}; other PIL / matplotlib / easy-vqa "
                            "versions can render other requests); pass --requests JSONL, the requests the cache was "
                            "built from")
    return jsonl, seed


def suite_seed() -> int:
    """The seed of the suite the committed checkpoint was trained on (``train_config.json``'s
    ``train.suite_seed``, the suite folder's ``manifest.json`` seed; the default cache's requests
    are that folder's), 0 when it records none (``make_suite --seed 0``, the README's)."""
    try:
        return int(json.loads((Path(LIVE_DEFAULT_MODEL) / "train_config.json").read_text())["train"]["suite_seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


# ----------------------------------------------------------------------------- running
def run_proxy(ctx: Context, model_dir: Path, requests: list[Any], rows: np.ndarray,
              tiers: tuple[str, ...]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-request records of every (tier, r) on ``requests`` (the test split's ``rows``)."""
    import torch

    from cache.live_builder import cache_score
    from model_runtime.knob_space import KnobConfig
    from model_runtime.latency_estimator import LatencyEstimator, pruned_latency_ms, pruned_vision_tokens
    from model_runtime.molmoe.generation import DEFAULT_MAX_NEW_TOKENS
    from model_runtime.molmoe.runtime import MolmoeRuntime

    built = ctx.generator_params.get("runtime") or {}
    max_new = int(built.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)
    template = str(built.get("template") or "molmo")
    ks = ctx.test.knob_space
    base = MolmoeRuntime.from_checkpoint(model_dir, ks, dtype=torch.float32, device="cpu", max_batch_size=BATCH_SIZE,
                                         max_new_tokens=max_new, template=template, fast=False)
    est = LatencyEstimator.from_dict(ctx.estimator_json) if ctx.estimator_json else LatencyEstimator.default()
    full = ks.full_config
    data = ctx.test
    frames = []
    for t, tier in enumerate(ks.tiers):
        if tier not in tiers:
            continue
        cfg = KnobConfig(tier, full.p, full.top_k, full.blocks)
        c = ks.index(cfg)
        vtok = data.vision_tokens[rows, t].astype(np.int64)
        pooled = np.array([cache_pooled_tokens(base, r, tier, int(v)) for r, v in zip(requests, vtok)], dtype=np.int64)
        for keep in KEEP_RATIOS:
            rt = MolmoeRuntime(base.model, base.tokenizer, ks, max_batch_size=BATCH_SIZE, max_new_tokens=max_new,
                               template=template, fast=False, vision_keep=keep)
            outs = rt.run(requests, cfg)
            crops = np.array([o.crops for o in outs])
            if not np.array_equal(crops, data.crops[rows, t]):
                raise ValueError(f"tier {tier}: the model uses other crop counts than the cache stores: not the model "
                                 "and requests the cache was built from")
            out_tok = np.array([o.output_tokens for o in outs])
            lat = pruned_latency_ms(est, keep=keep, crops=crops, vision_tokens=vtok, pooled_tokens=pooled,
                                    prompt_tokens=data.prompt_tokens[rows], output_tokens=out_tok, p=cfg.p,
                                    top_k=cfg.top_k, blocks=cfg.blocks)
            scores = [cache_score(r.metric, o.score) for r, o in zip(requests, outs)]
            ctx.log(f"token_pruning: tier {tier}, r = {keep:g}: mean score {np.mean(scores):.3f}")
            frames.append(pd.DataFrame({
                "sample_index": rows, "request_id": [o.request_id for o in outs], "dataset": [o.dataset for o in outs],
                "tier": tier, "keep_ratio": keep, "config": str(cfg),
                "score": scores,
                "cache_score": data.score[rows, c], "output_tokens": out_tok, "crops": crops,
                "vision_tokens": vtok, "pooled_tokens": pooled,
                "remaining_vision_tokens": pruned_vision_tokens(vtok, pooled, keep),
                "model_vision_tokens": [o.vision_tokens for o in outs],
                "model_vision_tokens_kept": [o.vision_tokens_kept for o in outs],
                "prompt_tokens": data.prompt_tokens[rows], "latency_ms": np.asarray(lat["total_ms"], float),
                "prefill_ms": np.asarray(lat["prefill_ms"], float), "prediction": [o.prediction for o in outs],
            }))
    info = {"max_new_tokens": max_new, "template": template, "device": "cpu", "dtype": "float32",
            "batch_size": BATCH_SIZE, "estimator_source": est.source, "built_with": {k: built.get(k) for k in (
                "device", "dtype", "engine", "batch_size", "max_new_tokens")}}
    return pd.concat(frames, ignore_index=True), info


def cache_pooled_tokens(runtime: Any, request: Any, tier: str, cache_vision_tokens: int) -> int:
    """Pooled vision tokens of ``request``'s image at ``tier`` in the units of the cache's
    ``vision_tokens``: the model's own geometry when the cache stores the model's image tokens,
    MolmoE-1B's (the image at the model's ``molmoe_1b_image_scale``, sized as the live builder
    sizes it) when it stores those. ValueError when the stored count is neither."""
    from PIL import Image, ImageOps

    from model_runtime.molmoe.preprocessing import molmoe_1b_pooled_token_count, molmoe_1b_token_counts

    crops = runtime.knob_space.crops_for(tier)
    pre = runtime.model.preprocessor
    with Image.open(request.image) as im:
        raw_w, raw_h = im.size
        w, h = ImageOps.exif_transpose(im).size
    if pre.token_counts(h, w, crops)[1] == cache_vision_tokens:
        return pre.pooled_token_count(h, w, crops)
    scale = runtime.model.config.molmoe_1b_image_scale
    if scale is not None and molmoe_1b_token_counts(raw_h, raw_w, crops, scale)[1] == cache_vision_tokens:
        return molmoe_1b_pooled_token_count(raw_h, raw_w, crops, scale)
    raise ValueError(f"request {request.id}: the cache's {cache_vision_tokens} vision tokens at tier {tier} are neither "
                     "the model's nor MolmoE-1B's count for its image")


# ----------------------------------------------------------------------------- tables
def aggregate(records: pd.DataFrame) -> pd.DataFrame:
    """Per (tier, r, dataset) and over all datasets (``"all"``): accuracy with its bootstrap 95 %
    CI, mean estimated latency, mean vision tokens kept (the cost) and the share of requests whose
    score equals the cache's at the same configuration."""
    rows = []
    for (tier, keep), g in records.groupby(["tier", "keep_ratio"], sort=False):
        for ds, gd in [("all", g)] + sorted(g.groupby("dataset"), key=lambda x: str(x[0])):
            acc, lo, hi = mean_ci(gd["score"].to_numpy())
            rows.append({
                "policy": f"token_pruning[{tier},r={keep:g}]", "baseline_name": "vision_token_pruning_proxy",
                "tier": tier, "keep_ratio": keep, "dataset": ds, "n_requests": len(gd), "accuracy": acc,
                "accuracy_ci95_lo": lo, "accuracy_ci95_hi": hi, "mean_latency_ms": gd["latency_ms"].mean(),
                "mean_prefill_ms": gd["prefill_ms"].mean(),
                "remaining_vision_tokens": gd["remaining_vision_tokens"].mean(),
                "vision_tokens": gd["vision_tokens"].mean(),
                "kept_share_of_vision_tokens": gd["remaining_vision_tokens"].sum() / gd["vision_tokens"].sum(),
                "model_vision_tokens_kept": gd["model_vision_tokens_kept"].mean(),
                "mean_output_tokens": gd["output_tokens"].mean(), "cache_accuracy": gd["cache_score"].mean(),
                "share_score_equal_cache": _share_equal(gd["score"].to_numpy(), gd["cache_score"].to_numpy()),
            })
    return pd.DataFrame(rows)


def _share_equal(score: np.ndarray, cached: np.ndarray) -> float:
    """Share of the requests with a cached outcome whose score equals it (NaN when none has one)."""
    known = np.isfinite(cached)
    return float(np.isclose(score[known], cached[known], rtol=0, atol=1e-6).mean()) if known.any() else float("nan")


def _write_summary(ctx: Context, out: Path, model_dir: Path, req_path: Path, rows: np.ndarray, tiers: tuple[str, ...],
                   run_info: dict[str, Any], table: pd.DataFrame, wall_s: float) -> None:
    from cache.reader import file_sha256
    from experiments.evaluate import _json_default, _nan_to_none, _versions

    summary = {
        "synthetic": False, "cache_label": ctx.label["cache_label"], "generator": ctx.label.get("generator"),
        "model_id": ctx.label.get("model_id"), "experiment": NAME,
        "cache": {"path": str(Path(ctx.cache).resolve()), "sha256": ctx.sha256},
        "model": str(model_dir.resolve()),
        "requests": {"path": str(req_path.resolve()), "sha256": file_sha256(req_path),
                     "cache_dataset_sha256": (ctx.generator_params.get("build") or {}).get("dataset_sha256")},
        "n_requests": {"run": int(rows.size), "test": ctx.test.n},
        "sample": f"uniform without replacement from the test split's requests in the request file, seed {SAMPLE_SEED}",
        "tiers": list(tiers), "keep_ratios": list(KEEP_RATIOS), "run": run_info,
        "definitions": {
            "score": "the request's metric on the prediction, as the cache stores it (CIDEr / 10)",
            "ranking": "L2 norm of the connector's output feature of each pooled vision token (highest kept; ties to "
                       "the earlier position), over all crops of the image",
            "kept": "max(1, ceil(r * n)) of an image's n pooled vision tokens; the dropped ones are removed from the "
                    "prompt before the language model (positions renumbered over the kept tokens)",
            "cost": "remaining_vision_tokens: the image tokens left, in the cache's vision_tokens units",
            "latency_ms": "the cache's latency estimator at the tier's full LM configuration with "
                          "remaining_vision_tokens as the vision tokens and the run's own output tokens; an "
                          "estimate, not a measured speed-up",
            "proxy": "nothing is trained for pruning: the accuracy effect of fewer vision tokens at the cost they save",
        },
        "points": table.to_dict(orient="records"),
        "versions": _versions(), "wall_time_s": round(wall_s, 2),
    }
    (out / "summary.json").write_text(json.dumps(_nan_to_none(summary), indent=2, default=_json_default, allow_nan=False))


def _plot(ctx: Context, out: Path, table: pd.DataFrame, rows: np.ndarray) -> str:
    from experiments.evaluate import static_points
    from experiments.plots import pareto_plot

    static = static_points(subset(ctx.test, rows)).dropna(subset=["mean_latency_ms", "accuracy"])  # configurations built
    extra = pd.DataFrame({"series": [f"token pruning (proxy), tier {t}" for t in table["tier"]],
                          "mean_latency_ms": table["mean_latency_ms"], "accuracy": table["accuracy"],
                          "label": [f"r={k:g}" for k in table["keep_ratio"]]})
    policies = pd.DataFrame(columns=["policy", "budget_ms", "dataset", "mean_latency_ms", "accuracy"])
    main = ctx.out / "main" / "results.csv"
    if rows.size == ctx.test.n and (ctx.out / "main" / "DONE").exists():  # the same requests: the policies too
        res = pd.read_csv(main)
        policies = res[(res["seed"] == ctx.seeds[0]) & res["lambda"].isna()]
    pareto_plot(policies, static, out / "pareto_pruning.png", extra=extra,
                title=f"{ctx.tag}: token-pruning proxy vs fixed configurations ({rows.size} test requests)")
    return "pareto_pruning.png"
