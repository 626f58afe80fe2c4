"""Judging each task: the model, its baselines and its metrics on the test rows, before the
bootstrap and the gate; plus the plot data (ROC curve, scatter) the report draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tasks.errors import DataError
from tasks.evaluate.anomaly import _outlier_baselines
from tasks.evaluate.baselines import _baseline_rows, _fit_baselines, _positive_proba
from tasks.evaluate.bootstrap import Resampled, _mean_of, _point
from tasks.evaluate.calibration import _resampled_ece, reliability_table
from tasks.evaluate.metric_names import _Metric, main_metric
from tasks.evaluate.metrics import (
    _LOG_LOSS_EPS,
    _binary_log_loss_rows,
    _confusion_rates,
    _resampled_auc,
    _resampled_average_precision,
    _resampled_macro_f1,
    _resampled_precision_at_k,
    _resampled_r2,
    _resampled_rmse,
)
from tasks.evaluate.ranking import RankedQueries, _best_single_feature, _popularity
from tasks.evaluate.scores import _binary_proba, _class_names, _model_scores

#: Points kept per ROC curve for the report.
MAX_ROC_POINTS = 200
#: (actual, predicted) pairs kept for the regression scatter.
MAX_SCATTER_POINTS = 500

#: Ranking's best single feature and popularity feature are chosen on at most this many
#: train rows (whole queries): picking one of a few dozen orders needs far fewer rows than
#: fitting a model, and each try is a sort (30 features on 500,000 rows: 4 s; on this many: under 1 s).
MAX_FEATURE_CHOICE_ROWS = 100_000


def _downsample_curve(xs: np.ndarray, ys: np.ndarray, limit: int) -> tuple[list[float], list[float]]:
    if xs.size > limit:
        keep = np.unique(np.linspace(0, xs.size - 1, limit).round().astype(int))
        xs, ys = xs[keep], ys[keep]
    return [round(float(v), 5) for v in xs], [round(float(v), 5) for v in ys]


def _roc_points(y: np.ndarray, score: np.ndarray, auc: float) -> dict[str, Any]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, score)
    fpr_l, tpr_l = _downsample_curve(fpr, tpr, MAX_ROC_POINTS)
    return {"fpr": fpr_l, "tpr": tpr_l, "auc": auc}


@dataclass
class _Judged:
    """Everything one task's evaluation computed before the bootstrap and the gate."""

    metric: _Metric
    unit: str  # what the gate counts: "test rows", "test queries", "labelled test rows"
    y: np.ndarray  # per test row
    groups: np.ndarray | None
    model_score: Any  # per test row, as _main_on takes it
    baseline_scores: dict[str, Any]
    metrics: dict[str, tuple[float, Resampled]]  # the model's metrics over the same units as the main one
    secondary: dict[str, float]
    plots: dict[str, Any]
    class_counts: dict[str, int] | None = None
    threshold: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def _judge_binary(
    raw: np.ndarray, X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, seed: int,
    threshold: dict[str, Any],
) -> _Judged:
    y_test = y_test.astype(np.int64)
    y_train = y_train.astype(np.int64)
    if np.unique(y_train).size < 2:
        raise DataError("the train split holds only one class; no classifier can be judged: add data of both classes")
    proba = _binary_proba(raw, y_test.shape[0])
    fitted = _fit_baselines("binary_classification", seed, X_train, y_train)
    scores = {name: _positive_proba(est, X_test) for name, est in fitted.items()}
    cut = threshold["value"]
    pred = (proba >= cut).astype(np.int64)
    rates = _confusion_rates(y_test, pred)
    losses = _binary_log_loss_rows(y_test, proba)
    metrics: dict[str, tuple[float, Resampled]] = {}
    statistics = {
        "roc_auc": _resampled_auc(y_test, proba),
        "pr_auc": _resampled_average_precision(y_test, proba),
        "log_loss": _mean_of(losses),
        **rates,
        "brier": _mean_of((proba - y_test) ** 2),
        "ece": _resampled_ece(y_test, proba),
    }
    for name, statistic in statistics.items():
        metrics[name] = (_point(statistic, y_test.size), statistic)
    both = np.unique(y_test).size == 2
    secondary = {"pr_auc": metrics["pr_auc"][0], "log_loss": metrics["log_loss"][0], "accuracy": metrics["accuracy"][0]}
    plots: dict[str, Any] = {}
    if both:
        plots["roc"] = {"model": _roc_points(y_test, proba, metrics["roc_auc"][0])}
        for name, s in scores.items():
            plots["roc"][name] = _roc_points(y_test, s, _point(_resampled_auc(y_test, s), y_test.size))
    calibration = {
        "bins": reliability_table(y_test, proba),
        "ece": metrics["ece"][0],
        "brier": metrics["brier"][0],
    }
    counts = {"0": int((y_test == 0).sum()), "1": int((y_test == 1).sum())}
    return _Judged(
        metric=main_metric("binary_classification"), unit="test rows", y=y_test, groups=None, model_score=proba,
        baseline_scores=scores, metrics=metrics, secondary=secondary, plots=plots, class_counts=counts,
        threshold=threshold, calibration=calibration,
    )


def _judge_multiclass(
    raw: np.ndarray, spec: dict[str, Any], X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray,
    y_test: np.ndarray, seed: int,
) -> _Judged:
    from sklearn.metrics import confusion_matrix

    y_test = y_test.astype(np.int64)
    y_train = y_train.astype(np.int64)
    if raw.ndim != 2 or raw.shape[0] != y_test.shape[0]:
        raise ValueError(f"a multiclass model must return (rows, classes) probabilities, got shape {raw.shape}")
    if np.unique(y_train).size < 2:
        raise DataError("the train split holds only one class; no classifier can be judged: add data of more classes")
    k = max(raw.shape[1], int(y_test.max()) + 1, int(y_train.max()) + 1)
    proba = np.zeros((raw.shape[0], k))
    proba[:, : raw.shape[1]] = raw
    pred = proba.argmax(axis=1)
    fitted = _fit_baselines("multiclass_classification", seed, X_train, y_train)
    scores = {name: est.predict(X_test).astype(np.int64) for name, est in fitted.items()}
    clipped = np.clip(proba, _LOG_LOSS_EPS, None)
    clipped /= clipped.sum(axis=1, keepdims=True)
    losses = -np.log(clipped[np.arange(y_test.size), y_test])
    statistics = {
        "macro_f1": _resampled_macro_f1(y_test, pred),
        "accuracy": _mean_of((pred == y_test).astype(float)),
        "log_loss": _mean_of(losses),
    }
    metrics = {name: (_point(s, y_test.size), s) for name, s in statistics.items()}
    secondary = {"accuracy": metrics["accuracy"][0], "log_loss": metrics["log_loss"][0]}
    matrix = confusion_matrix(y_test, pred, labels=list(range(k)))
    plots = {"confusion": {"labels": _class_names(spec, k), "matrix": matrix.tolist()}}
    counts = {str(c): int((y_test == c).sum()) for c in range(k)}
    judged = _Judged(
        metric=main_metric("multiclass_classification"), unit="test rows", y=y_test, groups=None, model_score=pred,
        baseline_scores=scores, metrics=metrics, secondary=secondary, plots=plots,
    )
    present = sum(1 for v in counts.values() if v > 0)
    if present < 2:
        judged.class_counts = {"present": present}
    return judged


def _judge_regression(
    raw: np.ndarray, X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, seed: int
) -> _Judged:
    pred = raw.reshape(-1).astype(np.float64)
    if pred.shape[0] != y_test.shape[0]:
        raise ValueError(f"the model returned {pred.shape[0]} predictions for {y_test.shape[0]} rows")
    fitted = _fit_baselines("regression", seed, X_train, y_train)
    scores = {name: np.asarray(est.predict(X_test), dtype=np.float64) for name, est in fitted.items()}
    statistics = {
        "rmse": _resampled_rmse(y_test, pred),
        "mae": _mean_of(np.abs(y_test - pred)),
        "r2": _resampled_r2(y_test, pred),
    }
    metrics = {name: (_point(s, y_test.size), s) for name, s in statistics.items()}
    secondary = {"mae": metrics["mae"][0], "r2": metrics["r2"][0]}
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(y_test), min(len(y_test), MAX_SCATTER_POINTS), replace=False)
    plots = {
        "scatter": {
            "actual": [round(float(v), 6) for v in y_test[sample]],
            "predicted": [round(float(v), 6) for v in pred[sample]],
        }
    }
    return _Judged(
        metric=main_metric("regression"), unit="test rows", y=y_test, groups=None, model_score=pred,
        baseline_scores=scores, metrics=metrics, secondary=secondary, plots=plots,
    )


def _judge_ranking(
    raw: np.ndarray, feature_names: list[str], X_train: np.ndarray, y_train: np.ndarray, g_train: np.ndarray,
    X_test: np.ndarray, y_test: np.ndarray, g_test: np.ndarray, seed: int, k: int,
) -> _Judged:
    metric = main_metric("ranking", k)
    score = _model_scores(raw, len(y_test))
    for split, y in (("test", y_test), ("train", y_train)):
        if not np.isfinite(y).all():
            raise DataError(f"the {split} split has rows without a relevance grade: rerun preprocess for this run")
    if len(y_train) > MAX_FEATURE_CHOICE_ROWS:
        keep = _baseline_rows(len(y_train), g_train, seed, MAX_FEATURE_CHOICE_ROWS)
        X_train, y_train, g_train = X_train[keep], y_train[keep], g_train[keep]
    test_q = RankedQueries(g_test, y_test)
    train_q = RankedQueries(g_train, y_train)
    for split, queries in (("test", test_q), ("train", train_q)):
        if queries.n_judged == 0:
            raise DataError(
                f"no {split} query has two or more rows and a relevant one (grade > 0) among its {queries.n_queries}"
                f" queries: {metric.label} is undefined; add data, or check the group column and the grades"
            )
    j, sign, _ = _best_single_feature(train_q, X_train, k)
    rankers = {
        "model": score,
        "random": np.zeros(len(y_test)),  # all tied: NDCG of a random order, in expectation, exactly
        "best_single_feature": sign * X_test[:, j].astype(np.float64),
    }
    popular = _popularity(X_train, y_train, g_train, seed, k)
    if popular is not None:
        rankers["popularity"] = popular.score(X_test[:, popular.feature])
    curves = {name: [float(test_q.ndcg(s, cut).mean()) for cut in range(1, k + 1)] for name, s in rankers.items()}
    per_query_ap = test_q.average_precision(score, k, seed)
    statistics = {metric.name: _mean_of(test_q.ndcg(score, k)), f"map@{k}": _mean_of(per_query_ap)}
    metrics = {name: (_point(s, test_q.n_judged), s) for name, s in statistics.items()}
    secondary = {
        f"map@{k}": metrics[f"map@{k}"][0],
        "queries": float(test_q.n_judged),
        "queries_unjudged": float(test_q.n_queries - test_q.n_judged),
    }
    order = "highest" if sign > 0 else "lowest"
    plots: dict[str, Any] = {
        "ndcg_at_k": {"k": list(range(1, k + 1)), **curves},
        "best_single_feature": {"feature": feature_names[j], "order": f"{order} first"},
    }
    notes = [
        (
            f"{metric.label} is averaged over {test_q.n_judged} test queries; best_single_feature ranks by"
            f" {feature_names[j]!r}, {order} first"
        )
    ]
    if popular is not None:
        plots["popularity"] = {"feature": feature_names[popular.feature], "values": int(popular.values.size)}
        notes.append(f"popularity ranks by the train mean relevance of {feature_names[popular.feature]!r}")
    return _Judged(
        metric=metric, unit="test queries", y=y_test, groups=g_test, model_score=score,
        baseline_scores={name: s for name, s in rankers.items() if name != "model"}, metrics=metrics,
        secondary=secondary, plots=plots, notes=notes,
    )


def _judge_anomaly(
    raw: np.ndarray, X_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, precision_k: int,
) -> _Judged | np.ndarray:
    """The judged detector, or the labelled rows' labels when they do not hold both classes."""
    score = _model_scores(raw, len(y_test))
    known = np.isfinite(y_test)
    y = y_test[known].astype(np.int64)
    if not np.isin(y, (0, 1)).all():
        raise DataError("anomaly labels must be class 0 (normal) or 1 (anomaly): rerun preprocess for this run")
    if y.size == 0 or np.unique(y).size < 2:
        return y
    s = score[known]
    scores = {name: rule(X_test) for name, rule in _outlier_baselines(X_train).items()}
    scores["random"] = np.zeros(len(y_test))  # all tied: AUC of a random score, in expectation, exactly
    statistics = {
        "roc_auc": _resampled_auc(y, s),
        "precision_at_k": _resampled_precision_at_k(y, s, precision_k),
        "pr_auc": _resampled_average_precision(y, s),
    }
    metrics = {name: (_point(st, y.size), st) for name, st in statistics.items()}
    secondary = {
        "precision_at_k": metrics["precision_at_k"][0],
        "anomaly_rate": float(y.mean()),  # precision@k of a random score
        "pr_auc": metrics["pr_auc"][0],
        "labelled": float(y.size),
        "anomalies": float(y.sum()),
    }
    plots = {"roc": {"model": _roc_points(y, s, metrics["roc_auc"][0])}}
    for name, v in scores.items():
        plots["roc"][name] = _roc_points(y, v[known], _point(_resampled_auc(y, v[known]), y.size))
    notes = []
    if y.size < len(y_test):
        notes.append(f"judged on the {y.size} labelled of {len(y_test)} test rows")
    if precision_k:
        notes.append(f"precision@k with k = {precision_k}")
    return _Judged(
        metric=main_metric("anomaly_detection"), unit="labelled test rows", y=y_test, groups=None, model_score=score,
        baseline_scores=scores, metrics=metrics, secondary=secondary, plots=plots,
        class_counts={"0": int((y == 0).sum()), "1": int((y == 1).sum())}, notes=notes,
    )
