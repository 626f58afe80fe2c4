"""What the contract and the ``ingest:`` settings decide: uniqueness across a run, the
quarantine threshold, columns the contract does not know, and date-partitioned output."""

from __future__ import annotations

import logging
from pathlib import Path

import dask.dataframe as dd
import pandas as pd
import pandera.pandas as pa
import pyarrow.parquet as pq
import pytest

from tasks.config import Features, IngestConfig, SplitConfig
from tasks.errors import ContractError, DataError
from tasks.features.preprocess import preprocess_dataset
from tasks.ingest import file_slug, load_manifest
from tasks.ingest.readers import block_offsets
from tasks.ingest.writer import NO_DATE
from tests.unit.test_ingest import (
    FS,
    LENIENT,
    SCHEMA,
    assert_conserved,
    claims,
    curated,
    ingest,
    quarantined,
)

UNIQUE = pa.DataFrameSchema(
    {**SCHEMA.columns, "claim_id": pa.Column(str, nullable=True, unique=True)}, coerce=True
)
DATED = pa.DataFrameSchema(
    {**SCHEMA.columns, "submitted": pa.Column("datetime64[ns]", nullable=True)}, coerce=True
)


# --- unique: true ---------------------------------------------------------------------------


def test_unique_columns_are_checked_across_blocks_and_files_of_a_run(tmp_path: Path, raw: Path) -> None:
    first = claims(2000)
    first.loc[1900, "claim_id"] = "c00005"  # same file, another block
    first.loc[[10, 11], "claim_id"] = None  # nulls are not duplicates of each other
    first.to_csv(raw / "a.csv", index=False)
    second = claims(100, start=5000)
    second.loc[50, "claim_id"] = "c00700"  # another file
    second.to_csv(raw / "b.csv", index=False)

    result = ingest(tmp_path, raw, schema=UNIQUE, blocksize=5_000, settings=LENIENT)

    assert_conserved(result)
    assert (result.rows_in, result.rows_quarantined) == (2100, 4)
    rows = quarantined(tmp_path)
    assert rows[["_source", "_row", "claim_id"]].values.tolist() == [
        [str(raw / "a.csv"), 6, "c00005"],
        [str(raw / "a.csv"), 701, "c00700"],
        [str(raw / "a.csv"), 1901, "c00005"],
        [str(raw / "b.csv"), 51, "c00700"],
    ]
    assert set(rows["_reason"]) == {
        "claim_id: field_uniqueness failed for 'c00005' (2 rows of this run hold it)",
        "claim_id: field_uniqueness failed for 'c00700' (2 rows of this run hold it)",
    }
    frame = curated(tmp_path)
    assert len(frame) == 2096 and frame["claim_id"].dropna().is_unique and frame["claim_id"].isna().sum() == 2
    assert "_row" not in frame.columns


def test_uniqueness_and_partitions_come_out_the_same_on_dask_workers(tmp_path: Path, raw: Path) -> None:
    from tasks.compute import dask_client

    schema = pa.DataFrameSchema({**DATED.columns, "claim_id": pa.Column(str, unique=True)}, coerce=True)
    frame = _dated(1500)
    frame.loc[1400, "claim_id"] = "c00003"
    frame.to_csv(raw / "a.csv", index=False)
    _dated(200, start=1490).to_json(raw / "b.jsonl", orient="records", lines=True)  # ids 1490-1499 twice
    with dask_client(n_workers=2) as client:
        result = ingest(
            tmp_path, raw, schema=schema, client=client, blocksize=6_000, settings=IngestConfig(partition_by="submitted")
        )
    assert_conserved(result)
    assert (result.rows_in, result.rows_quarantined) == (1700, 22)
    assert sorted(set(quarantined(tmp_path)["claim_id"])) == ["c00003"] + [f"c{i:05d}" for i in range(1490, 1500)]
    exact = dd.read_parquet(str(tmp_path / "curated"), dataset={"partitioning": None}).compute()
    assert len(exact) == 1678 and exact["claim_id"].is_unique and "_row" not in exact.columns
    assert len(list((tmp_path / "curated").rglob("*.parquet"))) == 10  # a file per day and source file


def test_values_whose_hashes_collide_are_told_apart(tmp_path: Path, raw: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Values are compared by hash first; a shared hash alone never quarantines a row."""
    import numpy as np

    from tasks.ingest import writer

    monkeypatch.setattr(writer, "_hashes", lambda values: np.zeros(len(values), dtype=np.uint64))  # all collide
    first = claims(600)
    first.loc[500, "claim_id"] = "c00005"
    first.to_csv(raw / "a.csv", index=False)
    claims(100, start=5000).to_csv(raw / "b.csv", index=False)

    result = ingest(tmp_path, raw, schema=UNIQUE, blocksize=5_000)

    assert (result.rows_in, result.rows_quarantined) == (700, 2)
    assert quarantined(tmp_path)[["_row", "claim_id"]].values.tolist() == [[6, "c00005"], [501, "c00005"]]
    assert len(curated(tmp_path)) == 698


@pytest.fixture()
def finishing(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """Every piece stays its own file (none counts as small); records the pieces each
    finishing task reads, so a test sees which ones were rewritten."""
    import tasks.ingest as ingest_module
    from tasks.ingest import writer

    monkeypatch.setattr(writer, "SMALL_FILE_BYTES", 0)
    groups: list[tuple[str, ...]] = []
    finish = ingest_module.finish_group

    def recording(group, job, duplicates):  # type: ignore[no-untyped-def]
        groups.append(tuple(p.path for p in group.pieces))
        return finish(group, job, duplicates)

    monkeypatch.setattr(ingest_module, "finish_group", recording)
    return groups


def _block_of(path: Path, row: int, blocksize: int) -> int:
    """The block holding data row ``row`` (1-based, the header is line 0) of a CSV file."""
    lines = path.read_bytes().splitlines(keepends=True)
    return sum(len(line) for line in lines[:row]) // blocksize


def _curated_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "curated").rglob("*.parquet"))


def test_without_repeated_values_the_curated_files_are_left_as_written(
    tmp_path: Path, raw: Path, finishing: list[tuple[str, ...]]
) -> None:
    claims(2000).to_csv(raw / "a.csv", index=False)
    blocks = len(block_offsets((raw / "a.csv").stat().st_size, 5_000))

    result = ingest(tmp_path, raw, schema=UNIQUE, blocksize=5_000)

    assert (result.rows_curated, result.rows_quarantined) == (2000, 0)
    assert finishing == []  # no piece read again, none rewritten
    files = _curated_files(tmp_path)
    assert len(files) == blocks > 1
    assert all(pq.read_schema(f).names == list(UNIQUE.columns) for f in files)  # no _row
    assert curated(tmp_path)["claim_id"].tolist() == [f"c{i:05d}" for i in range(2000)]


def test_only_the_curated_files_holding_repeated_values_are_rewritten(
    tmp_path: Path, raw: Path, finishing: list[tuple[str, ...]]
) -> None:
    first = claims(2000)
    first.loc[1900, "claim_id"] = "c00005"  # same file, another block
    first.loc[[10, 11], "claim_id"] = None  # nulls are not duplicates of each other
    first.to_csv(raw / "a.csv", index=False)
    claims(3, start=700).to_csv(raw / "b.csv", index=False)  # every row repeats one of a.csv's
    blocks = len(block_offsets((raw / "a.csv").stat().st_size, 5_000))

    result = ingest(tmp_path, raw, schema=UNIQUE, blocksize=5_000, settings=LENIENT)

    assert_conserved(result)
    assert (result.rows_in, result.rows_curated, result.rows_quarantined) == (2003, 1995, 8)
    rows = quarantined(tmp_path)
    assert rows[["_source", "_row", "claim_id", "_reason"]].values.tolist() == [
        [str(raw / "a.csv"), 6, "c00005", "claim_id: field_uniqueness failed for 'c00005' (2 rows of this run hold it)"],
        *[
            [str(raw / "a.csv"), 701 + i, f"c{700 + i:05d}", f"claim_id: field_uniqueness failed for 'c{700 + i:05d}' (2 rows of this run hold it)"]
            for i in range(3)
        ],
        [str(raw / "a.csv"), 1901, "c00005", "claim_id: field_uniqueness failed for 'c00005' (2 rows of this run hold it)"],
        *[
            [str(raw / "b.csv"), 1 + i, f"c{700 + i:05d}", f"claim_id: field_uniqueness failed for 'c{700 + i:05d}' (2 rows of this run hold it)"]
            for i in range(3)
        ],
    ]
    a, b = file_slug(str(raw / "a.csv")), file_slug(str(raw / "b.csv"))
    holding = {f"{a}/part-{_block_of(raw / 'a.csv', row, 5_000):05d}.parquet" for row in (6, 701, 702, 703, 1901)}
    assert sorted(path for group in finishing for path in group) == sorted(holding | {f"{b}/part-00000.parquet"})
    files = _curated_files(tmp_path)
    assert len(files) == blocks and not (tmp_path / "curated" / b).exists()  # b.csv's rows all went
    assert all("_row" not in pq.read_schema(f).names for f in files)
    frame = curated(tmp_path)
    assert len(frame) == 1995 and frame["claim_id"].dropna().is_unique and frame["claim_id"].isna().sum() == 2


# --- max_quarantine_fraction -------------------------------------------------------------------


def test_too_many_bad_rows_fail_the_run_after_writing_the_quarantine(tmp_path: Path, raw: Path) -> None:
    claims(100, {i: ("channel", "fax") for i in range(30)}).to_csv(raw / "a.csv", index=False)
    with pytest.raises(DataError) as caught:
        ingest(tmp_path, raw, settings=IngestConfig(max_quarantine_fraction=0.25))
    assert str(caught.value) == (
        "30 of 100 rows (30.0%) failed the contract, more than ingest.max_quarantine_fraction (25.0%); nothing was "
        f"curated. The rows and their reasons are in {tmp_path / 'quarantine' / 'run-1'}/: fix the data or the "
        "contract, or raise ingest.max_quarantine_fraction in the config"
    )
    assert len(quarantined(tmp_path, "run-1")) == 30  # nothing lost
    assert not list((tmp_path / "curated").rglob("*.parquet"))
    assert load_manifest(FS, str(tmp_path / "curated.manifest.json")).entries == {}

    # the next run, allowed more, takes the same file again
    result = ingest(tmp_path, raw, "run-2", settings=IngestConfig(max_quarantine_fraction=0.3))
    assert (result.files, result.rows_curated, result.rows_quarantined) == (1, 70, 30)


def test_the_default_threshold_is_a_tenth_of_the_rows(tmp_path: Path, raw: Path) -> None:
    claims(100, {i: ("is_fraud", "9") for i in range(10)}).to_csv(raw / "a.csv", index=False)
    assert ingest(tmp_path, raw).rows_quarantined == 10  # exactly 10% passes
    claims(100, {i: ("is_fraud", "9") for i in range(11)}, start=100).to_csv(raw / "b.csv", index=False)
    with pytest.raises(DataError, match=r"11 of 100 rows \(11.0%\) failed the contract, more than ingest.max_quarantine_fraction \(10.0%\)"):
        ingest(tmp_path, raw, "run-2")


# --- extra_columns --------------------------------------------------------------------------


def test_extra_columns_are_dropped_by_default_with_a_warning(tmp_path: Path, raw: Path, caplog: pytest.LogCaptureFixture) -> None:
    claims(5).assign(note="hello", score="1").to_csv(raw / "a.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="updraft.ingest"):
        ingest(tmp_path, raw)
    assert list(curated(tmp_path).columns) == ["claim_id", "amount", "channel", "is_fraud"]
    assert "dropping columns the contract does not know: note, score" in caplog.text


def test_extra_columns_keep_puts_them_in_curated_as_text(tmp_path: Path, raw: Path) -> None:
    claims(5).assign(note=["a", "b", None, "d", "e"], score=["1", "2", "3", "4", "x"]).to_csv(raw / "a.csv", index=False)
    result = ingest(tmp_path, raw, settings=IngestConfig(extra_columns="keep"))
    frame = curated(tmp_path)
    assert result.rows_curated == 5
    assert list(frame.columns) == ["claim_id", "amount", "channel", "is_fraud", "note", "score"]
    assert frame["note"].tolist()[:2] == ["a", "b"] and pd.isna(frame["note"].iloc[2])
    assert frame["score"].tolist() == ["1", "2", "3", "4", "x"] and frame["amount"].dtype == "float64"


def test_extra_columns_fail_rejects_the_files_that_have_them(tmp_path: Path, raw: Path) -> None:
    claims(5).to_csv(raw / "a.csv", index=False)
    claims(5, start=5).assign(note="x", z="y").to_csv(raw / "b.csv", index=False)
    claims(5, start=10).assign(note="x").to_json(raw / "c.jsonl", orient="records", lines=True)
    result = ingest(tmp_path, raw, settings=IngestConfig(extra_columns="fail"))
    assert (result.rows_in, result.rows_curated) == (5, 5)
    assert {Path(r["uri"]).name: r["reason"] for r in result.files_rejected} == {
        "b.csv": "it has columns the contract does not know: note, z (ingest.extra_columns is 'fail')",
        "c.jsonl": "it has columns the contract does not know: note (ingest.extra_columns is 'fail')",
    }


# --- partition_by -------------------------------------------------------------------------------


def _dated(n: int, start: int = 0) -> pd.DataFrame:
    days = pd.date_range("2026-11-01", periods=5, freq="D")
    frame = claims(n, start=start)
    frame["submitted"] = [f"{days[i % 5].date()} {i % 24:02d}:00:00" for i in range(n)]
    return frame


def test_partition_by_writes_one_folder_per_day_with_few_files(tmp_path: Path, raw: Path) -> None:
    frame = _dated(3000)
    frame.loc[17, "submitted"] = ""  # no date: a folder of its own
    frame.to_csv(raw / "a.csv", index=False)
    _dated(500, start=9000).to_csv(raw / "b.csv", index=False)
    result = ingest(tmp_path, raw, schema=DATED, blocksize=8_000, settings=IngestConfig(partition_by="submitted"))

    assert (result.rows_in, result.rows_curated) == (3500, 3500)
    folders = sorted(p.name for p in (tmp_path / "curated").iterdir())
    assert folders == [f"submitted_day=2026-11-0{d}" for d in range(1, 6)] + [f"submitted_day={NO_DATE}"]
    # each source file's pieces of a day (one per block) are merged into one file
    day = tmp_path / "curated" / "submitted_day=2026-11-03"
    assert len(list(day.glob("*.parquet"))) == 2
    entries = load_manifest(FS, result.manifest_uri).entries
    assert len(entries[str(raw / "a.csv")].outputs) == 6 and len(entries[str(raw / "b.csv")].outputs) == 5

    # the files hold exactly the contract's columns, typed; Hive-style readers add the day
    exact = dd.read_parquet(str(tmp_path / "curated"), dataset={"partitioning": None}).compute()
    assert list(exact.columns) == ["claim_id", "amount", "channel", "is_fraud", "submitted"]
    assert str(exact["submitted"].dtype).startswith("datetime64")
    hive = dd.read_parquet(str(tmp_path / "curated")).compute()
    assert len(hive) == 3500 and "submitted_day" in hive.columns
    on_day = hive[hive["submitted_day"] == "2026-11-03"]
    assert (on_day["submitted"].dt.strftime("%Y-%m-%d") == "2026-11-03").all()


def test_partitioned_curated_data_feeds_preprocess(tmp_path: Path, raw: Path) -> None:
    frame = _dated(600)
    frame["amount"] = [f"{(i * 7919) % 1000 + 1}.0" for i in range(600)]
    frame.to_csv(raw / "a.csv", index=False)
    ingest(tmp_path, raw, schema=DATED, settings=IngestConfig(partition_by="submitted"))
    result = preprocess_dataset(
        curated_uri=str(tmp_path / "curated") + "/",
        features_uri=str(tmp_path / "features") + "/",
        features=Features(numeric=("amount",), categorical=("channel",)),
        kinds={"amount": "numeric", "channel": "categorical", "is_fraud": "categorical"},
        label="is_fraud",
        task="binary_classification",
        split=SplitConfig(),
        input_columns=["amount", "channel"],
        storage_options=None,
    )
    assert sum(result.rows.values()) == 600


@pytest.mark.parametrize(
    ("column", "message"),
    [
        ("when", "ingest.partition_by 'when' is not a column of the contract; its columns are claim_id, amount, channel, is_fraud, submitted"),
        ("channel", f"ingest.partition_by 'channel' must be a datetime column (dtype datetime64[ns] in the contract), but the contract types it as {DATED.columns['channel'].dtype}"),
    ],
)
def test_partition_by_must_name_a_datetime_column_of_the_contract(
    tmp_path: Path, raw: Path, column: str, message: str
) -> None:
    _dated(5).to_csv(raw / "a.csv", index=False)
    with pytest.raises(ContractError) as caught:
        ingest(tmp_path, raw, schema=DATED, settings=IngestConfig(partition_by=column))
    assert str(caught.value) == message
