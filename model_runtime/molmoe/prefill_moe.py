"""The prefill's routed experts as grouped GEMMs, re-exported from
:mod:`model_runtime.molmoe.kernels.prefill_moe` (where the kernels and their documentation live);
this module keeps the old name importable."""

from .kernels.prefill_moe import (
    FLOAT32_TILES,
    INTERPRETER_TILES,
    ExpertOrder,
    grouped_down,
    grouped_gate_up_act,
    routed_experts_grouped,
    sort_by_expert,
)

__all__ = ["FLOAT32_TILES", "INTERPRETER_TILES", "ExpertOrder", "grouped_down", "grouped_gate_up_act",
           "routed_experts_grouped", "sort_by_expert"]
