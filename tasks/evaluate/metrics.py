"""Point metrics in their resampled form: each takes the rows once and returns a function of
bootstrap counts (:data:`tasks.evaluate.bootstrap.Resampled`).

Written as whole-matrix operations rather than calls to scikit-learn per resample, so a
thousand resamples of a large test split cost seconds; tests check each against
scikit-learn on the data and on a resample.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tasks.evaluate.bootstrap import Resampled

#: Probabilities are clipped to [eps, 1 - eps] for log loss, as scikit-learn did before 1.5.
_LOG_LOSS_EPS = 1e-15

#: A predictor with at most this many distinct scores (a constant, a shallow tree, a rule
#: counting features) is resampled through a one-hot matrix product instead of a sort.
_ONEHOT_GROUPS = 128


class _ScoreGroups:
    """The units grouped by distinct score, lowest first: per resample, the weight of the
    positives and of the negatives at each distinct score, from which AUC, PR-AUC and
    precision@k follow by cumulative sums.

    A predictor with few distinct scores goes through a one-hot matrix product; any other is
    sorted once and its counts gathered in that order per block. Its few tied scores (float32
    probabilities collide now and then) are corrected on the tied rows alone: summing every
    row into its group would cost more than the whole metric."""

    def __init__(self, y: np.ndarray, score: np.ndarray) -> None:
        s = np.asarray(score, dtype=np.float64)
        pos = (np.asarray(y) == 1).astype(np.float64)
        distinct, inverse = np.unique(s, return_inverse=True)
        self.m = int(distinct.size)
        self.onehot: np.ndarray | None = None
        if self.m <= _ONEHOT_GROUPS:
            both = np.zeros((s.size, 2 * self.m))
            both[np.arange(s.size), inverse.ravel() + self.m * (pos == 0)] = 1.0  # positives' groups, then negatives'
            self.onehot = both
            return
        self.order = np.argsort(s, kind="stable")
        self.pos = pos[self.order]
        sorted_s = s[self.order]
        self.starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
        sizes = np.diff(np.r_[self.starts, s.size])
        tied = sizes > 1
        self.tie_first = self.starts[tied]  # first and last sorted position of each tied score
        self.tie_last = self.tie_first + sizes[tied] - 1
        self.tie_rows = np.concatenate([np.arange(a, b + 1) for a, b in zip(self.tie_first, self.tie_last)]) if tied.any() else np.zeros(0, dtype=np.intp)
        self.tie_group = np.repeat(np.arange(self.tie_first.size), sizes[tied])
        self.tie_starts = np.r_[0, np.cumsum(sizes[tied])[:-1]].astype(np.intp)

    def sums(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positives, negatives) weight per distinct score, lowest score first: (b, m) each."""
        if self.onehot is not None:
            both = w @ self.onehot
            return both[:, : self.m], both[:, self.m :]
        wp, wn = self.rows(w)
        if self.tie_rows.size:
            wp, wn = np.add.reduceat(wp, self.starts, axis=1), np.add.reduceat(wn, self.starts, axis=1)
        return wp, wn

    def rows(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positives, negatives) weight per unit in score order (sorted mode only)."""
        ws = np.take(w, self.order, axis=1)  # np.take gathers columns several times faster than w[:, order]
        wp = ws * self.pos
        ws -= wp
        return wp, ws


def _resampled_auc(y: np.ndarray, score: np.ndarray) -> Resampled:
    """ROC-AUC (scikit-learn's ``roc_auc_score``; NaN when a resample lacks a class).

    AUC = P(score_pos > score_neg) + P(tie) / 2: walk the distinct scores upwards, weighing
    each positive by the negatives below it (and half of those tied with it)."""
    groups = _ScoreGroups(y, score)

    def auc(w: np.ndarray) -> np.ndarray:
        if groups.onehot is not None:
            wp, wn = groups.sums(w)
            below = np.cumsum(wn, axis=1)
            below -= 0.5 * wn
            numerator = np.einsum("ij,ij->i", wp, below)
        else:
            wp, wn = groups.rows(w)
            below = np.cumsum(wn, axis=1)  # a positive's own entry adds nothing: its wn is 0
            numerator = np.einsum("ij,ij->i", wp, below)
            if groups.tie_rows.size:
                # Inside a tie a positive should see the negatives below the tie plus half of the tie's.
                t = groups.tie_rows
                strict = below[:, groups.tie_first] - wn[:, groups.tie_first]
                tie_wn = np.add.reduceat(wn[:, t], groups.tie_starts, axis=1)
                wanted = (strict + 0.5 * tie_wn)[:, groups.tie_group]
                numerator += np.einsum("ij,ij->i", wp[:, t], wanted - below[:, t])
        positives = wp.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return numerator / (positives * (w.shape[1] - positives))

    return auc


def _resampled_average_precision(y: np.ndarray, score: np.ndarray) -> Resampled:
    """PR-AUC as scikit-learn's ``average_precision_score``: the precision at each distinct
    score (highest first), weighted by the recall gained there."""
    groups = _ScoreGroups(y, -np.asarray(score, dtype=np.float64))  # highest score first

    def average_precision(w: np.ndarray) -> np.ndarray:
        wp, wn = groups.sums(w) if groups.onehot is not None else groups.rows(w)
        tp = np.cumsum(wp, axis=1)
        precision = np.cumsum(wn, axis=1)
        precision += tp
        # Weights are whole counts: where nothing is seen yet tp is 0 too, so dividing by 1 gives 0.
        np.maximum(precision, 1.0, out=precision)
        np.divide(tp, precision, out=precision)
        with np.errstate(invalid="ignore", divide="ignore"):
            numerator = np.einsum("ij,ij->i", wp, precision)
            if groups.onehot is None and groups.tie_rows.size:
                # Every row of a tie gets the precision at the tie's end (its last row).
                t = groups.tie_rows
                end = groups.tie_last[groups.tie_group]
                numerator += np.einsum("ij,ij->i", wp[:, t], precision[:, end] - precision[:, t])
            return numerator / tp[:, -1]

    return average_precision


def _confusion_rates(y: np.ndarray, pred: np.ndarray) -> dict[str, Resampled]:
    """F1, recall, precision and accuracy of hard 0/1 predictions (0 where a ratio has no
    denominator, as scikit-learn's ``zero_division=0``; recall NaN without positives). The
    four share one matrix product per block of resamples."""
    y1, p1 = np.asarray(y) == 1, np.asarray(pred) == 1
    cells = np.stack([y1 & p1, ~y1 & p1, y1 & ~p1], axis=1).astype(np.float64)  # tp, fp, fn
    last: list[tuple[Any, Any]] = [(None, None)]  # (block, its sums): one reference, swapped whole (threads)

    def counts(w: np.ndarray) -> np.ndarray:
        block, sums = last[0]
        if block is not w:
            sums = w @ cells
            last[0] = (w, sums)
        return sums

    def ratio(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), empty)

    def f1(w: np.ndarray) -> np.ndarray:
        tp, fp, fn = counts(w).T
        return ratio(2 * tp, 2 * tp + fp + fn, 0.0)

    def recall(w: np.ndarray) -> np.ndarray:
        tp, _, fn = counts(w).T
        return ratio(tp, tp + fn, math.nan)

    def precision(w: np.ndarray) -> np.ndarray:
        tp, fp, _ = counts(w).T
        return ratio(tp, tp + fp, 0.0)

    def accuracy(w: np.ndarray) -> np.ndarray:
        _, fp, fn = counts(w).T
        return 1.0 - (fp + fn) / w.shape[1]

    return {"f1": f1, "recall": recall, "precision": precision, "accuracy": accuracy}


def _binary_log_loss_rows(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    q = np.clip(p, _LOG_LOSS_EPS, 1 - _LOG_LOSS_EPS)
    return -np.where(np.asarray(y) == 1, np.log(q), np.log1p(-q))


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
    return lambda w: np.sqrt(w @ sq / w.shape[1])


def _resampled_r2(y: np.ndarray, pred: np.ndarray) -> Resampled:
    y = np.asarray(y, dtype=np.float64)
    sq = (y - np.asarray(pred, dtype=np.float64)) ** 2
    center = y.mean() if y.size else 0.0  # shifting y leaves its variance unchanged and keeps the sums well-conditioned
    yc = y - center

    def r2(w: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            sst = w @ (yc**2) - (w @ yc) ** 2 / w.shape[1]
            return np.where(sst > 1e-12 * np.maximum(w @ (yc**2), 1e-300), 1 - (w @ sq) / sst, np.nan)

    return r2


def _resampled_precision_at_k(y: np.ndarray, score: np.ndarray, k: int = 0) -> Resampled:
    """:func:`precision_at_k` per resample: the top ``k`` copies by score (``k`` 0: as many as
    the resample's anomalies), rows tied at the cut counted by expectation."""
    groups = _ScoreGroups(y, -np.asarray(score, dtype=np.float64))  # highest score first

    def precision(w: np.ndarray) -> np.ndarray:
        wp, wn = groups.sums(w)
        wt = wp + wn
        cut = wp.sum(axis=1) if k == 0 else np.full(w.shape[0], float(k))
        before = np.cumsum(wt, axis=1) - wt
        taken = np.clip(cut[:, None] - before, 0.0, wt)
        with np.errstate(invalid="ignore", divide="ignore"):
            hits = np.einsum("ij,ij->i", taken, np.where(wt > 0, wp / np.where(wt > 0, wt, 1.0), 0.0))
            return np.where((cut > 0) & (cut <= w.shape[1]), hits / cut, np.nan)

    return precision
