"""Scale-out: with DASK_SCHEDULER_ADDRESS set, the stages use that cluster instead of starting one."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from distributed import LocalCluster

from tasks.aws.embedded import EmbeddedAWS
from tests.e2e.test_stage_commands import run_stage
from tests.e2e.test_run_pipeline import upload_sample

pytestmark = pytest.mark.e2e


def test_ingest_and_preprocess_run_on_the_named_scheduler(
    embedded: EmbeddedAWS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_path, _ = upload_sample(tmp_path, rows=2000)
    # Worker processes of their own, reaching S3 only through the endpoint they were given:
    # nothing is shared with the CLI process but the scheduler's address.
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.WARNING) as cluster:
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
        ingest = run_stage("ingest", config_path)
        prep = run_stage("preprocess", config_path, "--run-id", ingest["run_id"])
        ran = set(cluster.scheduler.task_prefixes)
        assert sum(prep["rows"].values()) > 0
        assert {"fit_partition", "transform_partition"} <= ran, sorted(ran)
        assert len(cluster.scheduler.workers) == 1  # the CLI started none of its own
