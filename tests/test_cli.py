"""The command lines on user mistakes and re-runs (issue 16, items 3, 4, 5, 8, 9): one-line
errors with exit code 1 / 2 and no empty output folder, ``--debug`` tracebacks, a non-empty
``--out`` refused, every checkpoint checked before evaluating, progress bars, honest messages,
readable Pareto plots and clean file names."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cache.schema import CacheError
from cache.synthetic import default_params, write_synthetic_cache
from experiments import evaluate as ev
from experiments import train as tr
from experiments.cli_errors import run_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cli_cache") / "small.h5"
    params = dataclasses.replace(default_params(), n_samples=300, lang_dim=8, token_dim=8)
    return str(write_synthetic_cache(path, params, seed=5))


@pytest.fixture(scope="module")
def truncated_cache(small_cache, tmp_path_factory) -> str:
    data = Path(small_cache).read_bytes()
    path = tmp_path_factory.mktemp("cli_bad") / "truncated.h5"
    path.write_bytes(data[: len(data) // 3])
    return str(path)


@pytest.fixture(scope="module")
def bandit_run(small_cache, tmp_path_factory) -> Path:
    """A linucb run under <dir>/s0 (its policy at <dir>/s0/policy)."""
    base = tmp_path_factory.mktemp("runs")
    tr.train_agent("linucb", cache=small_cache, out=str(base / "s0"), seed=0, steps=1000, progress=False)
    return base


def one_line_error(capsys, code: int, rc: int, *parts: str) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == code, (rc, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "error:" in err
    for p in parts:
        assert p in err, (p, err)
    return err


# ---------------------------------------------------------------------------------------- item 3: one-line errors
def test_train_bad_and_truncated_cache(capsys, tmp_path, truncated_cache) -> None:
    for cache in (str(tmp_path / "missing.h5"), truncated_cache):
        out = tmp_path / "run" / "nested"
        rc = tr.main(["--agent", "linucb", "--cache", cache, "--out", str(out), "--steps", "10"])
        one_line_error(capsys, 1, rc, cache)
        assert not (tmp_path / "run").exists()  # no empty output folder left behind
    with pytest.raises(CacheError):
        tr.main(["--agent", "linucb", "--cache", truncated_cache, "--out", str(tmp_path / "x"), "--debug"])
    assert not (tmp_path / "x").exists()


def test_train_bad_set_and_config(capsys, tmp_path, small_cache) -> None:
    base = ["--agent", "linucb", "--cache", small_cache, "--out", str(tmp_path / "o"), "--steps", "10"]
    one_line_error(capsys, 2, tr.main(base + ["--set", "bandit.alpha"]), "--set expects KEY=VALUE")
    one_line_error(capsys, 2, tr.main(base + ["--set", "bogus=1"]), "unknown config key 'bogus'", "num_envs")
    one_line_error(capsys, 2, tr.main(base + ["--set", "bandit.alpha=fast"]), "bandit.alpha", "number")
    one_line_error(capsys, 2, tr.main(base + ["--set", "env.rewardz=hard"]), "rewardz", "--set env.KEY=VALUE", "reward")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("bandit: [1, 2\n")
    one_line_error(capsys, 2, tr.main(base + ["--config", str(bad_yaml)]), "not valid YAML")
    one_line_error(capsys, 1, tr.main(base + ["--config", str(tmp_path / "none.yaml")]), "none.yaml")
    assert not (tmp_path / "o").exists()



def test_a_repeated_set_flag_keeps_every_override() -> None:
    """``--set a=1 --set b=2`` is ``--set a=1 b=2``: each flag adds to the last (a probe once ran flat PPO with
    ``--set n_epochs=10 --set n_steps=128`` and trained at 4 epochs, the first flag dropped)."""
    args = tr.build_parser().parse_args(["--agent", "ppo", "--cache", "c.h5", "--out", "o",
                                         "--set", "n_epochs=10", "--set", "n_steps=128", "ent_coef=0.01"])
    assert tr.parse_set(args.set) == {"n_epochs": 10, "n_steps": 128, "ent_coef": 0.01}

def test_steps_flag(capsys, tmp_path, small_cache) -> None:
    helptext = tr.build_parser().format_help()
    assert "environment steps to train for" in " ".join(helptext.split())
    for bad in ("0", "-5", "ten"):
        with pytest.raises(SystemExit) as e:
            tr.main(["--agent", "linucb", "--cache", small_cache, "--out", str(tmp_path / "o"), "--steps", bad])
        assert e.value.code == 2
        assert "--steps" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--steps must be a positive"):
        tr.train_agent("linucb", cache=small_cache, out=str(tmp_path / "o"), steps=0)
    assert not (tmp_path / "o").exists()


def test_evaluate_errors(capsys, tmp_path, small_cache, truncated_cache) -> None:
    out = tmp_path / "ev"
    rc = ev.main(["--cache", small_cache, "--out", str(out), "--policies", "static", "gpro"])
    one_line_error(capsys, 2, rc, "unknown policy 'gpro'", "always_full", "oracle", "AGENT:DIR", "grpo", "maskable_ppo")
    rc = ev.main(["--cache", small_cache, "--out", str(out), "--policies", "nope:dir"])
    one_line_error(capsys, 2, rc, "'nope:dir'", "linucb")
    rc = ev.main(["--cache", truncated_cache, "--out", str(out), "--policies", "static"])
    one_line_error(capsys, 1, rc, truncated_cache)
    rc = ev.main(["--cache", small_cache, "--out", str(out), "--policies", f"grpo:{tmp_path / 'none'}"])
    one_line_error(capsys, 2, rc, "no such checkpoint folder", "seed 0")
    assert not out.exists()
    with pytest.raises(ValueError, match="unknown policy"):
        ev.main(["--cache", small_cache, "--out", str(out), "--policies", "gpro", "--debug"])


def test_build_cache_entry_errors(capsys, tmp_path) -> None:
    from experiments import build_cache

    bad = tmp_path / "requests.jsonl"
    bad.write_text('{"id": "a", "question": "?"\n')
    argv = ["--model", str(tmp_path / "ckpt"), "--dataset", str(bad), "--out", str(tmp_path / "c" / "x.h5")]
    rc = run_cli(build_cache.main, argv, prog="python -m experiments.build_cache")
    one_line_error(capsys, 2, rc, "requests.jsonl:1: malformed JSON")
    rc = run_cli(build_cache.main, ["--model", "m", "--dataset", str(tmp_path / "none.jsonl"), "--out", "x.h5"],
                 prog="python -m experiments.build_cache")
    one_line_error(capsys, 1, rc, "none.jsonl")
    assert not (tmp_path / "c").exists()
    with pytest.raises(ValueError, match="malformed JSON"):
        run_cli(build_cache.main, argv + ["--debug"], prog="python -m experiments.build_cache")


def test_a_gpu_asked_for_where_torch_sees_none_is_one_line(capsys, tmp_path, monkeypatch) -> None:
    import torch

    from experiments import eval_model_grid, train_model
    from experiments.cli_errors import torch_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert torch_device(None).type == "cpu" and torch_device("cpu").type == "cpu"
    for mod, argv in ((eval_model_grid, ["--model", "m", "--requests", "r.jsonl", "--out", str(tmp_path / "g.json")]),
                      (train_model, ["--suite", str(tmp_path), "--out", str(tmp_path / "ckpt")])):
        rc = run_cli(mod.main, argv + ["--device", "cuda"], prog=mod.__name__)
        one_line_error(capsys, 2, rc, "--device cuda: torch sees no CUDA GPU")
    rc = run_cli(eval_model_grid.main, ["--model", "m", "--requests", "r", "--out", "o", "--device", "gpu"], prog="p")
    one_line_error(capsys, 2, rc, "--device 'gpu'")
    assert not (tmp_path / "ckpt").exists()


def test_python_dash_m_entry_points(tmp_path, truncated_cache) -> None:
    for mod, extra in (("experiments.train", ["--agent", "linucb"]), ("experiments.evaluate", [])):
        p = subprocess.run([sys.executable, "-m", mod, "--cache", truncated_cache, "--out", str(tmp_path / "o"), *extra],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert p.returncode == 1 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert p.stderr.startswith(f"python -m {mod}: error: ")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    p = subprocess.run([sys.executable, "-m", "experiments.build_cache", "--model", str(tmp_path / "ckpt"),
                        "--dataset", str(bad), "--out", str(tmp_path / "o" / "c.h5")],
                       cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and "bad.jsonl:1: malformed JSON" in p.stderr
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------- item 4: --out
def test_train_refuses_non_empty_out(capsys, tmp_path, small_cache) -> None:
    out = tmp_path / "run"
    args = ["--agent", "linucb", "--cache", small_cache, "--out", str(out), "--steps", "500", "--no-progress"]
    assert tr.main(args) == 0
    capsys.readouterr()
    (out / "stale_from_another_agent.npz").write_bytes(b"x")
    one_line_error(capsys, 2, tr.main(args), "--out", "not empty", "--overwrite")
    assert (out / "stale_from_another_agent.npz").exists()
    assert tr.main(args + ["--overwrite"]) == 0  # replaces the previous run: nothing of it is left
    assert not (out / "stale_from_another_agent.npz").exists() and (out / "config.yaml").exists()
    capsys.readouterr()
    other = tmp_path / "notes"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    one_line_error(capsys, 2, tr.main(["--agent", "linucb", "--cache", small_cache, "--out", str(other), "--overwrite"]),
                   "holds no training run")
    assert (other / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert tr.main(["--agent", "linucb", "--cache", small_cache, "--out", str(empty), "--steps", "300", "--no-progress"]) == 0


# ---------------------------------------------------------------------------------------- item 5: checkpoints first
def test_evaluate_checks_every_seed_checkpoint_first(capsys, tmp_path, small_cache, bandit_run, monkeypatch) -> None:
    ran = []
    monkeypatch.setattr(ev, "run_flat", lambda *a, **k: ran.append(1))  # nothing may run
    monkeypatch.setattr(ev, "run_two_stage", lambda *a, **k: ran.append(1))
    out = tmp_path / "ev"
    spec = f"linucb:{bandit_run}/s{{seed}}/policy"
    rc = ev.main(["--cache", small_cache, "--out", str(out), "--policies", "static", spec, "--seeds", "0", "1", "2"])
    err = one_line_error(capsys, 2, rc, f"{bandit_run}/s1/policy (seed 1)", f"{bandit_run}/s2/policy (seed 2)",
                         "2 checkpoint(s)")
    assert "seed 0" not in err
    assert ran == [] and not out.exists()
    (bandit_run / "s1" / "policy").mkdir(parents=True)  # present but empty: unreadable
    rc = ev.main(["--cache", small_cache, "--out", str(out), "--policies", spec, "--seeds", "0", "1"])
    one_line_error(capsys, 2, rc, "(seed 1): cannot load the checkpoint")
    assert ran == [] and not out.exists()


# ---------------------------------------------------------------------------------------- item 8: progress, messages
def test_bandit_and_maskable_ppo_show_progress(capsys, tmp_path, small_cache) -> None:
    tr.train_agent("lints", cache=small_cache, out=str(tmp_path / "b"), steps=600, progress=True)
    err = capsys.readouterr().err
    assert "lin_ts" in err and "step/s" in err and "768/768" in err, err[-500:]  # 600 rounded up to whole rounds of 256
    overrides = {"n_envs": 4, "n_steps": 16, "batch_size": 32, "n_epochs": 1, "eval_freq_steps": 0, "norm_samples": 64}
    tr.train_agent("maskable_ppo", cache=small_cache, out=str(tmp_path / "m"), steps=64, progress=True,
                   overrides=overrides)
    err = capsys.readouterr().err
    assert "maskable_ppo" in err and "100%" in err and "64.0/64.0" in err, err[-500:]  # a tqdm bar over env steps
    tr.train_agent("linucb", cache=small_cache, out=str(tmp_path / "q"), steps=300, progress=False)
    assert "step/s" not in capsys.readouterr().err


def test_evaluate_no_plots_claims_none_and_file_names(capsys, tmp_path, small_cache, bandit_run) -> None:
    spec = f"linucb:{bandit_run}/s0/policy"
    ev.main(["--cache", small_cache, "--out", str(tmp_path / "np"), "--policies", "static", spec, "--n-budgets", "2",
             "--lambdas", "--no-plots"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "wrote" in last and "plot" not in last.split(" to ")[0], last
    assert not list((tmp_path / "np").glob("*.png"))
    ev.main(["--cache", small_cache, "--out", str(tmp_path / "p"), "--policies", "static", "random", spec,
             "--n-budgets", "2", "--lambdas"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    pngs = sorted(p.name for p in (tmp_path / "p").glob("*.png"))
    assert "plots" in last.split(" to ")[0] and "knobs_random_matched_linucb.png" in pngs, pngs
    assert all(not Path(n).stem.endswith("_") and "__" not in n for n in pngs), pngs
    assert ev._safe("random_matched[grpo]") == "random_matched_grpo" and ev._safe("uncertainty@q0.5") == "uncertainty_q0.5"


# ---------------------------------------------------------------------------------------- item 9: Pareto plot
def test_pareto_figure_layout(small_cache) -> None:
    import pandas as pd
    from matplotlib.colors import to_rgba

    from envs.replay_data import ReplayData
    from experiments.plots import pareto_figure

    test = ReplayData.from_cache(small_cache, "test")
    rows = []
    for i, pol in enumerate(["static", "router", "grpo", "linucb", "random_matched[grpo]"]):
        for b in (10.0, 20.0):
            for ds in ["all", *sorted(set(test.datasets))]:
                # "router" and "grpo" coincide exactly: both must stay visible
                y = 0.5 if pol in ("router", "grpo") else 0.3 + 0.05 * i
                rows.append({"policy": pol, "budget_ms": b, "dataset": ds, "mean_latency_ms": b, "accuracy": y + b / 100})
    results = pd.DataFrame(rows)
    for ds in ["all", sorted(set(test.datasets))[0]]:
        sp = ev.static_points(test, dataset=ds)
        assert len(sp) == 225 and set(sp["label"]) == {"", "full", "cheapest"}
        fig = pareto_figure(results, sp, title="t", dataset=ds)
        ax = fig.axes[0]
        cloud = ax.collections[0]
        assert len(cloud.get_offsets()) == 225
        assert np.allclose(cloud.get_facecolor()[0][:3], to_rgba("0.72")[:3])  # grey
        assert {t.get_text() for t in ax.texts} >= {"full", "cheapest"}
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        assert set(lines) == {"static", "router", "grpo", "linucb", "random_matched[grpo]"}
        styles = {(to_rgba(ln.get_color()), ln.get_marker()) for ln in lines.values()}
        assert len(styles) == len(lines)  # distinct colour and marker per policy
        # the coinciding pair: hollow markers of different sizes, so the one below shows around the one on top
        a, b = lines["router"], lines["grpo"]
        assert a.get_markerfacecolor() == "none" and b.get_markerfacecolor() == "none"
        assert a.get_markersize() != b.get_markersize()
        assert lines["random_matched[grpo]"].get_linestyle() == "--"
    full_all = ev.static_points(test).set_index("label").loc["full", "accuracy"]
    full_ds = ev.static_points(test, dataset=sorted(set(test.datasets))[0]).set_index("label").loc["full", "accuracy"]
    assert full_all != full_ds  # per-dataset plots use that dataset's own static cloud


# ---------------------------------------------------------------------------------------- item 8: validate a subset build
def _subset_cache(path: Path, configs: list[int] | None, extra_outcome: bool = False) -> None:
    from cache.writer import CacheWriter
    from envs.knob_space import KnobSpace

    ks = KnobSpace()
    rng = np.random.default_rng(0)
    n = 4
    crops = np.tile([3, 6, 12], (n, 1))
    gp = {"test": True} if configs is None else {"build": {"configs": configs, "config_spec": "0-2"}}
    with CacheWriter.create(path, knob_space=ks, n_samples=n, lang_dim=3, token_dim=4, model_id="m",
                            generator="live", generator_params=gp, datasets=["vqa"], metrics={"vqa": "vqa_score"},
                            synthetic=False) as w:
        w.write_samples(np.arange(n), id=[f"q{i}" for i in range(n)], dataset=[0] * n, split=["train"] * n,
                        question=["?"] * n, answers=[["a"]] * n, prompt_tokens=rng.integers(10, 50, n), crops=crops,
                        vision_tokens=crops * 144, lang_feature=rng.normal(size=(n, 3)),
                        latency_token=rng.normal(size=(n, 3, 5, 4)))
        sel = np.arange(3)
        w.write_outcomes(np.arange(n), sel, score=rng.uniform(size=(n, 3)), output_tokens=np.ones((n, 3), dtype=int))
        if extra_outcome:
            w.write_outcomes(np.arange(1), np.array([100]), score=np.full((1, 1), 0.5), output_tokens=np.ones((1, 1), dtype=int))


def test_validate_accepts_a_subset_build_as_partial(tmp_path, capsys) -> None:
    from cache.validate import main as validate_main
    from cache.validate import validate

    sub = tmp_path / "subset.h5"
    _subset_cache(sub, [0, 1, 2])
    assert validate(sub) == []
    assert validate_main([str(sub)]) == 0
    out = capsys.readouterr().out
    assert "PARTIAL: subset build of 3 of 225 configurations (build_cache --configs 0-2)" in out
    assert "VALID: partial" in out
    stray = tmp_path / "stray.h5"  # an outcome outside the selected configurations
    _subset_cache(stray, [0, 1, 2], extra_outcome=True)
    assert any("outside the subset build" in p for p in validate(stray))
    full = tmp_path / "undocumented.h5"  # the same holes without the documented subset: coverage problems
    _subset_cache(full, None)
    assert any("coverage below" in p for p in validate(full))
    assert validate_main([str(full)]) == 1
    assert "partial" not in capsys.readouterr().out


def test_evaluate_two_checkpoints_of_one_agent_are_two_rows(capsys, tmp_path, small_cache, bandit_run) -> None:
    """NAME=agent:DIR names a checkpoint; without names two checkpoints of one agent are refused
    (they used to be merged into one 'linucb' row)."""
    spec = f"{bandit_run}/s0/policy"
    out = tmp_path / "two"
    rc = ev.main(["--cache", small_cache, "--out", str(out), "--policies", f"linucb:{spec}", f"linucb:{spec}"])
    one_line_error(capsys, 2, rc, "would both be reported as 'linucb'", "NAME=agent:DIR")
    assert not out.exists()
    assert ev.main(["--cache", small_cache, "--out", str(out), "--policies", "static", f"first=linucb:{spec}",
                    f"second=linucb:{spec}", "--n-budgets", "2", "--no-plots"]) == 0
    res = pd.read_csv(out / "results.csv")
    both = res[res.policy.isin(["first", "second"]) & (res.dataset == "all")]
    assert set(both.policy) == {"first", "second"}
    # the same checkpoint twice: the same numbers under both names
    a, b = (both[both.policy == n].sort_values("budget_ms")["mean_reward"].to_numpy() for n in ("first", "second"))
    np.testing.assert_allclose(a, b)
