"""The ingest stage against S3 on the embedded moto endpoint, as the pipeline runs it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dask.dataframe as dd
import pandas as pd
import pytest

from tasks.aws.target import Target
from tasks.config import load_config
from tasks.errors import DataError, TargetError
from tasks.ingest import ingest_stage, load_manifest
from tasks.layout import Layout
from tasks.sample import write_sample


@pytest.fixture()
def sample_config(tmp_path: Path, embedded_target: Target, moto_s3_bucket: str):
    """The demo sample (900 rows, 18 invalid) plus one junk file, uploaded under raw/claims/."""
    sample = write_sample(tmp_path / "sample", n_rows=900, n_files=3)
    config = dataclasses.replace(load_config(sample.config), bucket=moto_s3_bucket)
    s3 = embedded_target.client("s3")
    for path in sample.data_files:
        s3.upload_file(str(path), moto_s3_bucket, config.source + path.name)
    s3.put_object(Bucket=moto_s3_bucket, Key=config.source + "broken.csv", Body=b"\x00\xff\xfe\xfa" * 100)
    s3.put_object(Bucket=moto_s3_bucket, Key=config.source + "notes.txt", Body=b"not data")
    # the contract itself lives in S3 too, as it would in a shared deployment
    s3.upload_file(str(sample.contract), moto_s3_bucket, "contracts/claims.yaml")
    return dataclasses.replace(config, contract=f"s3://{moto_s3_bucket}/contracts/claims.yaml")


def test_ingest_stage_curates_and_quarantines_in_s3(sample_config, embedded_target: Target) -> None:
    result = ingest_stage.fn(sample_config, embedded_target, "run-1")

    layout = Layout(sample_config.bucket, sample_config.name)
    assert (result.files, result.rows_in, result.rows_curated, result.rows_quarantined) == (4, 900, 882, 18)
    assert result.curated_uri == layout.curated() and result.quarantine_uri == layout.quarantine("run-1")
    assert [r["uri"] for r in result.files_rejected] == [f"s3://{sample_config.bucket}/raw/claims/broken.csv"]

    options = embedded_target.storage_options()
    curated = dd.read_parquet(layout.curated(), storage_options=options).compute()
    assert len(curated) == 882 and curated["claim_id"].is_unique
    assert curated["is_fraud"].dtype == "int64" and set(curated["is_fraud"]) == {0, 1}

    fs = embedded_target.filesystem()
    pieces = [p for p in fs.find(layout.quarantine("run-1")) if p.endswith(".parquet")]
    quarantined = pd.concat([pd.read_parquet(f"s3://{p}", storage_options=options) for p in pieces])
    assert len(quarantined) == 18 and quarantined["_reason"].str.len().gt(0).all()
    assert quarantined["_source"].str.startswith(f"s3://{sample_config.bucket}/raw/claims/claims-").all()
    assert len(curated) + len(quarantined) == result.rows_in
    assert fs.cat(result.files_rejected[0]["copy"]) == b"\x00\xff\xfe\xfa" * 100

    manifest = load_manifest(fs, layout.manifest())
    assert len(manifest.entries) == 4 and manifest.entries["raw/claims/broken.csv"].status == "rejected"
    assert all(fs.exists(uri) for entry in manifest.entries.values() for uri in entry.outputs)
    assert not fs.find(layout.staging())  # committed: nothing left in staging

    # a second run over the same objects reads nothing and says so
    again = ingest_stage.fn(sample_config, embedded_target, "run-2")
    assert (again.files, again.files_skipped, again.rows_in, again.rows_curated) == (0, 4, 0, 0)
    assert len(dd.read_parquet(layout.curated(), storage_options=options).compute()) == 882


def test_a_reuploaded_object_replaces_its_rows_and_only_it_is_read(sample_config, embedded_target: Target) -> None:
    layout = Layout(sample_config.bucket, sample_config.name)
    fs = embedded_target.filesystem()
    first = ingest_stage.fn(sample_config, embedded_target, "run-1")
    s3 = embedded_target.client("s3")
    key = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=sample_config.bucket, Prefix="raw/claims/claims-")["Contents"])[0]
    before = load_manifest(fs, layout.manifest()).entries[key]
    lines = s3.get_object(Bucket=sample_config.bucket, Key=key)["Body"].read().decode().splitlines()
    s3.put_object(Bucket=sample_config.bucket, Key=key, Body="\n".join(lines[:101]) + "\n")  # its first 100 rows only

    second = ingest_stage.fn(sample_config, embedded_target, "run-2")

    assert (second.files, second.files_skipped, second.rows_in) == (1, 3, 100)
    curated = dd.read_parquet(layout.curated(), storage_options=embedded_target.storage_options()).compute()
    assert len(curated) == first.rows_curated - before.rows_curated + second.rows_curated
    assert curated["claim_id"].is_unique
    assert not set(line.split(",", 1)[0] for line in lines[101:]) & set(curated["claim_id"])
    after = load_manifest(fs, layout.manifest()).entries[key]
    etag = s3.head_object(Bucket=sample_config.bucket, Key=key)["ETag"].strip('"')
    assert (after.run_id, after.rows_in, after.etag) == ("run-2", 100, etag) and after.etag != before.etag


def test_empty_source_prefix_says_what_to_do(sample_config, embedded_target: Target) -> None:
    config = dataclasses.replace(sample_config, source="raw/nothing-here/")
    expected = r"no CSV, JSON-lines or Parquet files under s3://updraft-test/raw/nothing-here/"
    with pytest.raises(DataError, match=expected):
        ingest_stage.fn(config, embedded_target, "run-1")


def test_missing_bucket_is_reported_before_anything_is_read(sample_config, embedded_target: Target) -> None:
    config = dataclasses.replace(sample_config, bucket="no-such-bucket")
    with pytest.raises(TargetError, match="bucket 'no-such-bucket' does not exist"):
        ingest_stage.fn(config, embedded_target, "run-1")


def test_source_at_the_bucket_root_does_not_ingest_updraft_outputs(sample_config, embedded_target: Target) -> None:
    config = dataclasses.replace(sample_config, source="")
    first = ingest_stage.fn(config, embedded_target, "run-1")
    # curated/, quarantine/ and manifests/ now exist in the bucket, and Prefect's persisted stage
    # results (tasks/resume.py) would too: none of it is read as input
    embedded_target.client("s3").put_object(
        Bucket=config.bucket, Key=f"{config.stages.results_prefix}{config.name}/run-1/ingest-0a1b", Body=b"pickle"
    )
    second = ingest_stage.fn(config, embedded_target, "run-2")
    assert (first.files, first.rows_in) == (4, 900)
    assert (second.files, second.files_skipped) == (0, 4)


def test_repeated_unique_values_go_to_the_quarantine_in_s3(
    embedded_target: Target, moto_s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the curated files holding a repeated value are rewritten (here each block is a
    file of its own); the keys files the run counts stay out of curated/ and the quarantine."""
    from tasks.ingest import ingest_dataset, list_source_objects, writer
    from tests.unit.test_ingest import LENIENT, claims
    from tests.unit.test_ingest_policies import UNIQUE

    monkeypatch.setattr(writer, "SMALL_FILE_BYTES", 0)
    s3, bucket = embedded_target.client("s3"), moto_s3_bucket
    first = claims(2000)
    first.loc[1900, "claim_id"] = "c00005"
    second = claims(100, start=5000)
    second.loc[50, "claim_id"] = "c00700"
    for name, frame in (("a.csv", first), ("b.csv", second)):
        s3.put_object(Bucket=bucket, Key=f"raw/{name}", Body=frame.to_csv(index=False).encode())
    fs, options = embedded_target.filesystem(), embedded_target.storage_options()

    result = ingest_dataset(
        objects=list_source_objects(fs, f"s3://{bucket}/raw/"),
        schema=UNIQUE,
        curated_uri=f"s3://{bucket}/curated/claims/",
        quarantine_uri=f"s3://{bucket}/quarantine/run-1/",
        storage_options=options,
        blocksize=5_000,
        settings=LENIENT,
    )

    assert (result.rows_in, result.rows_curated, result.rows_quarantined) == (2100, 2096, 4)
    quarantine = [p for p in fs.find(f"{bucket}/quarantine/run-1/")]
    rows = pd.concat([pd.read_parquet(f"s3://{p}", storage_options=options) for p in quarantine])
    assert sorted(rows[["_source", "_row", "claim_id"]].values.tolist()) == [
        [f"s3://{bucket}/raw/a.csv", 6, "c00005"],
        [f"s3://{bucket}/raw/a.csv", 701, "c00700"],
        [f"s3://{bucket}/raw/a.csv", 1901, "c00005"],
        [f"s3://{bucket}/raw/b.csv", 51, "c00700"],
    ]
    committed = fs.find(f"{bucket}/curated/claims/")
    assert all(p.endswith(".parquet") and "/work/" not in p for p in committed + quarantine)
    curated = pd.concat([pd.read_parquet(f"s3://{p}", storage_options=options) for p in committed])
    assert len(curated) == 2096 and curated["claim_id"].is_unique and "_row" not in curated.columns
    assert not fs.find(f"{bucket}/curated/claims.staging/")
