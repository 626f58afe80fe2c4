"""The pipeline config: one YAML file, read once, validated, passed down as typed values.

Lookup order for settings that can also come from the environment (STYLE habit 3):
environment first (``DASK_SCHEDULER_ADDRESS``, ``AWS_REGION``), then the file, then the
defaults below. Unknown keys are an error that names the key, because a misspelt
option silently ignored is worse than a failed run.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from tasks.errors import ConfigError

TASKS: tuple[str, ...] = (
    "binary_classification",
    "multiclass_classification",
    "regression",
    "ranking",
    "anomaly_detection",
)
#: Tasks the first-form pipeline trains end to end; the others are accepted by the
#: config so files stay valid, and fail with a clear message at the train stage.
SUPPORTED_TASKS: tuple[str, ...] = ("binary_classification", "multiclass_classification", "regression")

_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")


@dataclass(frozen=True)
class Features:
    """Which contract columns feed the model, and how each is treated."""

    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()

    @property
    def all(self) -> tuple[str, ...]:
        return self.numeric + self.categorical


@dataclass(frozen=True)
class SplitConfig:
    """Fractions of rows held out; the rest trains. Rows are assigned by a hash of their values."""

    validation: float = 0.15
    test: float = 0.15


@dataclass(frozen=True)
class TrainConfig:
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    instance_type: str = "ml.m5.xlarge"
    instance_count: int = 1
    max_runtime_s: int = 3600


@dataclass(frozen=True)
class GateConfig:
    """The model goes on only if it beats the best baseline by at least ``min_lift`` on the main metric."""

    min_lift: float = 0.0


@dataclass(frozen=True)
class DeployConfig:
    endpoint_name: str | None = None
    instance_type: str = "ml.m5.large"
    require_passed: bool = True


@dataclass(frozen=True)
class AwsConfig:
    region: str | None = None
    role_arn: str | None = None
    training_image: str | None = None
    inference_image: str | None = None


@dataclass(frozen=True)
class DaskConfig:
    scheduler_address: str | None = None
    n_workers: int | None = None


#: What ingest does with columns the contract does not name.
EXTRA_COLUMNS: tuple[str, ...] = ("drop", "keep", "fail")


@dataclass(frozen=True)
class IngestConfig:
    """How ingest treats what the contract does not settle.

    ``max_quarantine_fraction``: the share of a run's rows that may fail the contract before
    the run fails (after writing the quarantine); 0.1 because a systematic problem (a renamed
    column, a new delimiter, a unit change) quarantines far more than the odd bad row does.
    ``extra_columns``: ``drop`` columns the contract does not know (with a warning), ``keep``
    them in curated as text, or ``fail`` (reject files that have them).
    ``partition_by``: a datetime column of the contract; curated files go to one folder per day.
    ``queue_url``: the SQS queue receiving the bucket's ``s3:ObjectCreated:*`` notifications;
    ``updraft ingest --watch`` waits on it instead of listing the prefix every interval.
    """

    max_quarantine_fraction: float = 0.1
    extra_columns: str = "drop"
    partition_by: str | None = None
    queue_url: str | None = None


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    bucket: str
    source: str  # key prefix inside ``bucket``, no leading slash
    contract: str  # local path (absolute) or s3:// URI
    label: str
    task: str
    features: Features | None = None
    split: SplitConfig = SplitConfig()
    train: TrainConfig = TrainConfig()
    gate: GateConfig = GateConfig()
    deploy: DeployConfig = DeployConfig()
    aws: AwsConfig = AwsConfig()
    dask: DaskConfig = DaskConfig()
    ingest: IngestConfig = IngestConfig()

    @property
    def source_uri(self) -> str:
        return f"s3://{self.bucket}/{self.source}"

    @property
    def endpoint_name(self) -> str:
        return self.deploy.endpoint_name or self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS: dict[str, type] = {
    "split": SplitConfig,
    "train": TrainConfig,
    "gate": GateConfig,
    "deploy": DeployConfig,
    "aws": AwsConfig,
    "dask": DaskConfig,
    "ingest": IngestConfig,
}
_REQUIRED = ("name", "bucket", "source", "contract", "label", "task")
_TOP_KEYS = set(_REQUIRED) | {"features"} | set(_SECTIONS)


def load_config(path: str | os.PathLike[str]) -> PipelineConfig:
    """Read and validate a pipeline config file; relative contract paths resolve against its folder."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    return parse_config(raw, base_dir=path.resolve().parent, origin=str(path))


def parse_config(raw: Any, *, base_dir: Path | None = None, origin: str = "config") -> PipelineConfig:
    """Validate an already-parsed config mapping (the YAML file's content)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a mapping of settings at the top level")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ConfigError(
            f"{origin}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(_TOP_KEYS))})"
        )
    missing = [k for k in _REQUIRED if raw.get(k) in (None, "")]
    if missing:
        raise ConfigError(f"{origin}: missing required key {missing[0]!r}")
    for key in _REQUIRED:
        if not isinstance(raw[key], str):
            raise ConfigError(f"{origin}: {key!r} must be a string, got {type(raw[key]).__name__}")

    name = raw["name"]
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"{origin}: name {name!r} must be 1-40 lowercase letters, digits or '-' "
            "(it names SageMaker resources and S3 prefixes)"
        )
    task = raw["task"]
    if task not in TASKS:
        raise ConfigError(f"{origin}: task {task!r} is not one of {', '.join(TASKS)}")

    bucket, source = _parse_source(raw["bucket"], raw["source"], origin)
    contract = raw["contract"]
    if not contract.startswith("s3://"):
        contract_path = Path(contract).expanduser()
        if not contract_path.is_absolute() and base_dir is not None:
            contract_path = base_dir / contract_path
        contract = str(contract_path)

    sections = {
        key: _parse_section(key, raw.get(key), cls, origin) for key, cls in _SECTIONS.items()
    }
    dask_cfg: DaskConfig = sections["dask"]
    env_scheduler = os.environ.get("DASK_SCHEDULER_ADDRESS")
    if env_scheduler:
        sections["dask"] = dataclasses.replace(dask_cfg, scheduler_address=env_scheduler)
    split: SplitConfig = sections["split"]
    if not (0 < split.validation < 1 and 0 < split.test < 1 and split.validation + split.test < 0.9):
        raise ConfigError(
            f"{origin}: split fractions validation={split.validation}, test={split.test} must each be "
            "in (0, 1) and leave at least 10% of rows to train"
        )
    ingest: IngestConfig = sections["ingest"]
    if not 0 <= ingest.max_quarantine_fraction <= 1:
        raise ConfigError(
            f"{origin}: ingest.max_quarantine_fraction {ingest.max_quarantine_fraction} must be between 0 and 1 "
            "(the share of a run's rows that may fail the contract)"
        )
    if ingest.extra_columns not in EXTRA_COLUMNS:
        raise ConfigError(
            f"{origin}: ingest.extra_columns {ingest.extra_columns!r} must be one of {', '.join(EXTRA_COLUMNS)}"
        )
    if ingest.partition_by == "":
        raise ConfigError(f"{origin}: ingest.partition_by is empty; name a datetime column or remove the key")
    endpoint_name = sections["deploy"].endpoint_name
    if endpoint_name is not None and not _NAME_RE.match(endpoint_name):
        raise ConfigError(f"{origin}: deploy.endpoint_name {endpoint_name!r} must match {_NAME_RE.pattern}")

    return PipelineConfig(
        name=name,
        bucket=bucket,
        source=source,
        contract=contract,
        label=raw["label"],
        task=task,
        features=_parse_features(raw.get("features"), origin),
        **sections,
    )


def _parse_source(bucket: str, source: str, origin: str) -> tuple[str, str]:
    if source.startswith("s3://"):
        src_bucket, _, prefix = source[len("s3://") :].partition("/")
        if src_bucket != bucket:
            raise ConfigError(
                f"{origin}: source {source!r} is in bucket {src_bucket!r} but bucket is {bucket!r}; "
                "give the source as a prefix inside the bucket"
            )
        source = prefix
    source = source.lstrip("/")
    if source and not source.endswith("/") and "." not in source.rsplit("/", 1)[-1]:
        source += "/"
    return bucket, source


def _parse_features(raw: Any, origin: str) -> Features | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: features must be a mapping with 'numeric' and/or 'categorical' lists")
    unknown = sorted(set(raw) - {"numeric", "categorical"})
    if unknown:
        raise ConfigError(f"{origin}: unknown key 'features.{unknown[0]}' (known: numeric, categorical)")
    lists = {}
    for key in ("numeric", "categorical"):
        value = raw.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{origin}: features.{key} must be a list of column names")
        lists[key] = tuple(value)
    both = set(lists["numeric"]) & set(lists["categorical"])
    if both:
        raise ConfigError(f"{origin}: column {sorted(both)[0]!r} is listed as both numeric and categorical")
    if not lists["numeric"] and not lists["categorical"]:
        raise ConfigError(f"{origin}: features lists no columns; remove the key to use every contract column")
    return Features(**lists)


def _parse_section(key: str, raw: Any, cls: type, origin: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: {key!r} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"{origin}: unknown key '{key}.{unknown[0]}' (known: {', '.join(sorted(fields)) or 'none'})"
        )
    values = {}
    defaults = cls()
    for name, value in raw.items():
        default = getattr(defaults, name)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, Mapping):
            ok = isinstance(value, dict)
        else:  # optional strings
            ok = value is None or isinstance(value, str)
        if not ok:
            raise ConfigError(f"{origin}: '{key}.{name}' has the wrong type ({value!r})")
        values[name] = value
    return cls(**values)
