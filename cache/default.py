"""Where the embedded default caches live.

- :data:`LIVE_DEFAULT_CACHE`: the committed, live-built cache of the small MolmoE-architecture
  model trained on the project's VQA task suite (``benchmarks/gpu/train_and_build.sh``; card:
  ``python -m cache.info cache/default/molmoe_small_suite.h5``): accuracy of that model, latency
  of MolmoE-1B at the same token counts. ``make demo`` and ``make experiments`` use it when the
  checkout has it (``experiments.demo.resolve_cache``).
- :data:`SYNTHETIC_DEFAULT_CACHE`: where ``cache.synthetic.build_default_cache`` writes the
  SYNTHETIC default (``make demo`` with ``--synthetic``, or without a live-built cache; the
  tests' fallback).
"""

from __future__ import annotations

from pathlib import Path

LIVE_DEFAULT_CACHE = Path(__file__).resolve().parent / "default" / "molmoe_small_suite.h5"
SYNTHETIC_DEFAULT_CACHE = Path("outputs/default_cache.h5")

#: The checkpoint :data:`LIVE_DEFAULT_CACHE` was built from (safetensors shards in bf16, its tokenizer
#: and ``importance.json``): ``MolmoeRuntime.from_checkpoint(LIVE_DEFAULT_MODEL)`` runs it on a CPU,
#: and the live env (``mode="live"``) with it gives the cache's outcomes (``tests/test_default_live_model.py``).
LIVE_DEFAULT_MODEL = Path(__file__).resolve().parent / "default" / "molmoe_small_suite_model"
