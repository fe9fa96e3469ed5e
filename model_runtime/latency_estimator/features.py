"""The estimator's inputs: constants of the profile format, input validation, and the design
matrices of the per-phase formulas (see :mod:`model_runtime.latency_estimator`). numpy only."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

FORMAT_VERSION = 1
FORMAT_NAME = "molmoe-gym-latency-estimator"
PHASES: tuple[str, ...] = ("vision", "prefill", "decode")
PROFILE_COLUMNS: tuple[str, ...] = (
    "phase", "crops", "vision_tokens", "prompt_tokens", "p", "top_k", "blocks", "output_tokens", "ms",
)
OPTIONAL_PROFILE_COLUMNS: tuple[str, ...] = ("impl", "device", "notes")
#: Columns each phase's rows must fill (the others may be empty / NaN).
PHASE_INPUTS: Mapping[str, tuple[str, ...]] = {
    "vision": ("crops",),
    "prefill": ("vision_tokens", "prompt_tokens", "p", "top_k", "blocks"),
    "decode": ("vision_tokens", "prompt_tokens", "p", "top_k", "blocks", "output_tokens"),
}
#: Phases with fewer rows than this get no held-out split (their fidelity is in-sample).
MIN_ROWS_FOR_HOLDOUT = 4


def coefficient_names(attention_quadratic: bool = False) -> dict[str, tuple[str, ...]]:
    """Coefficient names per phase, in design-column order (see the module docstring)."""
    prefill = ("a0_const", "a1_S", "a2_S_blocks", "a3_S_slots", "a4_blocks", "a5_slots")
    if attention_quadratic:
        prefill = prefill + ("a6_blocks_S2",)
    return {
        "vision": ("v0_const", "v1_crops"),
        "prefill": prefill,
        "decode": ("d0_const", "d1_blocks", "d2_slots", "d3_blocks_ctx"),
    }


# ---------------------------------------------------------------------------------------- inputs
def _as_float(name: str, x: Any, dtype: Any = np.float64) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric, got {type(x).__name__}: {exc}") from None
    if a.size and not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def _check_min(name: str, a: np.ndarray, lo: float) -> None:
    if a.size and float(a.min()) < lo:
        raise ValueError(f"{name} must be >= {lo:g}, got minimum {float(a.min()):g}")


def _validate_knobs(p: np.ndarray, top_k: np.ndarray, blocks: np.ndarray, max_top_k: int) -> None:
    _check_min("p", p, 1)
    _check_min("top_k", top_k, 1)
    if top_k.size and float(top_k.max()) > max_top_k:
        raise ValueError(f"top_k must be <= max_top_k={max_top_k}, got maximum {float(top_k.max()):g}")
    if p.size and blocks.size:
        diff = blocks - p  # broadcasts; small unless the caller passes full grids
        if float(diff.min()) < 0:
            raise ValueError("blocks must be >= p (blocks counts the always-run blocks 0..p-1)")


def expert_slots(p: np.ndarray, top_k: np.ndarray, blocks: np.ndarray, max_top_k: int = 8) -> np.ndarray:
    """Routed expert FFNs per token summed over active blocks: ``max_top_k·p + top_k·(blocks − p)``."""
    return max_top_k * p + top_k * (blocks - p)


# ------------------------------------------------------------------------------------------ rows
def _rows_to_arrays(rows: Any) -> dict[str, np.ndarray]:
    """DataFrame or mapping of arrays → dict of 1-D numpy arrays (phase as str, the rest float)."""
    if hasattr(rows, "columns") and hasattr(rows, "__getitem__"):
        cols = {str(c): rows[c].to_numpy() for c in rows.columns}
    elif isinstance(rows, Mapping):
        cols = {str(k): np.asarray(v) for k, v in rows.items()}
    else:
        raise ValueError(f"rows must be a pandas DataFrame or a mapping of arrays, got {type(rows).__name__}")
    missing = [c for c in ("phase", "ms") if c not in cols]
    if missing:
        raise ValueError(f"profile rows lack required columns {missing}")
    n = len(cols["phase"])
    out: dict[str, np.ndarray] = {"phase": np.asarray([str(x) for x in cols["phase"]], dtype=object)}
    for c in PROFILE_COLUMNS[1:]:
        if c in cols:
            v = np.asarray(cols[c]).reshape(-1)
            if len(v) != n:
                raise ValueError(f"column {c!r} has {len(v)} rows, phase has {n}")
            try:
                out[c] = np.asarray(v, dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"column {c!r} must be numeric") from None
        else:
            out[c] = np.full(n, np.nan)
    bad = sorted(set(out["phase"]) - set(PHASES))
    if bad:
        raise ValueError(f"unknown phase(s) {bad}; expected one of {list(PHASES)}")
    return out


def _phase_rows(arrays: Mapping[str, np.ndarray], phase: str, max_top_k: int) -> dict[str, np.ndarray]:
    sel = arrays["phase"] == phase
    r = {c: arrays[c][sel] for c in PROFILE_COLUMNS[1:]}
    n = int(sel.sum())
    if n == 0:
        return r
    for c in PHASE_INPUTS[phase] + ("ms",):
        if not np.all(np.isfinite(r[c])):
            raise ValueError(f"{phase} rows: column {c!r} has missing or non-finite values")
    if float(r["ms"].min()) <= 0:
        raise ValueError(f"{phase} rows: ms must be > 0, got minimum {float(r['ms'].min()):g}")
    for c in ("crops", "vision_tokens", "prompt_tokens", "output_tokens"):
        if c in PHASE_INPUTS[phase]:
            _check_min(f"{phase} rows: {c}", r[c], 0)
    if phase != "vision":
        _validate_knobs(r["p"], r["top_k"], r["blocks"], max_top_k)
    return r


def _design(phase: str, r: Mapping[str, np.ndarray], max_top_k: int, attention_quadratic: bool) -> np.ndarray:
    """Design matrix (n, n_coef) of one phase's rows, columns as in :func:`coefficient_names`."""
    if phase == "vision":
        c = r["crops"]
        return np.column_stack([np.ones_like(c), c])
    S = r["vision_tokens"] + r["prompt_tokens"]
    b = r["blocks"]
    slots = expert_slots(r["p"], r["top_k"], b, max_top_k)
    if phase == "prefill":
        cols = [np.ones_like(S), S, S * b, S * slots, b, slots]
        if attention_quadratic:
            cols.append(b * S * S)
        return np.column_stack(cols)
    ctx = S + r["output_tokens"] / 2.0
    return np.column_stack([np.ones_like(S), b, slots, b * ctx])
