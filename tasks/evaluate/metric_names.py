"""Which metric each task is judged on, and how a person reads a metric key.

Kept apart from the numerics so the report, the registry and the CLI can name metrics
(``roc_auc`` → ``ROC-AUC``) and know which direction is better without caring how any of
them is computed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tasks.errors import ConfigError
from tasks.evaluate.ranking import RANKING_K


@dataclass(frozen=True)
class _Metric:
    name: str
    label: str
    greater_is_better: bool


def main_metric(task: str, ndcg_k: int = RANKING_K) -> _Metric:
    """The metric the gate decides on for ``task`` (ranking's cut-off is ``evaluate.ndcg_k``)."""
    fixed = {
        "binary_classification": _Metric("roc_auc", "ROC-AUC", True),
        "multiclass_classification": _Metric("macro_f1", "macro-F1", True),
        "regression": _Metric("rmse", "RMSE", False),
        "anomaly_detection": _Metric("roc_auc", "ROC-AUC", True),
    }
    if task == "ranking":
        return _Metric(f"ndcg@{ndcg_k}", f"NDCG@{ndcg_k}", True)
    if task not in fixed:
        raise ConfigError(
            f"task {task!r} cannot be evaluated yet; use one of {', '.join([*fixed, 'ranking'])}"
        )
    return fixed[task]


_TASKS = ("binary_classification", "multiclass_classification", "regression", "ranking", "anomaly_detection")
#: How the report names metric keys (``ndcg@k`` and ``map@k`` are read by :func:`metric_label`).
_LABELS = {
    "roc_auc": "ROC-AUC", "macro_f1": "macro-F1", "rmse": "RMSE", "pr_auc": "PR-AUC", "log_loss": "log loss",
    "accuracy": "accuracy", "f1": "F1", "recall": "recall", "precision": "precision", "brier": "Brier score",
    "ece": "expected calibration error", "mae": "MAE", "r2": "R²", "precision_at_k": "precision@k",
}
#: Whether a larger value of a metric key is better.
_GREATER_IS_BETTER = {
    "roc_auc": True, "macro_f1": True, "rmse": False, "pr_auc": True, "log_loss": False, "accuracy": True,
    "f1": True, "recall": True, "precision": True, "brier": False, "ece": False, "mae": False, "r2": True,
    "precision_at_k": True,
}


def metric_label(name: str) -> str:
    """The name a person reads for a metric key (``roc_auc`` → ``ROC-AUC``, ``ndcg@5`` → ``NDCG@5``)."""
    at = re.fullmatch(r"(ndcg|map)@(\d+)", name)
    if at:
        return f"{at.group(1).upper()}@{at.group(2)}"
    return _LABELS.get(name, name)
