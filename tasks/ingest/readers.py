"""Reading raw files in bounded pieces ("chunks"), keeping every record, readable or not.

A chunk is the rows parsed from one block of a file plus the records that could not be
made into rows (a ragged line, bytes that are not UTF-8, a repeated header line, a line
that is not JSON), each with its reason and raw text, so the caller quarantines them
instead of losing them. Text formats are parsed by pyarrow with every column as bytes:
turning text into numbers is the contract's job, and decoding per column lets one bad
value cost one row rather than the file.

Two ways through a file:
- blocks: an uncompressed CSV, TSV or JSON-lines file is cut at line breaks into byte
  ranges read independently by the workers (Parquet by row groups). A CSV line break may
  sit inside a quoted field, so a CSV block whose values hold line breaks (or whose
  ragged lines hold quotes) is marked ``suspect``: the caller then reads the file again
  as a stream.
- a stream: compressed files (gzip, bz2, zstd cannot be cut) and CSV files with quoted
  line breaks are read front to back by one worker, chunk after chunk, through pyarrow's
  streaming CSV reader, which follows quotes across its blocks.
Either way at most about one chunk per worker is in memory.

Failures are told apart: an error from the store (S3 down, throttled past botocore's
retries) propagates, so the run fails and can be retried; an error from the file's
content (not CSV, corrupt gzip, not Parquet) becomes :class:`FileRejected` with a reason.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import zlib
from dataclasses import dataclass
from typing import Any, Iterator

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from tasks.ingest.sources import FORMAT_NAMES, SourceObject

#: Columns of the rows a chunk could not parse: the record's number in the chunk (1-based),
#: its raw text and why it could not be read.
RECORD, RAW, REASON = "_record", "_raw", "_reason"
#: Text that pandas' CSV reader reads as a missing value; kept so files read the same as before.
NA_VALUES = (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
)
_NA = pa.array(NA_VALUES, pa.string())
#: How far into a file its header line may end.
HEADER_LIMIT = 2**20
#: Bytes fetched past a block's end in the same request, to find where its last line ends.
LINE_SLACK = 2**20
_BOM = "\ufeff"


class FileRejected(Exception):
    """The file as a whole cannot be read as what its name says; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:  # crosses process boundaries between Dask workers
        return (FileRejected, (self.reason,))


@dataclass
class Chunk:
    """Records of one block: ``frame`` holds the parsed ones, ``rows`` their record numbers
    (1-based within the chunk), ``broken`` the unparsable ones; ``records`` counts both."""

    frame: pd.DataFrame
    rows: np.ndarray
    broken: pd.DataFrame
    suspect: bool = False

    @property
    def records(self) -> int:
        return len(self.frame) + len(self.broken)


@dataclass(frozen=True)
class CsvHeader:
    names: tuple[str, ...]
    sep: str

    @property
    def line(self) -> str:
        return self.sep.join(self.names)


@dataclass(frozen=True)
class ParquetPart:
    """Consecutive row groups of one Parquet file read by one task; ``first_row`` is the
    number of rows before them, ``batch_rows`` how many rows make one chunk."""

    row_groups: tuple[int, ...]
    first_row: int
    batch_rows: int


def empty_broken() -> pd.DataFrame:
    return pd.DataFrame({RECORD: pd.Series([], dtype="int64"), RAW: pd.Series([], dtype="str"), REASON: pd.Series([], dtype="str")})


# --- opening a file, telling the store's failures from the file's ---------------------------------


class _Guard(io.RawIOBase):
    """A file from the store that remembers the store's own failure, so a parser error it
    causes (pyarrow wraps it) is not mistaken for a broken file."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._handle.read(len(buffer))
        except BaseException as exc:
            self.error = exc
            raise
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        try:
            return self._handle.read(size)
        except BaseException as exc:
            self.error = exc
            raise

    def seek(self, offset: int, whence: int = 0) -> int:
        try:
            return self._handle.seek(offset, whence)
        except BaseException as exc:
            self.error = exc
            raise

    def tell(self) -> int:
        return self._handle.tell()

    def close(self) -> None:
        self._handle.close()
        super().close()


#: What parsers and decompressors raise for content that is not what the name says.
_CONTENT_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, EOFError, zlib.error, pa.ArrowException)


@contextlib.contextmanager
def open_raw(obj: SourceObject, options: dict[str, Any], *, block_size: int | None = None) -> Iterator[_Guard]:
    """The object's bytes as stored (compressed or not), guarded. ``block_size``: how much
    each request fetches, for reading only the start of a file (s3fs reads 50 MB ahead)."""
    fs, path = fsspec.core.url_to_fs(obj.uri, **options)
    extra: dict[str, Any] = {} if block_size is None else {"block_size": block_size}
    with fs.open(path, "rb", **extra) as handle:
        guard = _Guard(handle)
        with reading(obj, guard):
            yield guard


@contextlib.contextmanager
def open_stream(obj: SourceObject, options: dict[str, Any], *, block_size: int | None = None) -> Iterator[Any]:
    """The object's content as a pyarrow stream, decompressed by its extension."""
    with open_raw(obj, options, block_size=block_size) as guard:
        raw = pa.PythonFile(guard, mode="r")
        yield pa.CompressedInputStream(raw, obj.compression) if obj.compression else raw


@contextlib.contextmanager
def reading(obj: SourceObject, guard: _Guard | None) -> Iterator[None]:
    """Turn an error from the file's content into :class:`FileRejected`; let the store's through."""
    try:
        yield
    except FileRejected:
        raise
    except _CONTENT_ERRORS as exc:
        if guard is not None and guard.error is not None:
            raise guard.error from None
        raise FileRejected(content_reason(obj, exc)) from None


def content_reason(obj: SourceObject, exc: BaseException) -> str:
    if isinstance(exc, UnicodeDecodeError):
        detail = f"it is not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r} at offset {exc.start})"
    else:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        if "decompress failed" in detail or "inflate failed" in detail or "Truncated compressed stream" in detail:
            detail = f"its {obj.compression} data is corrupt or cut short ({detail})"
    return f"cannot be read as {FORMAT_NAMES[obj.format]}: {detail}"


def block_offsets(size: int, blocksize: int) -> list[int]:
    """Byte offsets of the blocks an uncompressed text file is cut into."""
    return list(range(0, max(size, 1), blocksize))


def read_text_block(obj: SourceObject, options: dict[str, Any], offset: int, length: int) -> bytes:
    """The whole lines that start in ``[offset, offset + length)``: fsspec's ``read_block``
    rule (as Dask's), read in one request as a rule.

    fsspec's ``read_block`` on an unbuffered file makes three requests per block (the line
    end after ``offset``, the one after ``offset + length``, then the bytes between); each
    costs a round trip on S3, and the embedded endpoint reads the whole object for each.
    Here one ranged GET fetches the block and :data:`LINE_SLACK` bytes past it, the line
    ends are found in memory, and more is fetched only when a line runs past the slack.
    Errors from the store propagate as they are.
    """
    fs, path = fsspec.core.url_to_fs(obj.uri, **options)
    data = fs.cat_file(path, start=offset, end=min(obj.size, offset + length + LINE_SLACK))
    start = 0
    if offset:
        start, data = _line_end(fs, path, obj.size, offset, data, 0)
    end, data = _line_end(fs, path, obj.size, offset, data, length)
    return data[start : max(start, end)]


def _line_end(fs: Any, path: str, size: int, offset: int, data: bytes, position: int) -> tuple[int, bytes]:
    """Just past the first line break at or after ``position`` of ``data`` (the file's bytes
    from ``offset`` on), or the end of the file; with ``data`` grown when it had to be: a
    line longer than the slack fetches ever larger pieces, so even a huge one costs few requests."""
    step = LINE_SLACK
    while True:
        found = data.find(b"\n", position)
        if found >= 0:
            return found + 1, data
        if offset + len(data) >= size:
            return len(data), data
        position = len(data)
        step *= 2
        more = fs.cat_file(path, start=offset + len(data), end=min(size, offset + len(data) + step))
        if not more:  # the object shrank since it was listed
            return len(data), data
        data += more


# --- CSV and TSV ---------------------------------------------------------------------------


def read_csv_header(obj: SourceObject, options: dict[str, Any]) -> CsvHeader:
    """The column names from the file's first non-blank line (BOM removed)."""
    sep = "\t" if obj.format == "tsv" else ","
    with open_stream(obj, options, block_size=HEADER_LIMIT) as stream:  # not s3fs's 50 MB read-ahead
        data = b""
        while True:
            piece = stream.read(64 * 1024)
            data += piece
            end = _first_record_end(data.lstrip(b"\r\n"))
            if end is not None or not piece or len(data) > HEADER_LIMIT:
                break
    text_bytes = data.lstrip(b"\r\n")
    if not data:
        raise FileRejected("the file is empty" + (f" (after {obj.compression} decompression)" if obj.compression else ""))
    if not text_bytes.strip():
        raise FileRejected("the file holds only blank lines")
    if end is None:
        if len(data) > HEADER_LIMIT:
            raise FileRejected(f"cannot be read as {FORMAT_NAMES[obj.format]}: no line break in its first MiB")
        end = len(text_bytes)
    line = text_bytes[:end]
    if b"\x00" in line:
        raise FileRejected(f"cannot be read as {FORMAT_NAMES[obj.format]}: its header line holds NUL bytes (a binary file?)")
    try:
        text = line.decode("utf-8").removeprefix(_BOM)
    except UnicodeDecodeError as exc:
        raise FileRejected(
            f"cannot be read as {FORMAT_NAMES[obj.format]}: its header line is not UTF-8 text "
            f"(byte {exc.object[exc.start:exc.start + 1]!r} at offset {exc.start})"
        ) from None
    names = tuple(next(csv.reader(io.StringIO(text), delimiter=sep)))
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise FileRejected(f"cannot be read as {FORMAT_NAMES[obj.format]}: its header names column {name!r} twice")
        seen.add(name)
    return CsvHeader(names=names, sep=sep)


def _first_record_end(data: bytes) -> int | None:
    """Where the first line ends, skipping line breaks inside quotes; None if not in ``data``."""
    start = 0
    while True:
        end = data.find(b"\n", start)
        if end < 0:
            return None
        if data.count(b'"', 0, end) % 2 == 0:
            return end
        start = end + 1


def parse_csv_block(data: bytes, header: CsvHeader, *, holds_header: bool) -> Chunk:
    """Parse one block of a CSV file (``holds_header`` for the first: its first record is the header).

    The parser reads values straight as text with the missing-value tokens as nulls; a
    block with a byte that is not UTF-8 (or a header naming a column like a missing-value
    token) is read again as bytes, so each bad value can be told apart and reported.
    """
    if not data or data.isspace():  # stops at the first other byte, unlike strip()
        return _empty_chunk(header.names)
    broken: list[tuple[int, str, str]] = []
    table = None
    as_text = not any(name in NA_VALUES for name in header.names)
    if as_text:
        try:
            table = _read_block(data, header, broken, _text_options(header))
        except pa.ArrowInvalid:  # not UTF-8, or something the byte-wise reading reports itself
            broken.clear()
            as_text = False
    if table is None:
        table = _read_block(data, header, broken, _convert_options(header))
    total = table.num_rows + len(broken)
    numbers = _row_numbers(table.num_rows, [b[0] for b in broken], first=1)
    if holds_header:
        # the header line itself, wherever the parser put it
        if len(numbers) and numbers[0] == 1:  # as nearly always: a slice, not a copy
            table, numbers = table.slice(1), numbers[1:] - 1
        else:
            keep = numbers != 1
            table, numbers = table.filter(pa.array(keep)), numbers[keep] - 1
        broken = [(n - 1, text, reason) for n, text, reason in broken if n != 1]
        total -= 1
    chunk = _text_chunk(table, numbers, broken, header, nulls_read=as_text)
    # a block cut inside a quoted field shows as values holding line breaks, or as a ragged
    # line with an unclosed quote; either way the file must be read front to back instead.
    # Without a quote character in the block neither can happen, nor can a line break
    # inside a value when the block holds one line break per record.
    records = table.num_rows + len(broken) + (1 if holds_header else 0)
    if b'"' in data and data.count(b"\n") != records - (0 if data.endswith(b"\n") else 1):
        chunk.suspect = any('"' in text for _, text, _ in broken) or any(
            pc.any(pc.match_substring(column, "\n")).as_py() for column in table.columns if len(column)
        )
    assert chunk.records == total
    return chunk


def _read_block(data: bytes, header: CsvHeader, broken: list[tuple[int, str, str]], convert: pcsv.ConvertOptions) -> pa.Table:
    return pcsv.read_csv(
        io.BytesIO(data),
        read_options=pcsv.ReadOptions(column_names=list(header.names), use_threads=False, block_size=max(len(data) + 1, 1 << 20)),
        parse_options=_parse_options(header, broken),
        convert_options=convert,
    )


def iter_csv_stream(
    obj: SourceObject, options: dict[str, Any], header: CsvHeader, blocksize: int
) -> Iterator[tuple[int, Chunk]]:
    """The file front to back as (records before the chunk, chunk), quotes followed throughout."""
    broken: list[tuple[int, str, str]] = []
    with open_stream(obj, options) as stream:
        reader = pcsv.open_csv(
            stream,
            read_options=pcsv.ReadOptions(use_threads=False, block_size=blocksize),
            parse_options=_parse_options(header, broken),
            convert_options=_convert_options(header),
        )
        if tuple(reader.schema.names) != header.names:
            raise FileRejected(
                f"cannot be read as {FORMAT_NAMES[obj.format]}: its header line is ambiguous "
                f"({list(header.names)} or {reader.schema.names})"
            )
        next_record = 1  # data records, the header not counted (pyarrow counts it as record 1)
        for batch in reader:
            table = pa.Table.from_batches([batch])
            pending = [b[0] - 1 for b in broken]
            numbers = _row_numbers(table.num_rows, pending, first=next_record)
            last = int(numbers[-1]) if len(numbers) else next_record - 1
            mine = [(n - 1, text, reason) for n, text, reason in broken if n - 1 <= last]
            broken[:] = [b for b in broken if b[0] - 1 > last]
            base = next_record - 1
            yield base, _text_chunk(table, numbers - base, [(n - base, t, r) for n, t, r in mine], header)
            next_record = last + 1
        if broken:
            base = next_record - 1
            rest = [(n - 1 - base, text, reason) for n, text, reason in broken]
            yield base, _text_chunk(_empty_table(header.names), np.empty(0, np.int64), rest, header)


def _parse_options(header: CsvHeader, broken: list[tuple[int, str, str]]) -> pcsv.ParseOptions:
    expected = len(header.names)

    def ragged(row: Any) -> str:
        broken.append((int(row.number), str(row.text), f"row has {row.actual_columns} fields, header has {expected}"))
        return "skip"

    return pcsv.ParseOptions(delimiter=header.sep, newlines_in_values=True, invalid_row_handler=ragged)


def _convert_options(header: CsvHeader) -> pcsv.ConvertOptions:
    return pcsv.ConvertOptions(column_types={name: pa.binary() for name in header.names}, strings_can_be_null=False)


def _text_options(header: CsvHeader) -> pcsv.ConvertOptions:
    """Every column as UTF-8 text, :data:`NA_VALUES` as nulls (quoted or not, as pandas reads them)."""
    return pcsv.ConvertOptions(
        column_types={name: pa.large_string() for name in header.names},  # pandas' own storage: no cast
        null_values=list(NA_VALUES),
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )


def _row_numbers(n_rows: int, broken: list[int], *, first: int) -> np.ndarray:
    """Record numbers of ``n_rows`` parsed rows counted from ``first``, skipping the broken records' numbers."""
    later = np.array(sorted(b for b in broken if b >= first), dtype=np.int64) - first
    span = n_rows + len(later)
    free = np.ones(span, dtype=bool)
    free[later[later < span]] = False
    return (np.flatnonzero(free)[:n_rows] + first).astype(np.int64)


def _empty_table(names: tuple[str, ...]) -> pa.Table:
    return pa.table({name: pa.array([], pa.binary()) for name in names})


def _empty_chunk(names: tuple[str, ...]) -> Chunk:
    frame = pd.DataFrame({name: pd.Series([], dtype="str") for name in names})
    return Chunk(frame=frame, rows=np.empty(0, np.int64), broken=empty_broken())


def _text_chunk(
    table: pa.Table, numbers: np.ndarray, broken: list[tuple[int, str, str]], header: CsvHeader, *, nulls_read: bool = False
) -> Chunk:
    """Bytes columns to text: undecodable values and repeated header lines join ``broken``.

    ``nulls_read``: the parser already turned :data:`NA_VALUES` into nulls."""
    columns: dict[str, pa.Array] = {}
    undecodable: dict[int, list[str]] = {}
    for name, column in zip(header.names, table.columns):
        array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        if pa.types.is_large_string(array.type):  # read as text already
            columns[name] = array
            continue
        if not pa.types.is_binary(array.type):
            array = array.cast(pa.string())
        try:
            columns[name] = array.cast(pa.string())
        except pa.ArrowInvalid:
            texts = []
            for position, value in enumerate(array.to_pylist()):
                try:
                    texts.append(None if value is None else value.decode("utf-8"))
                except UnicodeDecodeError as exc:
                    undecodable.setdefault(position, []).append(
                        f"{name}: not UTF-8 text (byte {value[exc.start:exc.start + 1]!r} at offset {exc.start})"
                    )
                    texts.append(value.decode("utf-8", "backslashreplace"))
            columns[name] = pa.array(texts, pa.string())
    n_rows = table.num_rows
    repeated = np.zeros(n_rows, dtype=bool)
    if n_rows and header.names:
        same = np.ones(n_rows, dtype=bool)
        for index, (name, array) in enumerate(columns.items()):
            matches = pc.equal(array, name)
            if index == 0:
                matches = pc.or_(matches, pc.equal(array, _BOM + name))
            same &= matches.fill_null(False).to_numpy(zero_copy_only=False)
            if not same.any():  # the first column rules nearly every row out
                break
        repeated = same
    bad = np.zeros(n_rows, dtype=bool)
    bad[list(undecodable)] = True
    bad |= repeated
    records = [(n, text, reason) for n, text, reason in broken]
    if bad.any():
        positions = np.flatnonzero(bad)
        texts = {name: columns[name].take(pa.array(positions)).to_pylist() for name in columns}
        for i, position in enumerate(positions):
            values = [texts[name][i] for name in columns]
            line = header.sep.join("" if v is None else v for v in values)
            reason = "repeated header line" if repeated[position] else "; ".join(undecodable[int(position)])
            records.append((int(numbers[position]), line, reason))
        keep = pa.array(~bad)
        columns = {name: array.filter(keep) for name, array in columns.items()}
        numbers = numbers[~bad]
    frame = pa.table(
        {
            name: array if nulls_read else pc.if_else(pc.is_in(array, value_set=_NA), pa.scalar(None, pa.string()), array)
            for name, array in columns.items()
        }
        if columns
        else {}
    ).to_pandas()
    if not columns:
        frame = pd.DataFrame(index=range(len(numbers)))
    return Chunk(frame=frame, rows=np.asarray(numbers, dtype=np.int64), broken=_broken_frame(records))


def _broken_frame(records: list[tuple[int, str, str]]) -> pd.DataFrame:
    if not records:
        return empty_broken()
    records = sorted(records)
    return pd.DataFrame(
        {
            RECORD: pd.Series([r[0] for r in records], dtype="int64"),
            RAW: pd.Series([r[1] for r in records], dtype="str"),
            REASON: pd.Series([r[2] for r in records], dtype="str"),
        }
    )


# --- JSON lines ----------------------------------------------------------------------------


def parse_json_block(data: bytes, *, first: bool) -> Chunk:
    """One block of JSON lines: one row per non-blank line; lines that are not JSON objects
    (or not UTF-8) become broken records."""
    if first:
        data = data.removeprefix(_BOM.encode())
    try:
        frame = (
            pd.read_json(io.StringIO(data.decode("utf-8")), lines=True, dtype=False)  # dtype=False: no dates guessed either
            if data.strip()
            else pd.DataFrame()
        )
    except (ValueError, TypeError):  # a bad line somewhere: go line by line
        return _json_line_by_line(data)
    frame.columns = [str(c) for c in frame.columns]
    return Chunk(frame=frame, rows=np.arange(1, len(frame) + 1, dtype=np.int64), broken=empty_broken())


def _json_line_by_line(data: bytes) -> Chunk:
    records: list[dict[str, Any]] = []
    numbers: list[int] = []
    broken: list[tuple[int, str, str]] = []
    number = 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        number += 1
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            broken.append(
                (number, line.decode("utf-8", "backslashreplace"),
                 f"line is not UTF-8 text (byte {line[exc.start:exc.start + 1]!r} at offset {exc.start})")
            )
            continue
        try:
            value = json.loads(text)
        except ValueError as exc:
            broken.append((number, text, f"line is not valid JSON ({exc})"))
            continue
        if not isinstance(value, dict):
            broken.append((number, text, f"line is a JSON {type(value).__name__}, not an object"))
            continue
        records.append(value)
        numbers.append(number)
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    frame.columns = [str(c) for c in frame.columns]
    return Chunk(frame=frame, rows=np.asarray(numbers, dtype=np.int64), broken=_broken_frame(broken))


def iter_json_stream(obj: SourceObject, options: dict[str, Any], blocksize: int) -> Iterator[tuple[int, Chunk]]:
    """A (compressed) JSON-lines file front to back as (records before the chunk, chunk)."""
    base = 0
    first = True
    with open_stream(obj, options) as stream:
        rest = b""
        while True:
            piece = stream.read(blocksize)
            data = rest + piece
            if not piece:
                rest = b""
            else:
                cut = data.rfind(b"\n") + 1
                data, rest = data[:cut], data[cut:]
            if data:
                chunk = parse_json_block(data, first=first)
                first = False
                yield base, chunk
                base += chunk.records
            if not piece:
                break


# --- Parquet -------------------------------------------------------------------------------


def plan_parquet(obj: SourceObject, options: dict[str, Any], blocksize: int) -> tuple[list[str], list[ParquetPart]]:
    """Column names and the row-group runs of about ``blocksize`` bytes each task reads."""
    with open_raw(obj, options) as guard:
        parquet = pq.ParquetFile(guard)
        metadata, names = parquet.metadata, [str(name) for name in parquet.schema_arrow.names]
    parts: list[ParquetPart] = []
    group: list[int] = []
    group_bytes = 0
    first_row = 0
    start_row = 0
    for index in range(metadata.num_row_groups):
        row_group = metadata.row_group(index)
        if group and group_bytes + row_group.total_byte_size > blocksize:
            parts.append(_parquet_part(group, start_row, group_bytes, metadata, blocksize))
            group, group_bytes, start_row = [], 0, first_row
        group.append(index)
        group_bytes += row_group.total_byte_size
        first_row += row_group.num_rows
    if group:
        parts.append(_parquet_part(group, start_row, group_bytes, metadata, blocksize))
    return names, parts


def _parquet_part(group: list[int], first_row: int, nbytes: int, metadata: Any, blocksize: int) -> ParquetPart:
    rows = sum(metadata.row_group(i).num_rows for i in group)
    per_row = max(nbytes / max(rows, 1), 1.0)
    return ParquetPart(row_groups=tuple(group), first_row=first_row, batch_rows=max(1024, int(blocksize / per_row)))


def iter_parquet_part(obj: SourceObject, options: dict[str, Any], part: ParquetPart) -> Iterator[tuple[int, Chunk]]:
    """The part's rows in batches (a huge row group is not read whole) as (rows before, chunk)."""
    base = part.first_row
    with open_raw(obj, options) as guard:
        batches = pq.ParquetFile(guard).iter_batches(batch_size=part.batch_rows, row_groups=list(part.row_groups), use_threads=False)
        for batch in batches:
            frame = batch.to_pandas()
            frame.columns = [str(c) for c in frame.columns]
            yield base, Chunk(frame=frame, rows=np.arange(1, len(frame) + 1, dtype=np.int64), broken=empty_broken())
            base += len(frame)


__all__ = [
    "Chunk",
    "CsvHeader",
    "FileRejected",
    "ParquetPart",
    "block_offsets",
    "content_reason",
    "iter_csv_stream",
    "iter_json_stream",
    "iter_parquet_part",
    "open_raw",
    "parse_csv_block",
    "parse_json_block",
    "plan_parquet",
    "read_csv_header",
    "read_text_block",
]
