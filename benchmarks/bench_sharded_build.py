"""A cache build sharded over processes with torchrun: scaling, merge, equality, a killed rank resumed (prints figures).

Run (one machine, N GPUs; the builder's arguments after ``--``, without ``--out``)::

    python -m benchmarks.bench_sharded_build --work DIR --nproc 1 2 --kill-rank 1 -- \\
        --model CKPT --dataset suite/test.jsonl --device cuda --engine shared-prefix --dense-decode
    python -m benchmarks.bench_sharded_build --work DIR --nproc 1 2 --kill-rank 1 -- \\
        --model CKPT --dataset data.jsonl --device cpu --threads 1      # the same on CPU processes

For each process count N of ``--nproc`` (the first is the reference) it launches
``torchrun --standalone --nproc-per-node N -m experiments.build_cache ... --out DIR/nN.h5`` (one
shard per rank, ``cuda:$LOCAL_RANK`` on GPUs), merges the shards with
``experiments.merge_cache_shards``, checks the merged file with ``cache.validate`` and compares it
with the reference build (:func:`cache.compare.compare_caches`): scores, output tokens, statuses,
predictions, the budget range and every other integer or string field must be equal, and
``measured_ms`` measured for the same entries; the float features (latency tokens, language
features, uncertainty) are reported as their largest absolute difference (bf16 builds on other
devices may differ in the last bits). Throughput is requests ×
configurations per second, over the launch's wall time and over the slowest rank's own build time
(the builder's ``wrote ...`` line: model loading and process start-up excluded); scaling is the
ratio to the reference's.

``--continue``: keep the launches an earlier call finished in ``--work`` (each writes ``DIR/nN.json``
and ``DIR/killed_nN.json`` when it is done) and run the rest, so that a benchmark of a large build
spans several time-limited calls on one machine (e.g. ``--nproc 1``, then ``--nproc 1 2 --kill-rank
1 --continue``). A launch cut short is not timed again over its leftovers: the benchmark names its
files to remove.

``--against CACHE``: each launch's merged cache is also compared with an existing cache of the same requests, e.g.
the committed default, built by a plain ``experiments.build_cache`` on another GPU (``vs_against``: the mismatching
fields with their counts, and the float features' largest differences). Reported, not a condition of the exit
code: greedy tokens may flip where another GPU's bf16 kernels round differently.

``--kill-rank R``: one more launch at the largest N, where rank R is SIGKILLed once its shard's
journal holds ``--kill-after-writes`` writes (a chunk's sample table or one configuration's
outcomes each, ``cache.journal``; torchrun then stops the other ranks), then the same command
with ``--resume``; the merged result must equal the reference like the others.
The resumed ranks' ``resumed ...`` lines say what was already done.

Linux only (a rank's process is found through ``/proc``). Writes ``DIR/bench_sharded_build.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import h5py

from cache.compare import FEATURES, compare_caches
from cache.journal import journal_dir
from cache.live_builder import shard_path

WROTE = re.compile(r"\[rank (\d+)/(\d+)\] wrote .*?: (\d+) OK and (\d+) FAILED outcomes in ([\d.]+) s")


def torchrun_command(nproc: int, out: Path, build_args: Sequence[str], *extra: str) -> list[str]:
    """The launch a user types, with this interpreter's torchrun (``python -m torch.distributed.run``)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "experiments.build_cache", *build_args, "--out", str(out), "--no-progress", *extra]


def shard_files(out: Path, nproc: int) -> list[Path]:
    return [shard_path(out, r, nproc) for r in range(nproc)]


def merge(out: Path, nproc: int) -> Path:
    """The single cache of a launch: the file itself for one process, else the merged shards."""
    if nproc == 1:
        return out
    from experiments import merge_cache_shards

    merged = out.with_name(f"{out.stem}.merged{out.suffix}")
    if merge_cache_shards.main(["--out", str(merged), "--overwrite", *map(str, shard_files(out, nproc))]) != 0:
        raise RuntimeError(f"merging the shards of {out} failed")
    return merged


def compare(a: Path, b: Path) -> dict:
    """:func:`cache.compare.compare_caches` of a merged build and the reference: ``equal`` when
    every field but the float features matches (those are reported as their largest absolute
    difference, whatever its size), ``mismatches`` the fields that do not, each with its count of entries."""
    res = compare_caches(a, b, tol=0.0)
    bad = {name: n for name, n in res["mismatches"].items() if n and name not in FEATURES}
    return {"equal": not bad, "mismatches": bad, "max_abs_diff": res["max_abs_diff"]}


def validate(path: Path) -> bool:
    from cache import validate as cache_validate

    return cache_validate.main([str(path), "-q"]) == 0


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from ``/proc/*/stat``)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                # the command name (field 2) may hold spaces; the parent pid follows its ')'
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def rank_pid(root: int, rank: int) -> int | None:
    """The pid of the torchrun worker below ``root`` whose environment says ``RANK=rank``."""
    for pid in descendants(root):
        try:
            env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
            cmd = (Path("/proc") / str(pid) / "cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"experiments.build_cache" in cmd:
            return pid
    return None


def timed_launch(cmd: list[str], log: Path) -> tuple[float, int, str]:
    """Run a launch to its end: (wall seconds, exit code, its stderr + stdout)."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    return time.perf_counter() - t0, rc, log.read_text()


def build_seconds(text: str, nproc: int) -> tuple[float | None, int]:
    """The slowest rank's own build seconds and the OK outcomes over all ranks, from the builder's lines."""
    per_rank = {int(m[1]): (float(m[5]), int(m[3])) for m in WROTE.finditer(text) if int(m[2]) == nproc}
    if len(per_rank) < nproc:
        return None, sum(v[1] for v in per_rank.values())
    return max(v[0] for v in per_rank.values()), sum(v[1] for v in per_rank.values())


def cache_size(path: Path) -> tuple[int, int]:
    with h5py.File(path, "r") as f:
        return tuple(int(x) for x in f["outcomes/status"].shape)  # type: ignore[return-value]


def killed_and_resumed(work: Path, nproc: int, rank: int, after_writes: int, build_args: Sequence[str],
                       timeout_s: float) -> dict:
    """Launch at ``nproc``, SIGKILL ``rank`` once its journal holds ``after_writes`` writes, relaunch with --resume."""
    out = work / f"killed_n{nproc}.h5"
    for p in shard_files(out, nproc):
        if p.exists() or journal_dir(p).exists():
            raise FileExistsError(f"{p} exists: --work must not hold an earlier run of this benchmark")
    log = work / f"killed_n{nproc}.log"
    journal = journal_dir(shard_path(out, rank, nproc))
    with log.open("w") as f:
        proc = subprocess.Popen(torchrun_command(nproc, out, build_args), stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    killed_at_writes = None
    while proc.poll() is None and time.monotonic() < deadline:
        n = len(list(journal.glob("*.npz"))) if journal.is_dir() else 0
        if n >= after_writes:
            pid = rank_pid(proc.pid, rank)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed_at_writes = n
                break
        time.sleep(0.02)
    if killed_at_writes is None:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"rank {rank} ended or stalled before its journal held {after_writes} writes "
                           f"(launch log: {log}); use more requests or smaller --chunk-requests")
    rc_killed = proc.wait(timeout=timeout_s)
    wall, rc, text = timed_launch(torchrun_command(nproc, out, build_args, "--resume"), work / f"resumed_n{nproc}.log")
    if rc != 0:
        raise RuntimeError(f"the resumed launch failed with exit code {rc} (log: {work / f'resumed_n{nproc}.log'})")
    return {"nproc": nproc, "killed_rank": rank, "journal_writes_at_kill": killed_at_writes,
            "killed_launch_exit_code": rc_killed, "resumed_wall_s": wall,
            "resumed_lines": [ln for ln in text.splitlines() if "resumed" in ln], "merged": str(merge(out, nproc))}


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit("bench_sharded_build: give the builder's arguments after '--' "
                         "(e.g. -- --model CKPT --dataset REQS.jsonl --device cuda)")
    cut = argv.index("--")
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_sharded_build", description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="empty folder for the builds")
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="process counts; the first is the reference")
    ap.add_argument("--kill-rank", type=int, default=None, help="also kill this rank mid-build and resume")
    ap.add_argument("--kill-after-writes", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for a killed launch's progress")
    ap.add_argument("--continue", dest="continue_", action="store_true",
                    help="--work holds an earlier call's finished launches (their nN.json records): keep them and run "
                         "the rest, so that one benchmark spans several time-limited calls on the same machine")
    ap.add_argument("--against", type=Path, default=None, metavar="CACHE",
                    help="also compare every launch's cache with this cache of the same requests (reported only)")
    args = ap.parse_args(argv[:cut])
    if args.against is not None and not args.against.is_file():
        raise SystemExit(f"bench_sharded_build: --against {args.against}: no such cache file")
    build_args = argv[cut + 1:]
    if any(a == "--out" or a.startswith("--out=") for a in build_args):
        raise SystemExit("bench_sharded_build: leave --out out of the builder's arguments (each launch gets its own)")
    if any(n < 1 for n in args.nproc):
        raise SystemExit(f"bench_sharded_build: --nproc must be >= 1, got {args.nproc}")
    if args.kill_rank is not None and not 0 <= args.kill_rank < max(args.nproc):
        raise SystemExit(f"bench_sharded_build: --kill-rank {args.kill_rank} is not a rank of {max(args.nproc)} processes")
    if not sys.platform.startswith("linux") and args.kill_rank is not None:
        raise SystemExit("bench_sharded_build: --kill-rank finds the rank's process through /proc (Linux only)")
    return args, build_args


def _leftovers(work: Path, stem: str) -> list[Path]:
    """Files of a launch into ``work/stem*.h5`` (caches, shards, journals)."""
    return sorted(p for p in work.glob(f"{stem}.*") if p.suffix in (".h5", ".journal"))


def main(argv: Sequence[str] | None = None) -> int:
    args, build_args = parse_args(argv)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    if not args.continue_ and (any(work.glob("n*.h5")) or any(work.glob("killed_*.h5"))):
        raise SystemExit(f"bench_sharded_build: --work {work} holds an earlier run's caches; give an empty folder "
                         "(or --continue to keep its finished launches)")
    runs = []
    reference: Path | None = None
    for n in args.nproc:
        out, record = work / f"n{n}.h5", work / f"n{n}.json"
        if record.is_file():  # --continue: a launch an earlier call finished
            run = json.loads(record.read_text())
            print(f"the {n}-process launch: kept from an earlier call ({record})", flush=True)
        else:
            if _leftovers(work, f"n{n}"):
                raise SystemExit(f"bench_sharded_build: the {n}-process launch in {work} was cut short ({record} is "
                                 f"missing); remove its files ({', '.join(p.name for p in _leftovers(work, f'n{n}'))}) "
                                 "to launch it again")
            wall, rc, text = timed_launch(torchrun_command(n, out, build_args), work / f"n{n}.log")
            if rc != 0:
                raise SystemExit(f"bench_sharded_build: the {n}-process launch failed with exit code {rc} (log: {work / f'n{n}.log'})")
            merged = merge(out, n)
            requests, configs = cache_size(merged)
            slowest, ok = build_seconds(text, n)
            run = {"nproc": n, "wall_s": wall, "slowest_rank_build_s": slowest, "ok_outcomes": ok,
                   "requests": requests, "configs": configs, "valid": validate(merged), "merged": str(merged),
                   "per_s_wall": requests * configs / wall,
                   "per_s_build": requests * configs / slowest if slowest else None}
            if reference is not None:
                run["vs_reference"] = compare(merged, reference)
            record.write_text(json.dumps(run, indent=1))
        if args.against is not None and "vs_against" not in run:
            run["vs_against"] = {"cache": str(args.against), **compare(Path(run["merged"]), args.against)}
            record.write_text(json.dumps(run, indent=1))
        if reference is None:
            reference = Path(run["merged"])
        runs.append(run)
    base = runs[0]
    for r in runs:
        r["scaling_wall"] = r["per_s_wall"] / base["per_s_wall"]
        r["scaling_build"] = (r["per_s_build"] / base["per_s_build"]) if r["per_s_build"] and base["per_s_build"] else None
    result: dict = {"command": torchrun_command(max(args.nproc), work / "nN.h5", build_args), "runs": runs}
    if args.kill_rank is not None:
        record = work / f"killed_n{max(args.nproc)}.json"
        if record.is_file():
            kr = json.loads(record.read_text())
        else:
            kr = killed_and_resumed(work, max(args.nproc), args.kill_rank, args.kill_after_writes, build_args, args.timeout)
            kr["vs_reference"] = compare(Path(kr["merged"]), reference)
            kr["valid"] = validate(Path(kr["merged"]))
            record.write_text(json.dumps(kr, indent=1))
        result["killed"] = kr

    print(f"{'procs':>5} | {'wall s':>8} | {'build s':>8} | {'req x cfg / s (wall)':>20} | {'(build)':>9} | "
          f"{'scaling wall':>12} | {'build':>6} | valid | equal to the {base['nproc']}-process build")
    for r in runs:
        eq = "reference" if "vs_reference" not in r else ("yes" if r["vs_reference"]["equal"] else
                                                          "NO: " + ", ".join(r["vs_reference"]["mismatches"]))
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        print(f"{r['nproc']:>5} | {r['wall_s']:>8.1f} | {fmt(r['slowest_rank_build_s'], '>8.1f')} | "
              f"{r['per_s_wall']:>20.1f} | {fmt(r['per_s_build'], '>9.1f')} | {r['scaling_wall']:>12.2f} | "
              f"{fmt(r['scaling_build'], '>6.2f')} | {'yes' if r['valid'] else 'NO':>5} | {eq}")
        if "vs_reference" in r and r["vs_reference"]["max_abs_diff"]:
            print("        float features, largest |difference|: " + ", ".join(
                f"{k} {v:.3g}" for k, v in r["vs_reference"]["max_abs_diff"].items()))
    for r in runs:
        if "vs_against" in r:
            a = r["vs_against"]
            print(f"the {r['nproc']}-process cache against {a['cache']}: " + (
                "every score, token count, status and prediction equal" if a["equal"] else
                "differs in " + ", ".join(f"{k} ({n})" for k, n in a["mismatches"].items())) + "; float features, largest "
                "|difference|: " + (", ".join(f"{k} {v:.3g}" for k, v in a["max_abs_diff"].items()) or "-"))
    if "killed" in result:
        k = result["killed"]
        print(f"killed rank {k['killed_rank']} of {k['nproc']} after {k['journal_writes_at_kill']} journaled write(s) "
              f"(launch exit code {k['killed_launch_exit_code']}); resumed in {k['resumed_wall_s']:.1f} s; merged "
              f"{'valid' if k['valid'] else 'INVALID'}, equal to the reference: "
              f"{'yes' if k['vs_reference']['equal'] else 'NO: ' + ', '.join(k['vs_reference']['mismatches'])}")
        for line in k["resumed_lines"]:
            print("   ", line.strip())
    (work / "bench_sharded_build.json").write_text(json.dumps(result, indent=1))
    ok = all(r["valid"] and r.get("vs_reference", {"equal": True})["equal"] for r in runs)
    if "killed" in result:
        ok = ok and result["killed"]["valid"] and result["killed"]["vs_reference"]["equal"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
