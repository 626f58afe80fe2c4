"""Ingest on local files: every raw row ends up curated or quarantined, and files that cannot
be read are kept whole, never crash the run.

The helpers here are shared by the other ``test_ingest_*`` files.
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path
from typing import Any

import dask.dataframe as dd
import fsspec
import pandas as pd
import pandera.pandas as pa
import pytest

from tasks.config import IngestConfig
from tasks.errors import DataError
from tasks.ingest import (
    IngestResult,
    SourceObject,
    file_slug,
    ingest_dataset,
    list_source_objects,
    load_manifest,
)

SCHEMA = pa.DataFrameSchema(
    {
        "claim_id": pa.Column(str, nullable=False),
        "amount": pa.Column(float, pa.Check.gt(0), nullable=True),
        "channel": pa.Column(str, pa.Check.isin(["online", "phone"])),
        "is_fraud": pa.Column("int64", pa.Check.isin([0, 1])),
    },
    coerce=True,
)
FS = fsspec.filesystem("file")
#: Rejects no run for its share of bad rows: for tests about something else.
LENIENT = IngestConfig(max_quarantine_fraction=1.0)


def claims(n: int, bad: dict[int, tuple[str, str]] | None = None, start: int = 0) -> pd.DataFrame:
    """``n`` valid rows as text (ids from ``start``); ``bad`` maps a 0-based row to (column, broken value)."""
    frame = pd.DataFrame(
        {
            "claim_id": [f"c{i:05d}" for i in range(start, start + n)],
            "amount": [f"{10 + i % 97}.5" for i in range(n)],
            "channel": ["online", "phone"] * (n // 2) + ["online"] * (n % 2),
            "is_fraud": [str(i % 2) for i in range(n)],
        }
    )
    for row, (column, value) in (bad or {}).items():
        frame.loc[row, column] = value
    return frame


def ingest(tmp_path: Path, source: Path, run_id: str = "run-1", **kwargs: Any) -> IngestResult:
    """Ingest everything under ``source`` into ``tmp_path``/curated, as a run called ``run_id``."""
    kwargs.setdefault("schema", SCHEMA)
    result = ingest_dataset(
        objects=list_source_objects(FS, str(source)),
        curated_uri=str(tmp_path / "curated") + "/",
        quarantine_uri=str(tmp_path / "quarantine" / run_id) + "/",
        storage_options=None,
        run_id=run_id,
        **kwargs,
    )
    # what is stored agrees with what is reported: nothing overwritten, nothing left over
    assert result.rows_in == result.rows_curated + result.rows_quarantined
    assert len(quarantined(tmp_path, run_id)) == result.rows_quarantined
    recorded = load_manifest(FS, result.manifest_uri).entries.values()
    stored = len(curated(tmp_path)) if list((tmp_path / "curated").rglob("*.parquet")) else 0
    assert stored == sum(entry.rows_curated for entry in recorded)
    return result


def curated(tmp_path: Path) -> pd.DataFrame:
    return dd.read_parquet(str(tmp_path / "curated"), dataset={"partitioning": None}).compute()


def quarantined(tmp_path: Path, run_id: str | None = None) -> pd.DataFrame:
    root = tmp_path / "quarantine" / (run_id or "")
    files = sorted(p for p in root.rglob("*.parquet") if "rejected" not in p.parts)
    frames = [pd.read_parquet(f) for f in files]
    return pd.concat(frames, ignore_index=True).sort_values(["_source", "_row"], ignore_index=True) if frames else pd.DataFrame()


def assert_conserved(result: IngestResult) -> None:
    assert result.rows_in == result.rows_curated + result.rows_quarantined


# --- listing -----------------------------------------------------------------------------


def test_listing_keeps_data_files_and_warns_about_the_rest(raw: Path, caplog: pytest.LogCaptureFixture) -> None:
    names = ("a.csv", "b.CSV.gz", "c.tsv", "d.jsonl", "e.ndjson", "f.json", "g.parquet", "i.csv.bz2", "j.jsonl.zst")
    for name in (*names, "README.md", "_SUCCESS", "k.parquet.gz"):
        (raw / name).write_bytes(b"x")
    (raw / "nested").mkdir()
    (raw / "nested" / "h.csv").write_bytes(b"xy")
    with caplog.at_level(logging.WARNING, logger="updraft.ingest"):
        objects = list_source_objects(FS, str(raw) + "/")
    assert [Path(o.uri).name for o in objects] == [*names, "h.csv"]  # sorted by key: nested/ last
    assert [o.compression for o in objects] == [None, "gzip", None, None, None, None, None, "bz2", "zstd", None]
    assert objects[-1].size == 2 and objects[-1].key.endswith("nested/h.csv")
    assert "skipping 3 files" in caplog.text and "README.md" in caplog.text and "k.parquet.gz" in caplog.text


def test_source_can_name_a_single_file(raw: Path) -> None:
    claims(3).to_csv(raw / "one.csv", index=False)
    claims(3).to_csv(raw / "two.csv", index=False)
    objects = list_source_objects(FS, str(raw / "one.csv"))
    assert [Path(o.uri).name for o in objects] == ["one.csv"]


@pytest.mark.parametrize("content", [None, "notes.txt"], ids=["missing-prefix", "no-data-files"])
def test_no_data_files_says_where_it_looked(raw: Path, content: str | None) -> None:
    if content:
        (raw / content).write_text("hello")
    source = str(raw / "claims") + "/" if content is None else str(raw) + "/"
    with pytest.raises(DataError) as caught:
        list_source_objects(FS, source)
    assert str(caught.value) == (
        f"no CSV, JSON-lines or Parquet files under {source}; upload data there or fix 'source'"
    )


def test_file_slug_is_stable_readable_and_safe_for_parquet_readers() -> None:
    slug = file_slug("raw/claims/2026=11/_claims 01.csv")
    assert slug == file_slug("raw/claims/2026=11/_claims 01.csv")
    assert slug != file_slug("raw/other/_claims 01.csv")
    assert slug.startswith("claims_01_csv-") and "=" not in slug and "/" not in slug


def test_local_files_get_a_version_tag_that_changes_when_the_file_is_replaced(raw: Path) -> None:
    claims(2).to_csv(raw / "a.csv", index=False)
    (before,) = list_source_objects(FS, str(raw))
    assert before == SourceObject(uri=str(raw / "a.csv"), key=str(raw / "a.csv"), size=(raw / "a.csv").stat().st_size, etag=before.etag)
    assert before.format == "csv" and not before.compressed and before.etag.startswith("local-")
    claims(3).to_csv(raw / "a.csv", index=False)
    (after,) = list_source_objects(FS, str(raw))
    assert after.etag != before.etag


# --- ingest --------------------------------------------------------------------------


def test_csv_rows_are_split_into_curated_and_quarantine_with_row_numbers(tmp_path: Path, raw: Path) -> None:
    bad = {0: ("amount", "-12.5"), 1234: ("channel", "fax"), 2998: ("amount", "lots"), 2999: ("is_fraud", "2")}
    claims(3000, bad).assign(extra="ignored").to_csv(raw / "claims.csv", index=False)
    result = ingest(tmp_path, raw, blocksize=20_000)  # several blocks, read in parallel

    assert (result.files, result.rows_in, result.rows_curated, result.rows_quarantined) == (1, 3000, 2996, 4)
    # the blocks' small pieces are merged: one curated file, not one per block
    assert [p.name for p in (tmp_path / "curated").rglob("*.parquet")] == ["part-00000.parquet"]
    frame = curated(tmp_path)
    assert len(frame) == 2996 and frame["claim_id"].is_unique
    assert list(frame.columns) == ["claim_id", "amount", "channel", "is_fraud"]
    assert frame["amount"].dtype == "float64" and frame["is_fraud"].dtype == "int64"

    rows = quarantined(tmp_path).set_index("_row")
    assert rows["_reason"].to_dict() == {
        1: "amount: greater_than(0) failed for '-12.5'",
        1235: "channel: isin(['online', 'phone']) failed for 'fax'",
        2999: "amount: coerce_dtype('float64') failed for 'lots'",
        3000: "is_fraud: isin([0, 1]) failed for '2'",
    }
    assert rows.loc[1235, "claim_id"] == "c01234" and rows.loc[1235, "extra"] == "ignored"
    assert set(rows["_source"]) == {str(raw / "claims.csv")}


def test_json_lines_and_parquet_inputs_are_validated_alike(tmp_path: Path, raw: Path) -> None:
    frame = claims(1000, {10: ("amount", "-1"), 900: ("channel", "mail")})
    frame.iloc[:500].to_json(raw / "a.jsonl", orient="records", lines=True)
    typed = frame.iloc[500:].assign(is_fraud=lambda f: f["is_fraud"].astype(int))
    typed.to_parquet(raw / "b.parquet", row_group_size=100)
    result = ingest(tmp_path, raw, blocksize=4_000)

    assert (result.rows_in, result.rows_curated, result.rows_quarantined) == (1000, 998, 2)
    rows = quarantined(tmp_path).set_index("claim_id")
    assert rows.loc["c00010", "_row"] == 11 and rows.loc["c00010", "_source"].endswith("a.jsonl")
    assert rows.loc["c00900", "_row"] == 401 and rows.loc["c00900", "_source"].endswith("b.parquet")
    assert sorted(curated(tmp_path)["claim_id"]) == sorted(set(frame["claim_id"]) - {"c00010", "c00900"})


def test_gzip_csv_and_tsv_are_read(tmp_path: Path, raw: Path) -> None:
    with gzip.open(raw / "a.csv.gz", "wt") as handle:
        claims(300, {5: ("is_fraud", "maybe")}).to_csv(handle, index=False)
    claims(200, start=300).to_csv(raw / "b.tsv", sep="\t", index=False)
    result = ingest(tmp_path, raw)
    assert (result.rows_in, result.rows_curated, result.rows_quarantined) == (500, 499, 1)
    assert quarantined(tmp_path)["_row"].tolist() == [6]


def test_file_missing_a_contract_column_is_quarantined_whole(tmp_path: Path, raw: Path) -> None:
    claims(50).to_csv(raw / "good.csv", index=False)
    claims(40, start=50).drop(columns=["channel"]).to_csv(raw / "old-format.csv", index=False)
    result = ingest(tmp_path, raw, settings=LENIENT)
    assert (result.rows_in, result.rows_curated, result.rows_quarantined) == (90, 50, 40)
    rows = quarantined(tmp_path)
    assert set(rows["_reason"]) == {"channel: column required by the contract is missing from the file"}
    assert rows["_row"].tolist() == list(range(1, 41))


def test_unreadable_files_are_rejected_copied_and_the_rest_ingested(tmp_path: Path, raw: Path) -> None:
    claims(100).to_csv(raw / "good.csv", index=False)
    junk = bytes(range(256)) * 64
    (raw / "junk.csv").write_bytes(junk)
    (raw / "empty.csv").write_bytes(b"")
    (raw / "fake.parquet").write_bytes(b"PAR1 not really")

    result = ingest(tmp_path, raw, blocksize=10_000)

    assert (result.files, result.rows_in, result.rows_curated, result.rows_quarantined) == (4, 100, 100, 0)
    reasons = {Path(r["uri"]).name: r["reason"] for r in result.files_rejected}
    assert reasons == {
        "empty.csv": "the file is empty",
        "fake.parquet": reasons["fake.parquet"],
        "junk.csv": "cannot be read as CSV: its header line holds NUL bytes (a binary file?)",
    }
    assert reasons["fake.parquet"].startswith("cannot be read as Parquet: ")
    copies = {Path(r["copy"]).name: Path(r["copy"]) for r in result.files_rejected}
    assert copies["junk.csv"].read_bytes() == junk
    assert all(str(p).startswith(str(tmp_path / "quarantine" / "run-1" / "rejected")) for p in copies.values())
    assert sorted(curated(tmp_path)["claim_id"]) == [f"c{i:05d}" for i in range(100)]


def test_nothing_valid_is_an_error_that_points_at_the_quarantine(tmp_path: Path, raw: Path) -> None:
    claims(5).assign(is_fraud="3").to_csv(raw / "claims.csv", index=False)
    with pytest.raises(DataError) as caught:
        ingest(tmp_path, raw, settings=LENIENT)
    message = str(caught.value)
    assert message.startswith("no valid rows to curate: all 5 rows failed the contract")
    assert str(tmp_path / "quarantine" / "run-1") in message
    assert len(quarantined(tmp_path)) == 5
    assert not (tmp_path / "curated").exists() and not (tmp_path / "curated.manifest.json").exists()


def test_only_unreadable_files_is_an_error_that_says_why(tmp_path: Path, raw: Path) -> None:
    (raw / "a.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError) as caught:
        ingest(tmp_path, raw)
    message = str(caught.value)
    assert "1 of 1 files could not be read and were copied to " in message
    assert "a.parquet: cannot be read as Parquet" in message
    assert (tmp_path / "quarantine" / "run-1" / "rejected").is_dir()


def test_a_distributed_client_gives_the_same_result(tmp_path: Path, raw: Path) -> None:
    from tasks.compute import dask_client

    claims(400, {3: ("amount", "0")}).to_csv(raw / "a.csv", index=False)
    (raw / "b.csv").write_bytes(b"\xff\xfe\x00junk")
    text = claims(1000, start=400).to_csv(index=False).splitlines()
    text[900] += ",surplus"
    (raw / "c.csv").write_text("\n".join(text) + "\n")
    with dask_client(n_workers=2) as client:
        result = ingest(tmp_path, raw, client=client, blocksize=5_000)
    assert (result.rows_in, result.rows_curated, result.rows_quarantined) == (1400, 1398, 2)
    assert [Path(r["uri"]).name for r in result.files_rejected] == ["b.csv"]
    assert quarantined(tmp_path)[["_row", "_reason"]].values.tolist() == [
        [4, "amount: greater_than(0) failed for '0'"],
        [900, "row has 5 fields, header has 4"],
    ]
    assert len(curated(tmp_path)) == 1398


def test_csv_saved_by_a_spreadsheet_with_a_byte_order_mark_is_read(tmp_path: Path, raw: Path) -> None:
    (raw / "export.csv").write_bytes(claims(3).to_csv(index=False).encode("utf-8-sig"))
    result = ingest(tmp_path, raw)
    assert (result.rows_curated, result.rows_quarantined) == (3, 0)
    assert curated(tmp_path)["claim_id"].tolist() == ["c00000", "c00001", "c00002"]


def test_json_blocks_that_differ_in_keys_or_types_are_judged_row_by_row(tmp_path: Path, raw: Path) -> None:
    lines = [f'{{"claim_id": "c{i}", "amount": 5.5, "channel": "phone", "is_fraud": 0}}' for i in range(300)]
    lines += [f'{{"claim_id": "d{i}", "channel": "online", "is_fraud": 1}}' for i in range(300)]  # no amount
    lines[550] = '{"claim_id": "d250", "amount": "lots", "channel": "online", "is_fraud": 1}'
    (raw / "claims.jsonl").write_text("\n".join(lines) + "\n")
    with gzip.open(raw / "more.jsonl.gz", "wt") as handle:
        handle.write('{"claim_id": "g1", "amount": 1, "channel": "phone", "is_fraud": 0}\n')
    result = ingest(tmp_path, raw, blocksize=4_000)
    assert (result.rows_in, result.rows_curated, result.rows_quarantined) == (601, 600, 1)
    frame = curated(tmp_path)
    assert frame.loc[frame["claim_id"].str.startswith("d"), "amount"].isna().all()
    assert quarantined(tmp_path)[["_row", "_reason"]].values.tolist() == [
        [551, "amount: coerce_dtype('float64') failed for 'lots'"]
    ]


def test_staging_and_manifest_stay_outside_the_curated_folder(tmp_path: Path, raw: Path) -> None:
    claims(10).to_csv(raw / "a.csv", index=False)
    result = ingest(tmp_path, raw)
    assert result.manifest_uri == str(tmp_path / "curated") + ".manifest.json"
    assert Path(result.manifest_uri).is_file()
    assert not (tmp_path / "curated.staging").exists() or not any((tmp_path / "curated.staging").iterdir())
    assert all(p.suffix == ".parquet" for p in (tmp_path / "curated").rglob("*") if p.is_file())
