"""Outcome-cache I/O: writer/reader round trip, resume, input validation, reader errors,
``cache.validate`` and ``cache.info``."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from cache.info import SYNTHETIC_BANNER, card
from cache.info import main as info_main
from cache.journal import journal_dir
from cache.reader import OutcomeCache
from cache.schema import SCHEMA_VERSION, STATUS_FAILED, STATUS_OK, STATUS_PENDING, CacheError
from cache.validate import main as validate_main
from cache.validate import validate
from cache.writer import MAX_SLICE_RUNS, CacheWriter
from envs.knob_space import KnobSpace
from tests.cache_writer_worker import DATASETS, DL, DT, METRICS, S, build, create_writer, make_data, plan

KS = KnobSpace()
C = len(KS)
DATA = make_data()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("io") / "full.h5"
    w = create_writer(path)
    build(w, DATA)
    w.close()
    return path


@pytest.fixture()
def copy(built: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy.h5"
    shutil.copyfile(built, dst)
    return dst


def small_writer(path: Path, **kw) -> CacheWriter:
    return create_writer(path, **kw)  # S=40, Dl=8, Dt=8, synthetic


# ---------------------------------------------------------------------- round trip
@pytest.mark.parametrize("tokens", ["memory", "lazy", "auto"])
def test_round_trip_of_every_field(built: Path, tokens: str) -> None:
    with OutcomeCache(built, tokens=tokens) as c:
        assert c.tokens_in_memory == (tokens != "lazy")
        assert (c.n_samples, c.n_configs, c.lang_dim, c.token_dim) == (S, C, DL, DT)
        assert c.knob_space == KS and c.synthetic is True
        assert c.datasets == DATASETS and c.metrics == METRICS
        assert c.budget_range_ms == (120.5, 380.0) and c.estimator_json == {"kind": "test", "mape": 0.05}
        assert c.attrs["schema_version"] == SCHEMA_VERSION and c.attrs["generator"] == "synthetic"
        assert c.attrs["generator_params"] == {"seed": 0, "note": "test data"}
        assert c.attrs["created_by"].startswith("molmoe-gym ") and c.attrs["created_at"].endswith("+00:00")
        assert c.ids.tolist() == DATA["id"].tolist()
        for name in ("dataset", "split", "prompt_tokens", "crops", "vision_tokens", "lang_feature", "status", "output_tokens"):
            got = getattr(c, name)
            assert got.dtype == DATA[name].dtype and np.array_equal(got, DATA[name]), name
        assert np.array_equal(c.uncertainty, DATA["uncertainty"], equal_nan=True)
        assert np.array_equal(c.measured_ms, DATA["measured_ms"])
        assert c.score.dtype == np.float32
        assert np.array_equal(c.score, DATA["score"], equal_nan=True)
        assert np.all(np.isnan(c.score[c.status == STATUS_FAILED])) and (c.status == STATUS_FAILED).any()
        assert (c.samples_done == 1).all()
        for i in (0, 17, S - 1):
            assert c.question(i) == DATA["question"][i]
            assert c.answers(i) == json.loads(DATA["answers"][i])
            for cfg in (0, 111, C - 1):
                assert c.prediction(i, cfg) == DATA["prediction"][i, cfg]
                assert c.error(i, cfg) == DATA["error"][i, cfg]
        rows = np.array([7, 3, 7, 39, 0])
        tok = c.latency_tokens(rows)
        assert tok.dtype == np.float32 and tok.shape == (5, 3, 5, DT)
        assert np.array_equal(tok, DATA["latency_token"][rows].astype(np.float32))
        scattered = np.arange(S)[::-2]  # 20 runs > the 16-run slice limit: point selection path
        assert np.array_equal(c.latency_tokens(scattered), DATA["latency_token"][scattered].astype(np.float32))
        assert c.latency_tokens(np.array([], dtype=int)).shape == (0, 3, 5, DT)
        assert c.split_indices("train").tolist() == np.flatnonzero(DATA["split"] == 0).tolist()
        assert c.split_indices(2).dtype == np.int64 and c.split_indices(2).tolist() == list(range(3, S, 4))
        with pytest.raises(ValueError, match="unknown split"):
            c.split_indices("dev")
        with pytest.raises(IndexError):
            c.latency_tokens([S])
        assert c.content_hash() == hashlib.sha256(built.read_bytes()).hexdigest()


def sized_writer(path: Path, n_samples: int) -> CacheWriter:
    return CacheWriter.create(
        path, knob_space=KS, n_samples=n_samples, lang_dim=DL, token_dim=DT, model_id="m", generator="live",
        generator_params={}, datasets=DATASETS, metrics=METRICS, synthetic=False,
    )


@pytest.mark.parametrize("row_step,col_kind", [(1, "scattered"), (2, "all"), (2, "range"), (3, "scattered")])
def test_scattered_rows_and_columns_are_written_exactly(tmp_path: Path, row_step: int, col_kind: str) -> None:
    """Contiguous rows (slices), > MAX_SLICE_RUNS runs (h5py point selections) and scattered
    columns (one point-selected axis per h5py write) all land exactly where asked."""
    n = 200
    w = sized_writer(tmp_path / "s.h5", n)
    rng = np.random.default_rng(row_step)
    rows = rng.permutation(np.arange(0, n, row_step))  # unsorted
    if row_step > 1:
        assert rows.size > MAX_SLICE_RUNS
    cols = {"all": rng.permutation(C), "range": np.arange(40, 90)[::-1], "scattered": rng.choice(C, 50, replace=False)}[col_kind]
    lang = rng.normal(size=(rows.size, DL)).astype(np.float32)
    ids = np.array([f"id{r}" for r in rows], dtype=object)
    w.write_samples(rows, lang_feature=lang, id=ids)
    score = rng.random((rows.size, cols.size)).astype(np.float32)
    w.write_outcomes(rows, cols, score=score, output_tokens=np.full(score.shape, 5),
                     prediction=np.array([[f"{r}/{c}" for c in cols] for r in rows], dtype=object))
    expected = np.full((n, C), np.nan, np.float32)
    expected[np.ix_(rows, cols)] = score
    assert np.array_equal(~w.pending(), np.isfinite(expected))
    w.close()
    with OutcomeCache(tmp_path / "s.h5") as c:
        assert np.array_equal(c.score, expected, equal_nan=True)
        assert np.array_equal(c.lang_feature[rows], lang) and (c.lang_feature[np.setdiff1d(np.arange(n), rows)] == 0).all()
        assert c.ids[rows].tolist() == ids.tolist()
        assert (c.output_tokens[np.ix_(rows, cols)] == 5).all() and (c.output_tokens[np.isnan(expected)] == -1).all()
        assert c.prediction(int(rows[3]), int(cols[7])) == f"{rows[3]}/{cols[7]}"
        assert (c.samples_done == 0).all()  # only two of ten required fields were written
        assert c.measured_ms.shape == (n, C, 3) and np.isnan(c.measured_ms).all()  # never written: fill value


def test_auto_token_mode_respects_the_memory_bound(built: Path) -> None:
    token_bytes = S * 3 * 5 * DT * 2  # float16
    with OutcomeCache(built, tokens="auto", max_token_bytes=token_bytes) as c:
        assert c.tokens_in_memory
    with OutcomeCache(built, tokens="auto", max_token_bytes=token_bytes - 1) as c:
        assert not c.tokens_in_memory
        assert np.array_equal(c.latency_tokens([2, 1]), DATA["latency_token"][[2, 1]].astype(np.float32))
    with pytest.raises(ValueError, match="tokens must be"):
        OutcomeCache(built, tokens="disk")


# ---------------------------------------------------------------------- resume / pending
def test_resume_reports_pending_work_and_the_build_skips_finished_chunks(tmp_path: Path, built: Path) -> None:
    path = tmp_path / "r.h5"
    w = small_writer(path)
    assert w.pending().shape == (S, C) and w.pending().all() and w.samples_pending().all()
    ops = plan()
    build(w, DATA, ops[:10])  # 8 sample chunks + 2 outcome blocks
    w.close()
    assert not journal_dir(path).exists()
    w = CacheWriter.resume(path)
    assert not w.samples_pending().any()
    pend = w.pending()
    assert not pend[:20, 0::2].any() and pend[20:, 0::2].all() and pend[:, 1::2].all()
    assert build(w, DATA) == len(ops) - 10
    w.close()
    with OutcomeCache(path) as a, OutcomeCache(built) as b:
        assert np.array_equal(a.score, b.score, equal_nan=True) and np.array_equal(a.status, b.status)


def test_sample_fields_may_arrive_over_several_calls(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    w = small_writer(path)
    rows = np.arange(10)
    text = ("id", "dataset", "split", "question", "answers", "prompt_tokens")
    w.write_samples(rows, **{k: DATA[k][rows] for k in text})
    assert w.samples_pending()[rows].all()
    w._abort()  # a crash between the two passes: the field progress lives in the journal
    w = CacheWriter.resume(path)
    w.write_samples(rows, crops=DATA["crops"][rows], vision_tokens=DATA["vision_tokens"][rows],
                    lang_feature=DATA["lang_feature"][rows])
    assert w.samples_pending()[rows].all()  # latency_token still missing
    w.write_samples(rows[:4], latency_token=DATA["latency_token"][rows[:4]])
    assert w.samples_pending().tolist() == [False] * 4 + [True] * (S - 4)  # uncertainty is optional
    w.close()
    with OutcomeCache(path) as c:
        assert c.samples_done.tolist() == [1] * 4 + [0] * (S - 4)
        assert np.isnan(c.uncertainty).all()


def test_create_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "o.h5"
    small_writer(path).close()
    with pytest.raises(FileExistsError, match="already exists.*overwrite=True"):
        small_writer(path, overwrite=False)
    w = small_writer(path, overwrite=True)
    w.write_samples(np.arange(2), id=["a", "b"])
    w._abort()
    with pytest.raises(FileExistsError, match="already exists"):
        small_writer(path, overwrite=False)
    small_writer(path, overwrite=True).close()
    assert not journal_dir(path).exists()
    with OutcomeCache(path) as c:
        assert c.ids.tolist() == [""] * S


def test_create_rejects_bad_metadata(tmp_path: Path) -> None:
    kw = dict(knob_space=KS, n_samples=S, lang_dim=DL, token_dim=DT, model_id="m", generator="live",
              generator_params={}, datasets=DATASETS, metrics=METRICS, synthetic=False)
    with pytest.raises(ValueError, match="metrics must map every dataset"):
        CacheWriter.create(tmp_path / "a.h5", **{**kw, "metrics": {"vqav2": "vqa_score"}})
    with pytest.raises(ValueError, match="requires synthetic=True"):
        CacheWriter.create(tmp_path / "a.h5", **{**kw, "generator": "synthetic"})
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        CacheWriter.create(tmp_path / "a.h5", **{**kw, "n_samples": 0})
    assert not (tmp_path / "a.h5").exists() and not journal_dir(tmp_path / "a.h5").exists()


# ---------------------------------------------------------------------- write validation
BAD_WRITES = [
    (lambda w: w.write_samples(np.arange(3), lang_feature=np.zeros((3, DL + 1))), r"lang_feature: expected shape \(3, 8\)"),
    (lambda w: w.write_samples(np.array([0, S]), prompt_tokens=[1, 2]), r"index: indices must lie in \[0, 40\)"),
    (lambda w: w.write_samples(np.array([1, 1]), prompt_tokens=[1, 2]), "unique"),
    (lambda w: w.write_samples(np.arange(2), colour=[1, 2]), "unknown sample fields"),
    (lambda w: w.write_samples(np.arange(2), answers=["[1]", "not json"]), "answers: entry 1 is not valid JSON"),
    (lambda w: w.write_samples(np.arange(2), id=["a", "a"]), "ids must be unique"),
    (lambda w: w.write_samples(np.arange(2), id=["a", 3]), "id: entry 1 is int"),
    (lambda w: w.write_samples(np.arange(2), dataset=[0, 2]), r"dataset: values must lie in \[0, 1\]"),
    (lambda w: w.write_samples(np.arange(2), split=["train", "dev"]), "unknown split names"),
    (lambda w: w.write_samples(np.arange(2), prompt_tokens=[1.5, 2]), "non-integral"),
    (lambda w: w.write_samples(np.arange(1), latency_token=np.full((1, 3, 5, DT), 1e6)), "float16 range"),
    (lambda w: w.write_samples(np.arange(1), lang_feature=np.full((1, DL), np.nan)), "NaN values are not allowed"),
    (lambda w: w.write_outcomes([0], [0], score=[[1.5]], output_tokens=[[3]]), r"score: values must lie in \[0.0, 1.0\] or be NaN"),
    (lambda w: w.write_outcomes([0], [C], score=[[0.5]], output_tokens=[[3]]), r"configs: indices must lie in \[0, 225\)"),
    (lambda w: w.write_outcomes([0], [0], score=[[0.5, 0.1]], output_tokens=[[3]]), r"score: expected shape \(1, 1\)"),
    (lambda w: w.write_outcomes([0], [0], score=[[np.nan]], output_tokens=[[3]], status=[[STATUS_OK]]), "status OK but a NaN score"),
    (lambda w: w.write_outcomes([0], [0], score=[[0.5]], output_tokens=[[0]]), "output_tokens: must be >= 1"),
    (lambda w: w.write_outcomes([0], [0], score=[[0.5]], output_tokens=[[1]], status=[[7]]), r"status: values must lie in \[0, 2\]"),
    (lambda w: w.write_outcomes([0], [0], score=[[0.5]], output_tokens=[[1]], measured_ms=[[[1, -2, 3]]]), "measured_ms"),
    (lambda w: w.write_outcomes([0], [0], score=[["x"]], output_tokens=[[1]]), "cannot be cast"),
    (lambda w: w.set_attrs(knob_space={}), "fixed when the cache is created"),
    (lambda w: w.set_attrs(budget_range_ms=[300, 100]), "0 <= lo <= hi"),
    (lambda w: w.set_attrs(synthetic=False), "cannot be relabelled"),
]


@pytest.mark.parametrize("bad,message", BAD_WRITES, ids=[m for _, m in BAD_WRITES])
def test_bad_writes_raise_clear_value_errors_and_journal_nothing(tmp_path: Path, bad, message: str) -> None:
    w = small_writer(tmp_path / "v.h5")
    with pytest.raises(ValueError, match=message):
        bad(w)
    assert list(journal_dir(tmp_path / "v.h5").glob("*.npz")) == []
    w.close()


def test_status_defaults_and_failures(tmp_path: Path) -> None:
    path = tmp_path / "st.h5"
    w = small_writer(path)
    w.write_outcomes([0, 1], [0, 1], score=[[0.5, np.nan], [1.0, 0.0]], output_tokens=[[2, -1], [1, 9]])
    assert w.pending()[:2, :2].tolist() == [[False, True], [False, False]]
    w.write_outcomes([2], [4], score=[[np.nan]], output_tokens=[[-1]], status=[[STATUS_FAILED]], error=[["OOM"]])
    w.set_attrs(budget_range_ms="[10, 20]", notes="hello", extra={"a": 1})
    w.close()
    with OutcomeCache(path) as c:
        assert c.status[:3, :5].tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 2]]
        assert c.error(2, 4) == "OOM" and c.prediction(0, 0) == ""
        assert c.budget_range_ms == (10.0, 20.0) and c.attrs["notes"] == "hello"
        assert json.loads(c.attrs["extra"]) == {"a": 1}
        assert c.answers(5) == []  # never written


# ---------------------------------------------------------------------- reader errors
def test_missing_file_is_a_cache_error(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match=r"nope\.h5: no such cache file"):
        OutcomeCache(tmp_path / "nope.h5")


def test_truncated_file_is_a_cache_error(copy: Path) -> None:
    with open(copy, "r+b") as fh:
        fh.truncate(copy.stat().st_size // 2)
    with pytest.raises(CacheError, match=r"copy\.h5: .*truncated, corrupt or not an HDF5 file"):
        OutcomeCache(copy)


def test_non_hdf5_file_is_a_cache_error(tmp_path: Path) -> None:
    p = tmp_path / "text.h5"
    p.write_text("just some text\n")
    with pytest.raises(CacheError, match="cannot be opened as HDF5"):
        OutcomeCache(p)


def test_foreign_hdf5_file_is_a_cache_error(tmp_path: Path) -> None:
    p = tmp_path / "foreign.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(CacheError, match="not a molmoe-gym outcome cache.*no 'format' attribute"):
        OutcomeCache(p)
    with h5py.File(p, "a") as f:
        f.attrs["format"] = "someone-else"
    with pytest.raises(CacheError, match="has format 'someone-else'"):
        OutcomeCache(p)


def test_wrong_schema_version_names_both_versions(copy: Path) -> None:
    with h5py.File(copy, "a") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(CacheError, match=f"schema version {SCHEMA_VERSION + 1} .*reads schema version {SCHEMA_VERSION}"):
        OutcomeCache(copy)


def test_missing_dataset_and_shape_mismatch_are_cache_errors(copy: Path) -> None:
    with h5py.File(copy, "a") as f:
        del f["outcomes/error"]
    with pytest.raises(CacheError, match="'outcomes/error' is missing"):
        OutcomeCache(copy)
    with h5py.File(copy, "a") as f:
        f.create_dataset("outcomes/error", shape=(S, C), dtype=h5py.string_dtype())
        ks2 = KnobSpace(tiers=("low", "high"), crops=(3, 12))  # 150 configurations, 2 tiers
        f.attrs["knob_space"] = ks2.to_json()
    with pytest.raises(CacheError, match=r"'outcomes/score' has shape \(40, 225\), expected \(40, 150\)"):
        OutcomeCache(copy)


def test_reader_refuses_an_unfinished_build_and_names_what_finishes_it(tmp_path: Path) -> None:
    path = tmp_path / "j.h5"
    w = small_writer(path)  # generator "synthetic" with hand-made parameters: no CLI reproduces them
    w.write_samples(np.arange(2), id=["a", "b"])
    w._abort()
    with pytest.raises(CacheError, match=r"unfinished cache build .*journal .*--resume"):
        OutcomeCache(path)
    with pytest.warns(UserWarning, match="build is unfinished"):  # opt-in, e.g. for cache.info
        OutcomeCache(path, allow_unfinished=True).close()
    path.write_bytes(b"\0" * 100)  # killed before the file existed properly
    with pytest.raises(CacheError, match=r"journal exists .*unfinished, finish it with .*--resume"):
        OutcomeCache(path, allow_unfinished=True)


# ---------------------------------------------------------------------- validate / info
def test_validate_accepts_a_complete_cache(built: Path, capsys: pytest.CaptureFixture) -> None:
    # the test data has ~2% FAILED outcomes: every configuration is >= 90% covered
    assert validate(built, min_coverage=0.9) == []
    assert validate_main([str(built), "--min-coverage", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "VALID" in out and "samples/latency_token" in out and "SYNTHETIC" in out
    # at the default (100%) the failed outcomes are the one problem, with the configurations named
    (problem,) = validate(built)
    n_failed = int(np.sum(DATA["status"] == STATUS_FAILED))
    assert f"coverage below 100% (0 pending, {n_failed} failed outcomes)" in problem


def test_validate_finds_injected_problems(copy: Path, capsys: pytest.CaptureFixture) -> None:
    ok = DATA["status"] == STATUS_OK
    c5, c8 = int(np.flatnonzero(ok[5])[0]), int(np.flatnonzero(ok[8])[0])
    with h5py.File(copy, "a") as f:
        f["samples/id"][3] = DATA["id"][0]  # row 3 is test, row 0 train: the same request in both
        f["outcomes/score"][5, c5] = 1.25
        f["outcomes/status"][:, 7] = STATUS_PENDING
        f["outcomes/output_tokens"][8, c8] = 0
    problems = validate(copy, min_coverage=0.9)
    text = "\n".join(problems)
    assert "overlapping splits: 1 ids appear in more than one split: 'req-0000-é' (train and test)" in text
    assert "1 ids are not unique" in text
    assert "1 OK scores lie outside [0, 1] (range" in text
    assert "1 configurations have coverage below 90%" in text and "7 low/p1/k5/b14 (0.0%)" in text
    assert "1 OK outcomes have output_tokens < 1" in text
    assert len(problems) == 5
    assert validate_main([str(copy), "-q"]) == 1
    assert "INVALID" in capsys.readouterr().out


def test_validate_reports_shape_mismatch_and_bad_files(copy: Path, tmp_path: Path) -> None:
    with h5py.File(copy, "a") as f:
        del f["samples/uncertainty"]
        f.create_dataset("samples/uncertainty", shape=(S, 3), dtype="float32")
        del f["samples/split"]
        f.create_dataset("samples/split", shape=(S,), dtype="int64")
    problems = validate(copy)
    assert "dataset 'samples/uncertainty' has shape (40, 3), expected (40, 2)" in problems
    assert "dataset 'samples/split' has dtype int64, expected int8" in problems
    assert validate(tmp_path / "missing.h5") == [f"{tmp_path / 'missing.h5'}: no such cache file"]
    (tmp_path / "junk.h5").write_bytes(b"junk")
    (problem,) = validate(tmp_path / "junk.h5")
    assert "truncated, corrupt or not an HDF5 file" in problem


def test_validate_flags_an_unfinished_build(tmp_path: Path) -> None:
    path = tmp_path / "u.h5"
    w = small_writer(path)
    build(w, DATA, plan()[:7])  # 7 of 8 sample chunks
    w._abort()
    problems = validate(path, min_coverage=0.0)
    assert any("build journal exists" in p for p in problems)
    assert "5 of 40 sample rows are not done (progress/samples_done != 1)" in problems
    assert not any("coverage below" in p for p in problems)  # min_coverage=0 accepts partial outcomes


def test_info_prints_the_dataset_card_with_the_synthetic_banner(built: Path, capsys: pytest.CaptureFixture) -> None:
    text = card(built)
    assert text.splitlines()[0] == SYNTHETIC_BANNER
    for needle in ("model          synthetic", "low (3 crops), medium (6 crops), high (12 crops)", "vqav2",
                   "docvqa", "vqa_score", "anls", "120.5 .. 380.0 ms", "kind: test", "mean score",
                   "full", "cheapest", "prompt tokens", "coverage"):
        assert needle in text, needle
    # rows alternate datasets and cycle through splits train/train/val/test
    assert re.search(r"vqav2\s+10\s+10\s+0\s+20\s+vqa_score", text)
    assert re.search(r"docvqa\s+10\s+0\s+10\s+20\s+anls", text)
    full = KS.index(KS.full_config)
    assert f"{np.nanmean(DATA['score'][0::2, full]):.3f}" in text
    assert info_main([str(built)]) == 0 and SYNTHETIC_BANNER in capsys.readouterr().out


def test_command_line_entry_points(built: Path, copy: Path) -> None:
    with h5py.File(copy, "a") as f:
        f["outcomes/score"][0, 0] = 2.0
        f["outcomes/status"][0, 0] = STATUS_OK
    env_py = sys.executable
    ok = subprocess.run([env_py, "-m", "cache.validate", "--min-coverage", "0.9", str(built)], cwd=ROOT, capture_output=True, text=True)
    bad = subprocess.run([env_py, "-m", "cache.validate", "-q", str(copy)], cwd=ROOT, capture_output=True, text=True)
    info = subprocess.run([env_py, "-m", "cache.info", str(built)], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and "VALID" in ok.stdout
    assert bad.returncode == 1 and "PROBLEM: 1 OK scores lie outside [0, 1]" in bad.stdout
    assert info.returncode == 0 and info.stdout.startswith(SYNTHETIC_BANNER)


def test_writer_and_reader_import_no_heavy_packages() -> None:
    code = ("import sys, cache.writer, cache.reader, cache.validate, cache.info, cache.journal; "
            "bad = [m for m in ('torch', 'transformers', 'pandas', 'scipy') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr

