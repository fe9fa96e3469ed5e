"""Stable-Baselines3 ``VecEnv`` over the envs' native gymnasium vector envs.

SB3 (and sb3-contrib's MaskablePPO) only take their own ``VecEnv`` type. The obvious route,
``DummyVecEnv([gym.make(...)] * n)``, steps ``n`` scalar envs in a Python loop (plus
gymnasium's wrappers on each); :class:`SB3VecEnvAdapter` instead drives one native
:class:`envs.vector_env.MolmoeKnobsVectorEnv` / ``MolmoeKnobsFlatVectorEnv`` (one numpy step
for all sub-envs) and translates the conventions:

- gymnasium's ``(obs, reward, terminated, truncated, info)`` with batched info and
  **same-step** autoreset (``metadata["autoreset_mode"] == AutoresetMode.SAME_STEP``, the only
  mode accepted here: it is SB3's own convention) → SB3's ``(obs, rewards, dones, infos)`` with a
  list of per-env info dicts; for every finished sub-env ``infos[i]["terminal_observation"]``
  is its final observation (from ``info["final_obs"]``) and ``infos[i]["TimeLimit.truncated"]``
  is ``truncated and not terminated``, as SB3's on-policy bootstrapping reads them.
- ``env_method("action_masks")`` (what ``sb3_contrib.common.maskable.utils.get_action_masks``
  calls, for training and for ``MaskableEvalCallback``) returns the vector env's
  ``action_masks()`` rows as a list of per-env bool arrays.
- ``seed()`` / ``set_options()`` take effect at the next ``reset`` like SB3's own VecEnvs;
  the native env has one generator for all sub-envs, so ``reset(seed=)`` gets the first seed,
  and options must be identical for all sub-envs (they are passed through once).

Per-env info dicts carry, besides the two SB3 keys, the finished episodes' outcome scalars
(``score``, ``latency_ms``, ``violation``, ``budget_ms``, ``config_index``, ``invalid_action``
where present) so that callbacks can log accuracy / violations without re-querying the env.

``benchmarks/bench_ppo_bandits.py`` measures this adapter against ``DummyVecEnv``.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
from gymnasium.vector import VectorEnv
from gymnasium.vector.vector_env import AutoresetMode
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

#: Outcome keys of ``info["final_info"]`` copied into the per-env info of finished episodes.
FINAL_INFO_KEYS: tuple[str, ...] = ("score", "latency_ms", "violation", "budget_ms", "config_index", "invalid_action")


class SB3VecEnvAdapter(VecEnv):
    """SB3 ``VecEnv`` view of a gymnasium ``VectorEnv`` that autoresets in the same step.

    Args:
        venv: e.g. ``gym.make_vec("MolmoeKnobs-v0", num_envs=64, vectorization_mode="vector_entry_point", ...)``;
            must have ``metadata["autoreset_mode"] == AutoresetMode.SAME_STEP`` and, for
            MaskablePPO, an ``action_masks()`` method returning bool (num_envs, n_mask).
    """

    def __init__(self, venv: VectorEnv) -> None:
        if not isinstance(venv, VectorEnv):
            raise ValueError(f"venv must be a gymnasium VectorEnv, got {type(venv).__name__}")
        mode = venv.metadata.get("autoreset_mode")
        if mode != AutoresetMode.SAME_STEP:
            raise ValueError(
                f"SB3VecEnvAdapter needs a vector env with same-step autoreset (SB3's convention); "
                f"{type(venv).__name__} has autoreset_mode={mode!r}"
            )
        self.venv = venv
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self._actions: np.ndarray | None = None

    # ------------------------------------------------------------------ core API
    def reset(self) -> VecEnvObs:
        seeds = [s for s in self._seeds if s is not None]
        opts = self._options[0] if self._options else {}
        if any(o != opts for o in self._options):
            raise ValueError("SB3VecEnvAdapter: per-env reset options differ; the native env takes one options dict")
        obs, info = self.venv.reset(seed=seeds[0] if seeds else None, options=opts or None)
        self.reset_infos = self._split_info(info, keys=("sample_index", "budget_ms"))
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() without step_async()")
        actions = self._actions
        if actions.dtype.kind == "f":  # SB3 hands float arrays for some policies; the env wants ints
            actions = actions.astype(np.int64)
        obs, reward, terminated, truncated, info = self.venv.step(actions)
        self._actions = None
        dones = np.logical_or(terminated, truncated)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if dones.any():
            final_obs = info.get("final_obs")
            final_info = info.get("final_info", {})
            present = {k: final_info[k] for k in FINAL_INFO_KEYS if k in final_info}
            masks = {k: final_info.get("_" + k) for k in present}
            for i in np.flatnonzero(dones).tolist():
                d = infos[i]
                if final_obs is not None:
                    d["terminal_observation"] = {k: v[i] for k, v in final_obs.items()} if isinstance(final_obs, dict) else final_obs[i]
                d["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
                for k, v in present.items():
                    m = masks[k]
                    if m is None or m[i]:
                        d[k] = v[i].item() if isinstance(v[i], np.generic) else v[i]
        return obs, np.asarray(reward, dtype=np.float32), dones, infos

    def close(self) -> None:
        self.venv.close()

    # ------------------------------------------------------------------ attributes / methods
    def _indices(self, indices: VecEnvIndices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        if isinstance(indices, (int, np.integer)):
            return [int(indices)]
        return [int(i) for i in indices]

    def has_attr(self, attr_name: str) -> bool:
        return hasattr(self.venv, attr_name)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The shared vector env's attribute, once per requested sub-env (``render_mode``: None)."""
        idx = self._indices(indices)
        if attr_name == "render_mode":
            return [getattr(self.venv, "render_mode", None)] * len(idx)
        return [getattr(self.venv, attr_name)] * len(idx)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        if indices is not None and sorted(self._indices(indices)) != list(range(self.num_envs)):
            raise ValueError("SB3VecEnvAdapter: attributes are shared by all sub-envs; set them for all indices")
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any) -> list[Any]:
        """``action_masks`` → per-env rows of ``venv.action_masks()``; other methods are called
        once on the vector env and their (batched) result split by row when it has num_envs rows."""
        idx = self._indices(indices)
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        if isinstance(result, np.ndarray) and result.ndim >= 1 and result.shape[0] == self.num_envs:
            return [result[i] for i in idx]
        return [result] * len(idx)

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        return [False] * len(self._indices(indices))

    def action_masks(self) -> np.ndarray:
        """bool (num_envs, n_mask): the current masks in one array (no per-env list)."""
        return np.asarray(self.venv.action_masks(), dtype=bool)

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None] * self.num_envs

    # ------------------------------------------------------------------ helpers
    def _split_info(self, info: dict[str, Any], keys: Iterable[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for k in keys:
            if k in info:
                v = info[k]
                for i in range(self.num_envs):
                    out[i][k] = v[i].item() if isinstance(v[i], np.generic) else v[i]
        return out
