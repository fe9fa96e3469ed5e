"""Gymnasium environments for budget-aware adaptive inference of MolmoE-1B.

Importing this package registers ``MolmoeKnobs-v0`` (two-stage) and ``MolmoeKnobsFlat-v0``
(one step over the 225 configurations), each with a native vector entry point::

    import gymnasium as gym, envs
    env = gym.make("MolmoeKnobs-v0", cache="outputs/default_cache.h5", split="train")
    venv = gym.make_vec("MolmoeKnobsFlat-v0", num_envs=4096,
                        vectorization_mode="vector_entry_point", cache="outputs/default_cache.h5")
"""

from gymnasium.envs.registration import register, registry

from envs.knob_space import DEFAULT_IMPORTANCE_SCORES, BlockPlan, KnobConfig, KnobSpace

__all__ = ["KnobSpace", "KnobConfig", "BlockPlan", "DEFAULT_IMPORTANCE_SCORES"]

_ENVS = {
    "MolmoeKnobs-v0": ("envs.two_stage_env:MolmoeKnobsEnv", "envs.vector_env:MolmoeKnobsVectorEnv"),
    "MolmoeKnobsFlat-v0": ("envs.flat_env:MolmoeKnobsFlatEnv", "envs.vector_env:MolmoeKnobsFlatVectorEnv"),
}
for _id, (_entry, _vec_entry) in _ENVS.items():
    if _id not in registry:
        register(id=_id, entry_point=_entry, vector_entry_point=_vec_entry, disable_env_checker=False)
