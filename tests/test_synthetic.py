"""Tests of the SYNTHETIC outcome-cache generator (cache.synthetic, cache.synthetic_calibration,
cache.molmo_tiling): calibration, monotonicity, informativeness, tiling, determinism, writing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cache.molmo_tiling import candidate_tilings, crops_and_tokens, select_tiling, vision_token_count
from cache.synthetic import (
    DEFAULT_DATASETS,
    GEN_BLOCK,
    SyntheticParams,
    calibrate,
    generate,
    main,
    select_datasets,
    write_synthetic_cache,
)
from cache.synthetic_calibration import calibration_table, expected_score, knob_deltas, score_from_margin
from envs.knob_space import KnobConfig

TEXTVQA = "synthetic-textvqa"


@pytest.fixture(scope="module")
def data():
    """The default model at N = 5000, seed 0 (≈ 1 s)."""
    return generate(SyntheticParams(n_samples=5000), 0)


def _per_config_mean(d, name: str) -> np.ndarray:
    j = d.datasets.index(name)
    return d.score[d.dataset == j].astype(np.float64).mean(axis=0)


def _r2_holdout(X: np.ndarray, y: np.ndarray, n_train: int) -> float:
    X = np.c_[X.astype(np.float64), np.ones(len(X))]
    Xt = X[:n_train]
    w = np.linalg.solve(Xt.T @ Xt, Xt.T @ y[:n_train])  # least squares by the normal equations
    resid = y[n_train:] - X[n_train:] @ w
    return float(1 - resid.var() / y[n_train:].var())


def _rank_corr(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


# ---------------------------------------------------------------------------------- calibration
def test_full_and_cheapest_hit_targets_per_dataset(data):
    ks = data.knob_space
    full, cheap = ks.index(ks.full_config), ks.index(ks.cheapest_config)
    for spec in DEFAULT_DATASETS:
        per_cfg = _per_config_mean(data, spec.name)
        assert abs(per_cfg[full] - spec.full_target) <= 0.03, (spec.name, per_cfg[full])
        assert abs(per_cfg[cheap] - spec.cheapest_target) <= 0.03, (spec.name, per_cfg[cheap])


def test_block_removal_and_topk_costs_textvqa(data):
    ks = data.knob_space
    per_cfg = _per_config_mean(data, TEXTVQA)
    full = per_cfg[ks.index(ks.full_config)]
    for blocks, target in zip((15, 14, 13, 12), (3.1, 5.4, 7.5, 18.4)):
        cost = 100 * (full - per_cfg[ks.index(KnobConfig("high", 1, 8, blocks))])
        assert abs(cost - target) <= 1.5, (blocks, cost)
    k4 = 100 * (full - per_cfg[ks.index(KnobConfig("high", 1, 4, 16))])
    k6 = 100 * (full - per_cfg[ks.index(KnobConfig("high", 1, 6, 16))])
    assert 3.0 <= k4 <= 8.0 and 1.0 <= k6 <= 3.0 and k6 < k4


def test_solver_exact_on_its_sample_and_penalties_monotone():
    params = SyntheticParams()
    cal = calibrate(params)
    assert set(cal) == {s.name for s in params.datasets}
    for name, c in cal.items():
        for key, target in c.targets.items():
            assert c.achieved[key] == pytest.approx(target, abs=1e-5), (name, key)
        assert c.block_penalty[0] == 0 and np.all(np.diff(c.block_penalty) >= 0)
        assert c.topk_penalty[-1] == 0 and np.all(np.diff(c.topk_penalty) <= 0)
        assert c.vision_penalty > 0 and c.medium_share[0] == pytest.approx(1.0) and c.medium_share[-1] == 0.0
    # knob costs scale with a dataset's full→cheapest gap: VQAv2's (0.18) is below TextVQA's (0.39)
    assert cal["synthetic-vqav2"].block_penalty[-1] < cal[TEXTVQA].block_penalty[-1]
    # solved values depend on the parameters only, not on the data seed
    assert generate(SyntheticParams(n_samples=10), 1).generator_params["calibration"] == \
        generate(SyntheticParams(n_samples=10), 2).generator_params["calibration"]


def test_infeasible_calibration_is_a_clear_error():
    # block and top-k costs larger than the whole full→cheapest gap leave nothing for the tier
    with pytest.raises(ValueError, match="infeasible"):
        calibrate(SyntheticParams(block_costs_pts=(10.0, 20.0, 30.0, 45.0)))


def test_expected_score_matches_sampled_scores():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 1.5, 200_000)
    u = rng.random(x.size)
    m = x - np.log(u / (1 - u))
    for metric in ("vqa_score", "anls", "mc"):
        guess = (rng.random(x.size) < 1 / 3) if metric == "mc" else None
        s = score_from_margin(metric, m, vqa_band=0.4, anls_band=1.0, guess_correct=guess)
        e = expected_score(metric, x, vqa_band=0.4, anls_band=1.0, n_choices=np.full(x.size, 3.0))
        assert s.mean() == pytest.approx(e.mean(), abs=4e-3), metric
    levels = np.unique(score_from_margin("vqa_score", m, vqa_band=0.4, anls_band=1.0))
    assert np.allclose(levels, [0.0, 0.3, 0.6, 0.9, 1.0])


# ---------------------------------------------------------------------------------- structure
def test_monotone_ish_in_dominating_configurations(data):
    t = data.knob_space.config_table()
    tier, p, k, b = t["tier"], t["p"], t["top_k"], t["blocks"]
    dom = ((tier[:, None] >= tier[None]) & (p[:, None] >= p[None]) & (k[:, None] >= k[None])
           & (b[:, None] >= b[None]) & ~np.eye(len(tier), dtype=bool))
    rich, cheap = np.nonzero(dom)
    score = data.score[:2000]  # 2000 requests × 9225 pairs are plenty
    s_rich, s_cheap = score[:, rich], score[:, cheap]
    assert np.mean(s_rich >= s_cheap) >= 0.90
    differ = s_rich != s_cheap
    assert np.mean(s_rich[differ] > s_cheap[differ]) >= 0.8
    assert np.any(s_rich < s_cheap), "jitter should make outcomes only monotone-ish"


def test_identical_tiling_gives_identical_outcomes(data):
    ks = data.knob_space
    same = data.vision_tokens[:, 1] == data.vision_tokens[:, 2]
    assert 0.1 < same.mean() < 0.9  # COCO-like photos: medium and high tilings often coincide
    med = [ks.index(KnobConfig("medium", c.p, c.top_k, c.blocks)) for c in ks.configs if c.tier == "high"]
    high = [ks.index(c) for c in ks.configs if c.tier == "high"]
    assert np.array_equal(data.score[same][:, med], data.score[same][:, high])
    assert np.array_equal(data.output_tokens[same][:, med], data.output_tokens[same][:, high])
    assert not np.array_equal(data.score[~same][:, med], data.score[~same][:, high])


def test_jitter_is_low_rank_across_neighbouring_configurations(data):
    from cache.synthetic_model import _config_arrays, _jitter

    params, ks = SyntheticParams(), data.knob_space
    cfg = _config_arrays(ks)
    iid = np.random.default_rng(0).standard_normal((20000, len(ks.tiers), int(cfg["n_nontier"])))
    per_config = lambda p: _jitter(p, 0, 0, iid, cfg)[:, cfg["tier"], cfg["nontier"]]  # noqa: E731
    j = per_config(params)
    assert abs(j.std() - params.jitter_sd) < 0.005  # the marginal the calibration assumes
    corr = lambda a, b: np.corrcoef(j[:, ks.index(a)], j[:, ks.index(b)])[0, 1]  # noqa: E731
    full = KnobConfig("high", 1, 8, 16)
    near, far, cheapest = corr(full, KnobConfig("high", 1, 7, 16)), corr(full, KnobConfig("high", 1, 4, 16)), \
        corr(full, ks.cheapest_config)
    assert 0.6 < near < 0.8 and far < near - 0.05 and 0.2 < cheapest < far
    # jitter_iid_share=1 is the independent jitter of generator version 1, from the same draws
    assert np.array_equal(per_config(params.replace(jitter_iid_share=1.0)),
                          params.jitter_sd * iid[:, cfg["tier"], cfg["nontier"]])
    # in the outcomes: neighbouring configurations disagree less often than with independent jitter
    indep = generate(SyntheticParams(n_samples=5000, jitter_iid_share=1.0), 0)
    a, b = ks.index(full), ks.index(KnobConfig("high", 1, 7, 16))
    flips = lambda d: np.mean(d.score[:, a] != d.score[:, b])  # noqa: E731
    assert flips(data) < 0.8 * flips(indep)
    with pytest.raises(ValueError, match="jitter_iid_share"):
        SyntheticParams(jitter_iid_share=1.5)


def test_latency_tokens_more_informative_at_later_p(data):
    delta, rho = data.latents["difficulty"], data.latents["robustness"]
    n_train = 3500
    high = data.knob_space.tiers.index("high")
    r2_delta = [_r2_holdout(data.latency_token[:, high, j], delta, n_train) for j in range(5)]
    r2_rho = [_r2_holdout(data.latency_token[:, high, j], rho, n_train) for j in range(5)]
    assert 0.1 <= r2_delta[0] <= 0.35 and 0.5 <= r2_delta[4] <= 0.75, r2_delta
    assert r2_delta[4] - r2_delta[0] > 0.25 and r2_rho[4] - r2_rho[0] > 0.2
    assert np.all(np.diff(r2_delta) > -0.03)  # rising (up to probe noise)
    # the language feature hints at difficulty only weakly
    assert _r2_holdout(data.lang_feature, delta, n_train) < 0.2


def test_uncertainty_tracks_cheapest_correctness(data):
    q = data.latents["q"][:, data.knob_space.index(data.knob_space.cheapest_config)]
    entropy, margin = data.uncertainty[:, 0], data.uncertainty[:, 1]
    assert np.all(entropy >= 0) and np.all((margin >= 0) & (margin <= 1))
    assert _rank_corr(margin, q) > 0.6 and _rank_corr(entropy, q) < -0.5
    assert _rank_corr(margin, q) < 0.99  # noisy, not a copy of q


def test_token_counts_and_output_lengths(data):
    ks = data.knob_space
    assert data.vision_tokens.min() >= 250 and data.vision_tokens.max() <= 1400
    assert np.all(data.crops <= np.array(ks.crops) + 1) and np.all(data.crops >= 2)
    assert np.all(np.diff(data.crops, axis=1) >= 0) and np.all(np.diff(data.vision_tokens, axis=1) >= 0)
    vqa = np.isin(data.dataset, [data.datasets.index(n) for n, m in data.metrics.items() if m == "vqa_score"])
    assert np.all(data.output_tokens >= 1) and np.mean(data.output_tokens[vqa] <= 5) > 0.9
    assert 14 <= np.median(data.prompt_tokens[vqa]) <= 40
    # wrong answers at the cheapest configuration are longer on average than at the full one
    cheap, full = ks.index(ks.cheapest_config), ks.index(ks.full_config)
    assert data.output_tokens[:, cheap].mean() > data.output_tokens[:, full].mean()


def test_measured_latency_is_estimator_times_small_noise(data):
    from model_runtime.latency_estimator import LatencyEstimator, predict_grid

    est = LatencyEstimator.default()
    pred = predict_grid(est, data.knob_space, crops=data.crops, vision_tokens=data.vision_tokens,
                        prompt_tokens=data.prompt_tokens, output_tokens=data.output_tokens)
    ratio = data.measured_ms[..., 1] / pred["prefill_ms"]
    assert abs(float(np.median(ratio)) - 1) < 0.01 and 0.04 < float(np.std(np.log(ratio))) < 0.06
    assert np.all(data.measured_ms[..., 0] > 0)


def test_splits_ids_and_synthetic_labels(data):
    for j, _ in enumerate(data.datasets):
        counts = np.bincount(data.split[data.dataset == j], minlength=3)
        assert counts.tolist() == [700, 100, 200]
    assert len(set(data.id.tolist())) == 5000 and data.id[123] == "syn-000123"
    assert all(n.startswith("synthetic-") for n in data.datasets)
    assert all("SYNTHETIC" in q for q in data.question[:50]) and "SYNTHETIC" in json.loads(data.answers[0])[0]
    gp = data.generator_params
    assert gp["synthetic"] is True and gp["generator"] == "synthetic" and gp["seed"] == 0
    assert gp["targets"]["synthetic-docvqa"]["source"].startswith("ASSUMPTION")
    assert gp["targets"][TEXTVQA]["source"].startswith("measured")
    assert SyntheticParams.from_dict(gp["params"]) == SyntheticParams(n_samples=5000)


# ---------------------------------------------------------------------------------- determinism
def test_determinism_and_row_ranges():
    params = SyntheticParams(n_samples=GEN_BLOCK + 300)
    a, b, c = generate(params, 7), generate(params, 7), generate(params, 8)
    part = generate(params, 7, start=GEN_BLOCK - 50, stop=GEN_BLOCK + 20)
    for name in ("score", "latency_token", "lang_feature", "measured_ms", "output_tokens", "uncertainty", "crops"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name
        assert np.array_equal(getattr(part, name), getattr(a, name)[GEN_BLOCK - 50:GEN_BLOCK + 20]), name
    assert not np.array_equal(a.score, c.score) and not np.array_equal(a.lang_feature, c.lang_feature)


# ---------------------------------------------------------------------------------- tiling
def test_molmo_tiling_known_cases():
    # a 640×480 photo: (1, 2) at 3 crops, (2, 3) at 6 and 12; tokens 158 + 2 + (8r+4)(8c+5)
    crops, tokens, tiling = crops_and_tokens(np.array([480]), np.array([640]), (3, 6, 12))
    assert tiling[0].tolist() == [[1, 2], [2, 3], [2, 3]]
    assert crops[0].tolist() == [3, 7, 7] and tokens[0].tolist() == [412, 740, 740]
    assert int(vision_token_count(1, 1)) == 316
    assert select_tiling(100, 100, 12).tolist() == [1, 1]  # smaller than one window
    # a large page must downscale into the best-fitting tiling with at most max_crops tiles
    rc = select_tiling(2200, 1700, 12)
    assert rc[0] * rc[1] <= 12 and rc[0] > rc[1]
    cand = candidate_tilings(6)
    assert np.all(cand[:, 0] * cand[:, 1] <= 6) and cand[0].tolist() == [1, 1]
    with pytest.raises(ValueError):
        select_tiling(0, 10, 3)


# ---------------------------------------------------------------------------------- writing
def test_written_cache_opens_validates_and_matches(tmp_path, capsys):
    from cache.reader import OutcomeCache
    from cache.validate import validate

    path = tmp_path / "syn.h5"
    assert main(["--out", str(path), "--samples", "300", "--seed", "3", "--chunk", "128", "--quiet",
                 "--datasets", "textvqa", "scienceqa:2"]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "mean score by blocks" in out and "measured_pts" in out
    assert validate(path) == []
    params = SyntheticParams(n_samples=300, datasets=select_datasets(["textvqa", "scienceqa:2"]))
    d = generate(params, 3)
    with OutcomeCache(path) as oc:
        assert oc.synthetic and oc.attrs["model_id"] == "synthetic" and oc.attrs["generator"] == "synthetic"
        assert oc.datasets == ["synthetic-textvqa", "synthetic-scienceqa"]
        assert oc.metrics == {"synthetic-textvqa": "vqa_score", "synthetic-scienceqa": "mc"}
        assert np.bincount(oc.dataset).tolist() == [100, 200]
        assert oc.attrs["generator_params"]["seed"] == 3 and oc.estimator_json is not None
        lo, hi = oc.budget_range_ms
        assert 0 < lo < hi
        assert np.array_equal(oc.score, d.score) and np.array_equal(oc.measured_ms, d.measured_ms)
        assert np.array_equal(oc.latency_tokens(np.arange(300)), d.latency_token.astype(np.float32))
        assert oc.question(0) == d.question[0]
        table = calibration_table(oc)
    full = table[(table.dataset == "synthetic-textvqa") & (table.knob == "full")].mean_score.item()
    assert full == pytest.approx(_per_config_mean(d, "synthetic-textvqa")[d.knob_space.index(d.knob_space.full_config)])
    assert set(table.knob) == {"tier", "p", "top_k", "blocks", "full", "cheapest"}
    assert len(knob_deltas(d)) == 2 * (1 + 4 + 4)
    with pytest.raises(FileExistsError):
        write_synthetic_cache(path, params, 3)


def test_interrupted_build_resumes_to_the_same_file(tmp_path):
    from cache.reader import OutcomeCache

    params = SyntheticParams(n_samples=200, datasets=select_datasets(["vqav2", "docvqa"]))

    class Killed(Exception):
        pass

    def kill_after_first_chunk(line: str) -> None:
        if "rows 64/" in line:
            raise Killed

    path = tmp_path / "r.h5"
    with pytest.raises(Killed):
        write_synthetic_cache(path, params, 5, chunk=64, log=kill_after_first_chunk)
    assert (tmp_path / "r.h5.journal").exists()
    with pytest.raises(ValueError, match="cannot resume"):
        write_synthetic_cache(path, params, 6, resume=True)
    write_synthetic_cache(path, params, 5, chunk=64, resume=True)
    d = generate(params, 5)
    with OutcomeCache(path) as oc:
        assert np.array_equal(oc.score, d.score) and np.array_equal(oc.output_tokens, d.output_tokens)
        assert oc.budget_range_ms is not None


def test_bad_parameters_are_clear_errors():
    with pytest.raises(ValueError, match="splits"):
        SyntheticParams(splits=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="synthetic-"):
        SyntheticParams(datasets=(DEFAULT_DATASETS[0].__class__(**{**DEFAULT_DATASETS[0].__dict__, "name": "textvqa"}),))
    with pytest.raises(ValueError, match="unknown synthetic dataset"):
        select_datasets(["coco"])
    with pytest.raises(ValueError, match="token_dim"):
        SyntheticParams(token_dim=4)
    with pytest.raises(ValueError, match="seed"):
        generate(SyntheticParams(n_samples=4), -1)


def test_build_default_cache_reuses_rebuilds_stale_and_protects_other_files(tmp_path, monkeypatch):
    import cache.synthetic_writer as syn  # where build_default_cache looks up default_params

    small = SyntheticParams(n_samples=60)
    monkeypatch.setattr(syn, "default_params", lambda: small)
    path = tmp_path / "default.h5"
    syn.build_default_cache(path)
    mtime = path.stat().st_mtime_ns
    assert syn.build_default_cache(path) == path and path.stat().st_mtime_ns == mtime  # reused as is
    monkeypatch.setattr(syn, "default_params", lambda: small.replace(jitter_sd=0.2))
    with pytest.warns(UserWarning, match="stale"):
        syn.build_default_cache(path)
    from cache.reader import OutcomeCache

    with OutcomeCache(path, tokens="lazy") as oc:
        assert oc.attrs["generator_params"]["params"]["jitter_sd"] == 0.2
    other = tmp_path / "other.h5"
    other.write_bytes(b"not a cache")
    with pytest.raises(FileExistsError):
        syn.build_default_cache(other)


def test_opt_in_output_length_signal_in_the_language_feature(data):
    """lang_r2_output_length > 0 adds a within-dataset answer-length direction to the language
    feature and changes nothing else; the default (0) carries none."""
    hinted = generate(SyntheticParams(n_samples=5000, lang_r2_output_length=0.5), 0)
    for name in ("score", "output_tokens", "latency_token", "uncertainty", "dataset", "crops"):
        np.testing.assert_array_equal(getattr(hinted, name), getattr(data, name))
    full = data.knob_space.index(data.knob_space.full_config)
    y = np.log(data.output_tokens[:, full].astype(np.float64))
    onehot = np.eye(len(data.datasets))[data.dataset][:, 1:]  # dataset means are visible either way
    r2 = {k: _r2_holdout(np.c_[d.lang_feature, onehot], y, 3500) - _r2_holdout(onehot, y, 3500)
          for k, d in (("default", data), ("hinted", hinted))}
    assert r2["default"] < 0.05 and r2["hinted"] > 0.2, r2
    with pytest.raises(ValueError, match="lang_r2_output_length"):
        SyntheticParams(lang_r2_output_length=1.0)


def test_python_dash_m_cache_synthetic_runs_the_cli(tmp_path):
    """``cache.synthetic`` is split by concern (params / model / calibration / writer / CLI); the
    ``python -m cache.synthetic`` entry point and the package's public names stay where they were."""
    import subprocess
    import sys
    from pathlib import Path

    import cache.synthetic as syn
    import cache.synthetic_cli
    import cache.synthetic_model
    import cache.synthetic_writer

    assert syn.generate is cache.synthetic_model.generate and syn.main is cache.synthetic_cli.main
    assert syn.build_default_cache is cache.synthetic_writer.build_default_cache
    assert all(hasattr(syn, name) for name in syn.__all__) and callable(syn._parser)
    out = tmp_path / "cli.h5"
    p = subprocess.run([sys.executable, "-m", "cache.synthetic", "--out", str(out), "--samples", "40", "--quiet"],
                       cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert out.is_file() and "wrote SYNTHETIC outcome cache" in p.stdout
