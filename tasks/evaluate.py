"""Judge a trained model against baselines fitted on the same data: the pipeline's gate.

A model is only worth registering if it beats what a constant, a regularised linear
model and a shallow tree already achieve on the same test rows; a metric on its own
("AUC 0.83") says nothing about whether the trees earned their keep. The decision is
direction-aware (RMSE falls, AUC and F1 rise) and comes with a sentence saying why, so
the report and the registry can show it to a person.

Ranking is judged per query (NDCG@10 averaged over the test queries, against a random
order and the best single feature; the bootstrap resamples queries). Anomaly detection is
judged against the labels where the data has them (ROC-AUC of the anomaly score, against
z-score and IQR outlier rules and a random score); without labels it cannot be judged, and
the gate says so rather than pass a model nobody checked. See docs/design.md (the evaluate stage).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Protocol

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.aws.target import Target
from tasks.config import PipelineConfig
from tasks.errors import ConfigError, DataError
from tasks.layout import Layout

log = logging.getLogger("updraft.evaluate")

LABEL_COLUMN = "_label"
#: The ranking query id column preprocess writes (``tasks.features.partitions.GROUP_COLUMN``).
GROUP_COLUMN = "_group"
#: Ranking metrics look at the top this many rows of each query.
RANKING_K = 10
#: Columns of a split that are never model inputs.
_NOT_FEATURES = (LABEL_COLUMN, GROUP_COLUMN)

#: Resamples for the bootstrap interval of the model's main metric.
N_BOOTSTRAP = 400
#: Points kept per ROC curve for the report.
MAX_ROC_POINTS = 200
#: (actual, predicted) pairs kept for the regression scatter.
MAX_SCATTER_POINTS = 500
#: Linear and depth-3 tree baselines stop improving long before this many rows; the cap
#: keeps evaluation to seconds on big splits. The test split is never subsampled.
MAX_BASELINE_TRAIN_ROWS = 500_000
#: Ranking's best single feature is chosen on at most this many train rows (whole queries):
#: picking one of a few dozen orders needs far fewer rows than fitting a model, and each
#: try is a sort (30 features on 500,000 rows: 4 s; on this many: under 1 s).
MAX_FEATURE_CHOICE_ROWS = 100_000
#: Bootstrap counts are drawn in blocks of about this many cells (8 MB as float64): small
#: enough to stay in cache and to bound memory on big test splits.
_BOOTSTRAP_BLOCK_CELLS = 1_000_000


class PredictsFeatures(Protocol):
    """What evaluation needs from a model bundle (``tasks.modelbundle.ModelBundle``)."""

    spec: dict[str, Any]

    def predict_features(self, X: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class _Metric:
    name: str
    label: str
    greater_is_better: bool


_MAIN_METRICS = {
    "binary_classification": _Metric("roc_auc", "ROC-AUC", True),
    "multiclass_classification": _Metric("macro_f1", "macro-F1", True),
    "regression": _Metric("rmse", "RMSE", False),
    "ranking": _Metric(f"ndcg@{RANKING_K}", f"NDCG@{RANKING_K}", True),
    "anomaly_detection": _Metric("roc_auc", "ROC-AUC", True),
}
#: How the report names secondary metrics that are not main metrics of a task.
_OTHER_LABELS = {f"map@{RANKING_K}": f"MAP@{RANKING_K}", "precision_at_k": "precision@k"}


def metric_label(name: str) -> str:
    """The name a person reads for a metric key (``roc_auc`` → ``ROC-AUC``)."""
    for metric in _MAIN_METRICS.values():
        if metric.name == name:
            return metric.label
    return _OTHER_LABELS.get(name, name)


@dataclass
class EvaluationResult:
    """The gate's verdict and everything the report shows about it; JSON-ready via :meth:`to_dict`."""

    task: str
    metric: str
    greater_is_better: bool
    model: float
    model_ci: list[float]
    baselines: dict[str, float]
    best_baseline: str
    lift: float
    min_lift: float
    passed: bool
    reason: str
    secondary: dict[str, float]
    n_test: int
    plots: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only; a metric that is undefined (NaN) becomes None, so the JSON is strict."""
        return _finite_or_none(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvaluationResult":
        """Rebuild a result from ``evaluation.json`` (or a run summary's ``evaluate`` entry).

        A metric stored as null (undefined: an anomaly detector judged without labels) reads
        back as NaN, so code that formats the numbers never meets None."""
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        for key in ("model", "lift", "min_lift"):
            if key in values and values[key] is None:
                values[key] = math.nan
        if isinstance(values.get("model_ci"), list):
            values["model_ci"] = [math.nan if v is None else v for v in values["model_ci"]]
        for key in ("baselines", "secondary"):
            if isinstance(values.get(key), dict):
                values[key] = {k: math.nan if v is None else v for k, v in values[key].items()}
        return cls(**values)


# --------------------------------------------------------------------------------------
# metrics


def _roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score))


def _macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, pred, average="macro", zero_division=0))


def _rmse(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(y, float) - np.asarray(pred, float)) ** 2)))


# --------------------------------------------------------------------------------------
# bootstrap: every resample is a row of multiplicities (how often each test row was drawn),
# so a metric is a few whole-matrix operations over a block of resamples at once. Each
# metric prepares its rows once (sorting, one-hot) and returns a function of those counts;
# rows are exchangeable under resampling, so counts may be drawn in the prepared order.

Resampled = Callable[[np.ndarray], np.ndarray]


def _bootstrap_counts(n: int, n_boot: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    block = max(1, min(n_boot, _BOOTSTRAP_BLOCK_CELLS // max(n, 1)))
    done = 0
    while done < n_boot:
        b = min(block, n_boot - done)
        idx = rng.integers(0, n, size=(b, n), dtype=np.int64 if b * n >= 2**31 else np.int32)
        idx += (np.arange(b, dtype=idx.dtype) * n)[:, None]
        yield np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        done += b


def _resampled_auc(y: np.ndarray, score: np.ndarray) -> Resampled:
    # AUC = P(score_pos > score_neg) + P(tie) / 2: walk the distinct scores upwards, weighing
    # each positive by the negatives below it (and half of those tied with it).
    order = np.argsort(score, kind="stable")
    s = score[order]
    neg = (y[order] != 1).astype(np.float64)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    tied = starts.size < s.size

    def auc(w: np.ndarray) -> np.ndarray:
        wn = w * neg
        wp = w - wn
        if tied:
            wp, wn = np.add.reduceat(wp, starts, axis=1), np.add.reduceat(wn, starts, axis=1)
        below = np.cumsum(wn, axis=1)
        below -= 0.5 * wn
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.einsum("ij,ij->i", wp, below) / (wp.sum(axis=1) * wn.sum(axis=1))

    return auc


def _resampled_macro_f1(y: np.ndarray, pred: np.ndarray) -> Resampled:
    classes = np.union1d(y, pred)
    hit = (y == pred)[:, None]
    y_is = y[:, None] == classes[None, :]
    pred_is = pred[:, None] == classes[None, :]
    tp_rows, fn_rows, fp_rows = (y_is & hit).astype(float), (y_is & ~hit).astype(float), (pred_is & ~hit).astype(float)

    def macro_f1(w: np.ndarray) -> np.ndarray:
        tp, fn, fp = w @ tp_rows, w @ fn_rows, w @ fp_rows
        denom = 2 * tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
        # As scikit-learn does: a class in neither the labels nor the predictions of a
        # resample does not count towards its macro average.
        return np.nanmean(f1, axis=1)

    return macro_f1


def _resampled_rmse(y: np.ndarray, pred: np.ndarray) -> Resampled:
    sq = (np.asarray(y, float) - np.asarray(pred, float)) ** 2
    return lambda w: np.sqrt(w @ sq / sq.shape[0])


def bootstrap_interval(statistic: Resampled, n: int, *, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> list[float]:
    """Percentile 95% interval of a metric over resamples of the ``n`` test rows: how far luck alone moves it."""
    rng = np.random.default_rng(seed)
    values = np.concatenate([statistic(counts) for counts in _bootstrap_counts(n, n_boot, rng)])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return [math.nan, math.nan]
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


# --------------------------------------------------------------------------------------
# baselines


def _baseline_models(task: str, seed: int) -> dict[str, Any]:
    from sklearn.dummy import DummyClassifier, DummyRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    if task == "regression":
        return {
            "constant": DummyRegressor(strategy="mean"),
            "ridge": make_pipeline(StandardScaler(), Ridge(alpha=1.0)),
            "decision_tree": DecisionTreeRegressor(max_depth=3, random_state=seed),
        }
    return {
        "constant": DummyClassifier(strategy="prior"),
        "logistic_regression": make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000)),
        "decision_tree": DecisionTreeClassifier(max_depth=3, random_state=seed),
    }


def _positive_proba(estimator: Any, X: np.ndarray) -> np.ndarray:
    proba = estimator.predict_proba(X)
    classes = list(estimator.classes_)
    return proba[:, classes.index(1)] if 1 in classes else np.zeros(X.shape[0])


# --------------------------------------------------------------------------------------
# evaluation


def _split_xy(frame: pd.DataFrame, feature_names: list[str], split: str) -> tuple[np.ndarray, np.ndarray]:
    if LABEL_COLUMN not in frame.columns:
        raise DataError(f"the {split} split has no {LABEL_COLUMN!r} column: rerun preprocess for this run")
    missing = [c for c in feature_names if c not in frame.columns]
    if missing:
        raise DataError(
            f"the {split} split lacks feature column {missing[0]!r} that the model expects: "
            "evaluate the model on the features of the run that trained it"
        )
    X = frame[feature_names].to_numpy(dtype=np.float32)
    y = frame[LABEL_COLUMN].to_numpy(dtype=np.float64)
    return X, y


def _fmt(value: float) -> str:
    if value != 0 and (abs(value) >= 1000 or abs(value) < 0.001):
        return f"{value:.4g}"
    return f"{value:.3f}"


def _decide(metric: _Metric, model: float, baselines: dict[str, float], min_lift: float) -> tuple[str, float, bool, str]:
    pick = max if metric.greater_is_better else min
    best = pick(baselines, key=lambda name: baselines[name])
    lift = model - baselines[best] if metric.greater_is_better else baselines[best] - model
    passed = bool(lift > min_lift)
    head = f"model {metric.label} {_fmt(model)}"
    best_text = f"the best baseline ({best}, {_fmt(baselines[best])})"
    better = "higher" if metric.greater_is_better else "lower"
    if passed:
        reason = f"{head} beats {best_text} by {_fmt(lift)} > min_lift {_fmt(min_lift)}"
    elif lift > 0:
        reason = (
            f"{head} beats {best_text} by only {_fmt(lift)}, "
            f"not by more than min_lift {_fmt(min_lift)}"
        )
    else:
        reason = (
            f"{head} does not beat {best_text} ({better} is better; lift {_fmt(lift)}, "
            f"min_lift {_fmt(min_lift)})"
        )
    return best, float(lift), passed, reason


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


def _class_names(spec: dict[str, Any], k: int) -> list[str]:
    names = spec.get("label_classes") or []
    return [str(n) for n in names] if len(names) == k else [str(i) for i in range(k)]


def evaluate_model(
    *,
    bundle: PredictsFeatures,
    train: pd.DataFrame,
    test: pd.DataFrame,
    task: str,
    min_lift: float = 0.0,
    seed: int = 0,
    n_bootstrap: int = N_BOOTSTRAP,
) -> EvaluationResult:
    """Score the model and its baselines on the same test rows and decide whether the model goes on.

    Baselines are refitted here rather than trusted from training, so a model is only ever
    compared with predictors that saw exactly its training rows. ``bundle.predict_features``
    returns, per task: P(positive) (binary), class probabilities (multiclass), the value
    (regression), or a score per row, higher ranking first (ranking) or more anomalous
    (anomaly detection). Ranking splits carry the query id column ``_group``.
    """
    if task not in _MAIN_METRICS:
        raise ConfigError(
            f"task {task!r} cannot be evaluated yet; use one of {', '.join(_MAIN_METRICS)}"
        )
    metric = _MAIN_METRICS[task]
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
    if len(y_train) > MAX_BASELINE_TRAIN_ROWS:
        keep = _baseline_rows(len(y_train), g_train, seed)
        X_train, y_train = X_train[keep], y_train[keep]
        g_train = g_train[keep] if g_train is not None else None

    raw = np.asarray(bundle.predict_features(X_test))
    if task == "ranking":
        return _evaluate_ranking(
            metric, raw, feature_names, X_train, y_train, g_train, X_test, y_test, g_test, min_lift, seed, n_bootstrap
        )
    if task == "anomaly_detection":
        return _evaluate_anomaly(metric, raw, spec, X_train, X_test, y_test, min_lift, seed, n_bootstrap)
    if task == "binary_classification":
        return _evaluate_binary(metric, raw, X_train, y_train, X_test, y_test, min_lift, seed, n_bootstrap)
    if task == "multiclass_classification":
        return _evaluate_multiclass(metric, raw, spec, X_train, y_train, X_test, y_test, min_lift, seed, n_bootstrap)
    return _evaluate_regression(metric, raw, X_train, y_train, X_test, y_test, min_lift, seed, n_bootstrap)


def _fit_baselines(task: str, seed: int, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    models = _baseline_models(task, seed)
    for estimator in models.values():
        estimator.fit(X, y)
    return models


def _result(metric: _Metric, task: str, model: float, ci: list[float], baselines: dict[str, float],
            min_lift: float, secondary: dict[str, float], n_test: int, plots: dict[str, Any]) -> EvaluationResult:
    best, lift, passed, reason = _decide(metric, model, baselines, min_lift)
    return EvaluationResult(
        task=task,
        metric=metric.name,
        greater_is_better=metric.greater_is_better,
        model=float(model),
        model_ci=ci,
        baselines={k: float(v) for k, v in baselines.items()},
        best_baseline=best,
        lift=lift,
        min_lift=float(min_lift),
        passed=passed,
        reason=reason,
        secondary={k: float(v) for k, v in secondary.items()},
        n_test=int(n_test),
        plots=plots,
    )


def _evaluate_binary(
    metric: _Metric, raw: np.ndarray, X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray,
    y_test: np.ndarray, min_lift: float, seed: int, n_bootstrap: int,
) -> EvaluationResult:
    from sklearn.metrics import average_precision_score, log_loss

    y_test = y_test.astype(np.int64)
    y_train = y_train.astype(np.int64)
    if np.unique(y_test).size < 2:
        raise DataError("the test split holds only one class; AUC is undefined: add data or change split.test")
    if np.unique(y_train).size < 2:
        raise DataError("the train split holds only one class; no classifier can be judged: add data of both classes")
    if raw.ndim == 2 and raw.shape[1] == 2:  # a bundle that returns both columns
        raw = raw[:, 1]
    proba = raw.reshape(-1).astype(np.float64)
    if proba.shape[0] != y_test.shape[0]:
        raise ValueError(f"the model returned {proba.shape[0]} predictions for {y_test.shape[0]} rows")

    model_auc = _roc_auc(y_test, proba)
    fitted = _fit_baselines("binary_classification", seed, X_train, y_train)
    scores = {name: _positive_proba(est, X_test) for name, est in fitted.items()}
    baselines = {name: _roc_auc(y_test, s) for name, s in scores.items()}
    secondary = {
        "pr_auc": float(average_precision_score(y_test, proba)),
        "log_loss": float(log_loss(y_test, np.clip(proba, 1e-15, 1 - 1e-15), labels=[0, 1])),
        "accuracy": float(np.mean((proba >= 0.5) == (y_test == 1))),
    }
    plots = {"roc": {"model": _roc_points(y_test, proba, model_auc)}}
    for name, s in scores.items():
        plots["roc"][name] = _roc_points(y_test, s, baselines[name])
    ci = bootstrap_interval(_resampled_auc(y_test, proba), len(y_test), n_boot=n_bootstrap, seed=seed)
    return _result(metric, "binary_classification", model_auc, ci, baselines, min_lift, secondary, len(y_test), plots)


def _evaluate_multiclass(
    metric: _Metric, raw: np.ndarray, spec: dict[str, Any], X_train: np.ndarray, y_train: np.ndarray,
    X_test: np.ndarray, y_test: np.ndarray, min_lift: float, seed: int, n_bootstrap: int,
) -> EvaluationResult:
    from sklearn.metrics import confusion_matrix, log_loss

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

    model_f1 = _macro_f1(y_test, pred)
    fitted = _fit_baselines("multiclass_classification", seed, X_train, y_train)
    baselines = {name: _macro_f1(y_test, est.predict(X_test).astype(np.int64)) for name, est in fitted.items()}
    clipped = np.clip(proba, 1e-15, None)
    secondary = {
        "accuracy": float(np.mean(pred == y_test)),
        "log_loss": float(log_loss(y_test, clipped / clipped.sum(axis=1, keepdims=True), labels=list(range(k)))),
    }
    matrix = confusion_matrix(y_test, pred, labels=list(range(k)))
    plots = {"confusion": {"labels": _class_names(spec, k), "matrix": matrix.tolist()}}
    ci = bootstrap_interval(_resampled_macro_f1(y_test, pred), len(y_test), n_boot=n_bootstrap, seed=seed)
    return _result(metric, "multiclass_classification", model_f1, ci, baselines, min_lift, secondary, len(y_test), plots)


def _evaluate_regression(
    metric: _Metric, raw: np.ndarray, X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray,
    y_test: np.ndarray, min_lift: float, seed: int, n_bootstrap: int,
) -> EvaluationResult:
    pred = raw.reshape(-1).astype(np.float64)
    if pred.shape[0] != y_test.shape[0]:
        raise ValueError(f"the model returned {pred.shape[0]} predictions for {y_test.shape[0]} rows")
    model_rmse = _rmse(y_test, pred)
    fitted = _fit_baselines("regression", seed, X_train, y_train)
    baselines = {name: _rmse(y_test, est.predict(X_test)) for name, est in fitted.items()}
    residual = ((y_test - pred) ** 2).sum()
    total = ((y_test - y_test.mean()) ** 2).sum()
    secondary = {
        "mae": float(np.mean(np.abs(y_test - pred))),
        "r2": float(1 - residual / total) if total > 0 else math.nan,
    }
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(y_test), min(len(y_test), MAX_SCATTER_POINTS), replace=False)
    plots = {
        "scatter": {
            "actual": [round(float(v), 6) for v in y_test[sample]],
            "predicted": [round(float(v), 6) for v in pred[sample]],
        }
    }
    ci = bootstrap_interval(_resampled_rmse(y_test, pred), len(y_test), n_boot=n_bootstrap, seed=seed)
    return _result(metric, "regression", model_rmse, ci, baselines, min_lift, secondary, len(y_test), plots)


# --------------------------------------------------------------------------------------
# ranking


def _split_groups(frame: pd.DataFrame, split: str) -> np.ndarray:
    if GROUP_COLUMN not in frame.columns:
        raise DataError(
            f"the {split} split has no {GROUP_COLUMN!r} column (the query id ranking needs): rerun preprocess with task ranking"
        )
    return frame[GROUP_COLUMN].to_numpy(dtype=np.int64)


def _baseline_rows(n: int, groups: np.ndarray | None, seed: int, limit: int | None = None) -> np.ndarray:
    """Rows the baselines fit on when the train split is big (over ``limit``, by default
    ``MAX_BASELINE_TRAIN_ROWS``): a random sample of rows, or for ranking of whole queries
    (a query cut in part would be a different query)."""
    limit = MAX_BASELINE_TRAIN_ROWS if limit is None else limit
    rng = np.random.default_rng(seed)
    if groups is None:
        return rng.choice(n, limit, replace=False)
    _, query, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    shuffled = rng.permutation(sizes.size)
    chosen = shuffled[np.cumsum(sizes[shuffled]) <= limit]
    if chosen.size == 0:  # one query larger than the cap: take it whole
        chosen = shuffled[:1]
    return np.flatnonzero(np.isin(query, chosen))


class RankedQueries:
    """A split's rows grouped by query (``_group``), ready to score many rankings of them at once.

    Every metric is computed for all queries in a few whole-array operations (one lexsort per
    ranking), so trying each feature as a ranker stays cheap on big splits. A query is judged
    when it has two rows or more and at least one relevant row (grade > 0): NDCG and AP are
    undefined or constant on the others (scikit-learn's ``ndcg_score`` refuses one-row queries
    and scores 0 for queries with no relevant row, whatever the ranking).
    """

    def __init__(self, groups: np.ndarray, relevance: np.ndarray) -> None:
        groups = np.asarray(groups)
        if groups.size == 0:
            raise ValueError("no rows to rank")
        self.order = np.argsort(groups, kind="stable")
        g = groups[self.order]
        self.n = int(g.size)
        self.starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        self.sizes = np.diff(np.r_[self.starts, self.n])
        self.query = np.repeat(np.arange(self.starts.size), self.sizes)
        self.gain = np.asarray(relevance, dtype=np.float64)[self.order]
        self.relevant = self.gain > 0
        self.n_relevant = np.add.reduceat(self.relevant.astype(np.int64), self.starts)
        self.judged = (self.sizes >= 2) & (self.n_relevant > 0)
        self._ideal: dict[int, np.ndarray] = {}

    @property
    def n_queries(self) -> int:
        return int(self.starts.size)

    @property
    def n_judged(self) -> int:
        return int(self.judged.sum())

    def ndcg(self, score: np.ndarray, k: int = RANKING_K) -> np.ndarray:
        """NDCG@k of each judged query, as scikit-learn's ``ndcg_score(k=k)`` on that query
        alone: linear gains (the grade), discount ``1 / log2(rank + 1)``, and tied scores
        share the average gain of their tie (the expected DCG over the ties' orders)."""
        return self.ndcg_both_ways(score, k)[0]

    def ndcg_both_ways(self, score: np.ndarray, k: int = RANKING_K) -> tuple[np.ndarray, np.ndarray]:
        """NDCG@k of each judged query ranked by ``score`` and by ``-score``, from one sort:
        the lowest-first order is the highest-first one read backwards within each query."""
        if k not in self._ideal:
            self._ideal[k] = self._dcg(self.gain, k)[0]
        ideal = self._ideal[k][self.judged]
        down, up = self._dcg(np.asarray(score, dtype=np.float64)[self.order], k)
        return down[self.judged] / ideal, up[self.judged] / ideal

    def average_precision(self, score: np.ndarray, k: int = RANKING_K, seed: int = 0) -> np.ndarray:
        """AP@k of each judged query: relevance is grade > 0; the precision at each relevant
        row of the top ``k``, summed, over ``min(k, relevant rows of the query)``. Tied scores
        are ordered at random (seeded), so a constant score gains nothing from the rows' order."""
        s = np.asarray(score, dtype=np.float64)[self.order]
        tiebreak = np.random.default_rng(seed).random(self.n)
        ranked, position = self._rank(s, tiebreak)
        hit = self.relevant[ranked] & (position < k)
        running = np.cumsum(hit)
        before = np.repeat((running - hit)[self.starts], self.sizes)
        precision = np.where(hit, (running - before) / (position + 1.0), 0.0)
        ap = np.add.reduceat(precision, self.starts) / np.maximum(np.minimum(k, self.n_relevant), 1)
        return ap[self.judged]

    def _rank(self, s: np.ndarray, tiebreak: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows (in query order) sorted by descending score within each query, and each
        sorted row's 0-based position in its query. Queries stay in place: the query id is
        the primary key, so ``self.starts`` still marks where each begins."""
        keys = (-s, self.query) if tiebreak is None else (tiebreak, -s, self.query)
        ranked = np.lexsort(keys)
        return ranked, np.arange(self.n) - self.starts[self.query]

    def _dcg(self, s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """DCG@k per query of the highest-first and of the lowest-first order of ``s``."""
        ranked, position = self._rank(s)
        sorted_scores = s[ranked]
        gain = self.gain[ranked]
        new_tie = np.r_[True, (self.query[1:] != self.query[:-1]) | (sorted_scores[1:] != sorted_scores[:-1])]
        ties = np.flatnonzero(new_tie)
        lengths = np.diff(np.r_[ties, self.n])
        out = []
        for at in (position, self.sizes[self.query] - 1 - position):
            discount = np.where(at < k, 1.0 / np.log2(at + 2.0), 0.0)
            shared = np.repeat(np.add.reduceat(discount, ties) / lengths, lengths)
            out.append(np.add.reduceat(gain * shared, self.starts))
        return out[0], out[1]


def _model_scores(raw: np.ndarray, n: int) -> np.ndarray:
    score = np.asarray(raw, dtype=np.float64).reshape(-1)
    if score.shape[0] != n:
        raise ValueError(f"the model returned {score.shape[0]} scores for {n} rows")
    bad = int((~np.isfinite(score)).sum())
    if bad:
        raise ValueError(f"the model returned {bad} scores that are not finite numbers (of {n})")
    return score


def _best_single_feature(queries: RankedQueries, X: np.ndarray) -> tuple[int, float, float]:
    """The feature (index, sign) whose order, highest or lowest first, gives the best mean
    NDCG over the train queries, and that NDCG. Ties keep the first feature, highest first."""
    best = (0, 1.0, -math.inf)
    for j in range(X.shape[1]):
        down, up = queries.ndcg_both_ways(X[:, j].astype(np.float64))
        for sign, values in ((1.0, down), (-1.0, up)):
            value = float(values.mean())
            if value > best[2]:
                best = (j, sign, value)
    return best


def _evaluate_ranking(
    metric: _Metric, raw: np.ndarray, feature_names: list[str], X_train: np.ndarray, y_train: np.ndarray,
    g_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, g_test: np.ndarray, min_lift: float, seed: int,
    n_bootstrap: int,
) -> EvaluationResult:
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
    per_query = test_q.ndcg(score)
    j, sign, _ = _best_single_feature(train_q, X_train)
    feature_score = sign * X_test[:, j].astype(np.float64)
    constant = np.zeros(len(y_test))  # all tied: NDCG of a random order, in expectation, exactly
    rankers = {"model": score, "random": constant, "best_single_feature": feature_score}
    curves = {name: [float(test_q.ndcg(s, k).mean()) for k in range(1, RANKING_K + 1)] for name, s in rankers.items()}
    baselines = {name: curves[name][-1] for name in ("random", "best_single_feature")}
    secondary = {
        f"map@{RANKING_K}": float(test_q.average_precision(score, RANKING_K, seed).mean()),
        "queries": float(test_q.n_judged),
        "queries_unjudged": float(test_q.n_queries - test_q.n_judged),
    }
    order = "highest" if sign > 0 else "lowest"
    plots = {
        "ndcg_at_k": {"k": list(range(1, RANKING_K + 1)), **curves},
        "best_single_feature": {"feature": feature_names[j], "order": f"{order} first"},
    }
    ci = bootstrap_interval(lambda w: w @ per_query / per_query.size, per_query.size, n_boot=n_bootstrap, seed=seed)
    result = _result(metric, "ranking", float(per_query.mean()), ci, baselines, min_lift, secondary, len(y_test), plots)
    result.reason += (
        f". {metric.label} is averaged over {test_q.n_judged} test queries; best_single_feature ranks by"
        f" {feature_names[j]!r}, {order} first"
    )
    return result


# --------------------------------------------------------------------------------------
# anomaly detection


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


def _evaluate_anomaly(
    metric: _Metric, raw: np.ndarray, spec: dict[str, Any], X_train: np.ndarray, X_test: np.ndarray,
    y_test: np.ndarray, min_lift: float, seed: int, n_bootstrap: int,
) -> EvaluationResult:
    from sklearn.metrics import average_precision_score

    score = _model_scores(raw, len(y_test))
    known = np.isfinite(y_test)
    y = y_test[known].astype(np.int64)
    if not np.isin(y, (0, 1)).all():
        raise DataError("anomaly labels must be class 0 (normal) or 1 (anomaly): rerun preprocess for this run")
    if y.size == 0 or np.unique(y).size < 2:
        return _unjudged_anomaly(metric, spec, y, len(y_test), min_lift)
    s = score[known]
    scores = {name: rule(X_test[known]) for name, rule in _outlier_baselines(X_train).items()}
    scores["random"] = np.zeros(y.size)  # all tied: AUC of a random score, in expectation, exactly
    model_auc = _roc_auc(y, s)
    baselines = {name: _roc_auc(y, v) for name, v in scores.items()}
    secondary = {
        "precision_at_k": precision_at_k(y, s),
        "anomaly_rate": float(y.mean()),  # precision@k of a random score
        "pr_auc": float(average_precision_score(y, s)),
        "labelled": float(y.size),
        "anomalies": float(y.sum()),
    }
    plots = {"roc": {"model": _roc_points(y, s, model_auc)}}
    for name, v in scores.items():
        plots["roc"][name] = _roc_points(y, v, baselines[name])
    ci = bootstrap_interval(_resampled_auc(y, s), y.size, n_boot=n_bootstrap, seed=seed)
    result = _result(metric, "anomaly_detection", model_auc, ci, baselines, min_lift, secondary, len(y_test), plots)
    if y.size < len(y_test):
        result.reason += f", on the {y.size} labelled of {len(y_test)} test rows"
    return result


def _unjudged_anomaly(metric: _Metric, spec: dict[str, Any], y: np.ndarray, n_test: int, min_lift: float) -> EvaluationResult:
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
    )


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def evaluation_json(result: EvaluationResult) -> str:
    """``evaluation.json``: the file the registry's ModelMetrics points at."""
    return json.dumps(result.to_dict(), indent=2, allow_nan=False)


def load_evaluation(fs: Any, evaluation_uri: str, *, run_id: str, then: str = "run the evaluate stage first") -> EvaluationResult:
    """The gate's verdict on a run, read back from its ``evaluation.json``.

    Register and deploy may be scheduled apart from evaluate; they act on the verdict
    stored beside the model, never on one recomputed. ``then`` ends the message when the
    file is missing or unusable: what the user runs to (re)make it.
    """
    try:
        data = json.loads(fs.cat_file(evaluation_uri))
    except FileNotFoundError:
        raise DataError(f"no evaluation for run {run_id} at {evaluation_uri}: {then}") from None
    except ValueError as exc:  # not JSON, or not UTF-8
        raise DataError(f"{evaluation_uri} is not valid JSON ({exc}): {then}") from None
    required = [f.name for f in fields(EvaluationResult) if f.default is MISSING and f.default_factory is MISSING]
    absent = [name for name in required if name not in data] if isinstance(data, dict) else required
    if absent:
        raise DataError(f"{evaluation_uri} is not an updraft evaluation (no {absent[0]!r}): {then}")
    return EvaluationResult.from_dict(data)


# --------------------------------------------------------------------------------------
# Prefect task: the only place that touches a Target.


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_stage(config: PipelineConfig, target: Target, run_id: str, features_uri: str, model_dir: str) -> EvaluationResult:
    """Evaluate the run's model on its test split and store ``evaluation.json`` beside the model."""
    from tasks.modelbundle import load_model_bundle

    base = features_uri.rstrip("/") + "/"
    options = target.storage_options()
    train = pd.read_parquet(base + "train/", storage_options=options)
    test = pd.read_parquet(base + "test/", storage_options=options)
    bundle = load_model_bundle(model_dir, nthread=os.cpu_count() or 1)  # a batch job: use every core
    result = evaluate_model(bundle=bundle, train=train, test=test, task=config.task, min_lift=config.gate.min_lift)
    uri = Layout(config.bucket, config.name).evaluation(run_id)
    target.filesystem().pipe_file(uri, evaluation_json(result).encode("utf-8"), ContentType="application/json")
    log.info("gate %s: %s", "passed" if result.passed else "failed", result.reason)
    return result
