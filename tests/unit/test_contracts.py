"""Data contracts as a user meets them: loading errors, feature resolution, row verdicts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import fsspec
import pandas as pd
import pandera.pandas as pa
import pytest

from tasks.config import Features, parse_config
from tasks.contracts import (
    column_kinds,
    load_contract,
    resolve_features,
    validate_frame,
    without_uniqueness,
)
from tasks.errors import ContractError


def _schema() -> pa.DataFrameSchema:
    return pa.DataFrameSchema(
        {
            "claim_id": pa.Column(str, nullable=False),
            "age": pa.Column(float, pa.Check.in_range(18, 110), nullable=True),
            "amount": pa.Column(float, pa.Check.gt(0), nullable=True),
            "visits": pa.Column("int64", pa.Check.ge(0)),
            "channel": pa.Column(str, pa.Check.isin(["online", "phone"]), nullable=True),
            "is_fraud": pa.Column("int64", pa.Check.isin([0, 1])),
        },
        coerce=True,
    )


def _config(**overrides: object) -> object:
    raw = {
        "name": "claims",
        "bucket": "b",
        "source": "raw/",
        "contract": "/contracts/claims.yaml",
        "label": "is_fraud",
        "task": "binary_classification",
    }
    raw.update(overrides)
    return parse_config(raw)


# --- load_contract -------------------------------------------------------------------


def test_contract_round_trips_through_pandera_yaml(tmp_path: Path) -> None:
    path = tmp_path / "contract.yaml"
    path.write_text(_schema().to_yaml())
    schema = load_contract(str(path))
    assert list(schema.columns) == ["claim_id", "age", "amount", "visits", "channel", "is_fraud"]
    assert schema.columns["visits"].checks[0].error == _schema().columns["visits"].checks[0].error


def test_contract_with_a_protocol_is_read_through_the_given_filesystem() -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/contracts/claims.yaml", _schema().to_yaml().encode())
    schema = load_contract("memory://contracts/claims.yaml", fs)
    assert "amount" in schema.columns


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "does not exist"),
        ("columns: [unclosed", "is not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
        ("name: claims\n", "has no 'columns'"),
        ("columns:\n  a:\n    dtype: flaot64\n", "is not a pandera DataFrameSchema"),
        (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "not a UTF-8 text file"),
    ],
    ids=["missing", "not-yaml", "not-mapping", "no-columns", "bad-dtype", "binary"],
)
def test_unusable_contract_names_the_file_and_the_problem(tmp_path: Path, content: object, expected: str) -> None:
    path = tmp_path / "contract.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    with pytest.raises(ContractError) as caught:
        load_contract(str(path))
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_contract_that_is_a_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="is a folder"):
        load_contract(str(tmp_path))


# --- column kinds and features ---------------------------------------------------------


def test_column_kinds_follow_the_contract_dtypes() -> None:
    schema = pa.DataFrameSchema(
        {
            "f": pa.Column(float),
            "i": pa.Column("Int64"),
            "s": pa.Column(str),
            "c": pa.Column("category"),
            "b": pa.Column(bool),
            "o": pa.Column(object),
            "untyped": pa.Column(),
            "when": pa.Column("datetime64[ns]"),
        }
    )
    assert column_kinds(schema) == {
        "f": "numeric",
        "i": "numeric",
        "s": "categorical",
        "c": "categorical",
        "b": "categorical",
        "o": "categorical",
        "untyped": "categorical",
        "when": "datetime",
    }


def test_default_features_are_every_column_but_the_label() -> None:
    features = resolve_features(_schema(), _config())
    assert features == Features(numeric=("age", "amount", "visits"), categorical=("claim_id", "channel"))


def test_explicit_features_are_kept_when_they_fit_the_contract() -> None:
    config = _config(features={"numeric": ["amount"], "categorical": ["channel", "visits"]})
    assert resolve_features(_schema(), config) == Features(numeric=("amount",), categorical=("channel", "visits"))


def test_label_missing_from_the_contract_lists_its_columns() -> None:
    with pytest.raises(ContractError) as caught:
        resolve_features(_schema(), _config(label="fraud"))
    assert str(caught.value) == (
        "label 'fraud' is not a column of the contract /contracts/claims.yaml; "
        "its columns are claim_id, age, amount, visits, channel, is_fraud"
    )


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        ({"numeric": ["amount", "weight"]}, "feature 'weight' (features.numeric in the config) is not a column"),
        ({"categorical": ["is_fraud"]}, "the label 'is_fraud' is also listed in features.categorical"),
        ({"numeric": ["channel"]}, "feature 'channel' is listed in features.numeric but the contract"),
    ],
    ids=["unknown-column", "label-as-feature", "text-as-numeric"],
)
def test_features_that_do_not_fit_the_contract_are_refused(features: dict, expected: str) -> None:
    with pytest.raises(ContractError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        resolve_features(_schema(), _config(features=features))


def test_contract_with_only_the_label_has_no_default_features() -> None:
    schema = pa.DataFrameSchema({"is_fraud": pa.Column(int)})
    config = dataclasses.replace(_config(), features=None)
    with pytest.raises(ContractError, match="no column besides the label"):
        resolve_features(schema, config)


# --- validate_frame ------------------------------------------------------------------


def _raw(**columns: list) -> pd.DataFrame:
    return pd.DataFrame(columns, dtype="str")


def _good(n: int = 4) -> dict[str, list]:
    return {
        "claim_id": [f"c{i}" for i in range(n)],
        "age": ["30"] * n,
        "amount": ["10.5"] * n,
        "visits": ["1"] * n,
        "channel": ["online"] * n,
        "is_fraud": ["0"] * n,
    }


def test_valid_rows_are_coerced_to_the_contract_in_its_order() -> None:
    columns = _good(3)
    columns["age"] = [None, "40", "50"]
    raw = _raw(**dict(reversed(list(columns.items()))), extra=["x", "y", "z"])
    valid, quarantined = validate_frame(raw, _schema(), source="s3://b/raw/a.csv")
    assert list(valid.columns) == ["claim_id", "age", "amount", "visits", "channel", "is_fraud"]
    assert valid["visits"].dtype == "int64" and valid["amount"].dtype == "float64"
    assert valid["age"].isna().tolist() == [True, False, False]
    assert quarantined.empty


def test_invalid_rows_are_quarantined_with_reasons_and_row_numbers() -> None:
    columns = _good(6)
    columns["amount"][1] = "-12.5"
    columns["age"][2] = "230"
    columns["channel"][2] = "fax"
    columns["visits"][3] = "several"
    columns["is_fraud"][4] = None
    raw = _raw(**columns, note=["a", "b", "c", "d", "e", "f"])
    valid, quarantined = validate_frame(raw, _schema(), source="s3://b/raw/a.csv", first_row=101)

    assert len(valid) + len(quarantined) == len(raw)
    assert valid["claim_id"].tolist() == ["c0", "c5"]
    by_id = quarantined.set_index("claim_id")
    assert by_id.loc["c1", "_reason"] == "amount: greater_than(0) failed for '-12.5'"
    assert by_id.loc["c2", "_reason"] == (
        "age: in_range(18, 110) failed for '230'; channel: isin(['online', 'phone']) failed for 'fax'"
    )
    assert by_id.loc["c3", "_reason"] == "visits: coerce_dtype('int64') failed for 'several'"
    assert "is_fraud: " in by_id.loc["c4", "_reason"] and "null" in by_id.loc["c4", "_reason"]
    assert by_id["_row"].tolist() == [102, 103, 104, 105]
    assert set(by_id["_source"]) == {"s3://b/raw/a.csv"}
    # original values are kept verbatim as text, unknown columns included
    assert by_id.loc["c1", "amount"] == "-12.5" and by_id.loc["c3", "visits"] == "several"
    assert by_id.loc["c2", "note"] == "c"


def test_uncoercible_value_does_not_hide_other_rows_failures() -> None:
    # 'x' cannot become a float, which makes pandera fail in_range for the whole column;
    # the 230 in another row must still be caught and reported as its own reason.
    columns = _good(4)
    columns["age"] = ["x", "230", "40", "17"]
    valid, quarantined = validate_frame(_raw(**columns), _schema(), source="f.csv")
    assert valid["claim_id"].tolist() == ["c2"]
    assert quarantined.set_index("claim_id")["_reason"].to_dict() == {
        "c0": "age: coerce_dtype('float64') failed for 'x'",
        "c1": "age: in_range(18, 110) failed for '230'",
        "c3": "age: in_range(18, 110) failed for '17'",
    }


def test_file_missing_a_contract_column_quarantines_every_row() -> None:
    columns = _good(3)
    del columns["amount"]
    raw = _raw(**columns)
    valid, quarantined = validate_frame(raw, _schema(), source="f.csv")
    assert valid.empty and list(valid.columns) == list(_schema().columns)
    assert len(quarantined) == 3
    assert set(quarantined["_reason"]) == {"amount: column required by the contract is missing from the file"}
    assert quarantined["_row"].tolist() == [1, 2, 3]


def test_optional_contract_column_absent_from_the_file_arrives_as_nulls() -> None:
    schema = _schema()
    schema = schema.update_column("channel", required=False)
    columns = _good(2)
    del columns["channel"]
    valid, quarantined = validate_frame(_raw(**columns), schema, source="f.csv")
    assert len(valid) == 2 and quarantined.empty
    assert valid["channel"].isna().all()


def test_boolean_text_is_read_as_booleans_not_as_non_empty_strings() -> None:
    schema = pa.DataFrameSchema({"id": pa.Column(str), "flag": pa.Column(bool)}, coerce=True)
    raw = _raw(id=["a", "b", "c", "d", "e"], flag=["true", "False", "no", "maybe", None])
    valid, quarantined = validate_frame(raw, schema, source="f.csv")
    assert valid.set_index("id")["flag"].to_dict() == {"a": True, "b": False, "c": False}
    assert quarantined.set_index("id")["_reason"].to_dict() == {
        "d": "flag: coerce_dtype('bool') failed for 'maybe'",
        "e": "flag: not_nullable failed for null",
    }


def test_contract_without_coerce_still_types_text_input() -> None:
    schema = pa.DataFrameSchema({"n": pa.Column(float, pa.Check.ge(0))})
    valid, quarantined = validate_frame(_raw(n=["1.5", "-1"]), schema, source="f.csv")
    assert valid["n"].tolist() == [1.5]
    assert quarantined["_reason"].tolist() == ["n: greater_than_or_equal_to(0) failed for '-1'"]


def test_frame_wide_failure_quarantines_the_rows_it_concerns() -> None:
    schema = pa.DataFrameSchema(
        {"a": pa.Column(float), "b": pa.Column(float)},
        checks=[pa.Check(lambda df: df["a"].sum() < 8, element_wise=False, name="total_below_8")],
        coerce=True,
    )
    valid, quarantined = validate_frame(_raw(a=["4", "5", "6"], b=["1", "2", "-"]), schema, source="f.csv")
    assert valid.empty
    reasons = quarantined.set_index("a")["_reason"].to_dict()
    assert reasons["6"] == "b: coerce_dtype('float64') failed for '-'"
    assert reasons["4"] == "total_below_8 failed for the rows as a whole" and reasons["5"] == reasons["4"]


def test_empty_frame_gives_two_empty_frames_with_the_contract_dtypes() -> None:
    valid, quarantined = validate_frame(_raw(**_good(0)), _schema(), source="f.csv")
    assert valid.empty and quarantined.empty
    assert valid["visits"].dtype == "int64"


def test_a_reader_can_number_rows_itself_and_keep_unknown_columns_as_text() -> None:
    columns = _good(3)
    columns["amount"][1] = "-1"
    raw = _raw(**columns, note=["a", None, "c"], code=["007", "8", "9"])
    valid, quarantined = validate_frame(
        raw, _schema(), source="f.csv", row_numbers=[4, 9, 12], keep_columns=["note", "code"], with_row_numbers=True
    )
    assert list(valid.columns) == [*_schema().columns, "note", "code", "_row"]
    assert valid["code"].tolist() == ["007", "9"] and valid["_row"].tolist() == [4, 12]
    assert quarantined["_row"].tolist() == [9]


def test_uniqueness_can_be_left_to_the_caller() -> None:
    schema = pa.DataFrameSchema({"id": pa.Column(str, unique=True), "n": pa.Column(int)}, coerce=True)
    relaxed, unique = without_uniqueness(schema)
    assert unique == ("id",) and schema.columns["id"].unique  # the contract itself is unchanged
    valid, quarantined = validate_frame(_raw(id=["a", "a"], n=["1", "2"]), relaxed, source="f.csv")
    assert len(valid) == 2 and quarantined.empty
    _, strict_quarantined = validate_frame(_raw(id=["a", "a"], n=["1", "2"]), schema, source="f.csv")
    assert set(strict_quarantined["_reason"]) == {"id: field_uniqueness failed for 'a'"}


def test_numbers_in_text_fail_exactly_as_coercion_would_and_keep_every_reason() -> None:
    schema = pa.DataFrameSchema(
        {"id": pa.Column(str), "n": pa.Column(int, pa.Check.ge(0)), "x": pa.Column(float, pa.Check.lt(100))}, coerce=True
    )
    raw = _raw(
        id=["a", "b", "c", "d", "e", "f"],
        n=["1_000", "\uff15", "5.0", "-1", "two", "7"],
        x=["1_000.5", "2e1", "oops", "1.5", "500", "7.5"],
    )
    valid, quarantined = validate_frame(raw, schema, source="f.csv")
    # what Python's int()/float() accept passes, as when pandera coerces the text itself
    assert valid.set_index("id")["n"].to_dict() == {"b": 5, "f": 7}
    assert quarantined.set_index("id")["_reason"].to_dict() == {
        "a": "x: less_than(100) failed for '1_000.5'",
        "c": "n: coerce_dtype('int64') failed for '5.0'; x: coerce_dtype('float64') failed for 'oops'",
        "d": "n: greater_than_or_equal_to(0) failed for '-1'",
        "e": "n: coerce_dtype('int64') failed for 'two'; x: less_than(100) failed for '500'",
    }


def _number_texts() -> list[str]:
    """Text a CSV might hold for numbers: plain, signed, exponents, many digits, odd spacing."""
    import numpy as np

    rng = np.random.default_rng(5)
    values = np.concatenate([rng.normal(0, 1, 300), rng.lognormal(0, 12, 300), -rng.lognormal(0, 30, 100)])
    texts = [repr(float(v)) for v in values] + [f"{v:.25g}" for v in values[:200]] + [f"{v:.3e}" for v in values[:100]]
    texts += ["0", "-0", "+5", ".5", "5.", "-.25e-3", "1E+300", "4.9e-324", "123456789012345678", "0001.2300"]
    return texts


def test_numbers_in_text_are_the_numbers_pandas_reads() -> None:
    texts = _number_texts()
    schema = pa.DataFrameSchema({"x": pa.Column(float)}, coerce=True)
    valid, quarantined = validate_frame(_raw(x=texts), schema, source="f.csv")
    assert quarantined.empty
    expected = pd.Series(texts, dtype=object).map(float).to_numpy()
    assert valid["x"].dtype == "float64"
    assert (valid["x"].to_numpy() == expected).all()  # bit for bit, not approximately


def test_integers_and_odd_number_text_read_as_pandas_reads_them() -> None:
    schema = pa.DataFrameSchema({"i": pa.Column("int64"), "x": pa.Column(float, nullable=True)}, coerce=True)
    raw = _raw(
        i=["1", "-2", "+3", " 4", "1_0", "123456789012345678", "9223372036854775807", "5.0", "9223372036854775808"],
        x=[" 7 ", "1_000", "inf", "nan", "1e999", None, "0x10", "٣", "-"],
    )
    valid, quarantined = validate_frame(raw, schema, source="f.csv")
    assert valid["i"].tolist() == [1, -2, 3, 4, 10, 123456789012345678]
    assert valid["x"].tolist()[:3] == [7.0, 1000.0, float("inf")]
    assert pd.isna(valid["x"].iloc[3]) and valid["x"].iloc[4] == float("inf") and pd.isna(valid["x"].iloc[5])
    assert quarantined["_reason"].tolist() == [
        "x: coerce_dtype('float64') failed for '0x10'",
        "i: coerce_dtype('int64') failed for '5.0'",
        "i: coerce_dtype('int64') failed for '9223372036854775808'; x: coerce_dtype('float64') failed for '-'",
    ]


def test_nullable_boolean_text_keeps_its_missing_values() -> None:
    schema = pa.DataFrameSchema({"flag": pa.Column("boolean", nullable=True), "n": pa.Column(str)}, coerce=True)
    valid, quarantined = validate_frame(_raw(flag=[" Yes", None, "0", "T", "nope"], n=list("abcde")), schema, source="f.csv")
    assert str(valid["flag"].dtype) == "boolean"
    assert valid["flag"].tolist() == [True, pd.NA, False, True]
    assert quarantined["_reason"].tolist() == ["flag: coerce_dtype('boolean') failed for 'nope'"]


def test_arrow_reads_a_number_only_where_python_reads_the_same_number() -> None:
    """The whole-column cast in validation relies on this; a pyarrow upgrade that loosens
    its parser must fail here, not curate a value pandas would have refused."""
    import math
    import random

    import pyarrow
    import pyarrow.compute as pc

    rng = random.Random(1)
    for arrow_type, parse, alphabet in (
        (pyarrow.float64(), float, "0123456789+-.eE infaINFAN_x\t٣"),
        (pyarrow.int64(), int, "0123456789+- _.e\t٣"),
    ):
        texts = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))) for _ in range(20_000)}
        texts |= {"9223372036854775808", "-9223372036854775808", "1e500", "-nan", "Infinity", "007"}
        accepted = 0
        for text in texts:
            try:
                value = pc.cast(pyarrow.array([text]), arrow_type)[0].as_py()
            except pyarrow.ArrowInvalid:
                continue
            accepted += 1
            expected = parse(text)
            assert value == expected or (math.isnan(value) and math.isnan(expected)), (text, value, expected)
        assert accepted > 100
