"""Code written for SageMaker, unchanged, against the embedded endpoint: invoke_endpoint reaches the real model.

Every test drives plain boto3 (``boto3.client("sagemaker-runtime").invoke_endpoint``)
as a user's application would; only the environment (``AWS_ENDPOINT_URL``) points it here.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
import requests
from botocore.exceptions import ClientError

from tasks.aws.embedded import EmbeddedAWS
from tasks.deploy import local_endpoints as le
from tasks.deploy.sagemaker_endpoints import record_endpoint
from tasks.modelbundle import load_model_bundle
from tests.unit.test_serve import CSV_BODY, ROWS, write_model_tar

ROLE = "arn:aws:iam::123456789012:role/sagemaker"


def _stop_all() -> None:
    for pid in list(le._started):
        if le._pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while le._pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "home"
    monkeypatch.setenv("UPDRAFT_HOME", str(path))
    yield path
    _stop_all()
    for state in (path / "endpoints").glob("*/endpoint.json"):
        le._remove_handover(json.loads(state.read_text()).get("handover"))  # a killed server cannot remove its own


@pytest.fixture()
def embedded(home: Path) -> Iterator[EmbeddedAWS]:
    with EmbeddedAWS() as aws:
        yield aws


@pytest.fixture()
def fraud(embedded: EmbeddedAWS, tmp_path: Path) -> Path:
    """A local endpoint named ``fraud`` serving a real model; the model's folder is returned."""
    tar = write_model_tar(tmp_path / "model.tar.gz")
    le.deploy_local_endpoint(name="fraud", model_tar=tar, model_uri="s3://bkt/models/r1/model.tar.gz", run_id="r1")
    return tar.parent / "model.tar.gz.d"


def test_invoke_endpoint_answers_with_the_local_models_predictions(fraud: Path) -> None:
    runtime = boto3.client("sagemaker-runtime")
    response = runtime.invoke_endpoint(EndpointName="fraud", ContentType="text/csv", Body=CSV_BODY)

    expected = load_model_bundle(fraud).predict_frame(ROWS)
    assert response["ContentType"] == "application/json"
    assert response["InvokedProductionVariant"] == "AllTraffic"
    assert json.loads(response["Body"].read())["predictions"] == pytest.approx(list(expected), abs=1e-6)

    as_csv = runtime.invoke_endpoint(EndpointName="fraud", ContentType="text/csv", Accept="text/csv", Body=CSV_BODY)
    assert as_csv["ContentType"].startswith("text/csv")
    lines = as_csv["Body"].read().decode().split()
    assert [float(x) for x in lines] == pytest.approx(list(expected), abs=1e-6)


def test_a_request_the_model_refuses_is_sagemakers_model_error(fraud: Path) -> None:
    runtime = boto3.client("sagemaker-runtime")
    with pytest.raises(runtime.exceptions.ModelError) as raised:
        runtime.invoke_endpoint(EndpointName="fraud", ContentType="text/csv", Body=b"35,120\n")
    error = raised.value.response
    assert error["OriginalStatusCode"] == 400
    assert "row 1 has 2 fields" in error["OriginalMessage"]
    assert error["Error"]["Message"].startswith("Received client error (400) from primary with message")
    assert error["LogStreamArn"].endswith(":log-group:/aws/sagemaker/Endpoints/fraud")

    with pytest.raises(runtime.exceptions.ModelError) as raised:
        runtime.invoke_endpoint(EndpointName="fraud", ContentType="text/plain", Body=b"hello")
    assert raised.value.response["OriginalStatusCode"] == 415


def test_an_unknown_endpoint_is_a_validation_error(embedded: EmbeddedAWS) -> None:
    runtime = boto3.client("sagemaker-runtime")
    with pytest.raises(ClientError) as raised:
        runtime.invoke_endpoint(EndpointName="nope", ContentType="text/csv", Body=CSV_BODY)
    assert raised.value.response["Error"]["Code"] == "ValidationError"
    assert raised.value.response["Error"]["Message"] == "Endpoint nope of account 123456789012 not found."
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_a_stopped_server_is_service_unavailable_and_says_so(fraud: Path) -> None:
    [info] = le.list_local_endpoints()
    os.killpg(info.pid, signal.SIGKILL)
    _stop_all()
    runtime = boto3.client("sagemaker-runtime")
    with pytest.raises(ClientError) as raised:
        runtime.invoke_endpoint(EndpointName="fraud", ContentType="text/csv", Body=CSV_BODY)
    assert raised.value.response["Error"]["Code"] == "ServiceUnavailable"
    assert "not running" in raised.value.response["Error"]["Message"]


def test_an_endpoint_updraft_does_not_serve_keeps_motos_answer(embedded: EmbeddedAWS) -> None:
    sm = boto3.client("sagemaker")
    record_endpoint(
        sm, name="theirs", model_name="theirs-1", image_uri="their-image:1", model_data_url="s3://bkt/m.tar.gz",
        role_arn=ROLE, instance_type="ml.m5.large",
    )
    response = boto3.client("sagemaker-runtime").invoke_endpoint(EndpointName="theirs", ContentType="text/csv", Body=b"1")
    assert response["Body"].read() == b"body"  # moto's canned answer: nothing local serves it


class _Echo(http.server.BaseHTTPRequestHandler):
    """A stand-in model server that answers with what it was sent."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        answer = json.dumps(
            {
                "path": self.path,
                "content_type": self.headers.get("Content-Type"),
                "accept": self.headers.get("Accept"),
                "custom": self.headers.get("X-Amzn-SageMaker-Custom-Attributes"),
                "body": body.decode(),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-echo")
        self.send_header("X-Amzn-SageMaker-Custom-Attributes", "seen=yes")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


def test_headers_pass_through_both_ways(home: Path) -> None:
    echo = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{echo.server_address[1]}/invocations"
    try:
        with EmbeddedAWS(resolve_endpoint=lambda name: url if name == "echo" else None):
            response = boto3.client("sagemaker-runtime").invoke_endpoint(
                EndpointName="echo", ContentType="application/json", Accept="text/csv", CustomAttributes="trace=1",
                Body=b'{"instances": []}',
            )
    finally:
        echo.shutdown()
        echo.server_close()
    sent = json.loads(response["Body"].read())
    assert sent == {
        "path": "/invocations", "content_type": "application/json", "accept": "text/csv", "custom": "trace=1",
        "body": '{"instances": []}',
    }
    assert response["ContentType"] == "application/x-echo"
    assert response["CustomAttributes"] == "seen=yes"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_updraft_up_answers_invoke_endpoint_for_endpoints_deployed_by_another_process(home: Path, tmp_path: Path) -> None:
    """LocalStack-style: ``updraft up`` in one process, the deploy in another, the client in a third."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    server = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "up", "--port", str(port)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
                break
            except requests.ConnectionError:
                assert server.poll() is None and time.monotonic() < deadline, "updraft up did not start"
                time.sleep(0.2)
        tar = write_model_tar(tmp_path / "model.tar.gz")
        le.deploy_local_endpoint(name="fraud", model_tar=tar, model_uri="s3://bkt/m.tar.gz", run_id="r1")
        runtime = boto3.client(
            "sagemaker-runtime", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )
        response = runtime.invoke_endpoint(EndpointName="fraud", ContentType="text/csv", Body=CSV_BODY)
        expected = load_model_bundle(tar.parent / "model.tar.gz.d").predict_frame(ROWS)
        assert json.loads(response["Body"].read())["predictions"] == pytest.approx(list(expected), abs=1e-6)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
