"""The deploy stage (a Prefect task): the gated model becomes an endpoint answering ``POST /invocations``.

On ``aws`` it is a SageMaker endpoint created or updated blue/green with rollback alarms,
autoscaling and data capture (:mod:`tasks.deploy.sagemaker_endpoints`); on the local
targets the same inference app runs as a managed local process
(:mod:`tasks.deploy.local_endpoints`) and is recorded in the target's SageMaker API. Either
way the endpoint is tagged with the registered model package it serves
(``updraft:model-package-arn``) and the run (``updraft:run-id``): the registry reads the
first to find the champion the next run is judged against.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from botocore.exceptions import ClientError
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import runs
from tasks.aws.errors import is_call_missing
from tasks.aws.target import Target
from tasks.config import PipelineConfig
from tasks.deploy.local_endpoints import (
    EndpointInfo,
    delete_local_endpoint,
    deploy_local_endpoint,
    list_local_endpoints,
)
from tasks.deploy.sagemaker_endpoints import (
    LOCAL_IMAGE_URI,
    LOCAL_ROLE_ARN,
    MODEL_PACKAGE_TAG,
    RUN_ID_TAG,
    delete_endpoint_record,
    deploy_sagemaker_endpoint,
    record_endpoint,
    version_name,
)
from tasks.errors import ConfigError, StageError
from tasks.modelbundle import METADATA_FILE, TRANSFORM_FILE
from tasks.training.local_job import pack_model_dir

log = logging.getLogger("updraft.deploy")

__all__ = [
    "DeployResult",
    "EndpointInfo",
    "capture_uri",
    "delete_endpoint_record",
    "delete_local_endpoint",
    "deploy_local_endpoint",
    "deploy_stage",
    "fetch_model_tar",
    "find_model_package_arn",
    "list_local_endpoints",
    "record_endpoint",
]

#: How many of the group's newest packages ``find_model_package_arn`` looks through.
PACKAGE_LOOKUP_LIMIT = 20


class GateDecision(Protocol):
    """What deploy needs from the evaluation: the gate's verdict and its sentence."""

    passed: bool
    reason: str


@dataclass
class DeployResult:
    endpoint_name: str
    url: str | None  # http://127.0.0.1:PORT/invocations locally; SageMaker's invocation URL on aws
    skipped: str | None = None  # why nothing was deployed
    #: The registered model package the endpoint serves (its ``updraft:model-package-arn`` tag).
    model_package_arn: str | None = None
    #: On aws: "created", "updated" or "unchanged"; the endpoint config it replaced.
    action: str | None = None
    previous_config: str | None = None


def capture_uri(bucket: str, endpoint_name: str) -> str:
    """Where the endpoint's captured requests and responses go (SageMaker adds variant/date/hour below)."""
    return f"s3://{bucket}/data-capture/{endpoint_name}/"


def find_model_package_arn(sm_client: Any, group_name: str, model_data_url: str) -> str | None:
    """The newest package of ``group_name`` whose container serves ``model_data_url``; None if none.

    For a deploy run on its own (``updraft deploy``), where the register stage's result
    is not at hand: the run's model artifact identifies its package. Only SageMaker's own
    fields are read, so this does not depend on what metadata the registry records.
    """
    try:
        listed = sm_client.list_model_packages(
            ModelPackageGroupName=group_name, SortBy="CreationTime", SortOrder="Descending", MaxResults=PACKAGE_LOOKUP_LIMIT
        )
        for summary in listed.get("ModelPackageSummaryList", []):
            arn = summary["ModelPackageArn"]
            package = sm_client.describe_model_package(ModelPackageName=arn)
            containers = package.get("InferenceSpecification", {}).get("Containers", [])
            if any(c.get("ModelDataUrl") == model_data_url for c in containers):
                return arn
    except ClientError as exc:
        if is_call_missing(exc) or exc.response.get("Error", {}).get("Code") in ("ValidationException", "ResourceNotFound"):
            return None
        raise
    return None


def fetch_model_tar(fs: Any, model_uri: str, model_dir: str | Path, dest: str | Path) -> Path:
    """The model artifact at ``dest``: downloaded from ``model_uri``, else packed from ``model_dir``.

    The artifact in S3 is the source of truth (it is what the registry and a real
    endpoint use); the training stage's extracted copy is the fallback when the object
    is not there.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        fs.get(model_uri, str(dest))
        return dest
    except FileNotFoundError:
        pass
    folder = Path(model_dir)
    if not all((folder / name).is_file() for name in (TRANSFORM_FILE, METADATA_FILE)):
        raise StageError(
            f"model artifact {model_uri} does not exist and {folder} holds no model "
            f"({TRANSFORM_FILE} and {METADATA_FILE} are missing); rerun the train stage"
        )
    log.warning("model artifact %s not found; packing the trained model from %s", model_uri, folder)
    tmp = dest.with_name(dest.name + ".tmp")
    pack_model_dir(folder, tmp)
    shutil.move(tmp, dest)
    return dest


def _local_fs(model_uri: str, target: Target) -> Any:
    if model_uri.startswith("s3://"):
        return target.filesystem()
    import fsspec

    return fsspec.filesystem("file")


# No Prefect retries: a second attempt would create another model and endpoint config (a rerun resumes instead).
@task(name="deploy", cache_policy=NO_CACHE)
def deploy_stage(
    config: PipelineConfig,
    target: Target,
    run_id: str,
    model_uri: str,
    model_dir: str,
    evaluation: GateDecision,
    model_package_arn: str | None = None,
) -> DeployResult:
    """Serve the run's model at ``config.endpoint_name`` if the gate let it through.

    ``model_package_arn``: the version the register stage created (``RegisterResult``);
    when not given, the package registered for ``model_uri`` is looked up.
    """
    name = config.endpoint_name
    if config.deploy.require_passed and not evaluation.passed:
        why = f"the evaluation gate did not pass: {evaluation.reason}"
        log.info("not deploying %s: %s", name, why)
        return DeployResult(endpoint_name=name, url=None, skipped=why)

    if not target.is_local:
        if not config.aws.inference_image:
            raise ConfigError(
                "aws.inference_image is not set: build images/inference, push it to ECR and put its URI in the config"
            )
        if not config.aws.role_arn:
            raise ConfigError("aws.role_arn is not set: give the SageMaker execution role the endpoint runs as")
    sm = target.client("sagemaker")
    package_arn = model_package_arn or find_model_package_arn(sm, config.name, model_uri)
    if package_arn is None:
        log.warning(
            "no registered model package serves %s: endpoint %s is not tagged %s, so the next run's champion "
            "is the group's latest approved version",
            model_uri, name, MODEL_PACKAGE_TAG,
        )
    tags = {"updraft:project": config.name, RUN_ID_TAG: run_id}
    if package_arn:
        tags[MODEL_PACKAGE_TAG] = package_arn
    if target.is_local:
        model_tar = fetch_model_tar(
            _local_fs(model_uri, target), model_uri, model_dir, runs.run_dir(run_id) / "deploy" / "model.tar.gz"
        )
        info = deploy_local_endpoint(name=name, model_tar=model_tar, model_uri=model_uri, run_id=run_id)
        record_endpoint(
            sm,
            name=name,
            model_name=version_name(name, run_id),
            image_uri=LOCAL_IMAGE_URI,
            model_data_url=model_uri,
            role_arn=LOCAL_ROLE_ARN,
            instance_type=config.deploy.instance_type,
            tags={**tags, "updraft:url": info.url},
        )
        return DeployResult(endpoint_name=name, url=info.url, model_package_arn=package_arn)

    vpc = (
        {"Subnets": list(config.aws.subnets), "SecurityGroupIds": list(config.aws.security_group_ids)}
        if config.aws.subnets and config.aws.security_group_ids
        else None
    )
    deployment = deploy_sagemaker_endpoint(
        sm,
        target.client("cloudwatch"),
        target.client("application-autoscaling"),
        name=name,
        model_name=version_name(name, run_id),
        image_uri=config.aws.inference_image,
        model_data_url=model_uri,
        role_arn=config.aws.role_arn,
        settings=config.deploy,
        capture_uri=capture_uri(config.bucket, name),
        kms_key_id=config.aws.kms_key_id,
        vpc_config=vpc,
        tags=tags,
    )
    runtime = target.client("sagemaker-runtime")
    return DeployResult(
        endpoint_name=name,
        url=f"{runtime.meta.endpoint_url}/endpoints/{name}/invocations",
        model_package_arn=package_arn,
        action=deployment.action,
        previous_config=deployment.previous_config_name,
    )
