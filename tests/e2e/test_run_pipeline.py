"""`updraft run` end to end against an embedded endpoint, as a user drives it: counts, gate, endpoint."""

from __future__ import annotations

import io
import json
from pathlib import Path

import boto3
import pandas as pd
import pytest
import requests
import yaml

from tasks.aws.embedded import EmbeddedAWS
from tasks.sample import write_sample
from tests.e2e.conftest import run_cli

pytestmark = pytest.mark.e2e


def upload_sample(tmp_path: Path, rows: int) -> tuple[Path, dict]:
    sample = write_sample(tmp_path / "sample", n_rows=rows)
    config = yaml.safe_load(Path(sample.config).read_text())
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=config["bucket"])
    for path in sample.data_files:
        s3.upload_file(str(path), config["bucket"], config["source"] + path.name)
    return Path(sample.config), config


def test_run_json_conserves_rows_deploys_and_serves(embedded: EmbeddedAWS, tmp_path: Path) -> None:
    config_path, config = upload_sample(tmp_path, rows=6000)

    result = run_cli("run", "--config", str(config_path), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)  # exactly one JSON object on stdout
    assert result.stdout.strip().count("\n") == 0

    assert summary["target"] == "local"
    ingest = summary["ingest"]
    assert ingest["files"] == 3
    assert ingest["rows_in"] == 6000
    assert ingest["rows_in"] == ingest["rows_curated"] + ingest["rows_quarantined"]
    assert ingest["rows_quarantined"] > 0
    rows = summary["preprocess"]["rows"]
    assert set(rows) == {"train", "validation", "test"}
    assert sum(rows.values()) <= ingest["rows_curated"]
    assert summary["train"]["job_name"] and summary["train"]["model_uri"].endswith("model.tar.gz")
    evaluation = summary["evaluate"]
    assert evaluation["metric"] == "roc_auc"
    assert set(evaluation["baselines"]) >= {"constant", "logistic_regression"}
    assert evaluation["passed"] is True
    assert evaluation["model"] > max(evaluation["baselines"].values())
    assert summary["register"]["model_package_arn"].startswith("arn:aws:sagemaker:")
    assert Path(summary["report"]).is_file()
    assert set(summary["timings_s"]) >= {"ingest", "preprocess", "train", "evaluate", "register", "deploy", "report"}

    # Every row is in S3 where the summary says: curated Parquet, or quarantined with its reason.
    from tasks.aws.target import resolve_target

    fs = resolve_target("local").filesystem()
    curated = pd.concat(pd.read_parquet(fs.open(p)) for p in fs.find(ingest["curated_uri"]) if p.endswith(".parquet"))
    assert len(curated) == ingest["rows_curated"]
    quarantined = pd.concat(
        pd.read_parquet(fs.open(p)) for p in fs.find(ingest["quarantine_uri"]) if p.endswith(".parquet")
    )
    assert len(quarantined) == ingest["rows_quarantined"]
    assert quarantined["_reason"].str.len().min() > 0 and {"_source", "_row"} <= set(quarantined.columns)
    run = summary["run_id"]
    assert fs.exists(f"s3://{config['bucket']}/features/{run}/transform.json")
    assert json.loads(fs.cat(f"s3://{config['bucket']}/models/{run}/evaluation.json"))["passed"] is True
    assert fs.cat(summary["report_uri"]).startswith(b"<!DOCTYPE html>")

    # The SageMaker API on the endpoint knows the training job, the package and the endpoint.
    sm = boto3.client("sagemaker")
    job = sm.describe_training_job(TrainingJobName=summary["train"]["job_name"])
    assert job["TrainingJobStatus"] == "Completed"
    assert sm.describe_endpoint(EndpointName=summary["deploy"]["endpoint_name"])["EndpointStatus"] == "InService"

    # The endpoint outlives the run and answers like SageMaker's.
    url = summary["deploy"]["url"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/invocations")
    assert requests.get(url.replace("/invocations", "/ping"), timeout=10).status_code == 200
    raw = pd.read_csv(sorted((tmp_path / "sample").rglob("*.csv"))[0], dtype=str, keep_default_na=False)
    features = config["features"]["numeric"] + config["features"]["categorical"]
    contract_order = [c for c in raw.columns if c in features]
    valid = raw[raw["is_fraud"].isin(["0", "1"])].head(20)
    body = io.StringIO()
    valid[contract_order].to_csv(body, header=False, index=False)
    answer = requests.post(url, data=body.getvalue(), headers={"Content-Type": "text/csv"}, timeout=30)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert len(predictions) == 20 and all(0.0 <= p <= 1.0 for p in predictions)
    instances = valid[contract_order].head(3).replace({"": None}).to_dict(orient="records")
    answer = requests.post(url, json={"instances": instances}, timeout=30)
    assert answer.status_code == 200 and answer.json()["predictions"] == pytest.approx(predictions[:3], rel=1e-5)

    # A rerun over the same source ingests nothing new, trains on what is curated, and
    # updates the endpoint in place under the same name.
    again = run_cli("run", "--config", str(config_path), "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads(again.stdout)
    assert second["ingest"]["files"] == 0 and second["ingest"]["files_skipped"] == 3
    assert second["ingest"]["rows_in"] == 0
    assert sum(second["preprocess"]["rows"].values()) == sum(rows.values())
    assert second["deploy"]["endpoint_name"] == summary["deploy"]["endpoint_name"]
    url = second["deploy"]["url"]
    assert requests.post(url, data=body.getvalue(), headers={"Content-Type": "text/csv"}, timeout=30).status_code == 200

    listing = run_cli("endpoint", "list", "--json")
    assert listing.returncode == 0
    names = {e["name"]: e for e in json.loads(listing.stdout)}
    assert names[config["name"]]["url"] == url and names[config["name"]]["alive"]

    deleted = run_cli("endpoint", "delete", config["name"])
    assert deleted.returncode == 0, deleted.stderr
    with pytest.raises(requests.ConnectionError):
        requests.get(url.replace("/invocations", "/ping"), timeout=5)
    assert json.loads(run_cli("endpoint", "list", "--json").stdout) == []


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("missing_bucket", "bucket 'nowhere-bucket' does not exist"),
        ("label", "label 'fraudulent' is not a column of the contract"),
        ("empty_source", "no CSV, JSON-lines or Parquet files under s3://"),
        ("contract", "contract"),
        ("unknown_key", "unknown key 'lable'"),
    ],
)
def test_user_errors_are_one_line_and_nonzero(embedded: EmbeddedAWS, tmp_path: Path, breakage: str, message: str) -> None:
    config_path, config = upload_sample(tmp_path, rows=300)
    if breakage == "missing_bucket":
        config["bucket"] = "nowhere-bucket"
    elif breakage == "label":
        config["label"] = "fraudulent"
        config.pop("features")
    elif breakage == "empty_source":
        config["source"] = "raw/nothing-here/"
    elif breakage == "contract":
        config["contract"] = str(tmp_path / "missing-contract.yaml")
    elif breakage == "unknown_key":
        config["lable"] = "x"
    broken = config_path.parent / "broken.yaml"
    broken.write_text(yaml.safe_dump(config))

    result = run_cli("run", "--config", str(broken), "--json", timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("updraft: error:") and message in last, result.stderr
