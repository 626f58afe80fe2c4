"""The model registry as a platform team sees it in SageMaker: one group, numbered versions, the gate's verdict."""

from __future__ import annotations

import logging
from typing import Any, Iterator

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws

from tasks.aws.target import Target
from tasks.config import PipelineConfig
from tasks.registry import (
    LOCAL_INFERENCE_IMAGE,
    build_model_package_request,
    list_model_versions,
    register_model,
    register_stage,
)

GROUP = "fraud-claims"


@pytest.fixture()
def sm(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SAGEMAKER", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        yield boto3.client("sagemaker", region_name="us-east-1")


def _register(sm: Any, *, approved: bool, run_id: str, evaluation_uri: str | None = "s3://bkt/models/r/evaluation.json"):
    return register_model(
        sm,
        group_name=GROUP,
        model_data_url=f"s3://bkt/models/{run_id}/model.tar.gz",
        image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/updraft-inference:1",
        approved=approved,
        description=f"run {run_id}: model ROC-AUC 0.912 vs best baseline (logistic_regression, 0.801)",
        customer_metadata={
            "run_id": run_id,
            "metric": "roc_auc",
            "metric_value": "0.912" if approved else "0.5",
            "best_baseline": "logistic_regression",
            "baseline_value": "0.801",
            "passed": "true" if approved else "false",
        },
        evaluation_uri=evaluation_uri,
    )


def test_two_runs_share_one_group_and_get_versions_one_and_two(sm: Any) -> None:
    first = _register(sm, approved=True, run_id="run-a")
    group_created = sm.describe_model_package_group(ModelPackageGroupName=GROUP)["CreationTime"]
    second = _register(sm, approved=False, run_id="run-b")

    groups = sm.list_model_package_groups()["ModelPackageGroupSummaryList"]
    assert [g["ModelPackageGroupName"] for g in groups] == [GROUP]
    # Not created a second time (moto, unlike AWS, would silently replace it and its creation time).
    assert sm.describe_model_package_group(ModelPackageGroupName=GROUP)["CreationTime"] == group_created

    assert (first.model_package_group, first.version, first.approval_status) == (GROUP, 1, "Approved")
    assert (second.model_package_group, second.version, second.approval_status) == (GROUP, 2, "Rejected")
    assert first.model_package_arn != second.model_package_arn and first.skipped is None


def test_a_package_is_deployable_and_points_at_its_evaluation(sm: Any) -> None:
    result = _register(sm, approved=True, run_id="run-a")
    package = sm.describe_model_package(ModelPackageName=result.model_package_arn)

    spec = package["InferenceSpecification"]
    assert spec["Containers"] == [
        {
            "Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/updraft-inference:1",
            "ModelDataUrl": "s3://bkt/models/run-a/model.tar.gz",
        }
    ]
    assert spec["SupportedContentTypes"] == ["text/csv", "application/json"]
    assert spec["SupportedResponseMIMETypes"] == ["application/json"]
    assert "ml.m5.large" in spec["SupportedRealtimeInferenceInstanceTypes"]
    assert package["ModelMetrics"]["ModelQuality"]["Statistics"] == {
        "ContentType": "application/json",
        "S3Uri": "s3://bkt/models/r/evaluation.json",
    }
    assert package["CustomerMetadataProperties"]["run_id"] == "run-a"
    assert package["ModelApprovalStatus"] == "Approved"
    assert "gate passed" in package["ApprovalDescription"]


def test_a_rejected_version_says_the_gate_failed(sm: Any) -> None:
    result = _register(sm, approved=False, run_id="run-b", evaluation_uri=None)
    package = sm.describe_model_package(ModelPackageName=result.model_package_arn)
    assert package["ModelApprovalStatus"] == "Rejected"
    assert package["ApprovalDescription"].startswith("the evaluation gate failed: run run-b")
    assert "ModelMetrics" not in package
    assert package["CustomerMetadataProperties"]["passed"] == "false"


def test_list_model_versions_shows_each_version_with_its_gate_numbers(sm: Any) -> None:
    assert list_model_versions(sm, GROUP) == []
    _register(sm, approved=True, run_id="run-a")
    _register(sm, approved=False, run_id="run-b")

    versions = list_model_versions(sm, GROUP)
    assert [(v["version"], v["approval_status"], v["run_id"], v["passed"]) for v in versions] == [
        (1, "Approved", "run-a", True),
        (2, "Rejected", "run-b", False),
    ]
    assert versions[0]["metric"] == "roc_auc" and versions[0]["value"] == pytest.approx(0.912)
    assert versions[1]["best_baseline"] == "logistic_regression" and versions[1]["baseline_value"] == pytest.approx(0.801)
    assert versions[0]["arn"].endswith(f"model-package/{GROUP}/1")
    assert versions[0]["created"] <= versions[1]["created"]


def test_metadata_and_descriptions_are_made_acceptable_to_sagemaker() -> None:
    request = build_model_package_request(
        group_name=GROUP,
        model_data_url="s3://bkt/m.tar.gz",
        image_uri="img:1",
        approval_status="Rejected",
        description="line one\nline two " + "x" * 2000,
        customer_metadata={"reason": "beats (x, 0.8) by 0.1 ≥ 0", "run_id": "20261126-153000-a1b2c3"},
        evaluation_uri=None,
    )
    # SageMaker refuses control characters in descriptions, and commas/brackets in metadata.
    assert "\n" not in request["ModelPackageDescription"] and len(request["ModelPackageDescription"]) == 1024
    assert request["CustomerMetadataProperties"] == {
        "reason": "beats _x_ 0.8_ by 0.1 _ 0",
        "run_id": "20261126-153000-a1b2c3",
    }


def test_an_endpoint_without_sagemaker_skips_registration_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    message = "API for service 'sagemaker' not yet implemented or not included in your current license plan"
    with Stubber(client) as stub:
        stub.add_client_error(
            "describe_model_package_group", service_error_code="InternalFailure", service_message=message, http_status_code=501
        )
        with caplog.at_level(logging.WARNING, logger="updraft.registry"):
            result = _register(client, approved=True, run_id="run-a")
    assert result.model_package_arn is None and result.version is None
    assert result.model_package_group == GROUP
    assert "no SageMaker model registry" in result.skipped
    assert "model not registered" in caplog.text


def test_other_registry_errors_are_not_swallowed() -> None:
    client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stub:
        stub.add_client_error(
            "describe_model_package_group", service_error_code="AccessDeniedException", http_status_code=400
        )
        with pytest.raises(ClientError, match="AccessDenied"):
            _register(client, approved=True, run_id="run-a")


def test_register_stage_records_the_run_and_the_gate_in_the_registry(sm: Any) -> None:
    config = PipelineConfig(
        name=GROUP, bucket="bkt", source="raw/", contract="/c.yaml", label="is_fraud", task="binary_classification"
    )
    evaluation = {
        "task": "binary_classification", "metric": "roc_auc", "greater_is_better": True, "model": 0.912,
        "model_ci": [0.9, 0.92], "baselines": {"constant": 0.5, "logistic_regression": 0.801},
        "best_baseline": "logistic_regression", "lift": 0.111, "min_lift": 0.0, "passed": True,
        "reason": "model ROC-AUC 0.912 beats the best baseline (logistic_regression, 0.801) by 0.111 > min_lift 0.000",
        "secondary": {}, "n_test": 300, "plots": {},
    }
    result = register_stage.fn(
        config, Target(kind="aws", region="us-east-1"), "run-x", "s3://bkt/models/run-x/model.tar.gz", evaluation
    )

    assert (result.model_package_group, result.version, result.approval_status) == (GROUP, 1, "Approved")
    package = sm.describe_model_package(ModelPackageName=result.model_package_arn)
    assert package["InferenceSpecification"]["Containers"][0]["Image"] == LOCAL_INFERENCE_IMAGE
    assert package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"] == "s3://bkt/models/run-x/evaluation.json"
    assert package["CustomerMetadataProperties"] == {
        "run_id": "run-x", "metric": "roc_auc", "metric_value": "0.912", "best_baseline": "logistic_regression",
        "baseline_value": "0.801", "lift": "0.111", "min_lift": "0", "passed": "true",
    }
    assert "beats the best baseline" in package["ModelPackageDescription"]
