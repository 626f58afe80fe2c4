"""Preprocess for ranking (a query id per row) and anomaly detection (an optional binary label)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.config import Features, PipelineConfig, SplitConfig
from tasks.errors import ConfigError, DataError
from tasks.features.preprocess import (
    PreprocessResult,
    features_without_group,
    preprocess_dataset,
)
from tasks.features.split import SPLITS
from tasks.features.transform import encode_labels, group_ids

FEATURES = Features(numeric=("price", "clicks"), categorical=("brand",))
INPUTS = ["price", "clicks", "brand"]
KINDS = {"query": "categorical", "price": "numeric", "clicks": "numeric", "brand": "categorical", "grade": "numeric"}
GROUP_SPLIT = SplitConfig(method="group", column="query")


def _write(frame: pd.DataFrame, folder: Path, pieces: int) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(frame), pieces + 1).astype(int)
    for i in range(pieces):
        frame.iloc[bounds[i] : bounds[i + 1]].to_parquet(folder / f"part-{i}.parquet", index=False, row_group_size=100)
    return str(folder) + "/"


def _outputs(result: PreprocessResult) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(result.features_uri + name) for name in SPLITS}


def _spec(result: PreprocessResult) -> dict:
    return json.loads(Path(result.transform_uri).read_text())


# --------------------------------------------------------------------------------------
# ranking


def _queries(n_queries: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 12, n_queries)
    frame = pd.DataFrame(
        {
            "query": np.repeat([f"q{i}" for i in range(n_queries)], sizes),
            "price": rng.exponential(20.0, sizes.sum()),
            "clicks": rng.poisson(3, sizes.sum()).astype(np.float64),
            "brand": rng.choice(["acme", "bolt", "core"], sizes.sum()),
        }
    )
    frame["grade"] = np.clip(np.round(frame["clicks"] / 2), 0, 4)
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _rank(uri: str, out: str, **overrides) -> PreprocessResult:
    args = dict(
        curated_uri=uri, features_uri=out, features=FEATURES, kinds=KINDS, label="grade", task="ranking",
        split=GROUP_SPLIT, input_columns=INPUTS, storage_options=None, group="query",
    )
    args.update(overrides)
    return preprocess_dataset(**args)


def _expected_id(text: str) -> int:
    """The documented id: BLAKE2b-64 of the UTF-8 text, big-endian, top bit cleared."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") & (2**63 - 1)


def test_ranking_splits_carry_each_rows_query_id_and_keep_queries_whole(tmp_path):
    frame = _queries()
    result = _rank(_write(frame, tmp_path / "c", pieces=4), str(tmp_path / "f"))

    spec = _spec(result)
    assert spec["task"] == "ranking" and spec["group"] == "query" and spec["label_classes"] is None
    assert "query" not in spec["input_columns"] and result.feature_names == INPUTS
    outputs = _outputs(result)
    ids = {_expected_id(q): q for q in frame["query"].unique()}
    seen: dict[int, str] = {}
    for name, split in outputs.items():
        assert list(split.columns) == [*INPUTS, "_label", "_group"]
        assert split["_group"].dtype == np.int64 and split["_label"].dtype == np.float64
        assert set(split["_group"]) <= set(ids)  # every id is the hash of a query of the data
        for gid in split["_group"].unique():
            assert gid not in seen, f"query {ids[gid]} is in both {seen.get(gid)} and {name}"
            seen[gid] = name
    assert len(seen) == frame["query"].nunique()
    sizes = frame["query"].map(_expected_id).value_counts()
    all_rows = pd.concat(outputs.values())
    assert all_rows["_group"].value_counts().sort_index().equals(sizes.sort_index().rename("count"))
    assert sorted(all_rows["_label"]) == sorted(frame["grade"])


def test_query_ids_do_not_depend_on_partitioning_or_on_the_values_storage(tmp_path):
    frame = _queries(60)
    one = pd.concat(_outputs(_rank(_write(frame, tmp_path / "one", 1), str(tmp_path / "a"))).values())
    many = pd.concat(_outputs(_rank(_write(frame.iloc[::-1], tmp_path / "many", 5), str(tmp_path / "b"))).values())
    assert sorted(one["_group"]) == sorted(many["_group"])
    # 7, 7.0 and "7" are one query, as in vocabularies and label classes.
    assert len({*group_ids(pd.Series([7])), *group_ids(pd.Series([7.0])), *group_ids(pd.Series(["7"]))}) == 1


def test_rows_without_a_query_form_one_group_with_a_warning(tmp_path, caplog):
    frame = _queries(80)
    frame.loc[frame.index[:17], "query"] = None
    with caplog.at_level(logging.WARNING, logger="updraft.preprocess"):
        result = _rank(_write(frame, tmp_path / "c", 2), str(tmp_path / "f"))
    assert "17 rows have no value in the group column 'query'" in caplog.text
    rows = pd.concat(_outputs(result).values())
    assert (rows["_group"] == 0).sum() == 17 and sum(result.rows.values()) == len(frame)
    assert (group_ids(pd.Series(["q1", None, np.nan])) == [_expected_id("q1"), 0, 0]).all()


def test_rows_without_a_grade_are_dropped_and_negative_grades_refused(tmp_path, caplog):
    frame = _queries(60)
    frame.loc[frame.index[:5], "grade"] = np.nan
    with caplog.at_level(logging.WARNING, logger="updraft.preprocess"):
        result = _rank(_write(frame, tmp_path / "c", 1), str(tmp_path / "f"))
    assert "dropped 5 rows with no value in label 'grade'" in caplog.text
    assert sum(result.rows.values()) == len(frame) - 5

    frame.loc[frame.index[7], "grade"] = -1.0
    with pytest.raises(DataError, match="relevance grades of 0 or more in label 'grade'.*found -1"):
        _rank(_write(frame, tmp_path / "neg", 1), str(tmp_path / "f"))


def test_ranking_input_problems_name_what_to_fix(tmp_path):
    frame = _queries(40).assign(grade_text=lambda f: f["grade"].astype(str))
    uri = _write(frame, tmp_path / "c", 1)
    out = str(tmp_path / "f")
    with pytest.raises(ConfigError, match="task ranking needs 'group'"):
        _rank(uri, out, group=None)
    with pytest.raises(DataError, match="group column 'session' .* is not in the curated data"):
        _rank(uri, out, group="session")
    with pytest.raises(DataError, match="ranking needs a numeric relevance grade"):
        _rank(uri, out, label="grade_text")
    with pytest.raises(DataError, match="ranking needs a numeric relevance grade .* categorical in the contract"):
        _rank(uri, out, kinds=dict(KINDS, grade="categorical"))
    with pytest.raises(ConfigError, match="may not be named '_group'"):
        _rank(uri, out, features=Features(numeric=("price", "_group")), input_columns=["price", "_group"])
    with pytest.raises(ConfigError, match="'group' is only for task ranking"):
        _rank(uri, out, task="regression")


def test_a_split_that_can_cut_queries_is_warned_about(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="updraft.preprocess"):
        _rank(_write(_queries(60), tmp_path / "c", 1), str(tmp_path / "f"), split=SplitConfig())
    assert "split.method random may put rows of one query ('query') in several splits" in caplog.text


def _config(**overrides) -> PipelineConfig:
    args = dict(name="shop", bucket="b", source="raw", contract="/c.yaml", label="grade", task="ranking", group="query")
    args.update(overrides)
    return PipelineConfig(**args)


def test_the_query_column_is_a_feature_only_when_listed():
    defaulted = Features(numeric=("price", "clicks"), categorical=("query", "brand"))
    inputs = ["query", "price", "clicks", "brand"]
    features, columns = features_without_group(_config(), defaulted, inputs)
    assert features.categorical == ("brand",) and columns == ["price", "clicks", "brand"]
    listed = _config(features=defaulted)
    assert features_without_group(listed, defaulted, inputs) == (defaulted, inputs)


# --------------------------------------------------------------------------------------
# anomaly detection


def _events(n: int = 1500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "price": rng.normal(50, 10, n),
            "clicks": rng.poisson(3, n).astype(np.float64),
            "brand": rng.choice(["acme", "bolt", "core"], n),
            "fraud": (rng.random(n) < 0.05).astype(np.float64),
        }
    )
    frame.loc[rng.random(n) < 0.6, "fraud"] = np.nan  # most rows were never checked
    return frame


def _detect(uri: str, out: str, **overrides) -> PreprocessResult:
    args = dict(
        curated_uri=uri, features_uri=out, features=FEATURES, kinds=dict(KINDS, fraud="numeric"), label="fraud",
        task="anomaly_detection", split=SplitConfig(), input_columns=INPUTS, storage_options=None,
    )
    args.update(overrides)
    return preprocess_dataset(**args)


def test_anomaly_rows_without_a_label_are_kept_as_unknown(tmp_path, caplog):
    frame = _events()
    with caplog.at_level(logging.INFO, logger="updraft.preprocess"):
        result = _detect(_write(frame, tmp_path / "c", 3), str(tmp_path / "f"))
    assert sum(result.rows.values()) == len(frame) and "dropped" not in caplog.text
    known = int(frame["fraud"].notna().sum())
    assert f"label 'fraud' is known for {known} of {len(frame)} rows" in caplog.text
    spec = _spec(result)
    assert spec["label_classes"] == ["0", "1"] and "group" not in spec  # "1", second in sorted order, is the anomaly
    labels = pd.concat(_outputs(result).values())["_label"]
    assert labels.isna().sum() == len(frame) - known
    assert labels.value_counts().to_dict() == {0.0: (frame["fraud"] == 0).sum(), 1.0: (frame["fraud"] == 1).sum()}


def test_anomaly_data_without_any_label_trains_unsupervised(tmp_path, caplog):
    frame = _events().assign(fraud=np.nan)
    with caplog.at_level(logging.WARNING, logger="updraft.preprocess"):
        result = _detect(_write(frame, tmp_path / "c", 2), str(tmp_path / "f"))
    assert "label 'fraud' has no values" in caplog.text
    spec = _spec(result)
    assert spec["label_classes"] is None
    assert pd.concat(_outputs(result).values())["_label"].isna().all()
    with pytest.raises(DataError, match="fitted on data without any"):
        encode_labels(pd.Series([1.0, None]), spec)


def test_anomaly_labels_must_be_two_classes(tmp_path, caplog):
    frame = _events()
    three = frame.assign(fraud=frame["fraud"].where(frame.index % 7 != 0, 2.0))
    with pytest.raises(DataError, match="exactly 2 distinct values .* found 3 \\(0, 1, 2\\)"):
        _detect(_write(three, tmp_path / "three", 1), str(tmp_path / "f"))
    one = frame.assign(fraud=frame["fraud"].where(frame["fraud"] != 1))
    with pytest.raises(DataError, match="found 1 \\(0\\).*leave it empty to train unsupervised"):
        _detect(_write(one, tmp_path / "one", 1), str(tmp_path / "f"))
    # Text classes sort as text: here the common class would be the anomaly, and that is said.
    named = frame.assign(fraud=frame["fraud"].map({0.0: "normal", 1.0: "anomaly"}))
    with caplog.at_level(logging.WARNING, logger="updraft.preprocess"):
        _detect(_write(named, tmp_path / "named", 1), str(tmp_path / "f"), kinds=dict(KINDS, fraud="categorical"))
    assert "'normal' is taken as the anomaly (second in sorted order)" in caplog.text


def test_a_stratified_split_keeps_the_anomaly_share_and_every_unlabelled_row(tmp_path):
    frame = _events(4000, seed=3)
    result = _detect(_write(frame, tmp_path / "c", 3), str(tmp_path / "f"), split=SplitConfig(method="stratified"))
    outputs = _outputs(result)
    assert sum(result.rows.values()) == len(frame)
    anomalies = (frame["fraud"] == 1).sum()
    for name, share in (("validation", 0.15), ("test", 0.15)):
        assert (outputs[name]["_label"] == 1).sum() == pytest.approx(share * anomalies, abs=2)
    assert sum(split["_label"].isna().sum() for split in outputs.values()) == frame["fraud"].isna().sum()
