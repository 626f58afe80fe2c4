"""The endpoint in SageMaker's API (moto), and the deploy stage on the embedded target."""

from __future__ import annotations

import datetime
import json
import logging
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import boto3
import botocore.config
import pytest
import requests
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws

from tasks.aws.embedded import EmbeddedAWS
from tasks.aws.target import Target
from tasks.config import parse_config
from tasks.deploy import deploy_stage, find_model_package_arn, local_endpoints
from tasks.deploy.sagemaker_endpoints import (
    delete_endpoint_record,
    deploy_sagemaker_endpoint,
    record_endpoint,
)
from tasks.errors import ConfigError, StageError
from tests.aws.test_deploy_rollback import Requests
from tests.unit.test_serve import CSV_BODY, write_model_tar

ROLE = "arn:aws:iam::123456789012:role/sagemaker"
PACKAGE = "arn:aws:sagemaker:us-east-1:123456789012:model-package/fraud/1"
ONE_TRY = botocore.config.Config(retries={"mode": "standard", "total_max_attempts": 1})


def _version(sm: Any, run: str, **overrides: Any) -> dict[str, Any]:
    kwargs = dict(
        name="fraud",
        model_name=f"fraud-{run}",
        image_uri="updraft-inference:local",
        model_data_url=f"s3://bkt/models/{run}/model.tar.gz",
        role_arn=ROLE,
        instance_type="ml.m5.large",
    )
    kwargs.update(overrides)
    return kwargs


def _deployable(sm: Any, run: str, **overrides: Any) -> dict[str, Any]:
    """A version for deploy_sagemaker_endpoint, whose instance type comes from its settings."""
    kwargs = _version(sm, run, **overrides)
    kwargs.pop("instance_type")
    return kwargs


@pytest.fixture()
def moto_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield


@pytest.fixture()
def requests_sent() -> Requests:
    """Every request of the clients below, each checked against botocore's service model."""
    return Requests()


@pytest.fixture()
def sm(moto_aws: None, requests_sent: Requests) -> Any:
    return requests_sent.watch(boto3.client("sagemaker", region_name="us-east-1", config=ONE_TRY))


@pytest.fixture()
def cw(moto_aws: None, requests_sent: Requests) -> Any:
    return requests_sent.watch(boto3.client("cloudwatch", region_name="us-east-1", config=ONE_TRY))


@pytest.fixture()
def aas(moto_aws: None, requests_sent: Requests) -> Any:
    return requests_sent.watch(boto3.client("application-autoscaling", region_name="us-east-1", config=ONE_TRY))


def _tags(sm: Any, name: str) -> dict[str, str]:
    arn = sm.describe_endpoint(EndpointName=name)["EndpointArn"]
    return {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=arn)["Tags"]}


def test_record_endpoint_makes_describe_endpoint_answer_in_service(sm: Any) -> None:
    arn = record_endpoint(sm, **_version(sm, "r1"), tags={"updraft:url": "http://127.0.0.1:8080/invocations"})
    endpoint = sm.describe_endpoint(EndpointName="fraud")
    assert endpoint["EndpointStatus"] == "InService"
    assert endpoint["EndpointArn"] == arn
    assert endpoint["EndpointConfigName"] == "fraud-r1"
    container = sm.describe_model(ModelName="fraud-r1")["PrimaryContainer"]
    assert container["Image"] == "updraft-inference:local"
    assert container["ModelDataUrl"] == "s3://bkt/models/r1/model.tar.gz"


def test_recording_twice_points_the_endpoint_at_the_new_version(sm: Any) -> None:
    record_endpoint(sm, **_version(sm, "r1"), tags={"updraft:run-id": "r1"})
    record_endpoint(sm, **_version(sm, "r2"), tags={"updraft:run-id": "r2"})
    # the same version again: nothing to change but its tags (now it knows its registered package)
    record_endpoint(sm, **_version(sm, "r2"), tags={"updraft:run-id": "r2", "updraft:model-package-arn": PACKAGE})
    endpoint = sm.describe_endpoint(EndpointName="fraud")
    assert (endpoint["EndpointStatus"], endpoint["EndpointConfigName"]) == ("InService", "fraud-r2")
    assert [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]] == ["fraud"]
    assert _tags(sm, "fraud") == {"updraft:run-id": "r2", "updraft:model-package-arn": PACKAGE}


def test_delete_endpoint_record_removes_endpoint_config_and_model(sm: Any) -> None:
    record_endpoint(sm, **_version(sm, "r1"))
    assert delete_endpoint_record(sm, "fraud") is True
    for call, kwargs in (
        (sm.describe_endpoint, {"EndpointName": "fraud"}),
        (sm.describe_endpoint_config, {"EndpointConfigName": "fraud-r1"}),
        (sm.describe_model, {"ModelName": "fraud-r1"}),
    ):
        with pytest.raises(ClientError, match="Could not find"):
            call(**kwargs)
    assert delete_endpoint_record(sm, "fraud") is False


def test_an_endpoint_without_sagemaker_only_warns(sm: Any, caplog: pytest.LogCaptureFixture) -> None:
    with Stubber(sm) as stub:  # what LocalStack's free edition answers
        stub.add_client_error(
            "create_model",
            service_error_code="InternalFailure",
            service_message="API for service 'sagemaker' not yet implemented or pro feature",
            http_status_code=501,
        )
        with caplog.at_level(logging.WARNING, logger="updraft.deploy"):
            assert record_endpoint(sm, **_version(sm, "r1")) is None
    assert "cannot record endpoint fraud" in caplog.text


def test_deploy_sagemaker_endpoint_creates_the_endpoint_and_waits_for_in_service(
    sm: Any, cw: Any, aas: Any, requests_sent: Requests
) -> None:
    done = deploy_sagemaker_endpoint(
        sm, cw, aas, **_deployable(sm, "r1", image_uri="1234.dkr.ecr.us-east-1.amazonaws.com/updraft:1"),
        tags={"updraft:run-id": "r1", "updraft:model-package-arn": PACKAGE}, poll_s=0,
    )
    assert sm.describe_endpoint(EndpointName="fraud")["EndpointArn"] == done.endpoint_arn
    assert done.action == "created"
    assert _tags(sm, "fraud") == {"updraft:run-id": "r1", "updraft:model-package-arn": PACKAGE}
    assert "UpdateEndpoint" not in requests_sent.names()
    # a rerun of the same run changes nothing and succeeds
    again = deploy_sagemaker_endpoint(sm, cw, aas, **_deployable(sm, "r1", image_uri="1234.dkr.ecr.us-east-1.amazonaws.com/updraft:1"), poll_s=0)
    assert (again.action, again.endpoint_arn) == ("unchanged", done.endpoint_arn)


def test_a_failed_endpoint_raises_with_sagemakers_failure_reason(sm: Any, cw: Any, aas: Any) -> None:
    reason = "The primary container for production variant AllTraffic did not pass the ping health check."
    now = datetime.datetime(2026, 11, 26, tzinfo=datetime.timezone.utc)
    described = {
        "EndpointName": "fraud",
        "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/fraud",
        "EndpointConfigName": "fraud-r1",
        "CreationTime": now,
        "LastModifiedTime": now,
    }
    with Stubber(sm) as stub:
        stub.add_client_error(
            "describe_endpoint", service_error_code="ValidationException", service_message="Could not find endpoint 'fraud'."
        )
        stub.add_response("create_model", {"ModelArn": "arn:aws:sagemaker:us-east-1:123456789012:model/fraud-r1"})
        stub.add_response(
            "create_endpoint_config",
            {"EndpointConfigArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/fraud-r1"},
        )
        stub.add_response("create_endpoint", {"EndpointArn": described["EndpointArn"]})
        stub.add_response("describe_endpoint", {**described, "EndpointStatus": "Creating"})
        stub.add_response("describe_endpoint", {**described, "EndpointStatus": "Failed", "FailureReason": reason})
        with pytest.raises(StageError, match="did not pass the ping health check.*nothing served before and nothing serves now"):
            deploy_sagemaker_endpoint(sm, cw, aas, **_deployable(sm, "r1"), poll_s=0, max_wait_s=5)
        stub.assert_no_pending_responses()


def test_a_request_sagemaker_refuses_is_a_stage_error_quoting_it(sm: Any, cw: Any, aas: Any) -> None:
    message = "Could not access model data at s3://bkt/models/r1/model.tar.gz. Please ensure that the role exists"
    with Stubber(sm) as stub:
        stub.add_client_error(
            "describe_endpoint", service_error_code="ValidationException", service_message="Could not find endpoint 'fraud'."
        )
        stub.add_client_error("create_model", service_error_code="ValidationException", service_message=message)
        with pytest.raises(StageError, match="SageMaker refused to deploy endpoint 'fraud': Could not access model data"):
            deploy_sagemaker_endpoint(sm, cw, aas, **_deployable(sm, "r1"), poll_s=0, max_wait_s=5)
    assert cw.describe_alarms()["MetricAlarms"] == []  # nothing was created


# The deploy stage on the embedded target: a real local endpoint, recorded in moto's server.


def _config(**deploy: Any) -> Any:
    raw = {
        "name": "fraud",
        "bucket": "bkt",
        "source": "raw/",
        "contract": "/contracts/fraud.yaml",
        "label": "is_fraud",
        "task": "binary_classification",
    }
    if deploy:
        raw["deploy"] = deploy
    return parse_config(raw)


@pytest.fixture()
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Target]:
    monkeypatch.setenv("UPDRAFT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("UPDRAFT_RUNS_DIR", str(tmp_path / "runs"))
    with EmbeddedAWS() as aws:
        requests.post(f"{aws.url}/moto-api/reset", timeout=10)  # moto's state is per process, not per server
        target = Target(kind="embedded", region="us-east-1", endpoint_url=aws.url)
        target.client("s3").create_bucket(Bucket="bkt")
        yield target
        for state in (tmp_path / "home" / "endpoints").glob("*/endpoint.json"):
            recorded = json.loads(state.read_text())
            pid = recorded["pid"]
            local_endpoints._remove_handover(recorded.get("handover"))  # a killed server cannot remove its own
            if local_endpoints._is_server(pid):
                os.killpg(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while local_endpoints._pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)


def test_deploy_stage_serves_the_model_locally_and_records_it(embedded: Target, tmp_path: Path) -> None:
    tar = write_model_tar(tmp_path / "model.tar.gz")
    model_uri = "s3://bkt/models/20261126-000000-abcdef/model.tar.gz"
    embedded.filesystem().put(str(tar), model_uri)
    passed = SimpleNamespace(passed=True, reason="beats the best baseline")

    result = deploy_stage.fn(
        _config(), embedded, "20261126-000000-abcdef", model_uri, str(tmp_path / "unused"), passed, model_package_arn=PACKAGE
    )

    assert result.endpoint_name == "fraud" and result.skipped is None and result.model_package_arn == PACKAGE
    assert result.url.startswith("http://127.0.0.1:") and result.url.endswith("/invocations")
    answer = requests.post(result.url, data=CSV_BODY, headers={"Content-Type": "text/csv"}, timeout=10)
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 3
    sm = embedded.client("sagemaker")
    endpoint = sm.describe_endpoint(EndpointName="fraud")
    assert (endpoint["EndpointStatus"], endpoint["EndpointConfigName"]) == ("InService", "fraud-20261126-000000-abcdef")
    tags = _tags(sm, "fraud")
    assert tags["updraft:model-package-arn"] == PACKAGE and tags["updraft:run-id"] == "20261126-000000-abcdef"
    assert tags["updraft:url"] == result.url
    # SageMaker code reaches the same model through the embedded endpoint
    invoked = embedded.client("sagemaker-runtime").invoke_endpoint(EndpointName="fraud", ContentType="text/csv", Body=CSV_BODY)
    assert json.loads(invoked["Body"].read()) == answer.json()
    assert local_endpoints.delete_local_endpoint("fraud") is True


def _register(sm: Any, model_uri: str) -> str:
    """A model package of group 'fraud' serving ``model_uri``, as the register stage creates one."""
    try:
        sm.create_model_package_group(ModelPackageGroupName="fraud")
    except ClientError:
        pass
    return sm.create_model_package(
        ModelPackageGroupName="fraud",
        InferenceSpecification={
            "Containers": [{"Image": "updraft-inference:local", "ModelDataUrl": model_uri}],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
        ModelApprovalStatus="Approved",
    )["ModelPackageArn"]


def test_deploy_stage_finds_the_package_registered_for_its_model_when_not_given_one(embedded: Target, tmp_path: Path) -> None:
    sm = embedded.client("sagemaker")
    first = _register(sm, "s3://bkt/models/r1/model.tar.gz")
    second = _register(sm, "s3://bkt/models/r2/model.tar.gz")
    assert find_model_package_arn(sm, "fraud", "s3://bkt/models/r1/model.tar.gz") == first
    assert find_model_package_arn(sm, "fraud", "s3://bkt/models/r2/model.tar.gz") == second
    assert find_model_package_arn(sm, "fraud", "s3://bkt/models/r3/model.tar.gz") is None
    assert find_model_package_arn(sm, "no-such-group", "s3://bkt/models/r1/model.tar.gz") is None

    tar = write_model_tar(tmp_path / "model.tar.gz")
    embedded.filesystem().put(str(tar), "s3://bkt/models/r2/model.tar.gz")
    passed = SimpleNamespace(passed=True, reason="ok")
    result = deploy_stage.fn(_config(), embedded, "r2", "s3://bkt/models/r2/model.tar.gz", str(tmp_path / "unused"), passed)
    assert result.model_package_arn == second
    assert _tags(sm, "fraud")["updraft:model-package-arn"] == second


def test_recording_twice_on_the_moto_server_points_the_endpoint_at_the_new_version(embedded: Target) -> None:
    sm = embedded.client("sagemaker")
    record_endpoint(sm, **_version(sm, "r1"))
    record_endpoint(sm, **_version(sm, "r2"))
    endpoint = sm.describe_endpoint(EndpointName="fraud")
    assert (endpoint["EndpointStatus"], endpoint["EndpointConfigName"]) == ("InService", "fraud-r2")


def test_deploy_stage_skips_when_the_gate_failed(embedded: Target) -> None:
    failed = SimpleNamespace(passed=False, reason="ROC-AUC 0.61 does not beat logistic regression (0.66)")
    result = deploy_stage.fn(_config(), embedded, "r1", "s3://bkt/models/r1/model.tar.gz", "/nowhere", failed)
    assert result.url is None
    assert "does not beat logistic regression" in result.skipped
    assert local_endpoints.list_local_endpoints() == []
    assert embedded.client("sagemaker").list_endpoints()["Endpoints"] == []


def test_deploy_stage_on_aws_needs_an_inference_image() -> None:
    target = Target(kind="aws", region="us-east-1")
    passed = SimpleNamespace(passed=True, reason="ok")
    with pytest.raises(ConfigError, match="aws.inference_image"):
        deploy_stage.fn(_config(), target, "r1", "s3://bkt/m.tar.gz", "/nowhere", passed)
