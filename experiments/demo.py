"""The main job on the embedded default: `make demo`.

1. The outcome cache: by default the committed live-built cache when the checkout has one
   (``cache.default``: a small MolmoE-architecture model trained on the project's VQA task
   suite, run over all 225 configurations; latency of MolmoE-1B at the same token counts),
   else — and with ``--synthetic`` — the
   SYNTHETIC default (`cache.synthetic.build_default_cache`, 5,000 requests, seed 0): built,
   an interrupted build finished (a Ctrl-C during its build leaves its journal, and the next
   run resumes it), or a finished one reused (:func:`prepare_cache`).
2. Train GRPO (two-stage), MaskablePPO (two-stage) and LinUCB (flat) on its train split, in
   ``--jobs`` processes at once (default: one per CPU core, at most one per agent). Each
   agent trains on one torch thread either way, so a run's policies do not depend on
   ``--jobs``; the processes only share the cores.
3. Evaluate them with every baseline on the held-out test split over the budget grid
   (`experiments.evaluate`): `results.csv`, `summary.json`, `pareto.png`, knob plots, and a
   printed table.

Every report names its cache and says whether it is synthetic or live-built.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

from agents.registry import LEARNED_AGENTS
from cache.default import LIVE_DEFAULT_CACHE, SYNTHETIC_DEFAULT_CACHE
from cache.reader import read_cache_label, read_targets_origin
from experiments.evaluate import BASELINES, EvalConfig, evaluate
from experiments.pipeline_parts.common import GRPO_FULL, LINUCB_FULL

#: The longest to train first, so that the processes of ``--jobs`` finish close together.
DEFAULT_AGENTS: tuple[str, ...] = ("linucb", "maskable_ppo", "grpo")
#: Config overrides of the demo's training runs: GRPO as the pipeline trains it, LinUCB with a budget
#: curve per group of questions.
DEMO_OVERRIDES: dict[str, dict] = {"grpo": dict(GRPO_FULL), "linucb": dict(LINUCB_FULL)}


def prepare_cache(path: str | Path, log: Callable[[str], None] = print, tag: str = "demo") -> Path:
    """The demo's cache step: the default SYNTHETIC cache at ``path``, built, finished or reused;
    ``log`` lines start with ``[tag]`` (the command that asked).

    - no file: build it (about 2 s);
    - an interrupted build (its journal ``<path>.journal/`` exists): resume it, so that only the
      rows the interruption lost are generated again; when the journal cannot be resumed (a kill
      while the build was being created, before anything was written, or a damaged journal),
      rebuild it, since a synthetic cache is regenerable;
    - a finished cache: reuse it when it is the current default, rebuild it when it is a stale
      default (``cache.synthetic.build_default_cache`` decides; a foreign file is an error).
    """
    from cache.journal import Journal, journal_dir
    from cache.schema import CacheError
    from cache.synthetic import build_default_cache

    path = Path(path)
    jdir = journal_dir(path)
    if jdir.is_dir():
        try:
            Journal.open(jdir)
        except CacheError as e:
            log(f"[{tag}] the build of {path} was interrupted before it wrote anything ({e}); rebuilding it ...")
            return build_default_cache(path, overwrite=True)
        log(f"[{tag}] finishing the interrupted build of the default SYNTHETIC outcome cache at {path} ...")
        try:
            return build_default_cache(path)
        except CacheError as e:
            log(f"[{tag}] cannot resume it ({e}); rebuilding it ...")
            return build_default_cache(path, overwrite=True)
    if not path.exists():
        log(f"[{tag}] building the default SYNTHETIC outcome cache at {path} ...")
    return build_default_cache(path)


def resolve_cache(cache: str | None, synthetic: bool, log: Callable[[str], None] = print, tag: str = "demo") -> Path:
    """The demo's cache: ``cache`` when given (with ``synthetic``: built there if missing), else
    the committed live-built default, else (a checkout without it) the SYNTHETIC default; ``log``
    lines start with ``[tag]``."""
    if synthetic:
        return prepare_cache(cache or SYNTHETIC_DEFAULT_CACHE, log=log, tag=tag)
    if cache:
        if not Path(cache).is_file():
            raise FileNotFoundError(f"--cache {cache}: no such file (pass --synthetic to build the synthetic default)")
        return Path(cache)
    if LIVE_DEFAULT_CACHE.is_file():
        return LIVE_DEFAULT_CACHE
    log(f"[{tag}] no live-built default cache in this checkout ({LIVE_DEFAULT_CACHE}; "
        "benchmarks/gpu/train_and_build.sh builds it on a GPU): using the SYNTHETIC default")
    return prepare_cache(SYNTHETIC_DEFAULT_CACHE, log=log, tag=tag)


def describe_cache(cache: str | os.PathLike) -> str:
    """What the cache's outcomes are, for the demo's first line: a live cache's model, or a SYNTHETIC
    cache's targets (the generator's MolmoE-1B marginals, or the cache ``--calibrate-to`` fitted it to)."""
    label = read_cache_label(cache)
    if not label["synthetic"]:
        return f"{label['cache_label']}: outcomes of a real network; latency of MolmoE-1B at the same token counts"
    origin = read_targets_origin(cache)
    return f"SYNTHETIC: generated by cache.synthetic, {origin or 'calibrated to MolmoE-1B marginals'}"


def default_jobs(n_agents: int) -> int:
    """One training process per CPU core this process may use, at most one per agent."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(n_agents, cores))


def _train_in_worker(agent: str, cache: str, out: str, seed: int, quick: bool, overrides: dict | None) -> float:
    """Train ``agent`` into ``out`` (a worker process; no progress bars, which two processes
    would interleave); returns the seconds it took."""
    from experiments.train import train_agent

    t = time.perf_counter()
    train_agent(agent, cache=cache, out=out, seed=seed, quick=quick, overrides=overrides, progress=False)
    return time.perf_counter() - t


def train_agents(agents: Sequence[str], cache: str, out: Path, seed: int, quick: bool, jobs: int) -> dict:
    """Train ``agents`` into ``out/agents/<agent>``, ``jobs`` at a time; returns {agent: policy}.

    With ``jobs`` > 1 each agent trains in a spawned process and its saved policy is loaded back
    (``agents.registry.load_policy``, the evaluator's own path for a saved checkpoint)."""
    from experiments.train import train_agent

    learned = {}
    if jobs <= 1 or len(agents) <= 1:
        for agent in agents:
            t = time.perf_counter()
            learned[agent] = train_agent(agent, cache=cache, out=str(out / "agents" / agent), seed=seed,
                                         quick=quick, overrides=DEMO_OVERRIDES.get(agent))
            print(f"[demo] trained {agent} in {time.perf_counter() - t:.1f} s")
        return learned
    from agents.registry import load_policy

    print(f"[demo] training {', '.join(agents)} in {jobs} processes (one torch thread each) ...")
    # spawn, not fork: a forked child inherits this process's torch and OpenMP state
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {agent: pool.submit(_train_in_worker, agent, cache, str(out / "agents" / agent), seed, quick,
                                      DEMO_OVERRIDES.get(agent))
                   for agent in agents}
        try:
            for agent, fut in futures.items():
                print(f"[demo] trained {agent} in {fut.result():.1f} s")
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    for agent in agents:
        learned[agent] = load_policy(f"{agent}:{out / 'agents' / agent / 'policy'}")
    return learned


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="molmoe-gym demo on the embedded default cache")
    ap.add_argument("--out", default="outputs/demo")
    ap.add_argument("--cache", default=None,
                    help="outcome cache (default: the committed live-built cache; with --synthetic: "
                         f"{SYNTHETIC_DEFAULT_CACHE})")
    ap.add_argument("--synthetic", action="store_true",
                    help="run on the SYNTHETIC default cache (built at --cache if missing) instead")
    ap.add_argument("--agents", nargs="*", default=list(DEFAULT_AGENTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="short training runs (smoke test)")
    ap.add_argument("--jobs", type=int, default=None,
                    help="agents trained at once, each in its own process (default: one per CPU core, at most one "
                         "per agent; 1: one after the other in this process)")
    a = ap.parse_args(argv)
    if a.jobs is not None and a.jobs < 1:
        ap.error(f"--jobs must be at least 1, got {a.jobs}")
    unknown = [agent for agent in a.agents if agent not in LEARNED_AGENTS]
    if unknown:
        ap.error(f"--agents: unknown agent {unknown[0]!r}; agents: {', '.join(LEARNED_AGENTS)}")
    if len(set(a.agents)) < len(a.agents):
        ap.error(f"--agents names an agent twice ({' '.join(a.agents)}): each trains into its own folder")

    t0 = time.perf_counter()
    out = Path(a.out)
    cache = resolve_cache(a.cache, a.synthetic)
    print(f"[demo] cache {cache} ({describe_cache(cache)})")

    jobs = a.jobs if a.jobs is not None else default_jobs(len(a.agents))
    learned = train_agents(a.agents, str(cache), out, a.seed, a.quick, jobs) if a.agents else {}

    evaluate(EvalConfig(cache=str(cache), out=str(out), policies=list(BASELINES), seeds=[a.seed]), learned=learned)
    print(f"[demo] done in {time.perf_counter() - t0:.1f} s; reports in {out}/")


if __name__ == "__main__":
    main()
