"""`experiments.demo` trains its agents in parallel processes (``--jobs``) with the same result as
one after the other: each agent trains on one torch thread either way."""

import dataclasses

import pandas as pd
import pytest

from experiments import demo


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    from cache.synthetic import default_params, write_synthetic_cache

    path = tmp_path_factory.mktemp("demo_jobs") / "toy.h5"
    params = dataclasses.replace(default_params(), n_samples=200, lang_dim=8, token_dim=8)
    return str(write_synthetic_cache(path, params, seed=5))


def test_parallel_training_gives_the_sequential_results(toy_cache, tmp_path, monkeypatch, capsys):
    # a short GRPO run: the demo's GRPO_FULL (2,000 iterations) would dominate the test's time
    monkeypatch.setitem(demo.DEMO_OVERRIDES, "grpo", {"iterations": 3, "contexts_per_iter": 16, "group_size": 4})
    results = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        demo.main(["--cache", toy_cache, "--out", str(out), "--agents", "grpo", "linucb", "--quick", "--jobs", str(jobs)])
        results[jobs] = pd.read_csv(out / "results.csv")
        for agent in ("grpo", "linucb"):
            assert (out / "agents" / agent / "policy").is_dir()
    printed = capsys.readouterr().out
    assert "in 2 processes" in printed
    learned = results[2][results[2]["policy"].isin(["grpo", "linucb"])]
    assert set(learned["policy"]) == {"grpo", "linucb"}
    pd.testing.assert_frame_equal(results[1].drop(columns=[c for c in results[1] if "time" in c]),
                                  results[2].drop(columns=[c for c in results[2] if "time" in c]))


def test_default_jobs_is_bounded_by_agents_and_cores():
    assert demo.default_jobs(1) == 1
    assert 1 <= demo.default_jobs(3) <= 3


@pytest.mark.parametrize("args, says", [(["--jobs", "0"], "--jobs must be at least 1"),
                                        (["--agents", "grpo", "sac"], "unknown agent 'sac'"),
                                        (["--agents", "grpo", "grpo"], "names an agent twice")])
def test_bad_arguments_are_refused_before_anything_trains(toy_cache, tmp_path, capsys, args, says):
    with pytest.raises(SystemExit):
        demo.main(["--cache", toy_cache, "--out", str(tmp_path / "o"), *args])
    assert says in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
