"""Resuming a run: where stage results persist, the keys that find them again, each stage's Prefect options.

A stage that completes leaves its result in the project's bucket under
``stages.results_prefix`` (``s3://<bucket>/prefect/results/<dataset>/<run_id>/<stage>-<digest>``).
Rerunning the same run (``updraft run --run-id RUN``, or a failed flow run retried in
Prefect, whose run id is derived from the flow run) finds those results and skips the
stages that made them. The digest is a fingerprint of the config and of the stage's
inputs (its arguments and the S3 objects it reads, by ETag), so a changed config, new
raw files or a retrained model make the stages that depend on them run again.

The storage is Prefect's ``RemoteFileSystem`` over s3fs with the target's storage
options, so it honours ``AWS_ENDPOINT_URL`` (the embedded endpoint, LocalStack) like
every other S3 access in updraft; Prefect wants it saved as a block on its server, which
each run does (``updraft-results-<dataset>-<bucket digest>``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, TypeVar

from prefect.cache_policies import CachePolicy
from prefect.tasks import exponential_backoff

from tasks.config import STAGES, PipelineConfig
from tasks.errors import UpdraftError
from tasks.layout import Layout
from tasks.runs import new_run_id, run_dir

if TYPE_CHECKING:
    from prefect import Task
    from prefect.context import TaskRunContext
    from prefect.filesystems import RemoteFileSystem

    from tasks.aws.target import Target
    from tasks.training.local_job import TrainResult

log = logging.getLogger("updraft.resume")

T = TypeVar("T", bound="Task[Any, Any]")

#: Seconds each stage may run before Prefect fails it, unless ``stages.timeout_s`` says
#: otherwise. Generous: they catch a hung stage, not a slow one. Train's is derived from
#: ``train`` (see :func:`stage_timeout_s`), deploy's from the blue/green bake time.
DEFAULT_TIMEOUTS_S: dict[str, float] = {
    "ingest": 4 * 3600,
    "preprocess": 4 * 3600,
    "evaluate": 2 * 3600,
    "register": 15 * 60,
    "deploy": 3600,
    "report": 15 * 60,
}
#: What a train or deploy timeout adds to the longest the work itself may take: instance
#: start-up, image pulls, model download and upload.
SLACK_S = 1800

#: Prefect retries of the stages whose work is safe to repeat (each redoes or finishes
#: what a failed attempt left, and writes the same objects): the first retry after about
#: 10 s, the second after about 20 s, each give or take half. Train (a SageMaker job name
#: is used once), register (a second version) and deploy (a second model) are not retried.
RETRIES = 2
RETRY_DELAYS_S = exponential_backoff(backoff_factor=10)
RETRY_JITTER = 0.5

#: Which stages skip on a rerun of the same run. The report always renders again: it is
#: cheap, and the rerun's machine gets its own local copy.
RESUMABLE: tuple[str, ...] = ("ingest", "preprocess", "train", "evaluate", "register", "deploy")

#: Arguments that say where or how a stage runs, not what it computes: left out of the key.
_NOT_INPUTS = frozenset({"config", "target", "client", "model_dir", "summary"})


def retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry outages (S3 hiccups past botocore's retries, a lost worker), not problems only the user can fix."""
    try:
        state.result()
    except UpdraftError:
        return False
    except BaseException:
        return True
    return True


#: The ``@task`` options of a stage whose work is safe to repeat (ingest, preprocess,
#: evaluate, report): retries with backoff and jitter, never for a user error.
SAFE_TO_RETRY: dict[str, Any] = {
    "retries": RETRIES,
    "retry_delay_seconds": RETRY_DELAYS_S,
    "retry_jitter_factor": RETRY_JITTER,
    "retry_condition_fn": retry_unless_user_error,
}


# --------------------------------------------------------------------------------------
# Where results live


def results_uri(config: PipelineConfig) -> str:
    """``s3://<bucket>/<stages.results_prefix>``: every run's stage results, under ``<dataset>/<run_id>/``."""
    return f"s3://{config.bucket}/{config.stages.results_prefix}"


def results_block_name(config: PipelineConfig) -> str:
    """The name of the project's result storage block: one per project and bucket."""
    return f"updraft-results-{config.name}-{hashlib.sha256(config.bucket.encode()).hexdigest()[:8]}"


def result_storage(config: PipelineConfig, target: Target) -> RemoteFileSystem:
    """Prefect result storage in the project's bucket, reached the way the target reaches S3.

    Saved as a block on the Prefect server (Prefect keeps task result storage there, so a
    result can be read back from any process); saved again on every run, so it always
    carries this run's endpoint.
    """
    from prefect.filesystems import RemoteFileSystem

    storage = RemoteFileSystem(
        basepath=results_uri(config).rstrip("/"),
        settings={**target.storage_options(), "skip_instance_cache": True, "use_listings_cache": False},
    )
    storage.save(results_block_name(config), overwrite=True)
    return storage


def run_results_uri(config: PipelineConfig, run_id: str) -> str:
    """Where one run's stage results are: what to delete to make a rerun start from scratch."""
    return f"{results_uri(config)}{config.name}/{run_id}/"


# --------------------------------------------------------------------------------------
# Keys


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _file_digest(path: str | None) -> str | None:
    """A local file's (or folder's) content digest in place of its path: the path differs per machine."""
    if path is None or path.startswith("s3://"):
        return path
    local = Path(path)
    if local.is_file():
        files = {local.name: local}
    elif local.is_dir():
        files = {p.relative_to(local).as_posix(): p for p in sorted(local.rglob("*")) if p.is_file()}
    else:
        return f"missing:{local.name}"
    h = hashlib.sha256()
    for name, file in files.items():
        h.update(name.encode() + b"\0" + file.read_bytes())
    return h.hexdigest()


def config_fingerprint(config: PipelineConfig) -> str:
    """What the config says to compute, the same on every machine.

    Local paths (the contract, your training script) count by their content; where Dask
    runs (``dask``) and how Prefect runs the stages (``stages``) do not count at all.
    """
    data = config.to_dict()
    for key in ("dask", "stages"):
        data.pop(key, None)
    data["contract"] = _file_digest(config.contract)
    data["train"]["entry_point"] = _file_digest(config.train.entry_point)
    data["train"]["source_dir"] = _file_digest(config.train.source_dir)
    return _digest(data)


def _plain(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def _is_readable(key: str) -> bool:
    from tasks.ingest.sources import FORMATS

    name = key.rsplit("/", 1)[-1].lower()
    return any(name.endswith(suffix) for suffix in FORMATS)


def _listing(fs: Any, uri: str) -> list[tuple[str, str | None]]:
    """``(key, ETag)`` of the object at ``uri``, or of every object under it; ``(uri, None)`` when none."""
    path = fs._strip_protocol(uri).rstrip("/")
    try:
        found = fs.find(path, detail=True)
    except FileNotFoundError:
        found = {}
    if not found:
        return [(path, None)]
    return sorted((name, str(info.get("ETag") or info.get("etag") or info.get("size"))) for name, info in found.items())


def _stage_reads(stage: str, config: PipelineConfig, inputs: Mapping[str, Any]) -> list[str]:
    """The S3 objects (or prefixes) each stage reads, whose versions are part of its key."""
    layout = Layout.for_config(config)
    run_id = inputs["run_id"]
    return {
        "ingest": [config.source_uri],
        "preprocess": [layout.manifest()],
        "train": [inputs.get("features_uri") or layout.features(run_id)],
        "evaluate": [inputs.get("features_uri") or layout.features(run_id), layout.model(run_id)],
        "register": [inputs.get("model_uri") or layout.model(run_id)],
        "deploy": [inputs.get("model_uri") or layout.model(run_id)],
    }.get(stage, [])


@functools.lru_cache(maxsize=4)
def _filesystem(target: Target) -> Any:
    """One s3fs filesystem per target for the keys (no listing cache, so never stale): a new
    one costs a client set-up of a tenth of a second or more, per stage."""
    return target.filesystem()


def inputs_fingerprint(stage: str, config: PipelineConfig, target: Target, inputs: Mapping[str, Any]) -> str:
    """The stage's arguments (less where it runs) and the versions of the S3 objects it reads."""
    from tasks.ingest.watch import pipeline_prefixes

    arguments = {name: _plain(value) for name, value in inputs.items() if name not in _NOT_INPUTS}
    fs = _filesystem(target)
    versions: list[tuple[str, str | None]] = []
    for uri in _stage_reads(stage, config, inputs):
        listing = _listing(fs, uri)
        if stage == "ingest":  # what ingest reads: readable files, none of updraft's own outputs
            written = tuple(f"{config.bucket}/{prefix}" for prefix in pipeline_prefixes(Layout.for_config(config)))
            listing = [(key, tag) for key, tag in listing if _is_readable(key) and not key.startswith(written)]
        versions.extend(listing)
    return _digest({"arguments": arguments, "reads": versions})


def stage_key(stage: str, config: PipelineConfig, target: Target, inputs: Mapping[str, Any]) -> str:
    """``<dataset>/<run_id>/<stage>-<digest>``: one run's results side by side, readable in the bucket."""
    digest = _digest([config_fingerprint(config), inputs_fingerprint(stage, config, target, inputs)])
    return f"{config.name}/{inputs['run_id']}/{stage}-{digest[:20]}"


@dataclass
class StageCache(CachePolicy):
    """Prefect cache policy of a resumable stage: the key of :func:`stage_key`, named by the task."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        return stage_key(task_ctx.task.name, inputs["config"], inputs["target"], inputs)


# --------------------------------------------------------------------------------------
# Options


def stage_timeout_s(config: PipelineConfig, stage: str) -> float | None:
    """The stage's timeout: ``stages.timeout_s`` when it names the stage, else the default.

    Train's default covers the job's own limit (``max_runtime_s``, or ``max_wait_s`` with
    spot) times the waves of a hyperparameter search; deploy's the blue/green bake time.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    if stage in config.stages.timeout_s:
        value = config.stages.timeout_s[stage]
        return None if value is None else float(value)
    if stage == "train":
        train = config.train
        job_s = train.effective_max_wait_s if train.spot else train.max_runtime_s
        waves = math.ceil(config.tune.max_trials / config.tune.max_parallel) if config.tune.enabled else 1
        return float(job_s * waves + SLACK_S)
    if stage == "deploy":
        deploy = config.deploy
        steps = {"all_at_once": 1, "canary": 2, "linear": math.ceil(100 / deploy.linear_step_percent)}[deploy.strategy]
        return float(max(DEFAULT_TIMEOUTS_S["deploy"], deploy.wait_s * steps + SLACK_S))
    return DEFAULT_TIMEOUTS_S[stage]


class RunStages:
    """The stage tasks of one run, each with its timeout and, where resumable, its result storage and key.

    ``stages(ingest_stage)(config, target, run_id, client)`` runs ingest as this run
    should: skipped with its stored result when an earlier attempt of the run completed it.
    """

    def __init__(self, config: PipelineConfig, target: Target, *, resume: bool | None = None) -> None:
        self.config = config
        self.target = target
        self.resume = config.stages.resume if resume is None else resume
        self._storage: RemoteFileSystem | None = None

    def __call__(self, stage: T, *, refresh: bool = False) -> T:
        """``refresh``: run the stage even if a stored result exists (and store the new one)."""
        options: dict[str, Any] = {}
        # Prefect enforces a timeout with SIGALRM on the main thread only; elsewhere (the
        # ingest watcher runs flows in a thread) it could not interrupt the stage anyway.
        if threading.current_thread() is threading.main_thread():
            options["timeout_seconds"] = stage_timeout_s(self.config, stage.name)
        if self.resume and stage.name in RESUMABLE:
            if self._storage is None:
                self._storage = result_storage(self.config, self.target)
            options.update(cache_policy=StageCache(), persist_result=True, result_storage=self._storage)
            if refresh:
                options["refresh_cache"] = True
        return stage.with_options(**options) if options else stage


# --------------------------------------------------------------------------------------
# Run ids and what a resumed result needs on this machine


def flow_run_run_id() -> str:
    """The run id of the current Prefect flow run: the same on every retry of that flow run.

    ``<created, UTC>-<first 6 hex digits of the flow run id>``, in the format of
    :func:`tasks.runs.new_run_id`; a new id outside a flow run.
    """
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    flow_run = context.flow_run if context is not None else None
    if flow_run is None:
        return new_run_id()
    created = flow_run.created or flow_run.expected_start_time or datetime.now(timezone.utc)
    return created.astimezone(timezone.utc).strftime("%Y%m%d-%H%M%S-") + flow_run.id.hex[:6]


def with_local_model(trained: TrainResult, target: Target, run_id: str) -> TrainResult:
    """The train result with a model folder on this machine.

    A result resumed from S3 names the folder where the model was unpacked when it was
    trained, which another process may have cleaned up and another machine never had:
    then the model is fetched from ``model_uri`` into this run's folder, as a stage run on
    its own does.
    """
    folder = Path(trained.model_dir) if trained.model_dir else None
    if folder is not None and folder.is_dir() and any(folder.iterdir()):
        return trained
    from tasks.training.stage import fetch_model

    log.info("model folder of run %s is not on this machine: fetching %s", run_id, trained.model_uri)
    fetched = fetch_model(target.filesystem(), trained.model_uri, run_dir(run_id) / "train", run_id=run_id)
    return dataclasses.replace(trained, model_dir=str(fetched))


def local_endpoint_died(target: Target, endpoint_name: str, run_id: str) -> bool:
    """Whether this run's local endpoint was deployed and its server has died since.

    A stored deploy result then stands for nothing: resuming the run deploys again. An
    endpoint deleted on purpose, or since redeployed by another run, is left as it is.
    """
    if not target.is_local:
        return False
    from tasks.deploy.local_endpoints import list_local_endpoints

    for info in list_local_endpoints():
        if info.name == endpoint_name:
            return info.run_id == run_id and not info.alive
    return False


def resume_hint(config_path: str, run_id: str) -> str:
    """What the user runs to resume a failed run."""
    return f"updraft run --config {config_path} --run-id {run_id}"

