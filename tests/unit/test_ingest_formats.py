"""Every format and compression ingest reads, and every kind of malformed file it meets:
each lands as quarantined rows or a per-file rejection with a reason, never a crash and
never a silent drop."""

from __future__ import annotations

import bz2
import gzip
from pathlib import Path

import pyarrow as pa
import pytest

from tests.unit.test_ingest import (
    LENIENT,
    assert_conserved,
    claims,
    curated,
    ingest,
    quarantined,
)


def _zstd(data: bytes) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as out:
        out.write(data)
    return sink.getvalue().to_pybytes()


# --- formats and compression -------------------------------------------------------------


def test_quoted_fields_with_line_breaks_survive_blocks_cut_inside_them(tmp_path: Path, raw: Path) -> None:
    frame = claims(2000)
    for row in range(0, 2000, 97):  # line breaks inside quoted values all through the file
        frame.loc[row, "channel"] = f"online\nnote {row}, with a comma and a \"quote\""
    frame.loc[1500, "amount"] = "-1"
    frame.to_csv(raw / "notes.csv", index=False)
    text = (raw / "notes.csv").read_text()
    assert text.count("\n") > 2000  # more lines than records

    result = ingest(tmp_path, raw, blocksize=3_000, settings=LENIENT)  # block edges land inside quotes

    broken = set(range(0, 2000, 97)) | {1500}
    assert (result.rows_in, result.rows_curated, result.rows_quarantined) == (2000, 2000 - len(broken), len(broken))
    rows = quarantined(tmp_path).set_index("_row")
    assert sorted(rows.index) == sorted(r + 1 for r in broken)
    assert rows.loc[98, "channel"] == 'online\nnote 97, with a comma and a "quote"'
    assert rows.loc[1501, "_reason"] == "amount: greater_than(0) failed for '-1'"
    assert sorted(curated(tmp_path)["claim_id"]) == sorted(frame.drop(index=list(broken))["claim_id"])


def test_tsv_with_quoted_tabs_is_read(tmp_path: Path, raw: Path) -> None:
    frame = claims(50)
    frame.loc[7, "claim_id"] = "c\twith tab"
    frame.to_csv(raw / "a.tsv", sep="\t", index=False)
    result = ingest(tmp_path, raw)
    assert (result.rows_in, result.rows_curated) == (50, 50)
    assert "c\twith tab" in set(curated(tmp_path)["claim_id"])


@pytest.mark.parametrize(
    ("name", "pack"),
    [("a.csv.gz", gzip.compress), ("a.csv.bz2", bz2.compress), ("a.csv.zst", _zstd), ("a.tsv.zst", _zstd)],
)
def test_compressed_csv_is_streamed_in_chunks_with_row_numbers_across_them(
    tmp_path: Path, raw: Path, name: str, pack
) -> None:
    sep = "\t" if ".tsv" in name else ","
    frame = claims(3000, {2900: ("is_fraud", "7")})
    (raw / name).write_bytes(pack(frame.to_csv(index=False, sep=sep).encode()))
    result = ingest(tmp_path, raw, blocksize=8_000)  # many chunks from one stream
    assert (result.rows_in, result.rows_curated, result.rows_quarantined) == (3000, 2999, 1)
    assert quarantined(tmp_path)["_row"].tolist() == [2901]
    assert len(curated(tmp_path)) == 2999


def test_compressed_json_lines_are_streamed_and_keep_row_numbers(tmp_path: Path, raw: Path) -> None:
    frame = claims(2000, {1999: ("amount", "-3")})
    text = frame.to_json(orient="records", lines=True)
    (raw / "a.jsonl.zst").write_bytes(_zstd(text.encode()))
    (raw / "b.ndjson.bz2").write_bytes(bz2.compress(claims(10, start=5000).to_json(orient="records", lines=True).encode()))
    result = ingest(tmp_path, raw, blocksize=5_000)
    assert (result.rows_in, result.rows_curated, result.rows_quarantined) == (2010, 2009, 1)
    assert quarantined(tmp_path)[["_row", "_source"]].values.tolist() == [[2000, str(raw / "a.jsonl.zst")]]


def test_parquet_is_read_in_batches_without_losing_row_numbers(tmp_path: Path, raw: Path) -> None:
    frame = claims(5000, {4321: ("channel", "fax")}).assign(is_fraud=lambda f: f["is_fraud"].astype(int))
    frame.to_parquet(raw / "big.parquet", row_group_size=5000)  # one row group, read in batches
    frame.iloc[:300].assign(claim_id=lambda f: "p" + f["claim_id"]).to_parquet(raw / "small.parquet", row_group_size=40)
    result = ingest(tmp_path, raw, blocksize=20_000)
    assert (result.rows_in, result.rows_curated, result.rows_quarantined) == (5300, 5299, 1)
    assert quarantined(tmp_path)["_row"].tolist() == [4322]
    assert len(list((tmp_path / "curated").rglob("*.parquet"))) == 2  # batches merged per file


# --- malformed rows: quarantined one by one ------------------------------------------------


def test_ragged_rows_are_quarantined_with_their_text(tmp_path: Path, raw: Path) -> None:
    lines = claims(1000).to_csv(index=False).splitlines()
    lines[10] += ",surplus"  # record 10
    lines[700] = "c00699,12.5"  # record 700: too few fields
    (raw / "ragged.csv").write_text("\n".join(lines) + "\n")
    result = ingest(tmp_path, raw, blocksize=4_000)
    assert (result.rows_in, result.rows_curated, result.rows_quarantined) == (1000, 998, 2)
    assert result.files_rejected == []
    rows = quarantined(tmp_path)
    assert rows[["_row", "_reason", "_raw"]].values.tolist() == [
        [10, "row has 5 fields, header has 4", lines[10]],
        [700, "row has 2 fields, header has 4", "c00699,12.5"],
    ]


def test_repeated_header_lines_are_quarantined_as_such(tmp_path: Path, raw: Path) -> None:
    part = claims(300).to_csv(index=False)
    more = claims(300, start=300).to_csv(index=False)
    # two exports glued together (the second with its own byte-order mark), and a stray header
    data = part.encode() + more.encode("utf-8-sig") + b"claim_id,amount,channel,is_fraud\n"
    (raw / "glued.csv").write_bytes(data)
    result = ingest(tmp_path, raw, blocksize=2_000)
    assert (result.rows_in, result.rows_curated, result.rows_quarantined) == (602, 600, 2)
    rows = quarantined(tmp_path)
    assert rows[["_row", "_reason"]].values.tolist() == [[301, "repeated header line"], [602, "repeated header line"]]


def test_a_row_that_is_not_utf8_is_quarantined_and_the_rest_curated(tmp_path: Path, raw: Path) -> None:
    text = claims(20).to_csv(index=False).encode()
    text = text.replace(b"c00007,17.5,phone", "c00007,17.5,t\u00e9l\u00e9phone".encode("latin-1"))
    (raw / "latin1.csv").write_bytes(text)
    result = ingest(tmp_path, raw, settings=LENIENT)
    assert (result.rows_in, result.rows_curated, result.rows_quarantined) == (20, 19, 1)
    (row,) = quarantined(tmp_path).to_dict(orient="records")
    assert row["_row"] == 8 and row["_reason"] == "channel: not UTF-8 text (byte b'\\xe9' at offset 1)"
    assert row["_raw"] == "c00007,17.5,t\\xe9l\\xe9phone,1"


def test_json_lines_that_are_not_objects_are_quarantined(tmp_path: Path, raw: Path) -> None:
    lines = [f'{{"claim_id": "c{i}", "amount": 5.5, "channel": "phone", "is_fraud": 0}}' for i in range(400)]
    lines[350] = '{"claim_id": "c350", "amount": '
    lines[351] = "[1, 2]"
    lines[352] = '{"claim_id": "caf\xe9"}'
    data = "\n".join(lines).encode("latin-1") + b"\n\n"
    (raw / "claims.jsonl").write_bytes(data)
    result = ingest(tmp_path, raw, blocksize=4_000)
    assert (result.rows_in, result.rows_curated, result.rows_quarantined) == (400, 397, 3)
    rows = quarantined(tmp_path)
    assert rows["_row"].tolist() == [351, 352, 353]
    reasons = rows["_reason"].tolist()
    assert reasons[0].startswith("line is not valid JSON (")
    assert reasons[1] == "line is a JSON list, not an object"
    assert reasons[2] == "line is not UTF-8 text (byte b'\\xe9' at offset 17)"
    assert rows["_raw"].tolist()[:2] == ['{"claim_id": "c350", "amount": ', "[1, 2]"]


# --- malformed files: rejected whole, with the reason, kept ------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.csv", b"", "the file is empty"),
        ("empty.csv.gz", gzip.compress(b""), "the file is empty (after gzip decompression)"),
        ("header.csv", b"claim_id,amount,channel,is_fraud\n", "the file has a header line but no data rows"),
        ("blank.csv", b"\n\n\r\n", "the file holds only blank lines"),
        ("blank.jsonl", b"\n  \n", "the file holds no JSON records (only blank lines)"),
        ("twice.csv", b"claim_id,amount,claim_id\n1,2,3\n", "cannot be read as CSV: its header names column 'claim_id' twice"),
        ("bad-header.csv", b"claim_id,\xff\xfe\n1,2\n", "cannot be read as CSV: its header line is not UTF-8 text (byte b'\\xff' at offset 9)"),
        ("junk.csv.gz", b"\x00\xff" * 500, "cannot be read as CSV: its gzip data is corrupt or cut short (zlib inflate failed: incorrect header check)"),
        ("junk.csv.bz2", b"not bz2 at all", "cannot be read as CSV: its bz2 data is corrupt or cut short (bz2 decompress failed: data is not bz2-compressed (no magic header))"),
        ("cut.csv.gz", gzip.compress(claims(3000).to_csv(index=False).encode())[:3000], "cannot be read as CSV: its gzip data is corrupt or cut short (Truncated compressed stream)"),
    ],
)
def test_unreadable_files_are_rejected_with_a_reason_and_kept(
    tmp_path: Path, raw: Path, name: str, content: bytes, reason: str
) -> None:
    claims(10).to_csv(raw / "good.csv", index=False)
    (raw / name).write_bytes(content)
    result = ingest(tmp_path, raw)
    assert_conserved(result)
    assert (result.files, result.rows_in, result.rows_curated) == (2, 10, 10)
    assert [(Path(r["uri"]).name, r["reason"]) for r in result.files_rejected] == [(name, reason)]
    assert Path(result.files_rejected[0]["copy"]).read_bytes() == content


def test_a_truncated_gzip_rejects_its_file_and_leaves_nothing_of_it(tmp_path: Path, raw: Path) -> None:
    data = gzip.compress(claims(5000).to_csv(index=False).encode())
    (raw / "cut.csv.gz").write_bytes(data[: len(data) * 2 // 3])
    claims(10, start=9000).to_csv(raw / "good.csv", index=False)
    result = ingest(tmp_path, raw, blocksize=4_000)  # some chunks are read before the cut
    assert [r["reason"] for r in result.files_rejected] == [
        "cannot be read as CSV: its gzip data is corrupt or cut short (Truncated compressed stream)"
    ]
    assert (result.rows_in, result.rows_curated, result.rows_quarantined) == (10, 10, 0)
    assert sorted(curated(tmp_path)["claim_id"]) == [f"c{i:05d}" for i in range(9000, 9010)]
    assert quarantined(tmp_path).empty


def test_windows_line_endings_are_read_like_any_others(tmp_path: Path, raw: Path) -> None:
    frame = claims(500, {3: ("amount", "-1")})
    frame.loc[200, "channel"] = "on\r\nline"  # a quoted CRLF inside a value
    (raw / "a.csv").write_text(frame.to_csv(index=False, lineterminator="\r\n"), newline="")
    (raw / "b.csv.gz").write_bytes(gzip.compress(claims(50, start=600).to_csv(index=False, lineterminator="\r\n").encode()))
    result = ingest(tmp_path, raw, blocksize=3_000)
    assert (result.rows_in, result.rows_curated, result.rows_quarantined) == (550, 548, 2)
    assert quarantined(tmp_path)["_row"].tolist() == [4, 201]
    assert set(curated(tmp_path)["channel"]) == {"online", "phone"}  # no stray '\r'


def test_no_chunk_holds_a_whole_file(tmp_path: Path, raw: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the format or compression, a file is validated a bounded block at a time."""
    import tasks.ingest as ingest_package
    import tasks.ingest.writer as writer

    sizes: dict[str, list[int]] = {}
    validate = writer.validate_chunk

    def measured(chunk, schema, job, name):
        sizes.setdefault(Path(job.obj.uri).name, []).append(chunk.records)
        return validate(chunk, schema, job, name)

    monkeypatch.setattr(ingest_package, "validate_chunk", measured)  # blocks of plain text files
    monkeypatch.setattr(writer, "validate_chunk", measured)  # streams and Parquet, through stage_chunk
    frame = claims(4000)
    frame.to_csv(raw / "a.csv", index=False)
    (raw / "b.csv.gz").write_bytes(gzip.compress(frame.to_csv(index=False).encode()))
    (raw / "c.jsonl.zst").write_bytes(_zstd(frame.to_json(orient="records", lines=True).encode()))
    frame.assign(is_fraud=lambda f: f["is_fraud"].astype(int)).to_parquet(raw / "d.parquet", row_group_size=4000)
    result = ingest(tmp_path, raw, blocksize=16_000)

    assert result.rows_in == 4 * 4000
    assert {name: sum(counts) for name, counts in sizes.items()} == dict.fromkeys(["a.csv", "b.csv.gz", "c.jsonl.zst", "d.parquet"], 4000)
    assert all(len(counts) >= 4 and max(counts) <= 4000 // 3 for counts in sizes.values()), sizes


# --- cutting text files into blocks ----------------------------------------------------------


@pytest.mark.parametrize("slack", [1, 7, 2**20])
def test_blocks_hold_exactly_the_lines_that_start_in_them(tmp_path: Path, slack: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks follow fsspec's read_block rule (Dask's), however long a line runs past the
    bytes fetched with a block: together they are the file, each line in exactly one block."""
    import io
    import random

    from fsspec.utils import read_block

    import tasks.ingest.readers as readers
    from tasks.ingest.sources import SourceObject

    monkeypatch.setattr(readers, "LINE_SLACK", slack)
    rng = random.Random(slack)
    for trial in range(20):
        lines = [b"x" * rng.choice([0, 1, 5, 40, 700]) for _ in range(rng.randint(0, 40))]
        data = b"\n" * rng.randint(0, 3) + b"\n".join(lines) + (b"\n" if trial % 2 else b"")
        path = tmp_path / f"t{trial}.csv"
        path.write_bytes(data)
        obj = SourceObject(uri=str(path), key=path.name, size=len(data))
        for blocksize in (1, 6, 64, 1000):
            blocks = [readers.read_text_block(obj, {}, offset, blocksize) for offset in readers.block_offsets(len(data), blocksize)]
            expected = [read_block(io.BytesIO(data), offset, blocksize, delimiter=b"\n") for offset in readers.block_offsets(len(data), blocksize)]
            assert blocks == expected, (trial, blocksize)
            assert b"".join(blocks) == data
