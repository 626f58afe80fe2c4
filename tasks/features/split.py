"""Which split a row belongs to, decided by the row's own values.

A row's split is a function of its values and a salt only, never of its position,
its file or the partitioning: reruns, re-partitioned data and other workers all
agree, and identical rows always land together (no duplicate leaks from train into
test). The hash is ``pandas.util.hash_pandas_object(frame, index=False)`` over the
row's columns in order, xored with the salt's hash and finished with SplitMix64's
mixer so the 53 bits that pick the split are evenly spread.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pandas.util import hash_pandas_object

from tasks.config import SplitConfig

#: Recorded as transform.json's ``split.hash``; changing it reshuffles every split.
DEFAULT_SALT = "updraft-split-1"
SPLITS: tuple[str, ...] = ("train", "validation", "test")
TRAIN, VALIDATION, TEST = 0, 1, 2


def _salt_hash(salt: str) -> np.uint64:
    return np.uint64(hash_pandas_object(pd.Series([salt], dtype=object), index=False).iloc[0])


def _mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def row_uniforms(frame: pd.DataFrame, salt: str = DEFAULT_SALT) -> np.ndarray:
    """A number in [0, 1) per row, fixed by the row's values and the salt."""
    hashes = hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)
    mixed = _mix(hashes ^ _salt_hash(salt))
    return (mixed >> np.uint64(11)).astype(np.float64) * 2.0**-53


def assign_splits(frame: pd.DataFrame, split: SplitConfig, salt: str = DEFAULT_SALT) -> np.ndarray:
    """Split code per row (``TRAIN``, ``VALIDATION`` or ``TEST``, int8); index ``SPLITS`` for names."""
    u = row_uniforms(frame, salt)
    codes = np.full(len(frame), TRAIN, dtype=np.int8)
    codes[u < split.validation + split.test] = TEST
    codes[u < split.validation] = VALIDATION
    return codes
