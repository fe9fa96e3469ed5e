"""Give a trained small model another patch stem: the new stem learns the old one's tokens, every other weight is kept.

The stem (``MolmoeConfig.vit_patch_stem``) is the tower's first module. The committed model's
``hybrid`` stem max-pools each patch's features, and its image tokens lose the digits of a page
(benchmarks/RESULTS.md, "Sixteenth H200 run"); the ``fine`` stem keeps each patch's inner layout.
Training a model with the new stem from scratch repeats the ≈ 90 minutes of one H200 that the
committed model took; instead the new stem is fitted to reproduce the old stem's outputs on the
suite's own crops (a regression of features, as in knowledge distillation of an intermediate
layer), and the tower, connector and language model keep their weights, so a continuation
(``train_model --init-from``) starts from a working model and trains the new stem in place.

Loss: the mean squared error to the old stem's tokens over their variance (so 0 is a perfect copy
and 1 is what predicting their mean gives); the held-out value is reported as the fraction of the
old tokens' variance left unexplained.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from model_runtime.molmoe.config import MolmoeConfig
from model_runtime.molmoe.model import MolmoeModel
from model_runtime.molmoe.preprocessing import MolmoImagePreprocessor, normalize_patches
from model_runtime.molmoe.vision import patch_stem_for

from .trainer import TrainConfig, lr_at


@dataclass(frozen=True)
class StemTransplantConfig:
    """How the new stem is fitted.

    stem: the new ``vit_patch_stem`` (not the model's own).
    images: suite training images rendered for the fit; each gives its crops at a random tier
        (``crops``), global view included.
    first_example: their first index in each task's training stream (past what the model saw).
    held_out: share of the images kept for the reported fit.
    """

    stem: str = "fine"
    steps: int = 600
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 50
    images: int = 1200
    first_example: int = 3_000_000
    held_out: float = 0.1
    crops: tuple[int, ...] = (3, 6, 12)
    tasks: tuple[str, ...] = ("easy_vqa", "synth_text", "synth_doc", "synth_chart", "synth_count",
                              "synth_diagram", "synth_words", "synth_numbers")
    seed: int = 0


def suite_crops(config: MolmoeConfig, tc: StemTransplantConfig) -> tuple[np.ndarray, np.ndarray]:
    """(crops (N, patches, patch²·3) uint8, image index of each crop) of ``tc.images`` suite images."""
    from model_runtime.datasets.suite import render_example

    pre = MolmoImagePreprocessor(config)
    rng = np.random.default_rng(tc.seed)
    crops, owner = [], []
    for i in range(tc.images):
        ex = render_example(tc.tasks[i % len(tc.tasks)], "train", tc.first_example + i, seed=0)
        patches = pre(ex.image, int(rng.choice(tc.crops)), normalize=False).patches
        crops.append(patches)
        owner.append(np.full(len(patches), i))
    return np.concatenate(crops), np.concatenate(owner)


def unexplained(student: torch.nn.Module, teacher: torch.nn.Module, crops: np.ndarray, config: MolmoeConfig,
                batch: int = 64, device: str | torch.device = "cpu") -> float:
    """Fraction of the teacher's token variance (over tokens, per channel, summed) the student misses."""
    err = var = 0.0
    with torch.no_grad():
        for i in range(0, len(crops), batch):
            x = normalize_patches(torch.from_numpy(crops[i:i + batch]).to(device), config, torch.float32)
            t = teacher(x)
            err += float(((student(x) - t) ** 2).sum())
            var += float(((t - t.mean(dim=(0, 1))) ** 2).sum())
    return err / max(var, 1e-12)


def transplant_stem(model: MolmoeModel, tc: StemTransplantConfig, log: Callable[[str], None] = print,
                    device: str | torch.device = "cpu") -> tuple[MolmoeModel, dict]:
    """A copy of ``model`` with ``tc.stem`` as its patch stem, fitted to the old stem's tokens
    (the two stems run on ``device``, in float32).

    Returns:
        (the new model in eval mode, on the CPU in float32; a record of the fit). ``model`` is not changed.

    Raises:
        ValueError: the model has no stem module (``linear``), or already has ``tc.stem``.
    """
    cfg = model.config
    teacher = model.vision.patch_stem
    if teacher is None:
        raise ValueError("the model's patch stem is CLIP's linear map: nothing to learn the tokens from")
    if tc.stem == cfg.vit_patch_stem:
        raise ValueError(f"the model's stem is already {tc.stem!r}")
    new_cfg = cfg.replace(vit_patch_stem=tc.stem)
    torch.manual_seed(tc.seed)
    student = patch_stem_for(new_cfg)
    if student is None:
        raise ValueError(f"stem {tc.stem!r} has no module to fit (the linear patch embedding is the tower's own)")
    student = student.to(device)
    teacher = copy.deepcopy(teacher).float().to(device).eval().requires_grad_(False)
    crops, owner = suite_crops(cfg, tc)
    cut = int(round(tc.images * (1 - tc.held_out)))
    train, held = crops[owner < cut], crops[owner >= cut]
    log(f"stem transplant: {len(train)} training crops, {len(held)} held out, from {tc.images} suite images")
    opt = torch.optim.AdamW(student.parameters(), lr=tc.lr, weight_decay=0.0, betas=(0.9, 0.95))
    rng = np.random.default_rng(tc.seed + 1)
    history = []
    schedule = TrainConfig(lr=tc.lr, warmup_steps=tc.warmup_steps, min_lr_frac=0.05)
    for step in range(tc.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, schedule, tc.steps)
        x = normalize_patches(torch.from_numpy(train[rng.integers(0, len(train), size=tc.batch_size)]).to(device),
                              cfg, torch.float32)
        with torch.no_grad():
            t = teacher(x)
        loss = F.mse_loss(student(x), t) / t.var(dim=(0, 1)).mean().clamp_min(1e-12)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % max(1, tc.steps // 6) == 0 or step + 1 == tc.steps:
            value = loss.item()
            history.append({"step": step + 1, "loss": round(value, 5)})
            log(f"stem transplant: step {step + 1}/{tc.steps} loss {value:.4f}")
    student.eval()
    fit = unexplained(student, teacher, held, cfg, device=device)
    log(f"stem transplant: held-out variance unexplained {fit:.4f}")

    new = MolmoeModel(new_cfg, experts_implementation="eager")
    state = {k: v for k, v in model.state_dict().items() if ".patch_stem." not in k}
    missing, unexpected = new.load_state_dict(state, strict=False)
    if unexpected or any(".patch_stem." not in k for k in missing):
        raise AssertionError(f"weights other than the stem's do not carry over: {missing} {unexpected}")
    new.vision.patch_stem.load_state_dict({k: v.cpu() for k, v in student.state_dict().items()})
    record = {"config": asdict(tc), "from_stem": cfg.vit_patch_stem, "train_crops": int(len(train)),
              "held_out_crops": int(len(held)), "held_out_unexplained": fit, "history": history}
    return new.float().eval(), record


def carried_weights_equal(old: MolmoeModel, new: MolmoeModel, skip: Sequence[str] = (".patch_stem.",)) -> bool:
    """Every weight outside the stem equal in both models (what a transplant promises)."""
    a, b = old.state_dict(), new.state_dict()
    keys = [k for k in a if not any(s in k for s in skip)]
    return all(k in b and torch.equal(a[k].float(), b[k].float()) for k in keys)
