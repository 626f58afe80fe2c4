"""SageMaker training jobs: the ``CreateTrainingJob`` request, script mode, and running or recording a job.

The request builder is a pure function with defaults for everything a caller need not
decide, so tests and callers state only what they care about. The API calls take the
client (or filesystem) they use as an argument; nothing here builds one.

Sections: the request (managed spot, checkpoints, KMS, VPC, isolation, several
instances); script mode (a user's own script run by a SageMaker framework image); a
local run recorded in the endpoint's SageMaker API; waiting for a managed job.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import json
import logging
import os
import re
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from tasks.aws.errors import is_service_missing
from tasks.errors import ConfigError, StageError
from tasks.training import container
from tasks.training.local_job import TrainResult, log_container_line

if TYPE_CHECKING:
    from tasks.config import PipelineConfig

try:  # Prefect's termination and cancellation signals (BaseException, raised into the waiting task)
    from prefect.exceptions import ExternalSignal as _ExternalSignal
except ImportError:  # pragma: no cover - the training image has no Prefect; nothing raises it there
    class _ExternalSignal(BaseException):  # type: ignore[no-redef]
        pass


logger = logging.getLogger("updraft.train")

#: Metrics the entry point may print (its defaults: auc, mlogloss, rmse; the rest by ``eval_metric``).
KNOWN_METRICS: tuple[str, ...] = (
    "auc", "aucpr", "logloss", "error", "mlogloss", "merror", "rmse", "mae", "mape", "rmsle",
    "ndcg@10", "map@10", "roc_auc", "precision_at_k",
)
DEFAULT_METRIC_DEFINITIONS: tuple[dict[str, str], ...] = tuple(
    {"Name": f"{data}:{metric}", "Regex": container.metric_regex(f"{data}:{metric}")}
    for data in (container.CHANNEL_TRAIN, container.CHANNEL_VALIDATION)
    for metric in KNOWN_METRICS
)
TERMINAL_STATUSES = ("Completed", "Failed", "Stopped")
TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"
LOCAL_TAG = {"Key": "updraft:executed-by", "Value": "local-process"}
#: Where SageMaker syncs ``CheckpointConfig.S3Uri`` inside the container (the contract's checkpoints folder).
CHECKPOINT_LOCAL_PATH = f"{container.DEFAULT_BASE_DIR}/{container.CHECKPOINTS_DIR}"
#: Channels each instance of a multi-instance job gets whole; every other channel is split by S3 key.
REPLICATED_CHANNELS: tuple[str, ...] = (container.CHANNEL_VALIDATION, container.CHANNEL_TRANSFORM)

_JOB_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_MAX_JOB_NAME = 63
_MAX_TAGS = 50


def training_job_name(pipeline: str, run_id: str, *, max_length: int = _MAX_JOB_NAME) -> str:
    """``<pipeline>-<run_id>`` made valid for SageMaker, shortening the pipeline part so the run id survives.

    ``max_length`` is 63 for training jobs; tuning jobs allow 32 (see ``tuning_jobs``).
    """
    def clean(text: str) -> str:
        return re.sub(r"-+", "-", re.sub(r"[^a-zA-Z0-9-]", "-", text)).strip("-")

    run = clean(run_id)[: max_length - 2].rstrip("-")
    head = clean(pipeline)[: max(0, max_length - len(run) - 1)].rstrip("-")
    name = f"{head}-{run}" if head and run else head or run
    if not name:
        raise ConfigError(f"cannot make a job name from {pipeline!r} and {run_id!r}")
    return name


# --- the request ----------------------------------------------------------------------------


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
    tags: Mapping[str, Any] | None = None,
    environment: Mapping[str, str] | None = None,
    spot: bool = False,
    max_wait_s: int | None = None,
    checkpoint_uri: str | None = None,
    kms_key_id: str | None = None,
    subnets: Sequence[str] = (),
    security_group_ids: Sequence[str] = (),
    network_isolation: bool = False,
    inter_container_encryption: bool = False,
    stringify: bool = True,
    shard_train: bool = True,
) -> dict[str, Any]:
    """A ``CreateTrainingJob`` request for a training image (File mode, S3 prefixes).

    ``channels`` maps channel names to ``s3://`` prefixes (a single object's key is a
    prefix too); ``output_uri`` is where SageMaker writes ``<job>/output/model.tar.gz``.
    With ``instance_count`` > 1 every channel but validation and transform is
    ``ShardedByS3Key`` unless ``shard_train`` is False (ranking: the entry point shares
    the fully replicated files out by query, so no query is split between instances):
    each instance trains on its share of the files (so the train
    prefix needs at least as many files as instances). Validation stays fully replicated;
    the entry point shares its rows out too, so every row is evaluated once and the
    metrics printed are the whole cluster's.

    ``spot`` asks for managed spot capacity: ``max_wait_s`` (default twice the runtime)
    bounds the wait for capacity plus the run, and checkpoints are always configured so
    an interrupted job resumes (``checkpoint_uri`` defaults to ``<output>/<job>/checkpoints/``).
    ``kms_key_id`` encrypts the model output and the instances' volumes. ``subnets`` and
    ``security_group_ids`` (both or neither) run the job inside the customer's VPC.
    ``stringify=False`` passes hyperparameter strings as given (script mode has encoded them already).
    """
    if not _JOB_NAME_RE.match(job_name):
        raise ConfigError(
            f"training job name {job_name!r} must be 1-63 letters, digits or '-', starting with a letter or digit"
        )
    if not channels:
        raise ConfigError("a training job needs at least one input channel")
    locations = {**channels, "output": output_uri, **({"checkpoint": checkpoint_uri} if checkpoint_uri else {})}
    for name, uri in locations.items():
        if not str(uri).startswith("s3://"):
            raise ConfigError(f"training job {name} location {uri!r} must be an s3:// URI")
    if instance_count < 1 or max_runtime_s < 1 or volume_size_gb < 1:
        raise ConfigError("instance_count, max_runtime_s and volume_size_gb must be positive")
    if max_wait_s and not spot:
        raise ConfigError("max_wait_s only applies to managed spot training: set train.spot: true or remove train.max_wait_s")
    wait_s = int(max_wait_s or 2 * max_runtime_s)
    if spot and wait_s < max_runtime_s:
        raise ConfigError(
            f"train.max_wait_s ({wait_s}) must be at least train.max_runtime_s ({max_runtime_s}): "
            "it counts the wait for spot capacity plus the run"
        )
    if bool(subnets) != bool(security_group_ids):
        raise ConfigError("aws.subnets and aws.security_group_ids go together: a job's VPC config needs both")
    if len(subnets) > 16 or len(security_group_ids) > 5:
        raise ConfigError("SageMaker accepts at most 16 subnets and 5 security groups for a training job")
    hps = container.stringify_hyperparameters(hyperparameters or {}) if stringify else {
        str(k): str(v) for k, v in (hyperparameters or {}).items()
    }
    _check_hyperparameters(hps)

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
            _channel(name, uri, sharded=instance_count > 1 and shard_train) for name, uri in channels.items()
        ],
        "OutputDataConfig": {"S3OutputPath": output_uri},
        "ResourceConfig": {
            "InstanceType": instance_type,
            "InstanceCount": instance_count,
            "VolumeSizeInGB": volume_size_gb,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": int(max_runtime_s)},
    }
    if kms_key_id:
        request["OutputDataConfig"]["KmsKeyId"] = kms_key_id
        request["ResourceConfig"]["VolumeKmsKeyId"] = kms_key_id
    if spot:
        request["EnableManagedSpotTraining"] = True
        request["StoppingCondition"]["MaxWaitTimeInSeconds"] = wait_s
        checkpoint_uri = checkpoint_uri or default_checkpoint_uri(output_uri, job_name)
    if checkpoint_uri:
        request["CheckpointConfig"] = {"S3Uri": checkpoint_uri, "LocalPath": CHECKPOINT_LOCAL_PATH}
    if subnets:
        request["VpcConfig"] = {"Subnets": list(subnets), "SecurityGroupIds": list(security_group_ids)}
    if network_isolation:
        request["EnableNetworkIsolation"] = True
    if inter_container_encryption:
        request["EnableInterContainerTrafficEncryption"] = True
    if environment:
        request["Environment"] = {str(k): str(v) for k, v in environment.items()}
    if tags:
        if len(tags) > _MAX_TAGS:
            raise ConfigError(f"SageMaker accepts at most {_MAX_TAGS} tags on a job, got {len(tags)}")
        request["Tags"] = [{"Key": str(k), "Value": str(v)} for k, v in tags.items()]
    return request


def _channel(name: str, uri: str, *, sharded: bool) -> dict[str, Any]:
    distribution = "ShardedByS3Key" if sharded and name not in REPLICATED_CHANNELS else "FullyReplicated"
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": distribution}
        },
        "ContentType": container.CHANNEL_CONTENT_TYPES.get(name, "application/octet-stream"),
        "CompressionType": "None",
    }


def _check_hyperparameters(hps: Mapping[str, str]) -> None:
    if len(hps) > 100:
        raise ConfigError(f"SageMaker accepts at most 100 hyperparameters, got {len(hps)}")
    for name, value in hps.items():
        if len(name) > 256 or len(value) > 2500:
            raise ConfigError(f"hyperparameter {name[:40]!r} is too long for SageMaker (names 256, values 2500 characters)")


def default_checkpoint_uri(output_uri: str, job_name: str) -> str:
    """``<output>/<job>/checkpoints/``: next to the job's model, so one run's files stay together."""
    return f"{output_uri.rstrip('/')}/{job_name}/checkpoints/"


def training_job_options(config: "PipelineConfig") -> dict[str, Any]:
    """The keyword arguments of :func:`build_training_job_request` that come from ``train`` and ``aws``.

    Callers add what is per run (name, image, channels, output, hyperparameters,
    environment) and merge their own tags with the config's ``train.tags``.
    """
    train, aws = config.train, config.aws
    return {
        "instance_type": train.instance_type,
        "instance_count": train.instance_count,
        "max_runtime_s": train.max_runtime_s,
        "volume_size_gb": train.volume_size_gb,
        "spot": train.spot,
        "max_wait_s": train.effective_max_wait_s if train.spot else None,
        "kms_key_id": aws.kms_key_id,
        "subnets": tuple(aws.subnets),
        "security_group_ids": tuple(aws.security_group_ids),
        "network_isolation": train.network_isolation,
        "tags": dict(train.tags),
        # A query's rows must stay on one instance; the entry point shards ranking data by query.
        "shard_train": config.task != "ranking",
    }


def model_artifact_uri(request: Mapping[str, Any]) -> str:
    """Where SageMaker puts a job's ``model.tar.gz``: ``<S3OutputPath>/<job name>/output/model.tar.gz``."""
    base = request["OutputDataConfig"]["S3OutputPath"].rstrip("/")
    return f"{base}/{request['TrainingJobName']}/output/model.tar.gz"


# --- script mode: a user's own script in a SageMaker framework image ------------------------------

SOURCE_TARBALL = "sourcedir.tar.gz"
#: The hyperparameters the framework images' training toolkit reads to find and run the script.
SM_PROGRAM = "sagemaker_program"
SM_SUBMIT_DIRECTORY = "sagemaker_submit_directory"
SM_REGION = "sagemaker_region"
SM_CONTAINER_LOG_LEVEL = "sagemaker_container_log_level"
#: With network isolation the container cannot fetch from S3: the source comes in as this channel.
CODE_CHANNEL = "code"
CODE_CHANNEL_TARBALL = f"{container.DEFAULT_BASE_DIR}/{container.INPUT_DATA_DIR}/{CODE_CHANNEL}/{SOURCE_TARBALL}"
_SKIPPED_NAMES = {"__pycache__", ".git", ".hg", ".svn", ".ipynb_checkpoints", ".venv", "venv", ".mypy_cache", ".pytest_cache"}


@dataclass(frozen=True)
class ScriptPackage:
    """A user's script packed for a framework image: the tarball, where it goes, and what the job passes.

    ``hyperparameters`` are JSON-encoded strings, as the SageMaker training toolkit reads
    them (it ``json.loads`` each value); pass them to the request with ``stringify=False``.
    ``channels`` holds the extra ``code`` channel a network-isolated job needs (else empty).
    """

    tarball: Path
    s3_uri: str
    program: str
    hyperparameters: dict[str, str]
    channels: dict[str, str] = field(default_factory=dict)


def pack_source_dir(entry_point: str | Path, source_dir: str | Path | None, tar_path: str | Path) -> tuple[Path, str]:
    """Pack ``source_dir`` (default: the entry point's folder) into ``tar_path`` with its files at the archive root.

    Returns the tarball and the entry point's path inside it (``sagemaker_program``).
    Caches and VCS folders are left out; members are sorted with fixed owners and times so
    the same source gives the same bytes.
    """
    entry = Path(entry_point).expanduser()
    if source_dir is None:
        script = entry.resolve()
        root = script.parent
    else:
        root = Path(source_dir).expanduser().resolve()
        if not root.is_dir():
            raise ConfigError(f"train.source_dir {root} is not a folder")
        script = entry.resolve() if entry.is_absolute() else (root / entry).resolve()
    if not script.is_file():
        raise ConfigError(f"train.entry_point {entry} does not exist (looked for {script})")
    try:
        program = script.relative_to(root).as_posix()
    except ValueError:
        raise ConfigError(f"train.entry_point {script} must be inside train.source_dir {root}") from None

    tar_path = Path(tar_path)
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    files = sorted(_source_files(root, exclude=tar_path.resolve()))
    # gzip's own header carries a time too: fix it, so the same source gives the same bytes.
    with (
        open(tar_path, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in files:
            info = tar.gettarinfo(str(path), arcname=path.relative_to(root).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
    logger.info("packed %d files of %s into %s (%.1f KiB)", len(files), root, tar_path, tar_path.stat().st_size / 1024)
    return tar_path, program


def _source_files(root: Path, *, exclude: Path) -> list[Path]:
    """Regular files under ``root``, pruning caches, VCS folders and virtual environments as the walk goes."""
    found: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIPPED_NAMES and not d.endswith(".egg-info")]
        for name in names:
            path = Path(folder) / name
            if path.suffix in (".pyc", ".pyo") or path.is_symlink() or path.resolve() == exclude:
                continue
            found.append(path)
    return found


def script_mode_hyperparameters(
    *,
    program: str,
    submit_directory: str,
    region: str,
    hyperparameters: Mapping[str, Any] | None = None,
    log_level: int = logging.INFO,
) -> dict[str, str]:
    """The user's hyperparameters plus the toolkit's four, every value JSON-encoded as the toolkit expects.

    The toolkit decodes each value with ``json.loads``: ``"adam"`` must travel as
    ``'"adam"'`` and ``0.1`` as ``'0.1'``. A user hyperparameter may not take a
    ``sagemaker_`` name: the toolkit reserves them.
    """
    user = dict(hyperparameters or {})
    reserved = sorted(k for k in user if str(k).startswith("sagemaker_"))
    if reserved:
        raise ConfigError(f"hyperparameter {reserved[0]!r} is reserved by the SageMaker training toolkit: rename it")
    merged: dict[str, Any] = {
        **user,
        SM_PROGRAM: program,
        SM_SUBMIT_DIRECTORY: submit_directory,
        SM_REGION: region,
        SM_CONTAINER_LOG_LEVEL: int(log_level),
    }
    encoded = {str(k): json.dumps(v) for k, v in merged.items()}
    _check_hyperparameters(encoded)
    return encoded


def package_script(
    *,
    entry_point: str | Path,
    source_dir: str | Path | None,
    job_name: str,
    code_prefix: str,
    region: str,
    work_dir: str | Path,
    hyperparameters: Mapping[str, Any] | None = None,
    network_isolation: bool = False,
) -> ScriptPackage:
    """Pack the script's folder and work out where it goes and what the job tells the toolkit.

    The tarball's place is ``<code_prefix><job>/source/sourcedir.tar.gz`` (the SageMaker
    SDK's layout). With network isolation the container cannot read S3 itself, so the
    tarball comes in as the ``code`` channel and ``sagemaker_submit_directory`` points at
    its local copy, as the SageMaker SDK does.
    """
    if not code_prefix.startswith("s3://"):
        raise ConfigError(f"the code location {code_prefix!r} must be an s3:// URI")
    tar_path, program = pack_source_dir(entry_point, source_dir, Path(work_dir) / SOURCE_TARBALL)
    s3_uri = f"{code_prefix.rstrip('/')}/{job_name}/source/{SOURCE_TARBALL}"
    submit = CODE_CHANNEL_TARBALL if network_isolation else s3_uri
    hps = script_mode_hyperparameters(program=program, submit_directory=submit, region=region, hyperparameters=hyperparameters)
    return ScriptPackage(
        tarball=tar_path,
        s3_uri=s3_uri,
        program=program,
        hyperparameters=hps,
        channels={CODE_CHANNEL: s3_uri} if network_isolation else {},
    )


def upload_script_package(fs: Any, package: ScriptPackage) -> str:
    """Put the tarball where the job will look for it (``fs``: an fsspec filesystem); returns its URI."""
    fs.put_file(str(package.tarball), package.s3_uri)
    logger.info("uploaded %s to %s", package.tarball.name, package.s3_uri)
    return package.s3_uri


# --- a local run recorded in the endpoint's SageMaker API -----------------------------------------


def recorded_job_fields(request: Mapping[str, Any], result: TrainResult, *, ended: dt.datetime | None = None) -> dict[str, Any]:
    """What ``describe_training_job`` should say of a local run, beyond what the create call carries.

    moto keeps the create call's fields but answers fixed timings, a placeholder metric
    and its own metric definitions; an endpoint that lets us amend the job (the embedded
    one) takes these: timings from the run, the final metrics, the request's own metric
    definitions and environment, and the model's place.
    """
    end = ended or dt.datetime.now(dt.UTC)
    start = end - dt.timedelta(seconds=float(result.duration_s))
    fields: dict[str, Any] = {
        "TrainingJobStatus": result.status,
        "SecondaryStatus": result.status,
        "TrainingStartTime": start,
        "TrainingEndTime": end,
        "TrainingTimeInSeconds": round(result.duration_s),
        "BillableTimeInSeconds": 0,
        "FinalMetricDataList": [
            {"MetricName": name, "Value": float(value), "Timestamp": end} for name, value in result.metrics.items()
        ],
        "ModelArtifacts": {"S3ModelArtifacts": model_artifact_uri(request)},
        "AlgorithmSpecification": dict(request["AlgorithmSpecification"]),
    }
    if request.get("Environment"):
        fields["Environment"] = dict(request["Environment"])
    return fields


def record_local_training_job(
    sm_client: Any,
    request: Mapping[str, Any],
    result: TrainResult,
    *,
    amend: Callable[[str, dict[str, Any]], bool] | None = None,
) -> str | None:
    """Create the job a local run stands for in the endpoint's SageMaker API, so ``describe_training_job`` finds it.

    The moto endpoint marks it Completed at once. The final metrics and model location are
    added as tags, which every endpoint keeps. ``amend`` (given by a target that can, e.g.
    the embedded endpoint) then writes :func:`recorded_job_fields` into the recorded job
    so its timings and ``FinalMetricDataList`` are the run's own. An endpoint without
    SageMaker (LocalStack's free edition answers 501) only earns a warning: the run itself
    succeeded. Returns the job's ARN, or None where it could not be recorded.
    """
    if request["TrainingJobName"] != result.job_name:
        raise ValueError(f"request names job {request['TrainingJobName']!r} but the result is for {result.job_name!r}")
    tags = [t for t in request.get("Tags", []) if not t["Key"].startswith("updraft:metric:")]
    tags.append(dict(LOCAL_TAG))
    tags.append({"Key": "updraft:model-uri", "Value": result.model_uri[:256]})
    tags.append({"Key": "updraft:duration-s", "Value": format(result.duration_s, ".6g")})
    for name, value in list(result.metrics.items())[: max(0, _MAX_TAGS - len(tags))]:
        tags.append({"Key": f"updraft:metric:{name}"[:128], "Value": format(value, ".8g")})
    try:
        response = sm_client.create_training_job(**{**request, "Tags": tags[:_MAX_TAGS]})
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
    if amend is not None and not amend(result.job_name, recorded_job_fields(request, result)):
        logger.info("training job %s: this endpoint keeps its own timings and metrics; the run's are in its tags", result.job_name)
    logger.info("training job %s recorded as %s", result.job_name, arn)
    return arn


# --- waiting for a managed job ----------------------------------------------------------------


class _LogTailer:
    """Forwards a job's CloudWatch log events to our logger as they appear (every host's stream, restarts included)."""

    def __init__(self, logs_client: Any, job_name: str) -> None:
        self._logs = logs_client
        self._job = job_name
        self._tokens: dict[str, str] = {}
        self._enabled = True

    def poll(self) -> None:
        if not self._enabled:
            return
        try:
            kwargs: dict[str, Any] = {"logGroupName": TRAINING_LOG_GROUP, "logStreamNamePrefix": f"{self._job}/"}
            streams: list[dict[str, Any]] = []
            while True:
                page = self._logs.describe_log_streams(**kwargs)
                streams.extend(page.get("logStreams", []))
                if not page.get("nextToken"):
                    break
                kwargs["nextToken"] = page["nextToken"]
            for stream in sorted(streams, key=lambda s: s["logStreamName"]):
                self._read_stream(stream["logStreamName"])
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "ResourceNotFoundException":  # the job has not logged yet
                return
            logger.warning("cannot follow the logs of training job %s (%s); status only from now on", self._job, code)
            self._enabled = False

    def _read_stream(self, name: str) -> None:
        while True:
            kwargs: dict[str, Any] = {"logGroupName": TRAINING_LOG_GROUP, "logStreamName": name, "startFromHead": True}
            if name in self._tokens:
                kwargs["nextToken"] = self._tokens[name]
            page = self._logs.get_log_events(**kwargs)
            for event in page.get("events", []):
                log_container_line(self._job, event.get("message", "").rstrip())
            token = page.get("nextForwardToken")
            if not page.get("events") or not token or token == self._tokens.get(name):
                if token:
                    self._tokens[name] = token
                return
            self._tokens[name] = token


#: Secondary statuses that end a job for a reason the user fixes with a setting.
_STOP_REASONS = {
    "MaxRuntimeExceeded": "it ran past train.max_runtime_s ({max_runtime}); raise it or train for fewer rounds",
    "MaxWaitTimeExceeded": (
        "waiting for spot capacity plus the run took longer than train.max_wait_s ({max_wait}); "
        "raise it, or train on demand (train.spot: false)"
    ),
}
_INTERRUPTED = "Interrupted"
_RESUMING = ("Restarting", "Starting", "Downloading", "Training")


def run_sagemaker_training_job(
    sm_client: Any,
    request: Mapping[str, Any],
    logs_client: Any = None,
    *,
    poll_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Create a managed training job and wait for it (see :func:`wait_for_training_job`).

    The job's name is the run's, so a job of that name was started by an earlier attempt
    of this run (resumed with ``--run-id``, or a retried flow run): one still running or
    completed is waited for instead of failing on the name; one that failed or was stopped
    cannot be repeated under it. When the wait itself is cut short (a Prefect timeout,
    Ctrl-C, the flow run cancelled) the job is stopped, so nothing keeps billing for a
    model no one will collect.
    """
    name = request["TrainingJobName"]
    try:
        sm_client.create_training_job(**request)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") != "ResourceInUse":
            raise StageError(
                f"SageMaker refused training job {name}: {error.get('Code', 'error')}: {error.get('Message', exc)}"
            ) from None
        existing_job_to_wait_for("training job", name, sm_client.describe_training_job(TrainingJobName=name)["TrainingJobStatus"])
    else:
        logger.info(
            "training job %s created: %d x %s%s",
            name,
            request["ResourceConfig"]["InstanceCount"],
            request["ResourceConfig"]["InstanceType"],
            ", managed spot" if request.get("EnableManagedSpotTraining") else "",
        )
    with stopped_if_abandoned(f"training job {name}", lambda: sm_client.stop_training_job(TrainingJobName=name)):
        return wait_for_training_job(sm_client, name, logs_client, poll_s=poll_s, sleep=sleep)


#: What ends a wait without the job ending: a Prefect timeout, Ctrl-C, the process told to
#: exit, Prefect's termination and cancellation signals.
INTERRUPTIONS: tuple[type[BaseException], ...] = (TimeoutError, KeyboardInterrupt, SystemExit, _ExternalSignal)


@contextlib.contextmanager
def stopped_if_abandoned(what: str, stop: Callable[[], Any]) -> Iterator[None]:
    """Stop a SageMaker job (best effort) when the wait for it is interrupted, then let the
    interruption go on: a job no one waits for would bill for a result no one collects."""
    try:
        yield
    except INTERRUPTIONS as why:
        try:
            stop()
            logger.warning("stopped %s: the wait for it ended (%s)", what, type(why).__name__)
        except Exception as exc:  # the interruption matters more than this failure
            logger.error("could not stop %s after the wait ended (%s): %s; stop it by hand", what, type(why).__name__, exc)
        raise


def existing_job_to_wait_for(kind: str, name: str, status: str) -> None:
    """A job named for this run exists already (an earlier attempt started it): fine to wait for
    while it runs or once it completed; one that failed or stopped cannot be repeated under its name."""
    if status not in ("InProgress", "Stopping", "Completed"):
        raise StageError(
            f"{kind} {name}, started by an earlier attempt of this run, is {status} and SageMaker "
            "does not reuse job names: start a new run (without --run-id)"
        )
    logger.info("%s %s was started by an earlier attempt of this run (%s): waiting for it", kind, name, status)


def wait_for_training_job(
    sm_client: Any,
    name: str,
    logs_client: Any = None,
    *,
    poll_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Wait for a training job to end, logging each status transition and (given a logs client) its log lines.

    Every new secondary status is logged with SageMaker's message. A spot interruption
    (``Interrupted``) is not an end: SageMaker restarts the job when capacity returns and
    the entry point resumes from its checkpoints, so the wait carries on and says so.
    Returns the final ``describe_training_job`` response of a Completed job (logging the
    billable seconds of a spot job: the savings); a Failed job raises :class:`StageError`
    with SageMaker's ``FailureReason``, a Stopped one says why it stopped.
    """
    tailer = _LogTailer(logs_client, name) if logs_client is not None else None
    seen_transitions = 0
    last: tuple[str, str] | None = None
    interrupted = False
    while True:
        desc = sm_client.describe_training_job(TrainingJobName=name)
        status = desc["TrainingJobStatus"]
        secondary = desc.get("SecondaryStatus", "")
        transitions = desc.get("SecondaryStatusTransitions") or []
        current_logged = False
        for index in range(seen_transitions, len(transitions)):
            step, message = transitions[index].get("Status", ""), transitions[index].get("StatusMessage", "")
            # Only the newest transition, when it is the secondary status, is the job's current state.
            current = index == len(transitions) - 1 and step == secondary
            where = f"{status} / {step}" if current else step
            logger.info("training job %s: %s%s", name, where, f": {message}" if message else "")
            interrupted = _note_spot(name, step, interrupted, desc)
            current_logged = current_logged or current
        seen_transitions = max(seen_transitions, len(transitions))
        if (status, secondary) != last and not current_logged:
            logger.info("training job %s: %s / %s", name, status, secondary)
            interrupted = _note_spot(name, secondary, interrupted, desc)
        last = (status, secondary)
        if tailer is not None:
            tailer.poll()
        if status in TERMINAL_STATUSES:
            break
        sleep(poll_s)
    if status == "Failed":
        raise StageError(f"training job {name} failed: {desc.get('FailureReason') or 'SageMaker gave no reason'}")
    if status == "Stopped":
        stopping = desc.get("StoppingCondition", {})
        reason = _STOP_REASONS.get(secondary)
        why = (
            reason.format(
                max_runtime=f"{stopping.get('MaxRuntimeInSeconds', '?')} s",
                max_wait=f"{stopping.get('MaxWaitTimeInSeconds', '?')} s",
            )
            if reason
            else "someone stopped it (console, CLI or StopTrainingJob)"
        )
        raise StageError(f"training job {name} was stopped before it completed ({secondary or 'Stopped'}): {why}")
    _log_spot_savings(name, desc)
    return desc


def _note_spot(name: str, secondary: str, interrupted: bool, desc: Mapping[str, Any]) -> bool:
    """Say what a spot interruption means and when the job is back; returns whether it is still interrupted."""
    if secondary == _INTERRUPTED:
        if not interrupted:
            logger.warning(
                "training job %s: spot capacity was reclaimed; SageMaker restarts it when capacity returns "
                "(within MaxWaitTimeInSeconds=%s)",
                name,
                desc.get("StoppingCondition", {}).get("MaxWaitTimeInSeconds", "?"),
            )
        return True
    if interrupted and secondary in _RESUMING:
        checkpoints = desc.get("CheckpointConfig", {}).get("S3Uri")
        logger.info(
            "training job %s resumed after the spot interruption%s",
            name,
            f", from the checkpoints in {checkpoints}" if checkpoints else " (no checkpoints: it starts over)",
        )
        return False
    return interrupted


def _log_spot_savings(name: str, desc: Mapping[str, Any]) -> None:
    if not desc.get("EnableManagedSpotTraining"):
        return
    trained = desc.get("TrainingTimeInSeconds")
    billable = desc.get("BillableTimeInSeconds")
    if trained and billable is not None:
        logger.info(
            "training job %s: %d s of training billed as %d s on spot capacity (%.0f%% saved)",
            name, trained, billable, 100.0 * (1 - billable / trained),
        )
