"""The train stage as a Prefect task: a SageMaker training job on ``aws``, the same entry point as a local process elsewhere.

This is the only module of the package that takes a :class:`Target` (and imports Prefect).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import runs
from tasks.aws.target import Target
from tasks.config import SUPPORTED_TASKS, PipelineConfig
from tasks.errors import ConfigError, DataError
from tasks.layout import Layout
from tasks.modelbundle import extract_model_tar, load_model_bundle
from tasks.provenance import data_manifest_hash, git_revision
from tasks.training import container
from tasks.training.jobs import (
    build_training_job_request,
    model_artifact_uri,
    package_script,
    record_local_training_job,
    run_sagemaker_training_job,
    training_job_name,
    training_job_options,
    upload_script_package,
)
from tasks.training.local_job import TrainResult, run_local_training_job
from tasks.training.script_mode import ScriptSpec

if TYPE_CHECKING:
    from distributed import Client

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


def job_environment(config: PipelineConfig, fs: Any, run_id: str) -> dict[str, str]:
    """The job's ``Environment``: the run it belongs to and the provenance its metadata records."""
    environment = {container.UPDRAFT_RUN_ID: run_id}
    manifest_hash = data_manifest_hash(fs, Layout(config.bucket, config.name).manifest())
    revision = git_revision()
    if manifest_hash:
        environment[container.UPDRAFT_DATA_MANIFEST_HASH] = manifest_hash
    if revision:
        environment[container.UPDRAFT_GIT_REVISION] = revision
    return environment


def default_objective(task: str) -> str:
    """What tuning optimises unless ``tune.objective`` says otherwise: the task's first validation metric."""
    return f"{container.CHANNEL_VALIDATION}:{container.DEFAULT_METRICS[task][0]}"


# No Prefect retries: a SageMaker training job name is used once (a rerun of the run resumes instead).
@task(name="train", cache_policy=NO_CACHE)
def train_stage(
    config: PipelineConfig, target: Target, run_id: str, features_uri: str, client: "Client | None" = None
) -> TrainResult:
    """Train the model for ``run_id`` from the feature splits; the model ends at ``Layout.model(run_id)``.

    ``client``: the preprocess Dask cluster, reused by ``train.backend: dask``.
    """
    if config.task not in SUPPORTED_TASKS:
        raise ConfigError(f"task {config.task!r} cannot be trained (this release trains {', '.join(SUPPORTED_TASKS)})")
    layout = Layout(config.bucket, config.name)
    job_name = training_job_name(config.name, run_id)
    channels = training_channels(features_uri)
    model_uri = layout.model(run_id)
    work_dir = runs.run_dir(run_id) / "train"
    fs = target.filesystem()
    environment = job_environment(config, fs, run_id)

    if config.train.backend == "dask":
        return _train_on_dask(config, target, client, job_name=job_name, features_uri=features_uri,
                              model_uri=model_uri, work_dir=work_dir, environment=environment)

    script = ScriptSpec.from_train_config(config.train)
    if not target.is_local:
        missing = ["role_arn"] if not config.aws.role_arn else []
        if not config.aws.training_image and script is None:
            missing.insert(0, "training_image")
        if missing:
            raise ConfigError(
                f"training on the aws target needs aws.{' and aws.'.join(missing)} in the config "
                "(the ECR image URI of images/training, unless train.entry_point runs your own script in a "
                "SageMaker framework image, and a SageMaker execution role ARN)"
            )
    hyperparameters: dict[str, Any] = dict(config.train.hyperparameters)
    stringify = True
    if script is not None and not target.is_local:
        package = package_script(
            entry_point=config.train.entry_point, source_dir=config.train.source_dir, job_name=job_name,
            code_prefix=layout.model_prefix(run_id), region=target.region, work_dir=work_dir,
            hyperparameters=hyperparameters, network_isolation=config.train.network_isolation,
        )
        upload_script_package(fs, package)
        hyperparameters, channels, stringify = package.hyperparameters, {**channels, **package.channels}, False
    options = training_job_options(config)
    options["tags"] = {**options["tags"], "updraft:pipeline": config.name, "updraft:run-id": run_id}
    request = build_training_job_request(
        job_name=job_name,
        image_uri=_image_uri(config, target),
        role_arn=config.aws.role_arn or LOCAL_ROLE_ARN,
        channels=channels,
        output_uri=layout.model_prefix(run_id),
        hyperparameters=hyperparameters,
        environment=environment,
        stringify=stringify,
        **options,
    )

    if target.is_local:
        if config.tune.enabled:
            return _tune_locally(config, target, request, script=script, work_dir=work_dir, model_uri=model_uri,
                                 output_prefix=layout.model_prefix(run_id) + "tuning/", environment=environment)
        log.info(
            "training job %s: the %s as %s",
            job_name, "script " + config.train.entry_point if script else "training entry point",
            "a local process" if config.train.instance_count == 1 else f"{config.train.instance_count} local processes",
        )
        result = run_local_training_job(
            job_name=job_name,
            work_dir=work_dir,
            channels=channels,
            hyperparameters=hyperparameters,
            fs=fs,
            output_model_uri=model_uri,
            environment=environment,
            max_runtime_s=config.train.max_runtime_s,
            instance_count=config.train.instance_count,
            checkpoint_uri=request.get("CheckpointConfig", {}).get("S3Uri"),
            script=script,
        )
        if _record(target, request, result):
            # Where describe_training_job says the model is, as after a managed job.
            fs.copy(model_uri, model_artifact_uri(request))
        return result

    sagemaker = target.client("sagemaker")
    if config.tune.enabled:
        return _tune_on_sagemaker(config, fs, sagemaker, request, run_id=run_id, work_dir=work_dir, model_uri=model_uri)
    log.info("training job %s: SageMaker, %d x %s%s", job_name, config.train.instance_count, config.train.instance_type,
             " (managed spot)" if config.train.spot else "")
    desc = run_sagemaker_training_job(sagemaker, request, logs_client=target.client("logs"))
    artifact = desc.get("ModelArtifacts", {}).get("S3ModelArtifacts") or model_artifact_uri(request)
    return _fetch_trained(fs, artifact, model_uri, work_dir, run_id=run_id, job_name=job_name, desc=desc)


def _image_uri(config: PipelineConfig, target: Target) -> str:
    if target.is_local:
        return config.aws.training_image or LOCAL_IMAGE_URI
    from tasks.training.images import training_image_uri_from_config

    return training_image_uri_from_config(config, target.region)


def _record(target: Target, request: dict[str, Any], result: TrainResult) -> str | None:
    """Record a local run in the endpoint's SageMaker API; the embedded endpoint also gets its real timings and metrics."""
    amend = None
    if target.kind == "embedded":
        from tasks.aws.embedded import amend_training_job

        def amend(name: str, fields: dict[str, Any]) -> bool:
            return amend_training_job(name, fields, region=target.region)

    return record_local_training_job(target.client("sagemaker"), request, result, amend=amend)


def _fetch_trained(
    fs: Any, artifact: str, model_uri: str, work_dir: Path, *, run_id: str, job_name: str, desc: dict[str, Any]
) -> TrainResult:
    """Copy a managed job's artifact to the run's model place, unpack it, and describe it as a result."""
    fs.copy(artifact, model_uri)
    model_dir = fetch_model(fs, model_uri, work_dir, run_id=run_id)
    start, end = desc.get("TrainingStartTime"), desc.get("TrainingEndTime")
    duration = (end - start).total_seconds() if start and end else float(desc.get("TrainingTimeInSeconds", 0))
    # The entry point's own record (best iteration) is the truth; SageMaker's parsed metrics the fallback.
    metadata_metrics = load_model_bundle(model_dir).metadata.get("metrics") if _has_metadata(model_dir) else None
    metrics = metadata_metrics or {m["MetricName"]: float(m["Value"]) for m in desc.get("FinalMetricDataList", [])}
    return TrainResult(
        job_name=job_name,
        model_uri=model_uri,
        metrics=metrics,
        model_dir=str(model_dir),
        duration_s=round(duration, 3),
        status=desc["TrainingJobStatus"],
    )


def _has_metadata(model_dir: Path) -> bool:
    return (Path(model_dir) / container.METADATA_FILE).is_file()


def _tune_locally(
    config: PipelineConfig, target: Target, request: dict[str, Any], *, script: ScriptSpec | None, work_dir: Path,
    model_uri: str, output_prefix: str, environment: dict[str, str],
) -> TrainResult:
    """Optuna over ``tune.ranges`` with local trials; the best trial's model becomes the run's model.

    Each completed trial is recorded as a training job of its own (as a SageMaker tuning
    job's trials are), so ``list_training_jobs`` shows the whole search.
    """
    from tasks.training.local_tuning import run_local_tuning

    fs = target.filesystem()
    job_name = request["TrainingJobName"]

    def run_and_record_trial(**kwargs: Any) -> TrainResult:
        result = run_local_training_job(**kwargs)
        trial_request = {
            **request,
            "TrainingJobName": kwargs["job_name"],
            "HyperParameters": container.stringify_hyperparameters(kwargs["hyperparameters"]),
            "OutputDataConfig": {**request["OutputDataConfig"], "S3OutputPath": output_prefix},
        }
        _record(target, trial_request, result)
        return result

    tuning = run_local_tuning(
        job_name=job_name,
        work_dir=work_dir / "tuning",
        tune=config.tune,
        channels=training_channels_of(request),
        hyperparameters=dict(config.train.hyperparameters),
        fs=fs,
        output_prefix=output_prefix,
        environment=environment,
        max_runtime_s=config.train.max_runtime_s,
        instance_count=config.train.instance_count,
        script=script,
        default_objective=None if script else default_objective(config.task),
        train_fn=run_and_record_trial,
    )
    best = tuning.best_result
    fs.copy(best.model_uri, model_uri)
    summary = {
        "backend": "optuna",
        "objective": tuning.objective,
        "maximize": tuning.maximize,
        "best_trial": best.job_name,
        "best_value": tuning.best.objective,
        "best_hyperparameters": tuning.best.hyperparameters,
        "trials": tuning.table(),
    }
    log.info("tuning: best trial %s, %s=%s; its model continues", best.job_name, tuning.objective, tuning.best.objective)
    return TrainResult(
        job_name=best.job_name, model_uri=model_uri, metrics=dict(best.metrics), model_dir=best.model_dir,
        duration_s=round(tuning.duration_s, 3), status=best.status, tuning=summary,
    )


def training_channels_of(request: dict[str, Any]) -> dict[str, str]:
    """The channel name → S3 URI map of a ``CreateTrainingJob`` request."""
    return {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]}


def _tune_on_sagemaker(
    config: PipelineConfig, fs: Any, sagemaker: Any, request: dict[str, Any], *, run_id: str, work_dir: Path, model_uri: str,
) -> TrainResult:
    """A SageMaker tuning job over the same space; the best training job's model becomes the run's model."""
    from tasks.training.tuning_jobs import build_tuning_job_request_from_config, run_sagemaker_tuning_job, tuning_job_name

    tuning_request = build_tuning_job_request_from_config(
        config.tune,
        tuning_job_name=tuning_job_name(config.name, run_id),
        training_request=request,
        default_objective=default_objective(config.task),
    )
    tuned = run_sagemaker_tuning_job(sagemaker, tuning_request)
    desc = sagemaker.describe_training_job(TrainingJobName=tuned.best_training_job)
    result = _fetch_trained(fs, tuned.model_uri, model_uri, work_dir, run_id=run_id, job_name=tuned.best_training_job, desc=desc)
    result.tuning = {
        "backend": "sagemaker",
        "tuning_job_name": tuned.tuning_job_name,
        "objective": tuned.objective_metric,
        "best_trial": tuned.best_training_job,
        "best_value": tuned.objective_value,
        "best_hyperparameters": tuned.tuned_hyperparameters,
        "trials": tuned.status_counters,
    }
    return result


def _train_on_dask(
    config: PipelineConfig, target: Target, client: "Client | None", *, job_name: str, features_uri: str,
    model_uri: str, work_dir: Path, environment: dict[str, str],
) -> TrainResult:
    """``xgboost.dask`` on the preprocess cluster (given), or on the cluster the config names or starts."""
    from tasks.training.dask_train import train_on_dask

    def run(dask_client: "Client") -> TrainResult:
        log.info("training %s with xgboost.dask on %d workers", job_name, len(dask_client.scheduler_info()["workers"]))
        return train_on_dask(
            dask_client, features_uri=features_uri, storage_options=target.storage_options(),
            hyperparameters=dict(config.train.hyperparameters), job_name=job_name, output_model_uri=model_uri,
            fs=target.filesystem(), environment=environment, work_dir=work_dir,
        )

    if client is not None:
        return run(client)
    from tasks.compute import dask_client

    with dask_client(config.dask.scheduler_address, config.dask.n_workers, config.dask.memory_limit,
                     device=config.dask.device) as started:
        return run(started)
