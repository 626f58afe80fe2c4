"""The ingest stage as a Prefect task, kept out of ``tasks.ingest`` so workers never import Prefect."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.aws.target import Target
from tasks.config import PipelineConfig
from tasks.contracts import load_contract
from tasks.ingest import IngestResult, _without_pipeline_outputs, ingest_dataset, list_source_objects, log
from tasks.layout import Layout
from tasks.resume import SAFE_TO_RETRY


@task(
    name="ingest",
    cache_policy=NO_CACHE,
    **SAFE_TO_RETRY,
)
def ingest_stage(config: PipelineConfig, target: Target, run_id: str, client: Any = None) -> IngestResult:
    """Prefect task: the source's new and changed files into ``curated/<dataset>/`` and
    ``quarantine/<run_id>/``, recorded in the dataset's manifest.

    Safe to retry: nothing is visible before the commit, and a retry finishes or redoes it.
    """
    target.check_bucket(config.bucket)
    fs = target.filesystem()
    schema = load_contract(config.contract, fs)
    layout = Layout.for_config(config)
    objects = _without_pipeline_outputs(list_source_objects(fs, config.source_uri), layout, config.source_uri)
    log.info("ingesting from %d files under %s", len(objects), config.source_uri)
    return ingest_dataset(
        objects=objects,
        schema=schema,
        curated_uri=layout.curated(),
        quarantine_uri=layout.quarantine(run_id),
        storage_options=target.storage_options(),
        client=client,
        manifest_uri=layout.manifest(),
        staging_uri=layout.staging(),
        run_id=run_id,
        settings=config.ingest,
    )
