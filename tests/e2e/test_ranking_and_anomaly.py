"""Ranking and anomaly detection through the whole pipeline: `updraft run` from raw CSV to a live endpoint.

Each dataset has a known structure (relevance driven by two features; anomalies far
from a dense normal cloud), so the judged model must beat its baselines and the
endpoint must score new rows the way the model does.
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest
import requests
import yaml
from pandera.pandas import Check, Column, DataFrameSchema

from tasks.aws.embedded import EmbeddedAWS
from tests.e2e.conftest import run_cli

pytestmark = pytest.mark.e2e


def _ranking_rows(rng: np.random.Generator, queries: int = 300, per_query: int = 12) -> pd.DataFrame:
    n = queries * per_query
    frame = pd.DataFrame({
        "query_id": np.repeat([f"q{i:04d}" for i in range(queries)], per_query),
        "text_match": rng.normal(size=n).round(4),
        "freshness": rng.normal(size=n).round(4),
        "noise": rng.normal(size=n).round(4),
        "source": rng.choice(["news", "blog", "wiki"], size=n),
    })
    signal = 1.5 * frame["text_match"] + 0.8 * frame["freshness"] + rng.normal(scale=0.5, size=n)
    frame["relevance"] = np.digitize(signal, [0.0, 1.0, 2.0]).astype(int)  # grades 0..3
    return frame


def _anomaly_rows(rng: np.random.Generator, n: int = 4000, rate: float = 0.03) -> pd.DataFrame:
    """Latency tracks bytes closely; anomalies break that tie with values that are each unremarkable alone.

    So a per-column z-score rule sees little, and a model of the joint shape sees them.
    """
    anomalous = rng.random(n) < rate
    size = int(anomalous.sum())
    bytes_ = rng.normal(size=n)
    latency = bytes_ + rng.normal(scale=0.15, size=n)
    odd = rng.uniform(0.8, 2.0, size=size) * rng.choice([-1, 1], size=size)
    bytes_[anomalous], latency[anomalous] = odd, -odd + rng.normal(scale=0.15, size=size)
    frame = pd.DataFrame({"latency": latency, "bytes": bytes_, "errors": rng.normal(size=n), "retries": rng.normal(size=n)}).round(4)
    frame["is_anomaly"] = anomalous.astype(int)
    frame.loc[rng.random(n) < 0.3, "is_anomaly"] = pd.NA  # many logs are never labelled
    return frame


def _run(tmp_path: Path, name: str, frame: pd.DataFrame, schema: DataFrameSchema, extra: dict) -> dict:
    bucket = f"{name}-data"
    path = tmp_path / f"{name}.csv"
    frame.to_csv(path, index=False)
    (tmp_path / "contract.yaml").write_text(schema.to_yaml())
    config = {"name": name, "bucket": bucket, "source": f"raw/{name}/", "contract": "contract.yaml", **extra}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(path), bucket, f"raw/{name}/{path.name}")
    result = run_cli("run", "--config", str(tmp_path / "config.yaml"), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_a_ranking_model_orders_queries_better_than_its_baselines(embedded: EmbeddedAWS, tmp_path: Path) -> None:
    frame = _ranking_rows(np.random.default_rng(5))
    schema = DataFrameSchema({
        "query_id": Column(str),
        "text_match": Column(float, coerce=True),
        "freshness": Column(float, coerce=True),
        "noise": Column(float, coerce=True),
        "source": Column(str, Check.isin(["news", "blog", "wiki"])),
        "relevance": Column(int, Check.in_range(0, 3), coerce=True),
    }, coerce=True)
    summary = _run(tmp_path, "search", frame, schema, {
        "label": "relevance", "task": "ranking", "group": "query_id",
        "train": {"hyperparameters": {"num_round": 60, "max_depth": 4}},
    })

    evaluation = summary["evaluate"]
    assert evaluation["metric"] == "ndcg@10"
    assert evaluation["passed"] is True, evaluation["reason"]
    assert evaluation["model"] > max(evaluation["baselines"].values())
    assert summary["train"]["metrics"]["validation:ndcg@10"] > 0.7
    # the endpoint scores rows (the query id is not a model input): a more relevant-looking row scores higher
    rows = [{"text_match": 2.0, "freshness": 1.0, "noise": 0.0, "source": "wiki"},
            {"text_match": -2.0, "freshness": -1.0, "noise": 0.0, "source": "wiki"}]
    answer = requests.post(summary["deploy"]["url"], json={"instances": rows}, timeout=30)
    assert answer.status_code == 200, answer.text
    high, low = answer.json()["predictions"]
    assert high > low


def test_an_anomaly_detector_is_judged_on_the_labelled_rows(embedded: EmbeddedAWS, tmp_path: Path) -> None:
    frame = _anomaly_rows(np.random.default_rng(9))
    schema = DataFrameSchema({
        "latency": Column(float, coerce=True),
        "bytes": Column(float, coerce=True),
        "errors": Column(float, coerce=True),
        "retries": Column(float, coerce=True),
        "is_anomaly": Column(float, Check.isin([0, 1]), coerce=True, nullable=True),
    }, coerce=True)
    summary = _run(tmp_path, "ops", frame, schema, {
        "label": "is_anomaly", "task": "anomaly_detection",
        "train": {"hyperparameters": {"n_estimators": 100}},
    })

    evaluation = summary["evaluate"]
    assert evaluation["metric"] == "roc_auc"
    assert evaluation["model"] > 0.8
    assert evaluation["passed"] is True, evaluation["reason"]
    rows = [{"latency": 1.5, "bytes": 1.5, "errors": 0.0, "retries": 0.3},
            {"latency": -1.5, "bytes": 1.5, "errors": 0.0, "retries": 0.3}]
    answer = requests.post(summary["deploy"]["url"], json={"instances": rows}, timeout=30)
    assert answer.status_code == 200, answer.text
    normal, odd = answer.json()["predictions"]
    assert odd > normal
