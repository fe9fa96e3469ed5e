"""Train one agent on an outcome cache: ``python -m experiments.train``.

``python -m experiments.train --agent {grpo,ppo,maskable_ppo,linucb,lints,egreedy} --cache PATH
--out DIR --seed S [--steps N] [--config YAML] [--set key=value ...]``

- Hyperparameters: the agent's config dataclass (``agents.grpo.GRPOConfig``,
  ``agents.ppo.MaskablePPOConfig`` / ``PPOConfig``, ``agents.bandits.BanditTrainConfig``; every
  default is documented there), updated from ``--config`` YAML, then from ``--set`` overrides
  (dotted keys reach nested dataclasses, e.g. ``--set bandit.alpha=0.5``), then ``--seed`` /
  ``--steps``.
- ``--steps``: environment steps to train for (GRPO: converted to iterations of
  ``contexts_per_iter × group_size`` two-step episodes; PPO: ``total_timesteps``; bandits:
  ``total_steps``).
- Env arguments (reward mode, budgets ...) go under the YAML key ``env`` or ``--set env.reward=hard``.
- Writes ``DIR/config.yaml`` (the resolved config), ``DIR/policy/`` (checkpoint, loadable by
  ``agents.registry.load_policy("AGENT:DIR/policy")``), TensorBoard scalars under ``DIR/tb``
  (or the agent's own log layout under DIR), and ``DIR/train_summary.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from agents.registry import LEARNED_AGENTS

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
            changes[key] = _coerce(current, value, f"{where}{key}")
    return dataclasses.replace(cfg, **changes)


def _coerce(current: Any, value: Any, key: str) -> Any:
    """Numbers written as strings (YAML reads ``1e-4`` as a string) become the field's type."""
    if not isinstance(value, str) or isinstance(current, (bool, str)):
        return value
    if current is None or isinstance(current, (int, float)):
        try:
            number = float(value)
        except ValueError:
            if current is None:
                return value
            raise ValueError(f"config key {key!r} expects a number, got {value!r}") from None
        return int(number) if isinstance(current, int) and number.is_integer() else number
    return value


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` → ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(raw)
    return out


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def train_agent(agent: str, *, cache: str, out: str, seed: int = 0, steps: int | None = None,
                overrides: dict[str, Any] | None = None, quick: bool = False, progress: bool = True) -> Any:
    """Train ``agent`` on ``cache`` (train split) and save it under ``out``; returns the policy."""
    if agent not in LEARNED_AGENTS:
        raise ValueError(f"unknown agent {agent!r}; agents: {', '.join(LEARNED_AGENTS)}")
    overrides = dict(overrides or {})
    env_kwargs = {"cache": str(cache), "split": "train", **overrides.pop("env", {})}
    cfg = apply_overrides(default_config(agent), overrides)
    if quick and steps is None:
        steps = QUICK_STEPS[agent]
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if agent == "grpo":
        from agents.grpo import train_grpo

        cfg = dataclasses.replace(cfg, seed=seed)
        if steps is not None:
            cfg = dataclasses.replace(cfg, iterations=max(1, math.ceil(steps / (2 * cfg.contexts_per_iter * cfg.group_size))))
        policy, history = train_grpo(env_kwargs, cfg, log_dir=outdir / "tb", progress=progress)
        policy.save(outdir / "policy")
        summary = {"final": history[-1] if history else {}}
    elif agent in ("maskable_ppo", "ppo"):
        from agents.ppo import train_maskable_ppo, train_ppo_flat

        cfg = dataclasses.replace(cfg, seed=seed, **({"total_timesteps": steps} if steps else {}))
        res = (train_maskable_ppo if agent == "maskable_ppo" else train_ppo_flat)(env_kwargs, cfg, log_dir=outdir)
        policy = res.policy
        policy.save(outdir / "policy")
        summary = res.summary
    else:
        from agents.bandits import train_bandit

        cfg = dataclasses.replace(cfg, seed=seed, **({"total_steps": steps} if steps else {}))
        res = train_bandit(agent, env_kwargs, cfg, log_dir=outdir)
        policy = res.policy
        policy.save(outdir / "policy")
        summary = getattr(res, "summary", {})
    wall = time.perf_counter() - t0
    resolved = {"agent": agent, "cache": str(cache), "seed": seed, "env": env_kwargs,
                "config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str))}
    (outdir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    (outdir / "train_summary.json").write_text(json.dumps({"wall_s": wall, **summary}, indent=2, default=str))
    policy.name = agent
    return policy


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agent", required=True, choices=LEARNED_AGENTS)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--config", default=None, help="YAML file of config overrides (and an `env:` section)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted overrides, after --config")
    ap.add_argument("--quick", action="store_true", help="short smoke-test run")
    a = ap.parse_args(argv)
    overrides: dict[str, Any] = {}
    if a.config:
        overrides = yaml.safe_load(Path(a.config).read_text()) or {}
        if not isinstance(overrides, dict):
            raise SystemExit(f"--config {a.config}: expected a YAML mapping")
    overrides = _merge(overrides, parse_set(a.set))
    train_agent(a.agent, cache=a.cache, out=a.out, seed=a.seed, steps=a.steps, overrides=overrides, quick=a.quick)
    print(f"[train] saved {a.agent} to {a.out}/policy (config: {a.out}/config.yaml)")


if __name__ == "__main__":
    main()
