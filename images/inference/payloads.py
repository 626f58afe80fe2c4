"""Request bodies in, response bodies out: SageMaker's serving formats, with errors a caller can act on.

In: ``text/csv`` (no header, the model's input columns in order, empty field = missing),
``application/json`` (``{"instances": [...]}`` or a bare list; each instance an object of
column: value or a list of values in column order) and ``application/x-parquet`` (columns
by name). Out: ``{"predictions": [...]}`` as JSON or one prediction per line as CSV, as
``Accept`` asks (JSON when it does not say).

Each parser returns the frame :meth:`tasks.modelbundle.ModelBundle.predict_frame` takes.
Numeric columns are parsed here with the transform's own parser, so text training would
refuse is refused here too, as a 400 that names the row and column. Anything wrong with a
request raises a :class:`RequestError` whose ``status`` (4xx) and message go back to the
caller; the server and batch transform share this module, so both judge a body alike.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from tasks.errors import DataError
from tasks.features.transform import numeric_values

CSV = "text/csv"
JSON = "application/json"
PARQUET = "application/x-parquet"
#: Parquet's IANA media type (2024); read as ``application/x-parquet``.
PARQUET_IANA = "application/vnd.apache.parquet"
#: What ``Content-Type`` may name, in the order error messages list them.
CONTENT_TYPES = (CSV, JSON, PARQUET)
#: What ``Accept`` may ask for; the first is the default.
ACCEPT_TYPES = (JSON, CSV)
#: SageMaker refuses real-time payloads above 6 MB; answering the same locally keeps a
#: request that works on a laptop working behind the real endpoint.
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024


class RequestError(ValueError):
    """A request the caller must fix; ``status`` is the 4xx to answer, the message says what is wrong."""

    status = 400


class InvalidRequest(RequestError):
    """The body cannot be read as the content type says, or does not fit the model's columns (400)."""


class UnsupportedContentType(RequestError):
    """``Content-Type`` is missing or names a format the server does not read (415)."""

    status = 415


class NotAcceptable(RequestError):
    """``Accept`` names no format the server writes (406)."""

    status = 406


class PayloadTooLarge(RequestError):
    """The body is over :data:`MAX_PAYLOAD_BYTES` (413)."""

    status = 413


def media_type(header: str | None) -> str:
    """``"Text/CSV; charset=utf-8"`` -> ``"text/csv"``; ``""`` when absent."""
    return (header or "").split(";", 1)[0].strip().lower()


def content_type_of(header: str | None) -> str:
    """The supported content type a ``Content-Type`` header names, or :class:`UnsupportedContentType`."""
    found = media_type(header)
    if found == PARQUET_IANA:
        return PARQUET
    if found not in CONTENT_TYPES:
        shown = repr(found) if found else "none"
        raise UnsupportedContentType(
            f"unsupported content type {shown}; send the rows as one of: {', '.join(CONTENT_TYPES)}"
        )
    return found


def accept_type_of(header: str | None) -> str:
    """The response format an ``Accept`` header asks for: the supported type with the highest
    q (the client's order breaks ties); JSON when the header is absent or says ``*/*``."""
    if header is None or not header.strip():
        return ACCEPT_TYPES[0]
    best: tuple[float, int, str] | None = None
    for order, item in enumerate(header.split(",")):
        kind, *params = (part.strip() for part in item.split(";"))
        kind = kind.lower()
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality <= 0:
            continue
        if kind in ("*/*", "application/*"):
            chosen = JSON
        elif kind == "text/*":
            chosen = CSV
        elif kind in ACCEPT_TYPES:
            chosen = kind
        else:
            continue
        if best is None or quality > best[0]:
            best = (quality, order, chosen)
    if best is None:
        raise NotAcceptable(f"cannot answer in {header.strip()!r}; accept one of: {', '.join(ACCEPT_TYPES)}")
    return best[2]


def check_size(size: int) -> None:
    """:class:`PayloadTooLarge` when ``size`` bytes are over the limit, else nothing."""
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(
            f"the body is {size:,} bytes, over the {MAX_PAYLOAD_BYTES // 2**20} MB limit of a real-time "
            "endpoint; split the rows over several requests or use batch transform"
        )


def _columns(spec: Mapping[str, Any]) -> tuple[list[str], set[str]]:
    columns = list(spec["input_columns"])
    numeric = {entry["name"] for entry in spec.get("numeric", [])}
    return columns, numeric


def _frame(rows: list[list[Any]], spec: Mapping[str, Any], what: str = "row") -> pd.DataFrame:
    """Rows of raw values (``None`` = missing) to the frame ``predict_frame`` takes.

    Numeric columns are parsed with the transform's own parser (a 400 naming the column
    where it refuses); every other column keeps its raw values for the transform to encode.
    """
    columns, numeric = _columns(spec)
    data: dict[str, Any] = {}
    for j, name in enumerate(columns):
        raw = pd.Series([row[j] for row in rows], dtype=object)
        if name in numeric:
            flags = raw.map(lambda v: isinstance(v, bool)).to_numpy(dtype=bool)
            if flags.any():
                i = int(flags.nonzero()[0][0])
                raise InvalidRequest(f"{what} {i + 1}, column {name!r}: expected a number, got {raw[i]!r}")
            try:
                data[name] = numeric_values(raw, name)
            except DataError as exc:
                raise InvalidRequest(f"{_first_bad_row(raw, what)}{exc}") from None
        else:
            data[name] = raw
    return pd.DataFrame(data, columns=columns)


def _first_bad_row(raw: pd.Series, what: str) -> str:
    """``"row 3: "`` for the first value of a numeric column the transform's parser refuses
    (found by bisection: a handful of vectorised parses, even for 100,000 rows)."""
    low, high = 0, len(raw)  # the first bad value lies in [low, high)
    while high - low > 1:
        middle = (low + high) // 2
        try:
            numeric_values(raw.iloc[low:middle])
        except DataError:
            high = middle
        else:
            low = middle
    return f"{what} {low + 1}: " if len(raw) else ""


def parse_csv(body: bytes, spec: Mapping[str, Any]) -> pd.DataFrame:
    """``text/csv`` rows, no header, columns in ``spec["input_columns"]`` order; empty fields are missing."""
    columns, _ = _columns(spec)
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the CSV body is not UTF-8 text (byte {exc.start})") from None
    rows: list[list[Any]] = []
    try:
        for i, fields in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
            # csv yields [] for an empty line: one empty field, i.e. a row of one missing value.
            fields = fields or [""]
            if len(fields) != len(columns):
                raise InvalidRequest(
                    f"row {i} has {len(fields)} field{'s' if len(fields) != 1 else ''}; expected "
                    f"{len(columns)} ({', '.join(columns)}), without a header and without the label"
                )
            rows.append([f if f != "" else None for f in fields])
    except csv.Error as exc:
        raise InvalidRequest(f"the CSV body cannot be parsed: {exc}") from None
    if not rows:
        raise InvalidRequest("the CSV body has no rows")
    return _frame(rows, spec)


_JSON_SHAPES = (
    'send {"instances": [...]} or a bare list of instances, each an object of column: value '
    "or a list of values in column order"
)


def parse_json(body: bytes, spec: Mapping[str, Any]) -> pd.DataFrame:
    """``{"instances": [...]}`` or a bare list; each instance an object (absent keys are
    missing values) or a list of values in the input columns' order."""
    columns, _ = _columns(spec)
    try:
        doc = json.loads(body)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4,300 digits
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest("the body is not valid JSON: it nests too deeply") from None
    if isinstance(doc, dict):
        if "instances" not in doc:
            raise InvalidRequest(f"the JSON object has no 'instances' key; {_JSON_SHAPES}")
        extra = sorted(set(doc) - {"instances"})
        if extra:
            raise InvalidRequest(f"unknown top-level key(s) {extra}; only 'instances' is accepted")
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise InvalidRequest(f"'instances' is a {_json_kind(instances)}, expected a list; {_JSON_SHAPES}")
    elif isinstance(doc, list):
        instances = doc
    else:
        raise InvalidRequest(f"the JSON body is a {_json_kind(doc)}; {_JSON_SHAPES}")
    if not instances:
        raise InvalidRequest("there are no instances: nothing to predict")
    known = set(columns)
    rows: list[list[Any]] = []
    for i, instance in enumerate(instances, start=1):
        if isinstance(instance, dict):
            unknown = sorted(set(instance) - known)
            if unknown:
                raise InvalidRequest(f"instance {i} has unknown key(s) {unknown}; the model takes {', '.join(columns)}")
            row = [instance.get(name) for name in columns]
        elif isinstance(instance, list):
            if len(instance) != len(columns):
                raise InvalidRequest(
                    f"instance {i} has {len(instance)} value{'s' if len(instance) != 1 else ''}; expected "
                    f"{len(columns)} ({', '.join(columns)}), in that order"
                )
            row = list(instance)
        else:
            raise InvalidRequest(
                f"instance {i} is a {_json_kind(instance)}; expected an object of column: value or a list of "
                f"values (to send one row as a list, wrap it: [[...]])"
            )
        for name, value in zip(columns, row):
            if isinstance(value, (dict, list)):
                raise InvalidRequest(f"instance {i}, column {name!r}: expected a single value, got a {_json_kind(value)}")
        rows.append(row)
    return _frame(rows, spec, what="instance")


def _json_kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def parse_parquet(body: bytes, spec: Mapping[str, Any]) -> pd.DataFrame:
    """A Parquet file holding every input column by name (any order); no other columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns, numeric = _columns(spec)
    try:
        table = pq.read_table(pa.BufferReader(body))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InvalidRequest(f"the body is not a readable Parquet file: {exc}") from None
    names = table.column_names
    missing = [c for c in columns if c not in names]
    if missing:
        raise InvalidRequest(f"the Parquet file lacks the column(s) {missing}; the model takes {', '.join(columns)}")
    unknown = [c for c in names if c not in columns]
    if unknown:
        raise InvalidRequest(f"the Parquet file has unknown column(s) {unknown}; drop them (the model takes {', '.join(columns)})")
    if len(set(names)) != len(names):
        raise InvalidRequest("the Parquet file names a column more than once")
    for field in table.schema:
        kind = field.type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        flat = (
            pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
            or pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)
            or pa.types.is_timestamp(kind) or pa.types.is_date(kind) or pa.types.is_decimal(kind)
        )
        if not flat:
            raise InvalidRequest(f"column {field.name!r} of the Parquet file is {field.type}; send numbers, text or times")
        if field.name in numeric and (pa.types.is_timestamp(kind) or pa.types.is_date(kind)):
            raise InvalidRequest(f"column {field.name!r} must be numeric but the Parquet file holds {field.type}")
    if table.num_rows == 0:
        raise InvalidRequest("the Parquet file has no rows")
    try:
        frame = table.select(columns).to_pandas()
    except (pa.ArrowException, ValueError, OverflowError) as exc:  # e.g. a time out of pandas' range
        raise InvalidRequest(f"the Parquet file's values cannot be read: {exc}") from None
    for name in numeric & set(columns):
        values = frame[name]
        if not pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype):
            try:
                frame[name] = numeric_values(values.astype(object), name)
            except DataError as exc:
                raise InvalidRequest(str(exc)) from None
    return frame


PARSERS: dict[str, Callable[[bytes, Mapping[str, Any]], pd.DataFrame]] = {
    CSV: parse_csv,
    JSON: parse_json,
    PARQUET: parse_parquet,
}


def parse_body(body: bytes, content_type: str, spec: Mapping[str, Any]) -> pd.DataFrame:
    """The frame of input rows in ``body``; ``content_type`` as :func:`content_type_of` returns it."""
    check_not_empty(body)
    return PARSERS[content_type](body, spec)


def check_not_empty(body: bytes) -> None:
    """:class:`InvalidRequest` for a body of nothing but white space."""
    if not body or body.isspace():
        raise InvalidRequest("the request body is empty; send rows to predict")


def _finite(values: Sequence[Any]) -> list[Any]:
    """JSON has no NaN or infinity: a non-finite score becomes ``null``."""
    return [None if isinstance(v, float) and not math.isfinite(v) else v for v in values]


def format_json(predictions: Sequence[Any]) -> bytes:
    """``{"predictions": [...]}``: one entry per row, a number or (multiclass) the label."""
    try:
        return json.dumps({"predictions": predictions}, allow_nan=False, separators=(",", ":")).encode()
    except ValueError:
        return json.dumps({"predictions": _finite(predictions)}, separators=(",", ":")).encode()


def format_csv(predictions: Sequence[Any]) -> bytes:
    """One prediction per line, in row order; labels quoted where CSV needs it, missing as an empty field."""
    if all(type(v) is float for v in predictions):
        return "".join(f"{v!r}\n" if math.isfinite(v) else "\n" for v in predictions).encode()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for value in predictions:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            writer.writerow([""])
        elif isinstance(value, float):
            writer.writerow([repr(value)])
        else:
            writer.writerow([value])
    return out.getvalue().encode()


FORMATTERS: dict[str, Callable[[Sequence[Any]], bytes]] = {JSON: format_json, CSV: format_csv}


def format_predictions(predictions: Sequence[Any], accept: str) -> bytes:
    """The response body for ``predictions`` in ``accept`` (as :func:`accept_type_of` returns it)."""
    return FORMATTERS[accept](predictions)


def error_body(message: str) -> bytes:
    """``{"error": "..."}``: the body of every 4xx and 5xx."""
    return json.dumps({"error": message}).encode()

