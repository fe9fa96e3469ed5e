"""Issue 16, item 7: every artefact made from a synthetic cache says so (train summaries, run and
policy configs, evaluation CSVs and summary, log lines), and one made from a live-built cache
names its generator and model id."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from agents.registry import load_policy
from cache.reader import OutcomeCache, cache_label, data_label
from cache.schema import LABEL_KEYS
from cache.synthetic import default_params, write_synthetic_cache
from experiments import evaluate as ev
from experiments import train as tr

SYNTH = {"cache_label": "SYNTHETIC", "synthetic": True, "generator": "synthetic", "model_id": "synthetic"}
LIVE = {"cache_label": "live tiny-molmoe", "synthetic": False, "generator": "live", "model_id": "tiny-molmoe"}
#: Short training runs (env steps and the agents' sizes).
RUNS = {
    "linucb": (300, {}),
    "grpo": (256, {"contexts_per_iter": 16, "group_size": 8, "hidden_sizes": [16], "num_minibatches": 1}),
    "maskable_ppo": (64, {"n_envs": 4, "n_steps": 16, "batch_size": 32, "n_epochs": 1, "eval_freq_steps": 0,
                          "norm_samples": 64, "net_arch": [16]}),
}


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict[str, str]:
    """A small SYNTHETIC cache, and the same file relabelled as a live build of ``tiny-molmoe``
    (the attributes a live build writes: generator ``live``, ``synthetic`` false, its model id)."""
    d = tmp_path_factory.mktemp("label_caches")
    params = dataclasses.replace(default_params(), n_samples=300, lang_dim=8, token_dim=8)
    synth = write_synthetic_cache(d / "synth.h5", params, seed=5)
    live = d / "live.h5"
    shutil.copyfile(synth, live)
    with h5py.File(live, "a") as f:
        f.attrs["generator"], f.attrs["model_id"], f.attrs["synthetic"] = "live", "tiny-molmoe", False
    return {"synthetic": str(synth), "live": str(live)}


def expected(kind: str) -> dict:
    return SYNTH if kind == "synthetic" else LIVE


def test_the_label_of_a_cache() -> None:
    assert cache_label({"synthetic": True, "generator": "synthetic", "model_id": "synthetic"}) == SYNTH
    assert cache_label({"synthetic": False, "generator": "live", "model_id": "tiny-molmoe"}) == LIVE
    assert cache_label({"synthetic": True, "generator": "mine"})["cache_label"] == "SYNTHETIC (generator mine)"
    assert data_label("arrays", True)["cache_label"] == "SYNTHETIC (arrays)"
    assert data_label("arrays", False) == {"cache_label": "arrays", "synthetic": False, "generator": None, "model_id": None}
    assert tuple(SYNTH) == LABEL_KEYS


@pytest.mark.parametrize("kind", ["synthetic", "live"])
@pytest.mark.parametrize("agent", list(RUNS))
def test_training_artefacts_carry_the_label(tmp_path: Path, caches: dict, kind: str, agent: str, capsys) -> None:
    steps, overrides = RUNS[agent]
    out = tmp_path / agent
    rc = tr.main(["--agent", agent, "--cache", caches[kind], "--out", str(out), "--steps", str(steps), "--no-progress",
                  "--set", *(f"{k}={json.dumps(v)}" for k, v in overrides.items())])
    assert rc == 0
    want = expected(kind)
    # the run's own files
    summary = json.loads((out / "train_summary.json").read_text())
    config = yaml.safe_load((out / "config.yaml").read_text())
    for doc in (summary, config):
        assert {k: doc[k] for k in LABEL_KEYS} == want
    # the policy's config, and the policy loaded back
    meta_name = "policy.json" if agent == "maskable_ppo" else "config.json"
    meta = json.loads((out / "policy" / meta_name).read_text())
    assert {k: meta[k] for k in LABEL_KEYS} == want
    assert load_policy(f"{agent}:{out / 'policy'}").provenance == want
    # the agent's own summary where it writes one
    if (out / "summary.json").is_file():
        assert {k: json.loads((out / "summary.json").read_text())[k] for k in LABEL_KEYS} == want
    # the log line
    assert f"trained on the {want['cache_label']} cache" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["synthetic", "live"])
def test_evaluation_artefacts_carry_the_label(tmp_path: Path, caches: dict, kind: str, capsys) -> None:
    run = tmp_path / "run"
    tr.train_agent("linucb", cache=caches[kind], out=str(run), steps=300, progress=False)
    out = tmp_path / "eval"
    rc = ev.main(["--cache", caches[kind], "--out", str(out), "--policies", "static", "oracle",
                  f"linucb:{run}/policy", "--n-budgets", "2", "--lambdas", "--no-plots"])
    assert rc == 0
    want = expected(kind)
    for name in ("results.csv", "requests.csv.gz"):
        df = pd.read_csv(out / name)
        assert (df["synthetic"] == want["synthetic"]).all() and (df["cache_label"] == want["cache_label"]).all(), name
    summary = json.loads((out / "summary.json").read_text())
    assert {k: summary[k] for k in LABEL_KEYS} == want
    printed = capsys.readouterr().out
    assert f"[evaluate] {want['cache_label']} cache {caches[kind]}" in printed
    assert f"Mean over the budget grid ({want['cache_label']} cache)" in printed
    with OutcomeCache(caches[kind]) as oc:
        assert oc.label == want


@pytest.mark.parametrize("kind", ["synthetic", "live"])
def test_adaptivity_benchmark_names_the_cache_kind(caches: dict, kind: str, capsys) -> None:
    from benchmarks import bench_adaptivity

    bench_adaptivity.main(["--cache", caches[kind], "--no-regenerate"])
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("SYNTHETIC cache" if kind == "synthetic" else "live cache"), first


def test_adaptivity_by_task_splits_the_overall_means(caches: dict, capsys) -> None:
    """The by-task table's rows are the overall rows split by dataset: request-weighted, the task
    means give back the overall static / oracle / router means, and it is printed for a live cache."""
    from benchmarks import bench_adaptivity

    datasets = np.array(["a", "b", "a", "c", "b", "a"])
    rng = np.random.default_rng(0)
    per_request = {h: rng.random((3, 6)) for h in ("static", "oracle", "ridge(10)")}
    rows = bench_adaptivity.by_task(datasets, per_request, "ridge(10)")
    assert [(k, v["n"]) for k, v in rows.items()] == [("a", 3), ("b", 2), ("c", 1)]
    for key, h in (("static", "static"), ("oracle", "oracle"), ("best", "ridge(10)")):
        pooled = sum(v["n"] * v[key] for v in rows.values()) / len(datasets)
        assert pooled == pytest.approx(per_request[h].mean())
    assert rows["c"]["oracle"] == pytest.approx(per_request["oracle"][:, 3].mean())
    bench_adaptivity.main(["--cache", caches["live"], "--no-regenerate"])
    assert "by task (mean over the budgets" in capsys.readouterr().out


def test_adaptivity_benchmark_regenerates_a_synthetic_cache_from_its_own_parameters(caches: dict, capsys, tmp_path) -> None:
    """The latents ``q`` come from the cache's own ``generator_params`` (here 300 requests, seed 5),
    not from the default synthetic cache's, whose rows would be other requests'."""
    from benchmarks import bench_adaptivity
    from cache.synthetic import generate

    params, seed = bench_adaptivity.synthetic_params_of(caches["synthetic"])
    assert (seed, params.n_samples, params.lang_dim) == (5, 300, 8)
    with OutcomeCache(caches["synthetic"]) as oc:
        assert np.allclose(oc.score, generate(params, seed).score, equal_nan=True)
    bench_adaptivity.main(["--cache", caches["synthetic"], "--no-regenerate"])
    printed = capsys.readouterr().out
    assert "structure (q only − static)" in printed and "observable (best out-of-sample router" in printed
    bare = tmp_path / "no_params.h5"
    shutil.copyfile(caches["synthetic"], bare)
    with h5py.File(bare, "a") as f:
        del f.attrs["generator_params"]
    with pytest.raises(ValueError, match="generator_params"):
        bench_adaptivity.synthetic_params_of(str(bare))


def test_adaptivity_task_table_picks_each_tasks_own_best_configuration() -> None:
    """A static table per task: each test request gets the best mean train reward among its own task's train
    requests; a task the train split lacks gets the pooled static choice."""
    from benchmarks import bench_adaptivity

    train = np.array(["a", "a", "b", "b", "b"])
    r_train = np.array([[1.0, 0.0, 0.2], [0.8, 0.1, 0.3],  # task a: configuration 0
                        [0.0, 0.9, 0.5], [0.1, 0.7, 0.6], [0.0, 0.8, 0.2]])  # task b: configuration 1
    pooled = int(np.argmax(r_train.mean(0)))
    pick = bench_adaptivity.task_table_pick(train, np.array(["b", "a", "c", "a"]), r_train)
    assert pick.tolist() == [1, 0, pooled, 0] and pick.dtype == np.int64
