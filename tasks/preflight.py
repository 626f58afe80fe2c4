"""Checks made before any stage runs, so a user error costs seconds and says what to fix.

Missing bucket, unreadable contract, label not in the contract, features the contract
lacks, nothing under the source prefix: each is one clear line, not a traceback from
the middle of a Dask job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tasks.aws.target import Target
from tasks.config import SUPPORTED_TASKS, Features, PipelineConfig
from tasks.errors import ConfigError


@dataclass(frozen=True)
class Plan:
    """What the stages need to know about the data before they start."""

    features: Features
    kinds: dict[str, str]
    input_columns: list[str]
    source_files: int
    warnings: list[str] = field(default_factory=list)


def preflight(config: PipelineConfig, target: Target) -> Plan:
    """Fail fast on anything the user must fix; return the resolved feature plan."""
    from tasks.contracts import column_kinds, load_contract, resolve_features
    from tasks.ingest import list_source_objects

    if config.task not in SUPPORTED_TASKS:
        raise ConfigError(
            f"task {config.task!r} is accepted in configs but not trained yet; "
            f"use one of {', '.join(SUPPORTED_TASKS)}"
        )
    target.check_bucket(config.bucket)
    fs = target.filesystem()
    schema = load_contract(config.contract, fs)
    features = resolve_features(schema, config)
    kinds = column_kinds(schema)
    wanted = set(features.all)
    input_columns = [name for name in schema.columns if name in wanted]
    objects = list_source_objects(fs, config.source_uri)
    return Plan(features=features, kinds=kinds, input_columns=input_columns, source_files=len(objects))
