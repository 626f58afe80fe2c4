"""The fitted transform (``transform.json``) and the one function that applies it.

Preprocessing, the training container and the inference server all call
:func:`apply_transform` with the same spec, so a row is encoded identically wherever
it is seen (no training/serving skew). NumPy and pandas only: the server imports this.

The spec's format is fixed in docs/design.md ("transform.json"); :func:`build_spec`
writes exactly those keys.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from tasks.errors import DataError

if TYPE_CHECKING:
    from tasks.config import Features, SplitConfig
    from tasks.features.stats import ColumnMoments

FORMAT = "updraft.transform/1"
OOV_CODE = 0
DEFAULT_MAX_CATEGORIES = 1000
CLASSIFICATION_TASKS = ("binary_classification", "multiclass_classification")

# Text that means "no value" in a numeric column arriving as strings (CSV at the endpoint).
_MISSING_TEXT = frozenset({"", "nan", "na", "n/a", "null", "none", "<na>"})
# Floats up to 2**53 are integers exactly; beyond that "1e+20" reads better than a long integer.
_EXACT_INT_LIMIT = 2.0**53


def category_strings(values: pd.Series) -> pd.Series:
    """The string form of categorical values and labels, the keys of vocabularies and classes.

    Integral floats read as integers (``1.0`` -> ``"1"``) so that a column stored as
    float and the same value sent as CSV text ``1`` meet; missing stays missing.
    """
    dtype = values.dtype
    if pd.api.types.is_float_dtype(dtype):
        arr = values.to_numpy(dtype=np.float64, na_value=np.nan)
        out = np.full(arr.shape, None, dtype=object)
        finite = np.isfinite(arr)
        integral = finite & (np.abs(arr) < _EXACT_INT_LIMIT) & (arr == np.trunc(np.where(finite, arr, 0.0)))
        out[integral] = arr[integral].astype(np.int64).astype(str)
        other = finite & ~integral
        out[other] = arr[other].astype(str)
        return pd.Series(out, index=values.index, dtype="string")
    if isinstance(dtype, pd.CategoricalDtype):
        # Convert each category once; code -1 (missing) picks the trailing None.
        categories = np.append(category_strings(pd.Series(dtype.categories)).to_numpy(dtype=object), None)
        return pd.Series(categories[values.cat.codes.to_numpy()], index=values.index, dtype="string")
    return values.astype("string")


def numeric_values(values: pd.Series, name: str | None = None) -> np.ndarray:
    """Float64 values of a numeric column; strings and objects (CSV text) are parsed.

    Missing or empty entries become NaN. Text that is not a number raises ``DataError``
    naming the column, because silently treating it as missing would hide bad input.
    """
    if pd.api.types.is_numeric_dtype(values.dtype):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    parsed = pd.to_numeric(values.astype("string").str.strip(), errors="coerce")
    arr = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
    unparsed = np.flatnonzero(np.isnan(arr))
    if unparsed.size:
        raw = values.to_numpy(dtype=object)[unparsed]
        for value in raw:
            if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
                continue
            if str(value).strip().lower() not in _MISSING_TEXT:
                label = f"column {name!r}" if name else "a numeric column"
                raise DataError(f"{label} has the non-numeric value {str(value)!r}; send a number or leave it empty")
    return arr


def build_spec(
    *,
    task: str,
    label: str,
    label_classes: Sequence[str] | None,
    input_columns: Sequence[str],
    features: "Features",
    moments: "ColumnMoments",
    counts: Mapping[str, Mapping[str, int]],
    split: "SplitConfig",
    split_hash: str,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
) -> dict[str, Any]:
    """The transform.json document from statistics merged over the train split.

    ``moments`` has one column per ``features.numeric`` (same order); ``counts`` maps
    each categorical feature to its train value counts. Model inputs follow the order
    of ``input_columns`` (the contract's order), so the feature matrix reads like the CSV.
    A column with no train values gets mean and fill 0; a constant one std 0 (scaled by 1).
    """
    if max_categories < 1:
        raise ValueError(f"max_categories must be at least 1, got {max_categories}")
    host = moments.to_host()
    if host.n_columns != len(features.numeric):
        raise ValueError(f"{host.n_columns} columns of moments for {len(features.numeric)} numeric features")
    missing_inputs = [c for c in features.all if c not in input_columns]
    if missing_inputs:
        raise ValueError(f"feature {missing_inputs[0]!r} is not among the input columns")

    numeric = []
    for i, name in enumerate(features.numeric):
        count = int(host.count[i])
        has_values = count > 0
        mean = float(host.mean[i]) if has_values else 0.0
        numeric.append(
            {
                "name": name,
                "count": count,
                "null_count": int(host.null_count[i]),
                "mean": mean,
                "std": float(host.std[i]) if has_values else 0.0,
                "min": float(host.min[i]) if has_values else None,
                "max": float(host.max[i]) if has_values else None,
                "fill": mean,
            }
        )
    categorical = [
        {"name": name, "vocabulary": top_categories(counts.get(name, {}), max_categories), "oov_code": OOV_CODE}
        for name in features.categorical
    ]
    wanted = set(features.all)
    return {
        "format": FORMAT,
        "task": task,
        "label": label,
        "label_classes": list(label_classes) if label_classes is not None else None,
        "input_columns": list(input_columns),
        "numeric": numeric,
        "categorical": categorical,
        "feature_names": [c for c in input_columns if c in wanted],
        "split": {"validation": float(split.validation), "test": float(split.test), "hash": split_hash},
    }


def top_categories(counts: Mapping[str, int], k: int = DEFAULT_MAX_CATEGORIES) -> list[str]:
    """The ``k`` most frequent values, ties broken by the value, so a refit gives the same codes."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [value for value, _ in ranked[:k]]


def apply_transform(frame: pd.DataFrame, spec: Mapping[str, Any]) -> np.ndarray:
    """The model's input matrix (float32, rows x ``feature_names``) for raw input rows.

    Numerics: missing or non-finite -> the train mean, then standardized (std 0 -> 1).
    Categoricals: 1 + index in the vocabulary; unseen or missing -> 0. Columns not
    among the features are ignored; a missing feature column raises ``DataError``.
    """
    _check_format(spec)
    names = spec["feature_names"]
    absent = [c for c in names if c not in frame.columns]
    if absent:
        raise DataError(f"input is missing the column {absent[0]!r} (expected columns: {', '.join(spec['input_columns'])})")
    numeric = {entry["name"]: entry for entry in spec["numeric"]}
    categorical = {entry["name"]: entry for entry in spec["categorical"]}
    out = np.empty((len(frame), len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        column = frame[name]
        if isinstance(column, pd.DataFrame):
            raise DataError(f"input has the column {name!r} more than once")
        if name in numeric:
            out[:, j] = _standardize(numeric_values(column, name), numeric[name])
        elif name in categorical:
            out[:, j] = _encode_categorical(column, categorical[name]["vocabulary"], categorical[name]["oov_code"])
        else:
            raise DataError(f"transform.json lists feature {name!r} but neither as numeric nor categorical")
    return out


def _standardize(values: np.ndarray, entry: Mapping[str, Any]) -> np.ndarray:
    values = np.where(np.isfinite(values), values, entry["fill"])
    std = entry["std"]
    scale = std if std and std > 0 else 1.0
    return (values - entry["mean"]) / scale


def _encode_categorical(values: pd.Series, vocabulary: Sequence[str], oov_code: int) -> np.ndarray:
    index = pd.Index(vocabulary, dtype="string")
    if isinstance(values.dtype, pd.CategoricalDtype):
        # Look up each category once, then index by code (-1, missing, lands on the last slot).
        lookup = index.get_indexer(category_strings(pd.Series(values.cat.categories)))
        table = np.append(np.where(lookup >= 0, lookup + 1, oov_code), oov_code)
        return table[values.cat.codes.to_numpy()].astype(np.float32)
    positions = index.get_indexer(category_strings(values))
    return np.where(positions >= 0, positions + 1, oov_code).astype(np.float32)


def encode_labels(values: pd.Series, spec: Mapping[str, Any]) -> np.ndarray:
    """The ``_label`` column: class index for classification, the value for regression (float64).

    Missing labels become NaN. A class the model was not fitted with raises ``DataError``.
    """
    _check_format(spec)
    classes = spec.get("label_classes")
    if spec["task"] not in CLASSIFICATION_TASKS or classes is None:
        values_f = numeric_values(values, spec["label"])
        return np.where(np.isfinite(values_f), values_f, np.nan)
    strings = category_strings(values)
    positions = pd.Index(classes, dtype="string").get_indexer(strings)
    missing = strings.isna().to_numpy()
    unknown = (positions < 0) & ~missing
    if unknown.any():
        seen = sorted(set(strings[unknown].astype(str).tolist()))
        raise DataError(
            f"label {spec['label']!r} has values the model was not fitted with: {', '.join(seen[:5])}"
            f" (known classes: {', '.join(classes)})"
        )
    return np.where(missing, np.nan, positions).astype(np.float64)


def decode_labels(codes: Iterable[Any], spec: Mapping[str, Any]) -> list:
    """Original label values for encoded ones: class strings, or floats for regression; NaN -> None."""
    _check_format(spec)
    classes = spec.get("label_classes")
    arr = np.asarray(codes, dtype=np.float64).ravel()
    if spec["task"] not in CLASSIFICATION_TASKS or classes is None:
        return [float(v) if math.isfinite(v) else None for v in arr.tolist()]
    decoded: list = []
    for value in arr.tolist():
        if not math.isfinite(value):
            decoded.append(None)
            continue
        code = int(value)
        if code != value or not 0 <= code < len(classes):
            raise ValueError(f"label code {value} is not a class index in 0..{len(classes) - 1}")
        decoded.append(classes[code])
    return decoded


def _check_format(spec: Mapping[str, Any]) -> None:
    found = spec.get("format") if isinstance(spec, Mapping) else None
    if found != FORMAT:
        raise DataError(f"transform spec has format {found!r}, expected {FORMAT!r}: refit with this updraft version")
