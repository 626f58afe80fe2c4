"""Ingest: raw CSV, TSV, JSON-lines and Parquet files to curated Parquet, every row accounted for.

A run takes only the objects the manifest does not name at their current ETag
(:mod:`.manifest`), reads each in bounded chunks (:mod:`.readers`), validates every chunk
against the contract in the workers and writes both halves to the run's staging folder
(:mod:`.writer`), checks ``unique`` columns across the whole run, merges small files,
and only then moves everything into ``curated/`` and ``quarantine/<run>/`` and writes the
manifest (:mod:`.commit`). A file that cannot be read at all is copied whole to
``quarantine/<run>/rejected/`` with its reason. Rows in == curated + quarantined, always.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import operator
import os
import posixpath
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import dask
import fsspec
import numpy as np
import pandera.pandas as pa

from tasks.config import IngestConfig
from tasks.contracts import column_kinds, without_uniqueness
from tasks.errors import ContractError, DataError
from tasks.ingest.commit import Journal, commit_run, recover
from tasks.ingest.manifest import (
    INGESTED,
    REJECTED,
    Manifest,
    ManifestEntry,
    ObjectDiff,
    diff_objects,
    load_manifest,
    now,
    write_manifest,
)
from tasks.ingest.readers import (
    CsvHeader,
    FileRejected,
    ParquetPart,
    block_offsets,
    iter_csv_stream,
    iter_json_stream,
    iter_parquet_part,
    parse_csv_block,
    parse_json_block,
    plan_parquet,
    read_csv_header,
    read_text_block,
    reading,
)
from tasks.ingest.sources import (
    FORMATS,
    SourceObject,
    file_slug,
    list_source_objects,
    no_files,
)
from tasks.ingest.writer import (
    ChunkResult,
    FileJob,
    Piece,
    StagedChunk,
    count_values,
    finish_group,
    key_hashes,
    place_chunk,
    plan_groups,
    repeated_hashes,
    stage_chunk,
    validate_chunk,
)
from tasks.layout import Layout
from tasks.runs import new_run_id

log = logging.getLogger("updraft.ingest")

#: Bytes of uncompressed text (or Parquet) per chunk.
BLOCKSIZE = 64 * 2**20
REJECTED_FOLDER = "rejected"

__all__ = [
    "BLOCKSIZE",
    "FORMATS",
    "IngestResult",
    "Manifest",
    "ManifestEntry",
    "ObjectDiff",
    "SourceObject",
    "diff_objects",
    "file_slug",
    "ingest_dataset",
    "ingest_stage",
    "list_source_objects",
    "load_manifest",
    "require_curated",
    "write_manifest",
]


@dataclass
class IngestResult:
    """``files`` counts the source files read by this run, rejected ones included;
    ``files_skipped`` those the manifest already held at their current version."""

    files: int
    rows_in: int
    rows_curated: int
    rows_quarantined: int
    files_skipped: int = 0
    files_rejected: list[dict[str, str]] = field(default_factory=list)
    curated_uri: str = ""
    quarantine_uri: str = ""
    manifest_uri: str = ""


@dataclass
class _FileOutcome:
    obj: SourceObject
    job: FileJob
    rows_in: int = 0
    curated: int = 0
    quarantined: int = 0
    pieces: list[Piece] = field(default_factory=list)
    unknown: set[str] = field(default_factory=set)
    rejected: str | None = None
    copy: str | None = None

    def add(self, result: ChunkResult) -> None:
        self.rows_in += result.rows_in
        self.curated += result.curated
        self.quarantined += result.quarantined
        self.pieces.extend(result.pieces)
        self.unknown.update(result.unknown_columns)


def ingest_dataset(
    *,
    objects: list[SourceObject],
    schema: pa.DataFrameSchema,
    curated_uri: str,
    quarantine_uri: str,
    storage_options: dict[str, Any] | None,
    client: Any = None,
    blocksize: int = BLOCKSIZE,
    manifest_uri: str | None = None,
    staging_uri: str | None = None,
    run_id: str | None = None,
    settings: IngestConfig | None = None,
) -> IngestResult:
    """Ingest the ``objects`` the manifest lacks (or holds at another ETag) into curated
    Parquet and the quarantine, then record them in the manifest.

    ``manifest_uri`` and ``staging_uri`` default to ``<curated>.manifest.json`` and
    ``<curated>.staging/`` beside the curated folder (the stage passes ``Layout``'s).
    ``storage_options`` apply to every URI. With a ``distributed.Client`` every file's
    chunks run on its workers at once; without one, file by file on Dask's threads.
    Raises :class:`DataError` after writing the quarantine (and curating nothing) when more
    than ``settings.max_quarantine_fraction`` of the rows fail, or when no row is valid.
    """
    settings = settings or IngestConfig()
    options = dict(storage_options or {})
    curated_uri = curated_uri.rstrip("/") + "/"
    quarantine_uri = quarantine_uri.rstrip("/") + "/"
    manifest_uri = manifest_uri or curated_uri.rstrip("/") + ".manifest.json"
    staging_uri = (staging_uri or curated_uri.rstrip("/") + ".staging").rstrip("/") + "/"
    run_id = run_id or new_run_id()
    checked, unique = without_uniqueness(schema)
    partition_key = _partition_key(schema, settings.partition_by)
    fs = _filesystem(curated_uri, options)

    carried = [j.result for j in recover(fs, staging_uri, run_id) if j.run_id == run_id and j.manifest_uri and j.result]
    manifest = load_manifest(fs, manifest_uri)
    fingerprint = _fingerprint(schema, settings)
    diff = diff_objects(manifest, objects)
    todo, skipped = diff.to_ingest, diff.unchanged
    if manifest.entries and manifest.fingerprint != fingerprint and skipped:
        log.warning(
            "the contract or the ingest settings changed since the manifest %s was written: "
            "ingesting all %d objects again so curated data follows one contract",
            manifest_uri, len(objects),
        )
        todo, skipped = sorted(objects, key=lambda o: o.key), []
    log.info(
        "%d objects: %d new, %d changed, %d already ingested", len(objects), len(diff.new), len(diff.changed), len(skipped)
    )
    base = IngestResult(
        files=0, rows_in=0, rows_curated=0, rows_quarantined=0, files_skipped=len(skipped),
        curated_uri=curated_uri, quarantine_uri=quarantine_uri, manifest_uri=manifest_uri,
    )
    _carry(base, carried)
    if not todo:
        log.info("nothing new to ingest: the manifest %s holds all %d objects at their current version", manifest_uri, len(skipped))
        return base

    run_staging = f"{staging_uri}{run_id}/"
    jobs = {
        obj.key: FileJob(
            obj=obj,
            slug=file_slug(obj.key),
            staging=f"{run_staging}{file_slug(obj.key)}/",
            storage_options=options,
            extra_columns=settings.extra_columns,
            partition_by=settings.partition_by,
            partition_key=partition_key,
            unique=unique,
        )
        for obj in todo
    }
    outcomes = _stage_files(list(jobs.values()), checked, client, blocksize)
    for outcome in outcomes:
        if outcome.rejected is None and outcome.rows_in == 0:
            outcome.rejected = _no_rows_reason(outcome.obj)
        if outcome.rejected is not None:
            _remove(fs, outcome.job.staging)
            outcome.rows_in = outcome.curated = outcome.quarantined = 0
            outcome.pieces = []
            outcome.copy = _keep_copy(outcome, fs, quarantine_uri)
            log.warning("%s: rejected, %s; copied to %s", outcome.obj.uri, outcome.rejected, outcome.copy)
        elif outcome.unknown:
            verb = "keeping as text" if settings.extra_columns == "keep" else "dropping"
            log.warning("%s: %s columns the contract does not know: %s", outcome.obj.uri, verb, ", ".join(sorted(outcome.unknown)))
    _finish(outcomes, unique, client)

    result = dataclasses.replace(
        base,
        files=base.files + len(todo),
        rows_in=base.rows_in + sum(o.rows_in for o in outcomes),
        rows_curated=base.rows_curated + sum(o.curated for o in outcomes),
        rows_quarantined=base.rows_quarantined + sum(o.quarantined for o in outcomes),
        files_rejected=base.files_rejected
        + [{"uri": o.obj.uri, "reason": o.rejected, "copy": o.copy} for o in outcomes if o.rejected is not None],
    )
    for outcome in outcomes:
        if outcome.rejected is None:
            log.info("%s: %d rows, %d curated, %d quarantined", outcome.obj.uri, outcome.rows_in, outcome.curated, outcome.quarantined)
    if result.rows_in != result.rows_curated + result.rows_quarantined:
        raise AssertionError(f"ingest lost rows: {result}")

    moves = _moves(fs, run_staging, curated_uri, quarantine_uri)
    replaced = {obj.key for obj in todo}
    earlier_curated = sum(e.rows_curated for k, e in manifest.entries.items() if k not in replaced and manifest.fingerprint == fingerprint)
    failure = _failure(result, settings, earlier_curated)
    if failure is not None:
        # keep the quarantine (nothing is lost) but curate nothing and record nothing
        commit_run(fs, run_staging, Journal(run_id=run_id, moves=[m for m in moves if not m[1].startswith(curated_uri)]))
        raise DataError(failure)

    destinations = {fs._strip_protocol(dst) for _, dst in moves}
    stamp = now()
    entries = [_entry(o, run_id, stamp, curated_uri, quarantine_uri) for o in outcomes]
    remove = sorted(_earlier_outputs(fs, curated_uri, manifest, [o.job for o in outcomes]) - destinations)
    commit_run(
        fs,
        run_staging,
        Journal(
            run_id=run_id, moves=moves, remove=remove, entries=entries, fingerprint=fingerprint,
            manifest_uri=manifest_uri, result=dataclasses.asdict(result),
        ),
    )
    return result


# --- reading and staging every file ---------------------------------------------------------


def _stage_files(jobs: list[FileJob], schema: pa.DataFrameSchema, client: Any, blocksize: int) -> list[_FileOutcome]:
    """Run every file's chunks; a CSV file whose blocks were cut inside quoted fields is read
    again as a stream. Errors other than a file's own content propagate (after every task
    has stopped, so nothing writes into staging afterwards)."""
    contract = dask.delayed(schema, name=f"contract-{jobs[0].staging}")
    outcomes = {job.obj.key: _FileOutcome(obj=job.obj, job=job) for job in jobs}
    planned: dict[str, list[Any]] = {}

    def plan(job: FileJob) -> list[Any] | FileRejected:
        try:
            return _plan_file(job, contract, blocksize, stream=False)
        except FileRejected as exc:
            return exc

    with ThreadPoolExecutor(max_workers=8) as pool:  # Parquet footers are read here: overlap the requests
        for job, tasks in zip(jobs, pool.map(plan, jobs)):
            if isinstance(tasks, FileRejected):
                outcomes[job.obj.key].rejected = tasks.reason
            else:
                planned[job.obj.key] = tasks
    results = _compute(planned, client)
    again: dict[str, list[Any]] = {}
    for key, value in results.items():
        outcome = outcomes[key]
        if isinstance(value, FileRejected):
            outcome.rejected = value.reason
        elif any(r.suspect for r in value):
            log.info("%s: a quoted field holds a line break; reading the file front to back", outcome.obj.uri)
            _remove(_filesystem(outcome.job.staging, outcome.job.storage_options), outcome.job.staging)
            try:
                again[key] = _plan_file(outcome.job, contract, blocksize, stream=True)
            except FileRejected as exc:
                outcome.rejected = exc.reason
        else:
            for result in value:
                outcome.add(result)
    for key, value in _compute(again, client).items():
        if isinstance(value, FileRejected):
            outcomes[key].rejected = value.reason
        else:
            for result in value:
                outcomes[key].add(result)
    return [outcomes[job.obj.key] for job in jobs]


def _plan_file(job: FileJob, contract: Any, blocksize: int, *, stream: bool) -> list[Any]:
    """Delayed tasks for one file, each returning a list of :class:`ChunkResult`, or of the
    :class:`FileRejected` that stopped it (returned, not raised: a rejection is an answer,
    not a worker failure to log)."""
    obj = job.obj
    if obj.size == 0:
        raise FileRejected("the file is empty")
    if obj.format == "parquet":
        _, parts = plan_parquet(obj, job.storage_options, blocksize)
        return [dask.delayed(_stage_parquet_part)(job, contract, part, index) for index, part in enumerate(parts)]
    header: CsvHeader | None = None
    if obj.format in ("csv", "tsv"):
        # Read here (one small request), not as a task: block tasks then depend on nothing
        # but the contract, so the scheduler's queuing of root tasks runs them as workers free up.
        header = read_csv_header(obj, job.storage_options)
        if stream or obj.compressed:
            return [dask.delayed(_stage_csv_stream)(job, contract, header, blocksize)]
    elif stream or obj.compressed:
        return [dask.delayed(_stage_json_stream)(job, contract, blocksize)]
    # Each block is read, parsed, validated and its curated rows written by one task, so a
    # parsed block never waits in memory nor crosses to another worker. Only its quarantined
    # rows need its first record number, the sum of the earlier blocks' record counts, known
    # once those are parsed: a second, small task writes them (chaining the sums keeps a
    # single read per block).
    tasks = []
    offset: Any = 0
    for index, start in enumerate(block_offsets(obj.size, blocksize)):
        staged = dask.delayed(_validate_block)(job, contract, header, start, blocksize, f"{index:05d}")
        tasks.append(dask.delayed(_place_block)(staged, job, offset))
        offset = dask.delayed(operator.add)(offset, dask.delayed(_records)(staged))
    return tasks


def _records(staged: StagedChunk | FileRejected) -> int:
    return 0 if isinstance(staged, FileRejected) else staged.records


def _validate_block(
    job: FileJob, schema: pa.DataFrameSchema, header: CsvHeader | None, start: int, length: int, name: str
) -> StagedChunk | FileRejected:
    """One block of a CSV (``header`` given) or JSON-lines file: read, parsed, validated,
    its curated rows written (see :func:`tasks.ingest.writer.validate_chunk`)."""
    try:
        data = read_text_block(job.obj, job.storage_options, start, length)
        with reading(job.obj, None):
            if header is None:
                chunk = parse_json_block(data, first=start == 0)
            else:
                chunk = parse_csv_block(data, header, holds_header=start == 0)
        del data
        return validate_chunk(chunk, schema, job, name)
    except FileRejected as exc:
        return exc


Staged = list[ChunkResult | FileRejected]


def _place_block(staged: StagedChunk | FileRejected, job: FileJob, offset: int) -> Staged:
    if isinstance(staged, FileRejected):
        return [staged]
    return [place_chunk(staged, job, offset)]


def _stage_csv_stream(job: FileJob, schema: pa.DataFrameSchema, header: CsvHeader | FileRejected, blocksize: int) -> Staged:
    if isinstance(header, FileRejected):
        return [header]
    try:
        chunks = iter_csv_stream(job.obj, job.storage_options, header, blocksize)
        return [stage_chunk(chunk, schema, job, f"{index:05d}", base) for index, (base, chunk) in enumerate(chunks)]
    except FileRejected as exc:
        return [exc]


def _stage_json_stream(job: FileJob, schema: pa.DataFrameSchema, blocksize: int) -> Staged:
    try:
        chunks = iter_json_stream(job.obj, job.storage_options, blocksize)
        return [stage_chunk(chunk, schema, job, f"{index:05d}", base) for index, (base, chunk) in enumerate(chunks)]
    except FileRejected as exc:
        return [exc]


def _stage_parquet_part(job: FileJob, schema: pa.DataFrameSchema, part: ParquetPart, index: int) -> Staged:
    try:
        chunks = iter_parquet_part(job.obj, job.storage_options, part)
        return [
            stage_chunk(chunk, schema, job, f"{index:05d}-{batch:04d}", base) for batch, (base, chunk) in enumerate(chunks)
        ]
    except FileRejected as exc:
        return [exc]


def _compute(planned: dict[str, list[Any]], client: Any) -> dict[str, list[ChunkResult] | FileRejected]:
    """Each file's chunk results (flattened), or the :class:`FileRejected` that stopped it.

    Any other error propagates, but only once every task has stopped, so that nothing
    writes into staging after the caller (or a Prefect retry) cleans it up.
    """
    if not planned:
        return {}
    keys = list(planned)
    if client is not None:
        from distributed import wait

        futures = [client.compute(planned[key]) for key in keys]
        wait([f for file_futures in futures for f in file_futures])
        failed = [f.exception() for file_futures in futures for f in file_futures if f.status == "error"]
        if failed:
            raise failed[0]
        staged = [[item for f in file_futures for item in f.result()] for file_futures in futures]
    else:
        staged = []
        for key in keys:
            # Dask's threaded scheduler returns at the first error while running tasks go on;
            # leaving the pool's block waits for them.
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                results = dask.compute(*planned[key], scheduler="threads", pool=pool)
            staged.append([item for items in results for item in items])
    outcomes: dict[str, list[ChunkResult] | FileRejected] = {}
    for key, items in zip(keys, staged):
        rejected = [item for item in items if isinstance(item, FileRejected)]
        outcomes[key] = rejected[0] if rejected else [item for item in items if isinstance(item, ChunkResult)]
    return outcomes


def _no_rows_reason(obj: SourceObject) -> str:
    if obj.format in ("csv", "tsv"):
        return "the file has a header line but no data rows"
    if obj.format == "json":
        return "the file holds no JSON records (only blank lines)"
    return "the file holds no rows"


def _keep_copy(outcome: _FileOutcome, fs: Any, quarantine_uri: str) -> str:
    """Copy an unreadable file whole into the run's staged quarantine; returns where it will lie."""
    obj, job = outcome.obj, outcome.job
    name = obj.key.rstrip("/").rsplit("/", 1)[-1]
    relative = f"{REJECTED_FOLDER}/{job.slug}/{name}"
    target = fs._strip_protocol(job.quarantine_staging + relative)
    source_fs, source_path = fsspec.core.url_to_fs(obj.uri, **job.storage_options)
    if _is_local(fs):
        fs.makedirs(posixpath.dirname(target), exist_ok=True)
    if type(source_fs) is type(fs):
        fs.copy(source_path, target)  # server-side on S3
    else:
        with source_fs.open(source_path, "rb") as src, fs.open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, length=8 * 2**20)
    return quarantine_uri + relative


# --- after staging: uniqueness across the run, file sizes, commit ------------------------------


def _finish(outcomes: list[_FileOutcome], unique: tuple[str, ...], client: Any) -> None:
    """Quarantine rows whose ``unique`` values repeat anywhere in the run; merge small pieces.

    Only pieces that hold a repeated value are read and rewritten (besides small ones merged):
    repeats are rare, and rewriting every piece to drop a few rows was most of the cost.
    """
    live = [o for o in outcomes if o.rejected is None and o.pieces]
    if not live:
        return
    duplicates, holding = _duplicates(live, unique, client) if unique else ({}, set())
    shared = dask.delayed(duplicates, traverse=False)  # one graph node, shipped to each worker once
    work = []
    for outcome in live:
        for group in plan_groups(outcome.pieces, rewrite=holding):
            work.append((outcome, group, dask.delayed(finish_group)(group, outcome.job, shared)))
    if not work:
        return
    for (outcome, group, _), (piece, moved) in zip(work, _run([w[2] for w in work], client)):
        merged = {p.path for p in group.pieces}
        outcome.pieces = [p for p in outcome.pieces if p.path not in merged] + ([piece] if piece else [])
        outcome.curated -= moved
        outcome.quarantined += moved


#: About the most hashes (8 bytes each) one task compares; there are at least as many such tasks as threads.
_HASHES_PER_BUCKET = 4_000_000


def _duplicates(
    outcomes: list[_FileOutcome], unique: tuple[str, ...], client: Any
) -> tuple[dict[str, dict[Any, int]], set[str]]:
    """Values of each ``unique`` column held by more than one valid row of this run (nulls
    aside) with their counts, and the paths of the pieces holding one (below the curated
    root, so unique in a run).

    Reads only the pieces' keys files. Their values' hashes are compared first, in buckets
    spread over the workers; values are counted (exactly) only where a hash repeats, which
    in a run without repeats is nowhere.
    """
    pieces = [(o.job, p) for o in outcomes for p in o.pieces]
    candidates = _repeated_hashes(pieces, unique, client)
    if not candidates:
        return {name: {} for name in unique}, set()
    shared = dask.delayed(candidates, traverse=False)
    counted = _run([dask.delayed(count_values)(piece, job, shared) for job, piece in pieces], client)
    totals: dict[str, Counter[Any]] = {name: Counter() for name in unique}
    for counts in counted:
        for name, tally in counts.items():
            totals[name].update(tally)
    found = {name: {value: n for value, n in totals[name].items() if n > 1} for name in unique}
    for name, repeats in found.items():
        if repeats:
            log.warning("%s: %d values occur in more than one row of this run; those rows go to the quarantine", name, len(repeats))
    holding = {
        piece.path
        for (_, piece), counts in zip(pieces, counted)
        if any(value in found[name] for name, tally in counts.items() for value in tally)
    }
    return found, holding


def _repeated_hashes(pieces: list[tuple[FileJob, Piece]], unique: tuple[str, ...], client: Any) -> dict[str, np.ndarray]:
    """Per ``unique`` column, the hashes of its values that occur more than once (columns with none left out)."""
    buckets = max(_threads(client), -(-sum(p.rows for _, p in pieces) // _HASHES_PER_BUCKET))
    parts = [dask.delayed(key_hashes, nout=len(unique) * buckets)(piece, job, buckets) for job, piece in pieces]
    repeated = _run([dask.delayed(repeated_hashes)(*[part[i] for part in parts]) for i in range(len(unique) * buckets)], client)
    found = {name: np.concatenate(repeated[i * buckets : (i + 1) * buckets]) for i, name in enumerate(unique)}
    return {name: hashes for name, hashes in found.items() if len(hashes)}


def _run(tasks: list[Any], client: Any) -> list[Any]:
    """Compute delayed objects on the cluster, or on Dask's threads without one."""
    if client is not None:
        return list(client.gather(client.compute(tasks)))
    return list(dask.compute(*tasks))


def _threads(client: Any) -> int:
    if client is not None:
        return max(1, sum(client.nthreads().values()))
    return os.cpu_count() or 1


def _failure(result: IngestResult, settings: IngestConfig, earlier_curated: int) -> str | None:
    if result.rows_in and result.rows_quarantined / result.rows_in > settings.max_quarantine_fraction:
        return (
            f"{result.rows_quarantined} of {result.rows_in} rows ({result.rows_quarantined / result.rows_in:.1%}) failed "
            f"the contract, more than ingest.max_quarantine_fraction ({settings.max_quarantine_fraction:.1%}); nothing was "
            f"curated. The rows and their reasons are in {result.quarantine_uri}: fix the data or the contract, or raise "
            "ingest.max_quarantine_fraction in the config"
        )
    if result.rows_curated + earlier_curated == 0:
        return _nothing_valid(result)
    return None


def _nothing_valid(result: IngestResult) -> str:
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
            f"{result.quarantine_uri}{REJECTED_FOLDER}/ ({first['uri']}: {first['reason']})"
        )
    if not parts:
        parts.append(f"the {result.files} files hold no rows")
    return "no valid rows to curate: " + "; ".join(parts) + "; fix the data or the contract"


def _moves(fs: Any, run_staging: str, curated_uri: str, quarantine_uri: str) -> list[tuple[str, str]]:
    """Every staged file and where it goes: ``<slug>/curated/x`` to curated, ``<slug>/quarantine/x``
    to the quarantine. Anything else (``<slug>/work/``: keys files, records) is the run's own
    and goes with the staging folder."""
    root = fs._strip_protocol(run_staging).rstrip("/")
    try:
        staged = sorted(fs.find(root))
    except FileNotFoundError:
        return []
    destinations = {"curated": curated_uri, "quarantine": quarantine_uri}
    moves = []
    for path in staged:
        parts = path[len(root) + 1 :].split("/", 2)
        if len(parts) == 3 and parts[1] in destinations:
            moves.append((fs.unstrip_protocol(path), destinations[parts[1]] + parts[2]))
    return moves


def _earlier_outputs(fs: Any, curated_uri: str, manifest: Manifest, jobs: list[FileJob]) -> set[str]:
    """Curated files (paths) of earlier versions of these objects: named in the manifest, or
    found by name (the file's slug), which also catches outputs written before there was a
    manifest or by a run whose commit was lost."""
    found = {fs._strip_protocol(uri) for job in jobs for uri in getattr(manifest.entries.get(job.obj.key), "outputs", ())}
    root = fs._strip_protocol(curated_uri).rstrip("/")
    try:
        existing = fs.find(root)
    except FileNotFoundError:
        existing = []
    slugs = {job.slug for job in jobs}
    for path in existing:
        relative = path[len(root) + 1 :]
        name = relative.rsplit("/", 1)[-1]
        if relative.split("/", 1)[0] in slugs or name.rsplit("-", 1)[0] in slugs:
            found.add(path)
    return found


def _entry(outcome: _FileOutcome, run_id: str, stamp: str, curated_uri: str, quarantine_uri: str) -> ManifestEntry:
    obj = outcome.obj
    return ManifestEntry(
        key=obj.key,
        uri=obj.uri,
        etag=obj.etag,
        size=obj.size,
        status=REJECTED if outcome.rejected is not None else INGESTED,
        rows_in=outcome.rows_in,
        rows_curated=outcome.curated,
        rows_quarantined=outcome.quarantined,
        run_id=run_id,
        ingested_at=stamp,
        outputs=tuple(sorted(curated_uri + piece.path for piece in outcome.pieces)),
        quarantine=f"{quarantine_uri}{outcome.job.slug}/" if outcome.quarantined else None,
        reason=outcome.rejected,
        copy=outcome.copy,
    )


def _carry(result: IngestResult, earlier: list[dict[str, Any]]) -> None:
    """Count what an interrupted attempt of this same run committed (a Prefect retry)."""
    for done in earlier:
        result.files += done.get("files", 0)
        result.files_skipped = max(0, result.files_skipped - done.get("files", 0))
        result.rows_in += done.get("rows_in", 0)
        result.rows_curated += done.get("rows_curated", 0)
        result.rows_quarantined += done.get("rows_quarantined", 0)
        result.files_rejected += list(done.get("files_rejected") or [])


def _partition_key(schema: pa.DataFrameSchema, column: str | None) -> str | None:
    """The folder key for ``ingest.partition_by``: ``<column>_day``, so Hive-style readers add
    it as a column of its own instead of clashing with the typed column in the files."""
    if column is None:
        return None
    kinds = column_kinds(schema)
    if column not in kinds:
        raise ContractError(
            f"ingest.partition_by {column!r} is not a column of the contract; its columns are {', '.join(kinds)}"
        )
    if kinds[column] != "datetime":
        raise ContractError(
            f"ingest.partition_by {column!r} must be a datetime column (dtype datetime64[ns] in the contract), "
            f"but the contract types it as {schema.columns[column].dtype}"
        )
    key = f"{column}_day"
    if key in kinds:
        raise ContractError(f"ingest.partition_by {column!r} writes folders {key}=YYYY-MM-DD, which clashes with the contract's column {key!r}")
    return key


def _fingerprint(schema: pa.DataFrameSchema, settings: IngestConfig) -> str:
    try:
        contract = schema.to_yaml()
    except Exception:  # a check pandera cannot write out: its description will do
        contract = repr(schema)
    text = json.dumps({"contract": contract, "extra_columns": settings.extra_columns, "partition_by": settings.partition_by})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _filesystem(uri: str, options: dict[str, Any]) -> Any:
    """The filesystem of ``uri``, listing afresh each time: workers in other processes write
    the files this process lists, which a cached listing would not show."""
    return fsspec.core.url_to_fs(uri, **{**options, "use_listings_cache": False, "skip_instance_cache": True})[0]


def _remove(fs: Any, uri: str) -> None:
    try:
        fs.rm(fs._strip_protocol(uri), recursive=True)
    except FileNotFoundError:
        pass


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return protocol in ("file", "local")


# --- the stage ---------------------------------------------------------------------------------


def _without_pipeline_outputs(objects: list[SourceObject], layout: Layout, source_uri: str) -> list[SourceObject]:
    """Leave out what updraft itself wrote, should the source be the bucket's root: ingesting
    curated Parquet or the quarantine again would grow the dataset with every run."""
    written = (
        layout.curated(), layout.quarantine("-"), layout.features("-"), layout.model("-"), layout.report("-"),
        layout.manifest(), layout.staging(), layout.results(),
    )
    prefixes = tuple(sorted({uri.split("/", 4)[3] + "/" for uri in written}))  # s3://b/curated/... -> curated/
    kept = [obj for obj in objects if not obj.key.startswith(prefixes)]
    if len(kept) < len(objects):
        log.warning(
            "leaving out %d files under %s that updraft wrote itself (%s)",
            len(objects) - len(kept), source_uri, ", ".join(prefixes),
        )
    if not kept:
        raise no_files(source_uri)
    return kept


def require_curated(fs: Any, curated_uri: str, *, then: str = "run the ingest stage first") -> str:
    """The dataset's curated folder, once ingest has written to it; preprocess may be scheduled apart from ingest.

    ``then`` ends the message when it is missing: what the user runs to fill it.
    """
    if not fs.exists(curated_uri):
        raise DataError(f"no curated data at {curated_uri}: {then}")
    return curated_uri


def __getattr__(name: str) -> Any:
    """``ingest_stage`` (the Prefect task) is loaded on first use: Dask workers import this
    package for its block functions, and Prefect would cost each of them about 80 MB and a
    second and a half of CPU for a task they never run."""
    if name == "ingest_stage":
        from tasks.ingest.stage import ingest_stage

        return ingest_stage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
