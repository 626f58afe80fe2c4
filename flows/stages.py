"""One flow per stage, so a platform team can schedule a stage on its own.

Stages after ingest take the run id whose earlier outputs they use (``Layout``:
features/<run>/, models/<run>/model.tar.gz, models/<run>/evaluation.json); each checks
that those outputs are there before starting, and names the command that makes them
when they are not. Like the pipeline flow, these only wire: the work is in ``tasks``.

A stage run on its own runs again when asked again (a platform team reruns a stage on
purpose), so these keep no results for resuming; they get the stages' timeouts and
retries. Ingest and preprocess start a run whose id, unless given, is the flow run's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from prefect import flow

from tasks.aws.target import Target, resolve_target
from tasks.compute import dask_client
from tasks.config import PipelineConfig, load_config
from tasks.layout import Layout
from tasks.resume import RunStages, flow_run_run_id
from tasks.runs import run_dir


def _open(config_path: str, target_kind: str | None) -> tuple[PipelineConfig, Target, Layout, RunStages]:
    from flows.deployments import check_config_path

    config = load_config(check_config_path(config_path))
    target = resolve_target(target_kind, config.aws.region)
    return config, target, Layout(config.bucket, config.name), RunStages(config, target, resume=False)


def _first(command: str, config_path: str, run_id: str | None = None) -> str:
    """The end of a missing-input message: the command, as the user types it, that makes the input."""
    run = f" --run-id {run_id}" if run_id else ""
    return f"run 'updraft {command} --config {config_path}{run}' first"


def _result(run_id: str, target: Target, result: Any) -> dict[str, Any]:
    """What ``updraft <stage> --json`` prints: the stage's result plus the run and the target."""
    plain = result.to_dict() if hasattr(result, "to_dict") else dataclasses.asdict(result)
    return {"run_id": run_id, "target": target.kind, **plain}


@flow(name="updraft-ingest", log_prints=False, validate_parameters=False)
def ingest_flow(config_path: str, run_id: str | None = None, target_kind: str | None = None) -> dict[str, Any]:
    """Validate the source's raw files into curated Parquet; rejected rows go to the quarantine."""
    from tasks.ingest import ingest_stage

    config, target, _, stages = _open(config_path, target_kind)
    run_id = run_id or flow_run_run_id()
    with dask_client(config.dask.scheduler_address, config.dask.n_workers, config.dask.memory_limit, device=config.dask.device) as client:
        result = stages(ingest_stage)(config, target, run_id, client)
    return _result(run_id, target, result)


@flow(name="updraft-preprocess", log_prints=False, validate_parameters=False)
def preprocess_flow(config_path: str, run_id: str | None = None, target_kind: str | None = None) -> dict[str, Any]:
    """Fit the features on the dataset's curated data and write this run's splits (a new run unless named)."""
    from tasks.features.preprocess import preprocess_stage
    from tasks.ingest import require_curated
    from tasks.preflight import preflight

    config, target, layout, stages = _open(config_path, target_kind)
    run_id = run_id or flow_run_run_id()
    # 1. the contract's features, and what ingest curated
    plan = preflight(config, target)
    require_curated(target.filesystem(), layout.curated(), then=_first("ingest", config_path))
    # 2. preprocess: curated -> feature splits + transform.json
    with dask_client(config.dask.scheduler_address, config.dask.n_workers, config.dask.memory_limit, device=config.dask.device) as client:
        result = stages(preprocess_stage)(config, target, run_id, plan.features, plan.kinds, plan.input_columns, client)
    return _result(run_id, target, result)


@flow(name="updraft-train", log_prints=False, validate_parameters=False)
def train_flow(config_path: str, run_id: str, target_kind: str | None = None) -> dict[str, Any]:
    """Train the model of ``run_id`` on the feature splits its preprocess wrote."""
    from tasks.features.preprocess import require_features
    from tasks.training import train_stage

    config, target, layout, stages = _open(config_path, target_kind)
    # 1. the run's features
    features_uri = require_features(
        target.filesystem(), layout.features(run_id), run_id=run_id, then=_first("preprocess", config_path)
    )
    # 2. train: the training container's entry point (local process or SageMaker job)
    result = stages(train_stage)(config, target, run_id, features_uri)
    return _result(run_id, target, result)


@flow(name="updraft-evaluate", log_prints=False, validate_parameters=False)
def evaluate_flow(config_path: str, run_id: str, target_kind: str | None = None) -> dict[str, Any]:
    """Judge the model of ``run_id`` against the baselines on its test split; stores evaluation.json."""
    from tasks.evaluate import evaluate_stage
    from tasks.features.preprocess import require_features
    from tasks.training.stage import fetch_model

    config, target, layout, stages = _open(config_path, target_kind)
    fs = target.filesystem()
    # 1. the run's features and its model, from S3
    features_uri = require_features(fs, layout.features(run_id), run_id=run_id, then=_first("preprocess", config_path))
    model_dir = fetch_model(
        fs, layout.model(run_id), run_dir(run_id) / "evaluate", run_id=run_id, then=_first("train", config_path, run_id)
    )
    # 2. evaluate: model vs baselines; the gate
    result = stages(evaluate_stage)(config, target, run_id, features_uri, str(model_dir))
    return _result(run_id, target, result)


@flow(name="updraft-register", log_prints=False, validate_parameters=False)
def register_flow(config_path: str, run_id: str, target_kind: str | None = None) -> dict[str, Any]:
    """Register the model of ``run_id`` as the next version, approved only if its evaluation passed."""
    from tasks.evaluate import load_evaluation
    from tasks.registry import register_stage

    config, target, layout, stages = _open(config_path, target_kind)
    # 1. the gate's verdict on the run
    evaluation = load_evaluation(
        target.filesystem(), layout.evaluation(run_id), run_id=run_id, then=_first("evaluate", config_path, run_id)
    )
    # 2. register: a versioned model package
    result = stages(register_stage)(config, target, run_id, layout.model(run_id), evaluation)
    return _result(run_id, target, result)


@flow(name="updraft-deploy", log_prints=False, validate_parameters=False)
def deploy_flow(config_path: str, run_id: str, target_kind: str | None = None) -> dict[str, Any]:
    """Serve the model of ``run_id`` at the config's endpoint if its evaluation let it through."""
    from tasks.deploy import deploy_stage
    from tasks.evaluate import load_evaluation
    from tasks.training.stage import fetch_model

    config, target, layout, stages = _open(config_path, target_kind)
    fs = target.filesystem()
    # 1. the run's model and the gate's verdict on it
    model_dir = fetch_model(
        fs, layout.model(run_id), run_dir(run_id) / "deploy", run_id=run_id, then=_first("train", config_path, run_id)
    )
    evaluation = load_evaluation(fs, layout.evaluation(run_id), run_id=run_id, then=_first("evaluate", config_path, run_id))
    # 2. deploy: the endpoint (a local process on local targets)
    result = stages(deploy_stage)(config, target, run_id, layout.model(run_id), str(model_dir), evaluation)
    return _result(run_id, target, result)
