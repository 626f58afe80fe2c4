"""A local endpoint updated under continuous load: no request fails, the URL stays, the new model answers.

Several client threads keep posting single-row CSV requests, each over its own keep-alive
session (as a real client does) while the endpoint is redeployed with a model that
answers differently; then the endpoint is redeployed with a model that cannot start.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest
import requests

from tasks.deploy import local_endpoints as le
from tasks.errors import StageError
from tests.unit.test_local_endpoints import _broken_tar
from tests.unit.test_serve import write_model_tar

ROW = b"35,120,hospital\n"
CLIENTS = 6


def _gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not le._pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "home"
    monkeypatch.setenv("UPDRAFT_HOME", str(path))
    yield path
    for state in (path / "endpoints").glob("*/endpoint.json"):
        recorded = json.loads(state.read_text())
        pid = recorded["pid"]
        le._remove_handover(recorded.get("handover"))  # a killed server cannot remove its own
        if le._is_server(pid):
            os.killpg(pid, signal.SIGKILL)
            _gone(pid)
    for pid in list(le._started):
        if le._pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)
            _gone(pid)


class Load:
    """Client threads posting one row each, back to back, until stopped; every outcome counted."""

    def __init__(self, url: str, clients: int = CLIENTS) -> None:
        self.url = url
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answers: Counter[float] = Counter()
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        with requests.Session() as session:  # keep-alive, as real clients do
            while not self.stop.is_set():
                try:
                    response = session.post(self.url, data=ROW, headers={"Content-Type": "text/csv"}, timeout=10)
                    outcome = round(response.json()["predictions"][0], 6) if response.status_code == 200 else None
                    problem = None if outcome is not None else f"HTTP {response.status_code}: {response.text[:200]}"
                except (requests.RequestException, ValueError, KeyError) as exc:
                    outcome, problem = None, f"{type(exc).__name__}: {exc}"
                with self.lock:
                    if problem is None:
                        self.answers[outcome] += 1
                    else:
                        self.failures.append(problem)

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=15)

    def total(self) -> int:
        with self.lock:
            return sum(self.answers.values()) + len(self.failures)

    def wait_for(self, more: int, within_s: float = 20.0) -> None:
        target = self.total() + more
        deadline = time.monotonic() + within_s
        while self.total() < target and time.monotonic() < deadline:
            time.sleep(0.01)


def _prediction(url: str) -> float:
    response = requests.post(url, data=ROW, headers={"Content-Type": "text/csv"}, timeout=10)
    assert response.status_code == 200, response.text
    return round(response.json()["predictions"][0], 6)


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.parametrize("workers", [1, 2])
def test_an_update_under_load_fails_no_request_and_keeps_the_url(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", str(workers))
    first = le.deploy_local_endpoint(
        name="fraud", model_tar=write_model_tar(tmp_path / "a.tar.gz"), model_uri="s3://b/models/r1/model.tar.gz", run_id="r1"
    )
    old_processes = [first.pid, *_children(first.pid)]
    if Path("/proc/self/task").exists():
        assert len(old_processes) == workers  # the main process and its workers, all on the endpoint's socket
    old_answer = _prediction(first.url)
    flipped = write_model_tar(tmp_path / "b.tar.gz", flip=True)

    with Load(first.url) as load:
        load.wait_for(200)  # the clients are in full swing, their connections kept alive
        second = le.deploy_local_endpoint(name="fraud", model_tar=flipped, model_uri="s3://b/models/r2/model.tar.gz", run_id="r2")
        load.wait_for(200)  # and keep going on the new server

        if workers == 1:  # a model that cannot start changes nothing (once is enough: it is slow to fail)
            with pytest.raises(StageError, match="the previous version keeps serving"):
                le.deploy_local_endpoint(name="fraud", model_tar=_broken_tar(tmp_path), model_uri="s3://b/r3.tar.gz", run_id="r3")
            load.wait_for(200)

    assert load.failures == [], f"{len(load.failures)} of {load.total()} requests failed: {load.failures[:5]}"
    new_answer = _prediction(second.url)
    assert new_answer != pytest.approx(old_answer, abs=1e-3)  # the flipped model answers now
    assert set(load.answers) == {old_answer, new_answer}  # every answer came from one of the two models
    assert load.answers[new_answer] >= 150  # after the switch the clients went on, answered by the new model

    assert (second.url, second.port) == (first.url, first.port)  # the same URL throughout
    assert second.pid != first.pid and all(_gone(pid) for pid in old_processes)  # the old servers are gone
    [listed] = le.list_local_endpoints()
    assert (listed.pid, listed.run_id, listed.alive) == (second.pid, "r2", True)

    log = (home / "endpoints" / "fraud" / "server.log").read_text()
    assert "handed the endpoint's listening socket to the next server" in log
    assert f"Finished server process [{first.pid}]" in log  # a clean, drained shutdown, not a kill


def test_the_port_survives_a_crashed_server(home: Path, tmp_path: Path) -> None:
    first = le.deploy_local_endpoint(
        name="fraud", model_tar=write_model_tar(tmp_path / "a.tar.gz"), model_uri="s3://b/models/r1/model.tar.gz", run_id="r1"
    )
    os.killpg(first.pid, signal.SIGKILL)  # no handover possible: the port is bound again
    assert _gone(first.pid)
    second = le.deploy_local_endpoint(
        name="fraud", model_tar=write_model_tar(tmp_path / "b.tar.gz", flip=True), model_uri="s3://b/r2.tar.gz", run_id="r2"
    )
    assert second.url == first.url
    _prediction(second.url)
    assert le.delete_local_endpoint("fraud") is True
    assert _gone(second.pid)
    assert not Path(second.handover).exists()
