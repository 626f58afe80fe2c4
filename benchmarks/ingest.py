"""Time updraft's ingest against a plain pyarrow CSV-to-Parquet conversion of the same files.

    python benchmarks/ingest.py [--gb 2] [--files N] [--workers 2] [--no-profile]

Generates a CSV set of about ``--gb`` GB (numeric, categorical, text, boolean and datetime
columns; one row in 2,000 breaks the contract) and its pandera contract, starts the
embedded S3 endpoint (moto, in this process), uploads the files, then in one run:

(a) updraft: the ingest stage as the pipeline runs it (``ingest_stage``), validating every
    row against the contract on the pipeline's Dask cluster (``tasks.compute.dask_client``:
    a LocalCluster of ``--workers`` processes with one thread each);
(b) pyarrow: ``pyarrow.csv.open_csv`` streaming each file from the same endpoint through
    s3fs into ``pyarrow.parquet.ParquetWriter`` on the same S3, no validation, in
    ``--workers`` processes (one file at a time each), so both get the same cores.

Prints MB/s (of CSV read), rows/s and CPU seconds (of every process involved, the S3
endpoint's included) for each, the ratio (the goal: updraft at least 60% of pyarrow) and the
same ratio per CPU second (which the neighbours' load on a shared machine sways less),
where updraft's time went by Dask task kind, and a cProfile of one block going through
the ingest's reader and writer. Start-up of the cluster and of the pyarrow
processes is not counted. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import math
import os
import platform
import pstats
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandera.pandas as pa
import pyarrow
import pyarrow.compute as pc
import pyarrow.csv as pacsv

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.aws.embedded import EmbeddedAWS  # noqa: E402
from tasks.aws.target import Target, resolve_target  # noqa: E402
from tasks.compute import dask_client  # noqa: E402
from tasks.config import parse_config  # noqa: E402
from tasks.contracts import load_contract  # noqa: E402

BUCKET = "updraft-bench"
SOURCE = "raw/events/"
BATCH_ROWS = 250_000
CHANNELS = ("web", "app", "store", "phone")
REGIONS = ("north", "south", "east", "west", "central", "islands")
SKUS = tuple(f"sku-{i:03d}" for i in range(200))
WORDS = tuple("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november".split())


def contract() -> pa.DataFrameSchema:
    """What a data engineer would declare for these events: types, ranges, sets, a pattern, nulls, a unique id."""
    return pa.DataFrameSchema(
        {
            "event_id": pa.Column(str, pa.Check.str_length(min_value=1), nullable=False, unique=True),
            "event_time": pa.Column("datetime64[ns]", nullable=False),
            "customer_id": pa.Column(str, pa.Check.str_matches(r"^C\d{7}$"), nullable=False),
            "amount": pa.Column(float, [pa.Check.gt(0), pa.Check.le(1_000_000)], nullable=False),
            "quantity": pa.Column("int64", pa.Check.in_range(1, 50), nullable=False),
            "discount": pa.Column(float, pa.Check.in_range(0, 1), nullable=True),
            "score": pa.Column(float, nullable=True),
            "channel": pa.Column(str, pa.Check.isin(list(CHANNELS)), nullable=False),
            "region": pa.Column(str, pa.Check.isin(list(REGIONS)), nullable=True),
            "sku": pa.Column(str, pa.Check.str_matches(r"^sku-\d{3}$"), nullable=False),
            "note": pa.Column(str, nullable=True),
            "is_returned": pa.Column(bool, nullable=False),
        },
        name="events",
        coerce=True,
    )


# --- the data ---------------------------------------------------------------------------------


def _text(values: np.ndarray) -> pyarrow.Array:
    return pc.cast(pyarrow.array(values), pyarrow.string())


def _batch(rng: np.random.Generator, first_id: int, file_index: int, n: int) -> tuple[pyarrow.Table, int]:
    """``n`` rows as text-ready columns; returns the table and how many rows break the contract.

    The broken values stay parseable as their column's type (a negative amount, an unknown
    channel, a quantity of 0, a malformed SKU), so the plain pyarrow conversion, which
    infers types, reads the same files without failing.
    """
    ids = np.arange(first_id, first_id + n)
    seconds = rng.integers(0, 365 * 86400, n).astype("timedelta64[s]")
    amount = np.round(rng.gamma(2.0, 40.0, n), 2) + 0.01
    quantity = rng.integers(1, 51, n)
    channel = np.array(CHANNELS, dtype=object)[rng.integers(0, len(CHANNELS), n)]
    sku = np.array(SKUS, dtype=object)[rng.integers(0, len(SKUS), n)]
    bad = rng.choice(n, max(1, n // 2000), replace=False)
    for i, row in enumerate(bad):
        kind = i % 4
        if kind == 0:
            amount[row] = -amount[row]
        elif kind == 1:
            channel[row] = "carrier-pigeon"
        elif kind == 2:
            quantity[row] = 0
        else:
            sku[row] = "SKU_" + sku[row][4:]
    region = pyarrow.array(np.array(REGIONS, dtype=object)[rng.integers(0, len(REGIONS), n)], mask=rng.random(n) < 0.02)
    discount = pyarrow.array(np.round(rng.random(n) * 0.5, 3), mask=rng.random(n) < 0.3)
    words = [pyarrow.array(np.array(WORDS, dtype=object)[rng.integers(0, len(WORDS), n)]) for _ in range(3)]
    table = pyarrow.table(
        {
            "event_id": pc.binary_join_element_wise(f"E{file_index:03d}-", _text(ids), ""),
            "event_time": pyarrow.array(np.datetime64("2026-01-01T00:00:00") + seconds),
            "customer_id": pc.binary_join_element_wise("C", pc.utf8_lpad(_text(rng.integers(0, 10**7, n)), 7, "0"), ""),
            "amount": amount,
            "quantity": quantity,
            "discount": discount,
            "score": pyarrow.array(rng.normal(0.0, 1.0, n), mask=rng.random(n) < 0.01),
            "channel": pyarrow.array(channel, pyarrow.string()),
            "region": region,
            "sku": pyarrow.array(sku, pyarrow.string()),
            "note": pc.if_else(
                pyarrow.array(rng.random(n) < 0.1), pyarrow.scalar(None, pyarrow.string()), pc.binary_join_element_wise(*words, " ")
            ),
            "is_returned": pyarrow.array(rng.random(n) < 0.05),
        }
    )
    return table, len(bad)


def generate(folder: Path, total_bytes: float, files: int) -> tuple[list[Path], int, int]:
    """Write ``files`` CSV files of about ``total_bytes`` in all; (paths, rows, rows that break the contract)."""
    folder.mkdir(parents=True, exist_ok=True)
    per_file = total_bytes / files
    paths, rows, invalid = [], 0, 0
    options = pacsv.WriteOptions(quoting_style="needed")
    for index in range(files):
        rng = np.random.default_rng(1000 + index)
        path = folder / f"events-{index:03d}.csv"
        table, _ = _batch(rng, 0, index, 10)
        with pacsv.CSVWriter(str(path), table.schema, write_options=options) as writer:
            file_rows = 0
            while path.stat().st_size < per_file:
                table, broken = _batch(rng, file_rows, index, BATCH_ROWS)
                writer.write_table(table)
                file_rows += BATCH_ROWS
                invalid += broken
        rows += file_rows
        paths.append(path)
    return paths, rows, invalid


def upload(paths: list[Path], target: Target) -> None:
    from boto3.s3.transfer import TransferConfig

    s3 = target.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    transfer = TransferConfig(multipart_chunksize=64 * 2**20, max_concurrency=4)
    for path in paths:
        s3.upload_file(str(path), BUCKET, SOURCE + path.name, Config=transfer)


# --- (a) updraft -------------------------------------------------------------------------------


@dataclass
class Timing:
    seconds: float
    rows: int
    detail: str = ""
    cpu_seconds: float = 0.0


def _cpu_times() -> dict[int, float]:
    """CPU seconds used so far by this process (with the S3 endpoint's thread) and each process
    below it (Dask workers and nannies, or the pyarrow pool), by process id."""
    import psutil

    me = psutil.Process()
    times = {}
    for process in [me, *me.children(recursive=True)]:
        try:
            used = process.cpu_times()
        except psutil.Error:  # ended meanwhile
            continue
        times[process.pid] = used.user + used.system
    return times


def _cpu_used(before: dict[int, float]) -> float:
    """CPU seconds used since ``before`` by this process tree: on a shared machine wall time
    follows the neighbours' load, while the work done (core-seconds) changes much less."""
    after = _cpu_times()
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def run_updraft(contract_path: Path, target: Target, workers: int, expect_rows: int, expect_invalid: int) -> tuple[Timing, dict[str, tuple[int, float]]]:
    from distributed import get_task_stream

    from tasks.ingest import ingest_stage

    config = parse_config(
        {
            "name": "bench-events",
            "bucket": BUCKET,
            "source": SOURCE,
            "contract": str(contract_path),
            "label": "is_returned",
            "task": "binary_classification",
        }
    )
    started = time.perf_counter()
    with dask_client(n_workers=workers) as client:
        print(f"  (LocalCluster with {workers} workers started in {time.perf_counter() - started:.1f} s, not counted)")
        _print_load()
        with get_task_stream(client) as stream:
            cpu = _cpu_times()
            began = time.perf_counter()
            result = ingest_stage.fn(config, target, "bench-run", client)
            elapsed = time.perf_counter() - began
            cpu_seconds = _cpu_used(cpu)
    if (result.rows_in, result.rows_quarantined) != (expect_rows, expect_invalid) or result.files_rejected:
        raise SystemExit(
            f"updraft's counts are wrong: {result.rows_in} rows in (expected {expect_rows}), "
            f"{result.rows_quarantined} quarantined (expected {expect_invalid}), rejected: {result.files_rejected}"
        )
    detail = f"{result.rows_curated:,} curated, {result.rows_quarantined:,} quarantined"
    return Timing(elapsed, result.rows_in, detail, cpu_seconds), _by_task_kind(stream.data)


def _by_task_kind(records: list[dict[str, Any]]) -> dict[str, tuple[int, float]]:
    """Task count and seconds (summed over workers) per task kind, from Dask's task stream;
    time spent moving data between workers or to disk is listed apart, in parentheses."""
    from distributed.utils import key_split

    kinds: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for record in records:
        kind = key_split(record["key"])
        kinds[kind][0] += 1
        for span in record.get("startstops", ()):
            name = kind if span["action"] == "compute" else f"({span['action']})"
            kinds[name][1] += span["stop"] - span["start"]
    return {name: (int(count), seconds) for name, (count, seconds) in kinds.items()}


# --- (b) pyarrow -------------------------------------------------------------------------------


def _convert(src: str, dst: str, storage_options: dict[str, Any]) -> int:
    """One file, CSV to Parquet, streamed: what a plain pyarrow job does (in a pool process)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **storage_options)
    rows = 0
    with fs.open(src, "rb") as raw, fs.open(dst, "wb") as out:
        reader = pacsv.open_csv(raw)
        with pq.ParquetWriter(out, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)
                rows += batch.num_rows
    return rows


def _warm() -> int:
    import pyarrow.parquet  # noqa: F401
    import s3fs  # noqa: F401

    time.sleep(1.0)  # holds the process, so each warm-up call lands on its own
    return os.getpid()


def run_pyarrow(keys: list[str], target: Target, workers: int) -> Timing:
    options = target.storage_options()
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        pids = {future.result() for future in [pool.submit(_warm) for _ in range(workers)]}
        print(f"  ({len(pids)} pyarrow processes started in {time.perf_counter() - started:.1f} s, not counted)")
        _print_load()
        cpu = _cpu_times()
        began = time.perf_counter()
        futures = [
            pool.submit(_convert, f"{BUCKET}/{key}", f"{BUCKET}/pyarrow/{key.rsplit('/', 1)[-1]}.parquet", options)
            for key in keys
        ]
        rows = sum(f.result() for f in futures)
        elapsed = time.perf_counter() - began
        cpu_seconds = _cpu_used(cpu)
    return Timing(elapsed, rows, f"{len(keys)} files, {workers} processes", cpu_seconds)


# --- where the time goes in one block ------------------------------------------------------------


def profile_one_block(target: Target, schema: pa.DataFrameSchema, top: int) -> None:
    """cProfile of one block through the ingest's own reader and writer, as a worker runs it:
    read the block's bytes from S3, parse them, validate and write both halves to staging."""
    try:
        from tasks.ingest import BLOCKSIZE, list_source_objects
        from tasks.ingest.readers import parse_csv_block, read_csv_header, read_text_block
        from tasks.ingest.sources import file_slug
        from tasks.ingest.writer import FileJob, stage_chunk
    except ImportError as exc:  # the ingest's inner modules moved: the task-kind table above still holds
        print(f"  profile skipped: {exc}")
        return
    options = target.storage_options()
    obj = list_source_objects(target.filesystem(), f"s3://{BUCKET}/{SOURCE}")[0]
    job = FileJob(obj=obj, slug=file_slug(obj.key), staging=f"s3://{BUCKET}/bench-profile/{file_slug(obj.key)}/", storage_options=options)
    steps: dict[str, float] = {}
    profiler = cProfile.Profile()

    def step(name: str, call: Any) -> Any:
        began = time.perf_counter()
        profiler.enable()
        try:
            return call()
        finally:
            profiler.disable()
            steps[name] = time.perf_counter() - began

    header = step("read the header", lambda: read_csv_header(obj, options))
    data = step("read the block from S3", lambda: read_text_block(obj, options, 0, BLOCKSIZE))
    chunk = step("parse (pyarrow)", lambda: parse_csv_block(data, header, holds_header=True))
    result = step("validate + write (stage_chunk)", lambda: stage_chunk(chunk, schema, job, "00000", 0))
    total = sum(steps.values())
    print(f"  one block of {len(data) / 1e6:.0f} MB, {result.rows_in:,} rows, {total:.2f} s in this process:")
    for name, seconds in steps.items():
        print(f"    {name:<32} {seconds:6.2f} s  {seconds / total:5.1%}")
    for order in ("tottime", "cumulative"):
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats(order).print_stats(top)
        lines = text.getvalue().splitlines()
        start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
        print(f"\n  top {top} functions by {order}:")
        print("\n".join("    " + line for line in lines[start:] if line.strip()))


# --- the run ---------------------------------------------------------------------------------------


def _machine() -> str:
    import psutil

    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model)
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{usable} usable cores ({os.cpu_count()} online, {model or 'unknown CPU'}), "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, Python {platform.python_version()}, "
        f"pyarrow {pyarrow.__version__}, pandas {__import__('pandas').__version__}, pandera {__import__('pandera').__version__}, "
        f"dask {__import__('dask').__version__}"
    )


def _print_load() -> None:
    if hasattr(os, "getloadavg"):
        one, five, _ = os.getloadavg()
        print(f"  (load average before timing: {one:.1f} over 1 min, {five:.1f} over 5 min)")


def _line(name: str, timing: Timing, megabytes: float) -> str:
    return (
        f"  {name:<8} {timing.seconds:7.1f} s  {megabytes / timing.seconds:7.1f} MB/s  "
        f"{timing.rows / timing.seconds:>11,.0f} rows/s  {timing.cpu_seconds:7.1f} CPU s   ({timing.detail})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.0, help="size of the CSV set in GB (10^9 bytes)")
    parser.add_argument("--files", type=int, default=None, help="number of CSV files (default: 4 per GB, at least 4)")
    parser.add_argument("--workers", type=int, default=2, help="Dask workers, and pyarrow processes")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile of one block")
    parser.add_argument("--top", type=int, default=20, help="functions shown per profile table")
    parser.add_argument("--workdir", type=Path, default=None, help="where the CSV files go (kept when given)")
    args = parser.parse_args()
    files = args.files or max(4, math.ceil(args.gb * 4))
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    print(f"machine: {_machine()}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="updraft-ingest-bench-"))
    try:
        started = time.perf_counter()
        paths, rows, invalid = generate(workdir / "csv", args.gb * 1e9, files)
        megabytes = sum(p.stat().st_size for p in paths) / 1e6
        contract_path = workdir / "contract.yaml"
        contract_path.write_text(contract().to_yaml())
        schema = load_contract(str(contract_path))
        print(
            f"data: {len(paths)} CSV files, {megabytes:,.0f} MB, {rows:,} rows of {len(schema.columns)} columns "
            f"({rows / len(paths):,.0f} per file), {invalid:,} rows that break the contract; "
            f"generated in {time.perf_counter() - started:.1f} s"
        )
        print(f"contract: {', '.join(f'{n} ({c.dtype})' for n, c in schema.columns.items())}; event_id unique")

        with EmbeddedAWS():
            target = resolve_target("embedded")
            began = time.perf_counter()
            upload(paths, target)
            print(f"uploaded to the embedded S3 in {time.perf_counter() - began:.1f} s (moto, in this process)\n")
            keys = [SOURCE + p.name for p in paths]

            print(f"(a) updraft ingest: every row validated, {args.workers} Dask workers x 1 thread ...", flush=True)
            updraft, kinds = run_updraft(contract_path, target, args.workers, rows, invalid)
            print(_line("updraft", updraft, megabytes), flush=True)

            print(f"\n(b) pyarrow CSV -> Parquet, no validation, {args.workers} processes ...", flush=True)
            arrow = run_pyarrow(keys, target, args.workers)
            if arrow.rows != rows:
                raise SystemExit(f"pyarrow read {arrow.rows} rows, expected {rows}")
            print(_line("pyarrow", arrow, megabytes), flush=True)

            ratio = arrow.seconds / updraft.seconds
            print(f"\nupdraft / pyarrow throughput: {ratio:.2f} (goal: at least 0.60, {'met' if ratio >= 0.6 else 'NOT met'})")
            print(
                f"updraft / pyarrow throughput per CPU second (all processes, the S3 endpoint's included): "
                f"{arrow.cpu_seconds / updraft.cpu_seconds:.2f} (less sensitive to the neighbours' load than wall time)"
            )

            busy = sum(seconds for _, seconds in kinds.values())
            print(f"\nwhere updraft's time went (Dask task stream: {busy:.1f} s of work across {args.workers} workers in {updraft.seconds:.1f} s):")
            for name, (count, seconds) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
                if seconds >= 0.005 * busy:
                    print(f"  {name:<28} {count:5d} tasks {seconds:8.1f} s  {seconds / busy:5.1%}")

            if not args.no_profile:
                print("\nprofile of one block (cProfile, in this process):")
                profile_one_block(target, schema, args.top)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
