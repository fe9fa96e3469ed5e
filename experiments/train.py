"""Train one agent on an outcome cache: ``python -m experiments.train``.

``python -m experiments.train --agent {grpo,ppo,maskable_ppo,linucb,lints,egreedy} --cache PATH
--out DIR --seed S [--steps N] [--config YAML] [--set key=value ...] [--overwrite] [--debug]``

- Hyperparameters: the agent's config dataclass (``agents.grpo.GRPOConfig``,
  ``agents.ppo.MaskablePPOConfig`` / ``PPOConfig``, ``agents.bandits.BanditTrainConfig``; every
  default is documented there), updated from ``--config`` YAML, then from ``--set`` overrides
  (dotted keys reach nested dataclasses, e.g. ``--set bandit.alpha=0.5``), then ``--seed`` /
  ``--steps``.
- ``--steps``: environment steps to train for, for every agent (a positive int; GRPO: rounded
  up to whole iterations of ``contexts_per_iter × group_size`` two-step episodes; PPO /
  MaskablePPO: ``total_timesteps``; bandits: ``total_steps``, one step per episode).
- ``--out`` must be empty or new; ``--overwrite`` replaces a previous training run there (a
  folder with ``config.yaml`` / ``policy/``). No agent resumes training yet, so there is no
  ``--resume``.
- Every agent shows its progress on stderr (GRPO: a line every ``log_every`` iterations;
  MaskablePPO / PPO / bandits: a tqdm bar over env steps).
- A user mistake (bad or truncated cache, bad ``--set`` / ``--config``, non-empty ``--out``)
  prints one line and exits with code 2 (bad argument) or 1 (unusable file), leaving no empty
  ``--out`` folder behind; ``--debug`` shows the traceback.
- Env arguments (reward mode, budgets ...) go under the YAML key ``env`` or ``--set env.reward=hard``.
- Writes ``DIR/config.yaml`` (the resolved config), ``DIR/policy/`` (checkpoint, loadable by
  ``agents.registry.load_policy("AGENT:DIR/policy")``), TensorBoard scalars under ``DIR/tb``
  (or the agent's own log layout under DIR), and ``DIR/train_summary.json``.
- Labels: ``config.yaml``, ``train_summary.json`` and the policy's own config carry the cache's
  provenance (``cache_label``: ``"SYNTHETIC"`` or ``"live <model_id>"``; ``synthetic``;
  ``generator``; ``model_id``; see :func:`cache.reader.cache_label`), and so do the log lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from agents.registry import LEARNED_AGENTS
from experiments.cli_errors import DEBUG_HELP, CliError, output_dir, run_cli

#: `--steps` of the quick (smoke) presets used by `make demo --quick` and the tests.
QUICK_STEPS: dict[str, int] = {"grpo": 20_000, "maskable_ppo": 8_000, "ppo": 4_000, "linucb": 20_000,
                               "lints": 20_000, "egreedy": 20_000}


def default_config(agent: str) -> Any:
    if agent == "grpo":
        from agents.grpo import GRPOConfig

        return GRPOConfig()
    if agent == "maskable_ppo":
        from agents.ppo import MaskablePPOConfig

        return MaskablePPOConfig()
    if agent == "ppo":
        from agents.ppo import PPOConfig

        return PPOConfig()
    if agent in ("linucb", "lints", "egreedy"):
        from agents.bandits import BanditTrainConfig

        return BanditTrainConfig()
    raise ValueError(f"unknown agent {agent!r}; agents: {', '.join(LEARNED_AGENTS)}")


def apply_overrides(cfg: Any, overrides: dict[str, Any], where: str = "") -> Any:
    """Return a copy of dataclass ``cfg`` with ``overrides`` (nested dicts for nested dataclasses)."""
    names = {f.name: f for f in dataclasses.fields(cfg)}
    changes = {}
    for key, value in overrides.items():
        if key not in names:
            raise ValueError(f"unknown config key {where}{key!r}; valid keys: {', '.join(sorted(names))}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = apply_overrides(current, value, f"{where}{key}.")
        elif isinstance(current, tuple) and isinstance(value, list):
            changes[key] = tuple(value)
        else:
            changes[key] = _coerce(current, value, f"{where}{key}", str(names[key].type))
    try:
        return dataclasses.replace(cfg, **changes)
    except TypeError as e:  # a value of the wrong type reached the config's own checks
        raise ValueError(f"config keys {where}{sorted(changes)}: a value has the wrong type ({e})") from None


def _coerce(current: Any, value: Any, key: str, annotation: str = "") -> Any:
    """Numbers written as strings (YAML reads ``1e-4`` as a string) become the field's type."""
    if not isinstance(value, str) or isinstance(current, (bool, str)):
        return value
    if current is None or isinstance(current, (int, float)):
        try:
            number = float(value)
        except ValueError:
            if current is None and not ({"int", "float"} & set(re.findall(r"\w+", annotation))) or "str" in annotation:
                return value
            raise ValueError(f"config key {key!r} expects a number, got {value!r}") from None
        return int(number) if isinstance(current, int) and number.is_integer() else number
    return value


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` → ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or "" in key.split("."):
            raise ValueError(f"--set expects KEY=VALUE (dotted keys for nested settings, e.g. bandit.alpha=0.5), got {item!r}")
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {p!r} is set to a value and also used as a section")
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ValueError(f"--set {item!r}: the value does not parse ({' '.join(str(e).split())})") from None
    return out


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


#: What a training run writes into ``--out`` (any agent): a folder holding one of these is a
#: previous run, which ``--overwrite`` may replace.
RUN_MARKERS: tuple[str, ...] = ("config.yaml", "train_summary.json", "policy")


def check_out_dir(out: str | Path, overwrite: bool) -> None:
    """ValueError (naming the CLI flags) if ``out`` holds files and ``overwrite`` is off, or
    holds something other than a previous training run."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ValueError(f"--out {p} is a file, not a folder")
    if not p.is_dir() or not any(p.iterdir()):
        return
    is_run = any((p / m).exists() for m in RUN_MARKERS)
    if not overwrite:
        what = "a previous training run" if is_run else "files"
        raise ValueError(f"--out {p} is not empty (it holds {what}); pass --overwrite to replace it, or choose a new folder")
    if not is_run:
        raise ValueError(f"--out {p} is not empty and holds no training run (no {', '.join(RUN_MARKERS)}); "
                         f"--overwrite only replaces a previous run's folder: choose a new or empty folder")


def env_kwargs_for(cache: str | Path, env_overrides: Any) -> dict[str, Any]:
    """The env arguments of a run (train split of ``cache`` + the ``env`` overrides), checked
    against :class:`envs.env_settings.EnvConfig` (ValueError naming the bad key)."""
    from envs.env_settings import EnvConfig

    if not isinstance(env_overrides, dict):
        raise ValueError(f"the 'env' section of --config / --set must be a mapping of env arguments, got {env_overrides!r}")
    kw = {"cache": str(cache), "split": "train", **env_overrides}
    valid = [f.name for f in dataclasses.fields(EnvConfig) if f.name not in ("data", "runtime", "requests", "live_options")]
    unknown = sorted(set(kw) - set(valid))
    if unknown:
        raise ValueError(f"unknown env key(s) {unknown} (--set env.KEY=VALUE / --config env:); valid keys: {', '.join(valid)}")
    return kw


def train_agent(agent: str, *, cache: str, out: str, seed: int = 0, steps: int | None = None,
                overrides: dict[str, Any] | None = None, quick: bool = False, progress: bool = True,
                overwrite: bool = True) -> Any:
    """Train ``agent`` on ``cache`` (train split) and save it under ``out``; returns the policy.

    ``out`` must be new or empty, or (``overwrite``, the default of this function; the CLI's
    default is off) a previous training run's folder, which is cleared first so that two runs'
    files never mix. ``steps``: env steps (see the module docstring), > 0.
    """
    if agent not in LEARNED_AGENTS:
        raise ValueError(f"unknown agent {agent!r}; agents: {', '.join(LEARNED_AGENTS)}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0):
        raise ValueError(f"--steps must be a positive number of env steps, got {steps!r}")
    overrides = dict(overrides or {})
    env_kwargs = env_kwargs_for(cache, overrides.pop("env", {}))
    cfg = apply_overrides(default_config(agent), overrides)
    if quick and steps is None:
        steps = QUICK_STEPS[agent]
    from cache.reader import OutcomeCache

    with OutcomeCache(cache, tokens="lazy") as oc:  # a missing / truncated / foreign cache fails here, before --out
        if not len(oc.split_indices("train")):
            raise ValueError(f"--cache {cache}: the train split is empty")
        label = oc.label
    check_out_dir(out, overwrite)
    if Path(out).is_dir() and any(Path(out).iterdir()):
        shutil.rmtree(out)  # a previous run (check_out_dir): its files must not mix with this one's
    if progress:
        print(f"[train] {agent} on the {label['cache_label']} cache {cache}", file=sys.stderr)
    with output_dir(out) as outdir:
        return _train_into(agent, cache, outdir, seed, steps, cfg, env_kwargs, progress, label)


def _save_policy(policy: Any, outdir: Path, label: dict[str, Any]) -> None:
    """``policy.save(outdir / "policy")`` with the cache's provenance label in its config."""
    policy.provenance = dict(label)
    policy.save(outdir / "policy")


def _train_into(agent: str, cache: str, outdir: Path, seed: int, steps: int | None, cfg: Any,
                env_kwargs: dict[str, Any], progress: bool, label: dict[str, Any]) -> Any:
    """Train, save the policy, and write ``config.yaml`` / ``train_summary.json``; every file
    carries the cache's provenance ``label`` (:func:`cache.reader.cache_label`)."""
    t0 = time.perf_counter()
    if agent == "grpo":
        from agents.grpo import train_grpo

        cfg = dataclasses.replace(cfg, seed=seed)
        if steps is not None:
            cfg = dataclasses.replace(cfg, iterations=max(1, math.ceil(steps / (2 * cfg.contexts_per_iter * cfg.group_size))))
        policy, history = train_grpo(env_kwargs, cfg, log_dir=outdir / "tb", progress=progress)
        _save_policy(policy, outdir, label)
        summary = {"final": history[-1] if history else {}}
    elif agent in ("maskable_ppo", "ppo"):
        from agents.ppo import train_maskable_ppo, train_ppo_flat

        cfg = dataclasses.replace(cfg, seed=seed, **({"total_timesteps": steps} if steps else {}))
        res = (train_maskable_ppo if agent == "maskable_ppo" else train_ppo_flat)(env_kwargs, cfg, log_dir=outdir,
                                                                                  progress=progress)
        policy = res.policy
        _save_policy(policy, outdir, label)
        summary = res.summary
    else:
        from agents.bandits import train_bandit

        cfg = dataclasses.replace(cfg, seed=seed, **({"total_steps": steps} if steps else {}))
        res = train_bandit(agent, env_kwargs, cfg, log_dir=outdir, progress=progress)
        policy = res.policy
        _save_policy(policy, outdir, label)
        summary = getattr(res, "summary", {})
    wall = time.perf_counter() - t0
    resolved = {"agent": agent, "cache": str(cache), **label, "seed": seed, "env": env_kwargs,
                "config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str))}
    (outdir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    summary = {"agent": agent, "cache": str(cache), "wall_s": wall, **summary, **label}
    (outdir / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    policy.name = agent
    return policy


def positive_int(text: str) -> int:
    """argparse type: an int > 0."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m experiments.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--agent", required=True, choices=LEARNED_AGENTS)
    ap.add_argument("--cache", required=True, help="outcome cache (HDF5) to train on (its train split)")
    ap.add_argument("--out", required=True, help="output folder: new or empty (see --overwrite)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=positive_int, default=None, metavar="N",
                    help="environment steps to train for (every agent; a two-stage episode is two steps); "
                         "default: the agent config's own length")
    ap.add_argument("--config", default=None, help="YAML file of config overrides (and an `env:` section)")
    # extend: a repeated --set adds to the earlier ones (append-style nargs would keep only the last)
    ap.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                    help="dotted overrides, after --config (repeatable)")
    ap.add_argument("--quick", action="store_true", help="short smoke-test run")
    ap.add_argument("--overwrite", action="store_true", help="replace a previous training run in --out")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar / lines")
    ap.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    return ap


def _main(argv: Sequence[str]) -> int:
    a = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {}
    if a.config:
        try:
            overrides = yaml.safe_load(Path(a.config).read_text()) or {}
        except yaml.YAMLError as e:
            raise CliError(f"--config {a.config}: not valid YAML ({' '.join(str(e).split())})") from e
        except OSError as e:
            raise CliError(f"--config {a.config}: {e.strerror or e}", code=1) from e
        if not isinstance(overrides, dict):
            raise CliError(f"--config {a.config}: expected a YAML mapping")
    overrides = _merge(overrides, parse_set(a.set))
    policy = train_agent(a.agent, cache=a.cache, out=a.out, seed=a.seed, steps=a.steps, overrides=overrides,
                         quick=a.quick, progress=not a.no_progress, overwrite=a.overwrite)
    print(f"[train] saved {a.agent} to {a.out}/policy (config: {a.out}/config.yaml; trained on the "
          f"{policy.provenance['cache_label']} cache {a.cache})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; user mistakes are one-line errors (exit 1 / 2), ``--debug`` shows the traceback."""
    return run_cli(_main, argv, prog="python -m experiments.train")


if __name__ == "__main__":
    raise SystemExit(main())
