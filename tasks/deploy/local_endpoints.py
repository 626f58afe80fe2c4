"""Local endpoints: the inference server as managed processes that outlive the CLI run.

On the embedded and local targets an endpoint is ``python -m images.inference.serve``
on a loopback port, started detached (its own session, no terminal, output to its log)
so it keeps answering after ``updraft run`` returns, the way a SageMaker endpoint does.
Each endpoint keeps its state under ``updraft_home()/endpoints/<name>/``:
``endpoint.json`` (what ``list`` shows), ``model/<version>/`` (the extracted model of
each deployed version) and ``server.log``.

A redeploy updates the endpoint in place, blue/green style: the new server must answer
``/ping`` before the old one is stopped, and each version has its own model folder so
the old server keeps its files until it has stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import requests

from tasks import runs
from tasks.errors import ConfigError, StageError
from tasks.modelbundle import extract_model_tar

logger = logging.getLogger("updraft.deploy")

ENDPOINTS_DIR = "endpoints"
STATE_FILE = "endpoint.json"
LOG_FILE = "server.log"
MODELS_DIR = "model"
SERVE_MODULE = "images.inference.serve"
# The server's settings (its contract: images/inference/serve.py; tasks never import images).
MODEL_DIR_ENV = "SM_MODEL_DIR"
PORT_ENV = "SAGEMAKER_BIND_TO_PORT"
HOST_ENV = "UPDRAFT_SERVE_HOST"
HOST = "127.0.0.1"
DEFAULT_START_TIMEOUT_S = 60.0
#: SIGTERM, then SIGKILL after this long (the server's own graceful shutdown is shorter).
DEFAULT_STOP_GRACE_S = 30.0
LOG_TAIL_LINES = 20
# SageMaker's endpoint name rule; the name is also a folder name, so it must stay this plain.
_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")

# Servers started by this process: their exit status must be collected here (a dead
# child stays a zombie, which looks alive to ``kill(pid, 0)``), and keeping the Popen
# objects stops Python from warning that they are still running when collected.
_started: dict[int, subprocess.Popen] = {}


@dataclass
class EndpointInfo:
    """One local endpoint as ``endpoint.json`` records it; ``alive`` is filled in by listing."""

    name: str
    url: str
    port: int
    pid: int
    model_uri: str
    created_at: str
    run_id: str
    model_dir: str
    alive: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def endpoints_root() -> Path:
    path = runs.updraft_home() / ENDPOINTS_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            f"endpoint name {name!r} must be 1-63 letters, digits or '-', starting and ending with a letter or digit"
        )


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """One deploy or delete of an endpoint at a time, across processes."""
    lock_path = endpoints_root() / f".{name}.lock"
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_state(endpoint_dir: Path) -> EndpointInfo | None:
    path = endpoint_dir / STATE_FILE
    try:
        raw = json.loads(path.read_text())
        raw.pop("alive", None)
        return EndpointInfo(**raw)
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, TypeError, AttributeError) as exc:
        logger.warning("ignoring unreadable endpoint state %s (%s)", path, exc)
        return None


def _write_state(endpoint_dir: Path, info: EndpointInfo) -> None:
    data = info.to_dict()
    data.pop("alive")
    tmp = endpoint_dir / f".{STATE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, endpoint_dir / STATE_FILE)  # readers never see half a file


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _server_env(model_dir: Path, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            MODEL_DIR_ENV: str(model_dir),
            PORT_ENV: str(port),
            HOST_ENV: HOST,
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    # The server runs from its endpoint folder; make updraft importable there when it
    # runs from a source checkout rather than an installed package.
    source_root = Path(__file__).resolve().parents[2]
    installed = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    if source_root not in installed:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(source_root), env.get("PYTHONPATH")) if p)
    return env


def _pid_alive(pid: int) -> bool:
    proc = _started.get(pid)
    if proc is not None:
        if proc.poll() is None:
            return True
        del _started[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie still has a pid; on Linux /proc tells
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


def _is_server(pid: int) -> bool:
    """True when ``pid`` runs the inference server: never signal a pid some other program reused."""
    if not _pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc (macOS): trust the pid
    except OSError:
        return False
    return SERVE_MODULE.encode() in cmdline


def _ping(port: int, timeout_s: float = 2.0) -> bool:
    try:
        return requests.get(f"http://{HOST}:{port}/ping", timeout=timeout_s).status_code == 200
    except requests.RequestException:
        return False


def _stop_server(pid: int, grace_s: float = DEFAULT_STOP_GRACE_S) -> bool:
    """SIGTERM the server's process group, SIGKILL it after ``grace_s``; False if it was not running."""
    if not _is_server(pid):
        return False
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pid, sig)  # started with start_new_session: its pid is its group id
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return True
            time.sleep(0.05)
    raise StageError(f"the endpoint server (pid {pid}) did not stop after SIGKILL; stop it by hand")


def _log_tail(log_path: Path, offset: int, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(log_path, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    tail = text.strip().splitlines()[-lines:]
    return "\n".join(tail) if tail else "(the log is empty)"


def _start_server(endpoint_dir: Path, model_dir: Path, port: int, log_path: Path) -> tuple[subprocess.Popen, int]:
    with open(log_path, "ab") as log:
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        log.write(f"--- {stamp} starting {model_dir.name} on port {port} ---\n".encode())
        log.flush()
        offset = log.tell()
        proc = subprocess.Popen(
            [sys.executable, "-m", SERVE_MODULE],
            cwd=endpoint_dir,
            env=_server_env(model_dir, port),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session: it survives the CLI and its Ctrl-C
            close_fds=True,
        )
    _started[proc.pid] = proc
    return proc, offset


def _wait_until_ready(proc: subprocess.Popen, port: int, timeout_s: float) -> str | None:
    """None once ``/ping`` answers 200; otherwise why the server is not serving."""
    deadline = time.monotonic() + timeout_s
    while True:
        code = proc.poll()
        if code is not None:
            return f"the server exited with status {code}"
        if _ping(port, timeout_s=1.0):
            return None
        if time.monotonic() >= deadline:
            return f"the server did not answer /ping within {timeout_s:g} s"
        time.sleep(0.1)


def deploy_local_endpoint(
    *,
    name: str,
    model_tar: Path | str,
    model_uri: str,
    run_id: str,
    timeout_s: float = DEFAULT_START_TIMEOUT_S,
) -> EndpointInfo:
    """Start (or update in place) the local endpoint ``name`` serving the model in ``model_tar``."""
    _check_name(name)
    endpoint_dir = endpoints_root() / name
    with _locked(name):
        endpoint_dir.mkdir(parents=True, exist_ok=True)
        previous = _read_state(endpoint_dir)
        version = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        model_dir = endpoint_dir / MODELS_DIR / version
        try:
            extract_model_tar(model_tar, model_dir)
        except BaseException:
            shutil.rmtree(model_dir, ignore_errors=True)
            raise

        port = _free_port()
        log_path = endpoint_dir / LOG_FILE
        proc, log_offset = _start_server(endpoint_dir, model_dir, port, log_path)
        problem = _wait_until_ready(proc, port, timeout_s)
        if problem is not None:
            _stop_server(proc.pid, grace_s=5.0)
            shutil.rmtree(model_dir, ignore_errors=True)
            where = "the previous version keeps serving" if previous and _is_server(previous.pid) else "nothing was deployed"
            raise StageError(
                f"local endpoint {name!r} did not start: {problem} ({where}); last lines of {log_path}:\n"
                + _log_tail(log_path, log_offset)
            )

        info = EndpointInfo(
            name=name,
            url=f"http://{HOST}:{port}/invocations",
            port=port,
            pid=proc.pid,
            model_uri=model_uri,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            run_id=run_id,
            model_dir=str(model_dir),
            alive=True,
        )
        _write_state(endpoint_dir, info)
        if previous is not None:
            _stop_server(previous.pid)
            if Path(previous.model_dir) != model_dir:
                shutil.rmtree(previous.model_dir, ignore_errors=True)
        logger.info("local endpoint %s serves %s at %s (pid %d)", name, model_uri, info.url, info.pid)
        return info


def list_local_endpoints() -> list[EndpointInfo]:
    """Every recorded local endpoint, by name, with ``alive``: its server runs and answers ``/ping``."""
    found = []
    for endpoint_dir in sorted(p for p in endpoints_root().iterdir() if p.is_dir()):
        info = _read_state(endpoint_dir)
        if info is None:
            continue
        info.alive = _is_server(info.pid) and _ping(info.port)
        found.append(info)
    return found


def delete_local_endpoint(name: str, *, grace_s: float = DEFAULT_STOP_GRACE_S) -> bool:
    """Stop the endpoint's server and remove its folder; True if a running server was stopped."""
    _check_name(name)
    endpoint_dir = endpoints_root() / name
    with _locked(name):
        if not endpoint_dir.is_dir():
            existing = [info.name for info in list_local_endpoints()]
            known = f"existing endpoints: {', '.join(existing)}" if existing else "there are no local endpoints"
            raise StageError(f"no local endpoint named {name!r} ({known})")
        info = _read_state(endpoint_dir)
        stopped = _stop_server(info.pid, grace_s) if info is not None else False
        # The lock file stays: a deploy waiting on it must not lock a file that is gone.
        shutil.rmtree(endpoint_dir, ignore_errors=True)
    logger.info("local endpoint %s deleted", name)
    return stopped
