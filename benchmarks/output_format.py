"""Measure Parquet codecs, row-group sizes and encodings for preprocess's feature files.

    python benchmarks/output_format.py [--rows 2000000] [--repeat 2] [--s3-mb-per-s 200]

The features are written once (by preprocess) and read once or a few times (by XGBoost
training, on the same machine or after a download from S3), so the format should be
chosen by write time, read time and size together. This script builds a table like
preprocess's output (20 standardized float32 numerics, 1% of them exactly 0 where a
missing value was imputed; 5 vocabulary codes, small integers stored as float32; a
float64 0/1 ``_label``), and for every codec, row-group size and encoding writes it with
pyarrow and reads it back with ``pq.read_table``, as the training container does (which
then stacks one float32 matrix, at the same cost whatever the format, so that step is not
timed). It prints MB written, write s, read s, and an estimate of a read from S3:
MB / ``--s3-mb-per-s`` (an assumption: set the bandwidth your instances get) plus the
local read. The full grid takes about 5 minutes on 2 cores.

Encodings: ``plain`` (no dictionary), ``dictionary`` (pyarrow's default: every column),
``dict-codes`` (dictionary for codes and label only, where it pays), ``dict-codes+bss``
(that, plus BYTE_STREAM_SPLIT for the numerics, which groups the bytes of each float so
the codec sees the repeated exponent bytes), ``bss`` (BYTE_STREAM_SPLIT everywhere).
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

NUMERICS = 20
CATEGORICALS = (10, 100, 1_000, 10_000, 100_000)  # the benchmark's cardinalities
VOCABULARY = 1000
CODECS: tuple[tuple[str, str, int | None], ...] = (
    ("none", "none", None),
    ("snappy", "snappy", None),
    ("lz4", "lz4", None),
    ("zstd(1)", "zstd", 1),
    ("zstd(3)", "zstd", 3),
)
ROW_GROUPS = (64 * 1024, 256 * 1024, 1024 * 1024)
ENCODINGS = ("plain", "dictionary", "dict-codes", "dict-codes+bss", "bss")
#: What these measurements recommend for preprocess's feature files (benchmarks/README.md says why).
RECOMMENDED = {"compression": "snappy", "row_group_size": 1024 * 1024, "encoding": "dict-codes"}


@dataclass(frozen=True)
class Result:
    codec: str
    row_group: int
    encoding: str
    mb: float
    write_s: float
    read_s: float


def feature_table(rows: int, seed: int = 0) -> pa.Table:
    """A table shaped and distributed like preprocess's output for the benchmark's input."""
    rng = np.random.default_rng(seed)
    columns: dict[str, np.ndarray] = {}
    for j in range(NUMERICS):
        values = rng.standard_normal(rows).astype(np.float32)
        values[rng.random(rows) < 0.01] = 0.0  # imputed with the train mean, standardized
        columns[f"x{j:02d}"] = values
    for card in CATEGORICALS:
        rank = (rng.zipf(1.3, rows) - 1) % card
        columns[f"c{card}"] = np.where(rank < VOCABULARY, rank + 1, 0).astype(np.float32)
    columns["_label"] = (rng.random(rows) < 0.2).astype(np.float64)
    return pa.table(columns)


def write_options(encoding: str, numerics: Sequence[str], codes: Sequence[str]) -> dict[str, Any]:
    """``pq.write_table`` keywords for one of ``ENCODINGS``.

    ``numerics`` are continuous float columns (dictionary encoding only wastes time on
    them); ``codes`` are the columns with few distinct values (vocabulary codes, label).
    """
    if encoding == "plain":
        return {"use_dictionary": False}
    if encoding == "dictionary":
        return {"use_dictionary": True}
    if encoding == "dict-codes":
        return {"use_dictionary": list(codes)}
    if encoding == "dict-codes+bss":
        return {"use_dictionary": list(codes), "use_byte_stream_split": list(numerics)}
    if encoding == "bss":
        return {"use_dictionary": False, "use_byte_stream_split": True}
    raise ValueError(f"unknown encoding {encoding!r}; use one of {', '.join(ENCODINGS)}")


def recommended_options(numerics: Sequence[str], codes: Sequence[str]) -> dict[str, Any]:
    """``pq.write_table`` keywords for the recommended feature format."""
    return {
        "compression": RECOMMENDED["compression"],
        "row_group_size": RECOMMENDED["row_group_size"],
        **write_options(RECOMMENDED["encoding"], numerics, codes),
    }


def _split_columns(table: pa.Table) -> tuple[list[str], list[str]]:
    numerics = [n for n in table.column_names if n.startswith("x")]
    return numerics, [n for n in table.column_names if n not in numerics]


def measure(table: pa.Table, path: Path, codec: tuple[str, str, int | None], row_group: int, encoding: str) -> Result:
    """One write and one read of ``table`` at ``path`` in one format."""
    label, compression, level = codec
    started = time.perf_counter()
    options = write_options(encoding, *_split_columns(table))
    pq.write_table(table, path, compression=compression, compression_level=level, row_group_size=row_group, **options)
    write_s = time.perf_counter() - started
    started = time.perf_counter()
    pq.read_table(path)
    read_s = time.perf_counter() - started
    return Result(label, row_group, encoding, path.stat().st_size / 1e6, write_s, read_s)


def best(a: Result, b: Result) -> Result:
    """The faster write and the faster read of two measurements of one format."""
    return Result(a.codec, a.row_group, a.encoding, a.mb, min(a.write_s, b.write_s), min(a.read_s, b.read_s))


def _print(result: Result, s3_mb_per_s: float) -> None:
    s3 = result.mb / s3_mb_per_s + result.read_s
    print(
        f"{result.codec:<8} {result.row_group // 1024:>5}Ki {result.encoding:<15} {result.mb:8.1f} "
        f"{result.write_s:8.2f} {result.read_s:7.2f} {result.write_s + result.read_s:9.2f} {s3:9.2f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=2, help="rounds over every format; each keeps its best write and read")
    parser.add_argument("--s3-mb-per-s", type=float, default=200.0, help="assumed S3 download bandwidth, MB/s")
    parser.add_argument("--codecs", nargs="*", default=[c[0] for c in CODECS], choices=[c[0] for c in CODECS])
    parser.add_argument("--encodings", nargs="*", default=list(ENCODINGS), choices=ENCODINGS)
    parser.add_argument("--workdir", type=Path, default=None, help="where the files are written (default: a temp folder)")
    args = parser.parse_args(argv)

    table = feature_table(args.rows)
    print(
        f"{args.rows:,} rows x {table.num_columns} columns ({NUMERICS} float32 numerics, {len(CATEGORICALS)} float32 codes, "
        f"float64 label): {table.nbytes / 1e6:.0f} MB in memory; pyarrow {pa.__version__}; best of {args.repeat}"
    )
    print(f"{'codec':<8} {'group':>7} {'encoding':<15} {'MB':>8} {'write s':>8} {'read s':>7} {'write+read':>9} {'S3 read s':>9}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="updraft-format-"))
    workdir.mkdir(parents=True, exist_ok=True)
    formats = [
        (codec, row_group, encoding)
        for codec in CODECS
        if codec[0] in args.codecs
        for row_group in ROW_GROUPS
        for encoding in args.encodings
    ]
    results: dict[tuple, Result] = {}
    try:
        # Whole rounds, so that a burst of load on a shared machine hits one round, not one format.
        for round_ in range(args.repeat):
            one, five, _ = os.getloadavg()
            print(f"round {round_ + 1} of {args.repeat} (load average {one:.1f}/{five:.1f})", flush=True)
            for key in formats:
                result = measure(table, workdir / "features.parquet", *key)
                results[key] = best(results[key], result) if key in results else result
                if round_ == args.repeat - 1:
                    _print(results[key], args.s3_mb_per_s)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nfastest write+read here, and fastest with the read from S3 at {args.s3_mb_per_s:g} MB/s, smallest:")
    for key in (
        lambda r: r.write_s + r.read_s,
        lambda r: r.write_s + r.read_s + r.mb / args.s3_mb_per_s,
        lambda r: r.mb,
    ):
        for result in sorted(results.values(), key=key)[:3]:
            _print(result, args.s3_mb_per_s)
        print()


if __name__ == "__main__":
    main()
