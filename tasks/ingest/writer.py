"""Validating chunks and writing their halves into a run's staging folder (in the workers).

Each source file gets ``<staging>/<run>/<slug>/`` holding ``curated/`` laid out exactly as
its files will lie under ``curated/<dataset>/`` and ``quarantine/`` as under
``quarantine/<run>/``, so committing is moving files, and dropping a file's output
(it turned out unreadable half-way) is removing one folder.

Curated pieces are then finished per source file (:func:`finish_pieces`): rows whose
``unique`` value occurs more than once in the run move to the quarantine, and small pieces
of one folder are merged, so a file split by day over many blocks does not leave
thousands of tiny files.
"""

from __future__ import annotations

import io
import posixpath
from dataclasses import dataclass, field
from typing import Any, Mapping

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


@dataclass(frozen=True)
class Piece:
    """One staged curated file: its path below the curated root, its rows and bytes."""

    path: str
    rows: int
    nbytes: int


@dataclass
class ChunkResult:
    rows_in: int = 0
    curated: int = 0
    quarantined: int = 0
    pieces: list[Piece] = field(default_factory=list)
    unknown_columns: tuple[str, ...] = ()
    suspect: bool = False


def stage_chunk(chunk: Chunk, schema: pda.DataFrameSchema, job: FileJob, name: str, offset: int) -> ChunkResult:
    """Validate one chunk and write its curated and quarantined rows to the file's staging folder.

    ``offset`` is the number of the file's records before the chunk; ``name`` tells this
    chunk's files from the file's other chunks'.
    """
    if chunk.suspect:  # the caller reads the whole file again as a stream
        return ChunkResult(suspect=True)
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
        row_numbers=offset + chunk.rows,
        keep_columns=unknown if job.extra_columns == "keep" else (),
        with_row_numbers=bool(job.unique),
    )
    if len(chunk.broken):
        broken = pd.DataFrame(
            {
                RAW: chunk.broken[RAW].astype("str"),
                REASON: chunk.broken[BROKEN_REASON].astype("str"),
                SOURCE: pd.Series([job.obj.uri] * len(chunk.broken), dtype="str"),
                ROW: (offset + chunk.broken[RECORD]).astype("int64"),
            }
        )
        quarantined = pd.concat([quarantined, broken], ignore_index=True).sort_values(ROW, kind="stable")
    fs, _ = fsspec.core.url_to_fs(job.staging, **job.storage_options)
    pieces = []
    for folder, part in _by_folder(valid, job):
        path = f"{folder}/part-{name}.parquet" if folder == job.slug else f"{folder}/{job.slug}-{name}.parquet"
        pieces.append(Piece(path=path, rows=len(part), nbytes=put_parquet(fs, job.curated_staging + path, part)))
    if len(quarantined):
        put_parquet(fs, f"{job.quarantine_staging}{job.slug}/part-{name}.parquet", quarantined.reset_index(drop=True))
    if len(valid) + len(quarantined) != chunk.records:
        raise AssertionError(
            f"ingest lost rows of {job.obj.uri}: {chunk.records} records, {len(valid)} curated, {len(quarantined)} quarantined"
        )
    return ChunkResult(
        rows_in=chunk.records, curated=len(valid), quarantined=len(quarantined), pieces=pieces, unknown_columns=unknown
    )


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


# --- finishing a file's pieces: uniqueness across the run, merging small ones ---------------


@dataclass(frozen=True)
class Group:
    """Staged pieces of one file and folder that become one curated file (``pieces[0]``'s name)."""

    pieces: tuple[Piece, ...]

    @property
    def path(self) -> str:
        return self.pieces[0].path


def plan_groups(pieces: list[Piece], *, rewrite_all: bool) -> list[Group]:
    """Runs of small pieces in one folder, merged up to ``TARGET_FILE_BYTES``; a piece that is
    big enough stays alone (and is only rewritten when ``rewrite_all``)."""
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
    return [g for g in groups if rewrite_all or len(g.pieces) > 1]


def finish_group(
    group: Group, job: FileJob, duplicates: Mapping[str, Mapping[Any, int]] | None
) -> tuple[Piece | None, int]:
    """Rewrite a group's pieces as one file, one piece in memory at a time, moving rows with
    duplicated ``unique`` values to the quarantine; returns the new piece (None if no row
    is left) and the number of rows moved."""
    fs, _ = fsspec.core.url_to_fs(job.staging, **job.storage_options)
    paths = [fs._strip_protocol(job.curated_staging + piece.path) for piece in group.pieces]
    schemas = []
    for path in paths:
        with fs.open(path, "rb") as handle:
            schemas.append(pq.read_schema(handle))
    # pieces of one file differ only where JSON blocks or kept columns do: unify, nulls where absent
    schema = pa.unify_schemas([s.remove_metadata() for s in schemas], promote_options="permissive")
    if ROW in schema.names:
        schema = schema.remove(schema.get_field_index(ROW))
    target = fs._strip_protocol(job.curated_staging + group.path) + ".merging"
    moved: list[pd.DataFrame] = []
    rows = 0
    with fs.open(target, "wb") as out, pq.ParquetWriter(out, schema) as writer:
        for path in paths:
            with fs.open(path, "rb") as handle:
                table = pq.read_table(handle)
            if ROW in table.column_names:
                table, quarantined = _split_duplicates(table, duplicates or {}, job.obj.uri)
                if quarantined is not None:
                    moved.append(quarantined)
                table = table.drop_columns([ROW])
            if table.num_rows:
                writer.write_table(_conform(table, schema))
                rows += table.num_rows
    rows_moved = sum(len(m) for m in moved)
    if moved:
        frame = pd.concat(moved, ignore_index=True).sort_values(ROW, kind="stable").reset_index(drop=True)
        name = group.path.replace("/", "_").replace("=", "_")  # one per group: groups of several days share base names
        put_parquet(fs, f"{job.quarantine_staging}{job.slug}/unique-{name}", frame)
    final = fs._strip_protocol(job.curated_staging + group.path)
    # Pieces go only once the merged file is in place: a task killed in between and rerun
    # by Dask still finds its inputs and writes the same result again.
    if rows == 0:
        fs.rm(target)
    else:
        fs.mv(target, final)
    leftovers = [p for p in paths if p != final]
    if leftovers:
        fs.rm(leftovers)
    if rows == 0:
        return None, rows_moved
    return Piece(path=group.path, rows=rows, nbytes=int(fs.size(final))), rows_moved


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns in its order, nulls for those it lacks."""
    columns = [
        table[field.name].cast(field.type) if field.name in table.column_names else pa.nulls(table.num_rows, field.type)
        for field in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _split_duplicates(
    table: pa.Table, duplicates: Mapping[str, Mapping[Any, int]], source: str
) -> tuple[pa.Table, pd.DataFrame | None]:
    hit = np.zeros(table.num_rows, dtype=bool)
    reasons: list[list[str]] = [[] for _ in range(table.num_rows)]
    for column, counts in duplicates.items():
        if not counts or column not in table.column_names:
            continue
        values = table[column]
        mask = pc.is_in(values, value_set=pa.array(list(counts), type=values.type)).fill_null(False).to_numpy(zero_copy_only=False)
        if not mask.any():
            continue
        hit |= mask
        for position in np.flatnonzero(mask):
            value = values[int(position)].as_py()
            reasons[position].append(
                f"{column}: field_uniqueness failed for {str(value)!r} ({counts[value]} rows of this run hold it)"
            )
    if not hit.any():
        return table, None
    out = table.filter(pa.array(hit)).to_pandas()
    texts = {
        str(name): pd.Series([None if _missing(v) else str(v) for v in out[name].tolist()], dtype="str")
        for name in out.columns
        if name != ROW
    }
    frame = pd.DataFrame(texts)
    frame[REASON] = pd.Series(["; ".join(reasons[p]) for p in np.flatnonzero(hit)], dtype="str")
    frame[SOURCE] = pd.Series([source] * len(frame), dtype="str")
    frame[ROW] = out[ROW].astype("int64").to_numpy()
    return table.filter(pa.array(~hit)), frame


def _missing(value: Any) -> bool:
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))
