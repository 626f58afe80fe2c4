"""What a binary model's probabilities mean: the reliability table, the expected calibration
error, and the decision threshold the point metrics are read at.

A ranking metric (ROC-AUC) says nothing about whether "0.8" means 80%; these say it, and
the threshold rule is stated with where it was chosen so the report can show it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.evaluate.bootstrap import Resampled

#: Equal-width bins of predicted probability in the reliability table and the calibration error.
CALIBRATION_BINS = 10


def _calibration_bins(p: np.ndarray) -> np.ndarray:
    """Each probability's bin, as scikit-learn's ``calibration_curve(strategy="uniform")``
    assigns it: bins are (lower, upper], the first one [0, upper]."""
    return np.searchsorted(np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)[1:-1], p)


def _resampled_ece(y: np.ndarray, p: np.ndarray) -> Resampled:
    """Expected calibration error: per equal-width probability bin, |observed rate − mean
    predicted probability| weighted by the bin's share of rows, summed."""
    onehot = np.zeros((p.size, CALIBRATION_BINS))
    onehot[np.arange(p.size), _calibration_bins(p)] = 1.0
    gap = onehot * (np.asarray(y, dtype=np.float64) - p)[:, None]
    return lambda w: np.abs(w @ gap).sum(axis=1) / w.shape[1]


def reliability_table(y: np.ndarray, p: np.ndarray) -> list[dict[str, Any]]:
    """The reliability diagram as rows: each probability bin's range, rows, mean predicted
    probability and observed positive rate (None in an empty bin)."""
    bins = _calibration_bins(p)
    count = np.bincount(bins, minlength=CALIBRATION_BINS)
    predicted = np.bincount(bins, weights=p, minlength=CALIBRATION_BINS)
    observed = np.bincount(bins, weights=(np.asarray(y) == 1).astype(float), minlength=CALIBRATION_BINS)
    rows = []
    for b in range(CALIBRATION_BINS):
        n = int(count[b])
        rows.append({
            "lower": round(b / CALIBRATION_BINS, 6),
            "upper": round((b + 1) / CALIBRATION_BINS, 6),
            "count": n,
            "mean_predicted": float(predicted[b] / n) if n else None,
            "observed_rate": float(observed[b] / n) if n else None,
        })
    return rows


def _choose_threshold(
    rule: str, fixed: float, validation: tuple[np.ndarray, np.ndarray] | None
) -> dict[str, Any]:
    """The binary decision cut: ``fixed`` (``evaluate.threshold``), or with ``max_f1`` the
    validation split's F1-maximising probability (never the test split's: a cut chosen on the
    rows it is judged on flatters F1)."""
    if rule != "max_f1":
        return {"value": float(fixed), "rule": "fixed", "chosen_on": "config (evaluate.threshold)"}
    if validation is None:
        return {"value": float(fixed), "rule": "fixed", "chosen_on": "config (evaluate.threshold)",
                "note": "threshold_rule max_f1 needs the validation split, which was not given: the fixed threshold is used"}
    from sklearn.metrics import precision_recall_curve

    y_val, p_val = validation
    if np.unique(y_val).size < 2:
        return {"value": float(fixed), "rule": "fixed", "chosen_on": "config (evaluate.threshold)",
                "note": "the validation split holds one class only, so no F1-maximising threshold exists: the fixed threshold is used"}
    precision, recall, cuts = precision_recall_curve(y_val, p_val)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)[:-1]
    best = int(np.argmax(f1))
    return {"value": float(cuts[best]), "rule": "max_f1", "chosen_on": "validation split", "validation_f1": float(f1[best])}
