"""The evaluation of one model, as a pure function of its bundle and the split frames.

Wires the pieces (splits, per-task judging, champion, bootstrap, gate, slices) together
into an :class:`~tasks.evaluate.result.EvaluationResult`; touches no storage, so it is
tested on in-memory frames.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from tasks.errors import ConfigError, DataError
from tasks.evaluate import baselines as baseline_models
from tasks.evaluate.baselines import _baseline_rows
from tasks.evaluate.bootstrap import N_BOOTSTRAP, Resampled, _interval, bootstrap_many
from tasks.evaluate.calibration import _choose_threshold
from tasks.evaluate.champion import ChampionLookup, _champion_comparison, _ChampionScored, _score_champion
from tasks.evaluate.gate import MIN_GATE_UNITS, _gate
from tasks.evaluate.judge import _judge_anomaly, _judge_binary, _judge_multiclass, _judge_ranking, _judge_regression
from tasks.evaluate.main_score import _main_on
from tasks.evaluate.metric_names import _GREATER_IS_BETTER, _Metric, main_metric
from tasks.evaluate.ranking import RANKING_K
from tasks.evaluate.result import EvaluationResult, _none_for_nan
from tasks.evaluate.scores import PredictsFeatures, _binary_proba
from tasks.evaluate.slices import _slices
from tasks.evaluate.splits import _NOT_FEATURES, SEGMENT_COLUMN, _split_groups, _split_xy


def evaluate_model(
    *,
    bundle: PredictsFeatures,
    train: pd.DataFrame,
    test: pd.DataFrame,
    task: str,
    min_lift: float = 0.0,
    seed: int = 0,
    n_bootstrap: int = N_BOOTSTRAP,
    validation: pd.DataFrame | None = None,
    champion: PredictsFeatures | ChampionLookup | None = None,
    max_regression: float = 0.0,
    confidence: float = 0.95,
    threshold: float = 0.5,
    threshold_rule: str = "fixed",
    ndcg_k: int = RANKING_K,
    precision_k: int = 0,
    segment: str | None = None,
) -> EvaluationResult:
    """Score the model, its baselines and the champion on the same test rows and decide whether the model goes on.

    Baselines are refitted here rather than trusted from training, so a model is only ever
    compared with predictors that saw exactly its training rows. ``bundle.predict_features``
    returns, per task: P(positive) (binary), class probabilities (multiclass), the value
    (regression), or a score per row, higher ranking first (ranking) or more anomalous
    (anomaly detection). Ranking splits carry the query id column ``_group``.

    ``champion``: the endpoint's current model (a bundle, or a :class:`ChampionLookup` from
    the stage), or None on a first deployment. ``validation``: the validation split, used to
    choose the binary threshold when ``threshold_rule`` is ``max_f1``. ``segment``: the name
    of the column whose values get their own metrics, read from the test split's
    ``_segment`` column. The gate's rules are in :func:`_gate`.
    """
    metric = main_metric(task, ndcg_k)
    spec = dict(getattr(bundle, "spec", None) or {})
    if spec.get("task") not in (None, task):
        raise ConfigError(
            f"the model was trained for {spec['task']} but the config says task {task!r}: "
            "retrain after changing the task"
        )
    feature_names = list(spec.get("feature_names") or [c for c in test.columns if c not in _NOT_FEATURES])
    if len(test) == 0:
        raise DataError("the test split is empty: add data or raise split.test in the config")
    if len(train) == 0:
        raise DataError("the train split is empty: add data or lower split.validation/split.test in the config")
    X_test, y_test = _split_xy(test, feature_names, "test")
    X_train, y_train = _split_xy(train, feature_names, "train")
    g_test = _split_groups(test, "test") if task == "ranking" else None
    g_train = _split_groups(train, "train") if task == "ranking" else None
    if len(y_train) > baseline_models.MAX_BASELINE_TRAIN_ROWS:  # read here, so one setting (and one patch) rules both
        keep = _baseline_rows(len(y_train), g_train, seed)
        X_train, y_train = X_train[keep], y_train[keep]
        g_train = g_train[keep] if g_train is not None else None

    raw = np.asarray(bundle.predict_features(X_test))
    if task == "ranking":
        judged = _judge_ranking(raw, feature_names, X_train, y_train, g_train, X_test, y_test, g_test, seed, ndcg_k)
    elif task == "anomaly_detection":
        judged = _judge_anomaly(raw, X_train, X_test, y_test, precision_k)
        if isinstance(judged, np.ndarray):
            return _unjudged_anomaly(metric, spec, judged, len(y_test), min_lift, max_regression, confidence)
    elif task == "binary_classification":
        validation_scores = None
        if threshold_rule == "max_f1" and validation is not None and len(validation):
            X_val, y_val = _split_xy(validation, feature_names, "validation")
            validation_scores = (y_val.astype(np.int64), _binary_proba(np.asarray(bundle.predict_features(X_val)), len(y_val)))
        chosen = _choose_threshold(threshold_rule, threshold, validation_scores)
        judged = _judge_binary(raw, X_train, y_train, X_test, y_test, seed, chosen)
    elif task == "multiclass_classification":
        judged = _judge_multiclass(raw, spec, X_train, y_train, X_test, y_test, seed)
    else:
        judged = _judge_regression(raw, X_train, y_train, X_test, y_test, seed)

    model = _main_on(task, judged.y, judged.model_score, judged.groups, ndcg_k)
    mains = {name: _main_on(task, judged.y, s, judged.groups, ndcg_k) for name, s in judged.baseline_scores.items()}
    statistics: dict[str, Resampled] = {"model": model.statistic}
    statistics.update({f"baseline:{name}": m.statistic for name, m in mains.items()})
    statistics.update({f"metric:{name}": s for name, (_, s) in judged.metrics.items() if name != metric.name})
    lookup = champion if isinstance(champion, ChampionLookup) else (ChampionLookup(bundle=champion) if champion is not None else None)
    scored = None
    if lookup is not None:
        scored = _score_champion(
            lookup, task=task, spec=spec, bundle=bundle, judged=judged, X_test=X_test, k=ndcg_k,
            confidence=confidence, max_regression=max_regression,
        )
        if isinstance(scored, _ChampionScored) and scored.on_test_split:
            statistics["champion"] = scored.champion.statistic
    resampled = bootstrap_many(statistics, model.units, n_boot=n_bootstrap, seed=seed)
    model_ci = _interval(resampled["model"])
    baselines = {name: m.value for name, m in mains.items()}
    finite = {n: v for n, v in baselines.items() if math.isfinite(v)}
    sign = 1.0 if metric.greater_is_better else -1.0
    lift_ci = [math.nan, math.nan]
    if finite:
        best_now = (max if metric.greater_is_better else min)(finite, key=finite.get)
        lift_ci = _interval(sign * (resampled["model"] - resampled[f"baseline:{best_now}"]))
    metrics = {
        metric.name: {"value": model.value, "ci": model_ci, "greater_is_better": metric.greater_is_better},
    }
    for name, (value, _) in judged.metrics.items():
        if name != metric.name:
            metrics[name] = {"value": value, "ci": _interval(resampled[f"metric:{name}"]),
                             "greater_is_better": _GREATER_IS_BETTER.get(name.split("@")[0], True)}

    comparison = scored if isinstance(scored, dict) else None
    if isinstance(scored, _ChampionScored):
        if scored.on_test_split:
            pair = resampled["model"], resampled["champion"]
        else:
            both = bootstrap_many(
                {"challenger": scored.challenger.statistic, "champion": scored.champion.statistic},
                scored.challenger.units, n_boot=n_bootstrap, seed=seed,
            )
            pair = both["challenger"], both["champion"]
        comparison = _champion_comparison(scored, metric, *pair, confidence, max_regression)
    best, lift, passed, reason, gate = _gate(
        judged, model, baselines, lift_ci=lift_ci, min_lift=min_lift, champion=comparison,
        max_regression=max_regression, confidence=confidence, model_ci=model_ci,
    )
    for note in judged.notes:
        reason += f". {note[0].upper()}{note[1:]}"
    slices = None
    if segment:
        if SEGMENT_COLUMN in test.columns:
            slices = _slices(judged, segment, test[SEGMENT_COLUMN], best, task, ndcg_k, n_bootstrap, seed)
        else:
            slices = {"column": segment, "rows": [], "problem": (
                f"the test split has no {SEGMENT_COLUMN} column: rerun preprocess with evaluate.segment: {segment}"
                " in the config to carry the column into the splits")}
    return EvaluationResult(
        task=task,
        metric=metric.name,
        greater_is_better=metric.greater_is_better,
        model=float(model.value),
        model_ci=model_ci,
        baselines={k: float(v) for k, v in baselines.items()},
        best_baseline=best,
        lift=lift,
        min_lift=float(min_lift),
        passed=passed,
        reason=reason,
        secondary={k: float(v) for k, v in judged.secondary.items()},
        n_test=len(y_test),
        plots=judged.plots,
        metrics=_none_for_nan(metrics),
        baseline_ci=_none_for_nan({name: _interval(resampled[f"baseline:{name}"]) for name in mains}),
        lift_ci=_none_for_nan(lift_ci),
        threshold=judged.threshold,
        calibration=_none_for_nan(judged.calibration),
        champion=_none_for_nan(comparison),
        slices=_none_for_nan(slices),
        gate=_none_for_nan(gate),
    )


def _unjudged_anomaly(
    metric: _Metric, spec: dict[str, Any], y: np.ndarray, n_test: int, min_lift: float, max_regression: float,
    confidence: float,
) -> EvaluationResult:
    """The verdict without labels of both classes: no metric, so no pass (see docs/design.md)."""
    classes = [str(c) for c in spec.get("label_classes") or []]
    label = spec.get("label") or "the label"
    if y.size == 0:
        found = "no test row has a label"
    else:
        only = classes[int(y[0])] if len(classes) == 2 else str(int(y[0]))
        kind = "anomalies" if y[0] == 1 else "normal"
        found = f"the {y.size} labelled test rows all hold {only!r} ({kind})"
    anomaly = f"the anomaly is {classes[1]!r}" if len(classes) == 2 else "two values, the anomaly last in sorted order, e.g. 0/1"
    reason = (
        f"{found}, so the anomaly detector cannot be judged against the baselines and the gate does not pass a model"
        f" nobody checked: label normal rows and anomalies in {label!r} ({anomaly}), or set deploy.require_passed: false"
        " to deploy it unjudged"
    )
    return EvaluationResult(
        task="anomaly_detection",
        metric=metric.name,
        greater_is_better=metric.greater_is_better,
        model=math.nan,
        model_ci=[math.nan, math.nan],
        baselines={"zscore": math.nan, "iqr": math.nan, "random": math.nan},
        best_baseline="zscore",
        lift=math.nan,
        min_lift=float(min_lift),
        passed=False,
        reason=reason,
        secondary={"labelled": float(y.size), "anomalies": float((y == 1).sum())},
        n_test=int(n_test),
        gate={
            "passed": False, "decided_by": "test_size",
            "checks": [{"check": "test_size", "passed": False, "detail": found + ": no labels of both classes to judge on"}],
            "min_lift": float(min_lift), "max_regression": float(max_regression), "confidence": float(confidence),
            "min_units": MIN_GATE_UNITS,
        },
    )
