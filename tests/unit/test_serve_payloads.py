"""Request bodies to predictions: every format, every task, always what ``predict_frame`` gives.

The bundles here are real (tiny XGBoost models, an isolation forest, a user script) over a
transform that uses every kind of column encoding, so the pandas-free CSV path is checked
value for value against ``apply_transform`` and the server's predictions against
``ModelBundle.predict_frame`` for each task and algorithm.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from images.inference import payloads
from images.inference.booster_call import direct_predict_for
from images.inference.csv_rows import CsvRowEncoder
from images.inference.payloads import (
    CSV,
    JSON,
    PARQUET,
    InvalidRequest,
    NotAcceptable,
    PayloadTooLarge,
    UnsupportedContentType,
)
from images.inference.predictor import Predictor
from tasks.features.transform import FORMAT, apply_transform
from tasks.modelbundle import load_model_bundle

INPUTS = ["amount", "age", "score", "kind", "agent", "state", "note", "query"]


def _numeric(name: str, **overrides: Any) -> dict[str, Any]:
    entry = {
        "name": name, "count": 100, "null_count": 5, "mean": 10.0, "std": 4.0, "min": 0.0, "max": 30.0,
        "impute": "mean", "fill": 10.0, "missing_indicator": False, "bins": None, "clip": None,
        "clip_quantiles": None, "log1p": False, "scale": "standard", "shift": 10.0, "divisor": 4.0,
    }
    entry.update(overrides)
    return entry


def make_spec(task: str, label_classes: list[str] | None = None, *, with_datetime: bool = False) -> dict[str, Any]:
    """A transform.json using every encoding: median fill + clip + log1p + missing indicator,
    min-max scaling, quantile bins, vocabulary codes, hash buckets and one-hot columns; ``note``
    and ``query`` are input columns the model ignores. ``with_datetime`` adds a date-time input."""
    inputs = INPUTS + (["filed_at"] if with_datetime else [])
    names = [
        "amount", "amount__missing", "age", "score", "kind", "agent", "state=CA", "state=NY", "state=TX",
    ] + (["filed_at__hour", "filed_at__dayofweek", "filed_at__month"] if with_datetime else [])
    spec = {
        "format": FORMAT,
        "task": task,
        "label": "y",
        "label_classes": label_classes,
        "input_columns": inputs,
        "numeric": [
            _numeric("amount", impute="median", fill=50.0, missing_indicator=True, clip=[0.5, 400.0],
                     clip_quantiles=[0.01, 0.99], log1p=True, shift=3.5, divisor=1.2),
            _numeric("age", scale="minmax", shift=18.0, divisor=62.0),
            _numeric("score", impute="constant", fill=-1.0, bins=[0.25, 0.5, 0.75], scale="none", shift=0.0, divisor=1.0),
        ],
        "categorical": [
            {"name": "kind", "encode": "vocabulary", "vocabulary": ["clinic", "hospital", "lab"], "oov_code": 0},
            {"name": "agent", "encode": "hash", "hash_bits": 4, "oov_code": 0},
            {"name": "state", "encode": "onehot", "vocabulary": ["CA", "NY", "TX"], "oov_code": 0},
        ],
        "datetime": [{"name": "filed_at", "parts": ["hour", "dayofweek", "month"]}] if with_datetime else [],
        "feature_names": names,
        "split": {"validation": 0.15, "test": 0.15, "hash": "x"},
    }
    if task == "ranking":
        spec["group"] = "query"
    return spec


def raw_rows(n: int, seed: int = 0, *, with_datetime: bool = False) -> pd.DataFrame:
    """Input rows as a client holds them: floats with gaps, text with unseen values and gaps."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "amount": rng.lognormal(3, 1.5, n),
            "age": rng.normal(40, 12, n).round(1),
            "score": rng.uniform(0, 1, n),
            "kind": rng.choice(["clinic", "hospital", "lab", "vet"], n).astype(object),
            "agent": rng.choice([f"agent-{i}" for i in range(20)], n).astype(object),
            "state": rng.choice(["CA", "NY", "TX", "WA"], n).astype(object),
            "note": rng.choice(["x", "y z"], n).astype(object),
            "query": rng.integers(0, 10, n).astype(str).astype(object),
        }
    )
    if with_datetime:
        stamps = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 365 * 24 * 3600, n), unit="s")
        frame["filed_at"] = pd.Series(stamps.astype(str), dtype=object)
    for column, rate in (("amount", 0.1), ("age", 0.05), ("score", 0.05), ("kind", 0.05), ("agent", 0.05), ("state", 0.05)):
        mask = rng.random(n) < rate
        frame.loc[mask, column] = np.nan if frame[column].dtype.kind == "f" else None
    return frame


def to_csv(rows: pd.DataFrame, *, quote_all: bool = False) -> bytes:
    """How a client sends rows: no header, empty fields for missing values, floats in full."""
    import csv

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL)
    for record in rows.itertuples(index=False):
        writer.writerow(["" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(v) if isinstance(v, float) else v for v in record])
    return out.getvalue().encode()


def _jsonable(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def to_json_objects(rows: pd.DataFrame) -> bytes:
    records = [{k: _jsonable(v) for k, v in zip(rows.columns, r) if _jsonable(v) is not None} for r in rows.itertuples(index=False)]
    return json.dumps({"instances": records}).encode()


def to_json_lists(rows: pd.DataFrame) -> bytes:
    return json.dumps([[_jsonable(v) for v in r] for r in rows.itertuples(index=False)]).encode()


def to_parquet(rows: pd.DataFrame) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), sink)
    return sink.getvalue()


SCRIPT = '''
import json
import os

import numpy as np


def model_fn(model_dir):
    with open(os.path.join(model_dir, "weights.json")) as handle:
        return np.asarray(json.load(handle), dtype=np.float64)


def predict_fn(data, model):
    return 1.0 / (1.0 + np.exp(-(np.nan_to_num(data.astype(np.float64)) @ model)))
'''


def write_bundle(folder: Path, task: str, *, with_datetime: bool = False, rounds: int = 4) -> Path:
    """A model folder for ``task`` ("binary_classification", "multiclass_classification",
    "regression", "ranking", "anomaly_detection" or "script") fitted on :func:`raw_rows`."""
    import xgboost as xgb

    classes = {"binary_classification": ["no", "yes"], "multiclass_classification": ["a", "b", "c"], "script": ["0", "1"]}
    spec_task = "binary_classification" if task == "script" else task
    spec = make_spec(spec_task, classes.get(task), with_datetime=with_datetime)
    rows = raw_rows(300, seed=1, with_datetime=with_datetime)
    X = apply_transform(rows, spec)
    signal = np.nan_to_num(X[:, 0]) + X[:, 4] - X[:, 2]
    folder.mkdir(parents=True, exist_ok=True)
    metadata: dict[str, Any] = {"task": spec_task, "label": "y", "label_classes": spec["label_classes"],
                                "feature_names": spec["feature_names"], "input_columns": spec["input_columns"]}
    if task == "anomaly_detection":
        from sklearn.ensemble import IsolationForest

        from images.training.anomaly import export_isolation_forest

        forest = IsolationForest(n_estimators=10, random_state=0).fit(X)
        (folder / "isolation-forest.json").write_text(json.dumps(export_isolation_forest(forest, X.shape[1])))
        metadata["algorithm"] = "isolation_forest"
    elif task == "script":
        (folder / "code").mkdir(exist_ok=True)
        (folder / "code" / "inference.py").write_text(SCRIPT)
        (folder / "weights.json").write_text(json.dumps(np.linspace(-0.5, 0.5, X.shape[1]).tolist()))
        metadata["algorithm"] = "script"
    else:
        params: dict[str, Any] = {"max_depth": 3, "nthread": 1, "seed": 1}
        dtrain = xgb.DMatrix(X)
        if task == "binary_classification":
            params["objective"] = "binary:logistic"
            dtrain.set_label((signal > np.median(signal)).astype(np.float32))
        elif task == "multiclass_classification":
            params.update(objective="multi:softprob", num_class=3)
            dtrain.set_label(np.digitize(signal, np.quantile(signal, [1 / 3, 2 / 3])).astype(np.float32))
        elif task == "regression":
            params["objective"] = "reg:squarederror"
            dtrain.set_label(signal.astype(np.float32))
        elif task == "ranking":
            params["objective"] = "rank:pairwise"
            order = np.argsort(rows["query"].to_numpy().astype(int), kind="stable")
            X = X[order]
            dtrain = xgb.DMatrix(X, label=np.clip(np.round(signal[order]), 0, 4).astype(np.float32),
                                 qid=rows["query"].to_numpy().astype(int)[order])
        else:
            raise ValueError(task)
        xgb.train(params, dtrain, num_boost_round=rounds).save_model(str(folder / "xgboost-model.json"))
        metadata["algorithm"] = "xgboost"
    (folder / "transform.json").write_text(json.dumps(spec))
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


TASKS = ("binary_classification", "multiclass_classification", "regression", "ranking", "anomaly_detection", "script")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("bundles")
    found = {task: load_model_bundle(write_bundle(root / task, task)) for task in TASKS}
    found["datetime"] = load_model_bundle(write_bundle(root / "datetime", "binary_classification", with_datetime=True))
    return found


# --- the pandas-free CSV path ---------------------------------------------------------------


def test_the_csv_fast_path_encodes_exactly_as_apply_transform() -> None:
    spec = make_spec("binary_classification", ["no", "yes"])
    encoder = CsvRowEncoder.for_spec(spec)
    assert encoder is not None
    for n, seed in ((1, 3), (2, 4), (257, 5)):
        rows = raw_rows(n, seed=seed)
        rows.loc[rows.index[0], "amount"] = 1e6  # clipped
        body = to_csv(rows)
        fast = encoder.encode(body)
        assert fast is not None, "plain rows must take the fast path"
        expected = apply_transform(payloads.parse_csv(body, spec), spec)
        np.testing.assert_array_equal(fast, expected)
        np.testing.assert_array_equal(fast, apply_transform(rows, spec))
        assert fast.dtype == np.float32 and fast.flags.f_contiguous


@pytest.mark.parametrize(
    "body",
    [
        b'"1.5",30,0.2,clinic,a,CA,x,1\n',  # quotes: csv rules apply
        b" 1.5,30,0.2,clinic,a,CA,x,1\n",  # spaces around a number
        b"NA,30,0.2,clinic,a,CA,x,1\n",  # missing-value text
        b"inf,30,0.2,clinic,a,CA,x,1\n",
        b"1e999,30,0.2,clinic,a,CA,x,1\n",  # overflows to inf
        b"\xef\xbb\xbf1.5,30,0.2,clinic,a,CA,x,1\n",  # a byte-order mark
        b"1.5,30,0.2,clinic,a,CA,x,1\r",  # a bare carriage return
        b"1.5,30,0.2,clinic,a,CA,x\n",  # a field short
        b"1.5,lots,0.2,clinic,a,CA,x,1\n",
        b"1.5,30,0.2,cl\xffinic,a,CA,x,1\n",  # not UTF-8
    ],
)
def test_anything_unusual_is_left_to_the_general_parser(body: bytes) -> None:
    assert CsvRowEncoder.for_spec(make_spec("regression")).encode(body) is None


def test_models_with_date_time_inputs_take_the_general_path() -> None:
    assert CsvRowEncoder.for_spec(make_spec("regression", with_datetime=True)) is None


# --- every task and format gives predict_frame's answer -------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_every_format_predicts_exactly_what_predict_frame_gives(task: str, bundles: dict[str, Any]) -> None:
    bundle = bundles[task]
    predictor = Predictor(bundle)
    rows = raw_rows(40, seed=7)
    expected = bundle.predict_frame(rows)
    assert len(expected) == 40
    bodies = {
        "csv (fast path)": (to_csv(rows), CSV),
        "csv (quoted: general path)": (to_csv(rows, quote_all=True), CSV),
        "json objects": (to_json_objects(rows), JSON),
        "json lists": (to_json_lists(rows), JSON),
        "parquet": (to_parquet(rows), PARQUET),
    }
    for name, (body, content_type) in bodies.items():
        assert predictor.predict(body, content_type) == expected, name
    one = rows.iloc[[3]]
    assert predictor.predict(to_csv(one), CSV) == bundle.predict_frame(one)
    if task == "multiclass_classification":
        assert set(expected) <= {"a", "b", "c"}
    else:
        assert all(isinstance(p, float) for p in expected)


def test_date_time_models_predict_through_the_general_path(bundles: dict[str, Any]) -> None:
    bundle = bundles["datetime"]
    rows = raw_rows(25, seed=8, with_datetime=True)
    predictor = Predictor(bundle)
    assert not predictor.skips_pandas
    assert predictor.predict(to_csv(rows), CSV) == bundle.predict_frame(rows)
    with pytest.raises(InvalidRequest, match="filed_at"):
        predictor.predict(b"1,2,0.3,lab,a,CA,x,1,yesterday-ish\n", CSV)


# --- XGBoost's C call, used only where it predicts the same ------------------------------------


@pytest.mark.parametrize("task", ["binary_classification", "multiclass_classification", "regression", "ranking"])
def test_the_direct_xgboost_call_equals_predict_features_bit_for_bit(task: str, bundles: dict[str, Any]) -> None:
    bundle = bundles[task]
    direct = direct_predict_for(bundle)
    assert direct is not None
    rng = np.random.default_rng(5)
    for X in (
        apply_transform(raw_rows(1, seed=11), bundle.spec),
        apply_transform(raw_rows(333, seed=12), bundle.spec),  # column-major, as the transform returns it
        np.ascontiguousarray(rng.normal(size=(9, len(bundle.spec["feature_names"]))).astype(np.float32)),
    ):
        expected = bundle.predict_features(X)
        got = direct(X)
        assert got.shape == expected.shape and got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


def test_the_direct_call_is_not_used_where_predict_features_differs(bundles: dict[str, Any]) -> None:
    real = bundles["regression"]

    class FirstTreeOnly:  # a bundle whose predict_features stops after one tree
        spec, booster, algorithm = real.spec, real.booster, "xgboost"

        def predict_features(self, X: np.ndarray) -> np.ndarray:
            return real.booster.inplace_predict(X, iteration_range=(0, 1))

    assert direct_predict_for(FirstTreeOnly()) is None
    assert direct_predict_for(bundles["anomaly_detection"]) is None
    assert direct_predict_for(bundles["script"]) is None


# --- what a caller is told --------------------------------------------------------------------


SPEC = make_spec("regression")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"1,2,3\n", "row 1 has 3 fields; expected 8 (amount, age, score, kind, agent, state, note, query)"),
        (b"1,2,0.3,lab,a,CA,x,1\n1,2\n", "row 2 has 2 fields"),
        (b"1,lots,0.3,lab,a,CA,x,1\n", "row 1: column 'age' has the non-numeric value 'lots'"),
        (b"true,2,0.3,lab,a,CA,x,1\n", "column 'amount' has the non-numeric value 'true'"),
        (b"\xff\xfe1,2\n", "not UTF-8"),
        (b'"unterminated,1\n', "expected 8"),
        (b"1,2,0.3,lab,a,CA,x,1\n\n", "row 2 has 1 field;"),
    ],
)
def test_malformed_csv_says_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        Predictor(_FakeBundle()).predict(body, CSV)
    assert message in str(caught.value)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"instances": [', "not valid JSON"),
        (b"[" * 100_000, "nests too deeply"),
        (b"[[" + b"1" * 5000 + b"]]", "not valid JSON"),
        (b'{"rows": []}', "no 'instances' key"),
        (b'{"instances": {}}', "'instances' is a object, expected a list"),
        (b'{"instances": [], "extra": 1}', "unknown top-level key(s) ['extra']"),
        (b'{"instances": []}', "no instances"),
        (b"[1, 2]", "instance 1 is a number; expected an object of column: value or a list of values"),
        (b'"text"', "the JSON body is a string"),
        (b"[[1, 2]]", "instance 1 has 2 values; expected 8"),
        (b'[{"amount": 1, "colour": "red"}]', "instance 1 has unknown key(s) ['colour']"),
        (b'[{"amount": [1]}]', "instance 1, column 'amount': expected a single value, got a list"),
        (b'[{"amount": true}]', "instance 1, column 'amount': expected a number, got True"),
        (b'[{"amount": 1}, {"amount": "lots"}]', "instance 2: column 'amount' has the non-numeric value 'lots'"),
    ],
)
def test_malformed_json_says_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        Predictor(_FakeBundle()).predict(body, JSON)
    assert message in str(caught.value)


def test_malformed_parquet_says_what_is_wrong() -> None:
    predictor = Predictor(_FakeBundle())
    rows = raw_rows(3)
    cases = [
        (b"PAR1 not really", "not a readable Parquet file"),
        (to_parquet(rows.drop(columns=["age"])), "lacks the column(s) ['age']"),
        (to_parquet(rows.assign(y=1)), "unknown column(s) ['y']"),
        (to_parquet(rows.assign(age=["a", "b", "c"])), "column 'age' has the non-numeric value 'a'"),
        (to_parquet(rows.assign(age=[[1], [2], [3]])), "column 'age' of the Parquet file is list<"),
        (to_parquet(rows.iloc[:0]), "has no rows"),
    ]
    for body, message in cases:
        with pytest.raises(InvalidRequest) as caught:
            predictor.predict(body, PARQUET)
        assert message in str(caught.value), message


@pytest.mark.parametrize("body", [b"", b"  \n\r\n"])
@pytest.mark.parametrize("content_type", [CSV, JSON, PARQUET])
def test_an_empty_body_is_refused_for_every_format(body: bytes, content_type: str) -> None:
    with pytest.raises(InvalidRequest, match="empty"):
        Predictor(_FakeBundle()).predict(body, content_type)


class _FakeBundle:
    """A regression bundle whose model is never reached: for inputs that must fail before it."""

    spec = SPEC

    def predict_features(self, X: np.ndarray) -> np.ndarray:
        return X[:, 0].astype(np.float64)

    def predict_frame(self, frame: pd.DataFrame) -> list:
        return self.predict_features(apply_transform(frame, self.spec)).tolist()


# --- content negotiation and sizes -------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("text/csv", CSV), ("TEXT/CSV; charset=utf-8", CSV), ("application/json", JSON),
        ("application/x-parquet", PARQUET), ("application/vnd.apache.parquet", PARQUET),
    ],
)
def test_content_types_are_read_without_their_parameters(header: str, expected: str) -> None:
    assert payloads.content_type_of(header) == expected


@pytest.mark.parametrize("header", [None, "", "application/xml", "text/plain"])
def test_other_content_types_are_a_415_listing_the_supported_ones(header: str | None) -> None:
    with pytest.raises(UnsupportedContentType) as caught:
        payloads.content_type_of(header)
    assert caught.value.status == 415
    assert "text/csv, application/json, application/x-parquet" in str(caught.value)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, JSON), ("", JSON), ("*/*", JSON), ("text/csv", CSV), ("application/json", JSON),
        ("text/html, text/csv;q=0.9, */*;q=0.1", CSV), ("application/json;q=0.5, text/csv", CSV),
        ("text/csv;q=0, application/json", JSON), ("text/*", CSV),
    ],
)
def test_accept_picks_the_response_format(header: str | None, expected: str) -> None:
    assert payloads.accept_type_of(header) == expected


def test_an_accept_the_server_cannot_write_is_a_406() -> None:
    with pytest.raises(NotAcceptable, match="accept one of: application/json, text/csv") as caught:
        payloads.accept_type_of("application/xml, text/csv;q=0")
    assert caught.value.status == 406


def test_bodies_over_six_megabytes_are_a_413_that_says_the_limit() -> None:
    payloads.check_size(6 * 1024 * 1024)
    with pytest.raises(PayloadTooLarge, match="over the 6 MB limit") as caught:
        payloads.check_size(6 * 1024 * 1024 + 1)
    assert caught.value.status == 413


def test_predictions_are_written_as_json_or_one_line_each_as_csv() -> None:
    assert json.loads(payloads.format_predictions([0.25, 1e-05], JSON)) == {"predictions": [0.25, 1e-05]}
    assert payloads.format_predictions([0.25, 1e-05], CSV) == b"0.25\n1e-05\n"
    assert payloads.format_predictions(["a", "b,c"], CSV) == b'a\n"b,c"\n'
    assert json.loads(payloads.format_predictions([float("nan"), 1.0], JSON)) == {"predictions": [None, 1.0]}
    assert payloads.format_predictions([float("nan"), 1.0], CSV) == b"\n1.0\n"
