"""Does the small model learn to look? A CPU-sized check of the vision pathway (prints figures).

``python -m benchmarks.bench_vision_grounding --out DIR [--steps 300] [--lr-scale lm.=0.1 connector.=0.1]``

Trains ``MolmoeConfig.small(n_layers=4, num_experts=8)`` on easy-VQA alone (batches of 32, lr
2e-3, 20 warm-up steps, the ``plain`` recipe) and reports, on 384 val questions, the
teacher-forced exact match of the colour, shape and yes/no questions, the image tokens' mean
norm, and a linear colour probe (logistic regression on the mean image token of ~220 easy-VQA
colour questions, 70/30 split) of the trained connector next to fresh weights. A pathway that
works answers the colour questions; one whose connector collapsed stays at chance (0.125) with a
probe far below the fresh weights' (benchmarks/RESULTS.md, "Third and fourth H200 runs").
Needs the suite's tokenizer: ``--tokenizer`` a checkpoint's ``tokenizer.json`` (default: one
trained here on the suite's questions).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence


def _batches(model, tokenizer, split: str, n: int, batch_size: int):
    """(batch, labels, prompt texts) of easy-VQA ``split`` batches, on the CPU."""
    import torch

    from model_runtime.small_model.trainer import to_batch
    from model_runtime.small_model.training_data import SuiteStream, TrainDataConfig

    stream = SuiteStream(model.config, tokenizer, TrainDataConfig(batch_size=batch_size, task_weights={"easy_vqa": 1.0}),
                         split=split, n_batches=n)
    for b in range(n):
        mb, labels = to_batch(stream.batch(b), torch.device("cpu"), torch.float32, model.config)
        texts = [tokenizer.decode([t for t in row[m.bool()].tolist() if t < model.config.embedding_size])
                 for row, m in zip(mb.input_ids, mb.attention_mask)]
        yield mb, labels, texts


def question_accuracy(model, tokenizer) -> tuple[dict[str, tuple[int, float]], float]:
    """Teacher-forced exact match per question kind on 3 val batches of 128, and the image tokens' mean norm."""
    import torch

    from model_runtime.molmoe.dense_experts import dense_experts

    ok: dict[str, list[bool]] = {"colour": [], "shape": [], "yes/no": []}
    norms = []
    model.eval()
    for mb, labels, texts in _batches(model, tokenizer, "val", 3, 128):
        with torch.no_grad(), dense_experts(model.lm):
            feats = model.image_features(mb.patches, mb.image_masks)
            norms.append(float(feats.norm(dim=-1).mean()))
            state = model.lm.begin(model.embed(mb, feats), mb.attention_mask)
            model.lm.advance(state, model.lm.n_layers, model.lm.full_plan())
            pred = model.lm.lm_head(model.lm.backbone.norm(state.hidden)).argmax(-1)
        exact = ((pred == labels) | (labels < 0)).all(1)
        for i, t in enumerate(texts):
            ok["colour" if "what color" in t else "shape" if "what shape" in t else "yes/no"].append(bool(exact[i]))
    return {k: (len(v), sum(v) / max(1, len(v))) for k, v in ok.items()}, sum(norms) / len(norms)


def colour_probe(models: dict, tokenizer) -> dict[str, float]:
    """Held-out accuracy of a logistic regression from the mean image token to the colour answer."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression

    first = next(iter(models.values()))
    xs: dict[str, list] = {k: [] for k in models}
    ys: list[str] = []
    for mb, _, texts in _batches(first, tokenizer, "train", 12, 256):
        keep = [i for i, t in enumerate(texts) if "what color" in t]
        with torch.no_grad():
            for name, m in models.items():
                f = m.image_features(mb.patches, mb.image_masks)
                xs[name] += [f[mb.crop_rows == i].mean((0, 1)).numpy() for i in keep]
        ys += [texts[i].split("Assistant:")[-1].strip() for i in keep]
    y = np.array(ys)
    tr = np.arange(len(y)) < int(0.7 * len(y))
    out = {}
    for name, x in xs.items():
        x = np.array(x)
        x = (x - x[tr].mean(0)) / (x[tr].std(0) + 1e-6)
        out[name] = float(LogisticRegression(max_iter=2000).fit(x[tr], y[tr]).score(x[~tr], y[~tr]))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_vision_grounding", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr-scale", nargs="+", default=None, metavar="PREFIX=S")
    ap.add_argument("--tokenizer", type=Path, default=None, help="a checkpoint's tokenizer.json")
    args = ap.parse_args(argv)

    import torch

    from experiments.train_model import parse_lr_scale
    from model_runtime.datasets.suite import question_corpus
    from model_runtime.molmoe.checkpoint import load_molmoe_checkpoint
    from model_runtime.molmoe.config import MolmoeConfig
    from model_runtime.molmoe.model import MolmoeModel
    from model_runtime.molmoe.tokenizer import TextTokenizer
    from model_runtime.small_model.tokenizer_training import train_bpe_tokenizer
    from model_runtime.small_model.trainer import TrainConfig, train
    from model_runtime.small_model.training_data import TrainDataConfig

    tokenizer = (TextTokenizer.from_file(args.tokenizer) if args.tokenizer
                 else train_bpe_tokenizer(question_corpus(0, n=6000), vocab_size=1024))
    cfg = TrainConfig(steps=args.steps, batch_size=32, warmup_steps=20, recipes={"plain": 0.0}, num_workers=1,
                      eval_every=max(args.steps // 3, 1), lr_scale=parse_lr_scale(args.lr_scale),
                      data=TrainDataConfig(batch_size=32, task_weights={"easy_vqa": 1.0}))
    t0 = time.perf_counter()
    train(cfg, args.out, tokenizer, device="cpu", config=MolmoeConfig.small(n_layers=4, num_experts=8),
          log=lambda m: None)
    trained, _ = load_molmoe_checkpoint(args.out / "plain", dtype=torch.float32, device="cpu")
    torch.manual_seed(0)
    fresh = MolmoeModel(trained.config, experts_implementation="eager").eval()
    acc, norm = question_accuracy(trained, tokenizer)
    probe = colour_probe({"trained": trained, "fresh": fresh}, tokenizer)
    result = {"steps": args.steps, "lr_scale": cfg.lr_scale, "seconds": round(time.perf_counter() - t0),
              "exact": {k: {"n": n, "exact": round(a, 3)} for k, (n, a) in acc.items()},
              "image_token_norm": norm, "colour_probe": probe}
    (args.out / "vision_grounding.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
