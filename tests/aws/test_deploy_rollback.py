"""Blue/green deploys on SageMaker: request shapes, progress, and what a failed update leaves serving.

moto answers what it implements (models, endpoint configs, create_endpoint, CloudWatch
alarms, Application Auto Scaling); botocore's Stubber plays SageMaker where moto cannot:
``update_endpoint`` and the statuses of an update (Updating, RollingBack, a rollback,
UpdateRollbackFailed, Failed). Every request updraft sends is checked against botocore's
service model, strictly: required members and types (botocore's own validator), and
also enums, lengths, ranges and patterns, which botocore leaves to the service.
"""

from __future__ import annotations

import datetime
import functools
import logging
import re
from typing import Any, Iterator

import boto3
import botocore.config
import botocore.session
import pytest
from botocore.stub import ANY, Stubber
from botocore.validate import ParamValidator
from moto import mock_aws

from tasks.config import DeployConfig
from tasks.deploy import autoscaling as scaling
from tasks.deploy import rollout
from tasks.deploy.sagemaker_endpoints import deploy_sagemaker_endpoint
from tasks.errors import ConfigError, StageError

ROLE = "arn:aws:iam::123456789012:role/sagemaker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/updraft-inference:1"
PACKAGE = "arn:aws:sagemaker:us-east-1:123456789012:model-package/fraud/2"
ARN = "arn:aws:sagemaker:us-east-1:123456789012:endpoint/fraud"
ONE_TRY = botocore.config.Config(retries={"mode": "standard", "total_max_attempts": 1})
T0 = datetime.datetime(2026, 11, 27, 8, 0, tzinfo=datetime.timezone.utc)
T1 = T0 + datetime.timedelta(minutes=1)

# --------------------------------------------------------------------------------------
# Strict request validation against botocore's service models.


def _python_regex(pattern: str | None) -> re.Pattern[str] | None:
    """The model's pattern as a Python regex; None for patterns in Java-only syntax (``\\p{L}``, ...)."""
    if not pattern or "\\p" in pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error:
        return None


@functools.lru_cache(maxsize=None)
def _service_model(service: str) -> Any:
    return botocore.session.get_session().get_service_model(service)


def request_problems(service: str, operation: str, params: dict[str, Any]) -> list[str]:
    """Everything in ``params`` that the service model forbids; [] for a valid request."""
    shape = _service_model(service).operation_model(operation).input_shape
    report = ParamValidator().validate(params, shape)
    problems = [report.generate_report()] if report.has_errors() else []

    def walk(value: Any, shape: Any, path: str) -> None:
        meta = shape.metadata
        kind = shape.type_name
        if kind == "structure":
            for key, item in value.items():
                if key in shape.members:
                    walk(item, shape.members[key], f"{path}.{key}")
        elif kind == "list":
            if "min" in meta and len(value) < meta["min"] or "max" in meta and len(value) > meta["max"]:
                problems.append(f"{path}: {len(value)} items, allowed {meta.get('min', 0)}..{meta.get('max', 'any')}")
            for i, item in enumerate(value):
                walk(item, shape.member, f"{path}[{i}]")
        elif kind == "map":
            for key, item in value.items():
                walk(item, shape.value, f"{path}[{key!r}]")
        elif kind == "string":
            if shape.enum and value not in shape.enum:
                problems.append(f"{path}: {value!r} is not one of {shape.enum}")
            if "min" in meta and len(value) < meta["min"] or "max" in meta and len(value) > meta["max"]:
                problems.append(f"{path}: length {len(value)}, allowed {meta.get('min', 0)}..{meta.get('max', 'any')}")
            regex = _python_regex(meta.get("pattern"))
            if regex is not None and not regex.fullmatch(value):
                problems.append(f"{path}: {value!r} does not match {meta['pattern']}")
        elif kind in ("integer", "long", "float", "double"):
            if "min" in meta and value < meta["min"] or "max" in meta and value > meta["max"]:
                problems.append(f"{path}: {value} outside {meta.get('min', '-inf')}..{meta.get('max', 'inf')}")

    walk(params, shape, operation)
    return problems


class Requests:
    """Every request a client sends, in order, each checked against the service model."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def watch(self, client: Any) -> Any:
        service = client.meta.service_model.service_name

        def record(params: dict[str, Any], model: Any, **_: Any) -> None:
            problems = request_problems(service, model.name, params)
            assert not problems, f"{service}.{model.name}: " + "; ".join(problems)
            self.calls.append((service, model.name, params))

        client.meta.events.register("provide-client-params", record)
        return client

    def of(self, operation: str) -> list[dict[str, Any]]:
        return [params for _, name, params in self.calls if name == operation]

    def names(self) -> list[str]:
        return [name for _, name, _ in self.calls]


# --------------------------------------------------------------------------------------
# Fixtures: moto clients, one request log.


@pytest.fixture()
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    log = Requests()
    with mock_aws():
        yield {
            "sm": log.watch(boto3.client("sagemaker", region_name="us-east-1", config=ONE_TRY)),
            "cw": log.watch(boto3.client("cloudwatch", region_name="us-east-1", config=ONE_TRY)),
            "aas": log.watch(boto3.client("application-autoscaling", region_name="us-east-1", config=ONE_TRY)),
            "log": log,
        }


def _deploy(aws: dict[str, Any], run: str, settings: DeployConfig, **overrides: Any) -> Any:
    kwargs: dict[str, Any] = dict(
        name="fraud",
        model_name=f"fraud-{run}",
        image_uri=IMAGE,
        model_data_url=f"s3://bkt/models/{run}/model.tar.gz",
        role_arn=ROLE,
        settings=settings,
        capture_uri="s3://bkt/data-capture/fraud/",
        tags={"updraft:run-id": run, "updraft:model-package-arn": PACKAGE},
        poll_s=0,
        max_wait_s=30,
    )
    kwargs.update(overrides)
    return deploy_sagemaker_endpoint(aws["sm"], aws["cw"], aws["aas"], **kwargs)


# --------------------------------------------------------------------------------------
# Pure builders.


@pytest.mark.parametrize(
    "strategy, routing",
    [
        ("all_at_once", {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 300}),
        ("canary", {"Type": "CANARY", "WaitIntervalInSeconds": 300, "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10}}),
        ("linear", {"Type": "LINEAR", "WaitIntervalInSeconds": 300, "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 25}}),
    ],
)
def test_each_strategy_is_a_blue_green_policy_with_auto_rollback(strategy: str, routing: dict[str, Any]) -> None:
    config = rollout.build_deployment_config(
        strategy, canary_percent=10, linear_step_percent=25, wait_s=300, alarm_names=rollout.alarm_names("fraud")
    )
    policy = config["BlueGreenUpdatePolicy"]
    assert policy["TrafficRoutingConfiguration"] == routing
    assert policy["TerminationWaitInSeconds"] == 300  # the last step bakes too, with the old fleet still there
    steps = {"all_at_once": 1, "canary": 2, "linear": 4}[strategy]
    assert policy["MaximumExecutionTimeoutInSeconds"] == (steps + 1) * 300 + rollout.PROVISIONING_ALLOWANCE_S
    assert config["AutoRollbackConfiguration"] == {
        "Alarms": [{"AlarmName": "fraud-updraft-5xx-rate"}, {"AlarmName": "fraud-updraft-p99-latency"}]
    }
    assert request_problems("sagemaker", "UpdateEndpoint", {"EndpointName": "fraud", "EndpointConfigName": "c", "DeploymentConfig": config}) == []


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(strategy="canary", canary_percent=60), "canary is at most 50%"),
        (dict(strategy="linear", linear_step_percent=5), "linear steps are 10-50%"),
        (dict(strategy="linear", linear_step_percent=75), "linear steps are 10-50%"),
        (dict(wait_s=7200), "0 to 3600 s"),
    ],
)
def test_settings_sagemaker_would_refuse_fail_before_anything_is_created(aws: dict[str, Any], settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _deploy(aws, "r1", DeployConfig(**settings))
    assert aws["log"].calls == []


def test_alarms_watch_the_endpoints_5xx_rate_and_p99_model_latency(aws: dict[str, Any]) -> None:
    requests = rollout.build_alarm_requests("fraud", max_error_rate=0.02, max_latency_ms=250)
    for request in requests:
        assert request_problems("cloudwatch", "PutMetricAlarm", request) == []
    rollout.ensure_alarms(aws["cw"], requests)
    alarms = {a["AlarmName"]: a for a in aws["cw"].describe_alarms(AlarmNamePrefix="fraud-updraft")["MetricAlarms"]}

    errors = alarms["fraud-updraft-5xx-rate"]
    assert errors["Threshold"] == 0.02 and errors["ComparisonOperator"] == "GreaterThanThreshold"
    metrics = {m["Id"]: m for m in errors["Metrics"]}
    assert metrics["errors"]["MetricStat"]["Metric"]["MetricName"] == "Invocation5XXErrors"
    assert metrics["invocations"]["MetricStat"]["Metric"]["MetricName"] == "Invocations"
    assert metrics["rate"]["Expression"] == "IF(invocations > 0, errors / invocations, 0)" and metrics["rate"]["ReturnData"]
    assert metrics["errors"]["MetricStat"]["Metric"]["Dimensions"] == [
        {"Name": "EndpointName", "Value": "fraud"}, {"Name": "VariantName", "Value": "AllTraffic"}
    ]

    latency = alarms["fraud-updraft-p99-latency"]
    assert (latency["Namespace"], latency["MetricName"], latency["ExtendedStatistic"]) == ("AWS/SageMaker", "ModelLatency", "p99")
    assert latency["Threshold"] == 250_000.0  # ModelLatency is in microseconds
    assert latency["TreatMissingData"] == errors["TreatMissingData"] == "notBreaching"  # a quiet canary is not a failure


# --------------------------------------------------------------------------------------
# A new endpoint, in moto.


def test_a_new_endpoint_gets_alarms_rollback_config_capture_autoscaling_and_tags(aws: dict[str, Any]) -> None:
    settings = DeployConfig(
        strategy="canary", canary_percent=20, wait_s=600, min_instances=2, max_instances=6, target_invocations=700,
        data_capture_percent=25,
    )
    done = _deploy(aws, "r1", settings, kms_key_id="arn:aws:kms:us-east-1:123456789012:key/abc")
    assert (done.action, done.endpoint_config_name, done.previous_config_name) == ("created", "fraud-r1", None)

    sm, log = aws["sm"], aws["log"]
    assert sm.describe_endpoint(EndpointName="fraud")["EndpointStatus"] == "InService"
    [create] = log.of("CreateEndpoint")
    assert create["DeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]["CanarySize"]["Value"] == 20
    assert [a["AlarmName"] for a in create["DeploymentConfig"]["AutoRollbackConfiguration"]["Alarms"]] == rollout.alarm_names("fraud")
    assert log.names().index("PutMetricAlarm") < log.names().index("CreateEndpoint")  # the alarms exist before they are named

    config = sm.describe_endpoint_config(EndpointConfigName="fraud-r1")
    [variant] = config["ProductionVariants"]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.m5.large", 2)
    capture = config["DataCaptureConfig"]
    assert (capture["InitialSamplingPercentage"], capture["DestinationS3Uri"]) == (25, "s3://bkt/data-capture/fraud/")
    assert capture["KmsKeyId"] == "arn:aws:kms:us-east-1:123456789012:key/abc"
    assert capture["CaptureContentTypeHeader"] == {"CsvContentTypes": ["text/csv"], "JsonContentTypes": ["application/json"]}

    [target] = aws["aas"].describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert (target["ResourceId"], target["MinCapacity"], target["MaxCapacity"]) == ("endpoint/fraud/variant/AllTraffic", 2, 6)
    [policy] = aws["aas"].describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 700.0
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"

    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=done.endpoint_arn)["Tags"]}
    assert tags["updraft:model-package-arn"] == PACKAGE and tags["updraft:run-id"] == "r1"


def test_a_serverless_endpoint_has_no_instances_and_no_autoscaling(aws: dict[str, Any]) -> None:
    _deploy(aws, "r1", DeployConfig(serverless_memory_mb=2048, serverless_max_concurrency=5, min_instances=1, max_instances=4))
    [variant] = aws["sm"].describe_endpoint_config(EndpointConfigName="fraud-r1")["ProductionVariants"]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 2048, "MaxConcurrency": 5}
    assert "InstanceType" not in variant and "InitialInstanceCount" not in variant
    assert aws["aas"].describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []


@pytest.mark.parametrize(
    "settings, extra, message",
    [
        (DeployConfig(serverless_memory_mb=2048, data_capture_percent=10), {}, "serverless endpoints cannot capture data"),
        (DeployConfig(serverless_memory_mb=2048), {"vpc_config": {"Subnets": ["s"], "SecurityGroupIds": ["g"]}}, "cannot run in a VPC"),
    ],
)
def test_serverless_exclusions_are_config_errors(aws: dict[str, Any], settings: DeployConfig, extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _deploy(aws, "r1", settings, **extra)
    assert aws["log"].calls == []


# --------------------------------------------------------------------------------------
# Updates: SageMaker's statuses, played by the Stubber.


def _endpoint(status: str, config: str, *, modified: datetime.datetime = T0, **extra: Any) -> dict[str, Any]:
    return {
        "EndpointName": "fraud",
        "EndpointArn": ARN,
        "EndpointConfigName": config,
        "EndpointStatus": status,
        "CreationTime": T0,
        "LastModifiedTime": modified,
        "ProductionVariants": [{"VariantName": "AllTraffic", "CurrentInstanceCount": 3, "DesiredInstanceCount": 3}],
        **extra,
    }


def _pending(*steps: tuple[str, str]) -> dict[str, Any]:
    return {
        "PendingDeploymentSummary": {
            "EndpointConfigName": "fraud-r2",
            "ProductionVariants": [
                {
                    "VariantName": "AllTraffic",
                    "CurrentInstanceCount": 1,
                    "DesiredInstanceCount": 3,
                    "VariantStatus": [{"Status": status, "StatusMessage": message} for status, message in steps],
                }
            ],
        }
    }


def _stub_update_start(stub: Stubber, settings: DeployConfig, *, old_type: str | None = None) -> None:
    """The calls before SageMaker starts working: describe, create model and config, update, tag."""
    stub.add_response("describe_endpoint", _endpoint("InService", "fraud-r1"), {"EndpointName": "fraud"})
    stub.add_response("create_model", {"ModelArn": "arn:aws:sagemaker:us-east-1:123456789012:model/fraud-r2"})
    stub.add_response(
        "create_endpoint_config",
        {"EndpointConfigArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/fraud-r2"},
        {
            "EndpointConfigName": "fraud-r2",
            "ProductionVariants": [
                # the new fleet starts as large as the old one runs (3), within the configured bounds
                {"VariantName": "AllTraffic", "ModelName": "fraud-r2",
                 "InitialInstanceCount": min(settings.max_instances, max(settings.min_instances, 3)),
                 "InstanceType": settings.instance_type, "InitialVariantWeight": 1.0}
            ],
            "Tags": ANY,
        },
    )
    if old_type is not None:
        stub.add_response(
            "describe_endpoint_config",
            {
                "EndpointConfigName": "fraud-r1",
                "EndpointConfigArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/fraud-r1",
                "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "fraud-r1", "InstanceType": old_type}],
                "CreationTime": T0,
            },
            {"EndpointConfigName": "fraud-r1"},
        )
    stub.add_response(
        "update_endpoint",
        {"EndpointArn": ARN},
        {
            "EndpointName": "fraud",
            "EndpointConfigName": "fraud-r2",
            "DeploymentConfig": rollout.build_deployment_config(
                settings.strategy, canary_percent=settings.canary_percent, linear_step_percent=settings.linear_step_percent,
                wait_s=settings.wait_s, alarm_names=rollout.alarm_names("fraud"),
            ),
        },
    )
    stub.add_response(
        "add_tags",
        {"Tags": []},
        {"ResourceArn": ARN, "Tags": [{"Key": "updraft:run-id", "Value": "r2"}, {"Key": "updraft:model-package-arn", "Value": PACKAGE}]},
    )


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "updraft.deploy"]


def test_a_canary_update_reports_each_step_and_ends_serving_the_new_version(
    aws: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    settings = DeployConfig(strategy="canary", canary_percent=10, wait_s=300, min_instances=1, max_instances=4)
    with Stubber(aws["sm"]) as stub, caplog.at_level(logging.INFO, logger="updraft.deploy"):
        _stub_update_start(stub, settings)
        stub.add_response("describe_endpoint", _endpoint("Updating", "fraud-r1", modified=T1, **_pending(("Creating", "Launching instances"))))
        stub.add_response("describe_endpoint", _endpoint("Updating", "fraud-r1", modified=T1, **_pending(("ActivatingTraffic", "10% of capacity"))))
        stub.add_response("describe_endpoint", _endpoint("Updating", "fraud-r1", modified=T1, **_pending(("Baking", "Watching alarms for 300 s"))))
        stub.add_response("describe_endpoint", _endpoint("InService", "fraud-r2", modified=T1))
        done = _deploy(aws, "r2", settings)
        stub.assert_no_pending_responses()

    assert (done.action, done.endpoint_config_name, done.previous_config_name) == ("updated", "fraud-r2", "fraud-r1")
    messages = _messages(caplog)
    progress = [m for m in messages if m.startswith("endpoint fraud is")]
    assert [m.split("[")[-1] for m in progress[:3]] == [
        "Creating (1 of 3 instances): Launching instances]",
        "ActivatingTraffic (1 of 3 instances): 10% of capacity]",
        "Baking (1 of 3 instances): Watching alarms for 300 s]",
    ]
    assert all("fraud-r1 serves the traffic not yet shifted" in m for m in progress[:3])
    assert progress[-1] == "endpoint fraud is InService with fraud-r2"
    assert any("updating endpoint fraud from fraud-r1 to fraud-r2 blue/green (CANARY, 300 s baking" in m for m in messages)
    # autoscaling is set once the new version serves
    [target] = aws["aas"].describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 4)


def test_an_alarm_during_baking_rolls_back_and_the_run_says_the_old_version_serves(
    aws: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    settings = DeployConfig(strategy="linear", linear_step_percent=50, wait_s=120, max_latency_ms=200)
    # The new fleet is slow: the latency alarm (created by the deploy) fires while the first step bakes.
    aws["sm"].meta.events.register(
        "after-call.sagemaker.UpdateEndpoint",
        lambda **_: aws["cw"].set_alarm_state(
            AlarmName="fraud-updraft-p99-latency", StateValue="ALARM",
            StateReason="Threshold Crossed: 2 datapoints [412000.0, 398000.0] were greater than the threshold (200000.0).",
        ),
    )
    with Stubber(aws["sm"]) as stub, caplog.at_level(logging.INFO, logger="updraft.deploy"):
        _stub_update_start(stub, settings)
        stub.add_response("describe_endpoint", _endpoint("Updating", "fraud-r1", modified=T1, **_pending(("Baking", "Step 1 of 2"))))
        stub.add_response("describe_endpoint", _endpoint("RollingBack", "fraud-r1", modified=T1))
        stub.add_response("describe_endpoint", _endpoint("InService", "fraud-r1", modified=T1))
        with pytest.raises(StageError) as raised:
            _deploy(aws, "r2", settings)
        stub.assert_no_pending_responses()

    message = str(raised.value)
    assert "did not update endpoint 'fraud' to fraud-r2 and rolled it back" in message
    assert "alarm fraud-updraft-p99-latency: Threshold Crossed: 2 datapoints [412000.0, 398000.0]" in message
    assert message.endswith("The previous version fraud-r1 keeps serving all traffic.")
    assert "endpoint fraud is RollingBack; all traffic returns to fraud-r1, which keeps serving" in _messages(caplog)
    assert aws["aas"].describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []


def test_a_new_fleet_that_fails_its_health_check_leaves_the_old_one_serving(aws: dict[str, Any]) -> None:
    settings = DeployConfig()
    reason = "The primary container for production variant AllTraffic did not pass the ping health check."
    with Stubber(aws["sm"]) as stub:
        _stub_update_start(stub, settings)
        stub.add_response("describe_endpoint", _endpoint("Updating", "fraud-r1", modified=T1))
        stub.add_response("describe_endpoint", _endpoint("InService", "fraud-r1", modified=T1, FailureReason=reason))
        with pytest.raises(StageError, match="rolled it back: The primary container .* did not pass the ping health check.*"
                           "The previous version fraud-r1 keeps serving"):
            _deploy(aws, "r2", settings)


def test_a_stale_failure_reason_is_not_taken_for_this_updates(aws: dict[str, Any]) -> None:
    """SageMaker has not taken up the update yet: same LastModifiedTime, an old FailureReason; keep waiting."""
    settings = DeployConfig()
    with Stubber(aws["sm"]) as stub:
        _stub_update_start(stub, settings)
        stub.add_response("describe_endpoint", _endpoint("InService", "fraud-r1", FailureReason="an earlier deployment failed"))
        stub.add_response("describe_endpoint", _endpoint("Updating", "fraud-r1", modified=T1))
        stub.add_response("describe_endpoint", _endpoint("InService", "fraud-r2", modified=T1))
        assert _deploy(aws, "r2", settings).action == "updated"


def test_a_failed_rollback_says_the_endpoint_serves_a_mix(aws: dict[str, Any]) -> None:
    settings = DeployConfig()
    with Stubber(aws["sm"]) as stub:
        _stub_update_start(stub, settings)
        stub.add_response("describe_endpoint", _endpoint("Updating", "fraud-r1", modified=T1))
        stub.add_response(
            "describe_endpoint", _endpoint("UpdateRollbackFailed", "fraud-r1", modified=T1, FailureReason="Instance capacity exhausted")
        )
        with pytest.raises(StageError) as raised:
            _deploy(aws, "r2", settings)
    assert "failed and so did its rollback: Instance capacity exhausted" in str(raised.value)
    assert "in service with a mix of fraud-r1 and fraud-r2" in str(raised.value)


def test_a_failed_update_quotes_sagemakers_reason(aws: dict[str, Any]) -> None:
    settings = DeployConfig()
    with Stubber(aws["sm"]) as stub:
        _stub_update_start(stub, settings)
        stub.add_response("describe_endpoint", _endpoint("Updating", "fraud-r1", modified=T1))
        stub.add_response("describe_endpoint", _endpoint("Failed", "fraud-r1", modified=T1, FailureReason="Image not found in ECR"))
        with pytest.raises(StageError, match=r"failed with fraud-r2: Image not found in ECR \(it served fraud-r1 before"):
            _deploy(aws, "r2", settings)


def test_an_update_still_running_at_the_deadline_says_who_serves(aws: dict[str, Any]) -> None:
    settings = DeployConfig()
    with Stubber(aws["sm"]) as stub:
        _stub_update_start(stub, settings)
        stub.add_response("describe_endpoint", _endpoint("Updating", "fraud-r1", modified=T1))
        with pytest.raises(StageError, match=r"still Updating after 0 s \(fraud-r1 serves meanwhile\)"):
            _deploy(aws, "r2", settings, max_wait_s=0)


def test_an_endpoint_mid_deployment_is_not_updated_again(aws: dict[str, Any]) -> None:
    with Stubber(aws["sm"]) as stub:
        stub.add_response("describe_endpoint", _endpoint("Updating", "fraud-r1"))
        with pytest.raises(StageError, match="is Updating .*wait until it is InService"):
            _deploy(aws, "r2", DeployConfig())


def test_changing_the_instance_type_deregisters_autoscaling_for_the_update(aws: dict[str, Any]) -> None:
    """SageMaker refuses to change an autoscaled variant's instance type: deregister, update, register again."""
    scaling.apply_autoscaling(aws["aas"], "fraud", min_instances=1, max_instances=3, target_invocations=500)
    registered_during_update: list[bool] = []
    aws["sm"].meta.events.register(
        "provide-client-params.sagemaker.UpdateEndpoint",  # before the Stubber answers
        lambda **_: registered_during_update.append(scaling.scalable_target(aws["aas"], "fraud") is not None),
    )
    settings = DeployConfig(instance_type="ml.c5.xlarge", min_instances=1, max_instances=5, target_invocations=900)
    with Stubber(aws["sm"]) as stub:
        _stub_update_start(stub, settings, old_type="ml.m5.large")
        stub.add_response("describe_endpoint", _endpoint("InService", "fraud-r2", modified=T1))
        _deploy(aws, "r2", settings)
    assert registered_during_update == [False]
    [target] = aws["aas"].describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 5)
    deleted = aws["log"].of("DeleteScalingPolicy")
    assert [d["PolicyName"] for d in deleted] == ["fraud-updraft-invocations"]
