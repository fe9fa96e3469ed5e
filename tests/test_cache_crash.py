"""Crash safety of the cache writer: SIGKILL mid-build, corrupted / truncated / deleted files
while the journal exists, and extending a finished cache. Every recovered file must equal an
uninterrupted build, dataset by dataset."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cache.journal import journal_dir
from tests.cache_compare import assert_same_content
from cache.schema import CacheError
from cache.writer import CacheWriter
from tests.cache_writer_worker import build, create_writer, make_data, plan

WORKER = Path(__file__).with_name("cache_writer_worker.py")
DATA = make_data()
N_OPS = len(plan())


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted build of the whole plan."""
    path = tmp_path_factory.mktemp("ref") / "ref.h5"
    w = create_writer(path)
    assert build(w, DATA) == N_OPS
    w.close()
    return path


def n_journal_chunks(path: Path) -> int:
    jd = journal_dir(path)
    try:
        return sum(1 for n in os.listdir(jd) if n.endswith(".npz") and not n.startswith("."))
    except FileNotFoundError:
        return 0


def test_sigkill_mid_build_then_resume_equals_uninterrupted_build(tmp_path: Path, reference: Path) -> None:
    path = tmp_path / "killed.h5"
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(path), "--sleep", "0.12"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    try:
        while n_journal_chunks(path) < 6:
            assert proc.poll() is None, f"worker exited early: {proc.stderr.read().decode() if proc.stderr else ''}"
            assert time.monotonic() < deadline, "worker made no progress"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done_at_kill = n_journal_chunks(path)
    assert 6 <= done_at_kill < N_OPS, "the kill must land mid-build"
    assert journal_dir(path).is_dir()

    w = CacheWriter.resume(path)
    # everything journaled before the kill is back; the build continues where it stopped
    # every journaled chunk is applied, even the one in flight (the 8 sample chunks come first)
    assert w.samples_pending().sum() == 40 - 5 * min(done_at_kill, 8)
    ran = build(w, DATA)
    assert ran <= N_OPS - (done_at_kill - 1)  # at most the chunk in flight is redone (attrs always rerun)
    w.close()
    assert not journal_dir(path).exists()
    assert_same_content(reference, path)


@pytest.mark.parametrize("damage", ["truncate", "garbage_superblock", "delete"])
def test_broken_file_with_journal_is_rebuilt_without_loss(tmp_path: Path, reference: Path, damage: str) -> None:
    path = tmp_path / "broken.h5"
    w = create_writer(path)
    ops = plan()
    build(w, DATA, ops[:11])
    w._abort()  # what a crash leaves: the journal stays
    size = path.stat().st_size
    if damage == "truncate":
        with open(path, "r+b") as fh:
            fh.truncate(size // 3)
    elif damage == "garbage_superblock":
        with open(path, "r+b") as fh:
            fh.write(b"\x00garbage" * 64)
    else:
        path.unlink()

    w = CacheWriter.resume(path)
    assert not w.samples_pending().any()  # all 8 sample chunks replayed from the journal
    assert w.pending()[:, 1::2].all()
    assert not w.pending()[:30, 0::2].any() and w.pending()[30:, 0::2].all()  # 3 of 4 even-config blocks
    assert build(w, DATA) == N_OPS - 11  # nothing that was journaled is recomputed
    w.close()
    assert_same_content(reference, path)


def test_resume_is_idempotent_and_a_second_crash_is_recoverable(tmp_path: Path, reference: Path) -> None:
    path = tmp_path / "twice.h5"
    w = create_writer(path)
    build(w, DATA, plan()[:5])
    w._abort()
    w = CacheWriter.resume(path)  # replays 5 chunks
    build(w, DATA, plan()[:12])
    w._abort()
    with open(path, "r+b") as fh:
        fh.truncate(2048)
    w = CacheWriter.resume(path)  # rebuild + replay all 12 chunks of both sessions
    assert build(w, DATA) == N_OPS - 12
    w.close()
    assert_same_content(reference, path)


def test_extending_a_finished_cache_survives_a_crash_via_its_snapshot(tmp_path: Path, reference: Path) -> None:
    path = tmp_path / "extend.h5"
    ops = plan()
    w = create_writer(path)
    build(w, DATA, ops[:12] + ops[-1:])  # samples + even configurations + attrs
    w.close()
    assert not journal_dir(path).exists()

    w = CacheWriter.resume(path)  # finished cache: no journal until the first write
    assert w.pending()[:, 1::2].all() and not w.pending()[:, 0::2].any()
    build(w, DATA, ops[12:14])
    assert (journal_dir(path) / "base.h5").is_file()
    w._abort()
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)

    w = CacheWriter.resume(path)
    assert not w.pending()[:20, 1::2].any() and w.pending()[20:, 1::2].all()
    assert build(w, DATA) == 2 + 1  # the two odd-config blocks left, and the attributes
    w.close()
    assert not journal_dir(path).exists()
    assert_same_content(reference, path)


def test_broken_file_without_a_rebuild_base_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "nobase.h5"
    w = create_writer(path)
    build(w, DATA, plan()[:8])
    w.close()
    w = CacheWriter.resume(path, snapshot=False)
    build(w, DATA, plan()[8:9])
    w._abort()
    with open(path, "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(CacheError, match="no base to rebuild"):
        CacheWriter.resume(path)
    # and a broken file without any journal cannot be resumed at all
    other = tmp_path / "nojournal.h5"
    other.write_bytes(b"not hdf5")
    with pytest.raises(CacheError, match="truncated"):
        CacheWriter.resume(other)


def test_stray_journal_temp_files_are_ignored(tmp_path: Path, reference: Path) -> None:
    path = tmp_path / "stray.h5"
    w = create_writer(path)
    build(w, DATA, plan()[:3])
    w._abort()
    # a kill while the journal itself was being written leaves only a temporary file
    (journal_dir(path) / ".tmp-00000003.npz").write_bytes(b"half a chunk")
    w = CacheWriter.resume(path)
    assert not (journal_dir(path) / ".tmp-00000003.npz").exists()
    assert build(w, DATA) == N_OPS - 3
    w.close()
    assert_same_content(reference, path)


def test_a_kill_while_deleting_the_journal_leaves_nothing_harmful(tmp_path: Path, reference: Path) -> None:
    path = tmp_path / "closing.h5"
    w = create_writer(path)
    build(w, DATA)
    w._abort()
    # close() retires the journal by renaming it to *.trash before deleting files: simulate a
    # kill right after that rename, with half of the files already gone
    trash = journal_dir(path).with_name(journal_dir(path).name + ".trash")
    os.rename(journal_dir(path), trash)
    for chunk in sorted(trash.glob("*.npz"))[::2]:
        chunk.unlink()
    w = CacheWriter.resume(path)
    assert not trash.exists()
    assert not w.pending().any() and not w.samples_pending().any()
    w.close()
    assert_same_content(reference, path)
