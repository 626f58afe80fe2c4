"""`updraft demo` leaves nothing running; `updraft up` serves any AWS client until interrupted."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import boto3
import pytest
import requests

from tests.e2e.conftest import UPDRAFT, run_cli

pytestmark = pytest.mark.e2e


def test_demo_runs_everything_and_stops_what_it_started(isolated_home: Path) -> None:
    result = run_cli("demo", "--rows", "4000", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["target"] == "embedded"
    ingest = summary["ingest"]
    assert ingest["rows_in"] == 4000 == ingest["rows_curated"] + ingest["rows_quarantined"]
    assert summary["evaluate"]["passed"] is True
    demo = summary["demo"]
    assert len(demo["predictions"]) == 5 and demo["endpoint_deleted"] is True
    # The endpoint the demo started is gone, and so is its server.
    assert json.loads(run_cli("endpoint", "list", "--json").stdout) == []
    with pytest.raises(requests.ConnectionError):
        requests.get(summary["deploy"]["url"].replace("/invocations", "/ping"), timeout=5)
    # Nothing it started is still running: no endpoint server, no Dask worker, no Prefect server.
    assert processes_started_under(isolated_home) == []
    # The human summary goes to stderr when --json is not given; here the JSON went to stdout only.
    assert "updraft run" not in result.stdout


def test_run_embedded_uploads_local_files(isolated_home: Path, tmp_path: Path) -> None:
    from tasks.sample import write_sample

    sample = write_sample(tmp_path / "sample", n_rows=3000)
    data_dir = sample.data_files[0].parent
    result = run_cli("run", "--config", str(sample.config), "--embedded", "--upload", str(data_dir), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["target"] == "embedded"
    assert summary["ingest"]["files"] == len(sample.data_files)
    assert summary["ingest"]["rows_in"] == 3000
    # Without --upload the fresh endpoint is empty, and the error says what to do.
    bare = run_cli("run", "--config", str(sample.config), "--embedded", timeout=120)
    assert bare.returncode == 2 and "pass --upload DATA" in bare.stderr.strip().splitlines()[-1]


def processes_started_under(home: Path) -> list[str]:
    """Command lines of live processes whose environment carries this test's UPDRAFT_HOME."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.environ().get("UPDRAFT_HOME") == str(home) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(" ".join(proc.info["cmdline"] or []))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_up_serves_s3_until_interrupted(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    proc = subprocess.Popen([UPDRAFT, "up", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                requests.get(url, timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.2)
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
            monkeypatch.setenv(key, value)
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        s3.create_bucket(Bucket="up-test")
        s3.put_object(Bucket="up-test", Key="a.txt", Body=b"x")
        assert [o["Key"] for o in s3.list_objects_v2(Bucket="up-test")["Contents"]] == ["a.txt"]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"listening on http://127.0.0.1:{port}" in err
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}", timeout=2)
