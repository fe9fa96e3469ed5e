"""Issue 16, item 6: `make test` / `make demo` install a CPU build of torch.

The install recipe is run with a stand-in Python that records every command and plays what is
reachable (nothing is downloaded): the pinned CPU build first, then PyTorch's CPU wheel index,
then whatever pip finds, with a line saying so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")

FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$FAKE_LOG"
case "$*" in
  *"import torch"*) [ "$FAKE_HAS_TORCH" = 1 ] && exit 0 || exit 1 ;;
  *"torch==2.13.0+cpu"*) [ "$FAKE_PINNED" = 1 ] && exit 0 || exit 1 ;;
  *"--index-url"*) [ "$FAKE_CPU_INDEX" = 1 ] && exit 0 || exit 1 ;;
esac
exit 0
"""


def run_install(tmp_path: Path, *, has_torch: bool = False, pinned: bool = False, cpu_index: bool = False) -> tuple[list[str], str]:
    """``make -B install`` with the stand-in Python; returns (its recorded commands, the lines
    the recipe printed)."""
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    venv = tmp_path / "venv"
    venv.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    log.write_text("")
    env = {**os.environ, "FAKE_LOG": str(log), "FAKE_HAS_TORCH": str(int(has_torch)),
           "FAKE_PINNED": str(int(pinned)), "FAKE_CPU_INDEX": str(int(cpu_index))}
    done = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "-B", "install", f"VENV={venv}", f"PY={fake}", f"PYTHON={fake}"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (venv / ".installed").is_file()
    # make echoes each command too: keep the lines the recipe printed itself
    printed = "\n".join(line for line in done.stdout.splitlines() if line.startswith("make: "))
    return log.read_text().splitlines(), printed


def torch_installs(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith("-m pip install") and "torch" in c]


def test_an_importable_torch_is_kept(tmp_path: Path) -> None:
    calls, _ = run_install(tmp_path, has_torch=True)
    assert torch_installs(calls) == []
    assert calls[-1] == "-m pip install -q -e .[dev]"


def test_the_pinned_cpu_build_comes_first(tmp_path: Path) -> None:
    calls, out = run_install(tmp_path, pinned=True, cpu_index=True)
    assert torch_installs(calls) == ["-m pip install -q torch==2.13.0+cpu"]
    assert out == ""
    assert calls.index("-m pip install -q torch==2.13.0+cpu") < calls.index("-m pip install -q -e .[dev]")


def test_then_pytorchs_cpu_index(tmp_path: Path) -> None:
    calls, out = run_install(tmp_path, cpu_index=True)
    installs = torch_installs(calls)
    assert len(installs) == 2 and installs[0] == "-m pip install -q torch==2.13.0+cpu"
    assert f"--index-url {CPU_INDEX}" in installs[1] and "torch>=2.4,<=2.13.0" in installs[1]
    assert out.startswith("make: torch==2.13.0+cpu not found; trying PyTorch's CPU index") and "WARNING" not in out


def test_then_whatever_pip_finds_with_a_line_saying_so(tmp_path: Path) -> None:
    calls, out = run_install(tmp_path)
    installs = torch_installs(calls)
    assert len(installs) == 3 and "--index-url" in installs[1]
    assert installs[2] == "-m pip install -q torch"  # the fallback: no pin, no index
    (warning,) = [line for line in out.splitlines() if line.startswith("make: WARNING")]
    assert "no CPU build of torch" in warning and "falling back to whatever pip finds" in warning
    assert calls[-1] == "-m pip install -q -e .[dev]"  # the project after torch


def test_dry_run_lists_the_order_and_ci_runs_make_test() -> None:
    out = subprocess.run(["make", "-C", str(ROOT), "-n", "-B", "install"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    pinned, index, fallback = (out.index(s) for s in ('"torch==2.13.0+cpu"', f"--index-url {CPU_INDEX}",
                                                      "falling back to whatever pip finds"))
    assert pinned < index < fallback < out.index('-e ".[dev]"')
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
