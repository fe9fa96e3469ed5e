"""Dependencies point one way: ``model_runtime`` → ``cache`` → ``envs`` → ``agents`` → ``experiments``.

Every module of the five packages is parsed (not imported) and each import it makes, lazy
imports inside functions included, must name a package of its own layer or a lower one. The
replay side must also stay free of torch on import: ``import envs`` / ``import cache`` (and
every module of them) load no torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Layer of each top-level package, bottom (0) to top.
LAYERS: dict[str, int] = {"model_runtime": 0, "cache": 1, "envs": 2, "agents": 3, "experiments": 4}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``source`` (module-level, inside
    functions and ``if`` blocks alike; relative imports resolved against ``module``)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x / from ..y import z
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
    return out


def layer_violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """Imports in ``source`` (the text of ``module``) from a higher layer than ``module``'s."""
    own = LAYERS[module.split(".")[0]]
    bad = []
    for line, name in imported_modules(source, module, is_package):
        top = name.split(".")[0]
        if top in LAYERS and LAYERS[top] > own:
            bad.append(f"{module}:{line} imports {name} ({top} is above {module.split('.')[0]})")
    return bad


def package_files() -> list[Path]:
    return sorted(p for pkg in LAYERS for p in (ROOT / pkg).rglob("*.py"))


def test_every_package_has_modules() -> None:
    found = {p.relative_to(ROOT).parts[0] for p in package_files()}
    assert found == set(LAYERS)


def test_no_import_from_a_higher_layer() -> None:
    bad = []
    for path in package_files():
        bad += layer_violations(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


@pytest.mark.parametrize(("module", "source", "expect"), [
    ("cache.reader", "from envs.knob_space import KnobSpace\n", 1),
    ("model_runtime.profiler", "def f():\n    import experiments.build_cache\n", 1),  # lazy import
    ("envs.live", "def f():\n    if True:\n        from experiments.build_cache import cache_score\n", 1),
    ("envs.live", "from cache.live_builder import cache_score\nimport model_runtime.knob_space\n", 0),
    ("agents.ppo", "import envs\nfrom envs.vector_env import X\n", 0),
    ("experiments.train", "import agents, envs, cache, model_runtime\n", 0),
    ("cache.sub.mod", "from ...agents import x\n", 1),  # relative import resolved to agents
    ("model_runtime.molmoe.runtime", "from . import config\nfrom .. import knob_space\n", 0),
])
def test_the_checker_catches_upward_imports(module: str, source: str, expect: int) -> None:
    assert len(layer_violations(source, module)) == expect


def test_model_runtime_package_init_imports_nothing() -> None:
    """``import model_runtime.knob_space`` (the replay path) must not pull in the runtime."""
    assert imported_modules((ROOT / "model_runtime" / "__init__.py").read_text(encoding="utf-8"), "model_runtime", True) == []


def test_knob_space_reexport_is_the_runtime_one() -> None:
    import envs
    import envs.knob_space as old
    import model_runtime.knob_space as new

    for name in ("KnobSpace", "KnobConfig", "BlockPlan", "DEFAULT_IMPORTANCE_SCORES", "DEFAULT_TIERS", "DEFAULT_CROPS"):
        assert getattr(old, name) is getattr(new, name)
    assert envs.KnobSpace is new.KnobSpace


def test_build_cache_cli_reexports_the_cache_machinery() -> None:
    import cache.live_builder as lb
    import experiments.build_cache as cli

    for name in ("LiveCacheBuilder", "BatchRunner", "BuildSettings", "finalize", "chunk_rows", "shard_path",
                 "assign_splits", "parse_config_selection", "params_mismatch", "stored_identity", "cache_score",
                 "answers_json"):
        assert getattr(cli, name) is getattr(lb, name)


def test_replay_side_imports_no_torch() -> None:
    replay = [module_name(p) for pkg in ("cache", "envs") for p in sorted((ROOT / pkg).rglob("*.py"))]
    replay += ["model_runtime", "model_runtime.knob_space", "model_runtime.latency_estimator"]
    code = ("import importlib, sys\n"
            f"for m in {replay!r}:\n"
            "    importlib.import_module(m)\n"
            "print(sorted(x for x in ('torch', 'transformers', 'triton') if x in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"torch-free modules loaded {out.stdout.strip()}"
