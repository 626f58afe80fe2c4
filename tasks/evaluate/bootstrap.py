"""Resampling machinery that gives every metric its interval and makes comparisons paired.

Every resample is a row of multiplicities (how often each unit was drawn), drawn from one
index matrix per block, so a metric is a few whole-matrix operations over a block of
resamples at once. Each metric prepares its rows once (sorting, one-hot) and returns a
function of those counts. The counts are always in the units' original order (a metric that
sorts gathers its columns), so every statistic evaluated on the same block sees the same
resample: that is what makes the champion comparison and the lift over a baseline paired.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping

import numpy as np

#: Resamples for every bootstrap interval unless ``evaluate.bootstrap`` says otherwise.
N_BOOTSTRAP = 1000
#: Every interval the report shows for a metric is a two-sided percentile interval at this level.
CI_LEVEL = 0.95

#: Bootstrap counts are drawn in blocks of about this many cells (8 MB as float64): small
#: enough to stay in cache and to bound memory on big test splits.
_BOOTSTRAP_BLOCK_CELLS = 1_000_000
#: Blocks of resamples are evaluated on up to this many threads.
_BOOTSTRAP_THREADS = 4

Resampled = Callable[[np.ndarray], np.ndarray]


def _block_sizes(n: int, n_boot: int) -> list[int]:
    block = max(1, min(n_boot, _BOOTSTRAP_BLOCK_CELLS // max(n, 1)))
    return [min(block, n_boot - start) for start in range(0, n_boot, block)]


def _draw_counts(n: int, b: int, rng: np.random.Generator) -> np.ndarray:
    """``b`` resamples of ``n`` units as multiplicities: one (b, n) index matrix, counted per row."""
    idx = rng.integers(0, n, size=(b, n), dtype=np.int64 if b * n >= 2**31 else np.int32)
    idx += (np.arange(b, dtype=idx.dtype) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def bootstrap_many(statistics: Mapping[str, Resampled], n: int, *, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> dict[str, np.ndarray]:
    """Every statistic on the same ``n_boot`` resamples of the ``n`` units: value ``[i]`` of
    each array comes from resample ``i``, so differences between them are paired.

    Resamples come in blocks, each drawn from its own generator spawned from ``seed`` (so the
    result does not depend on how many threads ran them), and blocks run on a few threads:
    NumPy releases the GIL in the draws, gathers and sums that make up the work."""
    if n == 0:
        return {name: np.full(n_boot, np.nan) for name in statistics}
    sizes = _block_sizes(n, n_boot)
    seeds = np.random.SeedSequence(seed).spawn(len(sizes))

    def run(i: int) -> dict[str, np.ndarray]:
        counts = _draw_counts(n, sizes[i], np.random.default_rng(seeds[i]))
        return {name: np.asarray(statistic(counts), dtype=np.float64) for name, statistic in statistics.items()}

    workers = min(_BOOTSTRAP_THREADS, os.cpu_count() or 1, len(sizes))
    if workers <= 1:
        parts = [run(i) for i in range(len(sizes))]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers, thread_name_prefix="bootstrap") as pool:
            parts = list(pool.map(run, range(len(sizes))))  # threads take blocks in turn: a few in memory at once
    return {name: np.concatenate([part[name] for part in parts]) for name in statistics}


def _interval(values: np.ndarray, level: float = CI_LEVEL) -> list[float]:
    """Percentile interval of the finite resampled values; NaNs where there are none."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return [math.nan, math.nan]
    tail = (1 - level) / 2
    lo, hi = np.quantile(finite, [tail, 1 - tail])
    return [float(lo), float(hi)]


def bootstrap_interval(statistic: Resampled, n: int, *, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> list[float]:
    """Percentile 95% interval of a metric over resamples of the ``n`` test rows: how far luck alone moves it."""
    return _interval(bootstrap_many({"s": statistic}, n, n_boot=n_boot, seed=seed)["s"])


def _point(statistic: Resampled, n: int) -> float:
    """The metric on the data as it is: every unit drawn once."""
    if n == 0:
        return math.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.asarray(statistic(np.ones((1, n))))[0])


def _mean_of(values: np.ndarray) -> Resampled:
    """The (weighted) mean of per-unit values: accuracy, log loss, per-query NDCG, ...
    (every resample draws exactly as many units as there are, so the weights sum to ``n``)."""
    v = np.asarray(values, dtype=np.float64)
    return lambda w: (w @ v) / w.shape[1]
