"""What the kernel tests share: the skip mark for machines that can run no Triton kernel, the
device they run on, and seeded generators."""

from __future__ import annotations

import pytest
import torch

from model_runtime.molmoe import kernels as dk

#: Triton kernels run on CUDA, or on CPU through Triton's interpreter (TRITON_INTERPRET=1, which
#: tests/conftest.py sets when no GPU is present)
triton_ok = pytest.mark.skipif(
    not dk.HAVE_TRITON or not (torch.cuda.is_available() or dk.triton_interpreting()),
    reason="needs triton (CUDA, or TRITON_INTERPRET=1 on CPU)",
)
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def seeded(seed: int) -> torch.Generator:
    """A CPU generator (tensors are drawn on CPU, then moved: the same values on every device)."""
    return torch.Generator().manual_seed(seed)
