"""The pipeline config: one YAML file, read once, validated, passed down as typed values.

Lookup order for settings that can also come from the environment (STYLE habit 3):
environment first (``DASK_SCHEDULER_ADDRESS``, ``AWS_REGION``), then the file, then the
defaults below. Unknown keys are an error that names the key, because a misspelt
option silently ignored is worse than a failed run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from tasks.errors import ConfigError
from tasks.features.arrays import DEVICES

TASKS: tuple[str, ...] = (
    "binary_classification",
    "multiclass_classification",
    "regression",
    "ranking",
    "anomaly_detection",
)
#: Tasks the pipeline takes end to end (every task the config accepts).
SUPPORTED_TASKS: tuple[str, ...] = TASKS

_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")


IMPUTE_STRATEGIES: tuple[str, ...] = ("mean", "median", "constant")
SCALERS: tuple[str, ...] = ("standard", "minmax", "none")
ENCODINGS: tuple[str, ...] = ("vocabulary", "onehot", "hash")
DATETIME_PARTS: tuple[str, ...] = ("hour", "dayofweek", "month")
#: Default most categories kept per encoding: codes stay dense, one-hot stays narrow.
MAX_CATEGORIES = {"vocabulary": 1000, "onehot": 20}


@dataclass(frozen=True)
class NumericTransform:
    """How one numeric column becomes model input, in this order: impute, clip, log1p, scale
    (or, with ``bins``, impute then the quantile bin's index). Statistics come from the train
    split; see docs/design.md ("transform.json") for the exact formulas."""

    impute: str = "mean"
    fill_value: float | None = None
    missing_indicator: bool = False
    clip: tuple[float, float] | None = None
    log1p: bool = False
    scale: str = "standard"
    bins: int | None = None

    @property
    def needs_quantiles(self) -> bool:
        return self.impute == "median" or self.clip is not None or self.bins is not None


@dataclass(frozen=True)
class CategoricalTransform:
    """How one categorical column becomes model input: ``vocabulary`` codes (1 + rank among
    the top ``max_categories`` train values, 0 for anything else), ``onehot`` columns for the
    top ``max_categories`` values, or ``hash`` buckets (``2**hash_bits`` of them, no fitting)."""

    encode: str = "vocabulary"
    max_categories: int | None = None
    hash_bits: int = 10

    @property
    def limit(self) -> int:
        return self.max_categories if self.max_categories is not None else MAX_CATEGORIES.get(self.encode, 0)


@dataclass(frozen=True)
class Features:
    """Which contract columns feed the model, and how each is treated.

    ``transforms`` maps a column to its :class:`NumericTransform` or
    :class:`CategoricalTransform`; columns not named there get the defaults (mean
    imputation and standardization; vocabulary codes). Datetime columns give their
    hour, day of week and month.
    """

    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    datetime: tuple[str, ...] = ()
    transforms: Mapping[str, "NumericTransform | CategoricalTransform"] = field(default_factory=dict)

    @property
    def all(self) -> tuple[str, ...]:
        return self.numeric + self.categorical + self.datetime

    def numeric_transform(self, name: str) -> NumericTransform:
        found = self.transforms.get(name)
        return found if isinstance(found, NumericTransform) else NumericTransform()

    def categorical_transform(self, name: str) -> CategoricalTransform:
        found = self.transforms.get(name)
        return found if isinstance(found, CategoricalTransform) else CategoricalTransform()


@dataclass(frozen=True)
class SplitConfig:
    """Fractions of rows held out (the rest trains) and how rows are chosen for each split.

    ``method``: ``random`` (by a hash of the row's values), ``stratified`` (each label class
    split in these fractions), ``time`` (earliest rows of ``column`` train, then
    validation, then test) or ``group`` (all rows with the same value of ``column`` on one
    side). See ``tasks.features.split`` and docs/design.md ("transform.json").
    """

    validation: float = 0.15
    test: float = 0.15
    method: str = "random"
    column: str | None = None

    def problem(self) -> str | None:
        """What is wrong with these settings, in the config file's terms; None when usable.

        One place for the rules, so the config loader and code that builds a SplitConfig
        directly reject the same things with the same words.
        """
        if not (0 < self.validation < 1 and 0 < self.test < 1 and self.validation + self.test < 0.9):
            return (
                f"split fractions validation={self.validation}, test={self.test} must each be "
                "in (0, 1) and leave at least 10% of rows to train"
            )
        if self.method not in SPLIT_METHODS:
            return f"split.method {self.method!r} is not one of {', '.join(SPLIT_METHODS)}"
        if self.method in SPLIT_COLUMN_METHODS and not self.column:
            what = "the timestamp column to order rows by" if self.method == "time" else "the column whose values keep rows together"
            return f"split.column is required for split.method {self.method}: name {what}"
        if self.method not in SPLIT_COLUMN_METHODS and self.column is not None:
            hint = " (stratified splits by the label)" if self.method == "stratified" else ""
            return f"split.column is only for split.method time or group, not {self.method}{hint}: remove it"
        return None


#: How rows are assigned to train/validation/test (``split.method``).
SPLIT_METHODS: tuple[str, ...] = ("random", "stratified", "time", "group")
#: The methods that need ``split.column``.
SPLIT_COLUMN_METHODS: tuple[str, ...] = ("time", "group")
#: Tasks whose labels are classes, so a stratified split can keep each class's share.
STRATIFIABLE_TASKS: tuple[str, ...] = ("binary_classification", "multiclass_classification", "anomaly_detection")


#: Where training runs: the training container (SageMaker job, or a local process), or
#: ``xgboost.dask`` on the preprocess Dask cluster for data too large for one instance.
TRAIN_BACKENDS: tuple[str, ...] = ("container", "dask")
#: SageMaker framework images a bring-your-own script can run in on ``aws``.
FRAMEWORKS: tuple[str, ...] = ("pytorch", "sklearn", "xgboost")


@dataclass(frozen=True)
class TrainConfig:
    """How the model is trained.

    ``spot``: managed spot training; ``max_wait_s`` (default twice ``max_runtime_s``) bounds
    the wait for spot capacity plus the run, and checkpoints let an interrupted job resume.
    ``entry_point``: the user's own training script (a path next to the config, or inside
    ``source_dir``) run under the same container contract; on ``aws`` it runs in the
    SageMaker ``framework`` image of ``framework_version``.
    """

    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    instance_type: str = "ml.m5.xlarge"
    instance_count: int = 1
    max_runtime_s: int = 3600
    volume_size_gb: int = 30
    spot: bool = False
    max_wait_s: int = 0
    network_isolation: bool = False
    backend: str = "container"
    entry_point: str | None = None
    source_dir: str | None = None
    framework: str | None = None
    framework_version: str | None = None
    tags: Mapping[str, Any] = field(default_factory=dict)

    @property
    def effective_max_wait_s(self) -> int:
        return self.max_wait_s or 2 * self.max_runtime_s


#: Kinds of hyperparameter range, as SageMaker's ``ParameterRanges`` names them.
RANGE_TYPES: tuple[str, ...] = ("continuous", "integer", "categorical")
RANGE_SCALINGS: tuple[str, ...] = ("auto", "linear", "log", "reverse_log")
TUNE_STRATEGIES: tuple[str, ...] = ("bayesian", "random")


@dataclass(frozen=True)
class HyperparameterRange:
    """One searched hyperparameter: ``min``..``max`` (continuous, integer) or ``values`` (categorical)."""

    name: str
    type: str
    min: float | None = None
    max: float | None = None
    scaling: str = "auto"
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class TuneConfig:
    """Hyperparameter search: off unless ``ranges`` names at least one hyperparameter.

    ``objective`` is a metric the entry point prints (``validation:<metric>``; default the
    task's main metric); whether to maximise it follows from the metric. The same space is
    searched by a SageMaker tuning job on ``aws`` and by Optuna with parallel local trials
    elsewhere; the best trial's model continues down the pipeline.
    """

    ranges: tuple[HyperparameterRange, ...] = ()
    max_trials: int = 10
    max_parallel: int = 2
    objective: str | None = None
    strategy: str = "bayesian"

    @property
    def enabled(self) -> bool:
        return bool(self.ranges)


@dataclass(frozen=True)
class GateConfig:
    """When a model may go on: it must beat the best baseline by more than ``min_lift`` on the
    main metric, and may fall behind the champion (the endpoint's current model) by at most
    ``max_regression`` at ``confidence`` (a one-sided paired bootstrap).

    Both are in the main metric's units. ``max_regression`` defaults to half a point of AUC or
    NDCG, so a retrain statistically tied with the champion may replace it; for RMSE or MAE set
    it in the label's units.
    """

    min_lift: float = 0.0
    max_regression: float = 0.005
    confidence: float = 0.95


#: How a binary classifier's decision threshold is chosen for F1 and recall.
THRESHOLD_RULES: tuple[str, ...] = ("fixed", "max_f1")


@dataclass(frozen=True)
class EvaluateConfig:
    """How the model is judged beyond the gate's main metric.

    ``segment``: a column of the curated data whose values get their own metrics (slices).
    ``bootstrap``: resamples for every confidence interval. ``threshold``: the binary
    decision cut for F1 and recall (``threshold_rule: max_f1`` picks it on the validation
    split instead). ``ndcg_k``/``precision_k``: the cut-offs of the ranking and anomaly
    metrics (precision_k 0 means the number of true anomalies).
    """

    segment: str | None = None
    bootstrap: int = 1000
    threshold: float = 0.5
    threshold_rule: str = "fixed"
    ndcg_k: int = 10
    precision_k: int = 0


#: How a SageMaker endpoint update shifts traffic to the new variant (blue/green).
DEPLOY_STRATEGIES: tuple[str, ...] = ("all_at_once", "canary", "linear")


@dataclass(frozen=True)
class DeployConfig:
    """Where and how the model serves.

    ``strategy``: blue/green traffic shifting on update (``canary_percent`` first, or
    ``linear_step_percent`` at a time, each step held ``wait_s``); CloudWatch alarms on 5xx
    errors and p99 latency above ``max_latency_ms`` roll it back. ``min_instances`` ..
    ``max_instances`` with a target of ``target_invocations`` per instance per minute
    autoscale it; ``data_capture_percent`` > 0 captures requests and responses to S3;
    ``serverless_memory_mb`` > 0 makes it a serverless endpoint instead.
    """

    endpoint_name: str | None = None
    instance_type: str = "ml.m5.large"
    require_passed: bool = True
    strategy: str = "all_at_once"
    canary_percent: int = 10
    linear_step_percent: int = 25
    wait_s: int = 300
    max_latency_ms: int = 500
    max_error_rate: float = 0.01
    min_instances: int = 1
    max_instances: int = 1
    target_invocations: int = 1000
    data_capture_percent: int = 0
    serverless_memory_mb: int = 0
    serverless_max_concurrency: int = 10


@dataclass(frozen=True)
class AwsConfig:
    """Settings only the ``aws`` target reads: who runs the jobs, which images, and where they may reach.

    ``kms_key_id`` encrypts training volumes and outputs; ``subnets`` and
    ``security_group_ids`` put jobs in the customer's VPC (both or neither).
    """

    region: str | None = None
    role_arn: str | None = None
    training_image: str | None = None
    inference_image: str | None = None
    kms_key_id: str | None = None
    subnets: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class DaskConfig:
    """Where Dask work runs: an existing scheduler, or a cluster started for the run (GPU
    workers via dask-cuda when ``device`` is gpu, or auto on a machine with GPUs)."""

    scheduler_address: str | None = None
    n_workers: int | None = None
    device: str = "auto"
    memory_limit: str | None = None


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


#: The pipeline's stages in order: the keys of ``stages.timeout_s``.
STAGES: tuple[str, ...] = ("ingest", "preprocess", "train", "evaluate", "register", "deploy", "report")


@dataclass(frozen=True)
class StagesConfig:
    """How Prefect runs the stages (``tasks.resume`` applies it).

    ``resume``: persist each stage's result in the bucket under ``results_prefix``, so a
    rerun of a run (``updraft run --run-id RUN``, or a failed flow run retried in Prefect)
    skips the stages that completed. ``timeout_s``: seconds a stage may run before Prefect
    fails it, by stage name (null: no limit); stages not named keep the defaults of
    ``tasks.resume.DEFAULT_TIMEOUTS_S`` (train's follows ``train.max_runtime_s``).
    """

    resume: bool = True
    results_prefix: str = "prefect/results/"
    timeout_s: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    bucket: str
    source: str  # key prefix inside ``bucket``, no leading slash
    contract: str  # local path (absolute) or s3:// URI
    label: str
    task: str
    features: Features | None = None
    #: The query (or session, or entity) column whose rows a ranking model orders together.
    group: str | None = None
    split: SplitConfig = SplitConfig()
    train: TrainConfig = TrainConfig()
    tune: TuneConfig = TuneConfig()
    gate: GateConfig = GateConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    deploy: DeployConfig = DeployConfig()
    aws: AwsConfig = AwsConfig()
    dask: DaskConfig = DaskConfig()
    ingest: IngestConfig = IngestConfig()
    stages: StagesConfig = StagesConfig()

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
    "tune": TuneConfig,
    "gate": GateConfig,
    "evaluate": EvaluateConfig,
    "deploy": DeployConfig,
    "aws": AwsConfig,
    "dask": DaskConfig,
    "ingest": IngestConfig,
    "stages": StagesConfig,
}
_REQUIRED = ("name", "bucket", "source", "contract", "label", "task")
_TOP_KEYS = set(_REQUIRED) | {"features", "group"} | set(_SECTIONS)


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

    group = raw.get("group")
    if group is not None and (not isinstance(group, str) or not group):
        raise ConfigError(f"{origin}: 'group' must name a column (the query or entity id), got {group!r}")
    if task == "ranking" and group is None:
        raise ConfigError(
            f"{origin}: task ranking needs 'group': the column whose rows are ranked together (a query or session id)"
        )
    if group is not None and task != "ranking":
        raise ConfigError(f"{origin}: 'group' is only for task ranking; for a grouped split use split.column")
    if group is not None and group == raw["label"]:
        raise ConfigError(f"{origin}: 'group' {group!r} is the label; name the query column")
    raw_tune = raw.get("tune")
    tune_ranges = None
    if isinstance(raw_tune, dict) and "ranges" in raw_tune:
        raw_tune = dict(raw_tune)
        tune_ranges = _parse_ranges(raw_tune.pop("ranges"), origin)
    sections = {
        key: _parse_section(key, raw_tune if key == "tune" else raw.get(key), cls, origin)
        for key, cls in _SECTIONS.items()
    }
    if tune_ranges is not None:
        sections["tune"] = dataclasses.replace(sections["tune"], ranges=tune_ranges)
    sections["train"] = _check_train(sections["train"], sections["tune"], sections["aws"], task, base_dir, origin)
    raw_split = raw.get("split") if isinstance(raw.get("split"), dict) else {}
    if task == "ranking" and "method" not in raw_split:
        # A query's rows are ranked against each other: they must stay in one split.
        sections["split"] = dataclasses.replace(sections["split"], method="group", column=group)
    dask_cfg: DaskConfig = sections["dask"]
    if dask_cfg.device not in DEVICES:
        raise ConfigError(f"{origin}: dask.device {dask_cfg.device!r} must be one of {', '.join(DEVICES)}")
    env_scheduler = os.environ.get("DASK_SCHEDULER_ADDRESS")
    if env_scheduler:
        sections["dask"] = dataclasses.replace(dask_cfg, scheduler_address=env_scheduler)
    split: SplitConfig = sections["split"]
    split_problem = split.problem()
    if split_problem:
        raise ConfigError(f"{origin}: {split_problem}")
    if split.method == "stratified" and task not in STRATIFIABLE_TASKS:
        raise ConfigError(
            f"{origin}: split.method stratified needs classes to keep in proportion, and task {task} has none; "
            "use split.method random (or time or group)"
        )
    if split.column is not None and split.column == raw["label"]:
        raise ConfigError(f"{origin}: split.column {split.column!r} is the label; name another column")
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
    _check_judging(sections["gate"], sections["evaluate"], sections["deploy"], raw["label"], origin)
    sections["stages"] = _check_stages(sections["stages"], origin)
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
        group=group,
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


_FEATURE_LISTS = ("numeric", "categorical", "datetime")
_NUMERIC_KEYS = {f.name for f in dataclasses.fields(NumericTransform)}
_CATEGORICAL_KEYS = {f.name for f in dataclasses.fields(CategoricalTransform)}


def _parse_features(raw: Any, origin: str) -> Features | None:
    """``features``: column lists and per-column ``transforms``. With ``transforms`` alone the
    lists come from the contract (see ``tasks.contracts.resolve_features``)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: features must be a mapping with 'numeric', 'categorical' and/or 'datetime' lists")
    known = (*_FEATURE_LISTS, "transforms")
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{origin}: unknown key 'features.{unknown[0]}' (known: {', '.join(known)})")
    lists: dict[str, tuple[str, ...]] = {}
    for key in _FEATURE_LISTS:
        value = raw.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{origin}: features.{key} must be a list of column names")
        lists[key] = tuple(value)
    seen: dict[str, str] = {}
    for key in _FEATURE_LISTS:
        for name in lists[key]:
            if name in seen:
                raise ConfigError(f"{origin}: column {name!r} is listed as both {seen[name]} and {key} in features")
            seen[name] = key
    transforms = _parse_transforms(raw.get("transforms"), lists, origin)
    if not seen and not transforms:
        raise ConfigError(f"{origin}: features lists no columns; remove the key to use every contract column")
    return Features(**lists, transforms=transforms)


def _parse_transforms(
    raw: Any, lists: Mapping[str, tuple[str, ...]], origin: str
) -> dict[str, NumericTransform | CategoricalTransform]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: features.transforms must map column names to their settings")
    out: dict[str, NumericTransform | CategoricalTransform] = {}
    for column, settings in raw.items():
        where = f"features.transforms.{column}"
        if not isinstance(settings, dict) or not settings:
            raise ConfigError(f"{origin}: {where} must be a mapping of settings, e.g. {{impute: median}}")
        keys = set(settings)
        if column in lists["datetime"]:
            raise ConfigError(f"{origin}: {where}: datetime columns take no settings (they give {', '.join(DATETIME_PARTS)})")
        if column in lists["categorical"] or (column not in lists["numeric"] and keys <= _CATEGORICAL_KEYS and not keys <= _NUMERIC_KEYS):
            out[column] = _categorical_transform(settings, where, origin)
        else:
            out[column] = _numeric_transform(settings, where, origin)
    return out


def _numeric_transform(settings: Mapping[str, Any], where: str, origin: str) -> NumericTransform:
    unknown = sorted(set(settings) - _NUMERIC_KEYS)
    if unknown:
        raise ConfigError(f"{origin}: unknown key '{where}.{unknown[0]}' for a numeric column (known: {', '.join(sorted(_NUMERIC_KEYS))})")
    t = NumericTransform(**{k: v for k, v in settings.items() if k != "clip"})
    if t.impute not in IMPUTE_STRATEGIES:
        raise ConfigError(f"{origin}: {where}.impute {t.impute!r} must be one of {', '.join(IMPUTE_STRATEGIES)}")
    if t.impute == "constant":
        if isinstance(t.fill_value, bool) or not isinstance(t.fill_value, (int, float)) or not math.isfinite(t.fill_value):
            raise ConfigError(f"{origin}: {where}.impute is constant: give the number as {where}.fill_value")
    elif t.fill_value is not None:
        raise ConfigError(f"{origin}: {where}.fill_value is only used with impute: constant (impute is {t.impute})")
    if t.scale not in SCALERS:
        raise ConfigError(f"{origin}: {where}.scale {t.scale!r} must be one of {', '.join(SCALERS)}")
    for flag in ("missing_indicator", "log1p"):
        if not isinstance(getattr(t, flag), bool):
            raise ConfigError(f"{origin}: {where}.{flag} must be true or false")
    clip = settings.get("clip")
    if clip is not None:
        if (
            not isinstance(clip, list)
            or len(clip) != 2
            or not all(isinstance(q, (int, float)) and not isinstance(q, bool) for q in clip)
            or not 0 <= clip[0] < clip[1] <= 1
        ):
            raise ConfigError(f"{origin}: {where}.clip must be two quantiles [low, high] with 0 <= low < high <= 1, e.g. [0.01, 0.99]")
        t = dataclasses.replace(t, clip=(float(clip[0]), float(clip[1])))
    if t.bins is not None:
        if isinstance(t.bins, bool) or not isinstance(t.bins, int) or not 2 <= t.bins <= 1000:
            raise ConfigError(f"{origin}: {where}.bins must be a whole number of quantile bins from 2 to 1000")
        clashing = [k for k in ("clip", "log1p", "scale") if k in settings]
        if clashing:
            raise ConfigError(f"{origin}: {where}.bins replaces scaling; remove {where}.{clashing[0]}")
    return t


def _categorical_transform(settings: Mapping[str, Any], where: str, origin: str) -> CategoricalTransform:
    unknown = sorted(set(settings) - _CATEGORICAL_KEYS)
    if unknown:
        raise ConfigError(
            f"{origin}: unknown key '{where}.{unknown[0]}' for a categorical column (known: {', '.join(sorted(_CATEGORICAL_KEYS))})"
        )
    t = CategoricalTransform(**settings)
    if t.encode not in ENCODINGS:
        raise ConfigError(f"{origin}: {where}.encode {t.encode!r} must be one of {', '.join(ENCODINGS)}")
    if t.max_categories is not None:
        if t.encode == "hash":
            raise ConfigError(f"{origin}: {where}.max_categories does not apply to encode: hash (use hash_bits)")
        if isinstance(t.max_categories, bool) or not isinstance(t.max_categories, int) or t.max_categories < 1:
            raise ConfigError(f"{origin}: {where}.max_categories must be a whole number of at least 1")
    if "hash_bits" in settings:
        if t.encode != "hash":
            raise ConfigError(f"{origin}: {where}.hash_bits only applies to encode: hash")
        if isinstance(t.hash_bits, bool) or not isinstance(t.hash_bits, int) or not 1 <= t.hash_bits <= 24:
            raise ConfigError(f"{origin}: {where}.hash_bits must be a whole number from 1 to 24 (2**hash_bits buckets)")
    return t


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
        elif isinstance(default, tuple):
            ok = isinstance(value, list) and all(isinstance(v, str) and v for v in value)
            value = tuple(value) if ok else value
        else:  # optional strings
            ok = value is None or isinstance(value, str)
        if not ok:
            raise ConfigError(f"{origin}: '{key}.{name}' has the wrong type ({value!r})")
        values[name] = value
    return cls(**values)


def _parse_ranges(raw: Any, origin: str) -> tuple[HyperparameterRange, ...]:
    """``tune.ranges``: ``{name: {type, min, max, scaling} | {type: categorical, values}}``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: tune.ranges must map hyperparameter names to ranges")
    ranges = []
    for name, spec in raw.items():
        where = f"tune.ranges.{name}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{origin}: {where} must be a mapping with 'type' and 'min'/'max' or 'values'")
        unknown = sorted(set(spec) - {"type", "min", "max", "scaling", "values"})
        if unknown:
            raise ConfigError(f"{origin}: unknown key '{where}.{unknown[0]}' (known: max, min, scaling, type, values)")
        kind = spec.get("type")
        if kind not in RANGE_TYPES:
            raise ConfigError(f"{origin}: {where}.type {kind!r} must be one of {', '.join(RANGE_TYPES)}")
        if kind == "categorical":
            values = spec.get("values")
            if not isinstance(values, list) or not values or set(spec) - {"type", "values"}:
                raise ConfigError(f"{origin}: {where} (categorical) needs a non-empty 'values' list and nothing else")
            ranges.append(HyperparameterRange(name=str(name), type=kind, values=tuple(str(v) for v in values)))
            continue
        low, high = spec.get("min"), spec.get("max")
        for key, value in (("min", low), ("max", high)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{origin}: {where}.{key} must be a number, got {value!r}")
            if kind == "integer" and float(value) != int(value):
                raise ConfigError(f"{origin}: {where}.{key} must be a whole number for an integer range")
        if not low < high:
            raise ConfigError(f"{origin}: {where} needs min < max, got {low} and {high}")
        scaling = spec.get("scaling", "auto")
        if scaling not in RANGE_SCALINGS:
            raise ConfigError(f"{origin}: {where}.scaling {scaling!r} must be one of {', '.join(RANGE_SCALINGS)}")
        if scaling == "log" and low <= 0:
            raise ConfigError(f"{origin}: {where}: log scaling needs min > 0")
        if scaling == "reverse_log" and not (0 <= low and high < 1):
            raise ConfigError(f"{origin}: {where}: reverse_log scaling needs 0 <= min and max < 1")
        if "values" in spec:
            raise ConfigError(f"{origin}: {where}.values is only for categorical ranges")
        ranges.append(HyperparameterRange(name=str(name), type=kind, min=float(low), max=float(high), scaling=scaling))
    return tuple(ranges)


def _check_train(
    train: TrainConfig, tune: TuneConfig, aws: AwsConfig, task: str, base_dir: Path | None, origin: str
) -> TrainConfig:
    """Cross-field rules of ``train``, ``tune`` and ``aws``; resolves ``entry_point``/``source_dir`` next to the config."""
    if train.instance_count < 1 or train.max_runtime_s < 1 or train.volume_size_gb < 1:
        raise ConfigError(f"{origin}: train.instance_count, max_runtime_s and volume_size_gb must be positive")
    if train.max_wait_s and not train.spot:
        raise ConfigError(f"{origin}: train.max_wait_s only applies with train.spot: true")
    if train.spot and train.effective_max_wait_s < train.max_runtime_s:
        raise ConfigError(
            f"{origin}: train.max_wait_s ({train.max_wait_s}) must be at least train.max_runtime_s ({train.max_runtime_s}): "
            "it counts the wait for spot capacity plus the run"
        )
    if train.backend not in TRAIN_BACKENDS:
        raise ConfigError(f"{origin}: train.backend {train.backend!r} must be one of {', '.join(TRAIN_BACKENDS)}")
    if train.framework is not None and train.framework not in FRAMEWORKS:
        raise ConfigError(f"{origin}: train.framework {train.framework!r} must be one of {', '.join(FRAMEWORKS)}")
    if (train.framework or train.framework_version or train.source_dir) and not train.entry_point:
        raise ConfigError(
            f"{origin}: train.framework, framework_version and source_dir are for your own script: set train.entry_point"
        )
    if train.entry_point and train.backend != "container":
        raise ConfigError(f"{origin}: train.entry_point runs in the training container; remove train.backend: {train.backend}")
    for key, value in train.tags.items():
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{origin}: train.tags.{key} must be a string or number")
    if bool(aws.subnets) != bool(aws.security_group_ids):
        raise ConfigError(f"{origin}: aws.subnets and aws.security_group_ids go together (a job's VPC config needs both)")
    if tune.max_trials < 1 or tune.max_parallel < 1:
        raise ConfigError(f"{origin}: tune.max_trials and tune.max_parallel must be at least 1")
    if tune.strategy not in TUNE_STRATEGIES:
        raise ConfigError(f"{origin}: tune.strategy {tune.strategy!r} must be one of {', '.join(TUNE_STRATEGIES)}")
    if tune.objective is not None and not re.match(r"^(train|validation):[\w.@-]+$", tune.objective):
        raise ConfigError(f"{origin}: tune.objective {tune.objective!r} must look like validation:<metric>")
    if train.backend == "dask" and task == "anomaly_detection":
        raise ConfigError(f"{origin}: anomaly detection trains an IsolationForest in the training container; remove train.backend: dask")
    if tune.enabled and train.backend != "container":
        raise ConfigError(f"{origin}: tune searches with training-container jobs; remove train.backend: {train.backend}")

    def resolve(value: str | None) -> str | None:
        if value is None or value.startswith("s3://") or base_dir is None:
            return value
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else base_dir / path)

    source_dir = resolve(train.source_dir)
    entry_point = train.entry_point
    if entry_point and source_dir is None:
        entry_point = resolve(entry_point)
    return dataclasses.replace(train, entry_point=entry_point, source_dir=source_dir)


#: Metrics where larger is better (the rest, losses and errors, are minimised).
_MAXIMIZED_METRIC = re.compile(
    r"^(?:[a-z0-9]+_)?(auc|aucpr|roc_auc|pr_auc|accuracy|f1|precision|recall|ndcg|map|pre|r2)([@_].*)?$"
)


def metric_is_maximized(name: str) -> bool:
    """Whether a larger value of ``name`` (``validation:auc``, ``ndcg@10``, ``rmse``...) is better."""
    metric = name.rsplit(":", 1)[-1].lower()
    return bool(_MAXIMIZED_METRIC.match(metric))


def _check_judging(gate: GateConfig, evaluate: EvaluateConfig, deploy: DeployConfig, label: str, origin: str) -> None:
    """Cross-field rules of ``gate``, ``evaluate`` and ``deploy``."""
    if gate.max_regression < 0:
        raise ConfigError(f"{origin}: gate.max_regression must be >= 0 (how far the champion may be ahead)")
    if not 0.5 <= gate.confidence < 1:
        raise ConfigError(f"{origin}: gate.confidence {gate.confidence} must be in [0.5, 1), e.g. 0.95")
    if evaluate.segment is not None and evaluate.segment == label:
        raise ConfigError(f"{origin}: evaluate.segment {evaluate.segment!r} is the label; name another column")
    if evaluate.bootstrap < 100:
        raise ConfigError(f"{origin}: evaluate.bootstrap must be at least 100 resamples")
    if not 0 < evaluate.threshold < 1:
        raise ConfigError(f"{origin}: evaluate.threshold {evaluate.threshold} must be between 0 and 1")
    if evaluate.threshold_rule not in THRESHOLD_RULES:
        raise ConfigError(f"{origin}: evaluate.threshold_rule {evaluate.threshold_rule!r} must be one of {', '.join(THRESHOLD_RULES)}")
    if evaluate.ndcg_k < 1 or evaluate.precision_k < 0:
        raise ConfigError(f"{origin}: evaluate.ndcg_k must be >= 1 and evaluate.precision_k >= 0")
    if deploy.strategy not in DEPLOY_STRATEGIES:
        raise ConfigError(f"{origin}: deploy.strategy {deploy.strategy!r} must be one of {', '.join(DEPLOY_STRATEGIES)}")
    # SageMaker's own limits on blue/green traffic shifting
    for key, low, high in (("canary_percent", 1, 50), ("linear_step_percent", 10, 50)):
        if not low <= getattr(deploy, key) <= high:
            raise ConfigError(f"{origin}: deploy.{key} must be between {low} and {high} (SageMaker's limits)")
    if deploy.wait_s > 3600:
        raise ConfigError(f"{origin}: deploy.wait_s must be at most 3600 (SageMaker's longest bake time)")
    if deploy.wait_s < 0 or deploy.max_latency_ms < 1 or not 0 <= deploy.max_error_rate < 1:
        raise ConfigError(f"{origin}: deploy.wait_s >= 0, deploy.max_latency_ms >= 1 and deploy.max_error_rate in [0, 1)")
    if not 1 <= deploy.min_instances <= deploy.max_instances:
        raise ConfigError(f"{origin}: deploy needs 1 <= min_instances <= max_instances")
    if deploy.target_invocations < 1:
        raise ConfigError(f"{origin}: deploy.target_invocations must be >= 1 (invocations per instance per minute)")
    if not 0 <= deploy.data_capture_percent <= 100:
        raise ConfigError(f"{origin}: deploy.data_capture_percent must be between 0 and 100")
    if deploy.serverless_memory_mb and deploy.serverless_memory_mb not in (1024, 2048, 3072, 4096, 5120, 6144):
        raise ConfigError(f"{origin}: deploy.serverless_memory_mb must be one of 1024, 2048, 3072, 4096, 5120, 6144 (or 0)")
    if deploy.serverless_memory_mb and not 1 <= deploy.serverless_max_concurrency <= 200:
        raise ConfigError(f"{origin}: deploy.serverless_max_concurrency must be between 1 and 200")


def _check_stages(stages: StagesConfig, origin: str) -> StagesConfig:
    """``stages``: known stage names with positive timeouts; a results prefix inside the bucket, ending in '/'."""
    for name, seconds in stages.timeout_s.items():
        if name not in STAGES:
            raise ConfigError(f"{origin}: unknown stage 'stages.timeout_s.{name}' (stages: {', '.join(STAGES)})")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0):
            raise ConfigError(
                f"{origin}: stages.timeout_s.{name} must be a positive number of seconds, or null for no limit"
            )
    prefix = stages.results_prefix.strip("/")
    if not prefix or prefix.startswith("s3:") or ".." in prefix.split("/"):
        raise ConfigError(
            f"{origin}: stages.results_prefix {stages.results_prefix!r} must be a key prefix inside the bucket, "
            "e.g. prefect/results/"
        )
    return dataclasses.replace(stages, results_prefix=prefix + "/")
