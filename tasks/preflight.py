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
    if not target.is_local:
        missing = [key for key in ("role_arn", "inference_image") if not getattr(config.aws, key)]
        if not config.aws.training_image and not config.train.entry_point:
            missing.insert(0, "training_image")
        if missing:
            raise ConfigError(
                f"the aws target needs aws.{' and aws.'.join(missing)} in the config: the ECR images of "
                "images/training and images/inference (make images; updraft images push) and a SageMaker "
                "execution role ARN (infra/ creates one)"
            )
    target.check_bucket(config.bucket)
    fs = target.filesystem()
    schema = load_contract(config.contract, fs)
    features = resolve_features(schema, config)
    kinds = column_kinds(schema)
    for key, column in (("group", config.group), ("evaluate.segment", config.evaluate.segment)):
        if column is not None and column not in kinds:
            raise ConfigError(
                f"{key} {column!r} is not a column of the contract {config.contract}; its columns are {', '.join(kinds)}"
            )
    wanted = set(features.all)
    input_columns = [name for name in schema.columns if name in wanted]
    objects = list_source_objects(fs, config.source_uri)
    return Plan(features=features, kinds=kinds, input_columns=input_columns, source_files=len(objects))
