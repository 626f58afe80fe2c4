"""Local hyperparameter tuning: the search space a SageMaker tuning job explores on ``aws``, explored by Optuna.

Each trial is a local training job of its own (:func:`run_local_training_job`, named
``<job>-t001``, ``<job>-t002``...), so a trial that fails is recorded as failed and the
search goes on; only a search where every trial fails is an error. ``max_parallel``
trials run at once (threads are enough: each trial is a subprocess), each with
``max(1, cpus // max_parallel)`` OpenMP threads so parallel trials do not fight for cores.

Trials are asked for in rounds of ``max_parallel`` and their results told to the sampler
in trial order once the round ends. That costs a little idle time when one trial of a
round is slower, and buys reproducibility: with the same seed and data, the same
hyperparameters are tried whatever order the processes happen to finish in.

Mapping of the config's ranges (SageMaker's ``ParameterRanges``) to Optuna:
``linear`` and ``auto`` sample uniformly, ``log`` on a log scale, ``reverse_log``
samples ``1 - x`` on a log scale (dense near 1, for values such as a momentum);
integers sample whole numbers; categorical picks among the strings. ``bayesian`` uses
Optuna's TPE sampler (after a few random trials), ``random`` its random sampler.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.config import HyperparameterRange, TuneConfig, metric_is_maximized
from tasks.errors import ConfigError, StageError, UpdraftError
from tasks.training.local_job import TrainResult, run_local_training_job
from tasks.training.script_mode import ScriptSpec

logger = logging.getLogger("updraft.train")

TRIALS_FILE = "trials.json"
COMPLETED = "Completed"
FAILED = "Failed"
_MAX_JOB_NAME = 63


@dataclass
class TrialRecord:
    """One trial of the search: what it tried and how it went."""

    number: int
    job_name: str
    hyperparameters: dict[str, Any]
    state: str
    objective: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    duration_s: float = 0.0
    error: str | None = None
    model_uri: str = ""
    result: TrainResult | None = None

    def row(self) -> dict[str, Any]:
        """The trial as a JSON-ready table row (for the report and ``trials.json``)."""
        return {
            "trial": self.number,
            "job_name": self.job_name,
            "state": self.state,
            "objective": self.objective,
            "hyperparameters": dict(self.hyperparameters),
            "metrics": dict(self.metrics),
            "duration_s": self.duration_s,
            "error": self.error,
            "model_uri": self.model_uri if self.state == COMPLETED else None,
        }


@dataclass
class TuningResult:
    """The search's outcome: the best trial (whose model continues down the pipeline) and every trial."""

    objective: str
    maximize: bool
    strategy: str
    best: TrialRecord
    trials: list[TrialRecord]
    base_hyperparameters: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def best_result(self) -> TrainResult:
        assert self.best.result is not None  # only completed trials can be best
        return self.best.result

    @property
    def best_hyperparameters(self) -> dict[str, Any]:
        """Everything the best trial trained with: the fixed hyperparameters plus the searched ones."""
        return {**self.base_hyperparameters, **self.best.hyperparameters}

    def table(self) -> list[dict[str, Any]]:
        return [trial.row() for trial in self.trials]


def trial_job_name(job_name: str, number: int) -> str:
    """``<job>-t001``: the trial's training job name, the job part shortened to stay within SageMaker's 63."""
    suffix = f"-t{number:03d}"
    return job_name[: _MAX_JOB_NAME - len(suffix)].rstrip("-") + suffix


def trial_model_uri(output_prefix: str, trial_job: str) -> str:
    """Where a trial's ``model.tar.gz`` goes, as for a tuning job's training jobs: ``<prefix>/<job>/output/model.tar.gz``."""
    return f"{output_prefix.rstrip('/')}/{trial_job}/output/model.tar.gz"


def make_sampler(strategy: str, seed: int, max_trials: int) -> Any:
    """Optuna's sampler for ``tune.strategy``: TPE for bayesian (random for its first trials), else random."""
    import optuna

    if strategy == "bayesian":
        startup = max(1, min(10, max_trials // 2))
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    if strategy == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"tune.strategy {strategy!r} must be bayesian or random")


def suggest_hyperparameters(trial: Any, ranges: Sequence[HyperparameterRange]) -> dict[str, Any]:
    """Sample one value per range from an Optuna trial, with the range's type and scaling."""
    values: dict[str, Any] = {}
    for spec in ranges:
        if spec.type == "categorical":
            if not spec.values:
                raise ConfigError(f"tune.ranges.{spec.name}: a categorical range needs values")
            values[spec.name] = trial.suggest_categorical(spec.name, list(spec.values))
            continue
        if spec.min is None or spec.max is None:
            raise ConfigError(f"tune.ranges.{spec.name}: a {spec.type} range needs min and max")
        low, high = spec.min, spec.max
        if spec.type == "integer":
            if spec.scaling == "reverse_log":
                raise ConfigError(f"tune.ranges.{spec.name}: reverse_log scaling is for continuous ranges only")
            values[spec.name] = trial.suggest_int(spec.name, int(low), int(high), log=spec.scaling == "log")
        elif spec.type == "continuous":
            if spec.scaling == "reverse_log":
                # 1 - x sampled on a log scale: as dense near max as log scaling is near min.
                gap = trial.suggest_float(f"{spec.name}:1-x", 1.0 - high, 1.0 - low, log=True)
                values[spec.name] = 1.0 - gap
            else:
                values[spec.name] = trial.suggest_float(spec.name, low, high, log=spec.scaling == "log")
        else:
            raise ConfigError(f"tune.ranges.{spec.name}: type {spec.type!r} must be continuous, integer or categorical")
    return values


def default_objective_of(metrics: Mapping[str, float]) -> str | None:
    """The first ``validation:`` metric a trial printed (the entry point prints its primary metric first)."""
    for name in metrics:
        if name.startswith("validation:"):
            return name
    return next(iter(metrics), None)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


TrainFn = Callable[..., TrainResult]


def run_local_tuning(
    *,
    job_name: str,
    work_dir: Path,
    tune: TuneConfig,
    channels: Mapping[str, str],
    hyperparameters: Mapping[str, Any],
    fs: Any,
    output_prefix: str,
    environment: Mapping[str, str] | None = None,
    max_runtime_s: float | None = None,
    instance_count: int = 1,
    script: ScriptSpec | None = None,
    default_objective: str | None = None,
    seed: int = 0,
    train_fn: TrainFn = run_local_training_job,
) -> TuningResult:
    """Search ``tune.ranges`` with ``tune.max_trials`` local training jobs, ``tune.max_parallel`` at a time.

    ``hyperparameters`` are the fixed ones every trial gets (a searched name overrides).
    The objective is ``tune.objective``, else ``default_objective``, else the first
    validation metric the first completed trial printed; whether to maximise it follows
    :func:`tasks.config.metric_is_maximized`. Each trial's model goes to
    :func:`trial_model_uri` under ``output_prefix``; the caller copies the best one to the
    run's model URI. ``train_fn`` runs one trial (the local runner; a test may pass another).
    Writes ``work_dir/trials.json`` with the trial table.
    """
    import optuna

    if not tune.ranges:
        raise ConfigError("tuning needs at least one hyperparameter range in tune.ranges")
    if tune.max_trials < 1 or tune.max_parallel < 1:
        raise ConfigError("tune.max_trials and tune.max_parallel must be at least 1")
    started = time.monotonic()
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    base = dict(hyperparameters)
    objective = tune.objective or default_objective
    parallel = min(tune.max_parallel, tune.max_trials)
    threads = max(1, _cpu_count() // (parallel * max(1, instance_count)))
    trial_env = {**(environment or {}), "OMP_NUM_THREADS": str(threads)}

    previous_verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own per-trial lines say it better
    # Always maximised: minimised objectives are told negated, so the objective may be
    # settled by the first completed trial, after the study exists.
    study = optuna.create_study(direction="maximize", sampler=make_sampler(tune.strategy, seed, tune.max_trials))
    logger.info(
        "tuning job %s: %d trials (%d at a time, %s search over %s), objective %s",
        job_name, tune.max_trials, parallel, tune.strategy, ", ".join(r.name for r in tune.ranges),
        objective or "the first validation metric",
    )
    records: list[TrialRecord] = []
    stop = threading.Event()

    def run_trial(trial: Any, number: int, searched: dict[str, Any]) -> TrialRecord:
        name = trial_job_name(job_name, number)
        model_uri = trial_model_uri(output_prefix, name)
        record = TrialRecord(number=number, job_name=name, hyperparameters=searched, state=FAILED, model_uri=model_uri)
        t0 = time.monotonic()
        try:
            result = train_fn(
                job_name=name,
                work_dir=work_dir / f"t{number:03d}",
                channels=channels,
                hyperparameters={**base, **searched},
                fs=fs,
                output_model_uri=model_uri,
                environment=trial_env,
                max_runtime_s=max_runtime_s,
                instance_count=instance_count,
                script=script,
                stop_event=stop,
            )
        except UpdraftError as exc:
            record.error = str(exc)
        except Exception as exc:  # a bug shows in every trial; keep its traceback in the log
            logger.warning("tuning job %s: trial %s raised", job_name, name, exc_info=True)
            record.error = f"{type(exc).__name__}: {exc}"
        else:
            record.state = COMPLETED
            record.result = result
            record.metrics = dict(result.metrics)
        record.duration_s = round(time.monotonic() - t0, 3)
        return record

    try:
        with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix=f"tune-{job_name}") as pool:
            number = 0
            while number < tune.max_trials:
                batch = []
                for _ in range(min(parallel, tune.max_trials - number)):
                    number += 1
                    trial = study.ask()
                    searched = suggest_hyperparameters(trial, tune.ranges)
                    batch.append((trial, pool.submit(run_trial, trial, number, searched)))
                try:
                    done = [future.result() for _, future in batch]
                except BaseException:  # Ctrl-C: stop the running trials' processes, then give up
                    stop.set()
                    for _, future in batch:
                        future.exception()
                    raise
                for (trial, _), record in zip(batch, done):
                    if record.state == COMPLETED and objective is None:
                        objective = default_objective_of(record.metrics)
                    _settle(record, objective)
                    if record.state == COMPLETED:
                        sign = 1.0 if metric_is_maximized(objective or "") else -1.0
                        study.tell(trial, sign * float(record.objective))
                    else:
                        study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    records.append(record)
                    _log_trial(job_name, record, records, objective, tune.max_trials)
    finally:
        optuna.logging.set_verbosity(previous_verbosity)

    completed = [r for r in records if r.state == COMPLETED]
    (work_dir / TRIALS_FILE).write_text(json.dumps([r.row() for r in records], indent=2))
    if not completed or objective is None:
        first = records[0].error if records else "no trial ran"
        raise StageError(
            f"tuning job {job_name}: all {len(records)} trials failed; the first: {first} "
            f"(trial table: {work_dir / TRIALS_FILE})"
        )
    maximize = metric_is_maximized(objective)
    best = _best_of(completed, maximize)
    duration = round(time.monotonic() - started, 3)
    logger.info(
        "tuning job %s: best trial %s, %s=%s with %s (%d of %d trials completed, %.1f s)",
        job_name, best.job_name, objective, format(best.objective, ".6g"), _describe(best.hyperparameters),
        len(completed), len(records), duration,
    )
    return TuningResult(
        objective=objective,
        maximize=maximize,
        strategy=tune.strategy,
        best=best,
        trials=records,
        base_hyperparameters=base,
        duration_s=duration,
    )


def _settle(record: TrialRecord, objective: str | None) -> None:
    """Read the objective off a completed trial; a trial that did not print it (or printed NaN) counts as failed."""
    if record.state != COMPLETED or objective is None:
        return
    value = record.metrics.get(objective)
    if value is None or math.isnan(value):
        record.state = FAILED
        printed = ", ".join(sorted(record.metrics)) or "none"
        record.error = (
            f"the trial printed no value for the objective {objective} (its metrics: {printed}); "
            "set tune.objective to a metric the training prints"
            if value is None else f"the objective {objective} is NaN"
        )
        return
    record.objective = float(value)


def _best_of(completed: Sequence[TrialRecord], maximize: bool) -> TrialRecord:
    """The best completed trial; the earliest wins a tie."""
    key = (lambda r: -r.objective) if maximize else (lambda r: r.objective)
    return min(completed, key=lambda r: (key(r), r.number))


def _describe(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={format(v, '.4g') if isinstance(v, float) else v}" for k, v in values.items())


def _log_trial(job_name: str, record: TrialRecord, records: Sequence[TrialRecord], objective: str | None, total: int) -> None:
    done = [r for r in records if r.state == COMPLETED]
    if record.state == COMPLETED:
        best = _best_of(done, metric_is_maximized(objective or ""))
        logger.info(
            "tuning job %s: trial %d/%d %s completed in %.1f s: %s=%s with %s (best so far %s, %s)",
            job_name, record.number, total, record.job_name, record.duration_s, objective,
            format(record.objective, ".6g"), _describe(record.hyperparameters),
            format(best.objective, ".6g"), best.job_name,
        )
    else:
        logger.warning(
            "tuning job %s: trial %d/%d %s failed after %.1f s with %s: %s",
            job_name, record.number, total, record.job_name, record.duration_s,
            _describe(record.hyperparameters), record.error,
        )
