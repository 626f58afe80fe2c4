"""Per-block partial statistics and their exact merge.

Each partition (block) of the train split yields small partials: per-column moments
and per-column category counts. Partials merge pairwise in a tree, so the fit reads
the data once, scales with the number of partitions and never builds a pandas
``describe()`` per partition. The moments merge with Chan, Golub and LeVeque's
parallel formula, which is as accurate as a single pass over all rows.

Values that are not finite (NaN, +inf, -inf) count as missing, as they do in
:func:`tasks.features.transform.apply_transform`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np
import pandas as pd

from tasks.features.arrays import get_array_module, is_device_array, to_numpy
from tasks.features.kernels import one_pass_moments
from tasks.features.transform import category_codes, category_strings

T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class ColumnMoments:
    """Count, missing count, mean, sum of squared deviations (M2), min and max per column.

    Every field is a 1-D array (NumPy or CuPy, the module of the block it came from),
    one entry per column. Columns with no values have ``count`` 0 and NaN mean/min/max.
    """

    count: Any
    null_count: Any
    mean: Any
    m2: Any
    min: Any
    max: Any

    @property
    def n_columns(self) -> int:
        return int(self.count.shape[0])

    @property
    def variance(self) -> Any:
        """Population variance (ddof=0), NaN for a column with no values."""
        xp = get_array_module(self.m2)
        return xp.where(self.count > 0, self.m2 / xp.maximum(self.count, 1), xp.nan)

    @property
    def std(self) -> Any:
        """Population standard deviation (ddof=0), as scikit-learn's StandardScaler uses."""
        return get_array_module(self.m2).sqrt(self.variance)

    def to_host(self) -> "ColumnMoments":
        """The same moments as NumPy arrays (for JSON, pickling to the client, comparisons)."""
        return ColumnMoments(*(to_numpy(getattr(self, f)) for f in _FIELDS))


_FIELDS = ("count", "null_count", "mean", "m2", "min", "max")


def empty_moments(n_columns: int, xp: ModuleType = np) -> ColumnMoments:
    """Moments of zero rows: the identity of :func:`merge_moments`."""
    zeros = xp.zeros(n_columns, dtype=xp.int64)
    nans = xp.full(n_columns, xp.nan, dtype=xp.float64)
    return ColumnMoments(zeros, zeros.copy(), nans, xp.zeros(n_columns, dtype=xp.float64), nans.copy(), nans.copy())


def column_moments(block: Any) -> ColumnMoments:
    """Moments of a 2-D block (rows x columns) of numbers; the result lives where the block does.

    Device blocks go to the one-pass kernel (:func:`tasks.features.kernels.one_pass_moments`):
    CuPy's column reductions over a row-major block run at a few GB/s. Host blocks take the
    two-sweep NumPy path below, which the kernel is tested against.
    """
    if getattr(block, "ndim", None) != 2:
        raise ValueError(f"column_moments needs a 2-D array (rows x columns), got {getattr(block, 'shape', type(block))}")
    if block.dtype.kind not in "fiu":
        raise TypeError(f"column_moments needs a numeric array, got dtype {block.dtype}")
    xp = get_array_module(block)
    if block.shape[0] == 0:
        return empty_moments(block.shape[1], xp)
    if is_device_array(block):
        return ColumnMoments(*one_pass_moments(block))
    return _block_moments(block, xp)


def _block_moments(block: Any, xp: ModuleType) -> ColumnMoments:
    # Two sweeps over a block that is already in memory (sum, then squared deviations
    # from the block's mean) are exact where a textbook sum-of-squares is not.
    missing = ~xp.isfinite(block)
    n_rows = block.shape[0]
    count = n_rows - missing.sum(axis=0, dtype=xp.int64)
    safe_count = xp.maximum(count, 1)
    total = xp.where(missing, 0.0, block).sum(axis=0, dtype=xp.float64)
    mean = total / safe_count
    dev = xp.where(missing, 0.0, block - mean)
    m2 = (dev * dev).sum(axis=0, dtype=xp.float64)
    has_values = count > 0
    lo = xp.where(missing, xp.inf, block).min(axis=0).astype(xp.float64)
    hi = xp.where(missing, -xp.inf, block).max(axis=0).astype(xp.float64)
    return ColumnMoments(
        count=count,
        null_count=n_rows - count,
        mean=xp.where(has_values, mean, xp.nan),
        m2=m2,
        min=xp.where(has_values, lo, xp.nan),
        max=xp.where(has_values, hi, xp.nan),
    )


def stack_moments(columns: Sequence[ColumnMoments]) -> ColumnMoments:
    """One set of moments from moments of column groups taken one after another (same rows)."""
    if not columns:
        return empty_moments(0)
    xp = get_array_module(columns[0].mean)
    return ColumnMoments(*(xp.concatenate([getattr(c, f) for c in columns]) for f in _FIELDS))


def merge_moments(a: ColumnMoments, b: ColumnMoments) -> ColumnMoments:
    """Moments of the rows of both blocks (Chan et al.'s pairwise update)."""
    if a.n_columns != b.n_columns:
        raise ValueError(f"cannot merge moments of {a.n_columns} and {b.n_columns} columns")
    xp = get_array_module(a.mean)
    na = a.count.astype(xp.float64)
    nb = b.count.astype(xp.float64)
    n = na + nb
    safe_n = xp.maximum(n, 1.0)
    delta = b.mean - a.mean
    mean = a.mean + delta * (nb / safe_n)
    m2 = a.m2 + b.m2 + delta * delta * (na * nb / safe_n)
    a_empty = a.count == 0
    b_empty = b.count == 0
    return ColumnMoments(
        count=a.count + b.count,
        null_count=a.null_count + b.null_count,
        mean=xp.where(a_empty, b.mean, xp.where(b_empty, a.mean, mean)),
        m2=xp.where(a_empty, b.m2, xp.where(b_empty, a.m2, m2)),
        min=xp.fmin(a.min, b.min),
        max=xp.fmax(a.max, b.max),
    )


def category_counts(values: pd.Series) -> dict[str, int]:
    """How often each value occurs, keyed by the value's string form; missing values are not counted."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        # Count small integer codes, convert only the categories to strings.
        codes = values.cat.codes.to_numpy()
        tally = np.bincount(codes[codes >= 0], minlength=len(values.cat.categories))
        keys = category_strings(pd.Series(values.cat.categories)).tolist()
        merged: dict[str, int] = {}
        for key, n in zip(keys, tally.tolist()):
            if n and isinstance(key, str):  # a non-finite float category counts as missing
                merged[key] = merged.get(key, 0) + int(n)
        return merged
    if isinstance(values.dtype, pd.StringDtype):  # text is already its own string form
        counts = values.value_counts(dropna=True)
        return {str(k): int(n) for k, n in counts.items()}
    codes, keys = category_codes(values)
    tally = np.bincount(codes[codes >= 0], minlength=len(keys))
    found: dict[str, int] = {}
    for key, n in zip(keys, tally.tolist()):
        if n and key is not None:
            found[key] = found.get(key, 0) + int(n)
    return found


def merge_counts(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    """Counts of both blocks."""
    merged = dict(a)
    for key, n in b.items():
        merged[key] = merged.get(key, 0) + n
    return merged


def tree_reduce(items: Sequence[T], merge: Callable[[T, T], T]) -> T:
    """Merge neighbours pairwise, level by level (depth log2(n)), as the Dask fit does."""
    if not items:
        raise ValueError("tree_reduce needs at least one item")
    level = list(items)
    while len(level) > 1:
        level = [merge(level[i], level[i + 1]) if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
    return level[0]
