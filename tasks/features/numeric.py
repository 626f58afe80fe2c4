"""A partition's numeric statistics, on the host column by column or on a GPU as one block.

The fit needs, per numeric feature, the moments of its train values (and of their log1p
where asked), a quantile sketch where a median, clipping or bins are asked, and how many
values were infinite. On the host each pandas column is already a contiguous array, so
the statistics are taken column by column without assembling anything. On a GPU worker
the columns are copied once into a row-major device block and the one-pass kernels of
:mod:`tasks.features.kernels` read it (a row-major block is what they are built for).
Both give the same numbers; ``tests/gpu`` checks the device against the host.

NumPy and pandas only at import time: CuPy is imported when a device is asked for.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tasks.features.arrays import DEVICES, to_numpy
from tasks.features.sketch import QuantileSketch
from tasks.features.stats import ColumnMoments, column_moments, empty_moments, stack_moments
from tasks.features.transform import float_values, host_block, signed_log1p

if TYPE_CHECKING:
    from tasks.config import Features



@dataclass
class NumericStats:
    moments: ColumnMoments
    log_moments: ColumnMoments | None
    sketches: dict[str, QuantileSketch]
    infinite: dict[str, int]


@functools.lru_cache(maxsize=None)
def array_module(device: str) -> ModuleType:
    """``numpy``, or ``cupy`` for ``gpu`` (an error naming what is missing when it cannot be
    had) and for ``auto`` on a worker that has CuPy and a CUDA device."""
    if device not in DEVICES:
        raise ValueError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    if device == "cpu":
        return np
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
        reason = "no CUDA device is visible"
    except ImportError:
        reason = "CuPy is not installed (pip install cupy-cuda12x)"
    except Exception as exc:  # the CUDA runtime's own errors: no driver, no device
        reason = f"CUDA is not usable ({exc})"
    if device == "gpu":
        raise RuntimeError(f"dask.device is gpu but on this worker {reason}; set dask.device to auto or cpu")
    return np


def numeric_stats(train: pd.DataFrame, features: "Features", xp: ModuleType = np) -> NumericStats:
    """The fit's numeric statistics of a partition's train rows, computed where ``xp`` lives."""
    if xp is np:
        return _by_column(train, features)
    return _by_block(train, features, xp)


def _by_column(train: pd.DataFrame, features: "Features") -> NumericStats:
    choices = [features.numeric_transform(c) for c in features.numeric]
    any_log = any(c.log1p for c in choices)
    moments, log_moments, sketches, infinite = [], [], {}, {}
    for name, choice in zip(features.numeric, choices):
        values = float_values(train[name], name)
        moments.append(column_moments(values[:, None]))
        if any_log:
            log_moments.append(column_moments(signed_log1p(values)[:, None]))
        if choice.needs_quantiles:
            sketches[name] = QuantileSketch.from_values(values)
        n_inf = int(np.isinf(values).sum())
        if n_inf:
            infinite[name] = n_inf
    return NumericStats(
        moments=stack_moments(moments) if moments else empty_moments(0),
        log_moments=(stack_moments(log_moments) if log_moments else empty_moments(0)) if any_log else None,
        sketches=sketches,
        infinite=infinite,
    )


def _by_block(train: pd.DataFrame, features: "Features", xp: ModuleType) -> NumericStats:
    """The same statistics from one row-major block in ``xp``'s memory (any array module:
    the tests run this path on NumPy too)."""
    block = xp.asarray(host_block(train, features.numeric))
    choices = [features.numeric_transform(c) for c in features.numeric]
    any_log = any(c.log1p for c in choices)
    moments = column_moments(block).to_host()
    log_moments = column_moments(signed_log1p(block)).to_host() if any_log else None
    sketches = {
        name: QuantileSketch.from_values(block[:, j]) for j, (name, c) in enumerate(zip(features.numeric, choices)) if c.needs_quantiles
    }
    counts = to_numpy(xp.isinf(block).sum(axis=0))
    infinite = {name: int(n) for name, n in zip(features.numeric, counts.tolist()) if n}
    return NumericStats(moments=moments, log_moments=log_moments, sketches=sketches, infinite=infinite)
