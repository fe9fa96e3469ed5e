"""Issue 16, item 10: the README's examples can be run as written. It says how to run them (the
venv), each example creates what it reads or says where it comes from, the examples write into
ignored folders, every module it runs exists, and the design contract the code cites lives in
the repository (docs/), not outside it."""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
#: The training guide the README's model section points to for the options and commands it leaves out.
TRAINING = (ROOT / "docs" / "TRAINING.md").read_text(encoding="utf-8")
#: The README sections whose examples this file checks for created inputs and ignored outputs.
EXAMPLE_SECTIONS = ("Python", "Command line", "The small MolmoE-architecture model behind the default cache")
OUTPUT_FLAGS = ("--out", "--fit")


def section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, flags=re.S | re.M)
    assert m, f"README has no section {title!r}"
    return m.group(1)


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def commands(block: str) -> list[list[str]]:
    """The shell commands of a bash block (continuations joined, comments and [optional] parts dropped)."""
    text = re.sub(r"#[^\n]*", "", block.replace("\\\n", " "))
    text = re.sub(r"\[[^\]]*\]", "", text)
    return [shlex.split(line) for line in text.splitlines() if line.strip()]


def flag_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def assert_ignored(outputs: list[str], where: str) -> None:
    """Each example output is a path git would ignore (check-ignore exits 0), checked without creating it."""
    for out in outputs:
        done = subprocess.run(["git", "check-ignore", "-q", "--no-index", out], cwd=ROOT)
        assert done.returncode == 0, f"{where} example output {out} is not in an ignored folder (.gitignore)"


def test_the_readme_says_how_to_run_its_commands() -> None:
    assert ".venv/bin/python -m" in README and "source .venv/bin/activate" in README
    assert "make test" in README and "make demo" in README


def test_every_module_the_readme_runs_exists() -> None:
    modules = set(re.findall(r"python -m ([A-Za-z_][\w.]*)", README + TRAINING))
    assert {"cache.synthetic", "experiments.train", "experiments.evaluate", "experiments.train_model"} <= modules
    missing = sorted(m for m in modules if importlib.util.find_spec(m) is None)
    assert not missing, missing


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_training_guide_matches_the_code() -> None:
    """docs/TRAINING.md, where the README sends readers for train_model's options and the forms of
    reproduce_default.sh: the README links it, every option it names is one train_model takes, every
    script it runs exists, and what its examples write goes to ignored folders."""
    from experiments.train_model import parse_args

    assert "(docs/TRAINING.md)" in README
    known = {"--" + a.replace("_", "-") for a in vars(parse_args(["--suite", "s", "--out", "o"]))}
    options = re.search(r"^## `train_model`'s options\n(.*?)(?=^## )", TRAINING, flags=re.S | re.M)
    assert options, "docs/TRAINING.md has no section on train_model's options"
    named = set(re.findall(r"`(--[a-z][a-z-]*)", options.group(1)))
    assert {"--stop-after", "--print-loss", "--patch-stem"} <= named
    assert named <= known, f"docs/TRAINING.md names options train_model does not take: {sorted(named - known)}"
    scripts = set(re.findall(r"benchmarks/gpu/[\w.]+\.sh", TRAINING))
    assert "benchmarks/gpu/reproduce_default.sh" in scripts
    assert all((ROOT / s).is_file() for s in scripts), scripts
    (block, *_) = code_blocks(TRAINING, "bash")
    outputs = []
    for argv in commands(block):
        words = [w for w in argv if "=" not in w or w.startswith("-")]  # drop VAR=value prefixes
        if words[0] == "bash":
            outputs.append(words[2])
        outputs += flag_values(words, "--travel-to")
    assert len(outputs) >= 8
    assert_ignored(outputs, "docs/TRAINING.md")


def test_examples_create_what_they_read() -> None:
    (block, *_), created = code_blocks(section("Command line"), "bash"), []
    for argv in commands(block):
        module = argv[2]
        reads = flag_values(argv, "--cache")
        if module in ("cache.info", "cache.validate"):
            reads.append(argv[3])
        if "--policies" in argv:
            reads += [p.split(":", 1)[1] for p in argv[argv.index("--policies") + 1:] if ":" in p]
        for path in reads:
            assert any(path == c or path.startswith(c.rstrip("/") + "/") for c in created), (
                f"`{' '.join(argv)}` reads {path}, which no earlier command of the block creates")
        created += [v for f in OUTPUT_FLAGS for v in flag_values(argv, f)]
    # the live-cache block says where its inputs come from
    live = section("Command line").split("```bash", 2)[2]
    assert "--model CKPT" in live
    text = section("Command line")
    assert "download yourself" in text and "make_suite" in text


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_example_outputs_go_to_ignored_folders() -> None:
    outputs = []
    for title in EXAMPLE_SECTIONS:
        sec = section(title)
        for block in code_blocks(sec, "bash"):
            for argv in commands(block):
                outputs += [v for f in OUTPUT_FLAGS for v in flag_values(argv, f)]
        for block in code_blocks(sec, "python"):
            outputs += re.findall(r"build_default_cache\(\"([^\"]+)\"\)", block)
    assert len(outputs) >= 8
    assert_ignored(outputs, "README")


def test_the_design_contract_lives_in_the_repository() -> None:
    design = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^## (\d+)\.", design, flags=re.M))
    for text in (README, design, (ROOT / "docs" / "INTERFACES.md").read_text(encoding="utf-8")):
        assert "../shared" not in text and "shared/DESIGN" not in text
    assert "docs/DESIGN.md" in README
    # every "DESIGN.md §N" the code cites is a section of docs/DESIGN.md
    cited = {}
    for pkg in ("agents", "cache", "envs", "experiments", "model_runtime", "benchmarks"):
        for f in (ROOT / pkg).rglob("*.py"):
            text = f.read_text(encoding="utf-8")
            assert "../shared" not in text and "shared/DESIGN" not in text, f
            for m in re.finditer(r"DESIGN\.md((?:,? ?§\d+)+)", text):
                cited.setdefault(f.relative_to(ROOT).as_posix(), set()).update(re.findall(r"§(\d+)", m.group(1)))
    assert cited, "no citations found: the pattern is stale"
    for path, nums in cited.items():
        assert nums <= sections, f"{path} cites DESIGN.md §{sorted(nums - sections)}, not in docs/DESIGN.md"


@pytest.mark.slow
def test_python_examples_run(tmp_path, monkeypatch) -> None:
    """The Python section's examples run as written (in a scratch folder, where their outputs go):
    replay on the committed live-built cache, the synthetic default, and live mode with the
    committed checkpoint on the CPU."""
    import torch

    blocks = code_blocks(section("Python"), "python")
    assert len(blocks) == 2 and 'mode="live"' in blocks[1] and "LIVE_DEFAULT_MODEL" in blocks[1]
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    for block in blocks:
        scope: dict = {}
        exec(compile(block, "README.md", "exec"), scope)
        info = scope["info"]
        assert scope["term"] and 0.0 <= info["score"] <= 1.0 and info["latency_ms"] > 0
    assert info["measured_ms"] > 0 and info["output_tokens"] >= 1  # the live example ran the model
    assert (tmp_path / "outputs" / "default_cache.h5").is_file()
