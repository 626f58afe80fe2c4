"""Ranking's per-query metrics (NDCG@k, MAP@k) and its baselines (the best single feature,
the most popular values), over queries given by the ``_group`` column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Ranking metrics look at the top this many rows of each query unless ``evaluate.ndcg_k`` says otherwise.
RANKING_K = 10

#: Ranking's popularity baseline looks at features with at most this many distinct train values
#: (ids, categories, codes, binned numbers): a continuous feature has no "popular" values.
MAX_POPULARITY_VALUES = 1000
#: Each value's mean train relevance is shrunk towards the overall mean by this many
#: pseudo-rows, so a value seen once does not rank first on one lucky grade.
POPULARITY_PRIOR_ROWS = 10


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
