"""The main metric per value of the segment column (``evaluate.segment``): where a model is weak."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from tasks.evaluate.bootstrap import _interval, bootstrap_many
from tasks.evaluate.judge import _Judged
from tasks.evaluate.main_score import _main_on

#: Slices with fewer units than this are flagged as small: read their numbers as anecdotes.
MIN_SLICE_UNITS = 30
#: At most this many segment values get their own row (the most frequent); the rest are counted together.
MAX_SLICES = 50


def _slices(
    judged: _Judged, segment: str, values: pd.Series, best: str, task: str, k: int, n_bootstrap: int, seed: int,
) -> dict[str, Any]:
    labels = values.astype("string").fillna("(missing)").to_numpy(dtype=object)
    distinct, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    shown = order[:MAX_SLICES]
    rows = []
    for i in shown:
        mask = inverse == i
        model = _main_on(task, judged.y[mask], _rows_of(judged.model_score, mask), _rows_of(judged.groups, mask), k)
        baseline = _main_on(task, judged.y[mask], _rows_of(judged.baseline_scores[best], mask), _rows_of(judged.groups, mask), k)
        ci = (
            _interval(bootstrap_many({"m": model.statistic}, model.units, n_boot=n_bootstrap, seed=seed)["m"])
            if model.statistic is not None and model.units > 0 else [math.nan, math.nan]
        )
        small = model.units < MIN_SLICE_UNITS
        rows.append({
            "value": str(distinct[i]),
            "rows": int(counts[i]),
            "units": int(model.units),
            "model": model.value,
            "ci": ci,
            "best_baseline": baseline.value,
            "small": bool(small),
        })
    result: dict[str, Any] = {
        "column": segment,
        "metric": judged.metric.name,
        "unit": judged.unit,
        "best_baseline": best,
        "min_units": MIN_SLICE_UNITS,
        "rows": rows,
    }
    hidden = order[MAX_SLICES:]
    if hidden.size:
        result["other_values"] = int(hidden.size)
        result["other_rows"] = int(counts[hidden].sum())
    return result


def _rows_of(values: Any, mask: np.ndarray) -> Any:
    return None if values is None else np.asarray(values)[mask]
