"""Profile CSV I/O: read and validate a profile, convert the H100 reference CSV, write with a
provenance header. pandas is imported inside the functions (not on the replay path)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_runtime.latency_estimator.features import (
    OPTIONAL_PROFILE_COLUMNS,
    PHASES,
    PROFILE_COLUMNS,
    _phase_rows,
    _rows_to_arrays,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd


def load_profile(path: str | Path, *, max_top_k: int = 8) -> "pd.DataFrame":
    """Read a profile CSV (format in the module docstring) into a DataFrame; validates it.

    Raises ValueError naming the file and the problem (missing columns, unknown phases, missing
    inputs for a phase, ms ≤ 0, invalid knobs).
    """
    import pandas as pd  # lazy: not on the replay path

    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: profile file not found")
    try:
        lines = path.read_text().splitlines(keepends=True)
        # leading '#' lines are the provenance header; '#' inside fields (notes) stays data
        n_head = next((i for i, ln in enumerate(lines) if not ln.startswith("#")), len(lines))
        df = pd.read_csv(io.StringIO("".join(lines[n_head:])))
    except Exception as exc:  # pandas raises several parser error types
        raise ValueError(f"{path}: cannot read CSV ({exc})") from None
    df.attrs["provenance"] = "".join(ln[1:].strip() + "\n" for ln in lines[:n_head]).strip()
    missing = [c for c in PROFILE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (expected {list(PROFILE_COLUMNS)})")
    try:
        arrays = _rows_to_arrays(df)
        for phase in PHASES:
            _phase_rows(arrays, phase, max_top_k)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return df


def from_reference_csv(path: str | Path, impl: str = "eager") -> "pd.DataFrame":
    """Convert ``h100_hf_transformers_molmoe1b_shape.csv`` to profile rows for one ``impl``.

    The reference CSV (columns ``impl,phase,S,top_k,blocks,crops,ms,ms_per_decode_token``, see its
    README) was measured with random weights at the MolmoE-1B shape in transformers on an H100:

    - ``prefill`` rows: one forward over ``S`` tokens without images → ``prompt_tokens = S``,
      ``vision_tokens = 0``, ``p = 1`` (block 0 at top-8, ``top_k`` for blocks 1..), ``ms``;
    - ``generate64`` rows: 64 greedy tokens after a 1000-token prompt → ``decode`` rows with
      ``ms = ms_per_decode_token``, ``prompt_tokens = 1000``, ``output_tokens = 64``, ``p = 1``;
    - ``vision`` rows (any impl; the CLIP tower does not depend on the experts implementation)
      → ``crops``, ``ms``.

    Only rows of ``impl`` (plus all vision rows) are kept. Returns a DataFrame in the profile
    format with ``impl``, ``device`` and ``notes`` filled.
    """
    import pandas as pd  # lazy: not on the replay path

    path = Path(path)
    try:
        ref = pd.read_csv(path)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read reference CSV ({exc})") from None
    need = {"impl", "phase", "S", "top_k", "blocks", "crops", "ms", "ms_per_decode_token"}
    if not need <= set(ref.columns):
        raise ValueError(f"{path}: not the reference format, missing {sorted(need - set(ref.columns))}")
    impls = sorted(set(ref.loc[ref["phase"] != "vision", "impl"]))
    if impl not in impls:
        raise ValueError(f"{path}: impl {impl!r} not in the reference; available {impls}")
    device = "NVIDIA H100 80GB HBM3"
    note = "reference: random weights at MolmoE-1B shape, transformers 5.17, torch 2.11, bf16, batch 1"
    out: list[dict[str, Any]] = []
    nan = float("nan")
    for _, r in ref.iterrows():
        base = {c: nan for c in PROFILE_COLUMNS[1:]}
        if r["phase"] == "vision":
            base.update(crops=int(r["crops"]), ms=float(r["ms"]))
            out.append({"phase": "vision", **base, "impl": str(r["impl"]), "device": device, "notes": note})
        elif r["impl"] != impl:
            continue
        elif r["phase"] == "prefill":
            base.update(vision_tokens=0, prompt_tokens=int(r["S"]), p=1, top_k=int(r["top_k"]),
                        blocks=int(r["blocks"]), ms=float(r["ms"]))
            out.append({"phase": "prefill", **base, "impl": impl, "device": device,
                        "notes": note + "; no image, S text tokens"})
        elif r["phase"] == "generate64":
            base.update(vision_tokens=0, prompt_tokens=int(r["S"]), p=1, top_k=int(r["top_k"]),
                        blocks=int(r["blocks"]), output_tokens=64, ms=float(r["ms_per_decode_token"]))
            out.append({"phase": "decode", **base, "impl": impl, "device": device,
                        "notes": note + "; ms per token = (t64 - t1) / 63 of generate(64)"})
        else:
            raise ValueError(f"{path}: unknown reference phase {r['phase']!r}")
    df = pd.DataFrame(out, columns=list(PROFILE_COLUMNS) + list(OPTIONAL_PROFILE_COLUMNS))
    for c in ("crops", "vision_tokens", "prompt_tokens", "p", "top_k", "blocks", "output_tokens"):
        df[c] = df[c].astype("Int64")  # integers with blanks for the columns a phase does not use
    others = [i for i in impls if i != impl]
    df.attrs["provenance"] = (
        f"Converted from {path.name} (impl={impl} prefill/decode rows + all vision rows) by "
        f"`python -m model_runtime.latency_estimator convert-reference --impl {impl}`.\n"
        "Measured on one NVIDIA H100 80GB HBM3, torch 2.11.0+cu130, transformers 5.17.0, bf16, batch 1, "
        "random weights at the MolmoE-1B shape; medians of 3-10 runs after warm-up, CUDA events.\n"
        "prefill: S text tokens, no image (vision_tokens=0, prompt_tokens=S); p=1 (block 0 at top-8); "
        "decode: ms per token of generate(64) after a 1000-token prompt; vision: CLIP ViT-L/14-336 tower.\n"
        + (f"Left out impl(s) {others}: " if others else "")
        + ("eager is the path in which top_k and blocks move latency; with grouped_mm, launch overhead "
           "at batch 1 hides the knobs (prefill 18-30 ms, decode 20.9-22.5 ms/token for any configuration)."
           if impl == "eager" else "")
    )
    return df


def write_profile(df: "pd.DataFrame", path: str | Path, provenance: str | None = None) -> None:
    """Write profile rows as CSV; ``provenance`` (default ``df.attrs['provenance']``) becomes the
    leading ``#`` header lines that :func:`load_profile` skips and returns in ``attrs``."""
    text = provenance if provenance is not None else str(df.attrs.get("provenance", ""))
    head = "".join(f"# {ln}\n" for ln in text.splitlines() if ln.strip())
    Path(path).write_text(head + df.to_csv(index=False))
