"""Anomaly detection's precision@k and its unsupervised baselines (z-score, IQR, random),
which need no labels to fit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def precision_at_k(y: np.ndarray, score: np.ndarray, k: int | None = None) -> float:
    """The share of true anomalies (``y == 1``) among the ``k`` highest scores (``k`` defaults
    to the number of true anomalies, where precision and recall meet). Scores tied at the
    cut count by expectation: each tied row is in the top ``k`` with the same chance."""
    y = np.asarray(y)
    score = np.asarray(score, dtype=np.float64)
    k = int((y == 1).sum()) if k is None else int(k)
    if k <= 0 or k > score.size:
        return math.nan
    cut = np.partition(score, score.size - k)[score.size - k]
    above, tied = score > cut, score == cut
    needed = k - int(above.sum())
    hits = float((y[above] == 1).sum()) + float((y[tied] == 1).sum()) * needed / int(tied.sum())
    return hits / k


def _outlier_baselines(X_train: np.ndarray) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Classical outlier rules fitted on the train features (all rows: the detector saw no
    labels either): the mean absolute z-score over features, and how many features fall
    outside Tukey's fences (1.5 IQR beyond the quartiles)."""
    X = X_train.astype(np.float64)
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    q1, q3 = np.percentile(X, [25, 75], axis=0)
    low, high = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
    return {
        "zscore": lambda Z: np.abs((Z.astype(np.float64) - mean) / std).mean(axis=1),
        "iqr": lambda Z: ((Z < low) | (Z > high)).sum(axis=1).astype(np.float64),
    }
