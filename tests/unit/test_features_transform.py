"""The fitted transform: what a model sees for a row, checked against scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OrdinalEncoder, StandardScaler

from tasks.config import Features, SplitConfig
from tasks.errors import DataError
from tasks.features.stats import category_counts, column_moments
from tasks.features.transform import (
    apply_transform,
    build_spec,
    decode_labels,
    encode_labels,
    numeric_values,
    top_categories,
)

NUMERIC = ("income", "age", "flat")
CATEGORICAL = ("city",)
INPUTS = ["age", "city", "income", "flat"]  # contract order, mixing kinds


def _frame(rng: np.random.Generator, n: int, cities: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "age": rng.normal(45, 12, n),
            "city": rng.choice(cities, n, p=np.linspace(3, 1, len(cities)) / np.linspace(3, 1, len(cities)).sum()),
            "income": rng.lognormal(10, 1, n),
            "flat": np.full(n, 3.0),
            "y": rng.choice(["no", "yes"], n),
        }
    )
    frame.loc[rng.random(n) < 0.1, "age"] = np.nan
    frame.loc[rng.random(n) < 0.05, "income"] = np.nan
    frame.loc[rng.random(n) < 0.05, "city"] = None
    return frame


def _fit(train: pd.DataFrame, *, features: Features | None = None, task: str = "binary_classification",
         classes: list[str] | None = None, max_categories: int = 1000) -> dict:
    features = features or Features(NUMERIC, CATEGORICAL)
    block = np.column_stack([numeric_values(train[c]) for c in features.numeric]) if features.numeric else np.empty((len(train), 0))
    return build_spec(
        task=task,
        label="y",
        label_classes=classes if classes is not None else (["no", "yes"] if task != "regression" else None),
        input_columns=[c for c in INPUTS if c in features.all] + [c for c in features.all if c not in INPUTS],
        features=features,
        moments=column_moments(block),
        counts={c: category_counts(train[c]) for c in features.categorical},
        split=SplitConfig(validation=0.1, test=0.2),
        split_hash="salt-1",
        max_categories=max_categories,
    )


@pytest.fixture
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(11)
    train = _frame(rng, 2000, ["oslo", "lima", "kyiv", "pune", "fez"])
    test = _frame(rng, 500, ["oslo", "lima", "kyiv", "pune", "fez", "rome", "baku"])  # two unseen cities
    return train, test


def test_spec_has_exactly_the_documented_format(data) -> None:
    train, _ = data
    spec = _fit(train)
    assert list(spec) == [
        "format", "task", "label", "label_classes", "input_columns", "numeric", "categorical", "datetime", "feature_names", "split"
    ]
    assert spec["format"] == "updraft.transform/2"
    assert spec["input_columns"] == INPUTS
    assert spec["feature_names"] == ["age", "city", "income", "flat"]
    assert spec["split"] == {"validation": 0.1, "test": 0.2, "hash": "salt-1"}
    assert [set(e) for e in spec["numeric"]] == [
        {"name", "count", "null_count", "mean", "std", "min", "max", "impute", "fill", "missing_indicator",
         "clip", "clip_quantiles", "log1p", "scale", "shift", "divisor"}
    ] * 3
    assert spec["categorical"][0] == {"name": "city", "encode": "vocabulary", "vocabulary": spec["categorical"][0]["vocabulary"], "oov_code": 0}
    assert spec["datetime"] == []
    age = next(e for e in spec["numeric"] if e["name"] == "age")
    assert age["count"] + age["null_count"] == len(train)
    assert age["fill"] == age["mean"] == pytest.approx(train["age"].mean())
    assert age["std"] == pytest.approx(train["age"].std(ddof=0))
    assert age["min"] == train["age"].min() and age["max"] == train["age"].max()
    assert json.loads(json.dumps(spec, allow_nan=False)) == spec


def test_numerics_equal_scikit_learn_standard_scaler_then_mean_imputer(data) -> None:
    train, test = data
    spec = _fit(train)
    reference = make_pipeline(StandardScaler(), SimpleImputer(strategy="mean"))
    columns = ["age", "income", "flat"]
    reference.fit(train[columns].to_numpy())
    ours = apply_transform(test, spec)
    names = spec["feature_names"]
    expected = reference.transform(test[columns].to_numpy())
    np.testing.assert_allclose(ours[:, [names.index(c) for c in columns]], expected, rtol=1e-5, atol=1e-5)
    assert ours.dtype == np.float32 and ours.shape == (len(test), 4)


def test_categories_equal_scikit_learn_ordinal_encoder_up_to_our_code_mapping(data) -> None:
    train, test = data
    spec = _fit(train)
    vocabulary = spec["categorical"][0]["vocabulary"]
    encoder = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1)
    encoder.fit(train[["city"]].astype(object).fillna(np.nan))
    assert sorted(vocabulary) == [c for c in encoder.categories_[0] if isinstance(c, str)]  # sklearn lists NaN too
    theirs = encoder.transform(test[["city"]].astype(object).fillna(np.nan))[:, 0].astype(int)
    ours = apply_transform(test, spec)[:, spec["feature_names"].index("city")].astype(int)
    mapped = np.array([0 if k < 0 else 1 + vocabulary.index(encoder.categories_[0][k]) for k in theirs])
    np.testing.assert_array_equal(ours, mapped)
    assert set(ours[test["city"].isin(["rome", "baku"]).to_numpy()]) == {0}
    assert set(ours[test["city"].isna().to_numpy()]) == {0}
    counts = train["city"].value_counts()
    assert vocabulary[0] == counts.index[0]  # code 1 is the most frequent train value


def test_vocabulary_keeps_the_top_k_by_frequency_with_ties_broken_by_value() -> None:
    assert top_categories({"b": 5, "a": 5, "c": 9, "d": 1}, 3) == ["c", "a", "b"]
    train = pd.DataFrame({"city": ["b"] * 5 + ["a"] * 5 + ["c"] * 9 + ["d"], "y": ["no"] * 20})
    spec = _fit(train, features=Features((), ("city",)), max_categories=3)
    assert spec["categorical"][0]["vocabulary"] == ["c", "a", "b"]
    codes = apply_transform(pd.DataFrame({"city": ["c", "a", "b", "d", None]}), spec)[:, 0]
    assert codes.tolist() == [1.0, 2.0, 3.0, 0.0, 0.0]


def test_infinities_and_missing_numbers_become_the_train_mean(data) -> None:
    train, _ = data
    spec = _fit(train)
    rows = pd.DataFrame({"age": [np.inf, -np.inf, np.nan, 45.0], "city": ["oslo"] * 4, "income": [1.0] * 4, "flat": [3.0] * 4})
    age = apply_transform(rows, spec)[:, 0]
    assert age[:3].tolist() == [0.0, 0.0, 0.0]
    entry = spec["numeric"][NUMERIC.index("age")]
    assert age[3] == pytest.approx((45.0 - entry["mean"]) / entry["std"], rel=1e-6)
    assert np.isfinite(apply_transform(rows, spec)).all()


def test_numbers_sent_as_text_encode_like_numbers(data) -> None:
    train, test = data
    spec = _fit(train)
    as_text = test.head(50).copy()
    for column in ("age", "income", "flat"):
        as_text[column] = [("" if pd.isna(v) else repr(float(v))) for v in as_text[column]]
    as_text.loc[as_text.index[0], "age"] = " inf "
    as_objects = test.head(50).astype(object)
    expected = apply_transform(test.head(50), spec)
    expected[0, 0] = 0.0  # inf counts as missing: the mean, standardized
    np.testing.assert_allclose(apply_transform(as_text, spec), expected, rtol=1e-6)
    np.testing.assert_allclose(apply_transform(as_objects, spec)[1:], expected[1:], rtol=1e-6)


def test_text_that_is_not_a_number_names_the_column(data) -> None:
    train, test = data
    spec = _fit(train)
    bad = test.head(3).astype(object)
    bad.loc[bad.index[1], "income"] = "12k"
    with pytest.raises(DataError, match=r"'income'.*'12k'"):
        apply_transform(bad, spec)


def test_missing_input_column_names_it_and_extra_columns_are_ignored(data) -> None:
    train, test = data
    spec = _fit(train)
    with pytest.raises(DataError, match="'city'"):
        apply_transform(test.drop(columns=["city"]), spec)
    shuffled = test[["flat", "y", "income", "city", "age"]].assign(extra=1)
    np.testing.assert_array_equal(apply_transform(shuffled, spec), apply_transform(test, spec))


def test_category_dtype_and_numeric_categories_match_their_text_form() -> None:
    train = pd.DataFrame({"zone": [1.0, 2.0, 2.0, 3.0, np.nan], "city": ["a", "b", "b", "b", "c"], "y": ["no"] * 5})
    spec = _fit(train, features=Features((), ("zone", "city")))
    assert spec["categorical"][0]["vocabulary"] == ["2", "1", "3"]
    as_text = pd.DataFrame({"zone": ["2", "1", "7", ""], "city": ["b", "a", "zz", None]})
    as_category = as_text.astype({"city": "category"})
    as_float = pd.DataFrame({"zone": [2.0, 1.0, 7.0, np.nan], "city": pd.Categorical(["b", "a", "zz", None])})
    expected = [[1.0, 1.0], [2.0, 2.0], [0.0, 0.0], [0.0, 0.0]]
    for frame in (as_text, as_category, as_float):
        assert apply_transform(frame, spec).tolist() == expected


def test_all_missing_and_constant_columns_have_a_defined_encoding() -> None:
    train = pd.DataFrame({"empty": [np.nan] * 4, "flat": [2.0] * 4, "y": ["no", "yes", "no", "yes"]})
    spec = _fit(train, features=Features(("empty", "flat"), ()))
    empty, flat = spec["numeric"]
    assert (empty["count"], empty["null_count"], empty["fill"], empty["mean"], empty["std"]) == (0, 4, 0.0, 0.0, 0.0)
    assert empty["min"] is None and empty["max"] is None
    assert (flat["std"], flat["fill"]) == (0.0, 2.0)
    json.dumps(spec, allow_nan=False)
    out = apply_transform(pd.DataFrame({"empty": [5.0, np.nan], "flat": [2.0, 4.5]}), spec)
    names = spec["feature_names"]
    assert out[:, names.index("empty")].tolist() == [5.0, 0.0]
    assert out[:, names.index("flat")].tolist() == [0.0, 2.5]


def test_labels_round_trip_through_class_indices(data) -> None:
    train, _ = data
    spec = _fit(train)
    codes = encode_labels(pd.Series(["yes", "no", None, "yes"]), spec)
    assert codes.dtype == np.float64
    np.testing.assert_array_equal(codes, [1.0, 0.0, np.nan, 1.0])
    assert decode_labels(codes, spec) == ["yes", "no", None, "yes"]
    assert decode_labels(np.array([1, 0]), spec) == ["yes", "no"]
    with pytest.raises(DataError, match="maybe"):
        encode_labels(pd.Series(["yes", "maybe"]), spec)
    with pytest.raises(ValueError):
        decode_labels([2], spec)


def test_numeric_class_labels_match_their_text_form() -> None:
    train = pd.DataFrame({"age": [1.0, 2.0, 3.0], "y": [0, 1, 2]})
    spec = _fit(train, features=Features(("age",), ()), task="multiclass_classification", classes=["0", "1", "2"])
    np.testing.assert_array_equal(encode_labels(pd.Series([2.0, 0.0]), spec), [2.0, 0.0])
    np.testing.assert_array_equal(encode_labels(pd.Series(["1", "2"]), spec), [1.0, 2.0])
    assert decode_labels([2.0, 1.0], spec) == ["2", "1"]


def test_regression_labels_are_the_values() -> None:
    train = pd.DataFrame({"age": [1.0, 2.0, 3.0], "y": [0.5, 1.5, 2.5]})
    spec = _fit(train, features=Features(("age",), ()), task="regression")
    assert spec["label_classes"] is None
    values = encode_labels(pd.Series(["2.25", None, "inf"]), spec)
    np.testing.assert_array_equal(values, [2.25, np.nan, np.nan])
    assert decode_labels(np.array([1.25, np.nan]), spec) == [1.25, None]


def test_a_spec_of_another_format_is_refused(data) -> None:
    train, test = data
    spec = dict(_fit(train), format="updraft.transform/0")
    with pytest.raises(DataError, match="format"):
        apply_transform(test, spec)
