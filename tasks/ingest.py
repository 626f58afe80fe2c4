"""Ingest: raw CSV, JSON-lines and Parquet files to curated Parquet, every row accounted for.

Each raw file is read with Dask (CSV as text, so that turning text into numbers is the
contract's job), each partition is validated as pandas inside the workers, and each
partition task writes its own valid rows to ``<curated>/<file-slug>/`` and its rejected
rows, with reasons, to ``<quarantine>/<file-slug>/``. A file that cannot be parsed at all
is copied whole to ``<quarantine>/rejected/`` instead. Rows in == curated + quarantined.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import operator
import os
import re
import shutil
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import dask
import fsspec
import pandas as pd
import pandera.pandas as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.aws.target import Target
from tasks.config import PipelineConfig
from tasks.contracts import load_contract, validate_frame
from tasks.errors import DataError, UpdraftError
from tasks.layout import Layout

log = logging.getLogger("updraft.ingest")

#: File name endings ingest reads, and the reader each uses. ``.json`` means JSON lines.
FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".csv.gz": "csv",
    ".tsv": "tsv",
    ".tsv.gz": "tsv",
    ".jsonl": "json",
    ".jsonl.gz": "json",
    ".ndjson": "json",
    ".ndjson.gz": "json",
    ".json": "json",
    ".json.gz": "json",
    ".parquet": "parquet",
}
#: Bytes of uncompressed text (or Parquet) per Dask partition.
BLOCKSIZE = 64 * 2**20
REJECTED_FOLDER = "rejected"

# What readers raise for a file that is not what its name says (junk, wrong encoding,
# ragged CSV, broken gzip, not Parquet). Anything else is a bug or an outage and propagates.
_PARSE_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # includes pandas' ParserError/EmptyDataError, UnicodeDecodeError, pyarrow's ArrowInvalid
    EOFError,
    gzip.BadGzipFile,
    zlib.error,
)


@dataclass(frozen=True)
class SourceObject:
    """One raw file to ingest. ``etag`` is the store's version tag (None on local disks)."""

    uri: str
    key: str
    size: int
    etag: str | None = None

    @property
    def format(self) -> str:
        return FORMATS[_suffix(self.key)]

    @property
    def compressed(self) -> bool:
        return self.key.lower().endswith(".gz")


@dataclass
class IngestResult:
    """``files`` counts every source file read, rejected ones included."""

    files: int
    rows_in: int
    rows_curated: int
    rows_quarantined: int
    files_rejected: list[dict[str, str]] = field(default_factory=list)
    curated_uri: str = ""
    quarantine_uri: str = ""


def _suffix(key: str) -> str:
    name = key.rsplit("/", 1)[-1].lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return ""


def list_source_objects(fs: Any, source_uri: str) -> list[SourceObject]:
    """Every readable file under ``source_uri`` (a prefix or one file), sorted by key.

    Other objects are left where they are, named in a warning, so a stray README or
    ``_SUCCESS`` marker does not fail the run.
    """
    path = fs._strip_protocol(source_uri).rstrip("/")
    try:
        infos = {path: fs.info(path)} if fs.isfile(path) else fs.find(path, detail=True)
    except FileNotFoundError:
        infos = {}
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    remote = protocol not in ("file", "local")
    objects: list[SourceObject] = []
    skipped: list[str] = []
    for name, info in sorted(infos.items()):
        if info.get("type", "file") != "file":
            continue
        if not _suffix(name):
            skipped.append(name)
            continue
        etag = info.get("ETag") or info.get("etag")
        objects.append(
            SourceObject(
                uri=f"{protocol}://{name}" if remote else name,
                key=name.split("/", 1)[1] if remote else name,
                size=int(info.get("size") or 0),
                etag=str(etag).strip('"') if etag else None,
            )
        )
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        log.warning(
            "skipping %d files under %s that are not CSV, JSON lines or Parquet: %s", len(skipped), source_uri, shown
        )
    if not objects:
        raise _no_files(source_uri)
    return objects


def _no_files(source_uri: str) -> DataError:
    return DataError(f"no CSV, JSON-lines or Parquet files under {source_uri}; upload data there or fix 'source'")


def file_slug(key: str) -> str:
    """The folder name of one source file's output: readable, stable per key, and never
    starting with '_' or '.' or holding '=' (Parquet readers skip or reinterpret those)."""
    base = key.rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9-]+", "_", base).strip("_-")[:60] or "file"
    return f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def ingest_dataset(
    *,
    objects: list[SourceObject],
    schema: pa.DataFrameSchema,
    curated_uri: str,
    quarantine_uri: str,
    storage_options: dict[str, Any] | None,
    client: Any = None,
    blocksize: int = BLOCKSIZE,
) -> IngestResult:
    """Validate ``objects`` against ``schema`` into curated Parquet and the quarantine.

    Re-ingesting an object replaces its earlier curated output (its folder is keyed by the
    object's key), so a rerun never duplicates rows. ``storage_options`` apply to every URI.
    With a ``distributed.Client`` the files' partitions run on its workers, all files at
    once; without one, file by file on Dask's default scheduler.
    """
    options = dict(storage_options or {})
    out_fs, _ = fsspec.core.url_to_fs(curated_uri, **options)
    rejected: list[dict[str, str]] = []
    planned: list[tuple[SourceObject, str, Any]] = []

    for obj in objects:
        slug = file_slug(obj.key)
        for folder in (_join(curated_uri, slug), _join(quarantine_uri, slug)):
            _remove(out_fs, folder)
        if obj.size == 0:
            rejected.append(_reject(obj, "the file is empty", quarantine_uri, options, out_fs))
            continue
        try:
            columns, parts = _read(obj, options, blocksize)
        except _PARSE_ERRORS as exc:
            rejected.append(_reject(obj, _parse_reason(obj, exc), quarantine_uri, options, out_fs))
            continue
        unknown = [c for c in columns if c not in schema.columns]
        if unknown:
            log.warning("%s: dropping columns the contract does not know: %s", obj.uri, ", ".join(unknown))
        # In JSON lines a key absent from a record is a null, whichever block it falls in.
        implied = list(schema.columns) if obj.format == "json" else None
        plan = _plan_file(parts, implied, obj, slug, schema, curated_uri, quarantine_uri, options)
        planned.append((obj, slug, plan))

    totals = {"rows_in": 0, "rows_curated": 0, "rows_quarantined": 0}
    for obj, slug, outcome in _run(planned, client):
        if isinstance(outcome, BaseException):
            for folder in (_join(curated_uri, slug), _join(quarantine_uri, slug)):
                _remove(out_fs, folder)
            reason = _parse_reason(obj, _whole_file_parse_error(obj, options) or outcome)
            rejected.append(_reject(obj, reason, quarantine_uri, options, out_fs))
            continue
        rows_in, curated, quarantined = outcome
        log.info("%s: %d rows, %d curated, %d quarantined", obj.uri, rows_in, curated, quarantined)
        totals["rows_in"] += rows_in
        totals["rows_curated"] += curated
        totals["rows_quarantined"] += quarantined

    result = IngestResult(
        files=len(objects),
        files_rejected=rejected,
        curated_uri=curated_uri,
        quarantine_uri=quarantine_uri,
        **totals,
    )
    if result.rows_in != result.rows_curated + result.rows_quarantined:
        raise AssertionError(f"ingest lost rows: {result}")
    if result.rows_curated == 0:
        raise DataError(_nothing_valid(result, rejected_folder=_join(quarantine_uri, REJECTED_FOLDER) + "/"))
    return result


def _nothing_valid(result: IngestResult, rejected_folder: str) -> str:
    parts = []
    if result.rows_in:
        parts.append(
            f"all {result.rows_in} rows failed the contract; their reasons are in the _reason column "
            f"under {result.quarantine_uri}"
        )
    if result.files_rejected:
        first = result.files_rejected[0]
        parts.append(
            f"{len(result.files_rejected)} of {result.files} files could not be read and were copied to "
            f"{rejected_folder} ({first['uri']}: {first['reason']})"
        )
    if not parts:
        parts.append(f"the {result.files} files hold no rows")
    return "no valid rows to curate: " + "; ".join(parts) + "; fix the data or the contract"


def _read(obj: SourceObject, options: dict[str, Any], blocksize: int) -> tuple[list[str], list[Any]]:
    """The file's column names (from its start) and one lazy pandas frame per block.

    CSV arrives as text; JSON values as JSON typed them and Parquet with its own types,
    so coercion is always the contract's job. Dask parses a file's start here, so a file
    that is not what its name says usually fails now rather than in the workers.
    """
    import dask.dataframe as dd

    fmt = obj.format
    if fmt in ("csv", "tsv"):
        frame = dd.read_csv(
            obj.uri,
            sep="\t" if fmt == "tsv" else ",",
            dtype=str,
            encoding="utf-8-sig",  # spreadsheet exports start with a byte-order mark
            blocksize=None if obj.compressed else blocksize,
            compression="infer",
            storage_options=options,
        )
    elif fmt == "parquet":
        frame = dd.read_parquet(obj.uri, storage_options=options, blocksize=blocksize)
    else:
        # Not dd.read_json: it insists every block has the first block's keys and dtypes,
        # which would reject a whole file over one block with a sparse key or a stray string.
        from dask.bytes import read_bytes

        sample, (blocks,) = read_bytes(
            obj.uri,
            delimiter=b"\n",
            blocksize=None if obj.compressed else blocksize,
            sample=2**16,
            compression="gzip" if obj.compressed else None,
            **options,
        )
        columns = [str(c) for c in _parse_json_lines(sample).columns]
        return columns, [dask.delayed(_parse_json_lines)(block) for block in blocks]
    return [str(c) for c in frame.columns], list(frame.to_delayed())


def _parse_json_lines(data: bytes) -> pd.DataFrame:
    text = data.decode("utf-8-sig")
    if not text.strip():
        return pd.DataFrame()
    return pd.read_json(io.StringIO(text), lines=True, dtype=False)


def _plan_file(
    parts: list[Any],
    absent_as_null: list[str] | None,
    obj: SourceObject,
    slug: str,
    schema: pa.DataFrameSchema,
    curated_uri: str,
    quarantine_uri: str,
    options: dict[str, Any],
) -> list[Any]:
    """One delayed per block of the file, each validating and writing its own rows.

    A block's first row number is the sum of the earlier blocks' lengths, which Dask does
    not know for text files; chaining the sums keeps a single read per block.
    """
    contract = dask.delayed(schema, name=f"contract-{slug}-{uuid.uuid4().hex}")
    offset: Any = 0
    counts = []
    for index, part in enumerate(parts):
        counts.append(
            dask.delayed(_ingest_partition)(
                part,
                contract,
                offset,
                source=obj.uri,
                absent_as_null=absent_as_null,
                curated_path=_join(curated_uri, slug, f"part-{index:05d}.parquet"),
                quarantine_path=_join(quarantine_uri, slug, f"part-{index:05d}.parquet"),
                storage_options=options,
            )
        )
        offset = dask.delayed(operator.add)(offset, dask.delayed(len)(part))
    return counts


def _ingest_partition(
    raw: pd.DataFrame,
    schema: pa.DataFrameSchema,
    offset: int,
    *,
    source: str,
    absent_as_null: list[str] | None,
    curated_path: str,
    quarantine_path: str,
    storage_options: dict[str, Any],
) -> tuple[int, int, int]:
    """Runs in a worker: validate one partition and write both halves; return the counts.

    ``absent_as_null`` names columns that count as present (as nulls) even when the block
    lacks them: JSON lines, where a record may simply omit a key.
    """
    if absent_as_null is not None:
        raw = raw.reindex(columns=list(dict.fromkeys([*absent_as_null, *map(str, raw.columns)])))
    valid, quarantined = validate_frame(raw, schema, source=source, first_row=offset + 1)
    if len(valid):
        _write_parquet(valid, curated_path, storage_options)
    if len(quarantined):
        _write_parquet(quarantined, quarantine_path, storage_options)
    return len(raw), len(valid), len(quarantined)


def _sum_counts(counts: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    rows_in, curated, quarantined = (sum(c[i] for c in counts) for i in range(3))
    return rows_in, curated, quarantined


def _write_parquet(frame: pd.DataFrame, uri: str, storage_options: dict[str, Any]) -> None:
    fs, path = fsspec.core.url_to_fs(uri, **storage_options)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as handle:
        frame.to_parquet(handle, index=False)


def _run(planned: list[tuple[SourceObject, str, Any]], client: Any) -> list[tuple[SourceObject, str, Any]]:
    """Compute each file's partitions; a file whose parsing fails yields its exception.

    Only once every task of a failed file has stopped may its partial output be removed,
    so this waits for all of them rather than returning at the first error.
    """
    outcomes: list[tuple[SourceObject, str, Any]] = []
    if client is not None:
        from distributed import wait

        submitted = [client.compute(parts) for _, _, parts in planned]
        for (obj, slug, _), futures in zip(planned, submitted):
            wait(futures)
            errors = [f.exception() for f in futures if f.status == "error"]
            if errors:
                # the first failure in file order; later partitions fail only through it
                if not isinstance(errors[0], _PARSE_ERRORS):
                    raise errors[0]
                outcomes.append((obj, slug, errors[0]))
            else:
                outcomes.append((obj, slug, _sum_counts([f.result() for f in futures])))
        return outcomes
    for obj, slug, parts in planned:
        # Dask's threaded scheduler returns at the first error while running tasks go on;
        # leaving the pool's block waits for them.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            try:
                outcome: Any = _sum_counts(list(dask.compute(*parts, scheduler="threads", pool=pool)))
            except _PARSE_ERRORS as exc:
                outcome = exc
        outcomes.append((obj, slug, outcome))
    return outcomes


def _whole_file_parse_error(obj: SourceObject, options: dict[str, Any]) -> BaseException | None:
    """The error pandas gives reading the whole text file, which counts lines from the top.

    A partition's parser counts lines from the start of its block, so its message would
    send the user to the wrong line; this reads the file once more, only when it failed.
    """
    if obj.format not in ("csv", "tsv"):
        return None
    try:
        with fsspec.open(obj.uri, "rb", compression="infer", **options) as handle:
            sep = "\t" if obj.format == "tsv" else ","
            for _ in pd.read_csv(handle, sep=sep, dtype=str, encoding="utf-8-sig", chunksize=100_000):
                pass
    except _PARSE_ERRORS as exc:
        return exc
    return None


def _parse_reason(obj: SourceObject, exc: BaseException) -> str:
    if isinstance(exc, UnicodeDecodeError):
        detail = f"it is not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r} at offset {exc.start})"
    else:
        message = str(exc)
        # Dask wraps reader errors as "An error occurred ... Original Message: <the reader's>".
        detail = message.split("Original Message:", 1)[-1].strip() or type(exc).__name__
        detail = " ".join(detail.split())
    kind = {"csv": "CSV", "tsv": "TSV", "json": "JSON lines", "parquet": "Parquet"}[obj.format]
    return f"cannot be read as {kind}: {detail}"


def _reject(
    obj: SourceObject, reason: str, quarantine_uri: str, options: dict[str, Any], out_fs: Any
) -> dict[str, str]:
    """Copy an unreadable file whole into the quarantine, so nothing is lost, and say why."""
    name = obj.key.rstrip("/").rsplit("/", 1)[-1]
    copy_uri = _join(quarantine_uri, REJECTED_FOLDER, file_slug(obj.key), name)
    copy_path = out_fs._strip_protocol(copy_uri)
    out_fs.makedirs(copy_path.rsplit("/", 1)[0], exist_ok=True)
    with fsspec.open(obj.uri, "rb", **options) as src, out_fs.open(copy_path, "wb") as dst:
        shutil.copyfileobj(src, dst, length=8 * 2**20)
    log.warning("%s: rejected, %s; copied to %s", obj.uri, reason, copy_uri)
    return {"uri": obj.uri, "reason": reason, "copy": copy_uri}


def _remove(fs: Any, uri: str) -> None:
    path = fs._strip_protocol(uri)
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _without_pipeline_outputs(objects: list[SourceObject], layout: Layout, source_uri: str) -> list[SourceObject]:
    """Leave out what updraft itself wrote, should the source be the bucket's root: ingesting
    curated Parquet or the quarantine again would grow the dataset with every run."""
    written = (layout.curated(), layout.quarantine("-"), layout.features("-"), layout.model("-"), layout.report("-"))
    prefixes = tuple(sorted({uri.split("/", 4)[3] + "/" for uri in written}))  # s3://b/curated/... -> curated/
    kept = [obj for obj in objects if not obj.key.startswith(prefixes)]
    if len(kept) < len(objects):
        log.warning(
            "leaving out %d files under %s that updraft wrote itself (%s)",
            len(objects) - len(kept), source_uri, ", ".join(prefixes),
        )
    if not kept:
        raise _no_files(source_uri)
    return kept


def _retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry outages (S3 hiccups), not problems only the user can fix."""
    return not isinstance(getattr(state, "data", None), UpdraftError)


@task(
    name="ingest",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=_retry_unless_user_error,
)
def ingest_stage(config: PipelineConfig, target: Target, run_id: str, client: Any = None) -> IngestResult:
    """Prefect task: the source's files into ``curated/<dataset>/`` and ``quarantine/<run_id>/``.

    Safe to retry: each file's output folders are replaced, never appended to.
    """
    target.check_bucket(config.bucket)
    fs = target.filesystem()
    schema = load_contract(config.contract, fs)
    layout = Layout(config.bucket, config.name)
    objects = _without_pipeline_outputs(list_source_objects(fs, config.source_uri), layout, config.source_uri)
    log.info("ingesting %d files from %s", len(objects), config.source_uri)
    return ingest_dataset(
        objects=objects,
        schema=schema,
        curated_uri=layout.curated(),
        quarantine_uri=layout.quarantine(run_id),
        storage_options=target.storage_options(),
        client=client,
    )
