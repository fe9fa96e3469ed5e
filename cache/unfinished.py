"""Unfinished cache builds: how to recognise one and the command that finishes it.

A cache build keeps its write-ahead journal ``<path>.journal/`` (:mod:`cache.journal`) until
:meth:`cache.writer.CacheWriter.close` has made the file durable, so a journal beside a cache
file means the build was interrupted (Ctrl-C, a kill, a crash) or is still running. Such a file
holds only part of its rows (unwritten request ids are empty strings, outcomes PENDING), so the
readers that would use it (:class:`cache.reader.OutcomeCache` and, through it, the envs) refuse
it with :func:`unfinished_message`, which names the command that resumes the build:

- a SYNTHETIC cache of ``cache.synthetic``: ``python -m cache.synthetic --out PATH --resume``
  with the options of the original build (reconstructed from its stored parameters when the
  command line can express them);
- a live cache of ``experiments.build_cache``: ``python -m experiments.build_cache --model M
  --dataset D --out PATH --resume`` (``M`` and ``D`` from the stored build settings);
- anything else: ``CacheWriter.resume(PATH)``.

Only the standard library and numpy are imported at module level (``cache.synthetic`` lazily,
when a synthetic command is reconstructed).
"""

from __future__ import annotations

import json
import os
import shlex
from typing import Any

from cache.journal import Journal, journal_dir
from cache.schema import CacheError


def is_unfinished(path: str | os.PathLike) -> bool:
    """True when a build journal exists beside ``path`` (the build was interrupted or runs)."""
    return journal_dir(path).is_dir()


def stored_attrs(path: str | os.PathLike) -> dict[str, Any] | None:
    """Root attributes of a (possibly unfinished) cache, from its journal header when a journal
    exists (the file itself may be broken), else from the file; None when unreadable."""
    jdir = journal_dir(path)
    if jdir.is_dir():
        try:
            attrs = Journal.open(jdir).header.get("attrs")
        except CacheError:
            attrs = None
        if isinstance(attrs, dict):
            return attrs
    try:
        import h5py

        from cache.reader import decode_attr

        with h5py.File(path, "r") as f:
            return {k: decode_attr(k, v) for k, v in f.attrs.items()}
    except (OSError, ValueError, KeyError, CacheError):
        return None


def json_attr(value: Any) -> Any:
    """An attribute value as stored in a journal header (JSON text) or decoded from the file (as is);
    None for text that is not JSON."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _quote(path: str | os.PathLike) -> str:
    return shlex.quote(str(path))


def synthetic_command(path: str | os.PathLike, generator_params: Any) -> str | None:
    """``python -m cache.synthetic --out PATH --resume ...`` that continues the build of
    ``generator_params`` (the stored attribute), or None when its command line cannot express
    those parameters (a build started from Python with custom parameters)."""
    gp = json_attr(generator_params)
    if not isinstance(gp, dict) or not isinstance(gp.get("params"), dict) or "seed" not in gp:
        return None
    p, seed = gp["params"], gp["seed"]
    try:
        from cache.synthetic import DATASET_PREFIX, SyntheticParams, _parser, select_datasets

        default = SyntheticParams()
        flags: list[str] = []
        if p.get("n_samples") != default.n_samples:
            flags += ["--samples", str(p["n_samples"])]
        if seed != 0:
            flags += ["--seed", str(seed)]
        if p.get("lang_dim") != default.lang_dim:
            flags += ["--lang-dim", str(p["lang_dim"])]
        if p.get("token_dim") != default.token_dim:
            flags += ["--token-dim", str(p["token_dim"])]
        if p.get("lang_r2_output_length") != default.lang_r2_output_length:
            flags += ["--lang-r2-output-length", repr(float(p["lang_r2_output_length"]))]
        if tuple(p.get("splits", ())) != tuple(default.splits):
            flags += ["--splits", *(repr(float(x)) for x in p["splits"])]
        default_ds = json.loads(json.dumps(default.to_dict()["datasets"]))
        if p.get("datasets") != default_ds:
            flags += ["--datasets", *(f"{d['name'].removeprefix(DATASET_PREFIX)}:{float(d['weight']):g}" for d in p["datasets"])]
        # the command must rebuild exactly the stored parameters (else resume would refuse)
        args = _parser().parse_args(["--out", str(path), *flags])
        kw: dict[str, Any] = dict(lang_dim=args.lang_dim, token_dim=args.token_dim,
                                  splits=tuple(args.splits), lang_r2_output_length=args.lang_r2_output_length)
        if args.samples is not None:
            kw["n_samples"] = args.samples
        if args.datasets:
            kw["datasets"] = select_datasets(args.datasets)
        if json.loads(json.dumps(SyntheticParams(**kw).to_dict())) != p or args.seed != seed:
            return None
    except (ImportError, KeyError, TypeError, ValueError, AttributeError, SystemExit):
        return None
    return " ".join(["python -m cache.synthetic --out", _quote(path), "--resume", *map(shlex.quote, flags)])


def live_command(path: str | os.PathLike, generator_params: Any) -> str | None:
    """``python -m experiments.build_cache --model M --dataset D --out PATH --resume`` of a live
    build (``--configs`` when it built a subset), or None when the settings are not stored."""
    gp = json_attr(generator_params)
    try:
        model, dataset = gp["runtime"]["model"], gp["build"]["dataset"]
    except (KeyError, TypeError):
        return None
    cmd = f"python -m experiments.build_cache --model {_quote(model)} --dataset {_quote(dataset)} --out {_quote(path)}"
    spec = gp["build"].get("config_spec")
    if spec not in (None, "all"):
        cmd += f" --configs {shlex.quote(str(spec))}"
    return cmd + " --resume"


def finish_command(path: str | os.PathLike) -> str:
    """The command that finishes the interrupted build of the cache at ``path`` (see the module
    docstring); falls back to ``CacheWriter.resume(PATH)`` from Python."""
    attrs = stored_attrs(path) or {}
    generator = attrs.get("generator")
    cmd = None
    if generator == "synthetic":
        cmd = synthetic_command(path, attrs.get("generator_params"))
        if cmd is None:
            return ("rerun the `python -m cache.synthetic` command (or `cache.synthetic.write_synthetic_cache` call) "
                    "that started it, with --resume (resume=True) and the same options, or rebuild it with --overwrite")
    elif generator == "live":
        cmd = live_command(path, attrs.get("generator_params"))
        if cmd is not None:
            return f"`{cmd}` (with the other options of the original build)"
    if cmd is None:
        return f"the program that built it, continuing through `cache.writer.CacheWriter.resume({str(path)!r})`"
    return f"`{cmd}`"


def unfinished_message(path: str | os.PathLike) -> str:
    """One line: the cache at ``path`` is an unfinished build, and the command that finishes it."""
    return (f"{path}: unfinished cache build (its build journal {journal_dir(path)} exists: the build was interrupted "
            f"or is still running, so the file holds only part of its rows); finish it with {finish_command(path)}")
