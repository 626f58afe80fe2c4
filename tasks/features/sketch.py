"""Mergeable quantile sketches: medians, clip bounds, bin edges and split cut points.

A :class:`QuantileSketch` summarizes one column of one partition; sketches of
partitions merge pairwise in a tree (:func:`tasks.features.stats.tree_reduce`), like
the moments, so the fit reads each value once and only small summaries travel.

While a sketch holds every value (total count at most ``capacity``) it is exact:
``quantiles(qs)`` is ``np.quantile(values, qs)``, so a median imputer agrees with
scikit-learn's ``SimpleImputer(strategy="median")`` on small data. Beyond that it is
a weighted summary: sorted values with weights, compressed to ``capacity`` items
whenever it grows past ``capacity``. A compression keeps, for each of ``capacity``
equal slices of the total weight, the value at the slice's middle, which moves any
value's estimated rank by at most ``W / (2 * capacity)`` (``W`` the weight compressed).
Rank errors of merged summaries add, so over a merge tree the error is at most
``n * h / (2 * capacity)``, where ``h`` is the most compressions any value went through
(one when its partition had more than ``capacity`` values, plus one per merge on its
way to the root that overflowed). Reading a quantile adds at most one item's weight
(``n / capacity``). Each sketch tracks its own guarantee (:attr:`QuantileSketch.rank_error`):

    |rank(quantile(q)) - q * n| <= rank_error * n,   rank_error <= (h + 2) / (2 * capacity)

For 1,000 partitions of more than ``capacity`` values merged in a balanced tree,
``h <= 1 + 10``: with the default capacity of 4096 the bound is 0.16% of the rows
(measured errors are a fraction of that). Merging in a chain instead of a tree makes
``h`` grow with the number of partitions: always merge in a tree.

Everything is deterministic (no sampling): the same values in the same partitions give
the same sketch. Non-finite values (NaN, +-inf) are ignored, as the moments ignore them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from tasks.features.arrays import get_array_module, is_device_array, to_numpy

#: Items a sketch keeps: exact up to this many values; 64 KiB of values and weights beyond.
DEFAULT_CAPACITY = 4096


@dataclass(frozen=True, eq=False)
class QuantileSketch:
    """Quantile summary of one column; build with :meth:`from_values`, combine with :meth:`merge`.

    ``values`` are sorted float64; ``weights`` is ``None`` while every value is held
    once (the exact state), else how many rows each value stands for. ``count``,
    ``min`` and ``max`` are always exact. ``error`` is the absolute bound on the
    summary's rank error accumulated by compressions (0 while exact).
    """

    values: np.ndarray
    weights: np.ndarray | None
    count: int
    min: float
    max: float
    capacity: int = DEFAULT_CAPACITY
    error: float = 0.0

    @classmethod
    def empty(cls, capacity: int = DEFAULT_CAPACITY) -> "QuantileSketch":
        """The sketch of no values: the identity of :meth:`merge`."""
        _check_capacity(capacity)
        return cls(np.empty(0, dtype=np.float64), None, 0, math.nan, math.nan, capacity, 0.0)

    @classmethod
    def from_values(cls, values: Any, capacity: int = DEFAULT_CAPACITY) -> "QuantileSketch":
        """Sketch of a 1-D NumPy or CuPy array; costs one sort of its finite values.

        A CuPy array is filtered and sorted on the device; only the at most ``capacity``
        kept values come to the host.
        """
        _check_capacity(capacity)
        if getattr(values, "ndim", None) != 1:
            raise ValueError(
                f"QuantileSketch.from_values needs a 1-D array, got shape {getattr(values, 'shape', type(values))}; "
                "use block_sketches for a 2-D block"
            )
        if values.dtype.kind not in "fiub":
            raise TypeError(f"QuantileSketch.from_values needs numbers, got dtype {values.dtype}")
        xp = get_array_module(values)
        if is_device_array(values):
            ordered = values.astype(xp.float64)
            ordered = ordered[xp.isfinite(ordered)]
            ordered.sort()
        else:
            # One copy, one in-place sort: -inf sorts first, +inf just before NaN, which
            # sorts last, so the finite values are the middle slice; no mask pass needed.
            ordered = values.astype(np.float64, copy=True)
            ordered.sort()
            ordered = ordered[np.searchsorted(ordered, -np.inf, "right") : np.searchsorted(ordered, np.inf, "left")]
        n = int(ordered.shape[0])
        if n == 0:
            return cls.empty(capacity)
        lo, hi = (float(v) for v in to_numpy(ordered[xp.asarray([0, n - 1])]))
        if n <= capacity:
            return cls(to_numpy(ordered).copy(), None, n, lo, hi, capacity, 0.0)
        # Slice j of n/capacity unit weights keeps the value at its middle rank.
        picks = (np.arange(capacity, dtype=np.int64) * 2 + 1) * n // (2 * capacity)
        kept = to_numpy(ordered[xp.asarray(picks)])
        weights = np.full(capacity, n / capacity)
        return cls(kept, weights, n, lo, hi, capacity, n / (2 * capacity))

    @property
    def is_exact(self) -> bool:
        """True while the sketch holds every value, so quantiles equal ``np.quantile``'s."""
        return self.weights is None

    @property
    def rank_error(self) -> float:
        """Guaranteed bound on ``|rank(quantile(q)) - q * count| / count`` (0 while exact)."""
        if self.is_exact or self.count == 0:
            return 0.0
        return (self.error + float(self.weights.max())) / self.count

    def weighted_values(self) -> tuple[np.ndarray, np.ndarray]:
        """The kept values (sorted) and how many rows each stands for; weights sum to ``count``.

        Statistics of a transformed column (clipped, say) come from these: exact while
        :attr:`is_exact`.
        """
        if self.weights is None:
            return self.values, np.ones(self.values.shape[0], dtype=np.float64)
        return self.values, self.weights

    def merge(self, other: "QuantileSketch") -> "QuantileSketch":
        """The sketch of both sketches' values; neither input changes.

        The result keeps the smaller capacity, so its bound holds for both inputs.
        """
        if not isinstance(other, QuantileSketch):
            raise TypeError(f"can only merge a QuantileSketch with another, got {type(other).__name__}")
        capacity = min(self.capacity, other.capacity)
        if other.count == 0 and self.capacity == capacity:
            return self
        if self.count == 0 and other.capacity == capacity:
            return other
        count = self.count + other.count
        lo = float(np.fmin(self.min, other.min))
        hi = float(np.fmax(self.max, other.max))
        error = self.error + other.error
        values = np.concatenate([self.values, other.values])
        if self.weights is None and other.weights is None and count <= capacity:
            return QuantileSketch(np.sort(values), None, count, lo, hi, capacity, error)
        weights = np.concatenate([self.weighted_values()[1], other.weighted_values()[1]])
        # Order by value, then weight, so merge(a, b) and merge(b, a) are identical.
        order = np.lexsort((weights, values))
        values, weights = values[order], weights[order]
        if values.shape[0] > capacity:
            values, weights = _compress(values, weights, count, capacity)
            error += count / (2 * capacity)
        return QuantileSketch(values, weights, count, lo, hi, capacity, error)

    def quantiles(self, qs: Sequence[float] | np.ndarray) -> np.ndarray:
        """Values at the quantiles ``qs`` (each in [0, 1]), with NumPy's default linear
        interpolation; float64, NaN for every q when the sketch has no values."""
        q = np.atleast_1d(np.asarray(qs, dtype=np.float64))
        if q.ndim != 1:
            raise ValueError(f"quantiles needs a flat list of quantiles, got shape {q.shape}")
        if np.any(~((q >= 0.0) & (q <= 1.0))):
            raise ValueError(f"quantiles must lie in [0, 1], got {q[~((q >= 0.0) & (q <= 1.0))][0]!r}")
        if self.count == 0:
            return np.full(q.shape, np.nan)
        if self.weights is None:
            return np.asarray(np.quantile(self.values, q), dtype=np.float64)
        # Item i holds the 0-based ranks [C_i, C_i + w_i); it stands at their centre, and the
        # exact min and max anchor the ends, so a weight-1 item sits where np.quantile puts it.
        before = np.cumsum(self.weights) - self.weights
        centres = before + (self.weights - 1.0) / 2.0
        xs, ys = centres, self.values
        if centres[0] > 0.0:
            xs, ys = np.concatenate([[0.0], xs]), np.concatenate([[self.min], ys])
        last = float(self.count - 1)
        if xs[-1] < last:
            xs, ys = np.concatenate([xs, [last]]), np.concatenate([ys, [self.max]])
        return np.clip(np.interp(q * last, xs, ys), self.min, self.max)


def _compress(values: np.ndarray, weights: np.ndarray, total: int, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """``capacity`` items of weight ``total / capacity``: item j is the value at the middle of
    the j-th equal slice of the cumulative weight. Moves every rank by at most half a slice."""
    cumulative = np.cumsum(weights)
    scale = cumulative[-1] / total  # 1 up to rounding; keeps targets inside the summed weight
    targets = (np.arange(capacity, dtype=np.float64) + 0.5) * (total / capacity) * scale
    picks = np.minimum(np.searchsorted(cumulative, targets, side="right"), values.shape[0] - 1)
    return values[picks], np.full(capacity, total / capacity)


def _check_capacity(capacity: int) -> None:
    if not isinstance(capacity, (int, np.integer)) or isinstance(capacity, bool) or capacity < 2:
        raise ValueError(f"a quantile sketch's capacity must be an integer of at least 2, got {capacity!r}")


def block_sketches(block: Any, capacity: int = DEFAULT_CAPACITY) -> list[QuantileSketch]:
    """One sketch per column of a 2-D block (rows x columns), NumPy or CuPy."""
    if getattr(block, "ndim", None) != 2:
        raise ValueError(f"block_sketches needs a 2-D array (rows x columns), got {getattr(block, 'shape', type(block))}")
    return [QuantileSketch.from_values(block[:, j], capacity) for j in range(block.shape[1])]


def merge_sketch_lists(a: Sequence[QuantileSketch], b: Sequence[QuantileSketch]) -> list[QuantileSketch]:
    """Column by column merge of two blocks' sketches (as :func:`tasks.features.stats.tree_reduce` wants)."""
    if len(a) != len(b):
        raise ValueError(f"cannot merge sketches of {len(a)} and {len(b)} columns")
    return [x.merge(y) for x, y in zip(a, b)]
