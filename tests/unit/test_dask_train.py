"""Training on a Dask cluster with xgboost.dask: the same artifact, metrics and rules as the container.

One LocalCluster (2 worker processes, 1 thread each) serves the whole file; the data are
the training tests' generated splits on local files, which the workers open themselves.
"""

from __future__ import annotations

import json
import logging
import re
import tarfile
from pathlib import Path
from typing import Iterator

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster
from sklearn.metrics import ndcg_score, roc_auc_score

from images.training import train as entry
from tasks.errors import ConfigError, DataError, StageError
from tasks.modelbundle import extract_model_tar, load_model_bundle
from tasks.training import container, dask_train
from tasks.training.dask_train import plan_split_reads, resolve_dask_params, train_on_dask
from tasks.training.local_job import TrainResult, run_local_training_job
from tasks.training.stage import training_channels
from tests.unit.test_train_entrypoint import CLASSES, METRIC, raw_rows, write_feature_splits

HPS = {"max_depth": 3, "eta": 0.3, "early_stopping_rounds": 5}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
    ) as running:
        yield running


@pytest.fixture()
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster) as connected:
        yield connected


def train(client: Client, features: Path, tmp_path: Path, hyperparameters: dict | None = None, **extra) -> TrainResult:
    """train_on_dask as the train stage calls it, on local files: file:// URIs, the workers open them themselves."""
    return train_on_dask(
        client,
        features_uri=features.as_uri(),
        storage_options={},
        hyperparameters=HPS if hyperparameters is None else hyperparameters,
        job_name="demo-run-1",
        output_model_uri=str(tmp_path / "bucket" / "models" / "run-1" / "model.tar.gz"),
        fs=fsspec.filesystem("file"),
        environment={container.UPDRAFT_RUN_ID: "run-1"},
        work_dir=tmp_path / "work",
        **extra,
    )


def loaded_from_upload(result: TrainResult, tmp_path: Path):
    """The uploaded model.tar.gz unpacked and loaded as evaluation and serving load it."""
    return load_model_bundle(extract_model_tar(result.model_uri, tmp_path / "unpacked"))


@pytest.mark.parametrize("task", ["binary_classification", "multiclass_classification", "regression"])
def test_each_task_trains_across_the_workers_into_the_containers_artifact(task, client, cluster, tmp_path, caplog, capfd):
    features = tmp_path / "features"
    spec = write_feature_splits(features, task)
    (features / "train" / "_SUCCESS").write_text("")  # writers' markers are not data

    with caplog.at_level(logging.DEBUG, logger="updraft.train"):
        result = train(client, features, tmp_path)

    with tarfile.open(result.model_uri) as archive:  # files at the root, as SageMaker packs /opt/ml/model
        assert sorted(archive.getnames()) == ["metadata.json", "transform.json", "xgboost-model.json"]
    bundle = loaded_from_upload(result, tmp_path)
    assert bundle.spec == spec and bundle.task == task
    assert (bundle.model_dir / "transform.json").read_bytes() == (features / "transform.json").read_bytes()
    metadata = bundle.metadata
    assert (metadata["algorithm"], metadata["backend"], metadata["device"]) == ("xgboost", "dask", "cpu")
    assert set(metadata["versions"]) >= {"python", "xgboost", "numpy", "pandas", "dask", "distributed"}
    assert metadata["rows"] == {"train": 800, "validation": 300}
    assert metadata["workers"] == {"count": 2, "threads": 2}
    assert "nthread" not in metadata["hyperparameters"]  # each worker uses its own threads
    assert (metadata["run_id"], metadata["training_job_name"]) == ("run-1", "demo-run-1")
    assert metadata["label_classes"] == CLASSES[task] and metadata["feature_names"] == spec["feature_names"]
    assert bundle.booster.num_boosted_rounds() == metadata["best_iteration"] + 1
    assert metadata["rounds"] == metadata["best_iteration"] + 1 + 5 < entry.DEFAULT_NUM_ROUND
    # The result the stage hands on: the same metrics, a model folder evaluation can load.
    metric = METRIC[task]
    assert set(result.metrics) == {f"train:{metric}", f"validation:{metric}"}
    assert result.metrics == pytest.approx(metadata["metrics"])
    assert load_model_bundle(result.model_dir).metadata == metadata

    # The container's lines: every round in train.log, the final values alone on their lines.
    log = (tmp_path / "work" / "train.log").read_text().splitlines()
    final = dict(p for p in map(container.parse_metric_line, log) if p)
    assert final == pytest.approx(metadata["metrics"], rel=1e-6)
    rounds = [line for line in log if re.match(r"^\[\d+\]\t", line)]
    assert len(rounds) == metadata["rounds"] and f"validation:{metric}=" in rounds[0]
    # ...and through the logger: rounds live at DEBUG (sent by a worker), the rest at INFO; never on stdout.
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and "]\t" in r.getMessage()]
    assert debug and debug[0].startswith("[demo-run-1] [0]\t")
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert f"[demo-run-1] validation:{metric}={container.format_metric('x', final[f'validation:{metric}'])[2:]}" in info
    assert capfd.readouterr().out == ""
    # The partitions were read by the workers, one task per file.
    assert "read_split_piece" in cluster.scheduler.task_prefixes

    # It learned: the same bars as the container's own test.
    test_raw = raw_rows(task, 200, seed=7)
    predictions = bundle.predict_frame(test_raw.drop(columns="target"))
    if task == "binary_classification":
        assert metadata["metrics"]["validation:auc"] > 0.8
        assert roc_auc_score(test_raw["target"] == "yes", predictions) > 0.8
    elif task == "multiclass_classification":
        assert metadata["metrics"]["validation:mlogloss"] < 0.9 * np.log(3)
        assert np.mean(np.array(predictions) == test_raw["target"].to_numpy()) > 0.6
    else:
        y_valid = pd.read_parquet(features / "validation")["_label"]
        assert metadata["metrics"]["validation:rmse"] < 0.7 * y_valid.std()


def test_the_same_data_give_the_containers_metric(client, tmp_path, monkeypatch):
    """Same splits, same hyperparameters: within a small tolerance of the container run as a local job
    (two workers sketch the feature quantiles apart and merge them, so not bit for bit)."""
    monkeypatch.setenv(container.OMP_NUM_THREADS, "1")
    features = tmp_path / "features"
    write_feature_splits(features, "binary_classification", n_train=1200, n_valid=400)
    hps = {"max_depth": 3, "eta": 0.1, "num_round": 40, "early_stopping_rounds": 0, "eval_metric": "auc,logloss"}

    on_dask = train(client, features, tmp_path, hps)
    in_container = run_local_training_job(
        job_name="demo-container", work_dir=tmp_path / "container", channels=training_channels(str(features)),
        hyperparameters=hps, fs=fsspec.filesystem("file"), output_model_uri=str(tmp_path / "container.tar.gz"),
    )

    assert set(on_dask.metrics) == set(in_container.metrics) == {
        "train:auc", "train:logloss", "validation:auc", "validation:logloss"
    }
    assert on_dask.metrics["validation:auc"] == pytest.approx(in_container.metrics["validation:auc"], abs=0.02)
    assert on_dask.metrics["validation:logloss"] == pytest.approx(in_container.metrics["validation:logloss"], rel=0.05)
    dask_meta = load_model_bundle(on_dask.model_dir).metadata
    container_meta = load_model_bundle(in_container.model_dir).metadata
    assert set(container_meta) <= set(dask_meta)  # every field the container records, and backend, workers
    assert dask_meta["hyperparameters"] == {k: v for k, v in container_meta["hyperparameters"].items() if k != "nthread"}
    # Both models rank unseen rows alike.
    test_raw = raw_rows("binary_classification", 300, seed=11).drop(columns="target")
    a = np.array(load_model_bundle(on_dask.model_dir).predict_frame(test_raw))
    b = np.array(load_model_bundle(in_container.model_dir).predict_frame(test_raw))
    assert np.corrcoef(a, b)[0, 1] > 0.95


def write_ranking_splits(folder: Path, queries: dict[str, int], docs: int = 8, seed: int = 0) -> dict:
    """Query groups of ``docs`` rows: relevant (1) or not (0) by the first feature, with noise
    (binary, as clicks are: the container's default metrics include map@10, which needs it).

    ``_group`` holds 63-bit ids as preprocess writes them (hashes of the query value), beyond
    XGBoost's uint32 query ids; each file holds whole queries, its rows in no particular order.
    """
    rng = np.random.default_rng(seed)
    spec = {
        "format": "updraft.transform/1", "task": "ranking", "label": "relevance", "label_classes": None,
        "input_columns": ["x0", "x1", "x2"], "numeric": [], "categorical": [], "feature_names": ["x0", "x1", "x2"],
    }
    for split, n in queries.items():
        X = rng.normal(size=(n * docs, 3)).astype(np.float32)
        grade = (X[:, 0] + 0.2 * X[:, 1] + rng.normal(0, 0.4, n * docs) > 0.5).astype(int)
        frame = pd.DataFrame(X, columns=spec["feature_names"])
        frame["_label"] = grade.astype(np.float32)
        frame["_group"] = np.repeat(rng.integers(1, 2**63 - 1, n, dtype=np.int64), docs)
        out = folder / split
        out.mkdir(parents=True)
        half = (n // 2) * docs
        frame[:half].sample(frac=1.0, random_state=seed).to_parquet(out / "part.0.parquet", index=False)
        frame[half:].sample(frac=1.0, random_state=seed).to_parquet(out / "part.1.parquet", index=False)
    (folder / "transform.json").write_text(json.dumps(spec))
    return spec


def test_ranking_trains_with_query_ids_and_beats_a_random_order(client, tmp_path):
    features = tmp_path / "features"
    write_ranking_splits(features, {"train": 150, "validation": 50, "test": 50})

    result = train(client, features, tmp_path, {"max_depth": 3, "eta": 0.3, "early_stopping_rounds": 5})

    bundle = loaded_from_upload(result, tmp_path)
    assert bundle.metadata["hyperparameters"]["objective"] == "rank:ndcg"
    # The container's default ranking metrics that XGBoost computes (ndcg@10 first, for early stopping).
    defaults = entry.resolve_params({}, "ranking", 0, {})[0]["eval_metric"]
    assert defaults[0].startswith("ndcg")
    assert set(result.metrics) == {f"{data}:{metric}" for data in ("train", "validation") for metric in defaults}
    test = pd.read_parquet(features / "test").sort_values("_group", kind="stable")
    scores = bundle.predict_features(test[["x0", "x1", "x2"]].to_numpy())
    rng = np.random.default_rng(1)

    def mean_ndcg(score: np.ndarray) -> float:
        per_query = [
            ndcg_score([rows["_label"].to_numpy()], [score[rows.index]])
            for _, rows in test.reset_index(drop=True).groupby("_group")
        ]
        return float(np.mean(per_query))

    model, random = mean_ndcg(scores), mean_ndcg(rng.random(len(test)))
    assert model > random + 0.15, (model, random)


def test_hyperparameters_get_the_containers_defaults_and_checks():
    params, num_round, early, metrics = resolve_dask_params({"max_depth": "4", "eval_metric": "auc,logloss"}, "binary_classification", 2)
    container_params, *rest = entry.resolve_params({"max_depth": "4", "eval_metric": "auc,logloss"}, "binary_classification", 2, {})
    assert params == {k: v for k, v in container_params.items() if k != "nthread"}
    assert (num_round, early, metrics) == tuple(rest) == (entry.DEFAULT_NUM_ROUND, entry.DEFAULT_EARLY_STOPPING_ROUNDS, ["auc", "logloss"])
    assert resolve_dask_params({"nthread": 3}, "regression", 0)[0]["nthread"] == 3  # named: kept on every worker
    assert resolve_dask_params({}, "multiclass_classification", 4)[0]["num_class"] == 4
    ranking, _, _, ranking_metrics = resolve_dask_params({}, "ranking", 0)
    assert ranking["objective"] == "rank:ndcg" and ranking_metrics == ranking["eval_metric"]
    assert ranking_metrics[0] == entry.resolve_params({}, "ranking", 0, {})[3][0]  # early stopping follows the same metric
    with pytest.raises(ConfigError, match="'map@5' is computed by the training container only.*put one XGBoost computes first"):
        resolve_dask_params({"eval_metric": "map@5,ndcg"}, "ranking", 0)
    with pytest.raises(ConfigError, match="'objective' is set by the task"):
        resolve_dask_params({"objective": "rank:map"}, "ranking", 0)
    with pytest.raises(ConfigError, match="'num_round' must be an integer >= 1"):
        resolve_dask_params({"num_round": "0"}, "regression", 0)
    with pytest.raises(ConfigError, match="'anomaly_detection' cannot be trained on the Dask backend.*set train.backend: container"):
        resolve_dask_params({}, "anomaly_detection", 0)


@pytest.mark.parametrize(
    ("hyperparameters", "expected"),
    [
        ({"max_dept": 3}, "max_dept are not used by XGBoost"),  # checked on a worker before training
        ({"eta": -1}, "invalid hyperparameter"),
        ({"eval_metric": "aucc", "num_round": 2}, "Unknown metric function aucc"),
        ({"tree_method": "exact", "num_round": 2}, "XGBoost failed on the Dask cluster: .*exact"),
    ],
)
def test_a_bad_hyperparameter_fails_with_the_reason_and_uploads_nothing(hyperparameters, expected, client, tmp_path):
    features = tmp_path / "features"
    write_feature_splits(features, n_train=200, n_valid=80)

    with pytest.raises(ConfigError, match=expected):
        train(client, features, tmp_path, hyperparameters)
    assert not (tmp_path / "bucket" / "models" / "run-1" / "model.tar.gz").exists()


def test_bad_labels_are_found_on_the_workers_with_the_containers_message(client, tmp_path):
    features = tmp_path / "features"
    write_feature_splits(features, n_train=200, n_valid=80)
    path = features / "validation" / "part.1.parquet"
    frame = pd.read_parquet(path)
    frame.loc[frame.index[:3], "_label"] = 2.0  # a binary task has classes 0 and 1
    frame.to_parquet(path, index=False)

    with pytest.raises(DataError, match=r"training channel 'validation': 3 labels are not class indices in \[0, 2\) .*\(in part.1.parquet\)"):
        train(client, features, tmp_path)


def test_missing_inputs_are_named_with_what_to_do(client, tmp_path):
    features = tmp_path / "features"
    with pytest.raises(DataError, match="no transform.json at .*run the preprocess stage first"):
        train(client, features, tmp_path)

    write_feature_splits(features, n_train=200, n_valid=80)
    for part in (features / "validation").iterdir():
        part.unlink()
    with pytest.raises(DataError, match=r"training channel 'validation' holds no Parquet files"):
        train(client, features, tmp_path)

    write_feature_splits(features, n_train=200, n_valid=80)
    pd.read_parquet(features / "train" / "part.0.parquet").drop(columns="income").to_parquet(features / "train" / "part.0.parquet")
    with pytest.raises(DataError, match=r"'train': part.0.parquet lacks column\(s\) income named by transform.json"):
        train(client, features, tmp_path)

    spec = json.loads((features / "transform.json").read_text())
    (features / "transform.json").write_text(json.dumps({**spec, "task": "anomaly_detection"}))
    with pytest.raises(ConfigError, match="task 'anomaly_detection' cannot be trained on the Dask backend"):
        train(client, features, tmp_path)


def test_partitions_follow_row_groups_so_big_files_spread_over_workers(tmp_path, monkeypatch):
    folder = tmp_path / "train"
    folder.mkdir()
    table = pa.table({"a": np.arange(1000, dtype=np.float32), "_label": np.zeros(1000, dtype=np.float32)})
    pq.write_table(table, folder / "part.0.parquet", row_group_size=100)
    pq.write_table(table.slice(0, 50), folder / "part.1.parquet")
    (folder / ".hidden").mkdir()
    pq.write_table(table, folder / ".hidden" / "x.parquet")  # not data: a writer's temporary
    fs = fsspec.filesystem("file")
    row_group_bytes = pq.ParquetFile(folder / "part.0.parquet").metadata.row_group(0).total_byte_size
    monkeypatch.setattr(dask_train, "PIECE_BYTES", 3 * row_group_bytes)

    pieces = plan_split_reads(fs, folder.as_uri(), "train", "binary_classification", ["a"])

    assert [p.rows for p in pieces] == [300, 300, 300, 100, 50]
    assert [p.row_groups for p in pieces[:4]] == [(0, 1, 2), (3, 4, 5), (6, 7, 8), (9,)]
    assert all(p.uri.startswith("file://") for p in pieces)


def test_a_cluster_without_workers_is_named_before_anything_is_read(tmp_path):
    write_feature_splits(tmp_path / "features", n_train=200, n_valid=80)
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as empty, Client(empty) as client:
        with pytest.raises(StageError, match=rf"the Dask cluster at {empty.scheduler_address} has no workers"):
            train(client, tmp_path / "features", tmp_path)
