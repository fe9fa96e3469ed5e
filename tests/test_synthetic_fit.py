"""Fitting the SYNTHETIC generator to another cache (``python -m cache.synthetic --calibrate-to``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cache.synthetic import DEFAULT_DATASETS, SyntheticParams, main, write_synthetic_cache
from cache.synthetic_calibration import expected_score, score_from_margin, sigmoid
from cache.synthetic_fit import _knob_costs, fidelity_table, fit_params
from model_runtime.knob_space import KnobConfig, KnobSpace


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A cache unlike the default: two datasets mixed 2:1, other targets, steeper knob costs."""
    text, doc = DEFAULT_DATASETS[0], DEFAULT_DATASETS[4]
    params = SyntheticParams(
        n_samples=3000,
        datasets=(dataclasses.replace(text, full_target=0.70, cheapest_target=0.45, weight=2.0, output_extra_mean=2.0),
                  dataclasses.replace(doc, full_target=0.60, cheapest_target=0.20)),
        block_costs_pts=(5.0, 8.0, 12.0, 25.0), topk_costs_pts=(8.0, 5.0, 3.0, 1.0, 0.0))
    path = tmp_path_factory.mktemp("fit") / "source.h5"
    write_synthetic_cache(path, params, seed=3)
    return path


def test_fitted_cache_reproduces_the_source_marginals(source, tmp_path):
    params = fit_params(str(source))
    assert [d.name for d in params.datasets] == ["synthetic-textvqa", "synthetic-docvqa"]
    assert [round(d.weight, 2) for d in params.datasets] == [0.67, 0.33]
    assert params.n_samples == 3000 and params.knob_space == KnobSpace()
    # pooled knob costs come out steeper than the default generator's, monotone, 0 at full
    assert params.block_costs_pts[0] > 3.1 and list(params.block_costs_pts) == sorted(params.block_costs_pts)
    assert params.topk_costs_pts[-1] == 0.0 and list(params.topk_costs_pts) == sorted(params.topk_costs_pts, reverse=True)
    out = tmp_path / "fitted.h5"
    write_synthetic_cache(out, params, seed=11)
    table, gaps = fidelity_table(str(source), str(out))
    for col, tol in (("full", 0.03), ("cheapest", 0.03), ("share", 0.02), ("output_tokens_full", 0.3),
                     ("prompt_tokens", 1.5)):
        diff = (table[f"{col} (source)"] - table[f"{col} (synthetic)"]).abs()
        assert (diff <= tol).all(), (col, table.to_string())
    rel = (table["vision_tokens_top (synthetic)"] / table["vision_tokens_top (source)"] - 1).abs()
    assert (rel < 0.08).all(), table.to_string()
    assert set(gaps) == {"oracle score gap (source)", "oracle score gap (synthetic)"}


def test_cli_calibrate_to_prints_the_side_by_side_table(source, tmp_path, capsys):
    assert main(["--calibrate-to", str(source), "--out", str(tmp_path / "c.h5"), "--samples", "400", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "fitted to" in out and "full (source)" in out and "synthetic-docvqa" in out
    assert "noise fitted" in out and "length variation fitted: wrong_extra_tokens_prob" in out
    assert "question -> answer-length link fitted: lang_r2_output_length" in out
    # a link strength given on the command line is kept, not fitted; --no-fit-noise skips both noise fits
    assert main(["--calibrate-to", str(source), "--out", str(tmp_path / "k.h5"), "--samples", "400", "--quiet",
                 "--no-fit-noise", "--lang-r2-output-length", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "link fitted" not in out and "noise fitted" not in out and "length variation fitted" not in out
    from cache.reader import OutcomeCache

    with OutcomeCache(str(tmp_path / "k.h5")) as oc:
        assert oc.attrs["generator_params"]["params"]["lang_r2_output_length"] == 0.2
    assert main(["--calibrate-to", str(source), "--datasets", "textvqa", "--out", str(tmp_path / "d.h5")]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert main(["--calibrate-to", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "e.h5")]) == 2


def test_knob_costs_are_monotone_and_exact_metric_has_no_partial_credit():
    ks = KnobSpace()
    score = np.full((10, len(ks)), 0.8)
    full = ks.full_config
    for b, s in ((15, 0.78), (14, 0.79), (13, 0.70), (12, 0.50)):  # a noisy, non-monotone curve
        score[:, ks.index(KnobConfig(full.tier, full.p, full.top_k, b))] = s
    for k, s in ((4, 0.7), (5, 0.75), (6, 0.74), (7, 0.8)):
        score[:, ks.index(KnobConfig(full.tier, full.p, k, full.blocks))] = s
    block, topk = _knob_costs(score, ks)
    assert block == (2.0, 2.0, 10.0, 30.0)
    assert topk == (10.0, 6.0, 6.0, 0.0, 0.0)
    x = np.linspace(-3, 3, 7)
    assert np.allclose(expected_score("exact", x, vqa_band=0.4, anls_band=1.0), sigmoid(x))
    assert set(np.unique(score_from_margin("exact", x, vqa_band=0.4, anls_band=1.0))) == {0.0, 1.0}


def test_the_live_default_calibrates_within_three_points(tmp_path):
    """The committed live-built cache has what a hand-made source lacks: tasks near chance and a
    task of 64-px images that every tier tiles alike (easy_vqa). It calibrates; every task's full
    and cheapest accuracy is within the issue's 3 points. Drawn at three times the source's size:
    one task's accuracy over 1,000 requests scatters by ±1.5 points (binomial standard error at
    0.4), so a draw of the source's size can miss by 3 points on one of twelve marginals by chance
    (v7, seed 0: synth_count 0.378 against 0.410; 24,000 requests: within 1.5 points,
    benchmarks/RESULTS.md "The generator fitted to the live default")."""
    from cache.default import LIVE_DEFAULT_CACHE
    from cache.synthetic_calibration import calibrate

    params = fit_params(str(LIVE_DEFAULT_CACHE))
    params = dataclasses.replace(params, n_samples=3 * params.n_samples)
    specs = {d.name: d for d in params.datasets}
    easy = calibrate(params)["synthetic-easy_vqa"]
    assert easy.vision_penalty == 0.0 and easy.medium_share == (0.0, 0.0, 0.0)
    # no tier effect: top-k and blocks carry the whole gap, scaled together to the cheapest target
    assert easy.achieved["cheapest"] == pytest.approx(easy.targets["cheapest"], abs=1e-3)
    assert easy.achieved["full"] == pytest.approx(easy.targets["full"], abs=1e-3)
    out = tmp_path / "fitted.h5"
    write_synthetic_cache(out, params, seed=0)
    table, _ = fidelity_table(str(LIVE_DEFAULT_CACHE), str(out))
    assert len(table) == 6 and table.notna().all().all()
    for col in ("full", "cheapest"):
        diff = (table[f"{col} (source)"] - table[f"{col} (synthetic)"]).abs()
        assert (diff <= 0.03).all(), (col, table.to_string())
    # the empirical length distribution: count and diagram always answer in 2 tokens, and so do their fits
    count = specs["synthetic-synth_count"]
    assert count.output_pmf == (0.0, 1.0) and count.output_max == 2
    assert ((table["output_tokens_full (source)"] - table["output_tokens_full (synthetic)"]).abs() <= 0.1).all()


def test_a_task_whose_cheapest_configuration_scores_as_high_as_the_full_one_is_fitted(source, tmp_path):
    """A task at chance (v4's documents: cheapest 0.052 above full 0.047) has no knob effect to fit;
    it gets the generator's smallest gap instead of failing the whole calibration."""
    import shutil

    import h5py

    from cache.synthetic_fit import MIN_KNOB_GAP

    path = tmp_path / "flat.h5"
    shutil.copy(source, path)
    with h5py.File(path, "r+") as f:
        ks = KnobSpace.from_json(f.attrs["knob_space"])
        score = f["outcomes/score"]
        rows = np.flatnonzero(f["samples/dataset"][:] == 1)
        full = score[:, ks.index(ks.full_config)][rows]
        cheapest = score[:, ks.index(ks.cheapest_config)]
        cheapest[rows] = full  # the same scores at both ends
        score[:, ks.index(ks.cheapest_config)] = cheapest
    flat = fit_params(str(path)).datasets[1]
    assert flat.cheapest_target == pytest.approx(flat.full_target - MIN_KNOB_GAP) and "set to full" in flat.targets_source


def test_output_pmf_is_validated_and_leaves_other_draws_alone():
    text = DEFAULT_DATASETS[0]
    with pytest.raises(ValueError, match="output_pmf"):
        SyntheticParams(datasets=(dataclasses.replace(text, output_pmf=(0.5, 0.5)),))  # output_max is 6
    from cache.synthetic_model import generate

    base = SyntheticParams(n_samples=300, datasets=(text, DEFAULT_DATASETS[1]))
    pmf = (0.0, 0.25, 0.75, 0.0, 0.0, 0.0)
    fixed = dataclasses.replace(base, datasets=(dataclasses.replace(text, output_pmf=pmf), DEFAULT_DATASETS[1]))
    a, b = generate(base, 0), generate(fixed, 0)
    np.testing.assert_array_equal(a.prompt_tokens, b.prompt_tokens)  # the other draws are unchanged
    np.testing.assert_array_equal(a.vision_tokens, b.vision_tokens)
    full = base.knob_space.index(base.knob_space.full_config)
    sel = a.dataset == 1  # the other dataset keeps its lengths exactly
    np.testing.assert_array_equal(a.output_tokens[sel], b.output_tokens[sel])
    right = (b.dataset == 0) & (b.score[:, full] == 1)  # correct answers at the full configuration: the base length
    assert set(np.unique(b.output_tokens[right, full])) <= {2, 3}


def test_fit_noise_reaches_the_source_oracle_gap(source):
    """The jitter is fitted to the source's oracle gap; the source here is a generator cache with
    the default jitter (sd 0.15, iid share 0.25), and the fit finds a jitter giving its gap."""
    from cache.synthetic_fit import fit_noise, neighbour_agreement

    params = fit_params(str(source))
    fitted, rep = fit_noise(str(source), params)
    assert abs(rep["picked"]["gap"] - rep["source_gap"]) <= 0.005
    assert 0 < fitted.jitter_sd < 4 and fitted.jitter_iid_share in (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
    assert {c["jitter_iid_share"] for c in rep["candidates"]} <= {0.0, 0.1, 0.25, 0.5, 0.75, 1.0}
    # the pick is the reaching candidate whose neighbour agreement is nearest the source's
    reach = [c for c in rep["candidates"] if abs(c["gap"] - rep["source_gap"]) <= 0.005]
    assert rep["picked"] == min(reach, key=lambda c: abs(c["agreement"] - rep["source_agreement"]))
    # neighbour agreement: 1 for identical columns, 0 when every neighbour differs
    ks = KnobSpace()
    assert neighbour_agreement(np.ones((3, len(ks))), ks) == 1.0
    t = ks.config_table()
    parity = (np.searchsorted(np.unique(t["tier"]), t["tier"]) + t["p"] + t["top_k"] + t["blocks"]) % 2
    assert neighbour_agreement(np.tile(parity.astype(float), (2, 1)), ks) == 0.0


def test_params_written_before_output_pmf_still_load():
    d = SyntheticParams(n_samples=10).to_dict()
    for spec in d["datasets"]:
        del spec["output_pmf"]
    assert SyntheticParams.from_dict(d) == SyntheticParams(n_samples=10)


def test_fit_length_variation_finds_the_source_s_answer_length_variation(source):
    """The source (seed 3) has the default ``wrong_extra_tokens_prob`` 0.5; fitted from 0.1 and from
    1.0 the probability comes back near 0.5, and the fitted cache's variation is the source's."""
    from cache.reader import OutcomeCache
    from cache.synthetic_fit import fit_length_variation, length_variation

    with OutcomeCache(str(source)) as oc:
        target = length_variation(oc.output_tokens, oc.knob_space)
    assert target > 0
    params = fit_params(str(source))
    for start in (0.1, 1.0):
        fitted, rep = fit_length_variation(str(source), dataclasses.replace(params, wrong_extra_tokens_prob=start), seed=3)
        assert rep["source"] == pytest.approx(target, abs=1e-4)
        assert abs(rep["fitted"] - target) <= 0.005
        assert 0.35 <= fitted.wrong_extra_tokens_prob <= 0.65
    ks = KnobSpace()
    full = ks.index(ks.full_config)
    out = np.full((2, len(ks)), 3)
    assert length_variation(out, ks) == 0.0
    out[0, full - 1], out[1, 0] = 5, -1  # one config two tokens longer; a missing outcome is skipped
    assert length_variation(out, ks) == pytest.approx(2 / (2 * len(ks) - 1))


def test_fit_length_signal_recovers_the_question_length_link(tmp_path):
    """A source generated with the question → answer-length signal at population R² 0.4 is fitted
    back to a signal whose held-out probe matches; a source without it gets 0."""
    from cache.reader import OutcomeCache
    from cache.synthetic_fit import fit_length_signal, length_probe_r2

    base = SyntheticParams(n_samples=2000, lang_dim=16, token_dim=8)
    src = write_synthetic_cache(tmp_path / "linked.h5", dataclasses.replace(base, lang_r2_output_length=0.4), seed=2)
    with OutcomeCache(str(src)) as oc:
        full = oc.knob_space.index(oc.knob_space.full_config)
        target = length_probe_r2(oc.lang_feature, oc.output_tokens[:, full], oc.dataset, oc.split)
    assert 0.25 < target < 0.5  # the probe sees the planted signal, a little shrunk out of sample
    fitted, rep = fit_length_signal(str(src), base, seed=2)
    assert rep["source_probe_r2"] == pytest.approx(target, abs=1e-4)
    assert abs(rep["probe_r2"] - target) <= 0.01 and 0.3 <= fitted.lang_r2_output_length <= 0.5
    plain = write_synthetic_cache(tmp_path / "plain.h5", base, seed=2)
    fitted, rep = fit_length_signal(str(plain), base, seed=2)
    assert fitted.lang_r2_output_length == 0.0 and rep["source_probe_r2"] < 0.02
    # no length variation within any dataset: no link to measure
    one = np.full(10, 3)
    assert length_probe_r2(np.random.default_rng(0).normal(size=(10, 4)), one, np.zeros(10, int), np.r_[[0] * 6, [2] * 4]) == 0.0
