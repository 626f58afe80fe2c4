"""Fixtures shared by every tier: an embedded AWS endpoint and a bucket on it."""

from __future__ import annotations

from typing import Iterator

import pytest

from tasks.aws.embedded import EmbeddedAWS
from tasks.aws.target import Target, resolve_target


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
