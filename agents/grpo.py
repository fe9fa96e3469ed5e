"""GRPO for the two-stage controller of MolmoE-1B adaptive inference (docs/DESIGN.md §3, §8).

One file, readable top to bottom (CleanRL style): config → networks → masked categoricals →
group advantages → clipped loss → policy (the evaluator's interface) → rollouts → training loop.

The controller (the seeds' design):

- **Stage 1** sees the request's language feature ``obs["lang"]`` and the 256-d budget encoding
  (:class:`agents.budget_encoding.BudgetEncoding` of ``obs["budget"]``), plus the request features
  ``obs["request"]`` (token counts per tier, prompt tokens, estimated TTFT per tier; policies
  trained on envs that have them, ``request_dim`` > 0), and outputs tier logits (3) and
  insertion-position logits (5).
- **Stage 2** sees the latency token ``obs["token"]`` (the hidden state after block p−1 at the
  chosen (tier, p)), the same budget encoding and the one-hots of the chosen p (and tier, by
  default) from ``obs["context"]``, and outputs top-k logits (5) and active-blocks logits (5); active-blocks
  index i is valid for i ≤ 5 − p, taken from ``obs["action_mask"]``.

Each head is a categorical over its masked logits; the joint action's log-probability is the sum
of the four heads' log-probabilities (the policy factorises over knobs given the stage's input).

Training (Shao et al. 2024, "DeepSeekMath", GRPO): every iteration draws ``contexts_per_iter``
contexts (request, budget) from the env, pins each into ``group_size`` envs of a native vector env
(``reset(options={"sample_index": ..., "budget_ms": ...})``), and samples one joint action per env.
With rewards ``r`` of a group, the advantage of a rollout is::

    scale_rewards="group":  A = (r − mean_group(r)) / (std_group(r) + adv_eps)
    scale_rewards="batch":  A = (r − mean_group(r)) / (std_batch(r) + adv_eps)
    scale_rewards="none":   A =  r − mean_group(r)

(std with Bessel's correction, as TRL's GRPOTrainer). The default is "none" (Liu et al. 2025,
"Understanding R1-Zero-like training", Dr. GRPO; docs/DESIGN.md §8 gives both), chosen from
measurements on the live-built default cache (test split, 8 budgets, hinge, seeds 0-2, 150
iterations): mean-centred +0.0062 over static against std-scaled +0.0035 (benchmarks/RESULTS.md,
"Agents on the live-built default"); DeepSeekMath's "group" stays available. Dividing by the group's std weighs a group
whose configurations differ by 0.003 in reward as much as one where they differ by 0.5, which
is not mean-reward maximisation, and it blows up the advantage of the one deviating rollout of
a nearly deterministic group. Measured on a SYNTHETIC tuning cache (seed 1, 1250 test requests,
60 s, hinge reward): "group" −0.006 vs "none" +0.006 mean reward relative to the best static
configuration per budget, with tier entropy 0.19 vs 0.40 and 78 % vs 61 % zero-std groups at the
end (faster collapse). A group whose rewards are all equal gives
A = 0 for its rollouts (no signal), counted by ``frac_reward_zero_std``. The loss per minibatch is::

    ratio   = exp(logπ(a|s) − logπ_old(a|s))                       (joint action, both stages)
    L_clip  = −mean( min(ratio·A, clip(ratio, 1−ε, 1+ε)·A) )       (clip_eps=None: −mean(ratio·A))
    L       = L_clip − ent_coef · mean(Σ_heads H) + kl_coef · mean(Σ_heads KL(π_h ‖ π_ref,h))

over ``update_epochs`` passes of ``num_minibatches`` minibatches. The KL to the reference policy
(the initial network, frozen) is exact for these small categoricals, summed over the four heads
at the visited states. The seeds' fork (G=5, lr 1e-4, std-scaled advantages, no clipping, no KL)
is ``GRPOConfig(group_size=5, lr=1e-4, scale_rewards="group", clip_eps=None, kl_coef=0.0)``.

Inputs ``lang`` and ``token`` are standardised per feature by running statistics (updated once
per iteration from the new rollouts, then frozen for that iteration's updates, so the first
update's ratio is exactly 1); they are saved with the policy. Deterministic evaluation takes the
argmax of every masked head, as the seeds' ``validate()``.

Logged numbers (one dict per iteration in the returned history, the same names as TensorBoard
scalars when ``log_dir`` is given):

=========================  ==================================================================
``iteration``              1-based iteration number
``env_steps``              episodes (= rollouts) collected so far
``time/elapsed_s``         wall-clock seconds since training started (incl. evaluation)
``time/iter_s``            wall-clock seconds of this iteration (rollout + update)
``lr``                     learning rate used in this iteration
``ent_coef``               entropy-bonus weight used in this iteration
``reward/mean``            mean episode reward of this iteration's rollouts
``reward/std``             std of those rewards
``score/mean``             mean metric score ("accuracy", ``info["score"]``) of the rollouts
``violation/rate``         share of rollouts whose latency exceeded their budget
``latency_ms/mean``        mean estimated latency (ms) of the rollouts' configurations
``frac_reward_zero_std``   share of groups whose G rewards are all equal (zero advantage)
``entropy/<head>``         mean entropy (nats) of head tier / p / top_k / blocks at the visited states
``loss/policy``            clipped surrogate loss, mean over the update's minibatches
``loss/entropy``           mean summed entropy of the four heads (the bonus before ``ent_coef``)
``kl/ref``                 mean summed KL(π ‖ π_ref) over heads (computed even if kl_coef = 0)
``kl/old``                 approximate KL(π_old ‖ π) after the update (k3 estimator, joint action)
``clip_frac``              share of rollouts whose ratio lies outside [1−ε, 1+ε] after the update (0 if no clip)
``grad_norm``              global L2 norm of the gradient before clipping, mean over minibatches
``knob/<knob>=<value>``    share of rollouts choosing that option (tier=low, p=1, top_k=4,
                           blocks=12, ...; blocks is the total block count)
``eval/<split>/reward``    deterministic (argmax) evaluation over every request of ``eval_split``
``eval/<split>/score``     at each budget of an ``eval_budgets``-point grid over the env's budget
``eval/<split>/violation_rate``  range: mean reward, score, violation rate, latency (ms); only
``eval/<split>/latency_ms``      on iterations where an evaluation ran (``eval_every``)
=========================  ==================================================================
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from agents.budget_encoding import BudgetEncoding
from cache.schema import LABEL_KEYS

HEADS: tuple[str, ...] = ("tier", "p", "top_k", "blocks")
SCALE_REWARDS: tuple[str, ...] = ("group", "batch", "none")
#: Logit given to masked options: finite (so 0·log 0 terms stay 0, not NaN) and far below any real logit.
MASKED_LOGIT = -1e9


# ====================================================================================== config
@dataclass
class GRPOConfig:
    """Hyperparameters of GRPO training and of the controller networks.

    Rollout and loop:
        seed: seeds torch, numpy and the env (the vector env's reset seed).
        iterations: outer iterations (rollout + update) at most.
        time_limit_s: stop after the iteration during which this many wall-clock seconds have
            passed (None: no limit). Whichever of ``iterations`` / ``time_limit_s`` comes first.
        contexts_per_iter: contexts (request, budget) drawn per iteration (128 × G = 1024
            episodes: the env is cheap, the update dominates an iteration).
        group_size: G, rollouts per context (the seeds' fork used 5).
        torch_threads: ``torch.set_num_threads`` while training (restored afterwards). 1 by
            default: with these small MLPs one thread is fastest, and on a shared 2-core machine
            two threads contending with other processes made a minibatch step more than ten times
            slower than one thread did. Use at most 2 on the project's CPU machines.

    Optimisation:
        lr: Adam learning rate (the seeds' fork used 1e-4).
        anneal_lr: linearly decay lr to 0 over ``iterations`` or ``time_limit_s``, whichever
            runs out first (the share of the time limit used so far counts as progress).
        adam_eps: Adam epsilon (1e-5 as CleanRL's PPO).
        update_epochs: passes over each iteration's rollouts.
        num_minibatches: minibatches per pass (``contexts_per_iter·group_size`` must divide).
        clip_eps: PPO clip ε of the ratio; None = no clipping (plain ratio·A, the seeds' fork).
        ent_coef: weight of the entropy bonus (sum of the four heads' entropies).
        ent_coef_final: if set, the entropy weight moves linearly from ``ent_coef`` to this over
            training (same progress measure as ``anneal_lr``); None = constant.
        kl_coef: weight of the exact KL to the initial (reference) policy; 0 = off.
        scale_rewards: "none" (default: only subtract the group mean, Dr. GRPO; measured better,
            see the module docstring), "group" (divide by the group's std: DeepSeekMath's GRPO)
            or "batch" (by the batch's std).
        adv_eps: added to the std before dividing (1e-4 as TRL).
        max_grad_norm: clip the global gradient norm to this; None = no clipping.
        ema_decay: if set, keep an exponential moving average of the network weights (updated
            once per iteration with this decay; Polyak averaging of the iterates) and return /
            evaluate the averaged network; rollouts always use the online network.
        weight_decay: AdamW's decoupled weight decay (0 = plain Adam).
        input_noise: std of Gaussian noise added to the standardised ``lang`` and ``token``
            inputs in the update (drawn once per iteration; rollouts see clean inputs). Each
            request's features are a fixed vector that the networks can memorise with the
            request's outcomes; noise makes that fingerprint unreliable (a regulariser).

    Networks:
        hidden_sizes: hidden layer widths of each stage's MLP (ReLU).
        budget_dim: width of the budget encoding (the seeds' 256).
        budget_freq_min, budget_freq_max: frequency range (cycles / unit) of its Fourier features.
        budget_quantities: derived budget quantities that get Fourier features
            (see :mod:`agents.budget_encoding`).
        normalize_inputs: standardise ``lang`` and ``token`` per feature by running statistics.
        norm_clip: clip standardised inputs to ±this.
        stage2_tier_onehot: also give stage 2 the chosen tier's one-hot (besides p's). The remaining
            budget after the tier choice depends strongly on the tier; a latency token need not
            encode the number of vision tokens. False = the seeds' p-only input.

    Evaluation and logging:
        eval_every: evaluate deterministically every this many iterations and after the last
            (0 = never).
        eval_split: split to evaluate on (the env's ``split`` argument).
        eval_budgets: number of budgets in the evaluation grid (linspace over the env's range).
        log_every: print a progress line every this many iterations (when ``progress``).
    """

    seed: int = 0
    iterations: int = 200
    time_limit_s: float | None = None
    contexts_per_iter: int = 128
    group_size: int = 8
    torch_threads: int = 1

    lr: float = 3e-4
    anneal_lr: bool = False
    adam_eps: float = 1e-5
    update_epochs: int = 2
    num_minibatches: int = 2
    clip_eps: float | None = 0.2
    ent_coef: float = 0.01
    ent_coef_final: float | None = None
    kl_coef: float = 0.0
    scale_rewards: str = "none"
    adv_eps: float = 1e-4
    max_grad_norm: float | None = 1.0
    ema_decay: float | None = None
    weight_decay: float = 0.0
    input_noise: float = 0.0

    hidden_sizes: tuple[int, ...] = (128, 128)
    budget_dim: int = 256
    budget_freq_min: float = 0.25
    budget_freq_max: float = 32.0
    budget_quantities: tuple[str, ...] = ("abs", "rel", "pos")
    normalize_inputs: bool = True
    norm_clip: float = 5.0
    stage2_tier_onehot: bool = True

    eval_every: int = 0
    eval_split: str = "val"
    eval_budgets: int = 8
    log_every: int = 10

    def __post_init__(self) -> None:
        self.hidden_sizes = tuple(int(h) for h in self.hidden_sizes)
        self.budget_quantities = tuple(str(q) for q in self.budget_quantities)
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {self.scale_rewards!r}")
        for name in ("iterations", "contexts_per_iter", "update_epochs", "num_minibatches", "torch_threads", "eval_budgets"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (a group of one has no baseline), got {self.group_size}")
        if (self.contexts_per_iter * self.group_size) % self.num_minibatches:
            raise ValueError(
                f"contexts_per_iter*group_size = {self.contexts_per_iter * self.group_size} is not divisible "
                f"by num_minibatches = {self.num_minibatches}"
            )
        if self.clip_eps is not None and not self.clip_eps > 0:
            raise ValueError(f"clip_eps must be > 0 or None, got {self.clip_eps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.ent_coef < 0 or self.kl_coef < 0 or (self.ent_coef_final is not None and self.ent_coef_final < 0):
            raise ValueError("ent_coef, ent_coef_final and kl_coef must be >= 0")
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ValueError(f"hidden_sizes must be positive ints, got {self.hidden_sizes}")
        if self.weight_decay < 0 or self.input_noise < 0:
            raise ValueError("weight_decay and input_noise must be >= 0")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {self.ema_decay}")
        if self.eval_every < 0 or self.log_every < 1:
            raise ValueError("eval_every must be >= 0 and log_every >= 1")
        self.budget_encoding()  # validates the encoding parameters

    def budget_encoding(self) -> BudgetEncoding:
        return BudgetEncoding(
            dim=self.budget_dim,
            quantities=self.budget_quantities,
            freq_min=self.budget_freq_min,
            freq_max=self.budget_freq_max,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden_sizes"] = list(self.hidden_sizes)
        d["budget_quantities"] = list(self.budget_quantities)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GRPOConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown GRPOConfig fields {unknown}; valid fields: {sorted(names)}")
        return cls(**d)


# ==================================================================================== networks
class RunningNorm(nn.Module):
    """Per-feature standardisation by running mean / variance (Chan et al. parallel update).

    Buffers (saved in the state dict): ``count`` (scalar float64), ``mean`` and ``var`` (D,)
    float64. ``forward`` maps float32 (N, D) → float32 (N, D) clipped to ±``clip``.
    """

    def __init__(self, dim: int, clip: float = 5.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.clip, self.eps = float(clip), float(eps)
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.to(torch.float64)
        n = float(x.shape[0])
        if n == 0:
            return
        b_mean, b_var = x.mean(0), x.var(0, unbiased=False)
        tot = self.count + n
        delta = b_mean - self.mean
        self.mean += delta * n / tot
        self.var.copy_((self.var * self.count + b_var * n + delta.pow(2) * self.count * n / tot) / tot)
        self.count.fill_(tot)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.count.item() == 0:
            return x
        y = (x.to(torch.float64) - self.mean) / torch.sqrt(self.var + self.eps)
        return y.clamp(-self.clip, self.clip).to(torch.float32)


def mlp(in_dim: int, hidden: Sequence[int]) -> nn.Sequential:
    """ReLU MLP ``in_dim → hidden[0] → … → hidden[-1]`` (orthogonal init, gain √2, zero bias)."""
    layers: list[nn.Module] = []
    for h in hidden:
        lin = nn.Linear(in_dim, h)
        nn.init.orthogonal_(lin.weight, math.sqrt(2.0))
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.ReLU()]
        in_dim = h
    return nn.Sequential(*layers)


def head(in_dim: int, n: int) -> nn.Linear:
    """Output layer with small orthogonal init (gain 0.01) so the initial policy is near-uniform."""
    lin = nn.Linear(in_dim, n)
    nn.init.orthogonal_(lin.weight, 0.01)
    nn.init.zeros_(lin.bias)
    return lin


class TwoStageController(nn.Module):
    """The two stage networks. Inputs are already preprocessed (see :meth:`GRPOPolicy.stage1_inputs`).

    Args:
        lang_dim: Dl, width of ``obs["lang"]``.
        token_dim: Dt, width of ``obs["token"]``.
        onehot_dim: width of the stage-2 one-hot input (T+P with the tier one-hot, else P).
        nvec: the MultiDiscrete action sizes ``(n_tiers, n_p, n_top_k, n_block_options)``.
        budget_dim: width of the budget encoding.
        hidden: hidden widths of each stage's MLP.
    """

    def __init__(self, lang_dim: int, token_dim: int, onehot_dim: int, nvec: Sequence[int],
                 budget_dim: int, hidden: Sequence[int], request_dim: int = 0) -> None:
        super().__init__()
        n_tier, n_p, n_k, n_b = (int(n) for n in nvec)
        self.stage1 = mlp(lang_dim + budget_dim + request_dim, hidden)
        self.tier_head, self.p_head = head(hidden[-1], n_tier), head(hidden[-1], n_p)
        self.stage2 = mlp(token_dim + budget_dim + onehot_dim, hidden)
        self.topk_head, self.blocks_head = head(hidden[-1], n_k), head(hidden[-1], n_b)

    def stage1_logits(self, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x1 float32 (N, Dl+budget_dim) → tier logits (N, n_tier), insertion logits (N, n_p)."""
        h = self.stage1(x1)
        return self.tier_head(h), self.p_head(h)

    def stage2_logits(self, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x2 float32 (N, Dt+budget_dim+onehot_dim) → top-k logits (N, n_k), active-blocks logits (N, n_b)."""
        h = self.stage2(x2)
        return self.topk_head(h), self.blocks_head(h)

    def head_logits(self, x1: torch.Tensor, x2: torch.Tensor) -> list[torch.Tensor]:
        """Unmasked logits of the four heads in :data:`HEADS` order."""
        return [*self.stage1_logits(x1), *self.stage2_logits(x2)]


# ========================================================================= masked categoricals
def split_mask(mask: np.ndarray | torch.Tensor, nvec: Sequence[int]) -> list[torch.Tensor]:
    """Per-component boolean masks from the concatenated MultiDiscrete mask (N, Σnvec)."""
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).bool()
    if m.shape[-1] != sum(nvec):
        raise ValueError(f"action mask has width {m.shape[-1]}, expected sum(nvec) = {sum(nvec)}")
    return list(torch.split(m, list(nvec), dim=-1))


def masked_log_probs(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the valid options; invalid options get ≈ −1e9 (probability exactly 0).

    logits float32 (N, n), mask bool (N, n) with at least one True per row → float32 (N, n).
    """
    if not bool(mask.any(-1).all()):
        raise ValueError("an action mask row has no valid option")
    return torch.log_softmax(torch.where(mask, logits, torch.full_like(logits, MASKED_LOGIT)), dim=-1)


def categorical_entropy(logp: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row of masked log-probabilities (N, n) → (N,)."""
    return -(logp.exp() * logp).sum(-1)


def categorical_kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row of two masked log-probability tables (N, n) with the same mask → (N,)."""
    return (logp.exp() * (logp - logq)).sum(-1)


def sample_or_argmax(logp: torch.Tensor, deterministic: bool, generator: torch.Generator | None) -> torch.Tensor:
    """One option per row (N,) int64: argmax, or a draw from exp(logp). Masked options (p = 0)
    are never drawn by ``torch.multinomial`` and never win an argmax against a valid option."""
    if deterministic:
        return logp.argmax(-1)
    return torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)


# ========================================================================== advantages & loss
def group_advantages(rewards: np.ndarray | torch.Tensor, group_size: int, scale_rewards: str = "group",
                     eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO advantages of rollouts laid out group by group.

    Args:
        rewards: (n_groups·group_size,) rewards; rows ``g·G .. g·G+G−1`` share a context.
        group_size: G ≥ 2.
        scale_rewards: "group", "batch" or "none" (see the module docstring).
        eps: added to the std before dividing.

    Returns:
        (advantages float32 (N,), zero_std bool (n_groups,)): a group whose rewards are all equal
        has zero advantages (whatever the scaling) and ``zero_std`` True.
    """
    r = torch.as_tensor(np.asarray(rewards) if not isinstance(rewards, torch.Tensor) else rewards, dtype=torch.float64)
    if r.ndim != 1 or r.numel() % group_size or group_size < 2:
        raise ValueError(f"rewards must be 1-d with a length divisible by group_size={group_size} >= 2, got {tuple(r.shape)}")
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    g = r.view(-1, group_size)
    centred = g - g.mean(1, keepdim=True)
    zero_std = (g.max(1).values - g.min(1).values) == 0  # exact: no float noise from std of equal values
    centred = torch.where(zero_std[:, None], torch.zeros_like(centred), centred)
    if scale_rewards == "group":
        adv = centred / (g.std(1, keepdim=True) + eps)
    elif scale_rewards == "batch":
        adv = centred / (r.std() + eps)
    else:
        adv = centred
    return adv.reshape(-1).to(torch.float32), zero_std


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
                        clip_eps: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate as a loss: −mean(min(ρA, clip(ρ, 1−ε, 1+ε)A)), ρ = exp(logp − old_logp).

    All inputs (N,). ``clip_eps=None`` gives −mean(ρA). Returns (loss scalar, clipped-share scalar).
    """
    ratio = torch.exp(logp - old_logp)
    if clip_eps is None:
        return -(ratio * adv).mean(), torch.zeros((), dtype=logp.dtype)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
    clip_frac = ((ratio - 1.0).abs() > clip_eps).float().mean()
    return -torch.min(unclipped, clipped).mean(), clip_frac


# ====================================================================================== policy
def _batched(obs: dict[str, Any]) -> tuple[dict[str, np.ndarray], bool]:
    """Obs dict with a leading batch dim; second value True when the input was a single obs."""
    single = np.asarray(obs["budget"]).ndim == 1
    return ({k: (np.asarray(v)[None] if single else np.asarray(v)) for k, v in obs.items()}, single)


class GRPOPolicy:
    """The trained two-stage controller as the evaluator calls it (docs/INTERFACES.md "Policies").

    Acts on batched observations of ``MolmoeKnobs-v0`` (a single unbatched observation works too
    and gives a (4,) action). Deterministic (argmax of every masked head) unless
    ``deterministic=False`` is set or passed.

    Args:
        lang_dim, token_dim: widths of ``obs["lang"]`` / ``obs["token"]``.
        nvec: MultiDiscrete action sizes ``(n_tiers, n_p, n_top_k, n_block_options)``.
        cfg: the config (network shape, budget encoding, input normalisation).
        deterministic: default acting mode.
        seed: seed of the sampling generator (stochastic acting).
    """

    name = "grpo"
    #: provenance label of the training data (``cache_label``, ``synthetic``, ``generator``,
    #: ``model_id``; :func:`cache.reader.data_label`), written into ``config.json`` by :meth:`save`.
    provenance: dict[str, Any] | None = None

    def __init__(self, lang_dim: int, token_dim: int, nvec: Sequence[int], cfg: GRPOConfig | None = None,
                 deterministic: bool = True, seed: int = 0, request_dim: int = 0) -> None:
        self.cfg = cfg or GRPOConfig()
        self.lang_dim, self.token_dim = int(lang_dim), int(token_dim)
        self.request_dim = int(request_dim)  # 0: obs["request"] not used (policies saved before it existed)
        self.nvec = tuple(int(n) for n in nvec)
        if len(self.nvec) != 4:
            raise ValueError(f"nvec must have 4 entries (tier, p, top_k, blocks), got {self.nvec}")
        self.deterministic = bool(deterministic)
        self.encoding = self.cfg.budget_encoding()
        n_t, n_p = self.nvec[0], self.nvec[1]
        self.onehot_dim = n_t + n_p if self.cfg.stage2_tier_onehot else n_p
        self.lang_norm = RunningNorm(self.lang_dim, self.cfg.norm_clip)
        self.token_norm = RunningNorm(self.token_dim, self.cfg.norm_clip)
        self.net = TwoStageController(self.lang_dim, self.token_dim, self.onehot_dim, self.nvec,
                                      self.encoding.dim, self.cfg.hidden_sizes, self.request_dim)
        self.generator = torch.Generator().manual_seed(int(seed))

    # -------------------------------------------------------------- preprocessing
    def _check(self, obs: dict[str, np.ndarray]) -> None:
        for key, width in (("lang", self.lang_dim), ("token", self.token_dim), ("budget", 4),
                           ("context", 1 + self.nvec[0] + self.nvec[1]), ("action_mask", sum(self.nvec)),
                           *((("request", self.request_dim),) if self.request_dim else ())):
            if key not in obs:
                raise ValueError(f"observation lacks key {key!r} (is this a MolmoeKnobs-v0 observation?)")
            if obs[key].shape[-1] != width:
                raise ValueError(f"obs[{key!r}] has width {obs[key].shape[-1]}, this policy expects {width}")

    def stage1_inputs(self, obs: dict[str, np.ndarray]) -> torch.Tensor:
        """float32 (N, Dl + budget_dim [+ R]): normalised language feature ‖ budget encoding
        ‖ the request features ``obs["request"]`` (as the env scales them; when ``request_dim``)."""
        lang = torch.as_tensor(obs["lang"], dtype=torch.float32)
        if self.cfg.normalize_inputs:
            lang = self.lang_norm(lang)
        parts = [lang, torch.as_tensor(self.encoding(obs["budget"]))]
        if self.request_dim:
            parts.append(torch.as_tensor(np.asarray(obs["request"], dtype=np.float32)))
        return torch.cat(parts, dim=-1)

    def stage2_inputs(self, obs: dict[str, np.ndarray]) -> torch.Tensor:
        """float32 (N, Dt + budget_dim + onehot_dim): normalised latency token ‖ budget encoding ‖
        one-hots of the chosen (tier,) p from ``obs["context"]``."""
        tok = torch.as_tensor(obs["token"], dtype=torch.float32)
        if self.cfg.normalize_inputs:
            tok = self.token_norm(tok)
        ctx = np.asarray(obs["context"], dtype=np.float32)
        onehot = ctx[:, 1:] if self.cfg.stage2_tier_onehot else ctx[:, 1 + self.nvec[0]:]
        return torch.cat([tok, torch.as_tensor(self.encoding(obs["budget"])), torch.as_tensor(onehot)], dim=-1)

    # -------------------------------------------------------------- acting
    @torch.no_grad()
    def act_stage1(self, obs: dict[str, Any], info: dict | None = None, deterministic: bool | None = None) -> np.ndarray:
        """Stage-0 observation(s) → int64 (N, 4) actions ``(tier, p−1, ·, ·)``; the last two are the
        stage-0 mask's pinned indices. Masked options are never chosen."""
        o, single = _batched(obs)
        self._check(o)
        masks = split_mask(o["action_mask"], self.nvec)
        det = self.deterministic if deterministic is None else deterministic
        tier_l, p_l = self.net.stage1_logits(self.stage1_inputs(o))
        a = torch.stack([
            sample_or_argmax(masked_log_probs(tier_l, masks[0]), det, self.generator),
            sample_or_argmax(masked_log_probs(p_l, masks[1]), det, self.generator),
            masks[2].int().argmax(-1), masks[3].int().argmax(-1),
        ], dim=-1).numpy().astype(np.int64)
        return a[0] if single else a

    @torch.no_grad()
    def act_stage2(self, obs: dict[str, Any], info: dict | None = None, deterministic: bool | None = None) -> np.ndarray:
        """Stage-1 observation(s) → int64 (N, 4) actions: (tier, p−1) as pinned by the stage-1 mask,
        then the top-k and active-blocks indices; the active-blocks index respects the mask of the
        chosen p."""
        o, single = _batched(obs)
        self._check(o)
        masks = split_mask(o["action_mask"], self.nvec)
        det = self.deterministic if deterministic is None else deterministic
        k_l, b_l = self.net.stage2_logits(self.stage2_inputs(o))
        a = torch.stack([
            masks[0].int().argmax(-1), masks[1].int().argmax(-1),
            sample_or_argmax(masked_log_probs(k_l, masks[2]), det, self.generator),
            sample_or_argmax(masked_log_probs(b_l, masks[3]), det, self.generator),
        ], dim=-1).numpy().astype(np.int64)
        return a[0] if single else a

    # -------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "lang_norm": self.lang_norm.state_dict(),
                "token_norm": self.token_norm.state_dict()}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        # policies saved before the active-blocks head was renamed call it ``knob3_head``
        net = {k.replace("knob3_head.", "blocks_head.", 1) if k.startswith("knob3_head.") else k: v
               for k, v in sd["net"].items()}
        self.net.load_state_dict(net)
        self.lang_norm.load_state_dict(sd["lang_norm"])
        self.token_norm.load_state_dict(sd["token_norm"])

    def save(self, directory: str | Path) -> Path:
        """Write ``policy.pt`` (torch state dicts) and ``config.json`` (dims, nvec, GRPOConfig)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), d / "policy.pt")
        meta = {"agent": "grpo", "lang_dim": self.lang_dim, "token_dim": self.token_dim, "nvec": list(self.nvec),
                "request_dim": self.request_dim,
                "deterministic": self.deterministic, "config": self.cfg.to_dict(), **(self.provenance or {})}
        (d / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "GRPOPolicy":
        """Inverse of :meth:`save`; ValueError if the directory does not hold a GRPO policy."""
        d = Path(directory)
        cfg_path, pt_path = d / "config.json", d / "policy.pt"
        if not cfg_path.is_file() or not pt_path.is_file():
            raise ValueError(f"{d} is not a saved GRPO policy (needs config.json and policy.pt)")
        meta = json.loads(cfg_path.read_text())
        if meta.get("agent") != "grpo":
            raise ValueError(f"{cfg_path} is not a GRPO policy config (agent={meta.get('agent')!r})")
        pol = cls(meta["lang_dim"], meta["token_dim"], meta["nvec"], GRPOConfig.from_dict(meta["config"]),
                  deterministic=meta.get("deterministic", True), request_dim=meta.get("request_dim", 0))
        pol.load_state_dict(torch.load(pt_path, map_location="cpu", weights_only=True))
        pol.provenance = {k: meta[k] for k in LABEL_KEYS if k in meta} or None
        return pol


# ==================================================================================== rollouts
def make_vector_env(env_kwargs: dict, num_envs: int, split: str | None = None):
    """A native ``MolmoeKnobs-v0`` vector env; ``split`` overrides ``env_kwargs["split"]``."""
    from envs.vector_env import MolmoeKnobsVectorEnv  # lazy: keeps `import agents.grpo` light

    kw = dict(env_kwargs)
    if split is not None:
        kw["split"] = split
    return MolmoeKnobsVectorEnv(num_envs, **kw)


@dataclass
class Rollouts:
    """One iteration's rollouts, ``N = n_groups·G`` rows laid out group by group.

    ``obs0`` / ``obs1``: the stage-0 / stage-1 observation batches (dicts of (N, ...) arrays);
    ``actions``: int64 (N, 4) ``(tier, p−1, top-k index, active-blocks index)``; ``reward``, ``score``,
    ``latency_ms``, ``budget_ms``: float64 (N,); ``violation``: bool (N,); ``config``: the final
    info's config dict of (N,) arrays (tier names, p, top_k, blocks).
    """

    obs0: dict[str, np.ndarray]
    obs1: dict[str, np.ndarray]
    actions: np.ndarray
    reward: np.ndarray
    score: np.ndarray
    latency_ms: np.ndarray
    budget_ms: np.ndarray
    violation: np.ndarray
    config: dict[str, np.ndarray]


def run_episodes(venv, policy: GRPOPolicy, sample_index: np.ndarray, budget_ms: np.ndarray,
                 deterministic: bool) -> Rollouts:
    """Play one two-stage episode in every sub-env of ``venv`` with the given pinned contexts.

    ``sample_index`` int (num_envs,) rows of the env's split, ``budget_ms`` float (num_envs,).
    Uses only the env's public API: a pinned ``reset`` and two ``step`` calls (the finished
    episodes' outcomes come from ``info["final_info"]``, the vector env autoresets).
    """
    obs0, _ = venv.reset(options={"sample_index": np.asarray(sample_index, np.int64),
                                  "budget_ms": np.asarray(budget_ms, np.float64)})
    a0 = policy.act_stage1(obs0, None, deterministic=deterministic)
    obs1, _, term, _, _ = venv.step(a0)
    if term.any():
        raise RuntimeError("an episode ended after stage 1 (invalid action under invalid_action='penalty'?)")
    a1 = policy.act_stage2(obs1, None, deterministic=deterministic)
    _, reward, term, _, info = venv.step(a1)
    if not term.all():
        raise RuntimeError("an episode did not end after stage 2")
    fi = info["final_info"]
    return Rollouts(
        obs0=obs0, obs1=obs1, actions=np.concatenate([a0[:, :2], a1[:, 2:]], axis=1),
        reward=np.asarray(reward, np.float64), score=np.asarray(fi["score"], np.float64),
        latency_ms=np.asarray(fi["latency_ms"], np.float64), budget_ms=np.asarray(fi["budget_ms"], np.float64),
        violation=np.asarray(fi["violation"], bool), config=fi["config"],
    )


def draw_contexts(venv, n: int, seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` contexts (request row, budget ms) drawn by the env's own sampler (an unpinned reset:
    uniform over the split's eligible requests, budgets from its budget range or list)."""
    _, info = venv.reset(seed=seed)
    if n > venv.num_envs:
        raise ValueError(f"cannot draw {n} contexts from a vector env of {venv.num_envs} sub-envs")
    return np.asarray(info["sample_index"][:n], np.int64), np.asarray(info["budget_ms"][:n], np.float64)


def evaluation_grid(venv, n_budgets: int) -> np.ndarray:
    """float64 (n_budgets,) budgets: the env's fixed budget list if it has one (all of it when
    ``n_budgets`` ≥ its length), else ``linspace`` over its budget range (ms)."""
    sampler = venv.budget_sampler
    if sampler.budgets is not None:
        b = np.unique(sampler.budgets)
        return b if n_budgets >= b.size else b[np.linspace(0, b.size - 1, n_budgets).round().astype(int)]
    lo, hi = sampler.range_ms
    return np.linspace(lo, hi, n_budgets)


def evaluate_deterministic(venv, policy: GRPOPolicy, budgets: Sequence[float],
                           requests: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Argmax policy on every (request, budget) pair: every eligible request of ``venv``'s split
    (or ``requests``) at every budget, in chunks of ``venv.num_envs`` (the last one padded).

    Returns flat arrays over pairs (request-major): ``sample_index`` int64, ``budget_ms``,
    ``reward``, ``score``, ``latency_ms`` float64, ``violation`` bool, ``actions`` int64 (·, 4).
    """
    req = np.asarray(venv.settings.eligible if requests is None else requests, np.int64)
    s = np.repeat(req, len(budgets))
    b = np.tile(np.asarray(budgets, np.float64), req.size)
    n_env, parts = venv.num_envs, []
    for lo in range(0, s.size, n_env):
        k = min(n_env, s.size - lo)
        pad = np.arange(n_env) % k  # fill the chunk by repeating its own pairs
        ro = run_episodes(venv, policy, s[lo:lo + k][pad], b[lo:lo + k][pad], deterministic=True)
        parts.append((ro.reward[:k], ro.score[:k], ro.latency_ms[:k], ro.violation[:k], ro.actions[:k]))
    cols = [np.concatenate(c) for c in zip(*parts)]
    return {"sample_index": s, "budget_ms": b, "reward": cols[0], "score": cols[1], "latency_ms": cols[2],
            "violation": cols[3], "actions": cols[4]}


# ============================================================================ update machinery
def _head_log_probs(net: TwoStageController, x1: torch.Tensor, x2: torch.Tensor,
                    masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Masked log-probability tables of the four heads, each (N, n_head)."""
    return [masked_log_probs(lg, m) for lg, m in zip(net.head_logits(x1, x2), masks)]


def _joint_log_prob(logps: list[torch.Tensor], actions: torch.Tensor) -> torch.Tensor:
    """Σ over heads of log π_h(a_h), (N,)."""
    return sum(lp.gather(1, actions[:, h:h + 1]).squeeze(1) for h, lp in enumerate(logps))


def _knob_shares(config: dict[str, np.ndarray], knob_space) -> dict[str, float]:
    """``knob/<knob>=<value>`` shares over the rollouts, every option listed (0 if never chosen)."""
    options = {
        "tier": list(knob_space.tiers),
        "p": list(knob_space.insertion_positions),
        "top_k": list(knob_space.top_ks),
        "blocks": sorted({b for p in knob_space.insertion_positions for b in knob_space.block_options(p)}),
    }
    out = {}
    for knob, values in options.items():
        col = np.asarray(config[knob])
        for v in values:
            out[f"knob/{knob}={v}"] = float(np.mean(col == v))
    return out


def _eval_metrics(ev: dict[str, np.ndarray], split: str) -> dict[str, float]:
    return {f"eval/{split}/reward": float(ev["reward"].mean()), f"eval/{split}/score": float(ev["score"].mean()),
            f"eval/{split}/violation_rate": float(ev["violation"].mean()),
            f"eval/{split}/latency_ms": float(ev["latency_ms"].mean())}


# ================================================================================ training loop
def train_grpo(env_kwargs: dict, cfg: GRPOConfig | None = None, log_dir: str | Path | None = None,
               progress: bool = True, eval_env_kwargs: dict | None = None) -> tuple[GRPOPolicy, list[dict]]:
    """Train the two-stage controller with GRPO on ``MolmoeKnobs-v0``.

    Args:
        env_kwargs: keyword arguments of the env (``cache=`` path or ``data=`` ReplayData,
            ``split``, ``reward``, ``reward_kwargs``, ``budget_range`` ...; see
            :func:`envs.env_settings.resolve_settings`).
        cfg: hyperparameters (default :class:`GRPOConfig()`).
        log_dir: TensorBoard directory (scalars named as in the module docstring); None = none.
        progress: print a line every ``cfg.log_every`` iterations.
        eval_env_kwargs: env kwargs of the evaluation env (``cfg.eval_every`` > 0); default:
            ``env_kwargs`` with ``split=cfg.eval_split`` (with ``data=`` given, the same data).

    Returns:
        (policy, history): the trained :class:`GRPOPolicy` (deterministic) and one dict of logged
        numbers per iteration.
    """
    cfg = cfg or GRPOConfig()
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.torch_threads)
    try:
        return _train(env_kwargs, cfg, log_dir, progress, eval_env_kwargs)
    finally:
        torch.set_num_threads(prev_threads)


def _train(env_kwargs: dict, cfg: GRPOConfig, log_dir: str | Path | None, progress: bool,
           eval_env_kwargs: dict | None) -> tuple[GRPOPolicy, list[dict]]:
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    n_ctx, G = cfg.contexts_per_iter, cfg.group_size
    N = n_ctx * G
    venv = make_vector_env(env_kwargs, N)
    data = venv.data
    from cache.reader import data_label  # lazy: h5py

    label = data_label(data.source, data.synthetic)
    synthetic_tag = " [SYNTHETIC data]" if label["synthetic"] else f" [{label['cache_label']}]"
    policy = GRPOPolicy(data.lang_dim, data.token_dim, venv.nvec, cfg, deterministic=True, seed=cfg.seed,
                        request_dim=data.request_dim)
    policy.provenance = label
    ref_net = copy.deepcopy(policy.net).requires_grad_(False)  # π_ref: the initial policy
    ema_net = copy.deepcopy(policy.net).requires_grad_(False) if cfg.ema_decay is not None else None
    optimizer = torch.optim.AdamW(policy.net.parameters(), lr=cfg.lr, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)

    eval_env, eval_budgets = None, None
    if cfg.eval_every:
        ekw = eval_env_kwargs
        if ekw is None:
            ekw = dict(env_kwargs) if "data" in env_kwargs else {**env_kwargs, "split": cfg.eval_split}
        eval_env = make_vector_env(ekw, min(1024, max(N, 64)))
        eval_budgets = evaluation_grid(eval_env, cfg.eval_budgets)

    writer = None
    if log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter  # lazy: tensorboard is slow to import

        writer = SummaryWriter(str(log_dir))
        writer.add_text("config", json.dumps(cfg.to_dict(), indent=1) + synthetic_tag)

    history: list[dict] = []
    mb_size = N // cfg.num_minibatches
    perm_gen = torch.Generator().manual_seed(cfg.seed + 1)
    for it in range(1, cfg.iterations + 1):
        t_iter = time.perf_counter()
        # training progress in [0, 1]: whichever budget (iterations / time) runs out first
        done = (it - 1) / cfg.iterations
        if cfg.time_limit_s is not None:
            done = min(max(done, (time.perf_counter() - t_start) / cfg.time_limit_s), 1.0)
        lr = cfg.lr * (1.0 - done) if cfg.anneal_lr else cfg.lr
        ent_coef = cfg.ent_coef if cfg.ent_coef_final is None else cfg.ent_coef + done * (cfg.ent_coef_final - cfg.ent_coef)
        for g in optimizer.param_groups:
            g["lr"] = lr

        # ---- rollouts: G episodes of each of n_ctx contexts, sampled from the current policy
        ctx_s, ctx_b = draw_contexts(venv, n_ctx, seed=cfg.seed if it == 1 else None)
        policy.net.eval()
        ro = run_episodes(venv, policy, np.repeat(ctx_s, G), np.repeat(ctx_b, G), deterministic=False)
        adv, zero_std = group_advantages(ro.reward, G, cfg.scale_rewards, cfg.adv_eps)

        # ---- fixed inputs of this iteration's update (normalisers updated once, then frozen)
        if cfg.normalize_inputs:
            policy.lang_norm.update(torch.as_tensor(ro.obs0["lang"]))
            policy.token_norm.update(torch.as_tensor(ro.obs1["token"]))
        x1, x2 = policy.stage1_inputs(ro.obs0), policy.stage2_inputs(ro.obs1)
        if cfg.input_noise > 0:  # only the feature columns, not the budget encoding / one-hots
            x1[:, :policy.lang_dim] += cfg.input_noise * torch.randn(N, policy.lang_dim, generator=perm_gen)
            x2[:, :policy.token_dim] += cfg.input_noise * torch.randn(N, policy.token_dim, generator=perm_gen)
        m0, m1 = split_mask(ro.obs0["action_mask"], policy.nvec), split_mask(ro.obs1["action_mask"], policy.nvec)
        masks = [m0[0], m0[1], m1[2], m1[3]]
        acts = torch.as_tensor(ro.actions, dtype=torch.int64)
        with torch.no_grad():
            old_lps = _head_log_probs(policy.net, x1, x2, masks)
            old_logp = _joint_log_prob(old_lps, acts)
            ref_lps = _head_log_probs(ref_net, x1, x2, masks)
            entropies = [categorical_entropy(lp).mean().item() for lp in old_lps]

        # ---- update: update_epochs passes of num_minibatches minibatches
        policy.net.train()
        pol_losses, ent_terms, kl_terms, grad_norms = [], [], [], []
        for _ in range(cfg.update_epochs):
            order = torch.randperm(N, generator=perm_gen)
            for lo in range(0, N, mb_size):
                idx = order[lo:lo + mb_size]
                lps = _head_log_probs(policy.net, x1[idx], x2[idx], [m[idx] for m in masks])
                logp = _joint_log_prob(lps, acts[idx])
                pg_loss, _ = clipped_policy_loss(logp, old_logp[idx], adv[idx], cfg.clip_eps)
                ent = sum(categorical_entropy(lp) for lp in lps).mean()
                kl_ref = sum(categorical_kl(lp, rl[idx]) for lp, rl in zip(lps, ref_lps)).mean()
                loss = pg_loss - ent_coef * ent + cfg.kl_coef * kl_ref
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
                grad_norms.append(float(nn.utils.clip_grad_norm_(policy.net.parameters(), max_norm)))
                optimizer.step()
                pol_losses.append(pg_loss.item())
                ent_terms.append(ent.item())
                kl_terms.append(kl_ref.item())

        if ema_net is not None:
            with torch.no_grad():
                for pe, po in zip(ema_net.parameters(), policy.net.parameters()):
                    pe.lerp_(po, 1.0 - cfg.ema_decay)

        with torch.no_grad():  # how far this update moved the policy on its own rollouts
            new_logp = _joint_log_prob(_head_log_probs(policy.net, x1, x2, masks), acts)
            log_ratio = new_logp - old_logp
            kl_old = (torch.exp(log_ratio) - 1.0 - log_ratio).mean().item()
            clip_frac = 0.0 if cfg.clip_eps is None else ((log_ratio.exp() - 1.0).abs() > cfg.clip_eps).float().mean().item()

        # ---- log
        row: dict[str, Any] = {
            "iteration": it,
            "env_steps": it * N,
            "lr": lr,
            "ent_coef": ent_coef,
            "reward/mean": float(ro.reward.mean()),
            "reward/std": float(ro.reward.std()),
            "score/mean": float(ro.score.mean()),
            "violation/rate": float(ro.violation.mean()),
            "latency_ms/mean": float(ro.latency_ms.mean()),
            "frac_reward_zero_std": float(zero_std.float().mean()),
            **{f"entropy/{h}": e for h, e in zip(HEADS, entropies)},
            "loss/policy": float(np.mean(pol_losses)),
            "loss/entropy": float(np.mean(ent_terms)),
            "kl/ref": float(np.mean(kl_terms)),
            "kl/old": kl_old,
            "clip_frac": clip_frac,
            "grad_norm": float(np.mean(grad_norms)),
            **_knob_shares(ro.config, data.knob_space),
        }
        row["time/iter_s"] = time.perf_counter() - t_iter
        elapsed = time.perf_counter() - t_start
        last = it == cfg.iterations or (cfg.time_limit_s is not None and elapsed >= cfg.time_limit_s)
        if eval_env is not None and (it % cfg.eval_every == 0 or last):
            policy.net.eval()
            row.update(_eval_metrics(evaluate_deterministic(eval_env, _returned(policy, ema_net), eval_budgets),
                                     cfg.eval_split))
        row["time/elapsed_s"] = time.perf_counter() - t_start
        history.append(row)
        if writer is not None:
            for k, v in row.items():
                if k != "iteration":
                    writer.add_scalar(k, v, it)
        if progress and (it % cfg.log_every == 0 or it == 1 or last):
            ev = f" eval/{cfg.eval_split}/reward {row[f'eval/{cfg.eval_split}/reward']:.4f}" if f"eval/{cfg.eval_split}/reward" in row else ""
            print(f"[grpo{synthetic_tag}] it {it:4d} t {row['time/elapsed_s']:6.1f}s reward {row['reward/mean']:.4f} "
                  f"score {row['score/mean']:.3f} viol {row['violation/rate']:.3f} lat {row['latency_ms/mean']:.1f}ms "
                  f"H(t,p,k,b) {'/'.join(f'{e:.2f}' for e in entropies)} zero-std {row['frac_reward_zero_std']:.2f}"
                  f"{ev}", flush=True)
        if last:
            break

    if writer is not None:
        writer.close()
    venv.close()
    if eval_env is not None:
        eval_env.close()
    if ema_net is not None:
        policy.net.load_state_dict(ema_net.state_dict())
    policy.net.eval()
    policy.deterministic = True
    return policy, history


def _returned(policy: GRPOPolicy, ema_net: TwoStageController | None) -> GRPOPolicy:
    """The policy as it would be returned now: the online one, or a view with the averaged net."""
    if ema_net is None:
        return policy
    view = copy.copy(policy)
    view.net = ema_net
    return view
