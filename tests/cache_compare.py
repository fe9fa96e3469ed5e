"""Content equality of two outcome-cache files, shared by the crash/resume tests."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from cache.schema import DATASETS


def assert_same_content(a: Path, b: Path, *, timings_by_nan_pattern: bool = False) -> None:
    """Every root attribute but ``created_at`` and every schema dataset are identical.

    ``timings_by_nan_pattern``: compare ``outcomes/measured_ms`` only by where it is NaN (live
    builds time the model, and timings differ run to run).
    """
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        attrs_a = {k: v for k, v in fa.attrs.items() if k != "created_at"}
        attrs_b = {k: v for k, v in fb.attrs.items() if k != "created_at"}
        assert attrs_a == attrs_b
        for name, (_, spec) in DATASETS.items():
            da, db = fa[name], fb[name]
            assert da.shape == db.shape and da.dtype == db.dtype, name
            if spec == "str":
                assert np.array_equal(da.asstr()[()], db.asstr()[()]), name
            elif timings_by_nan_pattern and name == "outcomes/measured_ms":
                assert np.array_equal(np.isnan(da[()]), np.isnan(db[()])), name
            else:
                assert np.array_equal(da[()], db[()], equal_nan=da.dtype.kind == "f"), name
