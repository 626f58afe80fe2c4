"""preprocess_dataset end to end on local curated Parquet: what the train stage will read."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster

from tasks.config import Features, SplitConfig
from tasks.errors import ConfigError, DataError
from tasks.features.preprocess import PreprocessResult, preprocess_dataset
from tasks.features.split import SPLITS, assign_splits

FEATURES = Features(numeric=("amount", "age", "rid"), categorical=("kind",))
KINDS = {"rid": "numeric", "age": "numeric", "amount": "numeric", "kind": "categorical", "label": "categorical"}
INPUTS = ["rid", "age", "amount", "kind"]
N = 2000


def _curated(n: int = N, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "rid": np.arange(n, dtype=np.int64),
            "age": rng.normal(40, 10, n),
            "amount": rng.exponential(100, n).astype(np.float32),
            "kind": rng.choice(["clinic", "hospital", "lab", "home"], n, p=[0.4, 0.3, 0.2, 0.1]),
            "label": rng.choice(["fraud", "ok"], n, p=[0.2, 0.8]),
        }
    )
    frame.loc[rng.random(n) < 0.05, "age"] = np.nan
    frame.loc[rng.random(n) < 0.02, "kind"] = None
    frame.loc[rng.random(n) < 0.03, "label"] = None
    return frame


def _write(frame: pd.DataFrame, folder: Path, pieces: int) -> str:
    """Curated Parquet as ingest leaves it: several files, some in subfolders."""
    bounds = np.linspace(0, len(frame), pieces + 1).astype(int)
    for i in range(pieces):
        sub = folder / (f"batch-{i % 2}" if pieces > 1 else "")
        sub.mkdir(parents=True, exist_ok=True)
        frame.iloc[bounds[i] : bounds[i + 1]].to_parquet(sub / f"part-{i}.parquet", index=False, row_group_size=150)
    return str(folder) + "/"


def _run(curated_uri: str, features_uri: str, **overrides) -> PreprocessResult:
    args = dict(
        curated_uri=curated_uri,
        features_uri=features_uri,
        features=FEATURES,
        kinds=KINDS,
        label="label",
        task="binary_classification",
        split=SplitConfig(),
        input_columns=INPUTS,
        storage_options=None,
    )
    args.update(overrides)
    return preprocess_dataset(**args)


def _outputs(result: PreprocessResult) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(result.features_uri + name) for name in SPLITS}


def _ids_by_split(result: PreprocessResult) -> dict[str, list[int]]:
    """Undo the standardisation of the rid feature to see which rows went where."""
    spec = json.loads(Path(result.transform_uri).read_text())
    rid = next(e for e in spec["numeric"] if e["name"] == "rid")
    return {
        name: sorted(np.rint(frame["rid"].to_numpy(np.float64) * rid["std"] + rid["mean"]).astype(int).tolist())
        for name, frame in _outputs(result).items()
    }


@pytest.fixture
def curated(tmp_path: Path) -> tuple[pd.DataFrame, str]:
    frame = _curated()
    return frame, _write(frame, tmp_path / "curated", pieces=5)


def test_writes_the_feature_splits_and_transform_the_train_stage_reads(curated, tmp_path, caplog) -> None:
    frame, uri = curated
    with caplog.at_level(logging.INFO, logger="updraft.preprocess"):
        result = _run(uri, str(tmp_path / "features"))

    labelled = frame[frame["label"].notna()]
    assert sum(result.rows.values()) == len(labelled)
    assert f"dropped {len(frame) - len(labelled)} rows" in caplog.text
    assert all(0.1 < result.rows[s] / len(labelled) < 0.2 for s in ("validation", "test"))
    assert result.transform_uri == result.features_uri + "transform.json"
    assert result.feature_names == INPUTS

    outputs = _outputs(result)
    for name, split in outputs.items():
        assert list(split.columns) == [*INPUTS, "_label"]
        assert split.dtypes.iloc[:-1].eq(np.float32).all() and split["_label"].dtype == np.float64
        assert len(split) == result.rows[name]
        assert set(split["_label"].unique()) == {0.0, 1.0}  # "fraud" -> 0, "ok" -> 1
    assert sorted(sum(_ids_by_split(result).values(), [])) == sorted(labelled["rid"].tolist())

    spec = json.loads(Path(result.transform_uri).read_text())
    assert spec["label_classes"] == ["fraud", "ok"] and spec["input_columns"] == INPUTS
    # The fit saw the train split only.
    train = labelled[assign_splits(labelled.reset_index(drop=True), SplitConfig()) == 0]
    assert len(train) == result.rows["train"]
    age = next(e for e in spec["numeric"] if e["name"] == "age")
    assert age["mean"] == pytest.approx(train["age"].mean(), rel=1e-12)
    assert age["std"] == pytest.approx(train["age"].std(ddof=0), rel=1e-9)
    assert age["null_count"] == train["age"].isna().sum()
    assert spec["categorical"][0]["vocabulary"] == train["kind"].value_counts().index.tolist()
    # Train features are standardised with the train statistics.
    assert outputs["train"]["age"].mean() == pytest.approx(0.0, abs=1e-3)


def test_distributed_workers_give_the_single_process_result(curated, tmp_path) -> None:
    _, uri = curated
    with dask.config.set(scheduler="synchronous"):
        reference = _run(uri, str(tmp_path / "single"))
    expected_spec = json.loads(Path(reference.transform_uri).read_text())
    expected = _outputs(reference)

    for processes in (False, True):
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=processes, dashboard_address=None) as cluster, Client(
            cluster
        ) as client:
            result = _run(uri, str(tmp_path / f"cluster-{processes}"), client=client)
        assert result.rows == reference.rows
        spec = json.loads(Path(result.transform_uri).read_text())
        assert spec == expected_spec
        for name, frame in _outputs(result).items():
            pd.testing.assert_frame_equal(frame, expected[name])


def test_splits_do_not_depend_on_how_the_data_is_partitioned(tmp_path) -> None:
    frame = _curated()
    one = _run(_write(frame, tmp_path / "one", pieces=1), str(tmp_path / "out"))
    one_ids = _ids_by_split(one)
    shuffled = frame.sample(frac=1.0, random_state=3)
    many = _run(_write(shuffled, tmp_path / "many", pieces=7), str(tmp_path / "out"))  # same output folder
    assert many.rows == one.rows
    assert _ids_by_split(many) == one_ids
    assert len(list((tmp_path / "out" / "train").glob("*.parquet"))) > 1  # nothing stale from the first run
    assert sum(len(v) for v in _ids_by_split(many).values()) == sum(many.rows.values())


def test_all_missing_and_constant_columns_warn_and_encode_as_zero(tmp_path, caplog) -> None:
    frame = _curated(400).assign(empty=np.nan, flat=5.0)
    features = Features(numeric=("age", "empty", "flat"), categorical=())
    with caplog.at_level(logging.WARNING, logger="updraft.preprocess"):
        result = _run(
            _write(frame, tmp_path / "c", pieces=2),
            str(tmp_path / "f"),
            features=features,
            input_columns=["age", "empty", "flat"],
        )
    assert "'empty' has no values" in caplog.text and "'flat' is constant" in caplog.text
    train = _outputs(result)["train"]
    assert train["empty"].eq(0).all() and train["flat"].eq(0).all()


def test_multiclass_and_regression_labels(tmp_path) -> None:
    frame = _curated(600)
    frame["grade"] = np.random.default_rng(1).choice(["a", "b", "c"], len(frame))
    frame["score"] = frame["age"] * 2.0
    uri = _write(frame, tmp_path / "c", pieces=2)
    kinds = dict(KINDS, grade="categorical", score="numeric")
    features = Features(numeric=("amount",), categorical=("kind",))
    inputs = ["amount", "kind"]

    multi = _run(uri, str(tmp_path / "m"), label="grade", task="multiclass_classification", kinds=kinds, features=features, input_columns=inputs)
    assert json.loads(Path(multi.transform_uri).read_text())["label_classes"] == ["a", "b", "c"]
    assert set(pd.read_parquet(multi.features_uri + "train")["_label"].unique()) == {0.0, 1.0, 2.0}

    reg = _run(uri, str(tmp_path / "r"), label="score", task="regression", kinds=kinds, features=features, input_columns=inputs)
    labelled = frame["score"].notna().sum()  # rows with a missing age have no score: dropped
    assert sum(reg.rows.values()) == labelled
    values = pd.concat(_outputs(reg).values())["_label"]
    assert sorted(values.tolist()) == pytest.approx(sorted(frame["score"].dropna().tolist()))


def test_unusable_labels_say_what_was_found(tmp_path) -> None:
    frame = _curated(300)
    frame["label"] = np.random.default_rng(2).choice(["a", "b", "c"], len(frame))
    frame["one"] = "same"
    uri = _write(frame, tmp_path / "c", pieces=1)
    with pytest.raises(DataError, match="exactly 2 distinct values.*found 3"):
        _run(uri, str(tmp_path / "f"))
    with pytest.raises(DataError, match="at least 2 distinct values.*found 1"):
        _run(uri, str(tmp_path / "f"), label="one", task="multiclass_classification")
    with pytest.raises(DataError, match="regression needs a numeric label"):
        _run(uri, str(tmp_path / "f"), task="regression", kinds=dict(KINDS, label="numeric"))
    frame["label"] = None
    with pytest.raises(DataError, match="no row .* has a value in label"):
        _run(_write(frame, tmp_path / "empty", pieces=1), str(tmp_path / "f"))


def test_too_few_rows_for_every_split_is_an_error(tmp_path) -> None:
    uri = _write(_curated(3), tmp_path / "c", pieces=1)
    with pytest.raises(DataError, match="split has no rows"):
        _run(uri, str(tmp_path / "f"))


def test_input_problems_name_what_to_fix(curated, tmp_path) -> None:
    _, uri = curated
    out = str(tmp_path / "f")
    with pytest.raises(DataError, match="no curated Parquet files"):
        _run(str(tmp_path / "nothing-here"), out)
    with pytest.raises(DataError, match="no column 'weight'"):
        _run(uri, out, features=Features(numeric=("age", "weight")), input_columns=["age", "weight"])
    with pytest.raises(ConfigError, match="label 'label' is also listed"):
        _run(uri, out, features=Features(numeric=("age",), categorical=("label",)), input_columns=["age", "label"])
    with pytest.raises(ConfigError, match="'kind' is categorical in the contract"):
        _run(uri, out, features=Features(numeric=("age", "kind")), input_columns=["age", "kind"])
    with pytest.raises(ConfigError, match="task ranking needs 'group'"):
        _run(uri, out, task="ranking", label="age")
    with pytest.raises(DataError, match="group column 'query' .* is not in the curated data"):
        _run(uri, out, task="ranking", label="age", group="query", features=Features(numeric=("amount",)), input_columns=["amount"])
    with pytest.raises(ConfigError, match="'age' is not a column of the contract"):
        _run(uri, out, input_columns=["rid", "amount", "kind"])
