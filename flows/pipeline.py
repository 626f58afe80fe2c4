"""The whole pipeline as one Prefect flow: each numbered line is a stage (tasks/<stage>).

The flow only wires: it reads the config, resolves the target, and hands each stage
what the previous one produced. Paths, clients and maths live in ``tasks``.

A run resumes: each stage runs through ``RunStages`` (tasks/resume.py), which stores its
result in the bucket and skips it when a rerun of the same run finds it there. Without
``run_id`` the run id comes from the Prefect flow run, so retrying a failed flow run
resumes it too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Iterator

from prefect import flow, get_run_logger

from tasks.aws.target import resolve_target
from tasks.compute import dask_client
from tasks.config import PipelineConfig, load_config
from tasks.resume import RunStages, flow_run_run_id, local_endpoint_died, resume_hint, run_results_uri, with_local_model


@contextlib.contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = round(time.perf_counter() - start, 3)


@contextlib.contextmanager
def _resume_hint_on_failure(stages: RunStages, run_id: str, timings: dict[str, float], config_path: str | None) -> Iterator[None]:
    """When a stage fails, say in the run's log how to resume the run."""
    try:
        yield
    except BaseException:
        if stages.resume:
            get_run_logger().error(
                "run %s stopped in %s; '%s' resumes it, skipping the stages that completed",
                run_id, next(reversed(timings)), resume_hint(config_path or "CONFIG", run_id),
            )
        raise


def _plain(result: Any) -> Any:
    return dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result


def run_pipeline(
    config: PipelineConfig, *, run_id: str | None = None, target_kind: str | None = None, config_path: str | None = None
) -> dict[str, Any]:
    """Run every stage in order and return the run summary (what ``updraft run --json`` prints).

    Stages an earlier attempt of ``run_id`` completed are not run again: their stored results
    stand in. When a stage fails, the log says how to resume (with ``config_path``, the file's name).
    """
    from tasks.deploy import deploy_stage
    from tasks.evaluate import evaluate_stage
    from tasks.features.preprocess import preprocess_stage
    from tasks.ingest import ingest_stage
    from tasks.preflight import preflight
    from tasks.registry import register_stage
    from tasks.report import report_stage
    from tasks.training import train_stage

    logger = get_run_logger()
    run_id = run_id or flow_run_run_id()
    target = resolve_target(target_kind, config.aws.region)
    stages = RunStages(config, target)
    timings: dict[str, float] = {}
    summary: dict[str, Any] = {
        "run_id": run_id,
        "target": target.kind,
        "config": {
            "name": config.name,
            "bucket": config.bucket,
            "source": config.source_uri,
            "task": config.task,
            "label": config.label,
        },
        "timings_s": timings,
    }
    logger.info("run %s on the %s target: %s", run_id, target.kind, config.source_uri)
    if stages.resume:
        logger.info("stage results of run %s: %s", run_id, run_results_uri(config, run_id))

    # 0. check everything the user controls before spending minutes
    with _timed(timings, "preflight"):
        plan = preflight(config, target)

    with _resume_hint_on_failure(stages, run_id, timings, config_path):
        with dask_client(config.dask.scheduler_address, config.dask.n_workers, config.dask.memory_limit, device=config.dask.device) as client:
            # 1. ingest: raw files -> curated Parquet + quarantine
            with _timed(timings, "ingest"):
                ingest = stages(ingest_stage)(config, target, run_id, client)
            summary["ingest"] = _plain(ingest)
            # 2. preprocess: curated -> feature splits + transform.json
            with _timed(timings, "preprocess"):
                prep = stages(preprocess_stage)(config, target, run_id, plan.features, plan.kinds, plan.input_columns, client)
            summary["preprocess"] = _plain(prep)
            # 3. train with xgboost.dask on this same cluster (train.backend: dask)...
            if config.train.backend == "dask":
                with _timed(timings, "train"):
                    trained = stages(train_stage)(config, target, run_id, prep.features_uri, client)

        # ...or the training container's entry point (local process or SageMaker job), the cluster closed
        if config.train.backend != "dask":
            with _timed(timings, "train"):
                trained = stages(train_stage)(config, target, run_id, prep.features_uri)
        trained = with_local_model(trained, target, run_id)  # a resumed result may name another machine's folder
        summary["train"] = _plain(trained)
        # 4. evaluate: model vs baselines on the test split; the gate
        with _timed(timings, "evaluate"):
            evaluation = stages(evaluate_stage)(config, target, run_id, prep.features_uri, trained.model_dir)
        summary["evaluate"] = evaluation.to_dict()
        # 5. register: a versioned model package, approved only when the gate passed
        with _timed(timings, "register"):
            registered = stages(register_stage)(config, target, run_id, trained.model_uri, evaluation)
        summary["register"] = _plain(registered)
        # 6. deploy: the endpoint (a local process on local targets)
        with _timed(timings, "deploy"):
            # a resumed run whose local endpoint has died since deploys it again
            redeploy = local_endpoint_died(target, config.endpoint_name, run_id)
            deployed = stages(deploy_stage, refresh=redeploy)(
                config, target, run_id, trained.model_uri, trained.model_dir, evaluation,
                model_package_arn=registered.model_package_arn,
            )
        summary["deploy"] = _plain(deployed)
        # 7. report: one HTML page a person reads
        with _timed(timings, "report"):
            report = stages(report_stage)(config, target, run_id, summary, evaluation)
        summary["report"] = report.path
        summary["report_uri"] = report.uri
        return summary


@flow(name="updraft-pipeline", log_prints=False, validate_parameters=False)
def pipeline_flow(config_path: str, run_id: str | None = None, target_kind: str | None = None) -> dict[str, Any]:
    """The Prefect entry point: a path to the config, so deployments can schedule it.

    ``run_id`` names the run to start or resume; by default the flow run's own, the same
    on every retry of the flow run.
    """
    from flows.deployments import check_config_path

    config = load_config(check_config_path(config_path))
    return run_pipeline(config, run_id=run_id, target_kind=target_kind, config_path=config_path)
