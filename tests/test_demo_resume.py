"""Issue 16, item 2: an interrupted first `make demo` (Ctrl-C or a kill during the default cache
build) must not leave the demo broken. The next run's cache step finishes the build (equal to an
uninterrupted one), and opening the unfinished cache in an env or an OutcomeCache names the
problem and the command that finishes it (a command that really does)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import pytest

import envs  # noqa: F401  (registers the env ids)
from cache.journal import journal_dir
from cache.reader import OutcomeCache
from cache.schema import CacheError
from cache.synthetic import build_default_cache
from experiments.demo import prepare_cache
from tests.cache_compare import assert_same_content

ROOT = Path(__file__).resolve().parents[1]
#: The demo's cache step in a child process, slowed down (0.25 s per outcome chunk) so that a
#: signal lands mid-build.
SLOW_DEMO_CACHE_STEP = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as at a terminal (a background runner ignores it)
from cache.writer import CacheWriter
orig = CacheWriter.write_outcomes
def slow(self, *a, **k):
    orig(self, *a, **k)
    time.sleep(0.25)
CacheWriter.write_outcomes = slow
from experiments.demo import prepare_cache
prepare_cache(sys.argv[1])
"""


@pytest.fixture(autouse=True)
def ctrl_c_raises():
    """Ctrl-C raises KeyboardInterrupt, as at a terminal, also when the test runner was started
    in the background (which starts Python with SIGINT ignored)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted build of the default cache."""
    return build_default_cache(tmp_path_factory.mktemp("ref") / "default_cache.h5")


def n_chunks(path: Path) -> int:
    try:
        return sum(1 for n in os.listdir(journal_dir(path)) if n.endswith(".npz") and not n.startswith("."))
    except FileNotFoundError:
        return 0


def interrupt_demo_cache_step(path: Path, sig: int) -> None:
    """Start the demo's cache step for ``path`` and send ``sig`` after 3 journaled chunks."""
    proc = subprocess.Popen([sys.executable, "-c", SLOW_DEMO_CACHE_STEP, str(path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while n_chunks(path) < 3:
            assert proc.poll() is None, f"the build ended early: {proc.stderr.read().decode() if proc.stderr else ''}"
            assert time.monotonic() < deadline, "the build made no progress"
            time.sleep(0.005)
        os.kill(proc.pid, sig)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode != 0, "the signal must interrupt the build"
    assert path.exists() and journal_dir(path).is_dir(), "an interrupted build keeps its journal"


def test_ctrl_c_during_the_demo_cache_step_then_the_next_demo_finishes_it(tmp_path: Path, reference: Path) -> None:
    path = tmp_path / "outputs" / "default_cache.h5"
    interrupt_demo_cache_step(path, signal.SIGINT)
    expected = f"python -m cache.synthetic --out {shlex.quote(str(path))} --resume"

    # an env on the unfinished cache names the problem and the command (not "sample_ids must be unique")
    with pytest.raises(CacheError, match="unfinished cache build") as err:
        gym.make("MolmoeKnobs-v0", cache=str(path))
    assert expected in str(err.value) and str(journal_dir(path)) in str(err.value)

    # the next `make demo` (its cache step) resumes it; the result equals an uninterrupted build
    lines: list[str] = []
    assert prepare_cache(path, log=lines.append) == path
    assert any("finishing the interrupted build" in line for line in lines)
    assert not journal_dir(path).exists()
    assert_same_content(reference, path)
    env = gym.make("MolmoeKnobs-v0", cache=str(path))
    env.reset(seed=0)
    env.close()
    lines.clear()
    prepare_cache(path, log=lines.append)  # a finished cache is reused as it is
    assert lines == []


def test_a_killed_build_names_the_command_that_finishes_it(tmp_path: Path, reference: Path) -> None:
    path = tmp_path / "default_cache.h5"
    interrupt_demo_cache_step(path, signal.SIGKILL)
    with pytest.raises(CacheError, match="unfinished cache build") as err:
        OutcomeCache(path)
    (command,) = re.findall(r"finish it with `([^`]+)`", str(err.value))
    argv = shlex.split(command)
    assert argv == ["python", "-m", "cache.synthetic", "--out", str(path), "--resume"]
    done = subprocess.run([sys.executable, *argv[1:], "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not journal_dir(path).exists()
    assert_same_content(reference, path)


def test_a_build_killed_before_it_wrote_anything_is_rebuilt(tmp_path: Path, reference: Path) -> None:
    path = tmp_path / "default_cache.h5"
    journal_dir(path).mkdir()  # killed inside CacheWriter.create, before the journal header
    lines: list[str] = []
    prepare_cache(path, log=lines.append)
    assert any("rebuilding" in line for line in lines)
    assert not journal_dir(path).exists()
    assert_same_content(reference, path)


def test_finish_commands_reproduce_the_stored_build_settings(tmp_path: Path) -> None:
    from cache.synthetic import SyntheticParams, generator_params, select_datasets
    from cache.unfinished import live_command, synthetic_command

    params = SyntheticParams(n_samples=300, lang_dim=16, splits=(0.6, 0.2, 0.2),
                             datasets=select_datasets(["textvqa:2", "docvqa"]))
    cmd = synthetic_command(tmp_path / "c.h5", generator_params(params, 3))
    assert cmd is not None
    assert shlex.split(cmd) == ["python", "-m", "cache.synthetic", "--out", str(tmp_path / "c.h5"), "--resume",
                                "--samples", "300", "--seed", "3", "--lang-dim", "16", "--splits", "0.6", "0.2", "0.2",
                                "--datasets", "textvqa:2", "docvqa:1"]
    custom = SyntheticParams(n_samples=300, jitter_sd=0.3)  # no command-line flag sets jitter_sd
    assert synthetic_command(tmp_path / "c.h5", generator_params(custom, 0)) is None
    gp = {"runtime": {"model": "/ckpt/molmoe"}, "build": {"dataset": "/data/x.jsonl", "config_spec": "tier=high"}}
    assert shlex.split(live_command(tmp_path / "live.h5", gp)) == [
        "python", "-m", "experiments.build_cache", "--model", "/ckpt/molmoe", "--dataset", "/data/x.jsonl",
        "--out", str(tmp_path / "live.h5"), "--configs", "tier=high", "--resume"]


def test_demo_cache_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: Path) -> None:
    """The committed live-built cache when the checkout has it, else the SYNTHETIC default;
    --synthetic and --cache choose explicitly; a missing --cache is an error naming it."""
    from experiments import demo

    monkeypatch.chdir(tmp_path)
    live = tmp_path / "cache" / "default" / "live.h5"
    monkeypatch.setattr(demo, "LIVE_DEFAULT_CACHE", live)
    lines: list[str] = []
    synth = demo.resolve_cache(None, False, log=lines.append)  # no live cache: the synthetic default, built
    assert synth == Path("outputs/default_cache.h5") and synth.is_file() and "SYNTHETIC" in lines[0]
    assert lines[0].startswith("[demo] ")
    demo.resolve_cache(None, False, log=lines.append, tag="pipeline")  # the command that asked names its lines
    assert lines[-1].startswith("[pipeline] no live-built default cache")
    live.parent.mkdir(parents=True)
    shutil.copy(reference, live)
    assert demo.resolve_cache(None, False) == live
    assert demo.resolve_cache(None, True) == Path("outputs/default_cache.h5")
    assert demo.resolve_cache(str(live), False) == live
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        demo.resolve_cache("nope.h5", False)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_swallowed_by_a_finalizer_is_raised_at_the_next_chunk_boundary() -> None:
    """Python ignores a KeyboardInterrupt raised inside ``__del__``; the build's check raises it."""
    from cache.interrupts import interruptible, raise_if_interrupted

    class SignalsInFinalizer:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs (and its exception is ignored) in here
                pass

    with interruptible():
        SignalsInFinalizer()  # collected at once: the KeyboardInterrupt is swallowed
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()
    raise_if_interrupted()  # outside the block nothing is pending
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_live_build_stops_at_the_chunk_after_a_swallowed_ctrl_c() -> None:
    """The live builder's chunk loop re-raises a Ctrl-C that a finalizer swallowed mid-chunk."""
    from types import SimpleNamespace

    from cache.live_builder import LiveCacheBuilder

    built: list[int] = []

    class SignalsInFinalizer:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass

    def build_chunk(rows) -> None:
        built.append(int(rows[0]))
        if len(built) == 2:
            SignalsInFinalizer()  # Ctrl-C lands in a finalizer during the second chunk

    fake = SimpleNamespace(build_chunk=build_chunk)
    with pytest.raises(KeyboardInterrupt):
        LiveCacheBuilder.build(fake, [[0], [1], [2], [3]])
    assert built == [0, 1]  # the second chunk finished (it writes its own rows); no third began
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
