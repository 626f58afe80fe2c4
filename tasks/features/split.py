"""Which split a row belongs to, decided by the row's own values and a small fitted plan.

A row's split is a function of its values, a salt and a :class:`SplitPlan` only, never of
its position, its file or the partitioning: reruns, re-partitioned data and other workers
all agree. The plan is fitted in one cheap pass (per-partition partials merged in a tree,
like the feature statistics) and recorded as transform.json's ``split``. While its quantile
sketches hold every value (a class's rows, the times: up to the sketch capacity) the plan
itself is the same for any partitioning; beyond, another partitioning may move a cut point
within the sketch's rank-error bound, and the recorded plan is what makes a run reproducible.

Methods (``split.method``):

- ``random``: a uniform number per row from the hash of the whole row (:func:`row_hashes`:
  each column's values as 64 bits, folded in column order, xored with the salt's hash,
  finished with SplitMix64's mixer so the 53 bits that pick the split are evenly spread);
  ``u < validation`` validates, ``u < validation + test`` tests, the rest trains.
  Identical rows land together, so duplicates never leak from train to test. No plan to fit.
- ``stratified``: the same row uniforms, but cut per label class at that class's own
  ``validation`` and ``validation + test`` quantiles, so every class (a 2% minority too)
  is split in the configured proportions: exactly while a class fits a quantile sketch,
  within the sketch's rank error beyond (see :mod:`tasks.features.sketch`). Classes are
  keyed by their string form (:func:`tasks.features.transform.category_strings`).
- ``time``: rows before the ``1 - validation - test`` quantile of ``column`` train, rows
  from there to the ``1 - test`` quantile validate, later rows test. A row at a cut point
  goes to the later split, so equal times are never on two sides. Date-times (or text
  parsed as date-times, zones converted to UTC) compare as int64 nanoseconds; a numeric
  column compares as numbers.
- ``group``: the uniform comes from the hash of the row's ``column`` value (its string
  form) instead of the whole row, so all rows of a group (a query, a user) are on one
  side; the fractions hold for groups, not rows. No plan to fit.

Missing values: a row with no time (``time``) is split by its row hash as ``random``
would, and the plan counts such rows (``SplitPlan.missing``, logged); rows with no group
value (``group``) form one group of their own, because unknown users may be one user and
keeping them together cannot leak; a row whose label is missing or was not seen when the
plan was fitted (``stratified``) is split by its row hash (preprocess drops unlabelled
rows before splitting, so only data the plan never saw meets this rule).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd
from pandas.util import hash_pandas_object

from tasks.config import SplitConfig
from tasks.errors import ConfigError, DataError
from tasks.features.sketch import QuantileSketch
from tasks.features.transform import category_strings, datetime_values, numeric_values

log = logging.getLogger(__name__)

#: Recorded as transform.json's ``split.hash``; changing it reshuffles every split. The
#: number follows the row hash's definition (2: :func:`row_hashes`; 1 hashed with pandas).
DEFAULT_SALT = "updraft-split-2"
SPLITS: tuple[str, ...] = ("train", "validation", "test")
TRAIN, VALIDATION, TEST = 0, 1, 2
#: The methods whose plan is fitted over the data (the others need only the config).
PLANNED_METHODS: tuple[str, ...] = ("stratified", "time")
_TIME_KEY = ""  # the one sketch of a time plan partial


def _salt_hash(salt: str) -> np.uint64:
    return np.uint64(hash_pandas_object(pd.Series([salt], dtype=object), index=False).iloc[0])


def _mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniforms(hashes: np.ndarray, salt: str) -> np.ndarray:
    mixed = _mix(hashes ^ _salt_hash(salt))
    return (mixed >> np.uint64(11)).astype(np.float64) * 2.0**-53


def row_uniforms(frame: pd.DataFrame, salt: str = DEFAULT_SALT) -> np.ndarray:
    """A number in [0, 1) per row, fixed by the row's values and the salt."""
    return _uniforms(row_hashes(frame), salt)


_FOLD = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio, odd
_MISSING_BITS = np.uint64(0x7FF8DEADBEEF0001)  # one value for every kind of missing


def row_hashes(frame: pd.DataFrame) -> np.ndarray:
    """A 64-bit hash per row of all its values, in column order.

    Each column becomes 64 bits per value (:func:`value_bits`), folded in as
    ``h = (h ^ bits) * K``, a multiply and an xor per value, so hashing a row costs about
    two passes over each column; :func:`_uniforms` mixes the result. Text is hashed once
    per distinct value. Values, not storage, decide: a float32 1.5 and a float64 1.5, a
    Categorical and plain text, an Arrow string and an object string hash alike.
    """
    h = np.full(len(frame), np.uint64(len(frame.columns)), dtype=np.uint64)
    for j in range(frame.shape[1]):
        np.bitwise_xor(h, value_bits(frame.iloc[:, j]), out=h)
        np.multiply(h, _FOLD, out=h)
    return h


def value_bits(values: pd.Series) -> np.ndarray:
    """64 bits per value that equal values share (missing values all share one)."""
    dtype = values.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        table = np.append(value_bits(pd.Series(dtype.categories)), _MISSING_BITS)
        return table[values.cat.codes.to_numpy()]
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_integer_dtype(dtype):
        missing = values.isna().to_numpy()
        bits = values.to_numpy(dtype=np.int64, na_value=0).view(np.uint64)
        return np.where(missing, _MISSING_BITS, bits) if missing.any() else bits
    if pd.api.types.is_float_dtype(dtype):
        x = values.to_numpy(dtype=np.float64, na_value=np.nan) + 0.0  # -0.0 is 0.0
        bits = x.view(np.uint64)
        missing = np.isnan(x)
        return np.where(missing, _MISSING_BITS, bits) if missing.any() else bits
    if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
        missing = values.isna().to_numpy()
        bits = values.to_numpy().view(np.int64).view(np.uint64)
        return np.where(missing, _MISSING_BITS, bits)
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    hashed = hash_pandas_object(pd.Series(np.asarray(uniques, dtype=object)).astype(str), index=False).to_numpy(dtype=np.uint64)
    return np.append(hashed, _MISSING_BITS)[codes]


@dataclass(frozen=True)
class SplitPlan:
    """Everything a row's split depends on besides the row: transform.json's ``split``.

    ``cuts`` (``time``): the two cut points, int nanoseconds since the epoch (UTC) when
    ``timestamps``, else numbers. ``classes`` (``stratified``): per class key, the cut
    points of the row uniforms below which a row validates, then tests. ``missing``
    (``time``): rows the fit found without a time.
    """

    method: str = "random"
    validation: float = 0.15
    test: float = 0.15
    hash: str = DEFAULT_SALT
    column: str | None = None
    cuts: tuple[int, int] | tuple[float, float] | None = None
    timestamps: bool = False
    classes: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    missing: int = 0

    def to_json(self) -> dict[str, Any]:
        """The JSON record (time cuts as ISO-8601 UTC strings to the nanosecond)."""
        doc: dict[str, Any] = {
            "method": self.method,
            "validation": self.validation,
            "test": self.test,
            "hash": self.hash,
            "column": self.column,
        }
        if self.method == "time":
            doc["cuts"] = [_iso(c) for c in self.cuts] if self.timestamps else [float(c) for c in self.cuts]
            doc["missing"] = self.missing
        if self.method == "stratified":
            doc["classes"] = {key: [float(a), float(b)] for key, (a, b) in self.classes.items()}
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "SplitPlan":
        """Read a record written by :meth:`to_json`; a format-1 record (no ``method``) is ``random``."""
        try:
            fields: dict[str, Any] = {
                "method": doc.get("method", "random"),
                "validation": float(doc["validation"]),
                "test": float(doc["test"]),
                "hash": str(doc["hash"]),
                "column": doc.get("column"),
            }
            if fields["method"] == "time":
                raw = list(doc["cuts"])
                if len(raw) != 2:
                    raise ValueError(f"cuts must hold two cut points, got {len(raw)}")
                timestamps = all(isinstance(c, str) for c in raw)
                fields["cuts"] = tuple(pd.Timestamp(c).as_unit("ns").value if timestamps else float(c) for c in raw)
                fields["timestamps"] = timestamps
                fields["missing"] = int(doc.get("missing", 0))
            if fields["method"] == "stratified":
                fields["classes"] = {str(k): (float(v[0]), float(v[1])) for k, v in doc["classes"].items()}
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DataError(f"transform.json's split record is incomplete or malformed ({exc}): {dict(doc)!r}") from None
        problem = SplitConfig(fields["validation"], fields["test"], fields["method"], fields["column"]).problem()
        if problem:
            raise DataError(f"transform.json's split record is not usable: {problem}")
        return cls(**fields)


def _iso(ns: float) -> str:
    return pd.Timestamp(int(ns), unit="ns", tz="UTC").isoformat()


@dataclass(frozen=True)
class PlanPartial:
    """What one partition (or a merged group of them) contributes to a plan.

    ``sketches``: per class key, a sketch of the class's row uniforms (``stratified``), or
    one sketch of the times (``time``). ``timestamps`` is None until a partition with
    times said whether they are date-times or numbers.
    """

    method: str
    salt: str
    sketches: Mapping[str, QuantileSketch] = field(default_factory=dict)
    missing: int = 0
    timestamps: bool | None = None


def needs_plan(split: SplitConfig) -> bool:
    """True for methods whose cut points come from the data (stratified, time)."""
    _check(split)
    return split.method in PLANNED_METHODS


def plan_partial(frame: pd.DataFrame, split: SplitConfig, label: str | None = None, *, salt: str = DEFAULT_SALT) -> PlanPartial:
    """One partition's contribution to the plan: a sketch per class (stratified) or of the
    times (time); empty for methods without a plan. ``frame`` must have the columns
    :func:`assign_splits` will see, since stratified cut points are of row hashes."""
    _check(split)
    if split.method == "stratified":
        codes, keys = _keys(_label_column(frame, label))
        u = row_uniforms(frame, salt)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(keys) + 1))
        sketches = {str(key): QuantileSketch.from_values(u[order[bounds[i] : bounds[i + 1]]]) for i, key in enumerate(keys)}
        return PlanPartial(split.method, salt, sketches)
    if split.method == "time":
        values, known, timestamps = _time_values(frame, split.column)
        sketch = QuantileSketch.from_values(values[known].astype(np.float64))
        return PlanPartial(split.method, salt, {_TIME_KEY: sketch}, int((~known).sum()), timestamps if sketch.count else None)
    return PlanPartial(split.method, salt)


def merge_plan_partials(a: PlanPartial, b: PlanPartial) -> PlanPartial:
    """The partial of both partitions (pure; merge in a tree, see :mod:`tasks.features.sketch`)."""
    if (a.method, a.salt) != (b.method, b.salt):
        raise ValueError(f"cannot merge plan partials of {a.method!r}/{a.salt!r} and {b.method!r}/{b.salt!r}")
    if a.timestamps is not None and b.timestamps is not None and a.timestamps != b.timestamps:
        raise DataError("the split column holds date-times in some partitions and numbers in others; store it as one type")
    sketches = dict(a.sketches)
    for key, sketch in b.sketches.items():
        sketches[key] = sketches[key].merge(sketch) if key in sketches else sketch
    timestamps = a.timestamps if a.timestamps is not None else b.timestamps
    return PlanPartial(a.method, a.salt, dict(sorted(sketches.items())), a.missing + b.missing, timestamps)


def finish_plan(partial: PlanPartial | None, split: SplitConfig, salt: str = DEFAULT_SALT) -> SplitPlan:
    """The plan from the merged partials; ``partial`` may be None for random and group."""
    _check(split)
    base = SplitPlan(split.method, split.validation, split.test, salt, split.column)
    if split.method not in PLANNED_METHODS:
        return base
    if partial is None or partial.method != split.method:
        raise ValueError(f"split.method {split.method} needs a plan fitted over the data: merge plan_partial of every partition first")
    if partial.salt != salt:
        raise ValueError(f"the plan partials were made with salt {partial.salt!r}, not {salt!r}: use one salt throughout")
    if split.method == "time":
        sketch = partial.sketches.get(_TIME_KEY)
        if sketch is None or sketch.count == 0:
            raise DataError(f"split.column {split.column!r} has no values in the data: it cannot order rows by time; name a column that holds times")
        q = sketch.quantiles([1.0 - split.validation - split.test, 1.0 - split.test])
        cuts = tuple(math.ceil(c) for c in q) if partial.timestamps else tuple(float(c) for c in q)
        if partial.missing:
            log.warning(
                "split.column %r is missing in %d rows: they are split by row hash instead of by time", split.column, partial.missing
            )
        return SplitPlan(**{**base.__dict__, "cuts": cuts, "timestamps": bool(partial.timestamps), "missing": partial.missing})
    classes = {}
    for key, sketch in sorted(partial.sketches.items()):
        a, b = sketch.quantiles([split.validation, split.validation + split.test])
        classes[key] = (float(a), float(b))
    return SplitPlan(**{**base.__dict__, "classes": classes})


def assign_splits(
    frame: pd.DataFrame, split: SplitConfig | SplitPlan, salt: str = DEFAULT_SALT, label: str | None = None
) -> np.ndarray:
    """Split code per row (``TRAIN``, ``VALIDATION`` or ``TEST``, int8); index ``SPLITS`` for names.

    ``split`` is a fitted :class:`SplitPlan` (its ``hash`` is the salt; ``salt`` is then
    unused) or, for random and group, a :class:`SplitConfig`. ``label`` names the label
    column, which stratified plans need.
    """
    plan = split if isinstance(split, SplitPlan) else finish_plan(None, split, salt)
    if plan.method == "group":
        if plan.column not in frame.columns:
            raise DataError(f"split.column {plan.column!r} is not a column of the data; name one of {list(frame.columns)}")
        return _by_uniform(_group_uniforms(frame[plan.column], plan.hash), plan.validation, plan.test)
    u = row_uniforms(frame, plan.hash)
    codes = _by_uniform(u, plan.validation, plan.test)
    if plan.method == "time":
        values, known, timestamps = _time_values(frame, plan.column)
        if timestamps != plan.timestamps and known.any():
            kind = "date-times" if plan.timestamps else "numbers"
            raise DataError(f"split.column {plan.column!r} should hold {kind}, as when the plan was fitted")
        cuts = np.asarray(plan.cuts, dtype=values.dtype)  # int64 ns against int64 ns: exact
        by_time = np.where(values < cuts[0], TRAIN, np.where(values < cuts[1], VALIDATION, TEST))
        codes[known] = by_time[known]
    elif plan.method == "stratified":
        row_keys, keys = _keys(_label_column(frame, label))
        cut_val = np.array([plan.classes.get(str(k), (np.nan, np.nan))[0] for k in keys] + [np.nan])
        cut_test = np.array([plan.classes.get(str(k), (np.nan, np.nan))[1] for k in keys] + [np.nan])
        a, b = cut_val[row_keys], cut_test[row_keys]  # key -1 (missing) picks the trailing NaN
        known = ~np.isnan(a)
        by_class = np.where(u < a, VALIDATION, np.where(u < b, TEST, TRAIN))
        codes[known] = by_class[known]
    return codes


def _by_uniform(u: np.ndarray, validation: float, test: float) -> np.ndarray:
    codes = np.full(u.shape[0], TRAIN, dtype=np.int8)
    codes[u < validation + test] = TEST
    codes[u < validation] = VALIDATION
    return codes


def _check(split: SplitConfig) -> None:
    problem = split.problem()
    if problem:
        raise ConfigError(problem)


def _keys(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the index of its string form in the returned keys (-1 when missing).

    Factorizes first so that only distinct values are turned into strings.
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    strings = category_strings(pd.Series(uniques))
    key_of_unique, keys = pd.factorize(strings, use_na_sentinel=True)
    key_of_unique = np.append(np.asarray(key_of_unique, dtype=np.int64), -1)
    return key_of_unique[codes], np.asarray(keys, dtype=object)


def _label_column(frame: pd.DataFrame, label: str | None) -> pd.Series:
    if label is None:
        raise ValueError("a stratified split needs the label column's name: pass label=")
    if label not in frame.columns:
        raise DataError(f"the label column {label!r} is not in the data, so a stratified split cannot use it")
    return frame[label]


def _group_uniforms(values: pd.Series, salt: str) -> np.ndarray:
    """Per row, the uniform of its group value's string form; missing values share one."""
    row_keys, keys = _keys(values)
    hashed = hash_pandas_object(pd.Series([*keys, None], dtype=object), index=False).to_numpy(dtype=np.uint64)
    return _uniforms(hashed, salt)[row_keys]  # key -1 (missing) picks the trailing None's hash


def _time_values(frame: pd.DataFrame, column: str | None) -> tuple[np.ndarray, np.ndarray, bool]:
    """The time column as compared with the cuts, which rows have a time, and whether it holds date-times.

    Date-times become int64 nanoseconds (UTC) and are compared exactly; the quantile
    sketch sees their float64 form, exact to 256 ns for present-day dates. Numbers are
    float64 (non-finite counts as missing).
    """
    if column not in frame.columns:
        raise DataError(f"split.column {column!r} is not a column of the data; name one of {list(frame.columns)}")
    values = frame[column]
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        numbers = numeric_values(values, column)
        return numbers, np.isfinite(numbers), False
    stamps = datetime_values(values, column)
    ns = stamps.dt.as_unit("ns").to_numpy(dtype="datetime64[ns]").view(np.int64)
    return ns, ~stamps.isna().to_numpy(), True
