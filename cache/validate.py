"""Integrity check of an outcome cache: ``python -m cache.validate PATH`` (exit 0 ok, 1 problems).

Checks: the file opens as HDF5; format and schema version; root attributes (present, JSON ones
parse, ``knob_space`` is a valid knob space, ``metrics`` covers ``datasets``,
``budget_range_ms`` is ``null`` or ``[lo, hi]``); every dataset's shape and dtype against the
knob space and sizes (``C`` must equal the knob space's configuration count); every sample row
done; ids non-empty and unique (also across splits); split / dataset codes in range; answers
JSON; token counts sane (crops >= 1, non-decreasing over tiers); language features and latency
tokens finite; status codes known; per-configuration coverage (fraction of OK outcomes; every
configuration below ``min_coverage`` listed); scores in [0, 1] and output_tokens >= 1 where
OK; measured latencies >= 0; no unfinished-build journal beside the file.

A documented subset build (``experiments.build_cache --configs SUBSET``, recorded as the index
list ``generator_params.build.configs``) is valid but partial: the unselected configurations'
outcomes must all be PENDING, the coverage bar applies to the selected ones, and the report and
verdict say ``PARTIAL`` / ``VALID: partial``.

Importable: :func:`validate` returns the problems as a list of strings (empty = valid).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from cache.reader import (
    CacheDims,
    decode_attr,
    iter_row_blocks,
    open_h5,
    structure_problems,
)
from cache.schema import DATASETS, FORMAT_NAME, ROOT_ATTRS, SCHEMA_VERSION, SPLITS, STATUS_FAILED, STATUS_OK, STATUS_PENDING, CacheError
from model_runtime.knob_space import KnobSpace

#: How many offending items a problem line names before "... and N more".
MAX_LISTED = 8


def _listing(items: list[str], total: int | None = None) -> str:
    """The first :data:`MAX_LISTED` of ``items`` (of ``total``, default ``len(items)``)."""
    extra = (len(items) if total is None else total) - MAX_LISTED
    return ", ".join(items[:MAX_LISTED]) + (f", ... and {extra} more" if extra > 0 else "")


def check(path: str | Path, *, min_coverage: float = 1.0) -> tuple[list[str], list[str]]:
    """``(report lines, problems)`` for the cache at ``path``; see the module docstring."""
    path = Path(path)
    report: list[str] = [f"file: {path}"]
    problems: list[str] = []
    try:
        f = open_h5(path, "r")
    except CacheError as e:
        return report, [str(e)]
    with f:
        # ............................................................ identity and attributes
        fmt = decode_attr("format", f.attrs["format"]) if "format" in f.attrs else None
        if fmt != FORMAT_NAME:
            return report, [f"not a molmoe-gym outcome cache: attribute 'format' is {fmt!r}, expected {FORMAT_NAME!r}"]
        version = decode_attr("schema_version", f.attrs["schema_version"]) if "schema_version" in f.attrs else None
        if version != SCHEMA_VERSION:
            return report, [f"schema version {version} is not supported (expected {SCHEMA_VERSION})"]
        report.append(f"format {FORMAT_NAME}, schema version {version}: ok")
        attrs: dict = {}
        for name in ROOT_ATTRS:
            if name not in f.attrs:
                problems.append(f"root attribute {name!r} is missing")
                continue
            try:
                attrs[name] = decode_attr(name, f.attrs[name])
            except CacheError as e:
                problems.append(str(e))
        try:
            ks = KnobSpace.from_dict(attrs["knob_space"])
        except (KeyError, TypeError, ValueError) as e:
            problems.append(f"attribute 'knob_space' does not parse as a knob space: {e}")
            return report, problems
        report.append(f"knob space: {len(ks)} configurations, {len(ks.tiers)} tiers, {len(ks.insertion_positions)} positions")
        datasets = attrs.get("datasets")
        if not isinstance(datasets, list) or not datasets:
            problems.append(f"attribute 'datasets' must be a non-empty JSON list, got {datasets!r}")
            datasets = []
        metrics = attrs.get("metrics")
        if not isinstance(metrics, dict) or set(metrics) != set(datasets):
            problems.append(f"attribute 'metrics' must map every dataset {datasets} to a metric, got {metrics!r}")
        br = attrs.get("budget_range_ms")
        if br is not None and not (
            isinstance(br, list) and len(br) == 2 and all(isinstance(x, (int, float)) and math.isfinite(x) for x in br)
            and 0 <= br[0] <= br[1]
        ):
            problems.append(f"attribute 'budget_range_ms' must be null or [lo, hi] with 0 <= lo <= hi, got {br!r}")
        if "synthetic" in attrs and attrs["synthetic"]:
            report.append("SYNTHETIC cache")

        # ............................................................ structure
        def dim(name: str, axis: int) -> int:
            ds = f.get(name)
            return int(ds.shape[axis]) if ds is not None and len(ds.shape) > axis else -1

        dims = CacheDims(
            dim("samples/id", 0), len(ks), len(ks.tiers), len(ks.insertion_positions),
            dim("samples/lang_feature", 1), dim("samples/latency_token", 3),
        )
        if min(dims.S, dims.Dl, dims.Dt) < 1:
            problems.append(f"cannot determine the sizes S / Dl / Dt from the datasets (got {dims})")
        if "outcomes/score" in f and f["outcomes/score"].ndim == 2 and f["outcomes/score"].shape[1] != len(ks):
            problems.append(
                f"outcomes have {f['outcomes/score'].shape[1]} configurations but the knob space has {len(ks)}"
            )
        structural = structure_problems(f, dims)
        problems.extend(structural)
        for name, (_, spec) in DATASETS.items():
            if name in f:
                ok = not any(f"{name!r}" in p for p in structural)
                shown = "str (utf-8)" if spec == "str" and ok else str(f[name].dtype)
                report.append(f"  {name:24s} {str(f[name].shape):22s} {shown:12s} {'ok' if ok else 'MISMATCH'}")
        if structural or min(dims.S, dims.Dl, dims.Dt) < 1:
            return report, problems
        report.append(f"sizes: S={dims.S} C={dims.C} T={dims.T} P={dims.P} Dl={dims.Dl} Dt={dims.Dt}")

        # ............................................................ sample table
        S = dims.S
        done = f["progress/samples_done"][()]
        n_done = int(np.sum(done == 1))
        if n_done != S:
            problems.append(f"{S - n_done} of {S} sample rows are not done (progress/samples_done != 1)")
        ids = f["samples/id"].asstr()[()]
        split = f["samples/split"][()].astype(np.int64)
        dset = f["samples/dataset"][()].astype(np.int64)
        empty = np.flatnonzero(ids == "")
        if empty.size:
            problems.append(f"{empty.size} sample rows have an empty id (rows {_listing([str(i) for i in empty])})")
        bad_split = np.flatnonzero((split < 0) | (split >= len(SPLITS)))
        if bad_split.size:
            problems.append(f"{bad_split.size} rows have a split code outside 0..{len(SPLITS) - 1}")
        bad_ds = np.flatnonzero((dset < 0) | (dset >= max(1, len(datasets))))
        if bad_ds.size:
            problems.append(f"{bad_ds.size} rows have a dataset index outside 0..{len(datasets) - 1}")
        nonempty = ids != ""
        uniq, inverse, counts = np.unique(ids[nonempty], return_inverse=True, return_counts=True)
        dup = uniq[counts > 1]
        if dup.size:
            # an id in two splits leaks test data into training: report it by name
            lo = np.full(uniq.size, np.iinfo(np.int64).max)
            hi = np.full(uniq.size, np.iinfo(np.int64).min)
            np.minimum.at(lo, inverse, split[nonempty])
            np.maximum.at(hi, inverse, split[nonempty])
            cross = np.flatnonzero(lo != hi)
            if cross.size:
                names = [f"{uniq[u]!r} ({SPLITS[lo[u]] if 0 <= lo[u] < 3 else lo[u]} and "
                         f"{SPLITS[hi[u]] if 0 <= hi[u] < 3 else hi[u]})" for u in cross[:MAX_LISTED]]
                problems.append(
                    f"overlapping splits: {cross.size} ids appear in more than one split: "
                    + _listing(names, cross.size)
                )
            problems.append(f"{dup.size} ids are not unique: {_listing([repr(d) for d in dup.tolist()])}")
        counts_by_split = {s: int(np.sum(split == i)) for i, s in enumerate(SPLITS)}
        report.append("splits: " + ", ".join(f"{s} {n}" for s, n in counts_by_split.items())
                      + f" (every sample in exactly one split: {'yes' if bad_split.size == 0 else 'no'})")
        bad_json = 0
        for text in f["samples/answers"].asstr()[()][done == 1].tolist():
            try:
                json.loads(text)
            except ValueError:
                bad_json += 1
        if bad_json:
            problems.append(f"{bad_json} done rows have answers that are not valid JSON")
        crops = f["samples/crops"][()][done == 1]
        vis = f["samples/vision_tokens"][()][done == 1]
        if crops.size and crops.min() < 1:
            problems.append(f"{int(np.sum(np.any(crops < 1, axis=1)))} done rows have a tier with < 1 crop")
        if crops.size and np.any(np.diff(crops, axis=1) < 0):
            problems.append(f"{int(np.sum(np.any(np.diff(crops, axis=1) < 0, axis=1)))} rows use fewer crops at a higher tier")
        if vis.size and (vis.min() < 0 or np.any(np.diff(vis, axis=1) < 0)):
            problems.append("vision_tokens must be >= 0 and non-decreasing over tiers")
        pt = f["samples/prompt_tokens"][()][done == 1]
        if pt.size and pt.min() < 0:
            problems.append("prompt_tokens has negative values")
        lang = f["samples/lang_feature"][()][done == 1]
        if not np.all(np.isfinite(lang)):
            problems.append(f"{int(np.sum(~np.all(np.isfinite(lang), axis=1)))} done rows have non-finite lang_feature values")
        tok_ds, bad_tok = f["samples/latency_token"], 0
        block = max(1, (64 * 2**20) // max(1, int(np.prod(tok_ds.shape[1:])) * 2))
        for sl in iter_row_blocks(S, block):
            t = tok_ds[sl]
            bad_tok += int(np.sum(~np.all(np.isfinite(t.reshape(t.shape[0], -1)), axis=1) & (done[sl] == 1)))
        if bad_tok:
            problems.append(f"{bad_tok} done rows have non-finite latency_token values")
        unc = f["samples/uncertainty"][()]
        if np.any(np.isinf(unc)):
            problems.append("uncertainty has infinite values (use NaN for unknown)")

        # ............................................................ outcomes
        status = f["outcomes/status"][()]
        unknown_status = int(np.sum((status != STATUS_PENDING) & (status != STATUS_OK) & (status != STATUS_FAILED)))
        if unknown_status:
            problems.append(f"{unknown_status} outcomes have an unknown status code")
        ok = status == STATUS_OK
        cov = ok.mean(axis=0)
        n_pending, n_failed = int(np.sum(status == STATUS_PENDING)), int(np.sum(status == STATUS_FAILED))
        report.append(
            f"coverage: {100 * ok.mean():.2f}% of outcomes OK ({n_pending} pending, {n_failed} failed); "
            f"per configuration min {100 * cov.min():.2f}%"
        )
        # a subset build (build_cache --configs) computes only the selected configurations:
        # the others stay PENDING, and coverage applies to the selected ones only
        selected = _subset_configs(attrs.get("generator_params"), len(ks))
        if selected is not None:
            unselected = np.ones(len(ks), dtype=bool)
            unselected[selected] = False
            touched = np.flatnonzero(unselected & np.any(status != STATUS_PENDING, axis=0))
            if touched.size:
                problems.append(f"{touched.size} configurations outside the subset build's --configs have outcomes "
                                f"that are not PENDING: {_listing([str(int(c)) for c in touched])}")
            report.append(
                f"PARTIAL: subset build of {len(selected)} of {len(ks)} configurations (build_cache --configs "
                f"{_config_spec(attrs.get('generator_params'))}); the other {len(ks) - len(selected)} configurations' "
                f"outcomes are PENDING by design; coverage is checked on the selected ones"
            )
            cov = np.where(unselected, 1.0, cov)
        low = np.flatnonzero(cov < min_coverage - 1e-12)
        if low.size:
            items = [f"{c} {ks.config(int(c))} ({100 * cov[c]:.1f}%)" for c in low]
            problems.append(
                f"{low.size} configurations have coverage below {100 * min_coverage:g}% "
                f"({n_pending} pending, {n_failed} failed outcomes): {_listing(items)}"
            )
        score = f["outcomes/score"][()]
        s_ok = score[ok]
        if np.any(np.isnan(s_ok)):
            problems.append(f"{int(np.sum(np.isnan(s_ok)))} outcomes have status OK but a NaN score")
        out_of_range = int(np.sum((s_ok < 0) | (s_ok > 1)))
        if out_of_range:
            problems.append(f"{out_of_range} OK scores lie outside [0, 1] (range {np.nanmin(s_ok):g} .. {np.nanmax(s_ok):g})")
        del score, s_ok
        ot = f["outcomes/output_tokens"][()]
        if np.any(ot[ok] < 1):
            problems.append(f"{int(np.sum(ot[ok] < 1))} OK outcomes have output_tokens < 1")
        del ot
        ms = f["outcomes/measured_ms"][()]
        if np.any(np.isinf(ms)) or np.any(ms[np.isfinite(ms)] < 0):
            problems.append("measured_ms has infinite or negative values")
        report.append(f"measured latencies present for {100 * np.mean(np.all(np.isfinite(ms), axis=-1)):.1f}% of outcomes")
        del ms
    journal = path.with_name(path.name + ".journal")
    if journal.is_dir():
        from cache.unfinished import finish_command

        problems.append(f"a build journal exists at {journal}: the build is unfinished (finish it with "
                        f"{finish_command(path)})")
    return report, problems


def _subset_configs(generator_params: object, n_configs: int) -> np.ndarray | None:
    """The configuration indices of a subset build (``generator_params.build.configs``, a list
    written by ``build_cache --configs``), or None for a full build / another generator."""
    build = generator_params.get("build") if isinstance(generator_params, dict) else None
    configs = build.get("configs") if isinstance(build, dict) else None
    if not isinstance(configs, list) or not configs:
        return None
    idx = np.asarray([c for c in configs if isinstance(c, int) and 0 <= c < n_configs], dtype=np.int64)
    return np.unique(idx) if idx.size and idx.size < n_configs else None


def _config_spec(generator_params: object) -> str:
    build = generator_params.get("build") if isinstance(generator_params, dict) else None
    spec = build.get("config_spec") if isinstance(build, dict) else None
    return str(spec) if spec else "SUBSET"


def is_partial(report: list[str]) -> bool:
    """Whether :func:`check`'s report describes a (valid) subset build."""
    return any(line.startswith("PARTIAL:") for line in report)


def validate(path: str | Path, *, min_coverage: float = 1.0) -> list[str]:
    """Problems of the cache at ``path`` (empty list = valid). Never raises for a bad file."""
    return check(path, min_coverage=min_coverage)[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cache.validate", description="Check an HDF5 outcome cache.")
    ap.add_argument("path", help="the cache file (.h5)")
    ap.add_argument("--min-coverage", type=float, default=1.0,
                    help="fraction of OK outcomes every configuration needs (default 1.0)")
    ap.add_argument("-q", "--quiet", action="store_true", help="print only the problems and the verdict")
    args = ap.parse_args(argv)
    report, problems = check(args.path, min_coverage=args.min_coverage)
    if not args.quiet:
        print("\n".join(report))
    for p in problems:
        print(f"PROBLEM: {p}")
    partial = " partial (a subset build, see PARTIAL above)," if is_partial(report) and not problems else ""
    print(f"{'INVALID' if problems else 'VALID'}:{partial} {args.path} ({len(problems)} problem{'s' if len(problems) != 1 else ''})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
