"""Fixtures shared by every tier: an embedded AWS endpoint and a bucket on it."""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from tasks.aws.embedded import EmbeddedAWS
from tasks.aws.target import Target, resolve_target


@pytest.fixture(scope="session", autouse=True)
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Prefect server for the session (see tests/prefect_server.py); flows in this process
    and in every CLI subprocess use it instead of each starting a temporary server.
    A PREFECT_API_URL set by the caller is used as it is."""
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    from tests.prefect_server import prefect_server

    with prefect_server(tmp_path_factory.mktemp("prefect-server")) as url:
        os.environ["PREFECT_API_URL"] = url
        try:
            yield url
        finally:
            os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(autouse=True)
def isolated_updraft_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run folders and endpoint state of every test live in a temp folder, never in the checkout or ~."""
    root = tmp_path_factory.mktemp("updraft")
    monkeypatch.setenv("UPDRAFT_RUNS_DIR", str(root / "runs"))
    monkeypatch.setenv("UPDRAFT_HOME", str(root / "home"))


@pytest.fixture()
def embedded_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedAWS]:
    """A fresh moto server for one test; the environment is restored when it stops."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    with EmbeddedAWS() as aws:
        yield aws


@pytest.fixture()
def embedded_target(embedded_aws: EmbeddedAWS) -> Target:
    return resolve_target("embedded")


@pytest.fixture()
def moto_s3_bucket(embedded_target: Target) -> str:
    """An empty bucket on the embedded endpoint; its name."""
    name = "updraft-test"
    embedded_target.client("s3").create_bucket(Bucket=name)
    return name
