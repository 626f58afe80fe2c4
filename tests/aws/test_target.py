"""Where AWS is: the embedded endpoint and target resolution, as a user's boto3 code sees them."""

from __future__ import annotations

import os

import boto3
import pytest

from tasks.aws.embedded import EmbeddedAWS
from tasks.aws.target import resolve_target
from tasks.errors import TargetError


def test_embedded_endpoint_serves_s3_to_plain_boto3_and_restores_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_PROFILE", "customer-prod")
    with EmbeddedAWS() as aws:
        assert os.environ["AWS_ENDPOINT_URL"] == aws.url
        assert aws.url.startswith("http://127.0.0.1:")
        assert "AWS_PROFILE" not in os.environ
        s3 = boto3.client("s3", region_name="us-east-1")  # no endpoint given: the env decides
        s3.create_bucket(Bucket="bkt")
        s3.put_object(Bucket="bkt", Key="k", Body=b"hello")
        assert s3.get_object(Bucket="bkt", Key="k")["Body"].read() == b"hello"
        target = resolve_target("embedded")
        assert target.kind == "embedded" and target.is_local
        assert target.filesystem().cat("s3://bkt/k") == b"hello"
    assert "AWS_ENDPOINT_URL" not in os.environ
    assert os.environ["AWS_PROFILE"] == "customer-prod"


def test_resolution_follows_aws_endpoint_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UPDRAFT_TARGET", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert resolve_target().kind == "aws"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    target = resolve_target()
    assert target.kind == "local" and target.endpoint_url == "http://127.0.0.1:4566"
    assert target.storage_options()["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:4566"
    with pytest.raises(TargetError, match="unknown target"):
        resolve_target("moon")


def test_missing_bucket_says_how_to_create_it() -> None:
    with EmbeddedAWS():
        with pytest.raises(TargetError, match=r"bucket 'absent' does not exist .*aws s3 mb s3://absent"):
            resolve_target("local").check_bucket("absent")
        with pytest.raises(TargetError, match=r"embedded target, which starts empty: pass --upload"):
            resolve_target("embedded").check_bucket("absent")


def test_unreachable_endpoint_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(TargetError, match="cannot reach the AWS endpoint"):
        resolve_target("local").check_bucket("b")


def test_each_embedded_endpoint_starts_empty() -> None:
    with EmbeddedAWS():
        boto3.client("s3").create_bucket(Bucket="left-behind")
    with EmbeddedAWS():
        assert boto3.client("s3").list_buckets()["Buckets"] == []
