"""Anomaly detection: an IsolationForest fitted on the train channel's features, exported as JSON.

No label is used for fitting. Where the validation channel has labels (``_label``: 1 =
anomaly, 0 = normal, empty = not known) the entry point reports ``roc_auc`` and
``precision_at_k`` on the labelled rows: k is the number of true anomalies there, or the
hyperparameter ``k``. The model is written as ``isolation-forest.json`` (each tree's
arrays, ``max_samples_`` and ``offset_``), never as a pickle: archives come from S3, and
unpickling runs code. ``tasks.modelbundle`` scores it with NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from images.training.hyperparameters import parse_hyperparameter
from tasks.errors import ConfigError
from tasks.modelbundle import FOREST_FORMAT

DEFAULT_N_ESTIMATORS = 100
#: Fixed by default so that the same data gives the same model (the pipeline's runs are reproducible).
DEFAULT_RANDOM_STATE = 0
HYPERPARAMETERS = ("n_estimators", "max_samples", "contamination", "random_state", "k")


@dataclass(frozen=True)
class ForestSettings:
    """IsolationForest's settings; ``contamination`` only places the outlier threshold (``offset_``)."""

    n_estimators: int = DEFAULT_N_ESTIMATORS
    max_samples: int | float | str = "auto"
    contamination: float | str = "auto"
    random_state: int = DEFAULT_RANDOM_STATE
    k: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "n_estimators": self.n_estimators,
            "max_samples": self.max_samples,
            "contamination": self.contamination,
            "random_state": self.random_state,
            "k": self.k,
        }


def _int(value: Any, name: str, raw: Any, minimum: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"hyperparameter {name!r} must be an integer >= {minimum}, got {raw!r}")
    return value


def resolve_forest_settings(raw: Mapping[str, Any]) -> ForestSettings:
    """The job's hyperparameters as :class:`ForestSettings`; any other name is an error that lists the known ones."""
    params = {str(k): parse_hyperparameter(v) for k, v in raw.items()}
    unknown = sorted(set(params) - set(HYPERPARAMETERS))
    if unknown:
        raise ConfigError(
            f"hyperparameter(s) {', '.join(unknown)} are not used by anomaly_detection (an IsolationForest); "
            f"it takes {', '.join(HYPERPARAMETERS)}"
        )
    n_estimators = _int(params.get("n_estimators", DEFAULT_N_ESTIMATORS), "n_estimators", raw.get("n_estimators"), 1)
    random_state = _int(params.get("random_state", DEFAULT_RANDOM_STATE), "random_state", raw.get("random_state"), 0)
    k = _int(params["k"], "k", raw.get("k"), 1) if "k" in params else None

    max_samples = params.get("max_samples", "auto")
    if isinstance(max_samples, bool) or not (
        max_samples == "auto"
        or (isinstance(max_samples, int) and max_samples >= 1)
        or (isinstance(max_samples, float) and 0.0 < max_samples <= 1.0)
    ):
        raise ConfigError(
            "hyperparameter 'max_samples' must be 'auto', a row count >= 1 or a fraction in (0, 1], "
            f"got {raw.get('max_samples')!r}"
        )
    contamination = params.get("contamination", "auto")
    if isinstance(contamination, bool) or not (
        contamination == "auto" or (isinstance(contamination, (int, float)) and 0.0 < contamination <= 0.5)
    ):
        raise ConfigError(
            f"hyperparameter 'contamination' must be 'auto' or a share in (0, 0.5], got {raw.get('contamination')!r}"
        )
    return ForestSettings(n_estimators, max_samples, contamination, random_state, k)


def fit_isolation_forest(X: np.ndarray, settings: ForestSettings, n_jobs: int) -> Any:
    """An ``IsolationForest`` fitted on ``X`` (labels play no part)."""
    import warnings

    from sklearn.ensemble import IsolationForest

    model = IsolationForest(
        n_estimators=settings.n_estimators,
        max_samples=settings.max_samples,
        contamination=settings.contamination,
        random_state=settings.random_state,
        n_jobs=n_jobs,
    )
    with warnings.catch_warnings():
        # "max_samples is greater than the number of samples": it then uses them all, as documented.
        warnings.filterwarnings("ignore", message="max_samples .* greater than the total number of samples")
        return model.fit(X)


def export_isolation_forest(model: Any, n_features: int) -> dict[str, Any]:
    """The fitted forest as the JSON document ``tasks.modelbundle.IsolationForestScorer`` reads.

    Feature indices are the model's columns: where a tree was fitted on a subset of the
    features (``max_features`` < 1), its indices are mapped back through that subset.
    """
    trees = []
    for estimator, subset in zip(model.estimators_, model.estimators_features_):
        tree = estimator.tree_
        feature = tree.feature.astype(np.int64)
        if len(subset) != n_features:  # scikit-learn indexed X by the subset for this tree
            feature = np.where(feature >= 0, np.asarray(subset, dtype=np.int64)[np.maximum(feature, 0)], feature)
        trees.append(
            {
                "children_left": tree.children_left.astype(np.int64).tolist(),
                "children_right": tree.children_right.astype(np.int64).tolist(),
                "feature": feature.tolist(),
                "threshold": tree.threshold.astype(np.float64).tolist(),
                "n_node_samples": tree.n_node_samples.astype(np.int64).tolist(),
                "missing_go_to_left": tree.missing_go_to_left.astype(np.int64).tolist(),
            }
        )
    return {
        "format": FOREST_FORMAT,
        "n_features": int(n_features),
        "max_samples_": int(model.max_samples_),
        "offset_": float(model.offset_),
        "trees": trees,
    }


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` against 0/1 labels (ties count half)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, scores))


def precision_at_k(y: np.ndarray, scores: np.ndarray, k: int) -> float:
    """The share of true anomalies among the ``k`` highest-scored rows (ties keep the rows' order)."""
    k = min(k, len(y))
    top = np.argsort(-scores, kind="stable")[:k]
    return float(np.mean(y[top])) if k else float("nan")


def anomaly_metrics(y: np.ndarray | None, scores: np.ndarray, k: int | None) -> tuple[dict[str, float], str]:
    """``({metric: value}, note)`` on the rows whose label is known; empty, with the reason, when none can be had."""
    if y is None:
        return {}, "the channel has no labels"
    known = ~np.isnan(y)
    labels, scored = y[known], scores[known]
    anomalies = int(labels.sum())
    if anomalies == 0 or anomalies == len(labels):
        return {}, f"{len(labels)} labelled rows, {anomalies} anomalies: both kinds are needed"
    chosen = k if k is not None else anomalies
    metrics = {"roc_auc": roc_auc(labels, scored), "precision_at_k": precision_at_k(labels, scored, chosen)}
    return metrics, f"{len(labels)} labelled rows, {anomalies} anomalies, k={min(chosen, len(labels))}"
