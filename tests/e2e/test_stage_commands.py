"""One stage at a time, as a platform team schedules them: each command alone, chained by the run id."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests

from tasks.aws.embedded import EmbeddedAWS
from tests.e2e.conftest import run_cli
from tests.e2e.test_run_pipeline import upload_sample

pytestmark = pytest.mark.e2e


def run_stage(command: str, config_path: Path, *args: str) -> dict[str, Any]:
    """``updraft <command> --json``: it succeeds and prints exactly one JSON object."""
    result = run_cli(command, "--config", str(config_path), "--json", *args, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().count("\n") == 0, result.stdout[:500]
    out = json.loads(result.stdout)
    assert out["target"] == "local"
    return out


def test_each_stage_alone_chained_by_run_id_ends_in_a_serving_endpoint(embedded: EmbeddedAWS, tmp_path: Path) -> None:
    config_path, config = upload_sample(tmp_path, rows=3000)
    bucket = config["bucket"]

    ingest = run_stage("ingest", config_path)
    run = ingest["run_id"]
    assert ingest["rows_in"] == 3000 == ingest["rows_curated"] + ingest["rows_quarantined"]

    prep = run_stage("preprocess", config_path, "--run-id", run)
    assert prep["run_id"] == run
    assert prep["features_uri"] == f"s3://{bucket}/features/{run}/"
    assert set(prep["rows"]) == {"train", "validation", "test"}
    assert 0 < sum(prep["rows"].values()) <= ingest["rows_curated"]
    assert prep["feature_names"]

    train = run_stage("train", config_path, "--run-id", run)
    assert train["run_id"] == run and train["status"] == "Completed"
    assert train["model_uri"] == f"s3://{bucket}/models/{run}/model.tar.gz"

    evaluation = run_stage("evaluate", config_path, "--run-id", run)
    assert evaluation["run_id"] == run and evaluation["metric"] == "roc_auc"
    assert set(evaluation["baselines"]) >= {"constant", "logistic_regression", "decision_tree"}
    assert evaluation["passed"] is True, evaluation["reason"]
    assert evaluation["n_test"] == prep["rows"]["test"]

    registered = run_stage("register", config_path, "--run-id", run)
    assert registered["run_id"] == run and registered["skipped"] is None
    assert registered["approval_status"] == "Approved" and registered["version"] == 1
    assert registered["model_package_arn"].startswith("arn:aws:sagemaker:")

    deployed = run_stage("deploy", config_path, "--run-id", run)
    assert deployed["run_id"] == run and deployed["skipped"] is None
    assert deployed["endpoint_name"] == (config.get("deploy") or {}).get("endpoint_name", config["name"])

    # The endpoint serves the model this chain trained, on raw rows in contract order.
    url = deployed["url"]
    raw = pd.read_csv(sorted((tmp_path / "sample").rglob("*.csv"))[0], dtype=str, keep_default_na=False)
    features = config["features"]["numeric"] + config["features"]["categorical"]
    body = io.StringIO()
    raw[[c for c in raw.columns if c in features]].head(10).to_csv(body, header=False, index=False)
    answer = requests.post(url, data=body.getvalue(), headers={"Content-Type": "text/csv"}, timeout=30)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert len(predictions) == 10 and all(0.0 <= p <= 1.0 for p in predictions)

    # Without --json: nothing on stdout, one line a person reads on stderr; a stage may run again.
    again = run_cli("register", "--config", str(config_path), "--run-id", run, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout == ""
    group = registered["model_package_group"]
    assert f"run {run}: version 2 of {group} (Approved): {registered['model_package_arn'][:-1]}2" in again.stderr.splitlines()


def test_a_stage_without_its_earlier_output_says_what_to_run_first(embedded: EmbeddedAWS, tmp_path: Path) -> None:
    config_path, config = upload_sample(tmp_path, rows=300)

    result = run_cli("train", "--config", str(config_path), "--run-id", "nope", timeout=120)

    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    # Prefect may log after it (stopping its temporary server); the error itself is one line.
    errors = [line for line in result.stderr.splitlines() if line.startswith("updraft: error:")]
    assert errors == [
        f"updraft: error: no features for run nope at s3://{config['bucket']}/features/nope/: "
        f"run 'updraft preprocess --config {config_path}' first"
    ]
