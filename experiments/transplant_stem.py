"""Give a trained small model another patch stem: ``python -m experiments.transplant_stem``.

``python -m experiments.transplant_stem --from CKPT --out NEW [--stem fine] [--steps 600] [--images 1200]
[--batch-size 32] [--lr 1e-3] [--first-example 3000000] [--device cpu|cuda] [--overwrite]``

Fits the new stem to the old stem's tokens on suite crops and keeps every other weight
(``model_runtime.small_model.stem_transplant``), then writes NEW in the checkpoint layout
``load_molmoe_checkpoint`` reads (bf16 shards, ``config.json`` with the new ``image_patch_stem``,
the source's ``tokenizer.json`` and ``importance.json``: the language model's blocks are the
source's), plus ``transplant.json`` (the fit and where it came from). A continuation trains it:
``train_model --init-from NEW --patch-stem fine ...`` (``INIT_FROM`` and ``PATCH_STEM`` in
``benchmarks/gpu/train_small_model.sh``). An existing non-empty NEW is refused without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from model_runtime.molmoe.config import PATCH_STEMS

    ap = argparse.ArgumentParser(prog="python -m experiments.transplant_stem", description=__doc__.split("\n")[0])
    ap.add_argument("--from", dest="source", type=Path, required=True, help="checkpoint folder")
    ap.add_argument("--out", type=Path, required=True, help="folder for the new checkpoint")
    ap.add_argument("--stem", choices=PATCH_STEMS, default="fine")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--images", type=int, default=1200, help="suite training images whose crops the stem is fitted on")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--first-example", type=int, default=3_000_000, help="first index in each task's training stream")
    ap.add_argument("--device", default="cpu", help="where the two stems run (the checkpoint is written from the CPU)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    if not (args.source / "config.json").is_file():
        raise SystemExit(f"transplant_stem: {args.source} is not a checkpoint folder (no config.json)")
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise SystemExit(f"transplant_stem: {args.out} is not empty (pass --overwrite to replace it)")
    if min(args.steps, args.images, args.batch_size) < 1 or args.images < 10:
        raise SystemExit("transplant_stem: --steps and --batch-size must be >= 1, --images >= 10")

    import torch

    from model_runtime.molmoe.checkpoint import load_molmoe_checkpoint, save_molmoe_checkpoint
    from model_runtime.small_model.stem_transplant import StemTransplantConfig, transplant_stem

    t0 = time.perf_counter()
    model, tokenizer = load_molmoe_checkpoint(args.source, dtype=torch.float32, device="cpu")
    if tokenizer is None:
        raise SystemExit(f"transplant_stem: {args.source} has no tokenizer.json")
    tc = StemTransplantConfig(stem=args.stem, steps=args.steps, images=args.images, batch_size=args.batch_size,
                              lr=args.lr, first_example=args.first_example)
    try:
        new, record = transplant_stem(model, tc, device=args.device)
    except ValueError as e:
        raise SystemExit(f"transplant_stem: {e}") from None
    if args.out.exists():
        shutil.rmtree(args.out)
    save_molmoe_checkpoint(new, tokenizer, args.out, dtype=torch.bfloat16)
    if (args.source / "importance.json").is_file():
        shutil.copy(args.source / "importance.json", args.out / "importance.json")
    record |= {"source": str(args.source), "seconds": round(time.perf_counter() - t0, 1)}
    (args.out / "transplant.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}: stem {record['from_stem']} -> {args.stem}, held-out variance unexplained "
          f"{record['held_out_unexplained']:.4f}, {record['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
