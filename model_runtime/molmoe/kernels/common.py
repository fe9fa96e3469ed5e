"""What every kernel module shares: whether Triton is there, the two backends, block sizes.

Every op has two backends with one signature:

- ``"triton"``: the kernels (CUDA; also run by Triton's interpreter on CPU tensors when
  ``TRITON_INTERPRET=1`` is set before Triton is imported, which is how the CPU tests check them);
- ``"torch"``: plain torch, the reference and the CPU path.
"""

from __future__ import annotations

import os
from typing import Literal

import torch

try:  # Triton ships with CUDA builds of torch; CPU machines may lack it (then only "torch" exists)
    import triton  # noqa: F401  (availability check; the kernel modules import it again)
    import triton.language as tl  # noqa: F401

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - depends on the install
    HAVE_TRITON = False

Backend = Literal["triton", "torch"]
BACKENDS: tuple[str, ...] = ("triton", "torch")

#: Block sizes of the kernels: positions per split of the decode attention (a (B, H, ceil(L / chunk))
#: grid; smaller chunks spread a short cache over more programs), and the expert
#: rows / output features per program of the MoE kernels where they are not autotuned (Triton's
#: interpreter, or explicit block sizes).
TUNING: dict[str, int] = {"attn_chunk": 64, "gate_up_block_i": 32, "down_block_d": 16}


def triton_interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def default_backend(device: torch.device | str) -> Backend:
    """``triton`` on CUDA when Triton is installed, else ``torch``."""
    return "triton" if HAVE_TRITON and torch.device(device).type == "cuda" else "torch"


def check_backend(backend: str, device: torch.device | str) -> Backend:
    """Validate a backend for tensors on ``device``; raises ValueError naming the problem."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    if backend == "triton":
        if not HAVE_TRITON:
            raise ValueError("backend 'triton' needs the triton package (pip install triton)")
        if torch.device(device).type != "cuda" and not triton_interpreting():
            raise ValueError("backend 'triton' on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported")
    return backend  # type: ignore[return-value]


def _p2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()
