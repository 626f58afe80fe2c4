"""Quantile sketches: exact on small data, within their stated rank-error bound beyond."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from sklearn.impute import SimpleImputer

from tasks.features.sketch import (
    DEFAULT_CAPACITY,
    QuantileSketch,
    block_sketches,
    merge_sketch_lists,
)
from tasks.features.stats import tree_reduce

QS = np.linspace(0.0, 1.0, 201)


def sketch_of_parts(parts: list[np.ndarray], capacity: int = DEFAULT_CAPACITY) -> QuantileSketch:
    return tree_reduce([QuantileSketch.from_values(p, capacity) for p in parts], QuantileSketch.merge)


def worst_rank_error(sketch: QuantileSketch, values: np.ndarray, qs: np.ndarray = QS) -> float:
    """Largest distance, as a share of n, between q*(n-1) and the ranks the answer really holds.

    A value repeated many times holds a range of ranks, so ties count as correct
    anywhere in their range. Even np.quantile's interpolated answers are up to one rank off.
    """
    ordered = np.sort(values)
    n = ordered.shape[0]
    answers = sketch.quantiles(qs)
    below = np.searchsorted(ordered, answers, side="left")
    at_or_below = np.searchsorted(ordered, answers, side="right")
    target = qs * (n - 1)
    return float(np.max(np.maximum.reduce([below - target, target + 1 - at_or_below, np.zeros_like(target)])) / n)


def test_small_data_is_exact_and_matches_numpy_and_the_median_imputer() -> None:
    rng = np.random.default_rng(0)
    values = rng.lognormal(size=3000)
    values[::7] = np.nan
    values[3] = np.inf
    values[11] = -np.inf
    finite = values[np.isfinite(values)]
    parts = np.array_split(values, 13)

    sketch = sketch_of_parts(parts)

    assert sketch.is_exact and sketch.rank_error == 0.0
    assert sketch.count == finite.size
    assert (sketch.min, sketch.max) == (finite.min(), finite.max())
    np.testing.assert_array_equal(sketch.quantiles(QS), np.quantile(finite, QS))
    with_nan = np.where(np.isfinite(values), values, np.nan).reshape(-1, 1)
    imputer_median = SimpleImputer(strategy="median").fit(with_nan).statistics_[0]
    assert sketch.quantiles([0.5])[0] == imputer_median
    values_out, weights = sketch.weighted_values()
    np.testing.assert_array_equal(values_out, np.sort(finite))
    assert weights.sum() == sketch.count


def test_no_values_gives_nan_and_merging_with_nothing_changes_nothing() -> None:
    empty = QuantileSketch.from_values(np.array([np.nan, np.inf]))
    assert empty.count == 0 and math.isnan(empty.min) and math.isnan(empty.max)
    assert np.isnan(empty.quantiles([0.1, 0.5])).all()
    some = QuantileSketch.from_values(np.array([3.0, 1.0, 2.0]))
    for merged in (empty.merge(some), some.merge(empty), QuantileSketch.empty().merge(some)):
        assert merged.count == 3 and (merged.min, merged.max) == (1.0, 3.0)
        np.testing.assert_array_equal(merged.quantiles([0.5]), [2.0])


def test_integer_and_boolean_columns_are_sketched_as_numbers() -> None:
    assert QuantileSketch.from_values(np.array([5, 1, 3], dtype=np.int32)).quantiles([0.5])[0] == 3.0
    assert QuantileSketch.from_values(np.array([True, False, True])).quantiles([1.0])[0] == 1.0


def test_one_big_partition_is_compressed_within_its_bound() -> None:
    values = np.random.default_rng(1).lognormal(sigma=2.0, size=200_000)

    sketch = QuantileSketch.from_values(values, capacity=512)

    assert not sketch.is_exact and sketch.count == values.size
    assert (sketch.min, sketch.max) == (values.min(), values.max())
    assert sketch.values.size == 512
    # One compression: half a slice, plus one slice for reading.
    assert sketch.rank_error <= (1 + 2) / (2 * 512) + 1e-12
    assert worst_rank_error(sketch, values) <= sketch.rank_error


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda rng, n: rng.lognormal(mean=0.0, sigma=2.5, size=n), id="lognormal"),
        pytest.param(lambda rng, n: rng.choice([0.0, 1.0, 2.0, 7.0, 100.0], p=[0.6, 0.25, 0.1, 0.04, 0.01], size=n), id="few-distinct"),
        pytest.param(lambda rng, n: np.sort(rng.normal(size=n)), id="sorted-by-partition"),
    ],
)
def test_a_thousand_partitions_merged_in_a_tree_stay_within_the_stated_bound(make) -> None:
    rng = np.random.default_rng(2)
    capacity = 256
    values = make(rng, 600_000)
    parts = np.array_split(values, 1000)  # 600 values each: every partition is compressed

    sketch = sketch_of_parts(parts, capacity)

    # Each value went through at most 1 + ceil(log2(1000)) = 11 compressions.
    stated = (11 + 2) / (2 * capacity)
    assert sketch.count == values.size
    assert (sketch.min, sketch.max) == (values.min(), values.max())
    assert sketch.rank_error <= stated
    measured = worst_rank_error(sketch, values)
    assert measured <= sketch.rank_error
    assert sketch.values.size <= capacity


def test_heavy_ties_give_the_tied_value_itself() -> None:
    rng = np.random.default_rng(3)
    values = rng.choice([1.0, 2.0, 3.0], p=[0.5, 0.3, 0.2], size=400_000)
    sketch = sketch_of_parts(np.array_split(values, 64), capacity=128)
    np.testing.assert_array_equal(sketch.quantiles([0.0, 0.25, 0.65, 0.9, 1.0]), [1.0, 1.0, 2.0, 3.0, 3.0])


def test_default_capacity_keeps_a_million_rows_tight() -> None:
    values = np.random.default_rng(4).lognormal(size=1_000_000)
    sketch = sketch_of_parts(np.array_split(values, 16))
    assert worst_rank_error(sketch, values) < 0.001  # 0.1% of the rows
    assert len(pickle.dumps(sketch)) < 80_000  # small enough to travel through Dask


def test_same_data_and_partitioning_gives_the_same_sketch_and_merge_order_does_not_matter() -> None:
    rng = np.random.default_rng(5)
    parts = np.array_split(rng.normal(size=50_000), 10)
    a = sketch_of_parts(parts, capacity=300)
    b = sketch_of_parts([p.copy() for p in parts], capacity=300)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.quantiles(QS), b.quantiles(QS))
    x, y = (QuantileSketch.from_values(p, capacity=300) for p in parts[:2])
    xy, yx = x.merge(y), y.merge(x)
    np.testing.assert_array_equal(xy.values, yx.values)
    np.testing.assert_array_equal(xy.weights, yx.weights)
    assert x.count == parts[0].size  # merging left its inputs alone


def test_a_pickled_sketch_merges_and_answers_like_the_original() -> None:
    sketch = QuantileSketch.from_values(np.random.default_rng(6).normal(size=10_000))
    copy = pickle.loads(pickle.dumps(sketch))
    np.testing.assert_array_equal(copy.quantiles(QS), sketch.quantiles(QS))
    assert copy.merge(sketch).count == 20_000


def test_block_sketches_give_one_sketch_per_column_and_merge_column_by_column() -> None:
    rng = np.random.default_rng(7)
    block = rng.normal(size=(3000, 3))
    block[::5, 1] = np.nan
    top, bottom = block[:1000], block[1000:]

    merged = merge_sketch_lists(block_sketches(top), block_sketches(bottom))

    assert [s.count for s in merged] == [3000, 2400, 3000]
    for j, sketch in enumerate(merged):
        column = block[:, j]
        np.testing.assert_array_equal(sketch.quantiles(QS), np.quantile(column[np.isfinite(column)], QS))
    with pytest.raises(ValueError, match="3 and 2 columns"):
        merge_sketch_lists(merged, merged[:2])


def test_wrong_inputs_say_what_to_pass() -> None:
    with pytest.raises(ValueError, match="block_sketches"):
        QuantileSketch.from_values(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="2-D"):
        block_sketches(np.zeros(3))
    with pytest.raises(TypeError, match="numbers"):
        QuantileSketch.from_values(np.array(["a", "b"]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        QuantileSketch.from_values(np.arange(5.0)).quantiles([0.5, 50])
    with pytest.raises(ValueError, match="capacity"):
        QuantileSketch.from_values(np.arange(5.0), capacity=1)


@pytest.mark.gpu
def test_device_arrays_give_the_same_sketch_as_host_arrays() -> None:
    cupy = pytest.importorskip("cupy")
    rng = np.random.default_rng(8)
    for size, capacity in ((3000, DEFAULT_CAPACITY), (1_000_000, DEFAULT_CAPACITY)):
        host = rng.lognormal(size=size)
        host[::9] = np.nan
        host[4] = -np.inf
        on_host = QuantileSketch.from_values(host, capacity)
        on_device = QuantileSketch.from_values(cupy.asarray(host), capacity)
        assert isinstance(on_device.values, np.ndarray)  # only the summary came back
        assert on_device.count == on_host.count and (on_device.min, on_device.max) == (on_host.min, on_host.max)
        np.testing.assert_array_equal(on_device.values, on_host.values)
        np.testing.assert_array_equal(on_device.quantiles(QS), on_host.quantiles(QS))
    block = cupy.asarray(rng.normal(size=(2000, 4)))
    assert [s.count for s in block_sketches(block)] == [2000] * 4
