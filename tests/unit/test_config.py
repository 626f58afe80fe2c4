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
