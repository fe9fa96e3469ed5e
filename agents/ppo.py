"""PPO agents: sb3-contrib ``MaskablePPO`` on ``MolmoeKnobs-v0`` and SB3 ``PPO`` on ``MolmoeKnobsFlat-v0``.

Entry points (used by ``python -m experiments.train --agent {ppo,maskable_ppo}``):

- :func:`train_maskable_ppo` ``(env_kwargs, cfg: MaskablePPOConfig, log_dir)`` → :class:`PPOTrainResult`
- :func:`train_ppo_flat` ``(env_kwargs, cfg: PPOConfig, log_dir)`` → :class:`PPOTrainResult`

``env_kwargs`` are the envs' constructor arguments (``cache=`` path or ``data=`` ReplayData,
``split``, ``reward``, ...; :func:`envs.env_settings.resolve_settings`).

**Masks and the two stages.** sb3-contrib masks a ``MultiDiscrete`` action *per component*
(the mask is the concatenation of one boolean vector per component), so it cannot express a
joint constraint such as "active-blocks index ≤ 5 − p". The two-stage env resolves the
dependency by staging: stage 0 picks ``(tier, p)`` (its mask pins the top-k and active-blocks
indices to 0, so those components carry no log-probability), stage 1 picks the top-k and
active-blocks indices with a mask that pins tier and p to the stage-0 choice and allows only
the active-blocks indices valid for that p. Every mask the policy sees is therefore a product
of per-component masks, and MaskablePPO never samples an invalid configuration. Episodes are
two steps with reward only at the end, hence ``gamma = 1`` by default (the stage-0 value is
the expected final reward).

That is exact as long as the missing outcomes form per-component patterns (``incomplete="skip"``,
the default, has none). Under ``incomplete="mask"`` with scattered holes, a (top-k,
active-blocks) pair can pass both component masks and still have no outcome; no per-component
mask can exclude it.
:func:`train_maskable_ppo` therefore sets ``invalid_action="penalty"`` when
``incomplete="mask"`` (unless given): such a pair ends the episode with reward −1, and the
policy learns to avoid it.

The flat env's ``Discrete(225)`` mask is exact; plain ``PPO`` cannot use it while training,
so :func:`train_ppo_flat` sets ``invalid_action="penalty"`` unless given (a masked choice ends
the episode with reward −1; with the default ``incomplete="skip"`` nothing is masked). The
evaluation wrapper :class:`FlatPPOPolicy` takes the argmax over unmasked logits.

**Vector env.** ``cfg.vec_env = "native"`` (default) drives the envs' native numpy vector env
through :class:`agents.sb3_vec_adapter.SB3VecEnvAdapter`; ``"dummy"`` uses SB3's
``DummyVecEnv`` over ``gym.make`` copies sharing one loaded ReplayData. Both are wrapped in
``VecMonitor``. ``benchmarks/bench_ppo_bandits.py`` times both; at 64 sub-envs of the two-stage
env on the default synthetic cache (2-core dev machine, shared): env-only stepping through the
SB3 API 62k steps/s native vs 8.6k dummy, ``MaskablePPO.learn`` 5.5k vs 3.6k steps/s. The
native adapter is the default.

**Features.** :class:`KnobsFeatureExtractor` standardises ``lang`` and ``token`` with per-feature
mean/std measured once before training (stored as buffers, so they are saved with the model),
projects each to ``embed_dim`` with a Linear+ReLU, and concatenates the raw ``budget`` (4),
the GRPO agent's shared sinusoidal budget encoding (:mod:`agents.budget_encoding`, without
its raw part) and ``context``. The encoding lets a small MLP place per-request latency
thresholds; the action mask is not an input (it only gates the logits).

**Logging.** ``log_dir/progress.csv`` (SB3 logger; tensorboard optional), ``rollout/score_mean``,
``rollout/violation_rate`` and ``rollout/latency_over_budget`` from the finished episodes'
infos, ``log_dir/eval/`` (``evaluations.npz`` + ``best_model.zip`` of the (Maskable)EvalCallback
on ``cfg.eval_split``), ``log_dir/checkpoints/``, ``log_dir/policy/`` (the final policy,
:meth:`save` format) and ``log_dir/summary.json``.

Torch runs on CPU with ``cfg.torch_threads`` threads (default 1, at most 2 on this project's
machines): networks this small gain nothing from intra-op threads and lose badly when the
cores are shared (measured: 2048 MaskablePPO steps took 0.58 s with 1 thread vs 8.8 s with 2
on the 2-core dev machine under load).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from agents.budget_encoding import BudgetEncoding
from cache.schema import LABEL_KEYS

VEC_ENV_KINDS: tuple[str, ...] = ("native", "dummy")
TWO_STAGE_ID = "MolmoeKnobs-v0"
FLAT_ID = "MolmoeKnobsFlat-v0"
POLICY_FORMAT = "molmoe-gym-sb3-policy"


# ============================================================================ configs
@dataclass
class PPOConfig:
    """Hyper-parameters of :func:`train_ppo_flat` (and the base of :class:`MaskablePPOConfig`).

    Attributes:
        total_timesteps: env steps to train for (flat: one per episode; two-stage: two).
        n_envs: parallel sub-envs.
        n_steps: steps per sub-env per rollout (rollout = ``n_envs · n_steps`` transitions).
        batch_size: minibatch size of the PPO update.
        n_epochs: passes over each rollout.
        learning_rate: Adam step size (constant unless ``anneal_lr``).
        anneal_lr: decay the step size linearly from ``learning_rate`` to 0 over training (as
            CleanRL's PPO does by default), so that the policy saved at the end is not one noisy
            step of a constant-rate walk. Off by default: on the live caches it has not raised
            MaskablePPO's reward (benchmarks/RESULTS.md, "Twenty-first run").
        gamma: discount; 1 because reward arrives only at the end of a 1- or 2-step episode.
        gae_lambda: GAE λ (1 = Monte-Carlo returns minus the value baseline).
        clip_range: PPO ratio clip.
        ent_coef: entropy bonus weight.
        ent_coef_final: if set, the entropy weight moves linearly from ``ent_coef`` to this over
            training (set before each rollout's update), as the GRPO agent's ``ent_coef_final``
            (which helped GRPO on v10's outcomes, benchmarks/RESULTS.md "Twentieth run"; MaskablePPO
            on v11's it did not, "Twenty-first run").
        vf_coef: value-loss weight.
        max_grad_norm: gradient-norm clip.
        net_arch: hidden sizes of the policy and value MLPs on top of the feature extractor.
        embed_dim: width of the Linear+ReLU projection of ``lang`` (and of ``token``).
        input_noise: std of Gaussian noise added to the standardised ``lang`` and ``token`` in the
            update only (the extractor in training mode; SB3 collects rollouts and predicts in eval
            mode), as the GRPO agent's ``input_noise``: a request's fixed features become a less
            reliable fingerprint of its outcomes. 0 = off.
        budget_encoding_dim: width of the shared budget encoding fed to the extractor (its 4
            raw entries are dropped: ``budget`` is already an input); 0 disables it.
        vec_env: ``"native"`` (SB3VecEnvAdapter) or ``"dummy"`` (DummyVecEnv), see module docstring.
        norm_samples: observations collected before training for the input standardisation.
        eval_freq_steps: evaluate every this many env steps (0 = no EvalCallback).
        n_eval_episodes: episodes per evaluation.
        eval_split: split of the evaluation env when ``env_kwargs`` has ``cache=``.
        eval_envs: sub-envs of the evaluation env.
        checkpoint_freq_steps: save a checkpoint every this many env steps (0 = none).
        seed: seed of SB3, torch and the envs.
        torch_threads: ``torch.set_num_threads`` during training (see the module docstring).
        tensorboard: also write tensorboard logs to ``log_dir/tb``.
        verbose: SB3 verbosity.
    """

    # flat defaults: at 200 k steps and entropy 0.01 the 225-way softmax settled on 1-13
    # configurations, 0.016-0.022 below static, on the live default (benchmarks/RESULTS.md,
    # "Agents on the live-built default", v5); 1 M and 0.02 keep 15-21 in use. Rollouts of 128
    # steps per sub-env (32 until v12 became the default): each update's advantages are averaged
    # over four times the episodes; with 32 flat PPO fell 0.017 below static on v11's outcomes,
    # with 128 it holds its bars on v11 and v12 ("Twenty-first run", "On molmoe-small-suite-v12")
    total_timesteps: int = 1_000_000
    n_envs: int = 64
    n_steps: int = 128
    batch_size: int = 512
    n_epochs: int = 4
    learning_rate: float = 3e-4
    anneal_lr: bool = False
    gamma: float = 1.0
    gae_lambda: float = 1.0
    clip_range: float = 0.2
    ent_coef: float = 0.02
    ent_coef_final: float | None = None
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    net_arch: tuple[int, ...] = (64, 64)
    embed_dim: int = 32
    input_noise: float = 0.0
    budget_encoding_dim: int = 64
    vec_env: str = "native"
    norm_samples: int = 2048
    eval_freq_steps: int = 50_000
    n_eval_episodes: int = 512
    eval_split: str = "val"
    eval_envs: int = 64
    checkpoint_freq_steps: int = 0
    seed: int = 0
    torch_threads: int = 1
    tensorboard: bool = False
    verbose: int = 0

    def __post_init__(self) -> None:
        self.net_arch = tuple(int(h) for h in self.net_arch)
        if self.vec_env not in VEC_ENV_KINDS:
            raise ValueError(f"vec_env={self.vec_env!r}; expected one of {VEC_ENV_KINDS}")
        for name in ("total_timesteps", "n_envs", "n_steps", "batch_size", "n_epochs", "embed_dim", "norm_samples",
                     "n_eval_episodes", "eval_envs", "torch_threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_freq_steps", "checkpoint_freq_steps", "budget_encoding_dim"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.budget_encoding_dim and self.budget_encoding_dim < 10:
            raise ValueError("budget_encoding_dim must be 0 or >= 10 (4 raw + sin/cos of 3 quantities)")
        if self.ent_coef < 0 or (self.ent_coef_final is not None and self.ent_coef_final < 0):
            raise ValueError("ent_coef and ent_coef_final must be >= 0")
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError("gamma and gae_lambda must be in [0, 1]")
        if self.input_noise < 0:
            raise ValueError(f"input_noise must be >= 0, got {self.input_noise}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["net_arch"] = list(self.net_arch)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PPOConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}")
        return cls(**dict(d))


@dataclass
class MaskablePPOConfig(PPOConfig):
    """Hyper-parameters of :func:`train_maskable_ppo`; fields as :class:`PPOConfig`.

    Defaults differ where the two-stage episode differs: twice the env steps for the same
    number of episodes, and rollouts of ``n_steps`` = 128 hold 64 episodes per sub-env; the
    mask-aware policy keeps the entropy bonus 0.01 with which it beats static on the live
    default (the flat one needs 0.02, see :class:`PPOConfig`). Ten passes over each rollout
    (four in :class:`PPOConfig`): with four the policy under-fits the budget, spending too little
    at the top of the budget grid, and falls below static on the outcomes of the better candidate
    models; ten keep its bars on v7 (benchmarks/RESULTS.md, "Twenty-first run", where
    ``n_steps=128`` with 1 M steps beats static on every seed of v11). On v12's outcomes
    rollouts of 128 (the base's default) at 300 k steps only lift the worst seed from −0.018 to
    −0.001 against static; with input noise 0.3 and 1 M steps it beats static on every seed
    (+0.006 to +0.010; benchmarks/RESULTS.md, "On molmoe-small-suite-v12").
    """

    total_timesteps: int = 1_000_000
    n_epochs: int = 10
    ent_coef: float = 0.01
    input_noise: float = 0.3


# ============================================================================ feature extractor
def torch_budget_encoding(budget: torch.Tensor, enc: BudgetEncoding) -> torch.Tensor:
    """The :class:`BudgetEncoding` of ``obs["budget"]`` (N, 4) in torch: float32 (N, enc.dim).

    Same layout and numbers as ``enc(budget.numpy())`` (tests check it), so policies trained
    here and the GRPO agent see the same budget features.
    """
    b = budget.to(torch.float64)
    derived = {
        "abs": b[:, 0],
        "rel": b[:, 3],
        "pos": (b[:, 0] - b[:, 1]) / torch.clamp(b[:, 2] - b[:, 1], min=enc.eps),
    }
    x = torch.stack([derived[q] for q in enc.quantities], dim=-1)  # (N, Q)
    freqs = torch.as_tensor(enc.frequencies, dtype=torch.float64)
    ang = 2.0 * np.pi * x[:, :, None] * freqs  # (N, Q, F)
    four = torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1).reshape(b.shape[0], -1)
    pad = enc.dim - 4 - four.shape[1]
    parts = [b, four] + ([torch.zeros(b.shape[0], pad, dtype=torch.float64)] if pad else [])
    return torch.cat(parts, dim=-1).to(torch.float32)


class KnobsFeatureExtractor(BaseFeaturesExtractor):
    """Dict observation → features (see the module docstring), for both envs.

    Args:
        observation_space: the env's ``Dict`` space (keys ``lang``, ``budget``, ``action_mask``,
            and for the two-stage env ``token`` and ``context``).
        embed_dim: projection width of ``lang`` / ``token``.
        budget_encoding_dim: width of the shared budget encoding (0 = none).
        lang_mean, lang_std, token_mean, token_std: per-feature standardisation (lists of
            floats; identity when None). Stored as buffers.
        input_noise: std of the Gaussian noise added to the standardised ``lang`` / ``token`` in
            training mode (:class:`PPOConfig`); none in eval mode.

    Output width: ``embed_dim · (1 + has_token) + 4 + (budget_encoding_dim − 4 if > 0) + context``
    ``+ request (+ slo)``: the ``request`` (and ``slo``) keys, when the space has them, as they are.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        embed_dim: int = 32,
        budget_encoding_dim: int = 64,
        lang_mean: Sequence[float] | None = None,
        lang_std: Sequence[float] | None = None,
        token_mean: Sequence[float] | None = None,
        token_std: Sequence[float] | None = None,
        input_noise: float = 0.0,
    ) -> None:
        sp = observation_space.spaces
        for key in ("lang", "budget"):
            if key not in sp:
                raise ValueError(f"observation space lacks {key!r}; expected a MolmoeKnobs(Flat)-v0 Dict space")
        dl = int(sp["lang"].shape[0])
        dt = int(sp["token"].shape[0]) if "token" in sp else 0
        dc = int(sp["context"].shape[0]) if "context" in sp else 0
        # the request features (obs["request"], already scaled to ~[0, 2]) and the SLO budgets
        self.extra_keys = tuple(k for k in ("request", "slo") if k in sp)
        dx = sum(int(sp[k].shape[0]) for k in self.extra_keys)
        self.encoding = BudgetEncoding(dim=budget_encoding_dim) if budget_encoding_dim else None
        enc_w = budget_encoding_dim - 4 if budget_encoding_dim else 0
        features_dim = embed_dim * (1 + (dt > 0)) + 4 + enc_w + dc + dx
        super().__init__(observation_space, features_dim)
        self.has_token, self.has_context = dt > 0, dc > 0
        self.input_noise = float(input_noise)

        def stat(v: Sequence[float] | None, width: int, default: float) -> torch.Tensor:
            t = torch.full((width,), default) if v is None else torch.as_tensor(np.asarray(v, np.float32))
            if t.shape != (width,):
                raise ValueError(f"standardisation vector has shape {tuple(t.shape)}, expected ({width},)")
            return t

        self.register_buffer("lang_mean", stat(lang_mean, dl, 0.0))
        self.register_buffer("lang_std", stat(lang_std, dl, 1.0))
        self.lang_proj = nn.Sequential(nn.Linear(dl, embed_dim), nn.ReLU())
        if self.has_token:
            self.register_buffer("token_mean", stat(token_mean, dt, 0.0))
            self.register_buffer("token_std", stat(token_std, dt, 1.0))
            self.token_proj = nn.Sequential(nn.Linear(dt, embed_dim), nn.ReLU())

    def _noisy(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.input_noise > 0:
            return x + self.input_noise * torch.randn_like(x)
        return x

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        budget = obs["budget"].float()
        parts = [self.lang_proj(self._noisy((obs["lang"].float() - self.lang_mean) / self.lang_std)), budget]
        if self.has_token:
            # stage-0 tokens are all zeros; standardising them would invent a signal, keep them 0
            tok = obs["token"].float()
            present = (tok.abs().sum(dim=1, keepdim=True) > 0).float()
            parts.insert(1, self.token_proj(present * self._noisy((tok - self.token_mean) / self.token_std)))
        if self.encoding is not None:
            parts.append(torch_budget_encoding(budget, self.encoding)[:, 4:])
        if self.has_context:
            parts.append(obs["context"].float())
        for k in self.extra_keys:
            parts.append(obs[k].float())
        return torch.cat(parts, dim=1)


def observation_stats(env_id: str, env_kwargs: Mapping[str, Any], n: int, seed: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Per-feature mean/std of ``lang`` (and stage-1 ``token``) over ``n`` observations, and
    the provenance label of the env's data (:func:`cache.reader.data_label`: ``cache_label``,
    ``synthetic``, ``generator``, ``model_id``).

    Drawn with the env's own sampler (unpinned reset); two-stage tokens come from one step with
    uniformly random valid stage-0 actions. std is floored at 1e-6.
    """
    from envs.vector_env import MolmoeKnobsFlatVectorEnv, MolmoeKnobsVectorEnv

    cls = MolmoeKnobsVectorEnv if env_id == TWO_STAGE_ID else MolmoeKnobsFlatVectorEnv
    venv = cls(int(n), **dict(env_kwargs))
    try:
        obs, _ = venv.reset(seed=int(seed))
        out = {"lang_mean": obs["lang"].mean(0), "lang_std": np.maximum(obs["lang"].std(0), 1e-6)}
        if env_id == TWO_STAGE_ID:
            rng = np.random.default_rng(seed)
            masks = venv.action_masks()
            a = _random_valid_multidiscrete(masks, venv.nvec, rng)
            obs1, *_ = venv.step(a)
            tok = obs1["token"].astype(np.float64)
            out["token_mean"] = tok.mean(0)
            out["token_std"] = np.maximum(tok.std(0), 1e-6)
        from cache.reader import data_label

        label = data_label(venv.data.source, venv.data.synthetic)
    finally:
        venv.close()
    return {k: np.asarray(v, np.float64).tolist() for k, v in out.items()}, label


def _random_valid_multidiscrete(masks: np.ndarray, nvec: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """One uniformly random allowed index per component: int64 (n, len(nvec))."""
    out, off = [], 0
    for k in nvec:
        m = masks[:, off:off + k]
        out.append(np.argmax(np.where(m, rng.random(m.shape), -1.0), axis=1))
        off += k
    return np.stack(out, axis=1).astype(np.int64)


# ============================================================================ vec envs
def _json_safe_kwargs(env_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in env_kwargs.items():
        try:
            json.dumps(v)
            out[k] = v
        except TypeError:
            out[k] = repr(v)
    return out


def _eval_kwargs(env_kwargs: Mapping[str, Any], split: str) -> dict[str, Any]:
    """Evaluation env kwargs: the same, on ``split`` when the data comes from a cache file."""
    kw = dict(env_kwargs)
    if kw.get("cache") is not None:
        kw["split"] = split
    return kw


def make_sb3_vec_env(env_id: str, env_kwargs: Mapping[str, Any], n_envs: int, kind: str = "native", seed: int | None = None):
    """An SB3 ``VecEnv`` (``VecMonitor``-wrapped) of ``n_envs`` copies of ``env_id``.

    ``kind="native"``: :class:`SB3VecEnvAdapter` over the native vector env; ``"dummy"``:
    ``DummyVecEnv`` of ``gym.make`` envs that share one ReplayData (the cache is read once).
    """
    from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

    from agents.sb3_vec_adapter import SB3VecEnvAdapter

    if kind not in VEC_ENV_KINDS:
        raise ValueError(f"vec env kind {kind!r}; expected one of {VEC_ENV_KINDS}")
    kw = dict(env_kwargs)
    if kind == "native":
        import envs  # noqa: F401  (registers the ids)

        venv = gym.make_vec(env_id, num_envs=int(n_envs), vectorization_mode="vector_entry_point", **kw)
        vec = SB3VecEnvAdapter(venv)
    else:
        if kw.get("cache") is not None:
            from envs.replay_data import ReplayData

            kw["data"] = ReplayData.from_cache(
                kw.pop("cache"), split=kw.pop("split", "train"), estimator=kw.pop("estimator", None),
                nominal_output_tokens=kw.pop("nominal_output_tokens", 3),
            )
        vec = DummyVecEnv([lambda: gym.make(env_id, **kw) for _ in range(int(n_envs))])
    if seed is not None:
        vec.seed(int(seed))
    return VecMonitor(vec)


# ============================================================================ callbacks
def _outcome_callback():
    from stable_baselines3.common.callbacks import BaseCallback

    class OutcomeLogger(BaseCallback):
        """Logs score, violation rate and latency/budget of the episodes finished in each rollout."""

        def _on_rollout_start(self) -> None:
            self._score: list[float] = []
            self._viol: list[float] = []
            self._ratio: list[float] = []

        def _on_step(self) -> bool:
            for info in self.locals.get("infos", ()):
                if "score" in info:
                    self._score.append(float(info["score"]))
                    self._viol.append(float(info["violation"]))
                    self._ratio.append(float(info["latency_ms"]) / float(info["budget_ms"]))
            return True

        def _on_rollout_end(self) -> None:
            if self._score:
                self.logger.record("rollout/score_mean", float(np.mean(self._score)))
                self.logger.record("rollout/violation_rate", float(np.mean(self._viol)))
                self.logger.record("rollout/latency_over_budget", float(np.mean(self._ratio)))

    return OutcomeLogger()


def _entropy_schedule_callback(start: float, final: float, total_timesteps: int):
    from stable_baselines3.common.callbacks import BaseCallback

    class EntropySchedule(BaseCallback):
        """Sets the algorithm's entropy weight for the coming update from the steps done so far."""

        def _on_rollout_end(self) -> None:
            done = min(self.model.num_timesteps / total_timesteps, 1.0)
            self.model.ent_coef = start + done * (final - start)
            self.logger.record("train/ent_coef", self.model.ent_coef)

        def _on_step(self) -> bool:
            return True

    return EntropySchedule()


def _progress_callback(total_timesteps: int, desc: str):
    """A tqdm bar over env steps on stderr (SB3's own ``progress_bar`` needs ``rich`` and writes
    to stdout; this one matches the bandits' bar)."""
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm.auto import tqdm

    class ProgressBar(BaseCallback):
        def _on_training_start(self) -> None:
            self._bar = tqdm(total=int(total_timesteps), unit="step", unit_scale=True, desc=desc, mininterval=0.5)
            self._seen = 0

        def _on_step(self) -> bool:
            self._bar.update(self.num_timesteps - self._seen)
            self._seen = self.num_timesteps
            return True

        def _on_rollout_end(self) -> None:
            ep = self.model.ep_info_buffer
            if ep:
                self._bar.set_postfix(reward=f"{np.mean([e['r'] for e in ep]):.3f}", refresh=False)

        def _on_training_end(self) -> None:
            self._bar.close()

    return ProgressBar()


# ============================================================================ policies (evaluator API)
def _batched(obs: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], bool]:
    single = np.asarray(obs["budget"]).ndim == 1
    return {k: (np.asarray(v)[None] if single else np.asarray(v)) for k, v in obs.items()}, single


class _SB3Policy:
    """Shared save/load of the SB3-backed policies (``model.zip`` + ``policy.json``)."""

    agent: str = ""
    name: str = ""
    #: provenance label of the training data (``cache_label``, ``synthetic``, ``generator``,
    #: ``model_id``; :func:`cache.reader.data_label`), written into ``policy.json``.
    provenance: dict[str, Any] | None = None

    def __init__(self, model: Any, name: str | None = None) -> None:
        self.model = model
        model.policy.set_training_mode(False)  # it acts: eval mode, so no training-mode input noise
        if name is not None:
            self.name = name

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.model.save(d / "model.zip")
        meta = {"format": POLICY_FORMAT, "agent": self.agent, "name": self.name, "algo": type(self.model).__name__,
                **(self.provenance or {})}
        (d / "policy.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        return d

    @classmethod
    def _algo(cls):
        raise NotImplementedError

    @classmethod
    def load(cls, directory: str | Path) -> "_SB3Policy":
        d = Path(directory)
        meta_path, zip_path = d / "policy.json", d / "model.zip"
        if not meta_path.is_file() or not zip_path.is_file():
            raise ValueError(f"{d} is not a saved {cls.agent} policy (needs policy.json and model.zip)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != POLICY_FORMAT or meta.get("agent") != cls.agent:
            raise ValueError(f"{meta_path} holds agent {meta.get('agent')!r}, not {cls.agent!r}")
        model = cls._algo().load(zip_path, device="cpu")
        pol = cls(model, name=meta.get("name"))
        pol.provenance = {k: meta[k] for k in LABEL_KEYS if k in meta} or None
        return pol


class TwoStagePPOPolicy(_SB3Policy):
    """A trained MaskablePPO as a ``TwoStagePolicy``: deterministic (mode of each masked component)."""

    agent = "maskable_ppo"
    name = "maskable_ppo"

    @classmethod
    def _algo(cls):
        from sb3_contrib import MaskablePPO

        return MaskablePPO

    def _act(self, obs: Mapping[str, Any]) -> np.ndarray:
        o, single = _batched(obs)
        if "action_mask" not in o:
            raise ValueError("observation lacks 'action_mask' (is this a MolmoeKnobs-v0 observation?)")
        masks = o["action_mask"].astype(bool)
        with torch.no_grad():
            a, _ = self.model.predict(o, deterministic=True, action_masks=masks)
        a = np.asarray(a, dtype=np.int64).reshape(masks.shape[0], -1)
        return a[0] if single else a

    def act_stage1(self, obs: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> np.ndarray:
        """Stage-0 observations → int64 (n, 4); top-k / active-blocks index are the mask's pinned index 0."""
        return self._act(obs)

    def act_stage2(self, obs: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> np.ndarray:
        """Stage-1 observations → int64 (n, 4); tier / p are the mask's pinned stage-0 choice."""
        return self._act(obs)


class FlatPPOPolicy(_SB3Policy):
    """A trained flat PPO as a ``FlatPolicy``: argmax of the logits over unmasked configurations."""

    agent = "ppo"
    name = "ppo"

    @classmethod
    def _algo(cls):
        from stable_baselines3 import PPO

        return PPO

    def logits(self, obs: Mapping[str, Any]) -> np.ndarray:
        """Action logits, float32 (n, C)."""
        o, _ = _batched(obs)
        pol = self.model.policy
        with torch.no_grad():
            t, _ = pol.obs_to_tensor(o)
            return pol.get_distribution(t).distribution.logits.cpu().numpy()

    def act(self, obs: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> np.ndarray:
        o, single = _batched(obs)
        lg = self.logits(o)
        if "action_mask" in o:
            m = o["action_mask"].astype(bool)
            if (~m.any(axis=1)).any():
                raise ValueError("an observation's action mask allows no configuration")
            lg = np.where(m, lg, -np.inf)
        a = np.argmax(lg, axis=1).astype(np.int64)
        return a[0] if single else a


# ============================================================================ training
@dataclass
class PPOTrainResult:
    """What a training run returns: the policy wrapper, the SB3 model and where things went."""

    policy: Any
    model: Any
    log_dir: Path
    policy_dir: Path
    wall_s: float
    timesteps: int
    summary: dict = field(default_factory=dict)


def _train(algo_name: str, env_id: str, env_kwargs: Mapping[str, Any], cfg: PPOConfig, log_dir: str | Path,
           eval_env_kwargs: Mapping[str, Any] | None, progress: bool = False) -> PPOTrainResult:
    from stable_baselines3.common.callbacks import CallbackList, CheckpointCallback, EvalCallback
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.utils import LinearSchedule, set_random_seed

    log = Path(log_dir)
    log.mkdir(parents=True, exist_ok=True)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.torch_threads)
    t0 = time.perf_counter()
    try:
        set_random_seed(cfg.seed)
        stats, label = observation_stats(env_id, env_kwargs, cfg.norm_samples, cfg.seed)
        train_env = make_sb3_vec_env(env_id, env_kwargs, cfg.n_envs, cfg.vec_env, seed=cfg.seed)
        policy_kwargs = {
            "net_arch": {"pi": list(cfg.net_arch), "vf": list(cfg.net_arch)},
            "features_extractor_class": KnobsFeatureExtractor,
            "features_extractor_kwargs": {"embed_dim": cfg.embed_dim, "budget_encoding_dim": cfg.budget_encoding_dim,
                                          "input_noise": cfg.input_noise, **stats},
        }
        common = dict(
            n_steps=cfg.n_steps, batch_size=cfg.batch_size, n_epochs=cfg.n_epochs,
            learning_rate=LinearSchedule(cfg.learning_rate, 0.0, 1.0) if cfg.anneal_lr else cfg.learning_rate,
            gamma=cfg.gamma, gae_lambda=cfg.gae_lambda, clip_range=cfg.clip_range, ent_coef=cfg.ent_coef,
            vf_coef=cfg.vf_coef, max_grad_norm=cfg.max_grad_norm, policy_kwargs=policy_kwargs, seed=cfg.seed,
            verbose=cfg.verbose, device="cpu",
        )
        if algo_name == "maskable_ppo":
            from sb3_contrib import MaskablePPO
            from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback

            model = MaskablePPO("MultiInputPolicy", train_env, **common)
            eval_cb_cls: Any = MaskableEvalCallback
            wrapper_cls: Any = TwoStagePPOPolicy
        else:
            from stable_baselines3 import PPO

            model = PPO("MultiInputPolicy", train_env, **common)
            eval_cb_cls = EvalCallback
            wrapper_cls = FlatPPOPolicy
        formats = ["csv"] + (["tensorboard"] if cfg.tensorboard else []) + (["stdout"] if cfg.verbose else [])
        model.set_logger(configure(str(log), formats))
        callbacks: list[Any] = [_outcome_callback()]
        if cfg.ent_coef_final is not None:
            callbacks.append(_entropy_schedule_callback(cfg.ent_coef, cfg.ent_coef_final, cfg.total_timesteps))
        if progress:
            callbacks.append(_progress_callback(cfg.total_timesteps, f"{algo_name} [{label['cache_label']}]"))
        eval_env = None
        if cfg.eval_freq_steps:
            ekw = dict(eval_env_kwargs) if eval_env_kwargs is not None else _eval_kwargs(env_kwargs, cfg.eval_split)
            if algo_name != "maskable_ppo":
                ekw.setdefault("invalid_action", "penalty")
            eval_env = make_sb3_vec_env(env_id, ekw, cfg.eval_envs, cfg.vec_env, seed=cfg.seed + 10_000)
            callbacks.append(eval_cb_cls(
                eval_env, n_eval_episodes=cfg.n_eval_episodes, eval_freq=max(cfg.eval_freq_steps // cfg.n_envs, 1),
                log_path=str(log / "eval"), best_model_save_path=str(log / "eval"), deterministic=True, verbose=0,
            ))
        if cfg.checkpoint_freq_steps:
            callbacks.append(CheckpointCallback(save_freq=max(cfg.checkpoint_freq_steps // cfg.n_envs, 1),
                                                save_path=str(log / "checkpoints"), name_prefix=algo_name))
        t_learn = time.perf_counter()
        model.learn(total_timesteps=cfg.total_timesteps, callback=CallbackList(callbacks))
        learn_s = time.perf_counter() - t_learn
        policy = wrapper_cls(model)
        policy.provenance = label
        policy_dir = policy.save(log / "policy")
        train_env.close()
        if eval_env is not None:
            eval_env.close()
    finally:
        torch.set_num_threads(prev_threads)
    wall = time.perf_counter() - t0
    summary = {
        "agent": algo_name,
        "env_id": env_id,
        "env_kwargs": _json_safe_kwargs(env_kwargs),
        "config": cfg.to_dict(),
        "timesteps": int(model.num_timesteps),
        "wall_s": wall,
        "learn_s": learn_s,
        "steps_per_s": model.num_timesteps / max(learn_s, 1e-9),
        **label,
        "versions": _versions(),
    }
    (log / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return PPOTrainResult(policy, model, log, policy_dir, wall, int(model.num_timesteps), summary)


def _versions() -> dict[str, str]:
    import sb3_contrib
    import stable_baselines3

    return {"torch": torch.__version__, "stable_baselines3": stable_baselines3.__version__,
            "sb3_contrib": sb3_contrib.__version__, "gymnasium": gym.__version__, "numpy": np.__version__}


def train_maskable_ppo(env_kwargs: Mapping[str, Any], cfg: MaskablePPOConfig | None = None, log_dir: str | Path = "outputs/maskable_ppo",
                       eval_env_kwargs: Mapping[str, Any] | None = None, progress: bool = False) -> PPOTrainResult:
    """Train MaskablePPO on ``MolmoeKnobs-v0`` (see the module docstring); returns the result.

    ``eval_env_kwargs`` overrides the evaluation env's kwargs (default: ``env_kwargs`` on
    ``cfg.eval_split`` when they name a cache file, else the same data). ``progress``: a
    progress bar over env steps on stderr.
    """
    kw = dict(env_kwargs)
    if kw.get("incomplete") == "mask":
        kw.setdefault("invalid_action", "penalty")  # joint holes are not expressible per component
    return _train("maskable_ppo", TWO_STAGE_ID, kw, cfg or MaskablePPOConfig(), log_dir, eval_env_kwargs, progress)


def train_ppo_flat(env_kwargs: Mapping[str, Any], cfg: PPOConfig | None = None, log_dir: str | Path = "outputs/ppo_flat",
                   eval_env_kwargs: Mapping[str, Any] | None = None, progress: bool = False) -> PPOTrainResult:
    """Train PPO on ``MolmoeKnobsFlat-v0`` (masked actions are penalised while training; see
    the module docstring); returns the result. ``progress``: a progress bar over env steps."""
    kw = dict(env_kwargs)
    kw.setdefault("invalid_action", "penalty")
    return _train("ppo", FLAT_ID, kw, cfg or PPOConfig(), log_dir, eval_env_kwargs, progress)
