"""MolmoeRuntime's fast path vs transformers' blocks, end to end, on the device (issue 7 check).

Run::

    python -m benchmarks.check_fast_runtime [--device cuda]

Writes a tiny random MolmoE checkpoint and a tiny synthetic VQA dataset (the test suite's
builders, SYNTHETIC), loads it twice in float32 — ``fast=True`` (fused blocks, Triton decode
kernels, captured prefill, CUDA-graph decode) and ``fast=False`` — runs every request under
several configurations twice (the second pass replays the prefills the first ran eagerly) and
prints, per configuration, how many outcomes agree (generated tokens, prediction, score) and the
largest difference of the latency tokens and first-token entropy.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from model_runtime.datasets import load_requests
from model_runtime.molmoe.fused_lm import ROUTED_FORMS
from model_runtime.molmoe.runtime import MolmoeRuntime
from tests.tiny_molmoe import write_tiny_dataset, write_tiny_molmoe_checkpoint

CONFIGS = [("high", 1, 8, 16), ("low", 1, 4, 12), ("medium", 3, 6, 14), ("low", 5, 5, 16)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--requests", type=int, default=12)
    ap.add_argument("--routed-form", default=None, choices=ROUTED_FORMS,
                    help="prefill experts of the fast runtime (default: the device's; float32 on CUDA takes gather; "
                         "grouped_mm cannot be captured in float32 on CUDA)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    write_tiny_molmoe_checkpoint(tmp / "ckpt", seed=5)
    reqs = load_requests(write_tiny_dataset(tmp / "data", n=args.requests, seed=1))
    kw = dict(device=args.device, max_new_tokens=8, max_batch_size=4)
    ref = MolmoeRuntime.from_checkpoint(tmp / "ckpt", fast=False, **kw)
    fast = MolmoeRuntime.from_checkpoint(tmp / "ckpt", fast=True, **kw)
    if args.routed_form is not None:  # the decoder's decode step keeps its FusedLM: the form is the prefill's
        fast.model.lm.use_fast_path(routed_form=args.routed_form)
    print(f"device {args.device}; fast path backend {fast.model.lm.fused.backend}, experts {fast.model.lm.fused.routed_form}")
    worst = 0
    for cfg in CONFIGS:
        for lat in (False, True):
            r = ref.run(reqs, cfg, return_latency_tokens=lat)
            for rep in range(2):
                o = fast.run(reqs, cfg, return_latency_tokens=lat)
                same = sum((a.token_ids, a.prediction, a.score) == (b.token_ids, b.prediction, b.score) for a, b in zip(o, r))
                dlat = max(float(np.abs(a.latency_token - b.latency_token).max()) for a, b in zip(o, r))
                dent = max(abs(a.first_token_entropy - b.first_token_entropy) for a, b in zip(o, r))
                worst = max(worst, len(r) - same)
                print(f"{cfg} latency_tokens={lat} pass {rep + 1}: outcomes equal {same}/{len(r)}, "
                      f"max |Δ latency token| {dlat:.2e}, max |Δ entropy| {dent:.2e}")
    print(f"prefill graphs captured {fast.decoder.prefill_captures}, decode graphs {fast.decoder.captures}; "
          f"{'ALL EQUAL' if worst == 0 else 'MISMATCHES'}")


if __name__ == "__main__":
    main()
