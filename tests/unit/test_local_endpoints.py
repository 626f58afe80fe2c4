"""Local endpoints as real processes on a temporary UPDRAFT_HOME: deploy, call, list, redeploy, delete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from tasks.deploy import local_endpoints as le
from tasks.errors import StageError
from tasks.modelbundle import load_model_bundle
from tests.unit.test_serve import CSV_BODY, ROWS, write_model_tar

REPO = Path(__file__).resolve().parents[2]


def _gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not le._pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private UPDRAFT_HOME; every server started under it is stopped afterwards, whatever happened."""
    path = tmp_path / "home"
    monkeypatch.setenv("UPDRAFT_HOME", str(path))
    yield path
    root = path / "endpoints"
    for state in root.glob("*/endpoint.json") if root.exists() else []:
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


def _predict(url: str) -> list[float]:
    response = requests.post(url, data=CSV_BODY, headers={"Content-Type": "text/csv"}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def test_endpoint_outlives_the_process_that_deployed_it_and_delete_stops_it(home: Path, tmp_path: Path) -> None:
    tar = write_model_tar(tmp_path / "model.tar.gz")
    deployer = (
        "import json, sys\n"
        "from tasks.deploy.local_endpoints import deploy_local_endpoint\n"
        "info = deploy_local_endpoint(name='fraud', model_tar=sys.argv[1], model_uri='s3://b/models/r1/model.tar.gz', run_id='r1')\n"
        "print(json.dumps(info.to_dict()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", deployer, str(tar)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout.strip().splitlines()[-1])  # the server wrote nothing to our stdout
    assert info["url"] == f"http://127.0.0.1:{info['port']}/invocations"

    expected = load_model_bundle(tar.parent / "model.tar.gz.d").predict_frame(ROWS)
    assert _predict(info["url"]) == pytest.approx(expected, abs=1e-7)

    [listed] = le.list_local_endpoints()
    assert (listed.name, listed.url, listed.pid, listed.alive) == ("fraud", info["url"], info["pid"], True)
    assert listed.model_uri == "s3://b/models/r1/model.tar.gz" and listed.run_id == "r1"

    log = (home / "endpoints" / "fraud" / "server.log").read_text()
    assert "POST /invocations" in log and "hospital" not in log  # requests logged, payloads not

    assert le.delete_local_endpoint("fraud") is True
    assert _gone(info["pid"])
    assert le.list_local_endpoints() == []
    assert not (home / "endpoints" / "fraud").exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{info['port']}/ping", timeout=2)


def test_redeploy_switches_to_the_new_model_and_stops_the_old_server(home: Path, tmp_path: Path) -> None:
    first = le.deploy_local_endpoint(
        name="fraud", model_tar=write_model_tar(tmp_path / "a.tar.gz"), model_uri="s3://b/models/r1/model.tar.gz", run_id="r1"
    )
    before = _predict(first.url)
    second = le.deploy_local_endpoint(
        name="fraud", model_tar=write_model_tar(tmp_path / "b.tar.gz", flip=True), model_uri="s3://b/models/r2/model.tar.gz", run_id="r2"
    )
    assert second.pid != first.pid
    assert second.url == first.url  # the listening socket passed to the new server: same port, same URL
    assert _gone(first.pid)
    log = (home / "endpoints" / "fraud" / "server.log").read_text()
    assert f"Finished server process [{first.pid}]" in log  # SIGTERM: a clean shutdown, not a kill
    assert not Path(first.model_dir).exists() and Path(second.model_dir).is_dir()
    after = _predict(second.url)
    assert after != pytest.approx(before, abs=1e-3)  # the flipped model answers now

    [listed] = le.list_local_endpoints()
    assert (listed.pid, listed.run_id, listed.url, listed.alive) == (second.pid, "r2", second.url, True)

    with pytest.raises(StageError, match="the previous version keeps serving"):
        le.deploy_local_endpoint(name="fraud", model_tar=_broken_tar(tmp_path), model_uri="s3://b/r3.tar.gz", run_id="r3")
    [listed] = le.list_local_endpoints()
    assert (listed.pid, listed.run_id, listed.alive) == (second.pid, "r2", True)
    assert _predict(second.url) == after

    assert le.delete_local_endpoint("fraud") is True
    assert _gone(second.pid)


def _broken_tar(tmp_path: Path) -> Path:
    """An archive that extracts fine but whose model the server cannot load."""
    tar = tmp_path / "broken.tar.gz"
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "transform.json").write_text("{}")
    (folder / "metadata.json").write_text("{}")
    (folder / "xgboost-model.json").write_text("this is not a model")
    with tarfile.open(tar, "w:gz") as archive:
        for path in folder.iterdir():
            archive.add(path, arcname=path.name)
    return tar


def test_a_model_that_crashes_the_server_raises_with_the_log_tail(home: Path, tmp_path: Path) -> None:
    with pytest.raises(StageError) as raised:
        le.deploy_local_endpoint(name="broken", model_tar=_broken_tar(tmp_path), model_uri="s3://b/m.tar.gz", run_id="r1")
    message = str(raised.value)
    assert "did not start" in message and "exited" in message and "nothing was deployed" in message
    assert "is not an XGBoost model" in message  # the server's own last words, from server.log
    assert le.list_local_endpoints() == []
    assert not list((home / "endpoints" / "broken" / "model").iterdir())


def test_deleting_an_unknown_endpoint_names_the_existing_ones(home: Path) -> None:
    stale = home / "endpoints" / "old"
    stale.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (stale / "endpoint.json").write_text(
        json.dumps(
            {"name": "old", "url": "http://127.0.0.1:9/invocations", "port": 9, "pid": dead.pid,
             "model_uri": "s3://b/m.tar.gz", "created_at": "2026-11-26T00:00:00+00:00", "run_id": "r0",
             "model_dir": str(stale / "model" / "v1")}
        )
    )
    [listed] = le.list_local_endpoints()
    assert listed.name == "old" and listed.alive is False

    with pytest.raises(StageError, match=r"no local endpoint named 'nope' \(existing endpoints: old\)"):
        le.delete_local_endpoint("nope")
    assert le.delete_local_endpoint("old") is False  # nothing was running; the record goes anyway
    assert le.list_local_endpoints() == []


def test_model_tar_is_downloaded_or_else_packed_from_the_trained_model(tmp_path: Path) -> None:
    import fsspec

    from tasks.deploy import fetch_model_tar

    fs = fsspec.filesystem("file")
    tar = write_model_tar(tmp_path / "model.tar.gz")
    fetched = fetch_model_tar(fs, str(tar), tmp_path / "unused", tmp_path / "a" / "model.tar.gz")
    assert fetched.read_bytes() == tar.read_bytes()

    model_dir = tmp_path / "model.tar.gz.d"  # the bundle files write_model_tar packed
    packed = fetch_model_tar(fs, str(tmp_path / "missing.tar.gz"), model_dir, tmp_path / "b" / "model.tar.gz")
    with tarfile.open(packed) as archive:
        assert sorted(archive.getnames()) == ["metadata.json", "transform.json", "xgboost-model.json"]

    with pytest.raises(StageError, match="rerun the train stage"):
        fetch_model_tar(fs, str(tmp_path / "missing.tar.gz"), tmp_path / "empty", tmp_path / "c" / "model.tar.gz")


def test_the_handover_folder_must_admit_nobody_else(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whoever connects to a server's handover socket gets the endpoint's port: its folder must be private."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    shared = tmp_path / "run" / f"updraft-{os.getuid()}"
    shared.mkdir(parents=True)
    shared.chmod(0o755)
    with pytest.raises(StageError, match="must be a folder owned by this user with mode 0700"):
        le.deploy_local_endpoint(name="fraud", model_tar=write_model_tar(tmp_path / "a.tar.gz"), model_uri="s3://b/m", run_id="r1")
    assert le.list_local_endpoints() == []
