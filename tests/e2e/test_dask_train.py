"""train.backend dask against the embedded S3 endpoint: worker processes read the splits from S3 themselves."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest
from distributed import Client, LocalCluster
from sklearn.metrics import log_loss, roc_auc_score

from tasks.aws.target import Target
from tasks.modelbundle import load_model_bundle
from tasks.training.dask_train import train_on_dask
from tasks.training.stage import fetch_model
from tests.unit.test_train_entrypoint import write_feature_splits

pytestmark = pytest.mark.e2e


def test_trains_from_s3_and_uploads_a_model_the_stages_load(embedded_target: Target, moto_s3_bucket: str, tmp_path: Path) -> None:
    local = tmp_path / "features"
    write_feature_splits(local, "binary_classification", n_train=800, n_valid=300)
    valid = pd.read_parquet(local / "validation")
    fs = embedded_target.filesystem()
    features_uri = f"s3://{moto_s3_bucket}/features/run-1/"
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        fs.put_file(str(path), features_uri + path.relative_to(local).as_posix())
    shutil.rmtree(local)  # the splits now exist only in S3
    model_uri = f"s3://{moto_s3_bucket}/models/run-1/model.tar.gz"

    # Started after the endpoint, as a cluster next to the endpoint would be; the workers get
    # the endpoint through the storage options, never through the client's files.
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR) as cluster:
        with Client(cluster) as client:
            result = train_on_dask(
                client,
                features_uri=features_uri,
                storage_options=embedded_target.storage_options(),
                hyperparameters={"max_depth": 3, "eta": 0.3, "early_stopping_rounds": 5, "eval_metric": "auc,logloss"},
                job_name="demo-run-1",
                output_model_uri=model_uri,
                fs=fs,
                environment={"UPDRAFT_RUN_ID": "run-1"},
                work_dir=tmp_path / "work",
            )
        assert "read_split_piece" in cluster.scheduler.task_prefixes

    assert result.model_uri == model_uri and result.metrics["validation:auc"] > 0.8
    bundle = load_model_bundle(fetch_model(fs, model_uri, tmp_path / "fetched", run_id="run-1"))
    assert (bundle.metadata["backend"], bundle.metadata["run_id"]) == ("dask", "run-1")
    assert bundle.metadata["metrics"] == pytest.approx(result.metrics)
    scores = bundle.predict_features(valid[bundle.feature_names].to_numpy())
    # Sums over rows (logloss, rmse) are exact across workers; XGBoost combines each worker's
    # AUC, which comes close to, but is not, the AUC of the whole split.
    assert log_loss(valid["_label"], scores) == pytest.approx(result.metrics["validation:logloss"], rel=1e-5)
    assert roc_auc_score(valid["_label"], scores) == pytest.approx(result.metrics["validation:auc"], abs=0.01)
