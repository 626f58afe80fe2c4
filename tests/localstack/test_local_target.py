"""`updraft run` on the local target against a real LocalStack, as a developer drives it.

LocalStack's free edition has S3, IAM and STS but no SageMaker (its calls answer 501), so
this is the target where updraft must cover training and the endpoint with local
processes on its own: the run stores every row and the model in LocalStack's S3, warns
that SageMaker could not record the job, and leaves an endpoint that answers over HTTP.
Runs where LocalStack answers (``make localstack-test`` starts one); skipped elsewhere.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pandas as pd
import pytest
import requests
import yaml
from botocore.exceptions import ClientError

from tasks.sample import write_sample
from tests.e2e.conftest import run_cli
from tests.localstack.conftest import HOOK_BUCKETS, HOOK_PROJECT, requires_localstack

pytestmark = [pytest.mark.localstack, requires_localstack]

ROWS = 3000


@pytest.fixture()
def project(localstack: str, tmp_path: Path) -> Iterator[dict]:
    """A sample project in the init hook's bucket, under a fresh name and prefix, so the test
    also runs against a developer's long-lived LocalStack; what it wrote there is removed after."""
    bucket = HOOK_BUCKETS[0]
    s3 = boto3.client("s3")
    before = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in page.get("Contents", [])}
    suffix = uuid.uuid4().hex[:6]
    sample = write_sample(tmp_path / "sample", n_rows=ROWS)
    config = yaml.safe_load(Path(sample.config).read_text())
    config.update(name=f"claims-ls-{suffix}", bucket=bucket, source=f"raw/claims-{suffix}/")
    config_path = Path(sample.config)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    for path in sample.data_files:
        s3.upload_file(str(path), bucket, config["source"] + path.name)
    yield {"config": config, "config_path": config_path, "sample_dir": sample.root}

    listing = run_cli("endpoint", "list", "--json", timeout=60)
    if listing.returncode == 0 and listing.stdout.strip():
        for endpoint in json.loads(listing.stdout):
            run_cli("endpoint", "delete", endpoint["name"], timeout=60)
    written = [
        {"Key": o["Key"]}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
        if o["Key"] not in before
    ]
    for start in range(0, len(written), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": written[start : start + 1000], "Quiet": True})


def test_init_hooks_created_the_bucket_and_execution_role(localstack: str) -> None:
    s3 = boto3.client("s3")
    for bucket in HOOK_BUCKETS:
        s3.head_bucket(Bucket=bucket)
        block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        assert all(block.values()), block
    iam = boto3.client("iam")
    role = iam.get_role(RoleName=f"{HOOK_PROJECT}-sagemaker-execution")["Role"]
    trust = role["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert trust["Statement"][0]["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    policy = iam.get_role_policy(RoleName=role["RoleName"], PolicyName="updraft-project-data")["PolicyDocument"]
    policy = json.loads(policy) if isinstance(policy, str) else policy
    resources = {r for s in policy["Statement"] for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])}
    assert {f"arn:aws:s3:::{b}" for b in HOOK_BUCKETS} <= resources and "*" not in resources


def test_run_on_localstack_conserves_rows_trains_locally_and_serves(project: dict) -> None:
    config = project["config"]
    result = run_cli("run", "--config", str(project["config_path"]), "--json")
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout)  # exactly one JSON object on stdout
    assert result.stdout.strip().count("\n") == 0
    assert summary["target"] == "local"

    # Every row is curated or quarantined in LocalStack's S3, none lost.
    ingest = summary["ingest"]
    assert ingest["files"] == 3 and ingest["rows_in"] == ROWS
    assert ingest["rows_in"] == ingest["rows_curated"] + ingest["rows_quarantined"]
    assert ingest["rows_quarantined"] > 0
    from tasks.aws.target import resolve_target

    fs = resolve_target("local").filesystem()
    curated = sum(len(pd.read_parquet(fs.open(p))) for p in fs.find(ingest["curated_uri"]) if p.endswith(".parquet"))
    quarantined = sum(len(pd.read_parquet(fs.open(p))) for p in fs.find(ingest["quarantine_uri"]) if p.endswith(".parquet"))
    assert (curated, quarantined) == (ingest["rows_curated"], ingest["rows_quarantined"])
    assert sum(summary["preprocess"]["rows"].values()) <= ingest["rows_curated"]

    # The model beats every baseline and the gate let it through.
    evaluation = summary["evaluate"]
    assert evaluation["passed"] is True
    assert evaluation["model"] > max(evaluation["baselines"].values())

    # SageMaker's part ran as local processes: the model is in S3, the API had nothing to record it in.
    train = summary["train"]
    assert train["status"] == "Completed"
    bucket, key = train["model_uri"].removeprefix("s3://").split("/", 1)
    assert boto3.client("s3").head_object(Bucket=bucket, Key=key)["ContentLength"] > 0
    assert "ran locally but is not recorded: the AWS endpoint has no SageMaker API" in result.stderr
    with pytest.raises(ClientError) as missing:
        boto3.client("sagemaker").describe_training_job(TrainingJobName=train["job_name"])
    assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501
    assert Path(summary["report"]).is_file() and fs.cat(summary["report_uri"]).startswith(b"<!DOCTYPE html>")

    # The endpoint is a local server that answers like SageMaker's.
    url = summary["deploy"]["url"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/invocations")
    assert requests.get(url.replace("/invocations", "/ping"), timeout=10).status_code == 200
    raw = pd.read_csv(sorted(project["sample_dir"].rglob("*.csv"))[0], dtype=str, keep_default_na=False)
    features = config["features"]["numeric"] + config["features"]["categorical"]
    valid = raw[raw["is_fraud"].isin(["0", "1"])].head(10)
    body = io.StringIO()
    valid[[c for c in raw.columns if c in features]].to_csv(body, header=False, index=False)
    answer = requests.post(url, data=body.getvalue(), headers={"Content-Type": "text/csv"}, timeout=30)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert len(predictions) == 10 and all(0.0 <= p <= 1.0 for p in predictions)

    deleted = run_cli("endpoint", "delete", summary["deploy"]["endpoint_name"], timeout=60)
    assert deleted.returncode == 0, deleted.stderr
    with pytest.raises(requests.ConnectionError):
        requests.get(url.replace("/invocations", "/ping"), timeout=5)
