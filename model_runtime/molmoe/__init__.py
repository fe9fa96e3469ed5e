"""MolmoE-1B runtime with knobs: Molmo preprocessing → CLIP tower → connector → OLMoE LM.

=====================  ======================================================================
module                 holds
=====================  ======================================================================
``config``             :class:`MolmoeConfig` (MolmoE-1B defaults, ``tiny()`` preset), special ids
``preprocessing``      overlap-and-resize crops, token layout, ``image_input_idx``, prompt layout
``vision``             CLIP ViT tower (transformers' CLIP modules) → features of layers −2, −9
``connector``          padding embeddings, 2×2 mean-query attention pooling, SwiGLU projector
``language_model``     OLMoE blocks (transformers') with per-block top-k, skipping, staged
                       forward and :class:`BlockKVCache` (only active blocks own entries)
``model``              :class:`MolmoeModel`: batching (left padding) and input embeddings
``generation``         greedy generation (EOS, ``max_new_tokens`` 64), latency tokens
``timing``             :class:`PhaseTimer` (CUDA events on GPU, ``perf_counter`` on CPU)
``checkpoint``         public MolmoE-1B checkpoint layout (mapping table), transformers OLMoE dirs
``tokenizer``          ``tokenizer.json`` wrapper, special ids from added tokens
``runtime``            :class:`MolmoeRuntime` ``.run(requests, config) -> list[Outcome]``
``importance``         block influence / accuracy-drop scores → JSON for ``KnobSpace.with_scores``
``token_pruning``      vision-token pruning proxy: keep a fraction of each image's pooled tokens
                       (connector-feature norm), the runtime's ``vision_keep``
=====================  ======================================================================

Names are exported lazily so that ``model_runtime.molmoe.config`` stays importable without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "MolmoeConfig": "config",
    "SpecialTokens": "config",
    "MolmoeModel": "model",
    "MolmoeLanguageModel": "language_model",
    "BlockKVCache": "language_model",
    "greedy_generate": "generation",
    "PhaseTimer": "timing",
    "load_molmoe_checkpoint": "checkpoint",
    "load_olmoe_language_model": "checkpoint",
    "MolmoeRuntime": "runtime",
    "Outcome": "runtime",
    "ImportanceScores": "importance",
    "block_influence": "importance",
    "accuracy_drop": "importance",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
