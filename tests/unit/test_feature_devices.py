"""The GPU worker's code path (one row-major block per partition), run here on NumPy.

On a GPU the same functions get CuPy arrays; tests/gpu checks the device against the host.
"""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest

from tasks.config import CategoricalTransform, Features, NumericTransform, parse_config
from tasks.errors import ConfigError
from tasks.features.numeric import _by_block, _by_column, array_module
from tasks.features.stats import merge_moments
from tasks.features.transform import apply_transform, build_spec

FEATURES = Features(
    numeric=("a", "b", "c", "d"),
    categorical=("k",),
    transforms={
        "a": NumericTransform(impute="median", clip=(0.05, 0.95), log1p=True, missing_indicator=True),
        "b": NumericTransform(scale="minmax"),
        "c": NumericTransform(bins=5),
        "k": CategoricalTransform(encode="onehot"),
    },
)


def _frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "a": rng.lognormal(2, 1, n).astype(np.float32),
            "b": rng.normal(0, 5, n),
            "c": rng.integers(0, 100, n),
            "d": rng.normal(1e6, 1, n).astype(np.float32),
            "k": rng.choice(["x", "y", "z"], n),
        }
    )
    frame.loc[rng.random(n) < 0.1, "a"] = np.nan
    frame.loc[rng.random(n) < 0.01, "b"] = np.inf
    return frame


def test_block_statistics_equal_column_statistics() -> None:
    train = _frame(5000)
    by_column, by_block = _by_column(train, FEATURES), _by_block(train, FEATURES, np)
    for field in ("count", "null_count", "min", "max"):
        np.testing.assert_array_equal(getattr(by_block.moments, field), getattr(by_column.moments, field))
    np.testing.assert_allclose(by_block.moments.mean, by_column.moments.mean, rtol=1e-12)
    np.testing.assert_allclose(by_block.moments.m2, by_column.moments.m2, rtol=1e-9)
    np.testing.assert_allclose(by_block.log_moments.mean, by_column.log_moments.mean, rtol=1e-6)
    assert by_block.infinite == by_column.infinite == {"b": int(np.isinf(train["b"]).sum())}
    assert set(by_block.sketches) == {"a", "c"}
    for name in ("a", "c"):
        np.testing.assert_allclose(by_block.sketches[name].quantiles([0.1, 0.5, 0.9]), by_column.sketches[name].quantiles([0.1, 0.5, 0.9]), rtol=1e-6)


def test_empty_partition_merges_as_nothing() -> None:
    train, empty = _frame(300), _frame(300).iloc[:0]
    whole = _by_column(train, FEATURES).moments
    merged = merge_moments(_by_block(empty, FEATURES, np).moments, _by_column(train, FEATURES).moments)
    np.testing.assert_array_equal(merged.count, whole.count)
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-12)


def test_transform_of_a_device_block_equals_the_host_transform() -> None:
    train, rows = _frame(4000), _frame(700, seed=1)
    stats = _by_column(train, FEATURES)
    spec = build_spec(
        task="regression", label="y", label_classes=None, input_columns=list(FEATURES.all), features=FEATURES,
        moments=stats.moments, log_moments=stats.log_moments, sketches=stats.sketches,
        counts={"k": {"x": 3, "y": 2, "z": 1}}, split={"validation": 0.15, "test": 0.15, "hash": "s"},
    )
    device_like = types.SimpleNamespace(asarray=np.asarray)  # an array module that is not NumPy itself
    np.testing.assert_array_equal(apply_transform(rows, spec, xp=device_like), apply_transform(rows, spec))


def test_devices_resolve_or_say_what_is_missing() -> None:
    assert array_module("cpu") is np
    try:
        import cupy  # noqa: F401
    except ImportError:
        assert array_module("auto") is np
        with pytest.raises(RuntimeError, match="dask.device is gpu but on this worker CuPy is not installed"):
            array_module("gpu")
    with pytest.raises(ValueError, match="device 'tpu'"):
        array_module("tpu")
    base = {"name": "p", "bucket": "b", "source": "raw/", "contract": "c.yaml", "label": "y", "task": "regression"}
    assert parse_config({**base, "dask": {"device": "gpu", "memory_limit": "1GiB"}}).dask.device == "gpu"
    with pytest.raises(ConfigError, match="dask.device 'cuda' must be one of auto, cpu, gpu"):
        parse_config({**base, "dask": {"device": "cuda"}})
