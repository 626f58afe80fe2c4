"""SageMaker training jobs: the ``CreateTrainingJob`` request, and running or recording a job.

The request builder is a pure function with defaults for everything a caller need not
decide, so tests and callers state only what they care about. The API calls take the
client they use as an argument; nothing here builds one.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Mapping, Sequence

from botocore.exceptions import ClientError

from tasks.aws.errors import is_service_missing
from tasks.errors import ConfigError, StageError
from tasks.training import container
from tasks.training.local_job import TrainResult, log_container_line

logger = logging.getLogger("updraft.train")

#: Metrics the entry point may print (its defaults: auc, mlogloss, rmse; the rest by ``eval_metric``).
KNOWN_METRICS: tuple[str, ...] = ("auc", "aucpr", "logloss", "error", "mlogloss", "merror", "rmse", "mae", "mape", "rmsle")
DEFAULT_METRIC_DEFINITIONS: tuple[dict[str, str], ...] = tuple(
    {"Name": f"{data}:{metric}", "Regex": container.metric_regex(f"{data}:{metric}")}
    for data in (container.CHANNEL_TRAIN, container.CHANNEL_VALIDATION)
    for metric in KNOWN_METRICS
)
TERMINAL_STATUSES = ("Completed", "Failed", "Stopped")
TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"
LOCAL_TAG = {"Key": "updraft:executed-by", "Value": "local-process"}

_JOB_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_MAX_JOB_NAME = 63


def training_job_name(pipeline: str, run_id: str) -> str:
    """``<pipeline>-<run_id>`` made valid for SageMaker, shortening the pipeline part so the run id survives."""
    def clean(text: str) -> str:
        return re.sub(r"-+", "-", re.sub(r"[^a-zA-Z0-9-]", "-", text)).strip("-")

    run = clean(run_id)[: _MAX_JOB_NAME - 2]
    head = clean(pipeline)[: max(0, _MAX_JOB_NAME - len(run) - 1)].rstrip("-")
    name = f"{head}-{run}" if head and run else head or run
    if not name:
        raise ConfigError(f"cannot make a training job name from {pipeline!r} and {run_id!r}")
    return name


def build_training_job_request(
    *,
    job_name: str,
    image_uri: str,
    role_arn: str,
    channels: Mapping[str, str],
    output_uri: str,
    hyperparameters: Mapping[str, Any] | None = None,
    instance_type: str = "ml.m5.xlarge",
    instance_count: int = 1,
    max_runtime_s: int = 3600,
    volume_size_gb: int = 30,
    metric_definitions: Sequence[Mapping[str, str]] = DEFAULT_METRIC_DEFINITIONS,
    tags: Mapping[str, str] | None = None,
    environment: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A ``CreateTrainingJob`` request for updraft's training image (File mode, S3 prefixes).

    ``channels`` maps channel names to ``s3://`` prefixes (a single object's key is a
    prefix too); ``output_uri`` is where SageMaker writes ``<job>/output/model.tar.gz``.
    """
    if not _JOB_NAME_RE.match(job_name):
        raise ConfigError(
            f"training job name {job_name!r} must be 1-63 letters, digits or '-', starting with a letter or digit"
        )
    if not channels:
        raise ConfigError("a training job needs at least one input channel")
    for name, uri in {**channels, "output": output_uri}.items():
        if not str(uri).startswith("s3://"):
            raise ConfigError(f"training job {name} location {uri!r} must be an s3:// URI")
    if instance_count < 1 or max_runtime_s < 1 or volume_size_gb < 1:
        raise ConfigError("instance_count, max_runtime_s and volume_size_gb must be positive")
    hps = container.stringify_hyperparameters(hyperparameters or {})
    if len(hps) > 100:
        raise ConfigError(f"SageMaker accepts at most 100 hyperparameters, got {len(hps)}")
    for name, value in hps.items():
        if len(name) > 256 or len(value) > 2500:
            raise ConfigError(f"hyperparameter {name[:40]!r} is too long for SageMaker (names 256, values 2500 characters)")

    request: dict[str, Any] = {
        "TrainingJobName": job_name,
        "AlgorithmSpecification": {
            "TrainingImage": image_uri,
            "TrainingInputMode": "File",
            "MetricDefinitions": [dict(d) for d in metric_definitions],
        },
        "RoleArn": role_arn,
        "HyperParameters": hps,
        "InputDataConfig": [
            {
                "ChannelName": name,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": uri,
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
                "ContentType": container.CHANNEL_CONTENT_TYPES.get(name, "application/octet-stream"),
                "CompressionType": "None",
            }
            for name, uri in channels.items()
        ],
        "OutputDataConfig": {"S3OutputPath": output_uri},
        "ResourceConfig": {
            "InstanceType": instance_type,
            "InstanceCount": instance_count,
            "VolumeSizeInGB": volume_size_gb,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": int(max_runtime_s)},
    }
    if environment:
        request["Environment"] = {str(k): str(v) for k, v in environment.items()}
    if tags:
        request["Tags"] = [{"Key": str(k), "Value": str(v)} for k, v in tags.items()]
    return request


def model_artifact_uri(request: Mapping[str, Any]) -> str:
    """Where SageMaker puts a job's ``model.tar.gz``: ``<S3OutputPath>/<job name>/output/model.tar.gz``."""
    base = request["OutputDataConfig"]["S3OutputPath"].rstrip("/")
    return f"{base}/{request['TrainingJobName']}/output/model.tar.gz"


def record_local_training_job(sm_client: Any, request: Mapping[str, Any], result: TrainResult) -> str | None:
    """Create the job a local run stands for in the endpoint's SageMaker API, so ``describe_training_job`` finds it.

    The moto endpoint marks it Completed at once. The final metrics and model location are
    added as tags (the API has no other place for them). An endpoint without SageMaker
    (LocalStack's free edition answers 501) only earns a warning: the run itself succeeded.
    Returns the job's ARN, or None where it could not be recorded.
    """
    if request["TrainingJobName"] != result.job_name:
        raise ValueError(f"request names job {request['TrainingJobName']!r} but the result is for {result.job_name!r}")
    tags = [t for t in request.get("Tags", []) if not t["Key"].startswith("updraft:metric:")]
    tags.append(dict(LOCAL_TAG))
    tags.append({"Key": "updraft:model-uri", "Value": result.model_uri[:256]})
    for name, value in list(result.metrics.items())[: 45 - len(tags)]:
        tags.append({"Key": f"updraft:metric:{name}"[:128], "Value": format(value, ".8g")})
    try:
        response = sm_client.create_training_job(**{**request, "Tags": tags})
    except ClientError as exc:
        if is_service_missing(exc):
            logger.warning(
                "training job %s ran locally but is not recorded: the AWS endpoint has no SageMaker API (%s)",
                result.job_name,
                exc.response.get("Error", {}).get("Message", "HTTP 501"),
            )
            return None
        raise
    arn = response["TrainingJobArn"]
    logger.info("training job %s recorded as %s", result.job_name, arn)
    return arn


class _LogTailer:
    """Forwards a job's CloudWatch log events to our logger as they appear."""

    def __init__(self, logs_client: Any, job_name: str) -> None:
        self._logs = logs_client
        self._job = job_name
        self._tokens: dict[str, str] = {}
        self._enabled = True

    def poll(self) -> None:
        if not self._enabled:
            return
        try:
            streams = self._logs.describe_log_streams(
                logGroupName=TRAINING_LOG_GROUP, logStreamNamePrefix=f"{self._job}/"
            ).get("logStreams", [])
            for stream in streams:
                name = stream["logStreamName"]
                kwargs: dict[str, Any] = {"logGroupName": TRAINING_LOG_GROUP, "logStreamName": name, "startFromHead": True}
                if name in self._tokens:
                    kwargs["nextToken"] = self._tokens[name]
                page = self._logs.get_log_events(**kwargs)
                for event in page.get("events", []):
                    log_container_line(self._job, event.get("message", "").rstrip())
                self._tokens[name] = page.get("nextForwardToken", self._tokens.get(name, ""))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "ResourceNotFoundException":  # the job has not logged yet
                return
            logger.warning("cannot follow the logs of training job %s (%s); status only from now on", self._job, code)
            self._enabled = False


def run_sagemaker_training_job(
    sm_client: Any, request: Mapping[str, Any], logs_client: Any = None, *, poll_s: float = 30.0
) -> dict[str, Any]:
    """Create a managed training job and wait for it, logging status changes (and its log, given a logs client).

    Returns the final ``describe_training_job`` response of a Completed job; a Failed or
    Stopped job raises :class:`StageError` with SageMaker's reason.
    """
    name = request["TrainingJobName"]
    try:
        sm_client.create_training_job(**request)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") == "ResourceInUse":
            raise StageError(f"a training job named {name} already exists; start a new run") from None
        raise StageError(
            f"SageMaker refused training job {name}: {error.get('Code', 'error')}: {error.get('Message', exc)}"
        ) from None
    logger.info("training job %s created", name)
    tailer = _LogTailer(logs_client, name) if logs_client is not None else None
    last: tuple[str, str] | None = None
    while True:
        desc = sm_client.describe_training_job(TrainingJobName=name)
        status = desc["TrainingJobStatus"]
        secondary = desc.get("SecondaryStatus", "")
        if (status, secondary) != last:
            transitions = desc.get("SecondaryStatusTransitions") or []
            message = transitions[-1].get("StatusMessage", "") if transitions else ""
            logger.info("training job %s: %s / %s%s", name, status, secondary, f": {message}" if message else "")
            last = (status, secondary)
        if tailer is not None:
            tailer.poll()
        if status in TERMINAL_STATUSES:
            break
        time.sleep(poll_s)
    if status == "Failed":
        raise StageError(f"training job {name} failed: {desc.get('FailureReason') or 'SageMaker gave no reason'}")
    if status == "Stopped":
        raise StageError(
            f"training job {name} was stopped ({secondary or 'Stopped'}) before it completed; "
            "raise train.max_runtime_s if it ran out of time"
        )
    return desc
