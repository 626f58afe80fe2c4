"""The endpoint in SageMaker's API: request builders, the record of a local endpoint, a real deploy.

On the ``aws`` target the endpoint is a SageMaker endpoint. A deploy creates the
version's model and endpoint config, the rollback alarms (:mod:`tasks.deploy.rollout`),
then creates the endpoint or updates it blue/green with a ``DeploymentConfig``: the old
fleet serves until the new one has taken all traffic and baked without an alarm, and
takes the traffic back if an alarm fires. The deploy waits, saying what SageMaker is
doing at each change of status, and when the update does not go through it says which
version serves and why, then raises. Autoscaling (:mod:`tasks.deploy.autoscaling`) is
set once the endpoint is in service.

On the local targets the server runs as a local process; the same model, config and
endpoint are still *recorded* in the target's SageMaker API, so tools that list
endpoints there see what is deployed. An endpoint without SageMaker (LocalStack's
free edition answers 501; moto answers 500 for calls it lacks) only loses the record:
that is a warning, never a failed deploy.

Every endpoint deploy creates or updates carries the tags ``updraft:model-package-arn``
(the registered version it serves: what the registry reads to find the champion) and
``updraft:run-id``. Every function takes boto3 clients; none builds one.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Mapping

from botocore.exceptions import ClientError, WaiterError

from tasks.aws.errors import error_message, is_call_missing
from tasks.config import DeployConfig
from tasks.deploy import autoscaling as scaling
from tasks.deploy import rollout
from tasks.errors import ConfigError, StageError

logger = logging.getLogger("updraft.deploy")

VARIANT_NAME = "AllTraffic"
#: What the record says runs a local endpoint: the inference image built locally, and a
#: role that exists in no account (nothing assumes it; SageMaker's API requires one).
LOCAL_IMAGE_URI = "updraft-inference:local"
LOCAL_ROLE_ARN = "arn:aws:iam::000000000000:role/updraft-local"
#: The tags every deployed endpoint carries (an interface: the registry reads the first).
MODEL_PACKAGE_TAG = "updraft:model-package-arn"
RUN_ID_TAG = "updraft:run-id"
#: What the inference server accepts; data capture records these bodies as text.
CAPTURE_CSV_TYPES = ["text/csv"]
CAPTURE_JSON_TYPES = ["application/json"]
DEFAULT_POLL_S = 30
_NAME_LIMIT = 63  # SageMaker's limit for model, config and endpoint names
_TRANSITIONAL = {"Creating", "Updating", "SystemUpdating", "RollingBack"}


def version_name(endpoint_name: str, run_id: str) -> str:
    """The model and endpoint config name of one deployed version: ``<endpoint>-<run_id>``."""
    return f"{endpoint_name}-{run_id}"[:_NAME_LIMIT].rstrip("-")


def _tag_list(tags: Mapping[str, str] | None) -> list[dict[str, str]]:
    return [{"Key": key, "Value": str(value)} for key, value in (tags or {}).items()]


def build_model_request(
    *,
    model_name: str,
    image_uri: str,
    model_data_url: str,
    role_arn: str,
    vpc_config: Mapping[str, list[str]] | None = None,
    tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    request: dict[str, Any] = {
        "ModelName": model_name,
        "PrimaryContainer": {"Image": image_uri, "ModelDataUrl": model_data_url, "Mode": "SingleModel"},
        "ExecutionRoleArn": role_arn,
    }
    if vpc_config:
        request["VpcConfig"] = {"Subnets": list(vpc_config["Subnets"]), "SecurityGroupIds": list(vpc_config["SecurityGroupIds"])}
    if tags:
        request["Tags"] = _tag_list(tags)
    return request


def build_data_capture_config(*, percent: int, destination_uri: str, kms_key_id: str | None = None) -> dict[str, Any]:
    """Capture ``percent`` of requests and responses to ``destination_uri`` (SSE-KMS with ``kms_key_id``)."""
    config: dict[str, Any] = {
        "EnableCapture": True,
        "InitialSamplingPercentage": percent,
        "DestinationS3Uri": destination_uri,
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {"CsvContentTypes": CAPTURE_CSV_TYPES, "JsonContentTypes": CAPTURE_JSON_TYPES},
    }
    if kms_key_id:
        config["KmsKeyId"] = kms_key_id
    return config


def build_endpoint_config_request(
    *,
    config_name: str,
    model_name: str,
    instance_type: str = "ml.m5.large",
    instance_count: int = 1,
    serverless_memory_mb: int = 0,
    serverless_max_concurrency: int = 10,
    data_capture: dict[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One ``AllTraffic`` variant: ``instance_count`` instances, or serverless when ``serverless_memory_mb`` > 0."""
    variant: dict[str, Any] = {"VariantName": VARIANT_NAME, "ModelName": model_name}
    if serverless_memory_mb:
        variant["ServerlessConfig"] = {"MemorySizeInMB": serverless_memory_mb, "MaxConcurrency": serverless_max_concurrency}
    else:
        variant.update({"InitialInstanceCount": instance_count, "InstanceType": instance_type, "InitialVariantWeight": 1.0})
    request: dict[str, Any] = {"EndpointConfigName": config_name, "ProductionVariants": [variant]}
    if data_capture:
        request["DataCaptureConfig"] = data_capture
    if tags:
        request["Tags"] = _tag_list(tags)
    return request


def _already_exists(exc: ClientError) -> bool:
    return "already exist" in error_message(exc)


def _not_found(exc: ClientError) -> bool:
    message = error_message(exc)
    return exc.response.get("Error", {}).get("Code") == "ValidationException" and "Could not find" in message


def describe_endpoint_or_none(sm_client: Any, name: str) -> dict[str, Any] | None:
    try:
        return sm_client.describe_endpoint(EndpointName=name)
    except ClientError as exc:
        if _not_found(exc):
            return None
        raise


def _create_model_and_config(sm_client: Any, model_request: dict[str, Any], config_request: dict[str, Any]) -> None:
    """Create both; a version recorded before (same names: a rerun of the same run) is kept as it is."""
    for create, request, kind in (
        (sm_client.create_model, model_request, "model"),
        (sm_client.create_endpoint_config, config_request, "endpoint config"),
    ):
        try:
            create(**request)
        except ClientError as exc:
            if not _already_exists(exc):
                raise
            logger.info("SageMaker %s for this version exists already; keeping it", kind)


def record_endpoint(
    sm_client: Any,
    *,
    name: str,
    model_name: str,
    image_uri: str,
    model_data_url: str,
    role_arn: str,
    instance_type: str,
    tags: Mapping[str, str] | None = None,
) -> str | None:
    """Record a locally served endpoint in the target's SageMaker API; its ARN, or None without SageMaker."""
    model_request = build_model_request(
        model_name=model_name, image_uri=image_uri, model_data_url=model_data_url, role_arn=role_arn, tags=tags
    )
    config_request = build_endpoint_config_request(
        config_name=model_name, model_name=model_name, instance_type=instance_type, tags=tags
    )
    try:
        _create_model_and_config(sm_client, model_request, config_request)
        current = describe_endpoint_or_none(sm_client, name)
        if current is None:
            sm_client.create_endpoint(EndpointName=name, EndpointConfigName=model_name, Tags=_tag_list(tags))
        elif current.get("EndpointConfigName") != model_name:
            # A real endpoint is updated (deploy_sagemaker_endpoint); a record is deleted and
            # recreated under the same name instead. Nothing serves behind a record, so the end
            # state is the same, and moto has no update_endpoint: it answers 500 and prints a
            # traceback on the server's stderr, which on the embedded target is the CLI's.
            sm_client.delete_endpoint(EndpointName=name)
            sm_client.create_endpoint(EndpointName=name, EndpointConfigName=model_name, Tags=_tag_list(tags))
        elif tags:  # the same version again: its tags may still have changed (the URL, the package)
            sm_client.add_tags(ResourceArn=current["EndpointArn"], Tags=_tag_list(tags))
        return sm_client.describe_endpoint(EndpointName=name)["EndpointArn"]
    except (ClientError, NotImplementedError) as exc:
        if is_call_missing(exc):
            detail = error_message(exc) if isinstance(exc, ClientError) else "not implemented"
            logger.warning(
                "the target's SageMaker API cannot record endpoint %s (%s); the local endpoint serves regardless",
                name,
                detail,
            )
            return None
        raise StageError(f"cannot record endpoint {name!r} in SageMaker: {error_message(exc)}") from None


def delete_endpoint_record(sm_client: Any, name: str) -> bool:
    """Delete the endpoint, its config and its model from SageMaker's API; False if there was none."""
    try:
        current = describe_endpoint_or_none(sm_client, name)
        if current is None:
            return False
        config_name = current["EndpointConfigName"]
        try:
            variants = sm_client.describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"]
        except ClientError as exc:
            if not _not_found(exc):
                raise
            variants = []
        sm_client.delete_endpoint(EndpointName=name)
        for delete, kwargs in [(sm_client.delete_endpoint_config, {"EndpointConfigName": config_name})] + [
            (sm_client.delete_model, {"ModelName": v["ModelName"]}) for v in variants
        ]:
            try:
                delete(**kwargs)
            except ClientError as exc:
                if not _not_found(exc):
                    raise
        return True
    except (ClientError, NotImplementedError) as exc:
        if is_call_missing(exc):
            logger.warning("the target's SageMaker API cannot delete the record of endpoint %s", name)
            return False
        raise StageError(f"cannot delete endpoint {name!r} in SageMaker: {error_message(exc)}") from None


# --------------------------------------------------------------------------------------
# A real deploy on SageMaker: create, or update blue/green; wait with progress.


@dataclass(frozen=True)
class EndpointDeployment:
    """What a deploy did: the endpoint's ARN, the config it serves, and the one it replaced."""

    endpoint_arn: str
    endpoint_config_name: str
    previous_config_name: str | None
    action: str  # "created", "updated" or "unchanged"


def check_endpoint_settings(settings: DeployConfig, *, data_capture: bool, in_vpc: bool) -> None:
    """Refuse combinations SageMaker refuses, before anything is created, saying what to change."""
    rollout.check_traffic_settings(
        settings.strategy,
        canary_percent=settings.canary_percent,
        linear_step_percent=settings.linear_step_percent,
        wait_s=settings.wait_s,
    )
    if settings.serverless_memory_mb:
        # SageMaker's feature exclusions for serverless inference.
        if data_capture:
            raise ConfigError("serverless endpoints cannot capture data: set deploy.data_capture_percent to 0 or use instances")
        if in_vpc:
            raise ConfigError(
                "serverless endpoints cannot run in a VPC: clear aws.subnets/aws.security_group_ids or use instances"
            )


def _variant_counts(variant: Mapping[str, Any]) -> str:
    current, desired = variant.get("CurrentInstanceCount"), variant.get("DesiredInstanceCount")
    if current is None and desired is None:
        return ""
    return f" ({current if current is not None else '?'} of {desired if desired is not None else '?'} instances)"


def describe_progress(endpoint: Mapping[str, Any], *, new_config: str, previous_config: str | None) -> str:
    """One sentence saying what SageMaker is doing with the endpoint now, for the run's log."""
    name, status = endpoint["EndpointName"], endpoint["EndpointStatus"]
    pending = endpoint.get("PendingDeploymentSummary") or {}
    steps = []
    for variant in pending.get("ProductionVariants", []):
        for step in variant.get("VariantStatus", []):
            text = step["Status"] + _variant_counts(variant)
            if step.get("StatusMessage"):
                text += f": {step['StatusMessage']}"
            steps.append(text)
    detail = f" [{'; '.join(steps)}]" if steps else ""
    if status == "Creating":
        return f"endpoint {name} is Creating: SageMaker provisions the instances of {new_config}{detail}"
    if status == "Updating":
        serving = f"; {previous_config} serves the traffic not yet shifted" if previous_config else ""
        return f"endpoint {name} is Updating to {new_config}: new fleet provisioned, traffic shifted and baked{serving}{detail}"
    if status == "RollingBack":
        reason = f": {endpoint['FailureReason']}" if endpoint.get("FailureReason") else ""
        return f"endpoint {name} is RollingBack{reason}; all traffic returns to {previous_config}, which keeps serving{detail}"
    if status == "SystemUpdating":
        return f"endpoint {name} is SystemUpdating (SageMaker maintenance); the deployment waits for it"
    if status == "InService":
        return f"endpoint {name} is InService with {endpoint.get('EndpointConfigName')}"
    return f"endpoint {name} is {status}" + (f": {endpoint['FailureReason']}" if endpoint.get("FailureReason") else "")


def _why_not(sm_client: Any, cloudwatch: Any, endpoint: Mapping[str, Any], alarms: list[str]) -> str:
    """SageMaker's FailureReason, else the rollback alarms that fired, else where to look."""
    reasons = []
    if endpoint.get("FailureReason"):
        reasons.append(endpoint["FailureReason"])
    if alarms:
        try:
            fired = rollout.alarms_in_alarm(cloudwatch, alarms)
        except ClientError as exc:
            fired = [f"(could not read the alarms: {error_message(exc)})"]
        reasons.extend(f"alarm {text}" for text in fired)
    if not reasons:
        reasons.append(f"SageMaker gave no reason; see the CloudWatch logs /aws/sagemaker/Endpoints/{endpoint['EndpointName']}")
    return "; ".join(reasons)


def wait_for_deployment(
    sm_client: Any,
    cloudwatch: Any,
    name: str,
    *,
    new_config: str,
    previous_config: str | None,
    since: Any = None,
    alarms: list[str] | None = None,
    poll_s: float = DEFAULT_POLL_S,
    max_wait_s: float = 3600,
) -> dict[str, Any]:
    """Poll ``describe_endpoint`` until it serves ``new_config``; log each change; raise saying what serves.

    A hand-written poll rather than botocore's ``endpoint_in_service`` waiter: the waiter
    cannot report progress, and it takes an update that SageMaker rolled back (InService,
    with the old config) for a success. ``since``: the endpoint's ``LastModifiedTime`` before
    the update, so a FailureReason left by an earlier deployment is not taken for this one's.
    """
    alarms = alarms or []
    deadline = time.monotonic() + max_wait_s
    last_message = None
    moved = False  # SageMaker has taken up the request (a transitional status, or a new LastModifiedTime)
    while True:
        endpoint = sm_client.describe_endpoint(EndpointName=name)
        status = endpoint["EndpointStatus"]
        message = describe_progress(endpoint, new_config=new_config, previous_config=previous_config)
        if message != last_message:
            logger.info(message)
            last_message = message
        moved = moved or status in _TRANSITIONAL or (since is not None and endpoint.get("LastModifiedTime") != since)
        serving = endpoint.get("EndpointConfigName")
        if status == "InService" and serving == new_config:
            return endpoint
        if status == "InService" and previous_config is not None and serving == previous_config and moved:
            raise StageError(
                f"SageMaker did not update endpoint {name!r} to {new_config} and rolled it back: "
                f"{_why_not(sm_client, cloudwatch, endpoint, alarms)}. The previous version {previous_config} keeps serving "
                "all traffic."
            )
        if status == "UpdateRollbackFailed":
            raise StageError(
                f"the update of endpoint {name!r} to {new_config} failed and so did its rollback: "
                f"{_why_not(sm_client, cloudwatch, endpoint, alarms)}. SageMaker reports the endpoint in service with a mix "
                f"of {previous_config} and {new_config}; look at it (aws sagemaker describe-endpoint --endpoint-name {name}) "
                "before deploying again."
            )
        if status == "Failed":
            before = (
                f"it served {previous_config} before this update; a Failed endpoint can only be deleted, which the next "
                "deploy does before creating it again"
                if previous_config
                else "nothing served before and nothing serves now"
            )
            raise StageError(
                f"SageMaker endpoint {name!r} failed with {new_config}: {_why_not(sm_client, cloudwatch, endpoint, alarms)} "
                f"({before}); its logs: /aws/sagemaker/Endpoints/{name}"
            )
        if status in ("OutOfService", "Deleting"):
            raise StageError(f"SageMaker endpoint {name!r} is {status}; it serves nothing. Deploy again once it is gone.")
        if time.monotonic() >= deadline:
            serving_now = f"{serving} serves meanwhile" if serving else "nothing serves yet"
            raise StageError(
                f"SageMaker endpoint {name!r} is still {status} after {max_wait_s:g} s ({serving_now}); SageMaker goes on "
                f"without us: follow it with aws sagemaker describe-endpoint --endpoint-name {name}"
            )
        time.sleep(poll_s)


def wait_for_endpoint(
    sm_client: Any, name: str, *, poll_s: float = DEFAULT_POLL_S, max_wait_s: float = 3600
) -> dict[str, Any]:
    """Wait for ``InService`` (botocore's waiter); ``StageError`` with SageMaker's FailureReason otherwise."""
    attempts = max(1, math.ceil(max_wait_s / poll_s)) if poll_s else 1
    try:
        sm_client.get_waiter("endpoint_in_service").wait(
            EndpointName=name, WaiterConfig={"Delay": poll_s, "MaxAttempts": attempts}
        )
    except WaiterError as exc:
        last = exc.last_response or {}
        status = last.get("EndpointStatus", "unknown")
        reason = last.get("FailureReason") or (last.get("Error") or {}).get("Message") or str(exc)
        raise StageError(f"SageMaker endpoint {name!r} is {status}, not InService: {reason}") from None
    return sm_client.describe_endpoint(EndpointName=name)


def _instance_type_of(sm_client: Any, config_name: str) -> str | None:
    try:
        variants = sm_client.describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"]
    except ClientError as exc:
        if _not_found(exc):
            return None
        raise
    return variants[0].get("InstanceType") if variants else None


def _new_fleet_size(current: Mapping[str, Any] | None, settings: DeployConfig) -> int:
    """The new fleet starts as large as the old one runs now (autoscaled up, perhaps), within bounds."""
    running = 0
    for variant in (current or {}).get("ProductionVariants", []):
        running = max(running, int(variant.get("CurrentInstanceCount") or 0))
    return min(settings.max_instances, max(settings.min_instances, running))


def _settle_autoscaling(autoscaling: Any, name: str, settings: DeployConfig) -> None:
    if not settings.serverless_memory_mb and settings.max_instances > settings.min_instances:
        scaling.apply_autoscaling(
            autoscaling, name, min_instances=settings.min_instances, max_instances=settings.max_instances,
            target_invocations=settings.target_invocations,
        )
        logger.info(
            "endpoint %s autoscales between %d and %d instances at %d invocations per instance per minute",
            name, settings.min_instances, settings.max_instances, settings.target_invocations,
        )
    elif scaling.remove_autoscaling(autoscaling, name):
        logger.info("endpoint %s no longer autoscales (min_instances == max_instances, or serverless)", name)


def deploy_sagemaker_endpoint(
    sm_client: Any,
    cloudwatch: Any,
    autoscaling: Any,
    *,
    name: str,
    model_name: str,
    image_uri: str,
    model_data_url: str,
    role_arn: str,
    settings: DeployConfig | None = None,
    capture_uri: str | None = None,
    kms_key_id: str | None = None,
    vpc_config: Mapping[str, list[str]] | None = None,
    tags: Mapping[str, str] | None = None,
    poll_s: float = DEFAULT_POLL_S,
    max_wait_s: float | None = None,
) -> EndpointDeployment:
    """Create the SageMaker endpoint ``name`` serving this model, or update it blue/green; wait for it.

    ``settings`` is the config's ``deploy`` section; ``capture_uri`` where captured data
    goes (needed when ``data_capture_percent`` > 0). Raises ``StageError`` saying which
    version serves when the endpoint does not end up serving ``model_name``.
    """
    settings = settings or DeployConfig()
    data_capture = None
    if settings.data_capture_percent:
        if not capture_uri:
            raise ConfigError("deploy.data_capture_percent > 0 needs an S3 destination for the captured data")
        data_capture = build_data_capture_config(
            percent=settings.data_capture_percent, destination_uri=capture_uri, kms_key_id=kms_key_id
        )
    check_endpoint_settings(settings, data_capture=data_capture is not None, in_vpc=bool(vpc_config))
    alarm_requests = rollout.build_alarm_requests(
        name, max_error_rate=settings.max_error_rate, max_latency_ms=settings.max_latency_ms
    )
    deployment_config = rollout.build_deployment_config(
        settings.strategy,
        canary_percent=settings.canary_percent,
        linear_step_percent=settings.linear_step_percent,
        wait_s=settings.wait_s,
        alarm_names=[r["AlarmName"] for r in alarm_requests],
    )
    wait_s = max_wait_s if max_wait_s is not None else rollout.expected_duration_s(deployment_config) + 600
    waiter_config = {"Delay": max(poll_s, 1), "MaxAttempts": max(1, math.ceil(wait_s / max(poll_s, 1)))}

    try:
        current = describe_endpoint_or_none(sm_client, name)
        if current is not None and current["EndpointStatus"] == "Failed":
            # A failed endpoint cannot be updated; it serves nothing, so replace it.
            logger.info("endpoint %s is Failed (%s); deleting it to create it again", name, current.get("FailureReason"))
            sm_client.delete_endpoint(EndpointName=name)
            sm_client.get_waiter("endpoint_deleted").wait(EndpointName=name, WaiterConfig=waiter_config)
            current = None
        previous_config = current["EndpointConfigName"] if current is not None else None
        if current is not None and previous_config != model_name and current["EndpointStatus"] != "InService":
            raise StageError(
                f"SageMaker endpoint {name!r} is {current['EndpointStatus']} (another deployment or maintenance is under "
                "way); wait until it is InService and deploy again"
            )

        model_request = build_model_request(
            model_name=model_name, image_uri=image_uri, model_data_url=model_data_url, role_arn=role_arn,
            vpc_config=vpc_config, tags=tags,
        )
        config_request = build_endpoint_config_request(
            config_name=model_name,
            model_name=model_name,
            instance_type=settings.instance_type,
            instance_count=_new_fleet_size(current, settings),
            serverless_memory_mb=settings.serverless_memory_mb,
            serverless_max_concurrency=settings.serverless_max_concurrency,
            data_capture=data_capture,
            tags=tags,
        )
        _create_model_and_config(sm_client, model_request, config_request)
        # The alarms first: the deployment config names them, and they watch the endpoint from its first minute.
        alarms = rollout.ensure_alarms(cloudwatch, alarm_requests)

        if current is None:
            arn = sm_client.create_endpoint(
                EndpointName=name, EndpointConfigName=model_name, DeploymentConfig=deployment_config, Tags=_tag_list(tags)
            )["EndpointArn"]
            action, since = "created", None
            logger.info("creating endpoint %s with %s", name, model_name)
        elif previous_config == model_name:
            arn, action, since = current["EndpointArn"], "unchanged", current.get("LastModifiedTime")
            if tags:
                sm_client.add_tags(ResourceArn=arn, Tags=_tag_list(tags))
            logger.info("endpoint %s already serves %s", name, model_name)
        else:
            if scaling.scalable_target(autoscaling, name) is not None and (
                settings.serverless_memory_mb or _instance_type_of(sm_client, previous_config) != settings.instance_type
            ):
                # SageMaker refuses to change the instance type of an autoscaled variant.
                scaling.remove_autoscaling(autoscaling, name)
                logger.info("endpoint %s: autoscaling removed for the update (the instance type changes)", name)
            arn, action, since = current["EndpointArn"], "updated", current.get("LastModifiedTime")
            sm_client.update_endpoint(EndpointName=name, EndpointConfigName=model_name, DeploymentConfig=deployment_config)
            if tags:
                sm_client.add_tags(ResourceArn=arn, Tags=_tag_list(tags))
            policy = deployment_config["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
            logger.info(
                "updating endpoint %s from %s to %s blue/green (%s, %d s baking; rollback on %s)",
                name, previous_config, model_name, policy["Type"], settings.wait_s, ", ".join(alarms),
            )
    except ClientError as exc:
        raise StageError(f"SageMaker refused to deploy endpoint {name!r}: {error_message(exc)}") from None
    except WaiterError as exc:
        raise StageError(f"SageMaker endpoint {name!r} could not be replaced: {exc}") from None

    final = wait_for_deployment(
        sm_client, cloudwatch, name,
        new_config=model_name,
        previous_config=previous_config if action == "updated" else None,
        since=since,
        alarms=alarms,
        poll_s=poll_s,
        max_wait_s=wait_s,
    )
    try:
        _settle_autoscaling(autoscaling, name, settings)
    except ClientError as exc:
        raise StageError(
            f"endpoint {name!r} serves {model_name}, but its autoscaling could not be set: {error_message(exc)}"
        ) from None
    return EndpointDeployment(
        endpoint_arn=final.get("EndpointArn", arn),
        endpoint_config_name=model_name,
        previous_config_name=previous_config if action == "updated" else None,
        action=action,
    )
