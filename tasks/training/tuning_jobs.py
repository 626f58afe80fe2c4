"""SageMaker hyperparameter tuning on ``aws``: the ``CreateHyperParameterTuningJob`` request and the wait for its best trial.

The tuning job's training-job definition is derived from a ``CreateTrainingJob`` request
built by :func:`tasks.training.jobs.build_training_job_request`, so every trial runs
exactly as a single training job would (image, channels, output, instances, spot and
checkpoints, VPC, KMS, isolation, environment). The searched hyperparameters are taken
out of the static ones; the objective is one of the job's metric definitions, maximised
or minimised as :func:`tasks.config.metric_is_maximized` says.

The same search space runs locally with Optuna elsewhere; this module is only the
SageMaker side. moto records tuning jobs but answers a fixed fake best trial, so the
waiting half is tested with botocore's Stubber.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from tasks.config import HyperparameterRange, metric_is_maximized
from tasks.errors import ConfigError, StageError
from tasks.training.jobs import existing_job_to_wait_for, stopped_if_abandoned, training_job_name

if TYPE_CHECKING:
    from tasks.config import TuneConfig

logger = logging.getLogger("updraft.train")

MAX_TUNING_JOB_NAME = 32
TERMINAL_STATUSES = ("Completed", "Failed", "Stopped")
STRATEGIES = {"bayesian": "Bayesian", "random": "Random"}
SCALING_TYPES = {"auto": "Auto", "linear": "Linear", "log": "Logarithmic", "reverse_log": "ReverseLogarithmic"}
#: SageMaker's limits: searched hyperparameters per job, values per categorical range.
MAX_RANGES = 30
MAX_CATEGORICAL_VALUES = 30

_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,31}$")
# CreateTrainingJob fields a trial takes over unchanged (HyperParameterTrainingJobDefinition has each).
_COPIED_FIELDS = (
    "RoleArn",
    "InputDataConfig",
    "OutputDataConfig",
    "ResourceConfig",
    "StoppingCondition",
    "VpcConfig",
    "EnableNetworkIsolation",
    "EnableInterContainerTrafficEncryption",
    "EnableManagedSpotTraining",
    "CheckpointConfig",
    "Environment",
)


def tuning_job_name(pipeline: str, run_id: str) -> str:
    """A tuning job name of at most 32 characters (SageMaker's limit: its trials append ``-NNN-xxxxxxxx``)."""
    return training_job_name(pipeline, run_id, max_length=MAX_TUNING_JOB_NAME)


def _number(value: float | None, *, integer: bool) -> str:
    if value is None:
        raise ConfigError("a continuous or integer range needs min and max")
    return str(int(value)) if integer else repr(float(value))


def build_parameter_ranges(ranges: Sequence[HyperparameterRange]) -> dict[str, list[dict[str, Any]]]:
    """SageMaker's ``ParameterRanges`` for the config's ranges: every bound and value a string."""
    if not ranges:
        raise ConfigError("a tuning job needs at least one range in tune.ranges")
    if len(ranges) > MAX_RANGES:
        raise ConfigError(f"SageMaker tunes at most {MAX_RANGES} hyperparameters at once; tune.ranges has {len(ranges)}")
    names = [r.name for r in ranges]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise ConfigError(f"tune.ranges names {duplicate!r} twice")
    out: dict[str, list[dict[str, Any]]] = {
        "ContinuousParameterRanges": [],
        "IntegerParameterRanges": [],
        "CategoricalParameterRanges": [],
    }
    for r in ranges:
        where = f"tune.ranges.{r.name}"
        if r.type == "categorical":
            if not r.values or len(r.values) > MAX_CATEGORICAL_VALUES:
                raise ConfigError(f"{where} needs 1 to {MAX_CATEGORICAL_VALUES} values, has {len(r.values)}")
            out["CategoricalParameterRanges"].append({"Name": r.name, "Values": [str(v) for v in r.values]})
            continue
        if r.type not in ("continuous", "integer"):
            raise ConfigError(f"{where}.type {r.type!r} must be continuous, integer or categorical")
        scaling = SCALING_TYPES.get(r.scaling)
        if scaling is None:
            raise ConfigError(f"{where}.scaling {r.scaling!r} must be one of {', '.join(SCALING_TYPES)}")
        if r.type == "integer" and scaling == "ReverseLogarithmic":
            raise ConfigError(f"{where}: reverse_log scaling is for continuous ranges within [0, 1); use log or linear")
        if r.min is None or r.max is None or not r.min < r.max:
            raise ConfigError(f"{where} needs min < max, got {r.min} and {r.max}")
        key = "IntegerParameterRanges" if r.type == "integer" else "ContinuousParameterRanges"
        integer = r.type == "integer"
        out[key].append(
            {"Name": r.name, "MinValue": _number(r.min, integer=integer), "MaxValue": _number(r.max, integer=integer), "ScalingType": scaling}
        )
    return {key: value for key, value in out.items() if value}


def training_job_definition(training_request: Mapping[str, Any], tuned: Sequence[str]) -> dict[str, Any]:
    """The tuning job's ``TrainingJobDefinition`` from a ``CreateTrainingJob`` request.

    Static hyperparameters are the request's minus the ``tuned`` names; the rest is copied
    as is, so trials run like the single job would. All trials get the same checkpoint
    location; updraft's entry point ignores a checkpoint written for other settings
    (``images/training/checkpoints.py``), so a trial never resumes another's model, at
    worst an interrupted trial starts again from round 0.
    """
    spec = training_request["AlgorithmSpecification"]
    definition: dict[str, Any] = {
        "AlgorithmSpecification": {
            "TrainingImage": spec["TrainingImage"],
            "TrainingInputMode": spec.get("TrainingInputMode", "File"),
            "MetricDefinitions": [dict(d) for d in spec.get("MetricDefinitions", [])],
        },
        "StaticHyperParameters": {
            k: v for k, v in (training_request.get("HyperParameters") or {}).items() if k not in set(tuned)
        },
    }
    for key in _COPIED_FIELDS:
        if key in training_request:
            definition[key] = training_request[key]
    return definition


def build_tuning_job_request(
    *,
    tuning_job_name: str,
    training_request: Mapping[str, Any],
    ranges: Sequence[HyperparameterRange],
    objective: str,
    max_trials: int = 10,
    max_parallel: int = 2,
    strategy: str = "bayesian",
    early_stopping: bool = False,
    tags: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``CreateHyperParameterTuningJob`` request searching ``ranges`` for the best ``objective``.

    ``objective`` must be one of the training request's metric definitions (what
    SageMaker reads from the trials' logs); maximised or minimised by the metric's name.
    ``max_parallel`` is capped at ``max_trials``. Tags default to the training request's.
    """
    if not _NAME_RE.match(tuning_job_name):
        raise ConfigError(
            f"tuning job name {tuning_job_name!r} must be 1-32 letters, digits or '-', starting with a letter or digit"
        )
    if max_trials < 1 or max_parallel < 1:
        raise ConfigError("tune.max_trials and tune.max_parallel must be at least 1")
    if strategy not in STRATEGIES:
        raise ConfigError(f"tune.strategy {strategy!r} must be one of {', '.join(STRATEGIES)}")
    defined = [d["Name"] for d in training_request["AlgorithmSpecification"].get("MetricDefinitions", [])]
    if objective not in defined:
        raise ConfigError(
            f"tune.objective {objective!r} is not a metric the training job reports; "
            f"choose one of {', '.join(defined) or '(none: the job has no metric definitions)'}"
        )
    parameter_ranges = build_parameter_ranges(ranges)
    config: dict[str, Any] = {
        "Strategy": STRATEGIES[strategy],
        "HyperParameterTuningJobObjective": {
            "Type": "Maximize" if metric_is_maximized(objective) else "Minimize",
            "MetricName": objective,
        },
        "ResourceLimits": {
            "MaxNumberOfTrainingJobs": int(max_trials),
            "MaxParallelTrainingJobs": int(min(max_parallel, max_trials)),
        },
        "ParameterRanges": parameter_ranges,
        "TrainingJobEarlyStoppingType": "Auto" if early_stopping else "Off",
    }
    request: dict[str, Any] = {
        "HyperParameterTuningJobName": tuning_job_name,
        "HyperParameterTuningJobConfig": config,
        "TrainingJobDefinition": training_job_definition(training_request, [r.name for r in ranges]),
    }
    if tags is not None:
        request["Tags"] = [{"Key": str(k), "Value": str(v)} for k, v in tags.items()]
    elif training_request.get("Tags"):
        request["Tags"] = [dict(t) for t in training_request["Tags"]]
    return request


def build_tuning_job_request_from_config(
    tune: TuneConfig, *, tuning_job_name: str, training_request: Mapping[str, Any], default_objective: str
) -> dict[str, Any]:
    """:func:`build_tuning_job_request` with ``tune``'s settings; ``default_objective`` when it names none (the task's main metric)."""
    return build_tuning_job_request(
        tuning_job_name=tuning_job_name,
        training_request=training_request,
        ranges=tune.ranges,
        objective=tune.objective or default_objective,
        max_trials=tune.max_trials,
        max_parallel=tune.max_parallel,
        strategy=tune.strategy,
    )


@dataclass
class TuningResult:
    """The tuning job's outcome: its best trial, that trial's objective value and model, and how the trials went."""

    tuning_job_name: str
    best_training_job: str
    objective_metric: str
    objective_value: float
    model_uri: str
    tuned_hyperparameters: dict[str, str] = field(default_factory=dict)
    status_counters: dict[str, int] = field(default_factory=dict)


def run_sagemaker_tuning_job(
    sm_client: Any,
    request: Mapping[str, Any],
    *,
    poll_s: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
) -> TuningResult:
    """Create the tuning job, wait for it with progress, and return its best trial and that trial's model.

    Progress is logged whenever the status, the trial counters or the best trial change.
    A Failed or Stopped tuning job raises :class:`StageError` with SageMaker's reason; so
    does a completed one without a single successful trial. As with training jobs, a job
    this run's earlier attempt started is waited for, and a wait cut short stops the job.
    """
    name = request["HyperParameterTuningJobName"]
    try:
        sm_client.create_hyper_parameter_tuning_job(**request)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") not in ("ResourceInUse", "ResourceInUseException"):
            raise StageError(
                f"SageMaker refused tuning job {name}: {error.get('Code', 'error')}: {error.get('Message', exc)}"
            ) from None
        existing = sm_client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
        existing_job_to_wait_for("tuning job", name, existing["HyperParameterTuningJobStatus"])
    else:
        limits = request["HyperParameterTuningJobConfig"]["ResourceLimits"]
        logger.info(
            "tuning job %s created: up to %d trials, %d at a time",
            name, limits["MaxNumberOfTrainingJobs"], limits["MaxParallelTrainingJobs"],
        )
    stop = lambda: sm_client.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)  # noqa: E731
    with stopped_if_abandoned(f"tuning job {name}", stop):
        desc = wait_for_tuning_job(sm_client, name, poll_s=poll_s, sleep=sleep)
    return _best_trial(sm_client, name, desc)


def wait_for_tuning_job(
    sm_client: Any, name: str, *, poll_s: float = 60.0, sleep: Callable[[float], None] = time.sleep
) -> dict[str, Any]:
    """Poll ``describe_hyper_parameter_tuning_job`` until the job ends; returns the last answer of a Completed job."""
    last: tuple[Any, ...] | None = None
    while True:
        desc = sm_client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
        status = desc["HyperParameterTuningJobStatus"]
        counters = desc.get("TrainingJobStatusCounters") or {}
        best = desc.get("BestTrainingJob") or {}
        metric = best.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
        state = (status, tuple(sorted(counters.items())), best.get("TrainingJobName"), metric.get("Value"))
        if state != last:
            logger.info(
                "tuning job %s: %s; trials %s%s",
                name,
                status,
                _counters_text(counters),
                f"; best so far {best['TrainingJobName']} {metric.get('MetricName', 'objective')}={metric.get('Value')}"
                if best.get("TrainingJobName") and metric
                else "",
            )
            last = state
        if status in TERMINAL_STATUSES:
            break
        sleep(poll_s)
    if status == "Failed":
        raise StageError(f"tuning job {name} failed: {desc.get('FailureReason') or 'SageMaker gave no reason'}")
    if status == "Stopped":
        raise StageError(
            f"tuning job {name} was stopped before it completed"
            + (f": {desc['FailureReason']}" if desc.get("FailureReason") else " (someone stopped it: console, CLI or StopHyperParameterTuningJob)")
        )
    return desc


def _counters_text(counters: Mapping[str, int]) -> str:
    shown = [f"{counters.get(k, 0)} {k.lower()}" for k in ("Completed", "InProgress")]
    shown += [f"{v} {k}" for k, v in counters.items() if k not in ("Completed", "InProgress") and v]
    return ", ".join(shown)


def _best_trial(sm_client: Any, name: str, desc: Mapping[str, Any]) -> TuningResult:
    best = desc.get("BestTrainingJob")
    counters = dict(desc.get("TrainingJobStatusCounters") or {})
    if not best or not best.get("TrainingJobName"):
        raise StageError(
            f"tuning job {name} completed without a successful trial (trials: {_counters_text(counters)}); "
            "look at its training jobs' FailureReason in the SageMaker console"
        )
    metric = best.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
    job = sm_client.describe_training_job(TrainingJobName=best["TrainingJobName"])
    model_uri = job.get("ModelArtifacts", {}).get("S3ModelArtifacts", "")
    if not model_uri:
        raise StageError(f"the best trial of tuning job {name}, {best['TrainingJobName']}, has no model artifact")
    logger.info(
        "tuning job %s: best trial %s with %s=%s, model %s",
        name, best["TrainingJobName"], metric.get("MetricName"), metric.get("Value"), model_uri,
    )
    return TuningResult(
        tuning_job_name=name,
        best_training_job=best["TrainingJobName"],
        objective_metric=str(metric.get("MetricName", "")),
        objective_value=float(metric.get("Value", float("nan"))),
        model_uri=model_uri,
        tuned_hyperparameters=dict(best.get("TunedHyperParameters") or {}),
        status_counters=counters,
    )
