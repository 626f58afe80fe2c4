"""No training/serving skew: rows sent to the endpoint encode exactly as preprocess wrote them."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from images.inference import serve
from tasks.config import CategoricalTransform, Features, NumericTransform, SplitConfig
from tasks.features.partitions import LABEL_COLUMN, drop_unlabelled
from tasks.features.preprocess import preprocess_dataset
from tasks.features.split import SPLITS, assign_splits
from tasks.features.transform import apply_transform

INPUTS = ["amount", "age", "kind", "agent", "state", "score", "filed_at"]
FEATURES = Features(
    numeric=("amount", "age", "score"),
    categorical=("kind", "agent", "state"),
    datetime=("filed_at",),
    transforms={
        "amount": NumericTransform(impute="median", clip=(0.01, 0.99), log1p=True, missing_indicator=True),
        "age": NumericTransform(scale="minmax"),
        "score": NumericTransform(bins=8, impute="constant", fill_value=-1.0),
        "agent": CategoricalTransform(encode="hash", hash_bits=6),
        "state": CategoricalTransform(encode="onehot", max_categories=3),
    },
)
KINDS = {**{c: "numeric" for c in FEATURES.numeric}, **{c: "categorical" for c in FEATURES.categorical}, "filed_at": "datetime", "label": "categorical"}


def _curated(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "amount": rng.lognormal(4, 1.5, n),
            "age": rng.normal(40, 12, n),
            "kind": rng.choice(["clinic", "hospital", "lab"], n),
            "agent": rng.choice([f"agent-{i}" for i in range(50)], n),
            "state": rng.choice(["CA", "NY", "TX", "WA", "OR"], n, p=[0.4, 0.3, 0.15, 0.1, 0.05]),
            "score": rng.uniform(0, 1, n),
            "filed_at": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 365 * 24 * 3600, n), unit="s"),
            "label": rng.choice(["0", "1"], n),
        }
    )
    for column in ("amount", "age", "kind", "score", "filed_at"):
        frame.loc[rng.random(n) < 0.05, column] = None
    frame.loc[rng.random(n) < 0.01, "amount"] = np.inf
    return frame


def _as_csv(rows: pd.DataFrame) -> bytes:
    """How a client sends rows: text, empty fields for missing values, ISO times, floats in full."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for record in rows[INPUTS].itertuples(index=False):
        fields = []
        for value in record:
            if value is None or (not isinstance(value, str) and pd.isna(value)):
                fields.append("")
            elif isinstance(value, pd.Timestamp):
                fields.append(value.isoformat())
            elif isinstance(value, float):
                fields.append(repr(value))
            else:
                fields.append(str(value))
        writer.writerow(fields)
    return out.getvalue().encode()


def test_rows_through_the_endpoint_encode_exactly_as_preprocess_wrote_them(tmp_path: Path) -> None:
    frame = _curated(3000)
    (tmp_path / "curated").mkdir()
    frame.to_parquet(tmp_path / "curated" / "part-0.parquet", index=False)
    split = SplitConfig()
    result = preprocess_dataset(
        curated_uri=str(tmp_path / "curated") + "/",
        features_uri=str(tmp_path / "features") + "/",
        features=FEATURES,
        kinds=KINDS,
        label="label",
        task="binary_classification",
        split=split,
        input_columns=INPUTS,
        storage_options=None,
    )
    spec = json.loads(Path(result.transform_uri).read_text())
    assert spec["feature_names"] == [
        "amount", "amount__missing", "age", "kind", "agent", "state=CA", "state=NY", "state=TX", "score",
        "filed_at__hour", "filed_at__dayofweek", "filed_at__month",
    ]
    labelled, _ = drop_unlabelled(pd.read_parquet(tmp_path / "curated"), "label", "binary_classification")
    codes = assign_splits(labelled, split)
    for i, name in enumerate(SPLITS):
        written = pd.read_parquet(Path(result.features_uri) / name)
        rows = labelled[codes == i]
        served = apply_transform(serve.parse_csv(_as_csv(rows), spec), spec)
        np.testing.assert_array_equal(served, written[spec["feature_names"]].to_numpy(np.float32), err_msg=name)
        assert written[LABEL_COLUMN].notna().all()
