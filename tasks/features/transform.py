"""The fitted transform (``transform.json``) and the one function that applies it.

Preprocessing, the training container and the inference server all call
:func:`apply_transform` with the same spec, so a row is encoded identically wherever
it is seen (no training/serving skew). NumPy and pandas only: the server imports this.

The spec's format is fixed in docs/design.md ("transform.json"); :func:`build_spec`
writes exactly those keys. Specs of format 1 (mean imputation, standardization and
vocabulary codes only) read as the same transforms in format 2.
"""

from __future__ import annotations

import hashlib
import math
import re
from types import ModuleType
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd

from tasks.errors import DataError

from tasks.features.arrays import get_array_module, to_numpy
from tasks.features.kernels import NumericParams, fused_numeric

if TYPE_CHECKING:
    from tasks.config import Features
    from tasks.features.stats import ColumnMoments

FORMAT = "updraft.transform/2"
#: Formats this code applies; format 1 lacks the per-column transform keys, which default.
READABLE_FORMATS = ("updraft.transform/1", FORMAT)
OOV_CODE = 0
DEFAULT_MAX_CATEGORIES = 1000
#: The code of a missing value in hashed and date-part columns (buckets count from 1).
MISSING_CODE = 0
DATETIME_PARTS: tuple[str, ...] = ("hour", "dayofweek", "month")
_DATETIME_ACCESSORS = {"hour": "hour", "dayofweek": "day_of_week", "month": "month"}
CLASSIFICATION_TASKS = ("binary_classification", "multiclass_classification")
#: Tasks whose label is a class, encoded as its index in ``label_classes``. Anomaly detection's
#: label is optional (missing values stay NaN) and binary: index 1 marks an anomaly.
CLASS_LABEL_TASKS = (*CLASSIFICATION_TASKS, "anomaly_detection")
#: Tasks whose label may be missing on a row without the row being dropped.
OPTIONAL_LABEL_TASKS = ("anomaly_detection",)
#: The ``_group`` id of rows whose group (query) value is missing: they form one group.
#: Hashes of present values are never 0 (:func:`group_ids`).
NULL_GROUP_ID = 0

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


def category_codes(values: pd.Series) -> tuple[np.ndarray, list[str | None]]:
    """Each row's index among the column's distinct values (-1 where missing) and those
    values' string forms (:func:`category_strings`): converting the few distinct values
    instead of every row is what makes labels and counts cheap on big columns."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    keys = category_strings(pd.Series(uniques)).tolist() if len(uniques) else []
    keys = [k if isinstance(k, str) else None for k in keys]  # a non-finite float is missing
    if any(k is None for k in keys):
        missing = np.array([k is None for k in keys] + [True])
        codes = np.where(missing[codes], -1, codes)
    return np.asarray(codes), keys


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


class QuantileSource(Protocol):
    """What :func:`build_spec` needs of a column's quantile sketch (``tasks.features.sketch``)."""

    count: int

    def quantiles(self, qs: Sequence[float]) -> np.ndarray: ...

    def weighted_values(self) -> tuple[np.ndarray, np.ndarray]: ...


def build_spec(
    *,
    task: str,
    label: str,
    label_classes: Sequence[str] | None,
    input_columns: Sequence[str],
    features: "Features",
    moments: "ColumnMoments",
    counts: Mapping[str, Mapping[str, int]],
    split: Mapping[str, Any] | Any,
    split_hash: str | None = None,
    log_moments: "ColumnMoments | None" = None,
    sketches: Mapping[str, QuantileSource] | None = None,
    max_categories: int | None = None,
    group: str | None = None,
) -> dict[str, Any]:
    """The transform.json document from statistics merged over the train split.

    ``moments`` has one column per ``features.numeric`` (same order), of the raw values;
    ``log_moments`` the same of ``sign(x) * log1p(|x|)`` (needed where a column asks for
    log1p); ``sketches`` a quantile sketch per column that asks for a median, clipping or
    bins; ``counts`` each vocabulary or one-hot column's train value counts. Model inputs
    follow ``input_columns`` (the contract's order), so the feature matrix reads like the
    CSV; a column may give several (a missing indicator, one-hot columns, date parts).
    ``split`` is the split's JSON record (a ``SplitConfig`` with ``split_hash`` still works).
    ``group`` (ranking) names the query column whose ids preprocess writes as ``_group``.
    """
    sketches = sketches or {}
    host = moments.to_host()
    if host.n_columns != len(features.numeric):
        raise ValueError(f"{host.n_columns} columns of moments for {len(features.numeric)} numeric features")
    logs = log_moments.to_host() if log_moments is not None else None
    missing_inputs = [c for c in features.all if c not in input_columns]
    if missing_inputs:
        raise ValueError(f"feature {missing_inputs[0]!r} is not among the input columns")
    if max_categories is not None and max_categories < 1:
        raise ValueError(f"max_categories must be at least 1, got {max_categories}")

    numeric = []
    for i, name in enumerate(features.numeric):
        choice = features.numeric_transform(name)
        needs_sketch = choice.needs_quantiles
        if needs_sketch and name not in sketches:
            raise ValueError(f"column {name!r} needs a quantile sketch (median, clip or bins) and none was given")
        if choice.log1p and logs is None:
            raise ValueError(f"column {name!r} asks for log1p but no log moments were given")
        numeric.append(_numeric_entry(name, choice, host, i, logs, sketches.get(name)))
    categorical = []
    for name in features.categorical:
        choice = features.categorical_transform(name)
        entry: dict[str, Any] = {"name": name, "encode": choice.encode}
        if choice.encode == "hash":
            entry["hash_bits"] = choice.hash_bits
        else:
            limit = max_categories if max_categories is not None and choice.max_categories is None else choice.limit
            entry["vocabulary"] = top_categories(counts.get(name, {}), limit)
        entry["oov_code"] = OOV_CODE
        categorical.append(entry)
    datetime = [{"name": name, "parts": list(DATETIME_PARTS)} for name in features.datetime]
    if not isinstance(split, Mapping):
        split = {"validation": float(split.validation), "test": float(split.test), "hash": split_hash}
    spec = {
        "format": FORMAT,
        "task": task,
        "label": label,
        "label_classes": list(label_classes) if label_classes is not None else None,
        "input_columns": list(input_columns),
        "numeric": numeric,
        "categorical": categorical,
        "datetime": datetime,
        "feature_names": [],
        "split": dict(split),
    }
    if group is not None:  # ranking only: other tasks' specs keep format 2's keys exactly
        spec["group"] = group
    spec["feature_names"] = _output_names(spec)
    return spec


def _numeric_entry(
    name: str, choice: Any, host: "ColumnMoments", i: int, logs: "ColumnMoments | None", sketch: QuantileSource | None
) -> dict[str, Any]:
    count = int(host.count[i])
    has_values = count > 0
    mean = float(host.mean[i]) if has_values else 0.0
    entry: dict[str, Any] = {
        "name": name,
        "count": count,
        "null_count": int(host.null_count[i]),
        "mean": mean,
        "std": float(host.std[i]) if has_values else 0.0,
        "min": float(host.min[i]) if has_values else None,
        "max": float(host.max[i]) if has_values else None,
        "impute": choice.impute,
    }
    if choice.impute == "constant":
        fill = float(choice.fill_value)
    elif choice.impute == "median" and has_values:
        fill = float(sketch.quantiles([0.5])[0])
    else:
        fill = mean
    entry["fill"] = fill
    entry["missing_indicator"] = bool(choice.missing_indicator)
    if choice.bins is not None:
        entry["bins"] = _bin_edges(sketch, choice.bins) if has_values else []
        entry.update(clip=None, log1p=False, scale="none", shift=0.0, divisor=1.0)
        return entry
    clip = [float(v) for v in sketch.quantiles(list(choice.clip))] if choice.clip is not None and has_values else None
    entry["clip"] = clip
    entry["clip_quantiles"] = list(choice.clip) if choice.clip is not None else None
    entry["log1p"] = bool(choice.log1p)
    entry["scale"] = choice.scale
    entry["shift"], entry["divisor"] = _scaling(choice, clip, host, i, logs, sketch)
    return entry


def _scaling(
    choice: Any, clip: list[float] | None, host: "ColumnMoments", i: int, logs: "ColumnMoments | None", sketch: QuantileSource | None
) -> tuple[float, float]:
    """``(shift, divisor)`` of the train values the scaler sees: observed (missing left out,
    as scikit-learn's scalers do), clipped, log1p'd. Moments of clipped values come from the
    column's quantile sketch (exact while the sketch holds every value); otherwise from the
    exact moments."""
    if choice.scale == "none" or host.count[i] == 0:
        return 0.0, 1.0
    if clip is not None:
        values, weights = sketch.weighted_values()
        seen = np.clip(np.asarray(values, dtype=np.float64), clip[0], clip[1])
        if choice.log1p:
            seen = signed_log1p(seen)
        weights = np.asarray(weights, dtype=np.float64)
        if choice.scale == "standard":
            mean = float(np.average(seen, weights=weights))
            std = float(np.sqrt(np.average((seen - mean) ** 2, weights=weights)))
            return mean, _nonzero(std)
        return float(seen.min()), _nonzero(float(seen.max() - seen.min()))
    source = logs if choice.log1p else host
    if choice.scale == "standard":
        return float(source.mean[i]), _nonzero(float(source.std[i]))
    return float(source.min[i]), _nonzero(float(source.max[i] - source.min[i]))


def _nonzero(divisor: float) -> float:
    """A constant column keeps its shifted value 0 rather than dividing by zero."""
    return divisor if divisor > 0 and math.isfinite(divisor) else 1.0


def _bin_edges(sketch: QuantileSource, bins: int) -> list[float]:
    """Inner edges at the train quantiles ``1/bins ... (bins-1)/bins``; repeated edges (a
    value holding many rows) collapse, so bins are never empty by construction."""
    edges = sketch.quantiles(list(np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    return [float(e) for e in np.unique(np.asarray(edges, dtype=np.float64))]


def signed_log1p(x: Any) -> Any:
    """``sign(x) * log1p(|x|)``: log1p for any real, monotone, 0 at 0 (NumPy or CuPy)."""
    xp = get_array_module(x)
    return xp.copysign(xp.log1p(xp.abs(x)), x)


_UNSAFE_NAME = re.compile(r"[^0-9A-Za-z_.=+-]")


def _output_names(spec: Mapping[str, Any]) -> list[str]:
    """Model input columns in ``input_columns`` order; one-hot and date-part columns are
    named ``col=value`` and ``col__part`` (characters XGBoost or Parquet mind become ``_``)."""
    plan = _plan(spec)
    names: list[str] = []
    for name in spec["input_columns"]:
        names.extend(out for out, _ in plan.get(name, []))
    seen: set[str] = set()
    for out in names:
        if out in seen:
            raise DataError(
                f"two model inputs would both be named {out!r} (a one-hot or date-part column clashes with another"
                " column): rename the column in the contract or encode it differently"
            )
        seen.add(out)
    return names


def _plan(spec: Mapping[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """Per input column, its output columns as ``(name, what)``."""
    plan: dict[str, list[tuple[str, str]]] = {}
    for entry in spec["numeric"]:
        outs = [(entry["name"], "value")]
        if entry.get("missing_indicator"):
            outs.append((f"{entry['name']}__missing", "missing"))
        plan[entry["name"]] = outs
    for entry in spec["categorical"]:
        if entry.get("encode", "vocabulary") == "onehot":
            plan[entry["name"]] = [
                (_UNSAFE_NAME.sub("_", f"{entry['name']}={value}"), f"is:{value}") for value in entry["vocabulary"]
            ]
        else:
            plan[entry["name"]] = [(entry["name"], "code")]
    for entry in spec.get("datetime", []):
        plan[entry["name"]] = [(f"{entry['name']}__{part}", part) for part in entry["parts"]]
    return plan


def outputs_of(spec: Mapping[str, Any], column: str) -> list[str]:
    """The model inputs an input column gives, in order."""
    return [name for name, _ in _plan(normalized_spec(spec)).get(column, [])]


def coded_columns(spec: Mapping[str, Any]) -> list[str]:
    """Model inputs that hold small whole numbers (codes, one-hot flags, bins, date parts,
    missing indicators) rather than scaled values: few distinct values, which Parquet's
    dictionary encoding stores in a byte or two each."""
    return [name for outs in _plan(normalized_spec(spec)).values() for name, what in outs if what != "value"] + [
        e["name"] for e in normalized_spec(spec)["numeric"] if e.get("bins") is not None
    ]


def top_categories(counts: Mapping[str, int], k: int = DEFAULT_MAX_CATEGORIES) -> list[str]:
    """The ``k`` most frequent values, ties broken by the value, so a refit gives the same codes."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [value for value, _ in ranked[:k]]


def apply_transform(frame: pd.DataFrame, spec: Mapping[str, Any], *, xp: ModuleType = np) -> np.ndarray:
    """The model's input matrix (float32, rows x ``feature_names``, column-major) for raw input rows.

    Numerics: impute (missing and non-finite values), clip, log1p, scale -- in one fused
    pass over the numeric block -- or the quantile bin. Categoricals: vocabulary codes (1 +
    index, 0 for unseen or missing), one-hot columns, or hash buckets (1 + bucket, 0 for
    missing). Datetimes: hour, day of week (Monday 0) and month (1-12); -1 where missing;
    see docs/design.md. Columns not among the features are ignored; a missing feature column
    raises ``DataError``. ``xp`` (CuPy on a GPU worker) runs the numeric transform there as
    one row-major block; the result is on the host either way.
    """
    spec = normalized_spec(spec)
    absent = [c for c in spec["input_columns"] if c in _feature_columns(spec) and c not in frame.columns]
    if absent:
        raise DataError(f"input is missing the column {absent[0]!r} (expected columns: {', '.join(spec['input_columns'])})")
    for name in _feature_columns(spec):
        if isinstance(frame[name], pd.DataFrame):
            raise DataError(f"input has the column {name!r} more than once")
    n = len(frame)
    position = {name: j for j, name in enumerate(spec["feature_names"])}
    # Column-major: on the host every input column and every output column is contiguous.
    out = np.empty((n, len(position)), dtype=np.float32, order="F")
    blocked = [e for e in spec["numeric"] if e.get("bins") is None] if xp is not np else []
    if blocked:
        device = fused_numeric(xp.asarray(host_block(frame, [e["name"] for e in blocked])), _numeric_params(blocked).to(xp))
        for j, values in enumerate(to_numpy(device).T):
            out[:, position[blocked[j]["name"]]] = values
    for entry in spec["numeric"]:
        raw = float_values(frame[entry["name"]], entry["name"])
        target = out[:, position[entry["name"]]]
        if entry.get("bins") is None:
            if not blocked:
                fused_numeric(raw[:, None], _numeric_params([entry]), out=target[:, None])
        else:
            filled = np.where(np.isfinite(raw), raw, entry["fill"])
            target[:] = np.searchsorted(np.asarray(entry["bins"], dtype=np.float64), filled, side="right")
        if entry["missing_indicator"]:
            out[:, position[f"{entry['name']}__missing"]] = ~np.isfinite(raw)
    plan = _plan(spec)
    for entry in spec["categorical"]:
        column = frame[entry["name"]]
        encode = entry["encode"]
        if encode == "hash":
            out[:, position[entry["name"]]] = hash_codes(column, entry["name"], entry["hash_bits"])
        elif encode == "onehot":
            codes = _vocabulary_codes(column, entry["vocabulary"], entry["oov_code"])
            for k, (name, _) in enumerate(plan[entry["name"]]):
                out[:, position[name]] = codes == k + 1
        else:
            out[:, position[entry["name"]]] = _vocabulary_codes(column, entry["vocabulary"], entry["oov_code"])
    for entry in spec["datetime"]:
        parts = datetime_parts(frame[entry["name"]], entry["name"], entry["parts"])
        for (name, _), values in zip(plan[entry["name"]], parts):
            out[:, position[name]] = values
    return out


def float_values(values: pd.Series, name: str) -> np.ndarray:
    """A numeric column as a contiguous float array: no copy when it already is one."""
    if values.dtype in (np.float32, np.float64):
        return np.ascontiguousarray(values.to_numpy())
    return numeric_values(values, name)


def host_block(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Numeric columns as one row-major block, the layout device kernels read: float32 where
    every column is float32 (half the bytes to copy to a device), else float64."""
    arrays = [float_values(frame[name], name) for name in columns]
    dtype = np.float32 if arrays and all(a.dtype == np.float32 for a in arrays) else np.float64
    block = np.empty((len(frame), len(arrays)), dtype=dtype)
    for j, values in enumerate(arrays):
        block[:, j] = values
    return block


def _feature_columns(spec: Mapping[str, Any]) -> list[str]:
    return [e["name"] for kind in ("numeric", "categorical", "datetime") for e in spec.get(kind, [])]


def _numeric_params(entries: Sequence[Mapping[str, Any]]) -> NumericParams:
    def vector(values: Iterable[float]) -> np.ndarray:
        return np.asarray(list(values), dtype=np.float64)

    clips = [e["clip"] or (-np.inf, np.inf) for e in entries]
    return NumericParams(
        fill=vector(e["fill"] for e in entries),
        lo=vector(c[0] for c in clips),
        hi=vector(c[1] for c in clips),
        log=vector(1.0 if e["log1p"] else 0.0 for e in entries),
        shift=vector(e["shift"] for e in entries),
        inv_scale=vector(1.0 / e["divisor"] for e in entries),
    )


def normalized_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec with every per-column key present: format-1 entries get format 1's meaning
    (mean fill, standardization by the train std, vocabulary codes)."""
    _check_format(spec)
    out = dict(spec)
    numeric = []
    for entry in spec["numeric"]:
        e = dict(entry)
        e.setdefault("impute", "mean")
        e.setdefault("missing_indicator", False)
        e.setdefault("bins", None)
        e.setdefault("clip", None)
        e.setdefault("log1p", False)
        e.setdefault("scale", "standard")
        if "shift" not in e:
            e["shift"] = e["mean"]
            e["divisor"] = _nonzero(float(e.get("std") or 0.0))
        numeric.append(e)
    out["numeric"] = numeric
    out["categorical"] = [{"encode": "vocabulary", **entry} for entry in spec["categorical"]]
    out["datetime"] = list(spec.get("datetime") or [])
    return out


def _vocabulary_codes(values: pd.Series, vocabulary: Sequence[str], oov_code: int) -> np.ndarray:
    if isinstance(values.dtype, pd.StringDtype) and values.dtype.storage == "pyarrow":
        # Text held by Arrow (as read from Parquet): Arrow's hash lookup, no Python strings.
        import pyarrow as pa
        import pyarrow.compute as pc

        text = pa.array(values)
        found = pc.index_in(text, value_set=pa.array(list(vocabulary), type=text.type))
        positions = found.to_numpy(zero_copy_only=False)  # float with NaN where null
        return np.where(np.isnan(positions), oov_code, positions + 1).astype(np.float32)
    index = pd.Index(vocabulary, dtype="string")
    if isinstance(values.dtype, pd.CategoricalDtype):
        # Look up each category once, then index by code (-1, missing, lands on the last slot).
        lookup = index.get_indexer(category_strings(pd.Series(values.cat.categories)))
        table = np.append(np.where(lookup >= 0, lookup + 1, oov_code), oov_code)
        return table[values.cat.codes.to_numpy()].astype(np.float32)
    positions = index.get_indexer(category_strings(values))
    return np.where(positions >= 0, positions + 1, oov_code).astype(np.float32)


def hash_codes(values: pd.Series, name: str, bits: int) -> np.ndarray:
    """1 + the bucket of ``"name=value"`` among ``2**bits`` (0 for missing): the bucket is
    scikit-learn's ``FeatureHasher(n_features=2**bits, input_type="string")`` column for
    that token, computed once per distinct value."""
    strings = category_strings(values)
    codes, uniques = pd.factorize(strings, use_na_sentinel=True)
    buckets = np.array([murmurhash3_32(f"{name}={value}") for value in uniques.tolist()], dtype=np.int64)
    table = np.append(np.abs(buckets) % (1 << bits) + 1, MISSING_CODE).astype(np.float32)
    return table[codes]


def group_ids(values: pd.Series) -> np.ndarray:
    """The ``_group`` column of a ranking split: an int64 id per row for its query value.

    The id is the first 8 bytes of BLAKE2b (``digest_size=8``) of the value's string form
    (:func:`category_strings`, so ``7``, ``7.0`` and the text ``"7"`` meet) in UTF-8, read
    big-endian with the top bit cleared: 63 bits, non-negative as int64 and as uint64 (the
    training entry point sorts by it and hands it to XGBoost as ``qid``). A function of the
    value alone, so partitions, workers and reruns agree with no coordination; hashed once
    per distinct value. A missing value gets :data:`NULL_GROUP_ID` (0), which no present
    value hashes to (a hash of 0 becomes 1), so every row without a group is in one group.
    """
    codes, uniques = pd.factorize(category_strings(values), use_na_sentinel=True)
    ids = np.empty(len(uniques) + 1, dtype=np.int64)
    for i, text in enumerate(uniques.tolist()):
        digest = int.from_bytes(hashlib.blake2b(str(text).encode("utf-8"), digest_size=8).digest(), "big")
        ids[i] = (digest & 0x7FFF_FFFF_FFFF_FFFF) or 1
    ids[-1] = NULL_GROUP_ID
    return ids[np.asarray(codes)]  # code -1 (missing) picks the trailing NULL_GROUP_ID


def murmurhash3_32(text: str, seed: int = 0) -> int:
    """MurmurHash3 (x86, 32-bit) of the UTF-8 bytes, signed, as ``sklearn.utils.murmurhash3_32``;
    written out so serving needs no scikit-learn."""
    data = text.encode("utf-8")
    c1, c2, mask = 0xCC9E2D51, 0x1B873593, 0xFFFFFFFF
    h = seed & mask
    n_blocks = len(data) // 4
    for k in np.frombuffer(data[: n_blocks * 4], dtype="<u4").tolist():
        k = (k * c1) & mask
        k = ((k << 15) | (k >> 17)) & mask
        k = (k * c2) & mask
        h ^= k
        h = ((h << 13) | (h >> 19)) & mask
        h = (h * 5 + 0xE6546B64) & mask
    tail = data[n_blocks * 4 :]
    k = 0
    for i, byte in enumerate(tail):
        k |= byte << (8 * i)
    if tail:
        k = (k * c1) & mask
        k = ((k << 15) | (k >> 17)) & mask
        k = (k * c2) & mask
        h ^= k
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    h ^= h >> 16
    return h - (1 << 32) if h & 0x80000000 else h


def datetime_values(values: pd.Series, name: str | None = None) -> pd.Series:
    """Timestamps of a datetime column; text (CSV at the endpoint) is parsed, a time zone is
    converted to UTC. Text that is not a time raises ``DataError`` naming the column."""
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        parsed = values
    else:
        text = values.astype("string").str.strip()
        blank = text.isna() | text.str.lower().isin(list(_MISSING_TEXT))
        parsed = pd.to_datetime(text.where(~blank), errors="coerce", utc=True, format="mixed")
        bad = parsed.isna() & ~blank
        if bad.any():
            label = f"column {name!r}" if name else "a datetime column"
            raise DataError(f"{label} has the value {str(values[bad].iloc[0])!r}, which is not a date-time")
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    return parsed


def datetime_parts(values: pd.Series, name: str, parts: Sequence[str]) -> list[np.ndarray]:
    """Each part (``hour`` 0-23, ``dayofweek`` Monday 0, ``month`` 1-12) as float32; -1 where the time is missing."""
    stamps = datetime_values(values, name)
    missing = stamps.isna().to_numpy()
    out = []
    for part in parts:
        if part not in DATETIME_PARTS:
            raise DataError(f"transform.json asks for date part {part!r} of {name!r}; known parts: {', '.join(DATETIME_PARTS)}")
        found = getattr(stamps.dt, _DATETIME_ACCESSORS[part]).to_numpy(dtype=np.float64, na_value=np.nan)
        out.append(np.where(missing, -1.0, found).astype(np.float32))
    return out


def encode_labels(values: pd.Series, spec: Mapping[str, Any]) -> np.ndarray:
    """The ``_label`` column: class index for classification and anomaly detection, the value
    for regression and ranking (float64).

    Missing labels become NaN. A class the model was not fitted with raises ``DataError``;
    so does any label value for an anomaly detector fitted on data without labels.
    """
    _check_format(spec)
    classes = spec.get("label_classes")
    if spec["task"] in OPTIONAL_LABEL_TASKS and classes is None:
        present = category_codes(values)[0] >= 0
        if present.any():
            raise DataError(
                f"label {spec['label']!r} has values, but the anomaly detector was fitted on data without any:"
                " rerun preprocess on data that holds them"
            )
        return np.full(len(values), np.nan)
    if spec["task"] not in CLASS_LABEL_TASKS or classes is None:
        values_f = numeric_values(values, spec["label"])
        return np.where(np.isfinite(values_f), values_f, np.nan)
    codes, keys = category_codes(values)
    lookup = pd.Index(classes, dtype="string").get_indexer(pd.Index(keys, dtype="string")) if keys else np.empty(0, np.intp)
    unknown_keys = [k for k, at in zip(keys, lookup) if k is not None and at < 0]
    if unknown_keys:
        seen = sorted(set(unknown_keys))
        raise DataError(
            f"label {spec['label']!r} has values the model was not fitted with: {', '.join(seen[:5])}"
            f" (known classes: {', '.join(classes)})"
        )
    table = np.append(np.where(lookup >= 0, lookup, -1).astype(np.float64), np.nan)  # code -1 picks the trailing NaN
    return table[codes]


def decode_labels(codes: Iterable[Any], spec: Mapping[str, Any]) -> list:
    """Original label values for encoded ones: class strings (classification, anomaly detection),
    or floats (regression, ranking); NaN -> None."""
    _check_format(spec)
    classes = spec.get("label_classes")
    arr = np.asarray(codes, dtype=np.float64).ravel()
    if spec["task"] not in CLASS_LABEL_TASKS or classes is None:
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
    if found not in READABLE_FORMATS:
        raise DataError(f"transform spec has format {found!r}, expected {FORMAT!r}: refit with this updraft version")
