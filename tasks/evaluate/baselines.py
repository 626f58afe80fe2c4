"""The predictors a model must beat: a constant, a regularised linear model and a shallow
tree, refitted on (a capped sample of) the same train rows the model saw.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Linear and depth-3 tree baselines stop improving long before this many rows; the cap
#: keeps evaluation to seconds on big splits. The test split is never subsampled.
MAX_BASELINE_TRAIN_ROWS = 500_000


def _baseline_models(task: str, seed: int) -> dict[str, Any]:
    from sklearn.dummy import DummyClassifier, DummyRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    if task == "regression":
        return {
            "mean": DummyRegressor(strategy="mean"),
            "median": DummyRegressor(strategy="median"),
            "ridge": make_pipeline(StandardScaler(), Ridge(alpha=1.0)),
            "decision_tree": DecisionTreeRegressor(max_depth=3, random_state=seed),
        }
    return {
        "constant": DummyClassifier(strategy="prior"),
        "logistic_regression": make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000)),
        "decision_tree": DecisionTreeClassifier(max_depth=3, random_state=seed),
    }


def _fit_baselines(task: str, seed: int, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    models = _baseline_models(task, seed)
    for estimator in models.values():
        estimator.fit(X, y)
    return models


def _positive_proba(estimator: Any, X: np.ndarray) -> np.ndarray:
    proba = estimator.predict_proba(X)
    classes = list(estimator.classes_)
    return proba[:, classes.index(1)] if 1 in classes else np.zeros(X.shape[0])


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
