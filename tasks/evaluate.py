"""Judge a trained model against baselines fitted on the same data and against the champion: the pipeline's gate.

A model is only worth registering if it beats what a constant, a regularised linear
model and a shallow tree already achieve on the same test rows, and if it is not worse
than the model serving the endpoint today (the champion); a metric on its own ("AUC
0.83") says nothing about either. Every metric comes with a bootstrap interval, the
champion comparison is a paired bootstrap (both models scored on the same resampled
rows), and the decision comes with sentences saying which comparison decided and with
what numbers, so the report and the registry can show it to a person.

Per task (see docs/design.md, "the evaluate stage"): binary (ROC-AUC; PR-AUC, log loss,
F1/recall/precision/accuracy at the chosen threshold, Brier score, expected calibration
error and a reliability table), multiclass (macro-F1; accuracy, log loss), regression
(RMSE; MAE, R²), ranking (NDCG@k per query; MAP@k; the bootstrap resamples queries) and
anomaly detection (ROC-AUC against labels where the data has them; precision@k, PR-AUC;
without labels it cannot be judged, and the gate says so rather than pass a model nobody
checked). Metrics per value of a segment column (``evaluate.segment``) show where a model
is weak.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
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
from tasks.resume import SAFE_TO_RETRY

log = logging.getLogger("updraft.evaluate")

LABEL_COLUMN = "_label"
#: The ranking query id column preprocess writes (``tasks.features.partitions.GROUP_COLUMN``).
GROUP_COLUMN = "_group"
#: The raw value of ``evaluate.segment`` that preprocess carries into every split (a string,
#: null where missing; ``tasks.features.partitions.SEGMENT_COLUMN``); never a feature.
SEGMENT_COLUMN = "_segment"
#: Ranking metrics look at the top this many rows of each query unless ``evaluate.ndcg_k`` says otherwise.
RANKING_K = 10
#: Columns of a split that are never model inputs.
_NOT_FEATURES = (LABEL_COLUMN, GROUP_COLUMN, SEGMENT_COLUMN)

#: Resamples for every bootstrap interval unless ``evaluate.bootstrap`` says otherwise.
N_BOOTSTRAP = 1000
#: Every interval the report shows for a metric is a two-sided percentile interval at this level.
CI_LEVEL = 0.95
#: Points kept per ROC curve for the report.
MAX_ROC_POINTS = 200
#: (actual, predicted) pairs kept for the regression scatter.
MAX_SCATTER_POINTS = 500
#: Linear and depth-3 tree baselines stop improving long before this many rows; the cap
#: keeps evaluation to seconds on big splits. The test split is never subsampled.
MAX_BASELINE_TRAIN_ROWS = 500_000
#: Ranking's best single feature and popularity feature are chosen on at most this many
#: train rows (whole queries): picking one of a few dozen orders needs far fewer rows than
#: fitting a model, and each try is a sort (30 features on 500,000 rows: 4 s; on this many: under 1 s).
MAX_FEATURE_CHOICE_ROWS = 100_000
#: Bootstrap counts are drawn in blocks of about this many cells (8 MB as float64): small
#: enough to stay in cache and to bound memory on big test splits.
_BOOTSTRAP_BLOCK_CELLS = 1_000_000
#: Blocks of resamples are evaluated on up to this many threads.
_BOOTSTRAP_THREADS = 4

#: The gate does not conclude on fewer judged units (test rows; test queries for ranking;
#: labelled test rows for anomaly detection): its intervals are too wide to tell models apart.
MIN_GATE_UNITS = 30
#: ...nor, for binary classification and anomaly detection, with fewer test rows of either class.
MIN_CLASS_ROWS = 5
#: Slices with fewer units than this are flagged as small: read their numbers as anecdotes.
MIN_SLICE_UNITS = 30
#: At most this many segment values get their own row (the most frequent); the rest are counted together.
MAX_SLICES = 50
#: The raw test rows for a champion with another transform are rebuilt from curated data of
#: at most this many rows (read whole in the evaluate stage's memory, about 1 GB at 25 columns).
MAX_CURATED_ROWS_FOR_CHAMPION = 5_000_000
#: Equal-width bins of predicted probability in the reliability table and the calibration error.
CALIBRATION_BINS = 10
#: Probabilities are clipped to [eps, 1 - eps] for log loss, as scikit-learn did before 1.5.
_LOG_LOSS_EPS = 1e-15
#: Ranking's popularity baseline looks at features with at most this many distinct train values
#: (ids, categories, codes, binned numbers): a continuous feature has no "popular" values.
MAX_POPULARITY_VALUES = 1000
#: Each value's mean train relevance is shrunk towards the overall mean by this many
#: pseudo-rows, so a value seen once does not rank first on one lucky grade.
POPULARITY_PRIOR_ROWS = 10


class PredictsFeatures(Protocol):
    """What evaluation needs from a model bundle (``tasks.modelbundle.ModelBundle``)."""

    spec: dict[str, Any]

    def predict_features(self, X: np.ndarray) -> np.ndarray: ...


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


@dataclass
class EvaluationResult:
    """The gate's verdict and everything the report shows about it; JSON-ready via :meth:`to_dict`.

    The first fields are the original contract (registry, CLI and report read them); the
    later ones only add: ``metrics`` (every metric of the model: ``value``, ``ci``,
    ``greater_is_better``), ``baseline_ci``, ``lift_ci`` (paired, against the best
    baseline), ``threshold`` and ``calibration`` (binary), ``champion`` (the comparison with
    the endpoint's current model), ``slices`` (per segment value) and ``gate`` (each check
    with its numbers and words). Undefined numbers in those are None in memory and in JSON.
    """

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
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    baseline_ci: dict[str, list[float | None]] = field(default_factory=dict)
    lift_ci: list[float | None] = field(default_factory=list)
    threshold: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    champion: dict[str, Any] | None = None
    slices: dict[str, Any] | None = None
    gate: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only; a metric that is undefined (NaN) becomes None, so the JSON is strict."""
        return _finite_or_none(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationResult:
        """Rebuild a result from ``evaluation.json`` (or a run summary's ``evaluate`` entry).

        A metric stored as null (undefined: an anomaly detector judged without labels) reads
        back as NaN in the original fields, so code that formats those numbers never meets
        None; the added fields keep None. A file written before a field existed reads with
        that field's default."""
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
# bootstrap: every resample is a row of multiplicities (how often each unit was drawn),
# drawn from one index matrix per block, so a metric is a few whole-matrix operations over
# a block of resamples at once. Each metric prepares its rows once (sorting, one-hot) and
# returns a function of those counts. The counts are always in the units' original order
# (a metric that sorts gathers its columns), so every statistic evaluated on the same block
# sees the same resample: that is what makes the champion comparison and the lift over a
# baseline paired.

Resampled = Callable[[np.ndarray], np.ndarray]


def _block_sizes(n: int, n_boot: int) -> list[int]:
    block = max(1, min(n_boot, _BOOTSTRAP_BLOCK_CELLS // max(n, 1)))
    return [min(block, n_boot - start) for start in range(0, n_boot, block)]


def _draw_counts(n: int, b: int, rng: np.random.Generator) -> np.ndarray:
    """``b`` resamples of ``n`` units as multiplicities: one (b, n) index matrix, counted per row."""
    idx = rng.integers(0, n, size=(b, n), dtype=np.int64 if b * n >= 2**31 else np.int32)
    idx += (np.arange(b, dtype=idx.dtype) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def bootstrap_many(statistics: Mapping[str, Resampled], n: int, *, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> dict[str, np.ndarray]:
    """Every statistic on the same ``n_boot`` resamples of the ``n`` units: value ``[i]`` of
    each array comes from resample ``i``, so differences between them are paired.

    Resamples come in blocks, each drawn from its own generator spawned from ``seed`` (so the
    result does not depend on how many threads ran them), and blocks run on a few threads:
    NumPy releases the GIL in the draws, gathers and sums that make up the work."""
    if n == 0:
        return {name: np.full(n_boot, np.nan) for name in statistics}
    sizes = _block_sizes(n, n_boot)
    seeds = np.random.SeedSequence(seed).spawn(len(sizes))

    def run(i: int) -> dict[str, np.ndarray]:
        counts = _draw_counts(n, sizes[i], np.random.default_rng(seeds[i]))
        return {name: np.asarray(statistic(counts), dtype=np.float64) for name, statistic in statistics.items()}

    workers = min(_BOOTSTRAP_THREADS, os.cpu_count() or 1, len(sizes))
    if workers <= 1:
        parts = [run(i) for i in range(len(sizes))]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers, thread_name_prefix="bootstrap") as pool:
            parts = list(pool.map(run, range(len(sizes))))  # threads take blocks in turn: a few in memory at once
    return {name: np.concatenate([part[name] for part in parts]) for name in statistics}


def _interval(values: np.ndarray, level: float = CI_LEVEL) -> list[float]:
    """Percentile interval of the finite resampled values; NaNs where there are none."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return [math.nan, math.nan]
    tail = (1 - level) / 2
    lo, hi = np.quantile(finite, [tail, 1 - tail])
    return [float(lo), float(hi)]


def bootstrap_interval(statistic: Resampled, n: int, *, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> list[float]:
    """Percentile 95% interval of a metric over resamples of the ``n`` test rows: how far luck alone moves it."""
    return _interval(bootstrap_many({"s": statistic}, n, n_boot=n_boot, seed=seed)["s"])


def _point(statistic: Resampled, n: int) -> float:
    """The metric on the data as it is: every unit drawn once."""
    if n == 0:
        return math.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.asarray(statistic(np.ones((1, n))))[0])


def _mean_of(values: np.ndarray) -> Resampled:
    """The (weighted) mean of per-unit values: accuracy, log loss, per-query NDCG, ...
    (every resample draws exactly as many units as there are, so the weights sum to ``n``)."""
    v = np.asarray(values, dtype=np.float64)
    return lambda w: (w @ v) / w.shape[1]


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


# --------------------------------------------------------------------------------------
# reading the splits


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


def _fmt(value: float) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if value != 0 and (abs(value) >= 1000 or abs(value) < 0.001):
        return f"{value:.4g}"
    return f"{value:.3f}"


def _signed(value: float) -> str:
    return ("+" if value is not None and math.isfinite(value) and value >= 0 else "") + _fmt(value)


def _fmt_ci(ci: list[float]) -> str:
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


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


def _model_scores(raw: np.ndarray, n: int) -> np.ndarray:
    score = np.asarray(raw, dtype=np.float64).reshape(-1)
    if score.shape[0] != n:
        raise ValueError(f"the model returned {score.shape[0]} scores for {n} rows")
    bad = int((~np.isfinite(score)).sum())
    if bad:
        raise ValueError(f"the model returned {bad} scores that are not finite numbers (of {n})")
    return score


# --------------------------------------------------------------------------------------
# ranking


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


def _best_single_feature(queries: RankedQueries, X: np.ndarray, k: int = RANKING_K) -> tuple[int, float, float]:
    """The feature (index, sign) whose order, highest or lowest first, gives the best mean
    NDCG over the train queries, and that NDCG. Ties keep the first feature, highest first."""
    best = (0, 1.0, -math.inf)
    for j in range(X.shape[1]):
        down, up = queries.ndcg_both_ways(X[:, j].astype(np.float64), k)
        for sign, values in ((1.0, down), (-1.0, up)):
            value = float(values.mean())
            if value > best[2]:
                best = (j, sign, value)
    return best


@dataclass(frozen=True)
class _Popularity:
    """Ranking's popularity baseline: each row scores the train mean relevance of its value of one feature."""

    feature: int
    values: np.ndarray  # sorted distinct train values
    means: np.ndarray  # their shrunk mean relevance
    prior: float  # the overall train mean: what an unseen value scores

    def score(self, column: np.ndarray) -> np.ndarray:
        return _lookup_means(self.values, self.means, column, self.prior)


def _value_means(values: np.ndarray, relevance: np.ndarray, prior: float) -> tuple[np.ndarray, np.ndarray]:
    distinct, inverse = np.unique(values, return_inverse=True)
    sums = np.bincount(inverse.ravel(), weights=relevance, minlength=distinct.size)
    counts = np.bincount(inverse.ravel(), minlength=distinct.size)
    return distinct, (sums + POPULARITY_PRIOR_ROWS * prior) / (counts + POPULARITY_PRIOR_ROWS)


def _lookup_means(distinct: np.ndarray, means: np.ndarray, column: np.ndarray, prior: float) -> np.ndarray:
    if distinct.size == 0:
        return np.full(column.shape[0], prior)
    at = np.clip(np.searchsorted(distinct, column), 0, distinct.size - 1)
    return np.where(distinct[at] == column, means[at], prior)


def _popularity(X: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int, k: int) -> _Popularity | None:
    """The popularity ranker, or None when no feature has few enough distinct values.

    The feature is chosen honestly: value means from half of the train queries, NDCG on the
    other half (a value mean scored on the rows it was computed from would reward ids that
    memorise their own grades); the chosen feature's means are then refitted on all train
    rows. Ties keep the first feature."""
    candidates = [j for j in range(X.shape[1]) if 2 <= np.unique(X[:, j]).size <= MAX_POPULARITY_VALUES]
    if not candidates:
        return None
    prior = float(y.mean())
    queries = np.unique(groups)
    fit_queries = np.random.default_rng(seed).permutation(queries)[: queries.size // 2]
    fit = np.isin(groups, fit_queries)
    held = ~fit
    held_q = RankedQueries(groups[held], y[held]) if held.any() else None
    if held_q is None or held_q.n_judged == 0 or not fit.any():  # too few queries to hold any out
        fit = held = np.ones(y.size, dtype=bool)
        held_q = RankedQueries(groups, y)
    best_j, best_value = candidates[0], -math.inf
    for j in candidates:
        distinct, means = _value_means(X[fit, j], y[fit], prior)
        value = float(held_q.ndcg(_lookup_means(distinct, means, X[held, j], prior), k).mean())
        if value > best_value:
            best_j, best_value = j, value
    distinct, means = _value_means(X[:, best_j], y, prior)
    return _Popularity(best_j, distinct, means, prior)


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


# --------------------------------------------------------------------------------------
# the main metric of any predictor on any rows: what baselines, the champion and slices share


@dataclass(frozen=True)
class _Main:
    """A predictor's main metric on some rows: its value, its statistic over resamples of
    the units, and how many units (rows, judged queries, labelled rows) it was measured on."""

    value: float
    statistic: Resampled | None
    units: int


def _main_on(task: str, y: np.ndarray, score: np.ndarray, groups: np.ndarray | None, k: int) -> _Main:
    """``score``: P(positive) (binary), probabilities or predicted class indices (multiclass),
    values (regression), or a score per row (ranking, anomaly detection)."""
    if task == "ranking":
        if y.size == 0:
            return _Main(math.nan, None, 0)
        queries = RankedQueries(groups, y)
        if queries.n_judged == 0:
            return _Main(math.nan, None, 0)
        per_query = queries.ndcg(score, k)
        statistic = _mean_of(per_query)
    elif task == "anomaly_detection":
        known = np.isfinite(y)
        y, score = y[known], np.asarray(score)[known]
        statistic = _resampled_auc(y, score)
    elif task == "binary_classification":
        statistic = _resampled_auc(y, score)
    elif task == "multiclass_classification":
        pred = np.asarray(score).argmax(axis=1) if np.ndim(score) == 2 else np.asarray(score)
        statistic = _resampled_macro_f1(y.astype(np.int64), pred.astype(np.int64))
    else:
        statistic = _resampled_rmse(y, score)
    units = per_query.size if task == "ranking" else int(y.size)
    return _Main(_point(statistic, units), statistic, units)


# --------------------------------------------------------------------------------------
# judging each task: the model, its baselines and its metrics on the test rows


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


def _binary_proba(raw: np.ndarray, n: int) -> np.ndarray:
    raw = np.asarray(raw)
    if raw.ndim == 2 and raw.shape[1] == 2:  # a bundle that returns both columns
        raw = raw[:, 1]
    proba = raw.reshape(-1).astype(np.float64)
    if proba.shape[0] != n:
        raise ValueError(f"the model returned {proba.shape[0]} predictions for {n} rows")
    return proba


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


# --------------------------------------------------------------------------------------
# the champion: the endpoint's current model, scored on the same rows


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


# --------------------------------------------------------------------------------------
# slices: the main metric per value of the segment column


def _slices(
    judged: _Judged, segment: str, values: pd.Series, best: str, task: str, k: int, n_bootstrap: int, seed: int,
) -> dict[str, Any]:
    labels = values.astype("string").fillna("(missing)").to_numpy(dtype=object)
    distinct, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    shown = order[:MAX_SLICES]
    rows = []
    for i in shown:
        mask = inverse == i
        model = _main_on(task, judged.y[mask], _rows_of(judged.model_score, mask), _rows_of(judged.groups, mask), k)
        baseline = _main_on(task, judged.y[mask], _rows_of(judged.baseline_scores[best], mask), _rows_of(judged.groups, mask), k)
        ci = (
            _interval(bootstrap_many({"m": model.statistic}, model.units, n_boot=n_bootstrap, seed=seed)["m"])
            if model.statistic is not None and model.units > 0 else [math.nan, math.nan]
        )
        small = model.units < MIN_SLICE_UNITS
        rows.append({
            "value": str(distinct[i]),
            "rows": int(counts[i]),
            "units": int(model.units),
            "model": model.value,
            "ci": ci,
            "best_baseline": baseline.value,
            "small": bool(small),
        })
    result: dict[str, Any] = {
        "column": segment,
        "metric": judged.metric.name,
        "unit": judged.unit,
        "best_baseline": best,
        "min_units": MIN_SLICE_UNITS,
        "rows": rows,
    }
    hidden = order[MAX_SLICES:]
    if hidden.size:
        result["other_values"] = int(hidden.size)
        result["other_rows"] = int(counts[hidden].sum())
    return result


def _rows_of(values: Any, mask: np.ndarray) -> Any:
    return None if values is None else np.asarray(values)[mask]


# --------------------------------------------------------------------------------------
# the gate


def _gate(
    judged: _Judged, model: _Main, baselines: dict[str, float], *, lift_ci: list[float], min_lift: float,
    champion: dict[str, Any] | None, max_regression: float, confidence: float, model_ci: list[float],
) -> tuple[str, float, bool, str, dict[str, Any]]:
    """Best baseline, lift, verdict, the reason in words, and every check with its numbers.

    Checks, in order: the test set must be big enough to conclude (``MIN_GATE_UNITS`` units
    and ``MIN_CLASS_ROWS`` of each class); the model must beat the best baseline by more than
    ``min_lift`` (a tie with it fails: "more than"); and, with a champion, the one-sided
    ``confidence`` lower bound of (challenger − champion) must be at least ``−max_regression``
    (a tie with the champion, the same predictions, has a bound of exactly 0 and passes:
    "not worse by more than"). A champion that could not be read fails the gate (rerunning
    may compare); one that can never be scored on these rows leaves the decision to the baselines.
    """
    metric = judged.metric
    better = "higher" if metric.greater_is_better else "lower"
    finite = {name: v for name, v in baselines.items() if v is not None and math.isfinite(v)}
    pick = max if metric.greater_is_better else min
    best = pick(finite, key=lambda name: finite[name]) if finite else next(iter(baselines))
    checks: list[dict[str, Any]] = []

    # 1. can the test set say anything at all?
    size_problem = None
    if model.units < MIN_GATE_UNITS:
        size_problem = (
            f"only {model.units} {judged.unit} were judged: the gate needs at least {MIN_GATE_UNITS} to conclude"
            f" (the 95% interval of {metric.label} is {_fmt_ci(model_ci)})"
        )
    elif judged.class_counts is not None:
        if "present" in judged.class_counts:
            size_problem = "the test split holds one class only, so macro-F1 cannot tell the model from the baselines"
        else:
            fewest = min(judged.class_counts.values())
            if fewest < MIN_CLASS_ROWS:
                which = min(judged.class_counts, key=judged.class_counts.get)
                size_problem = (
                    f"the {judged.unit} hold {fewest} of class {which}: {metric.label} needs at least"
                    f" {MIN_CLASS_ROWS} of each class to conclude"
                    + (" (it is undefined with one class only)" if fewest == 0 else f" (95% interval {_fmt_ci(model_ci)})")
                )
    if size_problem is None and not math.isfinite(model.value):
        size_problem = f"{metric.label} of the model is undefined on the test split"
    if size_problem is None and not finite:
        size_problem = f"{metric.label} of every baseline is undefined on the test split"
    checks.append({
        "check": "test_size", "passed": size_problem is None,
        "detail": size_problem or f"{model.units} {judged.unit} judged (at least {MIN_GATE_UNITS} needed)",
    })

    # 2. the baselines
    value_best = finite.get(best, math.nan)
    lift = (model.value - value_best) if metric.greater_is_better else (value_best - model.value)
    head = f"model {metric.label} {_fmt(model.value)}"
    best_text = f"the best baseline ({best}, {_fmt(value_best)})"
    beats = math.isfinite(lift) and lift > min_lift
    if not math.isfinite(lift):
        baseline_text = f"{head} cannot be compared with {best_text}"
    elif beats:
        baseline_text = f"{head} beats {best_text} by {_fmt(lift)} > min_lift {_fmt(min_lift)}"
    elif lift == min_lift:
        baseline_text = (
            f"{head} ties {best_text} (lift {_fmt(lift)} = min_lift {_fmt(min_lift)}): the gate asks for a lift of more"
            " than min_lift, so a tie does not pass"
        )
    elif lift > 0:
        baseline_text = f"{head} beats {best_text} by only {_fmt(lift)}, not by more than min_lift {_fmt(min_lift)}"
    else:
        baseline_text = (
            f"{head} does not beat {best_text} ({better} is better; lift {_fmt(lift)}, min_lift {_fmt(min_lift)})"
        )
    if math.isfinite(lift) and all(v is not None and math.isfinite(v) for v in lift_ci):
        baseline_detail = baseline_text + f"; paired 95% interval of the lift {_fmt_ci(lift_ci)}"
    else:
        baseline_detail = baseline_text
    checks.append({"check": "baseline", "passed": bool(beats), "detail": baseline_detail, "best_baseline": best,
                   "lift": lift, "lift_ci": lift_ci, "min_lift": min_lift})

    # 3. the champion
    champion_ok, champion_text = True, None
    status = (champion or {}).get("status", "none")
    level = f"{100 * confidence:g}%"
    if status == "none":
        champion_text = "no champion to compare with (first deployment): the baselines decide"
    elif status == "unavailable":
        champion_ok = False
        champion_text = (
            f"the champion could not be read ({champion['reason']}), so the gate cannot tell whether this model"
            " regresses and fails safe: rerun the evaluate stage once the registry and the champion's artifact are reachable"
        )
    elif status == "incomparable":
        champion_text = f"{champion['reason']}; the champion comparison is skipped and the baselines decide"
    else:
        diff, lower = champion["difference"], champion["lower_bound"]
        who = f"the champion{' (run ' + str(champion['run_id']) + ')' if champion.get('run_id') else ''}"
        numbers = (
            f"{metric.label} {_fmt(champion['challenger'])} vs {who} {_fmt(champion['value'])}, difference"
            f" {_signed(diff)} ({better} is better), one-sided {level} lower bound {_signed(lower)}"
            f" (paired bootstrap over {champion['units']} {judged.unit})"
        )
        if not math.isfinite(lower):
            champion_ok = False
            champion_text = f"{numbers}: the difference is undefined, so the gate cannot conclude and fails safe"
        elif lower >= -max_regression:
            champion_text = f"{numbers} >= -max_regression {_fmt(max_regression)}: not a regression"
            if diff == 0 and lower == 0:
                champion_text += " (a tie: the two models score these rows identically)"
        else:
            champion_ok = False
            champion_text = (
                f"{numbers} < -max_regression {_fmt(max_regression)}: at {level} confidence this model may be worse"
                f" than the champion by more than max_regression"
            )
    checks.append({"check": "champion", "passed": champion_ok if status in ("compared", "unavailable") else None,
                   "status": status, "detail": champion_text})

    passed = size_problem is None and beats and champion_ok
    if size_problem is not None:
        decided_by = "test_size"
        reason = f"{baseline_text}, but {size_problem}, so the gate fails safe: add data or raise split.test"
    elif not beats:
        decided_by = "baseline"
        reason = baseline_text
    elif not champion_ok:
        decided_by = "champion"
        reason = f"{baseline_text}; but {champion_text}"
    else:
        decided_by = "champion" if status == "compared" else "baseline"
        reason = f"{baseline_text}; {champion_text}"
    if size_problem is None and not beats and champion_text and status != "none":
        reason += f" (champion: {champion_text})"
    gate = {
        "passed": bool(passed),
        "decided_by": decided_by,
        "checks": checks,
        "min_lift": float(min_lift),
        "max_regression": float(max_regression),
        "confidence": float(confidence),
        "min_units": MIN_GATE_UNITS,
    }
    return best, float(lift), bool(passed), reason, gate


# --------------------------------------------------------------------------------------
# evaluation


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
    if len(y_train) > MAX_BASELINE_TRAIN_ROWS:
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


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, np.generic):
        return _finite_or_none(value.item())
    return value


def _none_for_nan(value: Any) -> Any:
    """The added fields hold None where a number is undefined (and plain Python numbers), so
    they compare equal after a JSON round trip."""
    return _finite_or_none(value)


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
# the champion, as the stage finds it


def curated_test_rows(
    curated_uri: str, spec: Mapping[str, Any], storage_options: Mapping[str, Any] | None = None,
    max_rows: int = MAX_CURATED_ROWS_FOR_CHAMPION,
) -> pd.DataFrame:
    """This run's test rows as raw curated columns, rebuilt with the split's own rule.

    The split is a function of each row's values and transform.json's ``split`` record
    (``tasks.features.split``), so applying it again to the curated files, read whole as
    preprocess reads them, finds the same test rows (and rows ingested since, which no model
    trained on). Both models then score them through their own transform.json.
    """
    import fsspec
    import pyarrow.parquet as pq

    from tasks.features.partitions import drop_unlabelled
    from tasks.features.split import TEST, SplitPlan, assign_splits

    plan = SplitPlan.from_json(spec["split"])
    fs, root = fsspec.core.url_to_fs(curated_uri, **dict(storage_options or {}))
    files = sorted(p for p in fs.find(root) if p.endswith(".parquet"))
    if not files:
        raise DataError(f"no curated Parquet files under {curated_uri}")
    total = 0
    for path in files:
        with fs.open(path, "rb") as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    if total > max_rows:
        raise DataError(f"the curated data holds {total:,} rows, more than the {max_rows:,} the evaluate stage reads whole")
    frames = []
    for path in files:
        with fs.open(path, "rb") as handle:
            frame = pq.ParquetFile(handle).read().to_pandas()
        frame, _ = drop_unlabelled(frame, spec["label"], spec["task"])
        frames.append(frame[assign_splits(frame, plan, label=spec["label"]) == TEST])
    return pd.concat(frames, ignore_index=True)


def find_champion(config: PipelineConfig, target: Target, run_id: str, spec: Mapping[str, Any], work_dir: Any) -> ChampionLookup | None:
    """The endpoint's current model, ready to score, or None when there is none (a first deployment).

    Never raises for the champion's sake: whatever goes wrong is said in words in the
    lookup (``unavailable`` when rerunning may help, ``incomparable`` when it cannot)."""
    import botocore.exceptions

    from tasks.aws.errors import error_message, is_call_missing

    try:
        from tasks.registry import champion_model_data
    except ImportError:  # this updraft's registry does not look champions up yet
        log.info("no champion lookup in tasks.registry: judging against the baselines only")
        return None
    try:
        url = champion_model_data(target.client("sagemaker"), config.name, config.endpoint_name)
    except botocore.exceptions.ClientError as exc:
        if is_call_missing(exc):
            log.info("the %s target has no SageMaker model registry: no champion to compare with", target.kind)
            return None
        return ChampionLookup(unavailable=f"looking up the champion of endpoint {config.endpoint_name!r} failed: {error_message(exc)}")
    except botocore.exceptions.BotoCoreError as exc:
        return ChampionLookup(unavailable=f"looking up the champion of endpoint {config.endpoint_name!r} failed: {exc}")
    if not url:
        return None
    current = Layout(config.bucket, config.name).model(run_id)
    if url.rstrip("/") == current:
        return None  # this run's own model is registered already (evaluate run again): no other champion
    from tasks.errors import StageError
    from tasks.modelbundle import load_model_bundle
    from tasks.training.stage import fetch_model

    fs = target.filesystem()
    try:
        folder = fetch_model(fs, url, work_dir, run_id="champion", then="the registry names a model that is not there")
    except (DataError, StageError, OSError) as exc:
        return ChampionLookup(source=url, unavailable=f"its model at {url} could not be downloaded: {exc}")
    try:
        champion = load_model_bundle(folder, nthread=os.cpu_count() or 1)
    except (StageError, DataError, OSError, ValueError) as exc:
        return ChampionLookup(source=url, incomparable=f"the champion at {url} cannot be loaded: {exc}")
    rows = None
    if not same_transform(spec, champion.spec) and champion.spec.get("task") == spec.get("task"):
        try:
            rows = curated_test_rows(
                Layout(config.bucket, config.name).curated(), spec, target.storage_options(), max_rows=MAX_CURATED_ROWS_FOR_CHAMPION
            )
        except (DataError, OSError, KeyError, ValueError) as exc:
            return ChampionLookup(bundle=champion, source=url, incomparable=(
                f"the champion's transform differs from this run's and the raw test rows to score it through its own"
                f" transform.json could not be rebuilt from the curated data ({exc})"))
    return ChampionLookup(bundle=champion, source=url, rows=rows)


# --------------------------------------------------------------------------------------
# Prefect task: the only place that touches a Target.


@task(
    name="evaluate",
    cache_policy=NO_CACHE,
    **SAFE_TO_RETRY,
)
def evaluate_stage(config: PipelineConfig, target: Target, run_id: str, features_uri: str, model_dir: str) -> EvaluationResult:
    """Evaluate the run's model on its test split against the baselines and the champion;
    store ``evaluation.json`` beside the model."""
    from tasks.modelbundle import load_model_bundle
    from tasks.runs import run_dir

    base = features_uri.rstrip("/") + "/"
    options = target.storage_options()
    train = pd.read_parquet(base + "train/", storage_options=options)
    test = pd.read_parquet(base + "test/", storage_options=options)
    settings = config.evaluate
    validation = None
    if config.task == "binary_classification" and settings.threshold_rule == "max_f1":
        validation = pd.read_parquet(base + "validation/", storage_options=options)
    bundle = load_model_bundle(model_dir, nthread=os.cpu_count() or 1)  # a batch job: use every core
    champion = find_champion(config, target, run_id, bundle.spec, run_dir(run_id) / "evaluate" / "champion")
    result = evaluate_model(
        bundle=bundle, train=train, test=test, task=config.task, min_lift=config.gate.min_lift,
        n_bootstrap=settings.bootstrap, validation=validation, champion=champion,
        max_regression=config.gate.max_regression, confidence=config.gate.confidence, threshold=settings.threshold,
        threshold_rule=settings.threshold_rule, ndcg_k=settings.ndcg_k, precision_k=settings.precision_k,
        segment=settings.segment,
    )
    uri = Layout(config.bucket, config.name).evaluation(run_id)
    target.filesystem().pipe_file(uri, evaluation_json(result).encode("utf-8"), ContentType="application/json")
    log.info("gate %s: %s", "passed" if result.passed else "failed", result.reason)
    return result
