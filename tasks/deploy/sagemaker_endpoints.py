"""The endpoint in SageMaker's API: request builders, the record of a local endpoint, a real deploy.

On the ``aws`` target the endpoint is a SageMaker endpoint: model, endpoint config and
endpoint are created (or the endpoint is updated to the new config, which SageMaker
does blue/green: the old fleet serves until the new one is healthy, and stays if it
is not), then we wait for ``InService``.

On the local targets the server runs as a local process; the same model, config and
endpoint are still *recorded* in the target's SageMaker API, so tools that list
endpoints there see what is deployed. An endpoint without SageMaker (LocalStack's
free edition answers 501; moto answers 500 for calls it lacks) only loses the record:
that is a warning, never a failed deploy.

Every function takes a boto3 SageMaker client; none builds one.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

from botocore.exceptions import ClientError, WaiterError

from tasks.aws.errors import error_message, is_call_missing
from tasks.errors import StageError

logger = logging.getLogger("updraft.deploy")

VARIANT_NAME = "AllTraffic"
#: What the record says runs a local endpoint: the inference image built locally, and a
#: role that exists in no account (nothing assumes it; SageMaker's API requires one).
LOCAL_IMAGE_URI = "updraft-inference:local"
LOCAL_ROLE_ARN = "arn:aws:iam::000000000000:role/updraft-local"
DEFAULT_POLL_S = 30
DEFAULT_MAX_WAIT_S = 3600
_NAME_LIMIT = 63  # SageMaker's limit for model, config and endpoint names


def version_name(endpoint_name: str, run_id: str) -> str:
    """The model and endpoint config name of one deployed version: ``<endpoint>-<run_id>``."""
    return f"{endpoint_name}-{run_id}"[:_NAME_LIMIT].rstrip("-")


def _tag_list(tags: Mapping[str, str] | None) -> list[dict[str, str]]:
    return [{"Key": key, "Value": str(value)} for key, value in (tags or {}).items()]


def build_model_request(
    *, model_name: str, image_uri: str, model_data_url: str, role_arn: str, tags: Mapping[str, str] | None = None
) -> dict[str, Any]:
    request: dict[str, Any] = {
        "ModelName": model_name,
        "PrimaryContainer": {"Image": image_uri, "ModelDataUrl": model_data_url, "Mode": "SingleModel"},
        "ExecutionRoleArn": role_arn,
    }
    if tags:
        request["Tags"] = _tag_list(tags)
    return request


def build_endpoint_config_request(
    *,
    config_name: str,
    model_name: str,
    instance_type: str,
    instance_count: int = 1,
    tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    request: dict[str, Any] = {
        "EndpointConfigName": config_name,
        "ProductionVariants": [
            {
                "VariantName": VARIANT_NAME,
                "ModelName": model_name,
                "InitialInstanceCount": instance_count,
                "InstanceType": instance_type,
                "InitialVariantWeight": 1.0,
            }
        ],
    }
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


def wait_for_endpoint(
    sm_client: Any, name: str, *, poll_s: float = DEFAULT_POLL_S, max_wait_s: float = DEFAULT_MAX_WAIT_S
) -> dict[str, Any]:
    """Wait for ``InService`` (botocore's waiter); ``StageError`` with SageMaker's FailureReason otherwise."""
    attempts = max(1, math.ceil(max_wait_s / poll_s))
    try:
        sm_client.get_waiter("endpoint_in_service").wait(
            EndpointName=name, WaiterConfig={"Delay": poll_s, "MaxAttempts": attempts}
        )
    except WaiterError as exc:
        last = exc.last_response or {}
        status = last.get("EndpointStatus", "unknown")
        reason = last.get("FailureReason") or _message_of_response(last) or str(exc)
        if status == "Failed":
            raise StageError(f"SageMaker endpoint {name!r} failed: {reason}") from None
        raise StageError(
            f"SageMaker endpoint {name!r} is {status}, not InService, after {max_wait_s:g} s ({reason}); "
            "check its CloudWatch logs (/aws/sagemaker/Endpoints/" + name + ")"
        ) from None
    return sm_client.describe_endpoint(EndpointName=name)


def _message_of_response(response: Mapping[str, Any]) -> str | None:
    error = response.get("Error") or {}
    return error.get("Message")


def deploy_sagemaker_endpoint(
    sm_client: Any,
    *,
    name: str,
    model_name: str,
    image_uri: str,
    model_data_url: str,
    role_arn: str,
    instance_type: str,
    instance_count: int = 1,
    tags: Mapping[str, str] | None = None,
    poll_s: float = DEFAULT_POLL_S,
    max_wait_s: float = DEFAULT_MAX_WAIT_S,
) -> str:
    """Create or update the SageMaker endpoint ``name`` to serve this model; its ARN once InService."""
    model_request = build_model_request(
        model_name=model_name, image_uri=image_uri, model_data_url=model_data_url, role_arn=role_arn, tags=tags
    )
    config_request = build_endpoint_config_request(
        config_name=model_name,
        model_name=model_name,
        instance_type=instance_type,
        instance_count=instance_count,
        tags=tags,
    )
    try:
        _create_model_and_config(sm_client, model_request, config_request)
        current = describe_endpoint_or_none(sm_client, name)
        if current is not None and current["EndpointStatus"] == "Failed":
            # A failed endpoint cannot be updated; it serves nothing, so replace it.
            logger.info("endpoint %s is Failed (%s); recreating it", name, current.get("FailureReason"))
            sm_client.delete_endpoint(EndpointName=name)
            sm_client.get_waiter("endpoint_deleted").wait(
                EndpointName=name, WaiterConfig={"Delay": poll_s, "MaxAttempts": max(1, math.ceil(max_wait_s / poll_s))}
            )
            current = None
        if current is None:
            sm_client.create_endpoint(EndpointName=name, EndpointConfigName=model_name, Tags=_tag_list(tags))
        elif current["EndpointConfigName"] != model_name:
            if current["EndpointStatus"] != "InService":
                raise StageError(
                    f"SageMaker endpoint {name!r} is {current['EndpointStatus']}; wait until it is InService and rerun"
                )
            sm_client.update_endpoint(EndpointName=name, EndpointConfigName=model_name)
    except ClientError as exc:
        raise StageError(f"SageMaker refused to deploy endpoint {name!r}: {error_message(exc)}") from None
    except WaiterError as exc:
        raise StageError(f"SageMaker endpoint {name!r} could not be replaced: {exc}") from None

    final = wait_for_endpoint(sm_client, name, poll_s=poll_s, max_wait_s=max_wait_s)
    if final.get("EndpointConfigName") != model_name:
        # SageMaker rolled the update back: the previous version still serves.
        raise StageError(
            f"SageMaker could not update endpoint {name!r} to {model_name}; it still serves "
            f"{final.get('EndpointConfigName')}: {final.get('FailureReason') or 'see its CloudWatch logs'}"
        )
    return final["EndpointArn"]
