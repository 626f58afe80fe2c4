"""What evaluation asks of a model bundle, and how its raw ``predict_features`` output
becomes the scores the metrics take (P(positive), class probabilities, a score per row).

Shared by the model under judgement and the champion, so both are read the same way.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class PredictsFeatures(Protocol):
    """What evaluation needs from a model bundle (``tasks.modelbundle.ModelBundle``)."""

    spec: dict[str, Any]

    def predict_features(self, X: np.ndarray) -> np.ndarray: ...


def _class_names(spec: dict[str, Any], k: int) -> list[str]:
    names = spec.get("label_classes") or []
    return [str(n) for n in names] if len(names) == k else [str(i) for i in range(k)]


def _model_scores(raw: np.ndarray, n: int) -> np.ndarray:
    score = np.asarray(raw, dtype=np.float64).reshape(-1)
    if score.shape[0] != n:
        raise ValueError(f"the model returned {score.shape[0]} scores for {n} rows")
    bad = int((~np.isfinite(score)).sum())
    if bad:
        raise ValueError(f"the model returned {bad} scores that are not finite numbers (of {n})")
    return score


def _binary_proba(raw: np.ndarray, n: int) -> np.ndarray:
    raw = np.asarray(raw)
    if raw.ndim == 2 and raw.shape[1] == 2:  # a bundle that returns both columns
        raw = raw[:, 1]
    proba = raw.reshape(-1).astype(np.float64)
    if proba.shape[0] != n:
        raise ValueError(f"the model returned {proba.shape[0]} predictions for {n} rows")
    return proba
