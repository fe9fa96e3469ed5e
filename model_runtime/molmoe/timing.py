"""One timing helper for every measured phase: CUDA events on a GPU, ``time.perf_counter`` on CPU.

``PhaseTimer(device).phase("prefill")`` is a context manager that adds the phase's wall time (ms)
to ``timer.ms["prefill"]``. On CUDA the time between two events recorded on the current stream is
read after synchronising the end event, so queued kernels are counted where they run, not where
Python launched them.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

import torch


class PhaseTimer:
    """Accumulates milliseconds per named phase on ``device``.

    Attributes:
        ms: phase name → accumulated milliseconds (float).
        counts: phase name → number of timed intervals.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.ms: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    @property
    def uses_cuda_events(self) -> bool:
        return self.device.type == "cuda"

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the enclosed block and add it to ``ms[name]``."""
        if self.uses_cuda_events:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                end.synchronize()
                self.ms[name] += float(start.elapsed_time(end))
                self.counts[name] += 1
        else:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self.ms[name] += (time.perf_counter() - t0) * 1000.0
                self.counts[name] += 1

    def get(self, name: str) -> float:
        """Accumulated ms of ``name`` (0.0 if never timed)."""
        return float(self.ms.get(name, 0.0))
