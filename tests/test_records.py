"""Episode records of an evaluation and their replay: all reproduce; tampering and a different
cache are reported (exit code 1), not crashed on."""

import dataclasses
import json

import numpy as np
import pytest

from cache.synthetic import default_params, write_synthetic_cache
from experiments.evaluate import EvalConfig, evaluate
from experiments.records import load_records, validate
from experiments.validate_records import main


def _params(n):
    return dataclasses.replace(default_params(), n_samples=n, lang_dim=8, token_dim=8)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    d = tmp_path_factory.mktemp("records")
    cache = str(write_synthetic_cache(d / "small.h5", _params(200), seed=3))
    out = d / "eval"
    cfg = EvalConfig(cache=cache, out=str(out), policies=["always_cheapest", "random", "static", "router", "router2", "oracle"],
                     n_budgets=2, lambdas=[0.5], plots=False, records=True)
    evaluate(cfg, verbose=False)
    return cache, out / "records.npz", d


def _tampered(src, dst, **changes):
    meta, arrays = load_records(src)
    for k, f in changes.items():
        arrays[k] = f(arrays[k].copy())
    np.savez_compressed(dst, meta=np.array(json.dumps(meta)), **arrays)
    return dst


def test_every_episode_reproduces(recorded, capsys):
    cache, rec, _ = recorded
    meta, arrays = load_records(rec)
    kinds = {s["kind"] for s in meta["settings"]}
    modes = {s["reward"]["mode"] for s in meta["settings"]}
    assert kinds == {"flat", "two_stage"} and modes == {"hinge", "lagrangian"}
    n = arrays["reward"].size
    assert n > 0 and len(set(arrays["policy"])) >= 6 and arrays["obs_hash"].dtype.kind == "U"
    rep = validate(rec, cache)
    assert rep.ok and rep.n_reproduced == rep.n_episodes == n and not rep.mismatches
    assert main([str(rec), "--cache", cache]) == 0
    assert "100.00 %" in capsys.readouterr().out


def test_tampered_record_is_flagged(recorded, tmp_path):
    cache, rec, _ = recorded
    # every episode altered (reward by one ulp): every episode flagged
    bad = _tampered(rec, tmp_path / "ulp.npz", reward=lambda r: np.nextafter(r, np.inf))
    rep = validate(bad, cache)
    assert not rep.ok and rep.n_reproduced == 0 and all(m["fields"] == ["reward"] for m in rep.mismatches)
    assert main([str(bad), "--cache", cache, "--json", str(tmp_path / "rep.json")]) == 1
    assert json.loads((tmp_path / "rep.json").read_text())["ok"] is False

    # one flat episode's action changed: that episode only (its outcome differs)
    meta, arrays = load_records(rec)
    i = int(np.flatnonzero(arrays["action"][:, 1] == -1)[0])
    new = (arrays["action"][i, 0] + 1) % 225

    def act(a):
        a[i, 0] = new
        return a

    rep = validate(_tampered(rec, tmp_path / "act.npz", action=act), cache)
    assert [m["episode"] for m in rep.mismatches] == [i] and "config_index" in rep.mismatches[0]["fields"]
    # an unknown request id and a changed observation hash are reported too
    rep = validate(_tampered(rec, tmp_path / "id.npz", request_id=lambda r: np.where(np.arange(r.size) == 0, "nope", r),
                             obs_hash=lambda h: np.where(np.arange(h.size) == 1, "0" * 16, h)), cache)
    assert {m["episode"]: m["fields"] for m in rep.mismatches} == {0: ["request not in cache"], 1: ["obs_hash"]}


def test_different_cache_is_reported(recorded, tmp_path, capsys):
    cache, rec, d = recorded
    other = str(write_synthetic_cache(tmp_path / "other.h5", _params(200), seed=4))
    rep = validate(rec, other)
    assert not rep.ok and any("sha256" in p for p in rep.problems)
    assert rep.n_reproduced < rep.n_episodes
    assert main([str(rec), "--cache", other]) == 1
    assert "DIFFERENT cache" in capsys.readouterr().out


def test_unreadable_records_file(recorded, tmp_path, capsys):
    cache, _, _ = recorded
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    assert main([str(junk), "--cache", cache]) == 1
    assert "not a records file" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.npz"), "--cache", cache]) == 1
