"""Train the small MolmoE-architecture model on the VQA task suite: ``python -m experiments.train_model``.

``python -m experiments.train_model --suite DIR --out CKPT [--steps N] [--time-budget S] [--device cuda]
[--recipes plain=0 robust=0.15] [--batch-size B] [--reuse R] [--compile] [--resume | --init-from CKPT]
[--task-weights TASK=W ...] [--lr-scale PREFIX=S ...] [--first-example N] [--importance-requests 32]``

- ``--suite``: a suite folder from ``python -m experiments.make_suite`` (its ``manifest.json``
  gives the seed; training renders ``train`` examples on the fly from it; the first
  ``--importance-requests`` of its ``val.jsonl`` calibrate the importance scores).
- Trains one model per recipe on the same batches (``model_runtime.small_model.trainer``:
  hyperparameters in ``TrainConfig``); writes ``CKPT/<recipe>/`` in the public MolmoE layout
  (safetensors shards ≤ 15 MiB, ``config.json``, ``tokenizer.json``, ``train_config.json``,
  ``importance.json``), ``CKPT/train_log.csv``, ``CKPT/training_curves.png``, TensorBoard
  scalars under ``CKPT/tb`` and ``CKPT/train_state.pt`` (for ``--resume``).
- ``--steps 0`` (default) fits the step count to ``--time-budget`` and prints it; pass it back as
  ``--steps N`` to repeat the schedule.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    from model_runtime.molmoe.tokenizer import TextTokenizer


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m experiments.train_model", description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", type=Path, required=True, help="suite folder (make_suite output)")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--steps", type=int, default=0, help="optimiser steps (0: fit to --time-budget)")
    ap.add_argument("--time-budget", type=float, default=420.0, help="seconds of training when --steps is 0")
    ap.add_argument("--stop-after", type=float, default=0.0, metavar="S",
                    help="stop after S seconds of training with a resumable state even with --steps N (0: never): "
                         "one schedule over several time-limited GPU calls, each continued with --resume")
    ap.add_argument("--stop-at-step", type=int, default=0, metavar="N",
                    help="stop at step N of the schedule with a resumable state (0: never): cut a schedule where an "
                         "earlier run's time limit cut it, at the same step on any machine")
    ap.add_argument("--batch-size", type=int, default=256,
                    help="examples per step (a step launches about as many kernels at any size, so larger "
                         "batches amortise them; see benchmarks/RESULTS.md)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lr-scale", nargs="+", default=None, metavar="PREFIX=S",
                    help="learning-rate multiplier per parameter-name prefix, e.g. connector.=0.1 vision.=0.5")
    ap.add_argument("--recipes", nargs="+", default=["plain=0", "robust=0.15"],
                    help="NAME=RATE per model (rate of steps run at a random knob configuration)")
    ap.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda when available)")
    ap.add_argument("--workers", type=int, default=15, help="data-loader workers (rendering)")
    ap.add_argument("--seed", type=int, default=0, help="model initialisation seed")
    ap.add_argument("--resume", action="store_true", help="continue from CKPT/train_state.pt")
    ap.add_argument("--overwrite", action="store_true", help="train into a non-empty --out")
    ap.add_argument("--importance-requests", type=int, default=32)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--reuse", type=int, default=1,
                    help="train on each rendered example this many times (multiplies the data pipeline's rate)")
    ap.add_argument("--reuse-distance", type=int, default=0,
                    help="batches between two uses of an example (0: --workers, so each worker reuses its own)")
    ap.add_argument("--first-example", type=int, default=0,
                    help="index of the first train example of the stream (a continuation through --init-from "
                         "starts past the examples the checkpoint saw; its train_config.json records the value)")
    ap.add_argument("--caption-rate", type=float, default=0.0,
                    help="fraction of train examples asked for their dense caption (Molmo's caption pre-training)")
    ap.add_argument("--patch-stem", choices=("linear", "conv", "hybrid", "fine"), default="linear",
                    help="the tower's patch embedding: CLIP's linear map, a per-patch conv stem, a conv trunk over the crop, "
                         "or one that keeps each patch's inner layout (MolmoeConfig.vit_patch_stem)")
    ap.add_argument("--word-presence", type=float, default=0.0, metavar="W",
                    help="weight of the word-presence loss (model_runtime.small_model.word_presence: the image's "
                         "caption subwords from a per-channel max over the stem's tokens; needs --patch-stem "
                         "conv or hybrid for site stem); 0: off")
    ap.add_argument("--word-presence-sites", nargs="+", choices=("stem", "tokens"), default=["stem"],
                    help="where the word-presence loss reads: the patch stem's tokens and/or the image tokens "
                         "the language model receives")
    ap.add_argument("--print-loss", type=float, default=0.0, metavar="Q",
                    help="weight of the print-supervision loss (model_runtime.small_model.print_supervision: the "
                         "characters under each image token, in reading order, from where the suite printed them); 0: off")
    ap.add_argument("--print-sites", nargs="+", choices=("stem", "tokens"), default=["tokens"],
                    help="where the print-supervision loss reads: the patch stem's tokens (needs a conv, hybrid or fine "
                         "stem) and/or the image tokens the language model receives")
    ap.add_argument("--print-head-warmup", type=int, default=100, metavar="STEPS",
                    help="first steps in which the print-supervision loss trains its heads only (a random head's "
                         "gradients would scramble a trained tower's tokens)")
    ap.add_argument("--print-head-lr", type=float, default=1e-3, help="the print-supervision heads' constant learning rate")
    ap.add_argument("--compile", action="store_true", help="torch.compile the dense experts (faster at batch 512, slower at 64 on an H200: benchmarks/RESULTS.md)")
    ap.add_argument("--channels-last", action="store_true",
                    help="run the crop stems (--patch-stem hybrid or fine) in channels-last memory format (cuDNN's NHWC kernels)")
    ap.add_argument("--task-weights", nargs="+", default=None, metavar="TASK=W",
                    help="sampling weight per suite task (tasks left out are not trained on), e.g. to measure how "
                         "fast one task is learned; default: TrainDataConfig's mix")
    ap.add_argument("--init-from", type=Path, default=None,
                    help="start from this checkpoint's weights (fresh optimiser and schedule), e.g. to continue "
                         "a run whose train_state.pt did not come back from the GPU machine")
    ap.add_argument("--split-digits", action="store_true",
                    help="one token per digit (model_runtime.small_model.tokenizer_training): a new tokenizer is "
                         "trained so, an --init-from checkpoint's gets the split over the same ids; --resume "
                         "checks that the saved tokenizer has it")
    ap.add_argument("--tokenizer-corpus", type=int, default=None, metavar="N",
                    help="suite texts a new tokenizer is trained on (default: TrainConfig's); a small N gives a "
                         "quick tokenizer with fewer merges (the ids above them are placeholders)")
    ap.add_argument("--model-config", nargs="+", default=None, metavar="FIELD=VALUE",
                    help="override fields of MolmoeConfig.small for a new run (integer, float or boolean "
                         "fields, e.g. vit_hidden=256 pool_head_dim=64 vit_mlp=1024: a wider vision tower); an "
                         "--init-from checkpoint must have the same shapes")
    args = ap.parse_args(argv)
    if args.stop_at_step < 0:
        ap.error(f"--stop-at-step must be >= 0, got {args.stop_at_step}")
    if args.tokenizer_corpus is not None and args.tokenizer_corpus < 1:
        ap.error(f"--tokenizer-corpus must be >= 1, got {args.tokenizer_corpus}")
    return args


#: ``MolmoeConfig`` fields ``--model-config`` may set: the scalar sizes and switches (not the
#: special tokens, the layer tuples, the 16 blocks and 64 experts the knobs act on, or the crop
#: geometry the runtime's tiling is calibrated on).
MODEL_CONFIG_FIELDS: tuple[str, ...] = (
    "d_model", "n_heads", "expert_hidden", "vit_hidden", "vit_num_layers", "vit_heads", "vit_mlp",
    "pool_heads", "pool_head_dim", "projector_hidden", "max_position_embeddings", "vit_feature_norm",
)


def parse_model_config(specs: Sequence[str] | None) -> dict[str, int | float | bool]:
    """``["vit_hidden=256", "vit_feature_norm=false"]`` → ``{"vit_hidden": 256, "vit_feature_norm": False}``,
    typed like ``MolmoeConfig.small()``'s own values; a one-line ValueError names a bad item."""
    from model_runtime.molmoe.config import MolmoeConfig

    base = MolmoeConfig.small()
    out: dict[str, int | float | bool] = {}
    for spec in specs or ():
        name, sep, value = spec.partition("=")
        if not sep or name not in MODEL_CONFIG_FIELDS:
            raise ValueError(f"--model-config {spec!r}: expected FIELD=VALUE with FIELD one of {', '.join(MODEL_CONFIG_FIELDS)}")
        current = getattr(base, name)
        if isinstance(current, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"--model-config {spec!r}: {name} is true or false")
            out[name] = value.lower() in ("true", "1")
            continue
        try:
            number = type(current)(value)
        except ValueError:
            raise ValueError(f"--model-config {spec!r}: {name} expects a {type(current).__name__}, got {value!r}") from None
        if number <= 0:
            raise ValueError(f"--model-config {spec!r}: {name} must be > 0")
        out[name] = number
    try:
        MolmoeConfig.small(**out)
    except ValueError as e:
        raise ValueError(f"--model-config {' '.join(specs or ())}: not a valid model config ({e})") from None
    return out


def _parse_non_negative(flag: str, specs: Sequence[str], valid: Callable[[str], bool], form: str,
                        what: str) -> dict[str, float]:
    """``NAME=VALUE`` strings → {NAME: float >= 0}; a one-line ValueError names the bad one."""
    out: dict[str, float] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not valid(name):
            raise ValueError(f"{flag} {spec!r}: expected {form}")
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"{flag} {spec!r}: {value!r} is not a number") from None
        if out[name] < 0:
            raise ValueError(f"{flag} {spec!r}: {what} must be >= 0")
    return out


def saved_tokenizer(out: Path, recipes: list[str], *, init_from: Path | None, resume: bool) -> Path | None:
    """The tokenizer file whose token ids the weights were trained with, or None (train a new one).

    ``--init-from``: that checkpoint's; ``--resume``: the one the stopped run saved with its first
    recipe's checkpoint (itself from ``--init-from`` when the schedule started from one), so a
    resumed run never depends on retraining the tokenizer to the same ids.
    """
    if init_from is not None:
        return init_from / "tokenizer.json"
    saved = out / recipes[0] / "tokenizer.json"
    return saved if resume and saved.is_file() else None


def training_tokenizer(out: Path, recipes: list[str], *, init_from: Path | None, resume: bool, split_digits: bool,
                       train_new: Callable[[bool], "TextTokenizer"],
                       log: Callable[[str], None]) -> tuple["TextTokenizer", bool]:
    """The tokenizer a run trains with: the saved one (:func:`saved_tokenizer`) or ``train_new(split_digits)``.

    ``split_digits`` gives an ``--init-from`` checkpoint's tokenizer the digit split over the same ids;
    a resumed run must already have it (its schedule cannot change tokenizer halfway). Returns the
    tokenizer and whether ``train_new`` made it.

    Raises:
        ValueError: ``split_digits`` on a resumed run whose saved tokenizer does not split digits.
    """
    from model_runtime.molmoe.tokenizer import TextTokenizer
    from model_runtime.small_model.tokenizer_training import splits_digits, with_split_digits

    tokenizer_file = saved_tokenizer(out, recipes, init_from=init_from, resume=resume)
    if tokenizer_file is None:
        return train_new(split_digits), True
    tokenizer = TextTokenizer.from_file(tokenizer_file)
    log(f"tokenizer: {tokenizer_file} ({'--init-from' if init_from is not None else '--resume'})")
    if split_digits and not splits_digits(tokenizer):
        if resume:
            raise ValueError(f"--split-digits: the resumed run's tokenizer {tokenizer_file} does not split digits, "
                             "and a schedule cannot change its tokenizer halfway; start it with --split-digits")
        tokenizer = with_split_digits(tokenizer)
        log("tokenizer: digits split into one token each (same ids)")
    return tokenizer, False


def parse_lr_scale(specs: Sequence[str] | None) -> dict[str, float]:
    """``["connector.=0.1"]`` → ``{"connector.": 0.1}`` (prefixes of the model's parameter names)."""
    return _parse_non_negative("--lr-scale", specs or (), lambda p: p.split(".")[0] in ("vision", "connector", "lm"),
                               "PREFIX=SCALE with PREFIX starting with vision, connector or lm", "scales")


def parse_task_weights(specs: Sequence[str]) -> dict[str, float]:
    """``["synth_text=1", "easy_vqa=0.5"]`` → ``{"synth_text": 1.0, "easy_vqa": 0.5}`` (suite tasks only)."""
    from model_runtime.datasets.suite import TASKS, TRAIN_ONLY_TASKS

    known = TASKS + TRAIN_ONLY_TASKS
    weights = _parse_non_negative("--task-weights", specs, lambda t: t in known,
                                  f"TASK=WEIGHT with TASK one of {', '.join(known)}", "weights")
    if not any(weights.values()):
        raise ValueError("--task-weights: at least one weight must be > 0")
    return weights


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from experiments.cli_errors import torch_device

    args.device = str(torch_device(args.device))
    import torch

    from model_runtime.datasets import load_requests
    from model_runtime.datasets.suite import question_corpus
    from model_runtime.molmoe.checkpoint import load_molmoe_checkpoint
    from model_runtime.molmoe.config import MolmoeConfig
    from model_runtime.molmoe.importance import compute_importance
    from model_runtime.molmoe.runtime import MolmoeRuntime
    from model_runtime.small_model.tokenizer_training import train_bpe_tokenizer
    from model_runtime.small_model.trainer import TrainConfig, train
    from model_runtime.small_model.training_data import TrainDataConfig

    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    manifest_file = args.suite / "manifest.json"
    if not manifest_file.is_file():
        raise FileNotFoundError(f"--suite {args.suite}: no manifest.json (make one with python -m experiments.make_suite)")
    manifest = json.loads(manifest_file.read_text())
    seed = int(manifest["seed"])
    if args.out.exists() and any(args.out.iterdir()) and not (args.resume or args.overwrite):
        raise FileExistsError(f"--out {args.out} is not empty; pass --resume to continue it or --overwrite")
    recipes = {}
    for spec in args.recipes:
        name, sep, rate = spec.partition("=")
        if not sep or not name:
            raise ValueError(f"--recipes {spec!r}: expected NAME=RATE")
        recipes[name] = float(rate)
    data_kw = {"task_weights": parse_task_weights(args.task_weights)} if args.task_weights else {}
    model_overrides = parse_model_config(args.model_config)  # checked before any work is done
    cfg = TrainConfig(seed=args.seed, suite_seed=seed, steps=args.steps, time_budget_s=args.time_budget, stop_after_s=args.stop_after,
                      stop_at_step=args.stop_at_step, batch_size=args.batch_size, lr=args.lr,
                      lr_scale=parse_lr_scale(args.lr_scale), recipes=recipes, num_workers=args.workers,
                      eval_every=args.eval_every, compile=args.compile, channels_last=args.channels_last, word_presence=args.word_presence,
                      word_presence_sites=tuple(args.word_presence_sites),
                      print_loss=args.print_loss, print_sites=tuple(args.print_sites),
                      print_head_warmup=args.print_head_warmup, print_head_lr=args.print_head_lr,
                      data=TrainDataConfig(seed=seed, batch_size=args.batch_size, reuse=args.reuse,
                                           reuse_distance=args.reuse_distance or max(1, args.workers),
                                           caption_rate=args.caption_rate, first_example=args.first_example, **data_kw),
                      **({} if args.tokenizer_corpus is None else {"tokenizer_corpus": args.tokenizer_corpus}))
    if args.init_from is not None and args.resume:
        raise ValueError("--init-from and --resume exclude each other")
    t0 = time.perf_counter()
    tokenizer, trained_here = training_tokenizer(
        args.out, list(recipes), init_from=args.init_from, resume=args.resume, split_digits=args.split_digits,
        train_new=lambda split: train_bpe_tokenizer(question_corpus(seed, n=cfg.tokenizer_corpus),
                                                    vocab_size=cfg.vocab_size, split_digits=split),
        log=log)
    if trained_here:
        log(f"tokenizer: {cfg.vocab_size} ids trained on {cfg.tokenizer_corpus} suite texts in "
            f"{time.perf_counter() - t0:.1f} s")
    model_config = MolmoeConfig.small(vit_patch_stem=args.patch_stem, **model_overrides)
    summary = train(cfg, args.out, tokenizer, device=args.device, config=model_config,
                    resume=args.resume, init_from=args.init_from, log=log)
    log(f"trained {summary['steps']} steps in {summary['elapsed_s']:.0f} s ({summary['samples_per_s']:.0f} samples/s, "
        f"data wait {summary['data_wait']:.0%})")
    # importance scores of each trained model, with the project's importance code
    calib = load_requests(args.suite / "val.jsonl")[: args.importance_requests]
    for name in recipes:
        ck = args.out / name
        dtype = torch.bfloat16 if torch.device(args.device).type == "cuda" else torch.float32
        t1 = time.perf_counter()
        model, tok = load_molmoe_checkpoint(ck, dtype=dtype, device=args.device)
        rt = MolmoeRuntime(model, tok, fast=False, max_batch_size=32)
        scores = compute_importance(rt, calib)
        scores.save(ck / "importance.json")
        log(f"{name}: importance (block influence, {time.perf_counter() - t1:.1f} s) "
            + " ".join(f"{s:.3g}" for s in scores.scores))
    return 0


if __name__ == "__main__":
    from experiments.cli_errors import run_cli

    raise SystemExit(run_cli(main, prog="python -m experiments.train_model"))
