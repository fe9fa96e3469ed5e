"""Dataset card of an outcome cache: ``python -m cache.info PATH``.

Prints what a user needs to know before training on a cache: where it came from (model,
generator, SYNTHETIC banner), its knob space, its samples per split × dataset, metrics, mean
score at the full and the cheapest configuration, coverage, budget range, prompt / vision token
statistics and the latency estimator it was calibrated with. :func:`card` returns the text.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cache.reader import OutcomeCache
from cache.schema import SPLITS, STATUS_FAILED, STATUS_OK, STATUS_PENDING, CacheError

SYNTHETIC_BANNER = "*** SYNTHETIC CACHE: outcomes come from a generative model, not from running MolmoE-1B ***"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


def _short(value: Any, limit: int = 100) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _range(values: tuple[int, ...]) -> str:
    vals = list(values)
    if len(vals) > 2 and vals == list(range(vals[0], vals[-1] + 1)):
        return f"{vals[0]}..{vals[-1]}"
    return ", ".join(str(v) for v in vals)


def _stats(x: np.ndarray) -> str:
    if x.size == 0:
        return "n/a"
    return f"mean {x.mean():.1f}, min {x.min()}, median {np.median(x):.0f}, max {x.max()}"


def _estimator_summary(est: Any) -> list[str]:
    if not isinstance(est, dict):
        return [f"  {_short(est)}"]
    lines = []
    for k, v in est.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            lines.append(f"  {k}: {_short(v)}")
        elif isinstance(v, dict):
            lines.append(f"  {k}: {{{_short(', '.join(sorted(map(str, v))), 80)}}}")
        else:
            lines.append(f"  {k}: {_short(v, 80)}")
    return lines


def _provenance(cache: OutcomeCache, names: list[str]) -> list[str]:
    """What each dataset stands in for (the project's task suite) and where accuracy and latency
    come from, for live caches."""
    if cache.synthetic:
        return []
    try:  # the suite's task descriptions (PIL only; no torch)
        from model_runtime.datasets.suite import TASK_INFO
    except ImportError:  # pragma: no cover - the suite ships with the package
        TASK_INFO = {}
    lines = []
    known = [n for n in names if n in TASK_INFO]
    if known:
        lines += ["", "tasks          (the project's VQA task suite, python -m experiments.make_suite)"]
        for n in known:
            info = TASK_INFO[n]
            lines.append(f"  {n}: stands in for {info.stands_in_for} ({info.metric}); {info.description}")
    defs = (cache.attrs.get("generator_params") or {}).get("definitions", {})
    if "MolmoE-1B's image tokens" in str(defs.get("vision_tokens", "")):
        lines += ["", f"provenance     accuracy of {cache.attrs.get('model_id')}, a small model trained here; latency of "
                      "MolmoE-1B at the same token counts (vision_tokens are MolmoE-1B's for each image)"]
    return lines


def card(path: str | Path) -> str:
    """The dataset card text of the cache at ``path``. Raises CacheError for an unreadable file."""
    path = Path(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = OutcomeCache(path, tokens="lazy", allow_unfinished=True)
    with cache:
        a, ks = cache.attrs, cache.knob_space
        L: list[str] = []
        if cache.synthetic:
            L += [SYNTHETIC_BANNER, ""]
        L.append(f"outcome cache  {path}")
        for w in caught:
            L.append(f"WARNING: {w.message}")
        L.append(f"size           {_size(path.stat().st_size)}   sha256 {cache.content_hash()[:16]}")
        L.append(f"model          {a.get('model_id')}")
        L.append(f"generator      {a.get('generator')}   params {_short(a.get('generator_params'))}")
        L.append(f"created        {a.get('created_at')} by {a.get('created_by')} (schema {a.get('schema_version')})")
        L.append(f"synthetic      {'YES' if cache.synthetic else 'no'}")

        L.append("")
        L.append(f"knob space     {len(ks)} configurations")
        L.append("  tiers        " + ", ".join(f"{t} ({c} crops)" for t, c in zip(ks.tiers, ks.crops)))
        L.append(f"  p            {_range(ks.insertion_positions)}   top-k {_range(ks.top_ks)}")
        L.append(
            f"  blocks       p+{ks.min_blocks_after}..{ks.num_blocks} of {ks.num_blocks} "
            f"(full {ks.full_config}, cheapest {ks.cheapest_config})"
        )
        order = np.argsort(-np.asarray(ks.importance_scores), kind="stable")
        L.append("  importance   " + " ".join(f"{s:g}" for s in ks.importance_scores))
        L.append("  drop order   " + " ".join(str(int(b)) for b in order[::-1][:6]) + " ... (least important first)")

        L.append("")
        names = cache.datasets or [f"#{i}" for i in range(int(cache.dataset.max()) + 1)]
        width = max(8, *(len(n) for n in names))
        L.append(f"samples        {cache.n_samples} ({int(np.sum(cache.samples_done == 1))} done)")
        L.append(f"  {'dataset':{width}s} " + " ".join(f"{s:>7s}" for s in SPLITS) + f" {'total':>7s}  metric")
        for d, name in enumerate(names):
            row = cache.dataset == d
            counts = [int(np.sum(row & (cache.split == s))) for s in range(len(SPLITS))]
            L.append(
                f"  {name:{width}s} " + " ".join(f"{c:7d}" for c in counts)
                + f" {int(row.sum()):7d}  {cache.metrics.get(name, '?')}"
            )

        full, cheap = ks.index(ks.full_config), ks.index(ks.cheapest_config)
        L.append("")
        L.append(f"mean score     {'dataset':{width}s} {'full':>7s} {'cheapest':>9s}   (OK outcomes only)")
        for d, name in enumerate(names):
            row = cache.dataset == d
            means = []
            for c in (full, cheap):
                s = cache.score[row, c]
                s = s[np.isfinite(s)]
                means.append(f"{s.mean():.3f}" if s.size else "n/a")
            L.append(f"               {name:{width}s} {means[0]:>7s} {means[1]:>9s}")

        L.append("")
        L.append(f"output tokens  {'dataset':{width}s} at the full configuration: mean, median, max")
        for d, name in enumerate(names):
            tok = cache.output_tokens[(cache.dataset == d) & (cache.status[:, full] == STATUS_OK), full]
            L.append(f"               {name:{width}s} " + (f"{tok.mean():.1f}, {np.median(tok):.0f}, {tok.max()}"
                                                        if tok.size else "n/a"))
        L.extend(_provenance(cache, names))

        st = cache.status
        per_cfg = (st == STATUS_OK).mean(axis=0)
        L.append("")
        L.append(
            f"coverage       {100 * np.mean(st == STATUS_OK):.2f}% OK, {int(np.sum(st == STATUS_PENDING))} pending, "
            f"{int(np.sum(st == STATUS_FAILED))} failed; per configuration {100 * per_cfg.min():.1f}%..{100 * per_cfg.max():.1f}%"
        )
        measured = np.all(np.isfinite(cache.measured_ms), axis=-1)
        L.append(f"measured ms    {100 * measured.mean():.1f}% of outcomes")
        br = cache.budget_range_ms
        L.append(f"budget range   {'not set' if br is None else f'{br[0]:.1f} .. {br[1]:.1f} ms'}")
        done = cache.samples_done == 1
        L.append(f"prompt tokens  {_stats(cache.prompt_tokens[done])}")
        for t, tier in enumerate(ks.tiers):
            L.append(
                f"vision tokens  {tier:8s} {_stats(cache.vision_tokens[done, t])}; "
                f"crops mean {cache.crops[done, t].mean() if done.any() else float('nan'):.1f}"
            )
        L.append(
            f"features       lang {cache.lang_dim}-d float32, latency tokens "
            f"({len(ks.tiers)}, {len(ks.insertion_positions)}, {cache.token_dim}) float16 per sample"
        )
        unc = np.isfinite(cache.uncertainty).all(axis=1)
        L.append(f"uncertainty    known for {100 * unc.mean():.1f}% of samples")
        L.append("")
        if cache.estimator_json is None:
            L.append("estimator      none stored")
        else:
            L.append("estimator")
            L.extend(_estimator_summary(cache.estimator_json))
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cache.info", description="Print the dataset card of an outcome cache.")
    ap.add_argument("path", help="the cache file (.h5)")
    args = ap.parse_args(argv)
    try:
        print(card(args.path))
    except CacheError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
