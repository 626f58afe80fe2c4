"""The model registry as a platform team sees it in SageMaker: one group, numbered versions, the gate's verdict."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from typing import Any, Iterator

import boto3
import pytest
import regex
from botocore.exceptions import ClientError, NoCredentialsError
from botocore.stub import Stubber
from botocore.validate import ParamValidator
from moto import mock_aws

from tasks.aws.target import Target
from tasks.config import AwsConfig, PipelineConfig
from tasks.errors import ConfigError, TargetError
from tasks.registry import (
    ENDPOINT_PACKAGE_TAG,
    LOCAL_INFERENCE_IMAGE,
    PackageNotFoundError,
    build_approval_request,
    build_model_package_request,
    champion_model_data,
    list_model_versions,
    register_model,
    register_stage,
    registry_errors,
    serving_package_arn,
    set_approval_status,
)

GROUP = "fraud-claims"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/updraft-inference:1"
EVALUATION = {
    "task": "binary_classification", "metric": "roc_auc", "greater_is_better": True, "model": 0.912,
    "model_ci": [0.9, 0.92], "baselines": {"constant": 0.5, "logistic_regression": 0.801},
    "best_baseline": "logistic_regression", "lift": 0.111, "min_lift": 0.0, "passed": True,
    "reason": "model ROC-AUC 0.912 beats the best baseline (logistic_regression, 0.801) by 0.111 > min_lift 0.000",
    "secondary": {}, "n_test": 300, "plots": {},
}


@pytest.fixture()
def sm(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SAGEMAKER", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        yield boto3.client("sagemaker", region_name="us-east-1")


def _offline_client() -> Any:
    return boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")


def _register(
    sm: Any, *, approved: bool, run_id: str, evaluation_uri: str | None = "s3://bkt/models/r/evaluation.json", group: str = GROUP
):
    return register_model(
        sm,
        group_name=group,
        model_data_url=f"s3://bkt/models/{run_id}/model.tar.gz",
        image_uri=IMAGE,
        approved=approved,
        description=f"run {run_id}: model ROC-AUC 0.912 vs best baseline (logistic_regression, 0.801)",
        customer_metadata={
            "run_id": run_id,
            "metric": "roc_auc",
            "metric_value": "0.912" if approved else "0.5",
            "best_baseline": "logistic_regression",
            "baseline_value": "0.801",
            "passed": "true" if approved else "false",
            "git_revision": None,  # unknown provenance is left out, not sent as "None"
        },
        evaluation_uri=evaluation_uri,
    )


def _serve(sm: Any, endpoint: str, model_data_url: str, tags: dict[str, str]) -> None:
    """An endpoint record as deploy leaves it: a model, a config, the endpoint with its tags."""
    sm.create_model(
        ModelName=f"{endpoint}-m",
        PrimaryContainer={"Image": IMAGE, "ModelDataUrl": model_data_url},
        ExecutionRoleArn="arn:aws:iam::123456789012:role/updraft",
    )
    sm.create_endpoint_config(
        EndpointConfigName=f"{endpoint}-c",
        ProductionVariants=[
            {"VariantName": "AllTraffic", "ModelName": f"{endpoint}-m", "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}
        ],
    )
    sm.create_endpoint(
        EndpointName=endpoint, EndpointConfigName=f"{endpoint}-c", Tags=[{"Key": k, "Value": v} for k, v in tags.items()]
    )


# --------------------------------------------------------------------------------------
# requests, checked against botocore's service model


def _pattern_errors(value: Any, shape: Any, path: str) -> list[str]:
    """What ParamValidator leaves out: the service model's regex patterns and maximum lengths."""
    errors = []
    if shape.type_name == "structure":
        for key, member in shape.members.items():
            if key in value:
                errors += _pattern_errors(value[key], member, f"{path}.{key}")
    elif shape.type_name == "list":
        for i, item in enumerate(value):
            errors += _pattern_errors(item, shape.member, f"{path}[{i}]")
    elif shape.type_name == "map":
        for key, item in value.items():
            errors += _pattern_errors(key, shape.key, f"{path} key {key!r}")
            errors += _pattern_errors(item, shape.value, f"{path}[{key!r}]")
    elif shape.type_name == "string":
        pattern, longest = shape.metadata.get("pattern"), shape.metadata.get("max")
        if pattern and not regex.fullmatch(pattern, value):
            errors.append(f"{path}: {value!r} does not match {pattern}")
        if longest is not None and len(value) > longest:
            errors.append(f"{path}: longer than {longest}")
    if shape.type_name in ("map", "list") and shape.metadata.get("max") is not None and len(value) > shape.metadata["max"]:
        errors.append(f"{path}: more than {shape.metadata['max']} entries")
    return errors


def assert_valid_request(operation: str, request: dict[str, Any]) -> None:
    input_shape = _offline_client().meta.service_model.operation_model(operation).input_shape
    report = ParamValidator().validate(request, input_shape)
    assert not report.has_errors(), report.generate_report()
    assert _pattern_errors(request, input_shape, operation) == []


def test_the_create_and_update_requests_are_valid_sagemaker_requests() -> None:
    create = build_model_package_request(
        group_name=GROUP,
        model_data_url="s3://bkt/models/r/model.tar.gz",
        image_uri=IMAGE,
        approval_status="Approved",
        description="updraft run r (ROC-AUC 0.9120): model beats (logistic_regression, 0.801)\nby 0.111",
        customer_metadata={
            "run_id": "20261126-153000-a1b2c3", "metric": "roc_auc", "metric_value": "-1.5e-05", "passed": "true",
            "data_manifest_hash": "ab" * 32, "git_revision": "0123abcd-dirty", "transform_hash": "cd" * 32,
            "reason": "beats (x, 0.8) by 0.1 ≥ 0", "empty": "",
        },
        evaluation_uri="s3://bkt/models/r/evaluation.json",
        evaluation_digest="sha256:" + "0" * 64,
    )
    assert_valid_request("CreateModelPackage", create)
    assert create["ModelMetrics"] == {
        "ModelQuality": {
            "Statistics": {
                "ContentType": "application/json",
                "S3Uri": "s3://bkt/models/r/evaluation.json",
                "ContentDigest": "sha256:" + "0" * 64,
            }
        }
    }
    assert "empty" not in create["CustomerMetadataProperties"]

    update = build_approval_request(
        "arn:aws:sagemaker:us-east-1:123456789012:model-package/fraud-claims/3",
        "Rejected",
        "rejected by hand by ana: leaks the label\n(see ticket 12)",
        create["CustomerMetadataProperties"],
    )
    assert_valid_request("UpdateModelPackage", update)
    with pytest.raises(ValueError, match="Approved, Rejected, PendingManualApproval"):
        build_approval_request("arn:aws:sagemaker:us-east-1:123456789012:model-package/g/1", "Deployed", "x")


def test_metadata_and_descriptions_are_made_acceptable_to_sagemaker() -> None:
    request = build_model_package_request(
        group_name=GROUP,
        model_data_url="s3://bkt/m.tar.gz",
        image_uri="img:1",
        approval_status="Rejected",
        description="line one\nline two " + "x" * 2000,
        customer_metadata={"reason": "beats (x, 0.8) by 0.1 ≥ 0", "run_id": "20261126-153000-a1b2c3", "git_revision": None},
        evaluation_uri=None,
    )
    # SageMaker refuses control characters in descriptions, commas/brackets and empty values in metadata.
    assert "\n" not in request["ModelPackageDescription"] and len(request["ModelPackageDescription"]) == 1024
    assert request["CustomerMetadataProperties"] == {
        "reason": "beats _x_ 0.8_ by 0.1 _ 0",
        "run_id": "20261126-153000-a1b2c3",
    }
    assert "ModelMetrics" not in request


# --------------------------------------------------------------------------------------
# registering


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
    assert spec["Containers"] == [{"Image": IMAGE, "ModelDataUrl": "s3://bkt/models/run-a/model.tar.gz"}]
    assert spec["SupportedContentTypes"] == ["text/csv", "application/json"]
    assert spec["SupportedResponseMIMETypes"] == ["application/json"]
    assert "ml.m5.large" in spec["SupportedRealtimeInferenceInstanceTypes"]
    assert package["ModelMetrics"]["ModelQuality"]["Statistics"] == {
        "ContentType": "application/json",
        "S3Uri": "s3://bkt/models/r/evaluation.json",
    }
    assert package["CustomerMetadataProperties"]["run_id"] == "run-a"
    assert "git_revision" not in package["CustomerMetadataProperties"]
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
    assert versions[0]["created"] <= versions[1]["created"] and versions[0]["created"].endswith("+00:00")
    assert versions[0]["model_data_url"] == "s3://bkt/models/run-a/model.tar.gz"
    assert not any(v["current"] for v in versions)  # no endpoint named


def test_the_version_an_endpoint_serves_is_marked_current(sm: Any) -> None:
    _register(sm, approved=True, run_id="run-a")
    second = _register(sm, approved=True, run_id="run-b")
    _serve(sm, "fraud-api", "s3://bkt/models/run-b/model.tar.gz", {ENDPOINT_PACKAGE_TAG: second.model_package_arn})

    versions = list_model_versions(sm, GROUP, endpoint_name="fraud-api")
    assert [v["current"] for v in versions] == [False, True]
    assert not any(v["current"] for v in list_model_versions(sm, GROUP, endpoint_name="no-such-endpoint"))


def test_an_endpoint_without_sagemaker_skips_registration_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    client = _offline_client()
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
    client = _offline_client()
    with Stubber(client) as stub:
        stub.add_client_error(
            "describe_model_package_group", service_error_code="AccessDeniedException", http_status_code=400
        )
        with pytest.raises(ClientError, match="AccessDenied"):
            _register(client, approved=True, run_id="run-a")


# --------------------------------------------------------------------------------------
# the register stage: the run's artifact, its evaluation and the target


def _model_tar(metadata: dict[str, Any], transform: bytes, *, prefix: str = "") -> bytes:
    """A model.tar.gz as training packs it (optionally with ``./`` names, as ``tar -C dir .`` writes)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, body in (
            ("xgboost-model.json", b"{}" * 1000),
            ("transform.json", transform),
            ("metadata.json", json.dumps(metadata).encode()),
        ):
            info = tarfile.TarInfo(prefix + name)
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


TRANSFORM = b'{"task": "binary_classification", "feature_names": ["amount"]}'
METADATA = {
    "task": "binary_classification", "algorithm": "xgboost", "run_id": "run-x",
    "data_manifest_hash": "ab" * 32, "git_revision": "0123abcd",
}


def _stage_config(bucket: str, **kwargs: Any) -> PipelineConfig:
    return PipelineConfig(
        name=GROUP, bucket=bucket, source="raw/", contract="/c.yaml", label="is_fraud", task="binary_classification", **kwargs
    )


def test_register_stage_records_the_run_its_provenance_and_the_gate(embedded_target: Target, moto_s3_bucket: str) -> None:
    fs = embedded_target.filesystem()
    model_uri = f"s3://{moto_s3_bucket}/models/run-x/model.tar.gz"
    fs.pipe_file(model_uri, _model_tar(METADATA, TRANSFORM, prefix="./"))
    aws = Target(kind="aws", region=embedded_target.region)  # the real-AWS code path, moto answering

    result = register_stage.fn(_stage_config(moto_s3_bucket, aws=AwsConfig(inference_image=IMAGE)), aws, "run-x", model_uri, EVALUATION)

    assert (result.model_package_group, result.version, result.approval_status) == (GROUP, 1, "Approved")
    package = aws.client("sagemaker").describe_model_package(ModelPackageName=result.model_package_arn)
    assert package["InferenceSpecification"]["Containers"] == [{"Image": IMAGE, "ModelDataUrl": model_uri}]
    # The evaluation report is in S3 beside the model, and the package pins its exact bytes.
    evaluation_uri = f"s3://{moto_s3_bucket}/models/run-x/evaluation.json"
    stored = fs.cat_file(evaluation_uri)
    assert json.loads(stored)["reason"] == EVALUATION["reason"]
    assert package["ModelMetrics"]["ModelQuality"]["Statistics"] == {
        "ContentType": "application/json",
        "S3Uri": evaluation_uri,
        "ContentDigest": "sha256:" + hashlib.sha256(stored).hexdigest(),
    }
    assert package["CustomerMetadataProperties"] == {
        "run_id": "run-x", "metric": "roc_auc", "metric_value": "0.912", "best_baseline": "logistic_regression",
        "baseline_value": "0.801", "lift": "0.111", "min_lift": "0", "passed": "true",
        "data_manifest_hash": "ab" * 32, "git_revision": "0123abcd", "algorithm": "xgboost",
        "transform_hash": hashlib.sha256(TRANSFORM).hexdigest(),
    }
    assert "beats the best baseline" in package["ModelPackageDescription"]
    assert package["ApprovalDescription"].startswith("the evaluation gate passed")


def test_register_stage_keeps_the_evaluation_file_evaluate_wrote(embedded_target: Target, moto_s3_bucket: str) -> None:
    fs = embedded_target.filesystem()
    evaluation_uri = f"s3://{moto_s3_bucket}/models/run-x/evaluation.json"
    written = json.dumps({**EVALUATION, "champion": {"value": 0.9}}, indent=1).encode()  # more than the object holds
    fs.pipe_file(evaluation_uri, written)

    result = register_stage.fn(
        _stage_config(moto_s3_bucket), embedded_target, "run-x", f"s3://{moto_s3_bucket}/models/run-x/model.tar.gz", EVALUATION
    )

    assert fs.cat_file(evaluation_uri) == written
    package = embedded_target.client("sagemaker").describe_model_package(ModelPackageName=result.model_package_arn)
    assert package["ModelMetrics"]["ModelQuality"]["Statistics"]["ContentDigest"] == (
        "sha256:" + hashlib.sha256(written).hexdigest()
    )
    # Local targets name the placeholder image; without its artifact a version still registers, without provenance.
    assert package["InferenceSpecification"]["Containers"][0]["Image"] == LOCAL_INFERENCE_IMAGE
    assert "transform_hash" not in package["CustomerMetadataProperties"]


def test_register_stage_on_aws_needs_the_inference_image() -> None:
    with pytest.raises(ConfigError, match="aws.inference_image is not set"):
        register_stage.fn(
            _stage_config("bkt"), Target(kind="aws", region="us-east-1"), "run-x", "s3://bkt/models/run-x/model.tar.gz", EVALUATION
        )


# --------------------------------------------------------------------------------------
# approving and rejecting by hand


def test_approve_and_reject_by_hand_by_version_or_arn_keep_the_metadata(sm: Any) -> None:
    rejected = _register(sm, approved=False, run_id="run-a")
    approved = _register(sm, approved=True, run_id="run-b")

    entry = set_approval_status(sm, f"{GROUP}/1", "Approved", reason="the gate's min_lift was set too high")
    assert (entry["version"], entry["previous_status"], entry["approval_status"]) == (1, "Rejected", "Approved")
    package = sm.describe_model_package(ModelPackageName=rejected.model_package_arn)
    assert package["ModelApprovalStatus"] == "Approved"
    assert package["ApprovalDescription"].startswith("approved by hand by ")
    assert package["ApprovalDescription"].endswith(": the gate's min_lift was set too high")
    assert package["CustomerMetadataProperties"]["run_id"] == "run-a"  # not dropped by the update

    entry = set_approval_status(sm, approved.model_package_arn, "Rejected")
    assert (entry["version"], entry["previous_status"], entry["approval_status"]) == (2, "Approved", "Rejected")
    assert entry["run_id"] == "run-b" and entry["value"] == pytest.approx(0.912)
    assert [v["approval_status"] for v in list_model_versions(sm, GROUP)] == ["Approved", "Rejected"]


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (f"{GROUP}/7", "has no version 7 (versions: 1)"),
        ("other-project/1", "no model package group 'other-project'"),
        ("arn:aws:sagemaker:us-east-1:123456789012:model-package/fraud-claims/9", "no model package arn:"),
        ("fraud-claims", "is not a model package: give its ARN or GROUP/VERSION"),
        ("fraud_claims/1", "is not a model package"),
    ],
)
def test_an_unknown_package_is_refused_with_what_exists(sm: Any, ref: str, message: str) -> None:
    _register(sm, approved=True, run_id="run-a")
    with pytest.raises(PackageNotFoundError, match=regex.escape(message)):
        set_approval_status(sm, ref, "Approved")
    assert [v["approval_status"] for v in list_model_versions(sm, GROUP)] == ["Approved"]  # nothing changed


def test_an_endpoint_lacking_the_update_says_so() -> None:
    """moto answers 500 for the calls it lacks; the command says which call and where."""
    client = _offline_client()
    arn = "arn:aws:sagemaker:us-east-1:123456789012:model-package/fraud-claims/1"
    with Stubber(client) as stub:
        stub.add_response("describe_model_package", {
            "ModelPackageName": GROUP, "ModelPackageArn": arn, "ModelPackageVersion": 1,
            "CreationTime": "2026-11-26T10:00:00Z", "ModelPackageStatus": "Completed", "ModelApprovalStatus": "Rejected",
            "ModelPackageStatusDetails": {"ValidationStatuses": []},
        })
        stub.add_client_error(
            "update_model_package", service_error_code="InternalError", http_status_code=500,
            service_message="The update_model_package action has not been implemented",
        )
        with pytest.raises(TargetError, match=r"cannot do SageMaker UpdateModelPackage \(HTTP 500: The update_model_package"):
            with registry_errors(client):
                set_approval_status(client, arn, "Approved")


def test_missing_credentials_and_denied_calls_are_one_line_errors() -> None:
    with pytest.raises(TargetError, match="no AWS credentials found"):
        with registry_errors(_offline_client()):
            raise NoCredentialsError()
    client = _offline_client()
    with Stubber(client) as stub:
        stub.add_client_error("list_model_packages", service_error_code="AccessDeniedException", http_status_code=400)
        with pytest.raises(TargetError, match="SageMaker ListModelPackages was denied"):
            with registry_errors(client):
                client.list_model_packages()


# --------------------------------------------------------------------------------------
# the champion: what the endpoint serves


def test_the_champion_is_the_package_the_endpoint_is_tagged_with(sm: Any) -> None:
    first = _register(sm, approved=True, run_id="run-a")
    _register(sm, approved=True, run_id="run-b")  # approved later, not (yet) deployed
    _serve(sm, "fraud-api", "s3://bkt/models/run-a/model.tar.gz", {ENDPOINT_PACKAGE_TAG: first.model_package_arn, "updraft:run-id": "run-a"})

    assert champion_model_data(sm, GROUP, "fraud-api") == "s3://bkt/models/run-a/model.tar.gz"


def test_an_untagged_endpoint_serves_the_version_whose_model_it_runs(sm: Any) -> None:
    """Deployed by hand or before deploy tagged endpoints: its model's data URL says which version it is."""
    first = _register(sm, approved=True, run_id="run-a")
    _register(sm, approved=True, run_id="run-b")
    _serve(sm, "fraud-api", "s3://bkt/models/run-a/model.tar.gz", {"team": "fraud"})

    assert serving_package_arn(sm, "fraud-api", GROUP) == first.model_package_arn
    assert serving_package_arn(sm, "fraud-api") is None  # without the group there is nothing to match against
    assert champion_model_data(sm, GROUP, "fraud-api") == "s3://bkt/models/run-a/model.tar.gz"
    assert [v["current"] for v in list_model_versions(sm, GROUP, endpoint_name="fraud-api")] == [True, False]


def test_an_endpoint_serving_no_version_is_judged_against_the_latest_approved(sm: Any) -> None:
    _register(sm, approved=True, run_id="run-a")
    _register(sm, approved=True, run_id="run-b")
    _register(sm, approved=False, run_id="run-c")  # newest, but rejected
    _serve(sm, "fraud-api", "s3://bkt/somewhere/model.tar.gz", {"team": "fraud"})

    assert champion_model_data(sm, GROUP, "fraud-api") == "s3://bkt/models/run-b/model.tar.gz"
    # A tag naming a package that is gone falls back the same way.
    gone = f"arn:aws:sagemaker:us-east-1:123456789012:model-package/{GROUP}/99"
    _serve(sm, "other-api", "s3://bkt/x/model.tar.gz", {ENDPOINT_PACKAGE_TAG: gone})
    assert champion_model_data(sm, GROUP, "other-api") == "s3://bkt/models/run-b/model.tar.gz"


def test_no_endpoint_no_group_or_nothing_approved_means_no_champion(sm: Any) -> None:
    assert champion_model_data(sm, GROUP, "fraud-api") is None  # nothing at all
    _register(sm, approved=True, run_id="run-a")
    assert champion_model_data(sm, GROUP, "fraud-api") is None  # approved, but nothing serves it
    _serve(sm, "fraud-api", "s3://bkt/x/model.tar.gz", {})
    assert champion_model_data(sm, "no-such-group", "fraud-api") is None
    set_approval_status(sm, f"{GROUP}/1", "Rejected")
    assert champion_model_data(sm, GROUP, "fraud-api") is None  # an untagged endpoint and nothing approved


def test_an_endpoint_without_sagemaker_has_no_champion(caplog: pytest.LogCaptureFixture) -> None:
    client = _offline_client()
    with Stubber(client) as stub:
        stub.add_client_error(
            "describe_endpoint", service_error_code="InternalFailure", http_status_code=501,
            service_message="API for service 'sagemaker' not yet implemented or not included in your current license plan",
        )
        with caplog.at_level(logging.WARNING, logger="updraft.registry"):
            assert champion_model_data(client, GROUP, "fraud-api") is None
    assert "no champion" in caplog.text
