"""Ingest on local files: every raw row ends up curated or quarantined, and files that cannot
be read are kept whole, never crash the run."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import dask.dataframe as dd
import fsspec
import pandas as pd
import pandera.pandas as pa
import pytest

from tasks.errors import DataError
from tasks.ingest import IngestResult, SourceObject, file_slug, ingest_dataset, list_source_objects

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


def _claims(n: int, bad: dict[int, tuple[str, str]] | None = None) -> pd.DataFrame:
    """``n`` valid rows as text; ``bad`` maps a 0-based row to (column, broken value)."""
    frame = pd.DataFrame(
        {
            "claim_id": [f"c{i:05d}" for i in range(n)],
            "amount": [f"{10 + i % 97}.5" for i in range(n)],
            "channel": ["online", "phone"] * (n // 2) + ["online"] * (n % 2),
            "is_fraud": [str(i % 2) for i in range(n)],
        }
    )
    for row, (column, value) in (bad or {}).items():
        frame.loc[row, column] = value
    return frame


def _ingest(tmp_path: Path, source: Path, **kwargs: object) -> IngestResult:
    return ingest_dataset(
        objects=list_source_objects(FS, str(source)),
        schema=SCHEMA,
        curated_uri=str(tmp_path / "curated") + "/",
        quarantine_uri=str(tmp_path / "quarantine" / "run-1") + "/",
        storage_options=None,
        **kwargs,
    )


def _curated(tmp_path: Path) -> pd.DataFrame:
    return dd.read_parquet(str(tmp_path / "curated")).compute()


def _quarantined(tmp_path: Path) -> pd.DataFrame:
    files = sorted((tmp_path / "quarantine").rglob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()


@pytest.fixture()
def raw(tmp_path: Path) -> Path:
    path = tmp_path / "raw"
    path.mkdir()
    return path


# --- listing -----------------------------------------------------------------------------


def test_listing_keeps_data_files_and_warns_about_the_rest(raw: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("a.csv", "b.CSV.gz", "c.tsv", "d.jsonl", "e.ndjson", "f.json", "g.parquet", "README.md", "_SUCCESS"):
        (raw / name).write_bytes(b"x")
    (raw / "nested").mkdir()
    (raw / "nested" / "h.csv").write_bytes(b"xy")
    with caplog.at_level(logging.WARNING, logger="updraft.ingest"):
        objects = list_source_objects(FS, str(raw) + "/")
    names = [Path(o.uri).name for o in objects]
    assert names == ["a.csv", "b.CSV.gz", "c.tsv", "d.jsonl", "e.ndjson", "f.json", "g.parquet", "h.csv"]
    assert objects[-1].size == 2 and objects[-1].key.endswith("nested/h.csv")
    assert "skipping 2 files" in caplog.text and "README.md" in caplog.text


def test_source_can_name_a_single_file(raw: Path) -> None:
    _claims(3).to_csv(raw / "one.csv", index=False)
    _claims(3).to_csv(raw / "two.csv", index=False)
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


# --- ingest --------------------------------------------------------------------------


def test_csv_rows_are_split_into_curated_and_quarantine_with_row_numbers(tmp_path: Path, raw: Path) -> None:
    bad = {0: ("amount", "-12.5"), 1234: ("channel", "fax"), 2998: ("amount", "lots"), 2999: ("is_fraud", "2")}
    _claims(3000, bad).assign(extra="ignored").to_csv(raw / "claims.csv", index=False)
    result = _ingest(tmp_path, raw, blocksize=20_000)  # several partitions

    assert len(list((tmp_path / "curated").rglob("*.parquet"))) > 2
    assert (result.files, result.rows_in, result.rows_curated, result.rows_quarantined) == (1, 3000, 2996, 4)
    curated = _curated(tmp_path)
    assert len(curated) == 2996 and curated["claim_id"].is_unique
    assert list(curated.columns) == ["claim_id", "amount", "channel", "is_fraud"]
    assert curated["amount"].dtype == "float64" and curated["is_fraud"].dtype == "int64"

    quarantined = _quarantined(tmp_path).set_index("_row")
    assert quarantined["_reason"].to_dict() == {
        1: "amount: greater_than(0) failed for '-12.5'",
        1235: "channel: isin(['online', 'phone']) failed for 'fax'",
        2999: "amount: coerce_dtype('float64') failed for 'lots'",
        3000: "is_fraud: isin([0, 1]) failed for '2'",
    }
    assert quarantined.loc[1235, "claim_id"] == "c01234" and quarantined.loc[1235, "extra"] == "ignored"
    assert set(quarantined["_source"]) == {str(raw / "claims.csv")}


def test_json_lines_and_parquet_inputs_are_validated_alike(tmp_path: Path, raw: Path) -> None:
    frame = _claims(1000, {10: ("amount", "-1"), 900: ("channel", "mail")})
    frame.iloc[:500].to_json(raw / "a.jsonl", orient="records", lines=True)
    typed = frame.iloc[500:].assign(is_fraud=lambda f: f["is_fraud"].astype(int))
    typed.to_parquet(raw / "b.parquet", row_group_size=100)
    result = _ingest(tmp_path, raw, blocksize=4_000)

    assert (result.rows_in, result.rows_curated, result.rows_quarantined) == (1000, 998, 2)
    quarantined = _quarantined(tmp_path).set_index("claim_id")
    assert quarantined.loc["c00010", "_row"] == 11 and quarantined.loc["c00010", "_source"].endswith("a.jsonl")
    assert quarantined.loc["c00900", "_row"] == 401 and quarantined.loc["c00900", "_source"].endswith("b.parquet")
    assert sorted(_curated(tmp_path)["claim_id"]) == sorted(set(frame["claim_id"]) - {"c00010", "c00900"})


def test_gzip_csv_and_tsv_are_read(tmp_path: Path, raw: Path) -> None:
    with gzip.open(raw / "a.csv.gz", "wt") as handle:
        _claims(300, {5: ("is_fraud", "maybe")}).to_csv(handle, index=False)
    _claims(200).to_csv(raw / "b.tsv", sep="\t", index=False)
    result = _ingest(tmp_path, raw)
    assert (result.rows_in, result.rows_curated, result.rows_quarantined) == (500, 499, 1)
    assert _quarantined(tmp_path)["_row"].tolist() == [6]


def test_file_missing_a_contract_column_is_quarantined_whole(tmp_path: Path, raw: Path) -> None:
    _claims(50).to_csv(raw / "good.csv", index=False)
    _claims(40).drop(columns=["channel"]).to_csv(raw / "old-format.csv", index=False)
    result = _ingest(tmp_path, raw)
    assert (result.rows_in, result.rows_curated, result.rows_quarantined) == (90, 50, 40)
    quarantined = _quarantined(tmp_path)
    assert set(quarantined["_reason"]) == {"channel: column required by the contract is missing from the file"}
    assert quarantined["_row"].tolist() == list(range(1, 41))


def test_unreadable_files_are_rejected_copied_and_the_rest_ingested(tmp_path: Path, raw: Path) -> None:
    _claims(100).to_csv(raw / "good.csv", index=False)
    junk = bytes(range(256)) * 64
    (raw / "junk.csv").write_bytes(junk)
    (raw / "empty.csv").write_bytes(b"")
    (raw / "fake.parquet").write_bytes(b"PAR1 not really")
    # well-formed at the start, ragged deep inside: the error surfaces in a later partition
    text = _claims(2000).to_csv(index=False).splitlines()
    text[1800] += ",surplus"  # line 1801 of the file
    (raw / "ragged.csv").write_text("\n".join(text) + "\n")

    result = _ingest(tmp_path, raw, blocksize=10_000)

    assert (result.files, result.rows_in, result.rows_curated, result.rows_quarantined) == (5, 100, 100, 0)
    reasons = {Path(r["uri"]).name: r["reason"] for r in result.files_rejected}
    assert reasons == {
        "empty.csv": "the file is empty",
        "fake.parquet": reasons["fake.parquet"],
        "junk.csv": reasons["junk.csv"],
        "ragged.csv": "cannot be read as CSV: Error tokenizing data. C error: Expected 4 fields in line 1801, saw 5",
    }
    assert reasons["fake.parquet"].startswith("cannot be read as Parquet: ")
    assert reasons["junk.csv"].startswith("cannot be read as CSV: ")
    copies = {Path(r["copy"]).name: Path(r["copy"]) for r in result.files_rejected}
    assert copies["junk.csv"].read_bytes() == junk
    assert all(str(p).startswith(str(tmp_path / "quarantine" / "run-1" / "rejected")) for p in copies.values())
    # no partial output of the ragged file survives
    assert sorted(_curated(tmp_path)["claim_id"]) == [f"c{i:05d}" for i in range(100)]


def test_undecodable_text_is_reported_as_not_utf8(tmp_path: Path, raw: Path) -> None:
    _claims(10).to_csv(raw / "good.csv", index=False)
    (raw / "latin1.csv").write_bytes("claim_id,amount,channel,is_fraud\nc1,1.0,téléphone,0\n".encode("latin-1"))
    result = _ingest(tmp_path, raw)
    assert result.files_rejected[0]["reason"].startswith("cannot be read as CSV: it is not UTF-8 text")


def test_reingesting_a_file_replaces_its_curated_rows(tmp_path: Path, raw: Path) -> None:
    _claims(200).to_csv(raw / "claims.csv", index=False)
    _ingest(tmp_path, raw, blocksize=2_000)
    _claims(150).to_csv(raw / "claims.csv", index=False)  # the object was replaced upstream
    result = _ingest(tmp_path, raw)
    assert result.rows_curated == 150
    curated = _curated(tmp_path)
    assert len(curated) == 150 and curated["claim_id"].is_unique


def test_nothing_valid_is_an_error_that_points_at_the_quarantine(tmp_path: Path, raw: Path) -> None:
    _claims(5).assign(is_fraud="3").to_csv(raw / "claims.csv", index=False)
    with pytest.raises(DataError) as caught:
        _ingest(tmp_path, raw)
    message = str(caught.value)
    assert message.startswith("no valid rows to curate: all 5 rows failed the contract")
    assert str(tmp_path / "quarantine" / "run-1") in message
    assert len(_quarantined(tmp_path)) == 5


def test_only_unreadable_files_is_an_error_that_says_why(tmp_path: Path, raw: Path) -> None:
    (raw / "a.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError) as caught:
        _ingest(tmp_path, raw)
    message = str(caught.value)
    assert "1 of 1 files could not be read and were copied to " in message
    assert "a.parquet: cannot be read as Parquet" in message
    assert (tmp_path / "quarantine" / "run-1" / "rejected").is_dir()


def test_header_only_file_counts_no_rows(tmp_path: Path, raw: Path) -> None:
    _claims(0).to_csv(raw / "header.csv", index=False)
    _claims(7).to_csv(raw / "data.csv", index=False)
    result = _ingest(tmp_path, raw)
    assert (result.files, result.rows_in, result.rows_curated, result.files_rejected) == (2, 7, 7, [])


def test_a_distributed_client_gives_the_same_result(tmp_path: Path, raw: Path) -> None:
    from tasks.compute import dask_client

    _claims(400, {3: ("amount", "0")}).to_csv(raw / "a.csv", index=False)
    (raw / "b.csv").write_bytes(b"\xff\xfe\x00junk")
    text = _claims(1000).to_csv(index=False).splitlines()
    text[900] += ",surplus"
    (raw / "c.csv").write_text("\n".join(text) + "\n")
    with dask_client(n_workers=2) as client:
        result = _ingest(tmp_path, raw, client=client, blocksize=5_000)
    assert (result.rows_in, result.rows_curated, result.rows_quarantined) == (400, 399, 1)
    assert [Path(r["uri"]).name for r in result.files_rejected] == ["b.csv", "c.csv"]
    assert "in line 901" in result.files_rejected[1]["reason"]
    assert _quarantined(tmp_path)["_row"].tolist() == [4]
    assert len(_curated(tmp_path)) == 399  # nothing of the ragged file's early partitions is left


def test_source_objects_from_listing_are_plain_values(raw: Path) -> None:
    _claims(2).to_csv(raw / "a.csv", index=False)
    (obj,) = list_source_objects(FS, str(raw))
    assert obj == SourceObject(uri=str(raw / "a.csv"), key=str(raw / "a.csv"), size=(raw / "a.csv").stat().st_size)
    assert obj.format == "csv" and not obj.compressed


def test_csv_saved_by_a_spreadsheet_with_a_byte_order_mark_is_read(tmp_path: Path, raw: Path) -> None:
    (raw / "export.csv").write_bytes(_claims(3).to_csv(index=False).encode("utf-8-sig"))
    result = _ingest(tmp_path, raw)
    assert (result.rows_curated, result.rows_quarantined) == (3, 0)


def test_json_blocks_that_differ_in_keys_or_types_are_judged_row_by_row(tmp_path: Path, raw: Path) -> None:
    lines = [f'{{"claim_id": "c{i}", "amount": 5.5, "channel": "phone", "is_fraud": 0}}' for i in range(300)]
    lines += [f'{{"claim_id": "d{i}", "channel": "online", "is_fraud": 1}}' for i in range(300)]  # no amount
    lines[550] = '{"claim_id": "d250", "amount": "lots", "channel": "online", "is_fraud": 1}'
    (raw / "claims.jsonl").write_text("\n".join(lines) + "\n")
    with gzip.open(raw / "more.jsonl.gz", "wt") as handle:
        handle.write('{"claim_id": "g1", "amount": 1, "channel": "phone", "is_fraud": 0}\n')
    result = _ingest(tmp_path, raw, blocksize=4_000)
    assert (result.rows_in, result.rows_curated, result.rows_quarantined) == (601, 600, 1)
    curated = _curated(tmp_path)
    assert curated.loc[curated["claim_id"].str.startswith("d"), "amount"].isna().all()
    assert _quarantined(tmp_path)[["_row", "_reason"]].values.tolist() == [
        [551, "amount: coerce_dtype('float64') failed for 'lots'"]
    ]


def test_json_lines_file_with_a_broken_line_is_rejected_whole(tmp_path: Path, raw: Path) -> None:
    _claims(20).to_csv(raw / "good.csv", index=False)
    lines = [f'{{"claim_id": "c{i}", "amount": 5.5, "channel": "phone", "is_fraud": 0}}' for i in range(400)]
    lines[350] = '{"claim_id": "c350", "amount": '
    (raw / "claims.jsonl").write_text("\n".join(lines) + "\n")
    result = _ingest(tmp_path, raw, blocksize=4_000)
    assert [Path(r["uri"]).name for r in result.files_rejected] == ["claims.jsonl"]
    assert result.files_rejected[0]["reason"].startswith("cannot be read as JSON lines: ")
    assert (result.rows_in, result.rows_curated) == (20, 20)
    assert len(_curated(tmp_path)) == 20
