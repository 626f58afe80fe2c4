"""Ingest through an S3 that throttles (503 SlowDown) and fails (500 InternalError) now and then.

The faults come from a proxy in front of the embedded endpoint (tests/aws/faulty_s3.py)
and hit every kind of request ingest makes: listings, HEADs, ranged GETs, Parquet PUTs.
botocore's retry settings (tasks/aws/target.py) must absorb them: the run
succeeds and every input row comes back exactly once, curated or quarantined. Where
botocore gives up, the stage's Prefect retries run it again, still without duplicates.
The target is ``local`` (an ``AWS_ENDPOINT_URL`` that is not updraft's own moto), so
retries are on, as they are against LocalStack or AWS.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import dask.dataframe as dd
import fsspec
import pandas as pd
import pytest
from prefect import flow

from tasks.aws.embedded import EmbeddedAWS
from tasks.aws.target import Target, resolve_target
from tasks.compute import dask_client
from tasks.config import load_config
from tasks.contracts import load_contract
from tasks.ingest import ingest_dataset, ingest_stage, list_source_objects
from tasks.layout import Layout
from tasks.sample import generate_claims, write_sample
from tests.aws.faulty_s3 import FaultyS3Proxy

BUCKET = "updraft-faults"
SOURCE = "raw/claims/"
N_ROWS = 3000
N_FILES = 3


@dataclasses.dataclass
class FaultyEndpoint:
    aws: EmbeddedAWS
    proxy: FaultyS3Proxy
    target: Target  # the ``local`` target, reaching S3 through the proxy

    def direct_options(self) -> dict[str, Any]:
        """Storage options that bypass the proxy: for checking what was written."""
        return {"client_kwargs": {"endpoint_url": self.aws.url, "region_name": self.target.region}}


@contextlib.contextmanager
def _faulty_endpoint(**plan: Any) -> Iterator[FaultyEndpoint]:
    """An embedded endpoint behind a proxy with the fault ``plan``, as the ``local`` target.

    The proxy starts disabled, so a test uploads its data before turning the faults on.
    """
    with EmbeddedAWS() as aws, FaultyS3Proxy(aws.url, **plan) as proxy:
        # EmbeddedAWS restores the environment when it stops, so set and restore these
        # inside it (monkeypatch would restore them after it, to a dead endpoint).
        saved = {name: os.environ.get(name) for name in ("AWS_ENDPOINT_URL", "AWS_MAX_ATTEMPTS")}
        os.environ["AWS_ENDPOINT_URL"] = proxy.url
        os.environ.pop("AWS_MAX_ATTEMPTS", None)  # the embedded target's "fail fast" setting
        try:
            proxy.enabled = False
            target = resolve_target("local")
            assert target.endpoint_url == proxy.url
            boto3.client("s3", endpoint_url=aws.url).create_bucket(Bucket=BUCKET)
            yield FaultyEndpoint(aws=aws, proxy=proxy, target=target)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


@pytest.fixture()
def faulty_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultyEndpoint]:
    """Throttling and 5xx on every kind of request: the first two of each kind, then 15%."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    with _faulty_endpoint(fail_first=2, fraction=0.15, seed=3) as endpoint:
        yield endpoint


def _upload_claims(endpoint: FaultyEndpoint, tmp_path: Path) -> tuple[Any, pd.DataFrame]:
    """The sample claims as ``N_FILES`` CSV files plus their contract, uploaded past the proxy.

    Returns the pipeline config and the input frame (``attrs["invalid_claim_ids"]`` are the
    rows the contract must quarantine).
    """
    sample = write_sample(tmp_path / "sample", n_rows=N_ROWS, n_files=N_FILES)
    frame = generate_claims(N_ROWS)  # write_sample's rows, with the ids of the invalid ones
    s3 = boto3.client("s3", endpoint_url=endpoint.aws.url)
    for path in sample.data_files:
        s3.upload_file(str(path), BUCKET, SOURCE + path.name)
    s3.upload_file(str(sample.contract), BUCKET, "contracts/claims.yaml")
    config = dataclasses.replace(
        load_config(sample.config), bucket=BUCKET, contract=f"s3://{BUCKET}/contracts/claims.yaml"
    )
    return config, frame


def _read_back(endpoint: FaultyEndpoint, curated_uri: str, quarantine_uri: str) -> tuple[list[str], list[str]]:
    """Claim ids in the curated dataset and in the quarantine, as stored (not deduplicated)."""
    options = endpoint.direct_options()
    curated = dd.read_parquet(curated_uri, storage_options=options).compute()
    fs, _ = fsspec.core.url_to_fs(quarantine_uri, **options)
    pieces = [p for p in fs.find(quarantine_uri) if p.endswith(".parquet")]
    quarantined = [
        claim_id
        for piece in pieces
        for claim_id in pd.read_parquet(f"s3://{piece}", storage_options=options)["claim_id"].tolist()
    ]
    return curated["claim_id"].tolist(), quarantined


def _assert_faults_hit_every_kind(proxy: FaultyS3Proxy) -> None:
    by_kind = proxy.injected_by_kind()
    assert {"GET", "LIST", "HEAD", "PUT"} <= {kind for kind, n in by_kind.items() if n}, proxy.injected
    assert proxy.injected_by_code()["SlowDown"] > 0 and proxy.injected_by_code()["InternalError"] > 0
    assert sum(proxy.forwarded.values()) > sum(by_kind.values())  # most requests still went through


def _assert_every_row_once(
    frame: pd.DataFrame, curated_ids: list[str], quarantined_ids: list[str], result: Any
) -> None:
    invalid = set(frame.attrs["invalid_claim_ids"])
    assert sorted(curated_ids + quarantined_ids) == sorted(frame["claim_id"])  # none lost, none twice
    assert sorted(quarantined_ids) == sorted(invalid)
    assert (result.rows_in, result.rows_curated, result.rows_quarantined) == (
        N_ROWS,
        N_ROWS - len(invalid),
        len(invalid),
    )


def test_ingest_on_dask_workers_retries_throttling_and_5xx(faulty_endpoint: FaultyEndpoint, tmp_path: Path) -> None:
    config, frame = _upload_claims(faulty_endpoint, tmp_path)
    target = faulty_endpoint.target
    layout = Layout(config.bucket, config.name)
    with dask_client(n_workers=2) as client:  # the pipeline's cluster: worker processes, one thread each
        faulty_endpoint.proxy.enabled = True
        fs = target.filesystem()
        result = ingest_dataset(
            objects=list_source_objects(fs, config.source_uri),
            schema=load_contract(config.contract, fs),
            curated_uri=layout.curated(),
            quarantine_uri=layout.quarantine("run-faults"),
            storage_options=target.storage_options(),
            client=client,
            blocksize=32 * 1024,  # several blocks per file: many ranged GETs and PUTs
        )
        faulty_endpoint.proxy.enabled = False

    _assert_faults_hit_every_kind(faulty_endpoint.proxy)
    assert result.files == N_FILES and result.files_rejected == []
    curated_ids, quarantined_ids = _read_back(faulty_endpoint, layout.curated(), layout.quarantine("run-faults"))
    _assert_every_row_once(frame, curated_ids, quarantined_ids, result)


def test_ingest_stage_on_the_default_scheduler_retries_throttling_and_5xx(
    faulty_endpoint: FaultyEndpoint, tmp_path: Path
) -> None:
    config, frame = _upload_claims(faulty_endpoint, tmp_path)
    faulty_endpoint.proxy.enabled = True
    # the whole stage: bucket check, contract read and listing go through the faults too
    result = ingest_stage.fn(config, faulty_endpoint.target, "run-faults")
    faulty_endpoint.proxy.enabled = False

    _assert_faults_hit_every_kind(faulty_endpoint.proxy)
    assert result.files == N_FILES and result.files_rejected == []
    curated_ids, quarantined_ids = _read_back(faulty_endpoint, result.curated_uri, result.quarantine_uri)
    _assert_every_row_once(frame, curated_ids, quarantined_ids, result)


@flow(name="ingest-under-faults")
def _ingest_in_a_flow(config: Any, target: Target, run_id: str) -> tuple[Any, Any]:
    """The stage as the pipeline runs it, with its own retries and retry condition; no
    retry delay, to keep the test short. Returns its task run's id and its result."""
    state = ingest_stage.with_options(retry_delay_seconds=0)(config, target, run_id, return_state=True)
    return state.state_details.task_run_id, state.result()


def test_an_outage_longer_than_botocore_retries_is_retried_by_prefect_without_duplicates(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """When botocore gives up (here at once: one attempt), the stage's Prefect retries run it
    again; what the failed attempt had already written must not come back twice."""
    from prefect.client.orchestration import get_client
    from prefect.testing.utilities import prefect_test_harness

    for name in ("AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    # the third object written fails with a 500, after two have been written
    outage = {"kinds": (), "fail_numbers": {"PUT": [3]}, "codes": ["InternalError"]}
    with prefect_test_harness(), _faulty_endpoint(**outage) as endpoint:
        config, frame = _upload_claims(endpoint, tmp_path)
        os.environ["AWS_MAX_ATTEMPTS"] = "1"  # restored by _faulty_endpoint
        endpoint.proxy.enabled = True
        task_run_id, result = _ingest_in_a_flow(config, endpoint.target, "run-outage")
        endpoint.proxy.enabled = False

        with get_client(sync_client=True) as prefect:
            assert prefect.read_task_run(task_run_id).run_count == 2  # failed once, retried once
        assert endpoint.proxy.injected == {("PUT", "InternalError"): 1}
        curated_ids, quarantined_ids = _read_back(endpoint, result.curated_uri, result.quarantine_uri)
        _assert_every_row_once(frame, curated_ids, quarantined_ids, result)


def test_each_block_of_a_text_file_costs_one_get(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block is fetched with the start of the next in one ranged GET, not the three of a
    seek-read-seek (one per line end, one for the bytes): on S3 each is a round trip."""
    from tasks.ingest.readers import block_offsets, read_text_block

    for name in ("AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    text = "".join(f"row-{i},{'x' * (i % 50)}\n" for i in range(20_000)).encode()
    with _faulty_endpoint() as endpoint:
        boto3.client("s3", endpoint_url=endpoint.aws.url).put_object(Bucket=BUCKET, Key="raw/lines.csv", Body=text)
        options = endpoint.target.storage_options()
        (obj,) = list_source_objects(endpoint.target.filesystem(), f"s3://{BUCKET}/raw/")
        before = endpoint.proxy.forwarded["GET"]
        offsets = block_offsets(obj.size, 64 * 1024)
        blocks = [read_text_block(obj, options, offset, 64 * 1024) for offset in offsets]
        gets = endpoint.proxy.forwarded["GET"] - before
    assert b"".join(blocks) == text
    assert len(offsets) > 5 and gets == len(offsets)
