"""``cache.repack``: a compressed copy with the same content that readers and the validator accept."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from cache.reader import OutcomeCache
from cache.repack import main, repack
from cache.schema import DATASETS, CacheError
from cache.synthetic import SyntheticParams, write_synthetic_cache
from cache.validate import check


@pytest.fixture(scope="module")
def cache_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("repack")
    return write_synthetic_cache(d / "c.h5", SyntheticParams(n_samples=300), seed=0)


def test_repack_keeps_content_and_shrinks(cache_file, tmp_path):
    out = repack(cache_file, tmp_path / "packed.h5")
    assert out.stat().st_size < cache_file.stat().st_size
    with h5py.File(cache_file, "r") as fa, h5py.File(out, "r") as fb:
        assert dict(fa.attrs) == dict(fb.attrs)
        for name, (_, spec) in DATASETS.items():
            a, b = fa[name], fb[name]
            assert a.shape == b.shape, name
            if spec == "str":
                assert h5py.check_string_dtype(b.dtype).length is not None  # fixed-length in the packed file
                assert np.array_equal(a.asstr()[()], b.asstr()[()]), name
            else:
                assert a.dtype == b.dtype and b.compression == "gzip", name
                assert np.array_equal(a[()], b[()], equal_nan=a.dtype.kind == "f"), name
    _, problems = check(out)
    assert problems == []
    with OutcomeCache(out) as c, OutcomeCache(cache_file) as ref:
        assert np.array_equal(c.score, ref.score, equal_nan=True) and c.question(3) == ref.question(3)
        np.testing.assert_array_equal(c.latency_tokens(np.arange(5)), ref.latency_tokens(np.arange(5)))


def test_repack_refuses(cache_file, tmp_path, capsys):
    dst = tmp_path / "x.h5"
    dst.write_text("keep me")
    with pytest.raises(FileExistsError):
        repack(cache_file, dst)
    assert dst.read_text() == "keep me"
    assert main([str(tmp_path / "missing.h5"), str(tmp_path / "y.h5")]) == 1
    assert "no such cache file" in capsys.readouterr().err
    with pytest.raises(CacheError):
        repack(tmp_path / "missing.h5", tmp_path / "z.h5")
