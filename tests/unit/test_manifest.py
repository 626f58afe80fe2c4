"""The ingest manifest: what a rerun skips, what it reads again, and the API ``--watch`` polls."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandera.pandas as pa
import pytest

from tasks.errors import DataError
from tasks.ingest import (
    Manifest,
    ManifestEntry,
    SourceObject,
    diff_objects,
    list_source_objects,
    load_manifest,
    write_manifest,
)
from tests.unit.test_ingest import (
    FS,
    SCHEMA,
    assert_conserved,
    claims,
    curated,
    ingest,
    quarantined,
)


def _entry(key: str, etag: str = "e1", size: int = 10) -> ManifestEntry:
    return ManifestEntry(
        key=key, uri=f"s3://b/{key}", etag=etag, size=size, status="ingested", rows_in=3, rows_curated=2,
        rows_quarantined=1, run_id="r1", ingested_at="2026-11-26T10:00:00+00:00", outputs=(f"s3://b/curated/{key}.parquet",),
    )


# --- the API --------------------------------------------------------------------------------


def test_a_missing_manifest_is_empty_and_a_written_one_reads_back(tmp_path: Path) -> None:
    uri = str(tmp_path / "manifests" / "claims" / "manifest.json")
    assert load_manifest(FS, uri) == Manifest()
    manifest = Manifest().merged([_entry("raw/a.csv"), _entry("raw/b.csv")], run_id="r1", fingerprint="f1")
    write_manifest(FS, uri, manifest)
    assert load_manifest(FS, uri) == manifest
    assert [p.name for p in Path(uri).parent.iterdir()] == ["manifest.json"]  # no temporary left behind
    data = json.loads(Path(uri).read_text())
    assert data["format"] == "updraft.manifest/1" and data["run_id"] == "r1"
    assert data["objects"]["raw/a.csv"]["etag"] == "e1" and data["objects"]["raw/a.csv"]["rows_quarantined"] == 1


def test_an_unreadable_manifest_says_how_to_start_over(tmp_path: Path) -> None:
    uri = tmp_path / "manifest.json"
    uri.write_text("{not json")
    with pytest.raises(DataError, match=rf"the ingest manifest {uri} is unreadable .*; delete it to ingest every object again"):
        load_manifest(FS, str(uri))


def test_diff_tells_new_changed_and_unchanged_objects_apart() -> None:
    manifest = Manifest(entries={k: _entry(k) for k in ("raw/a.csv", "raw/b.csv", "raw/c.csv", "raw/gone.csv")})
    objects = [
        SourceObject(uri="s3://b/raw/a.csv", key="raw/a.csv", size=10, etag="e1"),  # as recorded
        SourceObject(uri="s3://b/raw/b.csv", key="raw/b.csv", size=10, etag="e2"),  # re-uploaded
        SourceObject(uri="s3://b/raw/c.csv", key="raw/c.csv", size=11, etag="e1"),  # another size
        SourceObject(uri="s3://b/raw/d.csv", key="raw/d.csv", size=10, etag="e1"),  # new
        SourceObject(uri="s3://b/raw/e.csv", key="raw/e.csv", size=10, etag=None),  # new, no tag
    ]
    diff = diff_objects(manifest, objects)
    assert [o.key for o in diff.new] == ["raw/d.csv", "raw/e.csv"]
    assert [o.key for o in diff.changed] == ["raw/b.csv", "raw/c.csv"]
    assert [o.key for o in diff.unchanged] == ["raw/a.csv"]
    assert [o.key for o in diff.to_ingest] == ["raw/b.csv", "raw/c.csv", "raw/d.csv", "raw/e.csv"]
    untagged = Manifest(entries={"raw/e.csv": _entry("raw/e.csv", etag=None)})
    assert diff_objects(untagged, objects[4:]).changed == objects[4:]  # no tag: never skipped on a guess


# --- reruns -----------------------------------------------------------------------------------


def test_a_rerun_ingests_nothing_and_says_so(tmp_path: Path, raw: Path, caplog: pytest.LogCaptureFixture) -> None:
    claims(300, {4: ("amount", "-1")}).to_csv(raw / "a.csv", index=False)
    claims(200, start=300).to_json(raw / "b.jsonl", orient="records", lines=True)
    (raw / "broken.parquet").write_bytes(b"nope")
    first = ingest(tmp_path, raw)
    assert (first.files, first.files_skipped, first.rows_in, len(first.files_rejected)) == (3, 0, 500, 1)

    entries = load_manifest(FS, first.manifest_uri).entries
    a = entries[str(raw / "a.csv")]
    assert (a.status, a.rows_in, a.rows_curated, a.rows_quarantined, a.run_id) == ("ingested", 300, 299, 1, "run-1")
    assert a.etag == list_source_objects(FS, str(raw / "a.csv"))[0].etag and a.size == (raw / "a.csv").stat().st_size
    assert a.ingested_at and all(Path(p).is_file() for p in a.outputs)
    assert a.quarantine == str(tmp_path / "quarantine" / "run-1") + "/" + Path(a.outputs[0]).parent.name + "/"
    assert entries[str(raw / "broken.parquet")].status == "rejected"
    assert entries[str(raw / "broken.parquet")].reason.startswith("cannot be read as Parquet")

    with caplog.at_level(logging.INFO, logger="updraft.ingest"):
        again = ingest(tmp_path, raw, "run-2")
    assert (again.files, again.files_skipped, again.rows_in, again.rows_curated, again.files_rejected) == (0, 3, 0, 0, [])
    assert "nothing new to ingest" in caplog.text
    assert len(curated(tmp_path)) == 499 and not (tmp_path / "quarantine" / "run-2").exists()


def test_a_changed_object_replaces_its_earlier_rows_and_leaves_the_others(tmp_path: Path, raw: Path) -> None:
    claims(300).to_csv(raw / "a.csv", index=False)
    claims(200, start=1000).to_csv(raw / "b.csv", index=False)
    ingest(tmp_path, raw, blocksize=2_000)
    b_outputs = load_manifest(FS, str(tmp_path / "curated.manifest.json")).entries[str(raw / "b.csv")].outputs
    b_written = [os.stat(p).st_mtime_ns for p in b_outputs]

    claims(120, {0: ("is_fraud", "5")}, start=5000).to_csv(raw / "a.csv", index=False)  # re-uploaded upstream
    result = ingest(tmp_path, raw, "run-2")

    assert_conserved(result)
    assert (result.files, result.files_skipped, result.rows_in, result.rows_curated) == (1, 1, 120, 119)
    frame = curated(tmp_path)
    assert sorted(frame["claim_id"]) == [f"c{i:05d}" for i in range(1000, 1200)] + [f"c{i:05d}" for i in range(5001, 5120)]
    assert [os.stat(p).st_mtime_ns for p in b_outputs] == b_written  # b.csv's files were not touched
    entries = load_manifest(FS, result.manifest_uri).entries
    assert (entries[str(raw / "a.csv")].run_id, entries[str(raw / "b.csv")].run_id) == ("run-2", "run-1")
    assert quarantined(tmp_path, "run-2")["_row"].tolist() == [1]


def test_a_new_object_is_ingested_alone(tmp_path: Path, raw: Path) -> None:
    claims(100).to_csv(raw / "a.csv", index=False)
    ingest(tmp_path, raw)
    claims(50, start=100).to_csv(raw / "b.csv", index=False)
    result = ingest(tmp_path, raw, "run-2")
    assert (result.files, result.files_skipped, result.rows_in, result.rows_curated) == (1, 1, 50, 50)
    assert sorted(curated(tmp_path)["claim_id"]) == [f"c{i:05d}" for i in range(150)]


def test_a_rejected_file_is_not_read_again_until_it_changes(tmp_path: Path, raw: Path) -> None:
    claims(10).to_csv(raw / "a.csv", index=False)
    (raw / "b.csv").write_bytes(b"")
    assert len(ingest(tmp_path, raw).files_rejected) == 1
    assert ingest(tmp_path, raw, "run-2").files_skipped == 2
    claims(5, start=10).to_csv(raw / "b.csv", index=False)  # fixed upstream
    result = ingest(tmp_path, raw, "run-3")
    assert (result.files, result.rows_curated, result.files_rejected) == (1, 5, [])
    assert load_manifest(FS, result.manifest_uri).entries[str(raw / "b.csv")].status == "ingested"


def test_a_changed_contract_ingests_every_object_again(tmp_path: Path, raw: Path, caplog: pytest.LogCaptureFixture) -> None:
    claims(100, {3: ("amount", "0")}).to_csv(raw / "a.csv", index=False)
    claims(100, start=100).to_csv(raw / "b.csv", index=False)
    assert ingest(tmp_path, raw).rows_curated == 199
    looser = pa.DataFrameSchema({**SCHEMA.columns, "amount": pa.Column(float, pa.Check.ge(0), nullable=True)}, coerce=True)
    with caplog.at_level(logging.WARNING, logger="updraft.ingest"):
        result = ingest(tmp_path, raw, "run-2", schema=looser)
    assert "the contract or the ingest settings changed" in caplog.text
    assert (result.files, result.files_skipped, result.rows_curated) == (2, 0, 200)
    assert len(curated(tmp_path)) == 200
