"""Local endpoints: the inference server as managed processes that outlive the CLI run.

On the embedded and local targets an endpoint is the inference app
(``images/inference/serve.py``) run by :mod:`tasks.deploy.endpoint_process` on a loopback
port, started detached (its own session, no terminal, output to its log) so it keeps
answering after ``updraft run`` returns, the way a SageMaker endpoint does. Each endpoint
keeps its state under ``updraft_home()/endpoints/<name>/``: ``endpoint.json`` (what
``list`` shows), ``model/<version>/`` (the extracted model of each deployed version) and
``server.log``.

An update keeps the URL and fails no request: the endpoint's listening socket passes from
the running server to the new one (see :mod:`tasks.deploy.endpoint_process` for why, and
what was measured), the new server must answer ``/ping`` on a private check port before
the old one is stopped, and the old one drains its keep-alive connections before it
exits. Each version has its own model folder, so the old server keeps its files until it
has stopped. A model that does not start leaves the old version serving.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import requests

from tasks import runs
from tasks.deploy.endpoint_process import CHECK_FD_ENV, HANDOVER_ENV, LISTEN_FD_ENV, MODEL_DIR_ENV
from tasks.errors import ConfigError, StageError
from tasks.modelbundle import extract_model_tar

logger = logging.getLogger("updraft.deploy")

ENDPOINTS_DIR = "endpoints"
STATE_FILE = "endpoint.json"
LOG_FILE = "server.log"
MODELS_DIR = "model"
#: What runs each version (by module name: ``_is_server`` recognises it in a pid's command line).
SERVER_MODULE = "tasks.deploy.endpoint_process"
#: What ran local endpoints before the listening socket was handed on; still recognised so a
#: redeploy stops such a server instead of leaving it running.
LEGACY_SERVER_MODULE = "images.inference.serve"
HOST = "127.0.0.1"
#: Pending connections the endpoint's socket queues while no server accepts (uvicorn's default).
LISTEN_BACKLOG = 2048
DEFAULT_START_TIMEOUT_S = 60.0
#: SIGTERM, then SIGKILL after this long (the server's own graceful shutdown is shorter).
DEFAULT_STOP_GRACE_S = 30.0
HANDOVER_TIMEOUT_S = 5.0
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
    #: The Unix socket on which the server hands its listening socket to the next version.
    handover: str | None = None
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


def _runtime_dir() -> Path:
    """A private folder for the handover sockets, short enough for a Unix socket path.

    Socket paths are limited to about 100 bytes, which a folder under ``UPDRAFT_HOME``
    can exceed; the folder must belong to this user and admit nobody else, because
    whoever connects to a handover socket receives the endpoint's listening socket.
    """
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    path = base / f"updraft-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise StageError(
            f"{path} must be a folder owned by this user with mode 0700 (it holds the local endpoints' "
            "handover sockets); remove it and deploy again"
        )
    return path


def _handover_prefix(endpoint_dir: Path) -> str:
    return hashlib.sha1(str(endpoint_dir.resolve()).encode()).hexdigest()[:12]


def _handover_path(endpoint_dir: Path, version: str) -> str:
    return str(_runtime_dir() / f"{_handover_prefix(endpoint_dir)}-{version}.sock")


def _remove_stale_handovers(endpoint_dir: Path, keep: str | None) -> None:
    """Handover sockets of this endpoint's earlier servers that were killed before they could remove them."""
    for path in _runtime_dir().glob(f"{_handover_prefix(endpoint_dir)}-*.sock"):
        if str(path) != keep:
            _remove_handover(str(path))


def _receive_listener(handover: str, expected_port: int) -> socket.socket:
    """The running server's listening socket, received over its handover socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(HANDOVER_TIMEOUT_S)
        conn.connect(handover)
        message, fds, _, _ = socket.recv_fds(conn, 64, 1)
    if not fds:
        raise OSError(f"the server at {handover} sent no socket ({message!r})")
    listener = socket.socket(fileno=fds[0])
    for extra in fds[1:]:
        os.close(extra)
    port = listener.getsockname()[1] if listener.family == socket.AF_INET else None
    if port != expected_port:
        listener.close()
        raise OSError(f"the socket received from {handover} listens on {port}, not on port {expected_port}")
    return listener


def _bind_listener(port: int) -> socket.socket:
    return socket.create_server((HOST, port), backlog=LISTEN_BACKLOG)


def _endpoint_listener(name: str, previous: EndpointInfo | None) -> socket.socket:
    """The endpoint's listening socket: the running server's own, else the same port bound anew.

    Taking over the running server's socket is what keeps the update seamless; when that
    server is gone the port is free again and the URL stays the same; only when another
    program took the port meanwhile does the endpoint move, with a warning.
    """
    if previous is None:
        return _bind_listener(0)
    if previous.handover and _is_server(previous.pid):
        try:
            return _receive_listener(previous.handover, previous.port)
        except OSError as exc:
            logger.warning(
                "local endpoint %s: could not take over the listening socket of pid %d (%s); binding port %d anew",
                name, previous.pid, exc, previous.port,
            )
    try:
        return _bind_listener(previous.port)
    except OSError as exc:
        listener = _bind_listener(0)
        logger.warning(
            "local endpoint %s: port %d is taken (%s); it moves to port %d, so its URL changes",
            name, previous.port, exc.strerror or exc, listener.getsockname()[1],
        )
        return listener


def _server_env(model_dir: Path, listener: socket.socket, check: socket.socket, handover: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            MODEL_DIR_ENV: str(model_dir),
            LISTEN_FD_ENV: str(listener.fileno()),
            CHECK_FD_ENV: str(check.fileno()),
            HANDOVER_ENV: handover,
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
    return SERVER_MODULE.encode() in cmdline or LEGACY_SERVER_MODULE.encode() in cmdline


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


def _start_server(
    endpoint_dir: Path, model_dir: Path, listener: socket.socket, check: socket.socket, handover: str, log_path: Path
) -> tuple[subprocess.Popen, int]:
    with open(log_path, "ab") as log:
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        log.write(f"--- {stamp} starting {model_dir.name} on port {listener.getsockname()[1]} ---\n".encode())
        log.flush()
        offset = log.tell()
        proc = subprocess.Popen(
            [sys.executable, "-m", SERVER_MODULE],
            cwd=endpoint_dir,
            env=_server_env(model_dir, listener, check, handover),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session: it survives the CLI and its Ctrl-C
            close_fds=True,
            pass_fds=(listener.fileno(), check.fileno()),
        )
    _started[proc.pid] = proc
    return proc, offset


def _wait_until_ready(proc: subprocess.Popen, check_port: int, timeout_s: float) -> str | None:
    """None once ``/ping`` answers 200 on the server's private check port; otherwise why not.

    The check port belongs to the new server alone, so a 200 there cannot come from the
    old server, which still answers on the endpoint's own port.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        code = proc.poll()
        if code is not None:
            return f"the server exited with status {code}"
        if _ping(check_port, timeout_s=1.0):
            return None
        if time.monotonic() >= deadline:
            return f"the server did not answer /ping within {timeout_s:g} s"
        time.sleep(0.05)


def _remove_handover(path: str | None) -> None:
    if path:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def deploy_local_endpoint(
    *,
    name: str,
    model_tar: Path | str,
    model_uri: str,
    run_id: str,
    timeout_s: float = DEFAULT_START_TIMEOUT_S,
) -> EndpointInfo:
    """Start the local endpoint ``name`` serving the model in ``model_tar``, or update it in place.

    An update keeps the endpoint's URL and fails no request: the new server takes over the
    endpoint's listening socket, must answer ``/ping`` before the old server is stopped,
    and the old server drains its connections as it stops. If the new model does not
    start, the old version keeps serving and ``StageError`` says why, with the log's tail.
    """
    _check_name(name)
    endpoint_dir = endpoints_root() / name
    with _locked(name):
        endpoint_dir.mkdir(parents=True, exist_ok=True)
        previous = _read_state(endpoint_dir)
        _remove_stale_handovers(endpoint_dir, keep=previous.handover if previous and _is_server(previous.pid) else None)
        version = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        model_dir = endpoint_dir / MODELS_DIR / version
        handover = _handover_path(endpoint_dir, version)
        try:
            extract_model_tar(model_tar, model_dir)
        except BaseException:
            shutil.rmtree(model_dir, ignore_errors=True)
            raise

        log_path = endpoint_dir / LOG_FILE
        try:
            # Closed on leaving: the server holds its own copies, ours would keep the port open after it exits.
            with _endpoint_listener(name, previous) as listener, _bind_listener(0) as check:
                port, check_port = listener.getsockname()[1], check.getsockname()[1]
                proc, log_offset = _start_server(endpoint_dir, model_dir, listener, check, handover, log_path)
        except BaseException:
            shutil.rmtree(model_dir, ignore_errors=True)
            raise
        problem = _wait_until_ready(proc, check_port, timeout_s)
        if problem is not None:
            _stop_server(proc.pid, grace_s=5.0)
            _remove_handover(handover)
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
            handover=handover,
            alive=True,
        )
        _write_state(endpoint_dir, info)
        if previous is not None:
            _stop_server(previous.pid)  # it stops accepting, drains, exits; the new server accepts meanwhile
            _remove_handover(previous.handover)
            if Path(previous.model_dir) != model_dir:
                shutil.rmtree(previous.model_dir, ignore_errors=True)
        logger.info("local endpoint %s serves %s at %s (pid %d)", name, model_uri, info.url, info.pid)
        return info


def local_endpoint_url(name: str) -> str | None:
    """The invocation URL recorded for the local endpoint ``name``; None when there is none.

    Reads the record only (no health check): what the embedded AWS endpoint forwards
    ``InvokeEndpoint`` calls to; a server that is not running answers by refusing them.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        return None
    info = _read_state(endpoints_root() / name)
    return info.url if info is not None else None


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
        if info is not None:
            _remove_handover(info.handover)
        # The lock file stays: a deploy waiting on it must not lock a file that is gone.
        shutil.rmtree(endpoint_dir, ignore_errors=True)
    logger.info("local endpoint %s deleted", name)
    return stopped
