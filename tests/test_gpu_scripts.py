"""The GPU shell scripts under benchmarks/gpu/ pass only options their Python entry points accept.

They run on the H200 only, so a renamed or removed option would otherwise surface there, after a
machine start; this reads each ``python -m MODULE`` call of the scripts and checks its ``--flags``
against the module's ``--help``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks" / "gpu").glob("*.sh"))


def module_calls(script: Path) -> list[tuple[str, list[str]]]:
    """(module, flags) of every ``$PY -m MODULE ...`` call, continuation lines joined."""
    text = script.read_text().replace("\\\n", " ")
    calls = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for m in re.finditer(r"-m\s+([\w.]+)(.*?)(?:;|&&|\|\||$)", line):
            calls.append((m.group(1), sorted(set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", m.group(2))))))
    return calls


def test_the_scripts_are_found() -> None:
    assert {s.name for s in SCRIPTS} >= {"train_small_model.sh", "build_default_cache.sh"}
    assert any(mod == "experiments.train_model" for s in SCRIPTS for mod, _ in module_calls(s))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_flag_a_gpu_script_passes_is_an_option_of_its_module(script: Path) -> None:
    for module, flags in module_calls(script):
        if not module.startswith(("experiments.", "benchmarks.", "cache.")):
            continue
        out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 0, f"{module} --help: {out.stderr[-500:]}"
        unknown = [f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", out.stdout)]
        assert not unknown, f"{script.name}: python -m {module} has no option {unknown}"


def test_resume_on_a_machine_without_the_earlier_state_refuses(tmp_path: Path) -> None:
    # A fresh GPU machine has no WORK from the earlier call: RESUME=1 must stop there, not quietly
    # start the schedule over with a newly trained tokenizer (what an H200 call once did).
    marker = tmp_path / "python_ran"
    fake_python = tmp_path / "python"
    fake_python.write_text(f"#!/bin/sh\ntouch {marker}\n")
    fake_python.chmod(0o755)
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "train_small_model.sh"), str(tmp_path / "work"), "60", "10"],
                         cwd=ROOT, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "RESUME": "1",
                                                                        "PYTHON": str(fake_python)})
    assert out.returncode == 2
    assert "RESUME=1 but" in out.stderr and "suite/manifest.json is missing" in out.stderr
    assert not marker.exists()


def test_the_fast_path_script_names_real_sections_and_refuses_a_bad_part(tmp_path: Path) -> None:
    from benchmarks.bench_fast_path import SECTIONS

    script = ROOT / "benchmarks" / "gpu" / "fast_path.sh"
    parts = re.findall(r"SECTIONS=([\w,]+)", script.read_text())
    assert len(parts) == 5 and set(",".join(parts).split(",")) == set(SECTIONS)  # every section in some part
    out = subprocess.run(["bash", str(script), str(tmp_path), "6"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "PART must be 1, 2, 3, 4 or 5" in out.stderr
    bad = subprocess.run([sys.executable, "-m", "benchmarks.bench_fast_path", "--sections", "decode,prefil"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown sections ['prefil']" in bad.stderr


FAKE_PYTHON = r"""#!/usr/bin/env bash
# stands in for python: records each call; make_suite, train_model and repack leave the files the scripts read
echo "$*" >> "$FAKE_LOG"
[ "$1" = -c ] && exec "$REAL_PYTHON" "$@"
mod=$2; shift 2
out=; json=; prev=
for a in "$@"; do [ "$prev" = --out ] && out=$a; [ "$prev" = --json ] && json=$a; prev=$a; done
[ -z "$json" ] || echo '{"within": true}' > "$json"
[ -n "$json" ] && [ -n "${FAKE_MISS:-}" ] && exit 1  # a comparison with a task beyond the points
case $mod in
  experiments.make_suite) mkdir -p "$out"; touch "$out/manifest.json" "$out/test.jsonl" ;;
  experiments.train_model)
    mkdir -p "$out/plain"; touch "$out/train_state.pt" "$out/plain/model.safetensors" "$out/train_log.csv"
    stopped=false; [ -f "$FAKE_STOP" ] && { rm "$FAKE_STOP"; stopped=true; }
    echo "{\"stopped_by_time\": $stopped, \"steps\": 7}" > "$out/train_summary.json" ;;
  cache.repack) touch "$2" ;;
  experiments.eval_model_grid) echo '{}' > "$out" ;;
esac
"""


def stand_in_python(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """The environment that runs a GPU script with FAKE_PYTHON (tmp_path/python) as its PYTHON, and the log of the
    calls it receives (tmp_path/calls.log); touching tmp_path/stop makes the next training call stop by time."""
    fake, log = tmp_path / "python", tmp_path / "calls.log"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    return {"PATH": "/usr/bin:/bin", "PYTHON": str(fake), "REAL_PYTHON": sys.executable, "FAKE_LOG": str(log),
            "FAKE_STOP": str(tmp_path / "stop")}, log


def chain_runner(tmp_path: Path, **env: str) -> tuple[Callable[..., subprocess.CompletedProcess], Path, Path]:
    """``run(*args, work=WORK, **more_env)``: reproduce_default.sh on WORK (default tmp_path/work) with the stand-in
    for Python, which logs its calls; returns run, the default WORK and the calls' log."""
    base, log = stand_in_python(tmp_path)
    base |= {"KEEP": str(tmp_path / "keep")} | env  # the machine's keep, inside the test's folder
    work = tmp_path / "work"
    script = ROOT / "benchmarks" / "gpu" / "reproduce_default.sh"

    def run(*args: str, work: Path = work, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(script), str(work), *args], cwd=ROOT, capture_output=True, text=True,
                              env=base | extra)

    return run, work, log


def seed_checkpoint(tmp_path: Path, name: str) -> Path:
    """A stand-in checkpoint directory for ``reproduce_default.sh --seed`` (a config is all the script looks for)."""
    ckpt = tmp_path / name
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    return ckpt


def test_the_reproduction_chain_runs_its_stages_in_order_resumes_and_ends_with_the_comparison(tmp_path: Path) -> None:
    """The chain to v7 (run14, the ninth to fourteenth runs), compared with v7's committed cache without naming it."""
    run, work, log = chain_runner(tmp_path, UNTIL="run14")
    stop = tmp_path / "stop"

    def call() -> tuple[str, list[str]]:
        before = log.read_text().splitlines() if log.exists() else []
        out = run()
        assert out.returncode == 0, out.stderr
        return out.stdout, [c for c in log.read_text().splitlines()[len(before):] if "train_model" in c]

    stop.touch()  # the first stage's first call runs out of time
    text, trains = call()
    assert "stage run9 (3000 steps, lr 2e-3)" in text and "stopped by time" in text and not (work / "chain/run9/DONE").exists()
    assert "--resume" not in trains[0] and "--init-from" not in trains[0] and "--batch-size 128" in trains[0]
    shutil.rmtree(work / "chain")  # chain/ copied over from a machine that has no stage in progress (what travels)
    (work / "chain").mkdir()
    text, trains = call()  # the same machine: the stage resumes from its own state
    assert "resumed" in text and "--resume" in trains[0] and "--init-from" not in trains[0]
    trains_run9 = trains[0]
    assert (work / "chain/run9/DONE").exists() and (work / "chain/run9/plain/model.safetensors").exists()
    check = f"benchmarks.reproduction_check --stage run9 --log {work}/chain/run9/train_log.csv"
    assert check in log.read_text() and (work / "chain/run9/train_log.csv").exists()  # the stage against the original
    seen = {}
    for stage in ("run10", "run11a", "run11b", "run12", "run13a", "run13b", "run14"):
        text, trains = call()
        assert f"stage {stage} " in text and len(trains) == 1
        seen[stage] = trains[0]
        if stage == "run11a":  # what a fresh machine needs: the markers, and the stage the next one starts from
            travel = run("--travel").stdout.split()
            assert travel == [f"{work}/chain/run9/DONE", f"{work}/chain/run10/DONE", f"{work}/chain/run11a",
                              f"{work}/line_id"]
    assert f"--init-from {work}/chain/run9/plain" in seen["run10"] and "--steps 3186" in seen["run10"]
    assert "--compile" in trains_run9 and not any("--compile" in c for c in seen.values())  # eager at batch 64
    assert not any("--channels-last" in c for c in [trains_run9, *seen.values()])  # unless CHANNELS_LAST=1 asks
    assert "--stop-at-step 2376" in seen["run11a"] and "--stop-at-step 0" in seen["run11b"]
    assert "--split-digits" in seen["run12"] and "--first-example 1000000" in seen["run12"] and "--split-digits" not in seen["run11b"]
    assert f"--init-from {work}/chain/run13b/plain" in seen["run14"] and "--lr 3.5e-4" in seen["run14"]
    assert "synth_digits=0.15" in seen["run14"]
    call()  # the build of the last stage's checkpoint, and the comparison in the same call
    assert "experiments.build_cache" in log.read_text() and (work / "default_cache.h5").exists()
    last = log.read_text().splitlines()[-1]
    assert "benchmarks.report_live_cache" in last and "--against cache/candidates/molmoe_small_suite_v7.h5" in last
    status = run("--status")
    assert status.stdout.count(": done") == 8 and "cache: built" in status.stdout
    (work / "chain/run14/plain/config.json").write_text("{}")
    assert run("--seed", "run14", str(work / "chain/run14/plain"), work=tmp_path / "on").returncode == 0
    assert (tmp_path / "on/chain/run14/SEEDED").read_text().strip().endswith("/work/chain/run14/plain, trained there from nothing")


def test_the_reproduction_chain_fills_a_call_with_pieces_and_packs_each_finished_stage(tmp_path: Path) -> None:
    stop, packs = tmp_path / "stop", tmp_path / "packs"
    # CHANNELS_LAST: every stage's crop stem in channels-last memory format
    run, work, log = chain_runner(tmp_path, PACK_TO=str(packs), CHANNELS_LAST="1", UNTIL="run14")

    def call(seconds: int) -> str:
        out = run(CALL_SECONDS=str(seconds))
        assert out.returncode == 0, out.stderr
        return out.stdout

    refused = run(END_WITH="run99")
    assert refused.returncode == 2 and "END_WITH must be a stage" in refused.stderr
    text = call(100)  # 100 - 50 s of overhead leave less than a piece's minimum: nothing starts
    assert "too little for a training piece" in text and not log.exists()
    stop.touch()  # the first piece runs out of its time; the same call resumes it, then takes the stages to END_WITH
    out = run(CALL_SECONDS="1000", END_WITH="run10")
    assert out.returncode == 0 and "run10 is done: this call ends here (END_WITH=run10" in out.stdout, out.stderr
    assert (work / "chain/run10/DONE").exists() and not (work / "chain/run11a").exists()
    assert "run11a: to do" in run("--status").stdout
    text = call(1000)  # without it: every other stage
    trains = [c for c in log.read_text().splitlines() if "train_model" in c]
    assert len(trains) == 9 and "--resume" not in trains[0] and "--resume" in trains[1]
    assert all("--channels-last" in c for c in trains)
    stop_after = [int(c.split("--stop-after ")[1].split()[0]) for c in trains]
    assert stop_after[0] in range(885, 931)  # what is left, less 50 s and the 20 s of run9's tokenizer
    assert all(s in range(905, 951) for s in stop_after[1:])  # what is left, less 50 s (run9 resumed, and the rest)
    assert "too little for the build" not in text and "experiments.build_cache" in log.read_text()
    assert "benchmarks.report_live_cache" in log.read_text().splitlines()[-1]
    packed = sorted(p.name for p in packs.iterdir())
    assert packed[:3] == ["reproduction.json", "run10.tar.part00", "run11a.tar.part00"]  # the build's comparison
    assert not any(name.endswith(".h5") for name in packed)  # the cache itself stays on the machine
    restored = tmp_path / "restored"
    restored.mkdir()
    subprocess.run(f"cat {packs}/run9.tar.part* | tar xf - -C {restored}", shell=True, check=True)
    assert (restored / "chain/run9/plain/model.safetensors").exists() and (restored / "chain/run9/DONE").exists()
    # a machine with every stage done and too little time for the build says so and leaves the cache to the next call
    (work / "default_cache.h5").unlink()
    assert "too little for the build" in call(300) and not (work / "default_cache.h5").exists()


def test_an_older_copy_of_the_line_carried_onto_the_machine_again_takes_what_the_machine_finished_from_its_keep(
        tmp_path: Path) -> None:
    run, work, log = chain_runner(tmp_path, UNTIL="run14")
    keep, stop = tmp_path / "keep", tmp_path / "stop"

    def trains() -> list[str]:
        return [c for c in log.read_text().splitlines() if "train_model" in c]

    assert run(END_WITH="run9", CALL_SECONDS="1000").returncode == 0
    assert run("--travel-to", str(tmp_path / "older")).returncode == 0  # what was carried: run9 done, the line's id
    line = (work / "line_id").read_text()
    assert len(line) == 16 and (tmp_path / "older/line_id").read_text() == line
    assert run(END_WITH="run10", CALL_SECONDS="1000").returncode == 0
    stop.touch()
    assert "stage run11a stopped by time" in run().stdout  # one piece of run11a, cut by its time
    kept = keep / line
    assert (kept / "chain/run10/plain/model.safetensors").exists() and not (kept / "chain/run9/plain").exists()
    assert (kept / "chain/run9/DONE").exists() and (kept / "ckpt/STAGE").read_text().strip() == "run11a"
    n = len(trains())

    shutil.rmtree(work)  # the older copy carried onto this machine again, in place of the WORK that went further
    shutil.copytree(tmp_path / "older", work)
    out = run()
    assert out.returncode == 0, out.stderr
    assert "finished here by an earlier call: run10" in out.stdout and "stage run11a's part-trained state" in out.stdout
    assert len(trains()) == n + 1 and "--resume" in trains()[-1] and "run10" not in trains()[-1]
    assert (work / "chain/run11a/DONE").exists() and not (kept / "ckpt").exists()  # the stage finished: its state goes

    other = run(work=tmp_path / "other", END_WITH="run9", CALL_SECONDS="1000")  # another line takes nothing
    assert "keep" not in other.stdout and not (tmp_path / "other/chain/run10").exists()
    shutil.rmtree(work)
    shutil.copytree(tmp_path / "older", work)
    off = run(KEEP="")  # the keep turned off: the older copy trains run10 again
    assert "keep" not in off.stdout and "stage run10 " in off.stdout and "--resume" not in trains()[-1]
    (tmp_path / "a_file").write_text("")  # a keep that cannot be written: said, and the stage still finishes and packs
    stop.touch()
    cut = run(KEEP=str(tmp_path / "a_file/keep"), PACK_TO=str(tmp_path / "packs"))  # a piece of run11a, cut
    assert cut.returncode == 0 and "part-trained state could not be kept" in cut.stdout, cut.stderr
    done = run(KEEP=str(tmp_path / "a_file/keep"), PACK_TO=str(tmp_path / "packs"))
    assert done.returncode == 0 and "stage run11a could not be kept" in done.stdout, done.stderr
    assert (work / "chain/run11a/DONE").exists() and (tmp_path / "packs/run11a.tar.part00").exists()


def test_the_status_plans_a_session_to_end_on_the_last_stage_its_calls_finish(tmp_path: Path) -> None:
    """run12 687 s, run13a 393 s, run13b 215 s at 7 steps/s: three calls of 560 s after 130 s of start finish run13b."""
    run, work, _ = chain_runner(tmp_path)
    assert run("--seed", "run11b", str(seed_checkpoint(tmp_path, "v4"))).returncode == 0
    plan = run("--status", RATE64="7", SESSION_SECONDS="1800").stdout.splitlines()[-1]
    assert plan.endswith("3 calls end on run13b (END_WITH=run13b)"), plan
    assert "end on run13a" in run("--status", SESSION_SECONDS="1800").stdout  # at the default 5.4 steps/s
    short = run("--status", RATE64="7", SESSION_SECONDS="600").stdout
    assert "no stage finishes (run12 needs ≈ 687 s)" in short
    assert "a session of" not in run("--status").stdout  # planned only when asked
    # 2,100 s: a fourth call would take run14 only part of the way, so the session still ends on run13b in three
    assert run("--status", RATE64="7", SESSION_SECONDS="2100").stdout.splitlines()[-1].endswith("3 calls end on run13b (END_WITH=run13b)")


def test_the_reproduction_chain_seeded_from_a_committed_checkpoint_trains_only_the_stages_after_it(tmp_path: Path) -> None:
    run, work, log = chain_runner(tmp_path, UNTIL="run14")
    ckpt = seed_checkpoint(tmp_path, "v5")
    (ckpt / "model.safetensors").write_text("weights")

    for args, problem in ((("--seed", "run99", str(ckpt)), "unknown stage run99"),
                          (("--seed", "run12", str(tmp_path)), "is not a checkpoint (no config.json)")):
        refused = run(*args)
        assert refused.returncode == 2 and problem in refused.stderr
    seeded = run("--seed", "run12", str(ckpt))
    assert seeded.returncode == 0 and "the next call trains the stage after it" in seeded.stdout
    assert (work / "chain/run12/plain/model.safetensors").read_text() == "weights"
    again = run("--seed", "run11b", str(ckpt))  # a chain with stages is never overwritten
    assert again.returncode == 2 and "already holds stages" in again.stderr and not (work / "chain/run11b/plain").exists()
    status = run("--status").stdout
    assert status.count("seeded (not trained here)") == 5 and "run13a: to do" in status
    # the time left, stage by stage, at the planning rates: 2,539 / 5.4 + 30, then 1,292 and 1,800 steps, then the build
    assert "run13a: to do (from run12, 4600 steps, cut at step 2539, lr 7e-4) ≈ 500 s at 5.4 steps/s, 500 s to its end" in status
    assert "run14: to do (from run13b, 1800 steps, lr 3.5e-4) ≈ 363 s at 5.4 steps/s, 1132 s to its end" in status
    assert "left: ≈ 1582 s of one GPU (stages 1132 s, the build 450 s;" in status and "run12: seeded" in status
    fresh = run("--status", work=tmp_path / "fresh", RATE128="4", STAGE_SETUP="0").stdout
    assert "run9: to do (from nothing, 3000 steps, lr 2e-3) ≈ 750 s at 4 steps/s, 750 s to its end" in fresh
    travel = run("--travel").stdout.split()
    assert f"{work}/chain/run11b/SEEDED" in travel and travel[-2:] == [f"{work}/chain/run12", f"{work}/line_id"]
    slim = tmp_path / "slim"  # the same paths alone, as a WORK of their own that one carried folder holds
    out = run("--travel-to", str(slim))
    assert out.returncode == 0 and "(next: run13a)" in out.stdout, out.stderr
    held = sorted(str(p.relative_to(slim)) for p in slim.rglob("*") if p.is_file())
    last = [str(p.relative_to(work)) for p in (work / "chain/run12").rglob("*") if p.is_file()]  # markers, weights
    assert held == sorted([str(Path(p).relative_to(work)) for p in travel[:-2]] + last + ["line_id"])
    assert run("--status", work=slim).stdout == status and (slim / "chain/run12/plain/model.safetensors").read_text() == "weights"
    again = run("--travel-to", str(slim))
    assert again.returncode == 2 and "it exists (a WORK is never overwritten" in again.stderr
    trains = []
    for stage in ("run13a", "run13b", "run14"):
        out = run()
        assert out.returncode == 0 and f"stage {stage} " in out.stdout
        trains.append([c for c in log.read_text().splitlines() if "train_model" in c][-1])
    assert len([c for c in log.read_text().splitlines() if "train_model" in c]) == 3  # nothing before run13a trained
    assert f"--init-from {work}/chain/run12/plain" in trains[0] and "--stop-at-step 2539" in trains[0]
    out = run()  # the build, and the comparison in the same call
    assert out.returncode == 0 and (work / "default_cache.h5").exists()
    assert "benchmarks.report_live_cache" in log.read_text().splitlines()[-1]
    assert f"a partial reproduction: weights of run12 from {ckpt} (the stages" in out.stdout
    # a chain seeded from this one's run14 says where run14's weights came from, a marker seeded from it too
    (work / "chain/run14/plain/config.json").write_text("{}")  # (the stand-in trainer writes weights alone)
    assert run("--seed", "run14", str(work / "chain/run14/plain"), work=tmp_path / "next").returncode == 0
    marker = (tmp_path / "next/chain/run9/SEEDED").read_text().strip()
    assert marker == f"weights of run14 from {work}/chain/run14/plain, trained there in a chain seeded with weights of run12 from {ckpt}"
    assert run("--seed", "run14", str(tmp_path / "next/chain/run14/plain"), work=tmp_path / "third").returncode == 0
    assert (tmp_path / "third/chain/run14/SEEDED").read_text().strip().endswith(f", itself {marker}")


def test_the_reproduction_chain_can_end_with_the_full_configuration_scored_instead_of_a_build(tmp_path: Path) -> None:
    """CHECK=score: after the last stage, eval_model_grid scores its checkpoint at the full configuration on the
    cache's requests and reproduction_check --grid compares them with the committed cache; no cache is built."""
    run, work, log = chain_runner(tmp_path, CHECK="score", UNTIL="run14")
    ckpt = seed_checkpoint(tmp_path, "v5")

    assert run("--seed", "run13b", str(ckpt)).returncode == 0  # only run14 left to train
    out = run(CALL_SECONDS="100", PIECE_OVERHEAD="10")  # run14 (a piece of 100 - 10 s), then too little for the scoring
    assert out.returncode == 0 and "stage run14 " in out.stdout
    assert "too little for the full-configuration scoring (SCORE_SECONDS=120)" in out.stdout
    assert "full-configuration scores: to do" in run("--status").stdout
    out = run()  # one piece, the scoring, and the comparison in the same call
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    grid = next(c for c in calls if "experiments.eval_model_grid" in c)
    assert f"--model {work}/chain/run14/plain --requests {work}/suite/test.jsonl --per-task 1000" in grid
    assert '--configs tier=high,p=1,top_k=8,blocks=16 --max-new-tokens 16 --dense-decode --per-request' in grid
    assert calls[-1].startswith(f"-m benchmarks.reproduction_check --grid {work}/full_scores.json "
                                "--against cache/candidates/molmoe_small_suite_v7.h5 --points 2")
    assert not any("experiments.build_cache" in c for c in calls) and not (work / "default_cache.h5").exists()
    assert f"{work}/full_scores.json" in run("--travel").stdout.split()
    assert not (tmp_path / "packs").exists()  # without PACK_TO the comparison stays in WORK alone
    (tmp_path / "again").mkdir()
    again = chain_runner(tmp_path / "again", CHECK="score", UNTIL="run14", PACK_TO=str(tmp_path / "packs"))[0]
    assert again("--seed", "run14", str(ckpt), work=tmp_path / "w2").returncode == 0
    out = again(work=tmp_path / "w2")  # nothing to train: the scoring, the comparison, and both copied to PACK_TO
    assert out.returncode == 0 and "the comparison copied to" in out.stdout, out.stderr
    assert sorted(p.name for p in (tmp_path / "packs").iterdir()) == ["full_scores.json", "reproduction.json"]
    shutil.rmtree(tmp_path / "packs")
    (tmp_path / "w2/full_scores.json").unlink()  # scored again, and this time a task is beyond the 2 points
    missed = again(work=tmp_path / "w2", FAKE_MISS="1")
    assert missed.returncode == 1 and "the comparison copied to" in missed.stdout and "a partial reproduction" in missed.stdout
    assert sorted(p.name for p in (tmp_path / "packs").iterdir()) == ["full_scores.json", "reproduction.json"]
    bad = run(CHECK="both")
    assert bad.returncode == 2 and "CHECK must be build or score, got both" in bad.stderr


def test_the_reproduction_chain_checks_one_segment_between_two_committed_defaults(tmp_path: Path) -> None:
    """UNTIL=STAGE ends the chain after STAGE and compares its checkpoint with AGAINST, the committed cache of that
    stage's time, which a stage other than run14 must name; seeded, one segment is checked on its own."""
    run, work, log = chain_runner(tmp_path, CHECK="score", UNTIL="run12")
    ckpt, v5 = seed_checkpoint(tmp_path, "v4"), tmp_path / "v5.h5"
    v5.write_text("the v5 cache")

    assert run("--seed", "run11b", str(ckpt)).returncode == 0
    for extra, problem in (({}, "UNTIL=run12 needs AGAINST=CACHE"), ({"AGAINST": str(tmp_path / "no.h5")}, "no such cache"),
                           ({"UNTIL": "run99", "AGAINST": str(v5)}, "UNTIL must be a stage"),
                           ({"UNTIL": "run10", "AGAINST": str(v5)}, "UNTIL=run10: its weights are not in")):
        refused = run(**extra)
        assert refused.returncode == 2 and problem in refused.stderr, refused.stderr
    assert not log.exists()  # nothing ran
    status = run("--status").stdout
    assert "run12: to do" in status and "run13a: not in this chain (UNTIL=run12)" in status
    out = run(AGAINST=str(v5), CALL_SECONDS="2000")  # run12, then its scoring and the comparison
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    trains = [c for c in calls if "train_model" in c]
    assert len(trains) == 1 and f"--init-from {work}/chain/run11b/plain" in trains[0] and "--steps 4600" in trains[0]
    assert f"--model {work}/chain/run12/plain " in next(c for c in calls if "experiments.eval_model_grid" in c)
    assert calls[-1].startswith(f"-m benchmarks.reproduction_check --grid {work}/full_scores.json --against {v5} --points 2")
    assert "a partial reproduction: weights of run11b" in out.stdout and not (work / "chain/run13a/DONE").exists()
    # UNTIL at the seeded stage itself: the committed checkpoint scored against its own cache, nothing trained
    seeded_only = tmp_path / "seeded_only"
    assert run("--seed", "run11b", str(ckpt), work=seeded_only).returncode == 0
    out = run(work=seeded_only, UNTIL="run11b", AGAINST=str(v5), CALL_SECONDS="2000")
    assert out.returncode == 0, out.stderr
    assert f"--model {seeded_only}/chain/run11b/plain " in log.read_text().splitlines()[-2]
    assert log.read_text().splitlines()[-1].startswith(f"-m benchmarks.reproduction_check --grid {seeded_only}/full_scores.json")
    assert len([c for c in log.read_text().splitlines() if "train_model" in c]) == 1


def test_a_print_supervised_cycle_starts_from_its_checkpoint_past_the_examples_read_and_scores_val(tmp_path: Path) -> None:
    """print_lm_cycle.sh: one annealed cycle from INIT_FROM (the language model at 0.3, the print loss on), then
    300 val requests a task scored at the full configuration; a missing argument is refused before anything runs."""
    env, log = stand_in_python(tmp_path)
    script = ROOT / "benchmarks" / "gpu" / "print_lm_cycle.sh"
    work = tmp_path / "y"
    refused = subprocess.run(["bash", str(script), str(work), "runs/x/ckpt/plain"], cwd=ROOT, capture_output=True,
                             text=True, env=env)
    assert refused.returncode != 0 and "usage: print_lm_cycle.sh WORK INIT_FROM FIRST_EXAMPLE" in refused.stderr
    assert not log.exists()
    out = subprocess.run(["bash", str(script), str(work), "runs/x/ckpt/plain", "2580000", "370"], cwd=ROOT,
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    train = next(c for c in calls if "experiments.train_model" in c)
    for flag in ("--init-from runs/x/ckpt/plain", "--first-example 2580000", "--time-budget 370", "--stop-after 380",
                 "--lr-scale lm.=0.3 connector.=0.3", "--print-loss 1", "--print-sites tokens", "--split-digits",
                 "--patch-stem hybrid", "--batch-size 64", "--reuse 2", "--lr 3.5e-4", "synth_numbers=0.20"):
        assert flag in train, flag
    assert "--compile" not in train and "--resume" not in train
    assert "examples 2580000 to 2580223; a cycle from it starts at FIRST_EXAMPLE >= 2580224" in out.stdout  # 7 steps of 32
    grid = calls[-1]
    assert grid.startswith(f"-m experiments.eval_model_grid --model {work}/ckpt/plain --requests {work}/suite/val.jsonl")
    assert "--per-task 300 --configs tier=high,p=1,top_k=8,blocks=16" in grid and f"--out {work}/grid_val.json" in grid
    # the mix and the val requests a task are the caller's to set
    mix = "synth_chart=0.5 synth_chart_bind=0.5"
    out = subprocess.run(["bash", str(script), str(tmp_path / "z"), "runs/x/ckpt/plain", "2580000"], cwd=ROOT,
                         capture_output=True, text=True, env={**env, "TASK_WEIGHTS": mix, "VAL_PER_TASK": "1000"})
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    train = [c for c in calls if "experiments.train_model" in c][-1]
    assert f"--task-weights {mix}" in train and "synth_numbers" not in train
    assert "--per-task 1000 --configs" in calls[-1]


def test_the_chain_goes_on_past_the_default_to_the_candidates_print_supervised_cycles(tmp_path: Path) -> None:
    """run19u-run19y, the nineteenth run's cycles (their end: the candidate of that time, git cc0889e): reached only
    with UNTIL, seeded from v7 (run14), each with the print loss and the language model at 0.3, and compared with
    that checkpoint's own scores (a grid JSON, which only CHECK=score can read)."""
    grid = tmp_path / "candidate_scores.json"
    grid.write_text("{}")
    run, work, log = chain_runner(tmp_path, CHECK="score", UNTIL="run19y", AGAINST=str(grid))
    v7 = seed_checkpoint(tmp_path, "v7")

    refused = run(CHECK="build")
    assert refused.returncode == 2 and "is a grid of scores, not a cache: it needs CHECK=score" in refused.stderr
    assert run("--seed", "run14", str(v7)).returncode == 0
    status = run("--status").stdout
    assert "run14: seeded" in status and "run19u: to do (from run14, 1745 steps, lr 3.5e-4)" in status
    trains = []
    for stage in ("run19u", "run19w", "run19x", "run19y"):
        out = run()
        assert out.returncode == 0 and f"stage {stage} " in out.stdout, out.stderr
        trains.append([c for c in log.read_text().splitlines() if "train_model" in c][-1])
    for c, (first, steps, start) in zip(trains, (("2400000", "1745", "run14"), ("2460000", "1725", "run19u"),
                                                 ("2520000", "1732", "run19w"), ("2580000", "1580", "run19x"))):
        assert f"--first-example {first}" in c and f"--steps {steps}" in c and f"--init-from {work}/chain/{start}/plain" in c
        for flag in ("--print-loss 1", "--print-sites tokens", "--word-presence 0", "--lr-scale lm.=0.3 connector.=0.3",
                     "--lr 3.5e-4", "--split-digits", "synth_numbers=0.20"):
            assert flag in c, flag
    out = run()  # the last stage scored, then compared with the candidate's scores
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    assert f"--model {work}/chain/run19y/plain " in next(c for c in calls if "experiments.eval_model_grid" in c)
    assert calls[-1].startswith(f"-m benchmarks.reproduction_check --grid {work}/full_scores.json --against {grid}")
    assert "run20a: not in this chain (UNTIL=run19y)" in run("--status").stdout
    # the chain that ends at v7 stops at run14
    v7_chain = run("--status", work=tmp_path / "fresh", UNTIL="run14", AGAINST="", CHECK="build").stdout
    assert "run19u: not in this chain (UNTIL=run14)" in v7_chain


def test_the_twentieth_and_twenty_first_runs_cycles_continue_the_nineteenth_and_are_built_against_the_candidate_cache(
        tmp_path: Path) -> None:
    """run20a and run21b-run21c, the cycles behind cache/candidates/molmoe_small_suite_run21: seeded from the nineteenth
    run's last cycle (run19y), each stage with its recorded steps and first example from the one before, then built and
    compared with the candidate's cache; run21d, the cycle after the candidate, stays out of a chain that ends there."""
    candidate_cache = ROOT / "cache" / "candidates" / "molmoe_small_suite_v11.h5"
    run, work, log = chain_runner(tmp_path, UNTIL="run21c", AGAINST=str(candidate_cache))
    y = seed_checkpoint(tmp_path, "y")
    assert run("--seed", "run19y", str(y)).returncode == 0
    status = run("--status").stdout
    assert "run20a: to do (from run19y, 1677 steps, lr 3.5e-4)" in status
    assert "run21d: not in this chain (UNTIL=run21c)" in status
    for stage, start, first, steps in (("run20a", "run19y", "2640000", "1677"), ("run21b", "run20a", "2700000", "2108"),
                                       ("run21c", "run21b", "2767456", "2385")):
        before = len(log.read_text().splitlines()) if log.exists() else 0
        out = run()
        assert out.returncode == 0 and f"stage {stage} " in out.stdout, out.stderr
        train = next(c for c in log.read_text().splitlines()[before:] if "train_model" in c)
        for flag in (f"--init-from {work}/chain/{start}/plain", f"--first-example {first}", f"--steps {steps}",
                     "--print-loss 1", "--lr-scale lm.=0.3 connector.=0.3", "synth_numbers=0.20"):
            assert flag in train, (stage, flag)
    assert run().returncode == 0  # the build, and the comparison with the candidate's cache
    assert "experiments.build_cache" in log.read_text() and f"--model {work}/chain/run21c/plain" in log.read_text()
    last = log.read_text().splitlines()[-1]
    assert "benchmarks.report_live_cache" in last and f"--against {candidate_cache}" in last


def test_the_twenty_second_runs_chart_cycles_go_on_from_run21d_with_their_own_mixes(tmp_path: Path) -> None:
    """run21d and run22e-run22f, the cycles behind cache/candidates/molmoe_small_suite_run22f: seeded from the candidate
    of the twenty-first run (run21c), each with its recorded steps, first example and mix (the binding questions of
    synth_chart_bind beside the charts, then the charts at 0.35), then scored against the end's own scores."""
    grid = tmp_path / "f_scores.json"
    grid.write_text("{}")
    run, work, log = chain_runner(tmp_path, CHECK="score", UNTIL="run22f", AGAINST=str(grid))
    c = seed_checkpoint(tmp_path, "c")
    assert run("--seed", "run21c", str(c)).returncode == 0
    assert "run21d: to do (from run21c, 2037 steps, lr 3.5e-4)" in run("--status").stdout
    for stage, start, first, steps, mix in (
            ("run21d", "run21c", "2843776", "2037", "synth_chart=0.18 synth_count"),
            ("run22e", "run21d", "2908960", "2277", "synth_chart=0.20 synth_chart_bind=0.20"),
            ("run22f", "run22e", "2981824", "1966", "synth_chart=0.35 synth_chart_bind=0.15")):
        before = len(log.read_text().splitlines()) if log.exists() else 0
        out = run()
        assert out.returncode == 0 and f"stage {stage} " in out.stdout, out.stderr
        train = next(c for c in log.read_text().splitlines()[before:] if "train_model" in c)
        for flag in (f"--init-from {work}/chain/{start}/plain", f"--first-example {first}", f"--steps {steps}",
                     "--print-loss 1", "--lr-scale lm.=0.3 connector.=0.3", mix):
            assert flag in train, (stage, flag)
    assert run().returncode == 0  # the end scored, then compared with its own scores
    calls = log.read_text().splitlines()
    assert calls[-1].startswith(f"-m benchmarks.reproduction_check --grid {work}/full_scores.json --against {grid}")


def test_the_chain_ends_at_the_default_by_default_and_is_compared_with_the_committed_cache(tmp_path: Path) -> None:
    """Without UNTIL or AGAINST the chain's end is run22f, the default's checkpoint (molmoe-small-suite-v12), and its
    build is compared with cache/default/molmoe_small_suite.h5; seeded at run22e, only that last cycle trains."""
    run, work, log = chain_runner(tmp_path)
    e = seed_checkpoint(tmp_path, "e")
    assert run("--seed", "run22e", str(e)).returncode == 0
    status = run("--status").stdout
    assert "run22f: to do (from run22e, 1966 steps, lr 3.5e-4)" in status and "not in this chain" not in status
    out = run()
    assert out.returncode == 0 and "stage run22f " in out.stdout, out.stderr
    assert run().returncode == 0  # the build, and the comparison with the committed default in the same call
    calls = log.read_text().splitlines()
    assert f"--model {work}/chain/run22f/plain" in next(c for c in calls if "experiments.build_cache" in c)
    assert "benchmarks.report_live_cache" in calls[-1] and "--against cache/default/molmoe_small_suite.h5" in calls[-1]
    refused = run(UNTIL="run21d", work=tmp_path / "other")
    assert refused.returncode == 2 and "UNTIL=run21d needs AGAINST=CACHE" in refused.stderr
