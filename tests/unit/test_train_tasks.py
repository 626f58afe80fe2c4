"""Every task the entry point trains, on small generated data and on one real dataset, with quality asserted.

Binary and multiclass classification and regression on generated data are in
test_train_entrypoint.py; here: ranking, anomaly detection, and scikit-learn's breast
cancer data (a real dataset shipped with the package, no download).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from images.training import train as entry
from images.training.channels import order_by_group
from tasks.modelbundle import load_model_bundle
from tasks.training import container

RANKING_FEATURES = ["f0", "f1", "f2", "f3"]
ANOMALY_FEATURES = ["a", "b", "c", "d"]


@pytest.fixture
def base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An /opt/ml-like folder the entry point runs on, with nothing leaking in from the environment."""
    for name in list(os.environ):
        if name.startswith(("SM_", "UPDRAFT_")):
            monkeypatch.delenv(name)
    folder = tmp_path / "opt_ml"
    monkeypatch.setenv(container.BASE_DIR_ENV, str(folder))
    monkeypatch.setenv(container.OMP_NUM_THREADS, "1")
    monkeypatch.setenv(container.SM_NUM_GPUS, "0")
    return folder


def numeric_spec(task: str, frame: pd.DataFrame, features: list[str], *, label: str, classes: list[str] | None = None,
                 **extra: object) -> dict:
    """A transform.json of plain standardised numeric columns, fitted on ``frame``."""
    numeric = []
    for name in features:
        values = frame[name]
        numeric.append({
            "name": name, "count": int(values.notna().sum()), "null_count": int(values.isna().sum()),
            "mean": float(values.mean()), "std": float(values.std(ddof=0)), "min": float(values.min()),
            "max": float(values.max()), "fill": float(values.mean()),
        })
    return {
        "format": "updraft.transform/1", "task": task, "label": label, "label_classes": classes,
        "input_columns": list(features), "numeric": numeric, "categorical": [], "feature_names": list(features),
        "split": {"validation": 0.2, "test": 0.2, "hash": "test"}, **extra,
    }


def write_channels(base: Path, spec: dict, splits: dict[str, pd.DataFrame], hyperparameters: dict) -> None:
    """SageMaker's layout: each split's feature frame in two Parquet files, transform.json, string hyperparameters."""
    from tasks.features.transform import apply_transform

    for name, raw in splits.items():
        folder = base / "input" / "data" / name
        folder.mkdir(parents=True)
        frame = pd.DataFrame(apply_transform(raw, spec), columns=spec["feature_names"])
        for column in ("_label", "_group"):
            if column in raw:
                frame[column] = raw[column].to_numpy()
        half = len(frame) // 2
        frame[:half].to_parquet(folder / "part.0.parquet", index=False)
        frame[half:].to_parquet(folder / "part.1.parquet", index=False)
    (base / "input" / "data" / "transform").mkdir(parents=True)
    (base / "input" / "data" / "transform" / "transform.json").write_text(json.dumps(spec))
    (base / "input" / "config").mkdir(parents=True)
    (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyperparameters))


def run(capsys: pytest.CaptureFixture) -> tuple[str, dict]:
    code = entry.main([])
    out = capsys.readouterr().out
    assert code == 0, out
    final = dict(p for p in map(container.parse_metric_line, out.splitlines()) if p)
    return out, final


# --- ranking -------------------------------------------------------------------------------


def ranking_rows(queries: int, seed: int) -> pd.DataFrame:
    """Queries of 6-14 documents; relevance 0-3 follows the features, with noise; query ids are int64 hashes.

    The rows of all queries are shuffled together: nothing keeps a query's rows adjacent.
    """
    rng = np.random.default_rng(seed)
    sizes = rng.integers(6, 15, queries)
    ids = rng.integers(-(2**62), 2**62, queries)
    n = int(sizes.sum())
    X = rng.normal(size=(n, len(RANKING_FEATURES)))
    signal = 1.5 * X[:, 0] + X[:, 1] - 0.7 * X[:, 2] + rng.normal(0, 0.6, n)
    relevance = np.digitize(signal, [-0.5, 1.0, 2.2]).astype(float)
    frame = pd.DataFrame(X, columns=RANKING_FEATURES)
    frame["_label"] = relevance
    frame["_group"] = np.repeat(ids, sizes).astype(np.int64)
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def ndcg_at(k: int, relevance: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Mean NDCG@k over queries (exponential gain, as XGBoost's rank:ndcg); queries with no relevant row count 1."""
    values = []
    for g in np.unique(groups):
        rel, score = relevance[groups == g], scores[groups == g]
        ranked = rel[np.argsort(-score, kind="stable")][:k]
        ideal = np.sort(rel)[::-1][:k]
        discount = 1.0 / np.log2(np.arange(2, len(ranked) + 2))
        best = float(np.sum((2.0**ideal - 1) * discount))
        values.append(1.0 if best == 0 else float(np.sum((2.0**ranked - 1) * discount)) / best)
    return float(np.mean(values))


@pytest.fixture(scope="module")
def ranking_data() -> dict[str, pd.DataFrame]:
    return {"train": ranking_rows(150, seed=1), "validation": ranking_rows(50, seed=2)}


def test_ranking_learns_to_order_each_query(base, ranking_data, capsys):
    spec = numeric_spec("ranking", ranking_data["train"], RANKING_FEATURES, label="relevance", group="query_id")
    write_channels(base, spec, ranking_data, {"num_round": "40", "max_depth": "3", "eta": "0.3",
                                              "early_stopping_rounds": "10"})

    out, final = run(capsys)

    assert set(final) == {f"{d}:{m}" for d in ("train", "validation") for m in ("ndcg@10", "map@10")}
    # Metric names with '@' survive SageMaker's metric definitions.
    match = re.search(container.metric_regex("validation:ndcg@10"), out.splitlines()[-1] + "\n" + out)
    assert match and float(match.group(1)) > 0
    assert "queries train=150 validation=50" in out

    bundle = load_model_bundle(base / "model")
    assert bundle.metadata["algorithm"] == "xgboost" and bundle.metadata["group"] == "query_id"
    valid = ranking_data["validation"]
    scores = bundle.predict_features(bundle_features(bundle, valid))
    model_ndcg = ndcg_at(10, valid["_label"].to_numpy(), scores, valid["_group"].to_numpy())
    rng = np.random.default_rng(0)
    random_ndcg = np.mean([
        ndcg_at(10, valid["_label"].to_numpy(), rng.random(len(valid)), valid["_group"].to_numpy()) for _ in range(20)
    ])
    assert model_ndcg > random_ndcg + 0.15, (model_ndcg, random_ndcg)
    assert final["validation:ndcg@10"] == pytest.approx(model_ndcg, abs=0.02)  # XGBoost's figure is ours
    predictions = bundle.predict_frame(valid[RANKING_FEATURES])
    assert all(isinstance(p, float) for p in predictions) and len(predictions) == len(valid)


def bundle_features(bundle, frame: pd.DataFrame) -> np.ndarray:
    from tasks.features.transform import apply_transform

    return apply_transform(frame, bundle.spec)


def test_ranking_sorts_the_rows_itself(tmp_path, monkeypatch, ranking_data, capsys):
    """Interleaved queries train the very model the same rows give when pre-sorted by query."""
    boosters = []
    for name, order in (("shuffled", None), ("sorted", "stable")):
        folder = tmp_path / name / "opt_ml"
        monkeypatch.setenv(container.BASE_DIR_ENV, str(folder))
        monkeypatch.setenv(container.OMP_NUM_THREADS, "1")
        monkeypatch.setenv(container.SM_NUM_GPUS, "0")
        data = dict(ranking_data)
        if order:
            data = {k: v.sort_values("_group", kind="stable").reset_index(drop=True) for k, v in data.items()}
        spec = numeric_spec("ranking", ranking_data["train"], RANKING_FEATURES, label="relevance", group="query_id")
        write_channels(folder, spec, data, {"num_round": "10", "max_depth": "3", "early_stopping_rounds": "0"})
        run(capsys)
        boosters.append((folder / "model" / container.MODEL_FILE).read_bytes())
    assert boosters[0] == boosters[1]


def test_group_ids_are_sorted_stably_and_made_dense():
    order, qid = order_by_group(np.array([5, -3, 5, 2**62, -3], dtype=np.int64))
    assert order.tolist() == [1, 4, 0, 2, 3]
    assert qid.tolist() == [0, 0, 1, 1, 2]


def test_ranking_needs_the_group_column(base, ranking_data, capsys):
    spec = numeric_spec("ranking", ranking_data["train"], RANKING_FEATURES, label="relevance")
    write_channels(base, spec, {k: v.drop(columns="_group") for k, v in ranking_data.items()}, {})

    assert entry.main([]) != 0
    assert "lacks column(s) _group" in (base / "output" / "failure").read_text()


# --- anomaly detection --------------------------------------------------------------------


def anomaly_rows(n: int, seed: int, rate: float = 0.05, unknown: float = 0.3) -> pd.DataFrame:
    """Mostly a correlated Gaussian cloud, with ``rate`` scattered far points; ``unknown`` of the labels are missing."""
    rng = np.random.default_rng(seed)
    is_anomaly = rng.random(n) < rate
    normal = rng.multivariate_normal([0, 0, 0, 0], np.eye(4) + 0.5, n)
    scattered = rng.uniform(-7, 7, (n, 4))
    X = np.where(is_anomaly[:, None], scattered, normal)
    frame = pd.DataFrame(X, columns=ANOMALY_FEATURES)
    frame["_label"] = np.where(rng.random(n) < unknown, np.nan, is_anomaly.astype(float))
    return frame


@pytest.fixture(scope="module")
def anomaly_data() -> dict[str, pd.DataFrame]:
    return {"train": anomaly_rows(2000, seed=3), "validation": anomaly_rows(800, seed=4)}


def test_anomaly_detection_fits_an_isolation_forest_and_ranks_anomalies_first(base, anomaly_data, capsys):
    spec = numeric_spec("anomaly_detection", anomaly_data["train"], ANOMALY_FEATURES, label="is_fraud")
    write_channels(base, spec, anomaly_data, {"n_estimators": "60", "random_state": "7"})

    out, final = run(capsys)

    assert set(final) == {"validation:roc_auc", "validation:precision_at_k"}
    valid = anomaly_data["validation"]
    known = valid["_label"].dropna()
    anomaly_rate = known.mean()
    assert final["validation:roc_auc"] > 0.9
    assert final["validation:precision_at_k"] > max(0.5, 5 * anomaly_rate)
    assert f"k={int(known.sum())}" in out  # k = the true anomalies among the labelled rows

    model = base / "model"
    assert sorted(p.name for p in model.iterdir()) == ["isolation-forest.json", "metadata.json", "transform.json"]
    document = json.loads((model / "isolation-forest.json").read_text())  # JSON, not a pickle
    assert len(document["trees"]) == 60
    metadata = json.loads((model / "metadata.json").read_text())
    assert metadata["algorithm"] == "isolation_forest" and metadata["task"] == "anomaly_detection"
    assert metadata["hyperparameters"]["n_estimators"] == 60 and metadata["anomaly_threshold"] == 0.5
    assert metadata["labelled_rows"]["validation"] == len(known)
    assert metadata["metrics"] == pytest.approx(final)

    # The bundle scores as scikit-learn's own forest, fitted the same way, does.
    from sklearn.ensemble import IsolationForest

    bundle = load_model_bundle(model)
    X_train = bundle_features(bundle, anomaly_data["train"])
    X_valid = bundle_features(bundle, valid)
    reference = IsolationForest(n_estimators=60, random_state=7, n_jobs=1).fit(X_train)
    np.testing.assert_allclose(bundle.predict_features(X_valid), -reference.score_samples(X_valid), rtol=1e-12)
    predictions = bundle.predict_frame(valid[ANOMALY_FEATURES])
    assert all(isinstance(p, float) and 0 < p <= 1 for p in predictions)


def test_anomaly_detection_without_labels_trains_and_reports_no_metrics(base, anomaly_data, capsys):
    data = {k: v.drop(columns="_label") for k, v in anomaly_data.items()}
    spec = numeric_spec("anomaly_detection", data["train"], ANOMALY_FEATURES, label="is_fraud")
    write_channels(base, spec, data, {"n_estimators": "20", "k": "10", "contamination": "0.05"})

    out, final = run(capsys)

    assert final == {}
    assert "the channel has no labels" in out
    metadata = json.loads((base / "model" / "metadata.json").read_text())
    assert metadata["metrics"] == {} and 0 < metadata["anomaly_threshold"] < 1


@pytest.mark.parametrize(
    ("hyperparameters", "expected"),
    [
        ({"eta": "0.1"}, "eta are not used by anomaly_detection"),
        ({"contamination": "0.7"}, "'contamination' must be 'auto' or a share in (0, 0.5]"),
        ({"max_samples": "0"}, "'max_samples' must be"),
        ({"n_estimators": "many"}, "'n_estimators' must be an integer"),
    ],
)
def test_bad_forest_hyperparameters_fail_clearly(hyperparameters, expected, base, anomaly_data, capsys):
    spec = numeric_spec("anomaly_detection", anomaly_data["train"], ANOMALY_FEATURES, label="is_fraud")
    write_channels(base, spec, anomaly_data, hyperparameters)

    assert entry.main([]) != 0
    assert expected in (base / "output" / "failure").read_text()


def test_anomaly_labels_must_be_flags(base, anomaly_data, capsys):
    data = {k: v.assign(_label=v["_label"].fillna(2.0)) for k, v in anomaly_data.items()}
    spec = numeric_spec("anomaly_detection", data["train"], ANOMALY_FEATURES, label="is_fraud")
    write_channels(base, spec, data, {"n_estimators": "5"})

    assert entry.main([]) != 0
    assert "not 0 (normal) or 1 (anomaly)" in (base / "output" / "failure").read_text()


# --- a real dataset -------------------------------------------------------------------------


def test_breast_cancer_diagnosis_is_learned(base, capsys):
    """scikit-learn's Wisconsin breast cancer data (569 tumours, 30 measurements), shipped with the package."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns=lambda c: c.replace(" ", "_"))
    features = [c for c in frame.columns if c != "target"]
    frame["_label"] = frame.pop("target").astype(float)  # 0 malignant, 1 benign, as label_classes orders them
    shuffled = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    splits = {"train": shuffled[:400], "validation": shuffled[400:]}
    spec = numeric_spec("binary_classification", splits["train"], features, label="diagnosis",
                        classes=list(data.target_names))
    write_channels(base, spec, splits, {"max_depth": "3", "eta": "0.2", "early_stopping_rounds": "10"})

    _, final = run(capsys)

    positive_rate = splits["validation"]["_label"].mean()
    assert final["validation:auc"] > 0.97  # a constant guess scores 0.5
    bundle = load_model_bundle(base / "model")
    probabilities = bundle.predict_frame(splits["validation"][features])
    accuracy = np.mean((np.array(probabilities) > 0.5) == splits["validation"]["_label"].to_numpy())
    assert accuracy > max(positive_rate, 1 - positive_rate) + 0.2
    assert math.isclose(sum(bundle.metadata["rows"].values()), len(frame))


def test_map_at_k_is_xgboosts_on_binary_labels_and_counts_grades_above_zero():
    """XGBoost's map@k refuses graded relevance; ours agrees with it on 0/1 labels."""
    import xgboost as xgb

    from images.training.xgb import mean_average_precision

    rng = np.random.default_rng(5)
    sizes = rng.integers(1, 25, 80)
    qid = np.repeat(np.arange(80), sizes)
    X = rng.normal(size=(len(qid), 3)).astype(np.float32)
    y = (X[:, 0] + rng.normal(size=len(qid)) > 1.0).astype(float)
    dmatrix = xgb.DMatrix(X, label=y, qid=qid)
    booster = xgb.Booster({"objective": "rank:ndcg", "eval_metric": ["map@10", "map@3"], "nthread": 1}, [dmatrix])
    for i in range(3):
        booster.update(dmatrix, i)
    scores = booster.predict(dmatrix, output_margin=True)
    theirs = dict(item.split(":") for item in booster.eval_set([(dmatrix, "t")], 0).split("\t")[1:])

    assert mean_average_precision(y, scores, qid, 10) == pytest.approx(float(theirs["t-map@10"]), abs=1e-9)
    assert mean_average_precision(y, scores, qid, 3) == pytest.approx(float(theirs["t-map@3"]), abs=1e-9)
    graded = y * rng.integers(1, 4, len(y))  # grades 1-3 where relevant: the same MAP
    assert mean_average_precision(graded, scores, qid, 10) == mean_average_precision(y, scores, qid, 10)
