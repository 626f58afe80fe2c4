"""Every configurable transform, checked against its scikit-learn counterpart on the same data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction import FeatureHasher
from sklearn.impute import MissingIndicator, SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import KBinsDiscretizer, MinMaxScaler, OneHotEncoder, StandardScaler
from sklearn.utils import murmurhash3_32 as sklearn_murmur

from tasks.config import CategoricalTransform, Features, NumericTransform, parse_config
from tasks.errors import ConfigError, DataError
from tasks.features.sketch import QuantileSketch
from tasks.features.stats import category_counts, column_moments
from tasks.features.transform import (
    apply_transform,
    build_spec,
    murmurhash3_32,
    numeric_values,
    signed_log1p,
)

SPLIT = {"validation": 0.15, "test": 0.15, "hash": "salt"}


def _fit(train: pd.DataFrame, features: Features) -> dict:
    """build_spec's inputs computed as preprocess's fit computes them, in one partition."""
    block = np.column_stack([numeric_values(train[c]) for c in features.numeric]) if features.numeric else np.empty((len(train), 0))
    choices = [features.numeric_transform(c) for c in features.numeric]
    return build_spec(
        task="regression",
        label="y",
        label_classes=None,
        input_columns=list(features.all),
        features=features,
        moments=column_moments(block),
        log_moments=column_moments(signed_log1p(block)),
        sketches={c: QuantileSketch.from_values(block[:, j]) for j, (c, t) in enumerate(zip(features.numeric, choices)) if t.needs_quantiles},
        counts={c: category_counts(train[c]) for c in features.categorical},
        split=SPLIT,
    )


@pytest.fixture
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(5)

    def frame(n: int) -> pd.DataFrame:
        x = rng.lognormal(3, 1.2, n)
        x[rng.random(n) < 0.08] = np.nan
        return pd.DataFrame({"x": x, "city": rng.choice(["oslo", "lima", "kyiv", "pune", "fez", "rome"], n)})

    return frame(3000), frame(800)


def _numeric(train: pd.DataFrame, test: pd.DataFrame, **settings) -> tuple[np.ndarray, dict]:
    features = Features(numeric=("x",), transforms={"x": NumericTransform(**settings)})
    spec = _fit(train, features)
    return apply_transform(test, spec)[:, 0], spec


def _column(frame: pd.DataFrame) -> np.ndarray:
    return frame[["x"]].to_numpy(dtype=np.float64)


@pytest.mark.parametrize("strategy", ["mean", "median"])
def test_imputation_then_standardization_equals_scikit_learn(frames, strategy: str) -> None:
    train, test = frames
    ours, _ = _numeric(train, test, impute=strategy)
    # scikit-learn's scaler ignores missing values when fitting, as ours does; imputing after
    # scaling with the scaled median/mean is imputing the raw median/mean before it
    reference = make_pipeline(StandardScaler(), SimpleImputer(strategy=strategy)).fit(_column(train))
    np.testing.assert_allclose(ours, reference.transform(_column(test))[:, 0], rtol=1e-5, atol=1e-6)


def test_constant_imputation_fills_the_given_number(frames) -> None:
    train, test = frames
    ours, spec = _numeric(train, test, impute="constant", fill_value=-7.0)
    scaler = StandardScaler().fit(_column(train))
    filled = SimpleImputer(strategy="constant", fill_value=-7.0).fit_transform(_column(test))
    np.testing.assert_allclose(ours, scaler.transform(filled)[:, 0], rtol=1e-5, atol=1e-6)
    assert spec["numeric"][0]["fill"] == -7.0


def test_min_max_scaling_equals_scikit_learn(frames) -> None:
    train, test = frames
    ours, _ = _numeric(train, test, scale="minmax")
    reference = make_pipeline(MinMaxScaler(), SimpleImputer(strategy="mean")).fit(_column(train))
    np.testing.assert_allclose(ours, reference.transform(_column(test))[:, 0], rtol=1e-5, atol=1e-6)


def test_log1p_then_standardization(frames) -> None:
    train, test = frames
    ours, _ = _numeric(train, test, log1p=True, impute="median")
    logged = np.log1p(_column(train))  # lognormal: positive, so signed log1p is log1p
    median = np.nanmedian(_column(train))
    scaler = StandardScaler().fit(logged)
    expected = scaler.transform(np.log1p(np.where(np.isnan(_column(test)), median, _column(test))))[:, 0]
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def test_clipping_at_quantiles_bounds_outliers_before_scaling(frames) -> None:
    train, test = frames
    test = test.copy()
    test.loc[0, "x"] = 1e9
    ours, spec = _numeric(train, test, clip=[0.05, 0.95])
    observed = train["x"].dropna().to_numpy()
    lo, hi = np.quantile(observed, [0.05, 0.95])
    assert spec["numeric"][0]["clip"] == pytest.approx([lo, hi], rel=1e-12)
    clipped = np.clip(observed, lo, hi)
    filled = np.where(np.isnan(test["x"]), observed.mean(), test["x"])
    expected = (np.clip(filled, lo, hi) - clipped.mean()) / clipped.std()
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
    assert ours[0] == ours.max()  # the outlier sits at the upper bound, not a million sigmas out


def test_quantile_bins_equal_kbins_discretizer(frames) -> None:
    train, test = frames
    ours, spec = _numeric(train, test, bins=5, impute="median")
    observed = train[["x"]].dropna().to_numpy()
    bins = KBinsDiscretizer(n_bins=5, encode="ordinal", strategy="quantile", quantile_method="linear").fit(observed)
    filled = SimpleImputer(strategy="median").fit(_column(train)).transform(_column(test))
    np.testing.assert_array_equal(ours, bins.transform(filled)[:, 0])
    assert len(spec["numeric"][0]["bins"]) == 4


def test_missing_indicator_column_equals_scikit_learn(frames) -> None:
    train, test = frames
    features = Features(numeric=("x",), transforms={"x": NumericTransform(missing_indicator=True)})
    spec = _fit(train, features)
    assert spec["feature_names"] == ["x", "x__missing"]
    out = apply_transform(test, spec)
    expected = MissingIndicator(features="all").fit(_column(train)).transform(_column(test))[:, 0]
    np.testing.assert_array_equal(out[:, 1], expected.astype(np.float32))


def test_one_hot_equals_scikit_learn_for_the_kept_values(frames) -> None:
    train, test = frames
    test = pd.concat([test, pd.DataFrame({"x": [1.0, 2.0], "city": ["baku", None]})], ignore_index=True)
    features = Features(categorical=("city",), transforms={"city": CategoricalTransform(encode="onehot", max_categories=4)})
    spec = _fit(train, features)
    kept = spec["categorical"][0]["vocabulary"]
    counts = train["city"].value_counts()
    assert kept == sorted(counts.index, key=lambda v: (-counts[v], v))[:4]
    assert spec["feature_names"] == [f"city={v}" for v in kept]
    ours = apply_transform(test, spec)
    reference = OneHotEncoder(categories=[kept], handle_unknown="ignore", sparse_output=False)
    expected = reference.fit(train[["city"]].dropna()).transform(test[["city"]].fillna("missing"))
    np.testing.assert_array_equal(ours, expected.astype(np.float32))
    assert ours[-2:].sum() == 0  # an unseen city and a missing one light no column


def test_hash_buckets_equal_feature_hasher(frames) -> None:
    train, test = frames
    features = Features(categorical=("city",), transforms={"city": CategoricalTransform(encode="hash", hash_bits=4)})
    spec = _fit(train, features)
    codes = apply_transform(test.assign(city=test["city"].where(test.index != 0)), spec)[:, 0]
    hasher = FeatureHasher(n_features=16, input_type="string", alternate_sign=False)
    hashed = hasher.transform([[f"city={v}"] for v in test["city"]]).toarray()
    np.testing.assert_array_equal(codes[1:] - 1, hashed.argmax(axis=1)[1:])
    assert codes[0] == 0  # missing


def test_murmurhash_matches_scikit_learn_on_any_text() -> None:
    rng = np.random.default_rng(0)
    texts = ["", "a", "ab", "abc", "abcd", "abcde", "città=Zürich", "键=值", "x" * 1001]
    texts += ["".join(chr(c) for c in rng.integers(32, 0x2FFF, rng.integers(0, 40))) for _ in range(300)]
    for text in texts:
        assert murmurhash3_32(text) == sklearn_murmur(text), text
        assert murmurhash3_32(text, seed=42) == sklearn_murmur(text, seed=42), text


def test_datetime_parts_from_timestamps_and_from_text() -> None:
    when = pd.Series(pd.to_datetime(["2024-03-04 05:06:07", None, "2023-12-31 23:59:59"]))
    spec = _fit(pd.DataFrame({"t": when}), Features(datetime=("t",)))
    assert spec["feature_names"] == ["t__hour", "t__dayofweek", "t__month"]
    expected = np.array([[5, 0, 3], [-1, -1, -1], [23, 6, 12]], dtype=np.float32)
    np.testing.assert_array_equal(apply_transform(pd.DataFrame({"t": when}), spec), expected)
    text = pd.Series(["2024-03-04T05:06:07", "", "2024-01-01T00:59:59+01:00"], dtype=object)
    np.testing.assert_array_equal(
        apply_transform(pd.DataFrame({"t": text}), spec), np.array([[5, 0, 3], [-1, -1, -1], [23, 6, 12]], dtype=np.float32)
    )
    with pytest.raises(DataError, match="column 't' has the value 'soon'"):
        apply_transform(pd.DataFrame({"t": ["soon"]}), spec)


def test_all_null_and_constant_columns_and_infinities_have_defined_output() -> None:
    train = pd.DataFrame({"empty": [np.nan] * 5, "flat": [3.0] * 5, "x": [1.0, 2.0, np.inf, -np.inf, 3.0]})
    features = Features(
        numeric=("empty", "flat", "x"),
        transforms={"empty": NumericTransform(impute="median", scale="minmax"), "flat": NumericTransform(clip=[0.1, 0.9])},
    )
    spec = _fit(train, features)
    out = apply_transform(pd.DataFrame({"empty": [1.0, np.nan], "flat": [3.0, 10.0], "x": [np.inf, 2.0]}), spec)
    np.testing.assert_array_equal(out[:, 0], [1.0, 0.0])  # no train values: no shift, no scale, fill 0
    np.testing.assert_array_equal(out[:, 1], [0.0, 0.0])  # constant: clipped to itself, shifted to 0
    np.testing.assert_allclose(out[:, 2], [0.0, 0.0], atol=1e-7)  # inf is missing: the mean, 2.0, scaled to 0
    assert np.isfinite(out).all()


def test_onehot_names_that_would_clash_are_refused() -> None:
    train = pd.DataFrame({"c": ["a", "b"], "c=a": [1.0, 2.0]})
    features = Features(numeric=("c=a",), categorical=("c",), transforms={"c": CategoricalTransform(encode="onehot")})
    with pytest.raises(DataError, match="'c=a'"):
        _fit(train, features)


def _config(features: dict) -> dict:
    return {"name": "p", "bucket": "b", "source": "raw/", "contract": "c.yaml", "label": "y", "task": "regression", "features": features}


def test_config_reads_per_column_transforms() -> None:
    config = parse_config(
        _config(
            {
                "numeric": ["x"],
                "categorical": ["city"],
                "datetime": ["t"],
                "transforms": {"x": {"impute": "median", "clip": [0.01, 0.99], "log1p": True}, "city": {"encode": "hash", "hash_bits": 8}},
            }
        )
    )
    assert config.features.numeric_transform("x") == NumericTransform(impute="median", clip=(0.01, 0.99), log1p=True)
    assert config.features.categorical_transform("city") == CategoricalTransform(encode="hash", hash_bits=8)
    assert config.features.datetime == ("t",)
    only = parse_config(_config({"transforms": {"x": {"bins": 10}}})).features
    assert only.all == () and only.numeric_transform("x").bins == 10


@pytest.mark.parametrize(
    "transforms, message",
    [
        ({"x": {"impute": "mode"}}, "impute 'mode' must be one of mean, median, constant"),
        ({"x": {"impute": "constant"}}, "give the number as features.transforms.x.fill_value"),
        ({"x": {"clip": [0.9, 0.1]}}, "two quantiles"),
        ({"x": {"bins": 10, "scale": "minmax"}}, "bins replaces scaling"),
        ({"x": {"scaling": "minmax"}}, "unknown key 'features.transforms.x.scaling'"),
        ({"city": {"encode": "hash", "max_categories": 3}}, "does not apply to encode: hash"),
        ({"city": {"encode": "binary"}}, "must be one of vocabulary, onehot, hash"),
    ],
)
def test_config_mistakes_in_transforms_name_what_to_fix(transforms: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config(_config({"numeric": ["x"], "categorical": ["city"], "transforms": transforms}))
