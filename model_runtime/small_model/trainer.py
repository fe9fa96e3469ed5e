"""Training loop of the small MolmoE-architecture model (read top to bottom, CleanRL-style).

Every model of a run sees the same batches (one data pipeline; rendering is the expensive part):
``TrainConfig.recipes`` names one model per robustness recipe, e.g. ``plain`` (trained at the
full configuration only, as MolmoE was) next to ``robust`` (the mild recipe below), so that the
knob grid can be reported with and without it from one run.

Robustness recipe (``rate`` r): with probability r a training step runs a random knob
configuration instead of the full one: insertion position p uniform in 1..5, top-k uniform in
4..8 for blocks p.., and ``16 − blocks`` of blocks p..15 skipped, chosen uniformly at random
(stochastic depth). Importance scores are not known while training, so any subset may be skipped.

Numerics: on the GPU the model runs in bf16 (as at inference there) with float32 master weights
in the optimiser (on the CPU, whose bf16 matrix products are slow, in float32); experts are computed densely (:mod:`.dense_experts`, same function as the routed
form). Loss: cross-entropy on the answer tokens + EOS, plus OLMoE's auxiliary losses (load
balancing, coefficient ``aux_coef``; router z-loss, ``z_coef``) averaged over blocks; with
``word_presence`` w > 0, plus w × the word-presence loss (:mod:`.word_presence`: the bag of the
image's caption subwords from a per-channel max over the stem's tokens, the quickly learned
image-level text supervision that stands in for the tower's CLIP pre-training); with
``print_loss`` q > 0, plus q × the print-supervision loss (:mod:`.print_supervision`: the
characters under each image token, in reading order, from the places the suite printed them).

Logged numbers (TensorBoard under ``<out>/tb``, CSV ``<out>/train_log.csv``), per recipe:
``loss`` (total), ``ce`` (answer cross-entropy, per example then averaged), ``aux`` (load balance), ``z`` (router z-loss),
``presence``, ``presence_recall``, ``presence_precision`` (word-presence loss and its
ids predicted present, when on), ``print``, ``print_acc`` (print-supervision loss and the share
of printed characters it places right, when on),
``acc/<task>`` (teacher-forced exact match: every answer token and the EOS are the argmax, which
is exactly when greedy decoding returns the answer; questions only), ``acc/caption`` (the same
over dense-caption examples, whole caption), ``val_ce`` / ``val_acc/<task>`` on held-out
``val`` examples at the full configuration; run-wide ``lr``, ``samples_per_s``, ``data_wait``
(fraction of wall time spent waiting for batches).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from model_runtime.molmoe.config import MolmoeConfig
from model_runtime.molmoe.model import MolmoeBatch, MolmoeModel
from model_runtime.molmoe.preprocessing import normalize_patches
from model_runtime.molmoe.tokenizer import TextTokenizer

from model_runtime.molmoe.dense_experts import compile_dense_moe, dense_experts
from model_runtime.molmoe.vision import set_channels_last
from .training_data import IGNORE, SuiteStream, TrainDataConfig
from .print_supervision import PrintLoss, target_grids
from .word_presence import WordPresence

#: Valid (p, active blocks) pairs and top-k values of the default knob space (16 blocks).
_P_RANGE = range(1, 6)
_K_RANGE = range(4, 9)


@dataclass
class TrainConfig:
    """Hyperparameters (all recorded in ``<out>/train_config.json``).

    steps: optimiser steps; 0 = fit as many as ``time_budget_s`` allows, at the rate measured
        over the second half of the first ``probe_steps`` (the first half compiles and warms the
        data pipeline up); the resulting number is recorded so that a rerun with ``steps=N``
        repeats the same schedule.
    """

    seed: int = 0
    suite_seed: int = 0
    steps: int = 0
    time_budget_s: float = 420.0
    #: wall-clock seconds after which the run stops with a resumable state even with fixed ``steps``
    #: (0: never), so that one schedule can span several calls of a time-limited GPU machine
    stop_after_s: float = 0.0
    #: step at which the run stops with a resumable state (0: never): a schedule cut where an earlier
    #: run's time limit cut it, at the same step on any machine (the summary says ``stopped_at_step``)
    stop_at_step: int = 0
    probe_steps: int = 100
    batch_size: int = 256
    lr: float = 2e-3
    #: learning-rate multiplier per parameter-name prefix (the longest matching prefix wins), e.g.
    #: ``{"connector.": 0.1}``; Molmo trains its connector, tower and LM at different rates
    lr_scale: dict[str, float] = field(default_factory=dict)
    min_lr_frac: float = 0.05
    warmup_steps: int = 150
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    aux_coef: float = 0.01
    z_coef: float = 0.001
    #: weight of the word-presence loss (0: off) and where it reads the tokens (word_presence.SITES)
    word_presence: float = 0.0
    word_presence_sites: tuple[str, ...] = ("stem",)
    #: weight of the print-supervision loss (0: off), where it reads the tokens
    #: (print_supervision.SITES), and the weight of its ``none`` class
    print_loss: float = 0.0
    print_sites: tuple[str, ...] = ("tokens",)
    print_none_weight: float = 0.1
    #: first steps of a run in which the print loss trains its heads only (print_supervision's docstring),
    #: and the heads' constant learning rate (a linear probe learns at its own rate, not the model's warm-up)
    print_head_warmup: int = 100
    print_head_lr: float = 1e-3
    recipes: dict[str, float] = field(default_factory=lambda: {"plain": 0.0, "robust": 0.15})
    num_workers: int = 14
    eval_every: int = 250
    compile: bool = False  # torch.compile the dense experts (model_runtime.molmoe.dense_experts)
    channels_last: bool = False  # the crop stems in channels-last memory format (model_runtime.molmoe.vision)
    val_batches: int = 4
    vocab_size: int = 1024
    tokenizer_corpus: int = 6000
    data: TrainDataConfig = field(default_factory=TrainDataConfig)


def lr_at(step: int, cfg: TrainConfig, total: int) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_frac · lr`` at ``total``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))


def lr_scale_of(name: str, scales: dict[str, float]) -> float:
    """The learning-rate multiplier of parameter ``name``: the longest matching prefix's, else 1."""
    best = max((p for p in scales if name.startswith(p)), key=len, default=None)
    return 1.0 if best is None else float(scales[best])


def sample_plan(rng: random.Random, rate: float, n_layers: int, max_k: int) -> tuple[int, ...]:
    """The full plan, or with probability ``rate`` a random knob configuration's plan (see module docstring)."""
    if rate <= 0 or rng.random() >= rate:
        return (max_k,) * n_layers
    p = rng.choice(list(_P_RANGE))
    k = rng.choice(list(_K_RANGE))
    blocks = rng.randint(p + n_layers - 5, n_layers)
    skipped = set(rng.sample(range(p, n_layers), n_layers - blocks))
    return tuple(max_k if b < p else (0 if b in skipped else k) for b in range(n_layers))


class RouterLosses:
    """Collects each running block's router outputs (forward hooks) and turns them into OLMoE's
    load-balancing loss (E · Σ_e f_e · P_e) and router z-loss, over real tokens only."""

    def __init__(self, model: MolmoeModel) -> None:
        self.outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.handles = [layer.mlp.gate.register_forward_hook(self._hook) for layer in model.lm.backbone.layers]
        self.valid: torch.Tensor | None = None

    def _hook(self, module: Any, inputs: Any, output: Any) -> None:
        logits, _, indices = output
        self.outputs.append((logits, indices))

    def start(self, attention_mask: torch.Tensor) -> None:
        self.outputs = []
        self.valid = attention_mask.reshape(-1).bool()

    def losses(self) -> tuple[torch.Tensor, torch.Tensor]:
        # masks as weights, not boolean indexing: no host synchronisation, so the CPU keeps
        # launching ahead of the GPU
        valid = self.valid.float()
        n = valid.sum()
        aux, z = [], []
        for logits, indices in self.outputs:
            logits = logits.float()
            probs = logits.softmax(-1)
            e, k = probs.shape[-1], indices.shape[-1]
            counts = torch.zeros(e, device=logits.device).index_add_(0, indices.reshape(-1), valid.repeat_interleave(k))
            frac = counts / (n * k)
            aux.append(e * (frac * (probs * valid[:, None]).sum(0) / n).sum())
            z.append((torch.logsumexp(logits, -1).pow(2) * valid).sum() / n)
        return torch.stack(aux).mean(), torch.stack(z).mean()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def to_batch(b: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype,
             config: MolmoeConfig) -> tuple[MolmoeBatch, torch.Tensor]:
    """A collated batch on ``device``; uint8 pixels are normalised there with ``config``'s mean/std."""
    patches = b["patches"].to(device, non_blocking=True)
    if patches.dtype == torch.uint8:
        patches = normalize_patches(patches, config, dtype)
    mb = MolmoeBatch(
        input_ids=b["input_ids"].to(device, non_blocking=True),
        attention_mask=b["attention_mask"].to(device, non_blocking=True),
        patches=patches.to(dtype),
        image_masks=b["image_masks"].to(device, non_blocking=True),
        crop_rows=b["crop_rows"].to(device, non_blocking=True),
        image_input_idx=b["image_input_idx"].to(device, non_blocking=True),
    )
    return mb, b["labels"].to(device, non_blocking=True)


def forward_loss(model: MolmoeModel, batch: MolmoeBatch, labels: torch.Tensor, plan: tuple[int, ...],
                 router: RouterLosses | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(answer cross-entropy, per-row exact-match bool) of one batch under ``plan``.

    The cross-entropy is averaged over each row's answer tokens, then over rows: every example
    weighs the same whatever its answer's length (a dense caption is tens of tokens, a VQA
    answer one to three; a mean over tokens would hand the captions nearly all the gradient).
    """
    lm = model.lm
    embeds = model.embed(batch)
    state = lm.begin(embeds, batch.attention_mask)
    if router is not None:
        router.start(batch.attention_mask)
    lm.advance(state, lm.n_layers, plan)
    logits = lm.lm_head(lm.backbone.norm(state.hidden)).float()  # every position: no boolean indexing
    tok = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="none")
    n = (labels != IGNORE).sum(-1)
    ce = (tok.view(labels.shape).sum(-1) / n.clamp(min=1)).sum() / (n > 0).sum().clamp(min=1)  # no host sync
    wrong = ((logits.argmax(-1) != labels) & (labels != IGNORE)).sum(-1)
    return ce, wrong == 0


class Run:
    """One model of a training run: bf16 weights, float32 master copy, AdamW."""

    def __init__(self, name: str, rate: float, config: MolmoeConfig, cfg: TrainConfig, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.name, self.rate, self.dtype = name, rate, dtype
        torch.manual_seed(cfg.seed)
        with torch.device(device):
            model = MolmoeModel(config, experts_implementation="eager")
        if cfg.channels_last:  # before the master copies, which keep each weight's memory format
            set_channels_last(model)
        self.master = [p.detach().float().clone().requires_grad_(True) for p in model.parameters()]
        self.model = model.to(dtype).train()
        groups: dict[tuple[float, bool], list[torch.Tensor]] = {}
        for m, (name, p) in zip(self.master, model.named_parameters()):
            groups.setdefault((lr_scale_of(name, cfg.lr_scale), p.ndim >= 2), []).append(m)
        self.opt = torch.optim.AdamW([{"params": ms, "weight_decay": cfg.weight_decay if decays else 0.0,
                                       "lr_scale": scale} for (scale, decays), ms in groups.items()],
                                     lr=cfg.lr, betas=cfg.betas, foreach=True)
        self.router = RouterLosses(self.model)
        self.presence: WordPresence | None = None
        if cfg.word_presence > 0:  # float32 heads, training-only: their own optimiser, same schedule
            self.presence = WordPresence(self.model, config.embedding_size, cfg.word_presence_sites).to(device)
            self.presence_opt = torch.optim.AdamW(self.presence.parameters(), lr=cfg.lr, betas=cfg.betas,
                                                  weight_decay=cfg.weight_decay, foreach=True)
        self.prints: PrintLoss | None = None
        if cfg.print_loss > 0:
            self.prints = PrintLoss(self.model, cfg.print_sites, cfg.data.print_slots, cfg.print_none_weight).to(device)
            self.prints_opt = torch.optim.AdamW(self.prints.parameters(), lr=cfg.print_head_lr, betas=cfg.betas,
                                                weight_decay=0.0, foreach=True)
        self.rng = random.Random(f"{cfg.seed}-{name}")
        self._dense = dense_experts(self.model.lm)  # training always computes experts densely
        self._dense.__enter__()
        if cfg.compile:
            compile_dense_moe()

    def step(self, batch: MolmoeBatch, labels: torch.Tensor, lr: float, cfg: TrainConfig,
             captions: tuple[torch.Tensor, torch.Tensor] | None = None,
             prints: dict[int, torch.Tensor] | None = None, step: int = 0) -> dict[str, Any]:
        """Optimiser step number ``step`` of the run; ``captions`` = (caption_targets, has_caption)
        of the batch, for the word-presence loss when it is on; ``prints`` = grid → print targets,
        for the print-supervision loss when it is on."""
        plan = sample_plan(self.rng, self.rate, self.model.lm.n_layers, self.model.lm.max_top_k)
        ce, exact = forward_loss(self.model, batch, labels, plan, self.router)
        aux, z = self.router.losses()
        loss = ce + cfg.aux_coef * aux + cfg.z_coef * z
        out: dict[str, Any] = {}
        heads: list[torch.Tensor] = []
        if self.presence is not None:
            if captions is None:
                raise ValueError("word_presence is on: step() needs the batch's caption targets")
            presence, figures = self.presence.losses(batch.crop_rows, *captions)
            loss = loss + cfg.word_presence * presence
            out = {"presence": presence.detach(), **{f"presence_{k}": v for k, v in figures.items()}}
            heads = list(self.presence.parameters())
        if self.prints is not None:
            if prints is None:
                raise ValueError("print_loss is on: step() needs the batch's print targets")
            printed, figures = self.prints.losses(prints, heads_only=step < cfg.print_head_warmup)
            loss = loss + cfg.print_loss * printed
            out |= {"print": printed.detach(), **{f"print_{k}": v for k, v in figures.items()}}
            heads = heads + list(self.prints.parameters())
        params = list(self.model.parameters())
        grads = torch.autograd.grad(loss, params + heads, allow_unused=True)
        for m, g in zip(self.master + heads, grads):
            m.grad = None if g is None else g.float()
        torch.nn.utils.clip_grad_norm_(self.master, cfg.grad_clip)
        for group in self.opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        self.opt.step()
        if self.presence is not None:  # the word-presence heads follow the model's schedule
            for group in self.presence_opt.param_groups:
                group["lr"] = lr
            self.presence_opt.step()
        if self.prints is not None:  # the print heads learn at their own constant rate
            self.prints_opt.step()
        with torch.no_grad():
            torch._foreach_copy_(params, self.master)
        return {"loss": loss.detach(), "ce": ce.detach(), "aux": aux.detach(), "z": z.detach(), "exact": exact,
                "full": all(k == self.model.lm.max_top_k for k in plan), **out}

    @torch.no_grad()
    def evaluate(self, batches: list[tuple[MolmoeBatch, torch.Tensor, torch.Tensor]]) -> tuple[float, torch.Tensor, torch.Tensor]:
        """Teacher-forced val CE and exact match at the full configuration (per row, with task ids)."""
        self.model.eval()
        ces, exact, tasks = [], [], []
        full = self.model.lm.full_plan()
        for mb, labels, task in batches:
            ce, ok = forward_loss(self.model, mb, labels, full, None)
            ces.append(ce)
            exact.append(ok)
            tasks.append(task)
        self.model.train()
        return float(torch.stack(ces).mean()), torch.cat(exact), torch.cat(tasks)

    def close(self) -> None:
        """Back to transformers' routed experts and no router hooks (the model as it is saved)."""
        self._dense.__exit__(None, None, None)
        self.router.remove()
        if self.presence is not None:
            self.presence.remove()
        if self.prints is not None:
            self.prints.remove()

    def load_weights(self, folder: Path) -> None:
        """Weights (not optimiser state) from a saved checkpoint of the same config."""
        from model_runtime.molmoe.checkpoint import load_molmoe_checkpoint

        saved, _ = load_molmoe_checkpoint(folder, dtype=torch.float32, device="cpu")
        own, theirs = dict(self.model.named_parameters()), dict(saved.named_parameters())
        if own.keys() != theirs.keys() or any(own[k].shape != theirs[k].shape for k in own):
            raise ValueError(f"{folder}: checkpoint parameters do not match the model being trained")
        with torch.no_grad():
            for m, (name, _) in zip(self.master, self.model.named_parameters()):
                m.copy_(theirs[name])
            torch._foreach_copy_(list(self.model.parameters()), self.master)

    def state(self) -> dict[str, Any]:
        st = {"master": [m.detach().cpu() for m in self.master], "opt": self.opt.state_dict(),
              "rng": self.rng.getstate()}
        if self.presence is not None:
            st["presence"] = {"heads": self.presence.state_dict(), "opt": self.presence_opt.state_dict()}
        if self.prints is not None:
            st["print"] = {"heads": self.prints.state_dict(), "opt": self.prints_opt.state_dict()}
        return st

    def load_state(self, st: dict[str, Any]) -> None:
        with torch.no_grad():
            for m, saved in zip(self.master, st["master"]):
                m.copy_(saved)
            torch._foreach_copy_(list(self.model.parameters()), self.master)
        self.opt.load_state_dict(st["opt"])
        self.rng.setstate(st["rng"])
        if self.presence is not None:
            if "presence" not in st:
                raise ValueError("--resume: the saved run was trained without the word-presence loss")
            self.presence.load_state_dict(st["presence"]["heads"])
            self.presence_opt.load_state_dict(st["presence"]["opt"])
        if self.prints is not None:
            if "print" not in st:
                raise ValueError("--resume: the saved run was trained without the print-supervision loss")
            self.prints.load_state_dict(st["print"]["heads"])
            self.prints_opt.load_state_dict(st["print"]["opt"])


def train(cfg: TrainConfig, out: Path, tokenizer: TextTokenizer, *, device: str | torch.device = "cuda",
          config: MolmoeConfig | None = None, resume: bool = False, init_from: Path | None = None,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train one model per recipe; write ``<out>/<recipe>/`` checkpoints and the logs. Returns a summary.

    ``init_from``: a checkpoint folder whose weights every recipe starts from (a fresh optimiser
    and schedule); ``resume``: continue exactly from ``<out>/train_state.pt``.
    """
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from model_runtime.molmoe.checkpoint import save_molmoe_checkpoint

    device = torch.device(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    from model_runtime.molmoe.tokenizer import special_tokens_from

    config = (config or MolmoeConfig.small()).replace(tokens=special_tokens_from(tokenizer))
    if cfg.print_loss > 0:  # the stream renders the targets of the sites' grids
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, print_grids=target_grids(config, cfg.print_sites)))
    out.mkdir(parents=True, exist_ok=True)
    tasks = list(cfg.data.task_weights)
    t_setup = time.perf_counter()
    runs = [Run(name, rate, config, cfg, device, dtype) for name, rate in cfg.recipes.items()]
    if init_from is not None:
        for run in runs:
            run.load_weights(init_from)
        log(f"initialised every recipe from {init_from}")
    state_file = out / "train_state.pt"
    start, total = 0, cfg.steps
    if resume:
        if not state_file.is_file():
            raise FileNotFoundError(f"--resume: no {state_file} (the previous run wrote none)")
        st = torch.load(state_file, map_location="cpu", weights_only=False)
        for run in runs:
            run.load_state(st["runs"][run.name])
        start, total = int(st["step"]), cfg.steps or int(st["total"])
        log(f"resumed at step {start} of {total}")
    # the val batches are the same few examples in every run (first_example moves the train stream only)
    val = SuiteStream(config, tokenizer, dataclasses.replace(cfg.data, reuse=1, first_example=0), split="val",
                      n_batches=cfg.val_batches)
    val_loader = torch.utils.data.DataLoader(val, batch_size=None, num_workers=min(cfg.num_workers, cfg.val_batches))
    val_batches = [(*to_batch(b, device, dtype, config), b["task"].to(device)) for b in val_loader]
    stream = SuiteStream(config, tokenizer, cfg.data, start_batch=start)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                                         prefetch_factor=4 if cfg.num_workers else None, persistent_workers=False)
    log(f"setup: {len(runs)} model(s) and {cfg.val_batches} val batches in {time.perf_counter() - t_setup:.1f} s")
    tb = SummaryWriter(str(out / "tb"))
    log_path = out / "train_log.csv"
    rows: list[dict[str, Any]] = []
    prior_rows = read_train_log(log_path, before_step=start) if resume and log_path.is_file() else []
    t0 = time.perf_counter()
    wait = 0.0
    samples = 0
    step = start
    bar = tqdm(total=total or None, initial=start, desc="train", mininterval=10, unit="step")
    it = iter(loader)
    window: dict[str, dict[str, list]] = {r.name: {"exact": [], "task": []} for r in runs}
    stopped_by_time = stopped_at_step = False
    while total == 0 or step < total:
        tw = time.perf_counter()
        b = next(it)
        mb, labels = to_batch(b, device, dtype, config)
        task = b["task"].to(device)
        captions = (b["caption_targets"].to(device, non_blocking=True), b["has_caption"].to(device, non_blocking=True))
        prints = {int(k.rsplit("_", 1)[1]): v.to(device, non_blocking=True) for k, v in b.items()
                  if k.startswith("print_targets_")}
        wait += time.perf_counter() - tw
        lr = lr_at(step, cfg, total or 10**9)
        record: dict[str, Any] = {"step": step, "lr": lr}
        for run in runs:
            res = run.step(mb, labels, lr, cfg, captions, prints, step)
            for key in ("loss", "ce", "aux", "z", "presence", "presence_recall", "presence_precision", "print",
                        "print_acc"):
                if key in res:
                    record[f"{run.name}/{key}"] = res[key]
            if res["full"]:
                window[run.name]["exact"].append(res["exact"])
                window[run.name]["task"].append(task)
        samples += labels.shape[0]
        step += 1
        bar.update(1)
        if total == 0 and step - start == cfg.probe_steps // 2:  # compilation and warm-up are behind
            torch.cuda.synchronize() if device.type == "cuda" else None
            t_probe = time.perf_counter()
        if total == 0 and step - start == cfg.probe_steps:  # fit the step count to the time budget
            torch.cuda.synchronize() if device.type == "cuda" else None
            el = time.perf_counter() - t0
            rate = (cfg.probe_steps - cfg.probe_steps // 2) / (time.perf_counter() - t_probe)
            total = int(step + max(0, cfg.time_budget_s - el) * rate)
            bar.total = total
            log(f"{rate:.2f} steps/s over steps {cfg.probe_steps // 2}-{cfg.probe_steps}: training {total} steps "
                f"(rerun with --steps {total} to repeat this schedule)")
        if step % 25 == 0 or step == total:
            el = time.perf_counter() - t0
            record = {k: (float(v) if torch.is_tensor(v) else v) for k, v in record.items()}
            record.update({"samples_per_s": samples / el, "data_wait": wait / el, "elapsed_s": el})
            for run in runs:
                if window[run.name]["exact"]:
                    ex = torch.cat(window[run.name]["exact"]).float()
                    tk = torch.cat(window[run.name]["task"])
                    for t, name in enumerate(tasks):
                        m = tk == t
                        if m.any():
                            record[f"{run.name}/acc/{name}"] = float(ex[m].mean())
                    if (tk >= len(tasks)).any():
                        record[f"{run.name}/acc/caption"] = float(ex[tk >= len(tasks)].mean())
                    window[run.name] = {"exact": [], "task": []}
            if step % cfg.eval_every == 0 or step == total:
                for run in runs:
                    vce, vex, vtask = run.evaluate(val_batches)
                    record[f"{run.name}/val_ce"] = vce
                    for t, name in enumerate(tasks):
                        m = vtask == t
                        if m.any():
                            record[f"{run.name}/val_acc/{name}"] = float(vex[m].float().mean())
                bar.set_postfix_str(" ".join(f"{r.name} ce {record[f'{r.name}/ce']:.3f} val {record[f'{r.name}/val_ce']:.3f}" for r in runs))
            for k, v in record.items():
                if k != "step":
                    tb.add_scalar(k, v, step)
            rows.append(record)
        if cfg.steps == 0 and time.perf_counter() - t0 > cfg.time_budget_s * 1.05 + 15:
            stopped_by_time = True  # the probe misjudged the rate: stop, keep a resumable state
            log(f"time budget exceeded at step {step} of {total}: stopping (resume with --resume)")
            break
        if cfg.stop_after_s > 0 and step < total and time.perf_counter() - t0 > cfg.stop_after_s:
            stopped_by_time = True
            log(f"stop_after_s={cfg.stop_after_s:g} reached at step {step} of {total}: stopping (resume with --resume)")
            break
        if 0 < cfg.stop_at_step <= step < total:
            stopped_at_step = True
            log(f"stop_at_step={cfg.stop_at_step} reached of {total}: stopping (resume with --resume)")
            break
    bar.close()
    # Stop the rendering workers now. This frame can outlive the call in a reference cycle, and when the
    # garbage collector reached the iterator later its shutdown joined each busy worker with a 5 s timeout
    # inside whatever ran then (the importance scoring: benchmarks/RESULTS.md, "Eighteenth H200 run").
    del it
    tb.close()
    elapsed = time.perf_counter() - t0
    rows = prior_rows + rows  # a resumed run's log continues the earlier calls' (nothing written is lost)
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "step", k))
    with open(log_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    torch.save({"step": step, "total": total, "runs": {r.name: r.state() for r in runs}}, state_file)
    summary: dict[str, Any] = {"steps": step, "total_steps": total, "elapsed_s": elapsed, "stopped_by_time": stopped_by_time,
                               "stopped_at_step": stopped_at_step,
                               "samples": samples, "samples_per_s": samples / elapsed, "data_wait": wait / elapsed,
                               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                               "final": rows[-1] if rows else {}}
    t_save = time.perf_counter()
    for run in runs:
        ck = out / run.name
        save_molmoe_checkpoint(run.model, tokenizer, ck, metadata={"recipe": run.name, "steps": str(step)})
        (ck / "train_config.json").write_text(json.dumps({"train": asdict(cfg) | {"steps": total}, "recipe": run.name,
                                                          "rate": run.rate, "summary": summary}, indent=1, default=str))
        run.close()
    log(f"checkpoints written in {time.perf_counter() - t_save:.1f} s")
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    plot_curves(rows, tasks, [r.name for r in runs], out / "training_curves.png")
    return summary


def read_train_log(path: Path, before_step: int | None = None) -> list[dict[str, Any]]:
    """The rows of a ``train_log.csv`` (numbers as floats, ``step`` as int, empty cells left out),
    those of steps before ``before_step`` only when given (a resumed run logs the steps from its state on)."""
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {k: float(v) for k, v in raw.items() if k != "step" and v not in ("", None)}
            row["step"] = int(float(raw["step"]))
            if before_step is None or row["step"] < before_step:
                rows.append(row)
    return rows


def plot_curves(rows: list[dict[str, Any]], tasks: list[str], names: list[str], path: Path) -> None:
    """Loss and per-task accuracy (train, teacher-forced; val dashed) per recipe, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    fig, axes = plt.subplots(1, 1 + len(names), figsize=(6 * (1 + len(names)), 4.5))
    steps = np.array([r["step"] for r in rows])
    ax = axes[0]
    for name in names:
        ax.plot(steps, [r.get(f"{name}/ce", np.nan) for r in rows], label=f"{name} train CE")
        v = [(r["step"], r[f"{name}/val_ce"]) for r in rows if f"{name}/val_ce" in r]
        if v:
            ax.plot(*zip(*v), "--", marker="o", label=f"{name} val CE")
    ax.set_xlabel("step")
    ax.set_ylabel("answer cross-entropy")
    ax.set_yscale("log")
    ax.legend()
    for ax, name in zip(axes[1:], names):
        for t, task in enumerate(tasks):
            color = f"C{t}"
            tr = [(r["step"], r[f"{name}/acc/{task}"]) for r in rows if f"{name}/acc/{task}" in r]
            if tr:
                ax.plot(*zip(*tr), color=color, alpha=0.5, label=f"{task} (train)")
            v = [(r["step"], r[f"{name}/val_acc/{task}"]) for r in rows if f"{name}/val_acc/{task}" in r]
            if v:
                ax.plot(*zip(*v), "--", color=color, marker="o", label=f"{task} (val)")
        ax.set_title(f"{name}: teacher-forced exact match per task")
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
