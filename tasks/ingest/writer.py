"""Validating chunks and writing their halves into a run's staging folder (in the workers).

Each source file gets ``<staging>/<run>/<slug>/`` holding ``curated/`` laid out exactly as
its files will lie under ``curated/<dataset>/``, ``quarantine/`` as under
``quarantine/<run>/``, and ``work/``, which only the run itself reads; so committing is
moving files, and dropping a file's output (it turned out unreadable half-way) is removing
one folder.

When the contract has ``unique`` columns, each curated piece gets a small "keys" file in
``work/`` (never committed): those columns and each row's number within its chunk, in the
piece's row order (the piece's ``row_offset`` turns them into source row numbers: a block's
curated rows are written before the blocks ahead of it are counted). The run counts values over the keys files alone, and the curated pieces stay as
they will be committed (no row numbers in them), so a run without repeated values reads
and rewrites none of them.

Pieces are then finished (:func:`finish_group`): small pieces of one folder are merged, so
a file split by day over many blocks does not leave thousands of tiny files, and a piece
holding a value that occurs more than once in the run is rewritten without those rows,
which move to the quarantine with their row numbers from its keys file.
"""

from __future__ import annotations

import dataclasses
import io
import json
import posixpath
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pandera.pandas as pda
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.contracts import REASON, ROW, SOURCE, validate_frame
from tasks.ingest.readers import RAW, RECORD, Chunk, FileRejected
from tasks.ingest.readers import REASON as BROKEN_REASON
from tasks.ingest.sources import SourceObject

#: Curated files are merged up to this size; pieces at least ``SMALL_FILE_BYTES`` stay as written.
TARGET_FILE_BYTES = 128 * 2**20
SMALL_FILE_BYTES = 16 * 2**20
#: Folder value for rows without a date when curated is partitioned. Not Hive's
#: ``__HIVE_DEFAULT_PARTITION__``: dask.dataframe cannot read a dataset holding that folder.
NO_DATE = "none"


@dataclass(frozen=True)
class FileJob:
    """What a worker needs to stage one source file (plain values: it is pickled to workers)."""

    obj: SourceObject
    slug: str
    staging: str  # <staging root>/<run>/<slug>/
    storage_options: dict[str, Any]
    extra_columns: str = "drop"
    partition_by: str | None = None
    partition_key: str | None = None
    unique: tuple[str, ...] = ()

    @property
    def curated_staging(self) -> str:
        return self.staging + "curated/"

    @property
    def quarantine_staging(self) -> str:
        return self.staging + "quarantine/"

    @property
    def work_staging(self) -> str:
        """What the run itself reads (keys files, records of finished groups): the commit
        moves only ``curated/`` and ``quarantine/``, and drops this with the staging folder."""
        return self.staging + "work/"

    def keys_uri(self, piece_path: str) -> str:
        """The keys file of the curated piece at ``piece_path`` (see the module docstring)."""
        return self.work_staging + "keys/" + piece_path


@dataclass(frozen=True)
class Piece:
    """One staged curated file: its path below the curated root, its rows and bytes.

    ``row_offset``: what to add to the row numbers in its keys file, which are counted from
    the start of the chunk it came from (written before the chunk's place in its file was known)."""

    path: str
    rows: int
    nbytes: int
    row_offset: int = 0


@dataclass
class ChunkResult:
    rows_in: int = 0
    curated: int = 0
    quarantined: int = 0
    pieces: list[Piece] = field(default_factory=list)
    unknown_columns: tuple[str, ...] = ()
    suspect: bool = False


@dataclass
class StagedChunk:
    """A chunk validated and its curated rows written, but not yet placed in its file:
    ``quarantine`` holds its rejected rows numbered from the chunk's start, ``result`` the
    counts and pieces. Small (the quarantined rows only), so it can wait for its offset
    or cross to another worker cheaply."""

    name: str
    result: ChunkResult
    quarantine: pd.DataFrame

    @property
    def records(self) -> int:
        return self.result.rows_in


def stage_chunk(chunk: Chunk, schema: pda.DataFrameSchema, job: FileJob, name: str, offset: int) -> ChunkResult:
    """Validate one chunk and write its curated and quarantined rows to the file's staging folder.

    ``offset`` is the number of the file's records before the chunk; ``name`` tells this
    chunk's files from the file's other chunks'.
    """
    return place_chunk(validate_chunk(chunk, schema, job, name), job, offset)


def validate_chunk(chunk: Chunk, schema: pda.DataFrameSchema, job: FileJob, name: str) -> StagedChunk:
    """Validate one chunk and write its curated rows (which hold no row numbers): the part of
    staging that needs no offset, so a block is read, parsed and validated in one task while
    the offsets of the blocks before it are still being counted (see :func:`place_chunk`)."""
    if chunk.suspect:  # the caller reads the whole file again as a stream
        return StagedChunk(name=name, result=ChunkResult(suspect=True), quarantine=pd.DataFrame())
    raw = chunk.frame
    unknown = tuple(str(c) for c in raw.columns if c not in schema.columns)
    if unknown and job.extra_columns == "fail":
        raise FileRejected(
            f"it has columns the contract does not know: {', '.join(unknown)} (ingest.extra_columns is 'fail')"
        )
    if job.obj.format == "json":  # a record may simply leave a key out: that is a null
        raw = raw.reindex(columns=list(dict.fromkeys([*schema.columns, *map(str, raw.columns)])))
    valid, quarantined = validate_frame(
        raw,
        schema,
        source=job.obj.uri,
        row_numbers=chunk.rows,
        keep_columns=unknown if job.extra_columns == "keep" else (),
        with_row_numbers=bool(job.unique),
    )
    if len(chunk.broken):
        broken = pd.DataFrame(
            {
                RAW: chunk.broken[RAW].astype("str"),
                REASON: chunk.broken[BROKEN_REASON].astype("str"),
                SOURCE: pd.Series([job.obj.uri] * len(chunk.broken), dtype="str"),
                ROW: chunk.broken[RECORD].astype("int64"),
            }
        )
        quarantined = pd.concat([quarantined, broken], ignore_index=True).sort_values(ROW, kind="stable")
    fs, _ = fsspec.core.url_to_fs(job.staging, **job.storage_options)
    pieces = []
    for folder, part in _by_folder(valid, job):
        path = f"{folder}/part-{name}.parquet" if folder == job.slug else f"{folder}/{job.slug}-{name}.parquet"
        pieces.append(_put_piece(fs, job, path, part))
    if len(valid) + len(quarantined) != chunk.records:
        raise AssertionError(
            f"ingest lost rows of {job.obj.uri}: {chunk.records} records, {len(valid)} curated, {len(quarantined)} quarantined"
        )
    result = ChunkResult(
        rows_in=chunk.records, curated=len(valid), quarantined=len(quarantined), pieces=pieces, unknown_columns=unknown
    )
    return StagedChunk(name=name, result=result, quarantine=quarantined.reset_index(drop=True))


def place_chunk(staged: StagedChunk, job: FileJob, offset: int) -> ChunkResult:
    """Number a validated chunk's rows from the file's start (``offset`` records precede it)
    and write its quarantined rows, which carry those numbers."""
    result = staged.result
    if result.suspect:
        return result
    if len(staged.quarantine):
        quarantine = staged.quarantine.assign(**{ROW: staged.quarantine[ROW] + offset})
        fs, _ = fsspec.core.url_to_fs(job.staging, **job.storage_options)
        put_parquet(fs, f"{job.quarantine_staging}{job.slug}/part-{staged.name}.parquet", quarantine)
    pieces = [dataclasses.replace(piece, row_offset=offset) for piece in result.pieces]
    return dataclasses.replace(result, pieces=pieces)


def _put_piece(fs: Any, job: FileJob, path: str, part: pd.DataFrame) -> Piece:
    """Write a curated piece as it will be committed, and its keys file when the run checks
    ``unique`` columns: counting them then reads a few columns of small files only."""
    if job.unique:
        put_parquet(fs, job.keys_uri(path), part[[*job.unique, ROW]])
        part = part.drop(columns=[ROW])
    return Piece(path=path, rows=len(part), nbytes=put_parquet(fs, job.curated_staging + path, part))


def _by_folder(valid: pd.DataFrame, job: FileJob) -> list[tuple[str, pd.DataFrame]]:
    """The curated folder of each row: the file's own, or one per day of ``partition_by``."""
    if not len(valid):
        return []
    if job.partition_by is None:
        return [(job.slug, valid)]
    days = pd.to_datetime(valid[job.partition_by]).dt.strftime("%Y-%m-%d").fillna(NO_DATE)
    return [(f"{job.partition_key}={day}", part) for day, part in valid.groupby(days.to_numpy(), sort=True)]


def put_parquet(fs: Any, uri: str, frame: pd.DataFrame | pa.Table) -> int:
    """Write one Parquet file in a single request; its size in bytes."""
    buffer = io.BytesIO()
    if isinstance(frame, pa.Table):
        pq.write_table(frame, buffer)
    else:
        frame.to_parquet(buffer, index=False)
    data = buffer.getvalue()
    path = fs._strip_protocol(uri)
    if _is_local(fs):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe_file(path, data)
    return len(data)


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return protocol in ("file", "local")


# --- finishing a file's pieces: which to merge or rewrite ----------------------------------


@dataclass(frozen=True)
class Group:
    """Staged pieces of one file and folder that become one curated file (``pieces[0]``'s name)."""

    pieces: tuple[Piece, ...]

    @property
    def path(self) -> str:
        return self.pieces[0].path


def plan_groups(pieces: list[Piece], *, rewrite: Collection[str] = ()) -> list[Group]:
    """Runs of small pieces in one folder, merged up to ``TARGET_FILE_BYTES``, and the pieces
    at the paths ``rewrite`` names (they hold duplicated values); a piece that is big enough
    and holds none is left as written, unread."""
    by_folder: dict[str, list[Piece]] = {}
    for piece in sorted(pieces, key=lambda p: p.path):
        by_folder.setdefault(posixpath.dirname(piece.path), []).append(piece)
    groups: list[Group] = []
    for folder_pieces in by_folder.values():
        current: list[Piece] = []
        size = 0
        for piece in folder_pieces:
            small = piece.nbytes < SMALL_FILE_BYTES
            if current and (not small or size + piece.nbytes > TARGET_FILE_BYTES):
                groups.append(Group(tuple(current)))
                current, size = [], 0
            current.append(piece)
            size += piece.nbytes
            if not small:
                groups.append(Group(tuple(current)))
                current, size = [], 0
        if current:
            groups.append(Group(tuple(current)))
    rewrite = set(rewrite)
    return [g for g in groups if len(g.pieces) > 1 or g.path in rewrite]


# --- values of ``unique`` columns that repeat across the run -----------------------------------


def key_hashes(piece: Piece, job: FileJob, buckets: int) -> list[np.ndarray]:
    """64-bit hashes of the piece's non-null ``unique`` values, from its keys file, cut into
    ``buckets`` by hash: item ``c * buckets + b`` holds column ``c``'s bucket ``b``.

    Equal values hash alike, so only values whose hash repeats can repeat; comparing hashes,
    a bucket per worker, costs a fraction of counting every value (see :func:`count_values`).
    """
    fs, _ = fsspec.core.url_to_fs(job.staging, **job.storage_options)
    keys = _read_keys(fs, job, piece, list(job.unique))
    parts = []
    for name in job.unique:
        hashes = _hashes(keys[name].drop_null())
        bucket = hashes % np.uint64(buckets)
        parts.extend(hashes[bucket == b] for b in range(buckets))
    return parts


def repeated_hashes(*hashes: np.ndarray) -> np.ndarray:
    """The hashes found more than once among one bucket's (of every piece)."""
    merged = np.sort(np.concatenate(hashes)) if hashes else np.array([], dtype=np.uint64)
    return np.unique(merged[1:][merged[1:] == merged[:-1]])


def count_values(piece: Piece, job: FileJob, candidates: Mapping[str, np.ndarray]) -> dict[str, dict[Any, int]]:
    """How many of the piece's rows hold each value whose hash is among a column's
    ``candidates``: exact counts, so two values sharing a hash are told apart."""
    fs, _ = fsspec.core.url_to_fs(job.staging, **job.storage_options)
    keys = _read_keys(fs, job, piece, list(candidates))
    counts: dict[str, dict[Any, int]] = {}
    for name, hashes in candidates.items():
        values = keys[name].drop_null()
        found = values.filter(pa.array(np.isin(_hashes(values), hashes)))
        tally = pc.value_counts(found)
        counts[name] = {value.as_py(): count.as_py() for value, count in zip(tally.field("values"), tally.field("counts"))}
    return counts


def _read_keys(fs: Any, job: FileJob, piece: Piece, columns: list[str]) -> pa.Table:
    with fs.open(fs._strip_protocol(job.keys_uri(piece.path)), "rb") as handle:
        return pq.read_table(handle, columns=columns)


def _hashes(values: pa.ChunkedArray) -> np.ndarray:
    array = values.to_numpy(zero_copy_only=False)
    if array.dtype.kind == "f":
        array = array + 0.0  # -0.0 is 0.0, as value_counts has it
    return pd.util.hash_array(array, categorize=False)


# --- rewriting pieces: merged, without rows holding repeated values ---------------------------


def finish_group(
    group: Group, job: FileJob, duplicates: Mapping[str, Mapping[Any, int]] | None
) -> tuple[Piece | None, int]:
    """Rewrite a group's pieces as one file, one piece in memory at a time, moving rows with
    duplicated ``unique`` values to the quarantine; returns the new piece (None if no row
    is left) and the number of rows moved.

    Dask runs a task again when its worker dies; the group's file overwrites its first piece,
    so the pieces go only once the merged file and a record of its rows are written, and a
    run that finds the record only completes the swap rather than reading a piece twice.
    """
    fs, _ = fsspec.core.url_to_fs(job.staging, **job.storage_options)
    final = fs._strip_protocol(job.curated_staging + group.path)
    merged = final + ".merging"
    record = fs._strip_protocol(job.work_staging + "finished/" + group.path + ".json")
    rows = _read_record(fs, record)
    if rows is None:
        rows = _merge(fs, group, job, duplicates or {}, merged)
        _put_bytes(fs, record, json.dumps({"rows": rows}).encode())
    paths = [fs._strip_protocol(job.curated_staging + piece.path) for piece in group.pieces]
    _remove_quietly(fs, [p for p in paths if p != final or rows == 0])
    if rows == 0:
        _remove_quietly(fs, [merged])
    else:
        try:
            fs.mv(merged, final)
        except FileNotFoundError:  # moved by the run that was killed
            pass
    moved = sum(piece.rows for piece in group.pieces) - rows
    if rows == 0:
        return None, moved
    return Piece(path=group.path, rows=rows, nbytes=int(fs.size(final))), moved


def _merge(fs: Any, group: Group, job: FileJob, duplicates: Mapping[str, Mapping[Any, int]], target: str) -> int:
    """Write the group's rows without duplicated values to ``target`` and those to the
    quarantine; the number of rows written to ``target``."""
    paths = [fs._strip_protocol(job.curated_staging + piece.path) for piece in group.pieces]
    schemas = []
    for path in paths:
        with fs.open(path, "rb") as handle:
            schemas.append(pq.read_schema(handle))
    # pieces of one file differ only where JSON blocks or kept columns do: unify, nulls where absent
    schema = pa.unify_schemas([s.remove_metadata() for s in schemas], promote_options="permissive")
    moved: list[pd.DataFrame] = []
    rows = 0
    with fs.open(target, "wb") as out, pq.ParquetWriter(out, schema) as writer:
        for piece, path in zip(group.pieces, paths):
            with fs.open(path, "rb") as handle:
                table = pq.read_table(handle)
            table, quarantined = _split_duplicates(fs, job, piece, table, duplicates)
            if quarantined is not None:
                moved.append(quarantined)
            if table.num_rows:
                writer.write_table(_conform(table, schema))
                rows += table.num_rows
    if moved:
        frame = pd.concat(moved, ignore_index=True).sort_values(ROW, kind="stable").reset_index(drop=True)
        name = group.path.replace("/", "_").replace("=", "_")  # one per group: groups of several days share base names
        put_parquet(fs, f"{job.quarantine_staging}{job.slug}/unique-{name}", frame)
    return rows


def _read_record(fs: Any, path: str) -> int | None:
    try:
        with fs.open(path, "rb") as handle:
            return int(json.loads(handle.read())["rows"])
    except FileNotFoundError:
        return None


def _put_bytes(fs: Any, path: str, data: bytes) -> None:
    if _is_local(fs):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe_file(path, data)


def _remove_quietly(fs: Any, paths: list[str]) -> None:
    """Remove what is there of ``paths``: a rerun finds some already gone."""
    for path in paths:
        try:
            fs.rm(path)
        except FileNotFoundError:
            pass


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns in its order, nulls for those it lacks."""
    columns = [
        table[field.name].cast(field.type) if field.name in table.column_names else pa.nulls(table.num_rows, field.type)
        for field in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _is_duplicated(values: pa.ChunkedArray, counts: Mapping[Any, int]) -> pa.ChunkedArray:
    return pc.is_in(values, value_set=pa.array(list(counts), type=values.type)).fill_null(False)


def _split_duplicates(
    fs: Any, job: FileJob, piece: Piece, table: pa.Table, duplicates: Mapping[str, Mapping[Any, int]]
) -> tuple[pa.Table, pd.DataFrame | None]:
    """The piece's rows without duplicated values, and those rows as quarantine rows (their
    row numbers from the piece's keys file, which is read only then)."""
    hit = np.zeros(table.num_rows, dtype=bool)
    reasons: dict[int, list[str]] = {}
    for column, counts in duplicates.items():
        if not counts or column not in table.column_names:
            continue
        values = table[column]
        mask = _is_duplicated(values, counts).to_numpy(zero_copy_only=False)
        hit |= mask
        for position in np.flatnonzero(mask):
            value = values[int(position)].as_py()
            reasons.setdefault(int(position), []).append(
                f"{column}: field_uniqueness failed for {str(value)!r} ({counts[value]} rows of this run hold it)"
            )
    if not hit.any():
        return table, None
    out = table.filter(pa.array(hit)).to_pandas()
    frame = pd.DataFrame(
        {str(name): pd.Series([None if _missing(v) else str(v) for v in out[name].tolist()], dtype="str") for name in out.columns}
    )
    frame[REASON] = pd.Series(["; ".join(reasons[int(p)]) for p in np.flatnonzero(hit)], dtype="str")
    frame[SOURCE] = pd.Series([job.obj.uri] * len(frame), dtype="str")
    frame[ROW] = _row_numbers(fs, job, piece, table.num_rows)[hit]
    return table.filter(pa.array(~hit)), frame


def _row_numbers(fs: Any, job: FileJob, piece: Piece, rows: int) -> np.ndarray:
    numbers = _read_keys(fs, job, piece, [ROW])[ROW].to_numpy().astype("int64") + piece.row_offset
    if len(numbers) != rows:
        raise AssertionError(f"the keys file of {piece.path} has {len(numbers)} rows, the piece {rows}")
    return numbers


def _missing(value: Any) -> bool:
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))
