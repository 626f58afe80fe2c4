"""One flow per stage, so a platform team can schedule a stage on its own."""

from __future__ import annotations

import dataclasses
from typing import Any

from prefect import flow

from tasks.aws.target import resolve_target
from tasks.compute import dask_client
from tasks.config import load_config
from tasks.runs import new_run_id


@flow(name="updraft-ingest", log_prints=False, validate_parameters=False)
def ingest_flow(config_path: str, run_id: str | None = None, target_kind: str | None = None) -> dict[str, Any]:
    """Validate the source's raw files into curated Parquet; rejected rows go to the quarantine."""
    from tasks.ingest import ingest_stage

    config = load_config(config_path)
    target = resolve_target(target_kind, config.aws.region)
    run_id = run_id or new_run_id()
    with dask_client(config.dask.scheduler_address, config.dask.n_workers) as client:
        result = ingest_stage(config, target, run_id, client)
    return {"run_id": run_id, "target": target.kind, **dataclasses.asdict(result)}
