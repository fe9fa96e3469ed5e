"""Merge the shard files of a sharded live build into one cache.

Usage::

    python -m experiments.merge_cache_shards --out cache.h5 cache.shard0of4.h5 ... cache.shard3of4.h5
        [--overwrite] [--allow-incomplete] [--estimator JSON]

``experiments.build_cache --num-shards W`` writes one file per rank; each holds every request
row (the same global request order, splits and datasets) but fills only the rows of its chunks.
The merge checks that the shards belong to one build (same knob space incl. importance scores,
model id, generator, ``generator_params`` (but library versions and file locations), datasets,
metrics, sizes; distinct ranks of one
``num_shards``; no sample row or outcome filled in two shards) and copies every filled row
(sample table and all outcome columns, statuses and errors included) into a new cache through
:class:`cache.writer.CacheWriter`. The budget range is then derived from the merged samples
exactly as a single build derives it (:func:`cache.live_builder.finalize`), with the
shards' estimator (or ``--estimator``), so that the merged file equals a single build of the
same settings, measured latencies aside.

Without ``--allow-incomplete`` a missing rank or an unfinished shard (pending sample rows of its
own chunks) is an error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cache.schema import STATUS_PENDING, CacheError

#: Root attributes that must be equal in every shard.
SAME_ATTRS: tuple[str, ...] = ("knob_space", "model_id", "generator", "synthetic", "datasets", "metrics",
                               "schema_version", "format")
#: Rows copied per write call.
BLOCK_ROWS = 256


def _attr(f: Any, name: str) -> Any:
    from cache.reader import decode_attr

    v = f.attrs.get(name)
    if isinstance(v, bytes):
        v = v.decode()
    if name == "shard" and isinstance(v, str):
        return json.loads(v)
    return decode_attr(name, v) if v is not None else None


def read_shard_info(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Identity attributes, sizes and filled rows of each shard; raises CacheError when they do not
    belong to one build."""
    from cache.journal import journal_dir
    from cache.reader import check_identity, open_h5

    infos = []
    for p in paths:
        if journal_dir(p).is_dir():
            raise CacheError(f"{p}: has a build journal (unfinished or killed build); finish it with --resume first")
        with open_h5(p) as f:
            check_identity(f, p)
            info = {name: _attr(f, name) for name in SAME_ATTRS + ("generator_params",)}
            info["path"] = p
            info["shard"] = _attr(f, "shard")
            info["estimator"] = _attr(f, "estimator")
            info["shapes"] = {name: f[name].shape for name in ("samples/lang_feature", "samples/latency_token",
                                                                "outcomes/score")}
            done = f["progress/samples_done"][()]
            status = f["outcomes/status"][()]
            info["rows"] = np.flatnonzero((done > 0) | (status != STATUS_PENDING).any(axis=1))
            info["done"] = done
            infos.append(info)
    from cache.live_builder import params_mismatch

    ref = infos[0]
    for info in infos[1:]:
        for name in SAME_ATTRS:
            if info[name] != ref[name]:
                raise CacheError(f"{info['path']}: attribute {name!r} differs from {ref['path']}; not shards of one build")
        diff = params_mismatch(ref["generator_params"], info["generator_params"])
        if diff:
            raise CacheError(f"{info['path']}: generator_params differ from {ref['path']}: " + "; ".join(diff))
        if info["shapes"] != ref["shapes"]:
            raise CacheError(f"{info['path']}: sizes {info['shapes']} differ from {ref['path']} {ref['shapes']}")
    if ref["generator"] != "live":
        raise CacheError(f"{ref['path']}: generator {ref['generator']!r}; only live builds are sharded")
    return infos


def check_coverage(infos: Sequence[dict[str, Any]], *, allow_incomplete: bool) -> None:
    """Ranks distinct and complete, filled rows disjoint, every shard's own chunks finished."""
    from cache.live_builder import chunk_rows

    shards = [i["shard"] for i in infos]
    if any(s is None for s in shards):
        if len(infos) > 1:
            bad = [str(i["path"]) for i in infos if i["shard"] is None]
            raise CacheError(f"{bad}: not shard files (no 'shard' attribute)")
    else:
        worlds = {s["num_shards"] for s in shards}
        if len(worlds) != 1:
            raise CacheError(f"shards of different num_shards {sorted(worlds)}")
        world = worlds.pop()
        ranks = [s["rank"] for s in shards]
        if len(set(ranks)) != len(ranks):
            raise CacheError(f"rank(s) given twice: {sorted(r for r in ranks if ranks.count(r) > 1)}")
        missing = sorted(set(range(world)) - set(ranks))
        if missing and not allow_incomplete:
            raise CacheError(f"ranks {missing} of {world} are missing (pass --allow-incomplete to merge anyway)")
        if not allow_incomplete:
            S = infos[0]["shapes"]["outcomes/score"][0]
            for info, s in zip(infos, shards):
                own = np.concatenate(chunk_rows(S, s["chunk_requests"], s["rank"], world) or [np.zeros(0, np.int64)])
                left = int((info["done"][own] == 0).sum())
                if left:
                    raise CacheError(f"{info['path']}: {left} of its sample rows are unfinished (resume that shard first)")
    seen: dict[int, Path] = {}
    for info in infos:
        for r in info["rows"].tolist():
            if r in seen:
                raise CacheError(f"row {r} is filled in both {seen[r]} and {info['path']}")
            seen[r] = info["path"]


def merge_shards(out: Path, shards: Sequence[Path], *, overwrite: bool = False, allow_incomplete: bool = False,
                 estimator: Any = None) -> dict[str, Any]:
    """Merge ``shards`` into a new cache ``out``; returns a summary (rows per shard, budget range)."""
    import h5py

    from cache.writer import CacheWriter
    from envs.knob_space import KnobSpace
    from cache.live_builder import finalize
    from model_runtime.latency_estimator import LatencyEstimator

    shards = [Path(p) for p in shards]
    if not shards:
        raise ValueError("no shard files given")
    if Path(out).resolve() in {p.resolve() for p in shards}:
        raise ValueError(f"--out {out} is one of the shards")
    infos = read_shard_info(shards)
    check_coverage(infos, allow_incomplete=allow_incomplete)
    ref = infos[0]
    S, Dl = ref["shapes"]["samples/lang_feature"]
    Dt = ref["shapes"]["samples/latency_token"][3]
    ks = KnobSpace.from_dict(ref["knob_space"])
    w = CacheWriter.create(out, knob_space=ks, n_samples=S, lang_dim=Dl, token_dim=Dt, model_id=ref["model_id"],
                           generator=ref["generator"], generator_params=ref["generator_params"],
                           datasets=list(ref["datasets"]), metrics=dict(ref["metrics"]), synthetic=bool(ref["synthetic"]),
                           overwrite=overwrite)
    summary: dict[str, Any] = {"rows": {}}
    sample_fields = ("id", "dataset", "split", "question", "answers", "prompt_tokens", "crops", "vision_tokens",
                     "lang_feature", "latency_token", "uncertainty")
    try:
        for info in infos:
            rows = info["rows"]
            summary["rows"][str(info["path"])] = int(rows.size)
            with h5py.File(info["path"], "r") as f:
                for a in range(0, rows.size, BLOCK_ROWS):
                    r = rows[a : a + BLOCK_ROWS]
                    done = r[info["done"][r] > 0]
                    if done.size:
                        fields = {}
                        for name in sample_fields:
                            ds = f[f"samples/{name}"]
                            fields[name] = (ds.asstr()[done] if name in ("id", "question", "answers") else ds[done])
                            if name in ("id", "question", "answers"):
                                fields[name] = np.asarray(fields[name], dtype=object)
                        w.write_samples(done, **fields)
                    o = {name: f[f"outcomes/{name}"] for name in
                         ("score", "output_tokens", "measured_ms", "prediction", "status", "error")}
                    w.write_outcomes(
                        r, np.arange(len(ks)), score=o["score"][r], output_tokens=o["output_tokens"][r],
                        measured_ms=o["measured_ms"][r], prediction=np.asarray(o["prediction"].asstr()[r], dtype=object),
                        status=o["status"][r], error=np.asarray(o["error"].asstr()[r], dtype=object),
                    )
    except BaseException:
        w.__exit__(*sys.exc_info())
        raise
    w.close()
    if estimator is None:
        estimator = LatencyEstimator.from_dict(ref["estimator"]) if ref["estimator"] else LatencyEstimator.default()
    summary["budget_range_ms"] = finalize(Path(out), estimator)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.merge_cache_shards",
                                 description="Merge the shard files of a sharded live cache build.")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("shards", type=Path, nargs="+")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--allow-incomplete", action="store_true", help="merge even with missing ranks / unfinished shards")
    ap.add_argument("--estimator", default=None, help="latency estimator: a packaged name or a JSON file (default: the shards')")
    args = ap.parse_args(argv)
    from model_runtime.latency_estimator import LatencyEstimator

    est = LatencyEstimator.resolve(args.estimator) if args.estimator else None
    summary = merge_shards(args.out, args.shards, overwrite=args.overwrite, allow_incomplete=args.allow_incomplete,
                           estimator=est)
    for path, n in summary["rows"].items():
        print(f"{path}: {n} rows")
    print(f"wrote {args.out}; budget range {summary['budget_range_ms']} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
