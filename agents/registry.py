"""Policy specs → policy objects, for the evaluator and the command line.

A spec is ``agent:DIR`` for a saved checkpoint (``grpo``, ``maskable_ppo``, ``ppo``,
``linucb``, ``lints``, ``egreedy``). Baselines are built by ``experiments.evaluate`` because
they are fitted on the train split of the cache under evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

LEARNED_AGENTS: tuple[str, ...] = ("grpo", "maskable_ppo", "ppo", "linucb", "lints", "egreedy")


def load_policy(spec: str) -> Any:
    """Load a learned policy from ``agent:DIR``; ValueError for unknown agents or bad specs."""
    agent, sep, directory = spec.partition(":")
    if not sep or not directory:
        raise ValueError(f"policy spec {spec!r} must be 'agent:DIR' (agents: {', '.join(LEARNED_AGENTS)})")
    if agent not in LEARNED_AGENTS:
        raise ValueError(f"unknown agent {agent!r} in {spec!r}; agents: {', '.join(LEARNED_AGENTS)}")
    if not Path(directory).exists():
        raise ValueError(f"checkpoint directory {directory!r} of {spec!r} does not exist")
    if agent == "grpo":
        from agents.grpo import GRPOPolicy

        pol = GRPOPolicy.load(directory)
    elif agent == "maskable_ppo":
        from agents.ppo import TwoStagePPOPolicy

        pol = TwoStagePPOPolicy.load(directory)
    elif agent == "ppo":
        from agents.ppo import FlatPPOPolicy

        pol = FlatPPOPolicy.load(directory)
    else:
        from agents.bandits import BanditPolicy

        pol = BanditPolicy.load(directory)
    pol.name = agent
    return pol
