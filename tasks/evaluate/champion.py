"""The champion (the endpoint's current model), scored on the same rows as the challenger,
and the paired comparison the gate decides on.

When the champion was trained with another transform it scores the raw test rows through
its own transform.json; when that is impossible the comparison says why instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tasks.errors import DataError
from tasks.evaluate.bootstrap import _interval
from tasks.evaluate.judge import _Judged
from tasks.evaluate.main_score import _Main, _main_on
from tasks.evaluate.metric_names import _Metric
from tasks.evaluate.scores import PredictsFeatures, _binary_proba, _model_scores


@dataclass(frozen=True)
class ChampionLookup:
    """What the evaluate stage found about the endpoint's current model.

    ``bundle``: the champion, loaded. ``source``: where it came from (its model data URL).
    ``rows``: the raw test rows (curated columns, labelled) to score both models through
    their own transforms when the champion's transform differs from this run's.
    ``unavailable``: the champion could not be read (the registry or its artifact failed):
    the gate fails safe, since rerunning may let it compare. ``incomparable``: a champion
    that can never be scored on this run's rows (another task or label): the baselines alone decide.
    """

    bundle: PredictsFeatures | None = None
    source: str | None = None
    rows: pd.DataFrame | None = None
    unavailable: str | None = None
    incomparable: str | None = None


_TRANSFORM_KEYS = ("numeric", "categorical", "datetime", "feature_names")


def same_transform(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two fitted transforms turn raw rows into the same feature matrix, so the
    champion can score this run's feature rows as they are."""
    return all(a.get(key) == b.get(key) for key in _TRANSFORM_KEYS)


class _Incomparable(Exception):
    """The champion can never be scored on these rows; the message says why, in words."""


def _champion_scores(task: str, raw: np.ndarray, spec: Mapping[str, Any], champion_spec: Mapping[str, Any], n: int) -> Any:
    """The champion's predictions in the challenger's terms (class indices of this run's classes)."""
    raw = np.asarray(raw)
    ours, theirs = list(spec.get("label_classes") or []), list(champion_spec.get("label_classes") or [])
    if task == "binary_classification":
        if ours and theirs and ours != theirs:
            raise _Incomparable(f"its label classes {theirs} are not this run's {ours}")
        return _binary_proba(raw, n)
    if task == "multiclass_classification":
        if raw.ndim != 2 or raw.shape[0] != n:
            raise _Incomparable(f"it returned an array of shape {raw.shape}, not (rows, classes) probabilities")
        if not (ours and theirs) or ours == theirs:
            return raw
        proba = np.zeros((n, len(ours)))
        for j, name in enumerate(theirs):
            if name in ours and j < raw.shape[1]:
                proba[:, ours.index(name)] = raw[:, j]
        return proba
    if task == "anomaly_detection" and ours and theirs and ours != theirs:
        raise _Incomparable(f"its label classes {theirs} are not this run's {ours}")
    return _model_scores(raw, n)


def _predict_raw(bundle: PredictsFeatures, rows: pd.DataFrame) -> np.ndarray:
    from tasks.features.transform import apply_transform

    return np.asarray(bundle.predict_features(apply_transform(rows, bundle.spec)))


@dataclass(frozen=True)
class _ChampionScored:
    """Both models' main metric on the same rows, ready to be resampled together."""

    challenger: _Main
    champion: _Main
    scored_on: str
    on_test_split: bool  # the same units as the model's own bootstrap: resampled in that very pass
    base: dict[str, Any]


def _score_champion(
    lookup: ChampionLookup, *, task: str, spec: Mapping[str, Any], bundle: PredictsFeatures, judged: _Judged,
    X_test: np.ndarray, k: int, confidence: float, max_regression: float,
) -> _ChampionScored | dict[str, Any]:
    """The champion scored on this run's test rows, or the comparison's record when it cannot be."""
    base = {"source": lookup.source, "confidence": confidence, "max_regression": max_regression}
    champion = lookup.bundle
    if lookup.unavailable:
        return {**base, "status": "unavailable", "reason": lookup.unavailable}
    if lookup.incomparable or champion is None:
        return {**base, "status": "incomparable", "reason": lookup.incomparable or "no champion model was given"}
    champion_spec = dict(getattr(champion, "spec", None) or {})
    meta = dict(getattr(champion, "metadata", None) or {})
    base.update({"run_id": meta.get("run_id"), "algorithm": meta.get("algorithm")})
    try:
        if champion_spec.get("task") not in (None, task):
            raise _Incomparable(f"it was trained for {champion_spec['task']}, this run for {task}")
        if champion_spec.get("label") and spec.get("label") and champion_spec["label"] != spec["label"]:
            raise _Incomparable(f"it predicts {champion_spec['label']!r}, this run {spec['label']!r}")
        on_test_split = same_transform(spec, champion_spec)
        if on_test_split:
            ours, theirs = judged.model_score, _champion_scores(
                task, champion.predict_features(X_test), spec, champion_spec, X_test.shape[0]
            )
            y, groups = judged.y, judged.groups
            scored_on = "the test split's rows"
        else:
            if lookup.rows is None:
                raise _Incomparable(
                    "its transform differs from this run's (other features or other fitted statistics) and the raw"
                    " test rows to score it through its own transform.json were not available"
                )
            ours, theirs, y, groups = _score_raw_rows(task, bundle, champion, lookup.rows, spec, champion_spec)
            scored_on = (
                f"{len(lookup.rows)} raw test rows re-read from the curated data (its transform differs from this"
                " run's, so each model scores them through its own transform.json)"
            )
        if task == "multiclass_classification":
            ours = ours.argmax(axis=1) if np.ndim(ours) == 2 else ours
            theirs = np.asarray(theirs).argmax(axis=1)
    except _Incomparable as exc:
        return {**base, "status": "incomparable", "reason": f"the champion cannot be scored on this run's test rows: {exc}"}
    except (DataError, ValueError, KeyError) as exc:
        return {**base, "status": "incomparable", "reason": f"the champion could not score this run's test rows: {exc}"}
    challenger = _main_on(task, y, ours, groups, k)
    defender = _main_on(task, y, theirs, groups, k)
    if challenger.statistic is None or defender.statistic is None or challenger.units == 0:
        return {**base, "status": "incomparable", "reason": "no judged rows to compare the two models on"}
    return _ChampionScored(challenger, defender, scored_on, on_test_split, base)


def _champion_comparison(
    scored: _ChampionScored, metric: _Metric, challenger: np.ndarray, champion: np.ndarray, confidence: float,
    max_regression: float,
) -> dict[str, Any]:
    """The paired comparison from both models' metric on the same resamples.

    ``difference`` is challenger minus champion in the better direction (positive: the
    challenger is better, for RMSE too); ``lower_bound`` is its one-sided bound at
    ``confidence``; ``difference_ci`` the two-sided interval whose ends are the one-sided
    bounds at ``confidence`` (so 90% for 0.95); ``p_regression`` the share of resamples in
    which the challenger is worse by more than ``max_regression``."""
    sign = 1.0 if metric.greater_is_better else -1.0
    diff = sign * (challenger - champion)
    finite = diff[np.isfinite(diff)]
    lower = float(np.quantile(finite, 1 - confidence)) if finite.size else math.nan
    upper = float(np.quantile(finite, confidence)) if finite.size else math.nan
    return {
        **scored.base,
        "status": "compared",
        "metric": metric.name,
        "scored_on": scored.scored_on,
        "units": scored.challenger.units,
        "challenger": scored.challenger.value,
        "value": scored.champion.value,
        "ci": _interval(champion),
        "difference": sign * (scored.challenger.value - scored.champion.value),
        "difference_ci": [lower, upper],
        "lower_bound": lower,
        "p_regression": float(np.mean(finite < -max_regression)) if finite.size else None,
    }


def _score_raw_rows(
    task: str, bundle: PredictsFeatures, champion: PredictsFeatures, rows: pd.DataFrame,
    spec: Mapping[str, Any], champion_spec: Mapping[str, Any],
) -> tuple[Any, Any, np.ndarray, np.ndarray | None]:
    from tasks.features.transform import encode_labels, group_ids

    if "format" not in spec or "input_columns" not in champion_spec:
        raise _Incomparable("a model without a complete transform.json cannot score raw rows")
    label = spec["label"]
    if label not in rows.columns:
        raise _Incomparable(f"the raw test rows lack the label column {label!r}")
    y = encode_labels(rows[label], spec)
    groups = group_ids(rows[spec["group"]]) if task == "ranking" else None
    n = len(rows)
    ours = _predict_raw(bundle, rows)
    ours = ours if task == "multiclass_classification" else (_binary_proba(ours, n) if task == "binary_classification" else _model_scores(ours, n))
    theirs = _champion_scores(task, _predict_raw(champion, rows), spec, champion_spec, n)
    return ours, theirs, y, groups
