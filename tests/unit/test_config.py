"""The config file: what a user writes, and the errors they get when it is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tasks.config import Features, IngestConfig, load_config, parse_config
from tasks.errors import ConfigError

BASE = {
    "name": "claims-fraud",
    "bucket": "data",
    "source": "raw/claims/",
    "contract": "contract.yaml",
    "label": "is_fraud",
    "task": "binary_classification",
}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_minimal_config_gets_defaults_and_resolves_contract_next_to_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.name == "claims-fraud"
    assert cfg.source_uri == "s3://data/raw/claims/"
    assert cfg.contract == str(tmp_path / "contract.yaml")
    assert cfg.features is None
    assert cfg.split.validation == 0.15 and cfg.split.test == 0.15
    assert cfg.endpoint_name == "claims-fraud"
    assert cfg.gate.min_lift == 0.0


def test_sections_and_features_are_typed(tmp_path: Path) -> None:
    data = dict(
        BASE,
        features={"numeric": ["age"], "categorical": ["region"]},
        split={"validation": 0.1, "test": 0.2},
        train={"hyperparameters": {"max_depth": 4}},
        gate={"min_lift": 0.01},
        deploy={"endpoint_name": "fraud-prod", "require_passed": False},
    )
    cfg = load_config(write(tmp_path, data))
    assert cfg.features == Features(numeric=("age",), categorical=("region",))
    assert cfg.split.test == 0.2
    assert cfg.train.hyperparameters == {"max_depth": 4}
    assert cfg.gate.min_lift == 0.01
    assert cfg.endpoint_name == "fraud-prod"
    assert cfg.deploy.require_passed is False


def test_s3_source_uri_and_contract_uri_are_accepted(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, dict(BASE, source="s3://data/raw", contract="s3://data/c.yaml")))
    assert cfg.source == "raw/"
    assert cfg.contract == "s3://data/c.yaml"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"labels": "x"}, "unknown key 'labels'"),
        ({"split": {"valid": 0.1}}, "unknown key 'split.valid'"),
        ({"features": {"numeric": ["a"], "text": ["b"]}}, "unknown key 'features.text'"),
        ({"task": "clustering"}, "task 'clustering' is not one of"),
        ({"name": "Claims Fraud"}, "name 'Claims Fraud' must be"),
        ({"split": {"validation": 0.5, "test": 0.5}}, "leave at least 10% of rows to train"),
        ({"features": {"numeric": ["a"], "categorical": ["a"]}}, "both numeric and categorical"),
        ({"gate": {"min_lift": "lots"}}, "'gate.min_lift' has the wrong type"),
        ({"source": "s3://other/raw/"}, "is in bucket 'other'"),
        ({"ingest": {"max_quarantine_fraction": 1.5}}, "ingest.max_quarantine_fraction 1.5 must be between 0 and 1"),
        ({"ingest": {"max_quarantine_fraction": "10%"}}, "'ingest.max_quarantine_fraction' has the wrong type"),
        ({"ingest": {"extra_columns": "ignore"}}, "ingest.extra_columns 'ignore' must be one of drop, keep, fail"),
        ({"ingest": {"partition_by": ""}}, "ingest.partition_by is empty"),
        ({"ingest": {"partition": "day"}}, "unknown key 'ingest.partition'"),
    ],
)
def test_mistakes_name_what_to_fix(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("%", "%")):
        load_config(write(tmp_path, dict(BASE, **change)))


def test_ingest_section_has_defaults_and_takes_its_settings(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, BASE)).ingest == IngestConfig(
        max_quarantine_fraction=0.1, extra_columns="drop", partition_by=None
    )
    settings = {"max_quarantine_fraction": 0, "extra_columns": "keep", "partition_by": "submitted_at"}
    cfg = load_config(write(tmp_path, dict(BASE, ingest=settings)))
    assert cfg.ingest == IngestConfig(max_quarantine_fraction=0.0, extra_columns="keep", partition_by="submitted_at")


def test_missing_required_key_is_named() -> None:
    data = dict(BASE)
    del data["label"]
    with pytest.raises(ConfigError, match="missing required key 'label'"):
        parse_config(data)


def test_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_scheduler_address_from_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://10.0.0.1:8786")
    cfg = load_config(write(tmp_path, dict(BASE, dask={"scheduler_address": "tcp://file:1"})))
    assert cfg.dask.scheduler_address == "tcp://10.0.0.1:8786"


@pytest.mark.parametrize(
    ("split", "expected"),
    [
        ({}, ("random", None)),
        ({"method": "stratified"}, ("stratified", None)),
        ({"method": "time", "column": "submitted_at"}, ("time", "submitted_at")),
        ({"method": "group", "column": "claimant_id", "validation": 0.2}, ("group", "claimant_id")),
    ],
)
def test_split_method_and_column_are_read(tmp_path: Path, split: dict, expected: tuple) -> None:
    cfg = load_config(write(tmp_path, dict(BASE, split=split)))
    assert (cfg.split.method, cfg.split.column) == expected


@pytest.mark.parametrize(
    ("task", "split", "message"),
    [
        ("binary_classification", {"method": "kfold"}, "split.method 'kfold' is not one of random, stratified, time, group"),
        ("binary_classification", {"method": "time"}, "split.column is required for split.method time"),
        ("binary_classification", {"method": "group"}, "split.column is required for split.method group"),
        ("binary_classification", {"column": "submitted_at"}, "split.column is only for split.method time or group"),
        ("binary_classification", {"method": "stratified", "column": "is_fraud"}, "stratified splits by the label"),
        ("binary_classification", {"method": "time", "column": 3}, "'split.column' has the wrong type"),
        ("binary_classification", {"method": "group", "column": "is_fraud"}, "split.column 'is_fraud' is the label"),
        ("binary_classification", {"method": "time", "colum": "t"}, "unknown key 'split.colum'"),
        ("regression", {"method": "stratified"}, "split.method stratified needs classes"),
    ],
)
def test_split_mistakes_name_the_key(tmp_path: Path, task: str, split: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, dict(BASE, task=task, split=split)))


# --- training, tuning, aws and ranking settings (issue 5) ---------------------------------


def test_training_settings_are_typed_and_entry_point_resolves_next_to_the_config(tmp_path: Path) -> None:
    data = dict(
        BASE,
        train={
            "spot": True,
            "max_runtime_s": 600,
            "volume_size_gb": 50,
            "network_isolation": True,
            "entry_point": "scripts/train.py",
            "framework": "pytorch",
            "framework_version": "2.5",
            "tags": {"team": "fraud", "cost-center": 42},
        },
        aws={"kms_key_id": "alias/updraft", "subnets": ["subnet-1", "subnet-2"], "security_group_ids": ["sg-1"]},
    )
    cfg = load_config(write(tmp_path, data))
    assert cfg.train.spot and cfg.train.effective_max_wait_s == 1200
    assert cfg.train.entry_point == str(tmp_path / "scripts" / "train.py")
    assert cfg.train.framework == "pytorch" and cfg.train.volume_size_gb == 50
    assert cfg.aws.subnets == ("subnet-1", "subnet-2") and cfg.aws.security_group_ids == ("sg-1",)


@pytest.mark.parametrize(
    ("train", "aws", "message"),
    [
        ({"max_wait_s": 100}, {}, "max_wait_s only applies with train.spot"),
        ({"spot": True, "max_runtime_s": 600, "max_wait_s": 300}, {}, "must be at least train.max_runtime_s"),
        ({"backend": "spark"}, {}, "train.backend 'spark' must be one of container, dask"),
        ({"framework": "pytorch"}, {}, "set train.entry_point"),
        ({"framework": "tensorflow", "entry_point": "t.py"}, {}, "train.framework 'tensorflow'"),
        ({"entry_point": "t.py", "backend": "dask"}, {}, "remove train.backend"),
        ({}, {"subnets": ["subnet-1"]}, "aws.subnets and aws.security_group_ids go together"),
        ({}, {"subnets": "subnet-1", "security_group_ids": ["sg"]}, "'aws.subnets' has the wrong type"),
    ],
)
def test_training_settings_that_cannot_work_are_refused(tmp_path: Path, train: dict, aws: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, dict(BASE, train=train, aws=aws)))


def test_tune_ranges_are_parsed_and_the_search_is_off_without_them(tmp_path: Path) -> None:
    assert not load_config(write(tmp_path, BASE)).tune.enabled
    data = dict(
        BASE,
        tune={
            "ranges": {
                "eta": {"type": "continuous", "min": 0.01, "max": 0.3, "scaling": "log"},
                "max_depth": {"type": "integer", "min": 2, "max": 8},
                "grow_policy": {"type": "categorical", "values": ["depthwise", "lossguide"]},
            },
            "max_trials": 8,
            "max_parallel": 2,
            "objective": "validation:auc",
        },
    )
    tune = load_config(write(tmp_path, data)).tune
    assert tune.enabled and tune.max_trials == 8 and tune.objective == "validation:auc"
    by_name = {r.name: r for r in tune.ranges}
    assert (by_name["eta"].min, by_name["eta"].max, by_name["eta"].scaling) == (0.01, 0.3, "log")
    assert by_name["max_depth"].type == "integer"
    assert by_name["grow_policy"].values == ("depthwise", "lossguide")


@pytest.mark.parametrize(
    ("ranges", "message"),
    [
        ({"eta": {"type": "continuous", "min": 0.3, "max": 0.1}}, "needs min < max"),
        ({"eta": {"type": "uniform", "min": 0, "max": 1}}, "tune.ranges.eta.type 'uniform'"),
        ({"eta": {"type": "continuous", "min": 0, "max": 1, "scaling": "log"}}, "log scaling needs min > 0"),
        ({"depth": {"type": "integer", "min": 1.5, "max": 4}}, "must be a whole number"),
        ({"policy": {"type": "categorical", "values": []}}, "non-empty 'values'"),
        ({"eta": {"type": "continuous", "min": 0, "max": 1, "step": 0.1}}, "unknown key 'tune.ranges.eta.step'"),
    ],
)
def test_bad_tune_ranges_name_the_range(tmp_path: Path, ranges: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, dict(BASE, tune={"ranges": ranges})))


def test_bad_tune_objective_and_strategy_are_refused(tmp_path: Path) -> None:
    ranges = {"eta": {"type": "continuous", "min": 0.01, "max": 0.3}}
    with pytest.raises(ConfigError, match="must look like validation:<metric>"):
        load_config(write(tmp_path, dict(BASE, tune={"ranges": ranges, "objective": "auc"})))
    with pytest.raises(ConfigError, match="tune.strategy 'grid'"):
        load_config(write(tmp_path, dict(BASE, tune={"ranges": ranges, "strategy": "grid"})))


def test_ranking_needs_a_group_column_and_splits_by_it(tmp_path: Path) -> None:
    ranking = dict(BASE, task="ranking", label="relevance")
    with pytest.raises(ConfigError, match="task ranking needs 'group'"):
        load_config(write(tmp_path, ranking))
    cfg = load_config(write(tmp_path, dict(ranking, group="query_id")))
    assert cfg.group == "query_id"
    assert (cfg.split.method, cfg.split.column) == ("group", "query_id")
    explicit = load_config(write(tmp_path, dict(ranking, group="query_id", split={"method": "time", "column": "ts"})))
    assert explicit.split.method == "time"
    with pytest.raises(ConfigError, match="'group' is only for task ranking"):
        load_config(write(tmp_path, dict(BASE, group="query_id")))


def test_metric_direction_for_tuning_objectives() -> None:
    from tasks.config import metric_is_maximized

    for name in ("validation:auc", "validation:ndcg@10", "validation:map@10", "validation:roc_auc", "validation:aucpr"):
        assert metric_is_maximized(name), name
    for name in ("validation:rmse", "validation:logloss", "validation:mlogloss", "validation:error", "validation:mae"):
        assert not metric_is_maximized(name), name
