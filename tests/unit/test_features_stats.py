"""Partial statistics: merged per-block partials equal statistics of all rows at once."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.features.arrays import get_array_module, to_numpy
from tasks.features.stats import (
    category_counts,
    column_moments,
    empty_moments,
    merge_counts,
    merge_moments,
    tree_reduce,
)

REPO = Path(__file__).resolve().parents[2]


def _table(rng: np.random.Generator, n: int = 1500) -> np.ndarray:
    """Columns of different scales, with gaps, infinities, an all-NaN and a constant column."""
    block = np.column_stack(
        [
            rng.normal(1e6, 3.0, n),  # large offset, small spread: naive sum of squares loses it
            rng.exponential(2.0, n),
            np.full(n, np.nan),
            np.full(n, 7.5),
            rng.integers(-5, 5, n).astype(np.float64),
        ]
    )
    block[rng.random(n) < 0.05, 1] = np.nan
    block[rng.random(n) < 0.01, 4] = np.inf
    block[rng.random(n) < 0.01, 4] = -np.inf
    return block


def _expected(block: np.ndarray) -> dict[str, np.ndarray]:
    finite = np.where(np.isfinite(block), block, np.nan)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        return {
            "count": np.isfinite(block).sum(axis=0),
            "null_count": (~np.isfinite(block)).sum(axis=0),
            "mean": np.nanmean(finite, axis=0),
            "std": np.nanstd(finite, axis=0),
            "min": np.nanmin(finite, axis=0),
            "max": np.nanmax(finite, axis=0),
        }


def _assert_matches(moments, expected) -> None:
    np.testing.assert_array_equal(moments.count, expected["count"])
    np.testing.assert_array_equal(moments.null_count, expected["null_count"])
    np.testing.assert_allclose(moments.mean, expected["mean"], rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(moments.std, expected["std"], rtol=1e-9, atol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(moments.min, expected["min"])
    np.testing.assert_array_equal(moments.max, expected["max"])


def test_single_block_moments_match_numpy_and_treat_inf_as_missing() -> None:
    block = _table(np.random.default_rng(1))
    moments = column_moments(block)
    _assert_matches(moments, _expected(block))
    assert moments.count[2] == 0 and np.isnan(moments.mean[2]) and np.isnan(moments.std[2])
    assert moments.std[3] == 0.0
    assert np.isfinite(moments.mean[4])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_merged_random_blocks_equal_one_pass_over_all_rows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    block = _table(rng)
    cuts = np.sort(rng.integers(0, len(block), size=12))
    cuts[2] = cuts[3]  # at least one empty block
    blocks = np.split(block, cuts)
    blocks[5][:, 1] = np.nan  # a block where an otherwise populated column is all missing
    whole = np.concatenate(blocks)
    merged = tree_reduce([column_moments(b) for b in blocks], merge_moments)
    _assert_matches(merged, _expected(whole))


def test_merge_order_does_not_matter() -> None:
    rng = np.random.default_rng(7)
    blocks = np.array_split(_table(rng), 9)
    parts = [column_moments(b) for b in blocks]
    left_to_right = parts[0]
    for part in parts[1:]:
        left_to_right = merge_moments(left_to_right, part)
    tree = tree_reduce(parts[::-1], merge_moments)
    for field in ("count", "null_count", "min", "max"):
        np.testing.assert_array_equal(getattr(tree, field), getattr(left_to_right, field))
    np.testing.assert_allclose(tree.mean, left_to_right.mean, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(tree.m2, left_to_right.m2, rtol=1e-9, equal_nan=True)


def test_empty_block_is_the_identity_of_merge() -> None:
    block = _table(np.random.default_rng(3), n=50)
    moments = column_moments(block)
    empty = column_moments(block[:0])
    assert empty.count.tolist() == [0] * 5 and np.isnan(empty.mean).all()
    for merged in (merge_moments(empty, moments), merge_moments(moments, empty)):
        _assert_matches(merged, _expected(block))
    assert merge_moments(empty, empty_moments(5)).count.tolist() == [0] * 5


def test_float32_and_integer_blocks_accumulate_in_float64() -> None:
    values = np.full((4000, 1), 16777216.0, dtype=np.float32)  # 2**24: float32 sums would drift
    values[::2] += 2
    moments = column_moments(values)
    assert moments.mean[0] == pytest.approx(16777217.0, abs=1e-6)
    assert moments.std[0] == pytest.approx(1.0, abs=1e-9)
    ints = column_moments(np.arange(10, dtype=np.int64).reshape(-1, 1))
    assert ints.mean[0] == 4.5 and ints.min[0] == 0 and ints.max[0] == 9


def test_block_must_be_a_2d_numeric_array() -> None:
    with pytest.raises(ValueError, match="2-D"):
        column_moments(np.zeros(3))
    with pytest.raises(TypeError, match="numeric"):
        column_moments(np.array([["a"]], dtype=object))
    with pytest.raises(ValueError, match="merge"):
        merge_moments(empty_moments(2), empty_moments(3))


def test_category_counts_merge_to_the_counts_of_all_rows() -> None:
    rng = np.random.default_rng(5)
    values = pd.Series(rng.choice(["red", "green", "blue", None], size=999, p=[0.5, 0.3, 0.15, 0.05]))
    chunks = [values.iloc[:0], values.iloc[:300], values.iloc[300:301], values.iloc[301:]]
    merged = tree_reduce([category_counts(c) for c in chunks[1:]] + [category_counts(chunks[0])], merge_counts)
    assert merged == dict(Counter(v for v in values if isinstance(v, str)))
    assert sum(merged.values()) == values.notna().sum()


def test_category_counts_use_one_string_form_for_every_dtype() -> None:
    assert category_counts(pd.Series(["a", "b", "a", None], dtype="category")) == {"a": 2, "b": 1}
    assert category_counts(pd.Series([1.0, 2.0, 1.0, np.nan])) == {"1": 2, "2": 1}
    assert category_counts(pd.Series([1, 2, 1], dtype="Int64")) == {"1": 2, "2": 1}
    assert category_counts(pd.Series([True, False, True])) == {"True": 2, "False": 1}
    assert category_counts(pd.Series([3.0, None, 3.0], dtype="category")) == {"3": 2}
    assert category_counts(pd.Series([], dtype="category")) == {}


def test_tree_reduce_needs_items() -> None:
    with pytest.raises(ValueError):
        tree_reduce([], merge_counts)
    assert tree_reduce([{"a": 1}], merge_counts) == {"a": 1}


def test_numpy_arrays_stay_on_the_host() -> None:
    x = np.arange(3.0)
    assert get_array_module(x) is np
    assert get_array_module([1, 2]) is np
    assert to_numpy(x) is x


def test_array_switch_does_not_import_cupy() -> None:
    code = (
        "import sys, numpy as np\n"
        "from tasks.features.arrays import get_array_module\n"
        "import tasks.features.stats, tasks.features.transform\n"
        "from tasks.features.stats import column_moments\n"
        "column_moments(np.ones((3, 2)))\n"
        "assert get_array_module(np.ones(2)) is np\n"
        "assert 'cupy' not in sys.modules, 'cupy was imported'\n"
        "assert 'dask' not in sys.modules, 'dask was imported by the serving-side modules'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_moments_move_to_host_unchanged() -> None:
    moments = column_moments(np.array([[1.0, np.nan], [3.0, 4.0]]))
    host = moments.to_host()
    assert host.count.tolist() == [2, 1]
    np.testing.assert_array_equal(to_numpy(host.mean), [2.0, 4.0])
