"""Data contracts: pandera schemas in pandera's own YAML, and row-level validation against them.

A contract is the one statement of what a clean row looks like; ingest uses it to split
every raw row into "curated" (coerced to the contract's dtypes) or "quarantined" (kept
verbatim as text, with the reason), so that no row is ever silently lost.
"""

from __future__ import annotations

import copy
import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow
import pyarrow.compute as pc
import yaml
from pandera.errors import SchemaErrors

from tasks.config import Features, NumericTransform, PipelineConfig
from tasks.errors import ContractError

log = logging.getLogger("updraft.contracts")

#: Kinds a contract column can have. Preprocess handles "numeric" and "categorical";
#: "datetime" columns are carried through ingest but are not model features (yet).
KINDS = ("numeric", "categorical", "datetime")

#: Metadata columns added to every quarantined row.
REASON, SOURCE, ROW = "_reason", "_source", "_row"

_TRUE = frozenset({"true", "t", "yes", "y", "1", "1.0"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "0.0"})
_DTYPE_CHECK = re.compile(r"^dtype\((.*)\)$")
_TRUE_TOKENS = pyarrow.array(sorted(_TRUE), pyarrow.large_string())
_FALSE_TOKENS = pyarrow.array(sorted(_FALSE), pyarrow.large_string())


def load_contract(location: str, fs: Any = None) -> pa.DataFrameSchema:
    """Read a contract from a local path or an ``s3://`` URI (through ``fs``, the target's filesystem).

    Only URIs with a protocol go through ``fs``; a plain path is always a local file, so
    the stage can hand in its S3 filesystem whatever the config's contract points at.
    """
    text = _read_contract_text(location, fs)
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ContractError(f"contract {location} is not valid YAML: {_one_line(exc)}") from None
    what = "a pandera DataFrameSchema in YAML (the output of DataFrameSchema.to_yaml())"
    if not isinstance(parsed, dict):
        raise ContractError(f"contract {location} is not {what}: expected a mapping at the top level")
    columns = parsed.get("columns")
    if not isinstance(columns, (dict, list)) or not columns:
        raise ContractError(f"contract {location} is not {what}: it has no 'columns' mapping")
    if parsed.get("schema_type", "dataframe") != "dataframe":
        raise ContractError(
            f"contract {location} is not {what}: schema_type is {parsed['schema_type']!r}, not 'dataframe'"
        )
    try:
        schema = pa.DataFrameSchema.from_yaml(text)
    except Exception as exc:  # pandera raises many types for a bad dtype, check or option
        raise ContractError(f"contract {location} is not {what}: {_one_line(exc)}") from None
    if not isinstance(schema, pa.DataFrameSchema) or not schema.columns:
        raise ContractError(f"contract {location} is not {what}: it defines no columns")
    return schema


def _read_contract_text(location: str, fs: Any) -> str:
    has_protocol = "://" in location and not location.startswith("file://")
    try:
        if has_protocol:
            if fs is None:
                raise ValueError(f"load_contract needs the target's filesystem to read {location}")
            with fs.open(location, "rb") as handle:
                data = handle.read()
        else:
            data = Path(location.removeprefix("file://")).expanduser().read_bytes()
    except FileNotFoundError:
        raise ContractError(f"contract {location} does not exist; fix 'contract' in the config") from None
    except IsADirectoryError:
        raise ContractError(f"contract {location} is a folder; point 'contract' at a YAML file") from None
    except PermissionError:
        raise ContractError(f"contract {location} cannot be read: permission denied") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ContractError(f"contract {location} is not a UTF-8 text file (is it a YAML file?)") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def column_kinds(schema: pa.DataFrameSchema) -> dict[str, str]:
    """How preprocessing should treat each contract column: "numeric", "categorical" or "datetime".

    Booleans are categorical (two levels, not a magnitude); a column without a dtype is
    whatever arrived, so it is treated as text; datetimes are reported as "datetime",
    which preprocess leaves out of the default features for now.
    """
    return {name: _kind(column.dtype) for name, column in schema.columns.items()}


def _kind(dtype: Any) -> str:
    pandas_dtype = getattr(dtype, "type", None)
    if pandas_dtype is None:
        return "categorical"
    try:
        if pd.api.types.is_bool_dtype(pandas_dtype):
            return "categorical"
        if pd.api.types.is_numeric_dtype(pandas_dtype):
            return "numeric"
        if pd.api.types.is_datetime64_any_dtype(pandas_dtype) or pd.api.types.is_timedelta64_dtype(pandas_dtype):
            return "datetime"
    except TypeError:  # an engine dtype pandas cannot introspect
        return "categorical"
    return "categorical"


def resolve_features(schema: pa.DataFrameSchema, config: PipelineConfig) -> Features:
    """The model's input columns: the config's explicit lists, checked against the contract, or
    every contract column but the label typed by :func:`column_kinds` (datetimes give their
    hour, day of week and month). ``features.transforms`` alone keeps the contract's lists."""
    kinds = column_kinds(schema)
    names = list(kinds)
    listing = ", ".join(names)
    if config.label not in kinds:
        raise ContractError(
            f"label {config.label!r} is not a column of the contract {config.contract}; its columns are {listing}"
        )
    chosen = config.features
    if chosen is None or not chosen.all:
        # A ranking query id says which rows are ranked together; it is a feature only when listed.
        not_features = {config.label, config.group}
        by_kind = {kind: tuple(n for n in names if n not in not_features and kinds[n] == kind) for kind in ("numeric", "categorical", "datetime")}
        if not any(by_kind.values()):
            raise ContractError(
                f"the contract {config.contract} has no column besides the label {config.label!r} "
                "that can be a feature; add columns to the contract"
            )
        chosen = Features(**by_kind, transforms=dict(chosen.transforms) if chosen is not None else {})

    for key, columns in (("numeric", chosen.numeric), ("categorical", chosen.categorical), ("datetime", chosen.datetime)):
        for name in columns:
            if name == config.label:
                raise ContractError(
                    f"the label {config.label!r} is also listed in features.{key}; remove it from the features"
                )
            if name not in kinds:
                raise ContractError(
                    f"feature {name!r} (features.{key} in the config) is not a column of the contract "
                    f"{config.contract}; its columns are {listing}"
                )
            if key in ("numeric", "datetime") and kinds[name] != key:
                dtype = schema.columns[name].dtype
                raise ContractError(
                    f"feature {name!r} is listed in features.{key} but the contract {config.contract} "
                    f"types it as {dtype if dtype is not None else 'untyped'}; "
                    f"move it to features.{kinds[name]} or give it a {key} dtype in the contract"
                )
    for name, choice in chosen.transforms.items():
        if name not in chosen.all:
            raise ContractError(
                f"features.transforms names {name!r}, which is not a feature (features: {', '.join(chosen.all)})"
            )
        kind = "numeric" if name in chosen.numeric else "categorical" if name in chosen.categorical else "datetime"
        if kind == "datetime" or (kind == "numeric") != isinstance(choice, NumericTransform):
            raise ContractError(
                f"features.transforms.{name} holds {'numeric' if isinstance(choice, NumericTransform) else 'categorical'}"
                f" settings but {name!r} is a {kind} feature; use the settings of a {kind} column"
            )
    return chosen


def validate_frame(
    raw: pd.DataFrame,
    schema: pa.DataFrameSchema,
    *,
    source: str,
    first_row: int = 1,
    row_numbers: Sequence[int] | np.ndarray | None = None,
    keep_columns: Sequence[str] = (),
    with_row_numbers: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split raw rows into (valid rows, quarantined rows); every input row lands in exactly one.

    Valid rows are coerced to the contract's dtypes, with exactly its columns in its order
    (an optional column absent from the file arrives as nulls), then ``keep_columns`` (columns
    the contract does not know, kept as text), then ``_row`` if ``with_row_numbers``.
    Quarantined rows keep every original value as text plus ``_reason``, ``_source`` and
    ``_row``: ``row_numbers[position]`` where given (a reader that set unreadable records
    aside numbers the rest itself), else ``first_row`` + position (a caller reading a file in
    pieces passes each piece's offset).

    pandera reports a value that cannot be coerced against its row, but then fails the
    column's other checks as a whole; so validation repeats on the rows left until only
    clean rows remain. A failure that names no row (a required column missing from the
    file, a frame-wide check) quarantines every remaining row with that reason.
    """
    frame = raw.reset_index(drop=True)
    n_rows = len(frame)
    schema = _coercing(schema)
    contract_columns = list(schema.columns)
    reasons: dict[int, list[str]] = defaultdict(list)

    missing = [
        name for name in contract_columns if name not in frame.columns and schema.columns[name].required
    ]
    validated: pd.DataFrame | None = None
    if missing:
        text = "; ".join(f"{name}: column required by the contract is missing from the file" for name in missing)
        for position in range(n_rows):
            reasons[position].append(text)
    else:
        work = frame.reindex(columns=contract_columns)
        flagged = _prepare_booleans(work, schema)
        numbers_flagged = _prepare_numbers(work, schema)
        _prepare_datetimes(work, schema)
        stand_ins: dict[int, set[str]] = defaultdict(set)  # (row, column) whose value is a stand-in now
        for position, column, reason in numbers_flagged:
            stand_ins[position].add(column)
            flagged.append((position, reason))
        for position, reason in flagged:
            reasons[position].append(reason)
        failed: set[int] = set()  # rows still in ``work`` that fail (taken out of the valid ones at the end)
        while validated is None:
            try:
                validated = schema.validate(work, lazy=True)
            except SchemaErrors as exc:
                row_reasons, frame_reasons, uncoercible = _failure_reasons(exc.failure_cases, frame)
                row_reasons = _without_stand_ins(row_reasons, stand_ins)
                standing_in = {p for p in stand_ins if p in work.index}
                if row_reasons or standing_in:  # each round removes rows, so this ends
                    # Checks of a column with an uncoercible value did not run: take out only
                    # those rows now, so the other rows' reasons come from a complete round.
                    # Stand-ins coerce, so with none of those every reason is complete now.
                    moved = uncoercible or (set(row_reasons) | standing_in)
                    for position in moved:
                        reasons[position].extend(row_reasons.get(position, []))
                    if not uncoercible and not frame_reasons and _checks_are_all_it_does(schema):
                        # every check ran on every row this round and named each failure:
                        # the rows left pass, and need only their coercion, not another round
                        # (the failed rows go below, with the flagged ones, in one pass)
                        validated = schema.coerce_dtype(work)
                        failed.update(moved)
                        break
                    work = work.drop(index=sorted(moved))
                    continue
                text = "; ".join(frame_reasons) or "the contract rejected the rows as a whole"
                for position in work.index:
                    reasons[int(position)].append(text)
                break
        if validated is not None:
            failed.update(p for p, _ in flagged)
            if failed:
                validated = validated[~validated.index.isin(list(failed))]

    if validated is None:
        validated = _empty_like_contract(schema)
    numbers = (
        np.asarray(row_numbers, dtype=np.int64)
        if row_numbers is not None
        else np.arange(first_row, first_row + n_rows, dtype=np.int64)
    )
    if len(numbers) != n_rows:
        raise ValueError(f"row_numbers has {len(numbers)} entries for {n_rows} rows")
    valid = validated.reindex(columns=contract_columns)
    positions = valid.index.to_numpy(dtype=np.int64)
    for name in keep_columns:
        if name not in contract_columns:
            valid[name] = _as_text(frame[name].iloc[positions])
    if with_row_numbers:
        valid[ROW] = numbers[positions]
    valid = valid.reset_index(drop=True)
    quarantined = _quarantine_rows(frame, reasons, source=source, numbers=numbers)
    if len(valid) + len(quarantined) != n_rows:
        raise AssertionError(
            f"validate_frame lost rows for {source}: {n_rows} in, {len(valid)} valid, {len(quarantined)} quarantined"
        )
    return valid, quarantined


def _checks_are_all_it_does(schema: pa.DataFrameSchema) -> bool:
    """Whether validating changes nothing but dtypes: no parsers, defaults or added columns."""
    if getattr(schema, "parsers", None) or getattr(schema, "add_missing_columns", False):
        return False
    return not any(
        getattr(column, "parsers", None) or getattr(column, "default", None) is not None for column in schema.columns.values()
    )


def without_uniqueness(schema: pa.DataFrameSchema) -> tuple[pa.DataFrameSchema, tuple[str, ...]]:
    """The contract without its columns' ``unique: true``, and those columns' names.

    pandera checks uniqueness within the frame it is given; a file read in blocks needs it
    across blocks and files, which ingest checks itself once every block is read.
    """
    unique = tuple(name for name, column in schema.columns.items() if column.unique)
    if not unique:
        return schema, ()
    schema = copy.deepcopy(schema)
    for name in unique:
        schema.columns[name].unique = False
    return schema, unique


def _coercing(schema: pa.DataFrameSchema) -> pa.DataFrameSchema:
    """Raw text must be cast to the contract's dtypes whether or not the contract says ``coerce``."""
    if schema.coerce:
        return schema
    schema = copy.deepcopy(schema)
    schema.coerce = True
    return schema


def _prepare_booleans(work: pd.DataFrame, schema: pa.DataFrameSchema) -> list[tuple[int, str]]:
    """Map true/false/yes/no/1/0 text in boolean columns to booleans, in place; report the rest.

    pandas casts any non-empty string to True and a null to False, so without this
    "false", "maybe" and a missing value would all pass a ``bool`` column silently wrong.
    A reported value is replaced by a stand-in so the row's other columns are still
    checked (its reasons are complete); the caller quarantines the row. Text columns are
    mapped in one vectorised pass; other values (JSON's own booleans in an object column)
    one by one.
    """
    failures: list[tuple[int, str]] = []
    for name, column in schema.columns.items():
        pandas_dtype = getattr(column.dtype, "type", None)
        if pandas_dtype is None or not pd.api.types.is_bool_dtype(pandas_dtype):
            continue
        values = work[name]
        if pd.api.types.is_bool_dtype(values.dtype) and not values.isna().any():
            continue
        holds_nulls = isinstance(pandas_dtype, pd.BooleanDtype)
        null_reason = (
            None
            if holds_nulls
            else f"{name}: not_nullable failed for null"
            if not column.nullable
            else f"{name}: coerce_dtype('{column.dtype}') failed for null "
            "(give the column dtype 'boolean' in the contract to allow missing values)"
        )
        if _is_text(values):
            work[name], found = _text_to_booleans(values, name, column, holds_nulls, null_reason)
            failures.extend(found)
            continue
        mapped: list[Any] = []
        for position, value in zip(values.index, values.tolist()):
            reason = None
            if isinstance(value, str):
                token = value.strip().lower()
                value = True if token in _TRUE else False if token in _FALSE else value
                if isinstance(value, str):
                    reason = f"{name}: coerce_dtype('{column.dtype}') failed for {value!r}"
            elif _is_null(value):
                value = pd.NA if holds_nulls else None
                reason = null_reason
            if reason:
                failures.append((int(position), reason))
                value = False
            mapped.append(value)
        work[name] = pd.Series(mapped, index=values.index, dtype=object)
    return failures


def _is_text(values: pd.Series) -> bool:
    """A column of strings (pandas' ``str``/``string`` dtypes), not an object column of anything."""
    return pd.api.types.is_string_dtype(values.dtype) and not pd.api.types.is_object_dtype(values.dtype)


def _text_to_booleans(
    values: pd.Series, name: str, column: Any, holds_nulls: bool, null_reason: str | None
) -> tuple[pd.Series, list[tuple[int, str]]]:
    text = pyarrow.array(values, from_pandas=True, type=pyarrow.large_string())
    token = pc.utf8_lower(pc.utf8_trim_whitespace(text))
    true = pc.is_in(token, value_set=_TRUE_TOKENS).to_numpy(zero_copy_only=False)
    false = pc.is_in(token, value_set=_FALSE_TOKENS).to_numpy(zero_copy_only=False)
    null = pc.is_null(text).to_numpy(zero_copy_only=False)
    unknown = ~(true | false | null)
    failures = [
        (int(values.index[p]), f"{name}: coerce_dtype('{column.dtype}') failed for {repr(text[int(p)].as_py())}")
        for p in np.flatnonzero(unknown)
    ]
    if null_reason is not None:
        failures += [(int(values.index[p]), null_reason) for p in np.flatnonzero(null)]
    failures.sort(key=lambda f: f[0])
    if holds_nulls:
        mapped = pd.Series(pd.arrays.BooleanArray(true, null), index=values.index)
    else:
        mapped = pd.Series(true, index=values.index)  # stand-ins are False
    return mapped, failures


#: Text a float64 or int64 column can take as it is: Arrow casts it to the very number
#: Python's float()/int() (pandas' coercion of text) gives. Anything else (spaces, "1_000",
#: "inf", an overflowing integer) is parsed one value at a time, as pandas would.
_PLAIN_FLOAT = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?$"
_PLAIN_INT = r"^-?[0-9]{1,18}$"  # Arrow refuses a leading "+"


def _prepare_numbers(work: pd.DataFrame, schema: pa.DataFrameSchema) -> list[tuple[int, str, str]]:
    """Turn text in numeric columns into numbers in place of pandera, and report what cannot be.

    pandera finds an uncoercible value element by element and then skips the column's
    checks for every row, which costs a round of validation per kind of failure; and its
    coercion of text goes through Python objects. Here float64 and int64 columns are cast
    in one vectorised pass (:data:`_PLAIN_FLOAT`), the few other values parsed one by one
    with pandas' own coercion, so the same values fail with the same reason. A failed value
    is replaced by a stand-in (a null, or 0 for integers) so that a single round of
    validation checks everything else. Returns (row, column, reason) for each such value.
    """
    failures: list[tuple[int, str, str]] = []
    for name, column in schema.columns.items():
        pandas_dtype = getattr(column.dtype, "type", None)
        values = work[name]
        if (
            pandas_dtype is None
            or not pd.api.types.is_numeric_dtype(pandas_dtype)
            or pd.api.types.is_bool_dtype(pandas_dtype)
            or not _is_text(values)
        ):
            continue
        integer = pd.api.types.is_integer_dtype(pandas_dtype)
        wide = np.dtype(pandas_dtype) in (np.dtype("int64"), np.dtype("float64")) if isinstance(pandas_dtype, np.dtype) else False
        text = pyarrow.array(values, from_pandas=True, type=pyarrow.large_string())
        arrow_type = pyarrow.int64() if integer else pyarrow.float64()
        if wide:
            # Arrow's own parse is narrower than Python's float()/int() and agrees with it
            # wherever it succeeds (fuzzed): when it takes the whole column, that is the answer
            try:
                whole = pc.cast(text, arrow_type)
            except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError):
                whole = None
            if whole is not None and (not integer or whole.null_count == 0):
                work[name] = pd.Series(whole.to_numpy(zero_copy_only=False).copy(), index=values.index)  # writable
                continue
        plain = pc.match_substring_regex(text, _PLAIN_INT if integer else _PLAIN_FLOAT).fill_null(False)
        odd = pc.and_(pc.invert(plain), pc.is_valid(text)).to_numpy(zero_copy_only=False)
        numeric = "int64" if integer else "float64"
        parsed: dict[int, Any] = {}
        bad = []
        for p in np.flatnonzero(odd):
            value = text[int(p)].as_py()
            try:
                parsed[int(p)] = pd.Series([value], dtype=values.dtype).astype(numeric).iloc[0]
            except (ValueError, TypeError, OverflowError):
                bad.append(int(p))
                failures.append(
                    (int(values.index[p]), name, f"{name}: coerce_dtype('{column.dtype}') failed for {_show(value)}")
                )
        has_nulls = bool(pc.any(pc.is_null(text)).as_py())
        if not wide or (integer and has_nulls):
            # pandera coerces these itself (a null in an int64 column fails as it should);
            # only the failed values need their stand-ins
            if bad:
                work.loc[values.index[bad], name] = "0" if integer else None
            continue
        numbers = pc.cast(pc.if_else(plain, text, pyarrow.scalar(None, pyarrow.large_string())), arrow_type)
        array = numbers.to_numpy(zero_copy_only=False).copy() if not integer else numbers.fill_null(0).to_numpy(zero_copy_only=False).copy()
        for p, value in parsed.items():
            array[p] = value
        for p in bad:
            array[p] = 0 if integer else np.nan
        work[name] = pd.Series(array, index=values.index)
    return failures


def _prepare_datetimes(work: pd.DataFrame, schema: pa.DataFrameSchema) -> None:
    """Parse datetime text once, with pandera's own coercion, so each round does not parse it again.

    A column that does not parse as a whole stays text: pandera's round then finds which
    values fail, as it always did.
    """
    for name, column in schema.columns.items():
        if column.dtype is None or _kind(column.dtype) != "datetime" or not _is_text(work[name]):
            continue
        try:
            work[name] = column.dtype.coerce(work[name])
        except Exception:  # noqa: BLE001 - pandera's own round reports it, value by value
            continue


def _without_stand_ins(row_reasons: dict[int, list[str]], stand_ins: dict[int, set[str]]) -> dict[int, list[str]]:
    """Drop what pandera says about stand-in values: the real value's reason is already recorded."""
    if not stand_ins:
        return row_reasons
    kept: dict[int, list[str]] = {}
    for position, texts in row_reasons.items():
        columns = stand_ins.get(position, ())
        left = [t for t in texts if not any(t.startswith(f"{c}: ") for c in columns)]
        if left:
            kept[position] = left
    return kept


def _failure_reasons(
    failure_cases: pd.DataFrame, frame: pd.DataFrame
) -> tuple[dict[int, list[str]], list[str], set[int]]:
    """Readable reasons from pandera's failure cases: per row, those naming no row, and the
    rows holding a value that could not be coerced."""
    rows: dict[int, list[str]] = defaultdict(list)
    whole: list[str] = []
    cases = failure_cases.to_dict(orient="records")
    coerce_failed = {(c["column"], c["index"]) for c in cases if str(c["check"]).startswith("coerce_dtype(")}
    null_failed = {(c["column"], c["index"]) for c in cases if c["check"] == "not_nullable"}
    # A column holding an uncoercible value stays text, so its value checks fail
    # meaninglessly (isin([0, 1]) on '0'); only its coercion and null failures count.
    uncoerced = {column for column, _ in coerce_failed}
    for case in cases:
        column = case.get("column")
        column = None if column is None or (isinstance(column, float) and pd.isna(column)) else str(column)
        check = str(case["check"])
        index = case.get("index")
        has_row = index is not None and not (isinstance(index, float) and pd.isna(index))
        if has_row:
            is_coerce = check.startswith("coerce_dtype(")
            if _DTYPE_CHECK.match(check) and (case["column"], index) in coerce_failed:
                continue  # the coerce_dtype failure for the same value already says it
            if is_coerce and (case["column"], index) in null_failed:
                continue  # "not_nullable failed for null" says it better
            if case["column"] in uncoerced and not is_coerce and check != "not_nullable":
                continue
            position = int(index)
            if column is not None and column in frame.columns:
                shown = _show(frame.at[position, column])
            else:
                shown = _show(case.get("failure_case"))
            text = f"{column}: {check} failed for {shown}" if column else f"{check} failed for row"
            if text not in rows[position]:
                rows[position].append(text)
        else:
            failure = case.get("failure_case")
            # A check over many rows reports False, or an exception pandera caught, as its case.
            detail = "" if isinstance(failure, (bool, np.bool_)) or _is_null(failure) else f" ({failure})"
            if check == "column_in_dataframe":
                text = f"{failure}: column required by the contract is missing from the file"
            else:
                text = f"{column + ': ' if column else ''}{check} failed for the rows as a whole{detail}"
            if text not in whole:
                whole.append(text)
    uncoercible = {int(index) for column, index in coerce_failed if index is not None and not pd.isna(index)}
    return dict(rows), whole, uncoercible


def _is_null(value: Any) -> bool:
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _show(value: Any) -> str:
    return "null" if _is_null(value) else repr(str(value))


def _as_text(values: pd.Series) -> pd.Series:
    texts = [None if _is_null(v) else str(v) for v in values.tolist()]
    return pd.Series(texts, index=values.index, dtype="str")


def _quarantine_rows(
    frame: pd.DataFrame, reasons: dict[int, list[str]], *, source: str, numbers: np.ndarray
) -> pd.DataFrame:
    positions = sorted(reasons)
    picked = frame.iloc[positions]
    out = pd.DataFrame({str(name): _as_text(picked[name]) for name in picked.columns}, index=picked.index)
    out[REASON] = pd.Series(["; ".join(reasons[p]) for p in positions], index=picked.index, dtype="str")
    out[SOURCE] = pd.Series([source] * len(positions), index=picked.index, dtype="str")
    out[ROW] = pd.Series(numbers[positions], index=picked.index, dtype="int64")
    return out.reset_index(drop=True)


def _empty_like_contract(schema: pa.DataFrameSchema) -> pd.DataFrame:
    """No valid rows, but the contract's dtypes all the same, so every Parquet piece agrees."""
    return schema.coerce_dtype(pd.DataFrame({name: pd.Series([], dtype=object) for name in schema.columns}))
