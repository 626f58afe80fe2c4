"""Deploy: the gated model becomes an endpoint answering ``POST /invocations``.

On ``aws`` that is a SageMaker endpoint running the inference image; on the local
targets it is the same server (``images/inference``) as a managed local process
(:mod:`tasks.deploy.local_endpoints`), recorded in the target's SageMaker API
(:mod:`tasks.deploy.sagemaker_endpoints`) so both look alike to whoever lists them.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import runs
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
    "delete_endpoint_record",
    "delete_local_endpoint",
    "deploy_local_endpoint",
    "deploy_stage",
    "fetch_model_tar",
    "list_local_endpoints",
    "record_endpoint",
]


class GateDecision(Protocol):
    """What deploy needs from the evaluation: the gate's verdict and its sentence."""

    passed: bool
    reason: str


@dataclass
class DeployResult:
    endpoint_name: str
    url: str | None  # http://127.0.0.1:PORT/invocations locally; SageMaker's invocation URL on aws
    skipped: str | None = None  # why nothing was deployed


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


@task(name="deploy", cache_policy=NO_CACHE)
def deploy_stage(
    config: PipelineConfig,
    target: Target,
    run_id: str,
    model_uri: str,
    model_dir: str,
    evaluation: GateDecision,
) -> DeployResult:
    """Serve the run's model at ``config.endpoint_name`` if the gate let it through."""
    name = config.endpoint_name
    if config.deploy.require_passed and not evaluation.passed:
        why = f"the evaluation gate did not pass: {evaluation.reason}"
        log.info("not deploying %s: %s", name, why)
        return DeployResult(endpoint_name=name, url=None, skipped=why)

    tags = {"updraft:project": config.name, "updraft:run-id": run_id}
    if target.is_local:
        model_tar = fetch_model_tar(
            _local_fs(model_uri, target), model_uri, model_dir, runs.run_dir(run_id) / "deploy" / "model.tar.gz"
        )
        info = deploy_local_endpoint(name=name, model_tar=model_tar, model_uri=model_uri, run_id=run_id)
        record_endpoint(
            target.client("sagemaker"),
            name=name,
            model_name=version_name(name, run_id),
            image_uri=LOCAL_IMAGE_URI,
            model_data_url=model_uri,
            role_arn=LOCAL_ROLE_ARN,
            instance_type=config.deploy.instance_type,
            tags={**tags, "updraft:url": info.url},
        )
        return DeployResult(endpoint_name=name, url=info.url)

    if not config.aws.inference_image:
        raise ConfigError(
            "aws.inference_image is not set: build images/inference, push it to ECR and put its URI in the config"
        )
    if not config.aws.role_arn:
        raise ConfigError("aws.role_arn is not set: give the SageMaker execution role the endpoint runs as")
    deploy_sagemaker_endpoint(
        target.client("sagemaker"),
        name=name,
        model_name=version_name(name, run_id),
        image_uri=config.aws.inference_image,
        model_data_url=model_uri,
        role_arn=config.aws.role_arn,
        instance_type=config.deploy.instance_type,
        tags=tags,
    )
    runtime = target.client("sagemaker-runtime")
    return DeployResult(endpoint_name=name, url=f"{runtime.meta.endpoint_url}/endpoints/{name}/invocations")
