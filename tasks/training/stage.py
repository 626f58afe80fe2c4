"""The train stage as a Prefect task: a SageMaker training job on ``aws``, the same entry point as a local process elsewhere.

This is the only module of the package that takes a :class:`Target` (and imports Prefect).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import runs
from tasks.aws.target import Target
from tasks.config import SUPPORTED_TASKS, PipelineConfig
from tasks.errors import ConfigError, DataError
from tasks.layout import Layout
from tasks.modelbundle import extract_model_tar, load_model_bundle
from tasks.training import container
from tasks.training.jobs import (
    build_training_job_request,
    model_artifact_uri,
    record_local_training_job,
    run_sagemaker_training_job,
    training_job_name,
)
from tasks.training.local_job import TrainResult, run_local_training_job

log = logging.getLogger("updraft.train")

#: What a local job is recorded with when the config names no image or role (moto accepts any).
LOCAL_IMAGE_URI = "updraft/training:local"
LOCAL_ROLE_ARN = "arn:aws:iam::000000000000:role/updraft-local-training"


def training_channels(features_uri: str) -> dict[str, str]:
    """The job's channels under the features folder; ``transform`` is transform.json's own key (a prefix of one object)."""
    base = features_uri.rstrip("/") + "/"
    return {
        container.CHANNEL_TRAIN: base + "train/",
        container.CHANNEL_VALIDATION: base + "validation/",
        container.CHANNEL_TRANSFORM: base + container.TRANSFORM_FILE,
    }


def fetch_model(fs: Any, model_uri: str, work_dir: str | Path, *, run_id: str, then: str = "run the train stage first") -> Path:
    """Download a run's ``model.tar.gz`` into ``work_dir`` and unpack it in ``work_dir/model``; returns that folder.

    The artifact in S3 is the source of truth: a stage scheduled on its own (another day,
    another machine) reads it there rather than trusting a local copy. ``then`` ends the
    message when the run has no model: what the user runs to make one.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    tar_path = work_dir / "model.tar.gz"
    try:
        fs.get_file(model_uri, str(tar_path))
    except FileNotFoundError:
        raise DataError(f"no model for run {run_id} at {model_uri}: {then}") from None
    model_dir = work_dir / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    return extract_model_tar(tar_path, model_dir)


@task(name="train", cache_policy=NO_CACHE)
def train_stage(config: PipelineConfig, target: Target, run_id: str, features_uri: str) -> TrainResult:
    """Train the model for ``run_id`` from the feature splits; the model ends at ``Layout.model(run_id)``."""
    if config.task not in SUPPORTED_TASKS:
        raise ConfigError(
            f"task {config.task!r} cannot be trained yet: it arrives in a later release "
            f"(this one trains {', '.join(SUPPORTED_TASKS)})"
        )
    if config.train.instance_count != 1:
        raise ConfigError(
            f"train.instance_count is {config.train.instance_count}, but updraft trains on one instance; set it to 1"
        )
    layout = Layout(config.bucket, config.name)
    job_name = training_job_name(config.name, run_id)
    channels = training_channels(features_uri)
    model_uri = layout.model(run_id)
    work_dir = runs.run_dir(run_id) / "train"
    environment = {container.UPDRAFT_RUN_ID: run_id}
    tags = {"updraft:pipeline": config.name, "updraft:run-id": run_id}
    fs = target.filesystem()
    if not target.is_local:
        missing = [key for key in ("training_image", "role_arn") if not getattr(config.aws, key)]
        if missing:
            raise ConfigError(
                f"training on the aws target needs aws.{' and aws.'.join(missing)} in the config "
                "(the ECR image URI of images/training and a SageMaker execution role ARN)"
            )
    request = build_training_job_request(
        job_name=job_name,
        image_uri=config.aws.training_image or LOCAL_IMAGE_URI,
        role_arn=config.aws.role_arn or LOCAL_ROLE_ARN,
        channels=channels,
        output_uri=layout.model_prefix(run_id),
        hyperparameters=dict(config.train.hyperparameters),
        instance_type=config.train.instance_type,
        instance_count=config.train.instance_count,
        max_runtime_s=config.train.max_runtime_s,
        tags=tags,
        environment=environment,
    )

    if target.is_local:
        log.info("training job %s: the training entry point as a local process", job_name)
        result = run_local_training_job(
            job_name=job_name,
            work_dir=work_dir,
            channels=channels,
            hyperparameters=dict(config.train.hyperparameters),
            fs=fs,
            output_model_uri=model_uri,
            environment=environment,
            max_runtime_s=config.train.max_runtime_s,
        )
        if record_local_training_job(target.client("sagemaker"), request, result):
            # Where describe_training_job says the model is, as after a managed job.
            fs.copy(model_uri, model_artifact_uri(request))
        return result

    log.info("training job %s: SageMaker, %d x %s", job_name, config.train.instance_count, config.train.instance_type)
    desc = run_sagemaker_training_job(target.client("sagemaker"), request, logs_client=target.client("logs"))
    artifact = desc.get("ModelArtifacts", {}).get("S3ModelArtifacts") or model_artifact_uri(request)
    fs.copy(artifact, model_uri)
    model_dir = fetch_model(fs, model_uri, work_dir, run_id=run_id)
    start, end = desc.get("TrainingStartTime"), desc.get("TrainingEndTime")
    duration = (end - start).total_seconds() if start and end else float(desc.get("TrainingTimeInSeconds", 0))
    # The entry point's own record (best iteration) is the truth; SageMaker's parsed metrics the fallback.
    metrics = load_model_bundle(model_dir).metadata.get("metrics") or {
        m["MetricName"]: float(m["Value"]) for m in desc.get("FinalMetricDataList", [])
    }
    return TrainResult(
        job_name=job_name,
        model_uri=model_uri,
        metrics=metrics,
        model_dir=str(model_dir),
        duration_s=round(duration, 3),
        status=desc["TrainingJobStatus"],
    )
