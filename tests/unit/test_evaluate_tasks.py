"""The gate for ranking (NDCG@10 per query) and anomaly detection (ROC-AUC against labels, when there are any)."""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import ndcg_score, roc_auc_score

from tasks.errors import DataError
from tasks.evaluate import (
    EvaluationResult,
    RankedQueries,
    evaluate_model,
    precision_at_k,
)
from tasks.evaluate.baselines import _baseline_rows
from tasks.registry import gate_metadata
from tasks.report import _num, render_report

FEATURES = ["f0", "f1", "f2", "f3"]


class ScoreBundle:
    """Duck-typed ``ModelBundle`` of a ranking or anomaly model: one float score per row."""

    def __init__(self, task: str, score: Callable[[np.ndarray], np.ndarray], label_classes: list[str] | None = None) -> None:
        self._score = score
        self.spec: dict[str, Any] = {"task": task, "label": "y", "feature_names": FEATURES, "label_classes": label_classes}

    def predict_features(self, X: np.ndarray) -> np.ndarray:
        assert X.dtype == np.float32 and X.shape[1] == len(FEATURES)
        return self._score(X)


def _random_scores(X: np.ndarray) -> np.ndarray:
    return np.random.default_rng(99).random(len(X))


# --------------------------------------------------------------------------------------
# ranking


def _relevance(X: np.ndarray) -> np.ndarray:
    """An interaction no single feature captures, plus a feature that carries part of it."""
    return X[:, 0] * X[:, 1] + 0.8 * X[:, 2]


def ranking_split(n_queries: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(4, 20, n_queries)
    groups = np.repeat(rng.integers(1, 2**62, n_queries), sizes)
    X = rng.normal(size=(groups.size, len(FEATURES))).astype(np.float32)
    grade = np.digitize(_relevance(X) + rng.normal(scale=0.3, size=groups.size), [0.5, 1.5, 2.5])
    frame = pd.DataFrame(X, columns=FEATURES)
    frame["_label"] = grade.astype(np.float64)
    frame["_group"] = groups.astype(np.int64)
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # a query's rows need not be adjacent


@pytest.fixture(scope="module")
def ranking() -> tuple[pd.DataFrame, pd.DataFrame]:
    return ranking_split(300, 1), ranking_split(200, 2)


def _sklearn_mean_ndcg(frame: pd.DataFrame, score: np.ndarray, k: int = 10) -> float:
    values = []
    for _, rows in frame.assign(_score=score).groupby("_group"):
        if len(rows) >= 2 and rows["_label"].max() > 0:
            values.append(ndcg_score([rows["_label"].to_numpy()], [rows["_score"].to_numpy()], k=k))
    return float(np.mean(values))


def test_a_good_ranker_beats_random_and_the_best_single_feature_and_passes(ranking):
    train, test = ranking
    result = evaluate_model(bundle=ScoreBundle("ranking", _relevance), train=train, test=test, task="ranking")

    assert result.metric == "ndcg@10" and result.greater_is_better
    assert set(result.baselines) == {"random", "best_single_feature"}
    X = test[FEATURES].to_numpy(np.float32)
    assert result.model == pytest.approx(_sklearn_mean_ndcg(test, _relevance(X)), abs=1e-12)
    assert result.baselines["best_single_feature"] == pytest.approx(_sklearn_mean_ndcg(test, X[:, 2]), abs=1e-12)
    assert result.plots["best_single_feature"] == {"feature": "f2", "order": "highest first"}
    assert result.model > result.baselines["best_single_feature"] > result.baselines["random"]
    assert result.passed and result.best_baseline == "best_single_feature"
    assert "beats the best baseline (best_single_feature" in result.reason and "ranks by 'f2'" in result.reason
    assert result.model_ci[0] <= result.model <= result.model_ci[1]
    judged = (test.groupby("_group")["_label"].max() > 0).sum()  # every query has 4 rows or more
    assert 0 < result.secondary["map@10"] <= 1 and result.secondary["queries"] == judged
    assert result.secondary["queries"] + result.secondary["queries_unjudged"] == test["_group"].nunique()
    assert result.plots["ndcg_at_k"]["k"] == list(range(1, 11))
    assert result.plots["ndcg_at_k"]["model"][-1] == pytest.approx(result.model)


def test_a_random_ranker_does_not_pass(ranking):
    train, test = ranking
    result = evaluate_model(bundle=ScoreBundle("ranking", _random_scores), train=train, test=test, task="ranking")
    assert not result.passed
    assert result.model < result.baselines["best_single_feature"]
    assert "does not beat the best baseline (best_single_feature" in result.reason


def test_the_random_baseline_is_the_expected_ndcg_of_a_random_order(ranking):
    train, test = ranking
    result = evaluate_model(bundle=ScoreBundle("ranking", _relevance), train=train, test=test, task="ranking")
    shuffles = [_sklearn_mean_ndcg(test, np.random.default_rng(s).random(len(test))) for s in range(30)]
    assert result.baselines["random"] == pytest.approx(np.mean(shuffles), abs=3 * np.std(shuffles) / math.sqrt(30) + 1e-3)
    # ...and exactly what scikit-learn gives a constant score (ties averaged).
    assert result.baselines["random"] == pytest.approx(_sklearn_mean_ndcg(test, np.zeros(len(test))), abs=1e-12)


@pytest.mark.parametrize("k", [1, 3, 10, None])
def test_ndcg_of_every_query_matches_scikit_learn_with_ties(k):
    rng = np.random.default_rng(7)
    groups = rng.integers(0, 60, 900)
    grades = rng.integers(0, 4, 900).astype(float)
    scores = np.round(rng.normal(size=900), 1)  # many tied scores
    queries = RankedQueries(groups, grades)
    expected = [
        ndcg_score([grades[groups == q]], [scores[groups == q]], k=k)
        for q in np.unique(groups)
        if (groups == q).sum() >= 2 and grades[groups == q].max() > 0
    ]
    assert queries.n_judged == len(expected)
    np.testing.assert_allclose(queries.ndcg(scores, k or 10**6), expected, rtol=0, atol=1e-12)


def test_queries_with_one_row_or_nothing_relevant_are_not_judged():
    groups = np.array([1, 1, 1, 2, 3, 3])
    grades = np.array([2.0, 0.0, 1.0, 3.0, 0.0, 0.0])  # query 2 has one row, query 3 nothing relevant
    queries = RankedQueries(groups, grades)
    assert (queries.n_queries, queries.n_judged) == (3, 1)
    assert queries.ndcg(np.array([3.0, 2.0, 1.0, 0.0, 0.0, 0.0])).tolist() == pytest.approx(
        [ndcg_score([[2.0, 0.0, 1.0]], [[3.0, 2.0, 1.0]], k=10)]
    )


def test_average_precision_at_k_on_a_hand_example():
    # Relevant rows at ranks 1 and 3: AP = (1/1 + 2/3) / 2. Second query: relevant at rank 2 of 2.
    groups = np.array([5, 5, 5, 5, 9, 9])
    grades = np.array([1.0, 0.0, 2.0, 0.0, 0.0, 1.0])
    scores = np.array([4.0, 3.0, 2.0, 1.0, 2.0, 1.0])
    ap = RankedQueries(groups, grades).average_precision(scores, k=10)
    assert ap.tolist() == pytest.approx([(1 + 2 / 3) / 2, 1 / 2])
    # Only the top k count: with k=2 the first query finds one of its two relevant rows in the top 2.
    assert RankedQueries(groups, grades).average_precision(scores, k=2).tolist() == pytest.approx([1 / 2, 1 / 2])


def _two_level_queries(rows_per_query: int, n_right: int, n_wrong: int) -> pd.DataFrame:
    """Queries with one relevant row, ranked first ("right", NDCG 1) or second (NDCG 1/log2(3))."""
    frames = []
    for q in range(n_right + n_wrong):
        score = -np.arange(rows_per_query, dtype=np.float32)
        relevant = 0 if q < n_right else 1
        frames.append(pd.DataFrame({
            "f0": score, "f1": 0.0, "f2": 0.0, "f3": 0.0,
            "_label": (np.arange(rows_per_query) == relevant).astype(float), "_group": q,
        }))
    return pd.concat(frames, ignore_index=True).astype({c: np.float32 for c in FEATURES})


def test_the_bootstrap_resamples_queries_not_rows():
    """Same per-query NDCG values, ten times the rows: a query bootstrap gives the same interval."""
    train = _two_level_queries(5, 10, 10)
    by_f0 = ScoreBundle("ranking", lambda X: X[:, 0])
    small = evaluate_model(bundle=by_f0, train=train, test=_two_level_queries(2, 20, 10), task="ranking")
    large = evaluate_model(bundle=by_f0, train=train, test=_two_level_queries(20, 20, 10), task="ranking")
    assert small.model == pytest.approx(large.model) == pytest.approx((20 + 10 / math.log2(3)) / 30)
    assert small.model_ci == large.model_ci and small.model_ci[0] < small.model < small.model_ci[1]
    assert small.n_test == 60 and large.n_test == 600


def test_ranking_needs_the_query_ids_and_judgeable_queries(ranking):
    train, test = ranking
    bundle = ScoreBundle("ranking", _relevance)
    with pytest.raises(DataError, match="test split has no '_group' column"):
        evaluate_model(bundle=bundle, train=train, test=test.drop(columns=["_group"]), task="ranking")
    with pytest.raises(DataError, match="no test query has two or more rows and a relevant one"):
        evaluate_model(bundle=bundle, train=train, test=test.assign(_label=0.0), task="ranking")


def test_big_train_splits_are_sampled_by_whole_queries(monkeypatch):
    monkeypatch.setattr("tasks.evaluate.baselines.MAX_BASELINE_TRAIN_ROWS", 100)
    groups = np.repeat(np.arange(40), 7)
    keep = _baseline_rows(groups.size, groups, seed=3)
    kept = pd.Series(groups[keep]).value_counts()
    assert 0 < len(keep) <= 100 and (kept == 7).all()


# --------------------------------------------------------------------------------------
# anomaly detection


def anomaly_split(n: int, seed: int, rate: float = 0.06) -> pd.DataFrame:
    """Normal rows have f1 close to f0; anomalies break that link (f1 close to -f0) and are a
    little wider in f3, so outlier rules on single features see only part of them."""
    rng = np.random.default_rng(seed)
    anomalous = rng.random(n) < rate
    base = rng.normal(size=n)
    X = rng.normal(size=(n, len(FEATURES)))
    X[:, 0] = base
    X[:, 1] = np.where(anomalous, -base, base) + rng.normal(scale=0.15, size=n)
    X[:, 3] *= np.where(anomalous, 2.0, 1.0)
    frame = pd.DataFrame(X.astype(np.float32), columns=FEATURES)
    frame["_label"] = anomalous.astype(np.float64)
    return frame


def mahalanobis_scorer(train: pd.DataFrame) -> Callable[[np.ndarray], np.ndarray]:
    X = train[FEATURES].to_numpy(np.float64)
    mean, inverse = X.mean(axis=0), np.linalg.inv(np.cov(X, rowvar=False))
    return lambda Z: np.einsum("ij,jk,ik->i", Z - mean, inverse, Z - mean)


@pytest.fixture(scope="module")
def anomaly() -> tuple[pd.DataFrame, pd.DataFrame]:
    return anomaly_split(3000, 11), anomaly_split(2000, 12)


def test_a_good_detector_beats_the_outlier_rules_and_passes(anomaly):
    train, test = anomaly
    result = evaluate_model(
        bundle=ScoreBundle("anomaly_detection", mahalanobis_scorer(train), ["0", "1"]), train=train, test=test, task="anomaly_detection"
    )
    assert result.metric == "roc_auc" and set(result.baselines) == {"zscore", "iqr", "random"}
    assert result.baselines["random"] == 0.5
    # zscore: mean absolute z-score with the train means and deviations.
    Xtr, Xte = train[FEATURES].to_numpy(np.float64), test[FEATURES].to_numpy(np.float64)
    z = np.abs((Xte - Xtr.mean(axis=0)) / Xtr.std(axis=0)).mean(axis=1)
    assert result.baselines["zscore"] == pytest.approx(roc_auc_score(test["_label"], z))
    assert 0.5 < result.baselines["zscore"] < 0.8 and 0.5 < result.baselines["iqr"] < 0.8
    assert result.model > 0.85 and result.model - max(result.baselines.values()) > 0.2 and result.passed
    assert result.secondary["precision_at_k"] > 5 * result.secondary["anomaly_rate"]
    assert result.secondary["anomalies"] == test["_label"].sum() and result.secondary["labelled"] == len(test)
    assert set(result.plots["roc"]) == {"model", "zscore", "iqr", "random"}


def test_a_random_detector_does_not_pass(anomaly):
    train, test = anomaly
    result = evaluate_model(bundle=ScoreBundle("anomaly_detection", _random_scores, ["0", "1"]), train=train, test=test, task="anomaly_detection")
    assert not result.passed and abs(result.model - 0.5) < 0.1
    assert result.best_baseline in ("zscore", "iqr")


def test_only_labelled_test_rows_are_judged(anomaly):
    train, test = anomaly
    partly = test.copy()
    partly.loc[partly.index[::3], "_label"] = np.nan  # a third of the rows were never checked
    scorer = mahalanobis_scorer(train)
    result = evaluate_model(bundle=ScoreBundle("anomaly_detection", scorer, ["0", "1"]), train=train, test=partly, task="anomaly_detection")
    known = partly["_label"].notna()
    expected = roc_auc_score(partly["_label"][known], scorer(partly[FEATURES].to_numpy(np.float32)[known.to_numpy()]))
    assert result.model == pytest.approx(expected)
    assert result.n_test == len(partly) and result.secondary["labelled"] == known.sum()
    assert f"on the {known.sum()} labelled of {len(partly)} test rows" in result.reason


@pytest.mark.parametrize("labels, says", [(np.nan, "no test row has a label"), (0.0, "labelled test rows all hold 'ok' (normal)")])
def test_without_labels_of_both_classes_the_gate_says_so_and_does_not_pass(anomaly, tmp_path, labels, says):
    train, test = anomaly
    bundle = ScoreBundle("anomaly_detection", mahalanobis_scorer(train), ["ok", "weird"])
    result = evaluate_model(bundle=bundle, train=train.assign(_label=np.nan), test=test.assign(_label=labels), task="anomaly_detection")
    assert not result.passed and math.isnan(result.model)
    assert says in result.reason and "cannot be judged" in result.reason and "deploy.require_passed: false" in result.reason
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["model"] is None and data["baselines"]["zscore"] is None
    back = EvaluationResult.from_dict(data)  # as register and deploy read it back
    assert math.isnan(back.model) and back.passed is False
    assert gate_metadata("r1", back)["metric_value"] == "nan"
    assert "cannot be judged" in render_report({"run_id": "r1"}, data)


def test_precision_at_k_on_a_hand_example():
    y = np.array([1, 0, 1, 0, 0])
    assert precision_at_k(y, np.array([0.9, 0.8, 0.7, 0.1, 0.0])) == pytest.approx(0.5)  # k=2: one hit in the top 2
    assert precision_at_k(y, np.array([0.9, 0.1, 0.8, 0.2, 0.0])) == 1.0
    assert precision_at_k(y, np.array([0.9, 0.1, 0.8, 0.2, 0.0]), k=3) == pytest.approx(2 / 3)
    # Ties at the cut count by expectation: one slot left for two tied rows, one an anomaly.
    assert precision_at_k(y, np.array([0.9, 0.5, 0.5, 0.1, 0.0])) == pytest.approx((1 + 0.5) / 2)
    assert precision_at_k(y, np.zeros(5)) == pytest.approx(2 / 5)  # a constant score: the anomaly rate
    assert math.isnan(precision_at_k(np.zeros(4), np.arange(4.0)))


def test_the_report_shows_ranking_metrics_and_the_ndcg_curve(ranking):
    train, test = ranking
    result = evaluate_model(bundle=ScoreBundle("ranking", _relevance), train=train, test=test, task="ranking")
    page = render_report({"run_id": "r1"}, result.to_dict())
    assert "NDCG@10" in page and "MAP@10" in page and "best_single_feature (best)" in page
    assert "alt='NDCG at each cut-off of the model and the baselines'" in page
    assert f"<td class='num'>{int(result.secondary['queries'])}</td>" in page  # a count, not 191.0000


# --------------------------------------------------------------------------------------
# ranking's popularity baseline, cut-offs from the config, anomaly metrics


def _item_queries(n_queries: int, seed: int) -> pd.DataFrame:
    """Each row is an item (f3 holds its code, 1..30); an item's popularity drives its grade,
    and f0 adds a per-row signal only a model combining both captures."""
    rng = np.random.default_rng(seed)
    appeal = np.random.default_rng(0).normal(size=31)  # the same items in train and test
    sizes = rng.integers(5, 12, n_queries)
    groups = np.repeat(np.arange(n_queries), sizes)
    item = rng.integers(1, 31, groups.size)
    X = rng.normal(size=(groups.size, 4))
    X[:, 3] = item
    grade = np.digitize(appeal[item] + 0.7 * X[:, 0] + rng.normal(scale=0.4, size=groups.size), [0.3, 1.2])
    frame = pd.DataFrame(X.astype(np.float32), columns=FEATURES)
    return frame.assign(_label=grade.astype(float), _group=groups.astype(np.int64) + 1000 * seed)


def test_popularity_ranks_by_the_items_train_mean_relevance():
    train, test = _item_queries(400, 1), _item_queries(150, 2)
    model = ScoreBundle("ranking", lambda X: np.random.default_rng(0).normal(size=31)[X[:, 3].astype(int)] + 0.7 * X[:, 0])
    result = evaluate_model(bundle=model, train=train, test=test, task="ranking")
    assert result.plots["popularity"]["feature"] == "f3" and result.plots["popularity"]["values"] == 30
    # by hand: each item's train mean grade, shrunk towards the overall mean by 10 pseudo-rows
    stats = train.groupby("f3")["_label"].agg(["sum", "count"])
    prior = train["_label"].mean()
    shrunk = (stats["sum"] + 10 * prior) / (stats["count"] + 10)
    expected = _sklearn_mean_ndcg(test, test["f3"].map(shrunk).to_numpy())
    assert result.baselines["popularity"] == pytest.approx(expected, abs=1e-12)
    assert result.baselines["popularity"] > result.baselines["random"] + 0.1
    assert result.model > result.baselines["popularity"] and result.passed
    assert "popularity ranks by the train mean relevance of 'f3'" in result.reason.lower()


def test_the_ranking_cut_off_comes_from_the_config(ranking):
    from tasks.evaluate import metric_label

    train, test = ranking
    result = evaluate_model(bundle=ScoreBundle("ranking", _relevance), train=train, test=test, task="ranking", ndcg_k=5)
    X = test[FEATURES].to_numpy(np.float32)
    assert result.metric == "ndcg@5" and metric_label("ndcg@5") == "NDCG@5" and metric_label("map@5") == "MAP@5"
    assert result.model == pytest.approx(_sklearn_mean_ndcg(test, _relevance(X), k=5), abs=1e-12)
    assert set(result.metrics) == {"ndcg@5", "map@5"} and "map@5" in result.secondary
    assert result.plots["ndcg_at_k"]["k"] == [1, 2, 3, 4, 5]
    lo, hi = result.metrics["map@5"]["ci"]
    assert lo <= result.metrics["map@5"]["value"] <= hi


def test_anomaly_metrics_equal_scikit_learns_and_precision_k_comes_from_the_config(anomaly):
    from sklearn.metrics import average_precision_score

    train, test = anomaly
    scorer = mahalanobis_scorer(train)
    bundle = ScoreBundle("anomaly_detection", scorer, ["0", "1"])
    s, y = scorer(test[FEATURES].to_numpy(np.float32)), test["_label"].to_numpy()
    result = evaluate_model(bundle=bundle, train=train, test=test, task="anomaly_detection")
    assert result.metrics["precision_at_k"]["value"] == pytest.approx(precision_at_k(y, s))
    assert result.metrics["pr_auc"]["value"] == pytest.approx(average_precision_score(y, s))
    at_20 = evaluate_model(bundle=bundle, train=train, test=test, task="anomaly_detection", precision_k=20)
    assert at_20.metrics["precision_at_k"]["value"] == pytest.approx(precision_at_k(y, s, k=20))
    assert "Precision@k with k = 20" in at_20.reason


def test_precision_at_k_on_a_resample_counts_ties_by_expectation():
    from tasks.evaluate.metrics import _resampled_precision_at_k

    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.1).astype(int)
    score = np.round(rng.normal(size=300) + 2 * y, 1)  # ties at the cut
    counts = np.bincount(rng.integers(0, 300, 300), minlength=300)
    ry, rs = np.repeat(y, counts), np.repeat(score, counts)
    for k in (0, 15):
        got = _resampled_precision_at_k(y, score, k)(counts[None, :].astype(float))[0]
        assert got == pytest.approx(precision_at_k(ry, rs, None if k == 0 else k))


# --------------------------------------------------------------------------------------
# slices: the main metric per value of evaluate.segment


def _binary_with_segments(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    frame = pd.DataFrame(X, columns=FEATURES)
    frame["_label"] = (rng.random(n) < 1 / (1 + np.exp(-2 * X[:, 0]))).astype(float)
    frame["_segment"] = pd.Series(rng.choice(["web", "store", "phone", "kiosk"], n, p=[0.5, 0.3, 0.195, 0.005]), dtype="string")
    frame.loc[frame.index[:7], "_segment"] = pd.NA
    return frame


def test_slices_give_each_segment_values_metric_with_its_count_and_flag_small_ones():
    train, test = _binary_with_segments(1500, 1), _binary_with_segments(2000, 2)
    bundle = ScoreBundle("binary_classification", lambda X: 1 / (1 + np.exp(-2 * X[:, 0])))
    result = evaluate_model(bundle=bundle, train=train, test=test, task="binary_classification", segment="channel")
    slices = result.slices
    assert slices["column"] == "channel" and slices["metric"] == "roc_auc" and slices["best_baseline"] == result.best_baseline
    rows = {row["value"]: row for row in slices["rows"]}
    assert set(rows) == {"web", "store", "phone", "kiosk", "(missing)"}
    assert [row["rows"] for row in slices["rows"]] == sorted((row["rows"] for row in slices["rows"]), reverse=True)
    for value, row in rows.items():
        part = test[test["_segment"].fillna("(missing)") == value]
        assert row["rows"] == len(part)
        if part["_label"].nunique() == 2:
            assert row["model"] == pytest.approx(roc_auc_score(part["_label"], 1 / (1 + np.exp(-2 * part["f0"]))))
            assert row["ci"][0] <= row["model"] <= row["ci"][1]
        assert row["small"] == (len(part) < 30)
    assert rows["kiosk"]["small"] and rows["(missing)"]["small"] and not rows["web"]["small"]
    json.dumps(result.to_dict(), allow_nan=False)


def test_the_rarest_values_beyond_the_limit_are_counted_together(monkeypatch):
    monkeypatch.setattr("tasks.evaluate.slices.MAX_SLICES", 2)
    train, test = _binary_with_segments(800, 3), _binary_with_segments(1000, 4)
    bundle = ScoreBundle("binary_classification", lambda X: X[:, 0])
    slices = evaluate_model(bundle=bundle, train=train, test=test, task="binary_classification", segment="channel").slices
    assert [row["value"] for row in slices["rows"]] == ["web", "store"]
    assert slices["other_values"] == 3 and slices["other_rows"] == 1000 - sum(row["rows"] for row in slices["rows"])


def test_ranking_slices_count_the_queries_judged_in_each(ranking):
    train, test = ranking
    test = test.assign(_segment=np.where(test["_group"] % 2 == 0, "even", "odd"))
    result = evaluate_model(bundle=ScoreBundle("ranking", _relevance), train=train, test=test, task="ranking", segment="q")
    rows = {row["value"]: row for row in result.slices["rows"]}
    for value, row in rows.items():
        part = test[test["_segment"] == value]
        X = part[FEATURES].to_numpy(np.float32)
        assert row["model"] == pytest.approx(_sklearn_mean_ndcg(part, _relevance(X)), abs=1e-12)
        assert row["units"] == (part.groupby("_group")["_label"].max() > 0).sum() and row["rows"] == len(part)


def test_a_segment_the_splits_do_not_carry_is_said_in_words():
    train, test = _binary_with_segments(600, 5).drop(columns="_segment"), _binary_with_segments(600, 6).drop(columns="_segment")
    bundle = ScoreBundle("binary_classification", lambda X: X[:, 0])
    result = evaluate_model(bundle=bundle, train=train, test=test, task="binary_classification", segment="channel")
    assert result.slices["rows"] == [] and "rerun preprocess with evaluate.segment: channel" in result.slices["problem"]


def test_preprocess_refuses_a_segment_that_is_not_a_curated_column(tmp_path):
    from tasks.config import Features, SplitConfig
    from tasks.features.preprocess import preprocess_dataset

    frame = pd.DataFrame({"x": np.arange(200.0), "y": np.arange(200) % 2})
    frame.to_parquet(tmp_path / "part.parquet")
    with pytest.raises(DataError, match="evaluate.segment 'channel' is not a column of the curated data .* name one of them"):
        preprocess_dataset(
            curated_uri=str(tmp_path) + "/", features_uri=str(tmp_path / "features") + "/", features=Features(numeric=("x",)),
            kinds={"x": "numeric", "y": "numeric"}, label="y", task="regression", split=SplitConfig(), input_columns=["x"],
            storage_options=None, segment="channel",
        )


# --------------------------------------------------------------------------------------
# the report: metrics with intervals, the gate's checks, the champion, calibration, slices, tuning


def test_the_report_shows_every_new_section():
    train, test = _binary_with_segments(1500, 7), _binary_with_segments(1500, 8)
    bundle = ScoreBundle("binary_classification", lambda X: 1 / (1 + np.exp(-2 * X[:, 0])))
    champion = ScoreBundle("binary_classification", lambda X: 1 / (1 + np.exp(-1.5 * X[:, 0] - 0.3 * X[:, 1])))
    result = evaluate_model(bundle=bundle, train=train, test=test, task="binary_classification", champion=champion,
                            segment="channel", n_bootstrap=300)
    tuning = {"backend": "optuna", "objective": "validation:auc", "maximize": True, "best_trial": "job-t002", "best_value": 0.91,
              "trials": [{"trial": 1, "job_name": "job-t001", "state": "Completed", "objective": 0.88,
                          "hyperparameters": {"eta": 0.1, "max_depth": 3}, "duration_s": 4.2},
                         {"trial": 2, "job_name": "job-t002", "state": "Completed", "objective": 0.91,
                          "hyperparameters": {"eta": 0.3, "max_depth": 5}, "duration_s": 3.9}]}
    page = render_report({"run_id": "r1", "train": {"job_name": "job", "model_uri": "s3://b/m", "tuning": tuning}}, result.to_dict())
    text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))
    for heading in ("Metrics of the model", "The gate's checks", "Challenger vs champion", "Calibration", "By channel",
                    "Hyperparameter tuning"):
        assert heading in text, heading
    f1 = result.metrics["f1"]
    assert f"F1 {f1['value']:.4f} [{f1['ci'][0]:.4f}, {f1['ci'][1]:.4f}]" in text
    assert f"expected calibration error {result.calibration['ece']:.4f}" in text.lower()
    assert "one-sided 95% lower bound" in text and f" {_num(result.champion['lower_bound'])} " in text
    assert "kiosk" in text and "small (under 30 test rows): read with care" in text
    assert "job-t002" in text and "max_depth" in text and "best trial job-t002 with 0.9100" in text
    assert len(re.findall(r"data:image/png;base64", page)) == 1  # still one plot: the tables carry the rest
