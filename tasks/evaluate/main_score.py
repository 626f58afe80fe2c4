"""The main metric of any predictor on any rows, with its resampled statistic: the one
measure that the baselines, the champion and every slice are compared on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tasks.evaluate.bootstrap import Resampled, _mean_of, _point
from tasks.evaluate.metrics import _resampled_auc, _resampled_macro_f1, _resampled_rmse
from tasks.evaluate.ranking import RankedQueries


@dataclass(frozen=True)
class _Main:
    """A predictor's main metric on some rows: its value, its statistic over resamples of
    the units, and how many units (rows, judged queries, labelled rows) it was measured on."""

    value: float
    statistic: Resampled | None
    units: int


def _main_on(task: str, y: np.ndarray, score: np.ndarray, groups: np.ndarray | None, k: int) -> _Main:
    """``score``: P(positive) (binary), probabilities or predicted class indices (multiclass),
    values (regression), or a score per row (ranking, anomaly detection)."""
    if task == "ranking":
        if y.size == 0:
            return _Main(math.nan, None, 0)
        queries = RankedQueries(groups, y)
        if queries.n_judged == 0:
            return _Main(math.nan, None, 0)
        per_query = queries.ndcg(score, k)
        statistic = _mean_of(per_query)
    elif task == "anomaly_detection":
        known = np.isfinite(y)
        y, score = y[known], np.asarray(score)[known]
        statistic = _resampled_auc(y, score)
    elif task == "binary_classification":
        statistic = _resampled_auc(y, score)
    elif task == "multiclass_classification":
        pred = np.asarray(score).argmax(axis=1) if np.ndim(score) == 2 else np.asarray(score)
        statistic = _resampled_macro_f1(y.astype(np.int64), pred.astype(np.int64))
    else:
        statistic = _resampled_rmse(y, score)
    units = per_query.size if task == "ranking" else int(y.size)
    return _Main(_point(statistic, units), statistic, units)
