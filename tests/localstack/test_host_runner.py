"""The LocalStack runner (localstack/host.py) and the init hook, without LocalStack.

These run in every ``make test``: what the runner decides before and around LocalStack
(which port, which environment the tests get, when it is ready, what it says when it is
not), and what the init hook creates, exec'd the way LocalStack runs it, against the
embedded endpoint. ``make localstack-test`` runs the same code against a real LocalStack.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest

from tasks.aws.embedded import EmbeddedAWS

REPO = Path(__file__).resolve().parents[2]
HOOK = REPO / "localstack" / "init" / "ready.d" / "10-updraft-resources.py"


def load_runner() -> ModuleType:
    # By path: `localstack` is LocalStack's own package name, so the folder is not imported as one.
    spec = importlib.util.spec_from_file_location("updraft_localstack_host", REPO / "localstack" / "host.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


host = load_runner()


class FakeLocalStack(BaseHTTPRequestHandler):
    """Answers LocalStack's two readiness routes with whatever the test put in ``routes``."""

    routes: dict[str, Any] = {}

    def do_GET(self) -> None:  # http.server calls it by this name
        body = self.routes.get(self.path)
        if body is None:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def fake_localstack() -> Iterator[tuple[str, dict[str, Any]]]:
    routes: dict[str, Any] = {"/_localstack/health": {"services": {"s3": "available"}}}
    handler = type("Handler", (FakeLocalStack,), {"routes": routes})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", routes
    server.shutdown()
    server.server_close()


def init_state(**states: str) -> dict[str, Any]:
    return {"completed": True, "scripts": [{"stage": "READY", "name": n, "state": s} for n, s in states.items()]}


def running() -> None:
    return None


def test_ready_once_healthy_and_every_hook_succeeded(fake_localstack: tuple[str, dict[str, Any]]) -> None:
    endpoint, routes = fake_localstack
    routes["/_localstack/init/ready"] = init_state(**{HOOK.name: "SUCCESSFUL"})
    host.wait_until_ready(endpoint, running)


def test_a_failed_hook_is_named(fake_localstack: tuple[str, dict[str, Any]]) -> None:
    endpoint, routes = fake_localstack
    routes["/_localstack/init/ready"] = init_state(**{HOOK.name: "ERROR"})
    with pytest.raises(host.LocalStackError, match=f"init hook\\(s\\) failed: {HOOK.name}"):
        host.wait_until_ready(endpoint, running)


def test_hooks_that_never_ran_point_at_the_mount(fake_localstack: tuple[str, dict[str, Any]]) -> None:
    endpoint, routes = fake_localstack
    routes["/_localstack/init/ready"] = init_state()
    with pytest.raises(host.LocalStackError, match=f"{HOOK.name} did not run: is .*ready.d mounted"):
        host.wait_until_ready(endpoint, running)


def test_a_localstack_that_died_is_reported_at_once() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening: refused
        with pytest.raises(host.LocalStackError, match="stopped before it answered: exit status 1"):
            host.wait_until_ready(dead, lambda: "exit status 1")


def test_tests_get_localstack_and_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "production")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "real-session")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAREALKEY")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://s3.example.com")
    monkeypatch.setenv("UPDRAFT_TARGET", "aws")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    env = host.client_environment("http://127.0.0.1:4566")
    assert env["AWS_ENDPOINT_URL"] == env["LOCALSTACK_ENDPOINT"] == "http://127.0.0.1:4566"
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("test", "test")
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert not {"AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "UPDRAFT_TARGET"} & set(env)


def test_port_4566_when_free_else_another(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        with pytest.raises(host.LocalStackError, match=f"port {busy} on 127.0.0.1 is in use"):
            host.choose_port(busy)
        monkeypatch.setattr(host, "DEFAULT_PORT", busy)
        other = host.choose_port(0)
    assert other != busy and host.port_is_free(other)


def test_no_python_313_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LOCALSTACK_PYTHON", sys.executable)
    if sys.version_info[:2] != (3, 13):
        with pytest.raises(host.LocalStackError, match="is not a working Python 3.13"):
            host.find_python313()
    monkeypatch.delenv("LOCALSTACK_PYTHON")
    monkeypatch.setenv("PATH", str(tmp_path))  # no python3.13, no pyenv
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(host.LocalStackError, match=r"pyenv install 3\.13\) or set LOCALSTACK_PYTHON"):
        host.find_python313()


def run_hook() -> None:
    """Exactly as LocalStack's PythonScriptRunner does: exec with empty globals."""
    exec(compile(HOOK.read_text(), str(HOOK), "exec"), {})


def test_init_hook_creates_bucket_and_role_and_can_run_again(
    embedded_aws: EmbeddedAWS, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("UPDRAFT_LOCALSTACK_BUCKETS", "team-data, team-models")
    monkeypatch.setenv("UPDRAFT_LOCALSTACK_PROJECT", "churn")
    run_hook()
    run_hook()  # LocalStack with persistence, or a developer, may run it twice
    s3 = boto3.client("s3")
    assert {"team-data", "team-models"} <= {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert all(s3.get_public_access_block(Bucket="team-data")["PublicAccessBlockConfiguration"].values())
    iam = boto3.client("iam")
    role = iam.get_role(RoleName="churn-sagemaker-execution")["Role"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    policy = iam.get_role_policy(RoleName="churn-sagemaker-execution", PolicyName="updraft-project-data")["PolicyDocument"]
    objects = next(s for s in policy["Statement"] if s["Sid"] == "ReadWriteProjectObjects")
    assert objects["Resource"] == ["arn:aws:s3:::team-data/*", "arn:aws:s3:::team-models/*"]
    out = capsys.readouterr().out
    assert "created bucket team-data" in out and "bucket team-data already exists" in out
    assert "role arn:aws:iam::" in out and "already exists" in out
